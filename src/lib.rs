//! spotd: a self-hosted GPU spot marketplace.
//!
//! Data flows one way: `api` -> domain (`market`, `rentals`, `ledger`) -> `store` /
//! `providers`. Workers call the same domain functions the API calls.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error;
pub mod http_client;
pub(crate) mod http_server;
pub mod ids;
pub mod inference;
pub mod ledger;
pub mod market;
pub mod metrics;
pub mod model;
pub mod money;
pub mod notify;
pub mod providers;
pub mod rentals;
pub mod sandbox;
pub mod store;
pub mod tasks;
pub mod workers;
