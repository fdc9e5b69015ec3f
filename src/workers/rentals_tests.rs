//! Deterministic tests of the rental workers: a manual clock, an in-memory provider
//! and a real store in a tempdir, with `sync_once` / `meter_once` / `reconcile_once`
//! called directly. Nothing sleeps; time moves only through `Clock::advance`, so every
//! charge can be asserted to the micro-dollar with `money::prorate`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{meter_once, reconcile_once, sync_once};
use crate::accounts;
use crate::clock::{rfc3339, Clock, Millis};
use crate::config::{ProviderConfig, ProviderKind};
use crate::market::Market;
use crate::model::{Account, LedgerKind, Offer, Rental, RentalState, TerminationReason};
use crate::money::{prorate, Usd};
use crate::providers::registry::Registry;
use crate::providers::{
    CreateInstance, Instance, InstanceState, Provider, ProviderError, ProviderOffer,
};
use crate::rentals::{RentRequest, RentTarget, Rentals, RentalsConfig};
use crate::store::Store;

/// $2.17/h: not a whole number of micro-dollars per second, so per-step rounding
/// would show up in the totals.
const PRICE: Usd = Usd(2_170_000);
const START: Millis = 1_800_000_000_000;
const PROVISION_TIMEOUT_S: u64 = 300;
const METER_STEP_S: u64 = 10;
const MIN_SESSION_S: u64 = 600;

/// What the next `create_instance` answers.
enum CreateMode {
    NoCapacity,
    /// The instance is made, but the answer is lost (a 5xx after the fact).
    UnavailableButCreated,
    /// Never answers (the daemon is killed while it waits).
    Hang,
}

/// An in-memory cloud. Instances stay listed after termination (state `terminated`),
/// like real providers do for a while.
#[derive(Default)]
struct FakeProvider {
    instances: Mutex<Vec<Instance>>,
    next_create: Mutex<VecDeque<CreateMode>>,
    creates: AtomicUsize,
    /// How many more terminate calls answer "still terminating" before one completes.
    lingering_terminates: AtomicUsize,
    terminated_ids: Mutex<Vec<String>>,
    /// Instances `list_instances` leaves out (a lagging listing); `get_instance` still
    /// answers them.
    unlisted: Mutex<Vec<String>>,
    clock: Mutex<Option<Clock>>,
}

impl FakeProvider {
    /// What the next `create_instance` answers.
    fn next_create_is(&self, mode: CreateMode) {
        self.next_create.lock().unwrap().push_back(mode);
    }

    /// How many `create_instance` calls it got.
    fn creates(&self) -> usize {
        self.creates.load(Ordering::SeqCst)
    }

    fn now(&self) -> Millis {
        self.clock
            .lock()
            .unwrap()
            .as_ref()
            .map(Clock::now)
            .unwrap_or(START)
    }

    fn push(&self, label: &str, state: InstanceState) -> Instance {
        let mut list = self.instances.lock().unwrap();
        let inst = Instance {
            id: format!("i-{}", list.len() + 1),
            offer_id: "o1".into(),
            label: label.into(),
            state,
            endpoint: None,
            ssh: None,
            created_at: rfc3339(self.now()),
            ended_at: None,
        };
        list.push(inst.clone());
        inst
    }

    fn set_state(&self, id: &str, state: InstanceState, ended_at: Option<Millis>) {
        let mut list = self.instances.lock().unwrap();
        let i = list
            .iter_mut()
            .find(|i| i.id == id)
            .expect("no such instance");
        i.state = state;
        i.ended_at = ended_at.map(rfc3339);
    }

    /// The provider forgets the instance entirely (404 from then on).
    fn forget(&self, id: &str) {
        self.instances.lock().unwrap().retain(|i| i.id != id);
    }

    fn state(&self, id: &str) -> InstanceState {
        let list = self.instances.lock().unwrap();
        list.iter()
            .find(|i| i.id == id)
            .expect("no such instance")
            .state
    }

