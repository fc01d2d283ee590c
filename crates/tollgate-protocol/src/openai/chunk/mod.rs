//! Chat-completion stream chunks: read once, for the text they deliver and their usage, and
//! written out again with tollgate's `model`; and tollgate's own last chunk.

mod layout;

use super::Usage;
use crate::raw::{elements, pick, unquote, Edit, RawObject};
use layout::Layout;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// One `chat.completion.chunk` object, as the upstream sent it.
#[derive(Debug, Clone)]
pub struct Chunk {
    repr: Repr,
    usage: Option<Usage>,
    /// The text has line breaks (white space between tokens, as JSON allows), which an
    /// event's one `data:` line cannot carry.
    multiline: bool,
}

#[derive(Debug, Clone)]
enum Repr {
    /// Read in one pass (almost every chunk).
    Laid { text: String, layout: Layout },
    /// Read field by field by the general reader.
    Raw(RawObject),
}

/// Appends the string the raw JSON value `raw` holds, if it is one.
fn push_str(raw: Option<&str>, out: &mut String) {
    if let Some(s) = raw.and_then(unquote) {
        out.push_str(&s);
    }
}

/// The fields of a choice's `delta` that deliver text.
const TEXT_FIELDS: [&str; 5] = [
    "content",
    "refusal",
    "reasoning_content",
    "reasoning",
    "tool_calls",
];

/// Appends the text one of the [`TEXT_FIELDS`] delivers: the string itself, or the names
/// and arguments of tool calls; a value of another shape delivers nothing.
fn field_text(name: &str, value: &str, out: &mut String) {
    if name != "tool_calls" {
        return push_str(Some(value), out);
    }
    for call in elements(value).into_iter().flatten() {
        if let Some([Some(function)]) = pick(call, ["function"]) {
            if let Some([name, arguments]) = pick(function, ["name", "arguments"]) {
                push_str(name, out);
                push_str(arguments, out);
            }
        }
    }
}

/// The text of the [`TEXT_FIELDS`] in one choice's `delta`, each read as a JSON parser
/// would (its last occurrence); parts of another shape are ignored.
fn choice_text(choice: &str, out: &mut String) {
    let Some([Some(delta)]) = pick(choice, ["delta"]) else {
        return;
    };
    let Some(values) = pick(delta, TEXT_FIELDS) else {
        return;
    };
    for (name, value) in TEXT_FIELDS.iter().zip(values) {
        if let Some(value) = value {
            field_text(name, value, out);
        }
    }
}

impl Chunk {
    /// Parses one event's data, which must be a JSON object.
    pub fn parse(data: String) -> Result<Self, String> {
        let repr = match layout::scan(&data) {
            Some(layout) => Repr::Laid { text: data, layout },
            None => Repr::Raw(RawObject::parse(data).map_err(|e| e.to_string())?),
        };
        Ok(Self::read(repr))
    }

    /// `data` read by the general reader only (to test the one-pass reading against it).
    #[cfg(test)]
    fn parse_general(data: String) -> Result<Self, String> {
        let repr = Repr::Raw(RawObject::parse(data).map_err(|e| e.to_string())?);
        Ok(Self::read(repr))
    }

    fn read(repr: Repr) -> Self {
        let mut chunk = Self {
            repr,
            usage: None,
            multiline: false,
        };
        chunk.multiline = memchr::memchr2(b'\n', b'\r', chunk.text().as_bytes()).is_some();
        chunk.usage = chunk.get("usage").and_then(Usage::from_raw);
        chunk
    }

