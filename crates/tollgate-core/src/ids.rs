//! Identifiers: inference ids, request ids and node ids.

use rand::Rng;

/// The URL-safe alphabet in byte order, so ids sort as their time prefixes do.
const URL_SAFE: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// A 21-character URL-safe inference id: 8 characters of the time in milliseconds (so ids
/// made later sort later and database indexes on them grow at one end), then 78 random bits.
pub fn inference_id() -> String {
    let ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 21];
    for (i, b) in id[..8].iter_mut().enumerate() {
        *b = URL_SAFE[((ms >> (6 * (7 - i))) & 63) as usize];
    }
    let bits: u128 = rng.gen();
    for (i, b) in id[8..].iter_mut().enumerate() {
        *b = URL_SAFE[((bits >> (6 * i)) & 63) as usize];
    }
    // Every byte is from the ASCII alphabet above, so nothing is replaced.
    String::from_utf8_lossy(&id).into_owned()
}

/// Whether a client-supplied request id is acceptable: 1–128 of `A–Z a–z 0–9 . _ : -`.
pub fn valid_client_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_ids_are_21_url_safe_chars_and_differ() {
        let a = inference_id();
        assert_eq!(a.len(), 21);
        assert!(a.bytes().all(|b| URL_SAFE.contains(&b)));
        assert_ne!(a, inference_id());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(inference_id() > a, "a later id sorts later");
    }

    #[test]
    fn client_request_ids_are_checked() {
        assert!(valid_client_request_id("abc-1.2_3:x"));
        assert!(!valid_client_request_id(""));
        assert!(!valid_client_request_id("has space"));
        assert!(!valid_client_request_id(&"a".repeat(129)));
    }
}
