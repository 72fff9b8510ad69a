//! Rate limits of the HTTP API (`governor`, GCRA): one bucket per user (`sub`) for user
//! tokens, one per token for the service role (a Cloud Function's key), for requests
//! (`ingest.user_rate`, `key_rate`) and for ingested rows (`ingest.user_rows_per_second`,
//! `key_rows_per_second`: a request takes as many cells as it has rows, all or none, so a
//! flood of full batches is bounded in rows, not requests). Over a limit is a 429
//! `rate_limited` with `Retry-After` (whole seconds, at least 1), counted in
//! `relay_refused_total` (`requests`, or `rows` by the rows refused).
//!
//! A caller refused for rows is told when its rows would fit (`Retry-After`); until then its
//! ingest requests are refused before their body is parsed ([`Limits::check_rows_open`]), so a
//! client that ignores `Retry-After` and keeps posting full batches costs a header check per
//! request, not a JSON parse of thousands of rows.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::{Principal, Role};
use crate::config::IngestConfig;
use crate::http::HttpError;
use crate::refused::{self, Reason};

/// Every this many checks, buckets that are full again are forgotten.
const RETAIN_EVERY: u64 = 10_000;

/// Keyed GCRA limiters: users by `sub`, service-role callers by a hash of their token.
#[derive(Debug)]
pub struct Limits {
    users: DefaultKeyedRateLimiter<u128>,
    keys: DefaultKeyedRateLimiter<u64>,
    user_rows: DefaultKeyedRateLimiter<u128>,
    key_rows: DefaultKeyedRateLimiter<u64>,
    /// Callers refused for rows, until their `Retry-After` has passed.
    rows_closed: DashMap<Bucket, Instant>,
    checks: AtomicU64,
}

/// Whose bucket a request takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    User(u128),
    Key(u64),
}

impl Bucket {
    fn of(principal: &Principal, token: &str) -> Bucket {
        match (principal.role, principal.user_id) {
            (Role::Authenticated, Some(user)) => Bucket::User(user.as_u128()),
            _ => {
                let mut hasher = DefaultHasher::new();
                token.hash(&mut hasher);
                Bucket::Key(hasher.finish())
            }
        }
    }
}

impl Limits {
    /// Limits from `ingest.user_rate`/`user_burst`, `ingest.key_rate`/`key_burst`,
    /// `ingest.user_rows_per_second`/`user_rows_burst` and
    /// `ingest.key_rows_per_second`/`key_rows_burst`.
    pub fn new(config: &IngestConfig) -> Limits {
        let quota = |rate: NonZeroU32, burst| Quota::per_second(rate).allow_burst(burst);
        Limits {
            users: DefaultKeyedRateLimiter::keyed(quota(config.user_rate, config.user_burst)),
            keys: DefaultKeyedRateLimiter::keyed(quota(config.key_rate, config.key_burst)),
            user_rows: DefaultKeyedRateLimiter::keyed(quota(
                config.user_rows_per_second,
                config.user_rows_burst,
            )),
            key_rows: DefaultKeyedRateLimiter::keyed(quota(
                config.key_rows_per_second,
                config.key_rows_burst,
            )),
            rows_closed: DashMap::new(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from the caller's bucket.
    ///
    /// Errors: 429 `rate_limited` with the wait until the next request would pass.
    pub fn check(&self, principal: &Principal, token: &str) -> Result<(), HttpError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.users.retain_recent();
            self.keys.retain_recent();
            self.user_rows.retain_recent();
            self.key_rows.retain_recent();
            let now = Instant::now();
            self.rows_closed.retain(|_, until| *until > now);
        }
        let outcome = match Bucket::of(principal, token) {
            Bucket::User(user) => self.users.check_key(&user),
            Bucket::Key(key) => self.keys.check_key(&key),
        };
        outcome.map_err(|not_until| {
            refused::one(Reason::Requests);
            HttpError::rate_limited(whole_seconds(not_until.wait_time_from(now())))
        })
    }

    /// Whether the caller may ingest at all: not while the `Retry-After` of its last rows
    /// refusal runs. Call before parsing the body.
    ///
    /// Errors: 429 `rate_limited` with the rest of that wait (counted as a refused request).
    pub fn check_rows_open(&self, principal: &Principal, token: &str) -> Result<(), HttpError> {
        let bucket = Bucket::of(principal, token);
        let Some(until) = self.rows_closed.get(&bucket).map(|u| *u) else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            self.rows_closed.remove_if(&bucket, |_, u| *u <= now);
            return Ok(());
        }
        refused::one(Reason::Requests);
        Err(HttpError::rows_limited(
            whole_seconds(until - now),
            "rows over the ingest rows limit; wait for the Retry-After of the last refusal".into(),
        ))
    }

