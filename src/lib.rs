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
pub mod store;
pub mod tasks;
pub(crate) mod workers;
