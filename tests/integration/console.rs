//! The web console (SPEC section 9): how it is served (CSP, redirect, files), and the
//! console itself in headless Chromium against a real daemon
//! (`tests/browser/console_test.py`, selenium + chromedriver).
//!
//! The browser test needs `chromium`, `chromedriver` on PATH and python3 with
//! `selenium` (`apt-get install chromium chromium-driver; pip install selenium`; `.ci/run`
//! installs them and fails without them). `build.rs` checks at build time: where they
//! are missing the test is compiled `#[ignore]`d with that reason, so `cargo test` says
//! "ignored", never `ok`. After installing them, rebuild with `SPOTD_BROWSER_RECHECK=1`.
//! Its screenshots go to `target/browser-screenshots/`.

use std::process::{Command, Stdio};
use std::sync::Arc;

use hyper::Method;
use serde_json::json;

use crate::common::Daemon;
use crate::providers_mock::{self, Req};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The GPU name of the offer the loopback pool serves: HTML that would set
/// `window.__xss` if the console ever parsed it.
const XSS: &str = "<img src=x onerror=window.__xss=1>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_csp_and_browsers_are_sent_to_it() {
    let d = Daemon::in_process("").await;
    let html = [("accept", "text/html,application/xhtml+xml")];
    let r = d.call_h(Method::GET, "/", None, &html, None).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "/console/");
    // An API client asking for / still hears a 404.
    let r = d.call(Method::GET, "/", None, None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    for (path, ct) in [
        ("/console/", "text/html"),
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/pages.js", "text/javascript"),
        ("/console/more.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let r = d.call(Method::GET, path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        let got = r.headers["content-type"].to_str().unwrap();
        assert!(got.starts_with(ct), "{path}: {got}");
        assert_eq!(r.headers["content-security-policy"], CSP, "{path}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
    }
    let page = d.call(Method::GET, "/console/", None, None).await;
    let text = page.body.as_str().expect("html as text");
    assert!(text.contains("<script src=\"/console/app.js\" defer></script>"));

    let r = d.call(Method::GET, "/console/nope.js", None, None).await;
    assert_eq!(r.status, 404);
    let r = d
        .call(Method::GET, "/console/config.json", None, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["min_session_seconds"], 600);
}

/// What is missing of what the browser test needs.
fn missing_tools() -> Vec<&'static str> {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    if !ok("chromedriver", &["--version"]) {
        missing.push("chromedriver (apt-get install chromium-driver)");
    }
    if !ok("python3", &["-c", "import selenium"]) {
        missing.push("python3 selenium (pip install selenium)");
    }
    missing
}

/// A loopback `http` pool (SPEC section 5) with one offer named `XSS`.
async fn xss_pool() -> providers_mock::Mock {
    providers_mock::start(Arc::new(|r: &Req| {
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/offers") => providers_mock::json(
                200,
                &json!({"offers": [{
                    "id": "evil-1", "gpu": XSS, "gpu_count": 1, "vram_gb": 24, "vcpus": 8,
                    "ram_gb": 32, "disk_gb": 100, "region": "lab", "price_per_hour": 9.5,
                    "on_demand_price_per_hour": null, "interruptible": false,
                    "reliability": 0.9, "available": 1
                }]}),
            ),
            ("GET", "/instances") => providers_mock::json(200, &json!({"instances": []})),
            _ => providers_mock::json(404, &json!({"error": "not_found"})),
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(spotd_browser),
    ignore = "needs chromium, chromedriver and python3 selenium (apt-get install chromium chromium-driver; pip install selenium)"
)]
async fn the_console_in_headless_chromium_rents_stops_and_shows_html_as_text() {
    let missing = missing_tools();
    assert!(missing.is_empty(), "the browser test needs {missing:?}");
    let pool = xss_pool().await;
    let extra = format!(
        "[[providers]]\nname = \"lab\"\nkind = \"http\"\nbase_url = \"{}\"\nrefresh_seconds = 2\n",
        pool.base
    );
    let d = tokio::task::spawn_blocking(move || Daemon::start(&extra))
        .await
        .unwrap();
    // The pool's offer is listed before the browser looks.
    let mut listed = false;
    for _ in 0..300 {
        let r = d.get("/v1/gpus/offers?provider=lab", &d.demo_key).await;
        if r.body["data"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(r.body["data"][0]["gpu"], XSS, "the name is kept as given");
            listed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(listed, "the lab pool's offer never appeared:\n{}", d.log());

    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/browser-screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console_test.py");
    let args = [
        script.to_string(),
        d.url.clone(),
        d.demo_key.clone(),
        d.admin.clone(),
        XSS.to_string(),
        shots.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the console browser test failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.log()
    );
    assert!(stdout.contains(" checks passed, 0 failed"), "{stdout}");
    for name in [
        "02-offers",
        "05-rentals-running",
        "07-credits",
        "10-offers-390px",
    ] {
        let p = std::path::Path::new(shots).join(format!("{name}.png"));
        assert!(
            p.metadata().is_ok_and(|m| m.len() > 1000),
            "{}",
            p.display()
        );
    }
}
