//! Forwarding: a message for a room another node owns is stored by that
//! node. One writer per room keeps the room's seqs without collisions
//! (several writers of one room collide on every batch, and each collision
//! costs re-reads: docs/benchmarks.md, "A cluster on one machine").
//!
//! The sending side ([`Forwarder`]): a session's `send`, `dm`, `edit`,
//! `delete` or `react` for a room owned elsewhere is published on the
//! owner's subject (`PREFIX.node.NODE.write`) with a reply subject of this
//! node's (`PREFIX.reply.NODE.ID`). The session publishes in the order its
//! client sent, and the owner takes its subject's messages in order, so a
//! session's messages keep their order. The answer (the `ack`, or the
//! owner's error) reaches the session through one subscription for all
//! replies, matched by id. Bounded: [`FORWARDS_PENDING_MAX`] forwards wait
//! per node (and each user's share of them is its writer share, as on one
//! node); each waits at most [`FORWARD_TIMEOUT_MS`], then its client gets
//! `overloaded` (the message may be stored: a retry with the same cid is
//! answered with its seq). NATS unreachable, or no node listening on the
//! owner's subject: `overloaded` at once.
//!
//! The owner's side ([`serve`]): what arrives on its subject is checked as
//! a session's frame would be, handed to its writer in arrival order
//! (one older than the forwarder's deadline is dropped: its client was
//! told `overloaded` already, and a late store would surprise it)
//! (opening the room here, which also relays the stored messages to every
//! node with the room open), and answered from the writer through the
//! relay's queue once stored. A node asked to write a room it does not own
//! in its own view answers `overloaded`: views differ only for a failover
//! time, and the store fences what slips through.
//!
//! What is not forwarded: `join`, `leave` and `typing` are done by the
//! session's own node (each node keeps the room's members there and relays
//! presence and typing, `relay.rs`), which gives their clients the same
//! answers without a hop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use viche_protocol::{validate, ErrorCode, ServerFrame};

use super::{Cluster, NodeId};
use crate::delivery::SessionHandle;
use crate::metrics::{CLUSTER_FORWARDED, CLUSTER_FORWARDS_SERVED, CLUSTER_FORWARD_DURATION};
use crate::refusal::Refusal;
use crate::room::{check_access, Rooms};
use crate::store::{Event, NewMessage};
use crate::writer::{AckTo, UserWrite, WriteRequest, WriterHandle};

/// How long a forwarded message waits for its owner's answer.
pub const FORWARD_TIMEOUT_MS: u64 = 5_000;
/// Forwards waiting for an answer on one node, at most.
pub const FORWARDS_PENDING_MAX: usize = 16_384;
/// A forward older than this, by the owner's clock, is dropped unstored:
/// its sender's deadline, plus the clock skew the nodes may have.
const FORWARD_LATE_MS: u64 = FORWARD_TIMEOUT_MS + super::CLOCK_SKEW_MS;
/// How long handing a forward to the NATS client may take (its buffer is
/// full only when NATS is away).
const FORWARD_PUBLISH_WAIT_MS: u64 = 1_000;
/// How often forwards past their deadline are answered.
const FORWARD_SWEEP_MS: u64 = 250;

/// A message for the room's owner.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    /// When the forwarding node sent it (ms since the epoch): the owner
    /// drops a forward older than [`FORWARD_LATE_MS`] (the NATS client
    /// may have held it through an outage), which its sender was already
    /// answered `overloaded` for.
    sent_ms: u64,
    room: String,
    from: String,
    cid: String,
    body: String,
    event: Event,
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Ack {
        room: String,
        seq: u64,
        cid: String,
        ts: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The owner lost the room to `holder` (fenced by the store).
    Moved {
        holder: String,
    },
}

impl ForwardReply {
    /// The answer the writer gave a forwarded message, for the wire.
    pub(crate) fn of(frame: &ServerFrame) -> Self {
        match frame {
            ServerFrame::Ack { room, seq, cid, ts, .. } => {
                ForwardReply::Ack { room: room.clone(), seq: *seq, cid: cid.clone(), ts: *ts }
            }
            ServerFrame::Error { code, message, .. } => ForwardReply::Error { code: *code, message: message.clone() },
            other => ForwardReply::Error {
                code: ErrorCode::Internal,
                message: format!("the owner answered {:?}", other.kind()),
            },
        }
    }
}

