//! A named shutdown handle, as mini-redis and Relay have: one place says "stop" (a signal, or a
//! worker that failed), every task can ask whether it was said and wait for it, and a grace
//! deadline bounds how long the work in hand may take after it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Cheap to clone; every clone sees the same trigger.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
    grace: Duration,
}

impl Shutdown {
    /// Not triggered yet; the work in hand gets `grace` after the trigger.
    pub fn new(grace: Duration) -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
            grace,
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
}
