//! The Lambda Cloud adapter against a loopback mock serving recorded-style responses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::providers_mock::*;
use serde_json::{json, Value};
use spotd::http_client::HttpClient;
use spotd::model::Ssh;
use spotd::providers::lambda::{key_name, LambdaProvider};
use spotd::providers::{CreateInstance, InstanceState, Provider, ProviderError};

const K: &str = "lambda";
const ID: &str = "0920582c7ff041399e34823a0be62549";

fn provider(base: String, timeout: Duration) -> Arc<dyn Provider> {
    Arc::new(LambdaProvider::with_launch_interval(
        "lambda",
        Some(&base),
        Some("lambda-test-key".into()),
        HttpClient::new(timeout),
        Duration::from_millis(1),
    ))
}

async fn mock() -> Mock {
    let created: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    start(Arc::new(move |r: &Req| {
        if let Some(e) = error_route(r) {
            return e;
        }
        let p = r.path.as_str();
        let base = p.split('/').nth(1).unwrap_or("");
        let rest = &p[base.len() + 1..];
        match (r.method.as_str(), rest) {
            ("GET", "/instance-types") => reply(200, fixture(K, "instance_types.json")),
            ("GET", "/ssh-keys") => reply(200, fixture(K, "ssh_keys.json")),
            ("POST", "/ssh-keys") => json(200, &json!({"data": {"id": "k2", "name": r.body["name"], "public_key": r.body["public_key"]}})),
            ("POST", "/instance-operations/launch") if base == "full" => {
                reply(400, fixture(K, "insufficient_capacity.json"))
            }
            ("POST", "/instance-operations/launch") if base == "flaky" => {
                let mut c = created.lock().unwrap();
                let id = format!("flaky{}", c.len());
                c.push(json!({"id": id, "name": r.body["name"], "status": "booting"}));
                reply(500, r#"{"error":{"code":"global/unknown","message":"Unknown error"}}"#)
            }
            ("POST", "/instance-operations/launch") => reply(200, fixture(K, "launch.json")),
            ("GET", "/instances") if base == "flaky" => json(200, &json!({"data": *created.lock().unwrap()})),
            ("GET", "/instances") => reply(200, fixture(K, "instances.json")),
            ("GET", x) if x == format!("/instances/{ID}") => {
                json(200, &json!({"data": fixture_json(K, "instances.json")["data"][0]}))
            }
            ("POST", "/instance-operations/terminate") if r.body["instance_ids"][0] == ID => {
                let mut i = fixture_json(K, "instances.json")["data"][0].clone();
                i["status"] = json!("terminating");
                json(200, &json!({"data": {"terminated_instances": [i]}}))
            }
            _ => reply(404, fixture(K, "not_found.json")),
        }
    }))
    .await
}

fn create(key: Option<&str>) -> CreateInstance {
    CreateInstance {
        offer_id: "gpu_1x_h100_pcie@us-east-1".into(),
        label: "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD".into(),
        ssh_public_key: key.map(str::to_string),
        ..CreateInstance::default()
    }
}

#[tokio::test]
async fn offers_are_whole_machine_cents() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let mut offers = p.list_offers().await.unwrap();
    offers.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<(&str, &str, u32, u32, i64, &str)> = offers
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.gpu.as_str(),
                o.gpu_count,
                o.vram_gb,
                o.price_per_hour.micros(),
                o.region.as_str(),
            )
        })
        .collect();
    // By hand: 249 cents -> $2.49; 1436 cents -> $14.36 for the whole 8-GPU machine,
    // once per region with capacity; the A10 has no region with capacity.
    assert_eq!(
        got,
        vec![
            (
                "gpu_1x_h100_pcie@us-east-1",
                "H100 PCIe",
                1,
                80,
                2_490_000,
                "us-east-1"
            ),
            (
                "gpu_8x_a100_80gb_sxm4@us-east-1",
                "A100 80GB",
                8,
                80,
                14_360_000,
                "us-east-1"
            ),
            (
                "gpu_8x_a100_80gb_sxm4@us-west-2",
                "A100 80GB",
                8,
                80,
                14_360_000,
                "us-west-2"
            ),
        ]
    );
    assert!(offers.iter().all(|o| !o.interruptible));
    assert_eq!(
        (offers[0].vcpus, offers[0].ram_gb, offers[0].disk_gb),
        (26, 200, 1024)
    );
}

