//! A room: its members, its presence counts, and the fan-out of its
//! messages in seq order.
//!
//! `RoomHandle` is what sessions and the writer hold; it outlives the
//! `RoomActor` behind it, so a crashed actor can be restarted by the
//! supervisor with its members still attached. The actor is the one place
//! where a room's state changes, so join, leave and publish are ordered:
//! a join's `ok.seq` is exactly the last seq published before it, and every
//! later message reaches the new member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use viche_protocol::limits::REPLAY_MAX_MESSAGES;
use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::{Msg, ServerFrame};

use crate::directory::Directory;
use crate::outbox::OutItem;
use crate::peer::{EncodedFrame, Peer, SessionId};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomKindOwned {
    Public,
    Dm(Arc<str>, Arc<str>),
}

/// State that survives a restart of the room's actor.
pub(crate) struct Shared {
    pub members: Vec<Arc<Peer>>,
    /// Sessions in the room per user: presence changes at 0 ↔ 1.
    pub user_sessions: HashMap<Arc<str>, u32>,
    pub json_members: usize,
    /// The highest seq handed to members; a join's `ok.seq`.
    pub last_published: u64,
    /// Writes submitted and joins sent but not yet processed: the room may
    /// not stop while any are pending.
    pub in_flight: u64,
    /// Set once by the supervisor when the room stops; a closed handle
    /// accepts nothing and its users fetch a fresh one.
    pub closed: bool,
    pub last_activity: Instant,
}

pub struct RoomHandle {
    pub name: Arc<str>,
    pub kind: RoomKindOwned,
    pub(crate) actor: Mutex<Option<ActorRef<RoomMsg>>>,
    pub(crate) shared: Mutex<Shared>,
    /// `typing` messages queued in the actor's (unbounded) mailbox. Each
    /// session may send 2/s, but a big room's sessions together may send
    /// more than its actor can broadcast: past the bound, typing (which is
    /// never stored) is dropped instead of growing the mailbox.
    typing_queued: AtomicUsize,
}

/// `typing` messages a room's mailbox holds at most.
pub const ROOM_TYPING_QUEUE_MAX: usize = 256;

pub enum RoomMsg {
    Join {
        peer: Arc<Peer>,
        req: u64,
        since: Option<u64>,
    },
    Leave {
        session: SessionId,
        reply: Option<(Arc<Peer>, u64)>,
    },
    Typing {
        peer: Arc<Peer>,
    },
    /// Stored messages of this room, in seq order, with when each `send`
    /// was decoded (for the send→deliver latency).
    Publish(Vec<(Msg, Instant)>),
    /// Sent by the supervisor after it closed the handle: ordered after
    /// every message already queued, so no publish is dropped.
    Stop,
    /// Test hook for the supervision test; not reachable from the network.
    Panic,
}

