//! A database written by a release must open with every later build: the habit of
//! redb's own `tests/backward_compatibility.rs`, applied to spotd's records.
//!
//! `fixtures/spotd-v1.redb` was written by spotd 0.1.0 (record version 1, schema 1) with
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo test --lib -- --ignored regenerate_fixture
//! ```
//!
//! through the same domain functions the API and the workers call, on a manual clock.
//! The file is frozen: a release that changes a record or table layout keeps it and
//! [`spotd_v1_fixture_reads_back`] unchanged, and adds its own fixture beside it. The
//! generator refuses to run once this build writes another format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{codec, Store, StoreError, SCHEMA_VERSION};
use crate::accounts;
use crate::clock::{rfc3339, Clock, Millis};
use crate::config::{ProviderConfig, ProviderKind};
use crate::ids;
use crate::ledger;
use crate::market::Market;
use crate::model::{
    ApiKey, IdempotencyRecord, LedgerKind, Offer, Rental, RentalState, Ssh, TerminationReason,
};
use crate::money::Usd;
use crate::providers::registry::Registry;
use crate::providers::{
    CreateInstance, Instance, InstanceState, Provider, ProviderError, ProviderOffer,
};
use crate::rentals::{RentRequest, RentTarget, Rentals, RentalsConfig};
use crate::workers::rentals::meter_once;

const START: Millis = 1_800_000_000_000;
const ACCOUNT: &str = "acct_fixture000000001";
/// The secret of [`KEY`]; a fixture's secret, good for nothing but this file.
const SECRET: &str = "sk-spotd-fixture0000000000000000000000000000000";
const KEY: &str = "key_fixture000000001";
const REVOKED_KEY: &str = "key_fixturerevoked01";
const RUNNING: &str = "rnt_fixturerunning01";
const ENDED: &str = "rnt_fixtureended0001";
const FAILED: &str = "rnt_fixturefailed001";
const CREDIT_ONCE: &str = "0123456789abcdef";
const IDEM_KEY: &str = "idem-fixture-1";

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/spotd-v1.redb")
}

fn offer(native: &str, price: Usd, available: u32) -> Offer {
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
        on_demand_price_per_hour: Some(Usd(4_000_000)),
        interruptible: true,
        reliability: 0.99,
        available,
        updated_at: START,
    }
}

fn offers() -> Vec<Offer> {
    vec![
        offer("o1", Usd(2_170_000), 3),
        offer("o2", Usd(1_230_000), 1),
        // Listed with a machine, but the cloud answers "no capacity": a failed rental.
        offer("o3", Usd(990_000), 1),
    ]
}

/// A cloud whose instances run as soon as they are created; `o3` is always full.
struct FixtureCloud {
    clock: Clock,
}

#[async_trait]
impl Provider for FixtureCloud {
    fn name(&self) -> &str {
        "fake"
    }
    async fn list_offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        Ok(Vec::new())
    }
    async fn create_instance(&self, req: &CreateInstance) -> Result<Instance, ProviderError> {
        if req.offer_id == "o3" {
            return Err(ProviderError::NoCapacity);
        }
        Ok(Instance {
            id: format!("i-{}", req.label),
            offer_id: req.offer_id.clone(),
            label: req.label.clone(),
            state: InstanceState::Running,
            endpoint: None,
            ssh: Some(Ssh {
                host: "203.0.113.7".into(),
                port: 2222,
                user: "root".into(),
            }),
            created_at: rfc3339(self.clock.now()),
            ended_at: None,
        })
    }
    async fn get_instance(&self, _id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(None)
    }
    async fn list_instances(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(Vec::new())
    }
    async fn terminate(&self, _id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(None)
    }
}

fn rent(target: &str, id: &str) -> RentRequest {
    RentRequest {
        target: RentTarget::Offer(target.into()),
        max_price_per_hour: None,
        name: Some(format!("fixture {id}")),
        image: Some("ubuntu:24.04".into()),
        ssh_public_key: Some("ssh-ed25519 AAAAfixture".into()),
        env: [("HF_HOME".to_string(), "/data".to_string())].into(),
        idle_timeout_seconds: Some(3_600),
        max_duration_seconds: None,
        max_cost: None,
        model: None,
        id: Some(id.into()),
    }
}

