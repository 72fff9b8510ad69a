//! Tests for the router (included from `router.rs`).

use super::*;
use crate::model::Operation;
use crate::model::Relation;
use serde_json::json;
use std::num::NonZeroUsize;

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
        issued_at: None,
    }
}

fn router(queue: usize, max_events: usize) -> Router {
    shared_router(queue, max_events, 10_000)
}

/// A router whose window keeps `max_events` in all and `per_user` of each owner.
fn shared_router(queue: usize, max_events: usize, per_user: usize) -> Router {
    let router = Router::new(
        queue,
        &ReplayConfig {
            max_events,
            max_events_per_user: NonZeroUsize::new(per_user).unwrap(),
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

fn resume(router: &Router, user: Option<Uuid>, since: Cursor) -> Replay {
    subscribe(router, user, Some(since)).replay.unwrap()
}

#[test]
fn a_users_share_evicts_only_its_own_oldest_and_only_its_resume_is_incomplete() {
    let router = shared_router(64, 100, 3);
    let (b, x) = (Uuid::new_v4(), Uuid::new_v4());
    router.dispatch(event(b, "app_open", 2));
    for lsn in 3..=10 {
        router.dispatch(event(x, "flood", lsn));
    }
    router.dispatch(event(b, "app_open", 11));
    let mine = resume(&router, Some(b), Cursor::before(2, HISTORY));
    assert!(mine.complete, "b lost nothing");
    assert_eq!(lsns(&mine.events), [2, 11]);
    assert!(
        !resume(&router, Some(x), at(3, 0)).complete,
        "x's 4 to 7 are gone"
    );
    let recent = resume(&router, Some(x), at(7, 0));
    assert!(recent.complete, "after x's own floor");
    assert_eq!(lsns(&recent.events), [8, 9, 10]);
    // The service role cannot tell whose events it missed: conservative before the floor.
    assert!(!resume(&router, None, Cursor::before(2, HISTORY)).complete);
    let all = resume(&router, None, at(7, 0));
    assert!(all.complete);
    assert_eq!(lsns(&all.events), [8, 9, 10, 11]);
    // The window freed x's evicted events; the slot may still confirm nothing past b's.
    assert_eq!(router.oldest_lsn(), Some(2));
    assert_eq!(router.evicted_lsn(), 0);
    let global = lock(&router.global);
    assert_eq!(global.window.len(), 5);
}

#[test]
fn one_users_flood_leaves_the_window_bounds_to_the_others() {
    let router = shared_router(64, 4, 2);
    let (b, x) = (Uuid::new_v4(), Uuid::new_v4());
    router.dispatch(event(b, "app_open", 2));
    for lsn in 3..=500 {
        router.dispatch(event(x, "flood", lsn));
    }
    let mine = resume(&router, Some(b), Cursor::before(2, HISTORY));
    assert!(mine.complete, "x's flood never reached the count bound");
    assert_eq!(lsns(&mine.events), [2]);
}

#[test]
fn a_user_entry_removed_after_its_share_was_evicted_still_answers_incomplete() {
    let router = shared_router(64, 3, 2);
    let x = Uuid::new_v4();
    for lsn in 2..=6 {
        router.dispatch(event(x, "flood", lsn));
    }
    // Others' events push x's last two out by count: x's deque empties and its entry goes.
    for lsn in 7..=9 {
        router.dispatch(event(Uuid::new_v4(), "app_open", lsn));
    }
    assert!(router.users.get(&x).is_none());
    for since in [at(2, 0), at(4, 0), at(5, 0)] {
        assert!(!resume(&router, Some(x), since).complete, "{since:?}");
    }
    assert!(resume(&router, Some(x), at(6, 0)).complete);
}

#[test]
fn session_slots_are_capped_per_user_and_for_the_service_role_and_given_back_on_drop() {
    let router = router(8, 100);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut held: Vec<Slot> = (0..3)
        .map(|_| router.take_slot(&principal(Some(a)), 3, 2).unwrap())
        .collect();
    assert_eq!(
        router.take_slot(&principal(Some(a)), 3, 2).err(),
        Some(SlotRefused::User(3))
    );
    assert!(
        router.take_slot(&principal(Some(b)), 3, 2).is_ok(),
        "b is apart"
    );
    let service: Vec<Slot> = (0..2)
        .map(|_| router.take_slot(&principal(None), 3, 2).unwrap())
        .collect();
    assert_eq!(
        router.take_slot(&principal(None), 3, 2).err(),
        Some(SlotRefused::Service(2))
    );
    drop(held.pop());
    assert_eq!(router.slots_held(Some(a)), 2);
    assert!(router.take_slot(&principal(Some(a)), 3, 2).is_ok());
    drop(service);
    assert_eq!(router.slots_held(None), 0);
    assert_eq!(
        router.slots_held(Some(b)),
        0,
        "b's slot was dropped at once"
    );
}

#[test]
fn concurrent_takers_never_exceed_the_cap() {
    let router = router(8, 100);
    let a = Uuid::new_v4();
    let barrier = std::sync::Barrier::new(40);
    let taken: Vec<Option<Slot>> = std::thread::scope(|scope| {
        let takers: Vec<_> = (0..40)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    router.take_slot(&principal(Some(a)), 32, 1).ok()
                })
            })
            .collect();
        takers.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(taken.iter().flatten().count(), 32);
    assert_eq!(router.slots_held(Some(a)), 32);
    drop(taken);
    assert_eq!(router.slots_held(Some(a)), 0);
}

proptest::proptest! {
    /// With no global eviction, a resume is complete exactly when no event of the user after
    /// the cursor was evicted for the user's share, and then it is every such event.
    #[test]
    fn a_share_resume_is_complete_exactly_when_nothing_of_its_own_was_evicted(
        owners in proptest::collection::vec(0usize..3, 1..120),
        since in 1u64..130,
        who in 0usize..3,
    ) {
        let router = shared_router(256, 10_000, 5);
        let users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        for (i, owner) in owners.iter().enumerate() {
            router.dispatch(event(users[*owner], "e", i as u64 + 2));
        }
        router.note_wal_end(200);
        let theirs: Vec<u64> = owners
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == who)
            .map(|(i, _)| i as u64 + 2)
            .collect();
        let evicted = theirs.len().saturating_sub(5);
        let since = at(since, 0);
        let lost = theirs[..evicted].iter().any(|l| *l > since.lsn);
        let got = resume(&router, Some(users[who]), since);
        proptest::prop_assert_eq!(got.complete, !lost);
        if got.complete {
            let expected: Vec<u64> = theirs.iter().copied().filter(|l| *l > since.lsn).collect();
            proptest::prop_assert_eq!(lsns(&got.events), expected);
        }
    }
}

