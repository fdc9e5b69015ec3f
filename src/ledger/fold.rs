//! Retention of hosted request charges (SPEC section 10): each request's own charge
//! entry is kept `billing.request_detail_days`; after that an account's request charges
//! of one UTC day and one model become one `charge` entry whose note gives the request
//! count and the tokens. The sum is unchanged, so `balance == sum(ledger)` stays exact
//! and so do the totals `/metrics` reads.
//!
//! The folded entry takes the sequence number, time and `balance_after` of the last
//! request it replaces: every entry it stands for came before that one, so the balance
//! after it is still the balance after all of them. Only whole days are folded (those
//! that ended before the cutoff), so a day is folded once, in one transaction, into
//! exactly one entry per model. A marker per account (`fold:<account>` in the meta
//! table) remembers how far its ledger has been examined, so each pass reads only what
//! became old since the last one: the cost of a pass is O(accounts + entries newly
//! old), never O(history).

use std::collections::BTreeMap;

use crate::clock::Millis;
use crate::error::Result;
use crate::ids;
use crate::model::{LedgerEntry, LedgerKind};
use crate::money::Usd;
use crate::store::Tx;

pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;
/// Entries read per page while folding.
const PAGE: usize = 1000;

/// What one call of [`fold_requests`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FoldStep {
    /// Ledger entries examined.
    pub examined: usize,
    /// Request charges removed (each group of n leaves one entry: n - 1 removed).
    pub removed: usize,
    /// Folded entries written.
    pub folded: usize,
    /// Nothing old is left to examine for this account.
    pub done: bool,
}

/// The start (ms) of the UTC day that contains `t`.
pub(crate) fn day_start(t: Millis) -> Millis {
    t.div_euclid(DAY_MS) * DAY_MS
}

/// The model and tokens of a request charge's note, as `HostedBilling` writes it:
/// `"{model}: {input} input + {output} output tokens[; ...]"`.
fn parse_note(note: &str) -> Option<(&str, u64, u64)> {
    let (model, rest) = note.split_once(": ")?;
    let rest = rest.split("; ").next()?;
    let (input, rest) = rest.split_once(" input + ")?;
    let output = rest.strip_suffix(" output tokens")?;
    Some((model, input.parse().ok()?, output.parse().ok()?))
}

#[derive(Default)]
struct Group {
    seqs: Vec<u64>,
    amount: Usd,
    input: u64,
    output: u64,
    last: Option<LedgerEntry>,
}

/// Folds `account`'s request charges made before `before` (a UTC day boundary),
/// examining about `limit` entries (a day is never split across calls: a call that
/// reaches the limit stops at the next day boundary). Call again until `done`.
pub(crate) fn fold_requests(
    tx: &Tx<'_>,
    account: &str,
    before: Millis,
    limit: usize,
) -> Result<FoldStep> {
    let marker = format!("fold:{account}");
    let mut after: u64 = tx.meta(&marker)?.unwrap_or(0);
    let mut step = FoldStep::default();
    let mut groups: BTreeMap<(Millis, String), Group> = BTreeMap::new();
    let mut day: Option<Millis> = None;
    'pages: loop {
        let page = tx.ledger_after(account, after, PAGE)?;
        let full = page.len() == PAGE;
        for e in page {
            if e.at >= before {
                step.done = true;
                break 'pages;
            }
            let d = day_start(e.at);
            if step.examined >= limit && day != Some(d) {
                break 'pages;
            }
            day = Some(d);
            step.examined += 1;
            after = e.seq;
            let request =
                e.kind == LedgerKind::Charge && e.request_id.is_some() && e.rental_id.is_none();
            let parsed = e.note.as_deref().filter(|_| request).and_then(parse_note);
            if let Some((model, input, output)) = parsed {
                let g = groups.entry((d, model.to_string())).or_default();
                g.seqs.push(e.seq);
                g.amount += e.amount;
                g.input += input;
                g.output += output;
                g.last = Some(e);
            }
        }
        if !full {
            step.done = true;
            break;
        }
    }
    for ((d, model), g) in groups {
        let Some(last) = g.last else { continue };
        if g.seqs.len() < 2 {
            continue;
        }
        for &seq in &g.seqs {
            tx.remove_ledger(account, seq)?;
        }
        let date = crate::clock::rfc3339(d);
        let folded = LedgerEntry {
            id: ids::new_id("led"),
            note: Some(format!(
                "{model} on {}: {} requests, {} input + {} output tokens (folded per-request detail)",
                &date[..10],
                g.seqs.len(),
                g.input,
                g.output
            )),
            amount: g.amount,
            request_id: None,
            rental_id: None,
            ..last
        };
        tx.put_ledger(&folded)?;
        step.removed += g.seqs.len() - 1;
        step.folded += 1;
    }
    if step.examined > 0 {
        tx.put_meta(&marker, &after)?;
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_parse_as_hosted_billing_writes_them() {
        assert_eq!(
            parse_note("meta-llama/Llama-3.1-8B: 12 input + 30 output tokens"),
            Some(("meta-llama/Llama-3.1-8B", 12, 30))
        );
        assert_eq!(
            parse_note("gpt-4o-mini: 5 input + 0 output tokens; stream cut, input estimated"),
            Some(("gpt-4o-mini", 5, 0))
        );
        assert_eq!(parse_note("a credit"), None);
        assert_eq!(parse_note("m: x input + 1 output tokens"), None);
    }

    #[test]
    fn days_start_at_utc_midnight() {
        assert_eq!(day_start(DAY_MS * 3 + 5), DAY_MS * 3);
        assert_eq!(day_start(DAY_MS * 3), DAY_MS * 3);
        assert_eq!(day_start(-1), -DAY_MS);
    }
}
