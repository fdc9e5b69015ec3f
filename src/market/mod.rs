//! Offers: normalize GPU names and units, index, query, paginate.
//!
//! The market is an in-memory, query-ready copy of every provider's offers (rebuilt
//! from redb at start, replaced per provider on each refresh). Readers never wait for
//! a refresh: each refresh builds a new immutable `index::Snapshot` and swaps it in.
//! The last `KEEP_SNAPSHOTS` snapshots stay reachable so that a paginated walk keeps
//! reading the snapshot it started on, even while prices drift between pages: no
//! duplicates and no gaps. If a walk outlives its snapshot (many refreshes later, or
//! after a restart) it continues by keyset — strictly after the last offer's (sort
//! key, id) — on the current snapshot; that is gap- and duplicate-free for offers whose
//! sort key did not change, and best effort for those that moved.

mod cursor;
mod index;
mod normalize;
mod query;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};

use crate::clock::Millis;
use crate::error::Error;
use crate::model::Offer;

use cursor::Cursor;
use index::Snapshot;

pub(crate) use normalize::{insane_offer, normalize_gpu, offer_from_provider};
use query::MAX_LIMIT;
pub use query::{gpu_matches, OfferFilter, OfferQuery, Sort};

/// How many snapshots (the current one included) a cursor can keep walking on.
/// Snapshots share their offers (`Arc`), so an old one costs only its index arrays
/// (about 50 bytes per offer).
pub(crate) const KEEP_SNAPSHOTS: usize = 16;

/// An offer as the market holds it, with room for its rendering: the API encodes an
/// offer's JSON once for as long as it is listed (a refresh lists a new one), not once
/// per request. Derefs to the offer.
#[derive(Debug)]
pub struct Listed {
    offer: Offer,
    rendered: std::sync::OnceLock<Box<[u8]>>,
}

impl Listed {
    fn arc(offer: Offer) -> Arc<Listed> {
        Arc::new(Listed {
            offer,
            rendered: std::sync::OnceLock::new(),
        })
    }

    /// The offer's rendering, made by `render` the first time it is asked for.
    pub fn rendered(&self, render: impl FnOnce(&Offer) -> Vec<u8>) -> &[u8] {
        self.rendered
            .get_or_init(|| render(&self.offer).into_boxed_slice())
    }
}

impl std::ops::Deref for Listed {
    type Target = Offer;
    fn deref(&self) -> &Offer {
        &self.offer
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Listed) -> bool {
        self.offer == other.offer
    }
}

