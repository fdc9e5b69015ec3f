//! The sandbox: simulated GPU clouds speaking the `http` provider protocol (SPEC section
//! 5), plus a hosted OpenAI-compatible upstream, on one hyper server.
//!
//! Each cloud lives at `http://ADDR/<cloud>/` with offers from the fixtures compiled into
//! the binary (see `catalog`), provisioning delay, seeded spot price drift and seeded
//! preemption (see `sim`), and instances kept in the sandbox's own redb file
//! (`DATA_DIR/sandbox/clouds.redb`, see `store`), so they outlive a restart exactly as a
//! real cloud's would. Everything is deterministic under `[sandbox] seed`, and "now"
//! always comes from the injected `Clock`.
//!
//! Routes:
//! - `GET /` -> `{"clouds": [...], "hosted": {"base_url": "http://ADDR/hosted/v1", "models": [...]}}`
//! - `GET /<cloud>/offers`, `POST /<cloud>/instances`, `GET /<cloud>/instances`,
//!   `GET|DELETE /<cloud>/instances/{id}`: the provider protocol. Any bearer token (or
//!   none) is accepted. Errors are `{"error": code}`: 400 `bad_request: ...`, 404
//!   `unknown_offer` / `not_found`, 409 `no_capacity`, 413 `body_too_large`. DELETE of
//!   an instance that already stopped (terminating, terminated, interrupted) answers
//!   200 with it unchanged.
//! - `/<cloud>/instances/{id}/v1/{models,chat/completions,completions,embeddings}`: the
//!   model server of a running instance created with `model` (its `endpoint`); its one
//!   model answers all four.
//! - `/hosted/v1/{models,chat/completions,completions,embeddings}`: the hosted upstream;
//!   chat for `HOSTED_MODELS`, embeddings for `HOSTED_EMBEDDING_MODELS`, `/models`
//!   lists both. Embeddings are 8 floats from a hash of each input, or base64 of
//!   little-endian f32 with `encoding_format: "base64"` (the openai SDKs' default).
//!
//! Model servers stream for real: `stream: true` answers server-sent events written one
//! per word as they are produced (`SPOTD_SANDBOX_STREAM_DELAY_MS` apart, 5 ms unless
//! set), OpenAI's `chat.completion.chunk` / `text_completion` shapes, the usage chunk
//! only with `stream_options.include_usage`, then `data: [DONE]`. A client that goes
//! away stops the producer.
//!
//! Fault injection on model servers (hosted and instances), for tests of spotd's proxy:
//! - a `model` ending in `-fail` answers 500 in OpenAI's error shape (before the
//!   "does this server serve that model" check, so it works everywhere);
//! - `x-sandbox-delay-ms: N` (N <= 30000) waits N ms before answering (timeouts);
//! - `x-sandbox-chunk-delay-ms: N` (N <= 30000) paces this stream's events N ms apart
//!   (long in-flight streams);
//! - `x-sandbox-cut-after: K` on a stream sends K content chunks, then drops the
//!   connection without `data: [DONE]` (a stream cut midway). If the answer has no more
//!   than K words the stream ends normally.
//!
//! A malformed value of these headers answers 400.
//!
//! Test-only control endpoints (not part of the protocol; spotd never calls them):
//! - `POST /<cloud>/_control/preempt/{id}`: preempts a provisioning or running instance
//!   now (interruptible offer or not): state `interrupted`, `ended_at` = now. 409
//!   `{"error": "not_running"}` when it already stopped, 404 when unknown.
//! - `POST /<cloud>/_control/fail` body `{"offers": true|false}`: while true, `GET
//!   /<cloud>/offers` answers 500 `{"error": "simulated_failure"}` (a failing provider).
//!   Optional fields: `"down": true|false`, while true every protocol call of the cloud
//!   answers 503 (a provider down); `"create_lies": N`, the next N creates make the
//!   instance and answer 500 all the same (a create that fails although it created);
//!   `"create_delay_seconds": N`, every create waits N s of the sandbox's clock before
//!   it acts (a create in flight, for as long as a test wants).
//! - `GET /<cloud>/_control/parked`: `{"parked": N}`, the creates waiting out that delay.

mod catalog;
mod llm;
#[cfg(test)]
mod model_tests;
mod server;
mod sim;
mod ssh;
mod store;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Millis};
use crate::config;
use crate::http_server::{self, ServerOptions};

use catalog::Catalogue;
use sim::InstanceRecord;
use store::SandboxStore;

pub use catalog::cloud_names;
pub use sim::Rng;

/// The chat/completion models the hosted upstream serves (`/chat/completions`,
/// `/completions`), billed per token by spotd from `usage`.
pub const HOSTED_MODELS: &[&str] = &["gpt-4o-mini", "llama-3.1-8b-instruct-hosted"];

/// The embedding models the hosted upstream serves (`/embeddings`, 8 dimensions).
pub const HOSTED_EMBEDDING_MODELS: &[&str] = &["text-embedding-3-small"];

