//! The real `spotd serve` (no sandbox) against loopback mocks of Vast.ai, RunPod and
//! Lambda serving the recorded fixtures: normalized offers with hand-checked prices,
//! provider status, rent -> running -> teardown through each adapter, a Vast outbid
//! preemption, the orphan sweep, and refused keys shown in `GET /admin/v1/providers`.
//!
//! The mocks are stateful: a create adds an instance (provisioning on the first
//! listing, running from the second), a terminate removes it; each is seeded with the
//! fixture's instances, one of which carries a spotd label no rental owns (an orphan
//! the start-up sweep must terminate) and one of which is someone else's (untouched).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{usd, Daemon};
use crate::providers_mock::{fixture, fixture_json, json, reply, start, Mock, Reply, Req};
use serde_json::{json, Value};
use spotd::clock::parse_rfc3339;
use spotd::money::{prorate, Usd};
use spotd::providers::lambda::key_name;

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2eTestKeyForSpotd test@host";
const VAST_KEY: &str = "vast-test-key";
const RUNPOD_KEY: &str = "runpod-test-key";
const LAMBDA_KEY: &str = "lambda-test-key";
/// Instance ids the mocks hand out: never reused, so a request names one instance.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A mock with its mutable world: the instances it lists, and whether it still
/// accepts its key (a revoked key answers 401 to everything).
struct World {
    mock: Mock,
    instances: Arc<Mutex<Vec<Value>>>,
    key_ok: Arc<AtomicBool>,
    /// Vast only: the loopback port a model instance's server is "published" on.
    model_port: Arc<AtomicU64>,
}

impl World {
    fn instance(&self, id_field: &str, id: &str) -> Option<Value> {
        self.instances
            .lock()
            .unwrap()
            .iter()
            .find(|i| i[id_field].to_string().trim_matches('"') == id)
            .cloned()
    }
}

fn authorized(r: &Req, key: &str, ok: &AtomicBool) -> bool {
    ok.load(Ordering::SeqCst) && r.auth.as_deref() == Some(&format!("Bearer {key}"))
}

/// One listing: answers the current instances, then moves every booting one on to
/// running and drops the ones being terminated (as the clouds do between polls).
fn list_and_advance(
    instances: &Mutex<Vec<Value>>,
    status_field: &str,
    step: impl Fn(&mut Value),
) -> Vec<Value> {
    let mut list = instances.lock().unwrap();
    let snapshot = list.clone();
    list.retain(|i| i[status_field] != "terminating");
    list.iter_mut().for_each(step);
    snapshot
}

