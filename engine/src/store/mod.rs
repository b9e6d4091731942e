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
//!
//! Operating a store for months (docs/operations.md, "Retention", "Deleting
//! a user", "Backup and restore") adds: each room's horizon (its oldest
//! messages removed in bounded batches, seqs never reused), a user's
//! account deleted and messages erased in place, counts for the admin API,
//! and (embedded store only) an online backup.

pub(crate) mod deadline;
pub mod embedded;
pub mod events;
#[cfg(feature = "failpoints")]
pub(crate) mod failpoints;
pub mod mongo;

use std::path::Path;
use std::sync::atomic::AtomicBool;
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
    /// In a cluster: the node writing the room as its owner (`None` on a
    /// node alone). The MongoDB store fences with it: see [`Fence`].
    pub fence: Option<Fence>,
}

/// Who writes a room, for the store to fence (cluster/ownership.rs).
///
/// The first write of a room by a node (or the first after its view of the
/// live nodes changed: a new `generation`) claims the room in the store,
/// raising the room's owner epoch. A node's insert that collides with a
/// seq another node stored reads the room's claim: if the epoch is no
/// longer this node's, the room is answered [`Appended::Moved`] and not
/// numbered again. So once the room's current owner has stored a seq, a
/// node that lost the room cannot store any later one.
#[derive(Debug, Clone)]
pub struct Fence {
    pub node: Arc<str>,
    pub generation: u64,
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
    /// Not stored: another node claimed the room (a newer owner epoch)
    /// and stored in it; this is that node's name.
    Moved(String),
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
    /// This store does not do that (a backup of MongoDB: use mongodump).
    #[error("not supported by this store: {0}")]
    Unsupported(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What retention removes from the bottom of a room: every message from
/// the oldest on while its seq is at most `seq_upto` or it is older than
/// `ts_before` (ms since the epoch); the first message that is neither
/// stops it, so what stays is dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trim {
    pub seq_upto: u64,
    pub ts_before: Option<u64>,
}

/// What one bounded `trim_room` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Messages (and events) removed by this call.
    pub removed: u64,
    /// The room's horizon now: every seq up to it is removed.
    pub horizon: u64,
    /// When the oldest message still stored was stored (none left: `None`).
    pub first_ts: Option<u64>,
    /// Nothing more to remove under this `Trim`; else call again.
    pub done: bool,
}

/// One room with stored messages, as retention walks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub room: String,
    pub last_seq: u64,
    /// Every seq up to this one was removed (0: none).
    pub horizon: u64,
    /// When its oldest stored message was stored; `None` when it has none
    /// (or, on MongoDB, when not known yet).
    pub first_ts: Option<u64>,
}

/// The first seq still stored of a room with this horizon and last seq
/// (0 when none is).
pub fn first_seq(horizon: u64, last_seq: u64) -> u64 {
    if horizon < last_seq {
        horizon + 1
    } else {
        0
    }
}

/// What one bounded `erase_user_messages` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Rows erased now (already erased ones are not counted).
    pub erased: u64,
    /// Where the next call starts (the last cid seen), `None` when done.
    pub next: Option<String>,
}

/// What the store holds, for the admin API and the size gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Accounts (deleted ones not counted).
    pub users: u64,
    /// Rooms with a stored message (or one removed since).
    pub rooms: u64,
    /// Stored messages and events.
    pub messages: u64,
    /// The database's size on disk.
    pub bytes: u64,
}

/// What an online backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub rows: u64,
    pub bytes: u64,
}

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

    /// The room's horizon: every seq up to it was removed (retention, a
    /// purge); 0 when none was. Seqs are never reused: `last_seq` stays.
    async fn horizon(&self, room: &str) -> StoreResult<u64>;

    /// Rooms with stored messages, in name order, after `after`, at most `limit`.
    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>>;

    /// Removes at most `rows_max` of the room's oldest messages under
    /// `trim` and moves its horizon past them, in one bounded commit. An
    /// event above the new horizon whose target was removed is erased in
    /// place (its seq stays, so what stays is dense); the removed
    /// messages' cids are free again.
    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed>;

    /// Deletes `user`'s account (the name stays taken, so nobody can pose
    /// as the author of the erased messages) and the user's conversations
    /// and read markers. `None` when no such user was ever registered;
    /// `Some(true)` when it was deleted before (nothing changed).
    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>>;

    /// Erases in place at most `rows_max` of `user`'s messages and events,
    /// by cid order after `after`: empty body, `deleted`, no reactions; the
    /// user's reactions leave their targets. No seq is used.
    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased>;

    /// Accounts deleted at or after `since_ms` (their tokens are refused).
    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>>;

    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Copies a consistent snapshot of everything into a new database in
    /// the empty directory `dir`, in bounded chunks, while writes go on;
    /// stops when `cancel` is set. Only the embedded store does this.
    async fn backup(&self, dir: &Path, cancel: Arc<AtomicBool>) -> StoreResult<BackupReport> {
        let _ = (dir, cancel);
        Err(StoreError::Unsupported(
            "back up MongoDB with mongodump (docs/operations.md, \"Backup and restore\")".into(),
        ))
    }
}
