//! Phoenix channel frames as Supabase Realtime clients speak them (docs/PROTOCOL.md "Supabase
//! Realtime compatibility"; `@supabase/realtime-js` `RealtimeClient`/serializer,
//! `realtime_client` for Dart): `vsn=1.0.0` objects `{topic,event,payload,ref,join_ref}`,
//! `vsn=2.0.0` arrays `[join_ref,ref,topic,event,payload]`.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::model::type_name;
use crate::model::{Event, Operation};
use crate::session::engine::text_frame;

/// Serializer version, chosen per connection by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    /// `1.0.0` (also when absent): JSON objects.
    V1,
    /// `2.0.0`: JSON arrays.
    V2,
}

impl Vsn {
    /// Parses the `vsn` parameter. Errors: an unsupported version, as text.
    pub fn from_param(vsn: Option<&str>) -> Result<Vsn, String> {
        match vsn {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(format!("unsupported vsn `{other}`: use 1.0.0 or 2.0.0")),
        }
    }
}

/// One Phoenix message. `join_ref` and `msg_ref` are echoed exactly as the client sent them
/// (strings in current clients; `null` when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The channel's join reference.
    pub join_ref: Value,
    /// This message's reference (replies carry the request's).
    pub msg_ref: Value,
    /// `realtime:<name>` or `phoenix`.
    pub topic: String,
    /// `phx_join`, `heartbeat`, `postgres_changes`, …
    pub event: String,
    /// The payload object.
    pub payload: Value,
}

/// Parses a client text frame. Errors: why it is not a Phoenix message of this version.
pub fn decode(text: &str, vsn: Vsn) -> Result<Message, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    let (join_ref, msg_ref, topic, event, payload) = match (vsn, &value) {
        (Vsn::V2, Value::Array(a)) if a.len() == 5 => (
            field(a.first()),
            field(a.get(1)),
            &a[2],
            &a[3],
            field(a.get(4)),
        ),
        (Vsn::V1, Value::Object(o)) => (
            field(o.get("join_ref")),
            field(o.get("ref")),
            o.get("topic").unwrap_or(&Value::Null),
            o.get("event").unwrap_or(&Value::Null),
            field(o.get("payload")),
        ),
        (Vsn::V2, _) => {
            return Err("vsn 2.0.0 frames are [join_ref, ref, topic, event, payload]".into())
        }
        (Vsn::V1, _) => {
            return Err("vsn 1.0.0 frames are {topic, event, payload, ref, join_ref}".into())
        }
    };
    let (Some(topic), Some(event)) = (topic.as_str(), event.as_str()) else {
        return Err("topic and event must be strings".into());
    };
    Ok(Message {
        join_ref,
        msg_ref,
        topic: topic.to_string(),
        event: event.to_string(),
        payload,
    })
}

/// A message as `vsn=1.0.0` sends it: `{topic, event, payload, ref, join_ref}`.
#[derive(Serialize)]
struct V1<'a, P: Serialize> {
    topic: &'a str,
    event: &'a str,
    payload: P,
    #[serde(rename = "ref")]
    msg_ref: &'a Value,
    join_ref: &'a Value,
}

/// Serializes a message of either version; `payload` may embed pre-encoded JSON
/// ([`RawValue`]), which is copied as is.
fn to_frame<P: Serialize>(
    vsn: Vsn,
    join_ref: &Value,
    msg_ref: &Value,
    topic: &str,
    event: &str,
    payload: P,
) -> String {
    // Serializing JSON values, strings and already-valid raw JSON cannot fail.
    match vsn {
        Vsn::V2 => serde_json::to_string(&(join_ref, msg_ref, topic, event, payload)),
        Vsn::V1 => serde_json::to_string(&V1 {
            topic,
            event,
            payload,
            msg_ref,
            join_ref,
        }),
    }
    .unwrap_or_default()
}

/// Encodes a message for the client.
pub fn encode(msg: &Message, vsn: Vsn) -> Utf8Bytes {
    to_frame(
        vsn,
        &msg.join_ref,
        &msg.msg_ref,
        &msg.topic,
        &msg.event,
        &msg.payload,
    )
    .into()
}

