//! `GET /metrics`: the gauges read at scrape time (offers per provider and the age of
//! their last refresh, rentals by state, ledger totals) followed by the process-wide
//! counters of `crate::metrics`, in the Prometheus text format.
//!
//! Money is written from integer micro-USD as exact decimal text; Prometheus reads it
//! as a float, which is its business, not the ledger's.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::App;
use crate::error::{Error, Result};
use crate::metrics::{escape_label, family, render_counters};
use crate::model::RentalState;
use crate::money::Usd;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [RentalState; 6] = [
    RentalState::Provisioning,
    RentalState::Running,
    RentalState::Terminating,
    RentalState::Terminated,
    RentalState::Failed,
    RentalState::Interrupted,
];

#[derive(Default)]
struct Books {
    rentals: BTreeMap<&'static str, u64>,
    accounts: u64,
    balance: Usd,
    held: Usd,
    credits: Usd,
    charges: Usd,
}

/// One read transaction: the running totals the writes keep (rentals by state, money
/// credited and charged) and the accounts' balances. O(accounts), whatever the history.
async fn books(app: &App) -> Result<Books> {
    app.store
        .read(|rx| {
            let mut b = Books::default();
            for s in STATES {
                b.rentals.insert(s.as_str(), 0);
            }
            for (k, v) in rx.totals()? {
                match k.as_str() {
                    "credits" => b.credits = Usd(v),
                    "charges" => b.charges = Usd(v),
                    other => {
                        let state = other.strip_prefix("rentals:").unwrap_or(other);
                        if let Some(s) = STATES.iter().find(|s| s.as_str() == state) {
                            b.rentals.insert(s.as_str(), v.max(0) as u64);
                        }
                    }
                }
            }
            for a in rx.accounts()? {
                b.accounts += 1;
                b.balance += a.balance;
                b.held += a.held;
            }
            Ok::<_, Error>(b)
        })
        .await
}

/// The whole exposition.
pub async fn render(app: &App) -> Result<String> {
    let mut out = String::with_capacity(8 * 1024);
    let now = app.clock.now();

    let counts = app.market.count_by_provider();
    let statuses = app.registry.statuses();
    family(
        &mut out,
        "spotd_offers",
        "gauge",
        "Offers in the market, by provider.",
    );
    let mut names: Vec<String> = statuses.iter().map(|s| s.name.clone()).collect();
    names.extend(counts.keys().cloned());
    names.sort();
    names.dedup();
    for n in &names {
        let c = counts.get(n).copied().unwrap_or(0);
        let _ = writeln!(out, "spotd_offers{{provider=\"{}\"}} {c}", escape_label(n));
    }
    family(
        &mut out,
        "spotd_provider_last_refresh_age_seconds",
        "gauge",
        "Seconds since the provider's last successful offer refresh (absent before the first).",
    );
    for s in &statuses {
        if let Some(at) = s.last_refresh_at {
            let ms = now.saturating_sub(at).max(0);
            let _ = writeln!(
                out,
                "spotd_provider_last_refresh_age_seconds{{provider=\"{}\"}} {}.{:03}",
                escape_label(&s.name),
                ms / 1000,
                ms % 1000
            );
        }
    }
    family(
        &mut out,
        "spotd_provider_stale",
        "gauge",
        "1 while the offers shown for a provider come from an older refresh.",
    );
    for s in &statuses {
        let _ = writeln!(
            out,
            "spotd_provider_stale{{provider=\"{}\",status=\"{}\"}} {}",
            escape_label(&s.name),
            s.status,
            u8::from(s.stale)
        );
    }

    let b = books(app).await?;
    family(&mut out, "spotd_rentals", "gauge", "Rentals by state.");
    for (state, n) in &b.rentals {
        let _ = writeln!(out, "spotd_rentals{{state=\"{state}\"}} {n}");
    }
    family(&mut out, "spotd_accounts", "gauge", "Accounts.");
    let _ = writeln!(out, "spotd_accounts {}", b.accounts);
    for (name, kind, help, v) in [
        (
            "spotd_ledger_credits_usd_total",
            "counter",
            "USD credited to accounts, ever.",
            b.credits,
        ),
        (
            "spotd_ledger_charges_usd_total",
            "counter",
            "USD charged to accounts, ever.",
            b.charges,
        ),
        (
            "spotd_ledger_balance_usd",
            "gauge",
            "Sum of account balances in USD.",
            b.balance,
        ),
        (
            "spotd_ledger_open_holds_usd",
            "gauge",
            "USD currently held by open holds.",
            b.held,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }

    render_counters(&mut out);
    Ok(out)
}
