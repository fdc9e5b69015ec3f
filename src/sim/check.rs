//! The simulator's invariants, checked after every step against the daemon's store and
//! the sandbox clouds. The books are followed incrementally (only ledger entries and
//! rentals that changed since the last step are read), and audited whole once a
//! simulated day, after every restart and at the end.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::clock::Millis;
use crate::guards::{month_of, spent_this_month};
use crate::ledger::billable_seconds;
use crate::model::{LedgerKind, Rental, RentalState};
use crate::money::{prorate, Usd};
use crate::store::{Store, StoreError};

/// What the checker knows of one account's ledger.
#[derive(Default, Clone)]
struct Books {
    seq: u64,
    sum: Usd,
}

/// A hosted request the workload got an answer for.
pub struct Answered {
    pub request_id: String,
    pub account: String,
    /// The answer reported usage: its charge must be non-zero.
    pub had_usage: bool,
    /// What the charge must be exactly, when the answer said its usage.
    pub expected: Option<Usd>,
    /// When it was answered (clock time).
    pub at: Millis,
}

#[derive(Default)]
pub struct Checker {
    books: HashMap<String, Books>,
    /// Charges by rental, summed (negative).
    by_rental: HashMap<String, Usd>,
    /// Request ids that have a charge, and its amount (positive).
    charged: HashMap<String, Usd>,
    /// Rentals live at the last check.
    active: HashSet<String>,
    /// Rentals already found terminal and checked.
    ended: HashSet<String>,
    pending: Vec<Answered>,
    /// (cloud, instance id) -> when it was first seen running with no live rental.
    orphans: HashMap<(String, String), Millis>,
    /// Rental id -> when its running instance was first seen missing.
    missing: HashMap<String, Millis>,
    /// Account -> (month, its charges in that month) summed from the ledger: what the
    /// account's running `spent_this_month` must say.
    months: HashMap<String, (u32, Usd)>,
    pub checks: u64,
    pub charges: u64,
}

/// What an entry adds to the balance: credits and charges; holds and releases move
/// money between available and held (their stored amount is the hold's size).
fn balance_effect(e: &crate::model::LedgerEntry) -> Usd {
    match e.kind {
        LedgerKind::Credit | LedgerKind::Charge => e.amount,
        LedgerKind::Hold | LedgerKind::Release => Usd::ZERO,
    }
}

/// One cloud instance as the sandbox lists it.
pub struct Seen {
    pub cloud: String,
    pub id: String,
    pub label: String,
    pub state: String,
}

impl Checker {
    /// A hosted request was answered; it must be charged once the step settles.
    pub fn expect_charge(&mut self, a: Answered) {
        self.pending.push(a);
    }

    fn ok(&mut self, cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
        self.checks += 1;
        if cond {
            Ok(())
        } else {
            Err(msg())
        }
    }

