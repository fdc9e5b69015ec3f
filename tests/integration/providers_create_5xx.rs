//! The real `spotd serve` (no sandbox) against loopback mocks of Vast.ai, RunPod and
//! Lambda whose create call lies: it answers 500 although the instance was created
//! (with our rental id as label or name). spotd must never create twice:
//!
//! - `Lie500`: the instance is listed at once. The rent's one listing finds it by
//!   label, the rental adopts it (201), runs, and `DELETE` tears it down.
//! - `Late`: the instance only shows up after that listing. The rent fails (503, hold
//!   released, nothing charged); when the instance appears, the start-up orphan sweep
//!   terminates it.
//! - `GarbageOffers`: the offer listing answers malformed JSON; the provider turns
//!   `stale` in `GET /admin/v1/providers` with the parse error as `last_error`.
//!
//! Each kind gets two mocks (one per mode under test) so that no provider entry lists
//! another entry's instances, and Lambda's one-launch-per-12-s limit is never waited on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{usd, Daemon};
use crate::providers_mock::{fixture, fixture_json, json, reply, start, Mock, Reply, Req};
use serde_json::{json, Value};
use spotd::money::Usd;

/// Instance ids the mocks hand out: never reused, so a request names one instance.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Create answers what the provider documents.
    Normal,
    /// Create records the instance, listed at once, and answers 500.
    Lie500,
    /// Create records the instance but lists it only after `World::reveal`; answers 500.
    Late,
    /// The offer listing answers truncated JSON.
    GarbageOffers,
}

/// A mock with its mutable world: the instances it lists, the ones created but not
/// yet listed, and the mode the test flips.
struct World {
    mock: Mock,
    instances: Arc<Mutex<Vec<Value>>>,
    hidden: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
}

/// What the handler of one kind sees of its world.
#[derive(Clone)]
struct State {
    instances: Arc<Mutex<Vec<Value>>>,
    hidden: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
}

impl State {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// Records a created instance as the mode says, and answers `ok` or a 500.
    fn created(&self, inst: Value, ok: Reply) -> Reply {
        match self.mode() {
            Mode::Late => self.hidden.lock().unwrap().push(inst),
            _ => self.instances.lock().unwrap().push(inst),
        }
        match self.mode() {
            Mode::Lie500 | Mode::Late => reply(500, "<html>500 Internal Server Error</html>"),
            _ => ok,
        }
    }

    fn offers(&self, body: String) -> Reply {
        if self.mode() == Mode::GarbageOffers {
            return reply(200, r#"{"offers": [ {"id": 1,"#);
        }
        reply(200, body)
    }
}

impl World {
    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// The instances created but not yet listed are listed from now on.
    fn reveal(&self) {
        let mut h = self.hidden.lock().unwrap();
        self.instances.lock().unwrap().append(&mut h);
    }

