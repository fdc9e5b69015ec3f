//! The Vast.ai adapter against a loopback mock serving recorded-style responses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::providers_mock::*;
use serde_json::{json, Value};
use spotd::http_client::HttpClient;
use spotd::model::Ssh;
use spotd::providers::vastai::VastProvider;
use spotd::providers::{CreateInstance, InstanceState, Provider, ProviderError};

const K: &str = "vastai";

fn provider(base: String, timeout: Duration) -> Arc<dyn Provider> {
    Arc::new(VastProvider::new(
        "vast",
        Some(&base),
        Some("vast-test-key".into()),
        HttpClient::new(timeout),
    ))
}

/// Vast's rule for `PUT /asks/{ask}/`: with `price` an interruptible (bid) instance at
/// that price; without it, on demand at the ask's full `dph_total`, whatever offer the
/// caller had in mind (vast-cli PR #403: the API "silently provisions on-demand").
fn rent_like_vast(ask: &str, body: &Value, id: u64) -> Option<Value> {
    let bundles = fixture_json(K, "bundles.json");
    let o = bundles["offers"]
        .as_array()?
        .iter()
        .find(|o| o["id"].to_string().as_str() == ask)?
        .clone();
    let (is_bid, dph) = match body.get("price") {
        Some(p) => (true, p.clone()),
        None => (false, o["dph_total"].clone()),
    };
    Some(
        json!({"id": id, "ask_id": o["id"], "actual_status": "loading", "label": body["label"],
        "num_gpus": o["num_gpus"], "gpu_name": o["gpu_name"], "is_bid": is_bid,
        "dph_base": dph, "dph_total": dph, "min_bid": o["min_bid"]}),
    )
}

