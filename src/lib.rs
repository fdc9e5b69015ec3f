//! spotd: a self-hosted GPU spot marketplace.
//!
//! The daemon is a value: [`daemon::Daemon::open`] builds the store, the provider
//! registry, the market, rentals and inference from a config and a [`clock::Clock`];
//! [`daemon::Daemon::serve`] runs the API and the background workers on a listener the
//! caller bound until shutdown, then waits for the background writes ([`tasks`]) and
//! closes the store. `spotd serve` (in [`cli`]) is one caller; tests run it in their
//! own process on a manual clock, which moves time through every sleep and ticker.
//!
//! Calls go downward:
//! - `api` — the only code that knows hyper server types and HTTP statuses: one route
//!   table (`api::routes`), authentication, limits and idempotency (`api::router`), one
//!   error mapping (`api::error`), inference answers rendered (`api::answer`);
//! - the domain — `accounts`, `ledger` (the money rules), `market` (the offer index),
//!   `guards` (the spend caps, checked in the transactions of the money they guard),
//!   `rentals`, `inference` (hosted proxy, deployments, idle reaper), `webhooks` (the
//!   outbox, signing and the delivery worker) — answers domain values and
//!   [`error::Error`]; `workers` (offer sync, rental sync, metering, orphan sweep,
//!   retention) call the same domain functions the API calls;
//! - `store` (the only code that touches redb) and `providers` (every GPU cloud behind
//!   one trait; `sandbox` serves simulated ones).
//!
//! A few calls go the other way, on purpose: rentals tell inference about a preempted
//! deployment through a hook the daemon installs (`Rentals::on_preempted`); the store
//! tells the webhooks outbox about every rental and account write, inside its
//! transaction, through another (`store::WriteObserver`), and the outbox renders an
//! event's `data` with `api::views` (the object exactly as the API shows it); and the
//! provider adapters name GPUs with the market's `normalize_gpu`. Beside the layers:
//! `model` (the stored records), `money`, `clock`, `config`, `ids`, `http_client`,
//! `http_server` (the accept loop the API and the sandbox share), `metrics`, `notify`,
//! and `sim` (`spotd simulate`: the whole daemon on a manual clock under a seeded
//! workload with faults and crashes, its invariants checked after every step).
#![forbid(unsafe_code)]

/// The allocator of every build (binary, tests, benches): musl's own took the static
/// build's offers query to a fifth of the glibc build's speed (README: the allocator).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod accounts;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error;
pub mod guards;
pub(crate) mod history;
pub mod http_client;
pub(crate) mod http_server;
pub(crate) mod ids;
pub(crate) mod inference;
pub mod ledger;
pub mod market;
pub(crate) mod metrics;
pub mod model;
pub mod money;
pub(crate) mod notify;
pub mod providers;
pub(crate) mod rentals;
pub(crate) mod sandbox;
pub mod sim;
pub mod store;
pub mod tasks;
pub(crate) mod webhooks;
pub(crate) mod workers;