#[tokio::test]
async fn rent_registers_the_key_then_launches_with_its_name() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let pk = "ssh-ed25519 AAAAC3Nza user@host";
    let i = p.create_instance(&create(Some(pk))).await.unwrap();
    assert_eq!((i.id.as_str(), i.state), (ID, InstanceState::Provisioning));
    assert_eq!(
        m.requests("POST", "/ok/ssh-keys")[0].body["name"],
        key_name(pk)
    );
    let launch = &m.requests("POST", "/ok/instance-operations/launch")[0].body;
    assert_eq!(launch["ssh_key_names"], json!([key_name(pk)]));
    assert_eq!(launch["name"], "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD");
    assert_eq!(
        (
            launch["region_name"].as_str(),
            launch["instance_type_name"].as_str()
        ),
        (Some("us-east-1"), Some("gpu_1x_h100_pcie"))
    );
    // Without a key: the account's existing key; image/env are refused, not dropped.
    p.create_instance(&create(None)).await.unwrap();
    assert_eq!(
        m.requests("POST", "/ok/instance-operations/launch")[1].body["ssh_key_names"],
        json!(["laptop"])
    );
    let mut with_image = create(None);
    with_image.image = Some("pytorch/pytorch".into());
    assert!(matches!(
        p.create_instance(&with_image).await,
        Err(ProviderError::Rejected(_))
    ));

    let got = p.get_instance(ID).await.unwrap().unwrap();
    assert_eq!(
        got.ssh,
        Some(Ssh {
            host: "129.146.33.108".into(),
            port: 22,
            user: "ubuntu".into()
        })
    );
    assert_eq!(p.get_instance("missing").await.unwrap(), None);
    let all = p.list_instances().await.unwrap();
    assert_eq!(
        (all[1].label.as_str(), all[1].state, all[1].ssh.clone()),
        ("training-node-1", InstanceState::Provisioning, None)
    );
    assert_eq!(
        p.terminate(ID).await.unwrap().unwrap().state,
        InstanceState::Terminating
    );
    assert_eq!(p.terminate("missing").await.unwrap(), None);
}

#[tokio::test]
async fn launches_wait_for_their_own_quota() {
    let m = mock().await;
    let p = LambdaProvider::new(
        "lambda",
        Some(&format!("{}/ok", m.base)),
        None,
        HttpClient::new(Duration::from_secs(5)),
    );
    p.create_instance(&create(None)).await.unwrap();
    let second =
        tokio::time::timeout(Duration::from_millis(300), p.create_instance(&create(None))).await;
    assert!(
        second.is_err(),
        "a second launch within 12 s was not held back"
    );
    assert_eq!(
        m.requests("POST", "/ok/instance-operations/launch").len(),
        1
    );
}

#[tokio::test]
async fn no_capacity_500_adoption_and_error_paths() {
    let m = mock().await;
    let full = provider(format!("{}/full", m.base), Duration::from_secs(5));
    assert_eq!(
        full.create_instance(&create(None)).await,
        Err(ProviderError::NoCapacity)
    );
    let flaky = provider(format!("{}/flaky", m.base), Duration::from_secs(5));
    assert_eq!(
        rent_like_spotd(&*flaky, &create(None)).await.as_deref(),
        Some("flaky0")
    );
    assert_eq!(
        m.requests("POST", "/flaky/instance-operations/launch")
            .len(),
        1
    );
    check_error_paths(&m, provider, create(None)).await;
}
