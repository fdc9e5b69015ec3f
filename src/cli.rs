//! The command line: `serve`, `sandbox-cloud` and the client subcommands.
//!
//! `main.rs` only calls [`main`]. Process concerns live here and nowhere else: reading
//! the environment, logging setup, the tokio runtime, signals, exit codes. The daemon
//! and the sandbox cloud are library functions that take a config and a cancellation
//! token, so tests run them in-process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ServeFlags};

mod admin;
mod backup;
mod client;
mod commands;
mod healthcheck;
mod limits;
mod logging;
mod pages;
mod prices;
mod table;

pub use admin::{AccountCommand, AdminCommand};
pub use client::{admin_token, api_key, base_url, data_dir, query};
pub use commands::offers_query;
pub use logging::LogFormat;

/// `spotd --version`: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SPOTD_GIT_COMMIT"),
    ")"
);

/// The commented example configuration, printed by `spotd config default`.
pub const DEFAULT_CONFIG: &str = include_str!("../packaging/spotd.toml");

/// Exit code of a configuration error (as for a usage error).
const EXIT_CONFIG: u8 = 2;
/// How long spawned tasks get to finish once `run` has returned.
const RUNTIME_DRAIN: Duration = Duration::from_secs(5);

/// Shown under every `--help`: where the client commands find the daemon and a key.
const ENVIRONMENT_HELP: &str = "\
Client commands find the daemon and their key in this order:
  --url URL, else SPOTD_URL, else DATA_DIR/spotd.addr, else http://127.0.0.1:8088
  SPOTD_API_KEY, else DATA_DIR/demo.key            (offers, rent, rentals, stop, credits)
  SPOTD_ADMIN_TOKEN, else DATA_DIR/admin.token     (admin ...)
  DATA_DIR is --data-dir, else SPOTD_DATA_DIR, else ./spotd-data";

