//! A JSON object read one level deep: its fields in order, each value left as its raw JSON
//! text, so a gateway can read the few fields it needs and write the object out again with
//! some replaced, without building a `serde_json::Value` tree (an allocation per field and
//! per string) and serialising it back.

mod scan;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// A field's name: where it is in the text, or (when it has escapes) its decoded value.
#[derive(Debug, Clone)]
enum Key {
    At(Range<usize>),
    Decoded(String),
}

#[derive(Debug, Clone)]
struct Field {
    key: Key,
    value: Range<usize>,
}

/// A parsed JSON object and its text.
#[derive(Debug, Clone)]
pub struct RawObject {
    text: String,
    fields: Vec<Field>,
}

/// What to do with a field when writing the object out.
pub enum Edit<'a> {
    Keep,
    Drop,
    /// Write this JSON text as the value instead.
    Replace(&'a [u8]),
}

/// The top-level fields, borrowed from the text.
struct Borrowed<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Borrowed(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields of `text`, which must be exactly one JSON object.
fn fields(text: &str) -> Result<Vec<Field>, serde_json::Error> {
    let mut fields = Vec::with_capacity(16);
    let scanned = scan::object(text, |f| {
        let key = if f.escaped {
            // The name's decoded value; an escape serde_json refuses (a lone surrogate)
            // makes the whole object its to judge.
            Key::Decoded(serde_json::from_str(&text[f.key.start - 1..f.key.end + 1]).ok()?)
        } else {
            Key::At(f.key)
        };
        fields.push(Field {
            key,
            value: f.value,
        });
        Some(())
    });
    match scanned {
        Some(()) => Ok(fields),
        // Not an object the scanner accepts: serde_json decides, and words the error.
        None => with_serde(text),
    }
}

fn key_of<'a>(text: &'a str, f: &'a Field) -> &'a str {
    match &f.key {
        Key::At(r) => &text[r.clone()],
        Key::Decoded(k) => k,
    }
}

/// The value text of the last field named `name`.
fn find<'a>(text: &'a str, fields: &[Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|f| key_of(text, f) == name)
        .map(|f| &text[f.value.clone()])
}

/// The fields of `text` as serde_json reads them.
fn with_serde(text: &str) -> Result<Vec<Field>, serde_json::Error> {
    let borrowed: Borrowed<'_> = serde_json::from_str(text)?;
    Ok(borrowed
        .0
        .into_iter()
        .map(|(key, value)| {
            let key = match key {
                Cow::Borrowed(k) => Key::At(offset(text, k)..offset(text, k) + k.len()),
                Cow::Owned(k) => Key::Decoded(k),
            };
            let start = offset(text, value.get());
            Field {
                key,
                value: start..start + value.get().len(),
            }
        })
        .collect())
}

/// Where `part` (a slice of `whole`) starts in `whole`.
fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

impl RawObject {
    /// Parses `text`, which must be exactly one JSON object.
    pub fn parse(text: String) -> Result<Self, serde_json::Error> {
        let fields = fields(&text)?;
        Ok(Self { text, fields })
    }

    /// Parses bytes that must be UTF-8 and exactly one JSON object.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        let text = String::from_utf8(bytes).map_err(|_| "the body is not UTF-8".to_owned())?;
        Self::parse(text).map_err(|e| e.to_string())
    }

    fn key<'a>(&'a self, f: &'a Field) -> &'a str {
        key_of(&self.text, f)
    }

    /// The raw JSON text of field `name` (its last occurrence, as a JSON parser would keep).
    pub fn get(&self, name: &str) -> Option<&str> {
        find(&self.text, &self.fields, name)
    }

    /// Field `name` decoded as `T`; `None` when absent or of another shape.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self, name: &str) -> Option<T> {
        serde_json::from_str(self.get(name)?).ok()
    }

    /// The whole object's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Writes the object to `out`: each field as `edit` says (a field named twice is
    /// written once, at its first place, with its last value), then the `extra` fields
    /// (name, JSON text) not already written.
    pub fn write_to<'e>(
        &self,
        out: &mut Vec<u8>,
        edit: impl Fn(&str) -> Edit<'e>,
        extra: &[(&str, &[u8])],
    ) {
        out.push(b'{');
        let mut first = true;
        let has = |key: &str, fields: &[Field]| fields.iter().any(|g| self.key(g) == key);
        // Names are almost always unique; only then is each field written as it stands.
        let repeats =
            (1..self.fields.len()).any(|i| has(self.key(&self.fields[i]), &self.fields[..i]));
        for (i, f) in self.fields.iter().enumerate() {
            let key = self.key(f);
            if repeats && has(key, &self.fields[..i]) {
                continue;
            }
            let value = match edit(key) {
                Edit::Drop => continue,
                Edit::Replace(v) => v,
                Edit::Keep if !repeats => self.text[f.value.clone()].as_bytes(),
                // Its last value, as a parser keeps.
                Edit::Keep => self.get(key).unwrap_or_default().as_bytes(),
            };
            field(out, &mut first, key, value);
        }
        for (key, value) in extra {
            if !has(key, &self.fields) {
                field(out, &mut first, key, value);
            }
        }
        out.push(b'}');
    }
}

