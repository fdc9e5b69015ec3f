//! The one clock: "now", and sleeping until a deadline.
//!
//! Times are unix milliseconds (`i64`) inside spotd and RFC 3339 UTC at the JSON edge.
//!
//! [`Clock::System`] reads the wall clock and sleeps on tokio time. [`Clock::Manual`]
//! stands still until a test or the simulator moves it; its sleepers wake only when it
//! is moved past their deadline. Every background loop sleeps through a `Ticker`, which
//! the manual clock keeps a register of, so [`Clock::advance_settled`] can move time
//! deadline by deadline and, after each, wait until every loop has done the work that
//! was due and is asleep again: advancing time runs exactly the work due, in order.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Unix time in milliseconds.
pub(crate) type Millis = i64;

/// The source of "now" and of sleeps. Cloning shares the clock.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<Manual>),
}

impl Clock {
    pub fn system() -> Clock {
        Clock::System
    }

    pub fn manual(start: Millis) -> Clock {
        Clock::Manual(Arc::new(Manual::new(start)))
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(m) => m.lock().now,
        }
    }

    /// Moves a manual clock forward and wakes the sleepers now due, without waiting
    /// for them; a no-op on the system clock. [`Clock::advance_settled`] also waits.
    pub fn advance(&self, ms: i64) {
        if let Clock::Manual(m) = self {
            let target = m.lock().now.saturating_add(ms.max(0));
            m.set(target);
        }
    }

    /// Sleeps until the clock reads `deadline` (at once if it already does).
    pub(crate) async fn sleep_until(&self, deadline: Millis) {
        match self {
            Clock::System => {
                let wait = deadline.saturating_sub(self.now()).max(0) as u64;
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
            Clock::Manual(m) => ManualSleep::new(m.clone(), deadline).await,
        }
    }

    /// Sleeps `ms` milliseconds of this clock's time.
    pub async fn sleep(&self, ms: i64) {
        self.sleep_until(self.now().saturating_add(ms.max(0))).await
    }

    /// A background loop's way to sleep; see [`Ticker`].
    pub(crate) fn ticker(&self, signal: Signal) -> Ticker {
        let id = match self {
            Clock::System => 0,
            Clock::Manual(m) => m.register_ticker(signal.clone()),
        };
        Ticker {
            clock: self.clone(),
            signal,
            id,
        }
    }

    /// Manual clock: how many plain sleeps are waiting for a deadline still ahead (a
    /// request parked on the clock, such as a `Prefer: wait`); 0 on the system clock.
    pub fn parked_sleepers(&self) -> usize {
        match self {
            Clock::System => 0,
            Clock::Manual(m) => {
                let st = m.lock();
                st.sleepers.values().filter(|(d, _)| *d > st.now).count()
            }
        }
    }

    /// Manual clock: awaits `f` (a request that may park on the clock, such as one with
    /// `Prefer: wait`), moving time `step_ms` at a time, but only while something is
    /// parked on the clock and all else is settled, so how far time moves does not
    /// depend on real time. On the system clock it just awaits `f`.
    pub async fn run_parked<F: Future>(&self, f: F, step_ms: i64) -> Result<F::Output, Stuck> {
        if !self.is_manual() {
            return Ok(f.await);
        }
        let parked = || async {
            loop {
                if self.settle().await.is_ok() && self.parked_sleepers() > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::pin!(f);
        loop {
            tokio::select! {
                biased;
                r = &mut f => return Ok(r),
                _ = parked() => { self.advance_settled(step_ms).await?; }
            }
        }
    }

    /// Marks work in progress that the manual clock must wait for before it counts as
    /// settled (a background write, a redeploy), until the guard is dropped.
    pub(crate) fn busy(&self) -> Busy {
        if let Clock::Manual(m) = self {
            m.lock().held += 1;
        }
        Busy(self.clone())
    }

    /// Manual clock: moves time forward by `ms` one due deadline at a time, and after
    /// each waits until every ticker has finished the work that was due and sleeps
    /// again (see [`Clock::settle`]). Answers how many deadlines were stepped through.
    /// On the system clock it only sleeps `ms`.
    pub async fn advance_settled(&self, ms: i64) -> Result<u64, Stuck> {
        let Clock::Manual(m) = self else {
            self.sleep(ms).await;
            return Ok(0);
        };
        let target = m.lock().now.saturating_add(ms.max(0));
        let mut steps = 0;
        self.settle().await?;
        loop {
            let next = {
                let st = m.lock();
                st.next_deadline().filter(|d| *d <= target)
            };
            let Some(next) = next else { break };
            m.set(next);
            steps += 1;
            self.settle().await?;
        }
        m.set(target);
        self.settle().await?;
        Ok(steps)
    }

    /// Manual clock: waits until every ticker sleeps with a deadline in the future, no
    /// signal is pending and no plain sleep due now is still to run, i.e. all the work
    /// due now is done. Real time bounds the
    /// wait: a loop that never sleeps again is reported, not waited for forever.
    pub async fn settle(&self) -> Result<(), Stuck> {
        let Clock::Manual(m) = self else {
            return Ok(());
        };
        let give_up = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let changed = m.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(busy) = m.lock().busy_ticker() {
                if tokio::time::Instant::now() >= give_up {
                    return Err(Stuck(busy));
                }
            } else {
                return Ok(());
            }
            // Sleeping tickers notify `changed`; the short real-time poll covers a
            // signal raised by a task the clock does not know about.
            let _ = tokio::time::timeout(Duration::from_millis(2), changed).await;
        }
    }
}

/// How long [`Clock::settle`] waits in real time for the loops to go back to sleep.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// A loop that did not go back to sleep within the settle limit (its ticker's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck(pub String);

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a background loop did not settle: {}", self.0)
    }
}

