//! Tests for [`Event`] (included from `event.rs`): the frame, reading the row back from it, the
//! shared encodings.

use super::*;
use crate::model::history_id;
use serde_json::json;

const OWNER: &str = "6a1d3a5e-8f1b-4c2d-9e3f-4a5b6c7d8e9f";

fn row(value: Value) -> Record {
    value.as_object().cloned().unwrap_or_default()
}

fn sample() -> Record {
    row(json!({
        "id": "0b6f4f57-5c2c-4a8e-9d1e-2f4b6f3a1c7d",
        "user_id": OWNER,
        "timestamp": "2026-11-20T12:00:00.500000Z",
        "event_type": "goal_complete",
        "value": {"steps": 12_000, "ratio": 0.1, "tags": ["a", "\"q\""], "big": 1e300},
        "is_deleted": false,
        "note": null,
        "n": -5,
    }))
}

fn event(operation: Operation, record: Record) -> Event {
    let cursor = Cursor {
        lsn: 0x16B3_7A28,
        index: 3,
        history: history_id("7441040390381235290", 1),
    };
    let relation = Relation::fixture();
    Event::new(
        cursor,
        1_763_640_000_123_456,
        operation,
        (relation, "user_id"),
        record,
    )
}

/// The frame as the relay wrote it before events kept only their bytes: a serde struct.
#[derive(Serialize)]
struct NativeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a str,
    table: &'a str,
    cursor: String,
    commit_timestamp: String,
    record: &'a Record,
}

#[test]
fn the_native_frame_is_byte_for_byte_the_serde_encoding() {
    for operation in [Operation::Insert, Operation::Update] {
        for record in [sample(), Record::new(), row(json!({"a\"b": "x\ny"}))] {
            let e = event(operation, record.clone());
            let expected = serde_json::to_string(&NativeFrame {
                kind: operation.as_str(),
                schema: "public",
                table: "engagement_events",
                cursor: e.cursor.to_string(),
                commit_timestamp: "2025-11-20T12:00:00.123456Z".into(),
                record: &record,
            })
            .unwrap();
            assert_eq!(std::str::from_utf8(&e.native_frame()).unwrap(), expected);
            assert_eq!(e.encoded_len(), expected.len());
        }
    }
}

#[test]
fn the_row_is_read_back_from_the_frame_unchanged() {
    let e = event(Operation::Insert, sample());
    assert_eq!(e.record(), sample());
    let keys: Vec<String> = e.record().keys().cloned().collect();
    let expected: Vec<String> = sample().keys().cloned().collect();
    assert_eq!(keys, expected, "column order is kept");
    assert_eq!(e.record_json(), serde_json::to_string(&sample()).unwrap());
    assert!(std::str::from_utf8(&e.native_frame())
        .unwrap()
        .ends_with(&format!("\"record\":{}}}", e.record_json())));
    assert_eq!(e.owner, Some(Uuid::parse_str(OWNER).unwrap()));
}

#[test]
fn select_decodes_only_the_named_columns() {
    let e = event(Operation::Insert, sample());
    let picked = e.select(&["n", "note", "value", "absent"]);
    assert_eq!(
        picked,
        row(json!({"value": sample()["value"], "note": null, "n": -5}))
    );
    assert!(e.select(&[]).is_empty());
    let escaped = event(Operation::Insert, row(json!({"a\"b": 1, "c": 2})));
    assert_eq!(escaped.select(&["a\"b"]), row(json!({"a\"b": 1})));
}

#[test]
fn event_type_is_borrowed_from_the_frame_or_unescaped() {
    let e = event(Operation::Insert, sample());
    assert!(matches!(
        e.event_type(),
        Some(Cow::Borrowed("goal_complete"))
    ));
    let quoted = event(
        Operation::Insert,
        row(json!({"event_type": "a\"b\\c\u{e9}\n"})),
    );
    assert_eq!(quoted.event_type().as_deref(), Some("a\"b\\c\u{e9}\n"));
    for record in [row(json!({"event_type": 5})), Record::new()] {
        assert_eq!(event(Operation::Insert, record).event_type(), None);
    }
    let no_owner = event(Operation::Insert, row(json!({"user_id": "not a uuid"})));
    assert_eq!(no_owner.owner, None);
}

#[test]
fn an_encoding_is_built_once_and_may_nest() {
    let event = event(Operation::Insert, Record::new());
    let mut calls = 0;
    let outer = event.encoded("outer", |e| {
        calls += 1;
        let inner = e.encoded("inner", |_| "x".into());
        format!("[{}]", std::str::from_utf8(&inner).unwrap())
    });
    assert_eq!(&outer[..], b"[x]");
    assert_eq!(&event.encoded("outer", |_| unreachable!())[..], b"[x]");
    assert_eq!(calls, 1);
    event.drop_encodings();
    assert_eq!(&event.encoded("outer", |_| "again".into())[..], b"again");
}

#[test]
fn the_memory_estimate_is_the_frame_plus_a_constant() {
    let small = event(Operation::Insert, Record::new());
    let large = event(Operation::Insert, sample());
    let fixed = small.approx_bytes() - small.encoded_len();
    assert!(fixed < 400, "struct, headers and slots: {fixed} bytes");
    let grown = large.approx_bytes() - small.approx_bytes();
    let frame = large.encoded_len() - small.encoded_len();
    assert!(grown.abs_diff(frame) <= 16, "{grown} vs {frame}");
}

#[test]
fn timestamps_have_microseconds_and_z() {
    assert_eq!(
        format_unix_us(1_763_640_000_123_456),
        "2025-11-20T12:00:00.123456Z"
    );
    assert_eq!(format_unix_us(0), "1970-01-01T00:00:00.000000Z");
}

