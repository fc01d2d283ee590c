//! A strict JSON scanner: where each field's name and value are (in an object, or in the
//! objects a caller walks into), checked as it goes, without decoding anything. Anything it
//! does not accept goes to serde_json, which either accepts it after all or says what is
//! wrong with it.

use std::ops::Range;

/// Deepest nesting the scanner follows inside the object (serde_json allows 128 in all);
/// deeper text is left to serde_json.
const MAX_DEPTH: u32 = 100;

/// One field: its name's text between the quotes (and whether it has escapes), and its
/// value's text.
pub(super) struct Found {
    pub key: Range<usize>,
    pub escaped: bool,
    pub value: Range<usize>,
}

/// A position in JSON text, read forward.
pub(crate) struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// Calls `each` with every field of `text`, in order, and says whether `text` is exactly
/// one JSON object (white space around it allowed). Fields are reported as they are found:
/// when the answer is `None`, what `each` was told means nothing. `each` returning `None`
/// stops the scan.
pub(super) fn object(text: &str, mut each: impl FnMut(Found) -> Option<()>) -> Option<()> {
    whole(text, |s| {
        s.members(|s, key, escaped| {
            let at = s.i;
            s.value()?;
            each(Found {
                key,
                escaped,
                value: at..s.i,
            })
        })
    })
}

/// Calls `each` with the text of every element of `text`, in order, and says whether `text`
/// is exactly one JSON array (white space around it allowed). As with [`object`], what
/// `each` was told means nothing when the answer is `None`.
pub(super) fn array(text: &str, mut each: impl FnMut(Range<usize>)) -> Option<()> {
    whole(text, |s| {
        s.elements(|s| {
            let at = s.i;
            s.value()?;
            each(at..s.i);
            Some(())
        })
    })
}

