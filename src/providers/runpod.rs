//! The RunPod adapter (`kind = "runpod"`): REST v2 at `https://api.runpod.io/v2`,
//! bearer key. On demand only (RunPod is withdrawing its spot product and v2 has no
//! bid field).
//!
//! Offers come from `GET /catalog/gpus?include=AVAILABILITY&product=POD`: one offer per
//! GPU type, cloud (secure/community), data centre with stock, and GPU count (1, 2, 4,
//! 8 up to the type's ceiling). Catalogue prices are per GPU, so the machine price is
//! the price times the count. The native offer id carries what a create needs:
//! `{cloud}~{count}~{data centre}~{gpu type id, spaces as '_'}`. Rent is
//! `POST /pods` with our rental id as `name`, the image, env and the SSH key as the
//! `PUBLIC_KEY` env the RunPod images read. A cold model's pod runs its image with
//! vLLM's arguments and exposes port 8000 as HTTP; its endpoint is RunPod's HTTPS proxy.

use async_trait::async_trait;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::rest::{self, parse, status_error, RestApi};
use super::{
    model_server_args, CreateInstance, Instance, InstanceState, Provider, ProviderError,
    ProviderOffer, MODEL_IMAGE, MODEL_PORT,
};
use crate::http_client::{HttpClient, HttpResponse};
use crate::market::normalize_gpu;
use crate::model::Ssh;

pub(crate) const DEFAULT_BASE_URL: &str = "https://api.runpod.io/v2";
pub const DEFAULT_IMAGE: &str = "runpod/base:0.6.2-cuda12.4.1";
/// The catalogue has no reliability figure; secure cloud runs in vetted data centres.
pub(crate) const SECURE_RELIABILITY: f64 = 0.99;
pub(crate) const COMMUNITY_RELIABILITY: f64 = 0.95;
const COUNTS: [u32; 4] = [1, 2, 4, 8];
const SEP: char = '~';

#[derive(Debug)]
pub struct RunpodProvider {
    api: RestApi,
}

/// RunPod's create answers 400 both for rule violations and for exhausted capacity
/// ("capacity exhaustion currently carries no machine-readable code"); its guidance is
/// to try the next candidate on 400, which is what "no capacity" does here.
fn no_capacity(r: &HttpResponse) -> bool {
    r.status == StatusCode::BAD_REQUEST
}

/// Stock level -> the `available` count shown (RunPod gives a level, not a number).
fn stock(level: &Value) -> u32 {
    match level.as_str() {
        Some("HIGH") => 3,
        Some("MEDIUM") => 2,
        Some("LOW") => 1,
        _ => 0,
    }
}

fn offers_of(g: &Value) -> Vec<ProviderOffer> {
    let (Some(id), Some(name)) = (g["id"].as_str(), g["name"].as_str().or(g["id"].as_str())) else {
        return Vec::new();
    };
    if id.contains('_') || id.contains(SEP) {
        return Vec::new(); // would not survive the offer id encoding
    }
    let mut out = Vec::new();
    for (cloud, flag, reliability) in [
        ("SECURE", "secure", SECURE_RELIABILITY),
        ("COMMUNITY", "community", COMMUNITY_RELIABILITY),
    ] {
        if g[flag].as_bool() != Some(true) {
            continue;
        }
        let Some(per_gpu) = rest::usd_per_hour(&g["price"][flag]).filter(|p| p.micros() > 0) else {
            continue;
        };
        let max = rest::u32_of(&g["maxCount"][flag]);
        let dcs = g["dataCenters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for dc in dcs {
            let (Some(dc_id), available) = (dc["id"].as_str(), stock(&dc["availability"])) else {
                continue;
            };
            if available == 0 || dc_id.contains(SEP) {
                continue;
            }
            for count in COUNTS.into_iter().filter(|c| *c <= max) {
                let Some(price) = per_gpu.micros().checked_mul(i64::from(count)) else {
                    continue;
                };
                out.push(ProviderOffer {
                    id: format!(
                        "{cloud}{SEP}{count}{SEP}{dc_id}{SEP}{}",
                        id.replace(' ', "_")
                    ),
                    gpu: normalize_gpu(name),
                    gpu_count: count,
                    vram_gb: rest::u32_of(&g["memory"]),
                    // The catalogue does not say; the pod gets RunPod's defaults.
                    vcpus: 0,
                    ram_gb: 0,
                    disk_gb: 0,
                    region: dc_id.to_string(),
                    price_per_hour: crate::money::Usd::from_micros(price),
                    on_demand_price_per_hour: None,
                    interruptible: false,
                    reliability,
                    available,
                });
            }
        }
    }
    out
}

