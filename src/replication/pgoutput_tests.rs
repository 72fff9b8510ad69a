//! Tests for the pgoutput decoder (included from `pgoutput.rs`).

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// Test-only pgoutput message encoder (big-endian, NUL-terminated strings).
struct Msg(Vec<u8>);

impl Msg {
    fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    /// TupleData: `None` = NULL, `Some("\u{0}u")` = unchanged TOAST, else text.
    fn tuple(mut self, values: &[Option<&str>]) -> Self {
        self = self.i16(values.len() as i16);
        for v in values {
            self = match v {
                None => self.u8(b'n'),
                Some(UNCHANGED) => self.u8(b'u'),
                Some(text) => self.u8(b't').i32(text.len() as i32).raw(text.as_bytes()),
            };
        }
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn build(self) -> Vec<u8> {
        self.0
    }
}

const UNCHANGED: &str = "\u{0}u";

fn relation_msg(oid: u32, schema: &str, name: &str, cols: &[(&str, u32, bool)]) -> Vec<u8> {
    let mut m = Msg::new(b'R')
        .u32(oid)
        .cstr(schema)
        .cstr(name)
        .u8(b'd')
        .i16(cols.len() as i16);
    for &(col, type_oid, key) in cols {
        m = m.u8(u8::from(key)).cstr(col).u32(type_oid).i32(-1);
    }
    m.build()
}

const EVENTS_OID: u32 = 16_384;
const EVENTS_COLS: [(&str, u32, bool); 6] = [
    ("id", oid::UUID, true),
    ("user_id", oid::UUID, false),
    ("timestamp", oid::TIMESTAMPTZ, false),
    ("event_type", oid::TEXT, false),
    ("value", oid::JSONB, false),
    ("is_deleted", oid::BOOL, false),
];
const ID: &str = "0b6f4f57-5c2c-4a8e-9d1e-2f4b6f3a1c7d";
const USER: &str = "6a1d3a5e-8f1b-4c2d-9e3f-4a5b6c7d8e9f";

fn events_row() -> [Option<&'static str>; 6] {
    [
        Some(ID),
        Some(USER),
        Some("2026-11-20 12:00:00.12+00"),
        Some("like"),
        Some(r#"{"post": 7, "tags": ["a"]}"#),
        Some("f"),
    ]
}

fn events_decoder() -> Decoder {
    let mut d = Decoder::new();
    d.decode(&relation_msg(
        EVENTS_OID,
        "public",
        "engagement_events",
        &EVENTS_COLS,
    ))
    .unwrap();
    d
}

fn insert_msg(oid: u32, values: &[Option<&str>]) -> Vec<u8> {
    Msg::new(b'I').u32(oid).u8(b'N').tuple(values).build()
}

fn keys(r: &Record) -> Vec<&str> {
    r.keys().map(String::as_str).collect()
}

#[test]
fn relation_then_insert_gives_typed_record_in_column_order() {
    let mut d = Decoder::new();
    let rel = match d.decode(&relation_msg(
        EVENTS_OID,
        "public",
        "engagement_events",
        &EVENTS_COLS,
    )) {
        Ok(Change::Relation(rel)) => rel,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (rel.oid, rel.schema.as_str(), rel.name.as_str()),
        (EVENTS_OID, "public", "engagement_events")
    );
    assert_eq!(rel.replica_identity, b'd');
    assert_eq!(rel.columns.len(), 6);
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert_eq!(
        (rel.columns[2].type_oid, rel.columns[2].type_modifier),
        (oid::TIMESTAMPTZ, -1)
    );
    assert!(Arc::ptr_eq(d.relation(EVENTS_OID).unwrap(), &rel));

    let Change::Insert { relation, new } =
        d.decode(&insert_msg(EVENTS_OID, &events_row())).unwrap()
    else {
        panic!("not an insert");
    };
    assert!(Arc::ptr_eq(&relation, &rel));
    assert_eq!(
        keys(&new),
        [
            "id",
            "user_id",
            "timestamp",
            "event_type",
            "value",
            "is_deleted"
        ]
    );
    assert_eq!(
        Value::Object(new),
        json!({
            "id": ID,
            "user_id": USER,
            "timestamp": "2026-11-20T12:00:00.120000Z",
            "event_type": "like",
            "value": {"post": 7, "tags": ["a"]},
            "is_deleted": false,
        })
    );
}

#[test]
fn columns_are_mapped_by_the_relation_message_order() {
    let mut d = Decoder::new();
    let cols = [
        ("is_deleted", oid::BOOL, false),
        ("value", oid::JSONB, false),
        ("id", oid::UUID, true),
    ];
    d.decode(&relation_msg(7, "", "t", &cols)).unwrap();
    assert_eq!(d.relation(7).unwrap().schema, "pg_catalog");
    let Change::Insert { new, .. } = d
        .decode(&insert_msg(7, &[Some("t"), Some("[1,2]"), Some(ID)]))
        .unwrap()
    else {
        panic!("not an insert");
    };
    assert_eq!(keys(&new), ["is_deleted", "value", "id"]);
    assert_eq!(
        Value::Object(new),
        json!({"is_deleted": true, "value": [1, 2], "id": ID})
    );
}

#[test]
fn resent_relation_with_added_column_updates_the_cache() {
    let mut d = events_decoder();
    let mut cols = EVENTS_COLS.to_vec();
    cols.push(("score", oid::INT4, false));
    d.decode(&relation_msg(
        EVENTS_OID,
        "public",
        "engagement_events",
        &cols,
    ))
    .unwrap();
    assert_eq!(d.relation(EVENTS_OID).unwrap().columns.len(), 7);
    let mut row = events_row().to_vec();
    row.push(Some("42"));
    let Change::Insert { relation, new } = d.decode(&insert_msg(EVENTS_OID, &row)).unwrap() else {
        panic!("not an insert");
    };
    assert_eq!(relation.columns.len(), 7);
    assert_eq!(new["score"], json!(42));
    assert_eq!(
        d.decode(&insert_msg(EVENTS_OID, &events_row())),
        Err(DecodeError::ColumnCountMismatch {
            relation: EVENTS_OID,
            expected: 7,
            found: 6
        })
    );
}

#[test]
fn insert_for_unknown_relation_fails() {
    let mut d = events_decoder();
    assert_eq!(
        d.decode(&insert_msg(99, &events_row())),
        Err(DecodeError::UnknownRelation(99))
    );
    assert!(d.relation(99).is_none());
}

#[test]
fn null_and_unchanged_toast_values() {
    let mut d = events_decoder();
    let row = [
        Some(ID),
        None,
        Some("2026-11-20 12:00:00+00"),
        None,
        Some(UNCHANGED),
        Some("t"),
    ];
    let Change::Insert { new, .. } = d.decode(&insert_msg(EVENTS_OID, &row)).unwrap() else {
        panic!("not an insert");
    };
    assert_eq!(
        keys(&new),
        ["id", "user_id", "timestamp", "event_type", "is_deleted"]
    );
    assert_eq!(new["user_id"], Value::Null);
    assert_eq!(new["event_type"], Value::Null);
    assert!(!new.contains_key("value"));
}

#[test]
fn binary_values_become_hex_strings() {
    let mut d = Decoder::new();
    d.decode(&relation_msg(
        3,
        "public",
        "b",
        &[("data", oid::BYTEA, false)],
    ))
    .unwrap();
    let msg = Msg::new(b'I')
        .u32(3)
        .u8(b'N')
        .i16(1)
        .u8(b'b')
        .i32(3)
        .raw(&[0x00, 0xab, 0xff])
        .build();
    let Change::Insert { new, .. } = d.decode(&msg).unwrap() else {
        panic!("not an insert")
    };
    assert_eq!(new["data"], json!("\\x00abff"));
}

#[test]
fn update_without_old_tuple() {
    let mut d = events_decoder();
    let msg = Msg::new(b'U')
        .u32(EVENTS_OID)
        .u8(b'N')
        .tuple(&events_row())
        .build();
    let Change::Update { old, new, .. } = d.decode(&msg).unwrap() else {
        panic!("not an update")
    };
    assert_eq!(old, None);
    assert_eq!(new["is_deleted"], json!(false));
}

#[test]
fn update_with_key_old_tuple_keeps_only_key_columns() {
    let mut d = events_decoder();
    let old_key = [Some(ID), None, None, None, None, None];
    let mut new_row = events_row();
    new_row[0] = Some(USER);
    let msg = Msg::new(b'U')
        .u32(EVENTS_OID)
        .u8(b'K')
        .tuple(&old_key)
        .u8(b'N')
        .tuple(&new_row)
        .build();
    let Change::Update { old, new, .. } = d.decode(&msg).unwrap() else {
        panic!("not an update")
    };
    assert_eq!(Value::Object(old.unwrap()), json!({ "id": ID }));
    assert_eq!(new["id"], json!(USER));
}

#[test]
fn update_with_full_old_tuple() {
    let mut d = events_decoder();
    let mut old_row = events_row();
    old_row[4] = Some(UNCHANGED);
    old_row[3] = None;
    let msg = Msg::new(b'U')
        .u32(EVENTS_OID)
        .u8(b'O')
        .tuple(&old_row)
        .u8(b'N')
        .tuple(&events_row())
        .build();
    let Change::Update { old, new, .. } = d.decode(&msg).unwrap() else {
        panic!("not an update")
    };
    let old = old.unwrap();
    assert_eq!(
        keys(&old),
        ["id", "user_id", "timestamp", "event_type", "is_deleted"]
    );
    assert_eq!(old["event_type"], Value::Null);
    assert_eq!(new.len(), 6);
}

#[test]
fn update_with_bad_markers_fails() {
    let mut d = events_decoder();
    let msg = Msg::new(b'U').u32(EVENTS_OID).u8(b'X').build();
    assert_eq!(
        d.decode(&msg),
        Err(DecodeError::UnexpectedTupleKind {
            message: "Update",
            expected: "'K', 'O' or 'N'",
            found: b'X'
        })
    );
    let msg = Msg::new(b'U')
        .u32(EVENTS_OID)
        .u8(b'K')
        .tuple(&events_row())
        .u8(b'K')
        .build();
    assert_eq!(
        d.decode(&msg),
        Err(DecodeError::UnexpectedTupleKind {
            message: "Update",
            expected: "'N'",
            found: b'K'
        })
    );
}

#[test]
fn delete_with_key_and_full_old_tuples() {
    let mut d = events_decoder();
    let msg = Msg::new(b'D')
        .u32(EVENTS_OID)
        .u8(b'K')
        .tuple(&[Some(ID), None, None, None, None, None])
        .build();
    let Change::Delete { relation, old } = d.decode(&msg).unwrap() else {
        panic!("not a delete")
    };
    assert_eq!(relation.oid, EVENTS_OID);
    assert_eq!(Value::Object(old), json!({ "id": ID }));

    let msg = Msg::new(b'D')
        .u32(EVENTS_OID)
        .u8(b'O')
        .tuple(&events_row())
        .build();
    let Change::Delete { old, .. } = d.decode(&msg).unwrap() else {
        panic!("not a delete")
    };
    assert_eq!(old.len(), 6);
    assert_eq!(old["value"], json!({"post": 7, "tags": ["a"]}));

    let msg = Msg::new(b'D')
        .u32(EVENTS_OID)
        .u8(b'N')
        .tuple(&events_row())
        .build();
    assert!(matches!(
        d.decode(&msg),
        Err(DecodeError::UnexpectedTupleKind { found: b'N', .. })
    ));
}

#[test]
fn truncate_resolves_relations() {
    let mut d = events_decoder();
    d.decode(&relation_msg(
        9,
        "public",
        "other",
        &[("id", oid::INT8, true)],
    ))
    .unwrap();
    let msg = Msg::new(b'T').i32(2).u8(3).u32(9).u32(EVENTS_OID).build();
    let Change::Truncate { relations } = d.decode(&msg).unwrap() else {
        panic!("not a truncate")
    };
    let names: Vec<&str> = relations.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["other", "engagement_events"]);

    let msg = Msg::new(b'T').i32(1).u8(0).u32(1234).build();
    assert_eq!(d.decode(&msg), Err(DecodeError::UnknownRelation(1234)));
    let msg = Msg::new(b'T').i32(-1).u8(0).build();
    assert!(matches!(
        d.decode(&msg),
        Err(DecodeError::InvalidCount { count: -1, .. })
    ));
}

#[test]
fn begin_and_commit() {
    let mut d = Decoder::new();
    let begin = Msg::new(b'B')
        .u64(0x16_B374_D848)
        .i64(817_041_600_123_456)
        .u32(771)
        .build();
    assert_eq!(
        d.decode(&begin).unwrap(),
        Change::Begin {
            final_lsn: 0x16_B374_D848,
            commit_time_us: 817_041_600_123_456,
            xid: 771
        }
    );
    let commit = Msg::new(b'C').u8(0).u64(10).u64(20).i64(-5).build();
    assert_eq!(
        d.decode(&commit).unwrap(),
        Change::Commit {
            commit_lsn: 10,
            end_lsn: 20,
            commit_time_us: -5
        }
    );
}

#[test]
fn ignored_empty_and_unknown_tags() {
    let mut d = Decoder::new();
    for tag in [b'Y', b'O', b'M'] {
        assert_eq!(d.decode(&[tag, 1, 2]), Ok(Change::Ignored(tag)));
    }
    assert_eq!(d.decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        d.decode(b"S\0\0\0\x01\x01"),
        Err(DecodeError::UnknownTag(b'S'))
    );
    assert_eq!(
        DecodeError::UnknownTag(b'S').to_string(),
        "unknown pgoutput message tag 'S' (0x53)"
    );
    assert_eq!(
        DecodeError::UnknownTag(0).to_string(),
        "unknown pgoutput message tag 0x00"
    );
}

#[test]
fn malformed_bodies_fail_cleanly() {
    let mut d = events_decoder();
    let mut trailing = insert_msg(EVENTS_OID, &events_row());
    trailing.push(0);
    assert_eq!(
        d.decode(&trailing),
        Err(DecodeError::TrailingBytes {
            message: "Insert",
            count: 1
        })
    );

    let msg = Msg::new(b'I')
        .u32(EVENTS_OID)
        .u8(b'N')
        .i16(6)
        .u8(b'x')
        .build();
    let err = d.decode(&msg).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownColumnKind {
            message: "Insert",
            column: 0,
            kind: b'x'
        }
    );
    assert_eq!(
        err.to_string(),
        "unknown column kind 'x' (0x78) for column 0 in Insert message"
    );

