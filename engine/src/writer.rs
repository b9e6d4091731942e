//! The writer: every message goes through here to the store, in batches.
//!
//! Adaptive group commit: one batch is being committed while the next
//! accumulates in the queue; `recv_many` takes everything waiting (up to
//! `writer_batch_max`). An idle system commits a single message at once; a
//! busy one commits more per fsync. No timer ever adds latency.
//!
//! A tokio task with a bounded channel rather than a ractor actor, because
//! it needs exactly what ractor's unbounded one-at-a-time mailbox lacks: a
//! bound (a full queue answers `overloaded`) and draining everything
//! waiting in one step.
//!
//! After a commit: each sender gets its `ack` directly in its outbox, and
//! each room gets one `Publish` with its new messages, in seq order. A
//! failed commit is retried with backoff until it succeeds; acks wait,
//! and meanwhile the full queue pushes back on senders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;
use viche_protocol::{ErrorCode, Msg, ServerFrame};

use crate::clock::now_ms;
use crate::delivery::SessionHandle;
use crate::metrics::{STORE_COMMIT_DURATION, STORE_COMMIT_FAILURES, WRITER_BATCH_SIZE, WRITER_REJECTED};
use crate::room::{InFlight, RoomHandle};
use crate::store::{Appended, NewMessage, Store};

pub(crate) struct WriteRequest {
    pub message: NewMessage,
    /// The room the message goes to, kept from stopping until the message
    /// is published there (the guard ends when the request is dropped).
    pub in_flight: InFlight,
    /// Who gets the `ack`, and the `ref` of its `send`.
    pub ack_to: Arc<SessionHandle>,
    pub req: u64,
    /// When the session decoded the `send`: the start of send→deliver latency.
    pub received_at: Instant,
}

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
    healthy: Arc<AtomicBool>,
    /// Messages submitted and not yet acked and published.
    pending: Arc<AtomicUsize>,
}

impl WriterHandle {
    /// Queues a message for the store. `Err(Overloaded)` when the writer's
    /// queue is full (the store is slow or down): the sender should retry.
    pub fn submit(&self, request: WriteRequest) -> Result<(), ErrorCode> {
        match self.tx.try_send(request) {
            Ok(()) => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                WRITER_REJECTED.counter().increment(1);
                Err(ErrorCode::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ErrorCode::Overloaded),
        }
    }

    /// False while the last commit failed (readiness).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Messages in the queue now, not yet taken by the writer (sampled
    /// into `viche_writer_queue_depth` at each scrape).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's bound (`--writer-queue-max`).
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// Starts the writer. The task ends when every `WriterHandle` is dropped
/// and the queue is written out: that is how shutdown finishes the writes
/// in flight.
pub(crate) fn spawn_writer(
    store: Arc<dyn Store>,
    queue_max: usize,
    batch_max: usize,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    assert!(queue_max > 0 && batch_max > 0);
    let (tx, rx) = mpsc::channel(queue_max);
    let healthy = Arc::new(AtomicBool::new(true));
    let pending = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(run(store, rx, batch_max, healthy.clone(), pending.clone()));
    (WriterHandle { tx, healthy, pending }, task)
}

const RETRY_BACKOFF_MIN_MS: u64 = 10;
const RETRY_BACKOFF_MAX_MS: u64 = 2_000;

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<WriteRequest>,
    batch_max: usize,
    healthy: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
) {
    let mut requests: Vec<WriteRequest> = Vec::with_capacity(batch_max);
    let mut batch: Vec<NewMessage> = Vec::with_capacity(batch_max);
    loop {
        requests.clear();
        if rx.recv_many(&mut requests, batch_max).await == 0 {
            return; // every handle dropped and the queue is empty
        }
        let ts_ms = now_ms();
        batch.clear();
        batch.extend(requests.iter().map(|r| NewMessage { ts_ms, ..r.message.clone() }));

        let outcomes = commit_with_retry(store.as_ref(), &batch, &healthy).await;
        debug_assert_eq!(outcomes.len(), requests.len());
        WRITER_BATCH_SIZE.histogram().record(batch.len() as f64);

        publish(&requests, outcomes);
        let done = requests.len();
        requests.clear(); // ends each request's InFlight guard
        pending.fetch_sub(done, Ordering::Relaxed);
    }
}

async fn commit_with_retry(store: &dyn Store, batch: &[NewMessage], healthy: &AtomicBool) -> Vec<Appended> {
    let mut backoff_ms = RETRY_BACKOFF_MIN_MS;
    loop {
        let started = Instant::now();
        match store.append_batch(batch).await {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                STORE_COMMIT_DURATION.histogram().record(started.elapsed().as_secs_f64());
                healthy.store(true, Ordering::Relaxed);
                return outcomes;
            }
            Ok(outcomes) => {
                tracing::error!(
                    expected = batch.len(),
                    got = outcomes.len(),
                    "store returned a wrong number of outcomes; retrying"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), backoff_ms, "store commit failed; retrying");
            }
        }
        healthy.store(false, Ordering::Relaxed);
        STORE_COMMIT_FAILURES.counter().increment(1);
        let jitter_ms = rand::rng().random_range(0..=backoff_ms / 2);
        tokio::time::sleep(Duration::from_millis(backoff_ms + jitter_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MAX_MS);
    }
}

/// Hands new messages to their rooms (one `Publish` per room, seq order),
/// then acks every sender. Publishing first means that once a client holds
/// an `ack`, any `join` it (or anyone it told) sends later is ordered after
/// the message in the room's mailbox, so `ok.seq` includes it.
fn publish(requests: &[WriteRequest], outcomes: Vec<Appended>) {
    /// A room's new messages of this batch, with when each `send` was decoded.
    type RoomBatch = (Arc<RoomHandle>, Vec<(Msg, Instant)>);
    let mut per_room: HashMap<*const RoomHandle, RoomBatch> = HashMap::new();
    let mut acks = Vec::with_capacity(requests.len());
    for (request, outcome) in requests.iter().zip(outcomes) {
        let msg = match outcome {
            Appended::Stored(msg) => {
                crate::metrics::hot().messages_stored.increment(1);
                msg
            }
            // A duplicate is usually a client's retry of a message already
            // published, which the room skips by seq. But it can also be
            // this batch's own message, stored by an attempt whose
            // acknowledgement failed: that one was never published.
            Appended::Duplicate(msg) => msg,
        };
        acks.push(ServerFrame::Ack {
            req: request.req,
            room: msg.room.clone(),
            seq: msg.seq,
            cid: msg.cid.clone(),
            ts: msg.ts,
        });
        let room = request.in_flight.room();
        if *msg.room == *room.name {
            per_room
                .entry(Arc::as_ptr(room))
                .or_insert_with(|| (room.clone(), Vec::new()))
                .1
                .push((msg, request.received_at));
        }
    }
    for (_, (room, mut msgs)) in per_room {
        msgs.sort_by_key(|(m, _)| m.seq);
        room.publish(msgs);
    }
    for (request, ack) in requests.iter().zip(&acks) {
        let _ = request.ack_to.send(ack);
    }
    // The caller drops the requests, and with them their InFlight guards:
    // only then may a room count as idle, its publish already queued.
}
