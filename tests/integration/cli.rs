//! The client subcommands of the real `spotd` binary against a running daemon:
//! tables for people, `--json` for scripts, and clear failures for a wrong key or a
//! daemon that is not there.

use std::process::{Command, Output};

use crate::common::{cheapest, usd, Daemon};
use serde_json::Value;
use spotd::money::Usd;

/// Runs `spotd ARGS` with only the given `SPOTD_*` variables set.
pub fn spotd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotd"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTD_") {
            cmd.env_remove(k);
        }
    }
    // A data dir with nothing in it, so no stray spotd.addr or key file is picked up.
    let empty = tempfile::tempdir().expect("tempdir");
    cmd.env("SPOTD_DATA_DIR", empty.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run spotd")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a subcommand that must succeed and answers its stdout.
pub fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = spotd(args, env);
    assert!(
        o.status.success(),
        "spotd {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_prints_an_aligned_table_or_json() {
    let d = Daemon::in_process("[sandbox]\nprice_drift = 0.0\n").await;
    let env = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_API_KEY", &d.demo_key),
    ];
    let out = ok(&["offers", "--gpu", "h100", "--limit", "5"], &env);
    let lines: Vec<&str> = out.lines().collect();
    let header = lines[0];
    assert!(header.starts_with("ID"), "{out}");
    for col in ["GPU", "REGION", "$/H", "AVAIL"] {
        assert!(header.contains(col), "header lacks {col}: {out}");
    }
    let rows: Vec<&str> = lines[1..]
        .iter()
        .copied()
        .take_while(|l| !l.contains(" more — "))
        .collect();
    assert_eq!(rows.len(), 5, "{out}");
    let hint = lines.last().unwrap();
    assert!(
        hint.contains(
            " more — use --all, or the next page: spotd offers --gpu h100 --limit 5 --cursor "
        ),
        "a next page is offered: {out}"
    );
    let gpu_col = header.find("GPU").unwrap();
    // `$/H` is right-aligned: every price ends where the header does.
    let price_end = header.find("$/H").unwrap() + 3;
    for row in &rows {
        let id = row.split_whitespace().next().unwrap();
        let o = d.get(&format!("/v1/gpus/offers/{id}"), &d.demo_key).await;
        assert_eq!(o.status, 200, "{row}");
        let gpu = o.body["gpu"].as_str().unwrap();
        assert!(gpu.starts_with("H100"), "{row}");
        assert!(
            row[gpu_col..].starts_with(gpu),
            "GPU column misaligned:\n{out}"
        );
        // Right-aligned and exact (padded with zeros to the column's decimals).
        let cell = row[..price_end].split_whitespace().last().unwrap();
        assert_eq!(
            Usd::parse(cell).unwrap(),
            usd(&o.body["price_per_hour"]),
            "$/H column misaligned:\n{out}"
        );
        assert!(row[price_end..].starts_with(' '), "{row}");
    }

    let json = ok(&["offers", "--gpu", "h100", "--limit", "5", "--json"], &env);
    let v: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 5);
    assert!(data
        .iter()
        .all(|o| o["gpu"].as_str().unwrap().starts_with("H100")));
    // The same offers as the table, in the same order.
    let table_ids: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    let json_ids: Vec<&str> = data.iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(table_ids, json_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_list_stop_and_credits() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let env = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let offer_id = offer["id"].as_str().unwrap();

    let rented: Value = serde_json::from_str(&ok(&["rent", offer_id, "--json"], &env))
        .expect("rent --json prints JSON");
    let id = rented["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("rnt_"));
    assert_eq!(rented["offer"]["id"], offer_id);
    let api = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(api.status, 200, "rented for real: {:?}", api.body);

    let list = ok(&["rentals"], &env);
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("the rental is listed: {list}"));
    assert!(row.contains("T4"), "{row}");
    let listed: Value = serde_json::from_str(&ok(&["rentals", "--json"], &env)).unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str());

    let stopped = ok(&["stop", &id], &env);
    assert!(stopped.contains(&id), "{stopped}");
    assert!(stopped.contains("terminat"), "{stopped}");
    let r = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(r.body["termination_reason"], "user", "{}", r.body);
    // Stopping it again fails with the daemon's message.
    d.wait_rental(&key, &id, 20, |r| r["state"] == "terminated")
        .await;
    let again = spotd(&["stop", &id], &env);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));

    let (bal, held, avail) = d.assert_books_balance(&key).await;
    let credits = ok(&["credits"], &env);
    for (name, v) in [("balance", bal), ("held", held), ("available", avail)] {
        let line = credits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {credits}"));
        let cell = line.split_whitespace().last().unwrap();
        assert_eq!(Usd::parse(cell).unwrap(), v, "{name}: {line}");
    }
    let cj: Value = serde_json::from_str(&ok(&["credits", "--json"], &env)).unwrap();
    assert_eq!(usd(&cj["balance"]), bal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_accounts_and_credits_them() {
    let d = Daemon::in_process("").await;
    let env = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_ADMIN_TOKEN", &d.admin),
    ];
    let out = ok(
        &["admin", "account", "create", "team-a", "--credit", "5"],
        &env,
    );
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once, keep it): "))
        .unwrap_or_else(|| panic!("the key is printed: {out}"))
        .trim()
        .to_string();
    let acct = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("the account id is printed: {out}"))
        .to_string();
    assert!(out.contains("team-a"), "{out}");
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd::from_dollars(5), "the printed key works");

    let credited = ok(&["admin", "credit", &acct, "2.5"], &env);
    assert!(credited.contains("2.50"), "{credited}");
    assert!(credited.contains("7.50"), "the new balance: {credited}");
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd(7_500_000));

    // The new key works from the command line too.
    let user = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];
    let cj: Value = serde_json::from_str(&ok(&["credits", "--json"], &user)).unwrap();
    assert_eq!(usd(&cj["available"]), Usd(7_500_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_limits_sets_shows_and_clears_the_caps() {
    let d = Daemon::in_process("").await;
    let env = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_ADMIN_TOKEN", &d.admin),
    ];
    let (acct, key) = d.account("capped", "10").await;
    let out = ok(
        &[
            "admin",
            "limits",
            &acct,
            "--per-hour",
            "2.5",
            "--per-month",
            "100",
        ],
        &env,
    );
    assert_eq!(
        out,
        format!("limits of {acct}: per hour $2.50/h, per month $100.00; spent this month $0.00\n")
    );
    let c = d.get("/v1/credits", &key).await.body;
    assert_eq!(usd(&c["max_usd_per_hour"]), Usd(2_500_000));
    assert_eq!(usd(&c["max_usd_per_month"]), Usd::from_dollars(100));
    // `none` clears one and leaves the other; no flag only shows them.
    ok(&["admin", "limits", &acct, "--per-hour", "none"], &env);
    let shown = ok(&["admin", "limits", &acct], &env);
    assert!(
        shown.contains("per hour none, per month $100.00"),
        "{shown}"
    );
    let j: Value = serde_json::from_str(&ok(&["admin", "limits", &acct, "--json"], &env)).unwrap();
    assert!(j["max_usd_per_hour"].is_null());
    assert_eq!(usd(&j["max_usd_per_month"]), Usd::from_dollars(100));
    // Bad amounts fail before any call; the daemon's refusals are printed.
    for bad in ["-1", "lots", "0.0000001"] {
        let o = spotd(&["admin", "limits", &acct, "--per-month", bad], &env);
        assert!(!o.status.success(), "{bad}");
        assert!(stderr(&o).contains("--per-month"), "{bad}: {}", stderr(&o));
    }
    let o = spotd(&["admin", "limits", "acct_nope", "--per-hour", "1"], &env);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("404") || stderr(&o).contains("no account"),
        "{}",
        stderr(&o)
    );
    let c = d.get("/v1/credits", &key).await.body;
    assert_eq!(
        usd(&c["max_usd_per_month"]),
        Usd::from_dollars(100),
        "unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_unreachable_daemon_fail_clearly() {
    let d = Daemon::in_process("").await;
    let bad = spotd(
        &["credits"],
        &[("SPOTD_URL", &d.url), ("SPOTD_API_KEY", "sk-not-a-key")],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("key"), "{}", stderr(&bad));
    assert!(stdout(&bad).is_empty(), "{}", stdout(&bad));
    let bad_admin = spotd(
        &["admin", "credit", "acct_x", "1"],
        &[("SPOTD_URL", &d.url), ("SPOTD_ADMIN_TOKEN", "adm-wrong")],
    );
    assert!(!bad_admin.status.success());
    assert!(
        stderr(&bad_admin).contains("admin token"),
        "{}",
        stderr(&bad_admin)
    );
    let none = spotd(&["credits"], &[("SPOTD_URL", &d.url)]);
    assert!(!none.status.success());
    assert!(stderr(&none).contains("SPOTD_API_KEY"), "{}", stderr(&none));

    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let down = spotd(&["offers"], &[("SPOTD_URL", &url), ("SPOTD_API_KEY", "k")]);
    assert!(!down.status.success());
    assert!(stderr(&down).contains("cannot reach"), "{}", stderr(&down));
    assert!(stderr(&down).contains(&url), "{}", stderr(&down));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_prints_a_table_and_a_sparkline_per_series() {
    let d = Daemon::in_process_with(
        "[billing]\nmetering_interval_seconds = 600\n[sandbox]\nrefresh_seconds = 600\nprice_drift = 0.05\n",
        Some((600, 600)),
    )
    .await;
    d.advance(3 * 3600 + 60).await;
    let env = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_API_KEY", &d.demo_key),
    ];
    let out = ok(
        &[
            "prices",
            "--gpu",
            "H100",
            "--interruptible",
            "--since",
            "24h",
        ],
        &env,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("START"), "{out}");
    for col in ["GPU", "PROVIDER", "MIN", "MEDIAN", "MAX", "OFFERS"] {
        assert!(lines[0].contains(col), "header lacks {col}: {out}");
    }
    // What the API has, row for row: H100 SXM and H100 PCIe, 4 hours each, spot only.
    let api = d
        .get(
            "/v1/gpus/prices?gpu=H100&interruptible=true&since=24h&limit=1000",
            &d.demo_key,
        )
        .await;
    let data = api.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 8, "{:?}", api.body);
    let rows: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), data.len(), "{out}");
    for (row, r) in rows.iter().zip(data) {
        assert!(row.contains(r["gpu"].as_str().unwrap()), "{row}");
        // Exact, padded with zeros to the column's decimals.
        let median = usd(&r["median_price_per_gpu_hour"]);
        assert!(
            row.split_whitespace().any(|t| Usd::parse(t) == Ok(median)),
            "{row} vs {r}"
        );
    }
    // One sparkline per series, one bar per hour.
    for series in ["H100 SXM / all / spot", "H100 PCIe / all / spot"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} line: {out}"));
        let bars = line.chars().filter(|c| ('▁'..='█').contains(c)).count();
        assert_eq!(bars, 4, "{line}");
    }
    assert!(
        !out.contains("on-demand"),
        "--interruptible shows spot only: {out}"
    );

    let json = ok(
        &["prices", "--gpu", "H100", "--interruptible", "--json"],
        &env,
    );
    let v: Value = serde_json::from_str(json.lines().next().unwrap()).expect("--json prints JSON");
    assert_eq!(v["data"].as_array().unwrap().len(), 8);
    let bad = spotd(&["prices", "--gpu", "H100", "--since", "yesterday"], &env);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("since must be"), "{}", stderr(&bad));
}
