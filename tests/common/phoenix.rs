//! A raw Phoenix-protocol client (tokio-tungstenite) for `/realtime/v1/websocket`: frames as
//! `[join_ref, ref, topic, event, payload]` whatever the protocol version.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A connected Phoenix socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/realtime/v1/websocket` with `token` as the `apikey` and protocol `vsn`.
pub async fn open(relay: &engagement_relay::Relay, token: &str, vsn: &str) -> Ws {
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={token}&vsn={vsn}",
        relay.server_addr()
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Next frame as `[join_ref, ref, topic, event, payload]`, whatever the version.
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            return match v {
                Value::Object(o) => json!([
                    o["join_ref"],
                    o["ref"],
                    o["topic"],
                    o["event"],
                    o["payload"]
                ]),
                array => array,
            };
        }
    }
}

/// A vsn 2.0.0 `phx_join` frame with `postgres_changes` `bindings`.
pub fn join(topic: &str, join_ref: &str, token: &str, bindings: Value) -> String {
    json!([join_ref, join_ref, topic, "phx_join",
        {"config": {"postgres_changes": bindings}, "access_token": token}])
    .to_string()
}
