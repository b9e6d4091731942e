//! `RoomHandle`: what sessions and the writer hold of a room.
//!
//! It outlives the `RoomActor` behind it, so that a crash loses nothing:
//! the room's state ([`RoomState`]: members, presence, the last seq
//! published) and its queue of operations not yet done ([`RoomOp`]: joins,
//! leaves, typing, publishes) live here, under one lock. Senders push an
//! operation and wake the actor; the actor takes operations off the front
//! one at a time and pops each only once it is done, so an operation
//! interrupted by a crash is done by the restarted actor.
//!
//! Every operation that must keep the room alive until the actor has
//! handled it holds an [`InFlight`] guard; the room may stop only when
//! none is left. A `typing` notice holds a [`QueueSlot`], which bounds
//! how many are queued; so does each operation another node relayed (a
//! node that floods the room's subject fills that bound, not memory).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::ActorRef;
use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::Msg;

use super::actor::RoomMsg;
use super::RoomKindOwned;
use crate::cluster::NodeId;
use crate::delivery::{SessionHandle, SessionId};
use crate::metrics::{CLUSTER_RELAY_DROPPED, TYPING_DROPPED};

/// `typing` notices a room holds queued at most. Each session may send
/// 2/s, but a big room's sessions together may send more than its actor
/// can broadcast: past the bound, typing (which is never stored) is
/// dropped instead of growing the queue. Joins and leaves are bounded by
/// each session's join rate, publishes by the writer's queue.
pub(crate) const ROOM_TYPING_QUEUED_MAX: usize = 256;
/// Operations relayed by other nodes (messages, announced seqs, presence,
/// rosters asked) a room holds queued at most. NATS bounds what waits in
/// a subscription; this bounds what the room's relay task has handed on.
/// Past it they are dropped: a message is replayed from the store with
/// the room's next message or its next announced seq.
pub(crate) const ROOM_RELAYED_QUEUED_MAX: usize = 1024;

/// An operation for the room's actor.
pub(crate) enum RoomOp {
    Join {
        session: Arc<SessionHandle>,
        req: u64,
        since: Option<u64>,
        /// The room's horizon as the store said before the join
        /// (retention): seqs up to it are gone.
        horizon: u64,
        _in_flight: InFlight,
    },
    Leave {
        session: SessionId,
        reply: Option<(Arc<SessionHandle>, u64)>,
    },
    /// `user` is typing: a member session of this node (checked to be a
    /// member still), or a member on another node (relayed).
    Typing {
        user: Arc<str>,
        session: Option<Arc<SessionHandle>>,
        _slot: QueueSlot,
    },
    Members {
        session: Arc<SessionHandle>,
        req: u64,
        after: Option<String>,
    },
    /// Another node stored this room's messages up to this seq: replay
    /// what is missing here.
    CatchUp(u64),
    /// A DM room opening on a node of a cluster: replay to its users'
    /// sessions here what was stored since `ts_min`.
    ReplayRecent {
        ts_min: u64,
    },
    /// Another node says these users are now in (or out of) the room there.
    RemotePresence {
        node: NodeId,
        users: Vec<Arc<str>>,
        online: bool,
    },
    /// Another node opened the room: tell it who is here.
    RosterAsked,
    /// Part of another node's periodic roster: complete, it replaces what
    /// is known of that node's users here.
    RemoteRoster {
        node: NodeId,
        users: Vec<Arc<str>>,
        part: u32,
        parts: u32,
    },
    /// Time for this node's periodic roster; forget the users of a node
    /// not heard from in `silent_max`.
    RefreshRoster {
        silent_max: Duration,
    },
    /// A node left the cluster: its users are no longer in the room there.
    NodeGone(NodeId),
    /// An operation another node relayed, counted against
    /// [`ROOM_RELAYED_QUEUED_MAX`] until done.
    Relayed {
        op: Box<RoomOp>,
        _slot: QueueSlot,
    },
    /// Stored messages of this room, in seq order, with when each `send`
    /// was decoded (for the send→deliver latency; none when relayed from
    /// another node).
    Publish(Vec<(Msg, Option<Instant>)>),
}