    /// Everything after a step: the books of every account, every rental that ended
    /// since the last step, every answered request, every cap (at clock time `now`).
    pub async fn step(&mut self, store: &Store, now: Millis) -> Result<(), String> {
        let (accounts, active, new_entries) = {
            let known: HashMap<String, u64> =
                self.books.iter().map(|(k, b)| (k.clone(), b.seq)).collect();
            store
                .read(move |rx| {
                    let accounts = rx.accounts()?;
                    let active = rx.active_rentals()?;
                    let mut entries = Vec::new();
                    for a in &accounts {
                        let after = known.get(&a.id).copied().unwrap_or(0);
                        entries.extend(rx.ledger_after(&a.id, after, usize::MAX)?);
                    }
                    Ok::<_, StoreError>((accounts, active, entries))
                })
                .await
                .map_err(|e| format!("cannot read the store: {e}"))?
        };
        for e in &new_entries {
            let b = self.books.entry(e.account_id.clone()).or_default();
            b.seq = b.seq.max(e.seq);
            b.sum += balance_effect(e);
            if e.kind == LedgerKind::Charge {
                let m = month_of(e.at);
                let month = self.months.entry(e.account_id.clone()).or_default();
                if m > month.0 {
                    *month = (m, Usd::ZERO);
                }
                month.1 -= e.amount;
                self.charges += 1;
                let named = e.rental_id.is_some() || e.request_id.is_some();
                let id = e.id.clone();
                self.ok(named, || {
                    format!("charge {id} names neither a rental nor a request")
                })?;
                if let Some(r) = &e.rental_id {
                    *self.by_rental.entry(r.clone()).or_default() += e.amount;
                }
                if let Some(q) = &e.request_id {
                    *self.charged.entry(q.clone()).or_default() -= e.amount;
                }
            }
        }
        // 1. balance == sum(ledger), held == sum(open holds), available >= 0.
        let mut held: BTreeMap<&str, Usd> = BTreeMap::new();
        for r in &active {
            *held.entry(r.account_id.as_str()).or_default() += r.held();
        }
        for a in &accounts {
            let sum = self.books.get(&a.id).map(|b| b.sum).unwrap_or(Usd::ZERO);
            self.ok(a.balance == sum, || {
                format!(
                    "account {}: balance {} != sum of its ledger {}",
                    a.id, a.balance, sum
                )
            })?;
            let open = held.get(a.id.as_str()).copied().unwrap_or(Usd::ZERO);
            self.ok(a.held == open, || {
                format!(
                    "account {}: held {} != sum of its open holds {}",
                    a.id, a.held, open
                )
            })?;
            self.ok(a.available() >= Usd::ZERO, || {
                format!("account {}: available {} is negative", a.id, a.available())
            })?;
        }
        // 6. no cap is ever exceeded (SPEC section 6).
        self.caps(&accounts, &active, now)?;
        // 2. rentals that ended since the last step.
        let now_active: HashSet<String> = active.iter().map(|r| r.id.clone()).collect();
        let gone: Vec<String> = self
            .active
            .iter()
            .filter(|id| !now_active.contains(*id))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let rentals = store
                .read(move |rx| {
                    gone.iter()
                        .filter_map(|id| rx.rental(id).transpose())
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e: StoreError| format!("cannot read rentals: {e}"))?;
            for r in rentals {
                let charged = -self.by_rental.get(&r.id).copied().unwrap_or(Usd::ZERO);
                self.ended_rental(&r, charged)?;
            }
        }
        self.active = now_active;
        // 3. every answered hosted request is charged.
        for a in std::mem::take(&mut self.pending) {
            let amount = self.charged.get(&a.request_id).copied();
            if let (Some(want), Some(got)) = (a.expected, amount) {
                self.ok(got == want, || {
                    format!(
                        "hosted request {} of {} was charged {got}, its usage costs {want}",
                        a.request_id, a.account
                    )
                })?;
            }
            let charged = amount.is_some();
            self.ok(charged || !a.had_usage, || {
                format!(
                    "hosted request {} of {} answered at {} with usage but never charged",
                    a.request_id,
                    a.account,
                    crate::clock::rfc3339(a.at)
                )
            })?;
        }
        Ok(())
    }

    /// Invariant 6: per account, this month's charges (its O(1) running figure, which
    /// must be what the ledger says) within `max_usd_per_month`, the live rentals'
    /// summed `price_per_hour` within `max_usd_per_hour`; every live rental's cost
    /// within its `max_cost` (ended ones: in `ended_rental`). The simulated operator
    /// sets caps only when it creates an account, so a cap below what is live or spent
    /// can only mean a guard let something through.
    fn caps(
        &mut self,
        accounts: &[crate::model::Account],
        active: &[Rental],
        now: Millis,
    ) -> Result<(), String> {
        let mut hourly: BTreeMap<&str, Usd> = BTreeMap::new();
        for r in active {
            *hourly.entry(r.account_id.as_str()).or_default() += r.price_per_hour;
            self.within_max_cost(r)?;
        }
        for a in accounts {
            let spent = spent_this_month(a, now);
            let counted = match self.months.get(&a.id) {
                Some((m, sum)) if *m == month_of(now) => *sum,
                _ => Usd::ZERO,
            };
            self.ok(spent == counted, || {
                format!(
                    "account {}: spent_this_month {spent} but its ledger's charges this month sum to {counted}",
                    a.id
                )
            })?;
            if let Some(cap) = a.max_usd_per_month {
                self.ok(spent <= cap, || {
                    format!(
                        "account {}: spent_this_month {spent} is above its max_usd_per_month {cap}",
                        a.id
                    )
                })?;
            }
            if let Some(cap) = a.max_usd_per_hour {
                let live = hourly.get(a.id.as_str()).copied().unwrap_or(Usd::ZERO);
                self.ok(live <= cap, || {
                    format!(
                        "account {}: its live rentals cost {live} USD/h, above its max_usd_per_hour {cap}",
                        a.id
                    )
                })?;
            }
        }
        Ok(())
    }

