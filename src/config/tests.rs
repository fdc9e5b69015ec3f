//! Tests of config loading: layering, warnings, errors that name their key, validation.

use std::io::Write;
use std::path::PathBuf;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn with_file(f: &tempfile::NamedTempFile) -> ServeFlags {
    ServeFlags {
        config: Some(f.path().to_path_buf()),
        ..ServeFlags::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_when_nothing_is_given() {
    let (cfg, warnings) = load(&ServeFlags::default(), &[]).unwrap();
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.history.retention_days, 90);
    assert_eq!(cfg.webhooks.low_balance_usd, Usd::from_dollars(5));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(cfg.sandbox_mode());
}

#[test]
fn precedence_is_file_then_env_then_flag() {
    let f = file(
        "listen = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\n\
         [limits]\nburst = 5\nrequests_per_second = 7\n",
    );
    // File only.
    let (cfg, _) = load(&with_file(&f), &[]).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:1000");
    assert_eq!(cfg.limits.burst, 5);
    assert_eq!(cfg.limits.requests_per_second, 7);
    // A key the file does not set keeps its default.
    assert_eq!(cfg.limits.max_body_bytes, 1_048_576);

    // Env beats the file.
    let e = env(&[
        ("SPOTD_LISTEN", "127.0.0.1:2000"),
        ("SPOTD_LIMITS_BURST", "9"),
        ("SPOTD_DATA_DIR", "/from/env"),
    ]);
    let (cfg, w) = load(&with_file(&f), &e).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(cfg.listen, "127.0.0.1:2000");
    assert_eq!(cfg.limits.burst, 9);
    assert_eq!(cfg.limits.requests_per_second, 7);
    assert_eq!(cfg.data_dir, PathBuf::from("/from/env"));

    // Flags beat both.
    let flags = ServeFlags {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some("/from/flag".into()),
        sandbox: true,
        ..with_file(&f)
    };
    let (cfg, _) = load(&flags, &e).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:0");
    assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
    assert!(cfg.force_sandbox);
    assert_eq!(cfg.limits.burst, 9);
}

#[test]
fn every_section_scalar_is_settable_from_env() {
    let e = env(&[
        ("SPOTD_LIMITS_REQUESTS_PER_SECOND", "3"),
        ("SPOTD_BILLING_METERING_INTERVAL_SECONDS", "5"),
        ("SPOTD_SANDBOX_PROVISION_SECONDS", "1"),
        ("SPOTD_SANDBOX_PRICE_DRIFT", "0.5"),
        ("SPOTD_DEPLOYMENTS_IDLE_TIMEOUT_SECONDS", "60"),
        ("SPOTD_HISTORY_RETENTION_DAYS", "7"),
        ("SPOTD_WEBHOOKS_LOW_BALANCE_USD", "2.5"),
        ("SPOTD_SANDBOX", "1"),
    ]);
    let (cfg, w) = load(&ServeFlags::default(), &e).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(cfg.limits.requests_per_second, 3);
    assert_eq!(cfg.billing.metering_interval_seconds, 5);
    assert_eq!(cfg.sandbox.provision_seconds, 1);
    assert_eq!(cfg.sandbox.price_drift, 0.5);
    assert_eq!(cfg.deployments.idle_timeout_seconds, 60);
    assert_eq!(cfg.history.retention_days, 7);
    assert_eq!(cfg.webhooks.low_balance_usd, Usd(2_500_000));
    assert!(cfg.force_sandbox);
}

#[test]
fn default_wait_seconds_is_read_and_bounded() {
    let (cfg, _) = load(&ServeFlags::default(), &[]).unwrap();
    assert_eq!(cfg.deployments.default_wait_seconds, 0);
    let f = file("[deployments]\ndefault_wait_seconds = 600\n");
    let (cfg, w) = load(&with_file(&f), &[]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(cfg.deployments.default_wait_seconds, 600);
    let e = env(&[("SPOTD_DEPLOYMENTS_DEFAULT_WAIT_SECONDS", "30")]);
    let (cfg, _) = load(&with_file(&f), &e).unwrap();
    assert_eq!(cfg.deployments.default_wait_seconds, 30);
    let f = file("[deployments]\ndefault_wait_seconds = 901\n");
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(
        err.starts_with("deployments.default_wait_seconds: 901"),
        "{err}"
    );
}

#[test]
fn config_file_may_come_from_spotd_config() {
    let f = file("[billing]\nmin_session_seconds = 60\n");
    let e = env(&[("SPOTD_CONFIG", f.path().to_str().unwrap())]);
    let (cfg, _) = load(&ServeFlags::default(), &e).unwrap();
    assert_eq!(cfg.billing.min_session_seconds, 60);
}

#[test]
fn missing_config_file_is_an_error() {
    let flags = ServeFlags {
        config: Some("/nonexistent/spotd.toml".into()),
        ..ServeFlags::default()
    };
    let err = load(&flags, &[]).unwrap_err();
    assert!(err.contains("/nonexistent/spotd.toml"), "{err}");
}

#[test]
fn wrong_value_in_file_names_the_key() {
    let f = file("[limits]\nburst = \"many\"\n");
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(
        err.starts_with("limits.burst: invalid type: string"),
        "{err}"
    );
    assert!(err.contains("u32"), "{err}");

    let f = file("listen = 5\n");
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(err.starts_with("listen: invalid type"), "{err}");

    let f = file(
        "[[providers]]\nname = \"a\"\nkind = \"vastai\"\n\
         [[providers]]\nname = \"b\"\nkind = \"azure\"\n",
    );
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(err.starts_with("providers[1].kind:"), "{err}");

    let f = file("[[models]]\nmin_vram_gb = 80\n");
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(err.starts_with("models[0]: missing field `id`"), "{err}");

    let f = file(
        "[[upstreams]]\nname = \"o\"\nbase_url = \"http://x\"\ninput_usd_per_mtok = 0.0000001\n",
    );
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(err.starts_with("upstreams[0].input_usd_per_mtok:"), "{err}");
}

#[test]
fn bad_toml_syntax_names_the_file() {
    let f = file("[limits\nburst = 1\n");
    let err = load(&with_file(&f), &[]).unwrap_err();
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}

#[test]
fn wrong_value_in_env_names_the_variable_and_key() {
    let e = env(&[("SPOTD_LIMITS_BURST", "lots")]);
    let err = load(&ServeFlags::default(), &e).unwrap_err();
    assert!(err.contains("SPOTD_LIMITS_BURST"), "{err}");
    assert!(err.contains("limits.burst"), "{err}");

    // Parses as an integer but does not fit the field.
    let e = env(&[("SPOTD_BILLING_MIN_SESSION_SECONDS", "-5")]);
    let err = load(&ServeFlags::default(), &e).unwrap_err();
    assert!(
        err.starts_with("billing.min_session_seconds (from SPOTD_BILLING_MIN_SESSION_SECONDS):"),
        "{err}"
    );

    let e = env(&[("SPOTD_SANDBOX", "maybe")]);
    assert!(load(&ServeFlags::default(), &e)
        .unwrap_err()
        .contains("SPOTD_SANDBOX"));
}

#[test]
fn unknown_file_key_is_a_warning_with_its_path() {
    let f = file("colour = \"blue\"\n[limits]\nburts = 3\n[[models]]\nid = \"m\"\nmin_vram_gb = 8\nvram = 1\n");
    let (cfg, w) = load(&with_file(&f), &[]).unwrap();
    assert_eq!(cfg.limits.burst, 40);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().any(|m| m.contains("colour")), "{w:?}");
    assert!(w.iter().any(|m| m.contains("limits.burts")), "{w:?}");
    assert!(w.iter().any(|m| m.contains("models.0.vram")), "{w:?}");
}

#[test]
fn unknown_env_var_is_a_warning_but_client_vars_are_not() {
    let e = env(&[
        ("SPOTD_LIMITS_BURTS", "3"),
        ("SPOTD_URL", "http://127.0.0.1:1"),
        ("SPOTD_API_KEY", "k"),
        ("SPOTD_ADMIN_TOKEN", "t"),
        ("SPOTD_LOG", "debug"),
        ("SPOTD_LOG_FORMAT", "json"),
        ("HOME", "/root"),
    ]);
    let (_, w) = load(&ServeFlags::default(), &e).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("SPOTD_LIMITS_BURTS"), "{w:?}");
}

