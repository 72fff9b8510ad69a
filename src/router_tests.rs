//! Tests for the router (included from `router.rs`).

use super::*;
use crate::model::Operation;
use crate::model::Relation;
use serde_json::json;

const HISTORY: u32 = 7;

fn principal(user: Option<Uuid>) -> Principal {
    Principal {
        user_id: user,
        role: if user.is_some() {
            Role::Authenticated
        } else {
            Role::ServiceRole
        },
        expires_at: i64::MAX,
    }
}

fn router(queue: usize, max_events: usize) -> Router {
    let router = Router::new(
        queue,
        &ReplayConfig {
            max_events,
            ..ReplayConfig::default()
        },
    );
    router.begin(HISTORY, 1);
    router
}

fn at(lsn: u64, index: u32) -> Cursor {
    Cursor {
        lsn,
        index,
        history: HISTORY,
    }
}

fn event(owner: Uuid, event_type: &str, lsn: u64) -> Arc<Event> {
    let relation = Relation::fixture();
    let record = json!({"user_id": owner, "event_type": event_type});
    let record = record.as_object().cloned().unwrap_or_default();
    let (cursor, now) = (at(lsn, 0), now_unix_us());
    Arc::new(Event::new(
        cursor,
        now,
        Operation::Insert,
        (relation, "user_id"),
        record,
    ))
}

fn subscribe(router: &Router, user: Option<Uuid>, since: Option<Cursor>) -> Subscription {
    router.subscribe(
        &principal(user),
        Interest::default(),
        CancellationToken::new(),
        since,
    )
}

fn lsns(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.cursor.lsn).collect()
}

#[test]
fn events_reach_their_owner_and_the_service_role_only() {
    let router = router(8, 100);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut sa = subscribe(&router, Some(a), None);
    let mut sb = subscribe(&router, Some(b), None);
    let mut all = subscribe(&router, None, None);
    assert_eq!(router.dispatch(event(a, "app_open", 2)), 2);
    assert_eq!(sa.rx.try_recv().unwrap().owner, Some(a));
    assert!(sb.rx.try_recv().is_err());
    assert_eq!(all.rx.try_recv().unwrap().owner, Some(a));
    assert_eq!(router.latest_cursor(), at(2, 0));
}

#[test]
fn a_type_filter_narrows_live_and_replayed_events() {
    let router = router(8, 100);
    let a = Uuid::new_v4();
    let types = Interest {
        event_types: Some(Box::new(["goal_complete".into()])),
        ..Default::default()
    };
    let mut goals = router.subscribe(&principal(Some(a)), types.clone(), Default::default(), None);
    router.dispatch(event(a, "app_open", 2));
    router.dispatch(event(a, "goal_complete", 3));
    assert_eq!(goals.rx.try_recv().unwrap().cursor.lsn, 3);
    assert!(goals.rx.try_recv().is_err());
    let since = Some(Cursor::before(1, HISTORY));
    let resumed = router.subscribe(&principal(Some(a)), types, Default::default(), since);
    assert_eq!(lsns(&resumed.replay.unwrap().events), [3]);
}

#[test]
fn a_resume_gets_its_own_missed_events_then_live_ones() {
    let router = router(8, 100);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (owner, lsn) in [(a, 2), (b, 3), (a, 4), (a, 5)] {
        router.dispatch(event(owner, "app_open", lsn));
    }
    let mut sub = subscribe(&router, Some(a), Some(at(2, 0)));
    let replay = sub.replay.take().unwrap();
    assert!(replay.complete);
    assert_eq!(lsns(&replay.events), [4, 5], "after the cursor, only a's");
    assert_eq!(sub.position, at(5, 0));
    router.dispatch(event(a, "app_open", 6));
    assert_eq!(sub.rx.try_recv().unwrap().cursor.lsn, 6);

    let all = subscribe(&router, None, Some(at(3, 0))).replay.unwrap();
    assert_eq!(
        lsns(&all.events),
        [4, 5, 6],
        "the service role resumes from every event"
    );
    router.note_wal_end(10);
    let ahead = subscribe(&router, Some(a), Some(at(9, 0))).replay.unwrap();
    assert!(
        ahead.complete && ahead.events.is_empty(),
        "another relay was ahead"
    );
    let forged = subscribe(&router, Some(a), Some(at(99, 0))).replay.unwrap();
    assert!(!forged.complete, "past anything the server reported");
}

#[test]
fn a_cursor_older_than_the_window_or_of_another_history_is_incomplete() {
    let router = router(8, 2);
    let a = Uuid::new_v4();
    for lsn in 2..=5 {
        router.dispatch(event(a, "app_open", lsn));
    }
    let old = subscribe(&router, Some(a), Some(at(2, 0))).replay.unwrap();
    assert!(!old.complete && old.events.is_empty(), "3 was evicted");
    let edge = subscribe(&router, Some(a), Some(at(3, 0))).replay.unwrap();
    assert!(edge.complete);
    assert_eq!(lsns(&edge.events), [4, 5]);
    let foreign = Cursor {
        history: HISTORY + 1,
        ..at(4, 0)
    };
    assert!(
        !subscribe(&router, Some(a), Some(foreign))
            .replay
            .unwrap()
            .complete
    );
}

#[test]
fn an_overflow_cancels_and_removes_only_that_session() {
    let router = router(2, 100);
    let a = Uuid::new_v4();
    let (slow_overflow, fast_overflow) = (CancellationToken::new(), CancellationToken::new());
    let slow = router.subscribe(
        &principal(Some(a)),
        Interest::default(),
        slow_overflow.clone(),
        None,
    );
    let mut fast = router.subscribe(
        &principal(Some(a)),
        Interest::default(),
        fast_overflow.clone(),
        None,
    );
    for lsn in 2..5 {
        router.dispatch(event(a, "app_open", lsn));
        while fast.rx.try_recv().is_ok() {}
    }
    assert!(slow_overflow.is_cancelled());
    assert!(!fast_overflow.is_cancelled());
    assert_eq!(router.session_counts(), (1, 0));
    router.unsubscribe(slow.ticket);
    assert_eq!(
        router.session_counts(),
        (1, 0),
        "after the router dropped it"
    );
    router.unsubscribe(fast.ticket);
    assert_eq!(router.session_counts(), (0, 0));
}

#[test]
fn as_the_replication_dispatch_it_reports_what_the_window_holds() {
    let router = router(8, 2);
    let dispatch: &dyn Dispatch = &router;
    let a = Uuid::new_v4();
    let mut sub = subscribe(&router, Some(a), None);
    assert_eq!((dispatch.oldest_lsn(), dispatch.evicted_lsn()), (None, 0));
    for lsn in 2..=4 {
        dispatch.dispatch(event(a, "app_open", lsn));
    }
    assert_eq!(sub.rx.try_recv().unwrap().cursor.lsn, 2);
    assert_eq!(dispatch.oldest_lsn(), Some(3), "at most 2 events kept");
    assert_eq!(dispatch.evicted_lsn(), 2);
    dispatch.note_wal_end(10);
    dispatch.begin(HISTORY + 1, 20);
    assert_eq!((dispatch.oldest_lsn(), dispatch.evicted_lsn()), (None, 0));
    assert_eq!(router.latest_cursor(), Cursor::before(20, HISTORY + 1));
}