/// An event of row `row` (its [`Event::row`] key) of `owner`.
fn row_event(owner: Uuid, operation: Operation, row: u64, lsn: u64) -> Arc<Event> {
    let relation = Relation::fixture();
    let record = json!({"id": row, "user_id": owner, "event_type": "app_open"});
    let record = record.as_object().cloned().unwrap_or_default();
    let mut event = Event::new(
        at(lsn, 0),
        now_unix_us(),
        operation,
        (relation, "user_id"),
        record,
    );
    event.row = Some(row);
    Arc::new(event)
}

#[test]
fn a_delete_erases_its_rows_events_from_every_resume_and_is_replayed_itself() {
    let router = router(64, 100);
    let (u, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut live = subscribe(&router, Some(u), None);
    router.dispatch(row_event(u, Operation::Insert, 1, 2));
    router.dispatch(row_event(u, Operation::Insert, 2, 3));
    router.dispatch(row_event(other, Operation::Insert, 1, 4));
    router.dispatch(row_event(u, Operation::Update, 1, 5));
    router.dispatch(row_event(u, Operation::Delete, 1, 6));
    // The open session got everything live, the delete included.
    let mut got = Vec::new();
    while let Ok(e) = live.rx.try_recv() {
        got.push((e.cursor.lsn, e.operation));
    }
    assert_eq!(got.last(), Some(&(6, Operation::Delete)));
    assert_eq!(got.len(), 4);
    // u's resume from before everything: complete, row 1's insert and update gone, the delete
    // and row 2 kept.
    let mine = resume(&router, Some(u), Cursor::before(2, HISTORY));
    assert!(mine.complete);
    assert_eq!(lsns(&mine.events), [3, 6]);
    // Another user's row with the same key is another row: only u's deque is searched.
    let theirs = resume(&router, Some(other), Cursor::before(2, HISTORY));
    assert_eq!(lsns(&theirs.events), [4]);
    // The service role's window lost them too, and stays complete.
    let all = resume(&router, None, Cursor::before(2, HISTORY));
    assert!(all.complete);
    assert_eq!(lsns(&all.events), [3, 4, 6]);
    assert_eq!(router.oldest_lsn(), Some(3));
}

#[test]
fn a_row_moved_to_another_owner_leaves_the_old_owners_resume_and_a_later_delete_erases_all() {
    let router = router(64, 100);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    router.dispatch(row_event(a, Operation::Insert, 1, 2));
    // The service role moves row 1 from a to b.
    let moved = json!({"id": 1, "user_id": b, "event_type": "app_open"});
    let was = json!({"id": 1, "user_id": a, "event_type": "app_open"});
    let mut update = Event::change(
        at(3, 0),
        now_unix_us(),
        Operation::Update,
        (Relation::fixture(), "user_id"),
        moved.as_object().cloned().unwrap_or_default(),
        was.as_object().cloned(),
    );
    update.row = Some(1);
    assert_eq!(update.moved_from, Some(a));
    router.dispatch(Arc::new(update));
    // a's copy of the row is gone from a's resume and the window; b has the update.
    assert_eq!(
        lsns(&resume(&router, Some(a), Cursor::before(2, HISTORY)).events),
        [] as [u64; 0]
    );
    assert_eq!(
        lsns(&resume(&router, Some(b), Cursor::before(2, HISTORY)).events),
        [3]
    );
    // b deletes it: nothing of the row is left for anyone but the delete.
    router.dispatch(row_event(b, Operation::Delete, 1, 4));
    let all = resume(&router, None, Cursor::before(2, HISTORY));
    assert!(all.complete);
    assert_eq!(lsns(&all.events), [4]);
}
