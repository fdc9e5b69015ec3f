//! Background loops: offer sync, the rental workers (provider sync, metering, the
//! orphan sweep) and retention (idempotency records after 24 h). The idle reaper of deployments is inference's (`inference::reaper`).
//!
//! Each worker is an `async fn run(..., shutdown)` the daemon spawns once, plus a
//! one-round function tests and start-up call directly. Workers call the same domain
//! functions the API calls and take a `Clock`, so tests move time instead of sleeping.

pub mod offer_sync;
pub mod rentals;
pub(crate) mod retention;
