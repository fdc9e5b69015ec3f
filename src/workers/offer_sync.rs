//! Offer sync: one loop per provider keeps its offers in the market and in redb.
//!
//! A round lists the provider's offers (through its quota), normalizes them, persists
//! them (with the refresh's price history rows, `crate::history`, in the same
//! transaction), then swaps them into the market — redb first, so a restart never shows
//! offers the market had not committed. A failed round keeps the last offers and
//! marks the provider stale; once `stale_after_seconds` have passed since its last
//! good refresh, its offers are dropped from market and store ("failing"), because
//! renting from a list that old would mostly hit vanished machines.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Millis, Ticker};
use crate::error::Error;
use crate::market::{insane_offer, offer_from_provider, Market};
use crate::model::Offer;
use crate::providers::registry::Registry;
use crate::providers::ProviderError;
use crate::store::{Store, StoreError};

/// What one round did.
#[derive(Clone, Debug, PartialEq)]
pub enum RefreshOutcome {
    /// The provider answered; the market now holds `offers` of its offers.
    Refreshed { offers: usize },
    /// The round failed; the last offers are kept. `retry_after_secs` when the
    /// provider asked for a pause (429).
    Stale {
        error: String,
        retry_after_secs: Option<u64>,
    },
    /// The round failed and the provider has been failing for longer than
    /// `stale_after_seconds` (or has never had offers): its offers are gone.
    Dropped { error: String },
}

/// Runs one sync loop per provider until `shutdown`; returns once every loop ended.
/// Each loop's ticker is registered when this is called.
pub fn run(
    registry: Arc<Registry>,
    market: Market,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let counts = market.count_by_provider();
    let mut loops = Vec::new();
    for name in registry.names() {
        registry.set_offer_count(&name, counts.get(&name).copied().unwrap_or(0));
        let (Some(config), Some(signal)) =
            (registry.config(&name).cloned(), registry.wake_signal(&name))
        else {
            continue;
        };
        let ticker = clock.ticker(signal);
        loops.push(provider_loop(
            registry.clone(),
            market.clone(),
            store.clone(),
            clock.clone(),
            shutdown.clone(),
            (name, config.refresh_seconds),
            ticker,
        ));
    }
    async move {
        let mut set = tokio::task::JoinSet::new();
        for l in loops {
            set.spawn(l);
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "an offer sync loop ended abnormally");
            }
        }
    }
}

async fn provider_loop(
    registry: Arc<Registry>,
    market: Market,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
    (name, refresh_seconds): (String, u64),
    mut ticker: Ticker,
) {
    let every_ms = refresh_seconds.max(1) as i64 * 1000;
    // The daemon refreshed every provider once before serving: the loop waits first.
    let mut wait_ms = every_ms;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.sleep(wait_ms) => {}
        }
        let round = refresh_once(&registry, &market, &store, &clock, &name);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = round => o,
        };
        wait_ms = every_ms;
        match outcome {
            Ok(RefreshOutcome::Refreshed { offers }) => {
                tracing::debug!(provider = %name, offers, "offers refreshed")
            }
            Ok(RefreshOutcome::Stale {
                error,
                retry_after_secs,
            }) => {
                tracing::warn!(provider = %name, %error, "offer refresh failed; keeping the last offers");
                if let Some(s) = retry_after_secs {
                    wait_ms = wait_ms.max(s.min(86_400) as i64 * 1000);
                }
            }
            Ok(RefreshOutcome::Dropped { error }) => {
                tracing::warn!(provider = %name, %error, "provider failing; its offers are dropped")
            }
            Err(e) => tracing::error!(provider = %name, error = %e, "offer refresh"),
        }
    }
}

