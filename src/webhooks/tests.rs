//! The outbox against a real store: events are written with the change they report,
//! only for endpoints that asked, in order per rental; attempts reschedule, finish,
//! give up and hand over to the next event; low balance fires once per crossing.

use std::sync::Arc;

use serde_json::Value;

use super::admin::{self, NewWebhook};
use super::deliver::{backoff_ms, record_attempt, GIVE_UP_AFTER_MS};
use super::events;
use super::Outbox;
use crate::clock::{Clock, Signal};
use crate::error::Error;
use crate::model::{Account, Delivery, DeliveryState, Rental, RentalState};
use crate::money::Usd;
use crate::store::{Store, StoreError};

const T0: i64 = 1_800_000_000_000;

struct H {
    store: Store,
    clock: Clock,
    _dir: tempfile::TempDir,
}

fn harness() -> H {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.redb")).unwrap();
    let clock = Clock::manual(T0);
    store.observe(Arc::new(Outbox {
        clock: clock.clone(),
        low_balance: Usd::from_dollars(5),
        wake: Signal::new("webhooks"),
    }));
    H {
        store,
        clock,
        _dir: dir,
    }
}

impl H {
    async fn hook(&self, events: &[&str]) -> String {
        let (w, secret) = admin::create(
            &self.store,
            &self.clock,
            NewWebhook {
                url: "http://127.0.0.1:9/hook".into(),
                events: events.iter().map(|e| e.to_string()).collect(),
                description: None,
            },
        )
        .await
        .unwrap();
        assert!(secret.starts_with("whsec_"));
        w.id
    }

    async fn put(&self, r: &Rental) {
        let r = r.clone();
        self.store.write(move |tx| tx.put_rental(&r)).await.unwrap();
    }

    async fn deliveries(&self, hook: &str) -> Vec<Delivery> {
        admin::deliveries(&self.store, hook, None, 100)
            .await
            .unwrap()
    }

    async fn due(&self, at: i64) -> Vec<u64> {
        self.store
            .read(move |rx| rx.due_deliveries(at, 100, |_| false))
            .await
            .unwrap()
            .due
            .into_iter()
            .map(|(d, _)| d.seq)
            .collect()
    }

    async fn attempt(&self, seq: u64, outcome: Result<u16, String>) -> Option<DeliveryState> {
        let now = self.clock.now();
        self.store
            .write(move |tx| record_attempt(tx, seq, outcome, now))
            .await
            .unwrap()
    }
}

fn rental(state: RentalState) -> Rental {
    let mut r = crate::ledger::tests::rental(Usd::from_dollars(2), Usd::ZERO);
    r.id = "rnt_hooked".into();
    r.state = state;
    r
}

