//! Supabase Realtime–compatible sessions (`/realtime/v1/websocket`) as an engine
//! [`Protocol`]: Phoenix channels with `postgres_changes` bindings, as `@supabase/realtime-js`
//! and `realtime_client` (Dart) use them.
//!
//! Each joined channel is one router subscription under the channel token's `sub` (a
//! service-role token: every row), so authorization stays a map lookup; the channel's bindings
//! and filters ([`channels`]) only narrow what that subscription receives. Any channel's queue
//! overflowing closes the socket (4008): a joined channel never silently misses an event.
//!
//! Unlike the native protocol, a frame the relay cannot read does not end the socket: it is
//! answered with a `phx_reply` error (the Supabase server logs `MalformedWebSocketMessage` and
//! keeps the socket too), and a channel whose token expires or whose refresh is refused is
//! closed alone (`system` error, then `phx_close`).
//!
//! A socket opens with any `apikey` (an `sb_…` key is not checked), so it is authorized only
//! by a joined channel that holds a session slot: without one it [awaits a
//! join](Protocol::awaiting_join), and the engine closes it (1008) after `limits.join_timeout`
//! (counted from the opening, or from when its last such channel was left), so that neither
//! unauthenticated sockets nor a user's channel-less sockets (which hold no per-user slot) can
//! hold `server.max_sessions` permits. realtime-js disconnects once its last channel is removed.
//!
//! Each joined channel with a served binding holds one of its token's session slots
//! (`limits.max_sessions_per_user`, `limits.max_service_sessions`): a join over the cap is
//! answered with a `phx_reply` error (`too_many_user_sessions: …`) and subscribes nothing. The
//! socket itself takes no slot (docs/PROTOCOL.md, "Session caps").

pub mod channels;
pub mod phoenix;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use serde_json::{json, Value};

use self::channels::{binding, join_reason, Binding};
use self::phoenix::{Message, Vsn};
use super::engine::{self, Frame, Key, Opening, Outcome, Protocol, Subscriptions, Unreadable};
use super::{refresh, SessionContext};
use crate::auth::{now_s, Principal, Role, Verifier};
use crate::filter::Interest;
use crate::model::Event;
use crate::presence::{Joined, Registry, SessionInfo};
use crate::router::{Router, Slot};
use crate::tables::Tables;
use uuid::Uuid;

/// Most channels one socket may join (Supabase's `max_channels_per_client` default).
const MAX_CHANNELS: usize = 100;

/// Runs a Realtime session until it closes.
pub fn run_realtime(
    ws: WebSocket,
    ctx: SessionContext,
    vsn: Vsn,
    apikey: Option<String>,
) -> impl std::future::Future<Output = ()> {
    realtime(Box::new((ws, ctx, vsn, apikey)))
}

/// [`run_realtime`] on its boxed arguments (see [`super::unbox`]).
async fn realtime(start: Box<(WebSocket, SessionContext, Vsn, Option<String>)>) {
    let (ws, ctx, vsn, apikey) = super::unbox(start);
    let subs = Subscriptions::new(ctx.router.clone(), ctx.info.clone());
    let protocol = Realtime {
        registry: ctx.registry.clone(),
        info: ctx.info.clone(),
        present: HashMap::new(),
        verifier: ctx.verifier.clone(),
        tables: ctx.tables.clone(),
        router: ctx.router.clone(),
        caps: (
            ctx.limits.max_sessions_per_user.get(),
            ctx.limits.max_service_sessions.get(),
        ),
        vsn,
        apikey,
        channels: HashMap::new(),
        topics: HashMap::new(),
        next_binding: 1,
    };
    let session_id = ctx.info.id.clone();
    engine::run(ws, &ctx, protocol, subs, Opening::default(), &session_id).await;
}

/// A joined channel.
struct Channel {
    join_ref: Value,
    principal: Principal,
    bindings: Vec<Binding>,
    /// Its router subscription and the session slot it holds; `None` when no binding could be
    /// served.
    key: Option<(Key, Slot)>,
}

/// A Realtime socket's protocol state: its channels.
struct Realtime {
    /// Where the socket is counted under the users its channels act for.
    registry: Arc<Registry>,
    info: Arc<SessionInfo>,
    /// The socket counted once per identity (role and `sub`) whatever its channels: the
    /// registration and how many subscribed channels hold it.
    present: HashMap<(Role, Option<Uuid>), (Joined, usize)>,
    verifier: Arc<Verifier>,
    tables: Arc<Tables>,
    /// Where channels take their session slots.
    router: Arc<Router>,
    /// `limits.max_sessions_per_user` and `limits.max_service_sessions`.
    caps: (usize, usize),
    vsn: Vsn,
    /// The `apikey` parameter, the credential when a join carries no `access_token`.
    apikey: Option<String>,
    /// Joined channels by topic.
    channels: HashMap<String, Channel>,
    /// The topic of each subscription.
    topics: HashMap<Key, String>,
    next_binding: u64,
}

