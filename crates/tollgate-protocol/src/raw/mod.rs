//! A JSON object read one level deep: its fields in order, each value left as its raw JSON
//! text, so a gateway can read the few fields it needs and write the object out again with
//! some replaced, without building a `serde_json::Value` tree (an allocation per field and
//! per string) and serialising it back.

pub(crate) mod scan;

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
    /// [`sig`] of the name, compared before the name itself.
    sig: u32,
    value: Range<usize>,
}

/// A name's length and first and last bytes: names that differ here differ.
fn sig(name: &[u8]) -> u32 {
    let (first, last) = (name.first(), name.last());
    ((name.len() as u32) << 16)
        | (u32::from(first.copied().unwrap_or(0)) << 8)
        | u32::from(last.copied().unwrap_or(0))
}

impl Field {
    fn new(text: &str, key: Key, value: Range<usize>) -> Self {
        let mut f = Self { key, sig: 0, value };
        f.sig = sig(key_bytes(text, &f));
        f
    }
}

/// A parsed JSON object and its text.
#[derive(Debug, Clone)]
pub struct RawObject {
    text: String,
    fields: Vec<Field>,
    /// Whether some name occurs more than once.
    repeats: bool,
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
        fields.push(Field::new(text, key, f.value));
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

/// A field's name as bytes (compared without the checks that slicing a `str` makes).
fn key_bytes<'a>(text: &'a str, f: &'a Field) -> &'a [u8] {
    match &f.key {
        Key::At(r) => &text.as_bytes()[r.clone()],
        Key::Decoded(k) => k.as_bytes(),
    }
}

/// The value text of the last field named `name`.
fn find<'a>(text: &'a str, fields: &[Field], name: &str) -> Option<&'a str> {
    let (name, want) = (name.as_bytes(), sig(name.as_bytes()));
    fields
        .iter()
        .rev()
        .find(|f| f.sig == want && key_bytes(text, f) == name)
        .map(|f| &text[f.value.clone()])
}

/// Fields up to which names are checked for repeats pair by pair rather than with a set.
const PAIRWISE_MAX: usize = 12;

/// Whether some name occurs more than once, in time linear in the number of fields (an
/// object from a client can have hundreds of thousands).
fn has_repeats(text: &str, fields: &[Field]) -> bool {
    if fields.len() <= PAIRWISE_MAX {
        return (1..fields.len()).any(|i| {
            let f = &fields[i];
            fields[..i]
                .iter()
                .any(|g| g.sig == f.sig && key_bytes(text, g) == key_bytes(text, f))
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    !fields.iter().all(|f| seen.insert(key_bytes(text, f)))
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
            Field::new(text, key, start..start + value.get().len())
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
        let repeats = has_repeats(&text, &fields);
        Ok(Self {
            text,
            fields,
            repeats,
        })
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
        // Where each repeated name is first and last: it is written at the first place with
        // the last value. Names are almost always unique, and then nothing is looked up.
        let places = self.repeats.then(|| {
            let mut places = std::collections::HashMap::with_capacity(self.fields.len());
            for (i, f) in self.fields.iter().enumerate() {
                places.entry(self.key(f)).or_insert((i, i)).1 = i;
            }
            places
        });
        for (i, f) in self.fields.iter().enumerate() {
            let key = self.key(f);
            let value = match &places {
                None => &f.value,
                Some(places) => match places.get(key) {
                    Some(&(at, last)) if at == i => &self.fields[last].value,
                    _ => continue,
                },
            };
            let bytes = self.text.as_bytes();
            let value = match edit(key) {
                Edit::Drop => continue,
                // A name without escapes, as it stands, through its own value: one copy.
                Edit::Keep if places.is_none() && matches!(f.key, Key::At(_)) => {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    if let Key::At(r) = &f.key {
                        out.extend_from_slice(&bytes[r.start - 1..f.value.end]);
                    }
                    continue;
                }
                Edit::Keep => &bytes[value.clone()],
                Edit::Replace(v) => v,
            };
            let name = match &f.key {
                // The name's text between its quotes has no escapes: it is written as it is.
                Key::At(r) => Name::Raw(&bytes[r.clone()]),
                Key::Decoded(k) => Name::Text(k),
            };
            field(out, &mut first, name, value);
        }
        for (key, value) in extra {
            if self.get(key).is_none() {
                field(out, &mut first, Name::Text(key), value);
            }
        }
        out.push(b'}');
    }
}

/// A field's name as it is written out.
enum Name<'a> {
    /// JSON string text that needs no escaping, without its quotes.
    Raw(&'a [u8]),
    /// A name to escape.
    Text(&'a str),
}

fn field(out: &mut Vec<u8>, first: &mut bool, name: Name<'_>, value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    match name {
        Name::Raw(raw) => {
            out.push(b'"');
            out.extend_from_slice(raw);
            out.push(b'"');
        }
        // Writing a string into a Vec cannot fail.
        Name::Text(key) => {
            let _ = serde_json::to_writer(&mut *out, key);
        }
    }
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

/// The text of each element of the array `text`, in order; `None` (and nothing) when `text`
/// is not an array, or nests deeper than the scanner follows.
pub fn elements(text: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    scan::array(text, |r| out.push(&text[r]))?;
    Some(out)
}

/// The text the JSON value `raw` (as the scanner or serde_json accepted it) holds when it is a
/// string; `None` when it is another kind of value.
pub fn unquote(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        // No escapes: a valid literal's text between its quotes is its value.
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str(raw).ok()
}

/// A JSON string field's value; `None` when absent or not a string.
pub fn string<'a>(obj: &'a RawObject, name: &str) -> Option<Cow<'a, str>> {
    obj.get(name).and_then(unquote)
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
    fn objects_with_hundreds_of_thousands_of_fields_are_handled_in_linear_time() {
        // A client's body can hold this many names; checking them for repeats pair by pair
        // would be 2 * 10^10 comparisons, and the deadline below would pass long before.
        let n = 200_000;
        let mut text = String::from("{");
        for i in 0..n {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str(r#""k7":"last"}"#);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let o = RawObject::parse(text).unwrap();
            let mut out = Vec::new();
            o.write_to(&mut out, |_| Edit::Keep, &[("extra", b"1"), ("k9", b"0")]);
            let _ = tx.send((o.get("k7").map(str::to_owned), out));
        });
        let (k7, out) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("parsed and written within a minute");
        assert_eq!(k7.as_deref(), Some(r#""last""#));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().map(|o| o.len()), Some(n + 1));
        assert_eq!(
            (&v["k7"], &v["k9"], &v["extra"]),
            (&json!("last"), &json!(9), &json!(1))
        );
    }

    #[test]
    fn lists_elements_and_unquotes_strings() {
        assert_eq!(
            elements(r#" [1, "a,]", {"b":[2,3]}, [] ] "#),
            Some(vec!["1", r#""a,]""#, r#"{"b":[2,3]}"#, "[]"])
        );
        assert_eq!(elements("[]"), Some(vec![]));
        for bad in ["{}", "[1,]", "[1", "[1] 2", "\"[]\""] {
            assert_eq!(elements(bad), None, "{bad:?}");
        }
        assert_eq!(unquote(r#""plain""#).as_deref(), Some("plain"));
        assert_eq!(unquote(r#""q\"\u00e9""#).as_deref(), Some("q\"é"));
        assert_eq!(unquote("12"), None);
        assert_eq!(unquote("null"), None);
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