    fn terminated(&self) -> Vec<String> {
        self.terminated_ids.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        "fake"
    }
    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        Ok(Vec::new())
    }
    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let mode = self.next_create.lock().unwrap().pop_front();
        match mode {
            Some(CreateMode::NoCapacity) => Err(ProviderError::NoCapacity),
            Some(CreateMode::UnavailableButCreated) => {
                self.push(&req.label, InstanceState::Provisioning);
                Err(ProviderError::Unavailable("502 after the fact".into()))
            }
            Some(CreateMode::Hang) => std::future::pending().await,
            None => Ok(self.push(&req.label, InstanceState::Provisioning)),
        }
    }
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let list = self.instances.lock().unwrap();
        Ok(list.iter().find(|i| i.id == id).cloned())
    }
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let unlisted = self.unlisted.lock().unwrap().clone();
        let list = self.instances.lock().unwrap();
        Ok(list
            .iter()
            .filter(|i| !unlisted.contains(&i.id))
            .cloned()
            .collect())
    }
    async fn terminate(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        let now = self.now();
        let mut list = self.instances.lock().unwrap();
        let Some(i) = list.iter_mut().find(|i| i.id == id) else {
            return Ok(None);
        };
        self.terminated_ids.lock().unwrap().push(id.to_string());
        let linger = self
            .lingering_terminates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if linger {
            i.state = InstanceState::Terminating;
        } else if !i.state.is_gone() {
            i.state = InstanceState::Terminated;
            i.ended_at = Some(rfc3339(now));
        }
        Ok(Some(i.clone()))
    }
}

fn offer(native: &str, price: Usd) -> Offer {
    Offer {
        id: format!("fake:{native}"),
        provider: "fake".into(),
        native_id: native.into(),
        gpu: "H100 SXM".into(),
        gpu_count: 1,
        vram_gb: 80,
        vcpus: 16,
        ram_gb: 128,
        disk_gb: 500,
        region: "us-east".into(),
        price_per_hour: price,
        on_demand_price_per_hour: None,
        interruptible: true,
        reliability: 0.99,
        available: 3,
        updated_at: START,
    }
}

struct Harness {
    rs: Rentals,
    fake: Arc<FakeProvider>,
    clock: Clock,
    store: Store,
    account: String,
    _dir: tempfile::TempDir,
}

async fn harness(credit: Usd) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let clock = Clock::manual(START);
    let fake = Arc::new(FakeProvider::default());
    *fake.clock.lock().unwrap() = Some(clock.clone());
    let config = ProviderConfig {
        name: "fake".into(),
        kind: ProviderKind::Http,
        api_key_env: None,
        refresh_seconds: 60,
        base_url: None,
        calls_per_minute: 60_000,
        stale_after_seconds: 300,
    };
    let dyn_fake: Arc<dyn Provider> = fake.clone();
    let registry = Registry::from_providers(vec![(config, dyn_fake)]).unwrap();
    let market = Market::from_offers(vec![offer("o1", PRICE), offer("o2", Usd(1_230_000))]);
    let cfg = RentalsConfig {
        min_session_seconds: MIN_SESSION_S,
        metering_interval_seconds: METER_STEP_S,
        provision_timeout_seconds: PROVISION_TIMEOUT_S,
        max_active_rentals_per_account: 10,
        create_grace_ms: 30_000,
    };
    let rs = Rentals::new(
        store.clone(),
        market,
        Arc::new(registry),
        clock.clone(),
        cfg,
    );
    let (a, _key) = accounts::create_account(&store, &clock, "tester", credit)
        .await
        .unwrap();
    Harness {
        rs,
        fake,
        clock,
        store,
        account: a.id,
        _dir: dir,
    }
}

fn rent_o1() -> RentRequest {
    RentRequest {
        target: RentTarget::Offer("fake:o1".into()),
        max_price_per_hour: None,
        name: None,
        image: None,
        ssh_public_key: None,
        env: Default::default(),
        idle_timeout_seconds: None,
        max_duration_seconds: None,
        max_cost: None,
        model: None,
        id: None,
    }
}

impl Harness {
    async fn rental(&self, id: &str) -> Rental {
        self.rs.get(None, id).await.unwrap()
    }