/// A forward waiting for its answer.
struct Pending {
    /// The node it was forwarded to.
    owner: NodeId,
    session: Arc<SessionHandle>,
    req: u64,
    room: Arc<str>,
    started: Instant,
    /// The sender's writer share, given back with the answer.
    _user_write: UserWrite,
}

/// The forwards waiting for an answer, by id: at most `max`.
struct PendingForwards {
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Pending>>,
    max: usize,
}

impl PendingForwards {
    fn new(max: usize) -> Self {
        Self { next_id: AtomicU64::new(1), map: Mutex::new(HashMap::new()), max }
    }

    /// Its id, or `None` when `max` wait already (it is dropped).
    fn insert(&self, pending: Pending) -> Option<u64> {
        let mut map = self.map.lock();
        if map.len() >= self.max {
            drop(map);
            drop(pending); // not under the lock
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(id, pending);
        Some(id)
    }

    fn remove(&self, id: u64) -> Option<Pending> {
        self.map.lock().remove(&id)
    }

    /// Removes and returns the forwards `which` picks.
    fn take(&self, which: impl Fn(&Pending) -> bool) -> Vec<Pending> {
        let mut map = self.map.lock();
        let ids: Vec<u64> = map.iter().filter(|(_, p)| which(p)).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| map.remove(&id)).collect()
    }
}

/// This node's forwards in flight.
pub(crate) struct Forwarder {
    client: async_nats::Client,
    prefix: String,
    reply_prefix: String,
    pending: PendingForwards,
}

impl Forwarder {
    /// The forwarder, its subscription to replies, and its deadline sweep.
    pub(crate) async fn start(
        client: async_nats::Client,
        prefix: &str,
        node_id: &NodeId,
        owners: Arc<super::Owners>,
    ) -> anyhow::Result<Arc<Self>> {
        let reply_prefix = format!("{prefix}.reply.{node_id}");
        let replies = client.subscribe(format!("{reply_prefix}.*")).await?;
        let forwarder = Arc::new(Self {
            client,
            prefix: prefix.to_owned(),
            reply_prefix,
            pending: PendingForwards::new(FORWARDS_PENDING_MAX),
        });
        tokio::spawn(take_replies(Arc::downgrade(&forwarder), replies, owners));
        let sweeper = Arc::downgrade(&forwarder);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(FORWARD_SWEEP_MS));
            loop {
                tick.tick().await;
                let Some(forwarder) = sweeper.upgrade() else { return };
                forwarder.sweep();
            }
        });
        Ok(forwarder)
    }

    /// Forwards a message to `owner`; its answer reaches `session` later.
    /// Refused (`overloaded`) when NATS is unreachable or too many forwards
    /// wait.
    pub(crate) async fn forward(
        &self,
        owner: &NodeId,
        session: &Arc<SessionHandle>,
        req: u64,
        message: NewMessage,
        user_write: UserWrite,
    ) -> Result<(), Refusal> {
        let refused = |why: &'static str| {
            CLUSTER_FORWARDED.counter_with("refused").increment(1);
            Err(Refusal::new(ErrorCode::Overloaded, why))
        };
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return refused("this room is served by another node, which cannot be reached now; retry later");
        }
        let forward = Forward {
            sent_ms: crate::clock::now_ms(),
            room: message.room.to_string(),
            from: message.from.to_string(),
            cid: message.cid,
            body: message.body,
            event: message.event,
        };
        let payload = match rmp_serde::to_vec_named(&forward) {
            Ok(payload) => payload,
            Err(e) => return Err(Refusal::internal(format!("encoding a forward: {e}"))),
        };
        let entry = Pending {
            owner: owner.clone(),
            session: session.clone(),
            req,
            room: message.room,
            started: Instant::now(),
            _user_write: user_write,
        };
        let Some(id) = self.pending.insert(entry) else {
            return refused("too many messages wait for other nodes; retry later");
        };
        let publish = self.client.publish_with_reply(
            format!("{}.node.{owner}.write", self.prefix),
            format!("{}.{id}", self.reply_prefix),
            payload.into(),
        );
        let sent = tokio::time::timeout(Duration::from_millis(FORWARD_PUBLISH_WAIT_MS), publish).await;
        if !matches!(sent, Ok(Ok(()))) {
            drop(self.pending.remove(id));
            return refused("this room is served by another node, which cannot be reached now; retry later");
        }
        Ok(())
    }

    /// Answers the forwards past their deadline with `overloaded`.
    fn sweep(&self) {
        let deadline = Duration::from_millis(FORWARD_TIMEOUT_MS);
        for p in self.pending.take(|p| p.started.elapsed() >= deadline) {
            CLUSTER_FORWARDED.counter_with("timeout").increment(1);
            let _ = p.session.send(&ServerFrame::error(
                Some(p.req),
                ErrorCode::Overloaded,
                format!(
                    "the node serving {:?} did not answer within {FORWARD_TIMEOUT_MS} ms; retry with the same cid (it is stored at most once)",
                    p.room
                ),
            ));
        }
    }

    /// `node` left the live set: what waits for its answer will not get
    /// one (the room's new owner may have stored it, if it got there).
    pub(crate) fn node_gone(&self, node: &NodeId) {
        for p in self.pending.take(|p| p.owner == *node) {
            CLUSTER_FORWARDED.counter_with("no_owner").increment(1);
            let _ = p.session.send(&ServerFrame::error(
                Some(p.req),
                ErrorCode::Overloaded,
                "the node serving this room is gone; retry with the same cid (another node takes the room over)",
            ));
        }
    }
}

