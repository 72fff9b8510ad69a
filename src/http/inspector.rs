//! `GET /inspector`: the live inspector page (`server.inspector`, README "Inspector"). One
//! static page that watches the native stream (`/v1/events`) of a pasted token with its commit →
//! browser latency, and `GET /v1/status`, presence and one user's sessions for a service-role
//! token. Only this module knows the page; it answers nothing but its own paths.
//!
//! The files live in `src/http/inspector/` and are embedded with `include_str!`: nothing is
//! fetched from the network at run time, no framework, no CDN. The page holds no secret: the
//! operator pastes a token, which stays in the browser. `server.inspector_presets` (local
//! development, `dev`) adds `GET /inspector/presets.json`, the picker's tokens.
//!
//! Every response forbids what the page does not need ([`CSP`]: scripts, styles, images and
//! connections from this origin only, WebSockets, no framing) and is revalidated before reuse
//! (`Cache-Control: no-cache`; the presets, which hold tokens, are `no-store`).

use std::sync::Arc;

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::config::ServerConfig;
use crate::tables::TableConfig;

/// The page; its `INSPECTOR_CONFIG` placeholder is replaced by [`Inspector::new`].
const INDEX_HTML: &str = include_str!("inspector/index.html");
/// The page's files below `/inspector/`: (name, content type, body). The scripts are plain
/// modern JavaScript modules: `app.js` (token, stream, frames, latency) imports `panels.js`
/// (status, presence, lookup) and `common.js`. The icon is there because browsers ask for one
/// and a missing icon would be a console error.
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("inspector/app.js"),
    ),
    (
        "panels.js",
        "text/javascript; charset=utf-8",
        include_str!("inspector/panels.js"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("inspector/common.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("inspector/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("inspector/icon.svg"),
    ),
];
/// Where [`INDEX_HTML`] takes the page's configuration (a JSON data block, never executed).
const CONFIG_PLACEHOLDER: &str = "INSPECTOR_CONFIG";

/// The Content-Security-Policy of every inspector response: everything from this origin only,
/// the stream over `ws:`/`wss:` (older browsers do not count a same-host WebSocket as
/// `'self'`), no plugins, no `<base>`, no form posts, and no framing (the page takes tokens, so
/// no other site may overlay it).
pub const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The inspector's responses, rendered once at start.
pub struct Inspector {
    /// The page with its configuration filled in.
    index: String,
    /// `GET /inspector/presets.json`'s body, when `server.inspector_presets` is set:
    /// `[{"label","token"}, …]`.
    presets: Option<String>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("presets", &self.presets.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// The inspector when `server.inspector` is on, else `None`. The page learns the streamed
    /// `tables` (its table choices, and each one's owner column for the user column) and
    /// whether presets exist, so that it never asks for a file that is not there.
    pub fn new(server: &ServerConfig, tables: &[TableConfig]) -> Option<Inspector> {
        if !server.inspector {
            return None;
        }
        let presets = (!server.inspector_presets.is_empty()).then(|| {
            let list: Vec<_> = server
                .inspector_presets
                .iter()
                .map(|p| json!({"label": p.label, "token": p.token.expose()}))
                .collect();
            serde_json::Value::from(list).to_string()
        });
        let tables: Vec<_> = tables
            .iter()
            .map(|t| {
                json!({
                    "schema": t.schema,
                    "table": t.table,
                    "owner": t.owner_column,
                    "operations": t.operations,
                })
            })
            .collect();
        let config = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "tables": tables,
            "presets": presets.is_some(),
        });
        Some(Inspector {
            index: INDEX_HTML.replacen(CONFIG_PLACEHOLDER, &script_safe(&config.to_string()), 1),
            presets,
        })
    }
}

/// `json` made safe inside an HTML `<script>` data block: `<`, `>` and `&` as `\u` escapes
/// (still the same JSON), so no value can close the element.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The inspector's routes, for `http::server_routes` to merge: `GET /inspector`, its files
/// (`/inspector/app.js`, `panels.js`, `common.js`, `app.css`, `icon.svg`), and
/// `/inspector/presets.json` when presets are set.
pub fn routes<S: Clone + Send + Sync + 'static>(inspector: Inspector) -> Router<S> {
    let inspector = Arc::new(inspector);
    let page = inspector.clone();
    let mut router = Router::new().route(
        "/inspector",
        get(move || async move { asset("text/html; charset=utf-8", page.index.clone()) }),
    );
    for (name, content_type, body) in ASSETS {
        router = router.route(
            &format!("/inspector/{name}"),
            get(move || async move { asset(content_type, body) }),
        );
    }
    if inspector.presets.is_some() {
        router = router.route(
            "/inspector/presets.json",
            get(move || async move {
                let body = inspector.presets.clone().unwrap_or_default();
                let mut response = asset("application/json", body);
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }),
        );
    }
    router
}

/// A response of `body` as `content_type` with the inspector's headers.
fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InspectorPreset, Secret};

    fn server(inspector: bool, presets: &[(&str, &str)]) -> ServerConfig {
        ServerConfig {
            inspector,
            inspector_presets: presets
                .iter()
                .map(|(label, token)| InspectorPreset {
                    label: (*label).into(),
                    token: Secret::new(*token),
                })
                .collect(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn off_there_is_no_inspector() {
        assert!(Inspector::new(&server(false, &[("a", "t")]), &[]).is_none());
    }

    #[test]
    fn the_page_gets_the_tables_and_whether_presets_exist() {
        let tables = crate::tables::default_tables();
        let page = Inspector::new(&server(true, &[]), &tables).unwrap();
        assert!(!page.index.contains(CONFIG_PLACEHOLDER));
        assert!(page.index.contains("\"presets\":false"), "{}", page.index);
        assert!(page.index.contains("\"table\":\"engagement_events\""));
        assert!(page.presets.is_none());
        let page = Inspector::new(&server(true, &[("alice", "a.b.c")]), &tables).unwrap();
        assert!(page.index.contains("\"presets\":true"));
        assert!(!page.index.contains("a.b.c"), "tokens stay out of the page");
        let presets: serde_json::Value =
            serde_json::from_str(page.presets.as_deref().unwrap()).unwrap();
        assert_eq!(presets, json!([{"label": "alice", "token": "a.b.c"}]));
        assert!(!format!("{page:?}").contains("a.b.c"));
    }

    #[test]
    fn configuration_cannot_close_the_data_block() {
        assert_eq!(
            script_safe(r#"{"a":"</script><b>&"}"#),
            r#"{"a":"\u003c/script\u003e\u003cb\u003e\u0026"}"#
        );
    }
}
