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
