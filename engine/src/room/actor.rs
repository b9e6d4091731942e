//! `RoomActor`: the one place a room's state changes, so join, leave,
//! typing and publish are totally ordered. A join's `ok.seq` is exactly
//! the last seq published before it, and every later message reaches the
//! new member.
//!
//! The state and the queue of operations live in the [`RoomHandle`]; the
//! actor takes operations off the queue one at a time (`Wake`). An
//! operation that panics is put back and the actor fails: its supervisor
//! restarts it (with backoff), and the new actor first reloads the room's
//! last seq from the store (`Init`), replaying whatever was stored and not
//! yet published to the room's recipients, then does the operation again.
//! An operation that crashes [`POISON_OP_CRASHES_MAX`] actors in a row is
//! dropped (a joiner gets `internal`). That store read happens here, in
//! the room's own actor, never in its supervisor (a room's first actor
//! needs none: whoever opened the room read its last seq); a restarted
//! room that cannot load its last seq after [`INIT_ATTEMPTS_MAX`] tries
//! tells its members and its queued joiners to join again, and stops.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use viche_protocol::limits::{MEMBERS_PAGE_MAX, REPLAY_MESSAGES_MAX};
use viche_protocol::{ErrorCode, Msg, ServerFrame};

use super::handle::{RoomHandle, RoomOp, RoomState};
use super::RoomKindOwned;
use crate::cluster::relay::Relay;
use crate::cluster::NodeId;
use crate::delivery::{Directory, EncodedFrame, OutItem, SessionHandle, SessionId, DIRECT_WRITES_PER_FANOUT_MAX};
use crate::faults::failpoint;
use crate::metrics::{CLUSTER_RELAY_JUNK, GAP_REPAIRS, ROOMS_ACTIVE};
use crate::store::Store;

/// Slots of a room's (empty) operation queue kept after a burst.
const OPS_CAPACITY_KEPT_MAX: usize = 8;
/// Actors in a row that may crash on the same operation before it is dropped.
pub(crate) const POISON_OP_CRASHES_MAX: u32 = 3;
/// Tries to load the room's last seq before the room gives up.
pub(crate) const INIT_ATTEMPTS_MAX: u32 = 8;
/// Wait after the n-th failed try: n times this, at most [`INIT_BACKOFF_MAX_MS`].
const INIT_BACKOFF_MS: u64 = 250;
const INIT_BACKOFF_MAX_MS: u64 = 5_000;

pub(crate) enum RoomMsg {
    /// After a restart: load the room's last seq, then do the queued operations.
    Init,
    /// Operations were queued.
    Wake,
    /// Sent by the supervisor after it closed the handle: the room is idle.
    Stop,
}

pub(crate) struct RoomActor;

pub(crate) struct RoomArgs {
    pub handle: Arc<RoomHandle>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
    /// In a cluster: where local typing notices go to the other nodes.
    pub relay: Option<Arc<Relay>>,
    /// A restart after a crash (the store may hold messages no actor
    /// published); false for the room's first actor, whose opener read
    /// the room's last seq.
    pub restart: bool,
}

pub(crate) struct RoomActorState {
    handle: Arc<RoomHandle>,
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    relay: Option<Arc<Relay>>,
    /// Loaded the room's last seq: operations may run.
    ready: bool,
    init_attempts: u32,
    /// Reused for DM recipients, so a DM's fan-out does not allocate.
    scratch: Vec<Arc<SessionHandle>>,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomActorState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomActorState, ActorProcessingErr> {
        let RoomArgs { handle, store, directory, relay, restart } = args;
        ROOMS_ACTIVE.gauge().increment(1.0);
        // Either way, it starts by draining what was queued before it ran.
        myself.send_message(if restart { RoomMsg::Init } else { RoomMsg::Wake })?;
        Ok(RoomActorState { handle, store, directory, relay, ready: !restart, init_attempts: 0, scratch: Vec::new() })
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
            RoomMsg::Init => state.init(&myself).await,
            RoomMsg::Wake if state.ready => state.drain(),
            RoomMsg::Wake => Ok(()), // Init drains when it is done
            RoomMsg::Stop => {
                myself.stop(None);
                Ok(())
            }
        }
    }
}