/// Why a handle refused an operation.
#[derive(Debug, PartialEq, Eq)]
pub enum HandleClosed {
    Closed,
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
            shared: Mutex::new(Shared {
                members: Vec::new(),
                user_sessions: HashMap::new(),
                json_members: 0,
                last_published: 0,
                in_flight: 0,
                closed: false,
                last_activity: Instant::now(),
            }),
            typing_queued: AtomicUsize::new(0),
        })
    }

    fn cast(&self, msg: RoomMsg) -> bool {
        match self.actor.lock().as_ref() {
            Some(actor) => actor.send_message(msg).is_ok(),
            None => false,
        }
    }

    /// Counts one pending operation, unless the room is closed.
    fn begin(&self) -> Result<(), HandleClosed> {
        let mut shared = self.shared.lock();
        if shared.closed {
            return Err(HandleClosed::Closed);
        }
        shared.in_flight += 1;
        Ok(())
    }

    pub(crate) fn end(&self) {
        let mut shared = self.shared.lock();
        debug_assert!(shared.in_flight > 0, "end without begin");
        shared.in_flight = shared.in_flight.saturating_sub(1);
        shared.last_activity = Instant::now();
    }

    pub fn join(&self, peer: Arc<Peer>, req: u64, since: Option<u64>) -> Result<(), HandleClosed> {
        self.begin()?;
        if !self.cast(RoomMsg::Join { peer, req, since }) {
            self.end();
            return Err(HandleClosed::Closed);
        }
        Ok(())
    }

    pub fn leave(&self, session: SessionId, reply: Option<(Arc<Peer>, u64)>) {
        self.cast(RoomMsg::Leave { session, reply });
    }

    /// Queues a typing notice; false when it was dropped (the room's
    /// typing queue is full, or the room is down).
    pub fn typing(&self, peer: Arc<Peer>) -> bool {
        if self.typing_queued.fetch_add(1, Ordering::AcqRel) >= ROOM_TYPING_QUEUE_MAX {
            self.typing_queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("viche_typing_dropped_total").increment(1);
            return false;
        }
        if !self.cast(RoomMsg::Typing { peer }) {
            self.typing_queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Marks a write as in flight for this room; pair with the writer's
    /// `publish`, which ends it.
    pub fn begin_write(&self) -> Result<(), HandleClosed> {
        self.begin()
    }

    pub(crate) fn publish(&self, msgs: Vec<(Msg, Instant)>) {
        // If the actor is down between a crash and its restart, the restarted
        // actor replays from the store whatever was not published.
        self.cast(RoomMsg::Publish(msgs));
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    pub fn last_published(&self) -> u64 {
        self.shared.lock().last_published
    }

    pub fn member_count(&self) -> usize {
        self.shared.lock().members.len()
    }

    #[doc(hidden)]
    pub fn inject_panic_for_test(&self) {
        self.cast(RoomMsg::Panic);
    }
}

pub struct RoomActor;

pub struct RoomArgs {
    pub handle: Arc<RoomHandle>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
}

pub struct RoomState {
    handle: Arc<RoomHandle>,
    directory: Arc<Directory>,
    /// Reused for DM recipients, so a DM's fan-out does not allocate.
    scratch: Vec<Arc<Peer>>,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, _myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let RoomArgs { handle, store, directory } = args;
        if let RoomKindOwned::Dm(a, b) = &handle.kind {
            for user in [a, b] {
                if store.get_user(user).await?.is_none() {
                    return Err(format!("no such user: {user}").into());
                }
            }
        }
        let stored = store.last_seq(&handle.name).await?;
        let mut shared = handle.shared.lock();
        if stored > shared.last_published {
            if !shared.members.is_empty() {
                // A restart after a crash: the members missed what was
                // stored meanwhile; replay it from the store, in order.
                tracing::warn!(room = %handle.name, from = shared.last_published, to = stored, "re-attaching members after restart");
                for member in &shared.members {
                    member.outbox.push_unbounded(OutItem::Replay {
                        room: handle.name.clone(),
                        after: shared.last_published,
                        upto: stored,
                    });
                }
            }
            shared.last_published = stored;
        }
        drop(shared);
        metrics::gauge!("viche_rooms_active").increment(1.0);
        Ok(RoomState { handle, directory, scratch: Vec::new() })
    }

    async fn post_stop(&self, _myself: ActorRef<RoomMsg>, _state: &mut RoomState) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("viche_rooms_active").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Join { peer, req, since } => {
                state.join(peer, req, since);
                state.handle.end();
            }
            RoomMsg::Leave { session, reply } => state.leave(session, reply),
            RoomMsg::Typing { peer } => {
                state.handle.typing_queued.fetch_sub(1, Ordering::AcqRel);
                state.typing(&peer)
            }
            RoomMsg::Publish(msgs) => state.publish(msgs),
            RoomMsg::Stop => myself.stop(None),
            RoomMsg::Panic => panic!("room {}: panic injected by a test", state.handle.name),
        }
        Ok(())
    }
}

impl RoomState {
    fn join(&mut self, peer: Arc<Peer>, req: u64, since: Option<u64>) {
        let handle = &self.handle;
        let mut shared = handle.shared.lock();
        shared.last_activity = Instant::now();
        let already = shared.members.iter().any(|m| m.id == peer.id);
        if !already {
            shared.members.push(peer.clone());
            if peer.encoding == viche_protocol::Encoding::Json {
                shared.json_members += 1;
            }
            let count = shared.user_sessions.entry(peer.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                let frame =
                    ServerFrame::Presence { room: handle.name.to_string(), user: peer.user.to_string(), online: true };
                broadcast(&shared, &frame, |m| m.id != peer.id);
            }
        }
        let last = shared.last_published;
        let missed = since.map_or(0, |s| last.saturating_sub(s));
        let ok = ServerFrame::Ok {
            req,
            room: Some(handle.name.to_string()),
            seq: Some(last),
            members: Some(shared.user_sessions.keys().map(|u| u.to_string()).collect()),
            more: Some(missed > REPLAY_MAX_MESSAGES),
        };
        let _ = peer.send(&ok);
        if missed > 0 {
            let after = last - missed.min(REPLAY_MAX_MESSAGES);
            peer.outbox.push_unbounded(OutItem::Replay { room: handle.name.clone(), after, upto: last });
        }
    }

