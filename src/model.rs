//! The records spotd keeps: accounts, keys, offers, rentals, ledger entries and stored
//! idempotent answers.
//!
//! These are the stored shapes (encoded by `store::codec`). The JSON the API shows is
//! built from them in `api::views`, so a stored field can change without changing the
//! contract and vice versa.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::money::Usd;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
    /// Sum of the account's credit and charge ledger entries.
    pub balance: Usd,
    /// Sum over the account's rentals with an open hold of `max(0, hold - cost)`.
    pub held: Usd,
    /// Sequence number of the last ledger entry (entries are keyed `(account, seq)`).
    pub ledger_seq: u64,
    /// Spend guards (SPEC section 6): the most the account's live rentals may cost per
    /// hour together, and the most it may be charged in a UTC calendar month.
    pub max_usd_per_hour: Option<Usd>,
    pub max_usd_per_month: Option<Usd>,
    /// The month `month_spent` counts (`guards::month_of`; 0 before the first charge).
    pub spend_month: u32,
    /// Charges made in `spend_month` (refunds subtract), kept with every charge so
    /// `spent_this_month` is read in O(1), never summed from the ledger.
    pub month_spent: Usd,
}

impl Account {
    /// An account as it is first written: no money, no caps.
    pub fn new(id: String, name: String, created_at: Millis) -> Account {
        Account {
            id,
            name,
            created_at,
            balance: Usd::ZERO,
            held: Usd::ZERO,
            ledger_seq: 0,
            max_usd_per_hour: None,
            max_usd_per_month: None,
            spend_month: 0,
            month_spent: Usd::ZERO,
        }
    }

    /// `balance - held`, never below zero by the money rules.
    pub fn available(&self) -> Usd {
        self.balance - self.held
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub account_id: String,
    /// SHA-256 hex of the secret; the secret itself is never stored.
    pub hash: String,
    /// The first characters of the secret, to recognise it in lists.
    pub prefix: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// A normalized GPU offer, as shown by `/v1/gpus/offers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// `provider:native_id`.
    pub id: String,
    pub provider: String,
    pub native_id: String,
    /// Normalized model name, e.g. "H100 SXM".
    pub gpu: String,
    pub gpu_count: u32,
    /// Per GPU.
    pub vram_gb: u32,
    pub vcpus: u32,
    pub ram_gb: u32,
    pub disk_gb: u32,
    pub region: String,
    /// Spot price for the whole machine, per hour.
    pub price_per_hour: Usd,
    pub on_demand_price_per_hour: Option<Usd>,
    pub interruptible: bool,
    /// 0..1.
    pub reliability: f64,
    pub available: u32,
    pub updated_at: Millis,
}

impl Offer {
    pub(crate) fn price_per_gpu_hour(&self) -> Usd {
        crate::money::per_unit(self.price_per_hour, self.gpu_count)
    }

