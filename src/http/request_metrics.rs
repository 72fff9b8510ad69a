//! The server port's request metrics, as one axum middleware ([`track`]): every request's
//! duration by route template and status class ([`m::HTTP_REQUEST_DURATION`]; its `_count` is
//! the request count), the 429s by route ([`m::HTTP_RATE_LIMITED`]), and after each request the
//! API pool's connections ([`m::DB_POOL_CONNECTIONS`], [`m::DB_POOL_WAITING`]).
//!
//! Labels come from small fixed sets: `route` is the template axum matched (`/v1/events`),
//! never the raw path nor anything of the caller; a path no route serves is `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use deadpool_postgres::Pool;
use metrics::{counter, histogram};

use crate::metrics as m;

/// The `route` label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Times `request` from here (its head read) to its response head and counts it; then samples
/// `pool` (the API's pool). Wrap the whole router with it (`from_fn_with_state(pool, track)`),
/// outermost, so that every refusal of the layers inside is counted too.
pub async fn track(State(pool): State<Pool>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    histogram!(
        m::HTTP_REQUEST_DURATION,
        "route" => route.clone(),
        "status_class" => status_class(status),
    )
    .record(start.elapsed().as_secs_f64());
    if status == StatusCode::TOO_MANY_REQUESTS {
        counter!(m::HTTP_RATE_LIMITED, "route" => route).increment(1);
    }
    crate::monitoring::pool_gauges(&pool);
    response
}

/// `1xx` … `5xx`; `other` for a status outside 100–599 (which `http` does not produce).
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_are_the_first_digit() {
        for (code, class) in [
            (101, "1xx"),
            (200, "2xx"),
            (201, "2xx"),
            (304, "3xx"),
            (403, "4xx"),
            (429, "4xx"),
            (503, "5xx"),
            (599, "5xx"),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_class(status), class, "{code}");
        }
    }
}
