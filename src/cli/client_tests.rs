//! Tests of the client side: resolution order, query strings, bodies, error messages.

use std::path::Path;

use clap::Parser;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::cli::admin::{credit_amount, find_api_key};
use crate::cli::commands::{offers_query, rent_body};
use crate::cli::{AccountCommand, AdminCommand, Cli, Command};
use crate::money::Usd;
use serde_json::json;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(args: &[&str]) -> Command {
    let mut full = vec!["spotd"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full).unwrap().command
}

#[test]
fn data_dir_flag_then_env_then_default() {
    let e = env(&[("SPOTD_DATA_DIR", "/env/dir")]);
    assert_eq!(data_dir(Some(Path::new("/flag")), &e), Path::new("/flag"));
    assert_eq!(data_dir(None, &e), Path::new("/env/dir"));
    assert_eq!(data_dir(None, &[]), Path::new("./spotd-data"));
}

#[test]
fn base_url_env_then_addr_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(base_url(&[], dir.path()), "http://127.0.0.1:8088");

    std::fs::write(dir.path().join("spotd.addr"), "127.0.0.1:40123\n").unwrap();
    assert_eq!(base_url(&[], dir.path()), "http://127.0.0.1:40123");

    let e = env(&[("SPOTD_URL", "http://127.0.0.1:9/")]);
    assert_eq!(base_url(&e, dir.path()), "http://127.0.0.1:9");
    // An empty variable counts as unset.
    let e = env(&[("SPOTD_URL", "")]);
    assert_eq!(base_url(&e, dir.path()), "http://127.0.0.1:40123");
}

#[test]
fn keys_env_then_data_dir_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(api_key(&[], dir.path()), None);
    assert_eq!(admin_token(&[], dir.path()), None);

    std::fs::write(dir.path().join("demo.key"), "sk-spotd-demo\n").unwrap();
    std::fs::write(dir.path().join("admin.token"), "adm-file\n").unwrap();
    assert_eq!(api_key(&[], dir.path()).as_deref(), Some("sk-spotd-demo"));
    assert_eq!(admin_token(&[], dir.path()).as_deref(), Some("adm-file"));

    let e = env(&[
        ("SPOTD_API_KEY", "sk-env"),
        ("SPOTD_ADMIN_TOKEN", "adm-env"),
    ]);
    assert_eq!(api_key(&e, dir.path()).as_deref(), Some("sk-env"));
    assert_eq!(admin_token(&e, dir.path()).as_deref(), Some("adm-env"));
}

#[test]
fn missing_key_is_reported_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClientOpts {
        data_dir: Some(dir.path().to_path_buf()),
        ..ClientOpts::default()
    };
    let err = Client::new(&opts, &[], Auth::User).err().unwrap();
    assert!(err.contains("SPOTD_API_KEY"), "{err}");
    let err = Client::new(&opts, &[], Auth::Admin).err().unwrap();
    assert!(err.contains("SPOTD_ADMIN_TOKEN"), "{err}");
}

#[test]
fn offers_query_from_flags() {
    let Command::Offers(a) = parse(&[
        "offers",
        "--gpu",
        "RTX 4090",
        "--max-price",
        "2.5",
        "--min-vram-gb",
        "24",
        "--interruptible",
        "false",
        "--sort",
        "-price",
        "--limit",
        "10",
    ]) else {
        panic!("not offers");
    };
    assert_eq!(
        offers_query(&a),
        "?gpu=RTX%204090&min_vram_gb=24&max_price=2.5&interruptible=false&sort=-price&limit=10"
    );
    let Command::Offers(a) = parse(&["offers"]) else {
        panic!("not offers");
    };
    assert_eq!(offers_query(&a), "");
}

#[test]
fn bad_flag_values_are_refused_by_the_parser() {
    let mut full = vec!["spotd"];
    for bad in [
        &["offers", "--max-price", "2.1234567"][..],
        &["offers", "--sort", "cheap"],
        &["offers", "--limit", "0"],
        &["offers", "--interruptible", "maybe"],
        &["rent"],
        &["rent", "vast:1", "--gpu", "H100"],
        &["rent", "vast:1", "--max-price", "3"],
    ] {
        full.truncate(1);
        full.extend_from_slice(bad);
        assert!(Cli::try_parse_from(&full).is_err(), "{bad:?} should fail");
    }
}