impl std::error::Error for Stuck {}

/// A manual clock's state.
#[derive(Debug)]
pub struct Manual {
    state: Mutex<ManualState>,
    /// Notified whenever a ticker goes to sleep.
    changed: Notify,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct ManualState {
    now: Millis,
    /// Plain sleepers: id -> (deadline, waker).
    sleepers: BTreeMap<u64, (Millis, Option<Waker>)>,
    /// Tickers: id -> (deadline it sleeps until, or None while it works; its signal).
    tickers: BTreeMap<u64, (Option<Millis>, Signal)>,
    /// Live [`Busy`] guards.
    held: usize,
}

impl ManualState {
    /// The earliest deadline any sleeper or ticker waits for, after now.
    fn next_deadline(&self) -> Option<Millis> {
        let plain = self.sleepers.values().map(|(d, _)| *d);
        let tick = self.tickers.values().filter_map(|(d, _)| *d);
        plain.chain(tick).filter(|d| *d > self.now).min()
    }

    /// A ticker that has work to do now: awake, due, or signalled.
    fn busy_ticker(&self) -> Option<String> {
        if self.held > 0 {
            return Some(format!("{} background task(s)", self.held));
        }
        // A plain sleeper whose deadline passed has been woken but not yet run: what it
        // does next (a `Prefer: wait` poll, say) is part of the work due now.
        if self.sleepers.values().any(|(d, _)| *d <= self.now) {
            return Some("a sleeper due".to_string());
        }
        self.tickers.values().find_map(|(d, s)| match d {
            Some(d) if *d > self.now && !s.is_pending() => None,
            _ => Some(s.name().to_string()),
        })
    }
}

impl Manual {
    fn new(start: Millis) -> Manual {
        Manual {
            state: Mutex::new(ManualState {
                now: start,
                sleepers: BTreeMap::new(),
                tickers: BTreeMap::new(),
                held: 0,
            }),
            changed: Notify::new(),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the time (never backwards) and wakes whatever is due.
    fn set(&self, to: Millis) {
        let mut st = self.lock();
        st.now = st.now.max(to);
        let now = st.now;
        for (d, w) in st.sleepers.values_mut() {
            if *d <= now {
                if let Some(w) = w.take() {
                    w.wake();
                }
            }
        }
        for (d, s) in st.tickers.values() {
            if matches!(d, Some(d) if *d <= now) {
                s.wake_sleeper();
            }
        }
    }

    fn register_ticker(&self, signal: Signal) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().tickers.insert(id, (None, signal));
        id
    }
}

/// Work in progress the manual clock waits for; see `Clock::busy`.
pub struct Busy(Clock);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Clock::Manual(m) = &self.0 {
            m.lock().held -= 1;
            m.changed.notify_waiters();
        }
    }
}

/// A manual-clock sleep: registered with its waker until the clock passes `deadline`.
struct ManualSleep {
    clock: Arc<Manual>,
    id: u64,
    deadline: Millis,
}