/// One refresh round of provider `name`: what the loop does each interval, callable
/// directly by start-up and tests. `Err` only for a provider the registry does not know
/// (or if the index rebuild panicked).
pub async fn refresh_once(
    registry: &Registry,
    market: &Market,
    store: &Store,
    clock: &Clock,
    name: &str,
) -> Result<RefreshOutcome, Error> {
    let (Some(provider), Some(config)) = (registry.get(name), registry.config(name)) else {
        return Err(Error::NotFound(format!("no provider named '{name}'")));
    };
    let stale_after_ms = i64::try_from(config.stale_after_seconds)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let listed = provider.list_offers().await;
    let now = clock.now();
    let (error, retry_after_secs) = match listed {
        Ok(list) => {
            let total = list.len();
            let mut why = None;
            let offers: Vec<Offer> = list
                .into_iter()
                .filter(|p| match insane_offer(p) {
                    Some(w) => {
                        why.get_or_insert((p.id.clone(), w));
                        false
                    }
                    None => true,
                })
                .map(|p| offer_from_provider(name, p, now))
                .collect();
            if let Some((id, w)) = why {
                tracing::warn!(provider = name, skipped = total - offers.len(), first = %id, reason = w, "offers refused");
            }
            match persist(store, name, offers, now).await {
                Ok(offers) => {
                    // Rebuilding the index sorts the whole market (~70 ms at 100k
                    // offers): off the executor threads.
                    let (m, n) = (market.clone(), name.to_string());
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || m.replace_provider(&n, offers)).await
                    {
                        return Err(Error::Bug(format!("rebuilding the offer index: {e}")));
                    }
                    let count = market.count_by_provider().get(name).copied().unwrap_or(0);
                    registry.record_success(name, count, now);
                    return Ok(RefreshOutcome::Refreshed { offers: count });
                }
                Err(e) => (format!("storing the offers failed: {e}"), None),
            }
        }
        Err(e) => {
            let retry = match &e {
                ProviderError::RateLimited { retry_after_secs } => *retry_after_secs,
                _ => None,
            };
            (e.to_string(), retry)
        }
    };
    registry.record_failure(name, error.clone(), now);
    // "Since the last success": in this process, else the age of the offers loaded
    // from redb; a provider with neither has nothing to keep.
    let shown_since = registry
        .last_success(name)
        .or_else(|| market.provider_updated_at(name));
    let expired = shown_since.is_none_or(|t: Millis| now.saturating_sub(t) >= stale_after_ms);
    if !expired {
        return Ok(RefreshOutcome::Stale {
            error,
            retry_after_secs,
        });
    }
    let already_dropped = registry.status(name).is_some_and(|s| s.status == "failing");
    if !already_dropped {
        let n = name.to_string();
        let dropped: Result<(), StoreError> =
            store.write(move |tx| tx.replace_offers(&n, &[])).await;
        if let Err(e) = dropped {
            // The market still drops them: showing them is the harm; the store
            // copy is only reloaded at start, and dropped again by the next round.
            tracing::error!(provider = %name, error = %e, "could not delete stale offers");
        }
        market.drop_provider(name);
        registry.record_dropped(name);
    }
    Ok(RefreshOutcome::Dropped { error })
}