/// One page of offers.
#[derive(Clone, Debug, PartialEq)]
pub struct OfferPage {
    pub data: Vec<Arc<Listed>>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The offer index. Cheap to clone; every clone sees the same market.
#[derive(Clone)]
pub struct Market {
    inner: Arc<Inner>,
}

struct Inner {
    /// Random per process, so a cursor from before a restart is never mistaken for
    /// one of this process's snapshots with the same version number.
    epoch: u64,
    /// The newest snapshot is last.
    recent: RwLock<VecDeque<Arc<Snapshot>>>,
    /// Serializes snapshot builders, so two providers refreshing at once cannot both
    /// build on the same base and lose one another's offers.
    build: Mutex<()>,
    /// Ids of offers that were in the market and left it, so a rent of one of them is
    /// "no longer offered" (409) while a made-up id is "no such offer" (404).
    gone: Mutex<Gone>,
}

/// How many ids of vanished offers are remembered (oldest forgotten first): days of
/// churn of a few thousand offers, a few MB at most.
const MAX_GONE: usize = 200_000;

#[derive(Default)]
struct Gone {
    ids: std::collections::HashSet<String>,
    order: VecDeque<String>,
}

impl Gone {
    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > MAX_GONE {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

impl Default for Market {
    fn default() -> Self {
        Market::new()
    }
}

impl Market {
    pub fn new() -> Market {
        Market::from_offers(Vec::new())
    }

    /// The market at start-up, from the offers persisted in redb.
    pub fn from_offers(offers: Vec<Offer>) -> Market {
        let epoch = random_epoch();
        let snap = Snapshot::build(epoch, 1, offers.into_iter().map(Listed::arc).collect());
        Market {
            inner: Arc::new(Inner {
                epoch,
                recent: RwLock::new(VecDeque::from([Arc::new(snap)])),
                build: Mutex::new(()),
                gone: Mutex::new(Gone::default()),
            }),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        let recent = self.inner.recent.read().unwrap_or_else(|e| e.into_inner());
        match recent.back() {
            Some(s) => s.clone(),
            // Never empty: built with one snapshot and only ever pushed to before a pop.
            None => Arc::new(Snapshot::build(self.inner.epoch, 0, Vec::new())),
        }
    }

    fn snapshot(&self, epoch: u64, version: u64) -> Option<Arc<Snapshot>> {
        if epoch != self.inner.epoch {
            return None;
        }
        let recent = self.inner.recent.read().unwrap_or_else(|e| e.into_inner());
        recent.iter().find(|s| s.version == version).cloned()
    }

    /// Replaces every offer of `provider` with `offers` (an offer not in the list
    /// disappears) in one new snapshot.
    pub fn replace_provider(&self, provider: &str, offers: Vec<Offer>) {
        self.rebuild(provider, offers.into_iter().map(Listed::arc).collect());
    }

    /// Removes every offer of `provider`.
    pub(crate) fn drop_provider(&self, provider: &str) {
        self.rebuild(provider, Vec::new());
    }

    fn rebuild(&self, provider: &str, mut fresh: Vec<Arc<Listed>>) {
        let _guard = self.inner.build.lock().unwrap_or_else(|e| e.into_inner());
        let base = self.current();
        {
            let kept: std::collections::HashSet<&str> =
                fresh.iter().map(|o| o.id.as_str()).collect();
            let mut gone = self.inner.gone.lock().unwrap_or_else(|e| e.into_inner());
            for o in base.offers.iter().filter(|o| o.provider == provider) {
                if !kept.contains(o.id.as_str()) {
                    gone.insert(&o.id);
                }
            }
        }
        fresh.extend(
            base.offers
                .iter()
                .filter(|o| o.provider != provider)
                .cloned(),
        );
        let snap = Arc::new(Snapshot::build(self.inner.epoch, base.version + 1, fresh));
        let mut recent = self.inner.recent.write().unwrap_or_else(|e| e.into_inner());
        recent.push_back(snap);
        while recent.len() > KEEP_SNAPSHOTS {
            recent.pop_front();
        }
    }

    pub fn get(&self, id: &str) -> Option<Offer> {
        self.current().get(id).map(|o| Offer::clone(o))
    }

    /// Whether `id` was in the market since this process started and has left it.
    pub fn was_offered(&self, id: &str) -> bool {
        self.inner
            .gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains(id)
    }

    pub fn len(&self) -> usize {
        self.current().offers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn count_by_provider(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in &self.current().offers {
            *m.entry(o.provider.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The newest `updated_at` among `provider`'s offers: how fresh what is shown is,
    /// also for offers loaded from redb at start.
    pub(crate) fn provider_updated_at(&self, provider: &str) -> Option<Millis> {
        self.current()
            .offers
            .iter()
            .filter(|o| o.provider == provider)
            .map(|o| o.updated_at)
            .max()
    }

    /// One page of offers matching `q`, in `q.sort` order (ties by id).
    pub fn query(&self, q: &OfferQuery) -> Result<OfferPage, Error> {
        if !(1..=MAX_LIMIT).contains(&q.limit) {
            return Err(Error::invalid_param(
                "limit",
                format!("limit must be from 1 to {MAX_LIMIT}"),
            ));
        }
        let (snap, from) = match q.cursor.as_deref() {
            None => (self.current(), 0),
            Some(token) => {
                let c = Cursor::decode(token, &q.filter, q.sort)?;
                match self.snapshot(c.epoch, c.version) {
                    Some(s) => {
                        // The checksum makes a mismatch here all but impossible; if it
                        // happens, the cursor was not made by this snapshot.
                        let same = s
                            .at_rank(q.sort, c.rank as usize)
                            .is_some_and(|o| o.id == c.id);
                        if !same {
                            return Err(Error::invalid_param(
                                "cursor",
                                "cursor does not match this market's offers",
                            ));
                        }
                        (s, c.rank as usize + 1)
                    }
                    None => {
                        let s = self.current();
                        let from = s.first_rank_after(q.sort, c.key, &c.id);
                        (s, from)
                    }
                }
            }
        };
        let mut data: Vec<(usize, Arc<Listed>)> = Vec::with_capacity(q.limit + 1);
        snap.walk(&q.filter, q.sort, from, |rank, o| {
            data.push((rank, o.clone()));
            if data.len() > q.limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let next_cursor = if data.len() > q.limit {
            data.truncate(q.limit);
            data.last().map(|(rank, o)| {
                Cursor {
                    epoch: snap.epoch,
                    version: snap.version,
                    rank: *rank as u32,
                    key: q.sort.key(o),
                    id: o.id.clone(),
                }
                .encode(&q.filter, q.sort)
            })
        } else {
            None
        };
        Ok(OfferPage {
            data: data.into_iter().map(|(_, o)| o).collect(),
            next_cursor,
        })
    }

    /// The `n` cheapest offers (whole-machine price, ties by id) matching `f` that
    /// still have a machine available: the candidates of "rent the cheapest H100
    /// under $2.50/h" and of cold starts, best first.
    pub fn cheapest(&self, f: &OfferFilter, n: usize) -> Vec<Offer> {
        let mut out = Vec::with_capacity(n.min(MAX_LIMIT));
        if n == 0 {
            return out;
        }
        self.current().walk(f, Sort::Price, 0, |_, o| {
            if o.available > 0 {
                out.push(Offer::clone(o));
            }
            if out.len() >= n {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        out
    }
}

fn random_epoch() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    match SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from_be_bytes(b),
        // Without OS randomness the start time still differs between restarts.
        Err(_) => crate::clock::Clock::system().now() as u64,
    }
}
