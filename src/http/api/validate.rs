//! Validation of posted events: every event of a request is checked, and every problem is
//! reported with its index and field, so a client fixes a 5,000-event batch in one round.
//!
//! Rules (the table's constraints, checked before the database sees anything):
//! - `user_id`: a UUID string (required).
//! - `event_type`: lower snake case, `^[a-z][a-z0-9]*(_[a-z0-9]+)*$`, at most 64 characters
//!   (the `engagement_events_event_type_format` CHECK of the migration).
//! - `timestamp` (optional, default the server's `now()`): RFC 3339 with an explicit offset
//!   (`Z`, `+05:30`, `-08:00`), stored as the same instant in UTC; not more than 60 s in the
//!   future (the table's trigger allows that much clock skew) and not before
//!   `ingest.oldest_timestamp`.
//! - `value` (optional, default `{}`): a JSON object.
//! - No other fields.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Clock skew tolerated on `timestamp`, seconds (the table's trigger allows the same).
pub const FUTURE_SKEW_S: i64 = 60;
/// Longest `event_type`, characters (the table's CHECK).
pub const MAX_EVENT_TYPE: usize = 64;

/// A validated event, ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Owner.
    pub user_id: Uuid,
    /// Lower snake case type.
    pub event_type: String,
    /// In UTC; `None`: the database's `now()`.
    pub timestamp: Option<DateTime<Utc>>,
    /// A JSON object.
    pub value: Value,
}

/// One problem of one event: `{"index":737,"field":"event_type","error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Position of the event in the request, from 0.
    pub index: usize,
    /// The field (`""` for the event itself).
    pub field: String,
    /// What is wrong, for humans.
    pub error: String,
}

/// Validates every event; returns them all, or every problem found.
pub fn validate(
    events: &[Value],
    now: DateTime<Utc>,
    oldest: DateTime<Utc>,
) -> Result<Vec<NewEvent>, Vec<FieldError>> {
    let mut valid = Vec::with_capacity(events.len());
    let mut errors = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let mut fail = |field: &str, error: String| {
            errors.push(FieldError {
                index,
                field: field.to_string(),
                error,
            })
        };
        let Some(object) = event.as_object() else {
            fail("", "must be a JSON object".into());
            continue;
        };
        match check(object, now, oldest) {
            Ok(event) => valid.push(event),
            Err(problems) => {
                for (field, error) in problems {
                    fail(field, error);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(valid)
    } else {
        Err(errors)
    }
}

type Problems = Vec<(&'static str, String)>;

fn check(
    object: &Map<String, Value>,
    now: DateTime<Utc>,
    oldest: DateTime<Utc>,
) -> Result<NewEvent, Problems> {
    let mut problems: Problems = Vec::new();
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "user_id" | "event_type" | "timestamp" | "value"
        ) {
            problems.push(("", format!("unknown field `{key}`")));
        }
    }
    let user_id = match object.get("user_id") {
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map_err(|_| problems.push(("user_id", "must be a UUID".into())))
            .ok(),
        Some(_) => missing(&mut problems, "user_id", "must be a UUID string"),
        None => missing(&mut problems, "user_id", "is required"),
    };
    let event_type = match object.get("event_type") {
        Some(Value::String(s)) if is_event_type(s) => Some(s.clone()),
        Some(Value::String(_)) => missing(
            &mut problems,
            "event_type",
            "must be lower snake case (^[a-z][a-z0-9]*(_[a-z0-9]+)*$), at most 64 characters",
        ),
        Some(_) => missing(&mut problems, "event_type", "must be a string"),
        None => missing(&mut problems, "event_type", "is required"),
    };
    let timestamp = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => timestamp(s, now, oldest)
            .map_err(|e| problems.push(("timestamp", e)))
            .ok(),
        Some(_) => missing(&mut problems, "timestamp", "must be an RFC 3339 string"),
    };
    let value = match object.get("value") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            problems.push(("value", "must be a JSON object".into()));
            Value::Null
        }
    };
    match (user_id, event_type, problems.is_empty()) {
        (Some(user_id), Some(event_type), true) => Ok(NewEvent {
            user_id,
            event_type,
            timestamp,
            value,
        }),
        _ => Err(problems),
    }
}

