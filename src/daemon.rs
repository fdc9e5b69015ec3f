//! The daemon as a value: [`Daemon::open`] builds everything from a config and a clock
//! (the store, the sandbox clouds in sandbox mode, the market, the provider registry,
//! rentals, inference, the background task tracker); [`Daemon::serve`] runs the API on a
//! listener the caller bound and every worker until `shutdown`, then drains and closes.
//! `spotd serve` is a thin caller ([`run`]); tests and the simulator open a daemon on a
//! temp dir with a manual clock and serve it on 127.0.0.1:0 in their own process.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accounts;
use crate::api::{self, App};
use crate::clock::{Clock, Signal};
use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::http_client::HttpClient;
use crate::ids;
use crate::inference::catalog::Catalog;
use crate::inference::{reaper, Inference, InferenceConfig};
use crate::market::Market;
use crate::money::Usd;
use crate::notify::Notifier;
use crate::providers::registry::Registry;
use crate::rentals::{Rentals, RentalsConfig};
use crate::sandbox;
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;
use crate::webhooks::deliver::{self, Deliverer};
use crate::webhooks::Outbox;
use crate::workers;
use crate::workers::rentals::Cadence;

/// Credit of the sandbox's demo account.
const DEMO_CREDIT_USD: i64 = 100;
/// Cold start to ready, when no sandbox timing says better (real clouds: minutes).
const DEFAULT_DEPLOY_ESTIMATE_SECONDS: u64 = 300;
/// Timeout of every provider call.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes `contents` to `path` with mode 0600 (created or replaced).
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The admin token's hash: from `SPOTD_ADMIN_TOKEN`, or the token generated on first
/// start and written to `DATA_DIR/admin.token` (only the hash goes in the store).
async fn admin_hash(store: &Store, data_dir: &Path, env: &Env) -> Result<String, String> {
    if let Some(t) = env.get("SPOTD_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(ids::hash_secret(t.trim()));
        }
    }
    let file = data_dir.join("admin.token");
    let stored: Option<String> = store
        .read(|rx| rx.meta("admin_token_hash"))
        .await
        .map_err(|e: crate::store::StoreError| e.to_string())?;
    // The file is the operator's: after a restore (the database came from another
    // data dir, with that dir's token hash) the token on disk here still opens the
    // admin API.
    if let Some(token) = std::fs::read_to_string(&file)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        let hash = ids::hash_secret(&token);
        if stored.as_deref() != Some(hash.as_str()) {
            let h = hash.clone();
            store
                .write(move |tx| tx.put_meta("admin_token_hash", &h))
                .await
                .map_err(|e: crate::store::StoreError| e.to_string())?;
        }
        return Ok(hash);
    }
    if stored.is_some() {
        tracing::warn!(path = %file.display(), "admin.token was missing: a new admin token was generated");
    }
    let token = format!("adm-{}", ids::random_token(40));
    let hash = ids::hash_secret(&token);
    write_secret_file(&file, &format!("{token}\n"))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let h = hash.clone();
    store
        .write(move |tx| tx.put_meta("admin_token_hash", &h))
        .await
        .map_err(|e: crate::store::StoreError| e.to_string())?;
    Ok(hash)
}