/// The `postgres_changes` frame of `event` for one channel and its matching binding `ids`.
/// Built once per (version, topic, join_ref, ids) and shared through the event's cache, so a
/// thousand sockets of one user joined the same way cost one encoding. The `data` object is
/// encoded once per event and embedded as raw JSON.
pub fn change_frame(
    event: &Event,
    vsn: Vsn,
    topic: &str,
    join_ref: &Value,
    ids: &[u64],
) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Payload<'a> {
        ids: &'a [u64],
        data: &'a RawValue,
    }
    let key = format!("phx{}|{topic}|{join_ref}|{ids:?}", vsn as u8);
    let frame = event.encoded(&key, |event| {
        let data = event.encoded("phx-data", change_data);
        // `change_data` wrote it with serde_json, so it parses; should it not, the frame
        // carries `null` rather than broken JSON.
        let null = RawValue::NULL;
        let data = std::str::from_utf8(&data)
            .ok()
            .and_then(|data| serde_json::from_str::<&RawValue>(data).ok())
            .unwrap_or(null);
        let payload = Payload { ids, data };
        to_frame(
            vsn,
            join_ref,
            &Value::Null,
            topic,
            "postgres_changes",
            payload,
        )
    });
    text_frame(frame)
}

/// `data` of a `postgres_changes` payload: `schema`, `table`, `commit_timestamp` (UTC,
/// milliseconds, `Z`), `type`, `columns` (`[{name, type}]`, PostgreSQL type names), `record`,
/// `errors`; for updates also `old_record` (the old tuple when the table's replica identity sends
/// one, else `{}`: realtime-js reads `old_record` of every UPDATE); a delete has `old_record` and
/// no `record`, as the Supabase server's `DeletedRecord` (supabase/realtime,
/// `lib/realtime/adapters/changes.ex`; realtime-js turns `old_record` into the payload's `old`).
/// Under `REPLICA IDENTITY FULL` `old_record` is the whole old row: the relay routes a delete to
/// the row's owner only, where Supabase with RLS would send only the primary key. Records are
/// the native frame's, embedded as they are (not decoded and encoded again).
fn change_data<'a>(event: &'a Event) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        schema: &'a str,
        table: &'a str,
        commit_timestamp: String,
        #[serde(rename = "type")]
        kind: &'static str,
        columns: Vec<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<&'a RawValue>,
        errors: Option<()>,
        #[serde(skip_serializing_if = "Option::is_none")]
        old_record: Option<&'a RawValue>,
    }
    let columns: Vec<Value> = event
        .relation
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": type_name(c.type_oid)}))
        .collect();
    let commit = chrono::DateTime::from_timestamp_micros(event.commit_time_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let empty = RawValue::from_string("{}".into()).ok();
    let empty = empty.as_deref().unwrap_or(RawValue::NULL);
    let raw = |json: Option<&'a str>| {
        json.and_then(|j| serde_json::from_str::<&RawValue>(j).ok())
            .unwrap_or(empty)
    };
    let data = Data {
        schema: &event.relation.schema,
        table: &event.relation.name,
        commit_timestamp: commit,
        kind: supabase_type(event.operation),
        columns,
        record: match event.operation {
            Operation::Insert | Operation::Update => Some(raw(Some(event.record_json()))),
            Operation::Delete => None,
        },
        errors: None,
        old_record: match event.operation {
            Operation::Update | Operation::Delete => Some(raw(event.old_record_json())),
            Operation::Insert => None,
        },
    };
    serde_json::to_string(&data).unwrap_or_default()
}

/// `INSERT` / `UPDATE` / `DELETE`, as Supabase names the change types.
pub fn supabase_type(op: Operation) -> &'static str {
    match op {
        Operation::Insert => "INSERT",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_round_trip() {
        let msg = Message {
            join_ref: json!("1"),
            msg_ref: json!("2"),
            topic: "realtime:room".into(),
            event: "phx_join".into(),
            payload: json!({"config": {}}),
        };
        for vsn in [Vsn::V1, Vsn::V2] {
            assert_eq!(decode(&encode(&msg, vsn), vsn).unwrap(), msg);
        }
        assert_eq!(
            &*encode(&msg, Vsn::V1),
            r#"{"topic":"realtime:room","event":"phx_join","payload":{"config":{}},"ref":"2","join_ref":"1"}"#
        );
        assert!(decode("{}", Vsn::V2).is_err());
        assert!(decode("[1,2,3]", Vsn::V2).is_err());
        assert!(decode("[null,null,5,\"e\",{}]", Vsn::V2).is_err());
        assert!(decode("nope", Vsn::V1).is_err());
        assert_eq!(Vsn::from_param(None), Ok(Vsn::V1));
        assert!(Vsn::from_param(Some("3.0.0")).is_err());
    }
}
