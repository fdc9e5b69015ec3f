//! The official `openai` Python SDK against a real sandbox daemon: runs
//! `tests/sdk/openai_sdk_test.py URL KEY` and asserts it passes.
//!
//! Skipped (with a clear line) when python3 or the `openai` package is missing, unless
//! `SPOTD_REQUIRE_SDK_TEST=1` (set by `.ci/run`), where a missing SDK is a failure.

use std::process::{Command, Stdio};

use crate::common::Daemon;

/// Provisioning and model load of a second each: the cold model is ready in ~2 s.
const SDK: &str = r#"
[sandbox]
provision_seconds = 1
model_load_seconds = 1
"#;

fn openai_importable() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn official_openai_python_sdk_works_against_spotd() {
    if !openai_importable() {
        if std::env::var("SPOTD_REQUIRE_SDK_TEST").as_deref() == Ok("1") {
            panic!("SPOTD_REQUIRE_SDK_TEST=1 but `python3 -c \"import openai\"` failed: pip install openai");
        }
        println!("skipped: openai not installed (pip install openai; SPOTD_REQUIRE_SDK_TEST=1 makes this a failure)");
        return;
    }
    let d = Daemon::start(SDK);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_test.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&d.url)
        .arg(&d.demo_key)
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
