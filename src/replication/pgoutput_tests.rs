//! Tests for the pgoutput decoder (included from `pgoutput.rs`): the test-only
//! message encoder and fixtures, and the decoding of each well-formed message type.
//! Malformed, truncated and arbitrary input: `pgoutput_error_tests.rs`; value
//! conversions: `values_tests.rs`.

use super::*;
use serde_json::json;

use crate::model::oid;

#[path = "pgoutput_error_tests.rs"]
mod errors;

use relay_testkit::pgoutput_writer::{
    insert as insert_msg, relation as relation_msg, MessageWriter as Msg,
    UNCHANGED_TOAST as UNCHANGED,
};

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

/// A message `tag` on the events relation carrying `tuples`, each after its kind byte
/// (`'K'`, `'O'`, `'N'`).
fn events_msg(tag: u8, tuples: &[(u8, &[Option<&str>])]) -> Vec<u8> {
    tuples
        .iter()
        .fold(Msg::new(tag).u32(EVENTS_OID), |m, &(kind, tuple)| {
            m.u8(kind).tuple(tuple)
        })
        .build()
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
    let msg = events_msg(b'U', &[(b'N', &events_row())]);
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
    let msg = events_msg(b'U', &[(b'K', &old_key), (b'N', &new_row)]);
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
    let msg = events_msg(b'U', &[(b'O', &old_row), (b'N', &events_row())]);
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
    let msg = events_msg(b'D', &[(b'K', &[Some(ID), None, None, None, None, None])]);
    let Change::Delete { relation, old } = d.decode(&msg).unwrap() else {
        panic!("not a delete")
    };
    assert_eq!(relation.oid, EVENTS_OID);
    assert_eq!(Value::Object(old), json!({ "id": ID }));

    let msg = events_msg(b'D', &[(b'O', &events_row())]);
    let Change::Delete { old, .. } = d.decode(&msg).unwrap() else {
        panic!("not a delete")
    };
    assert_eq!(old.len(), 6);
    assert_eq!(old["value"], json!({"post": 7, "tags": ["a"]}));

    let msg = events_msg(b'D', &[(b'N', &events_row())]);
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
