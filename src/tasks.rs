//! Background work the daemon starts outside a request (a streamed request's charge,
//! a deployment's activity, a redeploy after a preemption): tracked, so a graceful stop
//! waits for all of it before the store closes, and counted as work in progress on a
//! manual clock, so a simulation settles only once it is done.

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::clock::Clock;

#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    clock: Clock,
}

impl Tasks {
    pub fn new(clock: Clock) -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            clock,
        }
    }

    /// Runs `f` in the background, tracked until it ends.
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let busy = self.clock.busy();
        self.tracker.spawn(async move {
            f.await;
            drop(busy);
        });
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits (at most `limit`) for every task spawned so far, and any they spawn, to
    /// end. Answers `false` when the limit ran out first. New tasks may still be spawned
    /// after it (they are waited for by the next drain).
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn drain_waits_for_every_task() {
        let tasks = Tasks::new(Clock::system());
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..10u64 {
            let d = done.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(tasks.drain(Duration::from_secs(10)).await);
        assert_eq!(done.load(Ordering::SeqCst), 10);
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_manual_clock_is_not_settled_while_a_task_runs() {
        let clock = Clock::manual(0);
        let tasks = Tasks::new(clock.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = rx.await;
        });
        assert!(clock.settle().await.is_err());
        tx.send(()).unwrap();
        assert!(tasks.drain(Duration::from_secs(1)).await);
        clock.settle().await.unwrap();
    }
}
