//! The relay: how a room's traffic reaches its members on other nodes.
//!
//! A room's members may be connected to any node. Every node that has the
//! room open subscribes once to the room's subject (`PREFIX.room.NAME`):
//! one copy of each message per interested node, not per member. The node
//! that stored a message publishes it there once, after its own members
//! have it; each node hands what it receives to its own room actor, which
//! fans out with the same encode-once path as for local messages.
//!
//! A DM goes to every session of its two users, who need not have the DM
//! room open: it travels on each user's subject (`PREFIX.user.NAME`),
//! which every node with a session of that user follows, and the
//! receiving node opens the DM room to deliver it.
//!
//! Core NATS is at-most-once, so nothing here is trusted to arrive: the
//! room actor delivers by seq, skips what it has, and replays a gap from
//! the store before anything past it (`room/actor.rs`). A lost message is
//! repaired when the next one of its room arrives, or when the room's last
//! seq is announced: every [`ANNOUNCE_INTERVAL_MS`], for
//! [`ANNOUNCE_FOR_MS`] after it last stored a message in a room, a node
//! publishes that room's last seq, and a node behind it replays the rest.
//!
//! Bounded: outgoing frames wait in a queue of [`RELAY_QUEUE_MAX`]; when it
//! is full (NATS is away and the client's own buffer is full too) a frame
//! is dropped and counted, and the receivers repair the gap. Incoming
//! frames wait in each subscription's buffer (the client's
//! `subscription_capacity`); a frame that does not decode, names another
//! room or an invalid user is dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use viche_protocol::validate::{is_valid_username, parse_room, RoomKind};
use viche_protocol::Msg;

use super::NodeId;
use crate::metrics::{CLUSTER_RELAYED, CLUSTER_RELAY_DROPPED, CLUSTER_RELAY_JUNK};
use crate::room::{RoomHandle, RoomOp};

/// Frames waiting to be handed to the NATS client, at most.
pub const RELAY_QUEUE_MAX: usize = 8192;
/// A relayed batch of messages is cut into frames of about this many bytes
/// (NATS refuses payloads past its `max_payload`, 1 MiB by default).
pub const RELAY_FRAME_BYTES_MAX: usize = 256 * 1024;
/// Messages one received frame may carry, at most (more is junk).
pub const RELAY_FRAME_MSGS_MAX: usize = 4096;
/// How often a node announces the last seq of the rooms it wrote lately.
pub const ANNOUNCE_INTERVAL_MS: u64 = 1_000;
/// How long after its last write here a room's last seq is announced.
pub const ANNOUNCE_FOR_MS: u64 = 10_000;
/// Rooms whose last seq is waiting to be announced, at most; a room
/// written past it is not announced (its next message repairs gaps).
pub const ANNOUNCED_ROOMS_MAX: usize = 65_536;

/// What travels on a room's (or, for a DM room, a user's) subject.
#[derive(Debug, Deserialize)]
pub(crate) enum Relayed {
    /// Stored messages of one room, in seq order.
    Msgs(Vec<Msg>),
    /// A member on the sending node is typing in `room`.
    Typing { room: String, user: String },
    /// The sending node stored `room`'s messages up to `seq`.
    Last { room: String, seq: u64 },
    /// `user` came into (or left) `room` on `node`.
    Presence { room: String, node: String, user: String, online: bool },
    /// `node` opened `room`: the others answer with a roster.
    Hello { room: String, node: String },
    /// Some of the users in `room` on `node` (a roster comes in chunks).
    /// `parts` 0: an answer to `Hello`, adding to what is known; else part
    /// `part` of `parts` of a periodic roster, which, complete, replaces
    /// what is known of `node` in `room`.
    Roster {
        room: String,
        node: String,
        users: Vec<String>,
        #[serde(default)]
        part: u32,
        #[serde(default)]
        parts: u32,
    },
}