/// Pacing between streamed events unless `SPOTD_SANDBOX_STREAM_DELAY_MS` says otherwise:
/// short so tests stay fast, non-zero so events leave as separate chunks.
const DEFAULT_STREAM_DELAY: Duration = Duration::from_millis(5);

/// In-flight requests get this long to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running sandbox server.
pub struct SandboxHandle {
    pub addr: SocketAddr,
    pub clouds: Vec<String>,
    /// `http://ADDR/hosted/v1`.
    pub hosted_base_url: String,
    #[cfg(test)]
    live_streams: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SandboxHandle {
    /// `http://ADDR/<cloud>`: the `base_url` of an `http` provider for that cloud.
    #[cfg(test)]
    pub fn cloud_base_url(&self, cloud: &str) -> String {
        format!("http://{}/{cloud}", self.addr)
    }

    /// Streamed answers whose producer is still running (a client that went away stops
    /// its producer, which tests can watch here).
    #[cfg(test)]
    pub fn live_streams(&self) -> usize {
        self.live_streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting, lets in-flight requests finish (bounded), closes the redb file.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the clouds on an already bound listener. `clock` gives "now".
pub async fn start(
    listener: TcpListener,
    cfg: config::Sandbox,
    data_dir: &Path,
    clock: Clock,
) -> Result<SandboxHandle, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("sandbox listener: {e}"))?;
    let catalogues = catalog::load()?;
    let path = data_dir.join("sandbox").join("clouds.redb");
    let (store, loaded) = tokio::task::spawn_blocking(move || SandboxStore::open(&path))
        .await
        .map_err(|e| format!("sandbox store: {e}"))??;
    let mut instances = Instances::default();
    for (cloud, n) in loaded.counters {
        instances.clouds.entry(cloud).or_default().counter = n;
    }
    for rec in loaded.instances {
        instances.insert(rec);
    }
    let stop = CancellationToken::new();
    let state = Arc::new(State {
        ssh: ssh::SshPorts::new(stop.child_token()),
        clock,
        drift_ppm: catalog::drift_ppm(cfg.price_drift),
        cfg,
        addr,
        clouds: catalogues
            .into_iter()
            .map(|c| CloudState {
                name: c.name.clone(),
                catalogue: Mutex::new(c),
                fail_offers: AtomicBool::new(false),
                down: AtomicBool::new(false),
                create_lies: AtomicUsize::new(0),
                create_delay_seconds: AtomicUsize::new(0),
                parked_creates: AtomicUsize::new(0),
            })
            .collect(),
        instances: tokio::sync::Mutex::new(instances),
        store,
        stream_delay: stream_delay_from_env(),
        live_streams: Arc::new(AtomicUsize::new(0)),
    });
    // Plain instances still alive from before a restart answer SSH again (on new ports:
    // spotd's sync picks up the address the cloud now reports).
    {
        let now = state.clock.now();
        let live: Vec<(String, String)> = {
            let inst = state.instances.lock().await;
            inst.clouds
                .values()
                .flat_map(|c| c.by_id.values())
                .filter(|r| r.model.is_none() && r.holds_capacity(now))
                .map(|r| (r.cloud.clone(), r.id.clone()))
                .collect()
        };
        for (cloud, id) in live {
            if let Err(e) = state.ssh.open(Arc::downgrade(&state), &cloud, &id).await {
                tracing::warn!(%cloud, %id, "{e}");
            }
        }
    }
    let task = tokio::spawn(serve(listener, state.clone(), stop.clone()));
    Ok(SandboxHandle {
        addr,
        clouds: state.clouds.iter().map(|c| c.name.clone()).collect(),
        hosted_base_url: state.hosted_base_url(),
        #[cfg(test)]
        live_streams: state.live_streams.clone(),
        stop,
        task,
    })
}

/// `SPOTD_SANDBOX_STREAM_DELAY_MS`, else the default; a value that is not a number of
/// milliseconds is ignored with a warning rather than failing the sandbox.
fn stream_delay_from_env() -> Duration {
    match std::env::var("SPOTD_SANDBOX_STREAM_DELAY_MS") {
        Err(_) => DEFAULT_STREAM_DELAY,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms.min(60_000)),
            Err(_) => {
                tracing::warn!("SPOTD_SANDBOX_STREAM_DELAY_MS={v:?} is not a number; using 5");
                DEFAULT_STREAM_DELAY
            }
        },
    }
}

/// `spotd sandbox-cloud`: serves the clouds on `listen` until `shutdown` is cancelled,
/// printing `spotd sandbox-cloud listening on http://ADDR` once bound.
pub async fn run_standalone(
    listen: &str,
    data_dir: &Path,
    cfg: config::Sandbox,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let handle = start(listener, cfg, data_dir, Clock::system()).await?;
    println!("spotd sandbox-cloud listening on http://{}", handle.addr);
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let opts = ServerOptions {
        name: "sandbox",
        header_read_timeout: Duration::from_secs(10),
        drain: DRAIN_TIMEOUT,
    };
    let st = state.clone();
    http_server::serve(listener, opts, stop, move |req| {
        server::handle(st.clone(), req)
    })
    .await;
    state.store.close();
}