impl Protocol for Realtime {
    fn encode(&mut self, key: Key, event: &Event) -> Option<Frame> {
        let topic = self.topics.get(&key)?;
        let channel = self.channels.get(topic)?;
        let ids: Vec<u64> = channel
            .bindings
            .iter()
            .filter(|b| b.matches(event))
            .map(|b| b.id)
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(phoenix::change_frame(
            event,
            self.vsn,
            topic,
            &channel.join_ref,
            &ids,
        ))
    }

    fn on_text(&mut self, text: &str, subs: &mut Subscriptions) -> Outcome {
        let msg = match phoenix::decode(text, self.vsn) {
            Ok(msg) => msg,
            Err(why) => return Outcome::reply(self.malformed(&why)),
        };
        let mut out = Vec::new();
        match (msg.topic.as_str(), msg.event.as_str()) {
            ("phoenix", "heartbeat") => out.push(self.reply(&msg, "ok", json!({}))),
            (_, "phx_join") => self.join(msg, subs, &mut out),
            (_, "phx_leave") => {
                let left = self.leave(&msg.topic, subs);
                out.push(self.reply(&msg, "ok", json!({})));
                if let Some(join_ref) = left {
                    out.push(self.phx_close(&msg.topic, join_ref));
                }
            }
            (_, "access_token") => self.refresh(&msg, subs, &mut out),
            // Broadcast and presence are not served: say so to pushes that expect a reply.
            _ if !msg.msg_ref.is_null() => {
                let reason = format!(
                    "`{}` is not served by engagement-relay (postgres_changes only)",
                    msg.event
                );
                out.push(self.reply(&msg, "error", json!({ "reason": reason })));
            }
            _ => {}
        }
        Outcome {
            frames: out,
            close: None,
        }
    }

    fn on_unreadable(&mut self, what: Unreadable) -> Outcome {
        Outcome::reply(self.malformed(what.describe()))
    }

    fn expires_at(&self) -> Option<i64> {
        self.channels.values().map(|c| c.principal.expires_at).min()
    }

    fn awaiting_join(&self) -> bool {
        !self.channels.values().any(|c| c.key.is_some())
    }

    fn on_expired(&mut self, cutoff: i64, subs: &mut Subscriptions) -> Outcome {
        let now = now_s();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.principal.expires_at <= cutoff)
            .map(|(t, c)| (t.clone(), now - c.principal.expires_at))
            .collect();
        let mut out = Vec::new();
        for (topic, ago) in expired {
            let problem = format!("Token has expired {ago} seconds ago");
            self.end_channel(&topic, &problem, subs, &mut out);
        }
        Outcome {
            frames: out,
            close: None,
        }
    }
}

impl Realtime {
    fn push(&self, msg: &Message) -> Frame {
        phoenix::encode(msg, self.vsn)
    }

    fn reply(&self, req: &Message, status: &str, response: Value) -> Frame {
        self.push(&Message {
            join_ref: req.join_ref.clone(),
            msg_ref: req.msg_ref.clone(),
            topic: req.topic.clone(),
            event: "phx_reply".into(),
            payload: json!({"status": status, "response": response}),
        })
    }

    /// The answer to a frame that is not a Phoenix message of this socket's version: a
    /// `phx_reply` error on the `phoenix` topic (nothing to correlate it with); the socket stays.
    fn malformed(&self, why: &str) -> Frame {
        self.push(&Message {
            join_ref: Value::Null,
            msg_ref: Value::Null,
            topic: "phoenix".into(),
            event: "phx_reply".into(),
            payload: json!({
                "status": "error",
                "response": {"reason": format!("MalformedWebSocketMessage: {why}")},
            }),
        })
    }

