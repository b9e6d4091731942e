//! The embedded store: lets Viche run on a fresh machine with nothing else
//! installed. Backed by redb: a pure-Rust, maintained, single-file ACID
//! B-tree that fsyncs on every commit, so an acknowledged write is durable.
//!
//! redb locks its file: a second process cannot open (or corrupt) a
//! database in use; a consistent copy of a running one is taken through the
//! admin API (`backup`: one read snapshot copied into a new file in chunks).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use parking_lot::RwLock;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use viche_protocol::Msg;

use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::Conversation;

use super::events::{self, Row, Verdict};
use super::{
    Added, Appended, BackupReport, Erased, Marker, NewMessage, RoomInfo, Store, StoreError, StoreResult, StoreStats,
    Trim, Trimmed, UserRecord,
};
use crate::metrics::STORE_REOPENS;

/// The database file inside the data directory (and inside a backup).
pub const FILE_NAME: &str = "viche.redb";
/// redb's page cache by default (`--store-cache-mib`): 64 MiB.
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// (room, seq) → the row ([`Row`], MessagePack with field names).
const MESSAGES: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("messages_v2");
/// Before protocol 1.1: (room, seq) → (from, cid, body, ts_ms); moved into
/// [`MESSAGES`] when a database is opened.
const MESSAGES_V1: TableDefinition<'static, (&str, u64), (&str, &str, &str, u64)> = TableDefinition::new("messages");
/// room → the room's last stored seq.
const ROOM_LAST_SEQ: TableDefinition<'static, &str, u64> = TableDefinition::new("room_last_seq");
/// (from, cid) → (room, seq): the dedupe index.
const CIDS: TableDefinition<'static, (&str, &str), (&str, u64)> = TableDefinition::new("cids");
/// username → (password_hash, created_ms).
const USERS: TableDefinition<'static, &str, (&str, u64)> = TableDefinition::new("users");
/// (user, room) → (read_seq, hidden_upto): the user's conversations. A DM
/// the user forgot stays hidden while its last seq is `<= hidden_upto`.
const CONVERSATIONS: TableDefinition<'static, (&str, &str), (u64, u64)> = TableDefinition::new("conversations");
/// room → (horizon, horizon_ts): every seq up to `horizon` was removed
/// (retention, a purge); `horizon_ts` is when the newest of them was stored
/// (a conversation whose messages all went still sorts by it).
const HORIZONS: TableDefinition<'static, &str, (u64, u64)> = TableDefinition::new("room_horizons");
/// (room, target, seq) → (): the events naming each message, so that
/// removing a message finds the events to erase with it.
const EVENT_TARGETS: TableDefinition<'static, (&str, u64, u64), ()> = TableDefinition::new("event_targets");
/// username → when the account was deleted (ms); the name stays taken.
const DELETED_USERS: TableDefinition<'static, &str, u64> = TableDefinition::new("deleted_users");
/// Rows one backup transaction copies; each chunk is its own small commit.
const BACKUP_CHUNK_ROWS: usize = 10_000;
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
    /// redb's page cache, read and write together (`--store-cache-mib`).
    cache_bytes: usize,
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
    /// `open_with_cache` with the default cache.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with_cache(dir, CACHE_BYTES_DEFAULT)
    }

    /// Opens (or creates) `dir/viche.redb`, creating `dir` if missing, and
    /// makes sure every table exists. redb keeps the pages it reads and
    /// writes in a cache of `cache_bytes` (its own default is 1 GiB, which
    /// the server's RSS grew towards as the store grew). Blocking: call it
    /// at startup.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> anyhow::Result<Self> {
        assert!(cache_bytes > 0);
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db =
            open_db(&path, cache_bytes).with_context(|| format!("opening the embedded store {}", path.display()))?;

        // Create the tables once, so read transactions never meet a missing one.
        let txn = db.begin_write().context("embedded store: beginning the setup transaction")?;
        let tables: Vec<String> =
            txn.list_tables().context("embedded store: listing tables")?.map(|t| t.name().to_owned()).collect();
        let has = |name: &str| tables.iter().any(|t| t == name);
        let (had_v1_messages, had_conversations) = (has(MESSAGES_V1.name()), has(CONVERSATIONS.name()));
        let had_event_targets = has(EVENT_TARGETS.name());
        {
            txn.open_table(MESSAGES).context("embedded store: creating table messages_v2")?;
            txn.open_table(ROOM_LAST_SEQ).context("embedded store: creating table room_last_seq")?;
            txn.open_table(CIDS).context("embedded store: creating table cids")?;
            txn.open_table(USERS).context("embedded store: creating table users")?;
            txn.open_table(CONVERSATIONS).context("embedded store: creating table conversations")?;
            txn.open_table(META).context("embedded store: creating table meta")?;
            txn.open_table(HORIZONS).context("embedded store: creating table room_horizons")?;
            txn.open_table(EVENT_TARGETS).context("embedded store: creating table event_targets")?;
            txn.open_table(DELETED_USERS).context("embedded store: creating table deleted_users")?;
        }
        if had_v1_messages {
            migrate_v1_messages(&txn).context("embedded store: moving messages to the 1.1 format")?;
        }
        if !had_conversations {
            add_stored_dms(&txn).context("embedded store: adding stored DMs to their users' conversations")?;
        }
        if !had_event_targets {
            index_events(&txn).context("embedded store: indexing the events of each message")?;
        }
        txn.commit().context("embedded store: committing the setup transaction")?;

        tracing::debug!(path = %path.display(), "embedded store opened");
        Ok(Self { inner: Arc::new(Inner { path, cache_bytes, db: RwLock::new(Some(db)), reopens: AtomicU64::new(0) }) })
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
        match open_db(&self.path, self.cache_bytes) {
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

/// Opens (or creates) the database file with a page cache of `cache_bytes`.
fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(cache_bytes).create(path)
}

