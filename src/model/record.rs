//! A row kept as JSON text: writing a [`Record`] into a frame while noting where it and one of
//! its string values lie ([`Span`]), and reading columns back from that text without decoding
//! the rest ([`select`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::Value;

use super::relation::Record;

/// A byte range inside a frame. `u32` keeps events small: a frame longer than 4 GiB cannot
/// occur (PostgreSQL sends at most 1 GiB per message); such a span would be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(start), Ok(end)) => Span { start, end },
            _ => Span::default(),
        }
    }

    /// The span with `n` more bytes on each side.
    pub(crate) fn widen(self, n: u32) -> Span {
        Span {
            start: self.start.saturating_sub(n),
            end: self.end.saturating_add(n),
        }
    }
}

/// Where `part`, a slice of `whole`, lies in it; `None` when it is not a slice of it.
pub(crate) fn span_in(whole: &str, part: &str) -> Option<Span> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start + part.len();
    (end <= whole.len()).then(|| Span::new(start, end))
}

/// The text of `span` in `frame`; `None` when it is out of range or not UTF-8 there.
pub(crate) fn str_at(frame: &[u8], span: Span) -> Option<&str> {
    let bytes = frame.get(span.start as usize..span.end as usize)?;
    std::str::from_utf8(bytes).ok()
}

/// Appends `value` as compact JSON (serde_json's encoding, as every frame uses).
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing strings and JSON values (string keys) into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `record` as a JSON object, byte for byte what `serde_json` writes for the map.
/// Returns the object's span and, when the column `marked` holds a string, the span of that
/// string's contents (JSON-escaped, without its quotes).
pub(crate) fn write_record(
    out: &mut Vec<u8>,
    record: &Record,
    marked: &str,
) -> (Span, Option<Span>) {
    let start = out.len();
    let mut mark = None;
    out.push(b'{');
    for (i, (key, value)) in record.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, key);
        out.push(b':');
        let at = out.len();
        write_json(out, value);
        if key == marked && value.is_string() {
            mark = Some(Span::new(at + 1, out.len() - 1));
        }
    }
    out.push(b'}');
    (Span::new(start, out.len()), mark)
}

/// The columns of the JSON object `json` named in `columns`, decoded in one pass that skips
/// the other values; empty when `json` is not an object.
pub(crate) fn select(json: &str, columns: &[&str]) -> Record {
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Select { columns }).unwrap_or_default()
}

/// Visits a JSON object, keeping the wanted columns.
struct Select<'c> {
    columns: &'c [&'c str],
}

impl<'de> Visitor<'de> for Select<'_> {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut out = Record::new();
        while let Some(Key(key)) = map.next_key()? {
            if self.columns.contains(&&*key) {
                let value: Value = map.next_value()?;
                out.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A map key, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeySeed.deserialize(d)
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}