    /// Rents o1 and brings it to `running` at the current time.
    async fn running(&self) -> Rental {
        self.running_with(rent_o1()).await
    }

    async fn running_with(&self, req: RentRequest) -> Rental {
        let r = self.rs.rent(&self.account, req).await.unwrap();
        let iid = r
            .instance_id
            .clone()
            .expect("the create answered an instance");
        self.fake.set_state(&iid, InstanceState::Running, None);
        sync_once(&self.rs).await;
        let r = self.rental(&r.id).await;
        assert_eq!(r.state, RentalState::Running);
        assert_eq!(r.started_at, Some(self.clock.now()));
        r
    }

    /// Checks the money invariants of SPEC section 4 and answers the account.
    async fn books(&self) -> Account {
        let id = self.account.clone();
        let (a, entries, rentals) = self
            .store
            .read(move |rx| {
                Ok::<_, crate::store::StoreError>((
                    rx.account(&id)?.unwrap(),
                    rx.ledger(&id, None, 100_000)?,
                    rx.account_rentals(&id)?,
                ))
            })
            .await
            .unwrap();
        let ledger: Usd = entries
            .iter()
            .filter(|e| matches!(e.kind, LedgerKind::Credit | LedgerKind::Charge))
            .map(|e| e.amount)
            .sum();
        assert_eq!(
            a.balance, ledger,
            "balance == sum of credit and charge entries"
        );
        let held: Usd = rentals.iter().map(Rental::held).sum();
        assert_eq!(a.held, held, "held == sum of the rentals' holds");
        assert!(a.available() >= Usd::ZERO, "available {}", a.available());
        a
    }
}

const CREDIT: Usd = Usd(50_000_000);

#[tokio::test]
async fn provisioning_runs_meters_and_tears_down_exactly() {
    let h = harness(CREDIT).await;
    let r = h.rs.rent(&h.account, rent_o1()).await.unwrap();
    assert_eq!(r.state, RentalState::Provisioning);
    let iid = r.instance_id.clone().unwrap();
    // Still provisioning at the provider: nothing changes, nothing is billed.
    h.clock.advance(5_000);
    sync_once(&h.rs).await;
    assert_eq!(h.rental(&r.id).await.state, RentalState::Provisioning);

    h.fake.set_state(&iid, InstanceState::Running, None);
    sync_once(&h.rs).await;
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Running);
    let started = r.started_at.unwrap();
    assert_eq!(started, h.clock.now());
    let a = h.books().await;
    assert_eq!(a.held, prorate(PRICE, MIN_SESSION_S));

    h.clock.advance(95_000);
    meter_once(&h.rs).await.unwrap();
    assert_eq!(h.rental(&r.id).await.cost, prorate(PRICE, 95));
    assert_eq!(h.books().await.balance, CREDIT - prorate(PRICE, 95));

    // The first terminate answers "still terminating": billing stops anyway.
    h.clock.advance(25_000);
    h.fake.lingering_terminates.store(1, Ordering::SeqCst);
    let r =
        h.rs.teardown(Some(&h.account), &r.id, TerminationReason::User)
            .await
            .unwrap();
    assert_eq!(r.state, RentalState::Terminating);
    assert_eq!(r.termination_reason, Some(TerminationReason::User));
    assert_eq!(r.cost, prorate(PRICE, 120));
    assert!(!r.hold_open);
    let a = h.books().await;
    assert_eq!(a.held, Usd::ZERO);
    assert_eq!(a.balance, CREDIT - prorate(PRICE, 120));
    assert_eq!(h.fake.state(&iid), InstanceState::Terminating);

    // Before the retry is due nothing is asked; after it, the provider confirms.
    sync_once(&h.rs).await;
    assert_eq!(h.fake.terminated().len(), 1);
    assert_eq!(h.rental(&r.id).await.state, RentalState::Terminating);
    h.clock.advance(60_000);
    meter_once(&h.rs).await.unwrap();
    sync_once(&h.rs).await;
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Terminated);
    assert_eq!(h.fake.state(&iid), InstanceState::Terminated);
    // Time spent terminating is not billed.
    assert_eq!(r.cost, prorate(PRICE, 120));
    assert_eq!(h.books().await.balance, CREDIT - prorate(PRICE, 120));
}