/// Shared by every connection.
pub(crate) struct State {
    clock: Clock,
    cfg: config::Sandbox,
    drift_ppm: i64,
    addr: SocketAddr,
    clouds: Vec<CloudState>,
    /// Every instance of every cloud; writers hold the lock across the durable write,
    /// so a capacity check and the create it allows are one step.
    instances: tokio::sync::Mutex<Instances>,
    store: SandboxStore,
    /// Pacing between streamed events (per request: `x-sandbox-chunk-delay-ms`).
    stream_delay: Duration,
    live_streams: Arc<AtomicUsize>,
    /// The loopback SSH listeners of plain instances.
    ssh: ssh::SshPorts,
}

impl State {
    fn cloud(&self, name: &str) -> Option<&CloudState> {
        self.clouds.iter().find(|c| c.name == name)
    }

    fn cloud_base(&self, cloud: &str) -> String {
        format!("http://{}/{cloud}", self.addr)
    }

    /// The wire view of `r` at `now`, with its SSH port when it has one.
    fn view(&self, r: &InstanceRecord, now: Millis) -> crate::providers::protocol::Instance {
        r.to_instance(
            now,
            &self.cloud_base(&r.cloud),
            self.ssh.port(&r.cloud, &r.id),
        )
    }

    fn hosted_base_url(&self) -> String {
        format!("http://{}/hosted/v1", self.addr)
    }

    /// Writes `rec` (and the counter) durably, off the executor threads.
    async fn persist(&self, rec: InstanceRecord, counter: Option<u64>) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put(&rec, counter))
            .await
            .map_err(|e| format!("sandbox store task: {e}"))?
    }
}

pub(crate) struct CloudState {
    name: String,
    catalogue: Mutex<Catalogue>,
    /// Set by `_control/fail`: `GET offers` answers 500 while true.
    fail_offers: AtomicBool,
    /// Set by `_control/fail`: every protocol call answers 503 while true.
    down: AtomicBool,
    /// Set by `_control/fail`: this many more creates make the instance, answer 500.
    create_lies: AtomicUsize,
    /// Set by `_control/fail`: creates wait this many seconds (clock time) first.
    create_delay_seconds: AtomicUsize,
    /// Creates waiting out that delay now (`GET /<cloud>/_control/parked`).
    parked_creates: AtomicUsize,
}

#[derive(Default)]
struct CloudInstances {
    counter: u64,
    by_id: HashMap<String, InstanceRecord>,
}

#[derive(Default)]
pub(crate) struct Instances {
    clouds: BTreeMap<String, CloudInstances>,
}

impl Instances {
    fn cloud(&self, cloud: &str) -> Option<&CloudInstances> {
        self.clouds.get(cloud)
    }

    fn get(&self, cloud: &str, id: &str) -> Option<&InstanceRecord> {
        self.clouds.get(cloud)?.by_id.get(id)
    }

    fn counter(&self, cloud: &str) -> u64 {
        self.clouds.get(cloud).map(|c| c.counter).unwrap_or(0)
    }

    fn insert(&mut self, rec: InstanceRecord) {
        let c = self.clouds.entry(rec.cloud.clone()).or_default();
        c.counter = c.counter.max(rec.seq);
        c.by_id.insert(rec.id.clone(), rec);
    }

    /// Machines held at `now`, per offer id (one pass for a whole offer list).
    fn active_counts(&self, cloud: &str, now: Millis) -> HashMap<String, u32> {
        let mut m = HashMap::new();
        if let Some(c) = self.clouds.get(cloud) {
            for r in c.by_id.values().filter(|r| r.holds_capacity(now)) {
                *m.entry(r.offer_id.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// Machines of `offer_id` held by an instance at `now`.
    fn active_on(&self, cloud: &str, offer_id: &str, now: Millis) -> u32 {
        self.clouds
            .get(cloud)
            .map(|c| {
                c.by_id
                    .values()
                    .filter(|r| r.offer_id == offer_id && r.holds_capacity(now))
                    .count() as u32
            })
            .unwrap_or(0)
    }
}

/// Every built-in cloud's catalogue as the market shows it (normalized offers), for
/// tests that need the real sandbox market without serving it.
#[cfg(test)]
pub(crate) fn catalogues_for_tests() -> Vec<(String, Vec<crate::model::Offer>)> {
    catalog::load()
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let name = c.name.clone();
            let offers = c
                .offers
                .into_iter()
                .map(|o| crate::market::offer_from_provider(&name, o, 0))
                .collect();
            (name, offers)
        })
        .collect()
}
