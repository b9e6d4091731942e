//! The writer: every message goes through here to the store, in batches,
//! then to its room and its sender.
//!
//! Adaptive group commit: one batch is being committed while the next
//! accumulates in the queue; `recv_many` takes everything waiting (up to
//! `writer_batch_max`). An idle system commits a single message at once; a
//! busy one commits more per fsync. No timer ever adds latency.
//!
//! - `mod.rs`: what senders hold ([`WriterHandle`]: the bounded queue, the
//!   writer's mailbox) and what survives the writer's actor
//!   ([`WriterShared`]: the queue's receiving end and the batch in flight).
//! - `actor.rs`: [`WriterActor`], supervised by the engine supervisor; one
//!   batch per message it handles.
//! - `commit.rs`: one batch into the store: a deadline on every call,
//!   retries with backoff, and isolation of a poison message.
//!
//! After a commit each room gets one `Publish` with its new messages, in
//! seq order, then each sender gets its `ack`. A failed commit is retried
//! until it succeeds (acks wait, and the full queue pushes back on
//! senders); a message that fails alone while the store accepts other
//! writes is refused with `internal`.

mod actor;
mod commit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use viche_protocol::{ErrorCode, Msg, ServerFrame};

pub(crate) use actor::WriterActor;

use crate::cluster::forward::{ForwardReply, MOVED};
use crate::cluster::Cluster;
use crate::delivery::{SessionHandle, UserShare};
use crate::health::Health;
use crate::metrics::WRITER_REJECTED;
use crate::room::{InFlight, RoomHandle};
use crate::store::{Appended, NewMessage, Store};

pub(crate) struct WriteRequest {
    pub message: NewMessage,
    /// The room the message goes to, kept from stopping until the message
    /// is published there (the guard ends when the request is dropped).
    pub in_flight: InFlight,
    /// The sender's share of the queue, given back when the request ends
    /// (none for a message another node forwarded: that node holds it).
    pub _user_write: Option<UserWrite>,
    /// Who gets the `ack`, and the `ref` of its `send`.
    pub ack_to: AckTo,
    pub req: u64,
    /// When the session decoded the `send`: the start of send→deliver latency.
    pub received_at: Instant,
}

/// Where a message's answer (`ack` or error) goes.
pub(crate) enum AckTo {
    /// A session of this node.
    Session(Arc<SessionHandle>),
    /// The node that forwarded it, on this reply subject.
    Node(String),
}

/// One message of a user in the writer's hands: counted against that user's
/// share of the queue (`writer_queue_user_max`) until dropped.
pub(crate) struct UserWrite(Arc<UserShare>);

impl UserWrite {
    pub(crate) fn take(share: &Arc<UserShare>, max: usize) -> Option<Self> {
        UserShare::try_take(&share.writes_pending, max).then(|| Self(share.clone()))
    }
}

impl Drop for UserWrite {
    fn drop(&mut self) {
        UserShare::give_back(&self.0.writes_pending);
    }
}

/// The writer's state that outlives its actor: a restarted writer finds
/// the queue and the batch its predecessor was committing.
pub(crate) struct WriterShared {
    rx: tokio::sync::Mutex<mpsc::Receiver<WriteRequest>>,
    /// The batch being committed. Parked here (not in the actor) so that a
    /// writer that panics mid-commit leaves it to its successor, which
    /// commits it again: the store's dedupe by (from, cid) makes that
    /// retry answer each message's first seq.
    in_flight: Mutex<Vec<WriteRequest>>,
    /// Messages submitted and not yet acked and published.
    pending: AtomicUsize,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    batch_max: usize,
    /// In a cluster: where each room's new messages go to the other nodes,
    /// and who owns which room.
    cluster: Option<Arc<Cluster>>,
}

#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
    shared: Arc<WriterShared>,
}

