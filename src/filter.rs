//! `postgres_changes` filters (Supabase Realtime syntax): `column=op.value`, with the operators
//! `eq, neq, lt, lte, gt, gte, in` (`in.(a,b)`), several segments joined by `,` and ANDed.
//!
//! Values compare as numbers when both sides are numbers, else as text (a JSON string as itself,
//! `true`/`false`, `null`). A filter only narrows what a token may see; authorization is the
//! router's.

use std::fmt;

use serde_json::Value;

use crate::replication::pgoutput::Record;

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
    /// Parses `text`; `columns` are the table's columns (an unknown column is an error).
    pub fn parse(text: &str, columns: &[&str]) -> Result<Filter, FilterError> {
        let mut conditions = Vec::new();
        for segment in split_segments(text) {
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
            if !columns.contains(&column) {
                return Err(FilterError(format!(
                    "unknown column `{column}` in filter `{segment}`"
                )));
            }
            let values = if op == Op::In {
                let list = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| {
                        FilterError(format!(
                            "invalid filter `{segment}`: `in` takes a list like in.(a,b)"
                        ))
                    })?;
                list.split(',').map(|v| unquote(v.trim())).collect()
            } else {
                vec![unquote(value)]
            };
            conditions.push(Condition {
                column: column.to_string(),
                op,
                values,
            });
        }
        Ok(Filter { conditions })
    }

    /// True when every condition holds for `record`.
    pub fn matches(&self, record: &Record) -> bool {
        self.conditions.iter().all(|c| c.matches(record))
    }
}

impl Condition {
    fn matches(&self, record: &Record) -> bool {
        let value = record.get(&self.column).unwrap_or(&Value::Null);
        match self.op {
            Op::In => self
                .values
                .iter()
                .any(|v| compare(value, v) == Some(std::cmp::Ordering::Equal)),
            op => {
                let Some(ordering) = compare(value, &self.values[0]) else {
                    return op == Op::Neq;
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
        Value::Null => "null".to_string(),
        Value::Array(_) | Value::Object(_) => return None,
    };
    Some(text.as_str().cmp(operand))
}

/// Splits at commas outside parentheses (so `in.(a,b)` stays whole).
fn split_segments(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
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

fn unquote(v: &str) -> String {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLUMNS: &[&str] = &["id", "user_id", "event_type", "value", "is_deleted", "n"];

    fn record() -> Record {
        json!({"id": "a", "user_id": "u1", "event_type": "goal_complete", "value": {"k": 1},
               "is_deleted": false, "n": 5})
        .as_object()
        .cloned()
        .unwrap()
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter, COLUMNS).unwrap().matches(&record())
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
        assert!(check("is_deleted=eq.false"));
        assert!(!check("value=eq.x"), "objects never equal a scalar");
    }

    #[test]
    fn segments_are_anded() {
        assert!(check(
            "user_id=eq.u1,event_type=in.(app_open,goal_complete),n=gte.5"
        ));
        assert!(!check("user_id=eq.u1,n=gt.5"));
        assert!(check(""));
    }

    #[test]
    fn bad_filters_explain_themselves() {
        let err = |f: &str| Filter::parse(f, COLUMNS).unwrap_err().0;
        assert!(err("n=like.5").contains("unsupported filter operator `like`"));
        assert!(err("nope=eq.1").contains("unknown column `nope`"));
        assert!(err("n").contains("expected column=op.value"));
        assert!(err("n=in.5").contains("in.(a,b)"));
    }
}
