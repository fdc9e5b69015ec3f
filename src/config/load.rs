//! Loading the configuration: defaults -> TOML file -> `SPOTD_*` environment -> flags,
//! then validation.
//!
//! The file and the environment are merged as TOML tables before anything is typed, so
//! one deserialization sees the final values and a type error can be traced back to the
//! key (and the variable) that carried it. The environment keys are derived from the
//! serialized defaults: a new scalar key in `Config` is settable from the environment
//! without touching this file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::{Config, ModelConfig, ProviderConfig, ProviderKind, UpstreamConfig};

/// The `spotd serve` flags that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub sandbox: bool,
}

/// `SPOTD_*` variables read by the clients and the runtime, not by the config.
const NON_CONFIG_VARS: &[&str] = &[
    "SPOTD_URL",
    "SPOTD_API_KEY",
    "SPOTD_ADMIN_TOKEN",
    "SPOTD_CONFIG",
    "SPOTD_LOG",
    "SPOTD_LOG_FORMAT",
    "SPOTD_SANDBOX",
    // The sandbox's stream pacing (tests and demos).
    "SPOTD_SANDBOX_STREAM_DELAY_MS",
    // Build time only (build.rs); `cargo run` passes it on to the process.
    "SPOTD_GIT_COMMIT",
    // Build time only (build.rs): check again whether the Python SDK tests can run.
    "SPOTD_SDK_RECHECK",
];

/// Returns the config and human-readable warnings (unknown keys, unknown SPOTD_* variables).
pub fn load(flags: &ServeFlags, env: &[(String, String)]) -> Result<(Config, Vec<String>), String> {
    let mut warnings = Vec::new();
    let env_get = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);

    let path = flags
        .config
        .clone()
        .or_else(|| env_get("SPOTD_CONFIG").map(PathBuf::from));
    let mut table = match &path {
        Some(p) => read_file(p)?,
        None => Table::new(),
    };

    // Where each key path got its value from, for error messages.
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    let env_keys = env_keys()?;
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SPOTD_") else {
            continue;
        };
        if NON_CONFIG_VARS.contains(&name.as_str()) {
            continue;
        }
        let Some(key) = env_keys.get(rest) else {
            warnings.push(format!("unknown environment variable {name} (ignored)"));
            continue;
        };
        let typed = parse_env_value(&key.default, value).map_err(|expected| {
            format!(
                "{name}: '{value}' is not a valid value for {} (expected {expected})",
                key.path()
            )
        })?;
        set_key(&mut table, key, typed)?;
        origins.insert(key.path(), name.clone());
    }

    let mut ignored = Vec::new();
    let parsed =
        serde_ignored::deserialize(Value::Table(table.clone()), |p| ignored.push(p.to_string()));
    let mut cfg: Config = match parsed {
        Ok(c) => c,
        Err(e) => return Err(locate_error(&table, &origins, &e.to_string())),
    };
    let source = path
        .as_deref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default();
    for key in ignored {
        warnings.push(format!("unknown configuration key {key}{source} (ignored)"));
    }

    if let Some(l) = &flags.listen {
        cfg.listen = l.clone();
    }
    if let Some(d) = &flags.data_dir {
        cfg.data_dir = d.clone();
    }
    let env_sandbox = match env_get("SPOTD_SANDBOX") {
        Some(v) => parse_bool(v).ok_or_else(|| {
            format!("SPOTD_SANDBOX: '{v}' is not a boolean (use 1, true, 0 or false)")
        })?,
        None => false,
    };
    cfg.force_sandbox = flags.sandbox || env_sandbox;

    validate(&cfg)?;
    Ok((cfg, warnings))
}