#[test]
fn upstream_money_parses_exactly() {
    let f = file(
        "[[upstreams]]\nname = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n\
         models = [\"gpt-4o-mini\"]\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = \"0.60\"\n\
         [[upstreams]]\nname = \"other\"\nbase_url = \"http://x\"\ninput_usd_per_mtok = 3\n\
         output_usd_per_mtok = 0.000001\n",
    );
    let (cfg, w) = load(&with_file(&f), &[]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(cfg.upstreams[0].input_usd_per_mtok, Usd(150_000));
    assert_eq!(cfg.upstreams[0].output_usd_per_mtok, Usd(600_000));
    assert_eq!(cfg.upstreams[1].input_usd_per_mtok, Usd(3_000_000));
    assert_eq!(cfg.upstreams[1].output_usd_per_mtok, Usd(1));
}

#[test]
fn validation_names_each_bad_key() {
    let cases: &[(&str, &str)] = &[
        ("listen = \"nowhere\"", "listen:"),
        ("[limits]\nrequests_per_second = 0", "limits.requests_per_second:"),
        ("[limits]\nburst = 0", "limits.burst:"),
        ("[limits]\nmax_body_bytes = 1023", "limits.max_body_bytes:"),
        (
            "[limits]\nmax_active_rentals_per_account = 0",
            "limits.max_active_rentals_per_account:",
        ),
        (
            "[billing]\nmetering_interval_seconds = 0",
            "billing.metering_interval_seconds:",
        ),
        ("[billing]\nmin_session_seconds = 0", "billing.min_session_seconds:"),
        ("[sandbox]\nprice_drift = 1.0", "sandbox.price_drift:"),
        ("[history]\nretention_days = 0", "history.retention_days:"),
        ("[history]\nretention_days = 4000", "history.retention_days:"),
        ("[webhooks]\nlow_balance_usd = -1", "webhooks.low_balance_usd:"),
        ("[webhooks]\ntimeout_seconds = 0", "webhooks.timeout_seconds:"),
        ("[webhooks]\nretention_days = 0", "webhooks.retention_days:"),
        ("[sandbox]\nprice_drift = -0.1", "sandbox.price_drift:"),
        ("[sandbox]\npreemptions_per_hour = -1", "sandbox.preemptions_per_hour:"),
        ("[sandbox]\npreemptions_per_hour = inf", "sandbox.preemptions_per_hour:"),
        (
            "[[providers]]\nname = \"Vast\"\nkind = \"vastai\"",
            "providers[0].name:",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"vastai\"\n[[providers]]\nname = \"a\"\nkind = \"runpod\"",
            "providers[1].name:",
        ),
        ("[[providers]]\nname = \"pool\"\nkind = \"http\"", "providers[0].base_url:"),
        (
            "[[providers]]\nname = \"v\"\nkind = \"vastai\"\nrefresh_seconds = 0",
            "providers[0].refresh_seconds:",
        ),
        ("[[upstreams]]\nname = \"\"\nbase_url = \"http://x\"", "upstreams[0].name:"),
        (
            "[[upstreams]]\nname = \"u\"\nbase_url = \"http://x\"\nmodels = [\"\"]",
            "upstreams[0].models:",
        ),
        ("[[models]]\nid = \"\"\nmin_vram_gb = 8", "models[0].id:"),
        ("[[models]]\nid = \"m\"\nmin_vram_gb = 0", "models[0].min_vram_gb:"),
    ];
    for (text, key) in cases {
        let f = file(text);
        let err = load(&with_file(&f), &[]).unwrap_err();
        assert!(err.starts_with(key), "{text:?}: {err}");
    }
    // Good names pass.
    let f = file("[[providers]]\nname = \"lab-pool_2\"\nkind = \"http\"\nbase_url = \"http://10.0.0.5:9000/pool\"");
    assert!(load(&with_file(&f), &[]).is_ok());
}

#[test]
fn packaged_example_config_parses_without_warnings() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/spotd.toml");
    let flags = ServeFlags {
        config: Some(path),
        ..ServeFlags::default()
    };
    let (cfg, w) = load(&flags, &[]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert!(!cfg.providers.is_empty());
    assert!(!cfg.upstreams.is_empty());
    assert!(!cfg.models.is_empty());
    assert_eq!(cfg.upstreams[0].input_usd_per_mtok, Usd(150_000));
    // Every key of the defaults appears in the example (so it documents them all).
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/spotd.toml"),
    )
    .unwrap();
    let table: toml::Table = text.parse().unwrap();
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    for (k, v) in defaults.as_table().unwrap() {
        assert!(table.contains_key(k), "example lacks {k}");
        if let toml::Value::Table(section) = v {
            for sk in section.keys() {
                assert!(table[k].get(sk).is_some(), "example lacks {k}.{sk}");
            }
        }
    }
}

