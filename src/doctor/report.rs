//! What `doctor` found: one [`Check`] per verified promise, gathered in a [`Report`] that
//! renders as aligned text lines or as one JSON object.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The promise holds.
    Pass,
    /// It holds, but something deserves attention (does not change the exit code).
    Warn,
    /// It does not hold: the relay will not work, or not safely (exit code 1).
    Fail,
    /// Not checked; the detail says why (no connection, not applicable, not visible from here).
    Skip,
}

impl Status {
    /// `pass`, `warn`, `fail` or `skip`: the JSON `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }

    /// The fixed-width mark of a text line: `PASS`, `WARN`, `FAIL`, `SKIP`.
    fn mark(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable identifier, e.g. `wal_level`, or `rls:public.engagement_events` for a per-table
    /// check (`<check>:<schema>.<table>`).
    pub id: String,
    /// The outcome.
    pub status: Status,
    /// One line with the measured values, e.g. `wal_level = replica; logical decoding needs
    /// logical`.
    pub detail: String,
    /// For `warn` and `fail`: the concrete change (SQL or setting) that fixes it.
    pub fix: Option<String>,
}

/// Asserts that `check` has `status` and that its detail mentions `part`.
#[cfg(test)]
pub(crate) fn assert_check(check: &Check, status: Status, part: &str) {
    assert_eq!(check.status, status, "{}", check.detail);
    assert!(check.detail.contains(part), "{}", check.detail);
}

impl Check {
    /// A passing check.
    pub fn pass(id: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(id, Status::Pass, detail, None)
    }

    /// A warning with its fix.
    pub fn warn(id: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Warn, detail, Some(fix.into()))
    }

    /// A failure with its fix.
    pub fn fail(id: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Fail, detail, Some(fix.into()))
    }

    /// A skipped check; `why` says why.
    pub fn skip(id: impl Into<String>, why: impl Into<String>) -> Check {
        Check::new(id, Status::Skip, why, None)
    }

    fn new(
        id: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        // Lines stay lines: a server message may carry a newline.
        let one_line = |s: String| s.replace(['\n', '\r'], " ");
        Check {
            id: id.into(),
            status,
            detail: one_line(detail.into()),
            fix: fix.map(one_line),
        }
    }
}

/// How many checks ended in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Checks that passed.
    pub passed: usize,
    /// Checks that warned.
    pub warnings: usize,
    /// Checks that failed.
    pub failed: usize,
    /// Checks skipped.
    pub skipped: usize,
}

/// Every check of one `doctor` run, in the order they ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed (warnings and skips allowed): exit code 0.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The check named `id`, if it ran.
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// Counts per status.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.checks {
            match c.status {
                Status::Pass => s.passed += 1,
                Status::Warn => s.warnings += 1,
                Status::Fail => s.failed += 1,
                Status::Skip => s.skipped += 1,
            }
        }
        s
    }

    /// The summary line, e.g. `9 passed, 1 warning, 0 failed` (`, 2 skipped` when any were).
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let plural = if s.warnings == 1 { "" } else { "s" };
        let mut line = format!(
            "{} passed, {} warning{plural}, {} failed",
            s.passed, s.warnings, s.failed
        );
        if s.skipped > 0 {
            let _ = write!(line, ", {} skipped", s.skipped);
        }
        line
    }

    /// The readable report: one line per check (`MARK  id  detail`, ids padded to one
    /// column), an indented `fix:` line under each warning and failure, then the summary line.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(out, "{}  {:width$}  {}", c.status.mark(), c.id, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "      {:width$}  fix: {fix}", "");
            }
        }
        let _ = writeln!(out, "{}", self.summary_line());
        out
    }

    /// `{"ok":bool,"checks":[{"id","status","detail","fix"?}…],"summary":{"passed","warnings",
    /// "failed","skipped"}}`; `fix` is present only on warnings and failures.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                let mut o = json!({"id": c.id, "status": c.status.as_str(), "detail": c.detail});
                if let (Some(fix), Some(map)) = (&c.fix, o.as_object_mut()) {
                    map.insert("fix".into(), Value::String(fix.clone()));
                }
                o
            })
            .collect();
        let s = self.summary();
        json!({
            "ok": self.ok(),
            "checks": checks,
            "summary": {
                "passed": s.passed,
                "warnings": s.warnings,
                "failed": s.failed,
                "skipped": s.skipped,
            },
        })
    }
}

/// `bytes` for people: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`, `1.0 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            checks: vec![
                Check::pass("connectivity", "connected"),
                Check::warn("max_slot_wal_keep_size", "unlimited", "ALTER SYSTEM …"),
                Check::fail("rls:public.t", "RLS disabled", "ALTER TABLE …"),
                Check::skip("disk", "remote server"),
            ],
        }
    }

    #[test]
    fn a_failure_makes_the_report_not_ok_and_warnings_do_not() {
        let mut r = report();
        assert!(!r.ok());
        r.checks.retain(|c| c.status != Status::Fail);
        assert!(r.ok(), "warnings and skips keep exit code 0");
        assert!(Report::default().ok());
    }

    #[test]
    fn the_summary_counts_each_status_and_pluralizes_warnings() {
        let r = report();
        assert_eq!(
            r.summary(),
            Summary {
                passed: 1,
                warnings: 1,
                failed: 1,
                skipped: 1
            }
        );
        assert_eq!(r.summary_line(), "1 passed, 1 warning, 1 failed, 1 skipped");
        let two = Report {
            checks: vec![Check::warn("a", "", ""), Check::warn("b", "", "")],
        };
        assert_eq!(two.summary_line(), "0 passed, 2 warnings, 0 failed");
    }

    #[test]
    fn text_lines_are_aligned_and_fixes_follow_their_check() {
        let text = report().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("PASS  connectivity "), "{text}");
        // Every detail starts in the same column.
        let col = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(col(lines[0], "connected"), col(lines[1], "unlimited"));
        assert_eq!(col(lines[0], "connected"), col(lines[3], "RLS disabled"));
        assert!(lines[2].trim_start().starts_with("fix: ALTER SYSTEM"));
        assert_eq!(lines[6], "1 passed, 1 warning, 1 failed, 1 skipped");
    }

    #[test]
    fn json_has_the_documented_shape_and_fix_only_when_there_is_one() {
        let v = report().to_json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"].as_array().unwrap().len(), 4);
        assert_eq!(v["checks"][0]["id"], "connectivity");
        assert_eq!(v["checks"][0]["status"], "pass");
        assert!(v["checks"][0].get("fix").is_none());
        assert_eq!(v["checks"][2]["status"], "fail");
        assert_eq!(v["checks"][2]["fix"], "ALTER TABLE …");
        assert_eq!(v["summary"]["failed"], 1);
        assert_eq!(v["summary"]["warnings"], 1);
    }

    #[test]
    fn details_stay_on_one_line() {
        let c = Check::fail("x", "ERROR: a\nb", "do\r\nthis");
        assert_eq!(c.detail, "ERROR: a b");
        assert!(!c.fix.unwrap().contains('\n'));
    }

    #[test]
    fn byte_counts_read_and_print_in_powers_of_1024() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1 << 30), "1.0 GiB");
    }
}
