//! Byte sizes in configuration and on the command line: a plain integer of bytes
//! (`1048576`, as before) or a number with an IEC unit (`512MiB`, `64 KiB`, `1.5GiB`), parsed
//! with the [`bytesize`] crate.
//!
//! Decimal units (`MB`, `kB`, `G`) are refused rather than guessed: PostgreSQL's `MB` means
//! 2^20 bytes, `bytesize`'s 10^6, and a cap off by 5 % should not depend on which one the
//! reader had in mind.

use bytesize::{ByteSize, Unit};
use serde::Deserializer;

/// Why a byte size was refused; `Display` is one line naming the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Not a number followed by an optional unit.
    #[error("`{0}` is not a byte size (e.g. 1048576, 64KiB, 512MiB, 1GiB)")]
    Malformed(String),
    /// A decimal (power-of-1000) or unknown unit.
    #[error("`{0}` is not a unit: use B, KiB, MiB, GiB or TiB (powers of 1024)")]
    Unit(String),
    /// More than `u64::MAX` bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses `text`: bytes (`1048576`) or a number with an IEC unit (`512MiB`, `1.5 GiB`).
///
/// Errors: [`ByteSizeError`].
pub fn parse(text: &str) -> Result<u64, ByteSizeError> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    if number.is_empty() || number.starts_with('.') {
        return Err(ByteSizeError::Malformed(text.to_string()));
    }
    let unit = unit.trim();
    if !unit.is_empty() {
        match unit.parse::<Unit>() {
            Ok(Unit::Byte | Unit::KibiByte | Unit::MebiByte | Unit::GibiByte | Unit::TebiByte)
                if unit.len() != 2 || unit.ends_with(['B', 'b']) => {}
            _ => return Err(ByteSizeError::Unit(unit.to_string())),
        }
    }
    let size: ByteSize = text
        .parse()
        .map_err(|_| ByteSizeError::Malformed(text.to_string()))?;
    // `bytesize` saturates on overflow.
    if size.as_u64() == u64::MAX {
        return Err(ByteSizeError::TooLarge(text.to_string()));
    }
    Ok(size.as_u64())
}

/// A byte size as a `usize` (an in-memory bound).
///
/// Errors: [`ByteSizeError::TooLarge`] beyond `usize::MAX`, else as [`parse`].
pub fn parse_usize(text: &str) -> Result<usize, ByteSizeError> {
    usize::try_from(parse(text)?).map_err(|_| ByteSizeError::TooLarge(text.trim().to_string()))
}

/// `#[serde(deserialize_with = "bytes::deserialize")]` for a `usize` field: a non-negative
/// integer or a string [`parse`] accepts. Anything else (a negative number, a float, a table) is
/// refused with what was found and the forms accepted.
pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<usize, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte size: a non-negative integer or a string such as \"512MiB\"")
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<usize, E> {
            usize::try_from(n).map_err(|_| E::custom(ByteSizeError::TooLarge(n.to_string())))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<usize, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
            }
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<usize, E> {
            parse_usize(text).map_err(E::custom)
        }
    }
    de.deserialize_any(Size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_are_integers_or_strings_and_others_are_named() {
        #[derive(serde::Deserialize)]
        struct Field {
            #[serde(deserialize_with = "deserialize")]
            v: usize,
        }
        let read = |toml_text: &str| toml::from_str::<Field>(toml_text).map(|f| f.v);
        assert_eq!(read("v = 1048576").ok(), Some(1 << 20));
        assert_eq!(read("v = \"64KiB\"").ok(), Some(64 << 10));
        for bad in ["v = -1", "v = 1.5e9", "v = true"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("a byte size"), "{bad}: {err}");
        }
    }

    #[test]
    fn integers_and_iec_units_parse() {
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse(" 512 MiB "), Ok(512 << 20));
        assert_eq!(parse("64KiB"), Ok(64 << 10));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("100B"), Ok(100));
        assert_eq!(parse("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn decimal_units_and_garbage_are_refused_naming_the_forms() {
        for unit in ["1GB", "1 MB", "1k", "1G", "1Mi", "1PiB", "1 bytes"] {
            let err = parse(unit).unwrap_err();
            assert!(matches!(err, ByteSizeError::Unit(_)), "{unit}: {err}");
            assert!(err.to_string().contains("GiB"), "{err}");
        }
        for text in ["", "-1", "MiB", ".5MiB", "1..2MiB"] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert!(matches!(
            parse("99999999999TiB"),
            Err(ByteSizeError::TooLarge(_))
        ));
    }
}
