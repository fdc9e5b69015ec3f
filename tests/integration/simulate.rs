//! `spotd simulate`: a simulated day keeps every invariant, the same seed replays the
//! same run, and each invariant catches the defect injected against it.

use spotd::sim::{run, Fault, Options};

fn opts(days: u64, hours: u64, seed: u64, inject: Option<Fault>) -> Options {
    Options {
        days,
        hours,
        seed,
        inject,
        inject_after: 20,
        verbose: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_keeps_every_invariant() {
    let s = run(&opts(1, 0, 1, None))
        .await
        .expect("the simulation runs");
    assert_eq!(s.violations, 0, "{:?}", s.violation);
    assert!(s.steps > 100, "{s:?}");
    assert!(
        s.rentals > 10 && s.charges > 100 && s.hosted_requests > 10,
        "{s:?}"
    );
    assert!(s.checks > 1000, "{s:?}");
    assert!(
        s.crashes + s.restarts > 0,
        "a day of seed 1 has a restart: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_run() {
    let a = run(&opts(0, 6, 7, None)).await.unwrap();
    let b = run(&opts(0, 6, 7, None)).await.unwrap();
    let c = run(&opts(0, 6, 8, None)).await.unwrap();
    let strip = |mut s: spotd::sim::Summary| {
        s.wall_seconds = 0.0;
        serde_json::to_string(&s).unwrap()
    };
    assert_eq!(a.violations, 0, "{:?}", a.violation);
    assert_eq!(strip(a.clone()), strip(b), "same seed, same summary");
    assert_ne!(strip(a), strip(c), "another seed, another run");
}

/// Each defect is injected once, after step 20; the run must stop on it with a
/// message that says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invariant_catches_its_injected_defect() {
    let cases = [
        (Fault::SkipCharge, "!= sum of its ledger"),
        (Fault::Rounding, "s at "),
        // A hold kept on a rental already terminated breaks `held == open holds` at
        // once; on one still terminating it is seen when it ends ("still holds").
        (Fault::LoseRelease, "holds"),
        (Fault::Orphan, "with no live rental"),
        (Fault::UnnamedCharge, "names neither a rental nor a request"),
        (Fault::Undercharge, "its usage costs"),
        (Fault::LoseAck, "is missing after a restart"),
        (Fault::StaleTotals, "running totals"),
        (Fault::PassCap, "above its max_usd_per_month"),
    ];
    for (fault, says) in cases {
        let s = run(&opts(2, 0, 1, Some(fault))).await.unwrap();
        let v = s.violation.clone().unwrap_or_default();
        assert_eq!(s.violations, 1, "{fault:?} was not caught: {s:?}");
        assert!(v.contains(says), "{fault:?}: {v}");
        assert!(v.starts_with("seed 1 step "), "names seed and step: {v}");
    }
}