/// Writes the fixture's data into `store`: an account with credits, holds, charges and
/// releases, three keys (one revoked), a running, a terminated and a failed rental, an
/// inference charge, offers, an idempotency record and meta entries.
async fn populate(store: &Store) {
    let clock = Clock::manual(START);
    let (a, _first_key) = accounts::create_account_with_id(
        store,
        &clock,
        "fixture",
        Usd(50_000_000),
        Some(ACCOUNT.into()),
    )
    .await
    .unwrap();
    assert_eq!(a.id, ACCOUNT);
    clock.advance(1_000);
    accounts::add_credit_once(
        store,
        &clock,
        ACCOUNT,
        Usd(12_345_678),
        Some("top-up".into()),
        Some(CREDIT_ONCE.into()),
    )
    .await
    .unwrap();
    // A key whose secret is known, so a later build can authenticate with it. It is
    // the record `accounts` writes, with a chosen secret instead of a random one.
    let now = clock.now();
    store
        .write(move |tx| {
            tx.put_api_key(&ApiKey {
                id: KEY.into(),
                account_id: ACCOUNT.into(),
                hash: ids::hash_secret(SECRET),
                prefix: SECRET.chars().take(13).collect(),
                created_at: now,
                revoked_at: None,
            })
        })
        .await
        .unwrap();
    accounts::create_key_with_id(store, &clock, ACCOUNT, Some(REVOKED_KEY.into()))
        .await
        .unwrap();
    clock.advance(1_000);
    accounts::revoke_key(store, &clock, REVOKED_KEY)
        .await
        .unwrap();

    store
        .write(|tx| tx.replace_offers("fake", &offers()))
        .await
        .unwrap();
    let config = ProviderConfig {
        name: "fake".into(),
        kind: ProviderKind::Http,
        api_key_env: None,
        refresh_seconds: 60,
        base_url: None,
        calls_per_minute: 60_000,
        stale_after_seconds: 300,
    };
    let cloud: Arc<dyn Provider> = Arc::new(FixtureCloud {
        clock: clock.clone(),
    });
    let registry = Registry::from_providers(vec![(config, cloud)]).unwrap();
    let rs = Rentals::new(
        store.clone(),
        Market::from_offers(offers()),
        Arc::new(registry),
        clock.clone(),
        RentalsConfig {
            min_session_seconds: 600,
            metering_interval_seconds: 10,
            provision_timeout_seconds: 300,
            max_active_rentals_per_account: 10,
            create_grace_ms: 30_000,
        },
    );
    clock.advance(1_000);
    rs.rent(ACCOUNT, rent("fake:o1", RUNNING)).await.unwrap();
    rs.rent(ACCOUNT, rent("fake:o2", ENDED)).await.unwrap();
    assert!(rs.rent(ACCOUNT, rent("fake:o3", FAILED)).await.is_err());
    clock.advance(95_000);
    meter_once(&rs).await.unwrap();
    clock.advance(25_000);
    let ended = rs
        .teardown(Some(ACCOUNT), ENDED, TerminationReason::User)
        .await
        .unwrap();
    assert_eq!(ended.state, RentalState::Terminated);

    // A hosted inference request, charged as the proxy charges it.
    let now = clock.now();
    store
        .write(move |tx| {
            let mut a = tx
                .account(ACCOUNT)?
                .ok_or_else(|| crate::error::Error::Bug("no account".into()))?;
            ledger::charge_request(
                tx,
                &mut a,
                Usd(4_321),
                "req_fixture00000001",
                "inference: 1234 tokens".into(),
                now,
            )?;
            tx.put_account(&a)?;
            Ok::<_, crate::error::Error>(())
        })
        .await
        .unwrap();

    let rec = IdempotencyRecord {
        body_hash: ids::hash_bytes(br#"{"offer_id":"fake:o1"}"#),
        status: 201,
        response: format!(r#"{{"id":"{RUNNING}","state":"running"}}"#),
        created_at: START + 3_000,
    };
    store
        .write(move |tx| {
            tx.put_idempotency(ACCOUNT, IDEM_KEY, &rec)?;
            tx.put_meta("admin_token_hash", &ids::hash_secret("adm-fixture"))?;
            tx.put_meta("demo_account", &ACCOUNT.to_string())
        })
        .await
        .unwrap();
}

/// Regenerates `fixtures/spotd-v1.redb`. Only for the release that wrote it: see the
/// module comment.
#[tokio::test]
#[ignore = "writes fixtures/spotd-v1.redb; run by hand: cargo test --lib -- --ignored regenerate_fixture"]
async fn regenerate_fixture() {
    assert_eq!(
        (codec::RECORD_VERSION, SCHEMA_VERSION),
        (1, 1),
        "spotd-v1.redb is frozen: this build writes another format, so give it a fixture of its own"
    );
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("spotd.redb");
    let store = Store::open(&tmp).unwrap();
    populate(&store).await;
    store.close();
    // Compact so the committed file holds the data, not the free pages of the writes.
    {
        let mut db = redb::Database::open(&tmp).unwrap();
        while db.compact().unwrap() {}
    }
    std::fs::copy(&tmp, fixture_path()).unwrap();
    let store = open_copy(&fixture_path(), dir.path());
    check(&store).await;
}

/// The fixture is copied first: opening a store writes to it (missing tables).
fn open_copy(fixture: &Path, dir: &Path) -> Store {
    let p = dir.join("copy.redb");
    std::fs::copy(fixture, &p).unwrap();
    Store::open(&p).unwrap()
}

/// What every rental of the fixture has in common.
fn rental(id: &str, offer: Offer) -> Rental {
    let at = START + 3_000;
    Rental {
        id: id.into(),
        account_id: ACCOUNT.into(),
        state: RentalState::Running,
        provider: "fake".into(),
        price_per_hour: offer.price_per_hour,
        offer,
        model: None,
        name: Some(format!("fixture {id}")),
        image: Some("ubuntu:24.04".into()),
        ssh_public_key: Some("ssh-ed25519 AAAAfixture".into()),
        env: [("HF_HOME".to_string(), "/data".to_string())].into(),
        instance_id: Some(format!("i-{id}")),
        endpoint: None,
        ssh: None,
        created_at: at,
        started_at: Some(at),
        ended_at: None,
        last_activity_at: Some(at),
        seen_running_at: Some(at),
        termination_reason: None,
        cost: Usd::ZERO,
        hold: Usd::ZERO,
        hold_open: false,
        idle_timeout_seconds: Some(3_600),
        max_duration_seconds: None,
        max_cost: None,
        attempts: 0,
        next_attempt_at: at,
        last_error: None,
        updated_at: at,
    }
}

fn expected_rentals() -> Vec<Rental> {
    let o = offers();
    vec![
        Rental {
            state: RentalState::Terminated,
            ended_at: Some(START + 123_000),
            termination_reason: Some(TerminationReason::User),
            cost: Usd(41_000),
            hold: Usd(205_000),
            next_attempt_at: START + 123_000,
            updated_at: START + 123_000,
            ..rental(ENDED, o[1].clone())
        },
        Rental {
            state: RentalState::Failed,
            instance_id: None,
            started_at: None,
            ended_at: Some(START + 3_000),
            last_activity_at: None,
            seen_running_at: None,
            termination_reason: Some(TerminationReason::ProvisionFailed),
            hold: Usd(165_000),
            last_error: Some("no capacity for this offer".into()),
            ..rental(FAILED, o[2].clone())
        },
        Rental {
            ssh: Some(Ssh {
                host: "203.0.113.7".into(),
                port: 2222,
                user: "root".into(),
            }),
            cost: Usd(57_264),
            hold: Usd(361_667),
            hold_open: true,
            updated_at: START + 98_000,
            ..rental(RUNNING, o[0].clone())
        },
    ]
}

/// A ledger entry without its (random) id.
type Entry<'a> = (
    u64,
    Millis,
    LedgerKind,
    Usd,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Usd,
);

/// The account's ledger, oldest first: (seq, at, kind, amount, rental, request, note,
/// balance after).
#[rustfmt::skip]
fn expected_ledger() -> Vec<Entry<'static>> {
    use LedgerKind::*;
    let (t, m, e) = (START + 3_000, START + 98_000, START + 123_000);
    let (run, end, fail) = (Some(RUNNING), Some(ENDED), Some(FAILED));
    vec![
        (1, START, Credit, Usd(50_000_000), None, None, Some("opening credit"), Usd(50_000_000)),
        (2, START + 1_000, Credit, Usd(12_345_678), None, None, Some("top-up"), Usd(62_345_678)),
        (3, t, Hold, Usd(-361_667), run, None, None, Usd(62_345_678)),
        (4, t, Hold, Usd(-205_000), end, None, None, Usd(62_345_678)),
        (5, t, Hold, Usd(-165_000), fail, None, None, Usd(62_345_678)),
        (6, t, Release, Usd(165_000), fail, None, None, Usd(62_345_678)),
        (7, m, Charge, Usd(-32_458), end, None, Some("95 s of use in all at 1.23 USD/h"), Usd(62_313_220)),
        (8, m, Charge, Usd(-57_264), run, None, Some("95 s of use in all at 2.17 USD/h"), Usd(62_255_956)),
        (9, e, Charge, Usd(-8_542), end, None, Some("120 s of use in all at 1.23 USD/h"), Usd(62_247_414)),
        (10, e, Release, Usd(164_000), end, None, None, Usd(62_247_414)),
        (11, e, Charge, Usd(-4_321), None, Some("req_fixture00000001"), Some("inference: 1234 tokens"), Usd(62_243_093)),
    ]
}

