//! The Lambda Cloud adapter (`kind = "lambda"`): `https://cloud.lambda.ai/api/v1`,
//! bearer key. On demand only (Lambda has no spot market).
//!
//! Offers come from `GET /instance-types`: one offer per instance type and region with
//! capacity, priced from `price_cents_per_hour` (whole machine, integer cents, exact).
//! Rent registers the SSH key through `POST /ssh-keys` under a name derived from the
//! key itself (so the same key is never registered twice) and launches with
//! `POST /instance-operations/launch` and our rental id as `name`. Lambda limits launches
//! to about one per 12 s: launches wait for their own quota on top of the registry's
//! per-provider one. Lambda runs its own OS image; a rent asking for a container image
//! or env is refused rather than silently started without them.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::rest::{self, parse, status_error, RestApi};
use super::{CreateInstance, Instance, InstanceState, Provider, ProviderError, ProviderOffer};
use crate::http_client::{HttpClient, HttpResponse};
use crate::market::normalize_gpu;
use crate::model::Ssh;

pub(crate) const DEFAULT_BASE_URL: &str = "https://cloud.lambda.ai/api/v1";
/// Lambda documents "one request per 12 seconds" for launches.
pub(crate) const LAUNCH_INTERVAL: Duration = Duration::from_secs(12);
/// Lambda publishes no reliability figure; its machines are its own data centres.
pub(crate) const RELIABILITY: f64 = 0.99;
const SEP: char = '@';

#[derive(Debug)]
pub struct LambdaProvider {
    api: RestApi,
    launches: DefaultDirectRateLimiter,
}

/// Lambda names errors by `error.code`; the message text is not a contract.
fn error_code(r: &HttpResponse) -> Option<String> {
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    v["error"]["code"].as_str().map(str::to_string)
}

fn no_capacity(r: &HttpResponse) -> bool {
    error_code(r).as_deref() == Some("instance-operations/launch/insufficient-capacity")
}

fn not_found(r: &HttpResponse) -> bool {
    r.status == StatusCode::NOT_FOUND
        || error_code(r).as_deref() == Some("global/object-does-not-exist")
}

/// "A100 (40 GB SXM4)" -> 40.
fn vram_of(desc: &str) -> u32 {
    let Some(i) = desc.find(" GB") else {
        return 0;
    };
    let digits: String = desc[..i]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap_or(0)
}

