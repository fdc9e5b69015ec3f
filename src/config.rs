//! Configuration: defaults -> TOML file -> `SPOTD_*` environment -> flags.
//!
//! Validated once into typed values; the rest of spotd never re-parses a key.
//! `Debug` never prints secrets: the config holds only the *names* of the environment
//! variables that carry provider and upstream keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::money::Usd;

mod load;
#[cfg(test)]
mod tests;

pub use load::{load, ServeFlags};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub billing: Billing,
    pub deployments: Deployments,
    pub sandbox: Sandbox,
    pub history: History,
    pub webhooks: Webhooks,
    pub providers: Vec<ProviderConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub models: Vec<ModelConfig>,
    /// Not a file key: `--sandbox` forces the built-in simulated providers.
    #[serde(skip)]
    pub force_sandbox: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8088".into(),
            data_dir: PathBuf::from("./spotd-data"),
            limits: Limits::default(),
            billing: Billing::default(),
            deployments: Deployments::default(),
            sandbox: Sandbox::default(),
            history: History::default(),
            webhooks: Webhooks::default(),
            providers: Vec::new(),
            upstreams: Vec::new(),
            models: Vec::new(),
            force_sandbox: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Per API key (governor); 429 + Retry-After past it.
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_body_bytes: usize,
    pub max_active_rentals_per_account: u32,
    /// A client must send its request headers within this many seconds.
    pub header_read_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_second: 20,
            burst: 40,
            max_body_bytes: 1_048_576,
            max_active_rentals_per_account: 16,
            header_read_timeout_seconds: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Billing {
    /// The hold placed on rent / cold start covers this much GPU time.
    pub min_session_seconds: u64,
    /// How often running rentals are charged.
    pub metering_interval_seconds: u64,
    /// A hosted request that gives no `max_tokens` reserves this many output tokens'
    /// worth of credit before it is sent (settled to its real usage after).
    pub hosted_reserve_output_tokens: u64,
    /// Each hosted request's own charge entry is kept this many days; older ones are
    /// folded into one charge per account, model and UTC day (SPEC section 10).
    pub request_detail_days: u64,
}

impl Default for Billing {
    fn default() -> Self {
        Billing {
            min_session_seconds: 600,
            metering_interval_seconds: 10,
            hosted_reserve_output_tokens: 4096,
            request_detail_days: 31,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployments {
    pub idle_timeout_seconds: u64,
    pub provision_timeout_seconds: u64,
    /// An upstream or deployment that sends no response headers within this many
    /// seconds gets a 504.
    pub upstream_timeout_seconds: u64,
    /// `Prefer: wait=N` for requests to cold or deploying models that send no `Prefer`
    /// header (SPEC section 10): tools that cannot set headers get a 200 once the model
    /// is ready. 0 (the default) keeps the 202.
    pub default_wait_seconds: u64,
}

impl Default for Deployments {
    fn default() -> Self {
        Deployments {
            idle_timeout_seconds: 900,
            provision_timeout_seconds: 900,
            upstream_timeout_seconds: 120,
            default_wait_seconds: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sandbox {
    /// Time from rent to running.
    pub provision_seconds: u64,
    /// Extra time for a cold model to become ready.
    pub model_load_seconds: u64,
    /// Per running interruptible instance.
    pub preemptions_per_hour: f64,
    /// Relative spot price move per offer refresh.
    pub price_drift: f64,
    pub seed: u64,
    /// How often spotd refreshes the sandbox clouds' offers.
    pub refresh_seconds: u64,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            provision_seconds: 20,
            model_load_seconds: 40,
            preemptions_per_hour: 0.0,
            price_drift: 0.02,
            seed: 42,
            refresh_seconds: 30,
        }
    }
}

/// Price history (SPEC section 7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Hourly rows are kept this many days, then swept (hourly).
    pub retention_days: u64,
}

impl Default for History {
    fn default() -> Self {
        History { retention_days: 90 }
    }
}

/// Webhooks (SPEC section 8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Webhooks {
    /// `account.low_balance` fires when an account's available credit falls below this.
    #[serde(with = "toml_usd")]
    pub low_balance_usd: Usd,
    /// One delivery attempt gets this long for the receiver's response headers.
    pub timeout_seconds: u64,
    /// Delivered and given-up deliveries are listed this many days, then swept.
    pub retention_days: u64,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            low_balance_usd: Usd::from_dollars(5),
            timeout_seconds: 10,
            retention_days: 7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Vastai,
    Runpod,
    Lambda,
    Http,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// The offer id prefix and the name shown everywhere; see
    /// `ProviderConfig::NAME_RULE`.
    pub name: String,
    pub kind: ProviderKind,
    /// Name of the environment variable holding the provider's API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Most calls per minute spotd makes to this provider (governor quota).
    #[serde(default = "default_calls_per_minute")]
    pub calls_per_minute: u32,
    /// Seconds a failing provider's last offers are kept (marked stale) before dropped.
    #[serde(default = "default_stale")]
    pub stale_after_seconds: u64,
}

impl ProviderConfig {
    /// What a provider name may be. It prefixes offer ids (`name:native_id`) and is a
    /// path segment and a metrics label, so: lowercase ASCII letters, digits, `_` and
    /// `-`, starting with a letter or a digit.
    pub(crate) const NAME_RULE: &'static str = "[a-z0-9][a-z0-9_-]*";

    /// Whether `name` follows [`ProviderConfig::NAME_RULE`]. The one check: config
    /// validation and the provider registry (sandbox clouds, tests) both use it.
    pub(crate) fn valid_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }
}

fn default_refresh() -> u64 {
    60
}
fn default_calls_per_minute() -> u32 {
    600
}
fn default_stale() -> u64 {
    300
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    /// USD per million input tokens (exact; at most 6 decimals).
    #[serde(default, with = "toml_usd")]
    pub input_usd_per_mtok: Usd,
    #[serde(default, with = "toml_usd")]
    pub output_usd_per_mtok: Usd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub id: String,
    /// Total across GPUs.
    pub min_vram_gb: u32,
    #[serde(default)]
    pub image: Option<String>,
}

impl Config {
    /// Sandbox mode: no real providers configured, or `--sandbox`.
    pub(crate) fn sandbox_mode(&self) -> bool {
        self.force_sandbox || self.providers.is_empty()
    }

    pub(crate) fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "listen: '{}' is not an address like 127.0.0.1:8088",
                self.listen
            )
        })
    }
}

/// TOML has no decimal type: a price arrives as a float or a string. The float's
/// shortest round-trip text is the literal the operator wrote, which is then parsed
/// exactly; more than 6 decimals is an error, not a rounding.
mod toml_usd {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::money::Usd;

    pub(crate) fn serialize<S: Serializer>(v: &Usd, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            F(f64),
            S(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::I(i) => i.to_string(),
            Raw::F(f) => format!("{f}"),
            Raw::S(s) => s,
        };
        Usd::parse(&text).map_err(serde::de::Error::custom)
    }
}