    fn within_max_cost(&mut self, r: &Rental) -> Result<(), String> {
        let Some(max) = r.max_cost else {
            return Ok(());
        };
        self.ok(r.cost <= max, || {
            format!(
                "rental {} ({:?}) cost {} is above its max_cost {max}",
                r.id, r.termination_reason, r.cost
            )
        })
    }

    /// The cost rule for a rental in a terminal state, once; `charged` is what its
    /// ledger charges add up to.
    fn ended_rental(&mut self, r: &Rental, charged: Usd) -> Result<(), String> {
        if !r.state.is_terminal() || !self.ended.insert(r.id.clone()) {
            return Ok(());
        }
        let secs = match (r.started_at, r.ended_at) {
            (Some(s), Some(e)) => billable_seconds(s, e),
            _ => 0,
        };
        let due = prorate(r.price_per_hour, secs);
        let capped =
            r.termination_reason == Some(crate::model::TerminationReason::InsufficientCredit);
        let exact = if capped { r.cost <= due } else { r.cost == due };
        self.ok(exact, || {
            format!(
                "rental {} ({:?}, {:?}) cost {} but {} s at {}/h is {}",
                r.id, r.state, r.termination_reason, r.cost, secs, r.price_per_hour, due
            )
        })?;
        self.ok(charged == r.cost, || {
            format!(
                "rental {}: its charges sum to {} but its cost is {}",
                r.id, charged, r.cost
            )
        })?;
        self.within_max_cost(r)?;
        self.ok(!r.hold_open, || {
            format!(
                "rental {} ended ({:?}) but still holds {}",
                r.id, r.state, r.hold
            )
        })
    }

    /// Invariant 4: instances and rentals agree within `grace` ms. No instance runs
    /// without a live rental, no running rental points at an instance that is gone.
    /// Clouds in `down` are not judged (nobody can see them).
    pub async fn instances(
        &mut self,
        store: &Store,
        seen: &[Seen],
        down: &HashSet<String>,
        now: Millis,
        grace: Millis,
    ) -> Result<(), String> {
        let labels: Vec<String> = seen
            .iter()
            .filter(|i| {
                i.label.starts_with("rnt_")
                    && matches!(i.state.as_str(), "running" | "provisioning")
            })
            .map(|i| i.label.clone())
            .collect();
        let (owners, active) = store
            .read(move |rx| {
                let owners: HashMap<String, Option<Rental>> = labels
                    .into_iter()
                    .map(|l| rx.rental(&l).map(|r| (l, r)))
                    .collect::<Result<_, _>>()?;
                Ok::<_, StoreError>((owners, rx.active_rentals()?))
            })
            .await
            .map_err(|e| format!("cannot read rentals: {e}"))?;
        let mut orphans_now = HashSet::new();
        for i in seen.iter().filter(|i| !down.contains(&i.cloud)) {
            let Some(owner) = owners.get(&i.label) else {
                continue;
            };
            if owner.as_ref().is_some_and(|r| !r.state.is_terminal()) {
                continue;
            }
            let key = (i.cloud.clone(), i.id.clone());
            let since = *self.orphans.entry(key.clone()).or_insert(now);
            orphans_now.insert(key);
            self.ok(now - since <= grace, || {
                format!(
                    "instance {}/{} ({}) has run {} s with no live rental {}",
                    i.cloud,
                    i.id,
                    i.state,
                    (now - since) / 1000,
                    i.label
                )
            })?;
        }
        self.orphans.retain(|k, _| orphans_now.contains(k));
        let live: HashMap<&str, &Seen> = seen
            .iter()
            .filter(|i| !matches!(i.state.as_str(), "terminated"))
            .map(|i| (i.label.as_str(), i))
            .collect();
        let mut missing_now = HashSet::new();
        for r in active.iter().filter(|r| r.state == RentalState::Running) {
            let cloud_down = down.iter().any(|c| r.provider == *c);
            if cloud_down || live.contains_key(r.id.as_str()) {
                continue;
            }
            let since = *self.missing.entry(r.id.clone()).or_insert(now);
            missing_now.insert(r.id.clone());
            self.ok(now - since <= grace, || {
                format!(
                    "rental {} has been running {} s on an instance {} does not have",
                    r.id,
                    (now - since) / 1000,
                    r.provider
                )
            })?;
        }
        self.missing.retain(|k, _| missing_now.contains(k));
        Ok(())
    }