#[derive(Parser, Debug)]
#[command(name = "spotd", version = VERSION, about = "A self-hosted GPU spot marketplace",
          after_help = ENVIRONMENT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (API, scheduler, metering; the sandbox clouds in sandbox mode).
    Serve(ServeArgs),
    /// Run the simulated clouds as their own process.
    SandboxCloud(SandboxCloudArgs),
    /// List GPU offers.
    #[command(after_help = ENVIRONMENT_HELP)]
    Offers(commands::OffersArgs),
    /// Price history of a GPU model: a table and a sparkline per series.
    #[command(after_help = ENVIRONMENT_HELP)]
    Prices(prices::PricesArgs),
    /// Rent a GPU: an offer by id, or the cheapest match for --gpu (--wait: until it runs).
    #[command(after_help = ENVIRONMENT_HELP)]
    Rent(commands::RentArgs),
    /// List your rentals.
    #[command(after_help = ENVIRONMENT_HELP)]
    Rentals(commands::RentalsArgs),
    /// Tear a rental down.
    #[command(after_help = ENVIRONMENT_HELP)]
    Stop(commands::StopArgs),
    /// Show your credit balance (or the ledger with --ledger).
    #[command(after_help = ENVIRONMENT_HELP)]
    Credits(commands::CreditsArgs),
    /// Administration (needs the admin token).
    #[command(subcommand, after_help = ENVIRONMENT_HELP)]
    Admin(AdminCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Put a backup in place as DIR's database (refuses a DIR with a database unless
    /// --force); start spotd on DIR afterwards.
    Restore(backup::RestoreArgs),
    /// Check a running daemon (GET /readyz); exits non-zero when it is not healthy.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Run the whole daemon on a manual clock for N simulated days with a seeded
    /// workload, faults and crashes, checking its invariants after every step; exits 0
    /// only when none was violated.
    Simulate(SimulateArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Simulated days.
    #[arg(long, default_value_t = 30)]
    pub days: u64,
    /// Extra simulated hours, added to --days (`--days 0 --hours 6` for six hours).
    #[arg(long, default_value_t = 0)]
    pub hours: u64,
    /// The seed of the workload and of the sandbox clouds.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON line instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Print every step's action to stderr.
    #[arg(long)]
    pub verbose: bool,
    /// Inject a defect to see the checker catch it (the run then fails).
    #[arg(long, value_enum, value_name = "FAULT")]
    pub inject: Option<crate::sim::Fault>,
    /// The defect is injected from this step on.
    #[arg(long, default_value_t = 20)]
    pub inject_after: u64,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the commented example configuration with every key and its default.
    Default {
        /// Print it as a fresh install should use it: the example providers, upstreams
        /// and models commented out, so spotd runs its sandbox until you add yours.
        #[arg(long)]
        install: bool,
    },
}

/// The example as installed: from the "Real providers" section on, every setting is
/// commented out (a fresh install must not call an example address or a paid API).
pub fn install_config() -> String {
    let mut out = String::with_capacity(DEFAULT_CONFIG.len() + 512);
    let mut real = false;
    for line in DEFAULT_CONFIG.lines() {
        real |= line.starts_with("# Real providers.");
        if real && !line.is_empty() && !line.starts_with('#') {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one [env: SPOTD_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where the database and state files live [env: SPOTD_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file [env: SPOTD_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the built-in simulated providers even when providers are configured.
    #[arg(long)]
    pub sandbox: bool,
    /// Log format on stderr [env: SPOTD_LOG_FORMAT].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxCloudArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Where the clouds keep their instances.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Read the [sandbox] section of this file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr [env: SPOTD_LOG_FORMAT].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The environment as UTF-8 pairs; variables that are not UTF-8 are none of ours.
fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = environment();
    match cli.command {
        Command::Serve(a) => serve(a, &env),
        Command::Simulate(a) => simulate(a),
        Command::SandboxCloud(a) => sandbox_cloud(a, &env),
        Command::Restore(a) => match backup::restore(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spotd restore: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Default { install }) => {
            if install {
                print!("{}", install_config());
            } else {
                print!("{DEFAULT_CONFIG}");
            }
            ExitCode::SUCCESS
        }
        other => run_client(other, &env),
    }
}

fn env_var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn init_logging(flag: Option<LogFormat>, env: &[(String, String)]) {
    let format = flag.unwrap_or_else(|| match env_var(env, "SPOTD_LOG_FORMAT") {
        Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    logging::init(format, env_var(env, "SPOTD_LOG"));
}

/// Loads the config; on error prints it and gives the exit code.
fn load_config(flags: &ServeFlags, env: &[(String, String)]) -> Result<config::Config, ExitCode> {
    match config::load(flags, env) {
        Ok((cfg, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(cfg)
        }
        Err(e) => {
            eprintln!("spotd: configuration error: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn serve(a: ServeArgs, env: &[(String, String)]) -> ExitCode {
    init_logging(a.log_format, env);
    let flags = ServeFlags {
        listen: a.listen,
        data_dir: a.data_dir,
        config: a.config,
        sandbox: a.sandbox,
    };
    let cfg = match load_config(&flags, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    run_until_signal("spotd", |token| crate::daemon::run(cfg, token))
}

fn simulate(a: SimulateArgs) -> ExitCode {
    let opts = crate::sim::Options {
        days: a.days,
        hours: a.hours,
        seed: a.seed,
        inject: a.inject,
        inject_after: a.inject_after,
        verbose: a.verbose,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spotd simulate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::sim::run(&opts)) {
        Ok(s) => {
            if a.json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                println!("{}", crate::sim::describe(&s));
            }
            if s.violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("spotd simulate: {e}");
            ExitCode::from(2)
        }
    }
}

fn sandbox_cloud(a: SandboxCloudArgs, env: &[(String, String)]) -> ExitCode {
    init_logging(a.log_format, env);
    let flags = ServeFlags {
        config: a.config,
        ..ServeFlags::default()
    };
    let cfg = match load_config(&flags, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (listen, dir) = (a.listen, a.data_dir);
    run_until_signal("spotd sandbox-cloud", move |token| async move {
        crate::sandbox::run_standalone(&listen, &dir, cfg.sandbox, token).await
    })
}

/// Runs `f` on a multi-thread runtime with a token cancelled by SIGTERM or SIGINT.
/// A second signal exits at once, for when a graceful stop hangs.
fn run_until_signal<F, Fut>(what: &str, f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{what}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let token = CancellationToken::new();
    let result = rt.block_on(async {
        let watcher = tokio::spawn(watch_signals(token.clone()));
        let r = f(token).await;
        watcher.abort();
        r
    });
    rt.shutdown_timeout(RUNTIME_DRAIN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn watch_signals(token: CancellationToken) {
    if let Err(e) = next_signal().await {
        tracing::warn!("cannot listen for signals: {e}");
        return;
    }
    tracing::info!("shutting down (signal received; send another to exit at once)");
    token.cancel();
    if next_signal().await.is_ok() {
        tracing::warn!("second signal: exiting without a graceful stop");
        std::process::exit(130);
    }
}

#[cfg(unix)]
async fn next_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn next_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

fn run_client(cmd: Command, env: &[(String, String)]) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spotd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cmd {
            Command::Offers(a) => commands::offers(a, env).await,
            Command::Prices(a) => prices::run(a, env).await,
            Command::Rent(a) => commands::rent(a, env).await,
            Command::Rentals(a) => commands::rentals(a, env).await,
            Command::Stop(a) => commands::stop(a, env).await,
            Command::Credits(a) => commands::credits(a, env).await,
            Command::Admin(a) => admin::run(a, env).await,
            Command::Healthcheck(a) => healthcheck::run(a, env).await.map(|m| println!("{m}")),
            Command::Serve(_)
            | Command::SandboxCloud(_)
            | Command::Config(_)
            | Command::Restore(_)
            | Command::Simulate(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spotd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag and argument of every subcommand says what it is for in `--help`.
    #[test]
    fn every_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "spotd", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn client_help_names_the_url_flag_and_the_environment() {
        for sub in ["offers", "rent", "rentals", "credits", "admin"] {
            let mut cmd = Cli::command();
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string();
            for needle in ["SPOTD_URL", "SPOTD_API_KEY", "SPOTD_ADMIN_TOKEN"] {
                assert!(
                    help.contains(needle),
                    "{sub} --help lacks {needle}:\n{help}"
                );
            }
            if sub != "admin" {
                assert!(
                    help.contains("--url <URL>"),
                    "{sub} --help lacks --url:\n{help}"
                );
            }
        }
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "spotd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/d",
            "--sandbox",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(a.data_dir, Some(PathBuf::from("/tmp/d")));
        assert!(a.sandbox);
        assert_eq!(a.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn sandbox_cloud_needs_listen_and_data_dir() {
        assert!(
            Cli::try_parse_from(["spotd", "sandbox-cloud", "--listen", "127.0.0.1:0"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "spotd",
            "sandbox-cloud",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "d"
        ])
        .is_ok());
    }
}
