//! The one server-sent-events decoder all streaming adapters share.

use bytes::{Buf, BytesMut};

/// One decoded event: its `event:` name (if any) and its `data:` lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental decoder: feed bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    event: Option<String>,
    data: Option<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes and returns every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.buf[start..start + pos];
            start += pos + 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if let Some(ev) = take_line(&mut self.event, &mut self.data, line) {
                out.push(ev);
            }
        }
        self.buf.advance(start);
        out
    }

    /// Whether bytes of an unfinished event remain.
    pub fn has_partial(&self) -> bool {
        self.buf.has_remaining() || self.data.is_some()
    }
}

/// Reads one line (without its line ending) into the event being built; an empty line ends
/// the event (one without data is dropped, its name with it).
fn take_line(event: &mut Option<String>, data: &mut Option<String>, line: &[u8]) -> Option<Event> {
    if line.is_empty() {
        let name = event.take();
        return data.take().map(|data| Event { event: name, data });
    }
    if line.starts_with(b":") {
        return None;
    }
    let (field, value) = match line.iter().position(|b| *b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    let value = String::from_utf8_lossy(value);
    match field {
        b"data" => match data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => *data = Some(value.into_owned()),
        },
        b"event" => *event = Some(value.into_owned()),
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_split_events_crlf_comments_and_names() {
        let mut d = Decoder::new();
        assert!(d.feed(b": ping\n\ndata: {\"a\"").is_empty());
        let evs = d.feed(b":1}\r\n\r\nevent: done\ndata: x\ndata: y\n\n");
        assert_eq!(
            evs,
            vec![
                Event {
                    event: None,
                    data: "{\"a\":1}".into()
                },
                Event {
                    event: Some("done".into()),
                    data: "x\ny".into()
                },
            ]
        );
        assert!(!d.has_partial());
        // An event without data is dropped, and its name does not carry over.
        let evs = d.feed(b"event: orphan\n\ndata: z\n\n");
        assert_eq!(
            evs,
            vec![Event {
                event: None,
                data: "z".into()
            }]
        );
        d.feed(b"data: half");
        assert!(d.has_partial());
    }
}