impl RoomActorState {
    async fn init(&mut self, myself: &ActorRef<RoomMsg>) -> Result<(), ActorProcessingErr> {
        let handle = self.handle.clone();
        let stored = match self.store.last_seq(&handle.name).await {
            Ok(stored) => stored,
            Err(e) => {
                let error = e.to_string();
                self.init_attempts += 1;
                if self.init_attempts >= INIT_ATTEMPTS_MAX {
                    tracing::error!(room = %handle.name, error, attempts = self.init_attempts, "room cannot start; telling its members");
                    self.give_up();
                    myself.stop(None);
                } else {
                    let wait_ms = (INIT_BACKOFF_MS * self.init_attempts as u64).min(INIT_BACKOFF_MAX_MS);
                    tracing::warn!(room = %handle.name, error, wait_ms, "room cannot load its last seq yet; retrying");
                    myself.send_after(Duration::from_millis(wait_ms), || RoomMsg::Init);
                }
                return Ok(());
            }
        };
        {
            let mut state = handle.state.lock();
            if stored > state.last_published {
                // Stored, and not published by the actor that crashed: its
                // recipients get it replayed from the store, in order, and
                // the queued publishes of those seqs are then skipped.
                tracing::warn!(room = %handle.name, from = state.last_published, to = stored, "replaying after restart");
                let replay =
                    OutItem::Replay { room: handle.name.clone(), after: state.last_published, upto: stored, ts_min: 0 };
                match &handle.kind {
                    RoomKindOwned::Public => {
                        for member in &state.members {
                            member.outbox.push_unbounded(replay.clone());
                        }
                    }
                    RoomKindOwned::Dm(a, b) => {
                        // A DM's recipients are every session of both users.
                        self.scratch.clear();
                        self.directory.sessions_of(a, &mut self.scratch);
                        self.directory.sessions_of(b, &mut self.scratch);
                        for session in self.scratch.drain(..) {
                            session.outbox.push_unbounded(replay.clone());
                        }
                    }
                }
                state.last_published = stored;
            }
            if state.head_crashes >= POISON_OP_CRASHES_MAX {
                let op = state.ops.pop_front();
                state.head_crashes = 0;
                drop(state);
                tracing::error!(room = %handle.name, crashes = POISON_OP_CRASHES_MAX, "dropping an operation that keeps crashing the room");
                if let Some(RoomOp::Join { session, req, .. }) = op {
                    let frame = ServerFrame::error(Some(req), ErrorCode::Internal, "the room could not take this join");
                    let _ = session.send(&frame);
                }
            }
        }
        self.ready = true;
        self.drain()
    }

    /// Does every queued operation, oldest first. An operation that panics
    /// is put back at the front, and the actor fails.
    fn drain(&mut self) -> Result<(), ActorProcessingErr> {
        let handle = self.handle.clone();
        handle.wake_sent.store(false, Ordering::Release);
        loop {
            let next = {
                let mut state = handle.state.lock();
                let next = state.ops.pop_front();
                if next.is_none() && state.ops.capacity() > OPS_CAPACITY_KEPT_MAX {
                    // A burst (a reconnect storm's joins) should not leave a
                    // large idle allocation behind in every room.
                    state.ops = VecDeque::new();
                }
                next
            };
            let Some(mut op) = next else { return Ok(()) };
            match catch_unwind(AssertUnwindSafe(|| self.apply(&mut op))) {
                Ok(()) => handle.state.lock().head_crashes = 0,
                Err(panic) => {
                    let mut state = handle.state.lock();
                    state.ops.push_front(op);
                    state.head_crashes += 1;
                    let reason = panic_message(&panic);
                    return Err(format!("room {}: an operation panicked: {reason}", handle.name).into());
                }
            }
        }
    }

