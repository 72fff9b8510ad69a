//! Token revocations in force (issue 16): a user's tokens issued before an instant are
//! refused everywhere a token is checked — at connect, at token refresh, on the HTTP API —
//! because [`super::Verifier::verify`] consults this set.
//!
//! The set is filled from `relay.revocations` (loaded at start and polled; cluster nodes also
//! hear of a new one at once) and by `POST /v1/admin/revocations` on this node.

use dashmap::DashMap;
use uuid::Uuid;

/// One user's revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Tokens with an `iat` before this instant (µs since the Unix epoch), or without `iat`,
    /// are refused.
    pub issued_before_us: i64,
    /// When every token it covers has expired (µs since the Unix epoch): then it is dropped.
    pub expires_at_us: i64,
}

/// The revocations in force, by user.
#[derive(Debug, Default)]
pub struct Revocations {
    by_user: DashMap<Uuid, Revocation>,
}

impl Revocations {
    /// Adds (or extends: the later `issued_before` wins) `user`'s revocation. Returns whether
    /// it changed what is refused.
    pub fn insert(&self, user: Uuid, revocation: Revocation) -> bool {
        let mut entry = self.by_user.entry(user).or_insert(Revocation {
            issued_before_us: i64::MIN,
            expires_at_us: i64::MIN,
        });
        let changed = revocation.issued_before_us > entry.issued_before_us;
        if changed {
            entry.issued_before_us = revocation.issued_before_us;
        }
        entry.expires_at_us = entry.expires_at_us.max(revocation.expires_at_us);
        changed
    }

    /// Whether a token of `user` issued at `iat` (seconds since the Unix epoch; `None`: no
    /// `iat` claim) is revoked.
    pub fn refuses(&self, user: Uuid, iat: Option<i64>) -> Option<Revocation> {
        let revocation = *self.by_user.get(&user)?;
        let issued_us = iat.map_or(i64::MIN, |s| s.saturating_mul(1_000_000));
        (issued_us < revocation.issued_before_us).then_some(revocation)
    }

    /// Drops revocations that expired before `now_us`; returns how many.
    pub fn expire(&self, now_us: i64) -> usize {
        let before = self.by_user.len();
        self.by_user.retain(|_, r| r.expires_at_us >= now_us);
        before - self.by_user.len()
    }

    /// Revocations in force.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// Whether none is in force.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_refuses_older_and_iat_less_tokens_only() {
        let set = Revocations::default();
        let user = Uuid::from_u128(1);
        assert!(set.refuses(user, Some(5)).is_none());
        let r = Revocation {
            issued_before_us: 10_000_000,
            expires_at_us: 20_000_000,
        };
        assert!(set.insert(user, r));
        assert!(set.refuses(user, Some(9)).is_some());
        assert!(set.refuses(user, None).is_some());
        assert!(set.refuses(user, Some(10)).is_none());
        assert!(set.refuses(Uuid::from_u128(2), Some(1)).is_none());
        // An earlier instant does not narrow it.
        assert!(!set.insert(
            user,
            Revocation {
                issued_before_us: 1,
                expires_at_us: 1
            }
        ));
        assert!(set.refuses(user, Some(9)).is_some());
        assert_eq!(set.expire(20_000_000), 0);
        assert_eq!(set.expire(20_000_001), 1);
        assert!(set.is_empty());
    }
}