    /// A chunk built locally (the demo provider).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        Self::parse(value.to_string())
    }

    fn text(&self) -> &str {
        match &self.repr {
            Repr::Laid { text, .. } => text,
            Repr::Raw(obj) => obj.text(),
        }
    }

    /// The raw JSON text of the top-level field `name` (one of those [`Layout`] records).
    fn get(&self, name: &str) -> Option<&str> {
        let (text, l) = match &self.repr {
            Repr::Laid { text, layout } => (text, layout),
            Repr::Raw(obj) => return obj.get(name),
        };
        let at = match name {
            "model" => &l.model,
            "usage" => &l.usage,
            "choices" => &l.choices,
            "id" => &l.id,
            "created" => &l.created,
            "error" => &l.error,
            _ => return None,
        };
        at.map(|r| &text[r.range()])
    }

    /// The chunk as a `Value` (for tests and diagnostics).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn id(&self) -> Option<Cow<'_, str>> {
        self.get("id").and_then(unquote)
    }

    pub fn created(&self) -> Option<i64> {
        // The text of a JSON integer is what `i64`'s parser reads (JSON has no `+`).
        self.get("created")?.parse().ok()
    }

    /// The message of an error event (an `error` object and no `choices`), which some
    /// upstreams send mid-stream instead of a status.
    pub fn error_message(&self) -> Option<String> {
        if self.get("choices").is_some() {
            return None;
        }
        let error = serde_json::from_str::<Value>(self.get("error")?).ok()?;
        Some(
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("stream error")
                .to_owned(),
        )
    }

    /// Whether the chunk has at least one choice (the usage chunk at the end has none).
    pub fn has_choices(&self) -> bool {
        self.get("choices")
            .and_then(|c| c.strip_prefix('['))
            .is_some_and(|rest| !rest.trim_start().starts_with(']'))
    }

    /// Appends the text the chunk delivers across its choices (content, refusal, reasoning
    /// and tool-call names and arguments), used to count delivered tokens when a stream is cut.
    pub fn delivered_text(&self, out: &mut String) {
        match &self.repr {
            Repr::Laid { text, layout } => {
                for (i, r) in &layout.texts {
                    field_text(TEXT_FIELDS[usize::from(*i)], &text[r.range()], out);
                }
            }
            Repr::Raw(obj) => {
                let choices = obj.get("choices").and_then(elements);
                for choice in choices.into_iter().flatten() {
                    choice_text(choice, out);
                }
            }
        }
    }

    /// Appends the chunk as one server-sent event, with `model` set to `model_json` (a JSON
    /// string) and without its `usage` (tollgate sends usage in its own last chunk).
    pub fn write_event(&self, model_json: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.text().len() + model_json.len() + 16);
        out.extend_from_slice(b"data: ");
        let start = out.len();
        match &self.repr {
            Repr::Laid { text, layout } => write_laid(text, layout, model_json, out),
            Repr::Raw(obj) => obj.write_to(
                out,
                |k| match k {
                    "model" => Edit::Replace(model_json),
                    "usage" => Edit::Drop,
                    _ => Edit::Keep,
                },
                &[("model", model_json)],
            ),
        }
        if self.multiline {
            // Outside strings (where they cannot appear unescaped) line breaks are white
            // space; a space does the same on one line.
            for b in &mut out[start..] {
                if matches!(*b, b'\n' | b'\r') {
                    *b = b' ';
                }
            }
        }
        out.extend_from_slice(b"\n\n");
    }
}

/// Writes a laid-out chunk: its text as it stands, with the value of `model` replaced (or a
/// `model` field added at the end) and the `usage` field cut.
fn write_laid(text: &str, l: &Layout, model_json: &[u8], out: &mut Vec<u8>) {
    let b = text.as_bytes();
    let close = l.close as usize;
    let model = l.model.map_or(close..close, |m| m.range());
    let mut pos = 0;
    let cut = l.usage_cut.map(|c| c.range());
    if let Some(c) = cut.as_ref().filter(|c| c.end <= model.start) {
        out.extend_from_slice(&b[pos..c.start]);
        pos = c.end;
    }
    out.extend_from_slice(&b[pos..model.start]);
    if l.model.is_none() {
        let others = l.fields > u32::from(l.usage.is_some());
        out.extend_from_slice(if others {
            b",\"model\":"
        } else {
            b"\"model\":"
        });
    }
    out.extend_from_slice(model_json);
    pos = model.end;
    if let Some(c) = cut.filter(|c| c.start >= model.end) {
        out.extend_from_slice(&b[pos..c.start]);
        pos = c.end;
    }
    out.extend_from_slice(&b[pos..]);
}

