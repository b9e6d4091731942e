//! The embedded store: lets Viche run on a fresh machine with nothing else
//! installed. Backed by redb: a pure-Rust, maintained, single-file ACID
//! B-tree that fsyncs on every commit, so an acknowledged write is durable.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use parking_lot::RwLock;
use redb::{Database, ReadableTable, TableDefinition};
use viche_protocol::Msg;

use super::{Appended, NewMessage, Store, StoreError, StoreResult, UserRecord};
use crate::metrics::STORE_REOPENS;

/// The database file inside the data directory.
const FILE_NAME: &str = "viche.redb";

/// (room, seq) → (from, cid, body, ts_ms).
const MESSAGES: TableDefinition<'static, (&str, u64), (&str, &str, &str, u64)> = TableDefinition::new("messages");
/// room → the room's last stored seq.
const ROOM_LAST_SEQ: TableDefinition<'static, &str, u64> = TableDefinition::new("room_last_seq");
/// (from, cid) → (room, seq): the dedupe index.
const CIDS: TableDefinition<'static, (&str, &str), (&str, u64)> = TableDefinition::new("cids");
/// username → (password_hash, created_ms).
const USERS: TableDefinition<'static, &str, (&str, u64)> = TableDefinition::new("users");
/// Bookkeeping; `check_ready` writes a probe counter here.
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const READY_PROBES_KEY: &str = "ready_probes";

