//! Shipping: systemd readiness over a real NOTIFY_SOCKET, /metrics, the route table
//! against what a real daemon serves and documents, secret-free logs, `spotd
//! healthcheck` and `spotd config default`. Every daemon is the real binary on
//! 127.0.0.1:0.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{Daemon, FAST};
use hyper::Method;
use serde_json::{json, Value};
use spotd::api::routes::{Access, ROUTES};

const BIN: &str = env!("CARGO_BIN_EXE_spotd");

/// A spawned daemon, killed when dropped: a failing assertion must not leave it running.
struct Spawned(Child);

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `spotd serve` in sandbox mode on `dir` with extra environment; returns the
/// child (stderr to `dir/daemon.log`) and its base URL.
fn spawn(dir: &Path, env: &[(&str, &str)]) -> (Spawned, String) {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    spawn_logging_to(dir, env, Stdio::from(log), |_| {})
}

/// [`spawn`] with stderr going to `stderr`; `started` gets the child as soon as it is
/// spawned (to close its stderr pipe before it logs anything, say).
fn spawn_logging_to(
    dir: &Path,
    env: &[(&str, &str)],
    stderr: Stdio,
    started: impl FnOnce(&mut Child),
) -> (Spawned, String) {
    std::fs::write(dir.join("test.toml"), FAST).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--sandbox",
        "--data-dir",
    ])
    .arg(dir)
    .arg("--config")
    .arg(dir.join("test.toml"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(stderr);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTD_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = Spawned(cmd.spawn().unwrap());
    started(&mut child);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("spotd listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "no listening line; log:\n{}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            )
        });
    (child, url)
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "spotd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn recv_until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want} (got {seen:?}): {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let done = msg.lines().any(|l| l == want);
        seen.push(msg);
        if done {
            return seen;
        }
    }
}

#[test]
fn systemd_gets_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (mut child, url) = spawn(
        dir.path(),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let before_ready = recv_until(&sock, "READY=1");
    assert!(
        !before_ready.iter().any(|m| m.contains("STOPPING=1")),
        "{before_ready:?}"
    );
    // READY means serving: the API answers now.
    let addr = url.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(addr).is_ok());
    let status = sigterm_and_wait(&mut child);
    recv_until(&sock, "STOPPING=1");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn systemd_gets_more_start_time_while_the_store_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let env = [("NOTIFY_SOCKET", sock_path.to_str().unwrap())];
    let (mut child, _) = spawn(dir.path(), &env);
    recv_until(&sock, "READY=1");
    // kill -9: redb must repair the file on the next open.
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, _) = spawn(dir.path(), &env);
    let msgs = recv_until(&sock, "READY=1");
    assert!(
        msgs[0].starts_with("EXTEND_TIMEOUT_USEC="),
        "no timeout extension before READY: {msgs:?}"
    );
    assert!(sigterm_and_wait(&mut child).success());
    recv_until(&sock, "STOPPING=1");
    // A clean stop needs no repair: no extension on the next start.
    let (mut child, _) = spawn(dir.path(), &env);
    let msgs = recv_until(&sock, "READY=1");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(sigterm_and_wait(&mut child).success());
}

