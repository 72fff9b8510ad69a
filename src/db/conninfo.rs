//! The TLS parameters of `database.url` that tokio-postgres does not understand (`sslmode`
//! `verify-ca`/`verify-full`, `sslrootcert`, `sslcert`, `sslkey`), taken out of the connection
//! string so that the rest can be handed to [`tokio_postgres::Config`].
//!
//! Both of libpq's forms are read, as tokio-postgres reads them: a URL
//! (`postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ssl/ca.crt`, values
//! percent-decoded) and key/value conninfo (`host=h sslmode=verify-full sslrootcert='/a b.crt'`,
//! values optionally single-quoted, `\` escaping the next character). A string neither form can
//! read is returned unchanged, for tokio-postgres to report.

use percent_encoding::percent_decode_str;

/// The TLS parameters found in a connection string, as written (decoded, not yet judged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`: `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub sslmode: Option<String>,
    /// `sslrootcert`: a PEM file of CA certificates, or `system`.
    pub sslrootcert: Option<String>,
    /// `sslcert`: a PEM file with the client certificate (chain).
    pub sslcert: Option<String>,
    /// `sslkey`: a PEM file with the client certificate's private key.
    pub sslkey: Option<String>,
}

impl TlsParams {
    /// Takes `key = value` if it is one of ours; false when it is not.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits `url` into the connection string without the TLS parameters and those parameters
/// (the last one wins when a key is given twice, as in libpq).
pub fn split(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p));
    let rest = if is_url {
        split_url(url, &mut params)
    } else {
        split_key_values(url, &mut params)
    };
    match rest {
        Some(rest) => (rest, params),
        None => (url.to_string(), TlsParams::default()),
    }
}

/// The URL form: only the query (after `?`) holds parameters.
fn split_url(url: &str, params: &mut TlsParams) -> Option<String> {
    let Some((base, query)) = url.split_once('?') else {
        return Some(url.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let ours = pair.split_once('=').and_then(|(k, v)| {
            let key = percent_decode_str(k).decode_utf8().ok()?;
            let value = percent_decode_str(v).decode_utf8().ok()?;
            params.take(&key, value.into_owned()).then_some(())
        });
        if ours.is_none() {
            kept.push(pair);
        }
    }
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// The key/value form; `None` when it does not parse (tokio-postgres then says why).
fn split_key_values(text: &str, params: &mut TlsParams) -> Option<String> {
    let mut chars = text.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                // A trailing backslash escapes nothing and is dropped, as tokio-postgres does
                // (were the string refused here, its sslmode would be lost to the default).
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
                None if quoted => return None,
                None => break,
            }
        }
        if !params.take(&key, value.clone()) {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{escaped}'"));
        }
    }
    Some(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: &str, root: Option<&str>) -> TlsParams {
        TlsParams {
            sslmode: Some(mode.into()),
            sslrootcert: root.map(Into::into),
            ..TlsParams::default()
        }
    }

    #[test]
    fn url_query_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, p) = split(
            "postgres://u:p%40ss@db.example.com:5432/postgres?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example.com:5432/postgres?application_name=x"
        );
        assert_eq!(p, params("verify-full", Some("/etc/ca.crt")));
        let (rest, p) = split("postgresql://h/db?sslcert=/c.pem&sslkey=/k.pem");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(p.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(p.sslkey.as_deref(), Some("/k.pem"));
    }

    #[test]
    fn a_url_without_tls_parameters_is_unchanged() {
        for url in ["postgres://h/db", "postgres://h/db?connect_timeout=5"] {
            assert_eq!(split(url), (url.to_string(), TlsParams::default()));
        }
    }

    #[test]
    fn key_value_parameters_are_taken_out_and_the_rest_requoted() {
        let (rest, p) = split(
            "host=localhost  sslmode = verify-ca sslrootcert='/a b/ca.crt' password='it\\'s' dbname=x",
        );
        assert_eq!(rest, "host='localhost' password='it\\'s' dbname='x'");
        assert_eq!(p, params("verify-ca", Some("/a b/ca.crt")));
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn a_trailing_backslash_keeps_the_sslmode() {
        let (rest, p) = split("host=db.example.com sslmode=require password=abc\\");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"abc"[..]));
    }

    #[test]
    fn unreadable_key_values_are_left_to_tokio_postgres() {
        for text in ["host", "host='open", "sslmode=require x"] {
            let (rest, p) = split(text);
            assert_eq!(rest, text);
            assert_eq!(p, TlsParams::default());
        }
    }
}
