//! The `Store` trait: everything Viche keeps durably.
//!
//! Shaped for the writer's group commit (a whole batch in one call) and for
//! (room, seq) range reads. The store, not the room, assigns seqs and
//! dedupes by (from, cid), inside the same atomic commit: so a failed or
//! retried batch can never leave a gap, reuse a seq, or store a cid twice.
//!
//! Version 1.1 adds, per user, durable conversations and read markers,
//! and sequenced events (edits, deletions, reactions) whose effect on their
//! target is part of the commit that stores them (`events.rs`: the rules,
//! written once for both stores).

pub(crate) mod deadline;
pub mod embedded;
pub mod events;
#[cfg(feature = "failpoints")]
pub(crate) mod failpoints;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use viche_protocol::{Conversation, ErrorCode, Msg};

pub use events::Event;

/// A message (or a v1.1 event) the writer asks the store to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: Arc<str>,
    pub from: Arc<str>,
    pub cid: String,
    pub body: String,
    /// Set by the server when the batch is formed, in ms since the Unix epoch.
    pub ts_ms: u64,
    /// An ordinary message, or an edit, deletion or reaction of a target.
    pub event: Event,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored with the next seq of its room.
    Stored(Msg),
    /// (from, cid) was already stored: this is the original message
    /// (possibly of another room). Nothing new was stored. Also a reaction
    /// that repeats the current state: the event that set it.
    Duplicate(Msg),
    /// Not stored: the event's target (or `reply_to`) breaks a rule of
    /// protocol 1.1 (`not_found`, `forbidden`, `invalid`).
    Refused(ErrorCode, &'static str),
}

/// What became of adding a public room to a user's conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Added now, or already there.
    Kept,
    /// The user already keeps the most public rooms allowed; nothing changed.
    Full,
}

/// A read marker after `mark_read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub read_seq: u64,
    /// The marker moved (other sessions are told).
    pub moved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    /// An argon2id PHC string; never the password.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store corrupt or inconsistent: {0}")]
    Corrupt(String),
    /// An I/O error; the embedded store reopens its file after one.
    #[error("store I/O error: {0}")]
    Io(String),
    /// No answer within the deadline (`--store-timeout-ms`).
    #[error("store timeout: {0}")]
    Timeout(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The conversation entry of `room` for `user`, from what a store keeps
/// (`last` may be filled in later: a store pages before reading it).
pub(crate) fn conversation(
    user: &str,
    room: &str,
    (last_seq, last_ts): (u64, u64),
    last: Option<Msg>,
    read_seq: u64,
) -> Conversation {
    let peer = match viche_protocol::validate::parse_room(room) {
        Some(viche_protocol::validate::RoomKind::Dm(a, b)) => Some(if a == user { b } else { a }.to_owned()),
        _ => None,
    };
    let read_seq = read_seq.min(last_seq);
    Conversation {
        room: room.to_owned(),
        kind: if peer.is_some() { "dm" } else { "room" }.to_owned(),
        peer,
        last_seq,
        last_ts,
        last,
        read_seq,
        unread: last_seq - read_seq,
    }
}

/// Sorts conversations newest activity first (room name breaks ties) and
/// cuts the page after `before`.
pub(crate) fn page_conversations(
    mut all: Vec<Conversation>,
    before: Option<u64>,
    limit: usize,
) -> (Vec<Conversation>, bool) {
    if let Some(before) = before {
        all.retain(|c| c.last_ts < before);
    }
    all.sort_unstable_by(|a, b| b.last_ts.cmp(&a.last_ts).then_with(|| a.room.cmp(&b.room)));
    let more = all.len() > limit;
    all.truncate(limit);
    (all, more)
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends a batch in one durable commit (returns only after it is
    /// durable). Outcomes are returned in input order. Within one room,
    /// seqs are assigned in input order, each the room's last seq plus one.
    /// A (from, cid) already stored, or repeated earlier in the same batch,
    /// is `Duplicate`. On `Err` nothing of the batch may be visible, or what
    /// is visible must come back as `Duplicate` when the batch is retried.
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>>;

    /// The room's highest stored seq, 0 when it has none.
    async fn last_seq(&self, room: &str) -> StoreResult<u64>;

    /// Oldest first: messages with `after < seq <= upto`, at most `limit`.
    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>>;

    /// Newest first: messages with seq < `before` (all when `None`), at most
    /// `limit`; `more` is true when older ones remain.
    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)>;

    /// Adds public `room` to `user`'s conversations (idempotent), unless
    /// the user already keeps `public_max` public rooms.
    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added>;

    /// Removes `room` and its read marker from `user`'s conversations; a
    /// DM room comes back with its next message. False when it was not one.
    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool>;

    /// Sets `user`'s marker of `room` to `max(read_seq, min(seq, last_seq))`
    /// (`read_seq` counting the user's own newest message there). `None`
    /// when the room is not one of the user's conversations.
    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>>;

    /// A page of `user`'s conversations, newest activity (`last_ts`) first,
    /// those with `last_ts < before` when `before` is given; `more` is true
    /// when older ones remain.
    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)>;

    /// Returns false (and changes nothing) when the username is taken.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool>;

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>>;

    /// Readiness: the store is reachable and a write succeeds.
    async fn check_ready(&self) -> StoreResult<()>;
}