struct OfferKey {
    cloud: String,
    count: u32,
    dc: String,
    gpu_id: String,
}

fn parse_offer_id(id: &str) -> Option<OfferKey> {
    let mut it = id.splitn(4, SEP);
    let cloud = it.next()?.to_string();
    let count = it.next()?.parse().ok()?;
    let dc = it.next()?.to_string();
    let gpu_id = it.next()?.replace('_', " ");
    (matches!(cloud.as_str(), "SECURE" | "COMMUNITY") && count > 0).then_some(OfferKey {
        cloud,
        count,
        dc,
        gpu_id,
    })
}

fn state_of(p: &Value) -> InstanceState {
    match p["status"].as_str() {
        Some("RUNNING") => InstanceState::Running,
        Some("PROVISIONING" | "STARTING") | None => InstanceState::Provisioning,
        Some("TERMINATED") => InstanceState::Terminated,
        // EXITED: spotd never stops a pod, so it stopped on its own (container exit,
        // balance); ERROR and anything new will not come back.
        Some(_) => InstanceState::Failed,
    }
}

fn ssh_of(p: &Value) -> Option<Ssh> {
    // Direct TCP when the pod has a public IP, else RunPod's SSH proxy.
    let s = if p["ssh"]["direct"].is_object() {
        &p["ssh"]["direct"]
    } else {
        &p["ssh"]["proxy"]
    };
    let port = rest::num(&s["port"]).filter(|p| (1.0..=65535.0).contains(p))?;
    Some(Ssh {
        host: s["host"].as_str()?.to_string(),
        port: port as u16,
        user: s["username"].as_str()?.to_string(),
    })
}

/// A model server's base URL: RunPod's HTTPS proxy for the pod's HTTP port,
/// `https://{pod id}-{port}.proxy.runpod.net`, once the pod runs.
fn endpoint_of(p: &Value, id: &str, state: InstanceState) -> Option<String> {
    let http_port = format!("{MODEL_PORT}/http");
    let exposed = match &p["ports"] {
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(http_port.as_str())),
        // The older API gives one comma-separated string.
        Value::String(s) => s.split(',').any(|x| x.trim() == http_port),
        _ => false,
    };
    (state == InstanceState::Running && exposed)
        .then(|| format!("https://{id}-{MODEL_PORT}.proxy.runpod.net/v1"))
}

fn instance_of(p: &Value) -> Option<Instance> {
    let state = state_of(p);
    let id = p["id"].as_str()?.to_string();
    Some(Instance {
        endpoint: endpoint_of(p, &id, state),
        id,
        offer_id: String::new(),
        label: p["name"].as_str().unwrap_or_default().to_string(),
        state,
        ssh: if state == InstanceState::Running {
            ssh_of(p)
        } else {
            None
        },
        created_at: p["createdAt"].as_str().unwrap_or_default().to_string(),
        ended_at: None,
    })
}

impl RunpodProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: Option<&str>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> RunpodProvider {
        RunpodProvider {
            api: RestApi::new(name.into(), base_url, DEFAULT_BASE_URL, api_key, client),
        }
    }

    fn one(r: &HttpResponse) -> Result<Instance, ProviderError> {
        let v: Value = parse(r)?;
        instance_of(&v).ok_or_else(|| ProviderError::Unavailable(rest::excerpt(r)))
    }
}