/// A start that fails halfway (a provider key missing from the environment, found
/// after the store is open) still closes the store cleanly: no repair next time.
#[test]
fn a_failed_start_leaves_the_store_clean() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[providers]]\nname = \"vast\"\nkind = \"vastai\"\napi_key_env = \"SPOTD_TEST_UNSET_KEY\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&bad)
        .env_remove("SPOTD_TEST_UNSET_KEY")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SPOTD_TEST_UNSET_KEY"), "{err}");
    assert!(
        dir.path().join("spotd.redb").exists(),
        "the store was opened"
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (mut child, _) = spawn(
        dir.path(),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let msgs = recv_until(&sock, "READY=1");
    assert_eq!(msgs.len(), 1, "no repair after a failed start: {msgs:?}");
    assert!(msgs[0].starts_with("READY=1"), "{msgs:?}");
    assert!(sigterm_and_wait(&mut child).success());
}

async fn text(d: &Daemon, path: &str, key: Option<&str>) -> (u16, String, String) {
    let r = spotd::http_client::HttpClient::new(Duration::from_secs(30))
        .send(Method::GET, &format!("{}{path}", d.url), key, &[], None)
        .await
        .unwrap();
    let ct = r.header("content-type").unwrap_or("").to_string();
    (
        r.status.as_u16(),
        ct,
        String::from_utf8_lossy(&r.body).to_string(),
    )
}

/// The value of the first sample line that starts with `series ` (name + labels).
fn sample(metrics: &str, series: &str) -> Option<String> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_by_route_template_and_show_the_books() {
    let d = Daemon::start("");
    let (_, key) = d.account("metrics", "12.5").await;
    for _ in 0..2 {
        let r = d.get("/v1/gpus/rentals/rnt_doesnotexist", &key).await;
        assert_eq!(r.status, 404);
    }
    let offer = crate::common::cheapest(&d, &key, "").await;
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    assert_eq!(text(&d, "/metrics", None).await.0, 401);
    assert_eq!(text(&d, "/metrics", Some(&key)).await.0, 401);
    let (status, ct, m) = text(&d, "/metrics", Some(&d.admin)).await;
    assert_eq!(status, 200, "{m}");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");

    let rentals404 = "method=\"GET\",route=\"/v1/gpus/rentals/{id}\",status=\"404\"";
    assert_eq!(
        sample(&m, &format!("spotd_http_requests_total{{{rentals404}}}")).as_deref(),
        Some("2"),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("spotd_http_request_duration_seconds_bucket{{{rentals404},le=\"+Inf\"}}")
        )
        .as_deref(),
        Some("2")
    );
    assert!(
        !m.contains("rnt_doesnotexist"),
        "raw ids leaked into labels"
    );
    assert_eq!(
        sample(
            &m,
            "spotd_http_requests_total{method=\"POST\",route=\"/v1/gpus/rentals\",status=\"201\"}"
        )
        .as_deref(),
        Some("1")
    );

    // Offers per provider, each refreshed already.
    let providers = d.get("/admin/v1/providers", &d.admin).await;
    for p in providers.body["data"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let n = sample(&m, &format!("spotd_offers{{provider=\"{name}\"}}")).unwrap();
        assert_eq!(n, p["offers"].to_string(), "{name}");
        let age: f64 = sample(
            &m,
            &format!("spotd_provider_last_refresh_age_seconds{{provider=\"{name}\"}}"),
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((0.0..600.0).contains(&age), "{age}");
    }

    // The books: demo $100 + $12.5 credited; one rental with an open hold.
    assert_eq!(
        sample(&m, "spotd_ledger_credits_usd_total").as_deref(),
        Some("112.5")
    );
    let live: u64 = ["provisioning", "running"]
        .iter()
        .map(|s| {
            sample(&m, &format!("spotd_rentals{{state=\"{s}\"}}"))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(live, 1, "{m}");
    assert_eq!(
        sample(&m, "spotd_rentals{state=\"terminated\"}").as_deref(),
        Some("0")
    );
    let held = sample(&m, "spotd_ledger_open_holds_usd").unwrap();
    let credits = d.get("/v1/credits", &key).await;
    assert_eq!(held, credits.body["held"].to_string());
    assert!(sample(&m, "spotd_cold_starts_total").is_some());
    assert!(sample(&m, "spotd_idle_reaps_total").is_some());
}

/// Through the route table: `/openapi.json` lists exactly its routes, each one is
/// served by its handler for a request built from its template (never the router's
/// "no route" 404, never a 5xx), and each asks for the credentials its access says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_table_is_served_and_documented() {
    let d = Daemon::start("");
    let doc = d.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let table: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, table);
    assert!(table.len() >= 20, "{table:?}");

    for r in ROUTES {
        // A rest parameter (a model id) gets a slash in it.
        let concrete = r
            .path
            .split('/')
            .map(|s| match (s.starts_with('{'), r.rest) {
                (true, true) => "org/x_unknown",
                (true, false) => "x_unknown",
                (false, _) => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        let key = match r.access {
            Access::Admin => Some(d.admin.as_str()),
            Access::User => Some(d.demo_key.as_str()),
            Access::Public => None,
        };
        let m = Method::from_bytes(r.method.as_bytes()).unwrap();
        let body = (m == Method::POST).then(|| json!({}));
        let resp = d.call(m.clone(), &concrete, key, body.clone()).await;
        let no_route = resp.status == 404
            && resp.body["error"]["message"]
                .as_str()
                .is_some_and(|s| s.starts_with("no route"));
        assert!(!no_route, "{m} {} is in the table but not served", r.path);
        assert_ne!(resp.status, 401, "{m} {}: {:?}", r.path, resp.body);
        assert!(resp.status < 500, "{m} {}: {:?}", r.path, resp.body);
        if r.access != Access::Public {
            let anon = d.call(m.clone(), &concrete, None, body).await;
            assert_eq!(anon.status, 401, "{m} {} without a key", r.path);
        }
    }
    // And a route that is not in the table is not served.
    let r = d.get("/v1/gpus/nothing", &d.demo_key).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_never_contain_secrets_and_name_routes_by_template() {
    let log = secrets_run("text").await;
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle) && l.contains("status"))
            .unwrap_or_else(|| panic!("no request line with {needle}:\n{log}"))
            .to_string()
    };
    assert!(line("route=\"/v1/gpus/rentals/{id}\"").contains("INFO"));
    assert!(line("route=\"/healthz\"").contains("DEBUG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_contain_secrets_and_carry_the_route() {
    let log = secrets_run("json").await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let req = |route: &str| {
        lines
            .iter()
            .find(|v| v["message"] == "request" && v["route"] == route)
            .unwrap_or_else(|| panic!("no request line for {route}:\n{log}"))
            .clone()
    };
    let r = req("/v1/gpus/rentals/{id}");
    assert_eq!(
        (r["level"].as_str(), r["status"].as_u64()),
        (Some("INFO"), Some(404))
    );
    assert_eq!(r["method"], "GET");
    assert_eq!(req("/healthz")["level"], "DEBUG");
}

/// Runs a daemon at debug level in `format`, makes authenticated requests with every
/// kind of secret (and a wrong key), stops it, asserts no secret reached the log and
/// returns the log.
async fn secrets_run(format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let admin = "adm-test-0123456789abcdefSECRET";
    let (mut child, url) = spawn(
        dir.path(),
        &[
            ("SPOTD_LOG", "debug"),
            ("SPOTD_ADMIN_TOKEN", admin),
            ("SPOTD_LOG_FORMAT", format),
        ],
    );
    let c = spotd::http_client::HttpClient::new(Duration::from_secs(30));
    let demo = std::fs::read_to_string(dir.path().join("demo.key")).unwrap();
    let demo = demo.trim();
    let post = |path: &str, key: &str, body: Value| {
        let (c, url, path, key) = (&c, &url, path.to_string(), key.to_string());
        async move {
            let r = c
                .send(
                    Method::POST,
                    &format!("{url}{path}"),
                    Some(&key),
                    &[],
                    Some(body.to_string().into_bytes()),
                )
                .await
                .unwrap();
            (r.status.as_u16(), r.json::<Value>().unwrap_or(Value::Null))
        }
    };
    let (s, acct) = post(
        "/admin/v1/accounts",
        admin,
        json!({"name": "logs", "credit": 5}),
    )
    .await;
    assert_eq!(s, 201);
    let key1 = acct["api_key"]["key"].as_str().unwrap().to_string();
    let id = acct["id"].as_str().unwrap();
    let (s, k2) = post(&format!("/admin/v1/accounts/{id}/keys"), admin, json!({})).await;
    assert_eq!(s, 201, "{k2}");
    let key2 = k2["key"].as_str().unwrap().to_string();
    for key in [key1.as_str(), key2.as_str(), demo] {
        let r = c
            .get(&format!("{url}/v1/credits"), Some(key))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let wrong = "sk-wrong-but-secret-looking-0000";
    let r = c
        .get(&format!("{url}/v1/credits"), Some(wrong))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = c
        .get(&format!("{url}/v1/gpus/rentals/rnt_rawid123"), Some(&key1))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c.get(&format!("{url}/healthz"), None).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(sigterm_and_wait(&mut child).success());

    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("request"), "no request logs at all:\n{log}");
    for secret in [admin, key1.as_str(), key2.as_str(), demo, wrong] {
        assert!(!log.contains(secret), "secret {secret} in the log:\n{log}");
        // Nor a recognisable piece of it (e.g. a key logged without its prefix).
        let tail = &secret[secret.len() - 16..];
        assert!(!log.contains(tail), "part of {secret} in the log:\n{log}");
    }
    assert!(!log.contains("rnt_rawid123"), "raw path logged:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes() {
    let d = Daemon::start("");
    let ok = Command::new(BIN)
        .args(["healthcheck", "--url", &d.url])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ready"));
    // Found through the data directory's spotd.addr, as the client commands do.
    let via_dir = Command::new(BIN)
        .args(["healthcheck", "--data-dir"])
        .arg(d.data_dir())
        .env_remove("SPOTD_URL")
        .output()
        .unwrap();
    assert!(via_dir.status.success(), "{via_dir:?}");

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let down = Command::new(BIN)
        .args(["healthcheck"])
        .env("SPOTD_URL", format!("http://{addr}"))
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

#[test]
fn config_default_prints_the_packaged_example() {
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/spotd.toml"))
            .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), file);
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(
        v.starts_with(&format!("spotd {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}

/// A log reader that went away (`spotd serve 2>&1 | head -1`, a crashed collector)
/// must not stop serving: with stderr a pipe nobody reads from the start, the daemon
/// starts, answers every request, counts the lost lines, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_never_breaks_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_logging_to(dir.path(), &[], Stdio::piped(), |c| {
        drop(c.stderr.take()); // the reader is gone before the first line
    });
    let key = std::fs::read_to_string(dir.path().join("demo.key")).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let client = spotd::http_client::HttpClient::new(Duration::from_secs(10));
    // Within the default rate limit's burst (40).
    for i in 0..5 {
        for (path, k) in [
            ("/v1/credits", key.trim()),
            ("/v1/gpus/offers?limit=5", key.trim()),
            ("/v1/nope", key.trim()),
        ] {
            let r = client
                .send(Method::GET, &format!("{url}{path}"), Some(k), &[], None)
                .await
                .unwrap_or_else(|e| panic!("request {i} to {path} got no answer: {e}"));
            let want = if path == "/v1/nope" { 404 } else { 200 };
            assert_eq!(
                r.status.as_u16(),
                want,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    let m = client
        .send(
            Method::GET,
            &format!("{url}/metrics"),
            Some(admin.trim()),
            &[],
            None,
        )
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&m.body).to_string();
    let lost: u64 = sample(&body, "spotd_log_write_errors_total")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(lost > 0, "the dropped lines are counted: {body}");
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "a clean stop on SIGTERM: {status:?}");
}
