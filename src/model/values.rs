//! Column values and timestamps in the relay's JSON forms: [`text_to_json`] for text-format
//! column values by type OID, [`type_name`] for a type OID's `pg_type.typname`, and the
//! PostgreSQL-epoch timestamp helpers [`format_pg_timestamp_us`] / [`pg_epoch_to_unix_us`] for
//! Begin/Commit times. Pure functions: the pgoutput decoder, the filters and the encoders share
//! them.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Timelike};
use serde_json::{Number, Value};
use tokio_postgres::types::Type;

/// Built-in PostgreSQL type OIDs (source: the `pg_type` system catalog,
/// `src/include/catalog/pg_type.dat`; these OIDs are fixed across versions).
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `int8` (`bigint`)
    pub const INT8: u32 = 20;
    /// `int2` (`smallint`)
    pub const INT2: u32 = 21;
    /// `int4` (`integer`)
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `float4` (`real`)
    pub const FLOAT4: u32 = 700;
    /// `float8` (`double precision`)
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`character(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar` (`character varying(n)`)
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `timestamp` (without time zone)
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz` (`timestamp with time zone`)
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

/// Convert one text-format column value (PostgreSQL's type output function
/// format, as pgoutput sends with `binary` off) to JSON by its type OID. Never
/// panics; whenever a rule below does not apply the result is the text as a JSON
/// string.
///
/// * `bool`: `"t"` / `"f"` → `true` / `false`.
/// * `int2`, `int4`, `int8`: JSON integer.
/// * `float4`, `float8`: JSON number (the decimal text read as `f64`, so `float4`
///   `1.1` stays `1.1`); `NaN`, `Infinity`, `-Infinity` stay strings.
/// * `numeric`: JSON integer if it fits `i64`; else a JSON number if the `f64`
///   reading prints back to the same decimal value (trailing fractional zeros are
///   not significant: `"12.50"` → `12.5`); else (too many digits, `NaN`,
///   `Infinity`) a string.
/// * `json`, `jsonb`: the parsed JSON value (large numbers become `f64`).
/// * `timestamptz`: ISO output (PostgreSQL docs, "Date/Time Types" → "Date/Time
///   Output", `DateStyle` ISO) `YYYY-MM-DD HH:MM:SS[.f…][±HH[:MM[:SS]]]`, any offset
///   → RFC 3339 UTC with exactly 6 fractional digits and `Z`:
///   `"2026-11-20 17:30:00+05:30"` → `"2026-11-20T12:00:00.000000Z"`. `infinity`,
///   `-infinity`, BC dates, years outside 0000–9999 after conversion to UTC and
///   any other layout stay strings.
/// * `timestamp`: same layout without offset → `"2026-11-20T12:00:00.120000"` (no `Z`).
/// * everything else (`uuid`, `text`, `varchar`, `bpchar`, `date`, arrays, …): string.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    let value = match type_oid {
        oid::BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 => text.parse::<i64>().ok().map(Value::from),
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        oid::NUMERIC => numeric_to_json(text),
        oid::JSON | oid::JSONB => serde_json::from_str(text).ok(),
        oid::TIMESTAMPTZ => iso_timestamp(text, true).map(Value::String),
        oid::TIMESTAMP => iso_timestamp(text, false).map(Value::String),
        _ => None,
    };
    value.unwrap_or_else(|| Value::String(text.to_owned()))
}

fn numeric_to_json(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    let f: f64 = text.parse().ok()?;
    // Rust prints the shortest decimal that round-trips, without exponent, like
    // numeric's output minus trailing fractional zeros.
    let significant = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => text,
    };
    (f.to_string() == significant).then(|| Number::from_f64(f).map(Value::Number))?
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.f{1,6}]` followed, iff `with_tz`, by an offset
/// `±HH[:MM[:SS]]` or `Z`, and formats it as RFC 3339 (UTC + `Z` iff `with_tz`).
fn iso_timestamp(text: &str, with_tz: bool) -> Option<String> {
    let b = text.as_bytes();
    let num = |digits: &[u8]| {
        let fold = |acc: u32, &d: &u8| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'));
        digits.iter().try_fold(0, fold)
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if b.len() < 19 || !matches!(b[10], b' ' | b'T') || separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(num(&b[..4])?).ok()?,
        num(&b[5..7])?,
        num(&b[8..10])?,
    )?;
    let mut rest = &b[19..];
    let mut micros = 0;
    if let [b'.', fraction @ ..] = rest {
        let n = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if !(1..=6).contains(&n) {
            return None;
        }
        micros = num(&fraction[..n])? * 10u32.pow(6 - n as u32);
        rest = &fraction[n..];
    }
    let naive =
        date.and_hms_micro_opt(num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?, micros)?;
    let utc = match (with_tz, rest) {
        (false, []) => naive,
        (true, [b'Z']) => naive,
        (true, [sign @ (b'+' | b'-'), hms @ ..]) if matches!(hms.len(), 2 | 5 | 8) => {
            if hms.iter().skip(2).step_by(3).any(|&c| c != b':') {
                return None;
            }
            let part = |i: usize| hms.get(i..i + 2).map_or(Some(0), num);
            let secs = i32::try_from(part(0)? * 3600 + part(3)? * 60 + part(6)?).ok()?;
            let offset = FixedOffset::east_opt(if *sign == b'-' { -secs } else { secs })?;
            naive.checked_sub_offset(offset)?
        }
        _ => return None,
    };
    (0..=9999)
        .contains(&utc.year())
        .then(|| rfc3339(&utc, with_tz))
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` (+ `Z`); years outside 0000–9999 in ISO 8601
/// expanded form (`+12345`, `-0005`).
fn rfc3339(dt: &NaiveDateTime, zulu: bool) -> String {
    let (y, us) = (dt.year(), (dt.nanosecond() / 1000).min(999_999));
    let (mo, d, h, mi, s) = (dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second());
    let z = if zulu { "Z" } else { "" };
    let mut out = String::with_capacity(32);
    // Writing to a String cannot fail.
    let _ = match (0..=9999).contains(&y) {
        true => write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{z}"
        ),
        false => write!(
            out,
            "{y:+05}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{z}"
        ),
    };
    out
}

/// PostgreSQL type name (`pg_type.typname`) for a type OID, as Supabase Realtime reports
/// `columns[].type`: `"uuid"`, `"timestamptz"`, `"text"`, `"jsonb"`, `"bool"`, `"int4"`,
/// `"_text"` (arrays are `_` + element), … for every built-in type the driver knows
/// ([`tokio_postgres::types::Type::from_oid`], generated from PostgreSQL's `pg_type.dat`).
/// Any other OID (e.g. a user-defined enum or domain, whose name only a Type message carries)
/// → `"unknown"`.
pub fn type_name(type_oid: u32) -> String {
    Type::from_oid(type_oid).map_or_else(|| "unknown".to_owned(), |t| t.name().to_owned())
}

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// Microseconds since the PostgreSQL epoch (2000-01-01 00:00:00 UTC, the unit of
/// pgoutput Begin/Commit timestamps) → RFC 3339 UTC string with `Z` and exactly 6
/// fractional digits, e.g. `"2026-11-20T12:00:00.123456Z"`. Never panics: years
/// outside 0000–9999 use ISO 8601 expanded years (`"+12345-…"`), and values beyond
/// chrono's range (about ±262 000 years) are clamped to it.
pub fn format_pg_timestamp_us(us: i64) -> String {
    format_unix_us(pg_epoch_to_unix_us(us))
}

/// Microseconds since the Unix epoch → RFC 3339 UTC with `Z` and exactly 6 fractional
/// digits, e.g. `"2026-11-20T12:00:00.123456Z"`; out-of-range values clamp to chrono's limits.
pub fn format_unix_us(unix: i64) -> String {
    let dt = match DateTime::from_timestamp_micros(unix) {
        Some(dt) => dt.naive_utc(),
        None if unix < 0 => NaiveDateTime::MIN,
        None => NaiveDateTime::MAX,
    };
    rfc3339(&dt, true)
}

/// Microseconds since the PostgreSQL epoch (2000-01-01 00:00:00 UTC) → microseconds
/// since the Unix epoch (adds 946 684 800 000 000; saturates at the `i64` bounds).
pub fn pg_epoch_to_unix_us(us: i64) -> i64 {
    us.saturating_add(PG_EPOCH_UNIX_US)
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
