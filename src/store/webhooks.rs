//! The webhook tables (schema 6): endpoints (`WEBHOOKS`) and the outbox (`DELIVERIES`
//! with its three indexes). The delivery rules (who gets which event, backoff, giving
//! up) live in `crate::webhooks`; this file keeps the rows and indexes in step:
//!
//! - a delivery is in `DELIVERY_STREAMS` until it is finished, so the first entry of a
//!   (webhook, stream) range is the oldest unfinished event of that rental to that
//!   endpoint, the only one that may be sent;
//! - it is in `DELIVERIES_DUE` only while it is that first entry and has an attempt to
//!   make, keyed by when: the worker's read is a range up to now, O(due);
//! - finishing one (delivered or given up) moves it to `DELIVERIES_DONE` and makes the
//!   next of its stream due at once.

use redb::{ReadableTable, Table};

use super::tables::*;
use super::{codec, Rx, StoreError, Tx};
use crate::clock::Millis;
use crate::model::{Delivery, DeliveryState, Webhook};

/// The meta key of the last delivery seq given out.
const SEQ_KEY: &str = "delivery_seq";

/// What the delivery worker reads in one round.
#[derive(Debug, Default)]
pub(crate) struct DueScan {
    /// Due deliveries with their endpoint (`None`: the endpoint was deleted).
    pub due: Vec<(Delivery, Option<Webhook>)>,
    /// When the earliest delivery not taken is due, if one is queued.
    pub next: Option<Millis>,
}

fn get_delivery(
    t: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<Delivery>, StoreError> {
    t.get(seq)?.map(|v| codec::decode(v.value())).transpose()
}

fn all_webhooks(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<Webhook>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (_, v) = item?;
        out.push(codec::decode(v.value())?);
    }
    Ok(out)
}

fn put_delivery_row(t: &mut Table<u64, &'static [u8]>, d: &Delivery) -> Result<(), StoreError> {
    let bytes = codec::encode(d)?;
    t.insert(d.seq, bytes.as_slice())?;
    Ok(())
}

