//! Tests for the value conversions (included from `values.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

const ID: &str = "0b6f4f57-5c2c-4a8e-9d1e-2f4b6f3a1c7d";

#[test]
fn text_to_json_strings() {
    for type_oid in [
        oid::UUID,
        oid::TEXT,
        oid::VARCHAR,
        oid::BPCHAR,
        oid::DATE,
        oid::BYTEA,
        1009,
        424_242,
    ] {
        assert_eq!(text_to_json(type_oid, "x y"), json!("x y"));
    }
    assert_eq!(text_to_json(oid::UUID, ID), json!(ID));
    assert_eq!(text_to_json(oid::TEXT, "42"), json!("42"));
    assert_eq!(text_to_json(oid::BPCHAR, "ab  "), json!("ab  "));
    assert_eq!(text_to_json(oid::DATE, "2026-11-20"), json!("2026-11-20"));
}

#[test]
fn text_to_json_bool_and_integers() {
    assert_eq!(text_to_json(oid::BOOL, "t"), json!(true));
    assert_eq!(text_to_json(oid::BOOL, "f"), json!(false));
    assert_eq!(text_to_json(oid::BOOL, "maybe"), json!("maybe"));
    assert_eq!(text_to_json(oid::INT2, "-32768"), json!(-32768));
    assert_eq!(text_to_json(oid::INT4, "2147483647"), json!(2_147_483_647));
    assert_eq!(
        text_to_json(oid::INT8, "-9223372036854775808"),
        json!(i64::MIN)
    );
    assert_eq!(
        text_to_json(oid::INT8, "9223372036854775808"),
        json!("9223372036854775808")
    );
    assert_eq!(text_to_json(oid::INT4, "12abc"), json!("12abc"));
}

#[test]
fn text_to_json_floats() {
    assert_eq!(text_to_json(oid::FLOAT8, "1.5"), json!(1.5));
    assert_eq!(text_to_json(oid::FLOAT8, "-1e-300"), json!(-1e-300));
    assert_eq!(text_to_json(oid::FLOAT4, "1.1"), json!(1.1));
    assert_eq!(
        text_to_json(oid::FLOAT8, "0.30000000000000004"),
        json!(0.300_000_000_000_000_04)
    );
    for special in ["NaN", "Infinity", "-Infinity"] {
        assert_eq!(text_to_json(oid::FLOAT4, special), json!(special));
        assert_eq!(text_to_json(oid::FLOAT8, special), json!(special));
    }
    assert_eq!(text_to_json(oid::FLOAT8, "abc"), json!("abc"));
}

#[test]
fn text_to_json_numeric() {
    assert_eq!(text_to_json(oid::NUMERIC, "42"), json!(42));
    assert_eq!(text_to_json(oid::NUMERIC, "-7"), json!(-7));
    assert_eq!(text_to_json(oid::NUMERIC, "12.50"), json!(12.5));
    assert_eq!(text_to_json(oid::NUMERIC, "0.1"), json!(0.1));
    assert_eq!(text_to_json(oid::NUMERIC, "-0.000123"), json!(-0.000123));
    assert_eq!(text_to_json(oid::NUMERIC, "0.00"), json!(0.0));
    assert_eq!(
        text_to_json(oid::NUMERIC, "100000000000000000000"),
        json!(1e20)
    );
    for lossy in [
        "12345678901234567890",
        "0.12345678901234567890123",
        "3.14159265358979323846",
        "NaN",
        "Infinity",
        "-Infinity",
        "1,5",
    ] {
        assert_eq!(text_to_json(oid::NUMERIC, lossy), json!(lossy), "{lossy}");
    }
    assert_eq!(text_to_json(oid::NUMERIC, "100.00"), json!(100.0));
    assert_eq!(text_to_json(oid::NUMERIC, "-1.50000"), json!(-1.5));
    assert_eq!(
        text_to_json(oid::NUMERIC, "0.30000000000000004"),
        json!(0.300_000_000_000_000_04)
    );
}