/// Maps a redb error to a `StoreError`, naming the operation that failed.
fn redb_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| match e.into() {
        redb::Error::Corrupted(what) => StoreError::Corrupt(format!("{op}: {what}")),
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => StoreError::Io(format!("{op}: {e}")),
        other => StoreError::Unavailable(format!("{op}: {other}")),
    }
}

/// Moves every row of the pre-1.1 messages table into [`MESSAGES`].
fn migrate_v1_messages(txn: &redb::WriteTransaction) -> anyhow::Result<()> {
    let mut moved = 0u64;
    {
        let old = txn.open_table(MESSAGES_V1)?;
        let mut new = txn.open_table(MESSAGES)?;
        for row in old.iter()? {
            let (key, value) = row?;
            let (room, seq) = key.value();
            let (from, cid, body, ts) = value.value();
            let row = Row { from: from.into(), cid: cid.into(), body: body.into(), ts, ..Row::default() };
            new.insert((room, seq), encode(&row)?.as_slice())?;
            moved += 1;
        }
    }
    txn.delete_table(MESSAGES_V1)?;
    tracing::info!(moved, "embedded store: messages moved to the 1.1 format");
    Ok(())
}

/// Before 1.1 nothing listed a user's conversations: every DM room with a
/// stored message becomes one for both its users.
fn add_stored_dms(txn: &redb::WriteTransaction) -> anyhow::Result<()> {
    let rooms = txn.open_table(ROOM_LAST_SEQ)?;
    let mut conversations = txn.open_table(CONVERSATIONS)?;
    for row in rooms.iter()? {
        let (room, last) = row?;
        if let (Some(RoomKind::Dm(a, b)), true) = (parse_room(room.value()), last.value() > 0) {
            for user in [a, b] {
                conversations.insert((user, room.value()), (0, 0))?;
            }
        }
    }
    Ok(())
}

/// Before retention nothing indexed events by target: every stored event
/// is indexed once.
fn index_events(txn: &redb::WriteTransaction) -> anyhow::Result<()> {
    let messages = txn.open_table(MESSAGES)?;
    let mut targets = txn.open_table(EVENT_TARGETS)?;
    for row in messages.iter()? {
        let (key, value) = row?;
        let (room, seq) = key.value();
        if let Some(target) = decode("index_events", room, seq, value.value())?.target {
            targets.insert((room, target, seq), ())?;
        }
    }
    Ok(())
}

fn encode(row: &Row) -> StoreResult<Vec<u8>> {
    rmp_serde::to_vec_named(row).map_err(|e| StoreError::Corrupt(format!("encoding a row: {e}")))
}

fn decode(op: &'static str, room: &str, seq: u64, bytes: &[u8]) -> StoreResult<Row> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{op}: row ({room}, {seq}): {e}")))
}