/// A chunk with no choices, as OpenAI sends for the usage block at the end of a stream.
pub fn empty_chunk(id: &str, model: &str, created: i64) -> Map<String, Value> {
    let value = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(v: Value) -> Chunk {
        Chunk::from_value(&v).expect("an object")
    }

    fn text(c: &Chunk) -> String {
        let mut s = String::new();
        c.delivered_text(&mut s);
        s
    }

    #[test]
    fn collects_content_reasoning_and_tool_arguments() {
        let c = chunk(json!({"choices": [
            {"delta": {"content": "Hel", "reasoning_content": "r"}},
            {"delta": {"refusal": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]}},
            {"index": 2}
        ]}));
        assert_eq!(text(&c), "Helrf{\"a\":1}");
        assert!(c.has_choices());
        // Odd shapes are read as far as they go.
        let odd = chunk(
            json!({"choices": [{"delta": {"content": ["x"]}}, {"delta": "y"}, {"delta": {"content": "ok"}}]}),
        );
        assert_eq!(text(&odd), "ok");
        // Escapes are decoded; a choices value that is not an array delivers nothing.
        let escaped = Chunk::parse(r#"{"choices":[{"delta":{"content":"a\"b\u00e9\n"}}]}"#.into());
        assert_eq!(text(&escaped.unwrap()), "a\"bé\n");
        assert_eq!(
            text(&chunk(json!({"choices": {"delta": {"content": "x"}}}))),
            ""
        );
    }

    /// The data of one written event: `data: `, the data, a blank line.
    fn event_data(event: &[u8]) -> &str {
        let text = std::str::from_utf8(event).unwrap();
        let data = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"));
        data.unwrap_or_else(|| panic!("not one event: {text:?}"))
    }

    /// Everything tollgate reads from a chunk, and the event it writes.
    #[derive(Debug, PartialEq)]
    struct Reading {
        written: Value,
        delivered: String,
        id: Option<String>,
        created: Option<i64>,
        usage: Option<Usage>,
        has_choices: bool,
        error: Option<String>,
    }

    /// What tollgate reads from `c`; the event it writes must be one line of JSON.
    fn reading(c: &Chunk) -> Reading {
        let mut event = Vec::new();
        c.write_event(br#""tollgate/m""#, &mut event);
        let json = event_data(&event);
        assert!(!json.contains(['\n', '\r']), "{json:?}");
        Reading {
            written: serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")),
            delivered: text(c),
            id: c.id().map(Cow::into_owned),
            created: c.created(),
            usage: c.usage(),
            has_choices: c.has_choices(),
            error: c.error_message(),
        }
    }

    #[test]
    fn one_pass_reads_what_the_general_reader_reads() {
        let one_pass = [
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"up","choices":[{"index":0,"delta":{"role":"assistant","content":"Hé\n\"x\""},"finish_reason":null}],"usage":null}"#,
            r#"{"usage":{"prompt_tokens":2,"completion_tokens":3},"id":"c1","choices":[],"model":"up"}"#,
            r#"{"id":"c1","usage":{"prompt_tokens":2,"completion_tokens":3},"choices":[]}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"refusal":"b","tool_calls":[{"function":{"name":"f","arguments":"{\"q\":1}"}}]}}]}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"choices":[1,{"delta":null},{"delta":{"content":7}},{"x":{"delta":{"content":"no"}}}],"model":"up","model_extra":"usage"}"#,
            "{}",
            "{\n  \"model\": \"up\",\r\n  \"choices\": [\n {\"delta\": {\"content\": \"a b\"}}\n ],\n  \"usage\" : null\n}\n",
            r#" {"x":1,"x":2,"choices":[{"delta":{"content":"k"},"index":0}]} "#,
        ];
        for data in one_pass {
            let fast = Chunk::parse(data.to_owned()).unwrap();
            assert!(matches!(fast.repr, Repr::Laid { .. }), "{data}");
            let general = Chunk::parse_general(data.to_owned()).unwrap();
            assert_eq!(reading(&fast), reading(&general), "{data}");
        }
        // What the pass leaves to the general reader is still read as JSON parsers do.
        let general = [
            (
                r#"{"model":"a","model":"b","choices":[{"delta":{"content":"x"}}]}"#,
                "x",
            ),
            (
                r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
                "b",
            ),
            (
                r#"{"choices":[{"delta":{"content":"a"},"delta":{"refusal":"b"}}]}"#,
                "b",
            ),
            (
                r#"{"choices":[{"d\u0065lta":{"cont\u0065nt":"x"}}],"us\u0061ge":{"completion_tokens":4}}"#,
                "x",
            ),
        ];
        for (data, delivered) in general {
            let c = Chunk::parse(data.to_owned()).unwrap();
            assert!(matches!(c.repr, Repr::Raw(_)), "{data}");
            let read = reading(&c);
            assert_eq!(read.delivered, delivered, "{data}");
            assert_eq!(read.written["model"], "tollgate/m", "{data}");
            assert!(read.written.get("usage").is_none(), "{data}");
        }
        let escaped = Chunk::parse(general[3].0.to_owned()).unwrap();
        assert_eq!(escaped.usage().map(|u| u.completion_tokens), Some(4));
        for bad in ["[]", "", r#"{"a":}"#, r#"{"choices":[}"#] {
            assert!(Chunk::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_deltas_as_a_json_parser_keeps_them() {
        let cases = [
            // Each choice's text, in order.
            (
                r#"[{"delta":{"content":"a"}},{"delta":{"content":"b","refusal":"c"}}]"#,
                "abc",
            ),
            // A name twice: its last value counts.
            (r#"[{"delta":{"content":"a","content":"b"}}]"#, "b"),
            (
                r#"[{"delta":{"content":"a"},"delta":{"refusal":"b"}}]"#,
                "b",
            ),
            // Names with escapes are read decoded.
            (r#"[{"d\u0065lta":{"cont\u0065nt":"x"}}]"#, "x"),
            (
                r#"[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]"#,
                "f{}",
            ),
            (
                r#"[1,{"delta":null},{"delta":{"content":7}},{"delta":{"content":"ok"}}]"#,
                "ok",
            ),
        ];
        for (choices, want) in cases {
            let c = Chunk::parse(format!(r#"{{"choices":{choices}}}"#)).unwrap();
            let mut got = String::from("before:");
            c.delivered_text(&mut got);
            assert_eq!(got, format!("before:{want}"), "{choices}");
        }
    }

    #[test]
    fn reads_usage_id_created_and_errors() {
        let c = chunk(
            json!({"id": "c1", "created": 7, "choices": [ ], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}),
        );
        assert!(!c.has_choices());
        assert_eq!(c.id().as_deref(), Some("c1"));
        assert_eq!(c.created(), Some(7));
        assert_eq!(c.usage().map(|u| u.completion_tokens), Some(3));
        assert_eq!(chunk(json!({"usage": null})).usage(), None);
        assert_eq!(
            chunk(json!({"error": {"message": "overloaded"}}))
                .error_message()
                .as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            chunk(json!({"error": {}, "choices": []})).error_message(),
            None
        );
        assert!(Chunk::parse("[]".into()).is_err());
    }

    #[test]
    fn events_carry_tollgate_s_model_and_no_usage() {
        let c = chunk(
            json!({"id": "c1", "model": "up", "choices": [{"delta": {"content": "é"}}], "usage": null}),
        );
        let mut event = b"data: [earlier]\n\n".to_vec();
        c.write_event(br#""tollgate/m""#, &mut event);
        let event = event.strip_prefix(b"data: [earlier]\n\n").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(event_data(event)).unwrap(),
            json!({"id": "c1", "model": "tollgate/m", "choices": [{"delta": {"content": "é"}}]})
        );
    }
}
