//! A named shutdown handle, as mini-redis and Relay have: one place says "stop" (a signal, or a
//! worker that failed), every task can ask whether it was said and wait for it, a grace
//! deadline bounds how long the work in hand may take after it, and the tasks a binary spawns
//! through it are waited for before it exits (mini-redis's `shutdown_complete`, done with
//! tokio-util's `TaskTracker`). Both binaries use it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Cheap to clone; every clone sees the same trigger and tracks the same tasks.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
    grace: Duration,
    tasks: TaskTracker,
}

impl Shutdown {
    /// Not triggered yet; the work in hand gets `grace` after the trigger.
    pub fn new(grace: Duration) -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
            grace,
            tasks: TaskTracker::new(),
        }
    }

    /// Spawns `task`, tracked: [`Shutdown::tasks_done`] waits for it. A task meant to run
    /// until shutdown ends on [`Shutdown::triggered`] itself.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Resolves once every task of [`Shutdown::spawn`] has ended, or at the grace deadline,
    /// whichever comes first (`false`: some were still running; they are abandoned).
    pub async fn tasks_done(&self) -> bool {
        self.tasks.close();
        tokio::select! {
            () = self.tasks.wait() => true,
            () = self.deadline() => self.tasks.is_empty(),
        }
    }

    /// Triggers when `signal` resolves (the binaries pass [`signal`]).
    pub fn trigger_on(&self, signal: impl Future<Output = ()> + Send + 'static) {
        let this = self.clone();
        tokio::spawn(async move {
            signal.await;
            this.trigger();
        });
    }

    /// Says "stop" to every clone.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once triggered (at once if it was).
    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves the grace period after the trigger: past it, work in hand is abandoned.
    pub async fn deadline(&self) {
        self.triggered().await;
        tokio::time::sleep(self.grace).await;
    }

    /// Sleeps `d`, waking early on the trigger; true if it was triggered.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_triggered(),
            _ = self.triggered() => true,
        }
    }
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be installed: logged).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot install the SIGTERM/SIGINT handlers: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// Makes SIGHUP harmless (its default action ends the process): each one is logged with `what`
/// the process does about it. For a binary with nothing to reread; call it early in `main`.
pub fn log_hangups(what: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    log::info!("SIGHUP: {what}");
                }
            });
        }
        Err(e) => log::error!("cannot install the SIGHUP handler: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_see_one_trigger_and_the_deadline_follows_it() {
        let s = Shutdown::new(Duration::from_millis(10));
        let other = s.clone();
        assert!(!other.is_triggered());
        assert!(!other.sleep(Duration::from_millis(1)).await);
        s.trigger();
        assert!(other.is_triggered());
        other.triggered().await;
        other.deadline().await;
        assert!(other.sleep(Duration::from_secs(3600)).await);
    }

    #[tokio::test]
    async fn tasks_done_waits_for_the_tracked_tasks_up_to_the_deadline() {
        let s = Shutdown::new(Duration::from_millis(50));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = s.clone();
        s.spawn(async move {
            waiter.triggered().await;
            let _ = tx.send(());
        });
        let stuck = s.clone();
        s.trigger();
        assert!(!s.tasks.is_empty());
        // One task ends on the trigger; one that never ends is abandoned at the deadline.
        let never = stuck.spawn(std::future::pending::<()>());
        assert!(!s.tasks_done().await, "the stuck task was still running");
        assert!(rx.await.is_ok(), "the first task ran to its end");
        never.abort();
        let done = Shutdown::new(Duration::from_secs(3600));
        done.spawn(async {});
        done.trigger();
        assert!(done.tasks_done().await);
    }
}