impl WriterHandle {
    /// Queues a message for the store. `Err(Overloaded)` when the writer's
    /// queue is full (the store is slow or down) or the writer is being
    /// restarted: the sender should retry.
    pub fn submit(&self, request: WriteRequest) -> Result<(), ErrorCode> {
        if !self.shared.health.writer_up() {
            WRITER_REJECTED.counter().increment(1);
            return Err(ErrorCode::Overloaded);
        }
        match self.tx.try_send(request) {
            Ok(()) => {
                self.shared.pending.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                WRITER_REJECTED.counter().increment(1);
                Err(ErrorCode::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ErrorCode::Overloaded),
        }
    }

    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
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

    pub(crate) fn shared(&self) -> &Arc<WriterShared> {
        &self.shared
    }
}

/// The queue and the state the writer's actors share. The actor itself is
/// started by the engine supervisor.
pub(crate) fn writer_parts(
    store: Arc<dyn Store>,
    health: Arc<Health>,
    queue_max: usize,
    batch_max: usize,
    cluster: Option<Arc<Cluster>>,
) -> WriterHandle {
    assert!(queue_max > 0 && batch_max > 0);
    let (tx, rx) = mpsc::channel(queue_max);
    let shared = Arc::new(WriterShared {
        rx: tokio::sync::Mutex::new(rx),
        in_flight: Mutex::new(Vec::new()),
        pending: AtomicUsize::new(0),
        store,
        health,
        batch_max,
        cluster,
    });
    WriterHandle { tx, shared }
}

/// What became of one message of a batch.
// `Refused` is rare and outcomes live for one batch: boxing every stored
// message to shrink it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    Appended(Appended),
    /// Isolated as a poison message: refused with `internal`.
    Refused,
}

/// Hands new messages to their rooms (one `Publish` per room, seq order),
/// then answers every sender. Publishing first means that once a client
/// holds an `ack`, any `join` it (or anyone it told) sends later is
/// ordered after the message in the room's queue, so `ok.seq` includes it.
/// In a cluster each room's messages are also relayed to the other nodes.
fn publish(requests: &[WriteRequest], outcomes: Vec<Outcome>, cluster: Option<&Cluster>) {
    debug_assert_eq!(requests.len(), outcomes.len());
    /// A room's new messages of this batch, with when each `send` was decoded.
    type RoomBatch = (Arc<RoomHandle>, Vec<(Msg, Option<Instant>)>);
    let mut per_room: HashMap<*const RoomHandle, RoomBatch> = HashMap::new();
    // Each answer, with the node now holding the room when it moved.
    let mut answers: Vec<(ServerFrame, Option<String>)> = Vec::with_capacity(requests.len());
    for (request, outcome) in requests.iter().zip(outcomes) {
        let msg = match outcome {
            Outcome::Appended(Appended::Stored(msg)) => {
                crate::metrics::hot().messages_stored.increment(1);
                msg
            }
            // A duplicate is usually a client's retry of a message already
            // published, which the room skips by seq. But it can also be
            // this batch's own message, stored by an attempt whose
            // acknowledgement failed (or by a writer that crashed after
            // committing): that one was never published.
            Outcome::Appended(Appended::Duplicate(msg)) => msg,
            Outcome::Refused => {
                answers.push((
                    ServerFrame::error(
                        Some(request.req),
                        ErrorCode::Internal,
                        "this message could not be stored; it was not delivered",
                    ),
                    None,
                ));
                continue;
            }
            // A v1.1 event (or reply) its target does not allow.
            Outcome::Appended(Appended::Refused(code, why)) => {
                answers.push((ServerFrame::error(Some(request.req), code, why), None));
                continue;
            }
            // Fenced: another node claimed the room and stored in it.
            Outcome::Appended(Appended::Moved(holder)) => {
                if let Some(cluster) = cluster {
                    cluster.owners.moved(&request.message.room, &holder);
                }
                answers.push((ServerFrame::error(Some(request.req), ErrorCode::Overloaded, MOVED), Some(holder)));
                continue;
            }
        };
        answers.push((
            ServerFrame::Ack {
                req: request.req,
                room: msg.room.clone(),
                seq: msg.seq,
                cid: msg.cid.clone(),
                ts: msg.ts,
            },
            None,
        ));
        let room = request.in_flight.room();
        if *msg.room == *room.name {
            per_room
                .entry(Arc::as_ptr(room))
                .or_insert_with(|| (room.clone(), Vec::new()))
                .1
                .push((msg, Some(request.received_at)));
        }
    }
    for (_, (room, mut msgs)) in per_room {
        msgs.sort_by_key(|(m, _)| m.seq);
        if let Some(cluster) = cluster {
            let refs: Vec<&Msg> = msgs.iter().map(|(m, _)| m).collect();
            cluster.relay.msgs(&room.name, &refs);
        }
        room.publish(msgs);
    }
    for (request, (answer, moved_to)) in requests.iter().zip(answers) {
        match &request.ack_to {
            AckTo::Session(session) => {
                let _ = session.send(&answer);
            }
            AckTo::Node(reply) => {
                let Some(cluster) = cluster else { continue };
                let reply_frame = match moved_to {
                    Some(holder) => ForwardReply::Moved { holder },
                    None => ForwardReply::of(&answer),
                };
                cluster.relay.reply(reply.clone(), &reply_frame);
            }
        }
    }
    // The caller drops the requests, and with them their InFlight guards:
    // only then may a room count as idle, its publish already queued.
}