/// [`Relayed`] as sent: borrowed, so relaying copies no message.
#[derive(Serialize)]
enum RelayedRef<'a> {
    Msgs(&'a [&'a Msg]),
    Typing { room: &'a str, user: &'a str },
    Last { room: &'a str, seq: u64 },
    Presence { room: &'a str, node: &'a str, user: &'a str, online: bool },
    Hello { room: &'a str, node: &'a str },
    Roster { room: &'a str, node: &'a str, users: &'a [&'a str], part: u32, parts: u32 },
}

/// Names in one roster frame, at most (a roster is cut into frames).
pub const ROSTER_FRAME_USERS_MAX: usize = 1000;

/// The sending half of the relay, shared by the writer and the rooms.
pub(crate) struct Relay {
    prefix: String,
    node_id: NodeId,
    queue: mpsc::Sender<(String, Bytes)>,
    /// Rooms written here lately: their last seq, and when.
    written: Mutex<HashMap<Arc<str>, (u64, Instant)>>,
}

impl Relay {
    /// The relay and the task that hands its queue to `client`.
    pub(crate) fn start(client: async_nats::Client, prefix: String, node_id: NodeId) -> Arc<Self> {
        let (relay, mut rx) = Self::new(prefix, node_id);
        tokio::spawn(async move {
            while let Some((subject, payload)) = rx.recv().await {
                // With NATS away the client buffers, then this waits: the
                // queue above fills and frames are dropped, not held.
                if let Err(e) = client.publish(subject, payload).await {
                    CLUSTER_RELAY_DROPPED.counter().increment(1);
                    tracing::debug!(error = %e, "cluster: a relayed frame was not sent");
                }
            }
        });
        let announcer = Arc::downgrade(&relay);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ANNOUNCE_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(relay) = announcer.upgrade() else { return };
                relay.announce();
            }
        });
        relay
    }

    /// The relay, and the receiving end of its queue (for the NATS client).
    fn new(prefix: String, node_id: NodeId) -> (Arc<Self>, mpsc::Receiver<(String, Bytes)>) {
        let (queue, rx) = mpsc::channel::<(String, Bytes)>(RELAY_QUEUE_MAX);
        (Arc::new(Self { prefix, node_id, queue, written: Mutex::new(HashMap::new()) }), rx)
    }

    /// Publishes the last seq of every room written here within
    /// [`ANNOUNCE_FOR_MS`], and forgets the others.
    fn announce(&self) {
        let due: Vec<(Arc<str>, u64)> = {
            let mut written = self.written.lock();
            written.retain(|_, (_, at)| at.elapsed() < Duration::from_millis(ANNOUNCE_FOR_MS));
            written.iter().map(|(room, (seq, _))| (room.clone(), *seq)).collect()
        };
        for (room, seq) in due {
            self.send(&room, &RelayedRef::Last { room: &room, seq }, "last");
        }
    }

    /// The subject of a room. Room names may hold `.` (NATS's token
    /// separator) but never `~`, so `.` becomes `~` and every room keeps a
    /// subject of its own.
    pub(crate) fn room_subject(&self, room: &str) -> String {
        room_subject(&self.prefix, room)
    }

    /// The subject of a user's DMs (names are spelled as rooms are).
    pub(crate) fn user_subject(&self, user: &str) -> String {
        format!("{}.user.{}", self.prefix, user.replace('.', "~"))
    }

    /// Relays a room's newly stored messages (seq order), cut into frames
    /// of about [`RELAY_FRAME_BYTES_MAX`].
    pub(crate) fn msgs(&self, room: &Arc<str>, msgs: &[&Msg]) {
        if let Some(last) = msgs.iter().map(|m| m.seq).max() {
            let mut written = self.written.lock();
            let full = written.len() >= ANNOUNCED_ROOMS_MAX;
            match written.get_mut(room) {
                Some((seq, at)) => {
                    *seq = (*seq).max(last);
                    *at = Instant::now();
                }
                None if !full => {
                    written.insert(room.clone(), (last, Instant::now()));
                }
                None => CLUSTER_RELAY_DROPPED.counter().increment(1),
            }
        }
        let mut start = 0;
        let mut bytes = 0;
        for (i, m) in msgs.iter().enumerate() {
            bytes += msg_bytes_estimate(m);
            let last = i + 1 == msgs.len();
            if bytes >= RELAY_FRAME_BYTES_MAX || last || i + 1 - start >= RELAY_FRAME_MSGS_MAX {
                self.send(room, &RelayedRef::Msgs(&msgs[start..=i]), "msgs");
                start = i + 1;
                bytes = 0;
            }
        }
    }

    /// Relays that `user` is typing in `room`; false when it was dropped.
    pub(crate) fn typing(&self, room: &str, user: &str) -> bool {
        self.send(room, &RelayedRef::Typing { room, user }, "typing")
    }

    /// Relays that `user` came into (or left) `room` on this node.
    pub(crate) fn presence(&self, room: &str, user: &str, online: bool) {
        self.send(room, &RelayedRef::Presence { room, node: &self.node_id, user, online }, "presence");
    }

    /// Asks the other nodes with `room` open who is in it there.
    pub(crate) fn hello(&self, room: &str) {
        self.send(room, &RelayedRef::Hello { room, node: &self.node_id }, "roster");
    }

    /// Tells the other nodes who is in `room` here, in frames of at most
    /// [`ROSTER_FRAME_USERS_MAX`] names: an answer to `Hello` (`full`
    /// false), or the periodic roster, which replaces what they know of
    /// this node's users there (sent even when empty).
    pub(crate) fn roster(&self, room: &str, users: &[&str], full: bool) {
        let parts = users.len().div_ceil(ROSTER_FRAME_USERS_MAX).max(1);
        let chunks = users.chunks(ROSTER_FRAME_USERS_MAX).chain((users.is_empty()).then_some(&[][..]));
        for (part, chunk) in chunks.enumerate() {
            let (part, parts) = if full { (part as u32, parts as u32) } else { (0, 0) };
            if !full && chunk.is_empty() {
                continue;
            }
            let frame = RelayedRef::Roster { room, node: &self.node_id, users: chunk, part, parts };
            self.send(room, &frame, "roster");
        }
    }

    /// Queues the answer to a message another node forwarded here, on its
    /// reply subject: after the room's relayed messages, in one queue.
    pub(crate) fn reply(&self, subject: String, reply: &super::forward::ForwardReply) {
        match rmp_serde::to_vec_named(reply) {
            Ok(payload) => {
                if self.queue.try_send((subject, Bytes::from(payload))).is_err() {
                    // The forwarding node answers its client at its deadline.
                    CLUSTER_RELAY_DROPPED.counter().increment(1);
                }
            }
            Err(e) => tracing::error!(error = %e, "cluster: a forward's reply did not encode"),
        }
    }

    /// Queues `frame` on the room's subject, or on both users' subjects
    /// for a DM room; false when the queue was full (it is dropped).
    fn send(&self, room: &str, frame: &RelayedRef<'_>, kind: &'static str) -> bool {
        let payload = match rmp_serde::to_vec_named(frame) {
            Ok(payload) => Bytes::from(payload),
            Err(e) => {
                tracing::error!(error = %e, room, "cluster: a frame did not encode");
                return false;
            }
        };
        let mut queued = true;
        let subjects = match parse_room(room) {
            Some(RoomKind::Dm(a, b)) => [Some(self.user_subject(a)), Some(self.user_subject(b))],
            _ => [Some(self.room_subject(room)), None],
        };
        for subject in subjects.into_iter().flatten() {
            match self.queue.try_send((subject, payload.clone())) {
                Ok(()) => CLUSTER_RELAYED.counter_with(kind).increment(1),
                Err(_) => {
                    CLUSTER_RELAY_DROPPED.counter().increment(1);
                    queued = false;
                }
            }
        }
        queued
    }
}

