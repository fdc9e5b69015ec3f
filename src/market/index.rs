//! One immutable, query-ready snapshot of every offer.
//!
//! Offers sit in a vector sorted by id, so a position doubles as the id tie-break of
//! every sort order. Each sort order is a pre-sorted list of positions; each distinct
//! GPU model additionally keeps the ranks (indexes into those lists) of its own offers,
//! so a `gpu=` query merges a few short lists instead of scanning the market. The
//! remaining filters are checked while walking, which stops as soon as a page is full.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;

use super::Listed;
use crate::model::Offer;

use super::query::{gpu_matches, OfferFilter, Sort};

const SORTS: usize = Sort::ALL.len();

struct GpuGroup {
    name: String,
    /// Per sort order: ranks of this model's offers, ascending.
    ranks: [Vec<u32>; SORTS],
}

pub(crate) struct Snapshot {
    pub epoch: u64,
    pub version: u64,
    /// Sorted by id, ids unique.
    pub offers: Vec<Arc<Listed>>,
    /// Per sort order: positions into `offers`, in that order.
    orders: [Vec<u32>; SORTS],
    groups: Vec<GpuGroup>,
}

impl Snapshot {
    /// Builds the indexes. A later duplicate id replaces an earlier one.
    pub fn build(epoch: u64, version: u64, mut offers: Vec<Arc<Listed>>) -> Snapshot {
        // Stable sort keeps input order among equal ids, so "later wins" is well defined.
        offers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut dedup: Vec<Arc<Listed>> = Vec::with_capacity(offers.len());
        for o in offers {
            match dedup.last_mut() {
                Some(last) if last.id == o.id => *last = o,
                _ => dedup.push(o),
            }
        }
        let offers = dedup;
        let n = offers.len();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (pos, o) in offers.iter().enumerate() {
            let g = *group_of.entry(o.gpu.as_str()).or_insert_with(|| {
                names.push(o.gpu.clone());
                members.push(Vec::new());
                names.len() - 1
            });
            members[g].push(pos as u32);
        }
        let mut orders: [Vec<u32>; SORTS] = Default::default();
        let mut group_ranks: Vec<[Vec<u32>; SORTS]> =
            (0..names.len()).map(|_| Default::default()).collect();
        let mut rank_of = vec![0u32; n];
        for sort in Sort::ALL {
            let keys: Vec<i64> = offers.iter().map(|o| sort.key(o)).collect();
            let mut order: Vec<u32> = (0..n as u32).collect();
            // Position order is id order, so (key, position) is the (key, id) order.
            order.sort_unstable_by_key(|&p| (keys[p as usize], p));
            for (rank, &p) in order.iter().enumerate() {
                rank_of[p as usize] = rank as u32;
            }
            for (g, m) in members.iter().enumerate() {
                let mut r: Vec<u32> = m.iter().map(|&p| rank_of[p as usize]).collect();
                r.sort_unstable();
                group_ranks[g][sort.index()] = r;
            }
            orders[sort.index()] = order;
        }
        let groups = names
            .into_iter()
            .zip(group_ranks)
            .map(|(name, ranks)| GpuGroup { name, ranks })
            .collect();
        Snapshot {
            epoch,
            version,
            offers,
            orders,
            groups,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Listed>> {
        self.offers
            .binary_search_by(|o| o.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.offers[i])
    }

    /// The offer at `rank` in `sort` order.
    pub(crate) fn at_rank(&self, sort: Sort, rank: usize) -> Option<&Arc<Listed>> {
        let p = *self.orders[sort.index()].get(rank)?;
        self.offers.get(p as usize)
    }

    /// The first rank whose offer comes strictly after `(key, id)` in `sort` order:
    /// where a keyset continuation starts.
    pub(crate) fn first_rank_after(&self, sort: Sort, key: i64, id: &str) -> usize {
        self.orders[sort.index()].partition_point(|&p| {
            let o = &self.offers[p as usize];
            (sort.key(o), o.id.as_str()) <= (key, id)
        })
    }

    /// Visits the offers matching `filter`, in `sort` order, from rank `from` on,
    /// until `visit` breaks or the candidates run out.
    pub fn walk<F>(&self, filter: &OfferFilter, sort: Sort, from: usize, mut visit: F)
    where
        F: FnMut(usize, &Arc<Listed>) -> ControlFlow<()>,
    {
        let order = &self.orders[sort.index()];
        // In price order nothing after the first offer above max_price can match.
        let past_end = |o: &Offer| {
            sort == Sort::Price && filter.max_price.is_some_and(|m| o.price_per_hour > m)
        };
        let mut step = |rank: usize| -> ControlFlow<()> {
            let o = &self.offers[order[rank] as usize];
            if past_end(o) {
                return ControlFlow::Break(());
            }
            if filter.matches_except_gpu(o) {
                visit(rank, o)
            } else {
                ControlFlow::Continue(())
            }
        };
        let Some(gpu) = filter.gpu.as_deref() else {
            for rank in from..order.len() {
                if step(rank).is_break() {
                    return;
                }
            }
            return;
        };
        let lists: Vec<&[u32]> = self
            .groups
            .iter()
            .filter(|g| gpu_matches(gpu, &g.name))
            .map(|g| g.ranks[sort.index()].as_slice())
            .collect();
        if let [one] = lists.as_slice() {
            let start = one.partition_point(|&r| (r as usize) < from);
            for &r in &one[start..] {
                if step(r as usize).is_break() {
                    return;
                }
            }
            return;
        }
        // k-way merge of the matching models' rank lists, smallest rank first.
        let mut heads: Vec<usize> = lists
            .iter()
            .map(|l| l.partition_point(|&r| (r as usize) < from))
            .collect();
        let mut heap: BinaryHeap<Reverse<(u32, usize)>> = lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.get(heads[i]).map(|&r| Reverse((r, i))))
            .collect();
        while let Some(Reverse((rank, i))) = heap.pop() {
            if step(rank as usize).is_break() {
                return;
            }
            heads[i] += 1;
            if let Some(&next) = lists[i].get(heads[i]) {
                heap.push(Reverse((next, i)));
            }
        }
    }
}