    pub(crate) fn total_vram_gb(&self) -> u32 {
        self.vram_gb.saturating_mul(self.gpu_count)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RentalState {
    Provisioning,
    Running,
    Terminating,
    Terminated,
    Failed,
    Interrupted,
}

impl RentalState {
    pub fn as_str(self) -> &'static str {
        match self {
            RentalState::Provisioning => "provisioning",
            RentalState::Running => "running",
            RentalState::Terminating => "terminating",
            RentalState::Terminated => "terminated",
            RentalState::Failed => "failed",
            RentalState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<RentalState> {
        Some(match s {
            "provisioning" => RentalState::Provisioning,
            "running" => RentalState::Running,
            "terminating" => RentalState::Terminating,
            "terminated" => RentalState::Terminated,
            "failed" => RentalState::Failed,
            "interrupted" => RentalState::Interrupted,
            _ => return None,
        })
    }

    /// Terminal states never change again.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            RentalState::Terminated | RentalState::Failed | RentalState::Interrupted
        )
    }

    /// The legal transitions of SPEC section 3.
    pub(crate) fn can_become(self, next: RentalState) -> bool {
        use RentalState::*;
        matches!(
            (self, next),
            (Provisioning, Running)
                | (Provisioning, Failed)
                | (Provisioning, Terminating)
                | (Running, Terminating)
                | (Running, Interrupted)
                | (Terminating, Terminated)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerminationReason {
    User,
    Idle,
    MaxDuration,
    InsufficientCredit,
    Preempted,
    ProvisionFailed,
    ProviderError,
    Admin,
    // Appended, never inserted: a stored reason is its variant's index, so the older
    // variants keep theirs and records written before these still decode.
    /// The account's `max_usd_per_month` was reached (SPEC section 6).
    BudgetExceeded,
    /// The rental's own `max_cost` was reached.
    MaxCost,
}

impl TerminationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::User => "user",
            TerminationReason::Idle => "idle",
            TerminationReason::MaxDuration => "max_duration",
            TerminationReason::InsufficientCredit => "insufficient_credit",
            TerminationReason::Preempted => "preempted",
            TerminationReason::ProvisionFailed => "provision_failed",
            TerminationReason::ProviderError => "provider_error",
            TerminationReason::Admin => "admin",
            TerminationReason::BudgetExceeded => "budget_exceeded",
            TerminationReason::MaxCost => "max_cost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ssh {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rental {
    pub id: String,
    pub account_id: String,
    pub state: RentalState,
    /// Snapshot of the offer at rent time.
    pub offer: Offer,
    pub provider: String,
    /// Locked at rent time.
    pub price_per_hour: Usd,
    pub model: Option<String>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub ssh_public_key: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The provider's instance id, once the provider answered the create call.
    pub instance_id: Option<String>,
    pub endpoint: Option<String>,
    pub ssh: Option<Ssh>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    /// When billing stopped: teardown requested, preemption observed, or failure.
    pub ended_at: Option<Millis>,
    pub last_activity_at: Option<Millis>,
    /// Last time the provider reported the instance running.
    pub seen_running_at: Option<Millis>,
    pub termination_reason: Option<TerminationReason>,
    /// Charged so far.
    pub cost: Usd,
    /// The hold placed at rent time; what is still held is `max(0, hold - cost)`
    /// while `hold_open`.
    pub hold: Usd,
    pub hold_open: bool,
    pub idle_timeout_seconds: Option<u64>,
    pub max_duration_seconds: Option<u64>,
    /// The most this rental may cost (SPEC section 6): billing stops, and the rental is
    /// torn down, at the last whole second whose cost is within it.
    pub max_cost: Option<Usd>,
    /// Provider calls for this rental that failed in a row (teardown retries, polls).
    pub attempts: u32,
    /// Earliest time the workers should call the provider again for this rental.
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub updated_at: Millis,
}

impl Rental {
    /// A rental as it is first written, before the provider is asked for an instance:
    /// `provisioning` on `offer` at the offer's price, nothing charged, no instance
    /// yet, and `hold` not placed (`ledger::place_hold` opens it). The request's own
    /// fields (name, image, env, limits, model) are empty; set them with struct update.
    pub fn intent(id: String, account_id: String, offer: Offer, hold: Usd, now: Millis) -> Rental {
        Rental {
            id,
            account_id,
            state: RentalState::Provisioning,
            provider: offer.provider.clone(),
            price_per_hour: offer.price_per_hour,
            offer,
            model: None,
            name: None,
            image: None,
            ssh_public_key: None,
            env: BTreeMap::new(),
            instance_id: None,
            endpoint: None,
            ssh: None,
            created_at: now,
            started_at: None,
            ended_at: None,
            last_activity_at: None,
            seen_running_at: None,
            termination_reason: None,
            cost: Usd::ZERO,
            hold,
            hold_open: false,
            idle_timeout_seconds: None,
            max_duration_seconds: None,
            max_cost: None,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            updated_at: now,
        }
    }

    /// What this rental still holds of the account's money.
    pub(crate) fn held(&self) -> Usd {
        if self.hold_open {
            (self.hold - self.cost).max(Usd::ZERO)
        } else {
            Usd::ZERO
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerKind {
    Credit,
    Hold,
    Release,
    Charge,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Credit => "credit",
            LedgerKind::Hold => "hold",
            LedgerKind::Release => "release",
            LedgerKind::Charge => "charge",
        }
    }
}

/// One movement of money. `amount` is signed as the account sees it: credits are
/// positive, charges negative; holds are negative and releases positive, but these
/// two move money between `available` and `held` and leave `balance` unchanged, so
/// `balance == sum(amount of credit and charge entries)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub account_id: String,
    pub seq: u64,
    pub at: Millis,
    pub kind: LedgerKind,
    pub amount: Usd,
    pub rental_id: Option<String>,
    pub request_id: Option<String>,
    pub note: Option<String>,
    pub balance_after: Usd,
}

/// A stored answer to a request that carried an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub body_hash: String,
    pub status: u16,
    pub response: String,
    pub created_at: Millis,
}

/// One hour of one provider's prices for one GPU model and interruptible flag (SPEC
/// section 7), keyed in `store::tables::PRICE_HISTORY` by (gpu, hour start, provider,
/// interruptible). Prices are per GPU-hour. Successive refreshes within the hour merge
/// (`history::merge`): min of mins, max of maxes, the latest refresh's median, offers
/// and available machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRollup {
    pub min: Usd,
    pub median: Usd,
    pub max: Usd,
    /// Offers in the latest refresh of the hour.
    pub offers: u32,
    /// Machines available over those offers, in the latest refresh.
    pub available: u32,
    /// Refreshes merged into this row.
    pub refreshes: u32,
    /// When the latest refresh was recorded.
    pub updated_at: Millis,
}

/// A webhook endpoint (SPEC section 8), keyed by id in `store::tables::WEBHOOKS`.
///
/// `key` is the HMAC-SHA256 signing key: the 32 random bytes whose base64 follows
/// `whsec_` in the secret shown once at creation. Signing needs the key itself, so it is
/// stored (unlike API keys, of which only a hash is kept); it is never shown again, and
/// `Debug` leaves it out so it cannot reach a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Event type names, or `["*"]` for all.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub key: Vec<u8>,
    pub created_at: Millis,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("description", &self.description)
            .field("key", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl Webhook {
    /// Whether the endpoint asked for events of type `kind`.
    pub(crate) fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == kind)
    }
}

/// Where one delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Queued behind an earlier event of the same rental (or account) to the same
    /// endpoint, which is not delivered (nor given up) yet.
    Waiting,
    /// Its next attempt is due at `next_attempt_at`.
    Pending,
    /// A 2xx answer came back.
    Delivered,
    /// No 2xx for at least 24 h of attempts: given up.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Waiting => "waiting",
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One event to one endpoint: the outbox row, written in the transaction of the change
/// it reports and keyed by `seq` in `store::tables::DELIVERIES`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Global order of deliveries (events in the order they were written).
    pub seq: u64,
    pub webhook_id: String,
    /// The event id: `webhook-id` on every attempt.
    pub event_id: String,
    pub event_type: String,
    /// The rental (or account) the event is about: one stream is delivered in order.
    pub stream: String,
    pub created_at: Millis,
    /// The JSON body, the same bytes on every attempt.
    pub body: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Millis>,
    /// When it was first tried: the 24 h of retries count from here (an event queued
    /// behind an earlier one of its rental gets its own 24 h once its turn comes).
    pub first_attempt_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    pub state: DeliveryState,
    pub finished_at: Option<Millis>,
}