#[tokio::test]
async fn metering_is_cumulative_not_per_step_rounded() {
    // 77 steps of 1.3 s (100.1 s) against one step of 100.1 s.
    let small = harness(CREDIT).await;
    let rs = small.running().await;
    for _ in 0..77 {
        small.clock.advance(1_300);
        meter_once(&small.rs).await.unwrap();
    }
    let big = harness(CREDIT).await;
    let rb = big.running().await;
    big.clock.advance(77 * 1_300);
    meter_once(&big.rs).await.unwrap();

    let (cs, cb) = (
        small.rental(&rs.id).await.cost,
        big.rental(&rb.id).await.cost,
    );
    assert_eq!(cs, prorate(PRICE, 100));
    assert_eq!(cs, cb);
    // Rounding each second on its own would have charged more (603 vs 602.8 per s).
    assert_ne!(cs, Usd(prorate(PRICE, 1).0 * 100));
    assert_eq!(small.books().await.balance, big.books().await.balance);
}

#[tokio::test]
async fn insufficient_credit_tears_down_before_available_goes_negative() {
    // The hold (600 s) plus about 60 s more.
    let credit = prorate(PRICE, MIN_SESSION_S + 60);
    let h = harness(credit).await;
    let r = h.running().await;
    let mut steps = 0;
    while h.rental(&r.id).await.state == RentalState::Running {
        steps += 1;
        assert!(steps < 200, "metering never ran out of credit");
        h.clock.advance(METER_STEP_S as i64 * 1000);
        meter_once(&h.rs).await.unwrap();
        h.books().await;
    }
    let r = h.rental(&r.id).await;
    assert_eq!(
        r.termination_reason,
        Some(TerminationReason::InsufficientCredit)
    );
    assert!(matches!(
        r.state,
        RentalState::Terminating | RentalState::Terminated
    ));
    let elapsed = steps * METER_STEP_S;
    assert_eq!(r.cost, prorate(PRICE, elapsed));
    // It stopped while one more step would not have fit.
    assert!(prorate(PRICE, elapsed + METER_STEP_S) > credit);
    let a = h.books().await;
    assert!(a.available() >= Usd::ZERO);
    assert_eq!(a.balance, credit - r.cost);
}

#[tokio::test]
async fn provision_timeout_fails_for_free_and_releases_the_hold() {
    let h = harness(CREDIT).await;
    let r = h.rs.rent(&h.account, rent_o1()).await.unwrap();
    let iid = r.instance_id.clone().unwrap();
    h.clock.advance(PROVISION_TIMEOUT_S as i64 * 1000 - 1);
    sync_once(&h.rs).await;
    assert_eq!(h.rental(&r.id).await.state, RentalState::Provisioning);

    h.clock.advance(1);
    sync_once(&h.rs).await;
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Failed);
    assert_eq!(
        r.termination_reason,
        Some(TerminationReason::ProvisionFailed)
    );
    assert_eq!(r.cost, Usd::ZERO);
    assert!(!r.hold_open);
    let a = h.books().await;
    assert_eq!(a.held, Usd::ZERO);
    assert_eq!(a.balance, CREDIT);
    // The slow instance is not left behind.
    assert_eq!(h.fake.terminated(), vec![iid]);
}

#[tokio::test]
async fn preemption_bills_up_to_the_provider_end_and_refunds_the_rest() {
    let h = harness(CREDIT).await;
    let r = h.running().await;
    let started = r.started_at.unwrap();
    let iid = r.instance_id.clone().unwrap();
    // Metering charged 40 s before the preemption (at 30 s) was noticed.
    h.clock.advance(40_000);
    meter_once(&h.rs).await.unwrap();
    assert_eq!(h.rental(&r.id).await.cost, prorate(PRICE, 40));

    h.fake
        .set_state(&iid, InstanceState::Interrupted, Some(started + 30_000));
    sync_once(&h.rs).await;
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Interrupted);
    assert_eq!(r.termination_reason, Some(TerminationReason::Preempted));
    assert_eq!(r.ended_at, Some(started + 30_000));
    assert_eq!(r.cost, prorate(PRICE, 30));
    let a = h.books().await;
    assert_eq!(a.balance, CREDIT - prorate(PRICE, 30));
    assert_eq!(a.held, Usd::ZERO);
    // What is left of the preempted machine is destroyed.
    assert_eq!(h.fake.terminated(), vec![iid]);
}

