//! Local token counting with the o200k tokenizer, for holds and for usage an upstream did not report.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

fn bpe() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| {
        tiktoken_rs::o200k_base().expect("the o200k tables are compiled into the binary")
    })
}

/// Loads the tokenizer tables now rather than on the first request.
pub fn warm_up() {
    let _ = bpe();
}

/// Number of tokens in `text`.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe().encode_ordinary(text).len() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_words_as_tokens() {
        assert_eq!(super::count(""), 0);
        assert_eq!(super::count("hello"), 1);
        assert!(super::count("The quick brown fox jumps over the lazy dog") >= 9);
    }
}
