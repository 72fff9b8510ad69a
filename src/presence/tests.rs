use super::*;
use crate::auth::{Principal, Role};

fn user(n: u128) -> Principal {
    Principal {
        user_id: Some(Uuid::from_u128(n)),
        role: Role::Authenticated,
        expires_at: i64::MAX,
        issued_at: None,
    }
}

#[test]
fn a_user_is_online_from_the_first_socket_to_the_last() {
    let registry = Registry::new("a".into(), true);
    let mut changes = registry.changes();
    let one = registry.open(Endpoint::Native, "1".into());
    let two = registry.open(Endpoint::Realtime, "2".into());
    assert_eq!(registry.open_counts(), (1, 1));
    let first = registry.join(&one.info, &user(1));
    let second = registry.join(&two.info, &user(1));
    let p = registry.get(Uuid::from_u128(1)).map(|p| p.counts);
    assert_eq!(p.map(|c| (c.native, c.realtime)), Some((1, 1)));
    assert_eq!(
        changes.try_recv().map(|c| (c.online, c.sessions)).ok(),
        Some((true, 1))
    );
    assert!(
        changes.try_recv().is_err(),
        "the second socket is no change"
    );
    drop(first);
    assert!(changes.try_recv().is_err());
    drop(second);
    assert_eq!(changes.try_recv().map(|c| c.online).ok(), Some(false));
    assert!(registry.get(Uuid::from_u128(1)).is_none());
    assert_eq!(registry.take_last_seen().len(), 1);
    drop((one, two));
    assert_eq!(registry.open_counts(), (0, 0));
}

#[test]
fn other_nodes_counts_merge_and_a_dropped_node_takes_its_users_offline() {
    let registry = Registry::new("a".into(), true);
    let mut changes = registry.changes();
    let u = Uuid::from_u128(7);
    let counts = Counts {
        native: 2,
        realtime: 0,
        online_since: Utc::now(),
    };
    assert!(registry
        .apply_remote("b", u, Some(counts))
        .is_some_and(|c| c.online));
    let local = registry.open(Endpoint::Native, "x".into());
    let joined = registry.join(&local.info, &user(7));
    assert_eq!(registry.get(u).map(|p| p.counts.sessions()), Some(3));
    assert_eq!(registry.online(None, 10).len(), 1);
    assert_eq!(registry.drop_node("b"), 1);
    assert_eq!(registry.get(u).map(|p| p.counts.sessions()), Some(1));
    drop(joined);
    let seen: Vec<bool> =
        std::iter::from_fn(|| changes.try_recv().ok().map(|c| c.online)).collect();
    assert_eq!(seen, [true, false]);
    // Its own node id is never taken for another node's.
    assert!(registry.apply_remote("a", u, Some(counts)).is_none());
}

#[test]
fn a_disconnect_kicks_the_users_sockets_once_and_nobody_else() {
    let registry = Registry::new("a".into(), false);
    let mine = registry.open(Endpoint::Native, "1".into());
    let other = registry.open(Endpoint::Native, "2".into());
    let _a = registry.join(&mine.info, &user(1));
    let _b = registry.join(&other.info, &user(2));
    // Presence off: nobody is online, but sessions are known.
    assert!(registry.get(Uuid::from_u128(1)).is_none());
    let kick = Kick {
        code: 4004,
        reason: "r".into(),
        error: "disconnected",
    };
    assert_eq!(registry.disconnect(Uuid::from_u128(1), &kick), 1);
    assert_eq!(registry.disconnect(Uuid::from_u128(1), &kick), 0);
    assert!(mine.info.kick_signal().is_cancelled());
    assert!(!other.info.kick_signal().is_cancelled());
    assert_eq!(mine.info.kicked().map(|k| k.code), Some(4004));
}