/// The GPU was preempted (at 30 s) but spotd had not noticed when the user asked for
/// teardown (at 50 s, say after a restart): the teardown bills to 50 s, then the
/// provider's answer says the instance ended at 30 s, so the bill is cut back to it.
/// Both ways the provider can say so: the teardown call itself, or the next sync.
#[tokio::test]
async fn a_teardown_of_an_unnoticed_preemption_bills_only_to_the_preemption() {
    for via_sync in [false, true] {
        let h = harness(CREDIT).await;
        let r = h.running().await;
        let started = r.started_at.unwrap();
        let iid = r.instance_id.clone().unwrap();
        h.fake
            .set_state(&iid, InstanceState::Interrupted, Some(started + 30_000));
        if via_sync {
            // The teardown call answers "terminating"; the sync round finds it ended.
            h.fake.lingering_terminates.store(1, Ordering::SeqCst);
        }
        h.clock.advance(50_000);
        let t =
            h.rs.teardown(Some(&h.account), &r.id, TerminationReason::User)
                .await
                .unwrap();
        if via_sync {
            assert_eq!(t.state, RentalState::Terminating);
            // The next listing reports the instance as it really ended.
            h.fake
                .set_state(&iid, InstanceState::Interrupted, Some(started + 30_000));
            sync_once(&h.rs).await;
        }
        let r = h.rental(&r.id).await;
        assert_eq!(r.state, RentalState::Terminated, "via sync: {via_sync}");
        assert_eq!(r.termination_reason, Some(TerminationReason::Preempted));
        assert_eq!(r.ended_at, Some(started + 30_000));
        assert_eq!(r.cost, prorate(PRICE, 30));
        let a = h.books().await;
        assert_eq!(a.balance, CREDIT - prorate(PRICE, 30));
        assert_eq!(a.held, Usd::ZERO);
    }
}

/// kill -9 while the provider's create call is in flight: the intent (and its hold)
/// is stored, the instance never made. After a restart, the client's retry with the
/// same Idempotency-Key (the same stable rental id) fails that intent for nothing and
/// rents anew, instead of answering a rental nothing will ever create.
#[tokio::test]
async fn a_retry_after_a_crash_mid_create_rents_anew() {
    let h = harness(CREDIT).await;
    h.fake.next_create_is(CreateMode::Hang);
    let req = || RentRequest {
        id: Some("rnt_stable0000000001".into()),
        ..rent_o1()
    };
    let (rs, account) = (h.rs.clone(), h.account.clone());
    let first = tokio::spawn(async move { rs.rent(&account, req()).await });
    let intent = loop {
        let id = h.account.clone();
        let v = h
            .store
            .read(move |rx| rx.account_rentals(&id))
            .await
            .unwrap();
        if let Some(r) = v.into_iter().next() {
            break r;
        }
        tokio::task::yield_now().await;
    };
    // Give the attempt time to reach the provider, then "kill" the process.
    while h.fake.creates() == 0 {
        tokio::task::yield_now().await;
    }
    first.abort();
    assert_eq!(intent.id, "rnt_stable0000000001");

    // The restart: a new Rentals on the same store, a second later.
    h.clock.advance(1_000);
    let rs = Rentals::new(
        h.store.clone(),
        h.rs.market.clone(),
        h.rs.registry.clone(),
        h.clock.clone(),
        h.rs.cfg.clone(),
    );
    let retry = rs.rent(&h.account, req()).await.unwrap();
    assert_ne!(retry.id, intent.id, "a new rental");
    assert!(retry.instance_id.is_some(), "created this time: {retry:?}");
    assert_eq!(h.fake.creates(), 2);
    let old = rs.get(None, &intent.id).await.unwrap();
    assert_eq!(old.state, RentalState::Failed);
    assert_eq!(old.cost, Usd::ZERO);
    assert!(!old.hold_open, "its hold released");
    // A retry in the same process that finds the new rental answers it.
    let again = rs
        .rent(
            &h.account,
            RentRequest {
                id: Some(retry.id.clone()),
                ..rent_o1()
            },
        )
        .await
        .unwrap();
    assert_eq!(again.id, retry.id);
    assert_eq!(h.fake.creates(), 2);
    // The same key again (its answer lost once more): the ids derived from its nonce
    // lead to the new rental, never to a third create.
    let third = rs.rent(&h.account, req()).await.unwrap();
    assert_eq!(third.id, retry.id, "the rental the retry made");
    assert_eq!(retry.id, "rnt_stable0000000001_1");
    assert_eq!(h.fake.creates(), 2);
    h.books().await;
}

