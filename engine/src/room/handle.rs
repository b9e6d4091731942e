//! `RoomHandle`: what sessions and the writer hold of a room.
//!
//! It outlives the `RoomActor` behind it, so a crashed actor can be
//! restarted by the supervisor with its members still attached: the
//! room's state ([`RoomState`]) lives here, under a lock that only the
//! actor takes to change it (the supervisor reads it to decide idleness).
//!
//! Every operation that must keep the room alive until the actor has
//! handled it (a write submitted, a join queued) holds an [`InFlight`]
//! guard; the room may stop only when none is left. A `typing` notice in
//! the mailbox holds a [`TypingSlot`], which bounds how many are queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::ActorRef;
use viche_protocol::validate::{parse_room, RoomKind};

use super::actor::RoomMsg;
use super::RoomKindOwned;
use crate::delivery::{SessionHandle, SessionId};
use crate::metrics::TYPING_DROPPED;

/// `typing` messages a room's mailbox holds at most. Each session may send
/// 2/s, but a big room's sessions together may send more than its actor
/// can broadcast: past the bound, typing (which is never stored) is
/// dropped instead of growing the mailbox.
pub(crate) const ROOM_TYPING_QUEUED_MAX: usize = 256;

/// The room's state: it survives a restart of the room's actor.
pub(crate) struct RoomState {
    pub members: Vec<Arc<SessionHandle>>,
    /// Sessions in the room per user: presence changes at 0 ↔ 1.
    pub user_sessions: HashMap<Arc<str>, u32>,
    pub json_members: usize,
    /// The highest seq handed to members; a join's `ok.seq`.
    pub last_published: u64,
    /// Live [`InFlight`] guards: the room may not stop while any exist.
    pub in_flight: u64,
    /// Set once by the supervisor when the room stops; a closed handle
    /// accepts nothing and its users fetch a fresh one.
    pub closed: bool,
    pub last_activity: Instant,
}

pub(crate) struct RoomHandle {
    pub name: Arc<str>,
    pub kind: RoomKindOwned,
    pub(super) actor: Mutex<Option<ActorRef<RoomMsg>>>,
    pub(super) state: Mutex<RoomState>,
    /// `typing` notices now in the actor's mailbox (live [`TypingSlot`]s).
    typing_queued: AtomicUsize,
}

/// The handle was closed (the room stopped): fetch a fresh one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HandleClosed;

/// One pending operation on a room. The room may not stop while one
/// exists; dropping it (wherever the operation ends, even in a dropped
/// mailbox) ends it.
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

/// One `typing` notice in a room's mailbox, counted against
/// [`ROOM_TYPING_QUEUED_MAX`] until dropped.
pub(crate) struct TypingSlot(Arc<RoomHandle>);

impl Drop for TypingSlot {
    fn drop(&mut self) {
        self.0.typing_queued.fetch_sub(1, Ordering::AcqRel);
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

    /// Queues a message for the actor; false when the room is down (the
    /// message, and any guard in it, is dropped).
    fn cast(&self, msg: RoomMsg) -> bool {
        match self.actor.lock().as_ref() {
            Some(actor) => actor.send_message(msg).is_ok(),
            None => false,
        }
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
    ) -> Result<(), HandleClosed> {
        let in_flight = self.begin()?;
        match self.cast(RoomMsg::Join { session, req, since, in_flight }) {
            true => Ok(()),
            false => Err(HandleClosed),
        }
    }

    pub(crate) fn leave(&self, session: SessionId, reply: Option<(Arc<SessionHandle>, u64)>) {
        self.cast(RoomMsg::Leave { session, reply });
    }

    /// Queues a typing notice; false when it was dropped (the room's
    /// typing queue is full, or the room is down).
    pub(crate) fn typing(self: &Arc<Self>, session: Arc<SessionHandle>) -> bool {
        if self.typing_queued.fetch_add(1, Ordering::AcqRel) >= ROOM_TYPING_QUEUED_MAX {
            self.typing_queued.fetch_sub(1, Ordering::AcqRel);
            TYPING_DROPPED.counter().increment(1);
            return false;
        }
        let slot = TypingSlot(self.clone());
        self.cast(RoomMsg::Typing { session, _slot: slot })
    }

    /// Hands stored messages to the actor. If the actor is down between a
    /// crash and its restart, the restarted actor replays from the store
    /// whatever was not published.
    pub(crate) fn publish(&self, msgs: Vec<(viche_protocol::Msg, Instant)>) {
        self.cast(RoomMsg::Publish(msgs));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Test hook: makes the room's actor panic while handling a message.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn inject_panic(&self) {
        self.cast(RoomMsg::Panic);
    }
}

#[cfg(test)]
mod tests {
    use ractor::{Actor, ActorProcessingErr};

    use super::*;
    use crate::delivery::Outbox;

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

    fn session() -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            id: 1,
            user: "alice".into(),
            encoding: viche_protocol::Encoding::MsgPack,
            outbox: Outbox::new(8, 1024),
        })
    }

    #[tokio::test]
    async fn typing_past_the_queue_bound_is_dropped_not_queued() {
        let handle = Arc::new(RoomHandle::new("lobby".into()).unwrap());
        let (actor, _) = Actor::spawn(None, Stuck, ()).await.unwrap();
        *handle.actor.lock() = Some(actor.clone());
        let s = session();
        let accepted = (0..ROOM_TYPING_QUEUED_MAX + 50).filter(|_| handle.typing(s.clone())).count();
        // Only RoomActor drops a notice's slot when it handles one; this
        // actor never does, as if the room could not keep up.
        assert_eq!(accepted, ROOM_TYPING_QUEUED_MAX, "exactly the bound is queued; the rest is dropped");
        assert!(!handle.typing(s.clone()), "still full");
        actor.stop(None);
    }

    #[tokio::test]
    async fn guards_end_their_operation_when_dropped_even_unhandled() {
        let handle = Arc::new(RoomHandle::new("lobby".into()).unwrap());
        // No actor: the join's message, and its guard, are dropped.
        assert_eq!(handle.join(session(), 1, None), Err(HandleClosed));
        assert_eq!(handle.state.lock().in_flight, 0);
        assert!(!handle.typing(session()));
        assert_eq!(handle.typing_queued.load(Ordering::Acquire), 0);

        let guard = handle.begin().unwrap();
        assert_eq!(handle.state.lock().in_flight, 1);
        drop(guard);
        assert_eq!(handle.state.lock().in_flight, 0);

        handle.state.lock().closed = true;
        assert!(handle.begin().is_err(), "a closed room starts nothing");
    }
}
