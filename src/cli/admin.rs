//! The admin subcommands (SPEC section 3, "Admin"): accounts, their credit and keys,
//! providers, every rental. They call with the admin token.

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use super::client::{encode, parse_usd, Auth, Client, ClientOpts};
use super::pages::{self, ListOpts};
use super::table;
use crate::money::Usd;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Add credit to an account: `spotd admin credit ACCOUNT_ID USD`; take credit back
    /// with `--debit` (down to what the account has available).
    Credit(AdminCreditArgs),
    /// List, create and revoke an account's API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Provider status: offers, last refresh, last error.
    Providers(ProvidersArgs),
    /// Every account's rentals, newest first.
    Rentals(AdminRentalsArgs),
    /// Tear any account's rental down (reason `admin`).
    Stop(AdminStopArgs),
    /// Set or clear an account's spend caps: `spotd admin limits ACCOUNT --per-hour USD
    /// --per-month USD` (`none` clears one); with neither flag, show them.
    Limits(super::limits::LimitsArgs),
    /// Save a consistent snapshot of the running daemon's database to FILE
    /// (GET /admin/v1/backup); the daemon keeps serving meanwhile.
    Backup(super::backup::BackupArgs),
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create an account with initial credit; prints its API key once.
    Create(AccountCreateArgs),
    /// List the accounts with their balances.
    List(AccountListArgs),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// An account's API keys (prefix and state; the secrets are never stored).
    List(KeysListArgs),
    /// Create another API key for an account; prints it once.
    Create(KeysCreateArgs),
    /// Revoke an API key: it stops working at once.
    Revoke(KeysRevokeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AccountCreateArgs {
    /// The account's name (1 to 100 characters).
    pub name: String,
    /// Initial credit in USD.
    #[arg(long, value_parser = parse_usd, value_name = "USD")]
    pub credit: Usd,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AccountListArgs {
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AdminCreditArgs {
    /// The account (acct_...).
    pub account_id: String,
    /// USD to add; with --debit, to take back. Always a positive amount.
    #[arg(value_parser = parse_usd, allow_negative_numbers = true, value_name = "USD")]
    pub amount: Usd,
    /// Take the amount back instead of adding it (a negative ledger credit).
    #[arg(long)]
    pub debit: bool,
    /// A note kept with the ledger entry.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct KeysListArgs {
    /// The account (acct_...).
    pub account_id: String,
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct KeysCreateArgs {
    /// The account (acct_...).
    pub account_id: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct KeysRevokeArgs {
    /// The key (key_...), as `spotd admin keys list` shows it.
    pub key_id: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct ProvidersArgs {
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AdminRentalsArgs {
    /// Only rentals in this state.
    #[arg(long, value_parser = ["provisioning", "running", "terminating", "terminated", "failed", "interrupted"])]
    pub state: Option<String>,
    /// Only this account's rentals (acct_...).
    #[arg(long, value_name = "ACCOUNT_ID")]
    pub account: Option<String>,
    #[command(flatten)]
    pub list: ListOpts,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct AdminStopArgs {
    /// The rental (rnt_...).
    pub rental_id: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

pub async fn run(cmd: AdminCommand, env: &[(String, String)]) -> Result<(), String> {
    match cmd {
        AdminCommand::Account(AccountCommand::Create(a)) => account_create(a, env).await,
        AdminCommand::Account(AccountCommand::List(a)) => account_list(a, env).await,
        AdminCommand::Credit(a) => credit(a, env).await,
        AdminCommand::Keys(KeysCommand::List(a)) => keys_list(a, env).await,
        AdminCommand::Keys(KeysCommand::Create(a)) => keys_create(a, env).await,
        AdminCommand::Keys(KeysCommand::Revoke(a)) => keys_revoke(a, env).await,
        AdminCommand::Providers(a) => providers(a, env).await,
        AdminCommand::Rentals(a) => rentals(a, env).await,
        AdminCommand::Stop(a) => stop(a, env).await,
        AdminCommand::Limits(a) => super::limits::limits(a, env).await,
        AdminCommand::Backup(a) => super::backup::backup(a, env).await,
    }
}

async fn account_create(a: AccountCreateArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let body = json!({"name": a.name, "credit": a.credit.to_json()});
    let v = c
        .call(Method::POST, "/admin/v1/accounts", Some(&body))
        .await?;
    if c.printed_json(&v) {
        return Ok(());
    }
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
    Ok(())
}

/// The new key's secret, wherever the answer puts it: `api_key` as a string or as an
/// object with `key`/`secret`, or `key` likewise.
pub(super) fn find_api_key(v: &Value) -> Option<String> {
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

async fn account_list(a: AccountListArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let v = c.call(Method::GET, "/admin/v1/accounts", None).await?;
    let page = pages::cut(table::list_items(&v).to_vec(), &a.list)?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::accounts_table, "no accounts");
    }
    Ok(())
}

/// The signed amount a credit command moves: positive, or taken back with `--debit`.
pub fn credit_amount(amount: Usd, debit: bool) -> Result<Usd, String> {
    if amount.is_negative() {
        return Err(format!(
            "a negative amount is refused: to take ${} back, give it as a positive amount with --debit",
            table::usd_text(-amount)
        ));
    }
    if amount == Usd::ZERO {
        return Err("the amount must be more than 0".into());
    }
    Ok(if debit { -amount } else { amount })
}

async fn credit(a: AdminCreditArgs, env: &[(String, String)]) -> Result<(), String> {
    let amount = credit_amount(a.amount, a.debit)?;
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let mut body = json!({"amount": amount.to_json()});
    if let Some(n) = &a.note {
        body["note"] = Value::String(n.clone());
    }
    let path = format!("/admin/v1/accounts/{}/credits", encode(&a.account_id));
    let v = c.call(Method::POST, &path, Some(&body)).await?;
    if c.printed_json(&v) {
        return Ok(());
    }
    if a.debit {
        print!(
            "debited ${} from {}",
            table::usd_text(a.amount),
            a.account_id
        );
    } else {
        print!(
            "credited ${} to {}",
            table::usd_text(a.amount),
            a.account_id
        );
    }
    match v.get("balance").or_else(|| v.get("balance_after")) {
        Some(b) => println!("; balance now ${}", table::usd(b)),
        None => println!(),
    }
    Ok(())
}

async fn keys_list(a: KeysListArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let path = format!("/admin/v1/accounts/{}", encode(&a.account_id));
    let v = c.call(Method::GET, &path, None).await?;
    let keys = v
        .get("api_keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let page = pages::cut(keys, &a.list)?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::keys_table, "no API keys");
    }
    Ok(())
}

async fn keys_create(a: KeysCreateArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let path = format!("/admin/v1/accounts/{}/keys", encode(&a.account_id));
    let v = c.call(Method::POST, &path, None).await?;
    if c.printed_json(&v) {
        return Ok(());
    }
    println!("key {} created for {}", table::text(&v["id"]), a.account_id);
    match find_api_key(&v) {
        Some(k) => println!("API key (shown once, keep it): {k}"),
        None => println!("the answer held no API key; run with --json to see it"),
    }
    Ok(())
}

async fn keys_revoke(a: KeysRevokeArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let path = format!("/admin/v1/keys/{}", encode(&a.key_id));
    let v = c.call(Method::DELETE, &path, None).await?;
    if !c.printed_json(&v) {
        println!("key {} revoked", a.key_id);
    }
    Ok(())
}

async fn providers(a: ProvidersArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let v = c.call(Method::GET, "/admin/v1/providers", None).await?;
    let page = pages::cut(table::list_items(&v).to_vec(), &a.list)?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::providers_table, "no providers");
    }
    Ok(())
}

async fn rentals(a: AdminRentalsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let filters = [("state", a.state.clone()), ("account", a.account.clone())];
    let page = pages::fetch(&c, "/admin/v1/rentals", &filters, &a.list).await?;
    if !c.printed_json(&page.to_json()) {
        pages::print(&page, table::rentals_table, "no rentals");
    }
    Ok(())
}

async fn stop(a: AdminStopArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let path = format!("/admin/v1/rentals/{}", encode(&a.rental_id));
    let v = c.call(Method::DELETE, &path, None).await?;
    if !c.printed_json(&v) {
        print!("{}", table::rentals_table(std::slice::from_ref(&v)));
    }
    Ok(())
}