fn is_node_id(node: &str) -> bool {
    !node.is_empty() && node.len() <= super::NODE_ID_BYTES_MAX
}

pub(crate) fn room_subject(prefix: &str, room: &str) -> String {
    debug_assert!(!room.contains(['~', '*', '>', ' ']), "room names never hold these");
    format!("{prefix}.room.{}", room.replace('.', "~"))
}

/// About what a message takes encoded: its strings plus the field names.
fn msg_bytes_estimate(m: &Msg) -> usize {
    m.body.len() + m.room.len() + m.from.len() + m.cid.len() + 96
}

/// Hands what arrives on a room's subject to the room, until the room
/// closes (its handle aborts this task) or the subscription ends.
pub(crate) async fn follow(mut subscription: async_nats::Subscriber, room: Arc<RoomHandle>) {
    while let Some(message) = subscription.next().await {
        match rmp_serde::from_slice::<Relayed>(&message.payload) {
            Ok(Relayed::Msgs(msgs))
                if !msgs.is_empty()
                    && msgs.len() <= RELAY_FRAME_MSGS_MAX
                    && msgs.iter().all(|m| *m.room == *room.name && m.seq > 0) =>
            {
                room.publish_relayed(msgs);
            }
            Ok(Relayed::Typing { room: name, user }) if *name == *room.name && is_valid_username(&user) => {
                room.typing_relayed(user.into());
            }
            Ok(Relayed::Last { room: name, seq }) if *name == *room.name => {
                room.catch_up(seq);
            }
            Ok(Relayed::Presence { room: name, node, user, online })
                if *name == *room.name && is_node_id(&node) && is_valid_username(&user) =>
            {
                room.relayed(RoomOp::RemotePresence { node: node.into(), users: vec![user.into()], online });
            }
            Ok(Relayed::Hello { room: name, node }) if *name == *room.name && is_node_id(&node) => {
                room.relayed(RoomOp::RosterAsked);
            }
            Ok(Relayed::Roster { room: name, node, users, part, parts })
                if *name == *room.name
                    && is_node_id(&node)
                    && users.len() <= ROSTER_FRAME_USERS_MAX
                    && users.iter().all(|u| is_valid_username(u))
                    && (parts == 0 || part < parts) =>
            {
                let users = users.into_iter().map(Arc::from).collect();
                room.relayed(match parts {
                    0 => RoomOp::RemotePresence { node: node.into(), users, online: true },
                    _ => RoomOp::RemoteRoster { node: node.into(), users, part, parts },
                });
            }
            _ => {
                CLUSTER_RELAY_JUNK.counter().increment(1);
                tracing::debug!(room = %room.name, bytes = message.payload.len(), "cluster: junk on a room's subject dropped");
            }
        }
    }
}

