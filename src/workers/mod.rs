//! Background loops: offer sync, and the rental workers (provider sync, metering, the
//! orphan sweep). The idle reaper of deployments is inference's (`inference::reaper`).
//!
//! Each worker is an `async fn run(..., shutdown)` the daemon spawns once, plus a
//! one-round function tests and start-up call directly. Workers call the same domain
//! functions the API calls and take a `Clock`, so tests move time instead of sleeping.

pub mod offer_sync;
pub mod rentals;
