//! Supabase Realtime–compatible sessions (`/realtime/v1/websocket`): Phoenix channels with
//! `postgres_changes` bindings, as `@supabase/realtime-js` and `realtime_client` (Dart) use them.
//!
//! Each joined channel is one router subscription under the channel token's `sub` (a
//! service-role token: every row), so authorization stays a map lookup; the channel's bindings
//! and filters only narrow what that subscription receives. Any channel's queue overflowing
//! closes the socket (4008): a joined channel never silently misses an event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::phoenix::{self, Message, Vsn};
use super::{finish, send, Close, Delivery, SessionContext, CLOSE_GOING_AWAY, CLOSE_SLOW};
use crate::auth::{now_s, AuthError, Principal};
use crate::filter::{Filter, Interest};
use crate::model::{Event, Operation};
use crate::router::Ticket;
use crate::tables::{Column, Selection, Tables};

/// Most channels one socket may join (Supabase's `max_channels_per_client` default).
const MAX_CHANNELS: usize = 100;

/// Which change types a binding receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Update,
    Delete,
    All,
}

/// One `postgres_changes` binding of a channel.
#[derive(Debug)]
struct Binding {
    id: u64,
    kind: Kind,
    /// The streamed tables (`[[tables]]`) the binding's schema and table select.
    tables: Selection,
    /// `None` when the binding was refused (unknown table, bad filter): it never matches.
    filter: Option<Filter>,
}

impl Binding {
    fn matches(&self, event: &Event) -> bool {
        let kind_ok = matches!(
            (self.kind, event.operation),
            (Kind::All, _) | (Kind::Insert, Operation::Insert) | (Kind::Update, Operation::Update)
        );
        kind_ok
            && self.tables.contains(&event.relation)
            && self.filter.as_ref().is_some_and(|f| f.matches(event))
    }
}

/// A joined channel.
struct Channel {
    join_ref: Value,
    principal: Principal,
    bindings: Vec<Binding>,
    ticket: Option<Ticket>,
}

/// Socket state: the channels and their event streams.
struct Socket<'a> {
    ws: &'a mut WebSocket,
    ctx: &'a SessionContext,
    vsn: Vsn,
    /// The `apikey` parameter, the credential when a join carries no `access_token`.
    apikey: Option<String>,
    channels: HashMap<String, Channel>,
    streams: StreamMap<String, ReceiverStream<Arc<Event>>>,
    overflow: CancellationToken,
    next_binding: u64,
    delivery: Delivery,
}

/// Runs a Realtime session until it closes.
pub async fn run_realtime(
    mut ws: WebSocket,
    ctx: SessionContext,
    vsn: Vsn,
    apikey: Option<String>,
) {
    let mut socket = Socket {
        ws: &mut ws,
        ctx: &ctx,
        vsn,
        apikey,
        channels: HashMap::new(),
        streams: StreamMap::new(),
        overflow: CancellationToken::new(),
        next_binding: 1,
        delivery: Delivery::new(),
    };
    let close = socket.serve().await;
    for (_, channel) in socket.channels.drain() {
        if let Some(ticket) = channel.ticket {
            ctx.router.unsubscribe(ticket);
        }
    }
    finish(&mut ws, close, "realtime").await;
}