/// The default `Store`: one redb file in the data directory.
///
/// Cloning is cheap and shares the open database. Every write transaction
/// commits with redb's default `Durability::Immediate` (fsync before the
/// commit returns). All redb calls run on tokio's blocking pool.
///
/// After an I/O error redb refuses all work until the database is closed
/// and opened again; so an operation that meets one closes and reopens the
/// file (waiting for the operations in progress), and the caller retries.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` only between a failed reopen and the next try.
    db: RwLock<Option<Database>>,
    reopens: AtomicU64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/viche.redb`, creating `dir` if missing, and
    /// makes sure every table exists. Blocking: call it at startup.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).with_context(|| format!("opening the embedded store {}", path.display()))?;

        // Create the tables once, so read transactions never meet a missing one.
        let txn = db.begin_write().context("embedded store: beginning the setup transaction")?;
        {
            txn.open_table(MESSAGES).context("embedded store: creating table messages")?;
            txn.open_table(ROOM_LAST_SEQ).context("embedded store: creating table room_last_seq")?;
            txn.open_table(CIDS).context("embedded store: creating table cids")?;
            txn.open_table(USERS).context("embedded store: creating table users")?;
            txn.open_table(META).context("embedded store: creating table meta")?;
        }
        txn.commit().context("embedded store: committing the setup transaction")?;

        tracing::debug!(path = %path.display(), "embedded store opened");
        Ok(Self { inner: Arc::new(Inner { path, db: RwLock::new(Some(db)), reopens: AtomicU64::new(0) }) })
    }

    /// Times the database was reopened after an I/O error.
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Relaxed)
    }

    /// Runs `f` on the blocking pool with the database; reopens it when `f`
    /// meets an I/O error.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let result = match inner.db.read().as_ref() {
                Some(db) => f(db),
                None => Err(StoreError::Io(format!("{op}: the database is closed after an I/O error"))),
            };
            if let Err(StoreError::Io(error)) = &result {
                inner.reopen(error);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("{op}: blocking task failed: {e}")))?
    }
}

impl Inner {
    /// Closes the database (after the operations in progress) and opens
    /// it again; on failure it stays closed and the next operation retries.
    fn reopen(&self, after: &str) {
        let mut db = self.db.write();
        *db = None; // releases the file before it is opened again
        match Database::create(&self.path) {
            Ok(reopened) => {
                *db = Some(reopened);
                self.reopens.fetch_add(1, Ordering::Relaxed);
                STORE_REOPENS.counter().increment(1);
                tracing::warn!(path = %self.path.display(), after, "embedded store reopened after an I/O error");
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "embedded store could not be reopened"),
        }
    }
}

/// Maps a redb error to a `StoreError`, naming the operation that failed.
fn redb_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| match e.into() {
        redb::Error::Corrupted(what) => StoreError::Corrupt(format!("{op}: {what}")),
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => StoreError::Io(format!("{op}: {e}")),
        other => StoreError::Unavailable(format!("{op}: {other}")),
    }
}

/// Reads the message stored at (room, seq), if any.
fn read_msg<T>(table: &T, op: &'static str, room: &str, seq: u64) -> StoreResult<Option<Msg>>
where
    T: ReadableTable<(&'static str, u64), (&'static str, &'static str, &'static str, u64)>,
{
    let Some(guard) = table.get((room, seq)).map_err(redb_err(op))? else {
        return Ok(None);
    };
    Ok(Some(row_to_msg(room, seq, guard.value())))
}

/// Appends a batch inside an open write transaction (see `Store::append_batch`).
fn append_in(txn: &redb::WriteTransaction, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
    const OP: &str = "append_batch";
    let mut messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
    let mut last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
    let mut cids = txn.open_table(CIDS).map_err(redb_err(OP))?;

    let mut outcomes = Vec::with_capacity(batch.len());
    for m in batch {
        // The cid index already holds this batch's earlier inserts (same
        // transaction), so one lookup covers both stored and in-batch repeats.
        let original = cids.get((&*m.from, m.cid.as_str())).map_err(redb_err(OP))?.map(|guard| {
            let (room, seq) = guard.value();
            (room.to_owned(), seq)
        });
        if let Some((room, seq)) = original {
            let msg = read_msg(&messages, OP, &room, seq)?.ok_or_else(|| {
                StoreError::Corrupt(format!("{OP}: cid index points at ({room}, {seq}), which is not stored"))
            })?;
            outcomes.push(Appended::Duplicate(msg));
            continue;
        }

        let last = last_seqs.get(&*m.room).map_err(redb_err(OP))?.map_or(0, |g| g.value());
        let seq = last
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("{OP}: seq of room {} would overflow", m.room)))?;
        messages.insert((&*m.room, seq), (&*m.from, m.cid.as_str(), m.body.as_str(), m.ts_ms)).map_err(redb_err(OP))?;
        last_seqs.insert(&*m.room, seq).map_err(redb_err(OP))?;
        cids.insert((&*m.from, m.cid.as_str()), (&*m.room, seq)).map_err(redb_err(OP))?;

        outcomes.push(Appended::Stored(Msg {
            room: m.room.to_string(),
            seq,
            from: m.from.to_string(),
            body: m.body.clone(),
            cid: m.cid.clone(),
            ts: m.ts_ms,
        }));
    }
    Ok(outcomes)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        const OP: &str = "append_batch";
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        self.blocking(OP, move |db| {
            // Failpoint `embedded.io` (tests): the commit meets an I/O error.
            #[cfg(feature = "failpoints")]
            if crate::faults::eval_sync("embedded.io").is_some() {
                return Err(StoreError::Io(format!("{OP}: failpoint embedded.io")));
            }
            let txn = db.begin_write().map_err(redb_err(OP))?;
            // On error the transaction is dropped uncommitted: nothing is visible.
            let outcomes = append_in(&txn, &batch)?;
            txn.commit().map_err(redb_err(OP))?;
            Ok(outcomes)
        })
        .await
    }

    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        const OP: &str = "last_seq";
        let room = room.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let table = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
            let last = table.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value());
            Ok(last)
        })
        .await
    }

    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        const OP: &str = "range";
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if first > upto || limit == 0 {
            return Ok(Vec::new());
        }
        let room = room.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let table = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
            let rows = table.range((room.as_str(), first)..=(room.as_str(), upto)).map_err(redb_err(OP))?;
            let mut page = Vec::with_capacity(limit.min(1024));
            for row in rows.take(limit) {
                let (key, value) = row.map_err(redb_err(OP))?;
                page.push(row_to_msg(&room, key.value().1, value.value()));
            }
            Ok(page)
        })
        .await
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)> {
        const OP: &str = "history";
        let room = room.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let table = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
            let rows = match before {
                Some(before) => table.range((room.as_str(), 0)..(room.as_str(), before)),
                None => table.range((room.as_str(), 0)..=(room.as_str(), u64::MAX)),
            }
            .map_err(redb_err(OP))?;
            // Read one more than asked to learn whether older messages remain.
            let mut page = Vec::with_capacity(limit.min(1024));
            let mut more = false;
            for row in rows.rev() {
                let (key, value) = row.map_err(redb_err(OP))?;
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push(row_to_msg(&room, key.value().1, value.value()));
            }
            Ok((page, more))
        })
        .await
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        const OP: &str = "create_user";
        let user = user.clone();
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            {
                let mut users = txn.open_table(USERS).map_err(redb_err(OP))?;
                if users.get(user.username.as_str()).map_err(redb_err(OP))?.is_some() {
                    // Dropping the transaction uncommitted changes nothing.
                    return Ok(false);
                }
                users
                    .insert(user.username.as_str(), (user.password_hash.as_str(), user.created_ms))
                    .map_err(redb_err(OP))?;
            }
            txn.commit().map_err(redb_err(OP))?;
            Ok(true)
        })
        .await
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        const OP: &str = "get_user";
        let username = username.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let users = txn.open_table(USERS).map_err(redb_err(OP))?;
            let user = users.get(username.as_str()).map_err(redb_err(OP))?.map(|guard| {
                let (password_hash, created_ms) = guard.value();
                UserRecord { username: username.clone(), password_hash: password_hash.to_owned(), created_ms }
            });
            Ok(user)
        })
        .await
    }

    async fn check_ready(&self) -> StoreResult<()> {
        const OP: &str = "check_ready";
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            {
                let mut meta = txn.open_table(META).map_err(redb_err(OP))?;
                let probes = meta.get(READY_PROBES_KEY).map_err(redb_err(OP))?.map_or(0, |g| g.value());
                meta.insert(READY_PROBES_KEY, probes.wrapping_add(1)).map_err(redb_err(OP))?;
            }
            txn.commit().map_err(redb_err(OP))?;
            Ok(())
        })
        .await
    }
}

fn row_to_msg(room: &str, seq: u64, (from, cid, body, ts_ms): (&str, &str, &str, u64)) -> Msg {
    Msg { room: room.to_owned(), seq, from: from.to_owned(), body: body.to_owned(), cid: cid.to_owned(), ts: ts_ms }
}
