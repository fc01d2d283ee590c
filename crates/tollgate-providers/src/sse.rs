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
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line = self.buf.split_to(pos + 1);
            line.truncate(pos);
            if line.last() == Some(&b'\r') {
                line.truncate(pos - 1);
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        out
    }

    /// Whether bytes of an unfinished event remain.
    pub fn has_partial(&self) -> bool {
        self.buf.has_remaining() || self.data.is_some()
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(Event {
                event: self.event.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
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
        d.feed(b"data: half");
        assert!(d.has_partial());
    }
}
