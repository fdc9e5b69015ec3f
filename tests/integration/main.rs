//! The integration tests: one test binary (one link instead of one per file, which
//! keeps CI's disk and build time small). Each module starts the real `spotd` binary
//! on 127.0.0.1:0 with a temp data dir (see `common`), or drives a provider adapter
//! against a loopback mock (see `providers_mock`).

mod common;
mod providers_mock;

mod auth_limits;
mod cli;
mod in_process;
mod inference;
mod inference_upstream;
mod lifecycle;
mod money_api;
mod offers_api;
mod openai_sdk;
mod providers_create_5xx;
mod providers_daemon;
mod providers_lambda;
mod providers_runpod;
mod providers_vastai;
mod rentals_api;
mod restart;
mod shipping;
