//! `spotd healthcheck`: asks a running daemon's `GET /readyz` and turns the answer into
//! an exit code, for container HEALTHCHECKs, monitoring scripts and `ExecStartPost=`.
//! The daemon is found as the other client commands find it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::client::{base_url, data_dir};
use crate::http_client::HttpClient;

/// A health check that hangs is a failed health check.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone, Default)]
pub struct HealthcheckArgs {
    /// The daemon's base URL [default: SPOTD_URL, else DATA_DIR/spotd.addr, else
    /// http://127.0.0.1:8088].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The local daemon's data directory, read for spotd.addr [env: SPOTD_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `Ok(message)` when the daemon answers ready; `Err(message)` otherwise.
pub async fn run(a: HealthcheckArgs, env: &[(String, String)]) -> Result<String, String> {
    let base = match a.url {
        Some(u) => base_url(&[("SPOTD_URL".to_string(), u)], &PathBuf::new()),
        None => base_url(env, &data_dir(a.data_dir.as_deref(), env)),
    };
    let url = format!("{base}/readyz");
    let r = HttpClient::new(TIMEOUT)
        .get(&url, None)
        .await
        .map_err(|e| format!("unhealthy: {url}: {e}"))?;
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    if r.status.is_success() && body["status"] == "ready" {
        Ok(format!("ok: {base} is ready ({} offers)", body["offers"]))
    } else {
        let why = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).chars().take(200).collect());
        Err(format!("unhealthy: {url} answered {}: {why}", r.status))
    }
}