/// In sandbox mode: the demo account with $100, its key in `DATA_DIR/demo.key`.
async fn ensure_demo_account(store: &Store, clock: &Clock, data_dir: &Path) -> Result<(), String> {
    let file = data_dir.join("demo.key");
    let existing: Option<String> = store
        .read(|rx| rx.meta("demo_account"))
        .await
        .map_err(|e: crate::store::StoreError| e.to_string())?;
    if existing.is_some() && file.exists() {
        return Ok(());
    }
    let secret = match existing {
        Some(id) => {
            accounts::create_key(store, clock, &id)
                .await
                .map_err(|e| e.to_string())?
                .secret
        }
        None => {
            let (a, k) =
                accounts::create_account(store, clock, "demo", Usd::from_dollars(DEMO_CREDIT_USD))
                    .await
                    .map_err(|e| e.to_string())?;
            let id = a.id.clone();
            store
                .write(move |tx| tx.put_meta("demo_account", &id))
                .await
                .map_err(|e: crate::store::StoreError| e.to_string())?;
            k.secret
        }
    };
    write_secret_file(&file, &format!("{secret}\n"))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

fn sandbox_providers(h: &sandbox::SandboxHandle, refresh_seconds: u64) -> Vec<ProviderConfig> {
    h.clouds
        .iter()
        .map(|c| ProviderConfig {
            name: c.clone(),
            kind: ProviderKind::Http,
            api_key_env: None,
            refresh_seconds: refresh_seconds.max(1),
            base_url: Some(format!("http://{}/{}", h.addr, c)),
            calls_per_minute: 6000,
            stale_after_seconds: 300,
        })
        .collect()
}

/// Runs the daemon until `shutdown` is cancelled (`spotd serve`). Prints `spotd listening
/// on http://ADDR` to stdout once bound and writes `DATA_DIR/spotd.addr`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", cfg.data_dir.display()))?;
    let addr = cfg.listen_addr()?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "cannot listen on {addr}: the address is already in use (another spotd, or another program, listens there); stop it, or choose another address with --listen"
            )
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    })?;
    let notifier = Notifier::from_env();
    let daemon = Daemon::open_with(cfg, Clock::system(), notifier, Env::Process).await?;
    daemon.serve(listener, shutdown).await
}

/// Part of the error of a start on a data dir another spotd (or a crashed incarnation
/// whose store is still closing) holds.
pub(crate) const DATA_DIR_LOCKED: &str = "its database is locked";

/// How often the rental workers run (the metering interval is a config key).
const CADENCE: Cadence = Cadence {
    sync: Duration::from_secs(1),
    sweep: Duration::from_secs(30),
};

/// A whole spotd: everything `spotd serve` runs, owned by one value.
pub struct Daemon {
    cfg: Arc<Config>,
    clock: Clock,
    store: Store,
    sandbox: Option<sandbox::SandboxHandle>,
    parts: Parts,
    notifier: Notifier,
    cadence: Cadence,
    /// Print `spotd listening on ...` to stdout (off for the simulator, whose stdout
    /// is its summary).
    announce: bool,
}

/// Where the daemon reads the secrets its config names by variable (`api_key_env` of
/// providers and upstreams, `SPOTD_ADMIN_TOKEN`): the process environment, or a fixed
/// list (a daemon in a test's process must not read or set the process's).
#[derive(Clone, Debug, Default)]
pub enum Env {
    #[default]
    Process,
    Fixed(Vec<(String, String)>),
}

impl Env {
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            Env::Process => std::env::var(name).ok(),
            Env::Fixed(v) => v
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
        }
    }
}

impl Daemon {
    /// Opens the daemon on `cfg.data_dir` (created if missing) with `clock`: the store,
    /// the sandbox in sandbox mode (its demo account too), the market after one refresh
    /// of every provider. Nothing serves until [`Daemon::serve`].
    pub async fn open(cfg: Config, clock: Clock) -> Result<Daemon, String> {
        Daemon::open_with(cfg, clock, Notifier::default(), Env::Process).await
    }

    /// [`Daemon::open`] with secrets looked up in `env` instead of the process's.
    pub async fn open_env(cfg: Config, clock: Clock, env: Env) -> Result<Daemon, String> {
        Daemon::open_with(cfg, clock, Notifier::default(), env).await
    }