#[tokio::test]
async fn a_create_lost_in_transit_is_adopted_not_repeated() {
    let h = harness(CREDIT).await;
    h.fake.next_create_is(CreateMode::UnavailableButCreated);
    let r = h.rs.rent(&h.account, rent_o1()).await.unwrap();
    assert_eq!(h.fake.creates(), 1);
    let list = h.fake.list_instances().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(r.instance_id.as_deref(), Some(list[0].id.as_str()));
    assert_eq!(list[0].label, r.id);
    assert_eq!(r.state, RentalState::Provisioning);
    // The sweep leaves the adopted instance alone.
    assert_eq!(reconcile_once(&h.rs).await, 0);
    h.books().await;
}

#[tokio::test]
async fn no_capacity_fails_the_rent_without_a_charge() {
    let h = harness(CREDIT).await;
    h.fake.next_create_is(CreateMode::NoCapacity);
    assert!(h.rs.rent(&h.account, rent_o1()).await.is_err());
    let rentals = h.rs.page(Some(&h.account), None, None, 1000).await.unwrap();
    assert_eq!(rentals.len(), 1);
    assert_eq!(rentals[0].state, RentalState::Failed);
    let a = h.books().await;
    assert_eq!((a.balance, a.held), (CREDIT, Usd::ZERO));
}

#[tokio::test]
async fn reconcile_terminates_orphans_and_leaves_foreign_instances() {
    let h = harness(CREDIT).await;
    let live = h.running().await;
    let live_iid = live.instance_id.clone().unwrap();
    let orphan = h.fake.push("rnt_nobody", InstanceState::Running);
    let foreign = h.fake.push("my-own-box", InstanceState::Running);

    assert_eq!(reconcile_once(&h.rs).await, 1);
    assert_eq!(h.fake.terminated(), vec![orphan.id.clone()]);
    assert_eq!(h.fake.state(&orphan.id), InstanceState::Terminated);
    assert_eq!(h.fake.state(&foreign.id), InstanceState::Running);
    assert_eq!(h.fake.state(&live_iid), InstanceState::Running);
    // A second sweep has nothing left to do.
    assert_eq!(reconcile_once(&h.rs).await, 0);
}

#[tokio::test]
async fn downtime_is_billed_by_the_next_metering_round() {
    let h = harness(CREDIT).await;
    let r = h.running().await;
    // The daemon was down for an hour; the GPU kept running.
    h.clock.advance(3_600_000);
    meter_once(&h.rs).await.unwrap();
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Running);
    assert_eq!(r.cost, prorate(PRICE, 3600));
    assert_eq!(r.cost, PRICE);
    assert_eq!(h.books().await.balance, CREDIT - PRICE);
}