fn field(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    out.extend_from_slice(value);
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, s);
    out
}

/// The raw JSON text of the fields `names` (each one's last occurrence) of the object
/// `text`, read in one pass without copying anything; `None` when `text` is not an object.
pub fn pick<'a, const N: usize>(text: &'a str, names: [&str; N]) -> Option<[Option<&'a str>; N]> {
    // Another value (`"usage": null` in every chunk of a stream) is refused at once, not by
    // the slower reader's error.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let mut picked = [None; N];
    let scanned = scan::object(text, |f| {
        let key = &text[f.key.clone()];
        if f.escaped {
            // Rare: a name with escapes is compared decoded, on the slow path.
            return None;
        }
        if let Some(i) = names.iter().position(|n| *n == key) {
            picked[i] = Some(&text[f.value]);
        }
        Some(())
    });
    if scanned.is_some() {
        return Some(picked);
    }
    let fields = fields(text).ok()?;
    Some(names.map(|name| find(text, &fields, name)))
}

/// A JSON string field's value; `None` when absent or not a string.
pub fn string<'a>(obj: &'a RawObject, name: &str) -> Option<Cow<'a, str>> {
    obj.get(name)
        .filter(|v| v.starts_with('"'))
        .and_then(|v| serde_json::from_str(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn written<'e>(
        o: &RawObject,
        edit: impl Fn(&str) -> Edit<'e>,
        extra: &[(&str, &[u8])],
    ) -> Value {
        let mut out = Vec::new();
        o.write_to(&mut out, edit, extra);
        serde_json::from_slice(&out).expect("the output is JSON")
    }

    #[test]
    fn reads_fields_raw_and_keeps_the_last_of_a_repeated_name() {
        let o = RawObject::parse(r#" {"a": [1, {"b":2}], "we\"ird":"x\u00e9", "a":true} "#.into())
            .unwrap();
        assert_eq!(o.get("a"), Some("true"));
        assert_eq!(o.get("we\"ird"), Some(r#""x\u00e9""#));
        assert_eq!(string(&o, "we\"ird").as_deref(), Some("xé"));
        assert_eq!(o.get("missing"), None);
        assert!(RawObject::parse("[1]".into()).is_err());
        assert!(RawObject::parse(r#"{"a":1} x"#.into()).is_err());
        assert!(RawObject::parse(r#"{"a":"#.into()).is_err());
        assert!(RawObject::from_bytes(vec![b'{', 0xff, b'}']).is_err());
    }

    #[test]
    fn picks_the_last_of_each_name_and_refuses_what_is_not_an_object() {
        let text = r#"{"a":1,"b":{"c":[2]},"a":3}"#;
        assert_eq!(
            pick(text, ["a", "b", "z"]),
            Some([Some("3"), Some(r#"{"c":[2]}"#), None])
        );
        // A name with escapes is compared decoded.
        let escaped = r#"{"\u0061":1,"b":2}"#;
        assert_eq!(pick(escaped, ["a", "b"]), Some([Some("1"), Some("2")]));
        for bad in [
            "[1]",
            "null",
            "1",
            "",
            r#"{"a":}"#,
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(pick(bad, ["a"]), None, "{bad:?}");
        }
    }

    #[test]
    fn writes_with_fields_replaced_dropped_and_added() {
        let o = RawObject::parse(
            r#"{"id":"c","model":"up","usage":{"x":1},"choices":[],"model":"again","q\"k":null}"#
                .into(),
        )
        .unwrap();
        let model = json_string("tollgate/m");
        let out = written(
            &o,
            |k| match k {
                "model" => Edit::Replace(&model),
                "usage" => Edit::Drop,
                _ => Edit::Keep,
            },
            &[("meta", br#"{"n":1}"#), ("id", b"\"ignored\"")],
        );
        assert_eq!(
            out,
            json!({"id":"c","model":"tollgate/m","choices":[],"q\"k":null,"meta":{"n":1}})
        );
        let empty = RawObject::parse("{}".into()).unwrap();
        assert_eq!(
            written(&empty, |_| Edit::Keep, &[("a", b"1")]),
            json!({"a":1})
        );
        assert_eq!(written(&empty, |_| Edit::Keep, &[]), json!({}));
    }
}