impl Tx<'_> {
    pub(crate) fn put_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
        self.wrote.set(true);
        let bytes = codec::encode(w)?;
        self.txn
            .open_table(WEBHOOKS)?
            .insert(w.id.as_str(), bytes.as_slice())?;
        Ok(())
    }

    /// Removes an endpoint. Its unfinished deliveries are dropped by the worker as
    /// they come due (`drop_delivery`), its finished ones by the retention sweep.
    pub(crate) fn remove_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        self.wrote.set(true);
        let mut t = self.txn.open_table(WEBHOOKS)?;
        let old = t.remove(id)?;
        let out = old.map(|v| codec::decode(v.value())).transpose();
        out
    }

    pub(crate) fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        all_webhooks(&self.txn.open_table(WEBHOOKS)?)
    }

    pub(crate) fn delivery(&self, seq: u64) -> Result<Option<Delivery>, StoreError> {
        get_delivery(&self.txn.open_table(DELIVERIES)?, seq)
    }

    /// The next delivery seq (one counter for all endpoints: seq order is event order).
    pub(crate) fn next_delivery_seq(&self) -> Result<u64, StoreError> {
        let last: u64 = self.meta(SEQ_KEY)?.unwrap_or(0);
        self.put_meta(SEQ_KEY, &(last + 1))?;
        Ok(last + 1)
    }

    /// Queues `d` (its `seq` from [`Tx::next_delivery_seq`]): due at `now` when no
    /// earlier event of its stream is still unfinished for its endpoint, else waiting.
    pub(crate) fn enqueue_delivery(&self, mut d: Delivery, now: Millis) -> Result<(), StoreError> {
        self.wrote.set(true);
        self.outbox.set(true);
        let mut streams = self.txn.open_table(DELIVERY_STREAMS)?;
        let (w, s) = (d.webhook_id.as_str(), d.stream.as_str());
        let behind = streams.range((w, s, 0)..(w, s, d.seq))?.next().is_some();
        streams.insert((w, s, d.seq), ())?;
        if behind {
            d.state = DeliveryState::Waiting;
            d.next_attempt_at = None;
        } else {
            d.state = DeliveryState::Pending;
            d.next_attempt_at = Some(now);
            self.txn
                .open_table(DELIVERIES_DUE)?
                .insert((now, d.seq), ())?;
        }
        self.txn
            .open_table(WEBHOOK_DELIVERIES)?
            .insert((d.webhook_id.as_str(), d.seq), ())?;
        put_delivery_row(&mut self.txn.open_table(DELIVERIES)?, &d)
    }

    /// Writes back a pending delivery after a failed attempt, due again at `next`.
    pub(crate) fn reschedule_delivery(
        &self,
        d: &mut Delivery,
        next: Millis,
    ) -> Result<(), StoreError> {
        self.wrote.set(true);
        let mut due = self.txn.open_table(DELIVERIES_DUE)?;
        if let Some(at) = d.next_attempt_at {
            due.remove((at, d.seq))?;
        }
        due.insert((next, d.seq), ())?;
        d.next_attempt_at = Some(next);
        d.state = DeliveryState::Pending;
        put_delivery_row(&mut self.txn.open_table(DELIVERIES)?, d)
    }

    /// Ends a delivery as `state` (delivered or failed) at `now` and makes the next
    /// event of its stream due now. Answers whether one was.
    pub(crate) fn finish_delivery(
        &self,
        d: &mut Delivery,
        state: DeliveryState,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.wrote.set(true);
        self.unqueue(d)?;
        d.state = state;
        d.next_attempt_at = None;
        d.finished_at = Some(now);
        self.txn
            .open_table(DELIVERIES_DONE)?
            .insert((now, d.seq), ())?;
        put_delivery_row(&mut self.txn.open_table(DELIVERIES)?, d)?;
        self.promote(&d.webhook_id, &d.stream, now)
    }

    /// Removes every row of an unfinished delivery whose endpoint is gone, and makes
    /// the next of its stream due now (to be dropped in turn).
    pub(crate) fn drop_delivery(&self, d: &Delivery, now: Millis) -> Result<bool, StoreError> {
        self.wrote.set(true);
        self.unqueue(d)?;
        self.txn.open_table(DELIVERIES)?.remove(d.seq)?;
        self.txn
            .open_table(WEBHOOK_DELIVERIES)?
            .remove((d.webhook_id.as_str(), d.seq))?;
        self.promote(&d.webhook_id, &d.stream, now)
    }

    fn unqueue(&self, d: &Delivery) -> Result<(), StoreError> {
        if let Some(at) = d.next_attempt_at {
            self.txn.open_table(DELIVERIES_DUE)?.remove((at, d.seq))?;
        }
        self.txn.open_table(DELIVERY_STREAMS)?.remove((
            d.webhook_id.as_str(),
            d.stream.as_str(),
            d.seq,
        ))?;
        Ok(())
    }

    /// The oldest unfinished delivery of (webhook, stream), if any, becomes due now.
    fn promote(&self, webhook: &str, stream: &str, now: Millis) -> Result<bool, StoreError> {
        let next = {
            let streams = self.txn.open_table(DELIVERY_STREAMS)?;
            let mut r = streams.range((webhook, stream, 0)..=(webhook, stream, u64::MAX))?;
            let first = match r.next() {
                Some(item) => Some(item?.0.value().2),
                None => None,
            };
            first
        };
        let Some(seq) = next else { return Ok(false) };
        let mut rows = self.txn.open_table(DELIVERIES)?;
        let Some(mut d) = get_delivery(&rows, seq)? else {
            return Err(StoreError::Codec(format!(
                "delivery {seq} is queued but has no row"
            )));
        };
        if d.state != DeliveryState::Waiting {
            return Ok(false);
        }
        d.state = DeliveryState::Pending;
        d.next_attempt_at = Some(now);
        self.txn
            .open_table(DELIVERIES_DUE)?
            .insert((now, seq), ())?;
        put_delivery_row(&mut rows, &d)?;
        self.outbox.set(true);
        Ok(true)
    }

    /// Makes pending deliveries whose next attempt was set after `now` due at `now`, at
    /// most `limit` per call (after a restart, what waited for its backoff goes at
    /// once). Answers how many moved and whether more may be left.
    pub(crate) fn bring_forward(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<(usize, bool), StoreError> {
        self.wrote.set(true);
        let mut due = self.txn.open_table(DELIVERIES_DUE)?;
        let mut later = Vec::new();
        for item in due.range((now.saturating_add(1), 0)..)? {
            let (k, _) = item?;
            later.push(k.value());
            if later.len() >= limit {
                break;
            }
        }
        let mut rows = self.txn.open_table(DELIVERIES)?;
        for (at, seq) in &later {
            due.remove((*at, *seq))?;
            due.insert((now, *seq), ())?;
            if let Some(mut d) = get_delivery(&rows, *seq)? {
                d.next_attempt_at = Some(now);
                put_delivery_row(&mut rows, &d)?;
            }
        }
        if !later.is_empty() {
            self.outbox.set(true);
        }
        Ok((later.len(), later.len() >= limit))
    }

    /// Removes deliveries that finished before `cutoff`, at most `limit` per call, oldest
    /// first (an index range: O(removed)). Answers how many, and whether more are left.
    pub(crate) fn sweep_deliveries(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<(usize, bool), StoreError> {
        self.wrote.set(true);
        let mut done = self.txn.open_table(DELIVERIES_DONE)?;
        let mut old = Vec::new();
        let mut more = false;
        for item in done.range((i64::MIN, 0)..(cutoff, 0))? {
            let (k, _) = item?;
            if old.len() >= limit {
                more = true;
                break;
            }
            old.push(k.value());
        }
        let mut rows = self.txn.open_table(DELIVERIES)?;
        let mut by_hook = self.txn.open_table(WEBHOOK_DELIVERIES)?;
        for (at, seq) in &old {
            done.remove((*at, *seq))?;
            if let Some(v) = rows.remove(*seq)? {
                let d: Delivery = codec::decode(v.value())?;
                by_hook.remove((d.webhook_id.as_str(), d.seq))?;
            }
        }
        Ok((old.len(), more))
    }
}

impl Rx {
    pub(crate) fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        all_webhooks(&self.txn.open_table(WEBHOOKS)?)
    }

    pub(crate) fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let t = self.txn.open_table(WEBHOOKS)?;
        t.get(id)?.map(|v| codec::decode(v.value())).transpose()
    }

    /// Up to `limit` deliveries due at `now` that `skip` does not name (those already
    /// in flight), oldest due first, and when the next one not taken is due. Reads the
    /// due index only: at most `limit + skipped + 1` entries.
    pub(crate) fn due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        mut skip: impl FnMut(&Delivery) -> bool,
    ) -> Result<DueScan, StoreError> {
        let due = self.txn.open_table(DELIVERIES_DUE)?;
        let rows = self.txn.open_table(DELIVERIES)?;
        let hooks = self.txn.open_table(WEBHOOKS)?;
        let mut out = DueScan::default();
        for item in due.iter()? {
            let (k, _) = item?;
            let (at, seq) = k.value();
            if at > now || out.due.len() >= limit {
                out.next = Some(at);
                break;
            }
            let Some(d) = get_delivery(&rows, seq)? else {
                continue;
            };
            if skip(&d) {
                continue;
            }
            let w = hooks
                .get(d.webhook_id.as_str())?
                .map(|v| codec::decode::<Webhook>(v.value()))
                .transpose()?;
            out.due.push((d, w));
        }
        Ok(out)
    }

    /// One page of an endpoint's deliveries, newest first, strictly before the seq
    /// `before`: O(page).
    pub(crate) fn webhook_deliveries(
        &self,
        webhook: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let idx = self.txn.open_table(WEBHOOK_DELIVERIES)?;
        let rows = self.txn.open_table(DELIVERIES)?;
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for item in idx.range((webhook, 0)..(webhook, end))?.rev() {
            let (k, _) = item?;
            if let Some(d) = get_delivery(&rows, k.value().1)? {
                out.push(d);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
