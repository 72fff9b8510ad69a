//! Request rate limits of the HTTP API (`governor`, GCRA): one bucket per user (`sub`) for user
//! tokens, one per token for the service role (a Cloud Function's key). Over the limit is a 429
//! with `Retry-After` (whole seconds, at least 1).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::{Principal, Role};
use crate::config::IngestConfig;
use crate::http::HttpError;

/// Every this many checks, buckets that are full again are forgotten.
const RETAIN_EVERY: u64 = 10_000;

/// Keyed GCRA limiters: users by `sub`, service-role callers by a hash of their token.
#[derive(Debug)]
pub struct Limits {
    users: DefaultKeyedRateLimiter<u128>,
    keys: DefaultKeyedRateLimiter<u64>,
    checks: AtomicU64,
}

impl Limits {
    /// Limits from `ingest.user_rate`/`user_burst` and `ingest.key_rate`/`key_burst`.
    pub fn new(config: &IngestConfig) -> Limits {
        let quota = |rate: NonZeroU32, burst| Quota::per_second(rate).allow_burst(burst);
        Limits {
            users: DefaultKeyedRateLimiter::keyed(quota(config.user_rate, config.user_burst)),
            keys: DefaultKeyedRateLimiter::keyed(quota(config.key_rate, config.key_burst)),
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
        }
        let outcome = match (principal.role, principal.user_id) {
            (Role::Authenticated, Some(user)) => self.users.check_key(&user.as_u128()),
            _ => {
                let mut hasher = DefaultHasher::new();
                token.hash(&mut hasher);
                self.keys.check_key(&hasher.finish())
            }
        };
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            HttpError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }
}