/// Answers each forward as its reply arrives.
async fn take_replies(
    forwarder: std::sync::Weak<Forwarder>,
    mut replies: async_nats::Subscriber,
    owners: Arc<super::Owners>,
) {
    while let Some(reply) = replies.next().await {
        let Some(forwarder) = forwarder.upgrade() else { return };
        let id = reply.subject.rsplit('.').next().and_then(|id| id.parse::<u64>().ok());
        let Some(p) = id.and_then(|id| forwarder.pending.remove(id)) else {
            continue; // answered already (past its deadline), or junk
        };
        let no_responders = reply.status == Some(async_nats::StatusCode::NO_RESPONDERS);
        let (outcome, frame) = match rmp_serde::from_slice::<ForwardReply>(&reply.payload) {
            _ if no_responders => (
                "no_owner",
                ServerFrame::error(
                    Some(p.req),
                    ErrorCode::Overloaded,
                    "the node serving this room is gone; retry (another node takes the room over shortly)",
                ),
            ),
            Ok(ForwardReply::Ack { room, seq, cid, ts }) => {
                ("ack", ServerFrame::Ack { req: p.req, room, seq, cid, ts })
            }
            Ok(ForwardReply::Error { code, message }) => ("error", ServerFrame::error(Some(p.req), code, message)),
            Ok(ForwardReply::Moved { holder }) => {
                owners.moved(&p.room, &holder);
                ("moved", ServerFrame::error(Some(p.req), ErrorCode::Overloaded, MOVED))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a forward's reply did not decode");
                ("error", ServerFrame::error(Some(p.req), ErrorCode::Internal, "the room's node answered junk"))
            }
        };
        CLUSTER_FORWARDED.counter_with(outcome).increment(1);
        CLUSTER_FORWARD_DURATION.histogram().record(p.started.elapsed().as_secs_f64());
        let _ = p.session.send(&frame);
    }
}

/// What a client whose message met a moved room is told.
pub(crate) const MOVED: &str = "this room is now served by another node; retry";

/// Serves this node's subject: messages other nodes forward to it as the
/// owner of their room, handed to the writer in arrival order.
pub(crate) async fn serve(
    cluster: Arc<Cluster>,
    rooms: Rooms,
    writer: WriterHandle,
    body_bytes_max: usize,
) -> anyhow::Result<()> {
    let subject = format!("{}.node.{}.write", cluster.prefix, cluster.node_id());
    let mut forwards = cluster.subscribe(subject).await?;
    tokio::spawn(async move {
        while let Some(message) = forwards.next().await {
            let Some(reply) = message.reply.clone() else {
                CLUSTER_FORWARDS_SERVED.counter_with("junk").increment(1);
                continue;
            };
            let answer = match rmp_serde::from_slice::<Forward>(&message.payload) {
                Ok(forward) if crate::clock::now_ms() > forward.sent_ms.saturating_add(FORWARD_LATE_MS) => {
                    CLUSTER_FORWARDS_SERVED.counter_with("late").increment(1);
                    continue;
                }
                Ok(forward) => match check(&forward, body_bytes_max) {
                    Ok(()) => take(&cluster, &rooms, &writer, forward, reply.to_string()).await,
                    Err(refusal) => {
                        CLUSTER_FORWARDS_SERVED.counter_with("junk").increment(1);
                        Some(ForwardReply::Error { code: refusal.code, message: refusal.message.into_owned() })
                    }
                },
                Err(e) => {
                    CLUSTER_FORWARDS_SERVED.counter_with("junk").increment(1);
                    Some(ForwardReply::Error {
                        code: ErrorCode::Invalid,
                        message: format!("a forward that does not decode: {e}"),
                    })
                }
            };
            if let Some(answer) = answer {
                cluster.relay.reply(reply.to_string(), &answer);
            }
        }
        tracing::error!("cluster: the subscription to this node's forwards ended");
    });
    Ok(())
}