    fn instance(&self, field: &str, value: &str) -> Option<Value> {
        self.instances
            .lock()
            .unwrap()
            .iter()
            .find(|i| i[field].as_str() == Some(value))
            .cloned()
    }
}

async fn world(handler: impl Fn(&State, &Req) -> Reply + Send + Sync + 'static) -> World {
    let st = State {
        instances: Arc::default(),
        hidden: Arc::default(),
        mode: Arc::new(Mutex::new(Mode::Normal)),
    };
    let s = st.clone();
    let mock = start(Arc::new(move |r: &Req| handler(&s, r))).await;
    World {
        mock,
        instances: st.instances,
        hidden: st.hidden,
        mode: st.mode,
    }
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
    world(|st, r| {
        let p = r.path.as_str();
        match r.method.as_str() {
            "POST" if p == "/bundles/" => st.offers(fixture("vastai", "bundles.json")),
            "PUT" if p.starts_with("/asks/") => {
                let id = 7_900_000 + NEXT_ID.fetch_add(1, Ordering::SeqCst);
                let mut i = fixture_json("vastai", "instances.json")["instances"][0].clone();
                i["id"] = json!(id);
                i["label"] = r.body["label"].clone();
                i["actual_status"] = json!("loading");
                st.created(i, json(200, &json!({"success": true, "new_contract": id})))
            }
            "GET" if p == "/instances/?owner=me" => {
                let l = list_and_advance(&st.instances, "actual_status", |i| {
                    i["actual_status"] = json!("running");
                });
                json(200, &json!({ "instances": l }))
            }
            "DELETE" if p.starts_with("/instances/") => {
                let id = p.trim_start_matches("/instances/").trim_end_matches('/');
                let mut list = st.instances.lock().unwrap();
                let before = list.len();
                list.retain(|i| i["id"].to_string().as_str() != id);
                if list.len() == before {
                    return reply(404, r#"{"success":false,"error":"no_such_instance"}"#);
                }
                json(200, &json!({"success": true}))
            }
            _ => reply(404, r#"{"success":false}"#),
        }
    })
    .await
}

async fn runpod_mock() -> World {
    world(|st, r| {
        let p = r.path.as_str();
        match r.method.as_str() {
            "GET" if p == "/catalog/gpus?include=AVAILABILITY&product=POD" => {
                st.offers(fixture("runpod", "catalog_gpus.json"))
            }
            "POST" if p == "/pods" => {
                let mut pod = fixture_json("runpod", "pod_provisioning.json");
                pod["id"] = json!(format!("pod{}", NEXT_ID.fetch_add(1, Ordering::SeqCst)));
                pod["name"] = r.body["name"].clone();
                st.created(pod.clone(), json(201, &pod))
            }
            "GET" if p == "/pods" => {
                let running = fixture_json("runpod", "pods.json")["pods"][0].clone();
                let l = list_and_advance(&st.instances, "status", |pod| {
                    pod["status"] = json!("RUNNING");
                    pod["ssh"] = running["ssh"].clone();
                    pod["runtime"] = running["runtime"].clone();
                });
                json(200, &json!({ "pods": l }))
            }
            "DELETE" if p.starts_with("/pods/") => {
                let id = p.trim_start_matches("/pods/");
                let mut list = st.instances.lock().unwrap();
                let before = list.len();
                list.retain(|i| i["id"] != id);
                if list.len() == before {
                    return reply(404, r#"{"title":"Not Found","status":404}"#);
                }
                reply(204, "")
            }
            _ => reply(404, r#"{"title":"Not Found","status":404}"#),
        }
    })
    .await
}

async fn lambda_mock() -> World {
    world(|st, r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/instance-types") => st.offers(fixture("lambda", "instance_types.json")),
        ("GET", "/ssh-keys") => reply(200, fixture("lambda", "ssh_keys.json")),
        ("POST", "/instance-operations/launch") => {
            let id = format!("{:032x}", 0xabc0 + NEXT_ID.fetch_add(1, Ordering::SeqCst));
            let mut i = fixture_json("lambda", "instances.json")["data"][1].clone();
            i["id"] = json!(id);
            i["name"] = r.body["name"].clone();
            i["status"] = json!("booting");
            st.created(i, json(200, &json!({"data": {"instance_ids": [id]}})))
        }
        ("GET", "/instances") => {
            let l = list_and_advance(&st.instances, "status", |i| {
                i["status"] = json!("active");
                i["ip"] = json!("129.146.33.200");
            });
            json(200, &json!({ "data": l }))
        }
        ("POST", "/instance-operations/terminate") => {
            let mut list = st.instances.lock().unwrap();
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
    })
    .await
}

/// The kinds under test: provider name prefix, kind, offer (native part), and how a
/// world counts creates, finds our instance, and counts terminations of one.
struct Kind {
    name: &'static str,
    kind: &'static str,
    offer: &'static str,
    create: (&'static str, &'static str),
    label_field: &'static str,
}

const KINDS: [Kind; 3] = [
    Kind {
        name: "vast",
        kind: "vastai",
        offer: "12345678",
        create: ("PUT", "/asks/12345678/"),
        label_field: "label",
    },
    Kind {
        name: "runpod",
        kind: "runpod",
        offer: "SECURE~2~US-KS-2~NVIDIA_GeForce_RTX_4090",
        create: ("POST", "/pods"),
        label_field: "name",
    },
    Kind {
        name: "lambda",
        kind: "lambda",
        offer: "gpu_8x_a100_80gb_sxm4@us-west-2",
        create: ("POST", "/instance-operations/launch"),
        label_field: "name",
    },
];

impl Kind {
    fn creates(&self, w: &World) -> usize {
        w.mock.requests(self.create.0, self.create.1).len()
    }

    /// How many terminate calls named instance `id`.
    fn terminations(&self, w: &World, id: &Value) -> usize {
        let plain = id.as_str().map(str::to_string).unwrap_or(id.to_string());
        match self.kind {
            "vastai" => w
                .mock
                .requests("DELETE", &format!("/instances/{plain}/"))
                .len(),
            "runpod" => w.mock.requests("DELETE", &format!("/pods/{plain}")).len(),
            _ => w
                .mock
                .requests("POST", "/instance-operations/terminate")
                .iter()
                .filter(|t| t.body["instance_ids"] == json!([id]))
                .count(),
        }
    }
}

fn config(lie: &[World], late: &[World]) -> String {
    let mut c = String::from("[billing]\nmetering_interval_seconds = 1\n");
    for (k, (a, b)) in KINDS.iter().zip(lie.iter().zip(late)) {
        c += &format!(
            "\n[[providers]]\nname = \"{n}\"\nkind = \"{kind}\"\nbase_url = \"{a}\"\napi_key_env = \"TEST_KEY\"\n\
             \n[[providers]]\nname = \"{n}-late\"\nkind = \"{kind}\"\nbase_url = \"{b}\"\napi_key_env = \"TEST_KEY\"\nrefresh_seconds = 1\n",
            n = k.name,
            kind = k.kind,
            a = a.mock.base,
            b = b.mock.base,
        );
    }
    c
}

/// Waits (real time: these are other processes) until `pred` holds.
async fn eventually(what: &str, d: &Daemon, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred() {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}\nlog:\n{}", d.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_on_create_adopts_or_sweeps_the_instance_and_never_creates_twice() {
    let mut lie = Vec::new();
    let mut late = Vec::new();
    for k in &KINDS {
        let (a, b) = match k.kind {
            "vastai" => (vast_mock().await, vast_mock().await),
            "runpod" => (runpod_mock().await, runpod_mock().await),
            _ => (lambda_mock().await, lambda_mock().await),
        };
        a.set(Mode::Lie500);
        b.set(Mode::Late);
        lie.push(a);
        late.push(b);
    }
    let mut d = Daemon::start_with_config(&config(&lie, &late), &[("TEST_KEY", "k")]);
    let (_, key) = d.account("alice", "100").await;

    // --- Lie500: the instance exists though create said 500; the rent adopts it.
    for (k, w) in KINDS.iter().zip(&lie) {
        let r = d
            .post(
                "/v1/gpus/rentals",
                &key,
                json!({"offer_id": format!("{}:{}", k.name, k.offer)}),
            )
            .await;
        assert_eq!(r.status, 201, "{}: {:?}\nlog:\n{}", k.name, r.body, d.log());
        let id = r.body["id"].as_str().unwrap().to_string();
        let inst = w
            .instance(k.label_field, &id)
            .unwrap_or_else(|| panic!("{}: no instance labelled {id}", k.name));
        // 201 although create answered 500: the rental is the instance found by label.
        assert_eq!(r.body["state"], "provisioning", "{}", r.body);
        let running = d
            .wait_rental(&key, &id, 20, |r| r["state"] == "running")
            .await;
        assert!(running["ssh"].is_object(), "{}: {running}", k.name);
        assert_eq!(k.creates(w), 1, "{}: exactly one create", k.name);
        let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
        assert_eq!(del.status, 200, "{:?}", del.body);
        let done = d
            .wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
            .await;
        assert_eq!(done["termination_reason"], "user");
        assert_eq!(k.terminations(w, &inst["id"]), 1, "{}", k.name);
        assert_eq!(k.creates(w), 1, "{}: still one create", k.name);
    }
    let (after_lie, held, _) = d.assert_books_balance(&key).await;
    assert_eq!(held, Usd::ZERO);

    // --- Late: the instance is not listed when the rent looks once; the rent fails
    // with nothing held or charged.
    let mut failed = Vec::new();
    for (k, w) in KINDS.iter().zip(&late) {
        let r = d
            .post(
                "/v1/gpus/rentals",
                &key,
                json!({"offer_id": format!("{}-late:{}", k.name, k.offer)}),
            )
            .await;
        assert_eq!(r.status, 503, "{}: {:?}", k.name, r.body);
        assert_eq!(k.creates(w), 1, "{}: one create", k.name);
        assert_eq!(w.hidden.lock().unwrap().len(), 1);
        let c = d.get("/v1/credits", &key).await;
        assert_eq!(usd(&c.body["held"]), Usd::ZERO, "{}: hold released", k.name);
        assert_eq!(
            usd(&c.body["balance"]),
            after_lie,
            "{}: nothing charged",
            k.name
        );
        failed.push(w.hidden.lock().unwrap()[0].clone());
    }
    let list = d.get("/v1/gpus/rentals?state=failed", &key).await;
    let rows = list.body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{:?}", list.body);
    for r in rows {
        assert_eq!(r["termination_reason"], "provider_error", "{r}");
        assert_eq!(usd(&r["cost"]), Usd::ZERO, "{r}");
        assert_eq!(usd(&r["hold"]), Usd::ZERO, "{r}");
        assert!(
            r["last_error"].as_str().is_some_and(|e| e.contains("500")),
            "{r}"
        );
    }

    // The instances show up; a restart runs the start-up sweep, which terminates them.
    for w in &late {
        w.reveal();
    }
    d.stop();
    d.restart();
    eventually("late instances swept", &d, || {
        KINDS
            .iter()
            .zip(&late)
            .zip(&failed)
            .all(|((k, w), i)| k.terminations(w, &i["id"]) == 1)
    })
    .await;
    for ((k, w), i) in KINDS.iter().zip(&late).zip(&failed) {
        // Gone (Vast, RunPod), or terminating until Lambda's next listing.
        let left = w.instance(k.label_field, i[k.label_field].as_str().unwrap());
        assert!(
            left.as_ref().is_none_or(|i| i["status"] == "terminating"),
            "{}: {left:?}",
            k.name
        );
        assert_eq!(k.creates(w), 1, "{}: never created twice", k.name);
    }
    let (balance, held, _) = d.assert_books_balance(&key).await;
    assert_eq!((balance, held), (after_lie, Usd::ZERO));

    // --- Malformed JSON on offers: each `-late` provider (refreshing every second)
    // goes stale, its last offers kept, with the parse error as the reason.
    for w in &late {
        w.set(Mode::GarbageOffers);
    }
    for k in &KINDS {
        let name = format!("{}-late", k.name);
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            let st = d.provider_status(&name).await;
            if st["status"] == "stale" {
                break st;
            }
            assert!(Instant::now() < deadline, "{name} never went stale: {st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let err = st["last_error"].as_str().unwrap_or("");
        assert!(err.contains("unreadable JSON answer"), "{st}");
        assert!(st["offers"].as_u64().unwrap_or(0) > 0, "offers kept: {st}");
        // The one with honest offers is untouched.
        assert_eq!(d.provider_status(k.name).await["status"], "ok");
    }
}
