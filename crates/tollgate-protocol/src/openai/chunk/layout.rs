//! Where a chunk's parts are, found in one pass over its text: the fields tollgate reads or
//! rewrites and the text its choices deliver. Text the pass does not take (a name with
//! escapes, a field tollgate reads named twice, anything not a plain JSON object) is left to
//! the general reader.

use super::TEXT_FIELDS;
use crate::raw::scan::{whole, Scanner};
use std::ops::Range;

/// A range of the text, kept small (a chunk sits in every stream's state).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Span(u32, u32);

impl Span {
    /// `r`, whose ends [`scan`] has checked fit.
    fn of(r: Range<usize>) -> Self {
        Self(r.start as u32, r.end as u32)
    }

    pub fn range(self) -> Range<usize> {
        self.0 as usize..self.1 as usize
    }
}

/// The parts of one chunk's text, by position.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    /// Values of the top-level fields of these names.
    pub model: Option<Span>,
    pub usage: Option<Span>,
    pub choices: Option<Span>,
    pub id: Option<Span>,
    pub created: Option<Span>,
    pub error: Option<Span>,
    /// `choices` is an array with at least one element.
    pub has_choices: bool,
    /// The text to cut to write the chunk without its `usage` field (and a comma by it).
    pub usage_cut: Option<Span>,
    /// Where the object's closing brace is, and how many fields it has.
    pub close: u32,
    pub fields: u32,
    /// Values of the [`TEXT_FIELDS`] of every choice's `delta`, in order, with the index of
    /// the field's name in [`TEXT_FIELDS`].
    pub texts: Vec<(u8, Span)>,
}

/// The top-level names the layout records; a chunk naming one twice is left to the general
/// reader (which keeps the last, as JSON parsers do).
const NAMES: [&[u8]; 6] = [b"model", b"usage", b"choices", b"id", b"created", b"error"];

/// The layout of `text`, or `None` when the pass does not take it.
pub(super) fn scan(text: &str) -> Option<Layout> {
    u32::try_from(text.len()).ok()?;
    let mut l = Layout::default();
    let mut seen = 0u8;
    // The end of the previous field's value, and the start of the `usage` field while the
    // field after it (whose start ends the cut) has not been met.
    let mut prev_end = None;
    let mut usage_start = None;
    whole(text, |s| {
        s.members(|s, key, escaped| {
            if escaped {
                return None;
            }
            let start = key.start - 1;
            if let Some(u) = usage_start.take() {
                l.usage_cut = Some(Span::of(u..start));
            }
            l.fields += 1;
            let name = NAMES.iter().position(|n| *n == s.bytes(key.clone()));
            if let Some(i) = name {
                if seen & (1 << i) != 0 {
                    return None;
                }
                seen |= 1 << i;
            }
            let at = s.pos();
            if name == Some(2) && s.peek() == Some(b'[') {
                choices(s, &mut l)?;
            } else {
                s.value()?;
            }
            let value = Some(Span::of(at..s.pos()));
            match name {
                Some(0) => l.model = value,
                Some(1) => {
                    // Cut from the previous value's end (this is the last field) or, once
                    // the next field is met, up to its start.
                    l.usage_cut = Some(Span::of(prev_end.unwrap_or(start)..s.pos()));
                    usage_start = Some(start);
                    l.usage = value;
                }
                Some(2) => l.choices = value,
                Some(3) => l.id = value,
                Some(4) => l.created = value,
                Some(5) => l.error = value,
                _ => {}
            }
            prev_end = Some(s.pos());
            Some(())
        })?;
        l.close = (s.pos() - 1) as u32;
        Some(())
    })?;
    Some(l)
}

/// Reads the `choices` array, recording the text fields of each element's `delta`.
fn choices(s: &mut Scanner<'_>, l: &mut Layout) -> Option<()> {
    s.elements(|s| {
        l.has_choices = true;
        if s.peek() != Some(b'{') {
            return s.value();
        }
        let mut delta_seen = false;
        s.members(|s, key, escaped| {
            if escaped {
                return None;
            }
            if s.bytes(key) != b"delta" {
                return s.value();
            }
            if std::mem::replace(&mut delta_seen, true) {
                return None;
            }
            if s.peek() != Some(b'{') {
                return s.value();
            }
            let mut fields_seen = 0u8;
            s.members(|s, key, escaped| {
                if escaped {
                    return None;
                }
                let name = s.bytes(key);
                let Some(i) = TEXT_FIELDS.iter().position(|f| f.as_bytes() == name) else {
                    return s.value();
                };
                if fields_seen & (1 << i) != 0 {
                    return None;
                }
                fields_seen |= 1 << i;
                let at = s.pos();
                s.value()?;
                l.texts.push((i as u8, Span::of(at..s.pos())));
                Some(())
            })
        })
    })
}
