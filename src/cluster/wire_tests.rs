//! Tests for the JetStream wire format (included from `wire.rs`).

use super::*;
use serde_json::json;

const OWNER_ID: &str = "6a1d3a5e-8f1b-4c2d-9e3f-4a5b6c7d8e9f";

fn event(operation: Operation) -> Event {
    let record = json!({"id": "0b6f4f57-5c2c-4a8e-9d1e-2f4b6f3a1c7d", "user_id": OWNER_ID,
                        "event_type": "app_open", "value": {"n": 1}});
    let mut event = Event::new(
        Cursor {
            lsn: 0x16B3_7A28,
            index: 2,
            history: 7,
        },
        1_763_640_000_123_456,
        operation,
        (Relation::fixture(), "user_id"),
        record.as_object().cloned().unwrap_or_default(),
    );
    event.row = Some(0xdead_beef);
    event
}

#[test]
fn an_event_survives_the_trip_with_its_frame_owner_row_and_relation() {
    let mut decoder = Decoder::default();
    for operation in [Operation::Insert, Operation::Update, Operation::Delete] {
        let sent = event(operation);
        let subject = subject("relay", &sent);
        assert_eq!(
            subject,
            format!("relay.public.engagement_events.{OWNER_ID}")
        );
        let headers = event_headers(&sent, &encode_relation(&sent.relation));
        let got = match decoder.decode(&subject, Some(&headers), sent.native_frame()) {
            Ok(Incoming::Event(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.native_frame(), sent.native_frame());
        assert_eq!(
            (
                got.cursor,
                got.commit_time_us,
                got.operation,
                got.owner,
                got.row
            ),
            (
                sent.cursor,
                sent.commit_time_us,
                sent.operation,
                sent.owner,
                sent.row
            )
        );
        assert_eq!(*got.relation, *sent.relation);
        assert_eq!(got.event_type().as_deref(), Some("app_open"));
    }
}

#[test]
fn relations_are_shared_between_messages() {
    let mut decoder = Decoder::default();
    let sent = event(Operation::Insert);
    let headers = event_headers(&sent, &encode_relation(&sent.relation));
    let mut read = || match decoder.decode("relay.x", Some(&headers), sent.native_frame()) {
        Ok(Incoming::Event(e)) => e.relation,
        other => panic!("{other:?}"),
    };
    assert!(Arc::ptr_eq(&read(), &read()));
}

#[test]
fn a_begin_message_names_its_history_and_lsn() {
    let (id, headers) = begin_headers(9, 77);
    assert_eq!(id, "begin-00000009-000000000000004d");
    let got = Decoder::default().decode(&begin_subject("relay"), Some(&headers), Bytes::new());
    assert!(
        matches!(
            got,
            Ok(Incoming::Begin {
                history: 9,
                lsn: 77
            })
        ),
        "{got:?}"
    );
}

#[test]
fn begin_and_mark_messages_say_from_where_the_stream_is_whole() {
    let after = Cursor {
        lsn: 500,
        index: 3,
        history: 9,
    };
    let (id, headers) = mark_headers(after);
    assert_eq!(id, format!("mark-{after}"));
    let mark = Decoder::default().decode(&mark_subject("relay"), Some(&headers), Bytes::new());
    assert_eq!(mark.unwrap().horizon(), Some(after));
    let (_, headers) = begin_headers(9, 77);
    let begin = Decoder::default().decode(&begin_subject("relay"), Some(&headers), Bytes::new());
    assert_eq!(begin.unwrap().horizon(), Some(Cursor::before(77, 9)));
}

#[test]
fn stored_messages_give_their_cursor_and_erasable_row() {
    let insert = event(Operation::Insert);
    let relation = encode_relation(&insert.relation);
    let headers = event_headers(&insert, &relation);
    assert_eq!(message_cursor(Some(&headers)), Some(insert.cursor));
    assert_eq!(erasable_row(Some(&headers)), insert.row);
    let delete = event(Operation::Delete);
    assert_eq!(erasable_row(Some(&event_headers(&delete, &relation))), None);
    assert_eq!(message_cursor(None), None);
}

#[test]
fn unreadable_messages_are_errors_not_panics() {
    let sent = event(Operation::Insert);
    let good = event_headers(&sent, &encode_relation(&sent.relation));
    let mut decoder = Decoder::default();
    assert!(decoder
        .decode("relay.x", None, sent.native_frame())
        .is_err());
    assert!(decoder
        .decode("relay.x", Some(&good), Bytes::from("{}"))
        .is_err());
    for (name, value) in [
        (NATS_MESSAGE_ID.as_ref(), "nope"),
        (OP, "truncate"),
        (OWNER, "not-a-uuid"),
        (ROW, "xyz"),
        (RELATION, "[]"),
        (COMMIT_US, "soon"),
    ] {
        let mut bad = good.clone();
        bad.insert(name, value);
        let got = decoder.decode("relay.x", Some(&bad), sent.native_frame());
        assert!(got.is_err(), "{name}: {got:?}");
    }
    assert!(decoder
        .decode("relay._begin", Some(&good), Bytes::new())
        .is_err());
}

#[test]
fn odd_table_names_make_valid_subject_tokens() {
    assert_eq!(token("a.b c*>"), "a_b_c__");
    assert_eq!(token(""), "_");
    assert_eq!(
        owner_subjects("relay", Uuid::nil()),
        format!("relay.*.*.{}", Uuid::nil())
    );
}
