//! The configured providers, each behind its per-provider call quota, with the refresh
//! status that `GET /admin/v1/providers` shows.
//!
//! Every call to a provider — offer refreshes, rents, polls, teardowns — goes through
//! the registry's wrapper and first waits for that provider's governor quota
//! (`calls_per_minute`), so no code path can exceed what the operator allowed. The
//! offer sync worker records each refresh here; `refresh_now` wakes its loop early
//! (after a rent changes availability).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;

use super::http::HttpProvider;
use super::lambda::LambdaProvider;
use super::runpod::RunpodProvider;
use super::vastai::VastProvider;
use super::{CreateInstance, Instance, Provider, ProviderError, ProviderOffer};
use crate::clock::{Millis, Signal};
use crate::config::{ProviderConfig, ProviderKind};
use crate::http_client::HttpClient;

/// One row of `GET /admin/v1/providers`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    /// "vastai" | "runpod" | "lambda" | "http".
    pub kind: String,
    /// The provider's API address: `base_url` from the config, the kind's public API
    /// when it has none, the loopback address of the in-process sandbox cloud in
    /// sandbox mode.
    pub base_url: Option<String>,
    /// "pending" (no refresh attempted yet), "ok" (last refresh succeeded), "stale"
    /// (last refresh failed; its last offers are still shown) or "failing" (failing for
    /// longer than `stale_after_seconds`; its offers were dropped).
    pub status: &'static str,
    /// Offers of this provider in the market.
    pub offers: usize,
    /// Last successful refresh.
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_refresh_at: Option<Millis>,
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
    /// True while the offers shown for this provider come from an older refresh.
    pub stale: bool,
}

#[derive(Default)]
struct State {
    offers: usize,
    last_success: Option<Millis>,
    last_attempt: Option<Millis>,
    last_error: Option<String>,
    dropped: bool,
}

struct Entry {
    config: ProviderConfig,
    provider: Arc<dyn Provider>,
    wake: Signal,
    state: Mutex<State>,
}

pub struct Registry {
    entries: Vec<Entry>,
}

/// A provider whose every call first waits for its quota.
struct Governed {
    inner: Arc<dyn Provider>,
    quota: DefaultDirectRateLimiter,
}

#[async_trait]
impl Provider for Governed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn serves_models(&self) -> bool {
        self.inner.serves_models()
    }
    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        self.quota.until_ready().await;
        self.inner.list_offers().await
    }
    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        self.quota.until_ready().await;
        self.inner.create_instance(req).await
    }
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        self.quota.until_ready().await;
        self.inner.get_instance(id).await
    }
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        self.quota.until_ready().await;
        self.inner.list_instances().await
    }
    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        self.quota.until_ready().await;
        self.inner.terminate(id).await
    }
}

fn kind_str(k: ProviderKind) -> &'static str {
    match k {
        ProviderKind::Vastai => "vastai",
        ProviderKind::Runpod => "runpod",
        ProviderKind::Lambda => "lambda",
        ProviderKind::Http => "http",
    }
}

