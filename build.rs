//! Embeds the git commit in the binary for `spotd --version`, and finds out whether
//! the Python SDK tests can run here (cfg `spotd_sdk`: python3 imports `openai` and
//! `langchain_openai`); without it they are compiled `#[ignore]`d with the reason, so
//! `cargo test` reports them as ignored rather than as passed. Likewise cfg
//! `spotd_browser` for the web console's browser test (`chromedriver` on PATH and
//! python3 imports `selenium`).
//!
//! `SPOTD_GIT_COMMIT` set at build time wins (packagers building from a tarball);
//! otherwise `git rev-parse --short HEAD`; otherwise "unknown". Cargo reruns this when
//! HEAD moves: it watches HEAD and the branch ref it points to (both resolved through
//! git, so worktrees, whose `.git` is a file, work too).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPOTD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("SPOTD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Only existing paths: a missing one would make cargo rerun this on every build.
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &r]));
        watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for p in watch.into_iter().flatten() {
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rustc-env=SPOTD_GIT_COMMIT={}", commit.trim());

    println!("cargo::rustc-check-cfg=cfg(spotd_sdk)");
    println!("cargo:rerun-if-env-changed=SPOTD_SDK_RECHECK");
    let sdk = Command::new("python3")
        .args(["-c", "import openai, langchain_openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if sdk {
        println!("cargo:rustc-cfg=spotd_sdk");
    }

    // The console's browser test (tests/integration/console.rs): chromedriver on PATH
    // and python3 with selenium.
    println!("cargo::rustc-check-cfg=cfg(spotd_browser)");
    println!("cargo:rerun-if-env-changed=SPOTD_BROWSER_RECHECK");
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ok("chromedriver", &["--version"]) && ok("python3", &["-c", "import selenium"]) {
        println!("cargo:rustc-cfg=spotd_browser");
    }
}
