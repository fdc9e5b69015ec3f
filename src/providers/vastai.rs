//! The Vast.ai adapter (`kind = "vastai"`): the v0 REST API at
//! `https://console.vast.ai/api/v0`, bearer key.
//!
//! Offers come from `POST /bundles/` (rentable, verified, not rented). Each ask is listed
//! twice: on demand at `dph_total` (USD/h, whole machine) and, when the ask has a
//! `min_bid`, as an interruptible bid at that price, with the bid price kept in the
//! native offer id (`{ask}-bid-{micros}`) so a rent bids exactly what spotd quoted.
//! Rent is `PUT /asks/{ask}/` with our rental id as `label` and, for a bid, the bid as
//! `price` (USD/h, whole machine, as vast-cli's `create instance --bid_price` sends it);
//! the answer's `new_contract` is the instance id. Vast rents on demand at the full
//! price when a bid offer is created without `price`, and its answer does not say which
//! it made, so spotd reads the new instance back (`is_bid`, `dph_base`) and, when it is
//! not what was asked (on demand for a bid, a bid for on demand, a price above the bid,
//! or a bid it cannot confirm), destroys it and refuses the create with the reason. The SSH key is registered on the account (`POST /ssh/`), which
//! Vast applies to the account's instances. An outbid instance goes `stopped` and keeps
//! billing storage: it is reported `Interrupted`, so spotd ends the rental and destroys it.
//! A cold model's instance runs its image with vLLM's arguments (`runtype: "args"`) and
//! publishes port 8000; its endpoint is `public_ipaddr` and the host port Vast mapped.

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
use crate::money::Usd;

pub(crate) const DEFAULT_BASE_URL: &str = "https://console.vast.ai/api/v0";
/// What Vast runs when the rent request names no image: a CUDA base with sshd.
pub const DEFAULT_IMAGE: &str = "vastai/base-image:cuda-12.4.1-auto";
/// Disk (GB) asked for every instance; Vast's minimum is 8.
const DISK_GB: u32 = 32;
const BID_MARK: &str = "-bid-";

#[derive(Debug)]
pub struct VastProvider {
    api: RestApi,
}

/// "no_such_ask" (404, or 410 when the ask cannot start) means the machine is gone.
fn no_capacity(r: &HttpResponse) -> bool {
    let body = String::from_utf8_lossy(&r.body);
    matches!(r.status.as_u16(), 400 | 404 | 410) && body.contains("no_such_ask")
}

impl VastProvider {
    pub fn new(
        name: impl Into<String>,
        base_url: Option<&str>,
        api_key: Option<String>,
        client: HttpClient,
    ) -> VastProvider {
        VastProvider {
            api: RestApi::new(name.into(), base_url, DEFAULT_BASE_URL, api_key, client),
        }
    }

    async fn register_key(&self, key: &str) -> Result<(), ProviderError> {
        let r = self
            .api
            .req(Method::POST, "/ssh/", Some(&json!({ "ssh_key": key })))
            .await?;
        match r.status {
            s if s.is_success() => Ok(()),
            // A key the account already has is refused as a duplicate: fine.
            s if s.is_client_error()
                && s != StatusCode::UNAUTHORIZED
                && s != StatusCode::FORBIDDEN
                && s != StatusCode::TOO_MANY_REQUESTS =>
            {
                Ok(())
            }
            _ => Err(status_error(&r, |_| false)),
        }
    }
}