fn body(d: &Delivery) -> Value {
    serde_json::from_str(&d.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_subscribers_in_the_transaction_of_the_change() {
    let h = harness();
    let only_running = h.hook(&["rental.running"]).await;
    let all = h.hook(&["*"]).await;
    h.put(&rental(RentalState::Provisioning)).await;
    assert!(
        h.deliveries(&all).await.is_empty(),
        "provisioning is no event"
    );
    h.put(&rental(RentalState::Running)).await;
    let mut ended = rental(RentalState::Terminated);
    ended.cost = Usd(1_234_567);
    h.put(&ended).await;
    // The same state written again is no new event.
    h.put(&ended).await;

    let a = h.deliveries(&only_running).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event_type, "rental.running");
    let b = h.deliveries(&all).await;
    assert_eq!(
        b.iter().map(|d| d.event_type.as_str()).collect::<Vec<_>>(),
        ["rental.ended", "rental.running"],
        "newest first"
    );
    assert_eq!(
        b[1].event_id, a[0].event_id,
        "one event, one id, two endpoints"
    );
    let ended_body = body(&b[0]);
    assert_eq!(ended_body["type"], "rental.ended");
    assert_eq!(ended_body["data"]["object"], "gpu_rental");
    assert_eq!(ended_body["data"]["state"], "terminated");
    assert_eq!(ended_body["data"]["cost"].to_string(), "1.234567");
    assert_eq!(ended_body["id"], b[0].event_id.as_str());
    // Ordered per rental: the ended event waits for the running one to this endpoint.
    assert_eq!(b[1].state, DeliveryState::Pending);
    assert_eq!(b[0].state, DeliveryState::Waiting);
    assert_eq!(b[0].next_attempt_at, None);
    let mut due = h.due(T0).await;
    due.sort();
    let mut want = vec![a[0].seq, b[1].seq];
    want.sort();
    assert_eq!(due, want);

    // A write that fails after writing takes its event with it.
    let running = rental(RentalState::Running);
    let mut other = running.clone();
    other.id = "rnt_other".into();
    let res = h
        .store
        .write(move |tx| {
            tx.put_rental(&other)?;
            Err::<(), _>(Error::invalid("refused after writing"))
        })
        .await;
    assert!(res.is_err());
    assert_eq!(
        h.deliveries(&all).await.len(),
        2,
        "rolled back with the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_backs_off_and_the_next_event_waits_its_turn() {
    let h = harness();
    let hook = h.hook(&["*"]).await;
    h.put(&rental(RentalState::Provisioning)).await;
    h.put(&rental(RentalState::Running)).await;
    h.put(&rental(RentalState::Terminated)).await;
    let d = h.deliveries(&hook).await;
    let (ended, running) = (d[0].seq, d[1].seq);

    assert_eq!(
        h.attempt(running, Ok(500)).await,
        Some(DeliveryState::Pending)
    );
    assert!(h.due(T0).await.is_empty(), "not due again for a second");
    assert_eq!(h.due(T0 + 1000).await, vec![running]);
    h.clock.advance(1000);
    assert_eq!(
        h.attempt(running, Err("connection refused".into())).await,
        Some(DeliveryState::Pending)
    );
    assert_eq!(h.due(T0 + 1000 + 1999).await, Vec::<u64>::new());
    assert_eq!(h.due(T0 + 1000 + 2000).await, vec![running]);
    h.clock.advance(2000);
    assert_eq!(
        h.attempt(running, Ok(204)).await,
        Some(DeliveryState::Delivered)
    );
    let d = h.deliveries(&hook).await;
    assert_eq!(d[1].attempts, 3);
    assert_eq!(d[1].last_status, Some(204));
    assert_eq!(d[1].finished_at, Some(T0 + 3000));
    // Its turn now: due at once.
    assert_eq!(d[0].state, DeliveryState::Pending);
    assert_eq!(h.due(h.clock.now()).await, vec![ended]);
    // A delivery that is not pending any more ignores a late outcome.
    assert_eq!(h.attempt(running, Ok(500)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_given_up_after_24_hours_of_attempts() {
    let h = harness();
    let hook = h.hook(&["rental.running", "rental.ended"]).await;
    h.put(&rental(RentalState::Running)).await;
    h.put(&rental(RentalState::Terminated)).await;
    let d = h.deliveries(&hook).await;
    let (ended, running) = (d[0].seq, d[1].seq);
    let mut attempts = 0;
    loop {
        let state = h.attempt(running, Ok(503)).await.unwrap();
        attempts += 1;
        if state == DeliveryState::Failed {
            break;
        }
        h.clock.advance(backoff_ms(attempts));
    }
    let waited = h.clock.now() - T0;
    assert!(waited >= GIVE_UP_AFTER_MS, "{waited}");
    assert!(waited < GIVE_UP_AFTER_MS + 10 * 60 * 1000, "{waited}");
    assert!((140..160).contains(&attempts), "{attempts}");
    let d = h.deliveries(&hook).await;
    assert_eq!(d[1].state, DeliveryState::Failed);
    assert_eq!(
        d[1].last_error.as_deref(),
        Some("the endpoint answered 503")
    );
    // The next event of the rental gets its own turn (and its own 24 h).
    assert_eq!(h.due(h.clock.now()).await, vec![ended]);
}

async fn set_available(h: &H, id: &str, available: Usd) {
    let id = id.to_string();
    h.store
        .write(move |tx| {
            let mut a: Account = tx.account(&id)?.unwrap();
            a.held = a.balance - available;
            tx.put_account(&a)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_balance_fires_once_per_crossing() {
    let h = harness();
    let hook = h.hook(&["account.low_balance"]).await;
    let (a, _) = crate::accounts::create_account(&h.store, &h.clock, "t", Usd::from_dollars(10))
        .await
        .unwrap();
    for (dollars, note) in [
        (6, "still above"),
        (4, "fell below: an event"),
        (3, "further below: nothing"),
        (5, "back at the line: re-armed"),
        (2, "below again: a second event"),
    ] {
        set_available(&h, &a.id, Usd::from_dollars(dollars)).await;
        let _ = note;
    }
    let d = h.deliveries(&hook).await;
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(body(&d[1])["data"]["available"].to_string(), "4");
    assert_eq!(body(&d[0])["data"]["available"].to_string(), "2");
    assert_eq!(body(&d[0])["data"]["object"], "account");
    // Ordered per account: the second waits for the first.
    assert_eq!(d[0].state, DeliveryState::Waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_limit_and_deployment_ready_are_recorded_by_their_callers() {
    let h = harness();
    let hook = h.hook(&["account.spend_limit", "deployment.ready"]).await;
    let (a, _) = crate::accounts::create_account(&h.store, &h.clock, "t", Usd::from_dollars(10))
        .await
        .unwrap();
    let mut dep = rental(RentalState::Running);
    dep.account_id = a.id.clone();
    dep.model = Some("m".into());
    h.put(&dep).await;
    let (acct, r, now) = (a.clone(), dep.clone(), h.clock.now());
    h.store
        .write(move |tx| {
            events::record_spend_limit(tx, &acct, "max_cost", "ended", Some(&r), now)?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let id = dep.id.clone();
        h.store
            .write(move |tx| events::record_deployment_ready(tx, &id, now))
            .await
            .unwrap();
    }
    let d = h.deliveries(&hook).await;
    assert_eq!(
        d.iter().map(|d| d.event_type.as_str()).collect::<Vec<_>>(),
        ["deployment.ready", "account.spend_limit"],
        "ready once however often it is recorded"
    );
    let limit = body(&d[1]);
    assert_eq!(limit["data"]["id"], a.id.as_str());
    assert_eq!(limit["data"]["spend_limit"]["cap"], "max_cost");
    assert_eq!(limit["data"]["spend_limit"]["rental_id"], dep.id.as_str());
    assert_eq!(body(&d[0])["data"]["model"], "m");
    assert_eq!(d[0].stream, d[1].stream, "both about the rental: one order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_endpoints_drop_their_queue_and_old_deliveries_are_swept() {
    let h = harness();
    let hook = h.hook(&["*"]).await;
    h.put(&rental(RentalState::Running)).await;
    h.put(&rental(RentalState::Terminated)).await;
    let d = h.deliveries(&hook).await;
    assert_eq!(
        h.attempt(d[1].seq, Ok(200)).await,
        Some(DeliveryState::Delivered)
    );
    admin::delete(&h.store, &hook).await.unwrap();
    assert!(matches!(
        admin::deliveries(&h.store, &hook, None, 10).await,
        Err(Error::NotFound(_))
    ));
    // The worker finds the queued one without its endpoint and drops it.
    let now = h.clock.now();
    let scan = h
        .store
        .read(move |rx| rx.due_deliveries(now, 10, |_| false))
        .await
        .unwrap();
    assert_eq!(scan.due.len(), 1);
    assert!(scan.due[0].1.is_none(), "no endpoint any more");
    let orphan = scan.due[0].0.clone();
    h.store
        .write(move |tx| tx.drop_delivery(&orphan, now))
        .await
        .unwrap();
    assert!(h.due(now).await.is_empty());
    // The delivered one goes with the retention sweep, not before.
    let swept = |cutoff: i64| h.store.write(move |tx| tx.sweep_deliveries(cutoff, 1000));
    assert_eq!(swept(now).await.unwrap(), (0, false));
    assert_eq!(swept(now + 1).await.unwrap(), (1, false));
    let left = h
        .store
        .read(move |rx| rx.webhook_deliveries(&hook, None, 10))
        .await
        .unwrap();
    assert!(left.is_empty());
}