    /// [`Daemon::open`] that reports to systemd through `notifier`.
    pub(crate) async fn open_with(
        cfg: Config,
        clock: Clock,
        notifier: Notifier,
        env: Env,
    ) -> Result<Daemon, String> {
        let data_dir: PathBuf = cfg.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
        let db_path = data_dir.join("spotd.redb");
        let on_repair = notifier.repair_callback();
        let store = tokio::task::spawn_blocking(move || {
            Store::open_with_repair_callback(&db_path, on_repair)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            StoreError::Locked(_) => format!(
                "the data dir {} is in use by another spotd ({DATA_DIR_LOCKED}); stop that spotd, or choose another --data-dir",
                data_dir.display()
            ),
            e => format!("cannot open the store: {e}"),
        })?;
        let mut sandbox_handle = None;
        match build(&cfg, &store, &mut sandbox_handle, &clock, &env).await {
            Ok(parts) => Ok(Daemon {
                cfg: Arc::new(cfg),
                clock,
                store,
                sandbox: sandbox_handle,
                parts,
                notifier,
                cadence: CADENCE,
                announce: true,
            }),
            Err(e) => {
                // A start that fails halfway (a provider key missing from the
                // environment): both redb files are closed cleanly, so the next start
                // needs no repair.
                if let Some(h) = sandbox_handle {
                    h.shutdown().await;
                }
                let _ = tokio::task::spawn_blocking(move || store.close()).await;
                Err(e)
            }
        }
    }

    /// How often the rental workers sync and sweep (tests and the simulator choose
    /// coarser steps to cover long spans quickly).
    pub fn set_cadence(&mut self, sync: Duration, sweep: Duration) {
        self.cadence = Cadence { sync, sweep };
    }

    /// Serve without printing the `spotd listening on` line.
    pub fn quiet(&mut self) {
        self.announce = false;
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sandbox clouds' address, in sandbox mode (the simulator drives their faults).
    pub fn sandbox_addr(&self) -> Option<std::net::SocketAddr> {
        self.sandbox.as_ref().map(|h| h.addr)
    }

    /// Where background writes run; [`Daemon::serve`] drains it before the store closes.
    pub fn tasks(&self) -> &Tasks {
        &self.parts.tasks
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Serves the API on `listener` and runs every worker until `shutdown` is
    /// cancelled; then stops the workers, waits for every background write, and closes
    /// the sandbox and the store. Prints `spotd listening on http://ADDR` and writes
    /// `DATA_DIR/spotd.addr`. The workers' tickers are registered before this returns
    /// its future, so a manual clock's `settle` waits for their start-up rounds.
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let workers_stop = CancellationToken::new();
        let sync = workers::offer_sync::run(
            self.parts.registry.clone(),
            self.parts.market.clone(),
            self.store.clone(),
            self.clock.clone(),
            workers_stop.clone(),
        );
        let rental_loop = workers::rentals::run(
            self.parts.rentals.clone(),
            self.cadence,
            workers_stop.clone(),
        );
        let reaper_loop = reaper::run(self.parts.inference.clone(), workers_stop.clone());
        let retention_loop = workers::retention::run(
            self.store.clone(),
            self.clock.clone(),
            self.cfg.billing.request_detail_days,
            self.cfg.history.retention_days,
            self.cfg.webhooks.retention_days,
            workers_stop.clone(),
        );
        let webhooks_loop = deliver::run(self.parts.deliverer.clone(), workers_stop.clone());
        // A preempted deployment is redeployed in the background (a weak reference: the
        // rentals must not keep inference alive).
        {
            let inf = Arc::downgrade(&self.parts.inference);
            let tasks = self.parts.tasks.clone();
            self.parts.rentals.on_preempted(move |r| {
                if let Some(inf) = inf.upgrade() {
                    tasks.spawn(async move { inf.redeploy(&r).await });
                }
            });
        }
        let workers = tokio::spawn(async move {
            tokio::join!(
                sync,
                rental_loop,
                reaper_loop,
                retention_loop,
                webhooks_loop
            );
        });
        self.run_api(listener, shutdown, workers_stop, workers)
    }

    async fn run_api(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        workers_stop: CancellationToken,
        workers: tokio::task::JoinHandle<()>,
    ) -> Result<(), String> {
        let result = self.serve_api(listener, shutdown).await;
        workers_stop.cancel();
        if tokio::time::timeout(WORKERS_DRAIN, workers).await.is_err() {
            tracing::warn!("the workers did not stop in time");
        }
        // Charges of streams that ended, activity writes, redeploys: all of them land
        // before the store closes.
        if !self.parts.tasks.drain(TASKS_DRAIN).await {
            tracing::error!(
                left = self.parts.tasks.len(),
                "background writes still running when the store closes"
            );
        }
        self.close().await;
        result
    }

    async fn serve_api(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let app = Arc::new(App::new(
            self.cfg.clone(),
            self.store.clone(),
            self.parts.market.clone(),
            self.parts.registry.clone(),
            self.parts.rentals.clone(),
            self.parts.inference.clone(),
            self.clock.clone(),
            self.parts.admin_hash.clone(),
        ));
        std::fs::write(self.cfg.data_dir.join("spotd.addr"), format!("{bound}\n"))
            .map_err(|e| format!("cannot write spotd.addr: {e}"))?;
        if self.announce {
            // Not println!: a closed stdout must not stop the daemon.
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "spotd listening on http://{bound}").and_then(|_| out.flush());
        }
        tracing::info!(addr = %bound, sandbox = self.cfg.sandbox_mode(), "spotd listening");
        self.notifier.ready();
        let watchdog_stop = CancellationToken::new();
        tokio::spawn(self.notifier.clone().run_watchdog(watchdog_stop.clone()));
        tokio::spawn({
            let (n, s) = (self.notifier.clone(), shutdown.clone());
            async move {
                s.cancelled().await;
                n.stopping();
            }
        });
        api::serve(listener, app, shutdown).await;
        tracing::info!("shutting down");
        watchdog_stop.cancel();
        Ok(())
    }