/// The country code at the end of Vast's free-text `geolocation` ("Texas, US" -> "US").
fn region(o: &Value) -> String {
    o["geolocation"]
        .as_str()
        .and_then(|g| g.rsplit(',').next())
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// One ask as up to two offers (on demand; interruptible bid). `None` when the ask
/// lacks what an offer needs.
fn offers_of(o: &Value) -> Vec<ProviderOffer> {
    let Some(id) = o["id"].as_u64() else {
        return Vec::new();
    };
    let (Some(gpu), Some(on_demand)) =
        (o["gpu_name"].as_str(), rest::usd_per_hour(&o["dph_total"]))
    else {
        return Vec::new();
    };
    let gpu_count = rest::u32_of(&o["num_gpus"]);
    if gpu_count == 0 {
        return Vec::new();
    }
    let reliability = rest::num(&o["reliability2"])
        .or_else(|| rest::num(&o["reliability"]))
        .unwrap_or(0.0)
        .clamp(0.0, 1.0);
    let base = ProviderOffer {
        id: id.to_string(),
        gpu: normalize_gpu(gpu),
        gpu_count,
        vram_gb: rest::mb_to_gb(&o["gpu_ram"]),
        vcpus: rest::u32_of(&o["cpu_cores_effective"]),
        ram_gb: rest::mb_to_gb(&o["cpu_ram"]),
        disk_gb: rest::u32_of(&o["disk_space"]),
        region: region(o),
        price_per_hour: on_demand,
        on_demand_price_per_hour: None,
        interruptible: false,
        reliability,
        available: 1,
    };
    let mut out = vec![base.clone()];
    if let Some(bid) = rest::usd_per_hour(&o["min_bid"]).filter(|b| b.micros() > 0) {
        out.push(ProviderOffer {
            id: format!("{id}{BID_MARK}{}", bid.micros()),
            price_per_hour: bid,
            on_demand_price_per_hour: Some(on_demand),
            interruptible: true,
            ..base
        });
    }
    out
}

/// `"123"` -> (123, None); `"123-bid-120000"` -> (123, Some($0.12)).
fn parse_offer_id(id: &str) -> Option<(u64, Option<Usd>)> {
    match id.split_once(BID_MARK) {
        None => Some((id.parse().ok()?, None)),
        Some((ask, micros)) => {
            let m: i64 = micros.parse().ok()?;
            (m > 0).then_some((ask.parse().ok()?, Some(Usd::from_micros(m))))
        }
    }
}

fn state_of(i: &Value) -> InstanceState {
    let is_bid = i["is_bid"].as_bool().unwrap_or(false);
    match i["actual_status"].as_str() {
        None | Some("created" | "loading" | "scheduling" | "rebooting") => {
            InstanceState::Provisioning
        }
        Some("running") => InstanceState::Running,
        // spotd never stops an instance itself: a stopped bid was outbid (a
        // preemption); a stopped on-demand instance was stopped by Vast (credit, host).
        Some("stopped") if is_bid => InstanceState::Interrupted,
        // "exited", "unknown", "offline", "frozen", "stopped" and anything new: it will
        // not reach running again.
        Some(_) => InstanceState::Failed,
    }
}

fn instance_of(i: &Value) -> Option<Instance> {
    let id = rest::str_of(&i["id"])?;
    let state = state_of(i);
    let ssh = match (state, i["ssh_host"].as_str(), rest::num(&i["ssh_port"])) {
        (InstanceState::Running, Some(host), Some(port)) if (1.0..=65535.0).contains(&port) => {
            Some(Ssh {
                host: host.to_string(),
                port: port as u16,
                user: "root".into(),
            })
        }
        _ => None,
    };
    // A model server's base URL: the public address and the host port Vast mapped to
    // the server's port (`ports` only appears once the instance runs).
    let endpoint = match (state, i["public_ipaddr"].as_str()) {
        (InstanceState::Running, Some(ip)) if !ip.trim().is_empty() => {
            let mapped = &i["ports"][format!("{MODEL_PORT}/tcp")][0]["HostPort"];
            rest::num(mapped)
                .filter(|p| (1.0..=65535.0).contains(p))
                .map(|p| {
                    let ip = ip.trim();
                    if ip.contains(':') {
                        format!("http://[{ip}]:{}/v1", p as u16)
                    } else {
                        format!("http://{ip}:{}/v1", p as u16)
                    }
                })
        }
        _ => None,
    };
    let created_at = rest::num(&i["start_date"])
        .map(|s| crate::clock::rfc3339((s * 1000.0) as i64))
        .unwrap_or_default();
    Some(Instance {
        id,
        offer_id: rest::str_of(&i["ask_id"]).unwrap_or_default(),
        label: i["label"].as_str().unwrap_or_default().to_string(),
        state,
        endpoint,
        ssh,
        created_at,
        ended_at: None,
    })
}

impl VastProvider {
    /// Instance `id` as Vast lists it (the raw object: `instance_of` keeps no type or
    /// price). The account listing, not `GET /instances/{id}/`, whose answer for an id
    /// not yet visible is ambiguous (`{"instances": null}`).
    async fn raw_instance(&self, id: &str) -> Result<Option<Value>, ProviderError> {
        let r = self
            .api
            .req(Method::GET, "/instances/?owner=me", None)
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        Ok(v["instances"].as_array().and_then(|l| {
            l.iter()
                .find(|i| rest::str_of(&i["id"]).as_deref() == Some(id))
                .cloned()
        }))
    }
}

/// Why instance `i` is not what a create with `bid` (or on demand, `None`) asked for.
fn rented_otherwise(i: &Value, bid: Option<Usd>) -> Option<String> {
    let is_bid = i["is_bid"].as_bool();
    let price = rest::usd_per_hour(&i["dph_base"]).or_else(|| rest::usd_per_hour(&i["dph_total"]));
    let shown = price
        .map(|p| format!("${p}/h"))
        .unwrap_or_else(|| "an unknown price".into());
    match (bid, is_bid) {
        (Some(b), Some(true)) => match price {
            Some(p) if p > b => Some(format!(
                "an interruptible instance at {shown}, above the bid of ${b}/h"
            )),
            Some(_) => None,
            None => Some(format!("an interruptible instance without a price (bid ${b}/h)")),
        },
        (Some(b), Some(false)) => Some(format!(
            "Vast rented it on demand at {shown} although spotd bid ${b}/h for an interruptible instance"
        )),
        (Some(b), None) => Some(format!(
            "Vast does not say whether it is interruptible (bid ${b}/h)"
        )),
        (None, Some(true)) => Some(format!(
            "Vast rented an interruptible (bid) instance at {shown} for an on-demand offer"
        )),
        (None, _) => None,
    }
}

#[async_trait]
impl Provider for VastProvider {
    fn name(&self) -> &str {
        &self.api.name
    }

    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let query = json!({
            "verified": {"eq": true},
            "external": {"eq": false},
            "rentable": {"eq": true},
            "rented": {"eq": false},
            "type": "on-demand",
            "allocated_storage": DISK_GB,
            "limit": 1000,
        });
        let r = self
            .api
            .req(Method::POST, "/bundles/", Some(&query))
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let list = v["offers"]
            .as_array()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"offers\"".into()))?;
        Ok(list.iter().flat_map(offers_of).collect())
    }

    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        let (ask, bid) = parse_offer_id(&req.offer_id)
            .ok_or_else(|| ProviderError::Rejected(format!("bad offer id {}", req.offer_id)))?;
        if let Some(key) = &req.ssh_public_key {
            self.register_key(key).await?;
        }
        let mut body = json!({
            "client_id": "me",
            "image": req.image.as_deref().unwrap_or(DEFAULT_IMAGE),
            "label": req.label,
            "disk": DISK_GB,
            "runtype": "ssh",
            "env": req.env,
        });
        if let Some(model) = &req.model {
            // A model server: the image's entrypoint gets vLLM's arguments (runtype
            // "args", no SSH), and its port is published the way Vast takes docker
            // flags, as an env key ("-p 8000:8000": "1").
            let mut env = req.env.clone();
            env.insert(format!("-p {MODEL_PORT}:{MODEL_PORT}"), "1".into());
            body["image"] = json!(req.image.as_deref().unwrap_or(MODEL_IMAGE));
            body["runtype"] = json!("args");
            body["args"] = json!(model_server_args(model, req.gpu_count));
            body["env"] = json!(env);
        }
        if let Some(b) = bid {
            body["price"] = b.to_json();
        }
        let r = self
            .api
            .req(Method::PUT, &format!("/asks/{ask}/"), Some(&body))
            .await?;
        if !r.status.is_success() {
            return Err(status_error(&r, no_capacity));
        }
        let v: Value = parse(&r)?;
        let id = v["new_contract"]
            .as_u64()
            .ok_or_else(|| ProviderError::Unavailable(rest::excerpt(&r)))?
            .to_string();
        let listed = self.raw_instance(&id).await;
        let wrong = match (&listed, bid) {
            (Ok(Some(i)), _) => rented_otherwise(i, bid),
            // An on-demand create that cannot be read back is still on demand.
            (_, None) => None,
            (Ok(None), Some(_)) => Some("Vast does not list the new instance".to_string()),
            (Err(e), Some(_)) => Some(format!("reading the new instance back failed: {e}")),
        };
        if let Some(why) = wrong {
            let destroyed = match self.terminate(&id).await {
                Ok(_) => "it was destroyed".to_string(),
                // The orphan sweep destroys it later: its label is a failed rental's.
                Err(e) => format!("destroying it failed ({e}); the orphan sweep will retry"),
            };
            tracing::warn!(provider = %self.api.name, instance = %id, reason = %why, "Vast rented another kind of instance than asked");
            return Err(ProviderError::Rejected(format!(
                "Vast instance {id} is not what was rented: {why}; {destroyed}"
            )));
        }
        Ok(Instance::just_created(id, req))
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let path = format!("/instances/{}/?owner=me", rest::seg(id));
        let r = self.api.req(Method::GET, &path, None).await?;
        match r.status {
            StatusCode::OK => {
                let v: Value = parse(&r)?;
                // An unknown id answers `{"instances": null}` (or an empty object).
                match &v["instances"] {
                    Value::Object(o) if o.is_empty() => Ok(None),
                    Value::Null => Ok(None),
                    i => instance_of(i)
                        .map(Some)
                        .ok_or_else(|| ProviderError::Unavailable(rest::excerpt(&r))),
                }
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&r, |_| false)),
        }
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let r = self
            .api
            .req(Method::GET, "/instances/?owner=me", None)
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&r, |_| false));
        }
        let v: Value = parse(&r)?;
        let list = v["instances"]
            .as_array()
            .ok_or_else(|| ProviderError::Unavailable("answer without \"instances\"".into()))?;
        Ok(list.iter().filter_map(instance_of).collect())
    }

    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let path = format!("/instances/{}/", rest::seg(id));
        let r = self.api.req(Method::DELETE, &path, None).await?;
        match r.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let v: Value = parse(&r)?;
                if v["success"].as_bool() == Some(false) {
                    return Err(ProviderError::Rejected(rest::excerpt(&r)));
                }
                // Destroy is immediate on Vast: billing (storage included) stops.
                Ok(Some(Instance::destroyed(id)))
            }
            _ => Err(status_error(&r, |_| false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_endpoint_needs_running_an_address_and_the_mapped_port() {
        let at = |status: &str, ip: Value, host_port: Value| {
            instance_of(
                &json!({"id": 1, "actual_status": status, "public_ipaddr": ip,
                "ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": host_port}]}}),
            )
            .unwrap()
            .endpoint
        };
        assert_eq!(
            at("running", json!("203.0.113.7\n"), json!("41234")),
            Some("http://203.0.113.7:41234/v1".into())
        );
        assert_eq!(
            at("running", json!("2001:db8::7"), json!(41234)),
            Some("http://[2001:db8::7]:41234/v1".into())
        );
        assert_eq!(at("loading", json!("203.0.113.7"), json!("41234")), None);
        assert_eq!(at("running", json!(""), json!("41234")), None);
        assert_eq!(at("running", json!("203.0.113.7"), json!("0")), None);
        assert_eq!(at("running", json!("203.0.113.7"), json!("x")), None);
        // Only port 22 published (a plain SSH rental): no model endpoint.
        let plain = instance_of(&json!({"id": 1, "actual_status": "running",
            "public_ipaddr": "203.0.113.7", "ports": {"22/tcp": [{"HostPort": "20000"}]}}));
        assert_eq!(plain.unwrap().endpoint, None);
    }

    #[test]
    fn a_new_instance_must_be_the_kind_and_price_asked() {
        let bid = Some(Usd::from_micros(120_000));
        let i = |is_bid: Value, dph_base: Value| json!({"id": 1, "is_bid": is_bid, "dph_base": dph_base, "dph_total": 0.2444});
        assert_eq!(rented_otherwise(&i(json!(true), json!(0.12)), bid), None);
        assert_eq!(rented_otherwise(&i(json!(true), json!(0.1)), bid), None);
        let on_demand = rented_otherwise(&i(json!(false), json!(0.24)), bid).unwrap();
        assert!(
            on_demand.contains("on demand at $0.24/h") && on_demand.contains("bid $0.12/h"),
            "{on_demand}"
        );
        let dear = rented_otherwise(&i(json!(true), json!(0.13)), bid).unwrap();
        assert!(dear.contains("above the bid"), "{dear}");
        assert!(rented_otherwise(&json!({"id": 1}), bid).is_some());
        assert_eq!(rented_otherwise(&i(json!(false), json!(0.24)), None), None);
        assert!(rented_otherwise(&i(json!(true), json!(0.12)), None)
            .unwrap()
            .contains("on-demand offer"));
    }

    #[test]
    fn offer_ids_round_trip_and_states_map() {
        assert_eq!(parse_offer_id("123"), Some((123, None)));
        assert_eq!(
            parse_offer_id("123-bid-120000"),
            Some((123, Some(Usd::from_micros(120_000))))
        );
        assert_eq!(parse_offer_id("123-bid-0"), None);
        assert_eq!(parse_offer_id("x"), None);
        let st = |s: Value| state_of(&s);
        assert_eq!(
            st(json!({"actual_status": null})),
            InstanceState::Provisioning
        );
        assert_eq!(
            st(json!({"actual_status": "loading"})),
            InstanceState::Provisioning
        );
        assert_eq!(
            st(json!({"actual_status": "running"})),
            InstanceState::Running
        );
        assert_eq!(
            st(json!({"actual_status": "stopped", "is_bid": true})),
            InstanceState::Interrupted
        );
        for s in ["stopped", "exited", "unknown", "offline"] {
            assert_eq!(
                st(json!({"actual_status": s})),
                InstanceState::Failed,
                "{s}"
            );
        }
    }
}
