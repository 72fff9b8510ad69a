//! Hot-path micro-benchmarks: the per-event work between the replication slot and the session
//! queues, measured on one `engagement_events` insert (`cargo bench --bench hot_path`).
//!
//! * `decode_insert` — [`Decoder::decode`] of one pgoutput protocol-v1 Insert (`'I'`) message
//!   (~300 bytes) for a table shaped like `engagement_events` (`id uuid`, `user_id uuid`,
//!   `timestamp timestamptz`, `event_type text`, `value jsonb` of ~150 bytes, `is_deleted bool`),
//!   after its Relation (`'R'`) message was decoded once. It covers the wire parsing, the
//!   relation-cache lookup and the text → JSON conversion of every column (including parsing the
//!   jsonb text). The returned [`Change`] is dropped outside the timed section.
//! * `encode_event` — [`Event::new`] on that decoded row: owner/event-type extraction and the
//!   one-time serialization of the native JSON frame, i.e. the per-event encoding cost shared by
//!   all receivers. The input record is cloned and the event dropped outside the timed section.
//! * `router_fanout/{1,10,1000}` — [`Router::dispatch`] of one `Arc<Event>` to 1, 10 and 1,000
//!   sessions subscribed for the event's owner: the owner lookup, one `try_send` per session
//!   into its bounded queue (capacity 1,024, the `limits.session_queue` default), the
//!   latest-cursor update, and the replay-window upkeep (append to the window and the owner's
//!   deque; the event's commit timestamp is old, so each dispatch also evicts one). Throughput is reported in sessions (deliveries) per second. Only the
//!   dispatch calls are timed: after every [`DRAIN_EVERY`] dispatches the clock is stopped and
//!   each subscription's `rx` is drained with `try_recv`, so the queues never fill and the
//!   receivers' work (dequeue, dropping their `Arc`) is excluded. No receiving task is parked on
//!   the queues, so the cost of waking one is not included either.
//!
//! * `route_row/{first,last}` — [`Tables::route`] for one row with the default `[[tables]]`
//!   (three entries): the streamed table's owner column for a relation and an operation, for
//!   the first entry (`engagement_events`) and the last (`user_engagement_states`). This is the
//!   per-row cost of multi-table routing in the decode step.
//!
//! * `verify_token/{HS256,ES256,RS256,EdDSA}` — [`Verifier::verify`] of one user token, as
//!   every upgrade, `phx_join`, `access_token` refresh and HTTP API request does: header read,
//!   key lookup (by `kid` in the shared key set for the asymmetric ones), signature check and
//!   claims. Keys are generated at start (P-256, RSA 2048, Ed25519; jsonwebtoken's rust_crypto
//!   backend).
//!
//! The pgoutput messages are built here from the PostgreSQL docs, "Frontend/Backend Protocol" →
//! "Logical Replication Message Formats" (big-endian integers, NUL-terminated strings).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use engagement_relay::auth::jwks::{Jwks, KeySet};
use engagement_relay::auth::sign::{public_jwks, SigningKey};
use engagement_relay::auth::{mint, Principal, Role, Verifier};
use engagement_relay::config::ReplayConfig;
use engagement_relay::config::{AuthConfig, Secret};
use engagement_relay::model::{Cursor, Event, Operation};
use engagement_relay::model::{Record, Relation};
use engagement_relay::replication::pgoutput::{Change, Decoder};
use engagement_relay::router::{Router, Subscription};
use engagement_relay::tables::{default_tables, Tables};
use relay_testkit::pgoutput_writer;
use uuid::Uuid;

/// Relation OID of the benchmark table.
const RELATION_OID: u32 = 16_385;

/// `(name, type OID, part of the replica identity)` of each `engagement_events` column.
const COLUMNS: [(&str, u32, bool); 6] = [
    ("id", 2950, true),         // uuid
    ("user_id", 2950, false),   // uuid
    ("timestamp", 1184, false), // timestamptz
    ("event_type", 25, false),  // text
    ("value", 3802, false),     // jsonb
    ("is_deleted", 16, false),  // bool
];

