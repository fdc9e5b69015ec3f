//! systemd's readiness protocol (sd_notify) without libsystemd and without unsafe code.
//!
//! Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET`; the daemon
//! sends newline-separated `KEY=VALUE` assignments to it: `READY=1` once it serves,
//! `STOPPING=1` when shutdown begins, `EXTEND_TIMEOUT_USEC=` while a long start-up step
//! (a redb repair after an unclean stop) runs, and `WATCHDOG=1` pings when the unit sets
//! `WatchdogSec=`. Abstract sockets (`@name`) go through std's Linux `SocketAddrExt`,
//! so no `unsafe` is needed. Outside systemd every call is a cheap no-op.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where notifications go, read once from the environment.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the process
    /// environment.
    pub fn from_env() -> Notifier {
        let get = |k: &str| std::env::var(k).ok();
        Notifier::from_vars(
            get("NOTIFY_SOCKET").as_deref(),
            get("WATCHDOG_USEC").as_deref(),
            get("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// The same from explicit values (tests).
    pub fn from_vars(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let socket = match socket {
            Some(s) if s.starts_with('@') && s.len() > 1 => {
                Some(Target::Abstract(s.as_bytes()[1..].to_vec()))
            }
            Some(s) if s.starts_with('/') => Some(Target::Path(PathBuf::from(s))),
            _ => None,
        };
        // The watchdog is meant for the process systemd started: when WATCHDOG_PID is
        // set and names another process (a child that inherited the environment), ignore it.
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// True when systemd listens for notifications.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends `state` (e.g. "READY=1"). Failures are logged, never fatal: a daemon
    /// that cannot reach systemd still serves, and systemd's timeout will tell.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.socket else { return };
        if let Err(e) = send(target, state.as_bytes()) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    /// Asks systemd for `extra` more time than the current start (or stop) timeout.
    pub fn extend_timeout(&self, extra: Duration) {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", extra.as_micros()));
    }

    /// A callback for `Store::open_with_repair_callback`: each call (at most one a
    /// second) asks systemd for 30 s more start time and logs the progress, so a long
    /// repair is neither killed by `TimeoutStartSec=` nor silent.
    pub fn repair_callback(&self) -> impl Fn(f64) + 'static {
        let n = self.clone();
        let last = std::cell::Cell::new(None::<std::time::Instant>);
        move |progress| {
            let due = last
                .get()
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                last.set(Some(std::time::Instant::now()));
                tracing::warn!(
                    progress = format!("{:.0}%", progress * 100.0),
                    "repairing the database after an unclean stop"
                );
                n.extend_timeout(Duration::from_secs(30));
            }
        }
    }

    /// Pings the watchdog at half its interval until `stop` is cancelled; returns at
    /// once when no watchdog is configured. A ping proves the runtime still schedules
    /// tasks, which is what a hung daemon stops doing.
    pub async fn run_watchdog(self, stop: CancellationToken) {
        let Some(interval) = self.watchdog_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.notify("WATCHDOG=1"),
            }
        }
    }
}

fn send(target: &Target, msg: &[u8]) -> std::io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    match target {
        Target::Path(p) => sock.send_to(msg, p),
        Target::Abstract(name) => send_abstract(&sock, name, msg),
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract notify sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(path.to_str(), None, None, 1);
        assert!(n.enabled());
        n.ready();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
        n.extend_timeout(Duration::from_secs(90));
        assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=90000000");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("spotd-test-{}-{}", std::process::id(), line!());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None, 1);
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn repair_callback_extends_the_timeout_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let cb = Notifier::from_vars(path.to_str(), None, None, 1).repair_callback();
        cb(0.1);
        cb(0.2);
        assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=30000000");
        let mut buf = [0u8; 64];
        assert!(
            sock.recv(&mut buf).is_err(),
            "the second call came too soon to send"
        );
    }

    #[test]
    fn absent_or_relative_socket_disables_it() {
        assert!(!Notifier::from_vars(None, None, None, 1).enabled());
        assert!(!Notifier::from_vars(Some("relative/path"), None, None, 1).enabled());
        // A no-op, not a panic.
        Notifier::default().ready();
    }

    #[test]
    fn watchdog_only_for_the_named_pid() {
        let s = Some("/run/systemd/notify");
        let n = Notifier::from_vars(s, Some("30000000"), Some("42"), 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
        let other = Notifier::from_vars(s, Some("30000000"), Some("43"), 42);
        assert_eq!(other.watchdog_interval(), None);
        let no_pid = Notifier::from_vars(s, Some("5000000"), None, 42);
        assert_eq!(no_pid.watchdog_interval(), Some(Duration::from_secs(5)));
        let no_socket = Notifier::from_vars(None, Some("5000000"), None, 42);
        assert_eq!(no_socket.watchdog_interval(), None);
        assert_eq!(
            Notifier::from_vars(s, Some("0"), None, 42).watchdog_interval(),
            None
        );
    }
}