    /// Takes `rows` cells from the caller's rows bucket, all or none (call after
    /// [`Limits::check`], before anything is inserted). A refusal also closes the caller's
    /// ingest until its `Retry-After` ([`Limits::check_rows_open`]).
    ///
    /// Errors: 429 `rate_limited` naming the rows limit, with the wait until `rows` would fit
    /// (`ingest.*_rows_burst` is at least `ingest.max_batch`, so every accepted batch fits one
    /// day).
    pub fn check_rows(
        &self,
        principal: &Principal,
        token: &str,
        rows: usize,
    ) -> Result<(), HttpError> {
        let Some(n) = u32::try_from(rows).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let bucket = Bucket::of(principal, token);
        let (outcome, key) = match bucket {
            Bucket::User(user) => (
                self.user_rows.check_key_n(&user, n),
                "ingest.user_rows_per_second",
            ),
            Bucket::Key(hash) => (
                self.key_rows.check_key_n(&hash, n),
                "ingest.key_rows_per_second",
            ),
        };
        let wait_s = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => whole_seconds(not_until.wait_time_from(now())),
            // More rows than the burst: validation makes the burst at least ingest.max_batch,
            // so this is a configuration the caller cannot fix by waiting; say so in a minute.
            Err(_) => 60,
        };
        refused::count(Reason::Rows, u64::from(n.get()));
        self.rows_closed
            .insert(bucket, Instant::now() + Duration::from_secs(wait_s));
        Err(HttpError::rows_limited(
            wait_s,
            format!("{rows} rows over {key}"),
        ))
    }
}

fn now() -> governor::clock::QuantaInstant {
    DefaultClock::default().now()
}

/// A wait in whole seconds, rounded up.
fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn rows_are_counted_per_caller_and_refused_all_or_none() {
        let mut config = Config::default().ingest;
        config.user_rows_per_second = NonZeroU32::MIN;
        config.user_rows_burst = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN);
        let limits = Limits::new(&config);
        let user = |n: u128| Principal {
            user_id: Some(uuid::Uuid::from_u128(n)),
            role: Role::Authenticated,
            expires_at: i64::MAX,
            issued_at: None,
        };
        assert!(limits.check_rows(&user(1), "a", 6).is_ok());
        let refused = limits.check_rows(&user(1), "b", 6).err();
        assert_eq!(refused.as_ref().map(|e| e.code()), Some("rate_limited"));
        assert!(refused.is_some_and(|e| e.message().contains("ingest.user_rows_per_second")));
        // The refusal closes user 1's ingest until its Retry-After, but took nothing: once
        // open again, the 4 left (and what refilled since) still pass.
        assert!(limits.check_rows_open(&user(1), "c").is_err());
        assert!(limits.check_rows_open(&user(2), "c").is_ok());
        limits.rows_closed.clear();
        assert!(limits.check_rows(&user(1), "c", 4).is_ok());
        assert!(limits.check_rows(&user(2), "a", 10).is_ok());
        assert!(limits.check_rows(&user(1), "a", 0).is_ok());
    }
}