/// Runs `scan` on `text` and says whether it read all of it (white space around allowed).
pub(crate) fn whole(text: &str, scan: impl FnOnce(&mut Scanner<'_>) -> Option<()>) -> Option<()> {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    scan(&mut s)?;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

impl Scanner<'_> {
    /// How far the text has been read.
    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    /// The text's bytes in `r`.
    pub(crate) fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.b[r]
    }

    /// An object from its `{` to past its `}`: `field` is called at each value with the
    /// name's text between its quotes (and whether it has escapes), and must read the value.
    pub(crate) fn members(
        &mut self,
        mut field: impl FnMut(&mut Self, Range<usize>, bool) -> Option<()>,
    ) -> Option<()> {
        self.sequence(b'{', b'}', |s| {
            let start = s.i + 1;
            let escaped = s.string()?;
            let key = start..s.i - 1;
            s.ws();
            s.eat(b':')?;
            s.ws();
            field(s, key, escaped)
        })
    }

    /// An array from its `[` to past its `]`: `element` is called at each element, and must
    /// read it.
    pub(crate) fn elements(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(b'[', b']', element)
    }

    /// `open`, then items read by `item` and separated by commas, then `close`.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string, from its opening quote to past its closing one; says whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            self.plain();
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// Skips the bytes a string holds as they are: all but a quote, a backslash and the
    /// control characters, eight at a time while eight remain.
    fn plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // The high bit set in each byte of `x` that is zero (exact for the lowest one, the
        // only one used: a borrow can flag a byte above it).
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            // Bytes below 0x20 (a byte with its high bit set is never one), quotes, backslashes.
            let special = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
                | zero(x ^ (ONES * u64::from(b'"')))
                | zero(x ^ (ONES * u64::from(b'\\')));
            if special != 0 {
                self.i += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while self
            .peek()
            .is_some_and(|c| c >= 0x20 && c != b'"' && c != b'\\')
        {
            self.i += 1;
        }
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// One value of any kind; arrays and objects are followed with a stack of bits (set for
    /// an object) rather than recursion.
    pub(crate) fn value(&mut self) -> Option<()> {
        let mut depth = 0u32;
        let mut objects = 0u128;
        'value: loop {
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    objects = (objects << 1) | u128::from(open == b'{');
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.eat(close).is_none() {
                        if open == b'{' {
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                    depth -= 1;
                    objects >>= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close what it ends, or go on to the next element.
            while depth > 0 {
                self.ws();
                let in_object = objects & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.ws();
                        if in_object {
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                depth -= 1;
                objects >>= 1;
            }
            return Some(());
        }
    }

    /// `"name" :` and the white space after it.
    fn member_name(&mut self) -> Option<()> {
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::object;

    /// What serde_json makes of `text` (the path `RawObject::parse` falls back to): each
    /// field's name and value text, or `None` when it refuses it.
    fn serde(text: &str) -> Option<Vec<(String, String)>> {
        let fields = super::super::with_serde(text).ok()?;
        Some(
            fields
                .iter()
                .map(|f| {
                    let key = super::super::key_of(text, f).to_owned();
                    (key, text[f.value.clone()].to_owned())
                })
                .collect(),
        )
    }

    /// What `RawObject::parse` makes of `text` without serde_json: `None` when the scanner
    /// refuses it or a name does not decode.
    fn scanned(text: &str) -> Option<Vec<(String, String)>> {
        let mut fields = Vec::new();
        object(text, |f| {
            let quoted = &text[f.key.start - 1..f.key.end + 1];
            assert_eq!(f.escaped, quoted.contains('\\'));
            let key: String = serde_json::from_str(quoted).ok()?;
            fields.push((key, text[f.value].to_owned()));
            Some(())
        })?;
        Some(fields)
    }

    fn agree(text: &str) {
        assert_eq!(scanned(text), serde(text), "{text:?}");
    }

    const SAMPLES: &[&str] = &[
        r#"{}"#,
        r#" { "a" : 1 } "#,
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"\n\u00e9\ud83d\ude00","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":16,"total_tokens":24,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#,
        r#"{"n":[-0,0.5,-1.25e+10,3E-2,1e400,12345678901234567890123],"t":true,"f":false,"z":null,"s":"a\/b\\c\b\f\r\t"}"#,
        r#"{"nested":{"a":[[],[{}],{"b":[1,{"c":"d"}]}]},"a":2,"a":3,"we\"ird":"x"}"#,
        "{\n\t\"k\"\r\n:\t[ 1 , 2 ]\n}\n",
    ];

    #[test]
    fn reads_valid_objects_as_serde_json_does() {
        for s in SAMPLES {
            assert!(scanned(s).is_some(), "{s:?}");
            agree(s);
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        let bad = [
            "",
            " ",
            "[]",
            "1",
            "\"s\"",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\u{1f}\"}",
            "{\"a\":\"unterminated}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":1 \"b\":2}",
            "{\"\\ud800\":1}",
            "{\"a\":NaN}",
            "{\"a\":Infinity}",
            "{\"a\":'s'}",
            "\u{feff}{}",
        ];
        for s in bad {
            assert_eq!(scanned(s), None, "{s:?}");
            agree(s);
        }
    }

    #[test]
    fn agrees_with_serde_json_on_mutated_objects() {
        const BITS: &[&str] = &[
            "{", "}", "[", "]", ",", ":", "\"", "\\", "u", "0", "1", "9", "-", ".", "e", "E", "+",
            " ", "\n", "\t", "t", "r", "n", "f", "a", "l", "s", "x", "\u{1}", "\u{1f}", "\u{7f}",
            "é", "😀", "/", "\\u00e9", "\\ud800", "\"k\":", "null", "true", "[]", "{}",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut accepted = 0;
        for round in 0..30_000 {
            let mut text: Vec<char> = SAMPLES[round % SAMPLES.len()].chars().collect();
            for _ in 0..1 + next(3) {
                let at = next(text.len() + 1);
                match next(3) {
                    0 => {
                        let bit: Vec<char> = BITS[next(BITS.len())].chars().collect();
                        text.splice(at..at, bit);
                    }
                    1 if at < text.len() => {
                        text.remove(at);
                    }
                    _ if at < text.len() => {
                        text[at] = BITS[next(BITS.len())].chars().next().unwrap_or(' ');
                    }
                    _ => {}
                }
            }
            let text: String = text.into_iter().collect();
            agree(&text);
            accepted += usize::from(serde(&text).is_some());
        }
        // The mutations must leave a fair share valid, or acceptance is barely tested.
        assert!(
            accepted > 2_000,
            "only {accepted} mutated objects were valid"
        );
    }

    #[test]
    fn finds_every_special_byte_wherever_it_falls_in_a_word() {
        for at in 0..20 {
            for special in ["\"", "\\", "\\n", "\u{1}", "\u{1f}", "é", "\u{7f}"] {
                let mut s = "abcdefghijklmnopqrstuvwxyz".to_owned();
                s.insert_str(at, special);
                agree(&format!("{{\"{s}\":\"{s}\",\"x\":1}}"));
            }
        }
    }

    #[test]
    fn leaves_very_deep_nesting_to_serde_json() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(150), "]".repeat(150));
        assert_eq!(scanned(&deep), None);
        let fine = format!("{{\"a\":{}1{}}}", "[".repeat(50), "]".repeat(50));
        agree(&fine);
    }
}
