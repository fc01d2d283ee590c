//! Local token counting with the o200k tokenizer, for holds and for usage an upstream did not report.

mod merge;
mod split;

use merge::Ranks;
use std::sync::OnceLock;

/// o200k's ordinary tokens (ranks 0 to 199,997; the special tokens come after).
const TOKENS: u32 = 199_998;

/// The ranks, taken once from tiktoken's o200k tables; tiktoken's encoder itself is dropped
/// (its regex, cloned per thread, and its decoder are not needed to count).
fn ranks() -> &'static Ranks {
    static RANKS: OnceLock<Ranks> = OnceLock::new();
    RANKS.get_or_init(|| {
        let bpe = tiktoken_rs::o200k_base().expect("the o200k tables are compiled into the binary");
        let bytes = bpe._decode_native_and_split((0..TOKENS).collect());
        Ranks::new(bytes.zip(0..TOKENS))
    })
}

/// Loads the tokenizer tables now rather than on the first request.
pub fn warm_up() {
    let _ = ranks();
    split::pieces("warm up", |_| {});
}

/// Longest piece merged whole. BPE over a piece costs the square of its length (a run of
/// 160 kB of letters took 14 s), so a longer piece, which only a blob or a repeated
/// character makes, is counted in parts of this size: merges across the cuts are lost, so
/// its count may differ from tiktoken's by about one token per part.
const LONGEST_PIECE: usize = 256;

/// Number of tokens in `text`.
pub fn count(text: &str) -> u64 {
    let ranks = ranks();
    let mut n = 0;
    split::pieces(text, |mut piece| {
        while piece.len() > LONGEST_PIECE {
            let cut = (0..=LONGEST_PIECE)
                .rev()
                .find(|&i| piece.is_char_boundary(i))
                .unwrap_or(piece.len());
            let (head, rest) = piece.split_at(cut);
            n += ranks.count(head.as_bytes());
            piece = rest;
        }
        n += ranks.count(piece.as_bytes());
    });
    n
}

#[cfg(test)]
mod tests {
    use super::count;

    fn tiktoken(text: &str) -> u64 {
        use std::sync::OnceLock;
        static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
        let bpe = BPE.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k"));
        bpe.encode_ordinary(text).len() as u64
    }

    #[test]
    fn counts_words_as_tokens() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello"), 1);
        assert_eq!(count("The quick brown fox jumps over the lazy dog"), 9);
    }

    #[test]
    fn counts_what_tiktoken_counts_on_hand_picked_text() {
        let texts = [
            "Hello, world!  How are   you?\n\n\tI'm fine; we'll see. DON'T SHOUT",
            "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
            "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            "   leading and trailing spaces   ",
            "tabs\t\tand\u{a0}no-break\u{a0}\u{a0}spaces\u{2003}em  ",
            "1234567890 3.14159 1,000,000 ١٢٣٤٥",
            "日本語のテキストと中文文本，还有한국어 텍스트.",
            "Ünïcödé çàfé naïve résumé e\u{301}\u{301} Ωμέγα Привет мир",
            "emoji 🎉🎉 👩‍👩‍👧 ok",
            "path/to/file.txt\r\n\r\nC:\\Windows\\ //comment/\n",
            "CamelCaseWords and snake_case_words and ALLCAPS and mIxEd",
            "they're we've I'd you'll it's ITS'S 'quoted'",
            "   \n   \n\n  x",
            " ",
            "\n",
            "a  ",
            "  a",
            "a \t b",
        ];
        for t in texts {
            assert_eq!(count(t), tiktoken(t), "{t:?}");
        }
    }

    #[test]
    fn counts_long_runs_in_parts_close_to_tiktoken() {
        for (unit, n) in [("a", 4_000), ("xq", 2_000), ("é", 2_000), ("Zy9", 1_000)] {
            let text = unit.repeat(n);
            let (ours, exact) = (count(&text), tiktoken(&text));
            let parts = (text.len() / super::LONGEST_PIECE + 1) as u64;
            assert!(
                ours.abs_diff(exact) <= parts,
                "{unit:?}×{n}: {ours} vs {exact}"
            );
        }
        // Pieces up to the limit are merged whole: exactly tiktoken's count.
        let word = "b".repeat(super::LONGEST_PIECE);
        assert_eq!(count(&word), tiktoken(&word));
    }

    #[test]
    fn counts_what_tiktoken_counts_on_random_text() {
        const POOL: &[&str] = &[
            "a", "b", "Z", "Q", "hello", "World", "THE", "'s", "'T", "'re", "'ll", "'d", "'", " ",
            " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "0", "7",
            "42", "12345", "١", "½", ".", ",", "!", "?", "/", "-", "_", "(", ")", "{", "\"", "#",
            "@", "$", "€", "日", "本", "語", "한", "ü", "é", "e\u{301}", "\u{301}", "Ω", "ж", "Ж",
            "ا", "🎉", "👍", "\u{200d}", "ǅ", "ʰ", "ª",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 24;
            let text: String = (0..len)
                .map(|_| POOL[(next() % POOL.len() as u64) as usize])
                .collect();
            assert_eq!(count(&text), tiktoken(&text), "{text:?}");
        }
    }
}
