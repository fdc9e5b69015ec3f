//! One simulated node: the real daemon opened on the simulation's data dir and manual
//! clock, served on loopback from a runtime of its own, so that a crash can stop every
//! one of its tasks mid-flight (the runtime is dropped, as kill -9 would) and a new
//! incarnation reopen the store from what was durably committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{self, Config, ServeFlags};
use crate::daemon::Daemon;
use crate::http_client::{HttpClient, HttpResponse};
use crate::store::Store;

/// A call's answer: status, JSON body (Null when empty or not JSON), headers.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub request_id: Option<String>,
    pub text: String,
}

impl Answer {
    fn from(r: HttpResponse) -> Answer {
        let text = String::from_utf8_lossy(&r.body).to_string();
        Answer {
            status: r.status.as_u16(),
            body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            request_id: r.header("x-request-id").map(str::to_string),
            text,
        }
    }
}

/// The daemon as it runs now.
struct Incarnation {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
    store: Store,
}

pub struct Node {
    pub dir: PathBuf,
    pub clock: Clock,
    pub url: String,
    pub sandbox: SocketAddr,
    pub admin: String,
    client: HttpClient,
    cfg: Config,
    running: Option<Incarnation>,
    /// Rental sync and sweep intervals, in seconds.
    pub cadence: (u64, u64),
}

impl Node {
    /// Opens and serves the daemon on `dir` with `toml` as its config file.
    pub async fn start(
        dir: &Path,
        toml: &str,
        clock: Clock,
        cadence: (u64, u64),
    ) -> Result<Node, String> {
        let file = dir.join("sim.toml");
        std::fs::write(&file, toml).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let flags = ServeFlags {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.to_path_buf()),
            config: Some(file),
            sandbox: true,
        };
        let (cfg, _warnings) = config::load(&flags, &[])?;
        let mut node = Node {
            dir: dir.to_path_buf(),
            clock,
            url: String::new(),
            sandbox: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: String::new(),
            client: HttpClient::new(Duration::from_secs(60)),
            cfg,
            running: None,
            cadence,
        };
        node.boot().await?;
        Ok(node)
    }

    pub fn store(&self) -> Option<&Store> {
        self.running.as_ref().map(|i| &i.store)
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// A new incarnation on the same data dir. A store file another incarnation is
    /// still closing is retried for a while (its writer thread finishes its batch).
    async fn boot(&mut self) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spotd-sim-daemon")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (cfg, clock, stop, cadence) = (
            self.cfg.clone(),
            self.clock.clone(),
            shutdown.clone(),
            self.cadence,
        );
        let task = runtime.spawn(async move {
            let mut tries = 0;
            let mut daemon = loop {
                match Daemon::open(cfg.clone(), clock.clone()).await {
                    Ok(d) => break d,
                    // The crashed incarnation's store closes on its own thread: its
                    // lock goes a moment later ("the data dir ... is in use ...").
                    Err(e) if tries < 200 && e.contains(crate::daemon::DATA_DIR_LOCKED) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            };
            daemon.set_cadence(
                Duration::from_secs(cadence.0),
                Duration::from_secs(cadence.1),
            );
            daemon.quiet();
            let _ = tx.send(Ok((daemon.store().clone(), daemon.sandbox_addr())));
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("listener: {e}"))?;
            daemon.serve(listener, stop).await
        });
        let opened = match rx.await {
            Ok(r) => r,
            Err(_) => Err("the daemon task ended before it opened".to_string()),
        };
        let (store, sandbox) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Dropping a runtime blocks until its workers stop: off the async threads.
                let _ = tokio::task::spawn_blocking(move || {
                    runtime.shutdown_timeout(Duration::from_secs(10));
                })
                .await;
                return Err(e);
            }
        };
        self.url = format!("http://{addr}");
        self.sandbox = sandbox.ok_or("the simulation runs in sandbox mode")?;
        self.admin = std::fs::read_to_string(self.dir.join("admin.token"))
            .map_err(|e| format!("admin.token: {e}"))?
            .trim()
            .to_string();
        self.running = Some(Incarnation {
            runtime,
            shutdown,
            task,
            store,
        });
        // The start-up rounds (reconcile, sync, catch-up metering) are due now.
        self.clock.settle().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// kill -9: every task of the daemon is dropped wherever it is; nothing drains.
    pub async fn crash(&mut self) {
        if let Some(inc) = self.running.take() {
            let Incarnation { runtime, store, .. } = inc;
            drop(store);
            // Dropping a runtime blocks until its workers stop: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(10));
            })
            .await;
        }
    }

    /// A graceful stop: API drained, workers stopped, background writes landed.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(inc) = self.running.take() {
            let Incarnation {
                runtime,
                shutdown,
                task,
                store,
            } = inc;
            drop(store);
            shutdown.cancel();
            let res = task.await.map_err(|e| e.to_string())?;
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(10));
            })
            .await;
            res?;
        }
        Ok(())
    }

    /// Starts the daemon again on what the last incarnation left.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.boot().await
    }

    pub async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.url);
        let body = body.map(|b| b.to_string().into_bytes());
        let send = self.client.send(method, &url, Some(key), headers, body);
        // `Prefer: wait` holds the answer until the clock moves the model to ready.
        let waits = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("prefer"));
        let r = if waits {
            self.clock
                .run_parked(send, 5_000)
                .await
                .map_err(|e| e.to_string())?
        } else {
            send.await
        };
        r.map(Answer::from).map_err(|e| e.to_string())
    }

    /// Starts a call without waiting for it (a request the daemon is in the middle of
    /// when it crashes).
    pub fn call_in_background(&self, path: &str, key: &str, idem: &str, body: Value) {
        let (client, url) = (self.client.clone(), format!("{}{path}", self.url));
        let (key, idem) = (key.to_string(), idem.to_string());
        tokio::spawn(async move {
            let headers = [("Idempotency-Key", idem.as_str())];
            let body = Some(body.to_string().into_bytes());
            let _ = client
                .send(hyper::Method::POST, &url, Some(&key), &headers, body)
                .await;
        });
    }

    /// A call to the sandbox clouds (their protocol or control endpoints).
    pub async fn cloud(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let url = format!("http://{}{path}", self.sandbox);
        let body = body.map(|b| b.to_string().into_bytes());
        self.client
            .send(method, &url, None, &[], body)
            .await
            .map(Answer::from)
            .map_err(|e| e.to_string())
    }
}
