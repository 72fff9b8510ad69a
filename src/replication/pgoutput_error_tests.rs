//! Decoder tests for malformed, truncated and arbitrary input (included from
//! `pgoutput_tests.rs`, whose encoder and fixtures they use).

use super::*;
use proptest::prelude::*;

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
        events_msg(b'U', &[(b'N', &events_row())]),
        events_msg(b'U', &[(b'K', &key), (b'N', &events_row())]),
        events_msg(b'U', &[(b'O', &events_row()), (b'N', &events_row())]),
        events_msg(b'D', &[(b'K', &key)]),
        events_msg(b'D', &[(b'O', &events_row())]),
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
}