    fn join(&mut self, msg: Message, subs: &mut Subscriptions, out: &mut Vec<Frame>) {
        // A join on a joined topic replaces it, whether or not the new join succeeds.
        self.leave(&msg.topic, subs);
        if self.channels.len() >= MAX_CHANNELS {
            let reason = format!("TooManyChannels: at most {MAX_CHANNELS} channels per socket");
            return out.push(self.reply(&msg, "error", json!({ "reason": reason })));
        }
        let token = msg.payload["access_token"]
            .as_str()
            .filter(|t| !t.starts_with("sb_"))
            .map(String::from)
            .or_else(|| self.apikey.clone().filter(|k| !k.starts_with("sb_")));
        let principal = match token.as_deref().map(|t| self.verifier.verify(t)) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                let reason = join_reason(&e);
                return out.push(self.reply(&msg, "error", json!({ "reason": reason })));
            }
            None => {
                let reason =
                    "MalformedJWT: no access token (send access_token in phx_join or a JWT apikey)";
                return out.push(self.reply(&msg, "error", json!({ "reason": reason })));
            }
        };
        let name = channel_name(&msg.topic).to_string();
        let requested = msg.payload["config"]["postgres_changes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut bindings = Vec::with_capacity(requested.len());
        let mut echoed = Vec::with_capacity(requested.len());
        let mut problems = Vec::new();
        for mut spec in requested {
            let id = self.next_binding;
            self.next_binding += 1;
            let (binding, problem) = binding(id, &spec, &self.tables);
            bindings.push(binding);
            problems.extend(problem);
            if let Some(obj) = spec.as_object_mut() {
                obj.insert("id".into(), json!(id));
            }
            echoed.push(spec);
        }
        let any_valid = bindings.iter().any(|b| b.filter.is_some());
        let key = match any_valid {
            false => None,
            true => match self.router.take_slot(&principal, self.caps.0, self.caps.1) {
                Ok(slot) => {
                    let topic = Some(msg.topic.clone());
                    let (key, _, _) = subs.subscribe(&principal, Interest::default(), None, topic);
                    self.topics.insert(key, msg.topic.clone());
                    self.count_in(&principal);
                    Some((key, slot))
                }
                Err(refused) => {
                    let reason = format!("{}: {refused}", refused.code());
                    return out.push(self.reply(&msg, "error", json!({ "reason": reason })));
                }
            },
        };
        self.channels.insert(
            msg.topic.clone(),
            Channel {
                join_ref: msg.join_ref.clone(),
                principal,
                bindings,
                key,
            },
        );
        out.push(self.reply(&msg, "ok", json!({ "postgres_changes": echoed })));
        if any_valid {
            let ok = "Subscribed to PostgreSQL";
            out.push(self.system(&msg.topic, &name, "postgres_changes", "ok", ok));
        }
        for problem in problems {
            out.push(self.system(&msg.topic, &name, "postgres_changes", "error", &problem));
        }
    }

    fn system(&self, topic: &str, name: &str, ext: &str, status: &str, text: &str) -> Frame {
        let join_ref = self
            .channels
            .get(topic)
            .map_or(Value::Null, |c| c.join_ref.clone());
        self.push(&Message {
            join_ref,
            msg_ref: Value::Null,
            topic: topic.to_string(),
            event: "system".into(),
            payload: json!({"extension": ext, "status": status, "message": text, "channel": name}),
        })
    }

    /// `phx_close` carries the channel's join_ref as both `join_ref` and `ref`, as Phoenix
    /// sends it: the Dart client tells channel instances of one topic apart by `ref` alone.
    fn phx_close(&self, topic: &str, join_ref: Value) -> Frame {
        self.push(&Message {
            join_ref: join_ref.clone(),
            msg_ref: join_ref,
            topic: topic.to_string(),
            event: "phx_close".into(),
            payload: json!({}),
        })
    }

    /// Counts the socket under `principal` (presence) for one more subscribed channel.
    fn count_in(&mut self, principal: &Principal) {
        let id = (principal.role, principal.user_id);
        match self.present.get_mut(&id) {
            Some((_, channels)) => *channels += 1,
            None => {
                let joined = self.registry.join(&self.info, principal);
                self.present.insert(id, (joined, 1));
            }
        }
    }

    /// One subscribed channel of `principal` fewer; the last one uncounts the socket.
    fn count_out(&mut self, principal: &Principal) {
        let id = (principal.role, principal.user_id);
        if let Some((_, channels)) = self.present.get_mut(&id) {
            *channels -= 1;
            if *channels == 0 {
                self.present.remove(&id);
            }
        }
    }

    /// Drops a channel and its subscription (no frames); returns its join_ref if it existed.
    fn leave(&mut self, topic: &str, subs: &mut Subscriptions) -> Option<Value> {
        let channel = self.channels.remove(topic)?;
        if let Some((key, slot)) = channel.key {
            self.topics.remove(&key);
            subs.unsubscribe(key);
            drop(slot);
            self.count_out(&channel.principal);
        }
        Some(channel.join_ref)
    }

    /// `access_token` on a channel: a valid token of the same identity extends it (no reply);
    /// anything else ends the channel with a `system` error and `phx_close`.
    fn refresh(&mut self, msg: &Message, subs: &mut Subscriptions, out: &mut Vec<Frame>) {
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        // Clients push `access_token` on every heartbeat; a missing token or an `sb_` key is
        // not a refresh, and the Supabase server ignores it too.
        let Some(token) = msg.payload["access_token"]
            .as_str()
            .filter(|t| !t.starts_with("sb_"))
        else {
            return;
        };
        if let Err(e) = refresh(&self.verifier, &mut channel.principal, token) {
            self.end_channel(&msg.topic, &e.to_string(), subs, out);
        }
    }

    /// Ends one channel: a `system` error with `problem`, then `phx_close`.
    fn end_channel(
        &mut self,
        topic: &str,
        problem: &str,
        subs: &mut Subscriptions,
        out: &mut Vec<Frame>,
    ) {
        out.push(self.system(topic, channel_name(topic), "system", "error", problem));
        if let Some(join_ref) = self.leave(topic, subs) {
            out.push(self.phx_close(topic, join_ref));
        }
    }
}

/// The channel's name: its topic without `realtime:`.
fn channel_name(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}
