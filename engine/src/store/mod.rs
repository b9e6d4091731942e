//! The `Store` trait: everything Viche keeps durably.
//!
//! Shaped for the writer's group commit (a whole batch in one call) and for
//! (room, seq) range reads. The store, not the room, assigns seqs and
//! dedupes by (from, cid), inside the same atomic commit: so a failed or
//! retried batch can never leave a gap, reuse a seq, or store a cid twice.

pub(crate) mod deadline;
pub mod embedded;
#[cfg(feature = "failpoints")]
pub(crate) mod failpoints;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use viche_protocol::Msg;

/// A message the writer asks the store to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: Arc<str>,
    pub from: Arc<str>,
    pub cid: String,
    pub body: String,
    /// Set by the server when the batch is formed, in ms since the Unix epoch.
    pub ts_ms: u64,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored with the next seq of its room.
    Stored(Msg),
    /// (from, cid) was already stored: this is the original message
    /// (possibly of another room). Nothing new was stored.
    Duplicate(Msg),
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

    /// Returns false (and changes nothing) when the username is taken.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool>;

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>>;

    /// Readiness: the store is reachable and a write succeeds.
    async fn check_ready(&self) -> StoreResult<()>;
}
