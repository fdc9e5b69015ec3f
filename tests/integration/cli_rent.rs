//! `spotd rent --wait` (a progress line until the rental runs, then its endpoint and
//! SSH access; non-zero when it fails) and `spotd serve` refusing clearly a port or a
//! data dir another spotd has.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{spotd, stderr, stdout};
use crate::common::{cheapest, Daemon};

/// Runs `spotd ARGS` as a child while moving the in-process daemon's clock a second at
/// a time (the CLI polls in real time; the daemon's time moves only when told).
async fn run_while_time_passes(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotd"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("SPOTD_") {
            cmd.env_remove(k);
        }
    }
    let empty = tempfile::tempdir().expect("tempdir");
    cmd.env("SPOTD_DATA_DIR", empty.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn spotd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "spotd {args:?} did not finish");
        d.advance(1).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_wait_shows_progress_until_running_then_the_access() {
    let d = Daemon::in_process("[sandbox]\nprovision_seconds = 4\n").await;
    let key = d.demo_key.clone();
    let env = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let o =
        run_while_time_passes(&d, &["rent", offer["id"].as_str().unwrap(), "--wait"], &env).await;
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{out}\n{err}");
    // Progress on stderr (not a terminal here: one line per state).
    assert!(
        err.contains("waiting for rnt_") && err.contains(": provisioning, "),
        "{err}"
    );
    let row = out.lines().nth(1).unwrap_or_else(|| panic!("{out}"));
    let id = row.split_whitespace().next().unwrap();
    assert!(row.contains("running"), "{out}");
    // The rental's access as the API shows it: a plain sandbox instance has no
    // endpoint (said so, not left out) and an SSH address.
    let r = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(r.body["state"], "running", "{}", r.body);
    assert!(r.body["endpoint"].is_null());
    assert!(
        out.contains("endpoint: - (this rental serves no endpoint)"),
        "{out}"
    );
    let ssh = &r.body["ssh"];
    let want = format!(
        "ssh: ssh -p {} {}@{}",
        ssh["port"],
        ssh["user"].as_str().unwrap(),
        ssh["host"].as_str().unwrap()
    );
    assert!(out.contains(&want), "{want}: {out}");

    // --json prints the running rental.
    let o = run_while_time_passes(&d, &["rent", "--gpu", "T4", "--wait", "--json"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(v["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_wait_exits_non_zero_when_the_rental_fails() {
    // The sandbox takes longer to provision than spotd waits: the rental fails.
    let d = Daemon::in_process(
        "[sandbox]\nprovision_seconds = 120\n[deployments]\nprovision_timeout_seconds = 5\n",
    )
    .await;
    let key = d.demo_key.clone();
    let env = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];
    let o = run_while_time_passes(&d, &["rent", "--gpu", "T4", "--wait"], &env).await;
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("did not start") && err.contains("failed"),
        "{err}"
    );
    assert!(err.contains("provision_failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_when_the_port_or_the_data_dir_is_taken() {
    let d = Daemon::in_process("").await;
    // The in-process daemon's port.
    let addr = d.url.trim_start_matches("http://").to_string();
    let other = tempfile::tempdir().unwrap();
    let o = spotd(
        &[
            "serve",
            "--sandbox",
            "--listen",
            &addr,
            "--data-dir",
            other.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&addr) && err.contains("already in use"),
        "{err}"
    );
    assert!(err.contains("--listen"), "{err}");

    // Its data dir: redb's lock, said in words.
    let dir = d.data_dir();
    let o = spotd(
        &[
            "serve",
            "--sandbox",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("is in use by another spotd") && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    // The first daemon is unharmed.
    assert_eq!(d.get("/v1/credits", &d.demo_key).await.status, 200);
}