/// A forward checked as its session would have checked the frame.
fn check(forward: &Forward, body_bytes_max: usize) -> Result<(), Refusal> {
    if !validate::is_valid_username(&forward.from) {
        return Err(Refusal::new(ErrorCode::Invalid, "a forward from an invalid user"));
    }
    check_access(&forward.from, &forward.room)?;
    if !validate::is_valid_cid(&forward.cid) {
        return Err(Refusal::new(ErrorCode::Invalid, "cid must be 1 to 64 bytes"));
    }
    let needs_body = matches!(forward.event, Event::Message { .. } | Event::Edit { .. });
    if needs_body && validate::check_body(&forward.body, body_bytes_max).is_err() {
        return Err(Refusal::new(ErrorCode::Invalid, format!("body must be 1 to {body_bytes_max} bytes")));
    }
    Ok(())
}

/// Hands a forward to the writer; the answer now when it is refused, else
/// the writer's later.
async fn take(
    cluster: &Cluster,
    rooms: &Rooms,
    writer: &WriterHandle,
    forward: Forward,
    reply: String,
) -> Option<ForwardReply> {
    let refused = |code: ErrorCode, message: String| {
        CLUSTER_FORWARDS_SERVED.counter_with("refused").increment(1);
        Some(ForwardReply::Error { code, message })
    };
    if !cluster.owners.is_mine(&forward.room) {
        CLUSTER_FORWARDS_SERVED.counter_with("not_owner").increment(1);
        return Some(ForwardReply::Error {
            code: ErrorCode::Overloaded,
            message: "this room is moving between nodes; retry".into(),
        });
    }
    let room = match rooms.get(&forward.room).await {
        Ok(room) => room,
        Err(refusal) => return refused(refusal.code, refusal.message.into_owned()),
    };
    let Ok(in_flight) = room.begin() else {
        return refused(ErrorCode::Overloaded, "room is restarting; retry".into());
    };
    let request = WriteRequest {
        message: NewMessage {
            room: room.name.clone(),
            from: forward.from.into(),
            cid: forward.cid,
            body: forward.body,
            ts_ms: 0,
            event: forward.event,
            fence: Some(cluster.owners.fence()),
        },
        in_flight,
        _user_write: None,
        ack_to: AckTo::Node(reply),
        req: 0,
        received_at: Instant::now(),
    };
    match writer.submit(request) {
        Ok(()) => {
            CLUSTER_FORWARDS_SERVED.counter_with("queued").increment(1);
            None
        }
        Err(code) => refused(code, "the server is saturated; retry later".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Outbox, UserShare};

    /// Past its bound a forward is refused (and its writer share given
    /// back); taking the ones of a node that left makes room again.
    #[test]
    fn pending_forwards_are_bounded_and_a_gone_owner_frees_its_share() {
        let session = Arc::new(SessionHandle {
            id: 1,
            user: "alice".into(),
            encoding: viche_protocol::Encoding::MsgPack,
            outbox: Outbox::new(8, 1024),
        });
        let share = Arc::new(UserShare::new(0));
        let pending_to = |owner: &str| Pending {
            owner: NodeId::from(owner),
            session: session.clone(),
            req: 1,
            room: "lobby".into(),
            started: Instant::now(),
            _user_write: UserWrite::take(&share, 100).expect("within the share"),
        };
        let forwards = PendingForwards::new(3);
        let ids: Vec<u64> = ["n1", "n1", "n2"].iter().filter_map(|o| forwards.insert(pending_to(o))).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(forwards.insert(pending_to("n2")), None, "full");
        assert_eq!(share.writes_pending.load(Ordering::Relaxed), 3, "the refused one's share was given back");
        assert_eq!(forwards.take(|p| &*p.owner == "n1").len(), 2);
        assert_eq!(share.writes_pending.load(Ordering::Relaxed), 1);
        assert!(forwards.insert(pending_to("n2")).is_some(), "room again");
        assert!(forwards.remove(ids[2]).is_some() && forwards.remove(ids[2]).is_none());
    }
}