impl Socket<'_> {
    async fn serve(&mut self) -> Option<Close> {
        let mut idle = tokio::time::interval(self.ctx.limits.ping_interval);
        idle.reset();
        let mut last_seen = Instant::now();
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return Some(Close::new(CLOSE_GOING_AWAY, "server shutting down")),
                _ = self.overflow.cancelled() => return Some(Close::new(CLOSE_SLOW, "slow consumer: queue full")),
                _ = self.ctx.restart.cancelled() => return Some(super::restarted()),
                _ = sleep_until(expiry) => self.expire_channels().await.ok()?,
                msg = self.ws.next() => {
                    last_seen = Instant::now();
                    match msg {
                        None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return None,
                        Some(Ok(WsMessage::Text(text))) => self.on_text(&text).await.ok()?,
                        // Binary frames carry broadcast pushes, which the relay does not serve.
                        Some(Ok(_)) => {}
                    }
                }
                _ = idle.tick() => {
                    if last_seen.elapsed() > self.ctx.limits.idle_timeout {
                        debug!("dropping a Realtime socket without heartbeats");
                        return None;
                    }
                }
                Some((topic, event)) = self.streams.next(), if !self.streams.is_empty() => {
                    self.deliver(&topic, &event).await.ok()?;
                }
            }
        }
    }

    /// Sends a frame; `Err` when the peer is gone.
    async fn push(&mut self, msg: Message) -> Result<(), ()> {
        send(self.ws, WsMessage::Text(phoenix::encode(&msg, self.vsn))).await
    }

    async fn reply(&mut self, req: &Message, status: &str, response: Value) -> Result<(), ()> {
        let reply = Message {
            join_ref: req.join_ref.clone(),
            msg_ref: req.msg_ref.clone(),
            topic: req.topic.clone(),
            event: "phx_reply".into(),
            payload: json!({"status": status, "response": response}),
        };
        self.push(reply).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), ()> {
        let Ok(msg) = phoenix::decode(text, self.vsn) else {
            // Phoenix servers ignore frames they cannot read rather than drop the socket.
            return Ok(());
        };
        match (msg.topic.as_str(), msg.event.as_str()) {
            ("phoenix", "heartbeat") => self.reply(&msg, "ok", json!({})).await,
            (_, "phx_join") => self.join(msg).await,
            (_, "phx_leave") => {
                let left = self.leave(&msg.topic);
                self.reply(&msg, "ok", json!({})).await?;
                match left {
                    Some(join_ref) => self.push_close(&msg.topic, join_ref).await,
                    None => Ok(()),
                }
            }
            (_, "access_token") => self.refresh(&msg).await,
            // Broadcast and presence are not served: say so to pushes that expect a reply.
            _ if !msg.msg_ref.is_null() => {
                let reason = format!(
                    "`{}` is not served by engagement-relay (postgres_changes only)",
                    msg.event
                );
                self.reply(&msg, "error", json!({"reason": reason})).await
            }
            _ => Ok(()),
        }
    }

    async fn join(&mut self, msg: Message) -> Result<(), ()> {
        // A join on a joined topic replaces it, whether or not the new join succeeds.
        self.leave(&msg.topic);
        if self.channels.len() >= MAX_CHANNELS {
            let reason = format!("TooManyChannels: at most {MAX_CHANNELS} channels per socket");
            return self.reply(&msg, "error", json!({"reason": reason})).await;
        }
        let token = msg.payload["access_token"]
            .as_str()
            .filter(|t| !t.starts_with("sb_"))
            .map(String::from)
            .or_else(|| self.apikey.clone().filter(|k| !k.starts_with("sb_")));
        let principal = match token.as_deref().map(|t| self.ctx.verifier.verify(t)) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                return self
                    .reply(&msg, "error", json!({"reason": join_reason(&e)}))
                    .await
            }
            None => {
                let reason =
                    "MalformedJWT: no access token (send access_token in phx_join or a JWT apikey)";
                return self.reply(&msg, "error", json!({"reason": reason})).await;
            }
        };
        let name = msg
            .topic
            .strip_prefix("realtime:")
            .unwrap_or(&msg.topic)
            .to_string();
        let requested = msg.payload["config"]["postgres_changes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut bindings = Vec::with_capacity(requested.len());
        let mut echoed = Vec::with_capacity(requested.len());
        let mut problems = Vec::new();
        for spec in requested {
            let id = self.next_binding;
            self.next_binding += 1;
            let (binding, problem) = binding(id, &spec, &self.ctx.tables);
            bindings.push(binding);
            problems.extend(problem);
            let mut spec = spec;
            if let Some(obj) = spec.as_object_mut() {
                obj.insert("id".into(), json!(id));
            }
            echoed.push(spec);
        }
        let any_valid = bindings.iter().any(|b| b.filter.is_some());
        let ticket = any_valid.then(|| {
            let sub = self.ctx.router.subscribe(
                &principal,
                Interest::default(),
                self.overflow.clone(),
                None,
            );
            self.streams
                .insert(msg.topic.clone(), ReceiverStream::new(sub.rx));
            sub.ticket
        });
        self.channels.insert(
            msg.topic.clone(),
            Channel {
                join_ref: msg.join_ref.clone(),
                principal,
                bindings,
                ticket,
            },
        );
        self.reply(&msg, "ok", json!({"postgres_changes": echoed}))
            .await?;
        if any_valid {
            self.system(
                &msg.topic,
                &name,
                "postgres_changes",
                "ok",
                "Subscribed to PostgreSQL",
            )
            .await?;
        }
        for problem in problems {
            self.system(&msg.topic, &name, "postgres_changes", "error", &problem)
                .await?;
        }
        Ok(())
    }

    async fn system(
        &mut self,
        topic: &str,
        name: &str,
        ext: &str,
        status: &str,
        text: &str,
    ) -> Result<(), ()> {
        let join_ref = self
            .channels
            .get(topic)
            .map_or(Value::Null, |c| c.join_ref.clone());
        self.push(Message {
            join_ref,
            msg_ref: Value::Null,
            topic: topic.to_string(),
            event: "system".into(),
            payload: json!({"extension": ext, "status": status, "message": text, "channel": name}),
        })
        .await
    }

    /// `phx_close` carries the channel's join_ref as both `join_ref` and `ref`, as Phoenix
    /// sends it: the Dart client tells channel instances of one topic apart by `ref` alone.
    async fn push_close(&mut self, topic: &str, join_ref: Value) -> Result<(), ()> {
        self.push(Message {
            join_ref: join_ref.clone(),
            msg_ref: join_ref,
            topic: topic.to_string(),
            event: "phx_close".into(),
            payload: json!({}),
        })
        .await
    }

    /// Drops a channel and its subscription (no frames); returns its join_ref if it existed.
    fn leave(&mut self, topic: &str) -> Option<Value> {
        let channel = self.channels.remove(topic)?;
        self.streams.remove(topic);
        if let Some(ticket) = channel.ticket {
            self.ctx.router.unsubscribe(ticket);
        }
        Some(channel.join_ref)
    }

    /// `access_token` on a channel: a valid token of the same identity extends it (no reply);
    /// anything else ends the channel with a `system` error and `phx_close`.
    async fn refresh(&mut self, msg: &Message) -> Result<(), ()> {
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return Ok(());
        };
        // Clients push `access_token` on every heartbeat; a missing token or an `sb_` key is
        // not a refresh, and the Supabase server ignores it too.
        let Some(token) = msg.payload["access_token"]
            .as_str()
            .filter(|t| !t.starts_with("sb_"))
        else {
            return Ok(());
        };
        let problem = match self.ctx.verifier.verify(token) {
            Ok(p) if p.user_id == channel.principal.user_id && p.role == channel.principal.role => {
                channel.principal.expires_at = p.expires_at;
                return Ok(());
            }
            Ok(_) | Err(AuthError::Forbidden(_)) => {
                "a refreshed token must keep the same sub and role".to_string()
            }
            Err(e) => e.to_string(),
        };
        self.end_channel(&msg.topic.clone(), &problem).await
    }

    async fn end_channel(&mut self, topic: &str, problem: &str) -> Result<(), ()> {
        let name = topic.strip_prefix("realtime:").unwrap_or(topic).to_string();
        self.system(topic, &name, "system", "error", problem)
            .await?;
        let join_ref = self
            .channels
            .get(topic)
            .map_or(Value::Null, |c| c.join_ref.clone());
        self.leave(topic);
        self.push_close(topic, join_ref).await
    }

    /// The earliest instant a channel's token runs out (far away when none is joined).
    fn next_expiry(&self) -> Instant {
        let leeway = self.ctx.verifier.leeway_s();
        let now = now_s();
        self.channels
            .values()
            .map(|c| {
                c.principal
                    .expires_at
                    .saturating_add(leeway)
                    .saturating_sub(now)
                    .clamp(0, 86_400)
            })
            .min()
            .map_or(Instant::now() + Duration::from_secs(86_400), |s| {
                Instant::now() + Duration::from_secs(s as u64)
            })
    }

    async fn expire_channels(&mut self) -> Result<(), ()> {
        let now = now_s();
        let leeway = self.ctx.verifier.leeway_s();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.principal.expires_at.saturating_add(leeway) <= now)
            .map(|(t, c)| (t.clone(), now - c.principal.expires_at))
            .collect();
        for (topic, ago) in expired {
            self.end_channel(&topic, &format!("Token has expired {ago} seconds ago"))
                .await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, topic: &str, event: &Arc<Event>) -> Result<(), ()> {
        let Some(channel) = self.channels.get(topic) else {
            return Ok(());
        };
        let ids: Vec<u64> = channel
            .bindings
            .iter()
            .filter(|b| b.matches(event))
            .map(|b| b.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let frame = phoenix::change_frame(event, self.vsn, topic, &channel.join_ref, &ids);
        send(self.ws, WsMessage::Text(frame)).await?;
        self.delivery.record(std::slice::from_ref(event));
        Ok(())
    }
}

