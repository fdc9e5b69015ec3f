//! The sandbox clouds over real HTTP on 127.0.0.1, with a manual clock.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::clock::parse_rfc3339;
use crate::http_client::{HttpClient, HttpResponse};
use crate::money::Usd;
use crate::providers::protocol::{
    CreateInstance, ErrorBody, Instance, InstanceState, InstancesResponse, OffersResponse,
    ProviderOffer,
};

const T0: Millis = 1_800_000_000_000;

async fn boot(cfg: &config::Sandbox, dir: &Path, clock: &Clock) -> SandboxHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start(l, cfg.clone(), dir, clock.clone()).await.unwrap()
}

fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(10))
}

async fn offers(c: &HttpClient, h: &SandboxHandle, cloud: &str) -> Vec<ProviderOffer> {
    let r = c
        .get(&format!("{}/offers", h.cloud_base_url(cloud)), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    r.json::<OffersResponse>().unwrap().offers
}

async fn create(
    c: &HttpClient,
    h: &SandboxHandle,
    cloud: &str,
    offer: &str,
    model: Option<&str>,
) -> HttpResponse {
    let req = CreateInstance {
        offer_id: offer.into(),
        label: "rnt_test".into(),
        model: model.map(String::from),
        ..Default::default()
    };
    c.post_json(
        &format!("{}/instances", h.cloud_base_url(cloud)),
        None,
        &req,
    )
    .await
    .unwrap()
}

async fn get(c: &HttpClient, h: &SandboxHandle, cloud: &str, id: &str) -> Instance {
    let r = c
        .get(&format!("{}/instances/{id}", h.cloud_base_url(cloud)), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    r.json().unwrap()
}

/// The first offer of `cloud` matching `f`, as the fixture lists it.
fn fixture_offer(cloud: &str, f: impl Fn(&ProviderOffer) -> bool) -> ProviderOffer {
    let cats = catalog::load().unwrap();
    let cat = cats.iter().find(|c| c.name == cloud).unwrap();
    cat.offers.iter().find(|o| f(o)).unwrap().clone()
}

#[tokio::test]
async fn index_lists_clouds_and_all_offers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let c = client();
    let idx: Value = c
        .get(&format!("http://{}/", h.addr), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(idx["clouds"], json!(cloud_names()));
    assert_eq!(idx["hosted"]["base_url"], json!(h.hosted_base_url));
    let mut total = 0;
    for cloud in &h.clouds {
        total += offers(&c, &h, cloud).await.len();
    }
    assert!(total >= 500, "{total}");
    // A trailing slash on the base URL is tolerated; unknown routes are 404 JSON.
    let r = c
        .get(&format!("http://{}/nimbus//offers", h.addr), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    for url in ["nowhere/offers", "nimbus/nothing", "nimbus/instances/x/y"] {
        let r = c
            .get(&format!("http://{}/{url}", h.addr), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{url}");
        assert!(r.json::<ErrorBody>().is_ok());
    }
    h.shutdown().await;
}

#[tokio::test]
async fn drift_is_bounded_deterministic_and_spares_on_demand() {
    let cfg = config::Sandbox {
        price_drift: 0.05,
        ..Default::default()
    };
    let clock = Clock::manual(T0);
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = boot(&cfg, d1.path(), &clock).await;
    let b = boot(&cfg, d2.path(), &clock).await;
    let other = boot(
        &config::Sandbox {
            seed: 7,
            ..cfg.clone()
        },
        d3.path(),
        &clock,
    )
    .await;
    let c = client();
    let fixture = catalog::load().unwrap();
    let base = &fixture.iter().find(|c| c.name == "strato").unwrap().offers;
    let mut last = Vec::new();
    for _ in 0..40 {
        let pa = offers(&c, &a, "strato").await;
        let pb = offers(&c, &b, "strato").await;
        assert_eq!(pa, pb, "same seed, same prices");
        for (o, f) in pa.iter().zip(base) {
            assert_eq!(o.id, f.id);
            assert!(o.price_per_hour >= Usd(f.price_per_hour.micros() / 2));
            assert!(o.price_per_hour <= Usd(f.price_per_hour.micros() * 2));
            assert_eq!(o.on_demand_price_per_hour, f.on_demand_price_per_hour);
            if !f.interruptible {
                assert_eq!(o.price_per_hour, f.price_per_hour, "{}", o.id);
            }
        }
        last = pa;
    }
    let moved = last
        .iter()
        .zip(base)
        .filter(|(o, f)| o.price_per_hour != f.price_per_hour)
        .count();
    assert!(moved > base.len() / 2, "only {moved} prices moved");
    let mut po = Vec::new();
    for _ in 0..40 {
        po = offers(&c, &other, "strato").await;
    }
    assert_ne!(po, last, "another seed drifts differently");
    for h in [a, b, other] {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn lifecycle_capacity_and_idempotent_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let c = client();
    let o = fixture_offer("nimbus", |o| o.available >= 2);
    let mut ids = Vec::new();
    for _ in 0..o.available {
        let r = create(&c, &h, "nimbus", &o.id, None).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let i: Instance = r.json().unwrap();
        assert_eq!(i.state, InstanceState::Provisioning);
        assert_eq!(
            (i.label.as_str(), i.endpoint.clone(), i.ssh.clone()),
            ("rnt_test", None, None)
        );
        ids.push(i.id);
    }
    assert_eq!(ids[0], "nimbus-000001");
    let r = create(&c, &h, "nimbus", &o.id, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json::<ErrorBody>().unwrap().error, "no_capacity");
    let left =
        |list: Vec<ProviderOffer>| list.into_iter().find(|x| x.id == o.id).unwrap().available;
    assert_eq!(left(offers(&c, &h, "nimbus").await), 0);

    clock.advance(19_999);
    assert_eq!(
        get(&c, &h, "nimbus", &ids[0]).await.state,
        InstanceState::Provisioning
    );
    clock.advance(1);
    assert_eq!(
        get(&c, &h, "nimbus", &ids[0]).await.state,
        InstanceState::Running
    );

    let url = format!("{}/instances/{}", h.cloud_base_url("nimbus"), ids[0]);
    let del: Instance = c.delete(&url, None).await.unwrap().json().unwrap();
    assert_eq!(del.state, InstanceState::Terminating);
    // Still holds its machine while terminating.
    assert_eq!(left(offers(&c, &h, "nimbus").await), 0);
    clock.advance(1_000);
    let gone = get(&c, &h, "nimbus", &ids[0]).await;
    assert_eq!(gone.state, InstanceState::Terminated);
    assert_eq!(
        gone.ended_at.as_deref().and_then(parse_rfc3339),
        Some(T0 + 21_000)
    );
    assert_eq!(left(offers(&c, &h, "nimbus").await), 1);
    // Deleting again answers the same terminated instance.
    let again = c.delete(&url, None).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json::<Instance>().unwrap(), gone);
    assert_eq!(
        create(&c, &h, "nimbus", &o.id, None).await.status,
        StatusCode::CREATED
    );

    let list: InstancesResponse = c
        .get(&format!("{}/instances", h.cloud_base_url("nimbus")), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list.instances.len(), ids.len() + 1);
    assert_eq!(list.instances[0], gone);
    // Other clouds do not see them.
    let other: InstancesResponse = c
        .get(&format!("{}/instances", h.cloud_base_url("strato")), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(other.instances.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let c = client();
    let base = h.cloud_base_url("cumulus");
    let r = c
        .send(
            hyper::Method::POST,
            &format!("{base}/instances"),
            None,
            &[],
            Some(b"{nope".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = create(&c, &h, "cumulus", "no-such-offer", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .delete(&format!("{base}/instances/cumulus-000009"), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .get(&format!("{base}/instances/cumulus-000009"), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c.delete(&format!("{base}/offers"), None).await.unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = c
        .send(
            hyper::Method::POST,
            &format!("{base}/instances"),
            None,
            &[],
            Some(big),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let list: InstancesResponse = c
        .get(&format!("{base}/instances"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(list.instances.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn preemption_is_seeded_and_spares_on_demand() {
    let cfg = config::Sandbox {
        preemptions_per_hour: 60.0,
        ..Default::default()
    };
    let spot = fixture_offer("cumulus", |o| o.interruptible);
    let od = fixture_offer("cumulus", |o| !o.interruptible);
    let mut ends = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let h = boot(&cfg, dir.path(), &clock).await;
        let c = client();
        let a: Instance = create(&c, &h, "cumulus", &spot.id, None)
            .await
            .json()
            .unwrap();
        let b: Instance = create(&c, &h, "cumulus", &od.id, None)
            .await
            .json()
            .unwrap();
        clock.advance(20_000);
        assert_eq!(
            get(&c, &h, "cumulus", &b.id).await.state,
            InstanceState::Running
        );
        // At 60 preemptions an hour, a day is far past any plausible draw.
        clock.advance(86_400_000);
        let a = get(&c, &h, "cumulus", &a.id).await;
        assert_eq!(a.state, InstanceState::Interrupted);
        let ended = a.ended_at.as_deref().and_then(parse_rfc3339).unwrap();
        assert!((T0 + 20_000..T0 + 20_000 + 86_400_000).contains(&ended));
        ends.push(ended);
        assert_eq!(
            get(&c, &h, "cumulus", &b.id).await.state,
            InstanceState::Running
        );
        h.shutdown().await;
    }
    assert_eq!(ends[0], ends[1], "same seed, same preemption time");
}

#[tokio::test]
async fn control_endpoints_preempt_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let c = client();
    let base = h.cloud_base_url("strato");
    let od = fixture_offer("strato", |o| !o.interruptible);
    let i: Instance = create(&c, &h, "strato", &od.id, None).await.json().unwrap();
    clock.advance(30_000);
    let r = c
        .send(
            hyper::Method::POST,
            &format!("{base}/_control/preempt/{}", i.id),
            None,
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let got = get(&c, &h, "strato", &i.id).await;
    assert_eq!(got.state, InstanceState::Interrupted);
    assert_eq!(
        got.ended_at.as_deref().and_then(parse_rfc3339),
        Some(T0 + 30_000)
    );
    let r = c
        .send(
            hyper::Method::POST,
            &format!("{base}/_control/preempt/{}", i.id),
            None,
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);

    let fail_url = format!("{base}/_control/fail");
    let fail = |on: bool| {
        let c = c.clone();
        let url = fail_url.clone();
        async move { c.post_json(&url, None, &json!({"offers": on})).await }
    };
    assert_eq!(fail(true).await.unwrap().status, StatusCode::OK);
    let r = c.get(&format!("{base}/offers"), None).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Only that cloud fails.
    assert!(!offers(&c, &h, "nimbus").await.is_empty());
    assert_eq!(fail(false).await.unwrap().status, StatusCode::OK);
    assert!(!offers(&c, &h, "strato").await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn model_instances_and_hosted_upstream_answer_openai() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let c = client();
    let o = fixture_offer("nimbus", |o| o.gpu == "H100 SXM");
    let i: Instance = create(&c, &h, "nimbus", &o.id, Some("my/model"))
        .await
        .json()
        .unwrap();
    // provision_seconds + model_load_seconds.
    clock.advance(59_999);
    let i2 = get(&c, &h, "nimbus", &i.id).await;
    assert_eq!((i2.state, i2.endpoint), (InstanceState::Provisioning, None));
    let early = format!(
        "{}/instances/{}/v1/models",
        h.cloud_base_url("nimbus"),
        i.id
    );
    assert_eq!(
        c.get(&early, None).await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    clock.advance(1);
    let ep = get(&c, &h, "nimbus", &i.id).await.endpoint.unwrap();
    assert_eq!(
        ep,
        format!("http://{}/nimbus/instances/{}/v1", h.addr, i.id)
    );
    let models: Value = c
        .get(&format!("{ep}/models"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "my/model");
    let body =
        json!({"model": "my/model", "messages": [{"role": "user", "content": "one two three"}]});
    let r = c
        .post_json(&format!("{ep}/chat/completions"), None, &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let v: Value = r.json().unwrap();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(3));
    let wrong = json!({"model": "gpt-4o-mini", "messages": []});
    let r = c
        .post_json(&format!("{ep}/chat/completions"), None, &wrong)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let hosted = &h.hosted_base_url;
    let models: Value = c
        .get(&format!("{hosted}/models"), None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        models["data"].as_array().map(Vec::len),
        Some(HOSTED_MODELS.len() + HOSTED_EMBEDDING_MODELS.len())
    );
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = c
        .post_json(
            &format!("{hosted}/chat/completions"),
            Some("any-key"),
            &body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("\"prompt_tokens\":1") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn instances_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let cfg = config::Sandbox::default();
    let h = boot(&cfg, dir.path(), &clock).await;
    let c = client();
    let o = fixture_offer("strato", |o| o.available == 1);
    let i: Instance = create(&c, &h, "strato", &o.id, None).await.json().unwrap();
    h.shutdown().await;
    assert!(dir.path().join("sandbox/clouds.redb").exists());

    // Time passes while the cloud is "down"; the state follows from the timestamps.
    clock.advance(60_000);
    let h = boot(&cfg, dir.path(), &clock).await;
    let back = get(&c, &h, "strato", &i.id).await;
    assert_eq!(
        (back.state, back.created_at.clone()),
        (InstanceState::Running, i.created_at)
    );
    // Its machine is still taken, and the id counter carries on.
    let r = create(&c, &h, "strato", &o.id, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let other = fixture_offer("strato", |x| x.id != o.id);
    let next: Instance = create(&c, &h, "strato", &other.id, None)
        .await
        .json()
        .unwrap();
    assert_eq!(next.id, "strato-000002");
    h.shutdown().await;
}

#[tokio::test]
async fn concurrent_creates_never_oversell() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let h = boot(&config::Sandbox::default(), dir.path(), &clock).await;
    let o = fixture_offer("cumulus", |o| o.available >= 3);
    let url = format!("{}/instances", h.cloud_base_url("cumulus"));
    let mut tasks = Vec::new();
    for n in 0..(o.available + 5) {
        let (c, url) = (client(), url.clone());
        let req = CreateInstance {
            offer_id: o.id.clone(),
            label: format!("rnt_{n}"),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            c.post_json(&url, None, &req).await.unwrap().status
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            s => assert_eq!(s, StatusCode::CONFLICT),
        }
    }
    assert_eq!(created, o.available);
    h.shutdown().await;
}
