//! Counters the domain bumps and `/metrics` reads: cold starts and idle reaps.

use std::sync::atomic::{AtomicU64, Ordering};

static COLD_STARTS: AtomicU64 = AtomicU64::new(0);
static REAPS: AtomicU64 = AtomicU64::new(0);

pub fn cold_started() {
    COLD_STARTS.fetch_add(1, Ordering::Relaxed);
}

pub fn reaped() {
    REAPS.fetch_add(1, Ordering::Relaxed);
}

/// (cold starts, reaps) since the process started.
pub fn counts() -> (u64, u64) {
    (
        COLD_STARTS.load(Ordering::Relaxed),
        REAPS.load(Ordering::Relaxed),
    )
}