/// Owner of the benchmark row (`user_id`), the routing key.
const OWNER: &str = "6d1f4a52-3b9e-4c87-a0d2-5e8f7b1c9a34";

/// Text values of the row, as pgoutput sends them (PostgreSQL's text output of each type; jsonb
/// is printed with its keys sorted by length, then bytes), in column order.
const ROW: [&str; 6] = [
    "3f2b8c4e-91d7-4a6b-b5e0-7c2d9f1a8e63",
    OWNER,
    "2026-11-20 12:00:00.123456+00",
    "screen_view",
    r#"{"device": "iPhone15,2", "screen": "home", "platform": "ios", "os_version": "17.5.1", "session_id": "8f3a2c1d", "app_version": "2.4.1", "duration_ms": 1234}"#,
    "f",
];

/// Commit time of the benchmark transaction: 2026-11-20 12:00:00 UTC, µs since the Unix epoch.
const COMMIT_TIME_US: i64 = 1_795_176_000_000_000;

/// Session queue capacity: the `limits.session_queue` default.
const QUEUE_CAPACITY: usize = 1024;

/// Dispatches timed back to back before the queues are drained (untimed); below
/// [`QUEUE_CAPACITY`], so no session ever overflows.
const DRAIN_EVERY: u64 = 16;

/// The Relation message (`'R'`) of the benchmark table.
fn relation_message() -> Vec<u8> {
    pgoutput_writer::relation(RELATION_OID, "public", "engagement_events", &COLUMNS)
}

/// The Insert message (`'I'`): every column as text.
fn insert_message() -> Vec<u8> {
    let values: Vec<Option<&str>> = ROW.iter().map(|v| Some(*v)).collect();
    pgoutput_writer::insert(RELATION_OID, &values)
}

/// A decoder that has seen the Relation message, and the Insert message to decode.
fn primed_decoder() -> (Decoder, Vec<u8>) {
    let mut decoder = Decoder::new();
    match decoder.decode(&relation_message()) {
        Ok(Change::Relation(_)) => {}
        other => panic!("Relation message did not decode: {other:?}"),
    }
    (decoder, insert_message())
}

/// The decoded benchmark row and its relation.
fn decoded_row() -> (Arc<Relation>, Record) {
    let (mut decoder, insert) = primed_decoder();
    match decoder.decode(&insert) {
        Ok(Change::Insert { relation, new }) => {
            assert_eq!(new.len(), COLUMNS.len(), "every column decoded");
            assert!(new["value"].is_object(), "jsonb parsed: {new:?}");
            (relation, new)
        }
        other => panic!("Insert message did not decode: {other:?}"),
    }
}

fn cursor() -> Cursor {
    Cursor {
        lsn: 0x16B3_7A28,
        index: 0,
        history: 1,
    }
}

fn decode_insert(c: &mut Criterion) {
    let (mut decoder, insert) = primed_decoder();
    c.bench_function("decode_insert", |b| {
        b.iter_with_large_drop(|| decoder.decode(black_box(&insert)))
    });
}

fn encode_event(c: &mut Criterion) {
    let (relation, record) = decoded_row();
    let event = Event::new(
        cursor(),
        COMMIT_TIME_US,
        Operation::Insert,
        (Arc::clone(&relation), "user_id"),
        record.clone(),
    );
    assert_eq!(event.owner, Uuid::parse_str(OWNER).ok(), "owner extracted");
    c.bench_function("encode_event", |b| {
        b.iter_batched(
            || (Arc::clone(&relation), record.clone()),
            |(relation, record)| {
                Event::new(
                    black_box(cursor()),
                    black_box(COMMIT_TIME_US),
                    Operation::Insert,
                    (relation, "user_id"),
                    record,
                )
            },
            BatchSize::SmallInput,
        )
    });
}