/// Hands `user`'s DMs that other nodes stored to their DM rooms here
/// (opened for the purpose), after saying on `ready` that the
/// subscription is up; ends when the user's last session here does (the
/// user's share aborts it).
pub(crate) async fn follow_user(
    cluster: Arc<super::Cluster>,
    user: Arc<str>,
    rooms: crate::room::Rooms,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut subscription = match cluster.subscribe(cluster.relay.user_subject(&user)).await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::warn!(error = %e, %user, "cluster: cannot follow a user's DMs; they reach this node's sessions only from this node");
            return;
        }
    };
    let _ = ready.send(true);
    let is_dm_of_user = |room: &str| matches!(parse_room(room), Some(RoomKind::Dm(a, b)) if a == &*user || b == &*user);
    while let Some(message) = subscription.next().await {
        match rmp_serde::from_slice::<Relayed>(&message.payload) {
            Ok(Relayed::Msgs(msgs))
                if !msgs.is_empty()
                    && msgs.len() <= RELAY_FRAME_MSGS_MAX
                    && is_dm_of_user(&msgs[0].room)
                    && msgs.iter().all(|m| m.room == msgs[0].room && m.seq > 0) =>
            {
                match rooms.get(&msgs[0].room).await {
                    Ok(room) => {
                        room.publish_relayed(msgs);
                    }
                    // Its sessions get these with the room's next message.
                    Err(refusal) => {
                        tracing::warn!(room = %msgs[0].room, why = %refusal.message, "cluster: a DM room could not open")
                    }
                }
            }
            Ok(Relayed::Typing { room, user: typist }) if is_dm_of_user(&room) && is_valid_username(&typist) => {
                if let Some(handle) = rooms.open_now(&room) {
                    handle.typing_relayed(typist.into());
                }
            }
            Ok(Relayed::Last { room, seq }) if seq > 0 && is_dm_of_user(&room) => match rooms.get(&room).await {
                Ok(handle) => {
                    handle.catch_up(seq);
                }
                Err(refusal) => tracing::warn!(%room, why = %refusal.message, "cluster: a DM room could not open"),
            },
            _ => {
                CLUSTER_RELAY_JUNK.counter().increment(1);
                tracing::debug!(%user, bytes = message.payload.len(), "cluster: junk on a user's subject dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_has_a_subject_of_its_own() {
        assert_eq!(room_subject("viche", "lobby"), "viche.room.lobby");
        assert_eq!(room_subject("viche", "a.b"), "viche.room.a~b");
        assert_eq!(room_subject("viche", "dm:alice:bob"), "viche.room.dm:alice:bob");
        assert_ne!(room_subject("viche", "a.b"), room_subject("viche", "a_b"));
    }

    #[test]
    fn a_full_queue_drops_frames_and_a_full_table_announces_no_more_rooms() {
        let (relay, mut rx) = Relay::new("t".into(), "n0".into());
        // Nothing takes frames off (NATS away): the queue fills, then drops.
        let queued = (0..RELAY_QUEUE_MAX + 10).filter(|_| relay.typing("lobby", "alice")).count();
        assert_eq!(queued, RELAY_QUEUE_MAX);
        assert!(!relay.typing("lobby", "alice"));
        let (subject, _) = rx.try_recv().expect("a queued frame");
        assert_eq!(subject, "t.room.lobby");
        assert!(relay.typing("lobby", "alice"), "room again once one is taken");
        // Rooms written lately, whose last seq is announced: bounded.
        let msg = Msg { seq: 1, ..Msg::default() };
        for i in 0..ANNOUNCED_ROOMS_MAX + 10 {
            relay.msgs(&Arc::from(format!("r{i}")), &[&msg]);
        }
        assert_eq!(relay.written.lock().len(), ANNOUNCED_ROOMS_MAX);
        assert!(!relay.written.lock().contains_key(&*format!("r{ANNOUNCED_ROOMS_MAX}")));
        // A room already there still moves on.
        relay.msgs(&Arc::from("r0"), &[&Msg { seq: 9, ..Msg::default() }]);
        assert_eq!(relay.written.lock()["r0"].0, 9);
    }

    #[test]
    fn a_relayed_frame_decodes_as_sent() {
        let msg = Msg { room: "lobby".into(), seq: 7, from: "alice".into(), body: "hi".into(), ..Msg::default() };
        let payload = rmp_serde::to_vec_named(&RelayedRef::Msgs(&[&msg])).unwrap();
        match rmp_serde::from_slice::<Relayed>(&payload).unwrap() {
            Relayed::Msgs(msgs) => assert_eq!(msgs, vec![msg]),
            other => panic!("decoded as {other:?}"),
        }
        let payload = rmp_serde::to_vec_named(&RelayedRef::Typing { room: "lobby", user: "alice" }).unwrap();
        assert!(matches!(
            rmp_serde::from_slice::<Relayed>(&payload).unwrap(),
            Relayed::Typing { room, user } if room == "lobby" && user == "alice"
        ));
    }
}