/// The room's state: it survives a restart of the room's actor.
pub(crate) struct RoomState {
    /// The member sessions, for fan-out.
    pub members: Vec<Arc<SessionHandle>>,
    /// Where each member is in `members`: membership in O(1), whatever the
    /// room's size.
    pub member_index: HashMap<SessionId, usize>,
    /// This node's sessions in the room per user: the user is present
    /// here while it is above 0.
    pub user_sessions: BTreeMap<Arc<str>, u32>,
    /// In a cluster: the users in the room on each other node, as those
    /// nodes said (`cluster/relay.rs`).
    pub remote: HashMap<NodeId, BTreeSet<Arc<str>>>,
    /// When each node in `remote` last said who is here (a roster or a
    /// presence): a node silent for three roster periods is forgotten.
    pub remote_heard: HashMap<NodeId, Instant>,
    /// Periodic rosters being received, per node: the next part expected
    /// and the names so far.
    pub remote_rosters: HashMap<NodeId, (u32, BTreeSet<Arc<str>>)>,
    /// Users in the room, in name order (for `ok.members` and `members`
    /// pages), with how many nodes they are present on, this one included:
    /// presence changes at 0 ↔ 1.
    pub present: BTreeMap<Arc<str>, u32>,
    pub json_members: usize,
    /// The highest seq in every member's outbox; a join's `ok.seq`.
    pub last_published: u64,
    /// Live [`InFlight`] guards: the room may not stop while any exist.
    pub in_flight: u64,
    /// Operations not yet done, oldest first. Never drop one while holding
    /// this state's lock: a join's [`InFlight`] guard takes it when dropped.
    pub ops: VecDeque<RoomOp>,
    /// How many actors crashed while doing `ops.front()`.
    pub head_crashes: u32,
    /// Set once, when the room stops (idle, or unable to start); a closed
    /// handle accepts nothing and its users fetch a fresh one.
    pub closed: bool,
    pub last_activity: Instant,
}

pub(crate) struct RoomHandle {
    pub name: Arc<str>,
    pub kind: RoomKindOwned,
    pub(super) actor: Mutex<Option<ActorRef<RoomMsg>>>,
    pub(super) state: Mutex<RoomState>,
    /// A `Wake` is in the actor's mailbox, or the actor is down (it drains
    /// the queue when it starts): no need to send another.
    pub(super) wake_sent: AtomicBool,
    /// `typing` notices now queued (live typing [`QueueSlot`]s).
    typing_queued: AtomicUsize,
    /// Relayed operations now queued (live relayed [`QueueSlot`]s).
    relayed_queued: AtomicUsize,
    /// In a cluster: the task handing this room what other nodes relay
    /// (`cluster/relay.rs`), aborted when the room closes.
    relay_task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The handle was closed (the room stopped): fetch a fresh one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HandleClosed;

/// One pending operation on a room. The room may not stop while one
/// exists; dropping it (wherever the operation ends) ends it.
pub(crate) struct InFlight(Arc<RoomHandle>);

impl InFlight {
    pub fn room(&self) -> &Arc<RoomHandle> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        debug_assert!(state.in_flight > 0, "an InFlight guard outlived its count");
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_activity = Instant::now();
    }
}

/// One queued operation of a bounded kind (a `typing` notice, against
/// [`ROOM_TYPING_QUEUED_MAX`]; a relayed operation, against
/// [`ROOM_RELAYED_QUEUED_MAX`]), counted until dropped.
pub(crate) struct QueueSlot {
    room: Arc<RoomHandle>,
    typing: bool,
}

