//! Online backup and restore (SPEC section 10): a snapshot taken through the CLI while
//! the daemon serves credits and meters a rental is consistent, restores into another
//! data dir, and a daemon started on it shows the snapshot's books.

use serde_json::json;
use spotd::model::LedgerKind;
use spotd::money::Usd;
use spotd::store::Store;

use crate::cli::spotd;
use crate::common::{cheapest, usd, Daemon};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every account's balance in a database file, after checking that it equals the sum
/// of that account's credits and charges (a torn snapshot would break it: the two are written in
/// one transaction).
async fn books_of(path: &std::path::Path) -> Vec<(String, Usd)> {
    let store = Store::open(path).expect("open the snapshot");
    let out = store
        .read(|rx| {
            let mut out = Vec::new();
            for a in rx.accounts()? {
                let mut sum = Usd::ZERO;
                let mut after = 0;
                loop {
                    let page = rx.ledger_after(&a.id, after, 1000)?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    sum += page
                        .iter()
                        .filter(|e| matches!(e.kind, LedgerKind::Credit | LedgerKind::Charge))
                        .map(|e| e.amount)
                        .sum::<Usd>();
                }
                assert_eq!(sum, a.balance, "{}: balance != sum(ledger)", a.id);
                out.push((a.id.clone(), a.balance));
            }
            Ok::<_, spotd::store::StoreError>(out)
        })
        .await
        .expect("read");
    store.close();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_the_same_books() {
    let d = Daemon::in_process("[limits]\nrequests_per_second = 10000\nburst = 10000\n").await;
    let admin = d.admin.clone();
    let mut accounts = Vec::new();
    for i in 0..4 {
        accounts.push(d.account(&format!("team{i}"), "1").await);
    }
    // The demo account rents a GPU, which is metered while the backup runs.
    let demo = d.demo_key.clone();
    let offer = cheapest(&d, &demo, "gpu=rtx").await;
    let r = d
        .post("/v1/gpus/rentals", &demo, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let rental = r.body["id"].as_str().unwrap().to_string();
    d.advance(120).await;

    // Load: 4 x 30 credits of $0.01 in flight while the CLI saves a backup.
    let mut load = Vec::new();
    for (id, _) in &accounts {
        let (url, admin, id) = (d.url.clone(), admin.clone(), id.clone());
        load.push(tokio::spawn(async move {
            let c = spotd::http_client::HttpClient::new(std::time::Duration::from_secs(30));
            for n in 0..30 {
                let idem = format!("{id}-{n}");
                let r = c
                    .send(
                        hyper::Method::POST,
                        &format!("{url}/admin/v1/accounts/{id}/credits"),
                        Some(&admin),
                        &[("idempotency-key", &idem)],
                        Some(json!({"amount": "0.01"}).to_string().into_bytes()),
                    )
                    .await
                    .expect("credit");
                assert_eq!(r.status.as_u16(), 200);
            }
        }));
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("snap.redb");
    let (url, f) = (d.url.clone(), file.clone());
    let admin2 = admin.clone();
    let cli = tokio::task::spawn_blocking(move || {
        spotd(
            &["admin", "backup", f.to_str().unwrap()],
            &[("SPOTD_URL", &url), ("SPOTD_ADMIN_TOKEN", &admin2)],
        )
    });
    // The rental keeps being metered meanwhile.
    d.advance(60).await;
    let o = cli.await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("saved"), "{}", text(&o));
    for h in load {
        h.await.unwrap();
    }
    assert!(!out.path().join("snap.redb.part").exists());

    // The API itself: admin only, a redb file of the length it announces.
    let user = d.get("/admin/v1/backup", &accounts[0].1).await;
    assert!(matches!(user.status, 401 | 403), "{}", user.status);
    let raw = d
        .client
        .get(&format!("{}/admin/v1/backup", d.url), Some(&admin))
        .await
        .unwrap();
    assert_eq!(raw.status.as_u16(), 200);
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        raw.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(raw.body.len())
    );

    // Restore into another data dir: refused over a database unless --force, and
    // refused under a running spotd even with it.
    let target = tempfile::tempdir().unwrap();
    let tdir = target.path().to_str().unwrap().to_string();
    let snap = file.to_str().unwrap();
    let o = spotd(&["restore", snap, "--data-dir", &tdir], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = spotd(&["restore", snap, "--data-dir", &tdir], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    {
        let _running = redb::Database::open(target.path().join("spotd.redb")).unwrap();
        let o = spotd(&["restore", snap, "--data-dir", &tdir, "--force"], &[]);
        assert!(!o.status.success());
        assert!(text(&o).contains("running"), "{}", text(&o));
    }
    let o = spotd(&["restore", snap, "--data-dir", &tdir, "--force"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(target.path().join("spotd.redb.before-restore").exists());
    let junk = out.path().join("junk.redb");
    std::fs::write(&junk, b"not a database").unwrap();
    let o = spotd(
        &[
            "restore",
            junk.to_str().unwrap(),
            "--data-dir",
            &tdir,
            "--force",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not a readable spotd database"),
        "{}",
        text(&o)
    );

    // The snapshot is consistent: every account's balance is the sum of its ledger.
    let books = books_of(&target.path().join("spotd.redb")).await;
    assert_eq!(books.len(), 5, "{books:?}");

    // A daemon started on the restored file: its own admin token still works, and
    // the credit accounts show the snapshot's balances.
    let mut d2 = Daemon::in_process("").await;
    d2.stop_in_process().await;
    let o = spotd(
        &[
            "restore",
            snap,
            "--data-dir",
            d2.data_dir().to_str().unwrap(),
            "--force",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    d2.restart_in_process().await;
    let list = d2.get("/admin/v1/accounts", &d2.admin.clone()).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    for (id, key) in &accounts {
        let c = d2.get("/v1/credits", key).await;
        assert_eq!(c.status, 200, "{:?}", c.body);
        let want = books.iter().find(|(a, _)| a == id).unwrap().1;
        assert_eq!(usd(&c.body["balance"]), want, "{id}");
        d2.assert_books_balance(key).await;
    }
    // The rental the snapshot holds is reconciled with the providers of the new data
    // dir (where it does not exist) and its books still balance.
    let r = d2.get(&format!("/v1/gpus/rentals/{rental}"), &demo).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    d2.assert_books_balance(&demo).await;
    // The original daemon is still serving, unchanged by all of this.
    d.assert_books_balance(&demo).await;
}