#[async_trait]
impl Provider for RunpodProvider {
    fn name(&self) -> &str {
        &self.api.name
    }

    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let r = self
            .api
            .req(
                Method::GET,
                "/catalog/gpus?include=AVAILABILITY&product=POD",
                None,
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let gpus = v["gpus"]
            .as_array()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"gpus\"".into()))?;
        Ok(gpus.iter().flat_map(offers_of).collect())
    }

    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        let k = parse_offer_id(&req.offer_id)
            .ok_or_else(|| ProviderError::Rejected(format!("bad offer id {}", req.offer_id)))?;
        let mut env = req.env.clone();
        if let Some(key) = &req.ssh_public_key {
            env.insert("PUBLIC_KEY".into(), key.clone());
        }
        let mut body = json!({
            "name": req.label,
            "image": req.image.as_deref().unwrap_or(DEFAULT_IMAGE),
            "gpu": {"id": k.gpu_id, "count": k.count},
            "cloud": k.cloud,
            "dataCenterIds": [k.dc],
            "env": env,
            "ports": ["22/tcp"],
            "startSsh": true,
        });
        if let Some(model) = &req.model {
            // A model server: vLLM's arguments to the image's entrypoint (`args` is one
            // string), its port behind RunPod's HTTPS proxy.
            body["image"] = json!(req.image.as_deref().unwrap_or(MODEL_IMAGE));
            body["args"] = json!(model_server_args(model, k.count).join(" "));
            body["ports"] = json!([format!("{MODEL_PORT}/http"), "22/tcp"]);
        }
        let r = self.api.req(Method::POST, "/pods", Some(&body)).await?;
        if !r.status.is_success() {
            return Err(status_error(&r, no_capacity));
        }
        let mut i = Self::one(&r)?;
        i.offer_id = req.offer_id.clone();
        Ok(i)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self
            .api
            .req(Method::GET, &format!("/pods/{}", rest::seg(id)), None)
            .await?;
        match r.status {
            StatusCode::OK => Self::one(&r).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&r, |_| false)),
        }
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let r = self.api.req(Method::GET, "/pods", None).await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let pods = v["pods"]
            .as_array()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"pods\"".into()))?;
        Ok(pods.iter().filter_map(instance_of).collect())
    }

    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let r = self
            .api
            .req(Method::DELETE, &format!("/pods/{}", rest::seg(id)), None)
            .await?;
        match r.status {
            StatusCode::NOT_FOUND => Ok(None),
            // 204: the pod is terminated (and its billing with it).
            s if s.is_success() => Ok(Some(Instance::destroyed(id))),
            _ => Err(status_error(&r, |_| false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_ids_and_states() {
        let k = parse_offer_id("SECURE~2~US-KS-2~NVIDIA_GeForce_RTX_4090").unwrap();
        assert_eq!(
            (k.cloud.as_str(), k.count, k.dc.as_str(), k.gpu_id.as_str()),
            ("SECURE", 2, "US-KS-2", "NVIDIA GeForce RTX 4090")
        );
        assert!(parse_offer_id("SPOT~1~x~y").is_none());
        assert!(parse_offer_id("SECURE~0~x~y").is_none());
        assert!(parse_offer_id("SECURE~1~x").is_none());
        let st = |s: &str| state_of(&json!({ "status": s }));
        assert_eq!(st("PROVISIONING"), InstanceState::Provisioning);
        assert_eq!(st("STARTING"), InstanceState::Provisioning);
        assert_eq!(st("RUNNING"), InstanceState::Running);
        assert_eq!(st("EXITED"), InstanceState::Failed);
        assert_eq!(st("ERROR"), InstanceState::Failed);
        assert_eq!(st("TERMINATED"), InstanceState::Terminated);
    }
}
