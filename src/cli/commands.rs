//! The user's subcommands: offers, rent (and `--wait` until it runs), rentals, stop,
//! credits. Each prints a table for people, or the daemon's JSON with `--json`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgAction, Args};
use hyper::Method;
use serde_json::{Map, Value};

use super::client::{encode, parse_usd, query, Auth, Client, ClientOpts};
use super::pages::{self, ListOpts};
use super::table;
use crate::money::Usd;

#[derive(Args, Debug, Clone, Default)]
pub struct OffersArgs {
    /// GPU model, case-insensitive ("h100", "RTX 4090").
    #[arg(long)]
    pub gpu: Option<String>,
    /// Exactly this many GPUs per machine.
    #[arg(long, value_name = "N")]
    pub gpu_count: Option<u32>,
    /// At least this many GPUs per machine.
    #[arg(long, value_name = "N")]
    pub min_gpu_count: Option<u32>,
    /// At least this much memory per GPU, in GB.
    #[arg(long, value_name = "GB")]
    pub min_vram_gb: Option<u32>,
    /// At most this many USD per hour for the whole machine.
    #[arg(long, value_parser = parse_usd, value_name = "USD")]
    pub max_price: Option<Usd>,
    /// Only this provider's offers (a name from `spotd admin providers`).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only offers in this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only spot (true) or only on-demand (false) offers.
    #[arg(long, action = ArgAction::Set, value_name = "true|false")]
    pub interruptible: Option<bool>,
    /// Order of the list [default: price].
    #[arg(long, allow_hyphen_values = true,
          value_parser = ["price", "-price", "price_per_gpu", "reliability", "-vram_gb"])]
    pub sort: Option<String>,
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RentArgs {
    /// The offer to rent; or describe one with --gpu and spotd picks the cheapest match.
    #[arg(required_unless_present = "gpu", conflicts_with = "gpu")]
    pub offer_id: Option<String>,
    /// Rent the cheapest offer of this GPU model instead of an offer id.
    #[arg(long)]
    pub gpu: Option<String>,
    /// With --gpu: exactly this many GPUs.
    #[arg(long, value_name = "N", conflicts_with = "offer_id")]
    pub gpu_count: Option<u32>,
    /// With --gpu: at most this many USD per hour for the whole machine.
    #[arg(long, value_parser = parse_usd, value_name = "USD", conflicts_with = "offer_id")]
    pub max_price: Option<Usd>,
    /// With --gpu: only offers in this region.
    #[arg(long, conflicts_with = "offer_id")]
    pub region: Option<String>,
    /// With --gpu: only spot (true) or only on-demand (false) offers.
    #[arg(long, action = ArgAction::Set, value_name = "true|false", conflicts_with = "offer_id")]
    pub interruptible: Option<bool>,
    /// A name for the rental, shown in listings.
    #[arg(long)]
    pub name: Option<String>,
    /// The container image to run (where the provider supports one).
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
    /// The most the rental may cost in USD: it is torn down when its cost reaches it.
    #[arg(long, value_parser = parse_usd, value_name = "USD")]
    pub max_cost: Option<Usd>,
    /// Wait until the rental runs, with a progress line, then print its endpoint and
    /// SSH access; exit non-zero if it fails instead.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (the rental keeps going).
    #[arg(long, value_name = "S", default_value_t = 900, requires = "wait")]
    pub wait_timeout: u64,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct RentalsArgs {
    /// Only rentals in this state.
    #[arg(long, value_parser = ["provisioning", "running", "terminating", "terminated", "failed", "interrupted"])]
    pub state: Option<String>,
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    /// The rental to tear down (rnt_...).
    pub rental_id: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct CreditsArgs {
    /// Show the ledger entries (newest first) instead of the balance.
    #[arg(long)]
    pub ledger: bool,
    /// With --ledger: the paging flags.
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

/// The offer filters as query pairs (without paging).
pub fn offers_filters(a: &OffersArgs) -> Vec<(&'static str, Option<String>)> {
    let s = |v: &Option<String>| v.clone();
    let n = |v: Option<u32>| v.map(|x| x.to_string());
    vec![
        ("gpu", s(&a.gpu)),
        ("gpu_count", n(a.gpu_count)),
        ("min_gpu_count", n(a.min_gpu_count)),
        ("min_vram_gb", n(a.min_vram_gb)),
        ("max_price", a.max_price.map(|u| u.to_string())),
        ("provider", s(&a.provider)),
        ("region", s(&a.region)),
        ("interruptible", a.interruptible.map(|b| b.to_string())),
        ("sort", s(&a.sort)),
    ]
}

/// The `GET /v1/gpus/offers` query of the flags, paging as given.
pub fn offers_query(a: &OffersArgs) -> String {
    let mut pairs = offers_filters(a);
    pairs.push(("limit", a.list.limit.map(|x| x.to_string())));
    pairs.push(("cursor", a.list.cursor.clone()));
    query(&pairs)
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
    put("max_cost", a.max_cost.map(Usd::to_json));
    Value::Object(m)
}

pub async fn offers(a: OffersArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let page = pages::fetch(&c, "/v1/gpus/offers", &offers_filters(&a), &a.list).await?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::offers_table, "no offers match");
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
    let mut v = c
        .call(Method::POST, "/v1/gpus/rentals", Some(&rent_body(&a, ssh)))
        .await?;
    if a.wait {
        v = wait_running(&c, v, Duration::from_secs(a.wait_timeout)).await?;
    }
    if c.printed_json(&v) {
        return Ok(());
    }
    print!("{}", table::rentals_table(std::slice::from_ref(&v)));
    if let Some(h) = v.get("hold").filter(|_| !a.wait) {
        println!(
            "held: ${} (the first min_session_seconds of use; unused hold is released at the end)",
            table::usd(h)
        );
    }
    if a.wait {
        print_access(&v);
    }
    Ok(())
}

/// How often `rent --wait` asks.
const POLL: Duration = Duration::from_secs(1);

/// Polls the rental until it runs; a terminal state or the timeout is an error.
async fn wait_running(c: &Client, mut v: Value, timeout: Duration) -> Result<Value, String> {
    let id = table::text(&v["id"]);
    let path = format!("/v1/gpus/rentals/{}", encode(&id));
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_state = String::new();
    let mut last_line = Instant::now();
    loop {
        let state = table::text(&v["state"]);
        match state.as_str() {
            "running" => {
                if tty {
                    eprintln!();
                }
                return Ok(v);
            }
            "failed" | "terminated" | "interrupted" | "terminating" => {
                if tty {
                    eprintln!();
                }
                let reason = table::text(&v["termination_reason"]);
                let why = match v["last_error"].as_str() {
                    Some(e) => format!(": {e}"),
                    None => String::new(),
                };
                return Err(format!(
                    "rental {id} did not start: it is {state} ({reason}){why}"
                ));
            }
            _ => {}
        }
        let waited = started.elapsed().as_secs();
        if waited >= timeout.as_secs() {
            return Err(format!(
                "rental {id} is still {state} after {waited} s (--wait-timeout); it keeps going: `spotd rentals`, or `spotd stop {id}`"
            ));
        }
        // One line per state change (and every 15 s) in a log; one updated line on a
        // terminal.
        let line = format!("waiting for {id}: {state}, {waited} s");
        if tty {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if state != last_state || last_line.elapsed() >= Duration::from_secs(15) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        last_state = state;
        tokio::time::sleep(POLL).await;
        v = c.call(Method::GET, &path, None).await?;
    }
}

/// The endpoint and SSH access of a running rental, or why there is none.
fn print_access(v: &Value) {
    match v["endpoint"].as_str() {
        Some(e) => println!("endpoint: {e}"),
        None => println!("endpoint: - (this rental serves no endpoint)"),
    }
    match v.get("ssh").filter(|s| s.is_object()) {
        Some(s) => println!(
            "ssh: ssh -p {} {}@{}",
            table::text(&s["port"]),
            table::text(&s["user"]),
            table::text(&s["host"])
        ),
        None => println!("ssh: - (the provider gives no shell access to this rental)"),
    }
}

pub async fn rentals(a: RentalsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let page = pages::fetch(
        &c,
        "/v1/gpus/rentals",
        &[("state", a.state.clone())],
        &a.list,
    )
    .await?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::rentals_table, "no rentals");
    }
    Ok(())
}

pub async fn stop(a: StopArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let path = format!("/v1/gpus/rentals/{}", encode(&a.rental_id));
    let v = c.call(Method::DELETE, &path, None).await?;
    if !c.printed_json(&v) {
        print!("{}", table::rentals_table(std::slice::from_ref(&v)));
    }
    Ok(())
}

pub async fn credits(a: CreditsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    if a.ledger {
        let page = pages::fetch(&c, "/v1/credits/ledger", &[], &a.list).await?;
        if !c.printed_json(&page.to_json()) {
            pages::print(&page, table::ledger_table, "no ledger entries");
        }
        return Ok(());
    }
    if a.list.limit.is_some() || a.list.all || a.list.cursor.is_some() {
        return Err("--limit, --all and --cursor page the ledger: add --ledger".into());
    }
    let v = c.call(Method::GET, "/v1/credits", None).await?;
    if !c.printed_json(&v) {
        let mut t = table::Table::new(&[("", table::Align::Left), ("USD", table::Align::Money)]);
        for k in ["balance", "held", "available"] {
            t.row(vec![k.into(), table::usd(v.get(k).unwrap_or(&Value::Null))]);
        }
        print!("{}", t.render());
    }
    Ok(())
}
