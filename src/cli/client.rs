//! The client subcommands: small HTTP calls to a running daemon, printed as tables
//! for people or as the daemon's raw JSON with `--json`.
//!
//! Where to call and with which key is resolved from the environment first, then from
//! the files a local daemon writes into its data directory, so `spotd serve` in one
//! terminal and `spotd offers` in another work with no setup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::table;
use crate::http_client::{HttpClient, HttpError};
use crate::money::Usd;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8088";
const DEFAULT_DATA_DIR: &str = "./spotd-data";
/// Renting waits on the provider; generous, but a hung daemon still ends.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientOpts {
    /// The local daemon's data directory, read for spotd.addr, demo.key and admin.token
    /// [env: SPOTD_DATA_DIR, default ./spotd-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_usd(s: &str) -> Result<Usd, String> {
    Usd::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug, Clone, Default)]
pub struct OffersArgs {
    /// GPU model, case-insensitive ("h100", "RTX 4090").
    #[arg(long)]
    pub gpu: Option<String>,
    /// Exactly this many GPUs per machine.
    #[arg(long)]
    pub gpu_count: Option<u32>,
    #[arg(long)]
    pub min_gpu_count: Option<u32>,
    /// Per GPU.
    #[arg(long)]
    pub min_vram_gb: Option<u32>,
    /// USD per hour for the whole machine.
    #[arg(long, value_parser = parse_usd, value_name = "USD")]
    pub max_price: Option<Usd>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long, action = ArgAction::Set, value_name = "true|false")]
    pub interruptible: Option<bool>,
    #[arg(long, allow_hyphen_values = true,
          value_parser = ["price", "-price", "price_per_gpu", "reliability", "-vram_gb"])]
    pub sort: Option<String>,
    /// 1..1000.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RentArgs {
    /// The offer to rent; or describe one with --gpu and spotd picks the cheapest match.
    #[arg(required_unless_present = "gpu", conflicts_with = "gpu")]
    pub offer_id: Option<String>,
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long, conflicts_with = "offer_id")]
    pub gpu_count: Option<u32>,
    /// USD per hour for the whole machine.
    #[arg(long, value_parser = parse_usd, value_name = "USD", conflicts_with = "offer_id")]
    pub max_price: Option<Usd>,
    #[arg(long, conflicts_with = "offer_id")]
    pub region: Option<String>,
    #[arg(long, action = ArgAction::Set, value_name = "true|false", conflicts_with = "offer_id")]
    pub interruptible: Option<bool>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub image: Option<String>,
    /// A public key file to install for SSH access.
    #[arg(long, value_name = "PATH")]
    pub ssh_key_file: Option<PathBuf>,
    /// Seconds without activity before the rental is terminated.
    #[arg(long, value_name = "S")]
    pub idle_timeout: Option<u64>,
    /// Seconds after which the rental is terminated regardless.
    #[arg(long, value_name = "S")]
    pub max_duration: Option<u64>,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct RentalsArgs {
    #[arg(long, value_parser = ["provisioning", "running", "terminating", "terminated", "failed", "interrupted"])]
    pub state: Option<String>,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    pub rental_id: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct CreditsArgs {
    /// Show the ledger entries (newest first) instead of the balance.
    #[arg(long)]
    pub ledger: bool,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AccountCreateArgs {
    pub name: String,
    /// Initial credit in USD.
    #[arg(long, value_parser = parse_usd, value_name = "USD")]
    pub credit: Usd,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AdminCreditArgs {
    pub account_id: String,
    /// USD to add (negative to take back).
    #[arg(value_parser = parse_usd, allow_negative_numbers = true, value_name = "USD")]
    pub amount: Usd,
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub common: ClientOpts,
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

pub fn offers_query(a: &OffersArgs) -> String {
    let s = |v: &Option<String>| v.clone();
    let n = |v: Option<u32>| v.map(|x| x.to_string());
    query(&[
        ("gpu", s(&a.gpu)),
        ("gpu_count", n(a.gpu_count)),
        ("min_gpu_count", n(a.min_gpu_count)),
        ("min_vram_gb", n(a.min_vram_gb)),
        ("max_price", a.max_price.map(|u| u.to_string())),
        ("provider", s(&a.provider)),
        ("region", s(&a.region)),
        ("interruptible", a.interruptible.map(|b| b.to_string())),
        ("sort", s(&a.sort)),
        ("limit", n(a.limit)),
        ("cursor", s(&a.cursor)),
    ])
}

/// The `POST /v1/gpus/rentals` body; money as exact JSON numbers.
pub fn rent_body(a: &RentArgs, ssh_public_key: Option<String>) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("offer_id", a.offer_id.clone().map(Value::String));
    put("gpu", a.gpu.clone().map(Value::String));
    put("gpu_count", a.gpu_count.map(Value::from));
    put("max_price_per_hour", a.max_price.map(Usd::to_json));
    put("region", a.region.clone().map(Value::String));
    put("interruptible", a.interruptible.map(Value::Bool));
    put("name", a.name.clone().map(Value::String));
    put("image", a.image.clone().map(Value::String));
    put("ssh_public_key", ssh_public_key.map(Value::String));
    put("idle_timeout_seconds", a.idle_timeout.map(Value::from));
    put("max_duration_seconds", a.max_duration.map(Value::from));
    Value::Object(m)
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
        let base = base_url(env, &dir);
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
        if self.json {
            // The raw answer, for scripts.
            println!("{}", String::from_utf8_lossy(&resp.body).trim_end());
        }
        resp.json::<Value>()
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

// ---- the subcommands ----

pub async fn offers(a: OffersArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let v = c
        .call(
            Method::GET,
            &format!("/v1/gpus/offers{}", offers_query(&a)),
            None,
        )
        .await?;
    if !c.json {
        let items = table::list_items(&v);
        if items.is_empty() {
            println!("no offers match");
        } else {
            print!("{}", table::offers_table(items));
        }
        if let Some(next) = v.get("next_cursor").and_then(Value::as_str) {
            println!("more: --cursor {next}");
        }
    }
    Ok(())
}

pub async fn rent(a: RentArgs, env: &[(String, String)]) -> Result<(), String> {
    let ssh = match &a.ssh_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let c = Client::new(&a.common, env, Auth::User)?;
    let v = c
        .call(Method::POST, "/v1/gpus/rentals", Some(&rent_body(&a, ssh)))
        .await?;
    if !c.json {
        print!("{}", table::rentals_table(std::slice::from_ref(&v)));
        if let Some(h) = v.get("hold") {
            println!(
                "held: ${} (the first min_session_seconds of use; unused hold is released at the end)",
                table::usd(h)
            );
        }
    }
    Ok(())
}

pub async fn rentals(a: RentalsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let q = query(&[("state", a.state.clone())]);
    let v = c
        .call(Method::GET, &format!("/v1/gpus/rentals{q}"), None)
        .await?;
    if !c.json {
        let items = table::list_items(&v);
        if items.is_empty() {
            println!("no rentals");
        } else {
            print!("{}", table::rentals_table(items));
        }
    }
    Ok(())
}

pub async fn stop(a: StopArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let path = format!("/v1/gpus/rentals/{}", encode(&a.rental_id));
    let v = c.call(Method::DELETE, &path, None).await?;
    if !c.json {
        print!("{}", table::rentals_table(std::slice::from_ref(&v)));
    }
    Ok(())
}

pub async fn credits(a: CreditsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    if a.ledger {
        let v = c.call(Method::GET, "/v1/credits/ledger", None).await?;
        if !c.json {
            print!("{}", table::ledger_table(table::list_items(&v)));
        }
        return Ok(());
    }
    let v = c.call(Method::GET, "/v1/credits", None).await?;
    if !c.json {
        let mut t = table::Table::new(&[("", table::Align::Left), ("USD", table::Align::Right)]);
        for k in ["balance", "held", "available"] {
            t.row(vec![k.into(), table::usd(v.get(k).unwrap_or(&Value::Null))]);
        }
        print!("{}", t.render());
    }
    Ok(())
}

pub async fn account_create(a: AccountCreateArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let body = json!({"name": a.name, "credit": a.credit.to_json()});
    let v = c
        .call(Method::POST, "/admin/v1/accounts", Some(&body))
        .await?;
    if !c.json {
        let id = v
            .get("id")
            .or_else(|| v.pointer("/account/id"))
            .map(table::text)
            .unwrap_or_else(|| "-".into());
        println!(
            "account {id} ({}) created with ${} of credit",
            a.name,
            table::usd_text(a.credit)
        );
        match find_api_key(&v) {
            Some(k) => println!("API key (shown once, keep it): {k}"),
            None => println!("the answer held no API key; run with --json to see it"),
        }
    }
    Ok(())
}

/// The new key's secret, wherever the answer puts it: `api_key` as a string or as an
/// object with `key`/`secret`, or `key` likewise.
fn find_api_key(v: &Value) -> Option<String> {
    for field in ["api_key", "key"] {
        match v.get(field) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Object(o)) => {
                for inner in ["key", "secret", "api_key"] {
                    if let Some(Value::String(s)) = o.get(inner) {
                        return Some(s.clone());
                    }
                }
            }
            _ => {}
        }
    }
    None
}

pub async fn admin_credit(a: AdminCreditArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let mut body = json!({"amount": a.amount.to_json()});
    if let Some(n) = &a.note {
        body["note"] = Value::String(n.clone());
    }
    let path = format!("/admin/v1/accounts/{}/credits", encode(&a.account_id));
    let v = c.call(Method::POST, &path, Some(&body)).await?;
    if !c.json {
        print!(
            "credited ${} to {}",
            table::usd_text(a.amount),
            a.account_id
        );
        match v.get("balance").or_else(|| v.get("balance_after")) {
            Some(b) => println!("; balance now ${}", table::usd(b)),
            None => println!(),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
