//! Calling a running daemon: where (`--url`, `SPOTD_URL`, the data dir's `spotd.addr`),
//! with which key (`SPOTD_API_KEY` / `SPOTD_ADMIN_TOKEN`, the data dir's key files),
//! and failures turned into advice. The subcommands themselves are in `commands`
//! (the user's) and `admin`; `pages` lists page by page.
//!
//! The flags come first, then the environment, then the files a local daemon writes
//! into its data directory, so `spotd serve` in one terminal and `spotd offers` in
//! another work with no setup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::http_client::{HttpClient, HttpError};
use crate::money::Usd;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8088";
const DEFAULT_DATA_DIR: &str = "./spotd-data";
/// Renting waits on the provider; generous, but a hung daemon still ends.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientOpts {
    /// The daemon's base URL [env: SPOTD_URL; else DATA_DIR/spotd.addr; else
    /// http://127.0.0.1:8088]. The key is read from SPOTD_API_KEY (admin commands:
    /// SPOTD_ADMIN_TOKEN), else from DATA_DIR/demo.key (admin.token).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The local daemon's data directory, read for spotd.addr, demo.key and admin.token
    /// [env: SPOTD_DATA_DIR, default ./spotd-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of a table (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn parse_usd(s: &str) -> Result<Usd, String> {
    Usd::parse(s).map_err(|e| e.to_string())
}

// ---- where to call, with which key ----

fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
}

/// `--data-dir`, else `SPOTD_DATA_DIR`, else `./spotd-data`.
pub fn data_dir(flag: Option<&Path>, env: &[(String, String)]) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| env_get(env, "SPOTD_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// `SPOTD_URL`, else `DATA_DIR/spotd.addr`, else the default address.
pub fn base_url(env: &[(String, String)], data_dir: &Path) -> String {
    if let Some(u) = env_get(env, "SPOTD_URL") {
        return normalize_url(u);
    }
    match read_trimmed(&data_dir.join("spotd.addr")) {
        Some(addr) => normalize_url(&addr),
        None => DEFAULT_URL.to_string(),
    }
}

/// `127.0.0.1:8088` -> `http://127.0.0.1:8088`; no trailing slash.
fn normalize_url(u: &str) -> String {
    let u = u.trim().trim_end_matches('/');
    if u.starts_with("http://") || u.starts_with("https://") {
        u.to_string()
    } else {
        format!("http://{u}")
    }
}

/// `SPOTD_API_KEY`, else `DATA_DIR/demo.key`.
pub fn api_key(env: &[(String, String)], data_dir: &Path) -> Option<String> {
    env_get(env, "SPOTD_API_KEY")
        .map(str::to_string)
        .or_else(|| read_trimmed(&data_dir.join("demo.key")))
}

/// `SPOTD_ADMIN_TOKEN`, else `DATA_DIR/admin.token`.
pub fn admin_token(env: &[(String, String)], data_dir: &Path) -> Option<String> {
    env_get(env, "SPOTD_ADMIN_TOKEN")
        .map(str::to_string)
        .or_else(|| read_trimmed(&data_dir.join("admin.token")))
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

// ---- query strings ----

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` from the pairs that are set, or an empty string.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

// ---- calling the daemon ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    User,
    Admin,
}

pub struct Client {
    pub(super) http: HttpClient,
    pub(super) base: String,
    pub(super) token: String,
    pub(super) auth: Auth,
    pub(super) json: bool,
}

impl Client {
    /// Resolves the address and the credential for `auth`; no credential is an error
    /// here rather than a 401 later.
    pub fn new(opts: &ClientOpts, env: &[(String, String)], auth: Auth) -> Result<Client, String> {
        let dir = data_dir(opts.data_dir.as_deref(), env);
        let base = match &opts.url {
            Some(u) => normalize_url(u),
            None => base_url(env, &dir),
        };
        let token = match auth {
            Auth::User => api_key(env, &dir).ok_or_else(|| {
                format!(
                    "no API key: set SPOTD_API_KEY (a sandbox daemon writes one to {})",
                    dir.join("demo.key").display()
                )
            })?,
            Auth::Admin => admin_token(env, &dir).ok_or_else(|| {
                format!(
                    "no admin token: set SPOTD_ADMIN_TOKEN (the daemon writes one to {})",
                    dir.join("admin.token").display()
                )
            })?,
        };
        Ok(Client {
            http: HttpClient::new(TIMEOUT),
            base,
            token,
            auth,
            json: opts.json,
        })
    }

    /// One call; a non-2xx answer becomes the message a person should read.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let idem;
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if method == Method::POST {
            // A retried create or credit must not happen twice.
            idem = crate::ids::random_token(32);
            headers.push(("idempotency-key", &idem));
        }
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| e.to_string())?),
            None => None,
        };
        let resp = self
            .http
            .send(method, &url, Some(&self.token), &headers, bytes)
            .await
            .map_err(|e| match e {
                HttpError::Transport(_) | HttpError::Timeout(_) => unreachable_msg(&self.base),
                HttpError::Request(m) => m,
            })?;
        if !resp.status.is_success() {
            return Err(failure_msg(resp.status, &resp.body, self.auth));
        }
        resp.json::<Value>()
    }

    /// With `--json`, prints `v` (the daemon's answer; money keeps its exact digits)
    /// and answers true: the caller prints no table then.
    pub fn printed_json(&self, v: &Value) -> bool {
        if self.json {
            println!("{v}");
        }
        self.json
    }
}

pub fn unreachable_msg(base: &str) -> String {
    format!("cannot reach spotd at {base} (is `spotd serve` running?)")
}

/// 401 says which variable to set; other errors show the OpenAI error message and status.
pub fn failure_msg(status: StatusCode, body: &[u8], auth: Auth) -> String {
    if status == StatusCode::UNAUTHORIZED {
        return match auth {
            Auth::User => "the API key was refused (revoked, or another daemon's): it is read from SPOTD_API_KEY, else from DATA_DIR/demo.key".into(),
            Auth::Admin => "the admin token was refused (another daemon's?): it is read from SPOTD_ADMIN_TOKEN, else from DATA_DIR/admin.token".into(),
        };
    }
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let t = String::from_utf8_lossy(body);
            t.chars().take(300).collect::<String>().trim().to_string()
        });
    if message.is_empty() {
        format!("spotd answered {status}")
    } else {
        format!("{message} ({status})")
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