    /// Closes the sandbox and the store (what [`Daemon::serve`] does at its end), for a
    /// daemon that was opened but never served.
    pub(crate) async fn close(self) {
        if let Some(h) = self.sandbox {
            h.shutdown().await;
        }
        let store = self.store;
        drop(self.parts);
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// How long the workers get to finish their round after shutdown.
const WORKERS_DRAIN: Duration = Duration::from_secs(10);
/// How long background writes get after the API and the workers stopped.
const TASKS_DRAIN: Duration = Duration::from_secs(30);

/// What [`build`] makes besides the store and the sandbox.
struct Parts {
    market: Market,
    registry: Arc<Registry>,
    rentals: Rentals,
    inference: Arc<Inference>,
    tasks: Tasks,
    admin_hash: String,
    deliverer: Arc<Deliverer>,
}

/// Everything after the store is open: the sandbox (when no provider is configured),
/// the market after a first refresh, rentals and inference. The caller closes the store
/// and the sandbox if this fails.
async fn build(
    cfg: &Config,
    store: &Store,
    sandbox_handle: &mut Option<sandbox::SandboxHandle>,
    clock: &Clock,
    env: &Env,
) -> Result<Parts, String> {
    let data_dir = cfg.data_dir.clone();
    // The webhooks outbox sees every rental and account write from here on.
    let hooks_wake = Signal::new("webhooks");
    store.observe(Arc::new(Outbox {
        clock: clock.clone(),
        low_balance: cfg.webhooks.low_balance_usd,
        wake: hooks_wake.clone(),
    }));
    let admin_hash = admin_hash(store, &data_dir, env).await?;

    // Sandbox mode: the simulated clouds run in-process on their own loopback port.
    let mut providers = cfg.providers.clone();
    if cfg.sandbox_mode() {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the sandbox: {e}"))?;
        // The sandbox keeps its clouds in DATA_DIR/sandbox/clouds.redb.
        let h = sandbox::start(l, cfg.sandbox.clone(), &data_dir, clock.clone()).await?;
        // `--sandbox` with `[[providers]]` configured: the simulated clouds, and those
        // too (a loopback pool next to the sandbox, as the console's browser test uses).
        providers = sandbox_providers(&h, cfg.sandbox.refresh_seconds);
        providers.extend(cfg.providers.iter().cloned());
        *sandbox_handle = Some(h);
        ensure_demo_account(store, clock, &data_dir).await?;
    }
    let http = HttpClient::new(PROVIDER_TIMEOUT);
    let registry = Arc::new(Registry::with_env(&providers, http, |k| env.get(k))?);
    let mut offers = store
        .read(|rx| rx.offers())
        .await
        .map_err(|e: crate::store::StoreError| e.to_string())?;
    // Offers of providers no longer configured (say, the sandbox's before a real
    // config) would never refresh or expire: drop them from the store and the market.
    let gone: std::collections::BTreeSet<String> = offers
        .iter()
        .filter(|o| registry.get(&o.provider).is_none())
        .map(|o| o.provider.clone())
        .collect();
    if !gone.is_empty() {
        tracing::info!(providers = ?gone, "dropping offers of providers no longer configured");
        offers.retain(|o| !gone.contains(&o.provider));
        store
            .write(move |tx| {
                for p in &gone {
                    tx.replace_offers(p, &[])?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let market = Market::from_offers(offers);

    // One refresh before serving, so the first request sees a market; providers in
    // parallel, each bounded, so a slow one delays start-up by 10 s at most.
    let names = registry.names();
    let (registry_ref, market_ref, clock_ref) = (&registry, &market, clock);
    let first = names.iter().map(|name| async move {
        let f = workers::offer_sync::refresh_once(registry_ref, market_ref, store, clock_ref, name);
        if tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .is_err()
        {
            tracing::warn!(provider = %name, "first offer refresh timed out");
        }
    });
    futures_util::future::join_all(first).await;

    let rentals = Rentals::new(
        store.clone(),
        market.clone(),
        registry.clone(),
        clock.clone(),
        RentalsConfig {
            min_session_seconds: cfg.billing.min_session_seconds,
            metering_interval_seconds: cfg.billing.metering_interval_seconds,
            provision_timeout_seconds: cfg.deployments.provision_timeout_seconds,
            max_active_rentals_per_account: cfg.limits.max_active_rentals_per_account,
            create_grace_ms: 2 * PROVIDER_TIMEOUT.as_millis() as i64,
        },
    );

    // Inference: the catalogue of hosted and cold models.
    let hosted = sandbox_handle.as_ref().map(|h| {
        (
            h.hosted_base_url.clone(),
            sandbox::HOSTED_MODELS
                .iter()
                .chain(sandbox::HOSTED_EMBEDDING_MODELS)
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
        )
    });
    let catalog = Catalog::build(
        cfg,
        hosted.as_ref().map(|(b, m)| (b.as_str(), m.as_slice())),
        |k| env.get(k),
    )?;
    let estimated_deploy_seconds = if cfg.sandbox_mode() {
        cfg.sandbox.provision_seconds + cfg.sandbox.model_load_seconds
    } else {
        DEFAULT_DEPLOY_ESTIMATE_SECONDS
    };
    let tasks = Tasks::new(clock.clone());
    let inference = Arc::new(Inference::new(
        catalog,
        store.clone(),
        market.clone(),
        rentals.clone(),
        clock.clone(),
        HttpClient::new(Duration::from_secs(
            cfg.deployments.upstream_timeout_seconds.max(1),
        )),
        InferenceConfig {
            idle_timeout_seconds: cfg.deployments.idle_timeout_seconds,
            upstream_timeout: Duration::from_secs(cfg.deployments.upstream_timeout_seconds.max(1)),
            estimated_deploy_seconds,
            reserve_output_tokens: cfg.billing.hosted_reserve_output_tokens,
        },
        tasks.clone(),
    ));
    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        clock.clone(),
        tasks.clone(),
        Duration::from_secs(cfg.webhooks.timeout_seconds.max(1)),
        hooks_wake,
    ));
    Ok(Parts {
        market,
        registry,
        rentals,
        inference,
        tasks,
        admin_hash,
        deliverer,
    })
}
