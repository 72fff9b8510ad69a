//! Unit tests of loading and validating the configuration.

use super::*;

/// A scratch folder of one test's config files, removed when dropped.
pub(crate) struct Scratch(std::path::PathBuf);

impl Scratch {
    /// The folder `relay-{tag}-{pid}` under the temporary directory.
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("relay-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Loads `text` as the config file (secret required); an error as its text.
    pub(crate) fn load(&self, text: &str) -> Result<Config, String> {
        let path = self.0.join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, true, &Overrides::default()).map_err(|e| e.to_string())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_documented_config_file_loads_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let overrides = Overrides {
        jwt_secret: Some("s".into()),
        ..Default::default()
    };
    let config = Config::load(&path, true, &overrides).unwrap();
    let defaults = Config::default();
    assert_eq!(config.server.listen, defaults.server.listen);
    assert_eq!(config.limits.session_queue, defaults.limits.session_queue);
    assert_eq!(config.database.slot, defaults.database.slot);
    assert_eq!(config.shutdown.grace, defaults.shutdown.grace);
    assert_eq!(config.server.max_sessions, defaults.server.max_sessions);
    assert_eq!(config.server.max_pending, defaults.server.max_pending);
    assert_eq!(config.server.header_timeout, defaults.server.header_timeout);
    assert_eq!(config.server.idle_timeout, defaults.server.idle_timeout);
    assert_eq!(config.limits.join_timeout, defaults.limits.join_timeout);
    assert_eq!(config.tables, defaults.tables);
    assert_eq!(config.monitoring.interval, defaults.monitoring.interval);
    assert_eq!(config.server.inspector, defaults.server.inspector);
    assert_eq!(
        config.server.inspector_presets,
        defaults.server.inspector_presets
    );
}

#[test]
fn a_bad_value_is_one_line_naming_the_key() {
    let scratch = Scratch::new("config");
    let err = scratch
        .load("[server]\nlisten = \"nowhere\"\n[auth]\njwt_secret = \"x\"\n")
        .unwrap_err();
    assert!(err.contains("server.listen"), "{err}");
    assert!(!err.contains('\n'));
    let err = scratch
        .load("[limits]\nsession_queue = 0\n[auth]\njwt_secret = \"x\"\n")
        .unwrap_err();
    assert!(err.contains("limits.session_queue"), "{err}");
    let err = scratch.load("[limits]\nsesion_queue = 3\n").unwrap_err();
    assert!(err.contains("sesion_queue"), "{err}");
}

#[test]
fn a_missing_secret_names_the_key() {
    let config = Config::load(Path::new("/nonexistent.toml"), false, &Overrides::default());
    let err = config
        .unwrap()
        .require_jwt_secret()
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
}

#[test]
fn a_jwks_source_makes_the_secret_optional() {
    let scratch = Scratch::new("config-jwks");
    let none = scratch
        .load("[auth]\naudience = \"authenticated\"\n")
        .unwrap();
    let err = none.require_token_keys().unwrap_err().to_string();
    assert!(
        err.contains("auth.jwt_secret") && err.contains("auth.jwks_url"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    let url = "https://abc.supabase.co/auth/v1/.well-known/jwks.json";
    let jwks = scratch
        .load(&format!("[auth]\njwks_url = \"{url}\"\n"))
        .unwrap();
    assert!(jwks.require_token_keys().is_ok());
    assert!(
        jwks.require_jwt_secret().is_err(),
        "token without --key still needs it"
    );
    let file = scratch
        .load("[auth]\njwks_file = \"/etc/jwks.json\"\n")
        .unwrap();
    assert!(file.require_token_keys().is_ok());
    for ok in [
        "http://127.0.0.1:9/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]/k",
    ] {
        assert!(
            scratch
                .load(&format!("[auth]\njwks_url = \"{ok}\"\n"))
                .is_ok(),
            "{ok}"
        );
    }
    for bad in [
        "ftp://x/jwks.json",
        "not a url",
        "file:///etc/jwks.json",
        "http://auth.internal/jwks.json",
    ] {
        let err = scratch
            .load(&format!("[auth]\njwks_url = \"{bad}\"\n"))
            .unwrap_err();
        assert!(err.contains("auth.jwks_url"), "{bad}: {err}");
    }
}

#[test]
fn byte_sizes_take_iec_units_or_plain_integers_and_counts_refuse_zero() {
    let scratch = Scratch::new("config-bytes");
    let load = |text: &str| scratch.load(text);
    let config = load(
        "[replay]\nmax_bytes = \"1GiB\"\n[ingest]\nmax_body_bytes = 4096\n\
         [limits]\nmax_client_frame_bytes = \"1.5 KiB\"\n",
    )
    .unwrap();
    assert_eq!(config.replay.max_bytes, 1 << 30);
    assert_eq!(config.ingest.max_body_bytes, 4096);
    assert_eq!(config.limits.max_client_frame_bytes, 1536);
    let err = load("[replay]\nmax_bytes = \"512MB\"\n").unwrap_err();
    assert!(
        err.contains("replay.max_bytes") && err.contains("MiB") && !err.contains('\n'),
        "{err}"
    );
    let err = load("[ingest]\nmax_body_bytes = \"lots\"\n").unwrap_err();
    assert!(err.contains("ingest.max_body_bytes"), "{err}");
    let err = load("[limits]\nmax_client_frame_bytes = \"100B\"\n").unwrap_err();
    assert!(err.contains("limits.max_client_frame_bytes"), "{err}");
    for key in ["max_batch", "pool_size", "user_rate", "key_burst"] {
        let err = load(&format!("[ingest]\n{key} = 0\n")).unwrap_err();
        assert!(err.contains(&format!("ingest.{key}")), "{err}");
    }
    let err = load("[server]\nmax_sessions = 0\n").unwrap_err();
    assert!(err.contains("server.max_sessions"), "{err}");
}

#[test]
fn connection_hygiene_keys_have_defaults_and_refuse_zero() {
    let defaults = Config::default();
    assert_eq!(defaults.server.header_timeout, Duration::from_secs(10));
    assert_eq!(defaults.server.idle_timeout, Duration::from_secs(75));
    assert_eq!(defaults.limits.join_timeout, Duration::from_secs(30));
    assert_eq!(
        defaults.server.max_sessions, None,
        "derived from the open-file limit"
    );
    assert_eq!(
        defaults.server.max_pending, None,
        "derived from the open-file limit"
    );
    let scratch = Scratch::new("config-hygiene");
    let config = scratch
        .load(
            "[server]\nheader_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_pending = 64\n\
             max_sessions = 10\n[limits]\njoin_timeout = \"1s\"\n",
        )
        .unwrap();
    assert_eq!(config.server.header_timeout, Duration::from_secs(2));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(5));
    assert_eq!(config.server.max_pending.map(|n| n.get()), Some(64));
    assert_eq!(config.server.max_sessions.map(|n| n.get()), Some(10));
    assert_eq!(config.limits.join_timeout, Duration::from_secs(1));
    assert_eq!(defaults.server.request_timeout, Duration::from_secs(30));
    for (section, key) in [
        ("server", "header_timeout"),
        ("server", "idle_timeout"),
        ("server", "request_timeout"),
        ("limits", "join_timeout"),
    ] {
        let err = scratch
            .load(&format!("[{section}]\n{key} = \"0s\"\n"))
            .unwrap_err();
        assert!(err.contains(&format!("{section}.{key}")), "{err}");
        assert!(err.contains("above 0") && !err.contains('\n'), "{err}");
        let err = scratch
            .load(&format!("[{section}]\n{key} = \"2d\"\n"))
            .unwrap_err();
        assert!(err.contains(&format!("{section}.{key}")), "{err}");
    }
    let err = scratch.load("[server]\nmax_pending = 0\n").unwrap_err();
    assert!(err.contains("server.max_pending"), "{err}");
}

#[test]
fn fairness_keys_have_their_defaults_and_a_burst_must_hold_a_full_batch() {
    let scratch = Scratch::new("config-fair");
    let config = scratch.load("[auth]\njwt_secret = \"x\"\n").unwrap();
    assert_eq!(config.limits.max_sessions_per_user.get(), 32);
    assert_eq!(config.limits.max_service_sessions.get(), 1024);
    assert_eq!(config.replay.max_events_per_user.get(), 10_000);
    assert_eq!(config.ingest.user_rows_burst.get(), 5_000);
    for key in ["user_rows_burst", "key_rows_burst"] {
        let err = scratch
            .load(&format!(
                "[ingest]\n{key} = 4999\n[auth]\njwt_secret = \"x\"\n"
            ))
            .unwrap_err();
        assert!(
            err.contains(&format!("ingest.{key}")) && err.contains("ingest.max_batch"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
    // A smaller batch lets a smaller burst pass.
    let config = scratch
        .load("[ingest]\nmax_batch = 10\nuser_rows_burst = 10\n[auth]\njwt_secret = \"x\"\n")
        .unwrap();
    assert_eq!(config.ingest.user_rows_burst.get(), 10);
    for (section, key) in [
        ("limits", "max_sessions_per_user"),
        ("limits", "max_service_sessions"),
        ("replay", "max_events_per_user"),
        ("ingest", "user_rows_per_second"),
        ("ingest", "key_rows_per_second"),
    ] {
        let err = scratch
            .load(&format!(
                "[{section}]\n{key} = 0\n[auth]\njwt_secret = \"x\"\n"
            ))
            .unwrap_err();
        assert!(err.contains(&format!("{section}.{key}")), "{err}");
    }
}

#[test]
fn tls_is_off_by_default_and_its_keys_come_in_pairs() {
    let scratch = Scratch::new("config-tls");
    let config = scratch.load("[auth]\njwt_secret = \"x\"\n").unwrap();
    assert_eq!(config.server.tls().unwrap(), None);
    assert_eq!(config.metrics.tls().unwrap(), None);
    let config = scratch
        .load("[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n[auth]\njwt_secret = \"x\"\n")
        .unwrap();
    let files = config.server.tls().unwrap().unwrap();
    assert_eq!(
        (files.cert_key(), files.key_key()),
        ("server.tls_cert".into(), "server.tls_key".into())
    );
    assert_eq!(files.cert, Path::new("/c.pem"));
    for (section, set, missing) in [
        ("server", "tls_cert", "server.tls_key"),
        ("server", "tls_key", "server.tls_cert"),
        ("metrics", "tls_cert", "metrics.tls_key"),
        ("metrics", "tls_key", "metrics.tls_cert"),
    ] {
        let err = scratch
            .load(&format!(
                "[{section}]\n{set} = \"/x.pem\"\n[auth]\njwt_secret = \"x\"\n"
            ))
            .unwrap_err();
        assert!(
            err.starts_with(&format!("config error: {missing}: ")),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}

#[test]
fn monitoring_interval_defaults_to_a_minute_and_a_bad_one_names_the_key() {
    let scratch = Scratch::new("config-monitoring");
    let config = scratch.load("[auth]\njwt_secret = \"x\"\n").unwrap();
    assert_eq!(config.monitoring.interval, Duration::from_secs(60));
    let config = scratch
        .load("[monitoring]\ninterval = \"1s\"\n[auth]\njwt_secret = \"x\"\n")
        .unwrap();
    assert_eq!(config.monitoring.interval, Duration::from_secs(1));
    for bad in ["\"soon\"", "\"0s\"", "\"500ms\"", "\"2days\""] {
        let err = scratch
            .load(&format!(
                "[monitoring]\ninterval = {bad}\n[auth]\njwt_secret = \"x\"\n"
            ))
            .unwrap_err();
        assert!(err.contains("monitoring.interval"), "{bad}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn the_inspector_is_off_by_default_and_presets_load_with_their_tokens_redacted() {
    let defaults = Config::default();
    assert!(!defaults.server.inspector);
    assert!(defaults.server.inspector_presets.is_empty());
    let scratch = Scratch::new("inspector");
    let config = scratch
        .load(
            "[server]\ninspector = true\ninspector_presets = [{label = \"alice@example.com\", token = \"a.b.c\"}, {label = \"service_role\", token = \"d.e.f\"}]\n[auth]\njwt_secret = \"x\"\n",
        )
        .unwrap();
    assert!(config.server.inspector);
    let presets = &config.server.inspector_presets;
    assert_eq!(presets.len(), 2);
    assert_eq!(presets[0].label, "alice@example.com");
    assert_eq!(presets[1].token.expose(), "d.e.f");
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("a.b.c") && !debug.contains("d.e.f"),
        "{debug}"
    );
}

#[test]
fn a_bad_inspector_value_is_one_line_naming_the_key() {
    let scratch = Scratch::new("inspector-bad");
    let secret = "[auth]\njwt_secret = \"x\"\n";
    for (server, key) in [
        ("inspector = \"yes\"", "server.inspector"),
        ("inspector_presets = \"alice\"", "server.inspector_presets"),
        (
            "inspector_presets = [{label = \"a\"}]",
            "server.inspector_presets",
        ),
        (
            "inspector_presets = [{label = \"a\", token = \"t\", role = \"x\"}]",
            "role",
        ),
        (
            "inspector_presets = [{label = \"\", token = \"t\"}]",
            "server.inspector_presets[0].label",
        ),
        (
            "inspector_presets = [{label = \"a\", token = \"t\"}, {label = \"b\", token = \"t u\"}]",
            "server.inspector_presets[1].token",
        ),
    ] {
        let err = scratch
            .load(&format!("[server]\n{server}\n{secret}"))
            .unwrap_err();
        assert!(err.contains(key), "{server}: {err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!err.contains("t u"), "the token is not echoed: {err}");
    }
}

#[test]
fn presets_survive_the_environment_syntax_child_processes_get() {
    let presets = vec![
        InspectorPreset {
            label: "alice \"a\" \\ @example.com".into(),
            token: Secret::new("eyJ.x-y_z.sig"),
        },
        InspectorPreset {
            label: "service_role".into(),
            token: Secret::new("t2"),
        },
    ];
    let value: figment::value::Value = InspectorPreset::env_value(&presets).parse().unwrap();
    let back: Vec<InspectorPreset> = Figment::from(("presets", value))
        .extract_inner("presets")
        .unwrap();
    assert_eq!(back, presets);
}
