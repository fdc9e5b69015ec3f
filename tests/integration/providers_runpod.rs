//! The RunPod adapter against a loopback mock serving recorded-style responses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::providers_mock::*;
use serde_json::{json, Value};
use spotd::http_client::HttpClient;
use spotd::model::Ssh;
use spotd::providers::runpod::RunpodProvider;
use spotd::providers::{CreateInstance, InstanceState, Provider, ProviderError};

const K: &str = "runpod";
const OFFER: &str = "SECURE~2~US-KS-2~NVIDIA_GeForce_RTX_4090";

fn provider(base: String, timeout: Duration) -> Arc<dyn Provider> {
    Arc::new(RunpodProvider::new(
        "runpod",
        Some(&base),
        Some("rp-test-key".into()),
        HttpClient::new(timeout),
    ))
}

async fn mock() -> Mock {
    let created: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    start(Arc::new(move |r: &Req| {
        if let Some(e) = error_route(r) {
            return e;
        }
        let p = r.path.as_str();
        match (r.method.as_str(), p) {
            ("GET", "/ok/catalog/gpus?include=AVAILABILITY&product=POD") => {
                reply(200, fixture(K, "catalog_gpus.json"))
            }
            ("POST", "/ok/pods") => reply(201, fixture(K, "pod_provisioning.json")),
            ("GET", "/ok/pods") => reply(200, fixture(K, "pods.json")),
            ("GET", "/ok/pods/7h9k2m4n6p") => json(200, &fixture_json(K, "pods.json")["pods"][0]),
            ("DELETE", "/ok/pods/7h9k2m4n6p") => reply(204, ""),
            ("POST", "/full/pods") => reply(400, fixture(K, "no_capacity.json")),
            ("POST", "/flaky/pods") => {
                let mut c = created.lock().unwrap();
                let id = format!("flaky{}", c.len());
                c.push(json!({"id": id, "name": r.body["name"], "status": "PROVISIONING"}));
                reply(502, "Bad Gateway")
            }
            ("GET", "/flaky/pods") => json(200, &json!({"pods": *created.lock().unwrap()})),
            // A model pod: created as asked, then listed running with its ports.
            ("POST", "/model/pods") => json(
                201,
                &json!({"id": "m0d3lp0d", "name": r.body["name"], "status": "PROVISIONING",
                    "image": r.body["image"], "ports": r.body["ports"]}),
            ),
            ("GET", "/model/pods/m0d3lp0d") => json(
                200,
                &json!({"id": "m0d3lp0d", "name": "rnt_model", "status": "RUNNING",
                    "image": "vllm/vllm-openai:latest", "ports": ["8000/http", "22/tcp"]}),
            ),
            _ => reply(404, r#"{"title":"Not Found","status":404}"#),
        }
    }))
    .await
}

fn create() -> CreateInstance {
    CreateInstance {
        offer_id: OFFER.into(),
        label: "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD".into(),
        image: None,
        model: None,
        ssh_public_key: Some("ssh-ed25519 AAAAC3Nza user@host".into()),
        env: [("HF_HOME".to_string(), "/workspace/hf".to_string())].into(),
        gpu_count: 1,
    }
}

#[tokio::test]
async fn offers_are_per_gpu_prices_times_count() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let offers = p.list_offers().await.unwrap();
    let got: Vec<(&str, &str, u32, i64, &str, u32)> = offers
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.gpu.as_str(),
                o.gpu_count,
                o.price_per_hour.micros(),
                o.region.as_str(),
                o.available,
            )
        })
        .collect();
    // By hand: 4090 secure $0.69/GPU x 1,2,4,8 (max 8) in US-KS-2 (EU-RO-1 has none);
    // community $0.34 x 1,2 (max 2); H100 secure $2.99 x 1,2,4,8 in US-GA-1 (LOW);
    // the A40 has no stock anywhere.
    assert_eq!(
        got,
        vec![
            (
                "SECURE~1~US-KS-2~NVIDIA_GeForce_RTX_4090",
                "RTX 4090",
                1,
                690_000,
                "US-KS-2",
                3
            ),
            (OFFER, "RTX 4090", 2, 1_380_000, "US-KS-2", 3),
            (
                "SECURE~4~US-KS-2~NVIDIA_GeForce_RTX_4090",
                "RTX 4090",
                4,
                2_760_000,
                "US-KS-2",
                3
            ),
            (
                "SECURE~8~US-KS-2~NVIDIA_GeForce_RTX_4090",
                "RTX 4090",
                8,
                5_520_000,
                "US-KS-2",
                3
            ),
            (
                "COMMUNITY~1~US-KS-2~NVIDIA_GeForce_RTX_4090",
                "RTX 4090",
                1,
                340_000,
                "US-KS-2",
                3
            ),
            (
                "COMMUNITY~2~US-KS-2~NVIDIA_GeForce_RTX_4090",
                "RTX 4090",
                2,
                680_000,
                "US-KS-2",
                3
            ),
            (
                "SECURE~1~US-GA-1~NVIDIA_H100_80GB_HBM3",
                "H100 SXM",
                1,
                2_990_000,
                "US-GA-1",
                1
            ),
            (
                "SECURE~2~US-GA-1~NVIDIA_H100_80GB_HBM3",
                "H100 SXM",
                2,
                5_980_000,
                "US-GA-1",
                1
            ),
            (
                "SECURE~4~US-GA-1~NVIDIA_H100_80GB_HBM3",
                "H100 SXM",
                4,
                11_960_000,
                "US-GA-1",
                1
            ),
            (
                "SECURE~8~US-GA-1~NVIDIA_H100_80GB_HBM3",
                "H100 SXM",
                8,
                23_920_000,
                "US-GA-1",
                1
            ),
        ]
    );
    assert!(offers.iter().all(|o| !o.interruptible));
    assert_eq!(offers[0].vram_gb, 24);
}