    let msg = Msg::new(b'I')
        .u32(EVENTS_OID)
        .u8(b'N')
        .i16(6)
        .u8(b't')
        .i32(2)
        .raw(&[0xff, 0xfe])
        .build();
    assert_eq!(
        d.decode(&msg),
        Err(DecodeError::InvalidUtf8 {
            message: "Insert",
            field: "column value"
        })
    );

    let msg = Msg::new(b'I')
        .u32(EVENTS_OID)
        .u8(b'N')
        .i16(6)
        .u8(b't')
        .i32(-1)
        .build();
    assert!(matches!(
        d.decode(&msg),
        Err(DecodeError::InvalidCount {
            field: "value length",
            ..
        })
    ));

    let msg = Msg::new(b'I').u32(EVENTS_OID).u8(b'K').build();
    assert!(matches!(
        d.decode(&msg),
        Err(DecodeError::UnexpectedTupleKind { found: b'K', .. })
    ));

    let msg = Msg::new(b'R')
        .u32(5)
        .cstr("public")
        .cstr("x")
        .u8(b'd')
        .i16(-2)
        .build();
    assert!(matches!(
        d.decode(&msg),
        Err(DecodeError::InvalidCount { count: -2, .. })
    ));
    let msg = Msg::new(b'R')
        .u32(5)
        .raw(&[0xc3, 0x28, 0])
        .cstr("x")
        .u8(b'd')
        .i16(0)
        .build();
    assert_eq!(
        d.decode(&msg),
        Err(DecodeError::InvalidUtf8 {
            message: "Relation",
            field: "namespace"
        })
    );
    assert!(d.relation(5).is_none());