#[test]
fn a_delete_frame_has_only_the_old_row_and_is_routed_by_it() {
    let owner = Uuid::new_v4();
    let old = json!({"id": 7, "user_id": owner.to_string(), "event_type": "app_open"});
    let e = event(Operation::Delete, old.as_object().cloned().unwrap());
    assert_eq!(e.owner, Some(owner));
    let frame: Value = serde_json::from_slice(&e.native_frame()).unwrap();
    assert_eq!(frame["type"], "delete");
    assert!(frame.get("record").is_none(), "{frame}");
    assert_eq!(frame["old_record"], old);
    assert_eq!(e.old_record_json(), Some(e.record_json()));
    assert_eq!(e.event_type().as_deref(), Some("app_open"));
}

#[test]
fn an_update_carries_its_old_row_when_sent() {
    let new = json!({"id": 7, "is_deleted": true});
    let old = json!({"id": 7, "is_deleted": false});
    let e = Event::change(
        Cursor::default(),
        0,
        Operation::Update,
        (Relation::fixture(), "user_id"),
        new.as_object().cloned().unwrap(),
        old.as_object().cloned(),
    );
    let frame: Value = serde_json::from_slice(&e.native_frame()).unwrap();
    assert_eq!(frame["record"], new);
    assert_eq!(frame["old_record"], old);
    assert_eq!(e.record_json(), new.to_string());
    assert_eq!(e.old_record_json(), Some(old.to_string().as_str()));
    let plain = event(Operation::Update, new.as_object().cloned().unwrap());
    assert_eq!(plain.old_record_json(), None);
    assert!(!String::from_utf8_lossy(&plain.native_frame()).contains("old_record"));
}

#[test]
fn an_update_moving_the_row_to_another_owner_drops_the_old_row() {
    let other = "0f0e0d0c-0b0a-4909-8807-060504030201";
    let new = json!({"id": 7, "user_id": OWNER, "value": {"b": 2}});
    let old = json!({"id": 7, "user_id": other, "value": {"a": 1}});
    let e = Event::change(
        Cursor::default(),
        0,
        Operation::Update,
        (Relation::fixture(), "user_id"),
        new.as_object().cloned().unwrap(),
        old.as_object().cloned(),
    );
    assert_eq!(e.owner, Uuid::parse_str(OWNER).ok());
    assert_eq!(e.moved_from, Uuid::parse_str(other).ok());
    assert_eq!(e.old_record_json(), None);
    assert!(!String::from_utf8_lossy(&e.native_frame()).contains(other));
    // An old row without the owner column (a key-only identity) is the same owner's row.
    let key_only = json!({"id": 7});
    let e = Event::change(
        Cursor::default(),
        0,
        Operation::Update,
        (Relation::fixture(), "user_id"),
        new.as_object().cloned().unwrap(),
        key_only.as_object().cloned(),
    );
    assert_eq!(e.moved_from, None);
    assert_eq!(e.old_record_json(), Some(key_only.to_string().as_str()));
}

#[test]
fn row_keys_tell_rows_and_tables_apart() {
    let (one, two) = (json!("a"), json!("b"));
    let key = |t, v| row_key("public", t, &[Some(v)]);
    assert_eq!(key("events", &one), key("events", &one));
    assert_ne!(key("events", &one), key("events", &two));
    assert_ne!(key("events", &one), key("other", &one));
    assert_eq!(row_key("public", "events", &[]), None);
    assert_eq!(row_key("public", "events", &[None]), None);
    assert_eq!(row_key("public", "events", &[Some(&Value::Null)]), None);
}

/// What [`Event::from_frame`] needs of `event`.
fn meta_of(event: &Event) -> FrameMeta {
    FrameMeta {
        cursor: event.cursor,
        commit_time_us: event.commit_time_us,
        operation: event.operation,
        relation: event.relation.clone(),
        owner: event.owner,
        row: event.row,
        moved_from: event.moved_from,
    }
}

#[test]
fn an_event_rebuilt_from_its_frame_reads_the_same_row_type_and_old_row() {
    let escaped = row(json!({"user_id": OWNER, "event_type": "a\"b", "n": 1}));
    let update = Event::change(
        event(Operation::Insert, sample()).cursor,
        1,
        Operation::Update,
        (Relation::fixture(), "user_id"),
        sample(),
        Some(row(json!({"user_id": OWNER, "n": 0}))),
    );
    let cases = [
        event(Operation::Insert, sample()),
        event(Operation::Delete, sample()),
        event(Operation::Insert, escaped),
        update,
    ];
    for original in cases {
        let rebuilt = Event::from_frame(original.native_frame(), meta_of(&original)).unwrap();
        assert_eq!(rebuilt.native_frame(), original.native_frame());
        assert_eq!(rebuilt.record_json(), original.record_json());
        assert_eq!(rebuilt.old_record_json(), original.old_record_json());
        assert_eq!(rebuilt.event_type(), original.event_type());
        assert_eq!(
            (rebuilt.owner, rebuilt.cursor),
            (original.owner, original.cursor)
        );
    }
}

#[test]
fn a_frame_without_its_row_is_refused() {
    let insert = event(Operation::Insert, sample());
    for frame in ["{}", "not json", r#"{"old_record":{}}"#, "[1]"] {
        let bytes = Bytes::from(frame);
        assert!(
            Event::from_frame(bytes, meta_of(&insert)).is_none(),
            "{frame}"
        );
    }
}