#[tokio::test]
async fn rent_status_list_terminate() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let i = p.create_instance(&create()).await.unwrap();
    assert_eq!(
        (i.id.as_str(), i.state, i.ssh.clone()),
        ("7h9k2m4n6p", InstanceState::Provisioning, None)
    );
    let body = &m.requests("POST", "/ok/pods")[0].body;
    assert_eq!(body["name"], "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD");
    assert_eq!(
        body["gpu"],
        json!({"id": "NVIDIA GeForce RTX 4090", "count": 2})
    );
    assert_eq!(
        (body["cloud"].as_str(), body["dataCenterIds"][0].as_str()),
        (Some("SECURE"), Some("US-KS-2"))
    );
    assert_eq!(body["env"]["PUBLIC_KEY"], "ssh-ed25519 AAAAC3Nza user@host");
    assert_eq!(body["env"]["HF_HOME"], "/workspace/hf");
    assert_eq!(body["image"], spotd::providers::runpod::DEFAULT_IMAGE);

    let got = p.get_instance("7h9k2m4n6p").await.unwrap().unwrap();
    assert_eq!(got.state, InstanceState::Running);
    assert_eq!(
        got.ssh,
        Some(Ssh {
            host: "195.26.233.3".into(),
            port: 34446,
            user: "root".into()
        })
    );
    assert_eq!(p.get_instance("nope").await.unwrap(), None);
    let all = p.list_instances().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].label, "someone-elses-notebook");
    assert_eq!(all[1].state, InstanceState::Failed);
    assert_eq!(
        p.terminate("7h9k2m4n6p").await.unwrap().unwrap().state,
        InstanceState::Terminated
    );
    assert_eq!(p.terminate("nope").await.unwrap(), None);
}

#[tokio::test]
async fn no_capacity_500_adoption_and_error_paths() {
    let m = mock().await;
    let full = provider(format!("{}/full", m.base), Duration::from_secs(5));
    assert_eq!(
        full.create_instance(&create()).await,
        Err(ProviderError::NoCapacity)
    );
    let flaky = provider(format!("{}/flaky", m.base), Duration::from_secs(5));
    assert_eq!(
        rent_like_spotd(&*flaky, &create()).await.as_deref(),
        Some("flaky0")
    );
    assert_eq!(m.requests("POST", "/flaky/pods").len(), 1);
    check_error_paths(&m, provider, create()).await;
}

/// A cold model's pod: vLLM's image and arguments, port 8000 behind RunPod's HTTPS
/// proxy, the endpoint `https://{pod}-8000.proxy.runpod.net/v1` once it runs.
#[tokio::test]
async fn a_model_pod_runs_vllm_behind_the_https_proxy() {
    let m = mock().await;
    let p = provider(format!("{}/model", m.base), Duration::from_secs(5));
    let mut req = create();
    req.model = Some("acme/tiny-chat".into());
    req.ssh_public_key = None;
    req.env
        .insert("VLLM_API_KEY".into(), "deployment-key".into());
    let i = p.create_instance(&req).await.unwrap();
    assert_eq!(i.id, "m0d3lp0d");
    assert_eq!(i.state, InstanceState::Provisioning);
    assert_eq!(i.endpoint, None, "no endpoint before it runs");
    let body = &m.requests("POST", "/model/pods")[0].body;
    assert_eq!(body["image"], "vllm/vllm-openai:latest");
    assert_eq!(
        body["args"], "--model acme/tiny-chat --port 8000 --tensor-parallel-size 2",
        "one shard per GPU of the offer (2 x RTX 4090)"
    );
    assert_eq!(body["ports"], json!(["8000/http", "22/tcp"]));
    assert_eq!(body["env"]["VLLM_API_KEY"], "deployment-key");
    let running = p.get_instance("m0d3lp0d").await.unwrap().unwrap();
    assert_eq!(running.state, InstanceState::Running);
    assert_eq!(
        running.endpoint.as_deref(),
        Some("https://m0d3lp0d-8000.proxy.runpod.net/v1")
    );
    // A pod without the model port (a plain rental) has no endpoint.
    let plain = p_ok(&m).await;
    assert_eq!(plain.endpoint, None);
}

async fn p_ok(m: &Mock) -> spotd::providers::Instance {
    provider(format!("{}/ok", m.base), Duration::from_secs(5))
        .get_instance("7h9k2m4n6p")
        .await
        .unwrap()
        .unwrap()
}
