//! The one server-sent-events decoder all streaming adapters share.

/// One decoded event: its `event:` name (if any) and its `data:` lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Most bytes of one event the decoder holds while it waits for the event's end; an upstream
/// that sends more without ending it is not speaking SSE.
pub const MAX_EVENT: usize = 16 << 20;

/// An event grew past the decoder's limit before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

/// Incremental decoder: feed bytes as they arrive, take complete events out.
#[derive(Debug)]
pub struct Decoder {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT)
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder holding at most `limit` bytes of an unfinished event.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            partial: Vec::new(),
            event: None,
            data: None,
            limit,
        }
    }

    /// Reads `bytes` and calls `each` with every event they complete, in order; fails once
    /// the unfinished event after them holds more than the limit.
    pub fn feed(&mut self, bytes: &[u8], each: impl FnMut(Event)) -> Result<(), Oversized> {
        self.read(bytes, each);
        let held = self.partial.len() + self.data.as_ref().map_or(0, String::len);
        if held > self.limit {
            return Err(Oversized);
        }
        Ok(())
    }

    fn read(&mut self, bytes: &[u8], mut each: impl FnMut(Event)) {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            // Finish the line begun in an earlier read, then go on in this one.
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return;
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            if let Some(ev) = self.line(&line) {
                each(ev);
            }
            line.clear();
            self.partial = line;
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if let Some(ev) = self.line(&rest[..end]) {
                each(ev);
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// Whether bytes of an unfinished event remain.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.data.is_some()
    }

    /// Reads one line (without its `\n`) into the event being built; an empty line ends the
    /// event (one without data is dropped, its name with it).
    fn line(&mut self, line: &[u8]) -> Option<Event> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let name = self.event.take();
            return self.data.take().map(|data| Event { event: name, data });
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let slot = match field {
            b"data" => &mut self.data,
            b"event" => {
                self.event = None;
                &mut self.event
            }
            _ => return None,
        };
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match slot {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => *slot = Some(value.into_owned()),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Decoder, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        assert_eq!(d.feed(bytes, |ev| out.push(ev)), Ok(()));
        out
    }

    #[test]
    fn an_event_that_outgrows_the_limit_fails_after_the_events_before_it() {
        let mut d = Decoder::with_limit(16);
        assert_eq!(feed(&mut d, b"data: 0123456789"), vec![]);
        let mut out = Vec::new();
        // A line with no end past the limit, after a complete event in the same read.
        let got = d.feed(b"\n\ndata: 0123456789abcdef", |ev| out.push(ev));
        assert_eq!(got, Err(Oversized));
        assert_eq!(out, vec![ev(None, "0123456789")]);
        // Many short data lines of one unended event count too.
        let mut d = Decoder::with_limit(16);
        let got = d.feed(b"data: 01234\ndata: 56789\ndata: abcde\n", |_| {});
        assert_eq!(got, Err(Oversized));
        // At the limit is fine.
        let mut d = Decoder::with_limit(16);
        assert_eq!(d.feed(b"data: 0123456789", |_| {}), Ok(()));
    }

    fn ev(event: Option<&str>, data: &str) -> Event {
        Event {
            event: event.map(Into::into),
            data: data.into(),
        }
    }

    #[test]
    fn decodes_split_events_crlf_comments_and_names() {
        let mut d = Decoder::new();
        assert!(feed(&mut d, b": ping\n\ndata: {\"a\"").is_empty());
        let evs = feed(&mut d, b":1}\r\n\r\nevent: done\ndata: x\ndata: y\n\n");
        assert_eq!(evs, vec![ev(None, "{\"a\":1}"), ev(Some("done"), "x\ny")]);
        assert!(!d.has_partial());
        // An event without data is dropped, and its name does not carry over.
        let evs = feed(&mut d, b"event: orphan\n\ndata: z\n\n");
        assert_eq!(evs, vec![ev(None, "z")]);
        feed(&mut d, b"data: half");
        assert!(d.has_partial());
    }

    #[test]
    fn any_split_of_the_bytes_decodes_the_same() {
        let mut bytes =
            "data: {\"é\":\"日本\"}\r\n\r\n: c\nevent: e\ndata:a\ndata:  b\r\nid: 1\n\n"
                .as_bytes()
                .to_vec();
        // A byte that is not UTF-8 is read as U+FFFD.
        bytes.extend_from_slice(b"data: \xff\n\n");
        let whole = feed(&mut Decoder::new(), &bytes);
        assert_eq!(
            whole,
            vec![
                ev(None, "{\"é\":\"日本\"}"),
                ev(Some("e"), "a\n b"),
                ev(None, "\u{fffd}"),
            ]
        );
        for a in 0..bytes.len() {
            for b in a..bytes.len() {
                let mut d = Decoder::new();
                let mut got = feed(&mut d, &bytes[..a]);
                got.extend(feed(&mut d, &bytes[a..b]));
                got.extend(feed(&mut d, &bytes[b..]));
                assert_eq!(got, whole, "split at {a} and {b}");
                assert!(!d.has_partial());
            }
        }
    }
}