    fn apply(&mut self, op: &mut RoomOp) {
        match op {
            RoomOp::Join { session, req, since, horizon, .. } => {
                failpoint!("room.join");
                self.join(session, *req, *since, *horizon);
            }
            RoomOp::Leave { session, reply } => self.leave(*session, reply.take()),
            RoomOp::Typing { user, session, .. } => self.typing(user, session.as_deref()),
            RoomOp::Members { session, req, after } => self.members(session, *req, after.as_deref()),
            RoomOp::Publish(msgs) => {
                failpoint!("room.publish");
                self.publish(std::mem::take(msgs));
            }
            RoomOp::CatchUp(seq) => self.catch_up(*seq),
            RoomOp::ReplayRecent { ts_min } => self.replay_recent(*ts_min),
            RoomOp::RemotePresence { node, users, online } => {
                self.remote_presence(node, std::mem::take(users), *online)
            }
            RoomOp::RosterAsked => self.roster(false),
            RoomOp::RemoteRoster { node, users, part, parts } => {
                self.remote_roster(node, std::mem::take(users), *part, *parts)
            }
            RoomOp::RefreshRoster { silent_max } => self.refresh_roster(*silent_max),
            RoomOp::NodeGone(node) => self.node_gone(node),
            RoomOp::Relayed { op, .. } => self.apply(op),
        }
    }

    /// The room cannot start: every member and queued joiner is told to
    /// join again, and the handle closes (its users fetch a fresh room).
    fn give_up(&mut self) {
        let handle = &self.handle;
        let mut state = handle.state.lock();
        state.closed = true;
        handle.stop_following();
        let members = std::mem::take(&mut state.members);
        state.user_sessions.clear();
        state.present.clear();
        state.remote.clear();
        state.remote_heard.clear();
        state.remote_rosters.clear();
        state.json_members = 0;
        let ops = std::mem::take(&mut state.ops);
        drop(state);
        let message = format!("room {} is unavailable; join it again", handle.name);
        for member in members {
            let _ = member.send(&ServerFrame::error(None, ErrorCode::Overloaded, message.clone()));
        }
        for op in ops {
            match op {
                RoomOp::Join { session, req, .. } => {
                    let _ = session.send(&ServerFrame::error(Some(req), ErrorCode::Overloaded, message.clone()));
                }
                RoomOp::Leave { reply: Some((session, req)), .. } => {
                    let _ = session.send(&ServerFrame::ok(req));
                }
                _ => {}
            }
        }
    }

    fn join(&mut self, peer: &Arc<SessionHandle>, req: u64, since: Option<u64>, horizon: u64) {
        let handle = &self.handle;
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        if !state.member_index.contains_key(&peer.id) {
            let position = state.members.len();
            state.member_index.insert(peer.id, position);
            state.members.push(peer.clone());
            if peer.encoding == viche_protocol::Encoding::Json {
                state.json_members += 1;
            }
            let count = state.user_sessions.entry(peer.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                if present_add(&mut state, &peer.user) {
                    let frame = ServerFrame::Presence {
                        room: handle.name.to_string(),
                        user: peer.user.to_string(),
                        online: true,
                    };
                    broadcast(&state, &frame, |m| m.id != peer.id);
                }
                self.relay_presence(&peer.user, true);
            }
        }
        let last = state.last_published;
        // Retention removed every seq up to the horizon: a replay starts
        // after it, and says so when it skipped what `since` asked for.
        let horizon = horizon.min(last);
        let truncated = since.is_some_and(|s| s < horizon);
        let missed = since.map_or(0, |s| last.saturating_sub(s.max(horizon)));
        // The first names only: a join's work does not grow with the room.
        let members = state.present.keys().take(MEMBERS_PAGE_MAX).map(|u| u.to_string()).collect();
        let ok = ServerFrame::Ok {
            req,
            room: Some(handle.name.to_string()),
            seq: Some(last),
            members: Some(members),
            more: Some(missed > REPLAY_MESSAGES_MAX),
            members_total: Some(state.present.len() as u64),
            first_seq: Some(crate::store::first_seq(horizon, last)),
            truncated: truncated.then_some(true),
        };
        let _ = peer.send(&ok);
        if missed > 0 {
            let after = last - missed.min(REPLAY_MESSAGES_MAX);
            peer.outbox.push_unbounded(OutItem::Replay { room: handle.name.clone(), after, upto: last, ts_min: 0 });
        }
    }

