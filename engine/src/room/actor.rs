//! `RoomActor`: the one place a room's state changes, so join, leave,
//! typing and publish are totally ordered. A join's `ok.seq` is exactly
//! the last seq published before it, and every later message reaches the
//! new member.
//!
//! The state itself lives in the [`RoomHandle`] (so a restarted actor
//! finds the members still attached); what the actor keeps is only what
//! it needs to work.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use viche_protocol::limits::REPLAY_MESSAGES_MAX;
use viche_protocol::{Msg, ServerFrame};

use super::handle::{InFlight, RoomHandle, RoomState, TypingSlot};
use super::RoomKindOwned;
use crate::delivery::{Directory, EncodedFrame, OutItem, SessionHandle, SessionId};
use crate::metrics::ROOMS_ACTIVE;
use crate::store::Store;

pub(crate) enum RoomMsg {
    Join {
        session: Arc<SessionHandle>,
        req: u64,
        since: Option<u64>,
        in_flight: InFlight,
    },
    Leave {
        session: SessionId,
        reply: Option<(Arc<SessionHandle>, u64)>,
    },
    Typing {
        session: Arc<SessionHandle>,
        _slot: TypingSlot,
    },
    /// Stored messages of this room, in seq order, with when each `send`
    /// was decoded (for the send→deliver latency).
    Publish(Vec<(Msg, Instant)>),
    /// Sent by the supervisor after it closed the handle: ordered after
    /// every message already queued, so no publish is dropped.
    Stop,
    /// Test hook (feature `test-hooks`): panic while handling this.
    #[cfg(feature = "test-hooks")]
    Panic,
}

pub(crate) struct RoomActor;

pub(crate) struct RoomArgs {
    pub handle: Arc<RoomHandle>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
}

pub(crate) struct RoomActorState {
    handle: Arc<RoomHandle>,
    directory: Arc<Directory>,
    /// Reused for DM recipients, so a DM's fan-out does not allocate.
    scratch: Vec<Arc<SessionHandle>>,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomActorState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomActorState, ActorProcessingErr> {
        let RoomArgs { handle, store, directory } = args;
        if let RoomKindOwned::Dm(a, b) = &handle.kind {
            for user in [a, b] {
                if store.get_user(user).await?.is_none() {
                    return Err(format!("no such user: {user}").into());
                }
            }
        }
        let stored = store.last_seq(&handle.name).await?;
        let mut state = handle.state.lock();
        if stored > state.last_published {
            if !state.members.is_empty() {
                // A restart after a crash: the members missed what was
                // stored meanwhile; replay it from the store, in order.
                tracing::warn!(room = %handle.name, from = state.last_published, to = stored, "re-attaching members after restart");
                for member in &state.members {
                    member.outbox.push_unbounded(OutItem::Replay {
                        room: handle.name.clone(),
                        after: state.last_published,
                        upto: stored,
                    });
                }
            }
            state.last_published = stored;
        }
        drop(state);
        ROOMS_ACTIVE.gauge().increment(1.0);
        Ok(RoomActorState { handle, directory, scratch: Vec::new() })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RoomMsg>,
        _state: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        ROOMS_ACTIVE.gauge().decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Join { session, req, since, in_flight } => {
                state.join(session, req, since);
                drop(in_flight);
            }
            RoomMsg::Leave { session, reply } => state.leave(session, reply),
            RoomMsg::Typing { session, _slot } => state.typing(&session),
            RoomMsg::Publish(msgs) => state.publish(msgs),
            RoomMsg::Stop => myself.stop(None),
            #[cfg(feature = "test-hooks")]
            RoomMsg::Panic => panic!("room {}: panic injected by a test", state.handle.name),
        }
        Ok(())
    }
}

impl RoomActorState {
    fn join(&mut self, peer: Arc<SessionHandle>, req: u64, since: Option<u64>) {
        let handle = &self.handle;
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        let already = state.members.iter().any(|m| m.id == peer.id);
        if !already {
            state.members.push(peer.clone());
            if peer.encoding == viche_protocol::Encoding::Json {
                state.json_members += 1;
            }
            let count = state.user_sessions.entry(peer.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                let frame =
                    ServerFrame::Presence { room: handle.name.to_string(), user: peer.user.to_string(), online: true };
                broadcast(&state, &frame, |m| m.id != peer.id);
            }
        }
        let last = state.last_published;
        let missed = since.map_or(0, |s| last.saturating_sub(s));
        let ok = ServerFrame::Ok {
            req,
            room: Some(handle.name.to_string()),
            seq: Some(last),
            members: Some(state.user_sessions.keys().map(|u| u.to_string()).collect()),
            more: Some(missed > REPLAY_MESSAGES_MAX),
        };
        let _ = peer.send(&ok);
        if missed > 0 {
            let after = last - missed.min(REPLAY_MESSAGES_MAX);
            peer.outbox.push_unbounded(OutItem::Replay { room: handle.name.clone(), after, upto: last });
        }
    }

    fn leave(&mut self, session: SessionId, reply: Option<(Arc<SessionHandle>, u64)>) {
        let handle = &self.handle;
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        if let Some(pos) = state.members.iter().position(|m| m.id == session) {
            let peer = state.members.swap_remove(pos);
            if peer.encoding == viche_protocol::Encoding::Json {
                state.json_members -= 1;
            }
            let gone = match state.user_sessions.get_mut(&peer.user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    state.user_sessions.remove(&peer.user);
                    true
                }
            };
            if gone {
                let frame =
                    ServerFrame::Presence { room: handle.name.to_string(), user: peer.user.to_string(), online: false };
                broadcast(&state, &frame, |_| true);
            }
        }
        drop(state);
        if let Some((peer, req)) = reply {
            let _ = peer.send(&ServerFrame::ok(req));
        }
    }

    fn typing(&mut self, from: &SessionHandle) {
        let state = self.handle.state.lock();
        if !state.members.iter().any(|m| m.id == from.id) {
            return; // left meanwhile
        }
        let frame = ServerFrame::Typing { room: self.handle.name.to_string(), user: from.user.to_string() };
        broadcast(&state, &frame, |m| m.user != from.user);
    }

    fn publish(&mut self, msgs: Vec<(Msg, Instant)>) {
        let handle = self.handle.clone();
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        for (msg, received_at) in msgs {
            if msg.seq <= state.last_published {
                continue; // already covered by a restart's replay
            }
            if msg.seq != state.last_published + 1 {
                // Cannot happen while the writer publishes in commit order;
                // if it does, members get the gap replayed from the store.
                tracing::error!(room = %handle.name, expected = state.last_published + 1, got = msg.seq, "publish gap; replaying");
                for m in &state.members {
                    m.outbox.push_unbounded(OutItem::Replay {
                        room: handle.name.clone(),
                        after: state.last_published,
                        upto: msg.seq - 1,
                    });
                }
            }
            state.last_published = msg.seq;
            let frame = ServerFrame::Msg(msg);
            let delivered = match &handle.kind {
                RoomKindOwned::Public => broadcast(&state, &frame, |_| true),
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
fn broadcast(state: &RoomState, frame: &ServerFrame, to: impl Fn(&SessionHandle) -> bool) -> usize {
    let encoded = EncodedFrame::new(frame, state.json_members > 0);
    let mut n = 0;
    for m in &state.members {
        if to(m) {
            n += m.send_shared(&encoded).is_ok() as usize;
        }
    }
    crate::metrics::hot().frames_out(frame, n);
    n
}