    /// The whole books from scratch: every ledger summed, every rental's charges and
    /// cost rule. O(history): once a simulated day, after restarts, and at the end.
    pub async fn audit(&mut self, store: &Store) -> Result<(), String> {
        let (accounts, rentals, ledgers, totals) = store
            .read(|rx| {
                let accounts = rx.accounts()?;
                let mut ledgers = Vec::new();
                for a in &accounts {
                    ledgers.push(rx.ledger_after(&a.id, 0, usize::MAX)?);
                }
                Ok::<_, StoreError>((accounts, rx.rentals()?, ledgers, rx.totals()?))
            })
            .await
            .map_err(|e| format!("cannot read the store: {e}"))?;
        let mut by_rental: HashMap<&str, Usd> = HashMap::new();
        for (a, entries) in accounts.iter().zip(&ledgers) {
            let sum: Usd = entries.iter().map(balance_effect).sum();
            self.ok(a.balance == sum, || {
                format!(
                    "audit: account {}: balance {} != sum of its ledger {}",
                    a.id, a.balance, sum
                )
            })?;
            let last = entries.last().map(|e| e.seq).unwrap_or(0);
            self.ok(last == a.ledger_seq, || {
                format!(
                    "audit: account {}: last entry {} but ledger_seq {}",
                    a.id, last, a.ledger_seq
                )
            })?;
            for e in entries.iter().filter(|e| e.kind == LedgerKind::Charge) {
                let named = e.rental_id.is_some() || e.request_id.is_some();
                self.ok(named, || {
                    format!(
                        "audit: charge {} names neither a rental nor a request",
                        e.id
                    )
                })?;
                if let Some(r) = &e.rental_id {
                    *by_rental.entry(r.as_str()).or_default() += e.amount;
                }
            }
        }
        // The running totals /metrics reads equal what they total.
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for e in ledgers.iter().flatten() {
            match e.kind {
                LedgerKind::Credit => *want.entry("credits".into()).or_default() += e.amount.0,
                LedgerKind::Charge => *want.entry("charges".into()).or_default() -= e.amount.0,
                LedgerKind::Hold | LedgerKind::Release => {}
            }
        }
        for r in &rentals {
            *want
                .entry(format!("rentals:{}", r.state.as_str()))
                .or_default() += 1;
        }
        let have: BTreeMap<String, i64> = totals.into_iter().filter(|(_, v)| *v != 0).collect();
        want.retain(|_, v| *v != 0);
        self.ok(have == want, || {
            format!("audit: the running totals {have:?} are not what they total {want:?}")
        })?;
        for r in &rentals {
            let charged = -by_rental.get(r.id.as_str()).copied().unwrap_or(Usd::ZERO);
            self.ok(charged == r.cost, || {
                format!(
                    "audit: rental {}: its charges sum to {} but its cost is {}",
                    r.id, charged, r.cost
                )
            })?;
            if r.state.is_terminal() {
                self.ended.remove(&r.id);
                self.ended_rental(r, charged)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Account;

    /// Each part of invariant 6 on its own (the simulator's `pass-cap` fault proves the
    /// monthly one end to end): a figure that disagrees with the ledger, an hourly sum
    /// above its cap, a rental above its `max_cost`.
    #[test]
    fn invariant_6_catches_each_cap_passed() {
        let now = 1_796_083_200_000;
        let price = Usd(2_000_000);
        let rental = |id: &str| Rental {
            id: id.into(),
            ..crate::ledger::tests::rental(price, Usd::ZERO)
        };
        let mut a = Account::new("acct_t".into(), "t".into(), 0);
        a.max_usd_per_hour = Some(Usd(3_000_000));
        let live = vec![rental("rnt_1")];
        let mut c = Checker::default();
        assert_eq!(c.caps(std::slice::from_ref(&a), &live, now), Ok(()));

        let two = vec![rental("rnt_1"), rental("rnt_2")];
        let e = c.caps(std::slice::from_ref(&a), &two, now).unwrap_err();
        assert!(e.contains("above its max_usd_per_hour 3"), "{e}");

        let mut over = rental("rnt_3");
        over.max_cost = Some(Usd(10));
        over.cost = Usd(11);
        let e = c.caps(std::slice::from_ref(&a), &[over], now).unwrap_err();
        assert!(e.contains("above its max_cost"), "{e}");

        // A month figure the ledger does not back.
        crate::guards::record_charge(&mut a, Usd(5), now);
        let e = c.caps(std::slice::from_ref(&a), &[], now).unwrap_err();
        assert!(
            e.contains("its ledger's charges this month sum to 0"),
            "{e}"
        );
    }
}
