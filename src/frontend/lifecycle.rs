//! The proxy-wide states operators steer from the admin console and signals: paused (new units
//! of work wait at the gate, units in flight finish) and stopping (graceful shutdown).

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Lifecycle {
    paused: AtomicBool,
    resumed: Notify,
    stopping: AtomicBool,
    stop_requested: Notify,
}

impl Lifecycle {
    /// PAUSE: units that start from now on wait for `resume`. True if it was not paused.
    pub fn pause(&self) -> bool {
        !self.paused.swap(true, Ordering::AcqRel)
    }

    /// RESUME: lets the waiting units go. True if it was paused.
    pub fn resume(&self) -> bool {
        let was = self.paused.swap(false, Ordering::AcqRel);
        self.resumed.notify_waiters();
        was
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Waits while paused: one atomic load when the gate is open (every lease passes here).
    pub async fn gate(&self) {
        while self.is_paused() {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable(); // registered before the check, so a RESUME is not missed
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }

    /// Asks the accept loop to shut down gracefully (SHUTDOWN); it also runs on signals.
    pub fn request_stop(&self) {
        self.stop_requested.notify_one();
    }

    /// Resolves once a stop was requested from the console.
    pub async fn stop_requested(&self) {
        self.stop_requested.notified().await;
    }

    /// The accept loop stopped accepting: sessions close at their next idle point.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.resume(); // waiting units run (or fail) rather than hold the shutdown
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "current_thread")]
    async fn paused_units_wait_until_resume() {
        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.gate().await; // open: passes at once
        assert!(lifecycle.pause());
        assert!(!lifecycle.pause(), "already paused");
        let waiting = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.gate().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(lifecycle.resume());
        waiting.await.unwrap();
        assert!(!lifecycle.resume(), "not paused any more");
    }
}