impl ManualSleep {
    fn new(clock: Arc<Manual>, deadline: Millis) -> ManualSleep {
        let id = clock.next_id.fetch_add(1, Ordering::Relaxed);
        ManualSleep {
            clock,
            id,
            deadline,
        }
    }
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.clock.lock();
        if st.now >= self.deadline {
            st.sleepers.remove(&self.id);
            drop(st);
            // A settle may be waiting for this sleeper to have run.
            self.clock.changed.notify_waiters();
            return Poll::Ready(());
        }
        st.sleepers
            .insert(self.id, (self.deadline, Some(cx.waker().clone())));
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        self.clock.lock().sleepers.remove(&self.id);
    }
}

/// A wake-up for a background loop: `notify` makes its next (or current) sleep end at
/// once. A notification sent while the loop works is kept for its next sleep.
#[derive(Clone, Debug)]
pub(crate) struct Signal(Arc<SignalInner>);

#[derive(Debug)]
struct SignalInner {
    name: String,
    notify: Notify,
    /// Set by `notify`, cleared when the loop wakes: the manual clock is not settled
    /// while a signal is pending.
    pending: AtomicBool,
    /// Woken by the manual clock when the ticker's deadline passes.
    deadline: Notify,
}

impl Signal {
    /// A signal named after the loop it wakes (named in [`Stuck`] reports).
    pub fn new(name: impl Into<String>) -> Signal {
        Signal(Arc::new(SignalInner {
            name: name.into(),
            notify: Notify::new(),
            pending: AtomicBool::new(false),
            deadline: Notify::new(),
        }))
    }

    pub fn notify(&self) {
        self.0.pending.store(true, Ordering::SeqCst);
        self.0.notify.notify_one();
    }

    fn is_pending(&self) -> bool {
        self.0.pending.load(Ordering::SeqCst)
    }

    fn name(&self) -> &str {
        &self.0.name
    }

    fn wake_sleeper(&self) {
        self.0.deadline.notify_one();
    }
}

/// How a background loop sleeps: until a deadline of its clock, or until its
/// [`Signal`] is notified. On a manual clock the ticker is registered, so the clock
/// knows whether the loop is working or asleep (see [`Clock::settle`]).
pub(crate) struct Ticker {
    clock: Clock,
    signal: Signal,
    id: u64,
}

impl Ticker {
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Sleeps until `deadline` or the signal; answers `true` when the signal woke it.
    pub(crate) async fn sleep_until(&mut self, deadline: Millis) -> bool {
        let woken = match &self.clock {
            Clock::System => {
                let wait = deadline.saturating_sub(self.clock.now()).max(0) as u64;
                tokio::select! {
                    _ = self.signal.0.notify.notified() => true,
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => false,
                }
            }
            Clock::Manual(m) => {
                let sig = &self.signal.0;
                loop {
                    let notified = sig.notify.notified();
                    let due = sig.deadline.notified();
                    tokio::pin!(notified, due);
                    notified.as_mut().enable();
                    due.as_mut().enable();
                    {
                        let mut st = m.lock();
                        if sig.pending.load(Ordering::SeqCst) {
                            break true;
                        }
                        if st.now >= deadline {
                            break false;
                        }
                        if let Some(t) = st.tickers.get_mut(&self.id) {
                            t.0 = Some(deadline);
                        }
                    }
                    m.changed.notify_waiters();
                    tokio::select! {
                        _ = notified => {}
                        _ = due => {}
                    }
                }
            }
        };
        // Awake: working until the next sleep.
        if let Clock::Manual(m) = &self.clock {
            let mut st = m.lock();
            if let Some(t) = st.tickers.get_mut(&self.id) {
                t.0 = None;
            }
            self.signal.0.pending.store(false, Ordering::SeqCst);
        } else {
            self.signal.0.pending.store(false, Ordering::SeqCst);
        }
        woken
    }

    /// Sleeps `ms` from now, or until the signal.
    pub async fn sleep(&mut self, ms: i64) -> bool {
        let deadline = self.clock.now().saturating_add(ms.max(0));
        self.sleep_until(deadline).await
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Clock::Manual(m) = &self.clock {
            m.lock().tickers.remove(&self.id);
            m.changed.notify_waiters();
        }
    }
}

