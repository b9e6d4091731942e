//! What the engine knows about its own health: whether the store answered
//! its last readiness probe, whether the writer is up and its last commit
//! succeeded (readiness), and whether the engine has failed for good (a
//! supervisor gave up), which the process answers by exiting non-zero so
//! that its orchestrator restarts it.
//!
//! Readiness is read from these flags, never by calling the store: the
//! store is probed on a schedule of its own ([`STORE_PROBE_INTERVAL_MS`],
//! `Engine::start`), so `/readyz`, which anyone may call as often as they
//! like, costs the store nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How often the store is probed with a small write.
pub(crate) const STORE_PROBE_INTERVAL_MS: u64 = 5_000;

pub(crate) struct Health {
    /// Why the store's last probe failed; `None` when it succeeded.
    store_probe_failure: Mutex<Option<String>>,
    /// The writer actor is running (false between its crash and restart).
    writer_up: AtomicBool,
    /// The writer's last commit attempt succeeded.
    writer_committing: AtomicBool,
    /// Why the engine gave up, once it has.
    failure: Mutex<Option<String>>,
    failed: Notify,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            store_probe_failure: Mutex::new(None),
            writer_up: AtomicBool::new(false),
            writer_committing: AtomicBool::new(true),
            failure: Mutex::new(None),
            failed: Notify::new(),
        }
    }

    pub(crate) fn set_writer_up(&self, up: bool) {
        self.writer_up.store(up, Ordering::Release);
    }

    pub(crate) fn writer_up(&self) -> bool {
        self.writer_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_writer_committing(&self, ok: bool) {
        self.writer_committing.store(ok, Ordering::Relaxed);
    }

    pub(crate) fn set_store_probe(&self, failure: Option<String>) {
        *self.store_probe_failure.lock() = failure;
    }

    /// Why the engine cannot take messages now, if it cannot.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if let Some(failure) = self.failure.lock().clone() {
            return Some(format!("the engine failed: {failure}"));
        }
        if let Some(failure) = self.store_probe_failure.lock().clone() {
            return Some(format!("store not ready: {failure}"));
        }
        if !self.writer_up() {
            return Some("the writer is restarting".into());
        }
        if !self.writer_committing.load(Ordering::Relaxed) {
            return Some("the writer's last commit failed".into());
        }
        None
    }

    /// Gives up for good: readiness stays false, and [`Health::wait_failed`]
    /// returns. The first reason is kept.
    pub(crate) fn fail(&self, reason: String) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!(reason = %reason, "the engine failed; the process should exit");
            *failure = Some(reason);
            self.failed.notify_waiters();
            self.failed.notify_one();
        }
    }

    /// Resolves with the reason once the engine has failed.
    pub(crate) async fn wait_failed(&self) -> String {
        loop {
            let notified = self.failed.notified();
            if let Some(reason) = self.failure.lock().clone() {
                return reason;
            }
            notified.await;
        }
    }
}