    fn leave(&mut self, session: SessionId, reply: Option<(Arc<SessionHandle>, u64)>) {
        let handle = &self.handle;
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        if let Some(pos) = state.member_index.remove(&session) {
            let peer = state.members.swap_remove(pos);
            if let Some(moved) = state.members.get(pos).map(|m| m.id) {
                state.member_index.insert(moved, pos);
            }
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
                if present_remove(&mut state, &peer.user) {
                    let frame = ServerFrame::Presence {
                        room: handle.name.to_string(),
                        user: peer.user.to_string(),
                        online: false,
                    };
                    broadcast(&state, &frame, |_| true);
                }
                self.relay_presence(&peer.user, false);
            }
        }
        drop(state);
        if let Some((peer, req)) = reply {
            let _ = peer.send(&ServerFrame::ok(req));
        }
    }

    /// `user` is typing: tells this node's members (but the user's own
    /// sessions) and, when a member of this node typed, the other nodes.
    fn typing(&mut self, user: &Arc<str>, session: Option<&SessionHandle>) {
        let state = self.handle.state.lock();
        if session.is_some_and(|s| !state.member_index.contains_key(&s.id)) {
            return; // left meanwhile
        }
        let frame = ServerFrame::Typing { room: self.handle.name.to_string(), user: user.to_string() };
        broadcast(&state, &frame, |m| m.user != *user);
        drop(state);
        if let (Some(relay), Some(_)) = (&self.relay, session) {
            relay.typing(&self.handle.name, user);
        }
    }

    /// A page of the room's online users after `after`, in name order.
    fn members(&mut self, session: &SessionHandle, req: u64, after: Option<&str>) {
        let state = self.handle.state.lock();
        if !state.member_index.contains_key(&session.id) {
            let frame = ServerFrame::error(Some(req), ErrorCode::NotJoined, "join the room to list its members");
            drop(state);
            let _ = session.send(&frame);
            return;
        }
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut names = state.present.range::<str, _>((start, Bound::Unbounded)).map(|(u, _)| u.to_string());
        let users: Vec<String> = names.by_ref().take(MEMBERS_PAGE_MAX).collect();
        let more = names.next().is_some();
        drop(state);
        let _ = session.send(&ServerFrame::Members { req, room: self.handle.name.to_string(), users, more });
    }

    /// Fills `self.scratch` with a DM room's recipients: every session of
    /// both its users.
    fn dm_recipients(&mut self) {
        if let RoomKindOwned::Dm(a, b) = &self.handle.kind {
            self.scratch.clear();
            self.directory.sessions_of(a, &mut self.scratch);
            self.directory.sessions_of(b, &mut self.scratch);
        }
    }

    /// Replays `(last_published, upto]` from the store to the room's
    /// recipients (DM: `self.scratch`, filled by the caller), and counts
    /// the gap. Messages stored by another node and relayed at most once,
    /// maybe after later ones, or a publish out of order after a crash.
    fn repair_gap(&self, state: &mut RoomState, upto: u64) {
        debug_assert!(upto > state.last_published);
        GAP_REPAIRS.counter().increment(1);
        tracing::debug!(room = %self.handle.name, after = state.last_published, upto, "gap; replaying it from the store");
        let replay = OutItem::Replay { room: self.handle.name.clone(), after: state.last_published, upto, ts_min: 0 };
        let recipients = match &self.handle.kind {
            RoomKindOwned::Public => &state.members,
            RoomKindOwned::Dm(..) => &self.scratch,
        };
        for m in recipients {
            m.outbox.push_unbounded(replay.clone());
        }
        state.last_published = upto;
    }

    /// Tells the other nodes that `user` came into (or left) this public
    /// room here.
    fn relay_presence(&self, user: &str, online: bool) {
        if let (Some(relay), RoomKindOwned::Public) = (&self.relay, &self.handle.kind) {
            relay.presence(&self.handle.name, user, online);
        }
    }

    /// Another node's users came into (or left) the room there: this
    /// node's members are told of each user now present nowhere else (or
    /// gone from everywhere).
    fn remote_presence(&mut self, node: &NodeId, users: Vec<Arc<str>>, online: bool) {
        let handle = self.handle.clone();
        let mut state = handle.state.lock();
        if online && !state.remote.contains_key(node) && state.remote.len() >= crate::cluster::NODES_MAX {
            CLUSTER_RELAY_JUNK.counter().increment(1);
            return;
        }
        for user in users {
            let set = state.remote.entry(node.clone()).or_default();
            let changed = if online {
                set.len() < ROOM_REMOTE_USERS_PER_NODE_MAX && set.insert(user.clone())
            } else {
                set.remove(&user)
            };
            if set.is_empty() {
                state.remote.remove(node);
                state.remote_heard.remove(node);
            }
            if !changed {
                continue;
            }
            let flipped = if online { present_add(&mut state, &user) } else { present_remove(&mut state, &user) };
            if flipped {
                let frame = ServerFrame::Presence { room: handle.name.to_string(), user: user.to_string(), online };
                broadcast(&state, &frame, |_| true);
            }
        }
        heard_from(&mut state, node);
    }

    /// Tells the other nodes who is in the room here: another node opened
    /// it (`full` false: nothing to say when nobody is), or it is time for
    /// the periodic roster (`full`: said even when nobody is, so that a
    /// lost `Presence` is corrected within a period).
    fn roster(&mut self, full: bool) {
        let Some(relay) = &self.relay else { return };
        let state = self.handle.state.lock();
        let users: Vec<&str> = state.user_sessions.keys().map(|u| &**u).collect();
        if full || !users.is_empty() {
            relay.roster(&self.handle.name, &users, full);
        }
    }

    /// Part of another node's periodic roster. Parts arrive in order (one
    /// publisher, one subject); one missing drops the roster (the next
    /// period's corrects). Complete, it replaces what is known of `node`.
    fn remote_roster(&mut self, node: &NodeId, users: Vec<Arc<str>>, part: u32, parts: u32) {
        let complete = {
            let mut state = self.handle.state.lock();
            if part == 0 {
                state.remote_rosters.remove(node);
                if state.remote_rosters.len() >= crate::cluster::NODES_MAX {
                    CLUSTER_RELAY_JUNK.counter().increment(1);
                    return;
                }
                state.remote_rosters.insert(node.clone(), (0, BTreeSet::new()));
            }
            let Some((next, names)) = state.remote_rosters.get_mut(node) else { return };
            if *next != part {
                state.remote_rosters.remove(node);
                return;
            }
            *next += 1;
            let room_left = ROOM_REMOTE_USERS_PER_NODE_MAX.saturating_sub(names.len());
            names.extend(users.into_iter().take(room_left));
            if part + 1 < parts {
                return;
            }
            let (_, names) = state.remote_rosters.remove(node).expect("just seen");
            names
        };
        let known: BTreeSet<Arc<str>> = self.handle.state.lock().remote.get(node).cloned().unwrap_or_default();
        let gone: Vec<Arc<str>> = known.difference(&complete).cloned().collect();
        let came: Vec<Arc<str>> = complete.difference(&known).cloned().collect();
        self.remote_presence(node, gone, false);
        self.remote_presence(node, came, true);
        heard_from(&mut self.handle.state.lock(), node);
    }

    /// The periodic roster: this node's users here to the others, and the
    /// users of nodes silent for `silent_max` forgotten (a node that closed
    /// the room, and whose last `Presence` was lost).
    fn refresh_roster(&mut self, silent_max: Duration) {
        self.roster(true);
        let silent: Vec<NodeId> = {
            let mut state = self.handle.state.lock();
            let state = &mut *state;
            let heard = &state.remote_heard;
            state.remote.keys().filter(|n| heard.get(*n).is_none_or(|at| at.elapsed() >= silent_max)).cloned().collect()
        };
        for node in silent {
            self.node_gone(&node);
        }
    }

    /// A node left the cluster: its users left the room there.
    fn node_gone(&mut self, node: &NodeId) {
        self.handle.state.lock().remote_rosters.remove(node);
        let users: Vec<Arc<str>> = match self.handle.state.lock().remote.get(node) {
            Some(users) => users.iter().cloned().collect(),
            None => return,
        };
        self.remote_presence(node, users, false);
    }

    /// A DM room opening on a node of a cluster: its users' sessions here
    /// get the room's newest messages (at most [`REPLAY_MESSAGES_MAX`])
    /// stored since `ts_min`, which other nodes stored and relayed while
    /// the room was not open here (a relayed message the room then counts
    /// as delivered).
    fn replay_recent(&mut self, ts_min: u64) {
        let handle = self.handle.clone();
        let state = handle.state.lock();
        let upto = state.last_published;
        let after = upto.saturating_sub(REPLAY_MESSAGES_MAX);
        if after == upto {
            return;
        }
        self.dm_recipients();
        let replay = OutItem::Replay { room: handle.name.clone(), after, upto, ts_min };
        for session in &self.scratch {
            session.outbox.push_unbounded(replay.clone());
        }
    }

    fn catch_up(&mut self, seq: u64) {
        let handle = self.handle.clone();
        let mut state = handle.state.lock();
        if seq > state.last_published {
            self.dm_recipients();
            self.repair_gap(&mut state, seq);
        }
    }

    fn publish(&mut self, msgs: Vec<(Msg, Option<Instant>)>) {
        let handle = self.handle.clone();
        let mut state = handle.state.lock();
        state.last_activity = Instant::now();
        for (msg, received_at) in msgs {
            if msg.seq <= state.last_published {
                continue; // had it: a restart's replay, or relayed twice
            }
            self.dm_recipients();
            if msg.seq != state.last_published + 1 {
                self.repair_gap(&mut state, msg.seq - 1);
            }
            let seq = msg.seq;
            let frame = ServerFrame::Msg(msg);
            let delivered = match &handle.kind {
                RoomKindOwned::Public => broadcast(&state, &frame, |_| true),
                RoomKindOwned::Dm(..) => {
                    let with_json = self.scratch.iter().any(|p| p.encoding == viche_protocol::Encoding::Json);
                    let encoded = EncodedFrame::new(&frame, with_json);
                    let mut n = 0;
                    for (i, p) in self.scratch.iter().enumerate() {
                        n += p.send_shared(&encoded, i < DIRECT_WRITES_PER_FANOUT_MAX).is_ok() as usize;
                    }
                    crate::metrics::hot().frames_out(&frame, n);
                    n
                }
            };
            // Only now: the message is in every member's outbox.
            state.last_published = seq;
            let hot = crate::metrics::hot();
            hot.deliveries.increment(delivered as u64);
            if let Some(received_at) = received_at {
                hot.send_deliver_latency.record(received_at.elapsed().as_secs_f64());
            }
        }
    }
}

