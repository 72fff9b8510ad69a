//! A small PromQL scanner for the monitoring tests: which metrics an expression of
//! `deploy/prometheus/alerts.yml` or the Grafana dashboard selects, with the label names its
//! matchers use (`tests/prometheus.rs` checks each exists in a real relay's scrape).

use std::collections::{BTreeMap, BTreeSet};

/// The metric names a PromQL expression selects, each with the label names its matchers use.
///
/// A small scanner, enough for the expressions of alerts.yml and the dashboard: identifiers
/// followed by `(` are functions or aggregations, `by`/`without`/`on`/`ignoring`/`group_left`/
/// `group_right` lists are skipped, label names are read inside `{…}`, strings and durations are
/// skipped.
pub fn selectors(expr: &str) -> BTreeMap<String, BTreeSet<String>> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_lowercase();
            if LISTS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = next;
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if chars.get(next) == Some(&'(')
                || KEYWORDS.contains(&lower.as_str())
                || ["by", "without"]
                    .iter()
                    .any(|k| starts_word(&chars, next, k))
            {
                // A function, an aggregation (`sum by (…) (…)`) or an operator.
            } else {
                let labels = out.entry(word).or_default();
                if chars.get(next) == Some(&'{') {
                    i = matchers(&chars, next, labels);
                }
            }
        } else if c == '{' {
            // A selector without a name (`{__name__=…}`): not used by the kit.
            let mut ignored = BTreeSet::new();
            i = matchers(&chars, i, &mut ignored);
        } else {
            i += 1;
        }
    }
    out
}

/// True if the word at `at` is `word` (case-insensitive).
fn starts_word(chars: &[char], at: usize, word: &str) -> bool {
    let end = at + word.len();
    end <= chars.len()
        && chars[at..end]
            .iter()
            .zip(word.chars())
            .all(|(a, b)| a.eq_ignore_ascii_case(&b))
        && chars
            .get(end)
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == ':'))
}

/// Reads the label names of `{a="x", b=~"y"}` starting at `open`; returns the index after `}`.
fn matchers(chars: &[char], open: usize, labels: &mut BTreeSet<String>) -> usize {
    let mut i = open + 1;
    let mut name = String::new();
    while i < chars.len() && chars[i] != '}' {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
        } else if "=!~".contains(c) {
            if !name.is_empty() {
                labels.insert(std::mem::take(&mut name));
            }
        } else {
            name.clear();
        }
        i += 1;
    }
    i + 1
}

/// Index after the string literal starting at `open`.
fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

#[test]
fn the_selector_scanner_finds_metrics_and_their_label_names() {
    let found = selectors(
        r#"sum by (job, instance) (rate(relay_sessions_closed_total{code="4008", x=~"a}b"}[5m])) * 60 > 1
           and on (instance) relay_slo_target_seconds unless absent(up{job="engagement-relay"})
           / instance:relay_delivery_latency_seconds:p95_5m offset 5m"#,
    );
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("relay_sessions_closed_total", vec!["code", "x"]),
        ("relay_slo_target_seconds", vec![]),
        ("up", vec!["job"]),
        ("instance:relay_delivery_latency_seconds:p95_5m", vec![]),
    ]
    .into_iter()
    .map(|(m, l)| (m.to_string(), l.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(found, expected);
}