/// `spotd config default --install` (the .deb's conffile and the README's manual
/// install): it loads without warnings, configures no provider, upstream or model (so
/// a fresh install runs the sandbox), and still names every key.
#[test]
fn install_config_runs_the_sandbox_and_keeps_every_key() {
    let text = crate::cli::install_config();
    let f = file(&text);
    let (cfg, w) = load(&with_file(&f), &[]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert!(cfg.providers.is_empty() && cfg.upstreams.is_empty() && cfg.models.is_empty());
    assert!(cfg.sandbox_mode());
    let table: toml::Table = text.parse().unwrap();
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    for (k, v) in defaults.as_table().unwrap() {
        if let toml::Value::Table(section) = v {
            for sk in section.keys() {
                assert!(table[k].get(sk).is_some(), "install config lacks {k}.{sk}");
            }
        }
    }
    // The example sections are still there to uncomment.
    assert!(text.contains("# [[providers]]") && text.contains("# kind = \"vastai\""));
}

#[test]
fn provider_names_follow_one_rule() {
    for good in ["a", "lab-pool_2", "9x", "vast"] {
        assert!(ProviderConfig::valid_name(good), "{good}");
    }
    for bad in ["", "-lab", "_lab", "Vast", "big name", "a:b", "é"] {
        assert!(!ProviderConfig::valid_name(bad), "{bad}");
    }
}
