//! Where a request's token comes from: `Authorization: Bearer <jwt>`, or (for the native stream
//! and its history GET, which browsers cannot give headers) the `access_token` query parameter.

use axum::http::{header, HeaderMap};
use serde::Deserialize;

/// The token of an `Authorization: Bearer …` header (scheme `Bearer` or `bearer`, surrounding
/// spaces trimmed); `None` when the header is absent, not visible ASCII, another scheme, or
/// empty.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The `access_token` query parameter, read on its own (every other parameter is ignored here)
/// so that a request is authenticated before its other parameters are judged.
#[derive(Debug, Default, Deserialize)]
pub struct AccessToken {
    /// A JWT, as in `Authorization: Bearer`.
    pub access_token: Option<String>,
}

/// The token from `Authorization: Bearer …`, else the non-empty `access_token` parameter.
pub fn token<'a>(headers: &'a HeaderMap, query: &'a AccessToken) -> Option<&'a str> {
    bearer(headers).or_else(|| query.access_token.as_deref().filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = authorization.parse() {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn the_header_wins_over_the_parameter_and_empty_tokens_are_none() {
        let query = AccessToken {
            access_token: Some("q".into()),
        };
        assert_eq!(token(&headers("Bearer h"), &query), Some("h"));
        assert_eq!(token(&headers("bearer  h "), &query), Some("h"));
        assert_eq!(token(&headers("Basic h"), &query), Some("q"));
        assert_eq!(token(&headers("Bearer "), &query), Some("q"));
        assert_eq!(token(&HeaderMap::new(), &AccessToken::default()), None);
        let empty = AccessToken {
            access_token: Some(String::new()),
        };
        assert_eq!(token(&HeaderMap::new(), &empty), None);
    }
}
