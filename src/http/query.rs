//! Field types shared by the typed query-string structs of the server port
//! ([`super::upgrade::StreamQuery`], [`super::api::history::HistoryQuery`],
//! [`super::api::inactive::InactiveQuery`]).
//!
//! Each is read by `axum::extract::Query` (serde); a value that does not parse fails the whole
//! query with a message `serde_path_to_error` prefixes with the parameter's name, which
//! [`super::HttpError::query`] answers as a 400.

use serde::{Deserialize, Deserializer};

/// A comma-separated list `a,b,c`: items trimmed, empty items dropped (`a,,b` is `a,b`; an
/// empty parameter is an empty list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    /// The items, or `None` (no narrowing) when there are none.
    pub fn non_empty(self) -> Option<Box<[Box<str>]>> {
        (!self.0.is_empty()).then(|| self.0.into_iter().map(Box::from).collect())
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(CommaList(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
}

/// The largest page any paged API serves (`limit`).
pub const MAX_PAGE: u16 = 1000;

/// `limit`: a page size from 1 to [`MAX_PAGE`], as the integer type the query binds.
/// Errors: "must be 1 to 1000" for anything else.
pub fn page_limit<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<u16>,
{
    let text = String::deserialize(d)?;
    text.parse::<u16>()
        .ok()
        .filter(|l| (1..=MAX_PAGE).contains(l))
        .map(|l| Some(T::from(l)))
        .ok_or_else(|| serde::de::Error::custom(format!("must be 1 to {MAX_PAGE}")))
}

#[cfg(test)]
mod tests {
    use axum::extract::Query;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Q {
        list: Option<CommaList>,
    }

    fn list(uri: &str) -> Option<CommaList> {
        let uri = uri.parse().unwrap_or_default();
        Query::<Q>::try_from_uri(&uri).ok().and_then(|q| q.0.list)
    }

    #[test]
    fn lists_are_trimmed_and_empty_items_dropped() {
        let items = |v: &[&str]| Some(CommaList(v.iter().map(|s| s.to_string()).collect()));
        assert_eq!(list("/?list=a,%20b,,c"), items(&["a", "b", "c"]));
        assert_eq!(list("/?list="), items(&[]));
        assert_eq!(list("/?other=1"), None);
        assert_eq!(list("/?list=,").and_then(CommaList::non_empty), None);
    }
}
