//! Unit tests of the pending count, eviction and the watchdog's deadlines.

use super::*;

fn rules() -> Rules {
    Rules {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_pending: 2,
    }
}

#[test]
fn pending_connections_are_capped_and_leave_the_count_once() {
    let pending = Arc::new(Pending::new(2));
    // Admitted, then watched (as the accept loop does).
    assert!(pending.admit());
    let watch = Watch::new(pending.clone());
    let request = InFlight::begin(&watch);
    assert_eq!(
        pending.count.load(Relaxed),
        0,
        "a request in flight is not pending"
    );
    drop(request);
    assert_eq!(
        pending.count.load(Relaxed),
        1,
        "idle keep-alive is pending again"
    );
    watch.end();
    watch.end();
    assert_eq!(pending.count.load(Relaxed), 0);
}

#[test]
fn at_the_cap_a_newcomer_evicts_the_connection_pending_longest() {
    let pending = Arc::new(Pending::new(2));
    let mut watches = Vec::new();
    for _ in 0..2 {
        assert!(pending.admit());
        watches.push(Watch::new(pending.clone()));
    }
    // The first went through a request and is pending again: now the youngest.
    drop(InFlight::begin(&watches[0]));
    assert!(pending.admit(), "room is made");
    assert_eq!(pending.count.load(Relaxed), 2);
    assert!(
        watches[1].evicted.is_cancelled(),
        "the oldest pending spell"
    );
    assert!(!watches[0].evicted.is_cancelled());
    watches.push(Watch::new(pending.clone()));
    // The evicted connection's end does not count it out twice.
    watches[1].end();
    assert_eq!(pending.count.load(Relaxed), 2);
    // No pending connection to evict (both have requests in flight): refused.
    let _busy = [InFlight::begin(&watches[0]), InFlight::begin(&watches[2])];
    assert!(pending.admit() && pending.admit());
    assert_eq!(pending.count.load(Relaxed), 2);
    assert!(!pending.admit());
}

#[test]
fn the_first_head_has_the_header_timeout_and_idle_keep_alive_the_idle_timeout() {
    let pending = Arc::new(Pending::new(2));
    assert!(pending.admit());
    let watch = Watch::new(pending);
    let (rules, born) = (rules(), watch.born);
    let header = born + rules.header_timeout;
    assert_eq!(watch.check(&rules, born), Ok(header));
    assert_eq!(watch.check(&rules, header), Err(Reason::HeaderTimeout));
    // A request is in flight: no deadline of its own, checked again later.
    let request = InFlight::begin(&watch);
    assert_eq!(watch.check(&rules, header), Ok(header + rules.idle_timeout));
    drop(request);
    // Idle keep-alive: the idle timeout from the end of the request.
    let idle_since = watch.at(watch.idle_since_ms.load(Relaxed));
    let idle = idle_since + rules.idle_timeout;
    assert_eq!(watch.check(&rules, idle_since), Ok(idle));
    assert_eq!(watch.check(&rules, idle), Err(Reason::IdleTimeout));
    // The next request's first byte: its head has the header timeout from there.
    watch.on_read();
    let first_byte = watch.at(watch.first_byte_ms.load(Relaxed));
    let header = first_byte + rules.header_timeout;
    assert_eq!(watch.check(&rules, first_byte), Ok(header));
    assert_eq!(watch.check(&rules, header), Err(Reason::HeaderTimeout));
}