#[test]
fn text_to_json_json_and_jsonb() {
    assert_eq!(
        text_to_json(oid::JSONB, r#"{"b": 1, "a": [true, null]}"#),
        json!({"b": 1, "a": [true, null]})
    );
    let object = text_to_json(oid::JSON, r#"{"z":1,"a":2}"#);
    let keys: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["z", "a"]);
    assert_eq!(text_to_json(oid::JSON, "\"s\""), json!("s"));
    assert_eq!(text_to_json(oid::JSONB, "3"), json!(3));
    assert_eq!(text_to_json(oid::JSONB, "{broken"), json!("{broken"));
}

#[test]
fn text_to_json_timestamptz() {
    let tz = |s| text_to_json(oid::TIMESTAMPTZ, s);
    assert_eq!(
        tz("2026-11-20 12:00:00.12+00"),
        json!("2026-11-20T12:00:00.120000Z")
    );
    assert_eq!(
        tz("2026-11-20 12:00:00+00"),
        json!("2026-11-20T12:00:00.000000Z")
    );
    assert_eq!(
        tz("2026-11-20 17:30:00+05:30"),
        json!("2026-11-20T12:00:00.000000Z")
    );
    assert_eq!(
        tz("2026-11-20 12:00:00.123456-08"),
        json!("2026-11-20T20:00:00.123456Z")
    );
    assert_eq!(
        tz("2026-12-31 23:00:00-02"),
        json!("2027-01-01T01:00:00.000000Z")
    );
    assert_eq!(
        tz("1883-11-18 11:51:58-04:56:02"),
        json!("1883-11-18T16:48:00.000000Z")
    );
    assert_eq!(
        tz("2026-11-20T12:00:00Z"),
        json!("2026-11-20T12:00:00.000000Z")
    );
    for text in [
        "infinity",
        "-infinity",
        "0044-03-15 12:00:00+00 BC",
        "12026-11-20 12:00:00+00",
        "2026-11-20 12:00:00",
        "2026-02-30 12:00:00+00",
        "2026-11-20 25:00:00+00",
        "2026-11-20 12:00:00.1234567+00",
        "2026-11-20 12:00:00+05:",
        "2026-11-20 12:00:00+24",
        "Fri Nov 20 12:00:00 2026 UTC",
        "",
    ] {
        assert_eq!(tz(text), json!(text), "{text}");
    }
}

#[test]
fn text_to_json_timestamp_without_tz() {
    let ts = |s| text_to_json(oid::TIMESTAMP, s);
    assert_eq!(
        ts("2026-11-20 12:00:00.12"),
        json!("2026-11-20T12:00:00.120000")
    );
    assert_eq!(
        ts("2026-11-20 12:00:00"),
        json!("2026-11-20T12:00:00.000000")
    );
    for text in [
        "infinity",
        "2026-11-20 12:00:00+00",
        "0001-01-01 00:00:00 BC",
        "garbage",
    ] {
        assert_eq!(ts(text), json!(text), "{text}");
    }
}

#[test]
fn type_names() {
    let cases = [
        (oid::UUID, "uuid"),
        (oid::TIMESTAMPTZ, "timestamptz"),
        (oid::TEXT, "text"),
        (oid::JSONB, "jsonb"),
        (oid::BOOL, "bool"),
        (oid::INT4, "int4"),
        (oid::INT8, "int8"),
        (oid::FLOAT8, "float8"),
        (oid::NUMERIC, "numeric"),
        (oid::VARCHAR, "varchar"),
        (oid::TIMESTAMP, "timestamp"),
        (oid::DATE, "date"),
        (oid::JSON, "json"),
        (oid::BYTEA, "bytea"),
        (oid::INT2, "int2"),
        (oid::FLOAT4, "float4"),
        (oid::BPCHAR, "bpchar"),
        (1009, "_text"),
        (2951, "_uuid"),
        (1186, "interval"),
        (869, "inet"),
        (142, "xml"),
        (99_999, "unknown"),
    ];
    for (type_oid, name) in cases {
        assert_eq!(type_name(type_oid), name);
    }
}

#[test]
fn pg_timestamps() {
    assert_eq!(format_pg_timestamp_us(0), "2000-01-01T00:00:00.000000Z");
    assert_eq!(format_pg_timestamp_us(-1), "1999-12-31T23:59:59.999999Z");
    assert_eq!(
        format_pg_timestamp_us(848_491_200_123_456),
        "2026-11-20T12:00:00.123456Z"
    );
    assert_eq!(pg_epoch_to_unix_us(0), 946_684_800_000_000);
    assert_eq!(pg_epoch_to_unix_us(i64::MAX), i64::MAX);
    assert!(format_pg_timestamp_us(i64::MAX).starts_with('+'));
    assert!(format_pg_timestamp_us(i64::MIN).starts_with('-'));
}

proptest! {
    #[test]
    fn text_to_json_never_panics(s in ".{0,40}", type_oid in proptest::sample::select(vec![
        oid::BOOL, oid::INT2, oid::INT4, oid::INT8, oid::FLOAT4, oid::FLOAT8, oid::NUMERIC,
        oid::JSON, oid::JSONB, oid::TIMESTAMPTZ, oid::TIMESTAMP, oid::TEXT,
    ])) {
        let _ = text_to_json(type_oid, &s);
        let _ = text_to_json(type_oid, &format!("2026-11-20 12:00:00{s}"));
    }

    #[test]
    fn numeric_numbers_are_exact(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let text = format!("{x}");
        match text_to_json(oid::NUMERIC, &text) {
            Value::Number(n) => prop_assert_eq!(n.as_f64(), Some(x)),
            other => prop_assert!(false, "{} -> {}", text, other),
        }
    }

    #[test]
    fn pg_timestamp_round_trips(us in -63_082_281_600_000_000i64..252_455_615_999_999_999i64) {
        // 0001-01-01 ..= 9999-12-31 in PostgreSQL-epoch microseconds.
        let text = format_pg_timestamp_us(us);
        prop_assert_eq!(text.len(), 27);
        let parsed = DateTime::parse_from_rfc3339(&text).unwrap();
        prop_assert_eq!(parsed.timestamp_micros(), pg_epoch_to_unix_us(us));
        prop_assert_eq!(text_to_json(oid::TIMESTAMPTZ, &text), Value::String(text.clone()));
    }

    #[test]
    fn timestamptz_text_with_any_offset_round_trips(
        us in -60_000_000_000_000_000i64..250_000_000_000_000_000i64,
        offset_s in -15 * 3600i32..=15 * 3600,
    ) {
        let utc = DateTime::from_timestamp_micros(pg_epoch_to_unix_us(us)).unwrap();
        let local = utc.with_timezone(&FixedOffset::east_opt(offset_s).unwrap()).naive_local();
        let (sign, abs) = if offset_s < 0 { ('-', -offset_s) } else { ('+', offset_s) };
        let mut text = local.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(trimmed);
        text.push_str(&format!("{sign}{:02}", abs / 3600));
        if abs % 3600 != 0 {
            text.push_str(&format!(":{:02}", abs / 60 % 60));
        }
        if abs % 60 != 0 {
            text.push_str(&format!(":{:02}", abs % 60));
        }
        prop_assert_eq!(text_to_json(oid::TIMESTAMPTZ, &text), Value::String(format_pg_timestamp_us(us)));
    }
}