/// RFC 3339 UTC with millisecond precision, e.g. `2026-11-27T10:22:10.123Z`.
pub(crate) fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&fmt).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// Parses RFC 3339 into unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Serde helper for optional times in JSON views.
pub(crate) fn ser_opt<S: serde::Serializer>(v: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn rfc3339_round_trip() {
        let ms = 1_795_000_000_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(ms));
    }

    #[test]
    fn manual_clock_moves() {
        let c = Clock::manual(1000);
        c.advance(500);
        assert_eq!(c.now(), 1500);
    }

    #[tokio::test]
    async fn manual_sleep_ends_only_when_the_clock_passes_its_deadline() {
        let c = Clock::manual(0);
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.sleep_until(1_000).await });
        tokio::task::yield_now().await;
        c.advance(999);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!t.is_finished(), "woke before its deadline");
        c.advance(1);
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("woke at its deadline")
            .unwrap();
    }

    /// A loop that counts its rounds, every 10 s of clock time.
    fn counting_loop(c: &Clock, rounds: Arc<AtomicUsize>, sig: Signal) {
        let mut ticker = c.ticker(sig);
        tokio::spawn(async move {
            let mut next = ticker.now() + 10_000;
            loop {
                if !ticker.sleep_until(next).await {
                    next += 10_000;
                }
                rounds.fetch_add(1, Ordering::SeqCst);
                // Some real work between sleeps: the settle must wait for it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    #[tokio::test]
    async fn advance_settled_runs_exactly_the_rounds_due() {
        let c = Clock::manual(0);
        let rounds = Arc::new(AtomicUsize::new(0));
        let sig = Signal::new("counter");
        counting_loop(&c, rounds.clone(), sig.clone());
        c.settle().await.unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 0);
        let steps = c.advance_settled(3_600_000).await.unwrap();
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            360,
            "one round per 10 s in an hour"
        );
        assert_eq!(steps, 360);
        assert_eq!(c.now(), 3_600_000);
        // A signal runs one round at once, and settle waits for it.
        sig.notify();
        c.settle().await.unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 361);
        c.advance_settled(9_999).await.unwrap();
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            361,
            "the next round is at 3,610 s"
        );
        c.advance_settled(1).await.unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 362);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn advance_settled_waits_for_plain_sleepers_that_fell_due() {
        let c = Clock::manual(0);
        let woke = Arc::new(AtomicUsize::new(0));
        for i in 1..=20i64 {
            let (c2, w) = (c.clone(), woke.clone());
            tokio::spawn(async move {
                c2.sleep_until(i * 100).await;
                w.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Let the sleepers register.
        let registered = |c: &Clock| match c {
            Clock::Manual(m) => m.lock().sleepers.len(),
            Clock::System => 0,
        };
        while registered(&c) < 20 {
            tokio::task::yield_now().await;
        }
        // Settled means every due sleeper has been polled past its sleep; what its task
        // does next (here, one increment) runs right after, on its own thread.
        let reaches = |n: usize| {
            let w = woke.clone();
            async move {
                for _ in 0..1000 {
                    if w.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                w.load(Ordering::SeqCst)
            }
        };
        c.advance_settled(1_000).await.unwrap();
        assert_eq!(c.parked_sleepers(), 10, "the ten due after 1 s still wait");
        assert_eq!(reaches(10).await, 10, "the ten due by 1 s, and only those");
        c.advance_settled(1_000).await.unwrap();
        assert_eq!(c.parked_sleepers(), 0);
        assert_eq!(reaches(20).await, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_reports_a_loop_that_never_sleeps_again() {
        let c = Clock::manual(0);
        let ticker = c.ticker(Signal::new("stuck-loop"));
        // Registered but never asleep: the settle gives up and names it.
        let err = c.settle().await.unwrap_err();
        assert_eq!(err, Stuck("stuck-loop".into()));
        drop(ticker);
        c.settle().await.unwrap();
        let busy = c.busy();
        assert!(c.settle().await.is_err(), "a busy guard keeps it unsettled");
        drop(busy);
        c.settle().await.unwrap();
    }

    #[tokio::test]
    async fn system_ticker_wakes_on_its_signal() {
        let c = Clock::system();
        let sig = Signal::new("s");
        let mut t = c.ticker(sig.clone());
        sig.notify();
        let woken = tokio::time::timeout(Duration::from_secs(5), t.sleep(3_600_000))
            .await
            .expect("the signal ends the sleep");
        assert!(woken);
    }
}