    fn leave(&mut self, session: SessionId, reply: Option<(Arc<Peer>, u64)>) {
        let handle = &self.handle;
        let mut shared = handle.shared.lock();
        shared.last_activity = Instant::now();
        if let Some(pos) = shared.members.iter().position(|m| m.id == session) {
            let peer = shared.members.swap_remove(pos);
            if peer.encoding == viche_protocol::Encoding::Json {
                shared.json_members -= 1;
            }
            let gone = match shared.user_sessions.get_mut(&peer.user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    shared.user_sessions.remove(&peer.user);
                    true
                }
            };
            if gone {
                let frame =
                    ServerFrame::Presence { room: handle.name.to_string(), user: peer.user.to_string(), online: false };
                broadcast(&shared, &frame, |_| true);
            }
        }
        drop(shared);
        if let Some((peer, req)) = reply {
            let _ = peer.send(&ServerFrame::ok(req));
        }
    }

    fn typing(&mut self, from: &Peer) {
        let shared = self.handle.shared.lock();
        if !shared.members.iter().any(|m| m.id == from.id) {
            return; // left meanwhile
        }
        let frame = ServerFrame::Typing { room: self.handle.name.to_string(), user: from.user.to_string() };
        broadcast(&shared, &frame, |m| m.user != from.user);
    }

    fn publish(&mut self, msgs: Vec<(Msg, Instant)>) {
        let handle = self.handle.clone();
        let mut shared = handle.shared.lock();
        shared.last_activity = Instant::now();
        for (msg, received_at) in msgs {
            if msg.seq <= shared.last_published {
                continue; // already covered by a restart's replay
            }
            if msg.seq != shared.last_published + 1 {
                // Cannot happen while the writer publishes in commit order;
                // if it does, members get the gap replayed from the store.
                tracing::error!(room = %handle.name, expected = shared.last_published + 1, got = msg.seq, "publish gap; replaying");
                for m in &shared.members {
                    m.outbox.push_unbounded(OutItem::Replay {
                        room: handle.name.clone(),
                        after: shared.last_published,
                        upto: msg.seq - 1,
                    });
                }
            }
            shared.last_published = msg.seq;
            let frame = ServerFrame::Msg(msg);
            let delivered = match &handle.kind {
                RoomKindOwned::Public => broadcast(&shared, &frame, |_| true),
                RoomKindOwned::Dm(a, b) => {
                    self.scratch.clear();
                    self.directory.sessions_of(a, &mut self.scratch);
                    self.directory.sessions_of(b, &mut self.scratch);
                    let with_json = self.scratch.iter().any(|p| p.encoding == viche_protocol::Encoding::Json);
                    let encoded = EncodedFrame::new(&frame, with_json);
                    let mut n = 0;
                    for p in &self.scratch {
                        n += p.send_shared(&encoded).is_ok() as usize;
                    }
                    crate::metrics::hot().frames_out(&frame, n);
                    n
                }
            };
            let hot = crate::metrics::hot();
            hot.deliveries.increment(delivered as u64);
            hot.send_deliver_latency.record(received_at.elapsed().as_secs_f64());
        }
    }
}

/// Encodes `frame` once per encoding in use and queues it for every member
/// that `to` selects. Returns how many it was queued for (a member closing
/// as a slow consumer is not counted).
fn broadcast(shared: &Shared, frame: &ServerFrame, to: impl Fn(&Peer) -> bool) -> usize {
    let encoded = EncodedFrame::new(frame, shared.json_members > 0);
    let mut n = 0;
    for m in &shared.members {
        if to(m) {
            n += m.send_shared(&encoded).is_ok() as usize;
        }
    }
    crate::metrics::hot().frames_out(frame, n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    /// An actor that takes its first message and never finishes it, so
    /// everything after stays in its mailbox.
    struct Stuck;

    impl Actor for Stuck {
        type Msg = RoomMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<RoomMsg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(&self, _: ActorRef<RoomMsg>, _: RoomMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            std::future::pending::<()>().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn typing_past_the_queue_bound_is_dropped_not_queued() {
        let handle = RoomHandle::new("lobby".into()).unwrap();
        let (actor, _) = Actor::spawn(None, Stuck, ()).await.unwrap();
        *handle.actor.lock() = Some(actor.clone());
        let peer = Arc::new(Peer {
            id: 1,
            user: "alice".into(),
            encoding: viche_protocol::Encoding::MsgPack,
            outbox: Outbox::new(8, 1024),
        });
        let accepted = (0..ROOM_TYPING_QUEUE_MAX + 50).filter(|_| handle.typing(peer.clone())).count();
        // Only RoomActor counts a typing notice down when it handles one;
        // this actor never does, as if the room could not keep up.
        assert_eq!(accepted, ROOM_TYPING_QUEUE_MAX, "exactly the bound is queued; the rest is dropped");
        assert!(!handle.typing(peer.clone()), "still full");
        actor.stop(None);
    }
}