/// Builds a binding from its `{event, schema, table?, filter?}` object; the second value is
/// the `system` error text when the binding cannot be served. The schema and table select among
/// the streamed tables (`*` or no table: all of them); a filter may name only columns that every
/// selected table has, with the same type.
fn binding(id: u64, spec: &Value, tables: &Tables) -> (Binding, Option<String>) {
    let field = |k: &str| spec.get(k).and_then(Value::as_str);
    let event = field("event").unwrap_or("");
    let (schema, table) = (field("schema").unwrap_or("public"), field("table"));
    let kind = match event.to_ascii_uppercase().as_str() {
        "INSERT" => Some(Kind::Insert),
        "UPDATE" => Some(Kind::Update),
        "DELETE" => Some(Kind::Delete),
        "*" => Some(Kind::All),
        _ => None,
    };
    let selected = tables.select(schema, table);
    let refused = |why: String| {
        (
            Binding {
                id,
                kind: Kind::All,
                tables: Selection::default(),
                filter: None,
            },
            Some(why),
        )
    };
    let Some(kind) = kind.filter(|_| !selected.is_empty()) else {
        return refused(format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: {event}, schema: {schema}, table: {}, filters: [{}]]",
            table.unwrap_or("*"),
            field("filter").unwrap_or("")
        ));
    };
    let columns = common_columns(tables, &selected);
    let columns: Vec<(&str, u32)> = columns.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    match Filter::parse(field("filter").unwrap_or(""), &columns) {
        Ok(filter) => (
            Binding {
                id,
                kind,
                tables: selected,
                filter: Some(filter),
            },
            None,
        ),
        Err(e) => refused(format!("Error parsing `filter` params: {e}")),
    }
}

/// The columns (name and type) that all `selected` tables have.
fn common_columns(tables: &Tables, selected: &Selection) -> Vec<Column> {
    let mut all = selected.iter().map(|(s, t)| tables.columns(s, t));
    let first = all.next().unwrap_or_default();
    all.fold(first, |mut common, columns| {
        common.retain(|c| columns.contains(c));
        common
    })
}

/// The join refusal reason, in the Supabase server's words.
fn join_reason(e: &AuthError) -> String {
    match e {
        AuthError::Expired { .. } | AuthError::NotYetValid => format!("InvalidJWTToken: {e}"),
        AuthError::BadSignature | AuthError::Algorithm => format!("JwtSignatureError: {e}"),
        AuthError::Forbidden(_) => format!("Unauthorized: {e}"),
        AuthError::Missing
        | AuthError::Malformed(_)
        | AuthError::Claims(_)
        | AuthError::Audience(_) => {
            format!("MalformedJWT: {e}")
        }
    }
}