fn offers_of(entry: &Value) -> Vec<ProviderOffer> {
    let t = &entry["instance_type"];
    let (Some(name), Some(price)) = (
        t["name"].as_str(),
        rest::usd_from_cents(&t["price_cents_per_hour"]),
    ) else {
        return Vec::new();
    };
    let desc = t["gpu_description"].as_str().unwrap_or(name);
    let gpu_count = rest::u32_of(&t["specs"]["gpus"]);
    if gpu_count == 0 || name.contains(SEP) {
        return Vec::new();
    }
    let regions = entry["regions_with_capacity_available"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    regions
        .iter()
        .filter_map(|r| r["name"].as_str())
        .map(|region| ProviderOffer {
            id: format!("{name}{SEP}{region}"),
            gpu: normalize_gpu(desc),
            gpu_count,
            vram_gb: vram_of(desc),
            vcpus: rest::u32_of(&t["specs"]["vcpus"]),
            ram_gb: rest::u32_of(&t["specs"]["memory_gib"]),
            disk_gb: rest::u32_of(&t["specs"]["storage_gib"]),
            region: region.to_string(),
            price_per_hour: price,
            on_demand_price_per_hour: None,
            interruptible: false,
            reliability: RELIABILITY,
            available: 1,
        })
        .collect()
}

fn state_of(i: &Value) -> InstanceState {
    match i["status"].as_str() {
        Some("active") => InstanceState::Running,
        // "unhealthy" is often a boot phase; spotd's boot timeout covers the rest.
        Some("booting" | "unhealthy") | None => InstanceState::Provisioning,
        Some("terminating") => InstanceState::Terminating,
        Some("terminated") => InstanceState::Terminated,
        Some("preempted") => InstanceState::Interrupted,
        Some(_) => InstanceState::Failed,
    }
}

fn instance_of(i: &Value) -> Option<Instance> {
    let state = state_of(i);
    let ssh = match (state, i["ip"].as_str()) {
        (InstanceState::Running, Some(ip)) if !ip.is_empty() => Some(Ssh {
            host: ip.to_string(),
            port: 22,
            user: "ubuntu".into(),
        }),
        _ => None,
    };
    let offer_id = match (
        i["instance_type"]["name"].as_str(),
        i["region"]["name"].as_str(),
    ) {
        (Some(t), Some(r)) => format!("{t}{SEP}{r}"),
        _ => String::new(),
    };
    Some(Instance {
        id: i["id"].as_str()?.to_string(),
        offer_id,
        label: i["name"].as_str().unwrap_or_default().to_string(),
        state,
        endpoint: None,
        ssh,
        created_at: String::new(),
        ended_at: None,
    })
}

/// The name a public key is registered under: stable per key, so registering the same
/// key again is recognisable (and harmless).
pub fn key_name(public_key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public_key.trim().as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("spotd-{hex}")
}

impl LambdaProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: Option<&str>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> LambdaProvider {
        LambdaProvider::with_launch_interval(name, base_url, api_key, client, LAUNCH_INTERVAL)
    }

    /// Like [`LambdaProvider::new`] with another launch spacing (tests).
    pub fn with_launch_interval(
        name: impl Into<String>,
        base_url: Option<&str>,
        api_key: Option<String>,
        client: HttpClient,
        interval: Duration,
    ) -> LambdaProvider {
        let quota = Quota::with_period(interval.max(Duration::from_millis(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        LambdaProvider {
            api: RestApi::new(name.into(), base_url, DEFAULT_BASE_URL, api_key, client),
            launches: RateLimiter::direct(quota),
        }
    }

    /// The key name to launch with: the request's key (registered if new), else the
    /// account's first key (Lambda requires exactly one).
    async fn ssh_key_name(&self, public_key: Option<&str>) -> Result<String, ProviderError> {
        let r = self.api.req(Method::GET, "/ssh-keys", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let keys = v["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let Some(pk) = public_key else {
            return keys
                .iter()
                .find_map(|k| k["name"].as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    ProviderError::Rejected(
                        "Lambda needs an SSH key: pass ssh_public_key or add one to the account"
                            .into(),
                    )
                });
        };
        let name = key_name(pk);
        if keys.iter().any(|k| k["name"].as_str() == Some(&name)) {
            return Ok(name);
        }
        let body = json!({ "name": name, "public_key": pk.trim() });
        let r = self.api.req(Method::POST, "/ssh-keys", Some(&body)).await?;
        if !r.status.is_success() {
            return Err(status_error(&r, |_| false));
        }
        Ok(name)
    }
}

#[async_trait]
impl Provider for LambdaProvider {
    fn name(&self) -> &str {
        &self.api.name
    }

    /// Lambda launches VMs from its own OS image: no container image, no arguments,
    /// so no model server spotd could start. Cold models deploy elsewhere.
    fn serves_models(&self) -> bool {
        false
    }

    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let r = self.api.req(Method::GET, "/instance-types", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let types = v["data"]
            .as_object()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"data\"".into()))?;
        Ok(types.values().flat_map(offers_of).collect())
    }

    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        if req.image.is_some() || !req.env.is_empty() {
            return Err(ProviderError::Rejected(
                "Lambda instances run Lambda's own OS image: image and env are not supported"
                    .into(),
            ));
        }
        let (itype, region) = req
            .offer_id
            .split_once(SEP)
            .ok_or_else(|| ProviderError::Rejected(format!("bad offer id {}", req.offer_id)))?;
        let key = self.ssh_key_name(req.ssh_public_key.as_deref()).await?;
        let body = json!({
            "region_name": region,
            "instance_type_name": itype,
            "ssh_key_names": [key],
            "quantity": 1,
            "name": req.label,
        });
        self.launches.until_ready().await;
        let r = self
            .api
            .req(Method::POST, "/instance-operations/launch", Some(&body))
            .await?;
        if !r.status.is_success() {
            return Err(status_error(&r, no_capacity));
        }
        let v: Value = parse(&r)?;
        let id = v["data"]["instance_ids"][0]
            .as_str()
            .ok_or_else(|| ProviderError::Unavailable(rest::excerpt(&r)))?;
        Ok(Instance::just_created(id, req))
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self
            .api
            .req(Method::GET, &format!("/instances/{}", rest::seg(id)), None)
            .await?;
        if r.status == StatusCode::OK {
            let v: Value = parse(&r)?;
            return instance_of(&v["data"])
                .map(Some)
                .ok_or_else(|| ProviderError::Unavailable(rest::excerpt(&r)));
        }
        if not_found(&r) {
            return Ok(None);
        }
        Err(status_error(&r, |_| false))
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let r = self.api.req(Method::GET, "/instances", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let list = v["data"]
            .as_array()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"data\"".into()))?;
        Ok(list.iter().filter_map(instance_of).collect())
    }

    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let body = json!({ "instance_ids": [id] });
        let r = self
            .api
            .req(Method::POST, "/instance-operations/terminate", Some(&body))
            .await?;
        if r.status.is_success() {
            let v: Value = parse(&r)?;
            let list = v["data"]["terminated_instances"].as_array();
            // "Might not contain all instances requested": absent means not done yet.
            return match list.and_then(|l| l.iter().find(|i| i["id"].as_str() == Some(id))) {
                Some(i) => Ok(instance_of(i)),
                None => Err(ProviderError::Unavailable(format!(
                    "Lambda did not confirm terminating {id}"
                ))),
            };
        }
        if not_found(&r) {
            return Ok(None);
        }
        Err(status_error(&r, |_| false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vram_states_and_key_names() {
        assert_eq!(vram_of("A100 (40 GB SXM4)"), 40);
        assert_eq!(vram_of("H100 (80 GB PCIe)"), 80);
        assert_eq!(vram_of("mystery"), 0);
        let st = |s: &str| state_of(&json!({ "status": s }));
        assert_eq!(st("booting"), InstanceState::Provisioning);
        assert_eq!(st("active"), InstanceState::Running);
        assert_eq!(st("terminating"), InstanceState::Terminating);
        assert_eq!(st("terminated"), InstanceState::Terminated);
        assert_eq!(st("preempted"), InstanceState::Interrupted);
        assert_eq!(
            key_name("ssh-ed25519 AAA x"),
            key_name(" ssh-ed25519 AAA x\n")
        );
        assert_ne!(key_name("ssh-ed25519 AAA"), key_name("ssh-ed25519 AAB"));
        assert!(key_name("k").starts_with("spotd-"));
    }
}