/// Reads the row stored at (room, seq), if any.
fn read_row<T>(table: &T, op: &'static str, room: &str, seq: u64) -> StoreResult<Option<Row>>
where
    T: ReadableTable<(&'static str, u64), &'static [u8]>,
{
    match table.get((room, seq)).map_err(redb_err(op))? {
        Some(guard) => decode(op, room, seq, guard.value()).map(Some),
        None => Ok(None),
    }
}

fn write_row(
    table: &mut redb::Table<'_, (&str, u64), &[u8]>,
    op: &'static str,
    room: &str,
    seq: u64,
    row: &Row,
) -> StoreResult<()> {
    table.insert((room, seq), encode(row)?.as_slice()).map_err(redb_err(op))?;
    Ok(())
}

/// Appends a batch inside an open write transaction (see `Store::append_batch`).
fn append_in(txn: &redb::WriteTransaction, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
    const OP: &str = "append_batch";
    let mut messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
    let mut last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
    let mut cids = txn.open_table(CIDS).map_err(redb_err(OP))?;
    let mut conversations = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
    let mut targets = txn.open_table(EVENT_TARGETS).map_err(redb_err(OP))?;

    let mut outcomes = Vec::with_capacity(batch.len());
    for m in batch {
        // The cid index already holds this batch's earlier inserts (same
        // transaction), so one lookup covers both stored and in-batch repeats.
        let original = cids.get((&*m.from, m.cid.as_str())).map_err(redb_err(OP))?.map(|guard| {
            let (room, seq) = guard.value();
            (room.to_owned(), seq)
        });
        if let Some((room, seq)) = original {
            let row = read_row(&messages, OP, &room, seq)?.ok_or_else(|| {
                StoreError::Corrupt(format!("{OP}: cid index points at ({room}, {seq}), which is not stored"))
            })?;
            outcomes.push(Appended::Duplicate(row.to_msg(&room, seq)));
            continue;
        }

        let named = match m.event.names() {
            Some(seq) => read_row(&messages, OP, &m.room, seq)?,
            None => None,
        };
        match events::check(m, named.as_ref()) {
            Verdict::Store => {}
            Verdict::Refuse(code, why) => {
                outcomes.push(Appended::Refused(code, why));
                continue;
            }
            Verdict::Repeat(seq) => {
                let row = read_row(&messages, OP, &m.room, seq)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("{OP}: a reaction names ({}, {seq}), which is not stored", m.room))
                })?;
                outcomes.push(Appended::Duplicate(row.to_msg(&m.room, seq)));
                continue;
            }
        }

        let last = last_seqs.get(&*m.room).map_err(redb_err(OP))?.map_or(0, |g| g.value());
        let seq = last
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("{OP}: seq of room {} would overflow", m.room)))?;
        let row = Row::new(m);
        write_row(&mut messages, OP, &m.room, seq, &row)?;
        last_seqs.insert(&*m.room, seq).map_err(redb_err(OP))?;
        cids.insert((&*m.from, m.cid.as_str()), (&*m.room, seq)).map_err(redb_err(OP))?;

        // The event's effect on its target, in the same commit.
        if let (Some(_), Some(target_seq)) = (m.event.kind(), m.event.names()) {
            targets.insert((&*m.room, target_seq, seq), ()).map_err(redb_err(OP))?;
        }
        if let (Some(_), Some(mut target), Some(target_seq)) = (m.event.kind(), named, m.event.names()) {
            for edit_seq in events::apply(&mut target, m, seq) {
                if let Some(mut edit) = read_row(&messages, OP, &m.room, edit_seq)? {
                    edit.body.clear();
                    write_row(&mut messages, OP, &m.room, edit_seq, &edit)?;
                }
            }
            write_row(&mut messages, OP, &m.room, target_seq, &target)?;
        }

        // Conversations: a DM is one for both its users from its first
        // message; the sender has read up to what it sent.
        if let Some(RoomKind::Dm(a, b)) = parse_room(&m.room) {
            for user in [a, b] {
                if conversations.get((user, &*m.room)).map_err(redb_err(OP))?.is_none() {
                    conversations.insert((user, &*m.room), (0, 0)).map_err(redb_err(OP))?;
                }
            }
        }
        let mine = conversations.get((&*m.from, &*m.room)).map_err(redb_err(OP))?.map(|g| g.value());
        if let Some((read_seq, hidden_upto)) = mine {
            conversations.insert((&*m.from, &*m.room), (read_seq.max(seq), hidden_upto)).map_err(redb_err(OP))?;
        }

        outcomes.push(Appended::Stored(row.to_msg(&m.room, seq)));
    }
    Ok(outcomes)
}

