//! A plain sandbox rental says how to reach it, as a real cloud's does: once running,
//! its `ssh` address answers on loopback with an SSH identification line; after the
//! rental ends the port refuses connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{cheapest, Daemon};

/// Connects and does the identification exchange: (server line, what followed it).
fn ssh_hello(port: u16) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        if s.read(&mut b)? == 0 {
            break;
        }
        line.push(b[0]);
    }
    s.write_all(b"SSH-2.0-spotd_test\r\n")?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok((String::from_utf8_lossy(&line).to_string(), rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plain_rental_answers_ssh_until_it_ends() {
    let d = Daemon::in_process("").await;
    let key = d.demo_key.clone();
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let r = d
        .post(
            "/v1/gpus/rentals",
            &key,
            serde_json::json!({"offer_id": offer["id"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(
        r.body["ssh"].is_null(),
        "no address while provisioning: {}",
        r.body
    );
    let running = d
        .wait_rental(&key, &id, 30, |b| b["state"] == "running")
        .await;
    let ssh = &running["ssh"];
    assert_eq!(ssh["host"], "127.0.0.1", "{running}");
    assert_eq!(ssh["user"], "root");
    assert!(
        running["endpoint"].is_null(),
        "a plain machine has no model endpoint"
    );
    let port = ssh["port"].as_u64().unwrap() as u16;

    let (line, rest) = tokio::task::spawn_blocking(move || ssh_hello(port))
        .await
        .unwrap()
        .expect("the port answers while running");
    assert!(line.starts_with("SSH-2.0-"), "{line:?}");
    assert!(line.ends_with("\r\n"), "{line:?}");
    // An SSH_MSG_DISCONNECT (type 1) saying why there is no shell.
    assert_eq!(rest.get(5), Some(&1u8), "{rest:?}");
    assert!(
        String::from_utf8_lossy(&rest).contains("no machine"),
        "{rest:?}"
    );

    let del = d.delete(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(del.status, 200, "{:?}", del.body);
    let ended = d
        .wait_rental(&key, &id, 30, |b| b["state"] == "terminated")
        .await;
    assert!(ended["ssh"].is_null(), "{ended}");
    let after = tokio::task::spawn_blocking(move || TcpStream::connect(("127.0.0.1", port)))
        .await
        .unwrap();
    assert!(after.is_err(), "the port must refuse once the rental ended");
}
