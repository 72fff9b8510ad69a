//! Splits an SQL script into statements at top-level semicolons, the way psql does: quotes
//! (`'…'`, `"…"`), dollar quotes (`$tag$…$tag$`) and comments (`-- …`, `/* … */`) are opaque.

/// One statement of a script: its text (without the final `;`) and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement, trimmed.
    pub text: String,
    /// Line of the script where the statement starts (1-based).
    pub line: usize,
}

/// Splits `script` into its non-empty statements, in order.
pub fn split(script: &str) -> Vec<Statement> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = script[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = script[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'$' => i = skip_dollar_quoted(script, i),
            b';' => {
                push(&mut out, script, start, i);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(&mut out, script, start, bytes.len());
    out
}

fn push(out: &mut Vec<Statement>, script: &str, start: usize, end: usize) {
    let piece = &script[start..end];
    if only_comments(piece) {
        return;
    }
    let lead = piece.len() - piece.trim_start().len();
    let line = script[..start + lead].matches('\n').count() + 1;
    out.push(Statement {
        text: piece.trim().to_string(),
        line,
    });
}

fn only_comments(piece: &str) -> bool {
    piece
        .lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with("--"))
}

/// Index after the closing quote of the quoted string starting at `i` (doubled quotes escape).
fn skip_quoted(bytes: &[u8], i: usize) -> usize {
    let quote = bytes[i];
    let mut j = i + 1;
    while j < bytes.len() {
        if bytes[j] == quote {
            if bytes.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

/// Index after a `$tag$…$tag$` body starting at `i`, or `i + 1` when `$` starts no dollar quote
/// (a positional parameter like `$1`).
fn skip_dollar_quoted(script: &str, i: usize) -> usize {
    let rest = &script[i + 1..];
    let Some(close) = rest.find('$') else {
        return i + 1;
    };
    let tag = &rest[..close];
    if !tag.chars().all(|c| c.is_alphanumeric() || c == '_')
        || tag.starts_with(|c: char| c.is_ascii_digit())
    {
        return i + 1;
    }
    let delimiter = &script[i..i + close + 2];
    let body = i + delimiter.len();
    script[body..]
        .find(delimiter)
        .map_or(script.len(), |n| body + n + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let script = "-- header; not a statement\nCREATE TABLE a (x text default ';');\n\n\
            CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN RETURN 1; END $fn$;\n\
            /* a; comment */ SELECT $1, \"we;ird\";\nDO $$ BEGIN PERFORM 1; END $$";
        let statements = split(script);
        let texts: Vec<_> = statements.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert!(texts[0].starts_with("-- header; not a statement\nCREATE TABLE a"));
        assert!(texts[1].ends_with("END $fn$"));
        assert!(texts[2].contains("\"we;ird\""));
        assert_eq!(texts[3], "DO $$ BEGIN PERFORM 1; END $$");
        assert_eq!(statements[1].line, 4);
    }

    #[test]
    fn unterminated_input_never_panics() {
        for s in [
            "'abc",
            "$tag$ body",
            "/* open",
            "\"x",
            "$",
            "$a",
            "--",
            ";;;",
        ] {
            let _ = split(s);
        }
    }
}