/// One bounded trim of `room` inside an open write transaction (see
/// `Store::trim_room`).
fn trim_in(txn: &redb::WriteTransaction, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
    const OP: &str = "trim_room";
    let mut messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
    let mut cids = txn.open_table(CIDS).map_err(redb_err(OP))?;
    let mut horizons = txn.open_table(HORIZONS).map_err(redb_err(OP))?;
    let mut targets = txn.open_table(EVENT_TARGETS).map_err(redb_err(OP))?;
    let (old_horizon, old_ts) = horizons.get(room).map_err(redb_err(OP))?.map_or((0, 0), |g| g.value());

    // The oldest rows the rule removes, at most `rows_max`, then the first kept.
    let mut removed: Vec<(u64, String, String, u64)> = Vec::new();
    let (mut first_ts, mut done) = (None, true);
    for row in messages.range((room, old_horizon.saturating_add(1))..=(room, u64::MAX)).map_err(redb_err(OP))? {
        let (key, value) = row.map_err(redb_err(OP))?;
        let seq = key.value().1;
        let row = decode(OP, room, seq, value.value())?;
        let goes = seq <= trim.seq_upto || trim.ts_before.is_some_and(|before| row.ts < before);
        if goes && removed.len() < rows_max {
            removed.push((seq, row.from, row.cid, row.ts));
            continue;
        }
        first_ts = Some(row.ts);
        done = !goes;
        break;
    }
    let Some(&(horizon, _, _, horizon_ts)) = removed.last() else {
        return Ok(Trimmed { removed: 0, horizon: old_horizon, first_ts, done: true });
    };
    for (seq, from, cid, _) in &removed {
        messages.remove((room, *seq)).map_err(redb_err(OP))?;
        let points_here =
            cids.get((from.as_str(), cid.as_str())).map_err(redb_err(OP))?.is_some_and(|g| g.value() == (room, *seq));
        if points_here {
            cids.remove((from.as_str(), cid.as_str())).map_err(redb_err(OP))?;
        }
    }
    // Events that named a removed message: gone with it, or (above the
    // horizon) erased in place.
    let mut named: Vec<(u64, u64)> = Vec::new();
    for row in
        targets.range((room, old_horizon.saturating_add(1), 0)..=(room, horizon, u64::MAX)).map_err(redb_err(OP))?
    {
        let (key, _) = row.map_err(redb_err(OP))?;
        let (_, target, seq) = key.value();
        named.push((target, seq));
    }
    for (target, seq) in named {
        targets.remove((room, target, seq)).map_err(redb_err(OP))?;
        if seq > horizon {
            if let Some(mut event) = read_row(&messages, OP, room, seq)? {
                if event.erase() {
                    write_row(&mut messages, OP, room, seq, &event)?;
                }
            }
        }
    }
    horizons.insert(room, (horizon, horizon_ts.max(old_ts))).map_err(redb_err(OP))?;
    Ok(Trimmed { removed: removed.len() as u64, horizon, first_ts, done })
}

/// Copies one table of `snapshot` into `copy`, [`BACKUP_CHUNK_ROWS`] rows per
/// commit, checking `cancel` between chunks.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    snapshot: &redb::ReadTransaction,
    copy: &Database,
    table: TableDefinition<'static, K, V>,
    cancel: &AtomicBool,
    path: &Path,
) -> StoreResult<u64> {
    const OP: &str = "backup";
    let fail = |e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("{OP}: copying table {} into {}: {e}", table.name(), path.display()))
    };
    let source = snapshot.open_table(table).map_err(redb_err(OP))?;
    let mut rows = source.iter().map_err(redb_err(OP))?;
    let mut copied = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(format!("{OP}: cancelled")));
        }
        let mut txn = copy.begin_write().map_err(|e| fail(&e))?;
        txn.set_durability(Durability::None);
        let mut finished = false;
        {
            let mut target = txn.open_table(table).map_err(|e| fail(&e))?;
            for _ in 0..BACKUP_CHUNK_ROWS {
                let Some(row) = rows.next() else {
                    finished = true;
                    break;
                };
                let (key, value) = row.map_err(redb_err(OP))?;
                target.insert(key.value(), value.value()).map_err(|e| fail(&e))?;
                copied += 1;
            }
        }
        txn.commit().map_err(|e| fail(&e))?;
        if finished {
            return Ok(copied);
        }
    }
}

