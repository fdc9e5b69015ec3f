//! Test fixture: the real daemon on 127.0.0.1:0 with a temp data dir, its sandbox clouds
//! in-process, and a small JSON client. Either the `spotd` binary as a child process
//! ([`Daemon::start`]: for signals, kill -9, the CLI, packaging), or the daemon as a
//! value in the test's own process on a manual clock ([`Daemon::in_process`]), where
//! waiting means moving the clock, never sleeping. Dropping it stops the daemon.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use spotd::clock::Clock;
use spotd::daemon::Daemon as SpotDaemon;
use spotd::http_client::HttpClient;
use spotd::money::Usd;
use tokio_util::sync::CancellationToken;

/// Fast clocks for tests: provisioning 1 s, metering every second.
pub const FAST: &str = r#"
[billing]
metering_interval_seconds = 1
min_session_seconds = 600

[sandbox]
provision_seconds = 1
refresh_seconds = 2
price_drift = 0.02
seed = 7
"#;

/// Where an in-process daemon starts its manual clock: 2026-12-01T00:00:00Z.
pub const T0: i64 = 1_796_083_200_000;

/// A daemon served in the test's process.
pub struct InProc {
    pub clock: Clock,
    pub tasks: spotd::tasks::Tasks,
    pub store: spotd::store::Store,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

pub struct Daemon {
    pub child: Option<Child>,
    pub inproc: Option<InProc>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin: String,
    /// Empty when the daemon runs without `--sandbox` (no demo account then).
    pub demo_key: String,
    pub client: HttpClient,
    /// How `restart` spawns it again: sandbox flag and extra child environment.
    sandbox: bool,
    env: Vec<(String, String)>,
    /// An in-process daemon's rental sync and sweep intervals, if not the default.
    cadence: Option<(u64, u64)>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: hyper::HeaderMap,
}

impl Resp {
    pub fn err_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Spawns `spotd serve` on `dir` (config `dir/test.toml`); `env` is set in the child
/// only (provider keys never touch the test process's environment).
fn spawn(dir: &Path, sandbox: bool, env: &[(String, String)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotd"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    if sandbox {
        cmd.arg("--sandbox");
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(dir.join("test.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("daemon.log"))
                .expect("log file"),
        ));
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SPOTD_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn spotd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("spotd listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            panic!("spotd did not report listening; log:\n{log}")
        });
    (child, url)
}

impl Daemon {
    /// Starts a sandbox daemon with `FAST` plus `extra` TOML.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_env(extra, &[])
    }