fn read_file(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    text.parse::<Table>()
        .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// One scalar key settable from the environment, with its default (which fixes its type).
struct EnvKey {
    section: Option<String>,
    key: String,
    default: Value,
}

impl EnvKey {
    fn path(&self) -> String {
        match &self.section {
            Some(s) => format!("{s}.{}", self.key),
            None => self.key.clone(),
        }
    }
}

/// `LISTEN` -> listen, `LIMITS_BURST` -> limits.burst, ...: every scalar of the defaults.
fn env_keys() -> Result<BTreeMap<String, EnvKey>, String> {
    let defaults = Value::try_from(Config::default())
        .map_err(|e| format!("internal: cannot serialize the default config: {e}"))?;
    let mut out = BTreeMap::new();
    let Value::Table(top) = defaults else {
        return Ok(out);
    };
    for (k, v) in top {
        match v {
            Value::Table(section) => {
                for (sk, sv) in section {
                    if is_scalar(&sv) {
                        let name = format!("{}_{}", k, sk).to_ascii_uppercase();
                        let key = EnvKey {
                            section: Some(k.clone()),
                            key: sk,
                            default: sv,
                        };
                        out.insert(name, key);
                    }
                }
            }
            v if is_scalar(&v) => {
                let key = EnvKey {
                    section: None,
                    key: k.clone(),
                    default: v,
                };
                out.insert(k.to_ascii_uppercase(), key);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn is_scalar(v: &Value) -> bool {
    matches!(
        v,
        Value::String(_) | Value::Integer(_) | Value::Float(_) | Value::Boolean(_)
    )
}

/// Types an environment string like the default of its key; `Err` names what was expected.
fn parse_env_value(default: &Value, raw: &str) -> Result<Value, &'static str> {
    let t = raw.trim();
    match default {
        Value::Integer(_) => t.parse().map(Value::Integer).map_err(|_| "an integer"),
        Value::Float(_) => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or("a number"),
        Value::Boolean(_) => parse_bool(t).map(Value::Boolean).ok_or("true or false"),
        _ => Ok(Value::String(raw.to_string())),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn set_key(table: &mut Table, key: &EnvKey, value: Value) -> Result<(), String> {
    let target = match &key.section {
        None => table,
        Some(s) => {
            let entry = table
                .entry(s.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => t,
                _ => return Err(format!("{s}: expected a table ([{s}])")),
            }
        }
    };
    target.insert(key.key.clone(), value);
    Ok(())
}

/// Turns a whole-config deserialization error into one that names its key, by
/// deserializing each key on its own until the culprit is found. Sections have
/// defaults for every key, so a one-key table is a complete config; items of arrays
/// of tables are tried one key at a time on top of a valid example item.
fn locate_error(table: &Table, origins: &BTreeMap<String, String>, whole: &str) -> String {
    let named = |path: String, err: String| {
        let from = origins
            .get(&path)
            .map(|v| format!(" (from {v})"))
            .unwrap_or_default();
        format!("{path}{from}: {}", clean(&err))
    };
    for (k, v) in table {
        let Err(e) = try_config(k, v.clone()) else {
            continue;
        };
        match v {
            Value::Table(section) => {
                for (sk, sv) in section {
                    let one = Value::Table(Table::from_iter([(sk.clone(), sv.clone())]));
                    if let Err(e) = try_config(k, one) {
                        return named(format!("{k}.{sk}"), e);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Err(e) = try_config(k, Value::Array(vec![item.clone()])) else {
                        continue;
                    };
                    if let (Value::Table(fields), Some(example)) = (item, example_item(k)) {
                        for (fk, fv) in fields {
                            let mut probe = example.clone();
                            probe.insert(fk.clone(), fv.clone());
                            let arr = Value::Array(vec![Value::Table(probe)]);
                            if let Err(e) = try_config(k, arr) {
                                return named(format!("{k}[{i}].{fk}"), e);
                            }
                        }
                    }
                    return named(format!("{k}[{i}]"), e);
                }
            }
            _ => {}
        }
        return named(k.clone(), e);
    }
    clean(whole)
}

fn try_config(key: &str, value: Value) -> Result<(), String> {
    let t = Table::from_iter([(key.to_string(), value)]);
    Config::deserialize(Value::Table(t))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A valid item of each array of tables, as a base for probing one key at a time.
fn example_item(key: &str) -> Option<Table> {
    let v = match key {
        "providers" => Value::try_from(ProviderConfig {
            name: "example".into(),
            kind: ProviderKind::Http,
            api_key_env: None,
            refresh_seconds: 60,
            base_url: Some("http://127.0.0.1:1".into()),
            calls_per_minute: 600,
            stale_after_seconds: 300,
        }),
        "upstreams" => Value::try_from(UpstreamConfig {
            name: "example".into(),
            base_url: "http://127.0.0.1:1".into(),
            api_key_env: None,
            models: Vec::new(),
            input_usd_per_mtok: crate::money::Usd::ZERO,
            output_usd_per_mtok: crate::money::Usd::ZERO,
        }),
        "models" => Value::try_from(ModelConfig {
            id: "example".into(),
            min_vram_gb: 1,
            image: None,
        }),
        _ => return None,
    };
    match v {
        Ok(Value::Table(t)) => Some(t),
        _ => None,
    }
}

/// toml's messages end with a newline and say "in `key`" without array indexes; the
/// caller names the key more precisely.
fn clean(e: &str) -> String {
    let flat = e.trim().replace('\n', " ");
    match flat.rfind(" in `") {
        Some(i) if flat.ends_with('`') => flat[..i].to_string(),
        _ => flat,
    }
}

/// Checks every value whose range its type does not express. Each error names its key;
/// all of them are reported at once.
pub(crate) fn validate(cfg: &Config) -> Result<(), String> {
    let mut errs: Vec<String> = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            errs.push(msg);
        }
    };
    if let Err(e) = cfg.listen_addr() {
        check(false, e);
    }
    check(
        !cfg.data_dir.as_os_str().is_empty(),
        "data_dir: must not be empty".into(),
    );
    let l = &cfg.limits;
    check(
        l.requests_per_second > 0,
        "limits.requests_per_second: must be > 0".into(),
    );
    check(l.burst > 0, "limits.burst: must be > 0".into());
    check(
        l.max_body_bytes >= 1024,
        "limits.max_body_bytes: must be >= 1024".into(),
    );
    check(
        l.max_active_rentals_per_account > 0,
        "limits.max_active_rentals_per_account: must be > 0".into(),
    );
    check(
        l.header_read_timeout_seconds >= 1,
        "limits.header_read_timeout_seconds: must be >= 1".into(),
    );
    check(
        cfg.billing.metering_interval_seconds >= 1,
        "billing.metering_interval_seconds: must be >= 1".into(),
    );
    check(
        cfg.billing.min_session_seconds >= 1,
        "billing.min_session_seconds: must be >= 1".into(),
    );
    check(
        cfg.billing.request_detail_days >= 1,
        "billing.request_detail_days: must be >= 1".into(),
    );
    check(
        cfg.deployments.idle_timeout_seconds >= 1,
        "deployments.idle_timeout_seconds: must be >= 1".into(),
    );
    check(
        cfg.deployments.provision_timeout_seconds >= 1,
        "deployments.provision_timeout_seconds: must be >= 1".into(),
    );
    check(
        cfg.deployments.upstream_timeout_seconds >= 1,
        "deployments.upstream_timeout_seconds: must be >= 1".into(),
    );
    check(
        (1..=3650).contains(&cfg.history.retention_days),
        format!(
            "history.retention_days: {} is not from 1 to 3650",
            cfg.history.retention_days
        ),
    );
    check(
        cfg.deployments.default_wait_seconds <= crate::inference::MAX_WAIT_SECONDS,
        format!(
            "deployments.default_wait_seconds: {} is more than {} (the most Prefer: wait may ask)",
            cfg.deployments.default_wait_seconds,
            crate::inference::MAX_WAIT_SECONDS
        ),
    );
    let w = &cfg.webhooks;
    check(
        !w.low_balance_usd.is_negative(),
        "webhooks.low_balance_usd: must be >= 0".into(),
    );
    check(
        (1..=300).contains(&w.timeout_seconds),
        format!(
            "webhooks.timeout_seconds: {} is not from 1 to 300",
            w.timeout_seconds
        ),
    );
    check(
        (1..=3650).contains(&w.retention_days),
        format!(
            "webhooks.retention_days: {} is not from 1 to 3650",
            w.retention_days
        ),
    );
    let s = &cfg.sandbox;
    check(
        (0.0..1.0).contains(&s.price_drift),
        format!("sandbox.price_drift: {} is not in [0, 1)", s.price_drift),
    );
    check(
        s.preemptions_per_hour.is_finite() && s.preemptions_per_hour >= 0.0,
        format!(
            "sandbox.preemptions_per_hour: {} must be a finite number >= 0",
            s.preemptions_per_hour
        ),
    );
    check(
        s.refresh_seconds >= 1,
        "sandbox.refresh_seconds: must be >= 1".into(),
    );

    let mut names = BTreeSet::new();
    for (i, p) in cfg.providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        check(
            ProviderConfig::valid_name(&p.name),
            format!(
                "{at}.name: '{}' must match {} (it prefixes offer ids)",
                p.name,
                ProviderConfig::NAME_RULE
            ),
        );
        check(
            names.insert(p.name.as_str()),
            format!("{at}.name: '{}' is used by another provider", p.name),
        );
        check(
            p.kind != ProviderKind::Http || p.base_url.as_deref().is_some_and(|u| !u.is_empty()),
            format!("{at}.base_url: kind = \"http\" needs a base_url"),
        );
        check(
            p.refresh_seconds >= 1,
            format!("{at}.refresh_seconds: must be >= 1"),
        );
        check(
            p.calls_per_minute >= 1,
            format!("{at}.calls_per_minute: must be >= 1"),
        );
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        check(!u.name.is_empty(), format!("{at}.name: must not be empty"));
        check(
            !u.base_url.is_empty(),
            format!("{at}.base_url: must not be empty"),
        );
        check(
            u.models.iter().all(|m| !m.is_empty()),
            format!("{at}.models: a model id is empty"),
        );
        check(
            !u.input_usd_per_mtok.is_negative(),
            format!("{at}.input_usd_per_mtok: must be >= 0"),
        );
        check(
            !u.output_usd_per_mtok.is_negative(),
            format!("{at}.output_usd_per_mtok: must be >= 0"),
        );
    }
    for (i, m) in cfg.models.iter().enumerate() {
        let at = format!("models[{i}]");
        check(!m.id.is_empty(), format!("{at}.id: must not be empty"));
        check(m.min_vram_gb > 0, format!("{at}.min_vram_gb: must be > 0"));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}