/// A stateful mock: `/ok` serves the fixtures; `/flaky` answers 500 to a create
/// although it records the instance; `/full` has no capacity. `/market` rents as Vast
/// does ([`rent_like_vast`]); `/lossy` is the same market behind a client that drops
/// `price` from the create (the mistake vast-cli PR #403 warns of).
async fn mock() -> Mock {
    let created: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let market: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    start(Arc::new(move |r: &Req| {
        if let Some(e) = error_route(r) {
            return e;
        }
        let p = r.path.as_str();
        for prefix in ["/market", "/lossy"] {
            let Some(rest) = p.strip_prefix(prefix) else {
                continue;
            };
            let mut list = market.lock().unwrap();
            return match (r.method.as_str(), rest) {
                ("PUT", _) if rest.starts_with("/asks/") => {
                    let ask = rest.trim_start_matches("/asks/").trim_end_matches('/');
                    let mut body = r.body.clone();
                    if prefix == "/lossy" {
                        body.as_object_mut().unwrap().remove("price");
                    }
                    let id = 8_000_000 + list.len() as u64;
                    match rent_like_vast(ask, &body, id) {
                        Some(i) => {
                            list.push(i);
                            json(200, &json!({"success": true, "new_contract": id}))
                        }
                        None => reply(404, fixture(K, "no_such_ask.json")),
                    }
                }
                ("GET", "/instances/?owner=me") => json(200, &json!({"instances": *list})),
                ("DELETE", _) if rest.starts_with("/instances/") => {
                    let id = rest.trim_start_matches("/instances/").trim_end_matches('/');
                    let before = list.len();
                    list.retain(|i| i["id"].to_string().as_str() != id);
                    if list.len() == before {
                        reply(404, r#"{"success":false,"error":"no_such_instance"}"#)
                    } else {
                        json(200, &json!({"success": true}))
                    }
                }
                _ => reply(404, r#"{"success":false}"#),
            };
        }
        match (r.method.as_str(), p) {
            ("POST", "/ok/bundles/") => reply(200, fixture(K, "bundles.json")),
            ("POST", "/ok/ssh/") => reply(200, r#"{"success":true,"key":{"id":1}}"#),
            ("PUT", "/ok/asks/12345678/") => reply(200, fixture(K, "create.json")),
            ("GET", "/ok/instances/?owner=me") => reply(200, fixture(K, "instances.json")),
            ("GET", "/ok/instances/7835610/?owner=me") => {
                let v = fixture_json(K, "instances.json");
                json(200, &json!({"instances": v["instances"][0]}))
            }
            ("GET", "/ok/instances/7835777/?owner=me") => {
                let v = fixture_json(K, "instances.json");
                json(200, &json!({"instances": v["instances"][1]}))
            }
            ("GET", _) if p.starts_with("/ok/instances/") => reply(200, r#"{"instances":null}"#),
            ("DELETE", "/ok/instances/7835610/") => reply(200, fixture(K, "destroy.json")),
            ("DELETE", _) if p.starts_with("/ok/instances/") => reply(404, "{}"),
            ("PUT", _) if p.starts_with("/full/asks/") => {
                reply(404, fixture(K, "no_such_ask.json"))
            }
            ("PUT", _) if p.starts_with("/flaky/asks/") => {
                let mut c = created.lock().unwrap();
                let id = 9_000_000 + c.len() as u64;
                c.push(json!({"id": id, "actual_status": null, "label": r.body["label"]}));
                reply(500, "<html>Internal Server Error</html>")
            }
            ("GET", "/flaky/instances/?owner=me") => {
                json(200, &json!({"instances": *created.lock().unwrap()}))
            }
            _ => reply(404, r#"{"success":false}"#),
        }
    }))
    .await
}

fn create(offer: &str) -> CreateInstance {
    CreateInstance {
        offer_id: offer.into(),
        label: "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD".into(),
        image: Some("pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime".into()),
        model: None,
        ssh_public_key: Some("ssh-ed25519 AAAAC3Nza user@host".into()),
        env: [("HF_HOME".to_string(), "/workspace/hf".to_string())].into(),
        gpu_count: 1,
    }
}

#[tokio::test]
async fn offers_are_normalized_with_exact_prices() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let offers = p.list_offers().await.unwrap();
    let got: Vec<(&str, &str, u32, u32, i64, bool, &str)> = offers
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.gpu.as_str(),
                o.gpu_count,
                o.vram_gb,
                o.price_per_hour.micros(),
                o.interruptible,
                o.region.as_str(),
            )
        })
        .collect();
    // By hand: dph_total 0.2410 -> $0.241; min_bid 0.12 -> $0.12 bid;
    // 16.80740740740741 rounds up to $16.807408; min_bid 12.5; 1.6 (no bid);
    // the ask without a gpu_name is skipped. 24564 MB -> 24 GB, 81559 -> 80, 40960 -> 40.
    assert_eq!(
        got,
        vec![
            ("12345678", "RTX 4090", 1, 24, 241_000, false, "US"),
            (
                "12345678-bid-120000",
                "RTX 4090",
                1,
                24,
                120_000,
                true,
                "US"
            ),
            ("23456789", "H100 SXM", 8, 80, 16_807_408, false, "JP"),
            (
                "23456789-bid-12500000",
                "H100 SXM",
                8,
                80,
                12_500_000,
                true,
                "JP"
            ),
            ("34567890", "A100 80GB", 2, 40, 1_600_000, false, "CA"),
        ]
    );
    assert_eq!(
        offers[1].on_demand_price_per_hour.unwrap().micros(),
        241_000
    );
    assert_eq!(offers[0].reliability, 0.995);
    assert_eq!(offers[4].reliability, 0.97);
    assert_eq!((offers[2].vcpus, offers[2].disk_gb), (192, 1850));
    let body = &m.requests("POST", "/ok/bundles/")[0].body;
    assert_eq!(body["rentable"], json!({"eq": true}));
    assert_eq!(
        m.requests("POST", "/ok/bundles/")[0].auth.as_deref(),
        Some("Bearer vast-test-key")
    );
}

#[tokio::test]
async fn rent_status_list_terminate() {
    let m = mock().await;
    let p = provider(format!("{}/ok", m.base), Duration::from_secs(5));
    let i = p.create_instance(&create("12345678")).await.unwrap();
    assert_eq!(
        (i.id.as_str(), i.state),
        ("7835610", InstanceState::Provisioning)
    );
    assert_eq!(i.label, "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD");
    // The key went to the account, the rest to the instance; on demand has no price.
    assert_eq!(
        m.requests("POST", "/ok/ssh/")[0].body["ssh_key"],
        "ssh-ed25519 AAAAC3Nza user@host"
    );
    let put = &m.requests("PUT", "/ok/asks/")[0].body;
    assert_eq!(put["label"], "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD");
    assert_eq!(
        put["image"],
        "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
    );
    assert_eq!(put["env"], json!({"HF_HOME": "/workspace/hf"}));
    assert!(put.get("price").is_none());

    let got = p.get_instance("7835610").await.unwrap().unwrap();
    assert_eq!(got.state, InstanceState::Running);
    assert_eq!(
        got.ssh,
        Some(Ssh {
            host: "ssh2281.vast.ai".into(),
            port: 10882,
            user: "root".into()
        })
    );
    // Outbid: stopped bid -> a preemption; no SSH while not running.
    let outbid = p.get_instance("7835777").await.unwrap().unwrap();
    assert_eq!(
        (outbid.state, outbid.ssh),
        (InstanceState::Interrupted, None)
    );
    assert_eq!(p.get_instance("1").await.unwrap(), None);

    let all = p.list_instances().await.unwrap();
    let labels: Vec<&str> = all.iter().map(|i| i.label.as_str()).collect();
    assert_eq!(
        labels,
        vec![
            "rnt_01J9Z8Q4W6X2V7T3B5N1M0K8HD",
            "rnt_01J9Z8R0000000000000000000",
            ""
        ]
    );
    assert_eq!(all[2].state, InstanceState::Provisioning);

    let t = p.terminate("7835610").await.unwrap().unwrap();
    assert_eq!(t.state, InstanceState::Terminated);
    assert_eq!(p.terminate("42").await.unwrap(), None);
}

#[tokio::test]
async fn a_bid_rents_at_the_quoted_price() {
    let m = mock().await;
    let p = provider(format!("{}/flaky", m.base), Duration::from_secs(5));
    let _ = p.create_instance(&create("23456789-bid-12500000")).await;
    let put = &m.requests("PUT", "/flaky/asks/23456789/")[0].body;
    assert_eq!(put["price"].to_string(), "12.5");
    assert!(matches!(
        p.create_instance(&create("nonsense")).await,
        Err(ProviderError::Rejected(_))
    ));
}

#[tokio::test]
async fn no_capacity_and_error_paths() {
    let m = mock().await;
    let full = provider(format!("{}/full", m.base), Duration::from_secs(5));
    assert_eq!(
        full.create_instance(&create("12345678")).await,
        Err(ProviderError::NoCapacity)
    );
    check_error_paths(&m, provider, create("12345678")).await;
}

#[tokio::test]
async fn a_500_on_create_that_created_is_adopted_not_recreated() {
    let m = mock().await;
    let p = provider(format!("{}/flaky", m.base), Duration::from_secs(5));
    let c = create("12345678");
    assert!(matches!(
        p.create_instance(&c).await,
        Err(ProviderError::Unavailable(_))
    ));
    // The rent path lists, finds the label, adopts: still exactly one create.
    let m2 = mock().await;
    let p2 = provider(format!("{}/flaky", m2.base), Duration::from_secs(5));
    assert_eq!(rent_like_spotd(&*p2, &c).await.as_deref(), Some("9000000"));
    assert_eq!(m2.requests("PUT", "/flaky/asks/").len(), 1);
}

#[tokio::test]
async fn a_bid_offer_is_created_as_a_bid_and_checked() {
    let m = mock().await;
    let p = provider(format!("{}/market", m.base), Duration::from_secs(5));
    let i = p
        .create_instance(&create("12345678-bid-120000"))
        .await
        .expect("a bid at min_bid is rented as a bid");
    assert_eq!(i.state, InstanceState::Provisioning);
    let put = &m.requests("PUT", "/market/asks/12345678/")[0].body;
    assert_eq!(
        put["price"].to_string(),
        "0.12",
        "the bid goes out explicitly"
    );
    // Read back: the instance is a bid at the bid price, and it is kept.
    assert_eq!(m.requests("GET", "/market/instances/?owner=me").len(), 1);
    assert!(m.requests("DELETE", "/market/instances/").is_empty());
    // On demand is created without a price and is on demand.
    p.create_instance(&create("12345678")).await.unwrap();
    let put = &m.requests("PUT", "/market/asks/12345678/")[1].body;
    assert!(put.get("price").is_none());
    assert!(m.requests("DELETE", "/market/instances/").is_empty());
    assert_eq!(p.list_instances().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_bid_rented_on_demand_is_refused_and_destroyed() {
    let m = mock().await;
    let p = provider(format!("{}/lossy", m.base), Duration::from_secs(5));
    // The market rents a bid-less create of a bid offer on demand at the full price...
    let err = p
        .create_instance(&create("12345678-bid-120000"))
        .await
        .expect_err("an on-demand instance for a bid is not what was rented");
    let ProviderError::Rejected(msg) = err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("on demand at $0.241/h"), "{msg}");
    assert!(msg.contains("bid $0.12/h"), "{msg}");
    assert!(msg.contains("destroyed"), "{msg}");
    // ...and spotd destroyed it: nothing is left running on the account.
    let deletes = m.requests("DELETE", "/lossy/instances/");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, "/lossy/instances/8000000/");
    assert!(p.list_instances().await.unwrap().is_empty());
}
