//! The CLI's lists as vastai's and runpodctl's users expect them: `--limit` / `--all`
//! on every list, a "N more" hint instead of a silent cut, a next-page command that
//! works as printed, money columns aligned on the decimal point, short timestamps; the
//! admin lists (accounts, keys, providers, rentals); `admin credit` refusing a
//! negative amount unless it is a `--debit`.

use serde_json::{json, Value};

use crate::cli::{ok, spotd, stderr};
use crate::common::{cheapest, usd, Daemon};
use spotd::money::Usd;

/// The rows of a table (the header and the hint line dropped).
fn rows(out: &str) -> Vec<&str> {
    out.lines()
        .skip(1)
        .take_while(|l| !l.contains(" more — "))
        .collect()
}

/// The hint's next-page command, as arguments for `spotd` (its first word dropped).
fn next_page(out: &str) -> Vec<String> {
    let hint = out
        .lines()
        .find(|l| l.contains(" more — "))
        .unwrap_or_else(|| panic!("no hint: {out}"));
    let cmd = hint.split("the next page: ").nth(1).expect("a command");
    let mut words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    assert_eq!(words.remove(0), "spotd", "{hint}");
    words
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_pages_with_a_count_a_working_cursor_and_all() {
    let d = Daemon::in_process("[limits]\nrequests_per_second = 1000\nburst = 1000\n").await;
    let (acct, key) = d.account("many", "1").await;
    for i in 0..74 {
        let r = d
            .post(
                &format!("/admin/v1/accounts/{acct}/credits"),
                &d.admin.clone(),
                json!({"amount": format!("0.{:06}", i + 1), "note": format!("top-up {i}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let total = d.ledger(&key).await.len();
    assert_eq!(total, 75);
    let env = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];

    // The default page: 50 rows and how many are left, not a silent cut.
    let out = ok(&["credits", "--ledger"], &env);
    assert_eq!(rows(&out).len(), 50, "{out}");
    let hint = out.lines().last().unwrap();
    assert!(
        hint.starts_with("25 more — use --all, or the next page: spotd credits --ledger --cursor "),
        "{hint}"
    );
    // Short UTC timestamps, aligned money.
    let header = out.lines().next().unwrap();
    assert!(header.contains("AT (UTC)"), "{header}");
    let first = rows(&out)[0];
    let at = &first[header.find("AT (UTC)").unwrap()..][..19];
    assert!(
        at.as_bytes()[4] == b'-' && at.as_bytes()[10] == b' ' && at.as_bytes()[13] == b':',
        "short time: {at:?} in {first}"
    );
    let points: Vec<usize> = rows(&out)
        .iter()
        .map(|r| {
            let amount_end = header.find("AMOUNT").unwrap() + "AMOUNT".len();
            r[..amount_end].rfind('.').expect("a decimal point")
        })
        .collect();
    assert!(
        points.windows(2).all(|w| w[0] == w[1]),
        "AMOUNT not aligned:\n{out}"
    );

    // The printed command shows the rest, exactly once each.
    let args = next_page(&out);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let rest = ok(&argv, &env);
    assert_eq!(rows(&rest).len(), 25, "{rest}");
    assert!(
        !rest.contains(" more — "),
        "the last page has no hint: {rest}"
    );
    let id = |r: &&str| r.split_whitespace().next().unwrap().to_string();
    let mut seen: Vec<String> = rows(&out).iter().map(id).collect();
    seen.extend(rows(&rest).iter().map(id));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 75);

    // --all: every entry; --limit: as asked, with the count of the rest.
    assert_eq!(rows(&ok(&["credits", "--ledger", "--all"], &env)).len(), 75);
    let out = ok(&["credits", "--ledger", "--limit", "70"], &env);
    assert_eq!(rows(&out).len(), 70);
    assert!(
        out.lines().last().unwrap().starts_with("5 more — "),
        "{out}"
    );
    let j: Value =
        serde_json::from_str(&ok(&["credits", "--ledger", "--all", "--json"], &env)).unwrap();
    assert_eq!(j["data"].as_array().unwrap().len(), 75);
    assert!(j["next_cursor"].is_null());
    // The balance table is not paged.
    let bad = spotd(&["credits", "--all"], &env);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--ledger"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offers_cursor_works_as_printed_with_its_filters() {
    let d = Daemon::in_process("[sandbox]\nprice_drift = 0.0\n").await;
    let key = d.demo_key.clone();
    let env = [("SPOTD_URL", d.url.as_str()), ("SPOTD_API_KEY", &key)];
    let all: Value = serde_json::from_str(&ok(
        &["offers", "--gpu", "RTX 4090", "--all", "--json"],
        &env,
    ))
    .unwrap();
    let n = all["data"].as_array().unwrap().len();
    assert!(n > 3, "{n}");
    let out = ok(&["offers", "--gpu", "RTX 4090", "--limit", "3"], &env);
    assert_eq!(rows(&out).len(), 3);
    let hint = out.lines().last().unwrap();
    assert!(hint.starts_with(&format!("{} more — ", n - 3)), "{hint}");
    // The filter with a space is quoted in the hint; run it as a shell would split it.
    assert!(
        hint.contains("--gpu 'RTX 4090' --limit 3 --cursor "),
        "{hint}"
    );
    let cursor = hint.rsplit(' ').next().unwrap();
    let page2 = ok(
        &[
            "offers", "--gpu", "RTX 4090", "--limit", "3", "--cursor", cursor,
        ],
        &env,
    );
    let ids: Vec<&str> = rows(&out)
        .iter()
        .chain(rows(&page2).iter())
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    let want: Vec<&str> = all["data"].as_array().unwrap()[..ids.len()]
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want, "page 2 follows page 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_accounts_keys_providers_and_rentals() {
    let d = Daemon::in_process("").await;
    let admin = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_ADMIN_TOKEN", &d.admin),
    ];
    let (acct, key) = d.account("team-b", "12.5").await;

    let out = ok(&["admin", "account", "list"], &admin);
    let header = out.lines().next().unwrap();
    for col in ["ID", "NAME", "BALANCE", "AVAILABLE", "CREATED (UTC)"] {
        assert!(header.contains(col), "{col}: {out}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with(&acct))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("team-b") && row.contains("12.50"), "{row}");
    let out = ok(&["admin", "account", "list", "--limit", "1"], &admin);
    assert_eq!(rows(&out).len(), 1, "{out}");
    assert_eq!(out.lines().last().unwrap(), "1 more — use --all", "{out}");

    // Keys: list, create (shown once), revoke (stops working at once).
    let out = ok(&["admin", "keys", "list", &acct], &admin);
    assert_eq!(rows(&out).len(), 1, "{out}");
    assert!(rows(&out)[0].contains("active"), "{out}");
    let out = ok(&["admin", "keys", "create", &acct], &admin);
    let new_key = out
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once, keep it): "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert_eq!(d.get("/v1/credits", &new_key).await.status, 200);
    let key_id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(key_id.starts_with("key_"), "{out}");
    ok(&["admin", "keys", "revoke", &key_id], &admin);
    assert_eq!(d.get("/v1/credits", &new_key).await.status, 401);
    let out = ok(&["admin", "keys", "list", &acct], &admin);
    let revoked = out.lines().find(|l| l.starts_with(&key_id)).unwrap();
    assert!(revoked.contains("revoked"), "{out}");

    // Providers: the sandbox clouds, ok, with their offers.
    let out = ok(&["admin", "providers"], &admin);
    let providers: Value = d.get("/admin/v1/providers", &d.admin.clone()).await.body;
    for p in providers["data"].as_array().unwrap() {
        let row = out
            .lines()
            .find(|l| l.starts_with(p["name"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{p}: {out}"));
        assert!(
            row.contains(" ok ") && row.contains(&p["offers"].to_string()),
            "{row}"
        );
    }

    // Rentals of every account, filtered by account.
    let offer = cheapest(&d, &key, "gpu=T4").await;
    let r = d
        .post("/v1/gpus/rentals", &key, json!({"offer_id": offer["id"]}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let out = ok(&["admin", "rentals", "--account", &acct], &admin);
    assert_eq!(rows(&out).len(), 1, "{out}");
    assert!(rows(&out)[0].starts_with(&id), "{out}");
    let out = ok(&["admin", "stop", &id], &admin);
    assert!(out.contains("terminat"), "{out}");
    let r = d.get(&format!("/v1/gpus/rentals/{id}"), &key).await;
    assert_eq!(r.body["termination_reason"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_credit_refuses_a_negative_amount_unless_it_is_a_debit() {
    let d = Daemon::in_process("").await;
    let admin = [
        ("SPOTD_URL", d.url.as_str()),
        ("SPOTD_ADMIN_TOKEN", &d.admin),
    ];
    let (acct, key) = d.account("team-c", "10").await;
    let entries = d.ledger(&key).await.len();
    let neg = spotd(&["admin", "credit", &acct, "-4"], &admin);
    assert!(!neg.status.success());
    assert!(stderr(&neg).contains("--debit"), "{}", stderr(&neg));
    assert_eq!(d.ledger(&key).await.len(), entries, "nothing moved");

    let out = ok(
        &["admin", "credit", &acct, "4", "--debit", "--note", "refund"],
        &admin,
    );
    assert!(
        out.starts_with(&format!("debited $4.00 from {acct}")),
        "{out}"
    );
    assert!(out.contains("balance now $6.00"), "{out}");
    let (bal, _, _) = d.assert_books_balance(&key).await;
    assert_eq!(bal, Usd::from_dollars(6));
    let last = &d.ledger(&key).await[0];
    assert_eq!(usd(&last["amount"]), Usd::from_dollars(-4));
    assert_eq!(last["note"], "refund");
}
