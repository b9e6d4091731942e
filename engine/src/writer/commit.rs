//! One batch into the store.
//!
//! Every store call has a deadline (`--store-timeout-ms`, applied by the
//! engine's store wrapper, `store/deadline.rs`): a call that hangs counts
//! as failed. A failed commit is retried with exponential
//! backoff and jitter, for as long as the store is down: nothing is lost
//! and nothing is acknowledged meanwhile. But a batch can also fail
//! because of one of its messages (a poison message) while the store
//! itself is fine; retrying it forever would block every room. So after
//! [`ISOLATE_AFTER_ATTEMPTS`] refusals (errors; a timeout is the store's
//! slowness, not the batch's fault) the writer probes the store with a
//! write of its own. If the probe fails, the store is down, and the batch
//! is retried with backoff. If it succeeds, the batch is tried once more
//! at once (the refusals may have been an outage that just ended); only
//! if that is refused too is the batch at fault: it is split in halves,
//! committed in order, and a single message refused right after the store
//! took a write is refused with `internal`.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Outcome, WriterShared};
use crate::metrics::{POISON_MESSAGES, STORE_COMMIT_DURATION, STORE_COMMIT_FAILURES};
use crate::store::{Appended, NewMessage, StoreError};

const RETRY_BACKOFF_MIN_MS: u64 = 10;
const RETRY_BACKOFF_MAX_MS: u64 = 2_000;
/// Refused attempts of one batch (errors, not timeouts) before the writer
/// checks whether the store or the batch is at fault.
pub(crate) const ISOLATE_AFTER_ATTEMPTS: u32 = 3;

/// Commits `batch`; one outcome per message, in order.
pub(super) async fn commit(shared: &WriterShared, batch: &[NewMessage]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
    // Ranges still to commit, in order: splitting keeps each sender's
    // messages numbered in the order they were sent.
    let mut todo: VecDeque<Range<usize>> = VecDeque::new();
    todo.push_back(0..batch.len());
    while let Some(range) = todo.pop_front() {
        match commit_range(shared, &batch[range.clone()]).await {
            Committed::Stored(stored) => {
                for (slot, appended) in outcomes[range].iter_mut().zip(stored) {
                    *slot = Some(Outcome::Appended(appended));
                }
            }
            Committed::BatchAtFault if range.len() == 1 => {
                let m = &batch[range.start];
                tracing::error!(room = %m.room, from = %m.from, cid = %m.cid, "refusing a message the store keeps refusing");
                POISON_MESSAGES.counter().increment(1);
                outcomes[range.start] = Some(Outcome::Refused);
            }
            Committed::BatchAtFault => {
                let middle = range.start + range.len() / 2;
                todo.push_front(middle..range.end);
                todo.push_front(range.start..middle);
            }
        }
    }
    outcomes.into_iter().map(|o| o.expect("every message of the batch has an outcome")).collect()
}

enum Committed {
    Stored(Vec<Appended>),
    /// The store accepts writes, but not this batch.
    BatchAtFault,
}

async fn commit_range(shared: &WriterShared, batch: &[NewMessage]) -> Committed {
    let mut backoff_ms = RETRY_BACKOFF_MIN_MS;
    // Failed attempts that the store answered with an error; a timeout is
    // the store's slowness, never the batch's fault.
    let mut refusals = 0u32;
    // The store took the probe's write just before this attempt.
    let mut store_was_up = false;
    loop {
        let started = Instant::now();
        let reason = match shared.store.append_batch(batch).await {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                STORE_COMMIT_DURATION.histogram().record(started.elapsed().as_secs_f64());
                shared.health.set_writer_committing(true);
                return Committed::Stored(outcomes);
            }
            Ok(outcomes) => {
                tracing::error!(
                    expected = batch.len(),
                    got = outcomes.len(),
                    "store returned a wrong number of outcomes"
                );
                refusals += 1;
                "error"
            }
            Err(StoreError::Timeout(e)) => {
                tracing::warn!(error = %e, batch = batch.len(), "store commit timed out; retrying");
                "timeout"
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), refusals, "store commit failed; retrying");
                refusals += 1;
                "error"
            }
        };
        shared.health.set_writer_committing(false);
        STORE_COMMIT_FAILURES.counter_with(reason).increment(1);
        if reason == "error" && store_was_up {
            // Refused right after the store took the probe's write: the
            // batch, not the store, is at fault.
            shared.health.set_writer_committing(true);
            return Committed::BatchAtFault;
        }
        if refusals >= ISOLATE_AFTER_ATTEMPTS && store_accepts_writes(shared).await {
            // The store is up (again): try the batch once more, at once; the
            // earlier refusals may have been the store's, not the batch's.
            store_was_up = true;
            continue;
        }
        store_was_up = false;
        let jitter_ms = rand::rng().random_range(0..=backoff_ms / 2);
        tokio::time::sleep(Duration::from_millis(backoff_ms + jitter_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MAX_MS);
    }
}

/// A write of the store's own readiness probe (within the store's deadline).
async fn store_accepts_writes(shared: &WriterShared) -> bool {
    shared.store.check_ready().await.is_ok()
}