/// Users one other node may have in one room, as this node records them;
/// past it, a roster's or presence's further names are ignored.
pub(crate) const ROOM_REMOTE_USERS_PER_NODE_MAX: usize = 1_000_000;

/// `node` just said who is in the room there: its users are kept another
/// roster period. Only nodes with users here are tracked (so at most
/// `NODES_MAX`, whatever names junk frames carry).
fn heard_from(state: &mut RoomState, node: &NodeId) {
    if state.remote.contains_key(node) {
        state.remote_heard.insert(node.clone(), Instant::now());
    }
}

/// `user` is now present on one more node (this one, or another); true
/// when it was present nowhere before.
fn present_add(state: &mut RoomState, user: &Arc<str>) -> bool {
    let nodes = state.present.entry(user.clone()).or_insert(0);
    *nodes += 1;
    *nodes == 1
}

/// `user` is present on one node fewer; true when it is now nowhere.
fn present_remove(state: &mut RoomState, user: &Arc<str>) -> bool {
    match state.present.get_mut(user) {
        Some(nodes) if *nodes > 1 => {
            *nodes -= 1;
            false
        }
        Some(_) => {
            state.present.remove(user);
            true
        }
        None => false,
    }
}

/// Encodes `frame` once per encoding in use and queues it for every member
/// that `to` selects. Returns how many it was queued for (a member closing
/// as a slow consumer is not counted).
fn broadcast(state: &RoomState, frame: &ServerFrame, to: impl Fn(&SessionHandle) -> bool) -> usize {
    let encoded = EncodedFrame::new(frame, state.json_members > 0);
    let mut n = 0;
    for (i, m) in state.members.iter().filter(|m| to(m)).enumerate() {
        n += m.send_shared(&encoded, i < DIRECT_WRITES_PER_FANOUT_MAX).is_ok() as usize;
    }
    crate::metrics::hot().frames_out(frame, n);
    n
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NODES_MAX;

    fn room() -> (RoomActorState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
        let state = RoomActorState {
            handle: Arc::new(RoomHandle::new("lobby".into()).unwrap()),
            store: Arc::new(store),
            directory: Arc::new(Directory::default()),
            relay: None,
            ready: true,
            init_attempts: 0,
            scratch: Vec::new(),
        };
        (state, dir)
    }

    /// Junk frames naming ever new nodes fill no per-room table past
    /// `NODES_MAX` nodes: presence from more is dropped, and rosters (even
    /// empty ones, which leave no users) leave nothing behind.
    #[test]
    fn other_nodes_recorded_in_a_room_are_bounded() {
        let (mut room, _dir) = room();
        for i in 0..NODES_MAX + 50 {
            let node = NodeId::from(format!("junk{i}"));
            room.remote_presence(&node, vec![Arc::from(format!("u{i}"))], true);
            room.remote_roster(&NodeId::from(format!("empty{i}")), Vec::new(), 0, 1);
            room.remote_roster(&NodeId::from(format!("partial{i}")), vec![Arc::from("x")], 0, 2);
        }
        let state = room.handle.state.lock();
        assert_eq!(state.remote.len(), NODES_MAX, "presence from nodes past the bound is dropped");
        assert_eq!(state.present.len(), NODES_MAX);
        assert_eq!(state.remote_heard.len(), NODES_MAX, "only nodes with users here are tracked");
        assert_eq!(state.remote_rosters.len(), NODES_MAX, "rosters in progress are bounded");
    }

    /// A complete roster replaces what was known of its node; one with a
    /// part missing changes nothing.
    #[test]
    fn a_complete_roster_replaces_a_nodes_users_and_a_broken_one_is_dropped() {
        let (mut room, _dir) = room();
        let n1 = NodeId::from("n1");
        let names = |v: &[&str]| v.iter().map(|u| Arc::from(*u)).collect::<Vec<Arc<str>>>();
        room.remote_presence(&n1, names(&["ann", "bob"]), true);
        room.remote_roster(&n1, names(&["bob"]), 0, 2);
        room.remote_roster(&n1, names(&["cid"]), 2, 3); // part 1 lost: dropped
        let present =
            |room: &RoomActorState| room.handle.state.lock().present.keys().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(present(&room), ["ann", "bob"]);
        room.remote_roster(&n1, names(&["bob"]), 0, 2);
        room.remote_roster(&n1, names(&["cid"]), 1, 2);
        assert_eq!(present(&room), ["bob", "cid"]);
        room.remote_roster(&n1, Vec::new(), 0, 1);
        assert!(present(&room).is_empty());
        assert!(room.handle.state.lock().remote_heard.is_empty());
    }
}
