//! The sandbox: simulated GPU clouds speaking the `http` provider protocol. (In progress.)

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config;

/// `spotd sandbox-cloud`: serves the clouds on `listen` until `shutdown` is cancelled,
/// printing `spotd sandbox-cloud listening on http://ADDR` once bound.
pub async fn run_standalone(
    listen: &str,
    data_dir: &Path,
    cfg: config::Sandbox,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let _ = (listen, data_dir, cfg, shutdown);
    Err("the sandbox cloud is not built yet".into())
}
pub struct SandboxHandle {
    pub addr: std::net::SocketAddr,
    pub clouds: Vec<String>,
    pub hosted_base_url: String,
}
impl SandboxHandle {
    pub async fn shutdown(self) {}
}
pub async fn start(
    _l: tokio::net::TcpListener,
    _c: config::Sandbox,
    _d: &Path,
    _clock: crate::clock::Clock,
) -> Result<SandboxHandle, String> {
    Err("stub".into())
}