    let err = d.decode(&[b'I', 0, 0]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Truncated {
            message: "Insert",
            field: "relation OID"
        }
    );
    assert_eq!(
        err.to_string(),
        "truncated Insert message: missing relation OID"
    );
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut key = [None; 6];
    key[0] = Some(ID);
    vec![
        relation_msg(EVENTS_OID, "public", "engagement_events", &EVENTS_COLS),
        insert_msg(EVENTS_OID, &events_row()),
        Msg::new(b'U')
            .u32(EVENTS_OID)
            .u8(b'N')
            .tuple(&events_row())
            .build(),
        Msg::new(b'U')
            .u32(EVENTS_OID)
            .u8(b'K')
            .tuple(&key)
            .u8(b'N')
            .tuple(&events_row())
            .build(),
        Msg::new(b'U')
            .u32(EVENTS_OID)
            .u8(b'O')
            .tuple(&events_row())
            .u8(b'N')
            .tuple(&events_row())
            .build(),
        Msg::new(b'D').u32(EVENTS_OID).u8(b'K').tuple(&key).build(),
        Msg::new(b'D')
            .u32(EVENTS_OID)
            .u8(b'O')
            .tuple(&events_row())
            .build(),
        Msg::new(b'T').i32(1).u8(1).u32(EVENTS_OID).build(),
        Msg::new(b'B').u64(1).i64(2).u32(3).build(),
        Msg::new(b'C').u8(0).u64(1).u64(2).i64(3).build(),
        Msg::new(b'I')
            .u32(EVENTS_OID)
            .u8(b'N')
            .i16(6)
            .u8(b'b')
            .i32(1)
            .raw(b"z")
            .raw(b"nnnnn")
            .build(),
    ]
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    for msg in valid_messages() {
        let mut d = events_decoder();
        assert!(d.decode(&msg).is_ok(), "full message must decode: {msg:?}");
        for len in 0..msg.len() {
            let mut d = events_decoder();
            assert!(
                d.decode(&msg[..len]).is_err(),
                "prefix of {len} bytes of {msg:?} decoded"
            );
        }
    }
}

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
    assert_eq!(
        keys(
            text_to_json(oid::JSON, r#"{"z":1,"a":2}"#)
                .as_object()
                .unwrap()
        ),
        ["z", "a"]
    );
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
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Decoder::new().decode(&data);
        let _ = events_decoder().decode(&data);
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        tag in proptest::sample::select(b"BCRIUDTYOM".to_vec()),
        known_oid in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut msg = vec![tag];
        if known_oid && tag != b'T' {
            msg.extend_from_slice(&EVENTS_OID.to_be_bytes());
        }
        msg.extend_from_slice(&body);
        let _ = events_decoder().decode(&msg);
    }

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