/// Records a problem and yields nothing.
fn missing<T>(problems: &mut Problems, field: &'static str, error: &str) -> Option<T> {
    problems.push((field, error.to_string()));
    None
}

/// `^[a-z][a-z0-9]*(_[a-z0-9]+)*$`, at most [`MAX_EVENT_TYPE`] characters.
pub fn is_event_type(s: &str) -> bool {
    let bytes = s.as_bytes();
    let lower_or_digit = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_EVENT_TYPE
        && bytes[0].is_ascii_lowercase()
        && s.split('_').all(|part| !part.is_empty())
        && bytes.iter().all(|b| lower_or_digit(b) || *b == b'_')
}

/// Parses an RFC 3339 timestamp with an explicit offset into UTC and checks its range.
fn timestamp(s: &str, now: DateTime<Utc>, oldest: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let parsed = DateTime::parse_from_rfc3339(s).map_err(|_| {
        "must be RFC 3339 with an explicit offset, e.g. 2026-11-20T12:00:00Z or 2026-11-20T17:30:00+05:30"
            .to_string()
    })?;
    let utc = parsed.with_timezone(&Utc);
    if utc > now + chrono::Duration::seconds(FUTURE_SKEW_S) {
        return Err(format!(
            "is in the future (more than {FUTURE_SKEW_S} s after the server's clock)"
        ));
    }
    if utc < oldest {
        return Err(format!(
            "is before ingest.oldest_timestamp ({})",
            oldest.to_rfc3339()
        ));
    }
    Ok(utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn oldest() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    const USER: &str = "11111111-1111-4111-8111-111111111111";

    #[test]
    fn offsets_become_the_same_utc_instant() {
        let events: Vec<Value> = [
            "2026-11-20T17:30:00+05:30",
            "2026-11-20T04:00:00-08:00",
            "2026-11-20T12:00:00Z",
        ]
        .iter()
        .map(|t| json!({"user_id": USER, "event_type": "app_open", "timestamp": t}))
        .collect();
        let valid = validate(&events, now(), oldest()).unwrap();
        assert!(valid.iter().all(|e| e.timestamp == Some(now())));
        assert_eq!(valid[0].value, json!({}));
    }

    #[test]
    fn every_problem_is_reported_with_its_index_and_field() {
        let events = vec![
            json!({"user_id": USER, "event_type": "app_open"}),
            json!({"user_id": "nope", "event_type": "App Open", "value": [1], "extra": 1}),
            json!({"user_id": USER, "event_type": "goal_complete", "timestamp": "2026-11-20 12:00:00"}),
            json!({"user_id": USER, "event_type": "x", "timestamp": "2026-11-20T12:05:00Z"}),
            json!({"user_id": USER, "event_type": "x", "timestamp": "2019-12-31T23:59:59Z"}),
            json!("not an object"),
            json!({}),
        ];
        let errors = validate(&events, now(), oldest()).unwrap_err();
        let found: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(
            found,
            [
                (1, ""),
                (1, "user_id"),
                (1, "event_type"),
                (1, "value"),
                (2, "timestamp"),
                (3, "timestamp"),
                (4, "timestamp"),
                (5, ""),
                (6, "user_id"),
                (6, "event_type"),
            ]
        );
    }

    #[test]
    fn event_types_follow_the_table_check() {
        for good in ["app_open", "a", "steps_import2", "a1_b2_c3"] {
            assert!(is_event_type(good), "{good}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "App",
            "_a",
            "a_",
            "a__b",
            "1a",
            "a-b",
            "a b",
            long.as_str(),
        ] {
            assert!(!is_event_type(bad), "{bad}");
        }
    }
}
