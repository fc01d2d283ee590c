//! The o200k pre-tokenizer: text cut into the pieces BPE then encodes one by one.
//!
//! o200k's pattern ends in `\s+(?!\S)|\s+`, and the look-ahead needs a backtracking engine
//! that costs several times what the `regex` crate's automata do. The pattern without that
//! alternative is matched here and the look-ahead applied by hand: a run of white space that
//! `\s+` took up to a non-space character gives that last white-space character back, which
//! is what the backtracking `\s+(?!\S)` does. The pieces are the same as the full pattern's.

use regex::Regex;
use std::sync::OnceLock;

/// o200k's pattern without `\s+(?!\S)`.
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

fn regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(PATTERN).expect("the o200k pattern compiles"))
}

/// Calls `piece` with each piece of `text`, in order.
pub fn pieces(text: &str, mut piece: impl FnMut(&str)) {
    let re = regex();
    let mut at = 0;
    while let Some(m) = re.find_at(text, at) {
        let mut end = m.end();
        let found = m.as_str();
        // Only the final `\s+` yields white space without a line break (`\s*[\r\n]+` takes
        // every run that has one). Followed by more text, it keeps its last character back.
        if end < text.len()
            && found.chars().all(char::is_whitespace)
            && !found.contains(['\r', '\n'])
        {
            if let Some((last, _)) = found.char_indices().next_back().filter(|(i, _)| *i > 0) {
                end = m.start() + last;
            }
        }
        piece(&text[m.start()..end]);
        at = end;
    }
}
