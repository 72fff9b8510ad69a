//! Demo data shared by `engagement-relay dev` and the soak harness: the `dev` JWT secret, the
//! seed's engagement states, and random events of the seed's four types.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

/// The JWT secret `dev` uses when none is configured: the Supabase CLI's local default, so
/// tokens minted by a local Supabase stack work too.
pub const DEV_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// The engagement states (seed story 1.1, `user_engagement_states.state`).
pub const STATES: [&str; 5] = [
    "active",
    "goodbye_sent",
    "help_flow",
    "remind_later",
    "dormant",
];

/// Sets user `$1` (uuid)'s engagement state to `$2` (one of [`STATES`]) and records the
/// transition in `engagement_state_transitions` (trigger `demo`), in one statement.
pub const STATE_CHANGE_SQL: &str = "\
    WITH prior AS (SELECT state FROM public.user_engagement_states WHERE user_id = $1), \
    upsert AS (INSERT INTO public.user_engagement_states (user_id, state) VALUES ($1, $2) \
        ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, last_activity_at = now() \
        RETURNING user_id) \
    INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger) \
    SELECT $1, (SELECT state FROM prior), $2, 'demo' FROM upsert";

/// Inserts one `engagement_events` row: `$1` user id (uuid), `$2` event type, `$3` value (jsonb).
pub const INSERT_EVENT_SQL: &str =
    "INSERT INTO public.engagement_events (user_id, event_type, value) VALUES ($1, $2, $3)";

/// A random event of one of the seed's four types (`app_open`, `goal_complete`,
/// `steps_import`, `coach_message`) with a realistic `value` payload.
pub fn demo_event() -> (&'static str, serde_json::Value) {
    let mut rng = rand::rng();
    match rng.random_range(0..4) {
        0 => (
            "app_open",
            json!({"screen": *["home", "goals", "coach", "insights"].choose(&mut rng).unwrap_or(&"home"),
                   "app_version": "2.4.1", "platform": if rng.random_bool(0.5) { "ios" } else { "android" }}),
        ),
        1 => (
            "goal_complete",
            json!({"goal_id": Uuid::new_v4(), "goal_type": "steps", "target": 8000,
                   "achieved": rng.random_range(8000..14000)}),
        ),
        2 => (
            "steps_import",
            json!({"source": "apple_health", "steps": rng.random_range(500..4000),
                   "date": chrono::Utc::now().format("%Y-%m-%d").to_string()}),
        ),
        _ => (
            "coach_message",
            json!({"message_id": Uuid::new_v4(), "direction": "outbound", "channel": "push",
                   "sentiment": "positive"}),
        ),
    }
}

/// A random state of [`STATES`].
pub fn demo_state() -> &'static str {
    STATES
        .choose(&mut rand::rng())
        .copied()
        .unwrap_or(STATES[0])
}
