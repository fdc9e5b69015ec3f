//! The official `openai` Python SDK (and LangChain's `ChatOpenAI`) against a real
//! sandbox daemon: runs `tests/sdk/openai_sdk_test.py URL KEY [default-wait]` and
//! asserts it passes.
//!
//! These tests need python3 with `openai` and `langchain-openai`
//! (`pip install openai langchain-openai`; `.ci/run` installs them and fails without
//! them). `build.rs` checks at build time: where python3 cannot import them the tests
//! are compiled `#[ignore]`d with that reason, so `cargo test` says "ignored", never
//! `ok`, for a test that did not run. After installing them, rebuild with
//! `SPOTD_SDK_RECHECK=1 cargo test` so the check runs again.

use std::process::{Command, Stdio};

use crate::common::Daemon;

/// Provisioning and model load of a second each: the cold model is ready in ~2 s.
const SDK: &str = r#"
[sandbox]
provision_seconds = 1
model_load_seconds = 1
"#;

/// What python3 cannot import of the packages these tests use.
fn missing_packages() -> Vec<&'static str> {
    [
        ("openai", "openai"),
        ("langchain_openai", "langchain-openai"),
    ]
    .into_iter()
    .filter(|(module, _)| {
        !Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .map(|(_, package)| package)
    .collect()
}

/// Fails the test when the packages went missing since the build found them.
fn require_sdk() {
    let missing = missing_packages();
    assert!(
        missing.is_empty(),
        "the SDK tests need python3 with {missing:?}: `pip install openai langchain-openai`"
    );
}

fn run_script(d: &Daemon, mode: Option<&str>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_test.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&d.url)
        .arg(&d.demo_key)
        .args(mode)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the openai SDK test failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.log()
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
}

#[test]
#[cfg_attr(
    not(spotd_sdk),
    ignore = "needs python3 with openai and langchain-openai (pip install openai langchain-openai)"
)]
fn official_openai_python_sdk_works_against_spotd() {
    require_sdk();
    run_script(&Daemon::start(SDK), None);
}

/// LangChain's and the SDK's plain calls, which cannot see a 202, reach a cold model
/// through `deployments.default_wait_seconds`.
#[test]
#[cfg_attr(
    not(spotd_sdk),
    ignore = "needs python3 with openai and langchain-openai (pip install openai langchain-openai)"
)]
fn sdk_and_langchain_reach_a_cold_model_with_default_wait_seconds() {
    require_sdk();
    let cfg = format!("{SDK}\n[deployments]\ndefault_wait_seconds = 60\n");
    run_script(&Daemon::start(&cfg), Some("default-wait"));
}