impl QueueSlot {
    /// A slot, unless `max` are taken already.
    fn take(room: &Arc<RoomHandle>, typing: bool) -> Option<Self> {
        let (counter, max) = Self::bound(room, typing);
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self { room: room.clone(), typing })
    }

    fn bound(room: &RoomHandle, typing: bool) -> (&AtomicUsize, usize) {
        if typing {
            (&room.typing_queued, ROOM_TYPING_QUEUED_MAX)
        } else {
            (&room.relayed_queued, ROOM_RELAYED_QUEUED_MAX)
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        Self::bound(&self.room, self.typing).0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RoomHandle {
    pub(crate) fn new(name: Arc<str>) -> Option<Self> {
        let kind = match parse_room(&name)? {
            RoomKind::Public => RoomKindOwned::Public,
            RoomKind::Dm(a, b) => RoomKindOwned::Dm(a.into(), b.into()),
        };
        Some(Self {
            name,
            kind,
            actor: Mutex::new(None),
            state: Mutex::new(RoomState {
                members: Vec::new(),
                member_index: HashMap::new(),
                user_sessions: BTreeMap::new(),
                remote: HashMap::new(),
                remote_heard: HashMap::new(),
                remote_rosters: HashMap::new(),
                present: BTreeMap::new(),
                json_members: 0,
                last_published: 0,
                in_flight: 0,
                ops: VecDeque::new(),
                head_crashes: 0,
                closed: false,
                last_activity: Instant::now(),
            }),
            // Down until an actor starts and drains the queue.
            wake_sent: AtomicBool::new(true),
            typing_queued: AtomicUsize::new(0),
            relayed_queued: AtomicUsize::new(0),
            relay_task: Mutex::new(None),
        })
    }

    /// Queues an operation and wakes the actor; `Err` when the room is
    /// closed (the operation, and any guard in it, is dropped).
    fn enqueue(&self, op: RoomOp) -> Result<(), HandleClosed> {
        {
            let mut state = self.state.lock();
            if state.closed {
                return Err(HandleClosed);
            }
            state.ops.push_back(op);
        }
        self.wake();
        Ok(())
    }

    /// Makes sure the actor will look at the queue.
    pub(super) fn wake(&self) {
        if self.wake_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = match self.actor.lock().as_ref() {
            Some(actor) => actor.send_message(RoomMsg::Wake).is_ok(),
            None => false,
        };
        // If the actor is down, its successor drains the queue at start.
        let _ = sent;
    }

    /// Starts a pending operation, unless the room is closed.
    pub(crate) fn begin(self: &Arc<Self>) -> Result<InFlight, HandleClosed> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(HandleClosed);
        }
        state.in_flight += 1;
        Ok(InFlight(self.clone()))
    }

    pub(crate) fn join(
        self: &Arc<Self>,
        session: Arc<SessionHandle>,
        req: u64,
        since: Option<u64>,
        horizon: u64,
    ) -> Result<(), HandleClosed> {
        let in_flight = self.begin()?;
        self.enqueue(RoomOp::Join { session, req, since, horizon, _in_flight: in_flight })
    }

    /// Queues a `members` request; false when the room is closed.
    pub(crate) fn members(&self, session: Arc<SessionHandle>, req: u64, after: Option<String>) -> bool {
        self.enqueue(RoomOp::Members { session, req, after }).is_ok()
    }

    pub(crate) fn leave(&self, session: SessionId, reply: Option<(Arc<SessionHandle>, u64)>) {
        if let Err(HandleClosed) = self.enqueue(RoomOp::Leave { session, reply: reply.clone() }) {
            // The room is gone, and the session with it: nothing to leave.
            if let Some((session, req)) = reply {
                let _ = session.send(&viche_protocol::ServerFrame::ok(req));
            }
        }
    }

    /// Queues a typing notice; false when it was dropped (the room's
    /// typing queue is full, or the room is closed).
    pub(crate) fn typing(self: &Arc<Self>, session: Arc<SessionHandle>) -> bool {
        self.queue_typing(session.user.clone(), Some(session))
    }

    /// A typing notice of a member on another node; bounded as a local one.
    pub(crate) fn typing_relayed(self: &Arc<Self>, user: Arc<str>) -> bool {
        self.queue_typing(user, None)
    }

    fn queue_typing(self: &Arc<Self>, user: Arc<str>, session: Option<Arc<SessionHandle>>) -> bool {
        let Some(slot) = QueueSlot::take(self, true) else {
            TYPING_DROPPED.counter().increment(1);
            return false;
        };
        self.enqueue(RoomOp::Typing { user, session, _slot: slot }).is_ok()
    }

    /// Queues an operation another node relayed; false when it was dropped
    /// (the room holds [`ROOM_RELAYED_QUEUED_MAX`] of them, or is closed).
    pub(crate) fn relayed(self: &Arc<Self>, op: RoomOp) -> bool {
        let Some(slot) = QueueSlot::take(self, false) else {
            CLUSTER_RELAY_DROPPED.counter().increment(1);
            return false;
        };
        self.enqueue(RoomOp::Relayed { op: Box::new(op), _slot: slot }).is_ok()
    }

    /// Messages another node stored and relayed. Dropped when the room is
    /// closed (its members are gone) or full; the room's actor skips what
    /// it has and repairs a gap from the store.
    pub(crate) fn publish_relayed(self: &Arc<Self>, msgs: Vec<viche_protocol::Msg>) -> bool {
        self.relayed(RoomOp::Publish(msgs.into_iter().map(|m| (m, None)).collect()))
    }

    /// Queues the replay of what a DM room's users' sessions here may have
    /// missed before the room opened (the room's first operation).
    pub(crate) fn replay_recent(&self, ts_min: u64) {
        let _ = self.enqueue(RoomOp::ReplayRecent { ts_min });
    }

    /// Time for the periodic roster (one per period, not relayed).
    pub(crate) fn refresh_roster(&self, silent_max: Duration) {
        let _ = self.enqueue(RoomOp::RefreshRoster { silent_max });
    }

    /// A node left the live set (this node's view of membership: one per
    /// change, not relayed).
    pub(crate) fn node_gone(&self, node: NodeId) {
        let _ = self.enqueue(RoomOp::NodeGone(node));
    }

    /// Another node says it stored this room's messages up to `seq`.
    pub(crate) fn catch_up(self: &Arc<Self>, seq: u64) -> bool {
        self.relayed(RoomOp::CatchUp(seq))
    }

    /// Starts handing this room what other nodes relay on `subscription`,
    /// until the room closes.
    pub(crate) fn follow(self: &Arc<Self>, subscription: async_nats::Subscriber) {
        let task = tokio::spawn(crate::cluster::relay::follow(subscription, self.clone()));
        let mut slot = self.relay_task.lock();
        debug_assert!(slot.is_none(), "a room follows one subscription");
        *slot = Some(task.abort_handle());
        drop(slot);
        if self.is_closed() {
            self.stop_following();
        }
    }

    /// Ends the relay task (the room closed). Idempotent.
    pub(crate) fn stop_following(&self) {
        if let Some(task) = self.relay_task.lock().take() {
            task.abort();
        }
    }

    /// Hands stored messages to the room. Queued even while its actor is
    /// down: the restarted actor publishes them.
    pub(crate) fn publish(&self, msgs: Vec<(Msg, Option<Instant>)>) {
        let mut state = self.state.lock();
        // A room with writes in flight is never closed (the sweep waits for
        // them), so this always queues.
        debug_assert!(!state.closed || state.in_flight == 0);
        state.ops.push_back(RoomOp::Publish(msgs));
        drop(state);
        self.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Outbox;

    fn session() -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            id: 1,
            user: "alice".into(),
            encoding: viche_protocol::Encoding::MsgPack,
            outbox: Outbox::new(8, 1024),
        })
    }

    #[test]
    fn typing_past_the_queue_bound_is_dropped_not_queued() {
        // No actor: nothing is ever taken off the queue, as if the room
        // could not keep up.
        let handle = Arc::new(RoomHandle::new("lobby".into()).unwrap());
        let s = session();
        let accepted = (0..ROOM_TYPING_QUEUED_MAX + 50).filter(|_| handle.typing(s.clone())).count();
        assert_eq!(accepted, ROOM_TYPING_QUEUED_MAX, "exactly the bound is queued; the rest is dropped");
        assert!(!handle.typing(s.clone()), "still full");
        let taken = std::mem::take(&mut handle.state.lock().ops);
        drop(taken); // not under the lock: a dropped op may end a guard
        assert!(handle.typing(s), "room again once the queue was taken");
    }

    #[test]
    fn relayed_operations_past_the_queue_bound_are_dropped_not_queued() {
        // No actor: a node flooding the room's subject fills the bound.
        let handle = Arc::new(RoomHandle::new("lobby".into()).unwrap());
        let accepted = (1..=ROOM_RELAYED_QUEUED_MAX as u64 + 50).filter(|seq| handle.catch_up(*seq)).count();
        assert_eq!(accepted, ROOM_RELAYED_QUEUED_MAX);
        let msg = Msg { room: "lobby".into(), seq: 1, ..Msg::default() };
        assert!(!handle.publish_relayed(vec![msg.clone()]), "messages share the bound");
        assert!(handle.typing(session()), "typing has its own bound");
        let taken = std::mem::take(&mut handle.state.lock().ops);
        drop(taken); // not under the lock
        assert_eq!(handle.relayed_queued.load(Ordering::Acquire), 0);
        assert!(handle.publish_relayed(vec![msg]), "room again once the queue was taken");
    }

    #[test]
    fn guards_end_their_operation_when_dropped() {
        let handle = Arc::new(RoomHandle::new("lobby".into()).unwrap());
        handle.join(session(), 1, None, 0).unwrap();
        assert_eq!(handle.state.lock().in_flight, 1, "a queued join keeps the room");
        let taken = std::mem::take(&mut handle.state.lock().ops);
        drop(taken);
        assert_eq!(handle.state.lock().in_flight, 0, "dropping the join ends it");

        handle.state.lock().closed = true;
        assert_eq!(handle.join(session(), 2, None, 0), Err(HandleClosed), "a closed room takes nothing");
        assert_eq!(handle.state.lock().in_flight, 0);
        assert!(!handle.typing(session()));
        assert_eq!(handle.typing_queued.load(Ordering::Acquire), 0);
    }
}
