//! Unit tests of the session engine's pure parts.

use super::*;

#[test]
fn token_expiry_waits_are_capped_alike_for_every_protocol() {
    let day = EXPIRY_CAP;
    assert_eq!(
        expiry_wait(Some(1_000 + 60), 0, 1_000),
        Duration::from_secs(60)
    );
    assert_eq!(
        expiry_wait(Some(1_000 + 60), 5, 1_000),
        Duration::from_secs(65)
    );
    assert_eq!(
        expiry_wait(Some(900), 0, 1_000),
        Duration::ZERO,
        "already past"
    );
    assert_eq!(expiry_wait(Some(i64::MAX), 0, 1_000), day, "capped");
    assert_eq!(
        expiry_wait(Some(1_000 + 400 * 86_400), 0, 1_000),
        day,
        "capped"
    );
    assert_eq!(
        expiry_wait(None, 0, 1_000),
        day,
        "no token: re-checked daily"
    );
}

#[test]
fn close_reasons_are_cut_on_a_char_boundary() {
    assert_eq!(truncate("short".into()), "short");
    let long = "é".repeat(100);
    let cut = truncate(long);
    assert!(cut.len() <= 120 && cut.chars().all(|c| c == 'é'));
}