/// Writes `provider`'s offers to redb in place of the old ones, and this refresh into
/// the price history, in one transaction; hands the offers back.
async fn persist(
    store: &Store,
    provider: &str,
    offers: Vec<Offer>,
    now: Millis,
) -> Result<Vec<Offer>, StoreError> {
    // Shared with the writer closure instead of copied: the closure is dropped once
    // it ran, so the vector comes back without a clone in the usual case.
    let shared = Arc::new(offers);
    let for_writer = shared.clone();
    let p = provider.to_string();
    store
        .write(move |tx| {
            tx.replace_offers(&p, &for_writer)?;
            crate::history::record(tx, &p, &for_writer, now)
        })
        .await?;
    Ok(Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::{ProviderConfig, ProviderKind};
    use crate::money::Usd;
    use crate::providers::{CreateInstance, Instance, Provider, ProviderOffer};

    /// A provider whose offers and failures the test controls; each listing is
    /// reported on `calls`.
    struct Fake {
        offers: Mutex<Vec<ProviderOffer>>,
        failing: AtomicBool,
        calls: mpsc::UnboundedSender<()>,
    }

    #[async_trait]
    impl Provider for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
            let _ = self.calls.send(());
            if self.failing.load(Ordering::SeqCst) {
                return Err(ProviderError::Unavailable("HTTP 502".into()));
            }
            Ok(self.offers.lock().unwrap().clone())
        }
        async fn create_instance(&self, _: &CreateInstance) -> Result<Instance, ProviderError> {
            Err(ProviderError::NoCapacity)
        }
        async fn get_instance(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
            Ok(None)
        }
        async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
            Ok(Vec::new())
        }
        async fn terminate(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
            Ok(None)
        }
    }

    fn offer(id: &str, price: &str) -> ProviderOffer {
        ProviderOffer {
            id: id.into(),
            gpu: "NVIDIA H100 80GB HBM3".into(),
            gpu_count: 1,
            vram_gb: 80,
            vcpus: 16,
            ram_gb: 128,
            disk_gb: 500,
            region: "us-east-1".into(),
            price_per_hour: Usd::parse(price).unwrap(),
            on_demand_price_per_hour: None,
            interruptible: true,
            reliability: 0.98,
            available: 1,
        }
    }

    struct Setup {
        fake: Arc<Fake>,
        calls: mpsc::UnboundedReceiver<()>,
        registry: Arc<Registry>,
        market: Market,
        store: Store,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    fn setup(refresh_seconds: u64) -> Setup {
        let (tx, calls) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            offers: Mutex::new(vec![offer("a", "2.5"), offer("b", "1.75")]),
            failing: AtomicBool::new(false),
            calls: tx,
        });
        let cfg = ProviderConfig {
            name: "fake".into(),
            kind: ProviderKind::Http,
            api_key_env: None,
            refresh_seconds,
            base_url: None,
            calls_per_minute: 6000,
            stale_after_seconds: 300,
        };
        let registry = Arc::new(
            Registry::from_providers(vec![(cfg, fake.clone() as Arc<dyn Provider>)]).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("spotd.redb")).unwrap();
        Setup {
            fake,
            calls,
            registry,
            market: Market::new(),
            store,
            clock: Clock::manual(1_000_000),
            _dir: dir,
        }
    }

    async fn stored(store: &Store) -> Vec<Offer> {
        store.read(|rx| rx.offers()).await.unwrap()
    }

    #[tokio::test]
    async fn refresh_persists_then_stale_then_dropped() {
        let s = setup(60);
        let round = || refresh_once(&s.registry, &s.market, &s.store, &s.clock, "fake");
        assert_eq!(
            round().await.unwrap(),
            RefreshOutcome::Refreshed { offers: 2 }
        );
        let o = s.market.get("fake:b").unwrap();
        assert_eq!(
            (o.gpu.as_str(), o.price_per_hour),
            ("H100 SXM", Usd::from_micros(1_750_000))
        );
        assert_eq!(o.updated_at, 1_000_000);
        assert_eq!(stored(&s.store).await.len(), 2);
        assert_eq!(s.registry.status("fake").unwrap().status, "ok");

        // An offer not seen in a refresh disappears, from both copies.
        s.fake.offers.lock().unwrap().remove(0);
        s.clock.advance(60_000);
        assert_eq!(
            round().await.unwrap(),
            RefreshOutcome::Refreshed { offers: 1 }
        );
        assert!(s.market.get("fake:a").is_none());
        assert_eq!(stored(&s.store).await.len(), 1);

        // Failing: the last offers stay, marked stale.
        s.fake.failing.store(true, Ordering::SeqCst);
        s.clock.advance(299_000);
        assert!(
            matches!(round().await.unwrap(), RefreshOutcome::Stale { error, .. } if error.contains("502"))
        );
        assert_eq!(s.market.len(), 1);
        assert_eq!(stored(&s.store).await.len(), 1);
        let st = s.registry.status("fake").unwrap();
        assert_eq!((st.status, st.stale, st.offers), ("stale", true, 1));
        assert_eq!(st.last_refresh_at, Some(1_060_000));
        assert_eq!(st.last_attempt_at, Some(1_359_000));
        assert!(st.last_error.unwrap().contains("502"));

        // stale_after_seconds after the last success: dropped everywhere.
        s.clock.advance(1_000);
        assert!(matches!(
            round().await.unwrap(),
            RefreshOutcome::Dropped { .. }
        ));
        assert_eq!(s.market.len(), 0);
        assert!(stored(&s.store).await.is_empty());
        let st = s.registry.status("fake").unwrap();
        assert_eq!((st.status, st.stale, st.offers), ("failing", false, 0));

        // Recovery brings everything back.
        s.fake.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            round().await.unwrap(),
            RefreshOutcome::Refreshed { offers: 1 }
        );
        assert_eq!(s.registry.status("fake").unwrap().status, "ok");
        assert_eq!(stored(&s.store).await.len(), 1);
    }

    /// A negative price would pay the renter; no GPU or no id is nothing to rent:
    /// such offers never reach the market, the others of the listing do.
    #[tokio::test]
    async fn insane_offers_are_refused_one_by_one() {
        let s = setup(60);
        {
            let mut o = s.fake.offers.lock().unwrap();
            o.push(offer("neg", "-0.5"));
            o.push(ProviderOffer {
                gpu_count: 0,
                ..offer("none", "1")
            });
            o.push(offer(" ", "1"));
            o.push(ProviderOffer {
                on_demand_price_per_hour: Some(Usd::from_micros(-1)),
                ..offer("negod", "1")
            });
        }
        let out = refresh_once(&s.registry, &s.market, &s.store, &s.clock, "fake").await;
        assert_eq!(out.unwrap(), RefreshOutcome::Refreshed { offers: 2 });
        let mut ids: Vec<String> = stored(&s.store).await.into_iter().map(|o| o.id).collect();
        ids.sort();
        assert_eq!(ids, vec!["fake:a", "fake:b"]);
    }

    #[tokio::test]
    async fn offers_loaded_at_start_expire_by_their_age() {
        let s = setup(60);
        s.store
            .write(|tx| {
                let o = offer_from_provider("fake", offer("old", "1"), 1_000_000 - 400_000);
                tx.replace_offers("fake", &[o])
            })
            .await
            .unwrap();
        let market = Market::from_offers(stored(&s.store).await);
        s.fake.failing.store(true, Ordering::SeqCst);
        let out = refresh_once(&s.registry, &market, &s.store, &s.clock, "fake")
            .await
            .unwrap();
        assert!(matches!(out, RefreshOutcome::Dropped { .. }), "{out:?}");
        assert!(market.is_empty());
        assert!(stored(&s.store).await.is_empty());
        assert!(
            refresh_once(&s.registry, &market, &s.store, &s.clock, "nope")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn run_refreshes_on_wake_and_stops_on_shutdown() {
        // An hour between refreshes: only the wake-ups can make rounds (the daemon makes
        // the first one before it starts the loops).
        let mut s = setup(3600);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            s.registry.clone(),
            s.market.clone(),
            s.store.clone(),
            s.clock.clone(),
            shutdown.clone(),
        ));
        let wait = std::time::Duration::from_secs(10);
        s.registry.refresh_now("fake");
        tokio::time::timeout(wait, s.calls.recv()).await.unwrap();
        s.fake.offers.lock().unwrap().push(offer("c", "3"));
        s.registry.refresh_now("fake");
        tokio::time::timeout(wait, s.calls.recv()).await.unwrap();
        shutdown.cancel();
        tokio::time::timeout(wait, task).await.unwrap().unwrap();
        // The second round finished before shutdown was noticed, or was cut short;
        // either way the first round's offers are in.
        assert!(s.market.get("fake:a").is_some());
        assert!(s.calls.try_recv().is_err(), "no round after shutdown");
    }
}
