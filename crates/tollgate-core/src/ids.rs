//! Identifiers: inference ids, request ids and node ids.

use rand::Rng;

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A 21-character URL-safe id (126 random bits), used for inference ids.
pub fn inference_id() -> String {
    let mut rng = rand::thread_rng();
    (0..21)
        .map(|_| URL_SAFE[rng.gen_range(0..64)] as char)
        .collect()
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
    }

    #[test]
    fn client_request_ids_are_checked() {
        assert!(valid_client_request_id("abc-1.2_3:x"));
        assert!(!valid_client_request_id(""));
        assert!(!valid_client_request_id("has space"));
        assert!(!valid_client_request_id(&"a".repeat(129)));
    }
}