fn router_fanout(c: &mut Criterion) {
    let (relation, record) = decoded_row();
    let event = Arc::new(Event::new(
        cursor(),
        COMMIT_TIME_US,
        Operation::Insert,
        (relation, "user_id"),
        record,
    ));
    let principal = Principal {
        user_id: event.owner,
        role: Role::Authenticated,
        expires_at: i64::MAX,
        issued_at: None,
    };

    let mut group = c.benchmark_group("router_fanout");
    for sessions in [1_usize, 10, 1000] {
        let router = Router::new(QUEUE_CAPACITY, &ReplayConfig::default());
        let mut subs: Vec<Subscription> = (0..sessions)
            .map(|_| router.subscribe(&principal, Default::default(), Default::default(), None))
            .collect();
        assert_eq!(router.dispatch(Arc::clone(&event)), sessions, "all queued");
        drain(&mut subs);

        group.throughput(Throughput::Elements(sessions as u64));
        group.bench_function(BenchmarkId::from_parameter(sessions), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(DRAIN_EVERY);
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(router.dispatch(Arc::clone(&event)));
                    }
                    timed += start.elapsed();
                    drain(&mut subs);
                    left -= n;
                }
                timed
            })
        });

        assert_eq!(
            router.session_counts(),
            (sessions, 0),
            "no session overflowed"
        );
        for sub in subs {
            router.unsubscribe(sub.ticket);
        }
    }
    group.finish();
}

/// Empties every session queue.
fn drain(subs: &mut [Subscription]) {
    for sub in subs {
        while sub.rx.try_recv().is_ok() {}
    }
}

fn route_row(c: &mut Criterion) {
    let tables = Tables::new(&default_tables());
    let (events, _) = decoded_row();
    let states = Arc::new(Relation {
        name: "user_engagement_states".into(),
        ..(*events).clone()
    });
    let mut group = c.benchmark_group("route_row");
    for (name, relation, operation) in [
        ("first", &events, Operation::Insert),
        ("last", &states, Operation::Update),
    ] {
        assert_eq!(tables.route(relation, operation), Some("user_id"));
        group.bench_function(name, |b| {
            b.iter(|| tables.route(black_box(relation), black_box(operation)))
        });
    }
    group.finish();
}

// Key generation for the benchmark: harness code that panics when it cannot go on.
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/common/keys.rs"]
mod keys;

// Setup that cannot go on without its keys and tokens panics, as the decode setups above do.
#[allow(clippy::expect_used)]
fn verify_token(c: &mut Criterion) {
    let secret = "bench-secret-with-at-least-32-characters!";
    let signers = [
        keys::generate(jsonwebtoken::Algorithm::ES256, "ec"),
        keys::generate(jsonwebtoken::Algorithm::RS256, "rsa"),
        keys::generate(jsonwebtoken::Algorithm::EdDSA, "ed"),
    ];
    let doc = keys::jwks_json(&signers.iter().collect::<Vec<_>>()).to_string();
    let jwks = Arc::new(Jwks::new());
    jwks.replace(KeySet::parse(doc.as_bytes()).expect("a JWKS").0);
    let config = AuthConfig {
        jwt_secret: Secret::new(secret),
        jwks_file: Some("unused".into()),
        ..AuthConfig::default()
    };
    let verifier = Verifier::with_jwks(&config, Some(jwks));
    let user = Uuid::new_v4();
    let ttl = Duration::from_secs(3600);
    let mut tokens = vec![(
        "HS256".to_string(),
        mint(secret, Some(user), Role::Authenticated, ttl).expect("HS256 token"),
    )];
    for s in &signers {
        let token = s.mint(Some(user), Role::Authenticated, ttl).expect("token");
        tokens.push((format!("{:?}", s.alg), token));
    }
    let mut group = c.benchmark_group("verify_token");
    for (alg, token) in &tokens {
        assert!(verifier.verify(token).is_ok(), "{alg}");
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| black_box(verifier.verify(black_box(token))))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    decode_insert,
    encode_event,
    router_fanout,
    route_row,
    verify_token
);
criterion_main!(benches);
