//! The integration tests: one test binary (one link instead of one per file, which
//! keeps CI's disk and build time small). Most modules open the real daemon in this
//! process on a manual clock and serve it on 127.0.0.1:0 with a temp data dir
//! (`Daemon::in_process` in `common`): waiting means moving the clock, never sleeping.
//! Those that need a real process (signals, kill -9, systemd notify, packaging, the
//! official Python SDK) start the `spotd` binary (`Daemon::start`), and so does
//! `providers_create_5xx`, whose provider mocks keep real time (a daemon on a manual
//! clock would give up on their late answers in no time). The CLI runs as a child
//! against an in-process daemon; the provider adapters are driven against loopback
//! mocks (`providers_mock`).

mod common;
mod providers_mock;
mod receiver;

mod auth_limits;
mod backup;
mod cli;
mod cli_lists;
mod cli_rent;
mod client_json;
mod cold_wait;
mod console;
mod guards;
mod in_process;
mod inference;
mod inference_upstream;
mod lifecycle;
mod money_api;
mod offers_api;
mod openai_sdk;
mod openapi_doc;
mod prices;
mod providers_create_5xx;
mod providers_daemon;
mod providers_lambda;
mod providers_runpod;
mod providers_vastai;
mod rentals_api;
mod restart;
mod sandbox_ssh;
mod shipping;
mod simulate;
mod webhooks;