#[tokio::test]
async fn a_vanished_instance_is_billed_up_to_when_it_was_last_seen() {
    let h = harness(CREDIT).await;
    let r = h.running().await;
    let started = r.started_at.unwrap();
    let iid = r.instance_id.clone().unwrap();
    h.clock.advance(12_000);
    sync_once(&h.rs).await;
    assert_eq!(
        h.rental(&r.id).await.seen_running_at,
        Some(started + 12_000)
    );
    h.clock.advance(30_000);
    meter_once(&h.rs).await.unwrap();
    assert_eq!(h.rental(&r.id).await.cost, prorate(PRICE, 42));

    // A listing that lags is not a disappearance: the instance is asked for by id.
    h.fake.unlisted.lock().unwrap().push(iid.clone());
    sync_once(&h.rs).await;
    assert_eq!(h.rental(&r.id).await.state, RentalState::Running);

    h.fake.forget(&iid);
    sync_once(&h.rs).await;
    let r = h.rental(&r.id).await;
    assert_eq!(r.state, RentalState::Interrupted);
    assert_eq!(r.termination_reason, Some(TerminationReason::ProviderError));
    assert_eq!(r.cost, prorate(PRICE, 12));
    assert_eq!(h.books().await.balance, CREDIT - prorate(PRICE, 12));
}

#[tokio::test]
async fn max_duration_and_idle_limits_tear_down_at_the_limit() {
    let h = harness(CREDIT).await;
    let mut req = rent_o1();
    req.max_duration_seconds = Some(60);
    let capped = h.running_with(req).await;
    let mut req = rent_o1();
    req.idle_timeout_seconds = Some(120);
    let idle = h.running_with(req).await;

    h.clock.advance(59_999);
    sync_once(&h.rs).await;
    assert_eq!(h.rental(&capped.id).await.state, RentalState::Running);
    h.clock.advance(1);
    sync_once(&h.rs).await;
    let c = h.rental(&capped.id).await;
    assert_eq!(c.termination_reason, Some(TerminationReason::MaxDuration));
    assert_eq!(c.state, RentalState::Terminated);
    assert_eq!(c.cost, prorate(PRICE, 60));

    // Activity at 100 s moves the idle deadline to 220 s.
    h.clock.advance(40_000);
    h.rs.touch(&h.account, &idle.id).await.unwrap();
    h.clock.advance(119_999);
    sync_once(&h.rs).await;
    assert_eq!(h.rental(&idle.id).await.state, RentalState::Running);
    h.clock.advance(1);
    sync_once(&h.rs).await;
    let i = h.rental(&idle.id).await;
    assert_eq!(i.termination_reason, Some(TerminationReason::Idle));
    assert_eq!(i.cost, prorate(PRICE, 220));
    let a = h.books().await;
    assert_eq!(a.held, Usd::ZERO);
    assert_eq!(a.balance, CREDIT - prorate(PRICE, 60) - prorate(PRICE, 220));
}

/// A metering round and a sync round over many running rentals are each one batch of
/// writes the store groups into (about) one commit, not one fsync per rental.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_many_rentals_is_one_group_commit() {
    const N: usize = 8;
    let h = harness(CREDIT).await;
    let mut ids = Vec::new();
    for _ in 0..N {
        let r = h.rs.rent(&h.account, rent_o1()).await.unwrap();
        h.fake.set_state(
            r.instance_id.as_deref().unwrap(),
            InstanceState::Running,
            None,
        );
        ids.push(r.id);
    }
    sync_once(&h.rs).await;
    h.clock.advance(30_000);
    let before = h.rs.store.commits();
    assert_eq!(meter_once(&h.rs).await.unwrap(), N);
    let meter_commits = h.rs.store.commits() - before;
    for id in &ids {
        assert_eq!(h.rental(id).await.cost, prorate(PRICE, 30));
    }
    // Every rental is due a seen_running_at write.
    h.clock.advance(10_000);
    let before = h.rs.store.commits();
    sync_once(&h.rs).await;
    let sync_commits = h.rs.store.commits() - before;
    for id in &ids {
        assert_eq!(h.rental(id).await.seen_running_at, Some(h.clock.now()));
    }
    assert!(meter_commits >= 1 && sync_commits >= 1);
    assert!(
        meter_commits <= 2 && sync_commits <= 2,
        "{N} rentals: metering took {meter_commits} commits, sync {sync_commits}"
    );
}

#[path = "rentals_guard_tests.rs"]
mod guard_tests;
