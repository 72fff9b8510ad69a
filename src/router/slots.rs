//! Session slots: how many subscriptions each user (`sub`) and the service role hold, capped by
//! `limits.max_sessions_per_user` and `limits.max_service_sessions` (issue 12).
//!
//! Every router subscription is one slot: a native session takes its slot at the upgrade
//! (before the handshake, so a refusal is an HTTP 429), a Realtime channel at its `phx_join`.
//! Checking and taking is one step under the user's map entry (or one compare-and-swap for the
//! service role), so concurrent upgrades can never take more than the cap. The [`Slot`] is a
//! guard: dropping it (the session ended, the channel left) gives the slot back. Because every
//! subscription holds a slot, the fan-out of one user's event is at most the per-user cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::refused::{self, Reason};

/// Slots held, by user and by the service role.
#[derive(Debug, Default)]
pub(super) struct Slots {
    users: DashMap<Uuid, usize>,
    service: AtomicUsize,
}

/// Why a slot was refused: the cap that was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The user holds `limits.max_sessions_per_user` (the value) sessions and channels.
    User(usize),
    /// The service role holds `limits.max_service_sessions` (the value).
    Service(usize),
}

impl SlotRefused {
    /// The error code clients see (HTTP body `error`, Realtime join `reason` prefix).
    pub fn code(self) -> &'static str {
        match self {
            SlotRefused::User(_) => "too_many_user_sessions",
            SlotRefused::Service(_) => "too_many_service_sessions",
        }
    }
}

impl std::fmt::Display for SlotRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRefused::User(cap) => write!(
                f,
                "this user already holds {cap} sessions (native sessions plus Realtime channels; limits.max_sessions_per_user); close one and retry"
            ),
            SlotRefused::Service(cap) => write!(
                f,
                "the service role already holds {cap} sessions (limits.max_service_sessions); close one and retry"
            ),
        }
    }
}

/// One held slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    owner: Option<Uuid>,
}

impl Slots {
    /// Takes a slot for `principal` if it holds fewer than its cap (`per_user` for a user,
    /// `service` for the service role); counts a refusal in `relay_refused_total`.
    pub(super) fn take(
        self: &Arc<Self>,
        principal: &Principal,
        per_user: usize,
        service: usize,
    ) -> Result<Slot, SlotRefused> {
        let owner = match (principal.role, principal.user_id) {
            (Role::Authenticated, Some(user)) => {
                let mut held = self.users.entry(user).or_insert(0);
                if *held >= per_user {
                    drop(held);
                    refused::one(Reason::UserSessions);
                    return Err(SlotRefused::User(per_user));
                }
                *held += 1;
                Some(user)
            }
            _ => {
                let taken = self
                    .service
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < service).then_some(n + 1)
                    });
                if taken.is_err() {
                    refused::one(Reason::ServiceSessions);
                    return Err(SlotRefused::Service(service));
                }
                None
            }
        };
        Ok(Slot {
            slots: Arc::clone(self),
            owner,
        })
    }

    /// Slots held by `user`.
    pub(super) fn held(&self, user: Uuid) -> usize {
        self.users.get(&user).map_or(0, |n| *n)
    }

    /// Slots held by the service role.
    pub(super) fn held_by_service(&self) -> usize {
        self.service.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.owner {
            Some(user) => {
                if let Entry::Occupied(mut held) = self.slots.users.entry(user) {
                    *held.get_mut() = held.get().saturating_sub(1);
                    if *held.get() == 0 {
                        held.remove();
                    }
                }
            }
            None => {
                let _ = self
                    .slots
                    .service
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }
}