/// A user's conversation rows: (room, read_seq, hidden_upto).
fn user_rows<T>(table: &T, op: &'static str, user: &str) -> StoreResult<Vec<(String, u64, u64)>>
where
    T: ReadableTable<(&'static str, &'static str), (u64, u64)>,
{
    let mut rows = Vec::new();
    for row in table.range((user, "")..).map_err(redb_err(op))? {
        let (key, value) = row.map_err(redb_err(op))?;
        let (owner, room) = key.value();
        if owner != user {
            break;
        }
        let (read_seq, hidden_upto) = value.value();
        rows.push((room.to_owned(), read_seq, hidden_upto));
    }
    Ok(rows)
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
                let seq = key.value().1;
                page.push(decode(OP, &room, seq, value.value())?.to_msg(&room, seq));
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
                let seq = key.value().1;
                page.push(decode(OP, &room, seq, value.value())?.to_msg(&room, seq));
            }
            Ok((page, more))
        })
        .await
    }

    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added> {
        const OP: &str = "add_conversation";
        let (user, room) = (user.to_owned(), room.to_owned());
        self.blocking(OP, move |db| {
            {
                let txn = db.begin_read().map_err(redb_err(OP))?;
                let table = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
                if table.get((user.as_str(), room.as_str())).map_err(redb_err(OP))?.is_some() {
                    return Ok(Added::Kept); // no write, no fsync
                }
            }
            let txn = db.begin_write().map_err(redb_err(OP))?;
            {
                let mut table = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
                let public = user_rows(&table, OP, &user)?
                    .iter()
                    .filter(|(r, _, _)| !matches!(parse_room(r), Some(RoomKind::Dm(..))))
                    .count();
                if public >= public_max {
                    return Ok(Added::Full);
                }
                table.insert((user.as_str(), room.as_str()), (0, 0)).map_err(redb_err(OP))?;
            }
            txn.commit().map_err(redb_err(OP))?;
            Ok(Added::Kept)
        })
        .await
    }

    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool> {
        const OP: &str = "forget_conversation";
        let (user, room) = (user.to_owned(), room.to_owned());
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            let found = {
                let mut table = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
                let last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
                let last = last_seqs.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value());
                let row = table.get((user.as_str(), room.as_str())).map_err(redb_err(OP))?.map(|g| g.value());
                match row {
                    Some((_, hidden_upto)) if hidden_upto >= last && hidden_upto > 0 => false,
                    // A DM stays, hidden until its next message, all read.
                    Some(_) if matches!(parse_room(&room), Some(RoomKind::Dm(..))) => {
                        table.insert((user.as_str(), room.as_str()), (last, last)).map_err(redb_err(OP))?;
                        true
                    }
                    Some(_) => {
                        table.remove((user.as_str(), room.as_str())).map_err(redb_err(OP))?;
                        true
                    }
                    None => false,
                }
            };
            if found {
                txn.commit().map_err(redb_err(OP))?;
            }
            Ok(found)
        })
        .await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>> {
        const OP: &str = "mark_read";
        let (user, room) = (user.to_owned(), room.to_owned());
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            let marker = {
                let mut table = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
                let last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
                let last = last_seqs.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value());
                let row = table.get((user.as_str(), room.as_str())).map_err(redb_err(OP))?.map(|g| g.value());
                match row {
                    Some((_, hidden_upto)) if hidden_upto > 0 && last <= hidden_upto => None,
                    Some((read_seq, hidden_upto)) => {
                        let new = read_seq.max(seq.min(last));
                        if new > read_seq {
                            table.insert((user.as_str(), room.as_str()), (new, hidden_upto)).map_err(redb_err(OP))?;
                        }
                        Some(Marker { read_seq: new, moved: new > read_seq })
                    }
                    None => None,
                }
            };
            if marker.is_some_and(|m| m.moved) {
                txn.commit().map_err(redb_err(OP))?;
            }
            Ok(marker)
        })
        .await
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)> {
        const OP: &str = "conversations";
        let user = user.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let table = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
            let last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
            let messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
            let horizons = txn.open_table(HORIZONS).map_err(redb_err(OP))?;
            let mut all = Vec::new();
            for (room, read_seq, hidden_upto) in user_rows(&table, OP, &user)? {
                let last_seq = last_seqs.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value());
                if hidden_upto > 0 && last_seq <= hidden_upto {
                    continue;
                }
                let last = match last_seq {
                    0 => None,
                    seq => read_row(&messages, OP, &room, seq)?.map(|row| row.to_msg(&room, seq)),
                };
                // Its messages all removed by retention: as of the newest.
                let removed_ts = || -> StoreResult<u64> {
                    Ok(horizons.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value().1))
                };
                let last_ts = match &last {
                    Some(m) => m.ts,
                    None => removed_ts()?,
                };
                all.push(super::conversation(&user, &room, (last_seq, last_ts), last, read_seq));
            }
            Ok(super::page_conversations(all, before, limit))
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
                let deleted = txn.open_table(DELETED_USERS).map_err(redb_err(OP))?;
                if users.get(user.username.as_str()).map_err(redb_err(OP))?.is_some()
                    || deleted.get(user.username.as_str()).map_err(redb_err(OP))?.is_some()
                {
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

    async fn horizon(&self, room: &str) -> StoreResult<u64> {
        const OP: &str = "horizon";
        let room = room.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let horizons = txn.open_table(HORIZONS).map_err(redb_err(OP))?;
            let horizon = horizons.get(room.as_str()).map_err(redb_err(OP))?.map_or(0, |g| g.value().0);
            Ok(horizon)
        })
        .await
    }

    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>> {
        const OP: &str = "rooms_page";
        let after = after.map(str::to_owned);
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let last_seqs = txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?;
            let horizons = txn.open_table(HORIZONS).map_err(redb_err(OP))?;
            let messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
            let start = match after.as_deref() {
                Some(after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            let mut page = Vec::with_capacity(limit.min(1024));
            for row in last_seqs.range::<&str>((start, Bound::Unbounded)).map_err(redb_err(OP))?.take(limit) {
                let (room, last) = row.map_err(redb_err(OP))?;
                let (room, last_seq) = (room.value(), last.value());
                let horizon = horizons.get(room).map_err(redb_err(OP))?.map_or(0, |g| g.value().0);
                let first =
                    messages.range((room, horizon.saturating_add(1))..=(room, u64::MAX)).map_err(redb_err(OP))?.next();
                let first_ts = match first {
                    Some(row) => {
                        let (key, value) = row.map_err(redb_err(OP))?;
                        Some(decode(OP, room, key.value().1, value.value())?.ts)
                    }
                    None => None,
                };
                page.push(RoomInfo { room: room.to_owned(), last_seq, horizon, first_ts });
            }
            Ok(page)
        })
        .await
    }

    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
        const OP: &str = "trim_room";
        let room = room.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            let trimmed = trim_in(&txn, &room, trim, rows_max)?;
            if trimmed.removed > 0 {
                txn.commit().map_err(redb_err(OP))?;
            }
            Ok(trimmed)
        })
        .await
    }

    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>> {
        const OP: &str = "delete_account";
        let user = user.to_owned();
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            let outcome = {
                let mut users = txn.open_table(USERS).map_err(redb_err(OP))?;
                let mut deleted = txn.open_table(DELETED_USERS).map_err(redb_err(OP))?;
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(redb_err(OP))?;
                let existed = users.remove(user.as_str()).map_err(redb_err(OP))?.is_some();
                let before = deleted.get(user.as_str()).map_err(redb_err(OP))?.is_some();
                if existed && !before {
                    deleted.insert(user.as_str(), now_ms).map_err(redb_err(OP))?;
                }
                for (room, _, _) in user_rows(&conversations, OP, &user)? {
                    conversations.remove((user.as_str(), room.as_str())).map_err(redb_err(OP))?;
                }
                match (existed, before) {
                    (false, false) => None,
                    (_, before) => Some(before),
                }
            };
            txn.commit().map_err(redb_err(OP))?;
            Ok(outcome)
        })
        .await
    }

    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased> {
        const OP: &str = "erase_user_messages";
        let (user, after) = (user.to_owned(), after.map(str::to_owned));
        self.blocking(OP, move |db| {
            let txn = db.begin_write().map_err(redb_err(OP))?;
            let erased = {
                let cids = txn.open_table(CIDS).map_err(redb_err(OP))?;
                let mut messages = txn.open_table(MESSAGES).map_err(redb_err(OP))?;
                let start = match after.as_deref() {
                    Some(cid) => Bound::Excluded((user.as_str(), cid)),
                    None => Bound::Included((user.as_str(), "")),
                };
                let mut rows: Vec<(String, String, u64)> = Vec::new();
                for row in cids.range::<(&str, &str)>((start, Bound::Unbounded)).map_err(redb_err(OP))? {
                    let (key, value) = row.map_err(redb_err(OP))?;
                    let (owner, cid) = key.value();
                    if owner != user || rows.len() == rows_max {
                        break;
                    }
                    let (room, seq) = value.value();
                    rows.push((cid.to_owned(), room.to_owned(), seq));
                }
                let mut erased = 0;
                for (_, room, seq) in &rows {
                    let Some(mut row) = read_row(&messages, OP, room, *seq)? else { continue };
                    if let (Some(viche_protocol::MsgKind::Reaction), Some(target)) = (row.kind, row.target) {
                        if let Some(mut target_row) = read_row(&messages, OP, room, target)? {
                            let before = target_row.reactions.len();
                            target_row.reactions.retain(|r| r.user != user);
                            if target_row.reactions.len() != before {
                                write_row(&mut messages, OP, room, target, &target_row)?;
                            }
                        }
                    }
                    if row.erase() {
                        write_row(&mut messages, OP, room, *seq, &row)?;
                        erased += 1;
                    }
                }
                let next = if rows.len() == rows_max { rows.last().map(|(cid, _, _)| cid.clone()) } else { None };
                Erased { erased, next }
            };
            txn.commit().map_err(redb_err(OP))?;
            Ok(erased)
        })
        .await
    }

    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>> {
        const OP: &str = "deleted_users_since";
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let deleted = txn.open_table(DELETED_USERS).map_err(redb_err(OP))?;
            let mut users = Vec::new();
            for row in deleted.iter().map_err(redb_err(OP))? {
                let (user, at) = row.map_err(redb_err(OP))?;
                if at.value() >= since_ms {
                    users.push(user.value().to_owned());
                }
            }
            Ok(users)
        })
        .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        const OP: &str = "stats";
        let path = self.inner.path.clone();
        self.blocking(OP, move |db| {
            let txn = db.begin_read().map_err(redb_err(OP))?;
            let len = |name: &str, n: Result<u64, redb::StorageError>| {
                n.map_err(|e| StoreError::Unavailable(format!("{OP}: counting {name}: {e}")))
            };
            let users = len("users", txn.open_table(USERS).map_err(redb_err(OP))?.len())?;
            let rooms = len("rooms", txn.open_table(ROOM_LAST_SEQ).map_err(redb_err(OP))?.len())?;
            let messages = len("messages", txn.open_table(MESSAGES).map_err(redb_err(OP))?.len())?;
            let bytes = std::fs::metadata(&path)
                .map_err(|e| StoreError::Unavailable(format!("{OP}: the size of {}: {e}", path.display())))?
                .len();
            Ok(StoreStats { users, rooms, messages, bytes })
        })
        .await
    }

    async fn backup(&self, dir: &Path, cancel: Arc<AtomicBool>) -> StoreResult<BackupReport> {
        const OP: &str = "backup";
        let path = dir.join(FILE_NAME);
        self.blocking(OP, move |db| {
            // Errors here are the copy's, never the live database's: they
            // are `Unavailable`, so the live file is not reopened for them.
            let fail = |what: &str, e: &dyn std::fmt::Display| {
                StoreError::Unavailable(format!("{OP}: {what} {}: {e}", path.display()))
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| fail("creating", &e))?;
            let copy = redb::Builder::new().create_file(file).map_err(|e| fail("opening", &e))?;
            // One snapshot: everything committed before this, nothing after.
            let snapshot = db.begin_read().map_err(redb_err(OP))?;
            let mut rows = 0;
            rows += copy_table(&snapshot, &copy, MESSAGES, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, ROOM_LAST_SEQ, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, CIDS, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, USERS, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, CONVERSATIONS, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, META, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, HORIZONS, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, EVENT_TARGETS, &cancel, &path)?;
            rows += copy_table(&snapshot, &copy, DELETED_USERS, &cancel, &path)?;
            // The chunks were committed without fsync; this one makes them durable.
            let txn = copy.begin_write().map_err(|e| fail("finishing", &e))?;
            txn.commit().map_err(|e| fail("finishing", &e))?;
            drop(copy);
            let bytes = std::fs::metadata(&path).map_err(|e| fail("measuring", &e))?.len();
            Ok(BackupReport { rows, bytes })
        })
        .await
    }
}
