//! `spotd serve`: opens the store, starts the sandbox (in sandbox mode), the workers and
//! the API server, and runs until `shutdown` is cancelled.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accounts;
use crate::api::{self, App};
use crate::clock::Clock;
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
use crate::store::Store;
use crate::workers;

/// Credit of the sandbox's demo account.
const DEMO_CREDIT_USD: i64 = 100;
/// Cold start to ready, when no sandbox timing says better (real clouds: minutes).
const DEFAULT_DEPLOY_ESTIMATE_SECONDS: u64 = 300;
/// Timeout of every provider call.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes `contents` to `path` with mode 0600 (created or replaced).
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
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
async fn admin_hash(store: &Store, data_dir: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var("SPOTD_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(ids::hash_secret(t.trim()));
        }
    }
    let file = data_dir.join("admin.token");
    let stored: Option<String> = store
        .read(|rx| rx.meta("admin_token_hash"))
        .await
        .map_err(|e: crate::store::StoreError| e.to_string())?;
    if let (Some(h), true) = (&stored, file.exists()) {
        return Ok(h.clone());
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

/// Runs the daemon until `shutdown` is cancelled. Prints `spotd listening on
/// http://ADDR` to stdout once bound and writes `DATA_DIR/spotd.addr`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), String> {
    let data_dir: PathBuf = cfg.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
    let addr = cfg.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let clock = Clock::system();
    let db_path = data_dir.join("spotd.redb");
    let notifier = Notifier::from_env();
    let on_repair = notifier.repair_callback();
    let store =
        tokio::task::spawn_blocking(move || Store::open_with_repair_callback(&db_path, on_repair))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot open the store: {e}"))?;
    let mut sandbox_handle = None;
    let result = serve(
        &cfg,
        &store,
        &mut sandbox_handle,
        listener,
        clock,
        &data_dir,
        notifier,
        shutdown,
    )
    .await;
    // Also when start-up fails halfway (a provider key missing from the environment):
    // both redb files are closed cleanly, so the next start needs no repair.
    if let Some(h) = sandbox_handle {
        h.shutdown().await;
    }
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    result
}

/// Everything after the store is open: the sandbox (when no provider is configured),
/// the market, the workers, the API until `shutdown`. The caller closes the store and
/// the sandbox whatever this answers.
#[allow(clippy::too_many_arguments)]
async fn serve(
    cfg: &Config,
    store: &Store,
    sandbox_handle: &mut Option<sandbox::SandboxHandle>,
    listener: TcpListener,
    clock: Clock,
    data_dir: &Path,
    notifier: Notifier,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let store = store.clone();
    let data_dir = data_dir.to_path_buf();
    let admin_hash = admin_hash(&store, &data_dir).await?;

    // Sandbox mode: the simulated clouds run in-process on their own loopback port.
    let mut providers = cfg.providers.clone();
    if cfg.sandbox_mode() {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the sandbox: {e}"))?;
        // The sandbox keeps its clouds in DATA_DIR/sandbox/clouds.redb.
        let h = sandbox::start(l, cfg.sandbox.clone(), &data_dir, clock.clone()).await?;
        providers = sandbox_providers(&h, cfg.sandbox.refresh_seconds);
        *sandbox_handle = Some(h);
        ensure_demo_account(&store, &clock, &data_dir).await?;
    }
    let http = HttpClient::new(PROVIDER_TIMEOUT);
    let registry = Arc::new(Registry::new(&providers, http)?);
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
    let (registry_ref, market_ref, store_ref, clock_ref) = (&registry, &market, &store, &clock);
    let first = names.iter().map(|name| async move {
        let f =
            workers::offer_sync::refresh_once(registry_ref, market_ref, store_ref, clock_ref, name);
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
    let workers_stop = CancellationToken::new();
    let sync_task = tokio::spawn(workers::offer_sync::run(
        registry.clone(),
        market.clone(),
        store.clone(),
        clock.clone(),
        workers_stop.clone(),
    ));
    let rental_task = tokio::spawn(workers::rentals::run(
        rentals.clone(),
        Duration::from_secs(1),
        Duration::from_secs(30),
        workers_stop.clone(),
    ));

    // Inference: the catalogue, the reaper, and redeploys after preemptions.
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
        |k| std::env::var(k).ok(),
    )?;
    let estimated_deploy_seconds = if cfg.sandbox_mode() {
        cfg.sandbox.provision_seconds + cfg.sandbox.model_load_seconds
    } else {
        DEFAULT_DEPLOY_ESTIMATE_SECONDS
    };
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
        },
    ));
    let (preempt_tx, mut preempt_rx) = tokio::sync::mpsc::unbounded_channel();
    rentals.on_preempted(preempt_tx);
    let redeployer = {
        let inf = inference.clone();
        let stop = workers_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = preempt_rx.recv() => match r {
                        Some(r) => inf.redeploy(&r).await,
                        None => break,
                    },
                }
            }
        })
    };
    let reaper_task = tokio::spawn(reaper::run(inference.clone(), workers_stop.clone()));

    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Arc::new(App::new(
        Arc::new(cfg.clone()),
        store.clone(),
        market,
        registry,
        rentals,
        inference,
        clock,
        admin_hash,
    ));
    std::fs::write(data_dir.join("spotd.addr"), format!("{bound}\n"))
        .map_err(|e| format!("cannot write spotd.addr: {e}"))?;
    println!("spotd listening on http://{bound}");
    tracing::info!(addr = %bound, sandbox = cfg.sandbox_mode(), "spotd listening");
    notifier.ready();
    let watchdog_stop = CancellationToken::new();
    tokio::spawn(notifier.clone().run_watchdog(watchdog_stop.clone()));
    tokio::spawn({
        let (n, s) = (notifier.clone(), shutdown.clone());
        async move {
            s.cancelled().await;
            n.stopping();
        }
    });

    api::serve(listener, app, shutdown).await;

    tracing::info!("shutting down");
    workers_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = sync_task.await;
        let _ = rental_task.await;
        let _ = reaper_task.await;
        let _ = redeployer.await;
    })
    .await;
    watchdog_stop.cancel();
    Ok(())
}