async fn vast_mock() -> World {
    let instances = Arc::new(Mutex::new(
        fixture_json("vastai", "instances.json")["instances"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let key_ok = Arc::new(AtomicBool::new(true));
    let model_port = Arc::new(AtomicU64::new(0));
    let (inst, ok, mport) = (instances.clone(), key_ok.clone(), model_port.clone());
    let mock = start(Arc::new(move |r: &Req| -> Reply {
        if !authorized(r, VAST_KEY, &ok) {
            // Not a recorded answer: Vast's exact 401 body is not documented.
            return reply(
                401,
                r#"{"success":false,"error":"invalid_user","msg":"Invalid user key"}"#,
            );
        }
        let p = r.path.as_str();
        match r.method.as_str() {
            "POST" if p == "/bundles/" => reply(200, fixture("vastai", "bundles.json")),
            "POST" if p == "/ssh/" => reply(200, r#"{"success":true,"key":{"id":1}}"#),
            "PUT" if p.starts_with("/asks/") => {
                let ask = p.trim_start_matches("/asks/").trim_end_matches('/');
                let bundles = fixture_json("vastai", "bundles.json");
                let Some(o) = bundles["offers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["id"].to_string().as_str() == ask)
                    .cloned()
                else {
                    return reply(404, fixture("vastai", "no_such_ask.json"));
                };
                let mut list = inst.lock().unwrap();
                let id = 7_900_000 + NEXT_ID.fetch_add(1, Ordering::SeqCst);
                let mut i = fixture_json("vastai", "instances.json")["instances"][0].clone();
                i["id"] = json!(id);
                i["label"] = r.body["label"].clone();
                i["actual_status"] = json!("loading");
                // As Vast does: a bid at its price, else on demand at the full price.
                i["is_bid"] = json!(r.body.get("price").is_some());
                let price = r.body.get("price").cloned();
                i["dph_base"] = price.clone().unwrap_or_else(|| o["dph_base"].clone());
                i["dph_total"] = price.unwrap_or_else(|| o["dph_total"].clone());
                i["image_uuid"] = r.body["image"].clone();
                i["num_gpus"] = o["num_gpus"].clone();
                i["gpu_name"] = o["gpu_name"].clone();
                if r.body["env"].get("-p 8000:8000").is_some() {
                    // Vast publishes the container's port 8000 on a host port; here
                    // that is the loopback model server of the test.
                    i["public_ipaddr"] = json!("127.0.0.1\n");
                    i["ports"] = json!({"8000/tcp": [{"HostIp": "0.0.0.0",
                        "HostPort": mport.load(Ordering::SeqCst).to_string()}]});
                }
                list.push(i);
                json(200, &json!({"success": true, "new_contract": id}))
            }
            "GET" if p == "/instances/?owner=me" => {
                let l = list_and_advance(&inst, "actual_status", |i| {
                    if i["actual_status"] == "loading" && i["label"].is_string() {
                        i["actual_status"] = json!("running");
                    }
                });
                json(200, &json!({ "instances": l }))
            }
            "DELETE" if p.starts_with("/instances/") => {
                let id = p.trim_start_matches("/instances/").trim_end_matches('/');
                let mut list = inst.lock().unwrap();
                let before = list.len();
                list.retain(|i| i["id"].to_string().as_str() != id);
                if list.len() == before {
                    return reply(404, r#"{"success":false,"error":"no_such_instance"}"#);
                }
                json(
                    200,
                    &json!({"success": true, "msg": format!("destroying instance {id}.")}),
                )
            }
            _ => reply(404, r#"{"success":false}"#),
        }
    }))
    .await;
    World {
        mock,
        instances,
        key_ok,
        model_port,
    }
}

async fn runpod_mock() -> World {
    let instances = Arc::new(Mutex::new(
        fixture_json("runpod", "pods.json")["pods"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let key_ok = Arc::new(AtomicBool::new(true));
    let (inst, ok) = (instances.clone(), key_ok.clone());
    let mock = start(Arc::new(move |r: &Req| -> Reply {
        if !authorized(r, RUNPOD_KEY, &ok) {
            return reply(
                401,
                r#"{"title":"Unauthorized","status":401,"detail":"invalid API key"}"#,
            );
        }
        let p = r.path.as_str();
        match r.method.as_str() {
            "GET" if p == "/catalog/gpus?include=AVAILABILITY&product=POD" => {
                reply(200, fixture("runpod", "catalog_gpus.json"))
            }
            "POST" if p == "/pods" => {
                let mut list = inst.lock().unwrap();
                let mut pod = fixture_json("runpod", "pod_provisioning.json");
                pod["id"] = json!(format!("pod{}", NEXT_ID.fetch_add(1, Ordering::SeqCst)));
                pod["name"] = r.body["name"].clone();
                pod["image"] = r.body["image"].clone();
                pod["gpu"] = r.body["gpu"].clone();
                pod["dataCenterId"] = r.body["dataCenterIds"][0].clone();
                list.push(pod.clone());
                json(201, &pod)
            }
            "GET" if p == "/pods" => {
                let running = fixture_json("runpod", "pods.json")["pods"][0].clone();
                let l = list_and_advance(&inst, "status", |pod| {
                    if pod["status"] == "PROVISIONING" {
                        pod["status"] = json!("RUNNING");
                        pod["ssh"] = running["ssh"].clone();
                        pod["runtime"] = running["runtime"].clone();
                    }
                });
                json(200, &json!({ "pods": l }))
            }
            "DELETE" if p.starts_with("/pods/") => {
                let id = p.trim_start_matches("/pods/");
                let mut list = inst.lock().unwrap();
                let before = list.len();
                list.retain(|i| i["id"] != id);
                if list.len() == before {
                    return reply(404, r#"{"title":"Not Found","status":404}"#);
                }
                reply(204, "")
            }
            _ => reply(404, r#"{"title":"Not Found","status":404}"#),
        }
    }))
    .await;
    World {
        mock,
        instances,
        key_ok,
        model_port: Arc::new(AtomicU64::new(0)),
    }
}

async fn lambda_mock() -> World {
    let instances = Arc::new(Mutex::new(
        fixture_json("lambda", "instances.json")["data"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let keys = Arc::new(Mutex::new(
        fixture_json("lambda", "ssh_keys.json")["data"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let key_ok = Arc::new(AtomicBool::new(true));
    let (inst, ok) = (instances.clone(), key_ok.clone());
    let mock = start(Arc::new(move |r: &Req| -> Reply {
        if !authorized(r, LAMBDA_KEY, &ok) {
            return reply(401, fixture("lambda", "invalid_key.json"));
        }
        let p = r.path.as_str();
        match (r.method.as_str(), p) {
            ("GET", "/instance-types") => reply(200, fixture("lambda", "instance_types.json")),
            ("GET", "/ssh-keys") => json(200, &json!({ "data": *keys.lock().unwrap() })),
            ("POST", "/ssh-keys") => {
                let k =
                    json!({"id": "k2", "name": r.body["name"], "public_key": r.body["public_key"]});
                keys.lock().unwrap().push(k.clone());
                json(200, &json!({ "data": k }))
            }
            ("POST", "/instance-operations/launch") => {
                let types = fixture_json("lambda", "instance_types.json");
                let itype = r.body["instance_type_name"].as_str().unwrap_or("");
                let t = &types["data"][itype];
                let region = r.body["region_name"].as_str().unwrap_or("");
                let has_capacity = t["regions_with_capacity_available"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|x| x["name"] == region));
                if !has_capacity {
                    return reply(400, fixture("lambda", "insufficient_capacity.json"));
                }
                let mut list = inst.lock().unwrap();
                let id = format!("{:032x}", 0xabc0 + NEXT_ID.fetch_add(1, Ordering::SeqCst));
                let mut i = fixture_json("lambda", "instances.json")["data"][1].clone();
                i["id"] = json!(id);
                i["name"] = r.body["name"].clone();
                i["ssh_key_names"] = r.body["ssh_key_names"].clone();
                i["region"] = json!({"name": region});
                i["instance_type"] = t["instance_type"].clone();
                list.push(i);
                json(200, &json!({"data": {"instance_ids": [id]}}))
            }
            ("GET", "/instances") => {
                let l = list_and_advance(&inst, "status", |i| {
                    if i["status"] == "booting"
                        && i["name"].as_str().is_some_and(|n| n.starts_with("rnt_"))
                    {
                        i["status"] = json!("active");
                        i["ip"] = json!("129.146.33.200");
                    }
                });
                json(200, &json!({ "data": l }))
            }
            ("POST", "/instance-operations/terminate") => {
                let mut list = inst.lock().unwrap();
                let mut done = Vec::new();
                for i in list.iter_mut() {
                    if r.body["instance_ids"]
                        .as_array()
                        .is_some_and(|ids| ids.contains(&i["id"]))
                    {
                        i["status"] = json!("terminating");
                        done.push(i.clone());
                    }
                }
                if done.is_empty() {
                    return reply(404, fixture("lambda", "not_found.json"));
                }
                json(200, &json!({"data": {"terminated_instances": done}}))
            }
            _ => reply(404, fixture("lambda", "not_found.json")),
        }
    }))
    .await;
    World {
        mock,
        instances,
        key_ok,
        model_port: Arc::new(AtomicU64::new(0)),
    }
}

fn config(vast: &World, runpod: &World, lambda: &World, revoked: &World) -> String {
    format!(
        r#"
[billing]
metering_interval_seconds = 1

[[providers]]
name = "vast"
kind = "vastai"
base_url = "{}"
api_key_env = "VAST_TEST_KEY"

[[providers]]
name = "runpod"
kind = "runpod"
base_url = "{}"
api_key_env = "RUNPOD_TEST_KEY"

[[providers]]
name = "lambda"
kind = "lambda"
base_url = "{}"
api_key_env = "LAMBDA_TEST_KEY"

# The Lambda mock with a key it does not know: refused from the start.
[[providers]]
name = "lambda-badkey"
kind = "lambda"
base_url = "{}"
api_key_env = "LAMBDA_BAD_KEY"

# A second Vast account whose key is revoked while spotd runs.
[[providers]]
name = "vast-revoked"
kind = "vastai"
base_url = "{}"
api_key_env = "VAST_TEST_KEY"
refresh_seconds = 1
"#,
        vast.mock.base, runpod.mock.base, lambda.mock.base, lambda.mock.base, revoked.mock.base
    )
}

/// Every offer of the market, walking the pages.
async fn all_offers(d: &Daemon, key: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/gpus/offers?limit=4&cursor={c}"),
            None => "/v1/gpus/offers?limit=4".to_string(),
        };
        let r = d.get(&path, key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for o in r.body["data"].as_array().unwrap() {
            let id = o["id"].as_str().unwrap().to_string();
            assert!(out.insert(id, o.clone()).is_none(), "offer twice: {o}");
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Waits (real time: these are other processes) until `pred` holds.
async fn eventually(what: &str, d: &Daemon, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred() {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}\nlog:\n{}", d.log());
        }
        d.pass(100).await;
    }
}

fn m(v: &Value) -> i64 {
    usd(v).micros()
}

async fn rent(d: &Daemon, key: &str, body: Value) -> Value {
    let r = d.post("/v1/gpus/rentals", key, body).await;
    assert_eq!(r.status, 201, "{:?}\nlog:\n{}", r.body, d.log());
    assert_eq!(r.body["state"], "provisioning", "{}", r.body);
    r.body
}

async fn teardown(d: &Daemon, key: &str, id: &str) -> Value {
    let r = d.delete(&format!("/v1/gpus/rentals/{id}"), key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    d.wait_rental(key, id, 20, |r| r["state"] == "terminated")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spotd_serves_rents_and_tears_down_on_vast_runpod_and_lambda() {
    let (vast, runpod, lambda, revoked) = (
        vast_mock().await,
        runpod_mock().await,
        lambda_mock().await,
        vast_mock().await,
    );
    let d = Daemon::in_process_config(
        &config(&vast, &runpod, &lambda, &revoked),
        &[
            ("VAST_TEST_KEY", VAST_KEY),
            ("RUNPOD_TEST_KEY", RUNPOD_KEY),
            ("LAMBDA_TEST_KEY", LAMBDA_KEY),
            ("LAMBDA_BAD_KEY", "not-the-key"),
        ],
    )
    .await;
    assert!(d.demo_key.is_empty());
    assert!(
        !d.data_dir().join("demo.key").exists(),
        "no sandbox demo account"
    );
    let (_, key) = d.account("alice", "100").await;
    // The key reached each provider from the child's environment only.
    assert_eq!(
        vast.mock.requests("POST", "/bundles/")[0].auth.as_deref(),
        Some("Bearer vast-test-key")
    );

    // --- Offers, normalized, with prices worked out by hand from the fixtures.
    let offers = all_offers(&d, &key).await;
    let count = |p: &str| offers.values().filter(|o| o["provider"] == p).count();
    // Vast: 3 asks with a gpu_name, two with a min_bid (-> a bid offer each) = 5.
    // RunPod: RTX 4090 secure (max 8: 1,2,4,8) + community (max 2: 1,2) in US-KS-2
    // (EU-RO-1 has no stock), H100 secure 1,2,4,8 in US-GA-1, A40 out of stock = 10.
    // Lambda: H100 in 1 region, A100 in 2, A10 in none = 3.
    assert_eq!(
        (count("vast"), count("runpod"), count("lambda")),
        (5, 10, 3),
        "{offers:#?}"
    );
    assert_eq!(count("lambda-badkey"), 0);
    let o = |id: &str| {
        offers
            .get(id)
            .unwrap_or_else(|| panic!("no offer {id}: {:?}", offers.keys()))
            .clone()
    };
    let shape = |v: &Value| {
        (
            v["gpu"].as_str().unwrap().to_string(),
            v["gpu_count"].as_u64().unwrap(),
            v["vram_gb"].as_u64().unwrap(),
            m(&v["price_per_hour"]),
            v["interruptible"].as_bool().unwrap(),
            v["region"].as_str().unwrap().to_string(),
        )
    };
    // Vast ask 12345678: dph_total 0.2410 USD/h (whole machine) -> 0.241000;
    // gpu_ram 24564 MB / 1024 = 23.99 -> 24 GB; "Texas, US" -> US.
    let v1 = o("vast:12345678");
    assert_eq!(
        shape(&v1),
        ("RTX 4090".into(), 1, 24, 241_000, false, "US".into())
    );
    assert!(v1["on_demand_price_per_hour"].is_null());
    // Its bid: min_bid 0.12 -> 0.120000, interruptible, on demand price alongside.
    let v1b = o("vast:12345678-bid-120000");
    assert_eq!(
        shape(&v1b),
        ("RTX 4090".into(), 1, 24, 120_000, true, "US".into())
    );
    assert_eq!(m(&v1b["on_demand_price_per_hour"]), 241_000);
    // Ask 23456789: dph_total 16.80740740740741 -> 16.807407|40740741: more than six
    // decimals, rounded UP to 16.807408; 81559 MB / 1024 = 79.65 -> 80 GB; 8 GPUs,
    // so per GPU 16.807408 / 8 = 2.100926 exactly. ".., Tokyo, JP" -> JP.
    let v2 = o("vast:23456789");
    assert_eq!(
        shape(&v2),
        ("H100 SXM".into(), 8, 80, 16_807_408, false, "JP".into())
    );
    assert_eq!(m(&v2["price_per_gpu_hour"]), 2_100_926);
    assert_eq!(
        m(&o("vast:23456789-bid-12500000")["price_per_hour"]),
        12_500_000
    );
    // Ask 34567890: "A100 PCIE" with 40960 MB = 40 GB per GPU is the 40 GB card; 1.6.
    assert_eq!(
        shape(&o("vast:34567890")),
        ("A100 40GB".into(), 2, 40, 1_600_000, false, "CA".into())
    );
    // RunPod: secure price 0.69 USD/h per GPU x 2 GPUs = 1.38 for the machine;
    // memory 24 (GB per GPU); data centre US-KS-2; on demand only.
    let r2 = o("runpod:SECURE~2~US-KS-2~NVIDIA_GeForce_RTX_4090");
    assert_eq!(
        shape(&r2),
        ("RTX 4090".into(), 2, 24, 1_380_000, false, "US-KS-2".into())
    );
    assert_eq!(m(&r2["price_per_gpu_hour"]), 690_000);
    // Community: 0.34 x 2 = 0.68; H100: "NVIDIA H100 80GB HBM3" -> H100 SXM, 2.99 x 8 = 23.92.
    assert_eq!(
        m(&o("runpod:COMMUNITY~2~US-KS-2~NVIDIA_GeForce_RTX_4090")["price_per_hour"]),
        680_000
    );
    let h = o("runpod:SECURE~8~US-GA-1~NVIDIA_H100_80GB_HBM3");
    assert_eq!(
        shape(&h),
        (
            "H100 SXM".into(),
            8,
            80,
            23_920_000,
            false,
            "US-GA-1".into()
        )
    );
    // Lambda: price_cents_per_hour 1436 for the whole 8-GPU machine -> 14.36;
    // "A100 (80 GB SXM4)" -> A100 80GB, 80 GB per GPU; per GPU 14.36 / 8 = 1.795.
    let l8 = o("lambda:gpu_8x_a100_80gb_sxm4@us-west-2");
    assert_eq!(
        shape(&l8),
        (
            "A100 80GB".into(),
            8,
            80,
            14_360_000,
            false,
            "us-west-2".into()
        )
    );
    assert_eq!(m(&l8["price_per_gpu_hour"]), 1_795_000);
    // 249 cents -> 2.49; "H100 (80 GB PCIe)" -> H100 PCIe.
    assert_eq!(
        shape(&o("lambda:gpu_1x_h100_pcie@us-east-1")),
        (
            "H100 PCIe".into(),
            1,
            80,
            2_490_000,
            false,
            "us-east-1".into()
        )
    );

    // --- Provider status: the three real ones ok; a refused key failing, with why.
    let st = d.provider_status("vast").await;
    assert_eq!(
        (st["status"].as_str(), st["kind"].as_str()),
        (Some("ok"), Some("vastai")),
        "{st}"
    );
    assert_eq!(st["offers"], 5);
    assert!(st["last_error"].is_null());
    for (name, kind, n) in [("runpod", "runpod", 10), ("lambda", "lambda", 3)] {
        let st = d.provider_status(name).await;
        assert_eq!(st["status"], "ok", "{st}");
        assert_eq!(
            (st["kind"].as_str(), st["offers"].as_u64()),
            (Some(kind), Some(n))
        );
    }
    let bad = d.provider_status("lambda-badkey").await;
    // It never refreshed, so there is nothing to keep: failing straight away.
    assert_eq!(bad["status"], "failing", "{bad}");
    let err = bad["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("credentials") && err.contains("API key was invalid"),
        "{bad}"
    );
    assert!(bad["last_refresh_at"].is_null());

    // --- The start-up sweep: the fixture instance labelled with a rental id spotd
    // does not have is terminated on each cloud; someone else's is left alone.
    eventually("orphans swept", &d, || {
        vast.mock.requests("DELETE", "/instances/7835610/").len() == 1
            && runpod.mock.requests("DELETE", "/pods/7h9k2m4n6p").len() == 1
            && lambda
                .mock
                .requests("POST", "/instance-operations/terminate")
                .len()
                == 1
    })
    .await;
    assert!(vast
        .mock
        .requests("DELETE", "/instances/7835901/")
        .is_empty());
    assert!(runpod
        .mock
        .requests("DELETE", "/pods/q2w3e4r5t6")
        .is_empty());
    let swept = &lambda
        .mock
        .requests("POST", "/instance-operations/terminate")[0]
        .body;
    assert_eq!(
        swept["instance_ids"],
        json!(["0920582c7ff041399e34823a0be62549"])
    );

    // --- Vast: rent on demand with image, env and key; running; teardown.
    let env = json!({"HF_HOME": "/workspace/hf"});
    let rv = rent(
        &d,
        &key,
        json!({"offer_id": "vast:12345678", "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
               "env": env, "ssh_public_key": SSH_KEY}),
    )
    .await;
    let vid = rv["id"].as_str().unwrap().to_string();
    assert_eq!(m(&rv["price_per_hour"]), 241_000);
    let put = vast.mock.requests("PUT", "/asks/12345678/");
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].body["label"], vid.as_str());
    assert_eq!(
        put[0].body["image"],
        "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
    );
    assert_eq!(put[0].body["env"], env);
    assert!(put[0].body.get("price").is_none(), "on demand: no bid");
    assert_eq!(
        vast.mock.requests("POST", "/ssh/")[0].body["ssh_key"],
        SSH_KEY
    );
    let running = d
        .wait_rental(&key, &vid, 20, |r| r["state"] == "running")
        .await;
    assert_eq!(
        running["ssh"],
        json!({"host": "ssh2281.vast.ai", "port": 10882, "user": "root"})
    );
    let vinst = vast.instance("label", &vid).expect("instance on the mock")["id"].to_string();
    let done = teardown(&d, &key, &vid).await;
    assert_eq!(done["termination_reason"], "user");
    assert_eq!(
        vast.mock
            .requests("DELETE", &format!("/instances/{vinst}/"))
            .len(),
        1
    );
    assert!(vast.instance("label", &vid).is_none());

    // --- RunPod: the pod gets our id as name, the key as PUBLIC_KEY; direct SSH.
    let rr = rent(
        &d,
        &key,
        json!({"offer_id": "runpod:SECURE~2~US-KS-2~NVIDIA_GeForce_RTX_4090",
               "env": env, "ssh_public_key": SSH_KEY}),
    )
    .await;
    let rid = rr["id"].as_str().unwrap().to_string();
    assert_eq!(m(&rr["price_per_hour"]), 1_380_000);
    let post = runpod.mock.requests("POST", "/pods");
    assert_eq!(post.len(), 1);
    let b = &post[0].body;
    assert_eq!(b["name"], rid.as_str());
    assert_eq!(
        b["gpu"],
        json!({"id": "NVIDIA GeForce RTX 4090", "count": 2})
    );
    assert_eq!(
        (b["cloud"].as_str(), &b["dataCenterIds"]),
        (Some("SECURE"), &json!(["US-KS-2"]))
    );
    assert_eq!(b["env"]["PUBLIC_KEY"], SSH_KEY);
    assert_eq!(b["env"]["HF_HOME"], "/workspace/hf");
    assert_eq!(b["image"], "runpod/base:0.6.2-cuda12.4.1");
    let running = d
        .wait_rental(&key, &rid, 20, |r| r["state"] == "running")
        .await;
    assert_eq!(
        running["ssh"],
        json!({"host": "195.26.233.3", "port": 34446, "user": "root"})
    );
    let pod = runpod.instance("name", &rid).expect("pod on the mock")["id"]
        .as_str()
        .unwrap()
        .to_string();
    teardown(&d, &key, &rid).await;
    assert_eq!(
        runpod
            .mock
            .requests("DELETE", &format!("/pods/{pod}"))
            .len(),
        1
    );
    assert!(runpod.instance("name", &rid).is_none());

    // --- Lambda: the key registered under its derived name, launch named with our id.
    let rl = rent(
        &d,
        &key,
        json!({"offer_id": "lambda:gpu_8x_a100_80gb_sxm4@us-west-2", "ssh_public_key": SSH_KEY}),
    )
    .await;
    let lid = rl["id"].as_str().unwrap().to_string();
    assert_eq!(m(&rl["price_per_hour"]), 14_360_000);
    let reg = lambda.mock.requests("POST", "/ssh-keys");
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].body["name"], key_name(SSH_KEY).as_str());
    let launch = lambda.mock.requests("POST", "/instance-operations/launch");
    assert_eq!(launch.len(), 1);
    assert_eq!(
        launch[0].body,
        json!({"region_name": "us-west-2", "instance_type_name": "gpu_8x_a100_80gb_sxm4",
               "ssh_key_names": [key_name(SSH_KEY)], "quantity": 1, "name": lid})
    );
    let running = d
        .wait_rental(&key, &lid, 20, |r| r["state"] == "running")
        .await;
    assert_eq!(
        running["ssh"],
        json!({"host": "129.146.33.200", "port": 22, "user": "ubuntu"})
    );
    let linst = lambda.instance("name", &lid).expect("instance on the mock")["id"].clone();
    teardown(&d, &key, &lid).await;
    let terms = lambda
        .mock
        .requests("POST", "/instance-operations/terminate");
    assert!(
        terms
            .iter()
            .any(|t| t.body["instance_ids"] == json!([linst])),
        "{terms:?}"
    );
    // Lambda image/env are refused up front, before any launch (unsupported).
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            json!({"offer_id": "lambda:gpu_1x_h100_pcie@us-east-1", "image": "x/y:1"}),
        )
        .await;
    assert_ne!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        lambda
            .mock
            .requests("POST", "/instance-operations/launch")
            .len(),
        1
    );

    // --- Vast outbid: the bid goes out at the quoted price; a `stopped` bid instance
    // is a preemption, and (it keeps billing storage) spotd destroys it.
    let rb = rent(&d, &key, json!({"offer_id": "vast:23456789-bid-12500000"})).await;
    let bid = rb["id"].as_str().unwrap().to_string();
    let put = vast.mock.requests("PUT", "/asks/23456789/");
    assert_eq!(put[0].body["price"].to_string(), "12.5");
    d.wait_rental(&key, &bid, 20, |r| r["state"] == "running")
        .await;
    let binst = {
        let mut list = vast.instances.lock().unwrap();
        let i = list
            .iter_mut()
            .find(|i| i["label"] == bid.as_str())
            .unwrap();
        i["actual_status"] = json!("stopped");
        i["status_msg"] = json!("outbid");
        i["id"].to_string()
    };
    let ended = d
        .wait_rental(&key, &bid, 20, |r| r["state"] == "interrupted")
        .await;
    assert_eq!(ended["termination_reason"], "preempted");
    eventually("the outbid instance destroyed", &d, || {
        vast.mock
            .requests("DELETE", &format!("/instances/{binst}/"))
            .len()
            == 1
    })
    .await;

    // --- A key revoked while running: offers kept but stale, with the reason.
    assert_eq!(d.provider_status("vast-revoked").await["status"], "ok");
    revoked.key_ok.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = d.provider_status("vast-revoked").await;
        if st["status"] == "stale" {
            break st;
        }
        assert!(Instant::now() < deadline, "never went stale: {st}");
        d.pass(200).await;
    };
    assert_eq!(st["offers"], 5, "its last offers are still shown: {st}");
    let err = st["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("credentials") && err.contains("Invalid user key"),
        "{st}"
    );
    assert!(st["last_refresh_at"].is_string());

    // Money: every rental billed and released; the books balance.
    let (balance, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);
    let list = d.get("/v1/gpus/rentals", &key).await;
    let states: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    // Three torn down, one preempted, the refused Lambda image rent failed.
    let n = |s: &str| states.iter().filter(|x| **x == s).count();
    assert_eq!(
        (n("terminated"), n("interrupted"), n("failed")),
        (3, 1, 1),
        "{states:?}"
    );
    // Each rental that ran is billed its whole running seconds at its locked price.
    let mut billed = Usd::ZERO;
    for r in list.body["data"].as_array().unwrap() {
        if r["state"] == "failed" {
            assert_eq!(usd(&r["cost"]), Usd::ZERO, "{r}");
            continue;
        }
        let at = |k: &str| parse_rfc3339(r[k].as_str().unwrap()).unwrap();
        let secs = ((at("ended_at") - at("started_at")) / 1000) as u64;
        assert_eq!(
            usd(&r["cost"]),
            prorate(usd(&r["price_per_hour"]), secs),
            "{r}"
        );
        billed += usd(&r["cost"]);
    }
    assert_eq!(balance, Usd::from_dollars(100) - billed);
}

/// A stand-in for vLLM on loopback: lists its model and answers chat, but only to
/// the deployment's own key, which it reads from the create request spotd sent Vast.
async fn fake_vllm(vast: &World, model: &'static str) -> Mock {
    let seen = vast.mock.seen.clone();
    let server = start(Arc::new(move |r: &Req| -> Reply {
        let key = seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|q| q.method == "PUT")
            .and_then(|q| q.body["env"]["VLLM_API_KEY"].as_str().map(str::to_string));
        match key {
            Some(k) if r.auth.as_deref() == Some(&format!("Bearer {k}")) => {}
            _ => return reply(401, r#"{"error":{"message":"bad key","type":"auth"}}"#),
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v1/models") => json(200, &json!({"object": "list", "data": [{"id": model, "object": "model"}]})),
            ("POST", "/v1/chat/completions") => json(200, &json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "served by vLLM on Vast"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})),
            _ => reply(404, "{}"),
        }
    }))
    .await;
    let port: u64 = server.base.rsplit(':').next().unwrap().parse().unwrap();
    vast.model_port.store(port, Ordering::SeqCst);
    server
}

/// A cold model on a real container cloud: spotd rents the cheapest fitting Vast offer
/// with vLLM's image, arguments and published port, gives the server a key of its own,
/// finds the endpoint in Vast's port map, proxies to it with that key, and reaps the
/// GPU when idle (destroyed on Vast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_model_deploys_on_vast_with_its_own_key_and_is_reaped() {
    const MODEL: &str = "acme/tiny-chat";
    let vast = vast_mock().await;
    let vllm = fake_vllm(&vast, MODEL).await;
    let d = Daemon::in_process_config(
        &format!(
            r#"
[billing]
metering_interval_seconds = 1

[deployments]
idle_timeout_seconds = 3

[[providers]]
name = "vast"
kind = "vastai"
base_url = "{}"
api_key_env = "VAST_TEST_KEY"

[[models]]
id = "{MODEL}"
min_vram_gb = 24
"#,
            vast.mock.base
        ),
        &[("VAST_TEST_KEY", VAST_KEY)],
    )
    .await;
    let (_, key) = d.account("carol", "50").await;
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});

    let r = d.post("/v1/chat/completions", &key, chat.clone()).await;
    assert_eq!(r.status, 202, "{:?}\nlog:\n{}", r.body, d.log());
    assert_eq!(r.body["status"], "deploying");
    let puts = vast.mock.requests("PUT", "/asks/");
    assert_eq!(puts.len(), 1, "one deployment");
    // The cheapest offer with 24 GB: the RTX 4090 ask, as an interruptible bid.
    assert_eq!(puts[0].path, "/asks/12345678/");
    let b = &puts[0].body;
    assert_eq!(b["image"], "vllm/vllm-openai:latest");
    assert_eq!(b["runtype"], "args");
    assert_eq!(
        b["args"],
        json!([
            "--model",
            MODEL,
            "--port",
            "8000",
            "--tensor-parallel-size",
            "1"
        ])
    );
    assert_eq!(b["env"]["-p 8000:8000"], "1");
    assert_eq!(b["env"]["MODEL"], MODEL);
    let dep_key = b["env"]["VLLM_API_KEY"].as_str().expect("a deployment key");
    assert!(dep_key.len() >= 32, "{dep_key}");
    assert!(!dep_key.contains(&key), "never the caller's key");

    // Ready once Vast reports it running and the server answers to the key.
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = d.post("/v1/chat/completions", &key, chat.clone()).await;
        if r.status != 202 || Instant::now() > deadline {
            break r;
        }
        d.pass(300).await;
    };
    assert_eq!(r.status, 200, "{:?}\nlog:\n{}", r.body, d.log());
    assert_eq!(
        r.body["choices"][0]["message"]["content"],
        "served by vLLM on Vast"
    );
    let to_model = vllm.requests("POST", "/v1/chat/completions");
    assert_eq!(to_model.len(), 1);
    assert_eq!(
        to_model[0].auth.as_deref(),
        Some(format!("Bearer {dep_key}").as_str())
    );
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    let dep = rentals.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == MODEL)
        .cloned()
        .expect("the deployment is a rental of the caller");
    assert_eq!(
        dep["endpoint"],
        format!("{}/v1", vllm.base),
        "the public address and the host port Vast mapped to 8000"
    );
    assert!(
        !dep.to_string().contains(dep_key),
        "the deployment key is never shown"
    );

    // Idle for 3 s: reaped, and the instance destroyed on Vast.
    let id = dep["id"].as_str().unwrap().to_string();
    let vid = vast.instance("label", &id).expect("on the mock")["id"].to_string();
    let gone = d
        .wait_rental(&key, &id, 30, |r| r["state"] == "terminated")
        .await;
    assert_eq!(gone["termination_reason"], "idle", "{gone}");
    assert!(vast.instance("label", &id).is_none(), "destroyed on Vast");
    assert_eq!(
        vast.mock
            .requests("DELETE", &format!("/instances/{vid}/"))
            .len(),
        1
    );
}

/// Lambda launches VMs, not containers: a cold model never deploys there, even when
/// a Lambda offer fits; without another provider the caller gets a clear 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_model_never_deploys_on_lambda() {
    let lambda = lambda_mock().await;
    let d = Daemon::in_process_config(
        &format!(
            r#"
[[providers]]
name = "lambda"
kind = "lambda"
base_url = "{}"
api_key_env = "LAMBDA_TEST_KEY"

[[models]]
id = "acme/tiny-chat"
min_vram_gb = 24
"#,
            lambda.mock.base
        ),
        &[("LAMBDA_TEST_KEY", LAMBDA_KEY)],
    )
    .await;
    let (_, key) = d.account("dave", "50").await;
    // Lambda's offers are in the market, and one fits the model.
    let offers = all_offers(&d, &key).await;
    assert!(
        offers.values().any(|o| o["provider"] == "lambda"
            && o["vram_gb"].as_u64().unwrap() * o["gpu_count"].as_u64().unwrap() >= 24),
        "{offers:?}"
    );
    let r = d
        .post(
            "/v1/chat/completions",
            &key,
            json!({"model": "acme/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acme/tiny-chat"),
        "{:?}",
        r.body
    );
    assert!(lambda
        .mock
        .requests("POST", "/instance-operations/launch")
        .is_empty());
    let rentals = d.get("/v1/gpus/rentals", &key).await;
    assert_eq!(rentals.body["data"], json!([]), "nothing rented");
    let credits = d.get("/v1/credits", &key).await;
    assert_eq!(usd(&credits.body["held"]), Usd::ZERO, "no hold left behind");
}
