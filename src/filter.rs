//! `postgres_changes` filters (Supabase Realtime syntax): `column=op.value`, with the operators
//! `eq, neq, lt, lte, gt, gte, in` (`in.(a,b)`), several segments joined by `,` and ANDed.
//!
//! Values compare as numbers when both sides are numbers, else as text (a JSON string as itself,
//! `true`/`false`, `null`). A filter only narrows what a token may see; authorization is the
//! router's.

use std::fmt;

use serde_json::Value;

use crate::model::{oid, text_to_json, type_name, Event, Record};
use crate::tables::Selection;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `eq`
    Eq,
    /// `neq`
    Neq,
    /// `lt`
    Lt,
    /// `lte`
    Lte,
    /// `gt`
    Gt,
    /// `gte`
    Gte,
    /// `in` (one of a list)
    In,
}

/// One `column=op.value` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Column name.
    pub column: String,
    /// Operator.
    pub op: Op,
    /// Operand(s): one value, or the list of `in`.
    pub values: Vec<String>,
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// The ANDed conditions (empty: everything matches).
    pub conditions: Vec<Condition>,
}

/// Why a filter was refused (the text goes into the `system` error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Filter {
    /// Parses `text`; `columns` are the table's columns with their type OIDs (an unknown
    /// column, a jsonb column, or a value that is not of the column's type is an error, as
    /// Supabase's `subscription_check_filters` refuses them). Operands are normalised to the
    /// form the decoder gives record values (timestamps RFC 3339 UTC with microseconds, uuids
    /// in lower case, booleans `true`/`false`), so comparisons are exact.
    pub fn parse(text: &str, columns: &[(&str, u32)]) -> Result<Filter, FilterError> {
        let mut conditions = Vec::new();
        for segment in split_top_level(text) {
            let segment = segment.trim();
            if segment.is_empty() {
                continue;
            }
            let (column, rest) = segment.split_once('=').ok_or_else(|| {
                FilterError(format!(
                    "invalid filter `{segment}`: expected column=op.value"
                ))
            })?;
            let (op, value) = rest.split_once('.').ok_or_else(|| {
                FilterError(format!(
                    "invalid filter `{segment}`: expected column=op.value"
                ))
            })?;
            let op = match op {
                "eq" => Op::Eq,
                "neq" => Op::Neq,
                "lt" => Op::Lt,
                "lte" => Op::Lte,
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "in" => Op::In,
                other => {
                    return Err(FilterError(format!(
                        "unsupported filter operator `{other}` in `{segment}` (supported: eq, neq, lt, lte, gt, gte, in)"
                    )))
                }
            };
            let column = column.trim();
            let Some(&(_, type_oid)) = columns.iter().find(|(name, _)| *name == column) else {
                return Err(FilterError(format!(
                    "unknown column `{column}` in filter `{segment}`"
                )));
            };
            let raw: Vec<String> = if op == Op::In {
                let list = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| {
                        FilterError(format!(
                            "invalid filter `{segment}`: `in` takes a list like in.(a,b)"
                        ))
                    })?;
                let items: Vec<String> = split_top_level(list)
                    .iter()
                    .map(|v| unquote(v.trim()))
                    .collect();
                if items.len() > MAX_IN_VALUES {
                    return Err(FilterError(format!(
                        "too many values in `in` (at most {MAX_IN_VALUES})"
                    )));
                }
                items
            } else {
                vec![unquote(value)]
            };
            let values = raw
                .iter()
                .map(|v| {
                    normalise(type_oid, v).ok_or_else(|| {
                        FilterError(format!(
                            "invalid value `{v}` for column `{column}` of type {}",
                            type_name(type_oid)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            conditions.push(Condition {
                column: column.to_string(),
                op,
                values,
            });
        }
        Ok(Filter { conditions })
    }

    /// True when every condition holds for the row of `event`. Only the filtered columns are
    /// decoded from the event's frame ([`Event::select`]).
    pub fn matches(&self, event: &Event) -> bool {
        if self.conditions.is_empty() {
            return true;
        }
        let columns: Vec<&str> = self.conditions.iter().map(|c| c.column.as_str()).collect();
        let record = event.select(&columns);
        self.conditions.iter().all(|c| c.matches(&record))
    }
}

impl Condition {
    /// A NULL (or missing) column matches no operator, `neq` included (Supabase wraps each
    /// check in `coalesce(…, false)`).
    fn matches(&self, record: &Record) -> bool {
        let value = record.get(&self.column).unwrap_or(&Value::Null);
        match self.op {
            Op::In => self
                .values
                .iter()
                .any(|v| compare(value, v) == Some(std::cmp::Ordering::Equal)),
            op => {
                let Some(ordering) = compare(value, &self.values[0]) else {
                    return false;
                };
                match op {
                    Op::Eq => ordering.is_eq(),
                    Op::Neq => ordering.is_ne(),
                    Op::Lt => ordering.is_lt(),
                    Op::Lte => ordering.is_le(),
                    Op::Gt => ordering.is_gt(),
                    Op::Gte => ordering.is_ge(),
                    Op::In => false,
                }
            }
        }
    }
}

/// What a native session asks for beyond what its token authorizes (`table` and
/// `event_type` query parameters); `None` is everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interest {
    /// The tables of the `table` parameter, resolved against `[[tables]]`.
    pub tables: Option<Selection>,
    /// `event_type` values; a row without an `event_type` column matches no list.
    pub event_types: Option<Box<[Box<str>]>>,
}

impl Interest {
    /// Whether `event` is of a wanted table and event type.
    pub fn matches(&self, event: &Event) -> bool {
        let table_ok = self
            .tables
            .as_ref()
            .is_none_or(|tables| tables.contains(&event.relation));
        table_ok
            && self.event_types.as_ref().is_none_or(|types| {
                event
                    .event_type()
                    .is_some_and(|t| types.iter().any(|w| **w == *t))
            })
    }
}

/// Compares a record value with a filter operand: numerically when both are numbers, else as
/// text. `None` when the value is not comparable (an object or array).
fn compare(value: &Value, operand: &str) -> Option<std::cmp::Ordering> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let (Some(a), Ok(b)) = (n.as_f64(), operand.parse::<f64>()) {
                return a.partial_cmp(&b);
            }
            n.to_string()
        }
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(text.as_str().cmp(operand))
}

/// Splits at commas outside parentheses and double quotes (so `in.(a,b)` and `eq."a,b"`
/// stay whole); a backslash escapes the next character inside quotes (PostgREST quoting, as
/// realtime-js's filter builder and the Dart client write it).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start, mut quoted, mut escaped) = (0i32, 0usize, false, false);
    for (i, c) in text.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Removes PostgREST double quotes and their backslash escapes.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Most values in one `in` list (Supabase's limit).
const MAX_IN_VALUES: usize = 100;

/// An operand in the decoder's text form for the column type; `None` when it is not a value
/// of that type (or the type cannot be filtered: json/jsonb).
fn normalise(type_oid: u32, v: &str) -> Option<String> {
    match type_oid {
        oid::TIMESTAMPTZ => match text_to_json(oid::TIMESTAMPTZ, v) {
            Value::String(s) if s.ends_with('Z') => Some(s),
            _ => None,
        },
        oid::UUID => uuid::Uuid::parse_str(v).ok().map(|u| u.to_string()),
        oid::BOOL => match v.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Some("true".into()),
            "f" | "false" | "no" | "off" | "0" => Some("false".into()),
            _ => None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => {
            v.parse::<f64>().ok().map(|_| v.to_string())
        }
        oid::JSON | oid::JSONB => None,
        _ => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const U1: &str = "6a1d3a5e-8f1b-4c2d-9e3f-4a5b6c7d8e9f";
    const COLUMNS: &[(&str, u32)] = &[
        ("id", oid::TEXT),
        ("user_id", oid::UUID),
        ("timestamp", oid::TIMESTAMPTZ),
        ("event_type", oid::TEXT),
        ("value", oid::JSONB),
        ("is_deleted", oid::BOOL),
        ("n", oid::INT4),
        ("note", oid::TEXT),
    ];

    fn event() -> Event {
        let record = json!({"id": "a,b", "user_id": U1, "timestamp": "2026-11-20T12:00:00.500000Z",
               "event_type": "goal_complete", "value": {"k": 1}, "is_deleted": false, "n": 5,
               "note": null});
        let record = record.as_object().cloned().unwrap();
        let relation = crate::model::Relation::fixture();
        let operation = crate::model::Operation::Insert;
        let cursor = crate::model::Cursor::default();
        Event::new(cursor, 0, operation, (relation, "user_id"), record)
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter, COLUMNS).unwrap().matches(&event())
    }

    #[test]
    fn every_operator_compares_as_supabase_does() {
        assert!(check("event_type=eq.goal_complete"));
        assert!(!check("event_type=eq.app_open"));
        assert!(check("event_type=neq.app_open"));
        assert!(check("n=gt.4") && check("n=gte.5") && check("n=lt.10") && check("n=lte.5"));
        assert!(!check("n=gt.5"));
        assert!(!check("n=gt.10") && check("n=lt.6"));
        assert!(check("event_type=in.(app_open,goal_complete)"));
        assert!(!check("event_type=in.(app_open,steps_import)"));
        assert!(check("is_deleted=eq.false") && check("is_deleted=eq.f"));
    }

    #[test]
    fn operands_are_normalised_to_the_column_type() {
        assert!(check("timestamp=gt.2026-11-20T12:00:00Z"));
        assert!(check("timestamp=lt.2026-11-20 13:30:00+01:00"));
        assert!(!check("timestamp=gt.2026-11-20 13:30:00+01:00"));
        assert!(check("timestamp=eq.2026-11-20T13:00:00.5+01:00"));
        assert!(check(&format!("user_id=eq.{}", U1.to_uppercase())));
        assert!(check(r#"id=eq."a,b""#), "quoted values keep their commas");
        assert!(check(r#"id=in.("x","a,b")"#));
        assert!(check(r#"event_type=in.("goal_complete")"#));
    }

    #[test]
    fn null_matches_no_operator() {
        assert!(!check("note=eq.null") && !check("note=neq.x") && !check("note=in.(x)"));
    }

    #[test]
    fn segments_are_anded() {
        assert!(check(&format!(
            "user_id=eq.{U1},event_type=in.(app_open,goal_complete),n=gte.5"
        )));
        assert!(!check(&format!("user_id=eq.{U1},n=gt.5")));
        assert!(check(""));
    }

    #[test]
    fn bad_filters_explain_themselves() {
        let err = |f: &str| Filter::parse(f, COLUMNS).unwrap_err().0;
        assert!(err("n=like.5").contains("unsupported filter operator `like`"));
        assert!(err("nope=eq.1").contains("unknown column `nope`"));
        assert!(err("n").contains("expected column=op.value"));
        assert!(err("n=in.5").contains("in.(a,b)"));
        assert!(err("is_deleted=eq.maybe").contains("invalid value `maybe`"));
        assert!(err("user_id=eq.notauuid").contains("of type uuid"));
        assert!(err("value=eq.x").contains("of type jsonb"));
        let many = format!("n=in.({})", vec!["1"; 101].join(","));
        assert!(err(&many).contains("too many values"));
    }
}