    /// [`Daemon::start`] with `env` set in the child only (never in the test process,
    /// whose other threads may be reading the environment).
    pub fn start_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("test.toml"), merge_toml(FAST, extra)).expect("config");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Daemon::launch(dir, true, env)
    }

    /// Starts the daemon WITHOUT `--sandbox` on exactly `config` (TOML; with
    /// `[[providers]]` it runs against them), `env` set in the child only. There is no
    /// demo account: `demo_key` is empty, create accounts with [`Daemon::account`].
    pub fn start_with_config(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("test.toml"), config).expect("config");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Daemon::launch(dir, false, env)
    }

    fn launch(dir: tempfile::TempDir, sandbox: bool, env: Vec<(String, String)>) -> Daemon {
        let (child, url) = spawn(dir.path(), sandbox, &env);
        let read = |f: &str| {
            std::fs::read_to_string(dir.path().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .trim()
                .to_string()
        };
        Daemon {
            admin: read("admin.token"),
            demo_key: if sandbox {
                read("demo.key")
            } else {
                String::new()
            },
            child: Some(child),
            inproc: None,
            url,
            dir,
            client: HttpClient::new(Duration::from_secs(30)),
            sandbox,
            env,
            cadence: None,
        }
    }

    /// Opens the daemon in this process on a manual clock at [`T0`] with `FAST` plus
    /// `extra` TOML, sandbox mode, and serves it on 127.0.0.1:0. The runtime must be
    /// multi-threaded (the store's writer blocks a thread while it commits).
    pub async fn in_process(extra: &str) -> Daemon {
        Daemon::in_process_with(extra, None).await
    }

    /// [`Daemon::in_process`] with the rental workers' sync and sweep intervals (in
    /// seconds) set, to cover long spans of clock time in fewer rounds.
    pub async fn in_process_with(extra: &str, cadence: Option<(u64, u64)>) -> Daemon {
        Daemon::in_process_from(&merge_toml(FAST, extra), true, &[], cadence).await
    }

    /// [`Daemon::in_process`] with secrets (provider and upstream keys) in `env`, which
    /// only this daemon sees (never the test process's environment).
    pub async fn in_process_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::in_process_from(&merge_toml(FAST, extra), true, env, None).await
    }

    /// In process, WITHOUT the sandbox, on exactly `config`, with `env` as the only
    /// environment it reads secrets from. No demo account (see [`Daemon::account`]).
    pub async fn in_process_config(config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::in_process_from(config, false, env, None).await
    }

    async fn in_process_from(
        config: &str,
        sandbox: bool,
        env: &[(&str, &str)],
        cadence: Option<(u64, u64)>,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("test.toml"), config).expect("config");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut d = Daemon {
            child: None,
            inproc: None,
            url: String::new(),
            admin: String::new(),
            demo_key: String::new(),
            client: HttpClient::new(Duration::from_secs(30)),
            sandbox,
            env,
            dir,
            cadence,
        };
        d.serve_in_process(Clock::manual(T0)).await;
        d
    }

    async fn serve_in_process(&mut self, clock: Clock) {
        let flags = spotd::config::ServeFlags {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(self.dir.path().to_path_buf()),
            config: Some(self.dir.path().join("test.toml")),
            sandbox: self.sandbox,
        };
        let (cfg, _warnings) = spotd::config::load(&flags, &self.env).expect("config");
        let env = spotd::daemon::Env::Fixed(self.env.clone());
        let mut daemon = SpotDaemon::open_env(cfg, clock.clone(), env)
            .await
            .expect("open");
        if let Some((sync, sweep)) = self.cadence {
            daemon.set_cadence(Duration::from_secs(sync), Duration::from_secs(sweep));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let (tasks, store) = (daemon.tasks().clone(), daemon.store().clone());
        let task = tokio::spawn(daemon.serve(listener, shutdown.clone()));
        clock.settle().await.expect("start-up rounds");
        let read = |f: &str| {
            std::fs::read_to_string(self.dir.path().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .trim()
                .to_string()
        };
        self.admin = read("admin.token");
        if self.sandbox {
            self.demo_key = read("demo.key");
        }
        self.inproc = Some(InProc {
            clock,
            tasks,
            store,
            shutdown,
            task,
        });
    }

    /// The manual clock of an in-process daemon.
    pub fn clock(&self) -> &Clock {
        &self.inproc.as_ref().expect("an in-process daemon").clock
    }

    /// Moves an in-process daemon's clock `secs` forward, deadline by deadline, each
    /// time waiting until the workers have done what was due.
    pub async fn advance(&self, secs: u64) {
        self.clock()
            .advance_settled(secs as i64 * 1000)
            .await
            .expect("the daemon settles");
    }

    /// Lets `ms` of the daemon's time pass: the manual clock moves (rounded up to whole
    /// seconds, each settled) for an in-process daemon, real time sleeps for a child.
    pub async fn pass(&self, ms: u64) {
        if self.inproc.is_some() {
            self.advance(ms.div_ceil(1000)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// A graceful stop of an in-process daemon: the API drains, the workers stop, every
    /// background write lands, the store closes.
    pub async fn stop_in_process(&mut self) {
        self.begin_stop()
            .await
            .expect("the daemon task")
            .expect("a clean stop");
    }

    /// Asks an in-process daemon to stop and answers its task, to await when wanted.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<Result<(), String>> {
        let p = self.inproc.take().expect("an in-process daemon");
        p.shutdown.cancel();
        p.task
    }

    /// Opens and serves the in-process daemon again on the same data dir and clock.
    pub async fn restart_in_process(&mut self) {
        let clock = match &self.inproc {
            Some(_) => {
                let c = self.clock().clone();
                self.stop_in_process().await;
                c
            }
            None => Clock::manual(T0),
        };
        self.serve_in_process(clock).await;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        wait_timeout(&mut c, Duration::from_secs(30)).expect("spotd did not stop on SIGTERM")
    }

    /// kill -9: no chance to persist anything.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the daemon again on the same data dir (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill it first");
        let (child, url) = spawn(self.dir.path(), self.sandbox, &self.env);
        self.child = Some(child);
        self.url = url;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.call_h(
            method,
            path,
            key,
            &[],
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    pub async fn call_h(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let waits = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("prefer"));
        self.call_parked(method, path, key, headers, body, waits)
            .await
    }

    /// [`Daemon::call_h`] for a request the daemon may hold open (`Prefer: wait`, or
    /// `deployments.default_wait_seconds` without the header) when `waits`.
    pub async fn call_parked(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        waits: bool,
    ) -> Resp {
        let url = format!("{}{}", self.url, path);
        let send = self.client.send(method, &url, key, headers, body);
        // A held answer waits until the model is ready: on the manual clock that takes
        // time moving, a second per step while the request is parked on it.
        let r = if waits && self.inproc.is_some() {
            self.clock()
                .run_parked(send, 1_000)
                .await
                .expect("the daemon settles")
        } else {
            send.await
        }
        .expect("request");
        let body = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).to_string()))
        };
        Resp {
            status: r.status.as_u16(),
            body,
            headers: r.headers,
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// Creates an account with `credit` USD (exact decimal text) and returns (id, key).
    pub async fn account(&self, name: &str, credit: &str) -> (String, String) {
        let credit: Value = serde_json::from_str(credit).expect("credit literal");
        let r = self
            .post(
                "/admin/v1/accounts",
                &self.admin.clone(),
                serde_json::json!({"name": name, "credit": credit}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["id"].as_str().expect("id").to_string(),
            r.body["api_key"]["key"].as_str().expect("key").to_string(),
        )
    }

    /// Polls a rental until `pred` holds (or panics after `secs`).
    pub async fn wait_rental(
        &self,
        key: &str,
        id: &str,
        secs: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut waited = 0;
        loop {
            let r = self.get(&format!("/v1/gpus/rentals/{id}"), key).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            if pred(&r.body) {
                return r.body;
            }
            if self.inproc.is_some() {
                // Simulated time: `secs` of it, one second a step.
                if waited >= secs {
                    panic!("rental {id} did not reach the expected state in {secs} s of clock time: {}", r.body);
                }
                waited += 1;
                self.advance(1).await;
                continue;
            }
            if Instant::now() > deadline {
                panic!(
                    "rental {id} did not reach the expected state: {}\nlog:\n{}",
                    r.body,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A call to an absolute URL (a sandbox cloud's protocol or control endpoints).
    pub async fn raw(&self, method: Method, url: &str, body: Option<Value>) -> Resp {
        let r = self
            .client
            .send(
                method,
                url,
                None,
                &[],
                body.map(|b| b.to_string().into_bytes()),
            )
            .await
            .expect("request");
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Resp {
            status: r.status.as_u16(),
            body,
            headers: r.headers,
        }
    }

    /// One provider's entry of `GET /admin/v1/providers`.
    pub async fn provider_status(&self, provider: &str) -> Value {
        let r = self.get("/admin/v1/providers", &self.admin.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|p| p["name"] == provider)
            .cloned()
            .unwrap_or_else(|| panic!("no provider {provider}: {}", r.body))
    }

    /// The base URL of a sandbox cloud, as the admin API shows it.
    pub async fn cloud_base(&self, provider: &str) -> String {
        let p = self.provider_status(provider).await;
        p["base_url"]
            .as_str()
            .expect("base_url")
            .trim_end_matches('/')
            .to_string()
    }

    /// The sandbox cloud's instance labelled with `rental_id` (the rental JSON does not
    /// show the instance id).
    pub async fn cloud_instance(&self, provider: &str, rental_id: &str) -> Option<Value> {
        let base = self.cloud_base(provider).await;
        let r = self
            .raw(Method::GET, &format!("{base}/instances"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .find(|i| i["label"] == rental_id)
            .cloned()
    }

    /// Every ledger entry of the key's account, newest first.
    /// Waits until an in-process daemon's background writes (hosted request charges
    /// are committed just after the answer) have landed; a child's land within its
    /// next group commit, so it waits a moment.
    pub async fn settled(&self) {
        match &self.inproc {
            Some(p) => p.clock.settle().await.expect("the daemon settles"),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    pub async fn ledger(&self, key: &str) -> Vec<Value> {
        self.settled().await;
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/credits/ledger?limit=1000&cursor={c}"),
                None => "/v1/credits/ledger?limit=1000".to_string(),
            };
            let r = self.get(&path, key).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            out.extend(r.body["data"].as_array().expect("data").iter().cloned());
            match r.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Asserts the money invariants of SPEC section 4 for the key's account.
    pub async fn assert_books_balance(&self, key: &str) -> (Usd, Usd, Usd) {
        // Credits and ledger are two requests: while a rental is being metered, read
        // until the credits did not move around the ledger read (one consistent view).
        self.settled().await;
        let (mut c, mut entries) = (self.get("/v1/credits", key).await, Vec::new());
        for _ in 0..20 {
            entries = self.ledger(key).await;
            let again = self.get("/v1/credits", key).await;
            if again.body == c.body {
                break;
            }
            c = again;
        }
        assert_eq!(c.status, 200);
        let balance = usd(&c.body["balance"]);
        let held = usd(&c.body["held"]);
        let available = usd(&c.body["available"]);
        assert_eq!(available, balance - held);
        assert!(
            available >= Usd::ZERO,
            "available went below zero: {}",
            c.body
        );
        // SPEC section 4: the balance is the sum of the ledger entries, all of them
        // (holds and releases show amount 0 and their size as hold_amount).
        let sum: Usd = entries.iter().map(|e| usd(&e["amount"])).sum();
        assert_eq!(
            sum, balance,
            "balance must equal the sum of the ledger entries"
        );
        for e in &entries {
            let moves_balance = e["kind"] == "credit" || e["kind"] == "charge";
            assert_eq!(
                e["hold_amount"].is_null(),
                moves_balance,
                "hold_amount on holds and releases only: {e}"
            );
        }
        (balance, held, available)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = self.inproc.take() {
            p.shutdown.cancel();
        }
    }
}

pub fn usd(v: &Value) -> Usd {
    Usd::from_json(v).unwrap_or_else(|e| panic!("not money: {v}: {e}"))
}

fn wait_timeout(c: &mut Child, d: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + d;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Later sections override earlier ones key by key.
fn merge_toml(base: &str, extra: &str) -> String {
    let mut a: toml::Table = base.parse().expect("base toml");
    let b: toml::Table = extra.parse().expect("extra toml");
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(toml::Value::Table(at)), toml::Value::Table(bt)) => {
                for (k2, v2) in bt {
                    at.insert(k2, v2);
                }
            }
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
    toml::to_string(&a).expect("toml")
}

/// The cheapest offer matching a query string, as JSON.
pub async fn cheapest(d: &Daemon, key: &str, query: &str) -> Value {
    let r = d
        .get(&format!("/v1/gpus/offers?sort=price&limit=1&{query}"), key)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"][0].clone()
}