impl Registry {
    /// Builds the providers of the config; `env` looks up the keys their
    /// `api_key_env` names (the process environment, or a test's fixed list).
    pub fn with_env(
        configs: &[ProviderConfig],
        client: HttpClient,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Registry, String> {
        let mut built: Vec<(ProviderConfig, Arc<dyn Provider>)> = Vec::new();
        for c in configs {
            let api_key = match &c.api_key_env {
                None => None,
                Some(var) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!(
                        "provider '{}': environment variable {var} (api_key_env) is not set",
                        c.name
                    )
                })?),
            };
            let provider: Arc<dyn Provider> = match c.kind {
                ProviderKind::Http => {
                    let base = c.base_url.as_deref().filter(|b| !b.trim().is_empty());
                    let base = base.ok_or_else(|| {
                        format!("provider '{}': kind = \"http\" needs base_url", c.name)
                    })?;
                    if !base.starts_with("http://") {
                        return Err(format!(
                            "provider '{}': base_url must start with http:// (got '{base}')",
                            c.name
                        ));
                    }
                    Arc::new(HttpProvider::new(&c.name, base, api_key, client.clone()))
                }
                ProviderKind::Vastai | ProviderKind::Runpod | ProviderKind::Lambda => {
                    // The real API address unless the config points elsewhere (a
                    // proxy, a mock); plain http:// is allowed for those.
                    let base = c.base_url.as_deref().filter(|b| !b.trim().is_empty());
                    if let Some(b) = base {
                        if !b.starts_with("http://") && !b.starts_with("https://") {
                            return Err(format!(
                                "provider '{}': base_url must start with https:// or http:// (got '{b}')",
                                c.name
                            ));
                        }
                    }
                    let (name, client) = (c.name.as_str(), client.clone());
                    match c.kind {
                        ProviderKind::Vastai => {
                            Arc::new(VastProvider::new(name, base, api_key, client))
                        }
                        ProviderKind::Runpod => {
                            Arc::new(RunpodProvider::new(name, base, api_key, client))
                        }
                        _ => Arc::new(LambdaProvider::new(name, base, api_key, client)),
                    }
                }
            };
            built.push((c.clone(), provider));
        }
        Registry::from_providers(built)
    }

    /// A registry over providers built elsewhere (the sandbox, tests). Each is still
    /// wrapped in its quota.
    pub fn from_providers(
        providers: Vec<(ProviderConfig, Arc<dyn Provider>)>,
    ) -> Result<Registry, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (config, inner) in providers {
            if !ProviderConfig::valid_name(&config.name) {
                return Err(format!(
                    "provider name '{}' must match {} (it prefixes offer ids)",
                    config.name,
                    ProviderConfig::NAME_RULE
                ));
            }
            if entries.iter().any(|e| e.config.name == config.name) {
                return Err(format!("provider name '{}' is used twice", config.name));
            }
            let per_minute = NonZeroU32::new(config.calls_per_minute).ok_or_else(|| {
                format!(
                    "provider '{}': calls_per_minute must be at least 1",
                    config.name
                )
            })?;
            if config.refresh_seconds == 0 {
                return Err(format!(
                    "provider '{}': refresh_seconds must be at least 1",
                    config.name
                ));
            }
            let provider: Arc<dyn Provider> = Arc::new(Governed {
                // Counted inside the quota: only calls that reached the provider count.
                inner: crate::metrics::Counted::wrap(inner),
                quota: RateLimiter::direct(Quota::per_minute(per_minute)),
            });
            entries.push(Entry {
                wake: Signal::new(format!("offer-sync:{}", config.name)),
                config,
                provider,
                state: Mutex::new(State::default()),
            });
        }
        Ok(Registry { entries })
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.config.name == name)
    }

    fn with_state<R>(&self, name: &str, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let e = self.entry(name)?;
        let mut s = e.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut s))
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.entry(name).map(|e| e.provider.clone())
    }

    pub fn config(&self, name: &str) -> Option<&ProviderConfig> {
        self.entry(name).map(|e| &e.config)
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.config.name.clone()).collect()
    }

    pub fn all(&self) -> Vec<(ProviderConfig, Arc<dyn Provider>)> {
        self.entries
            .iter()
            .map(|e| (e.config.clone(), e.provider.clone()))
            .collect()
    }

    /// Wakes `name`'s offer sync loop now (a rent or teardown changed availability).
    /// A wake-up sent while the loop is busy is kept for its next wait.
    pub fn refresh_now(&self, name: &str) {
        if let Some(e) = self.entry(name) {
            e.wake.notify();
        }
    }

    /// What the sync loop of `name` waits on besides its timer.
    pub fn wake_signal(&self, name: &str) -> Option<Signal> {
        self.entry(name).map(|e| e.wake.clone())
    }

    pub fn statuses(&self) -> Vec<ProviderStatus> {
        self.entries
            .iter()
            .map(|e| {
                let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                let status = if s.dropped {
                    "failing"
                } else if s.last_attempt.is_none() {
                    "pending"
                } else if s.last_error.is_some() {
                    "stale"
                } else {
                    "ok"
                };
                ProviderStatus {
                    name: e.config.name.clone(),
                    kind: kind_str(e.config.kind).to_string(),
                    base_url: e.config.base_url.clone().or_else(|| {
                        match e.config.kind {
                            ProviderKind::Vastai => Some(super::vastai::DEFAULT_BASE_URL),
                            ProviderKind::Runpod => Some(super::runpod::DEFAULT_BASE_URL),
                            ProviderKind::Lambda => Some(super::lambda::DEFAULT_BASE_URL),
                            ProviderKind::Http => None,
                        }
                        .map(str::to_string)
                    }),
                    status,
                    offers: s.offers,
                    last_refresh_at: s.last_success,
                    last_attempt_at: s.last_attempt,
                    last_error: s.last_error.clone(),
                    stale: status == "stale",
                }
            })
            .collect()
    }

    pub fn status(&self, name: &str) -> Option<ProviderStatus> {
        self.statuses().into_iter().find(|s| s.name == name)
    }

    /// Records a successful refresh that left `offers` offers in the market.
    pub fn record_success(&self, name: &str, offers: usize, at: Millis) {
        self.with_state(name, |s| {
            s.offers = offers;
            s.last_success = Some(at);
            s.last_attempt = Some(at);
            s.last_error = None;
            s.dropped = false;
        });
    }

    /// Records a failed refresh; the offers shown stay as they are.
    pub fn record_failure(&self, name: &str, error: String, at: Millis) {
        self.with_state(name, |s| {
            s.last_attempt = Some(at);
            s.last_error = Some(error);
        });
    }

    /// Records that `name`'s offers were dropped after failing too long.
    pub fn record_dropped(&self, name: &str) {
        self.with_state(name, |s| {
            s.offers = 0;
            s.dropped = true;
        });
    }

    /// Sets the offer count shown before the first refresh (offers loaded from redb).
    pub fn set_offer_count(&self, name: &str, offers: usize) {
        self.with_state(name, |s| s.offers = offers);
    }

    /// The last successful refresh of `name` in this process.
    pub fn last_success(&self, name: &str) -> Option<Millis> {
        self.with_state(name, |s| s.last_success).flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(
        name: &str,
        kind: ProviderKind,
        base: Option<&str>,
        key_env: Option<&str>,
    ) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            kind,
            api_key_env: key_env.map(str::to_string),
            refresh_seconds: 60,
            base_url: base.map(str::to_string),
            calls_per_minute: 600,
            stale_after_seconds: 300,
        }
    }

    fn client() -> HttpClient {
        HttpClient::new(Duration::from_secs(1))
    }

    #[test]
    fn builds_http_providers_and_refuses_bad_configs() {
        let env = |k: &str| (k == "LAB_KEY").then(|| "k".to_string());
        let ok = [
            cfg(
                "lab",
                ProviderKind::Http,
                Some("http://127.0.0.1:9/pool"),
                Some("LAB_KEY"),
            ),
            cfg(
                "lab-2",
                ProviderKind::Http,
                Some("http://127.0.0.1:9"),
                None,
            ),
        ];
        let r = Registry::with_env(&ok, client(), env).unwrap();
        assert_eq!(r.names(), vec!["lab", "lab-2"]);
        assert_eq!(r.get("lab").unwrap().name(), "lab");
        assert!(r.get("nope").is_none());
        assert_eq!(r.all().len(), 2);
        // The real-provider kinds build without base_url (their real API address).
        let real = [
            cfg("v", ProviderKind::Vastai, None, Some("LAB_KEY")),
            cfg(
                "r",
                ProviderKind::Runpod,
                Some("https://example.test/v2"),
                None,
            ),
            cfg("l", ProviderKind::Lambda, None, None),
        ];
        let r = Registry::with_env(&real, client(), env).unwrap();
        assert_eq!(r.names(), vec!["v", "r", "l"]);
        // The status shows the address actually called: the default, or the config's.
        let bases: Vec<Option<String>> = r.statuses().into_iter().map(|s| s.base_url).collect();
        assert_eq!(
            bases,
            vec![
                Some("https://console.vast.ai/api/v0".to_string()),
                Some("https://example.test/v2".to_string()),
                Some("https://cloud.lambda.ai/api/v1".to_string()),
            ]
        );

        for (bad, words) in [
            (
                cfg("v", ProviderKind::Vastai, Some("ftp://x"), None),
                "https://",
            ),
            (cfg("h", ProviderKind::Http, None, None), "needs base_url"),
            (
                cfg("h", ProviderKind::Http, Some("ftp://x"), None),
                "http://",
            ),
            (
                cfg("h", ProviderKind::Http, Some("http://x"), Some("MISSING")),
                "MISSING",
            ),
            (
                cfg("Big Name", ProviderKind::Http, Some("http://x"), None),
                ProviderConfig::NAME_RULE,
            ),
            // The config's rule: a name starts with a letter or a digit.
            (
                cfg("-lab", ProviderKind::Http, Some("http://x"), None),
                ProviderConfig::NAME_RULE,
            ),
            (
                ProviderConfig {
                    calls_per_minute: 0,
                    ..cfg("h", ProviderKind::Http, Some("http://x"), None)
                },
                "calls_per_minute",
            ),
        ] {
            let e = Registry::with_env(&[bad], client(), env).err().unwrap();
            assert!(e.contains(words), "{e}");
        }
        let dup = [ok[1].clone(), ok[1].clone()];
        assert!(Registry::with_env(&dup, client(), env)
            .err()
            .unwrap()
            .contains("twice"));
    }

    #[test]
    fn status_goes_pending_ok_stale_failing_and_serializes() {
        let r = Registry::with_env(
            &[cfg(
                "lab",
                ProviderKind::Http,
                Some("http://127.0.0.1:9"),
                None,
            )],
            client(),
            |_| None,
        )
        .unwrap();
        assert_eq!(r.status("lab").unwrap().status, "pending");
        r.record_success("lab", 12, 1_000);
        let s = r.status("lab").unwrap();
        assert_eq!((s.status, s.offers, s.stale), ("ok", 12, false));
        r.record_failure("lab", "boom".into(), 2_000);
        let s = r.status("lab").unwrap();
        assert_eq!((s.status, s.offers, s.stale), ("stale", 12, true));
        assert_eq!(s.last_refresh_at, Some(1_000));
        r.record_dropped("lab");
        let s = r.status("lab").unwrap();
        assert_eq!((s.status, s.offers, s.stale), ("failing", 0, false));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["last_refresh_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(json["last_attempt_at"], "1970-01-01T00:00:02.000Z");
        assert_eq!(json["last_error"], "boom");
        assert_eq!(json["kind"], "http");
        r.record_success("lab", 3, 3_000);
        assert_eq!(r.status("lab").unwrap().last_error, None);
    }

    #[tokio::test]
    async fn quota_spaces_calls() {
        struct Count(std::sync::atomic::AtomicU32);
        #[async_trait]
        impl Provider for Count {
            fn name(&self) -> &str {
                "c"
            }
            async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Vec::new())
            }
            async fn create_instance(&self, _: &CreateInstance) -> Result<Instance, ProviderError> {
                Err(ProviderError::NoCapacity)
            }
            async fn get_instance(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
                Ok(None)
            }
            async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
                Ok(Vec::new())
            }
            async fn terminate(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
                Ok(None)
            }
        }
        let inner = Arc::new(Count(Default::default()));
        let mut c = cfg("c", ProviderKind::Http, None, None);
        c.calls_per_minute = 2;
        let r = Registry::from_providers(vec![(c, inner.clone() as Arc<dyn Provider>)]).unwrap();
        let p = r.get("c").unwrap();
        // The burst of 2 goes through at once; the third call must wait ~30 s.
        p.list_offers().await.unwrap();
        p.list_offers().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), p.list_offers()).await;
        assert!(
            third.is_err(),
            "the third call within a minute was not held back"
        );
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