#[test]
fn rent_body_by_offer_and_by_criteria() {
    let Command::Rent(a) = parse(&["rent", "vast:123", "--name", "job", "--max-cost", "2.5"])
    else {
        panic!("not rent");
    };
    assert_eq!(
        rent_body(&a, None),
        json!({"offer_id": "vast:123", "name": "job", "max_cost": 2.5})
    );
    let Command::Rent(a) = parse(&[
        "rent",
        "--gpu",
        "H100",
        "--gpu-count",
        "2",
        "--max-price",
        "0.000001",
        "--interruptible",
        "true",
        "--idle-timeout",
        "600",
    ]) else {
        panic!("not rent");
    };
    let body = rent_body(&a, Some("ssh-ed25519 AAAA".into()));
    assert_eq!(
        body,
        json!({"gpu": "H100", "gpu_count": 2, "max_price_per_hour": Usd(1).to_json(),
               "interruptible": true, "ssh_public_key": "ssh-ed25519 AAAA",
               "idle_timeout_seconds": 600})
    );
    // Money goes out as an exact JSON number.
    let text = serde_json::to_string(&body).unwrap();
    assert!(text.contains(r#""max_price_per_hour":0.000001"#), "{text}");
}

#[test]
fn admin_commands_parse_money_exactly() {
    let Command::Admin(AdminCommand::Account(AccountCommand::Create(a))) =
        parse(&["admin", "account", "create", "team-a", "--credit", "100.25"])
    else {
        panic!("not account create");
    };
    assert_eq!(a.name, "team-a");
    assert_eq!(a.credit, Usd(100_250_000));
    let Command::Admin(AdminCommand::Credit(a)) =
        parse(&["admin", "credit", "acct_1", "-5", "--note", "refund"])
    else {
        panic!("not credit");
    };
    assert_eq!(a.amount, Usd(-5_000_000));
    assert_eq!(a.note.as_deref(), Some("refund"));
    // A negative amount is refused before any call; --debit takes credit back.
    let err = credit_amount(a.amount, a.debit).unwrap_err();
    assert!(err.contains("--debit") && err.contains("$5.00"), "{err}");
    let Command::Admin(AdminCommand::Credit(a)) =
        parse(&["admin", "credit", "acct_1", "5", "--debit"])
    else {
        panic!("not credit");
    };
    assert_eq!(credit_amount(a.amount, a.debit), Ok(Usd(-5_000_000)));
    assert_eq!(credit_amount(Usd(5), false), Ok(Usd(5)));
    assert!(credit_amount(Usd::ZERO, false).is_err());
}

#[test]
fn the_url_flag_comes_before_spotd_url() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(&[("SPOTD_URL", "http://10.9.9.9:1"), ("SPOTD_API_KEY", "k")]);
    let opts = ClientOpts {
        url: Some("127.0.0.1:4000/".into()),
        data_dir: Some(dir.path().to_path_buf()),
        json: false,
    };
    let c = Client::new(&opts, &e, Auth::User).unwrap();
    assert_eq!(c.base, "http://127.0.0.1:4000");
    let c = Client::new(&ClientOpts { url: None, ..opts }, &e, Auth::User).unwrap();
    assert_eq!(c.base, "http://10.9.9.9:1");
}

#[test]
fn failures_read_like_advice() {
    assert_eq!(
        failure_msg(StatusCode::UNAUTHORIZED, b"{}", Auth::User),
        "the API key was refused (revoked, or another daemon's): it is read from SPOTD_API_KEY, else from DATA_DIR/demo.key"
    );
    assert_eq!(
        failure_msg(StatusCode::UNAUTHORIZED, b"", Auth::Admin),
        "the admin token was refused (another daemon's?): it is read from SPOTD_ADMIN_TOKEN, else from DATA_DIR/admin.token"
    );
    let body = br#"{"error":{"message":"insufficient credit: need 4.2","type":"x","code":"y","param":null}}"#;
    assert_eq!(
        failure_msg(StatusCode::PAYMENT_REQUIRED, body, Auth::User),
        "insufficient credit: need 4.2 (402 Payment Required)"
    );
    assert_eq!(
        failure_msg(StatusCode::BAD_GATEWAY, b"upstream down", Auth::User),
        "upstream down (502 Bad Gateway)"
    );
}

#[test]
fn api_key_found_in_either_shape() {
    let v: Value = serde_json::from_str(r#"{"id":"a","api_key":"sk-1"}"#).unwrap();
    assert_eq!(find_api_key(&v).as_deref(), Some("sk-1"));
    let v: Value = serde_json::from_str(r#"{"id":"a","api_key":{"id":"k","key":"sk-2"}}"#).unwrap();
    assert_eq!(find_api_key(&v).as_deref(), Some("sk-2"));
    assert_eq!(find_api_key(&json!({"id": "a"})), None);
}

fn client_for(base: &str, json: bool) -> Client {
    Client {
        http: HttpClient::new(Duration::from_secs(5)),
        base: base.to_string(),
        token: "sk-test".into(),
        auth: Auth::User,
        json,
    }
}

#[tokio::test]
async fn unreachable_daemon_says_so() {
    // A port that was free a moment ago: nothing listens there.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let err = client_for(&base, false)
        .call(Method::GET, "/v1/credits", None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("cannot reach spotd at {base} (is `spotd serve` running?)")
    );
}

/// Serves one canned answer and hands back the request it received.
async fn one_shot(status_line: &str, body: &str) -> (String, tokio::task::JoinHandle<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let resp = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Headers, then the body by content-length.
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    (base, h)
}

#[tokio::test]
async fn post_sends_bearer_idempotency_key_and_exact_money() {
    let (base, h) = one_shot("201 Created", r#"{"id":"rnt_1","state":"provisioning"}"#).await;
    let body = json!({"gpu": "H100", "max_price_per_hour": Usd(2_500_000).to_json()});
    let v = client_for(&base, false)
        .call(Method::POST, "/v1/gpus/rentals", Some(&body))
        .await
        .unwrap();
    assert_eq!(v["id"], "rnt_1");
    let req = h.await.unwrap().to_ascii_lowercase();
    assert!(req.starts_with("post /v1/gpus/rentals http/1.1"), "{req}");
    assert!(req.contains("authorization: bearer sk-test"), "{req}");
    assert!(req.contains("idempotency-key: "), "{req}");
    assert!(
        req.ends_with(r#"{"gpu":"h100","max_price_per_hour":2.5}"#),
        "{req}"
    );
}

#[tokio::test]
async fn api_error_answer_becomes_its_message() {
    let (base, h) = one_shot(
        "409 Conflict",
        r#"{"error":{"message":"offer vast:1 is gone","type":"invalid_request_error","code":"offer_gone","param":null}}"#,
    )
    .await;
    let err = client_for(&base, false)
        .call(Method::GET, "/v1/gpus/rentals", None)
        .await
        .unwrap_err();
    assert_eq!(err, "offer vast:1 is gone (409 Conflict)");
    let req = h.await.unwrap();
    assert!(
        !req.to_ascii_lowercase().contains("idempotency-key"),
        "GET needs none: {req}"
    );
}