/// Asserts that `store` holds exactly what [`populate`] wrote.
async fn check(store: &Store) {
    let (account, keys, offers_read, rentals, by_account, active, ledger, idem, meta) = store
        .read(|rx| {
            Ok::<_, StoreError>((
                rx.accounts()?,
                rx.api_keys()?,
                rx.offers()?,
                rx.rentals()?,
                rx.account_rentals(ACCOUNT)?,
                rx.active_rentals()?,
                rx.ledger(ACCOUNT, None, 1000)?,
                rx.idempotency(ACCOUNT, IDEM_KEY)?,
                (
                    rx.meta::<u32>("schema_version")?,
                    rx.meta::<String>("admin_token_hash")?,
                    rx.meta::<String>("demo_account")?,
                    rx.meta::<u64>(&format!("credit:{ACCOUNT}:{CREDIT_ONCE}"))?,
                ),
            ))
        })
        .await
        .unwrap();

    assert_eq!(
        account,
        vec![crate::model::Account {
            id: ACCOUNT.into(),
            name: "fixture".into(),
            created_at: START,
            balance: Usd(62_243_093),
            held: Usd(304_403),
            ledger_seq: 11,
            // Written before the spend guards (account record version 1): none set, no
            // month figure yet.
            max_usd_per_hour: None,
            max_usd_per_month: None,
            spend_month: 0,
            month_spent: Usd::ZERO,
        }]
    );
    let a = &account[0];

    // The ledger, oldest first, and the money rules over it.
    let mut ledger = ledger;
    ledger.reverse();
    let got: Vec<Entry<'_>> = ledger
        .iter()
        .map(|e| {
            assert_eq!(e.account_id, ACCOUNT);
            (
                e.seq,
                e.at,
                e.kind,
                e.amount,
                e.rental_id.as_deref(),
                e.request_id.as_deref(),
                e.note.as_deref(),
                e.balance_after,
            )
        })
        .collect();
    assert_eq!(got, expected_ledger());
    let mut led_ids: Vec<&str> = ledger.iter().map(|e| e.id.as_str()).collect();
    assert!(led_ids
        .iter()
        .all(|i| i.starts_with("led_") && i.len() == 20));
    led_ids.sort();
    led_ids.dedup();
    assert_eq!(led_ids.len(), ledger.len(), "ledger ids are unique");
    let booked: Usd = ledger
        .iter()
        .filter(|e| matches!(e.kind, LedgerKind::Credit | LedgerKind::Charge))
        .map(|e| e.amount)
        .sum();
    assert_eq!(
        a.balance, booked,
        "balance == sum of credit and charge entries"
    );
    let held: Usd = rentals.iter().map(Rental::held).sum();
    assert_eq!(a.held, held, "held == sum of the rentals' holds");

    // Rentals, through every index.
    assert_eq!(rentals, expected_rentals());
    assert_eq!(by_account, expected_rentals(), "oldest first, then by id");
    let active: Vec<&str> = active.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(active, vec![RUNNING]);
    // Schema 2's per-account index, built on open from the schema-1 file.
    let live = store.read(|rx| rx.count_active(ACCOUNT)).await.unwrap();
    assert_eq!(live, 1, "the running rental, counted by the account index");
    // Schema 4's time index, built on open: every rental, newest first.
    let by_time = store
        .read(|rx| rx.rentals_page(None, 100, |_| true))
        .await
        .unwrap();
    assert_eq!(by_time.len(), rentals.len());
    assert!(by_time
        .windows(2)
        .all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id)));
    // Schema 3's running totals, built on open from the whole history.
    let totals: std::collections::BTreeMap<String, i64> = store
        .read(|rx| rx.totals())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let credits: i64 = ledger
        .iter()
        .filter(|e| e.kind == crate::model::LedgerKind::Credit)
        .map(|e| e.amount.0)
        .sum();
    let charges: i64 = ledger
        .iter()
        .filter(|e| e.kind == crate::model::LedgerKind::Charge)
        .map(|e| -e.amount.0)
        .sum();
    assert_eq!(totals.get("credits"), Some(&credits));
    assert_eq!(totals.get("charges"), Some(&charges));
    for r in &rentals {
        let n = rentals.iter().filter(|x| x.state == r.state).count() as i64;
        assert_eq!(
            totals.get(&format!("rentals:{}", r.state.as_str())),
            Some(&n)
        );
    }
    assert_eq!(offers_read, offers());

    // Keys: the known secret authenticates; the revoked key is found by its hash.
    assert_eq!(keys.len(), 3);
    let (who, key) = accounts::authenticate(store, SECRET).await.unwrap();
    assert_eq!(&who, a);
    assert_eq!(
        key,
        ApiKey {
            id: KEY.into(),
            account_id: ACCOUNT.into(),
            hash: ids::hash_secret(SECRET),
            prefix: "sk-spotd-fixt".into(),
            created_at: START + 1_000,
            revoked_at: None,
        }
    );
    assert!(accounts::authenticate(store, "sk-spotd-not-a-key")
        .await
        .is_err());
    for k in &keys {
        assert_eq!(k.account_id, ACCOUNT);
        assert!(k.prefix.starts_with("sk-spotd-") && k.prefix.len() == 13);
        assert_eq!(k.hash.len(), 64);
        let (id, hash) = (k.id.clone(), k.hash.clone());
        let (by_id, by_hash) = store
            .read(move |rx| {
                Ok::<_, StoreError>((rx.api_key_by_id(&id)?, rx.api_key_by_hash(&hash)?))
            })
            .await
            .unwrap();
        assert_eq!(by_id.as_ref(), Some(k));
        assert_eq!(by_hash.as_ref(), Some(k));
        let expected_revoked = (k.id == REVOKED_KEY).then_some(START + 2_000);
        assert_eq!(k.revoked_at, expected_revoked, "{}", k.id);
    }

    assert_eq!(
        idem,
        Some(IdempotencyRecord {
            body_hash: ids::hash_bytes(br#"{"offer_id":"fake:o1"}"#),
            status: 201,
            response: format!(r#"{{"id":"{RUNNING}","state":"running"}}"#),
            created_at: START + 3_000,
        })
    );
    assert_eq!(
        meta,
        (
            Some(SCHEMA_VERSION),
            Some(ids::hash_secret("adm-fixture")),
            Some(ACCOUNT.to_string()),
            Some(2)
        )
    );

    // And the old file takes new writes: the ledger goes on from its last entry.
    let clock = Clock::manual(START + 200_000);
    let (a2, e) = accounts::add_credit(store, &clock, ACCOUNT, Usd(1_000_000), None)
        .await
        .unwrap();
    assert_eq!((e.seq, e.balance_after), (12, Usd(63_243_093)));
    assert_eq!(a2.ledger_seq, 12);
}

#[tokio::test]
async fn spotd_v1_fixture_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_copy(&fixture_path(), dir.path());
    check(&store).await;
}
