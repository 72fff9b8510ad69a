//! A JWKS endpoint of the test's own (axum on 127.0.0.1): the key set it serves, whether it is
//! down, and how many requests it got.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use engagement_relay::auth::sign::SigningKey;
use serde_json::Value;

use super::keys::jwks_json;

/// The JWKS endpoint the test controls: the document it serves, whether it answers, and how
/// many requests it got.
#[derive(Clone, Default)]
pub struct Endpoint {
    doc: Arc<Mutex<Value>>,
    /// While set, the endpoint answers 503.
    pub down: Arc<AtomicBool>,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Serves these keys' public halves from now on.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.doc.lock().unwrap() = jwks_json(keys);
    }
}

async fn serve_jwks(State(e): State<Endpoint>) -> impl IntoResponse {
    e.hits.fetch_add(1, Ordering::SeqCst);
    if e.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let doc = e.doc.lock().unwrap().to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Below the relay's 30 s floor: it refreshes every 30 s.
            (header::CACHE_CONTROL, "public, max-age=1"),
        ],
        doc,
    )
        .into_response()
}

/// Starts the JWKS server; returns its URL.
pub async fn jwks_server(endpoint: Endpoint) -> String {
    let app = axum::Router::new()
        .route(
            "/auth/v1/.well-known/jwks.json",
            axum::routing::get(serve_jwks),
        )
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/auth/v1/.well-known/jwks.json")
}
