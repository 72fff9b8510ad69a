//! A channel's `postgres_changes` bindings: parsed from `phx_join`, matched against events.
//!
//! A binding selects among the streamed tables (`[[tables]]`) by schema and table, narrows by
//! change type and an optional PostgREST-style filter, and is refused (with the Supabase
//! server's `system` error text) when it names nothing streamed or a filter it cannot apply.

use serde_json::Value;

use crate::auth::AuthError;
use crate::filter::Filter;
use crate::model::{Event, Operation};
use crate::tables::{Column, Selection, Tables};

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
pub(super) struct Binding {
    /// The id echoed in the join reply and listed in matching frames' `ids`.
    pub(super) id: u64,
    kind: Kind,
    /// The streamed tables (`[[tables]]`) the binding's schema and table select.
    tables: Selection,
    /// `None` when the binding was refused (unknown table, bad filter): it never matches.
    pub(super) filter: Option<Filter>,
}

impl Binding {
    /// Whether `event` is one this binding receives.
    pub(super) fn matches(&self, event: &Event) -> bool {
        let kind_ok = matches!(
            (self.kind, event.operation),
            (Kind::All, _)
                | (Kind::Insert, Operation::Insert)
                | (Kind::Update, Operation::Update)
                | (Kind::Delete, Operation::Delete)
        );
        kind_ok
            && self.tables.contains(&event.relation)
            && self.filter.as_ref().is_some_and(|f| f.matches(event))
    }
}

/// Builds a binding from its `{event, schema, table?, filter?}` object; the second value is
/// the `system` error text when the binding cannot be served. The schema and table select among
/// the streamed tables (`*` or no table: all of them); a filter may name only columns that every
/// selected table has, with the same type.
pub(super) fn binding(id: u64, spec: &Value, tables: &Tables) -> (Binding, Option<String>) {
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
pub(super) fn join_reason(e: &AuthError) -> String {
    match e {
        AuthError::Expired { .. } | AuthError::NotYetValid | AuthError::Revoked { .. } => {
            format!("InvalidJWTToken: {e}")
        }
        AuthError::BadSignature
        | AuthError::Algorithm(_)
        | AuthError::UnknownKid(_)
        | AuthError::JwksUnavailable => format!("JwtSignatureError: {e}"),
        AuthError::Forbidden(_) => format!("Unauthorized: {e}"),
        AuthError::Missing
        | AuthError::Malformed(_)
        | AuthError::Claims(_)
        | AuthError::Audience(_) => {
            format!("MalformedJWT: {e}")
        }
    }
}
