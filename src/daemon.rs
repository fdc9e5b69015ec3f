//! `spotd serve`: opens the store, starts the sandbox (in sandbox mode), the workers and
//! the API server, and runs until `shutdown` is cancelled. (Being wired up.)

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the daemon until `shutdown` is cancelled. Prints `spotd listening on
/// http://ADDR` to stdout once bound and writes `DATA_DIR/spotd.addr`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), String> {
    let _ = (cfg, shutdown);
    Err("the daemon is not wired up yet".into())
}
