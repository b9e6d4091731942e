//! The MongoDB store: what high-traffic deployments run on.
//!
//! One shared `Client`; collections `users`, `messages`, `rooms`; indexes
//! created at start (idempotently): unique `users.username`, unique
//! `messages.(room, seq)` (which also serves history and replay reads, by
//! range, sorted), unique `messages.(from, cid)`.
//!
//! `append_batch` keeps the `Store` contract with standard driver calls,
//! and seqs are given only to messages that are new:
//!
//! 1. which of the batch's messages are stored already (a client's retry,
//!    or an earlier attempt of this batch): a `find` of their `_id`s
//!    (`$in`; a message's `_id` is its (from, cid) key). This lookup is
//!    skipped on a batch's first attempt, because a retried cid is rare and
//!    the insert of step 3 catches one on `_id`; only when that insert
//!    collides, or an event of the batch is refused or repeats (a retried
//!    deletion meets its own effect), is the batch attempted again with it
//!    (FerretDB on SQLite answers this `$in` by reading the whole
//!    collection: a tenth of the throughput when it ran on every batch).
//!    Those found are answered `Duplicate` with their original seq. With `--mongo-write-concern
//!    majority` this read uses read concern `majority`, so a duplicate is
//!    acknowledged only once it is durable as configured: a retried
//!    message that reached the primary but not yet a majority is not seen
//!    here, its insert then collides, and the batch fails and is retried
//!    until the original is majority-committed (or rolled back by a
//!    failover, after which it is stored anew);
//! 2. the new ones are numbered from each room's last seq (a bounded LRU
//!    cache; the rooms missing from it are read together, concurrently);
//! 3. one ordered `insert_many` under the write concern (with `wtimeout`
//!    when `majority`). Ordered: if it stops at a failure, what was
//!    inserted is a prefix of the batch, hence a prefix of every room's new
//!    seqs (when it stopped at a duplicate key on the first attempt, that
//!    prefix's seqs go into the cache, and the second attempt finds the
//!    prefix in step 1 as `Duplicate`s, which the writer publishes like
//!    new ones). Only retention and purges delete (below).
//!
//! A process that dies between any two of these calls leaves each room's
//! stored seqs dense: the only write is the insert, and its stored part is
//! a prefix. Any failure forgets the cached seqs of the batch's rooms and
//! fails the batch; the writer's retry starts again at step 1.
//!
//! Protocol 1.1, with no transaction and no extra write per message:
//!
//! 4. an event's effect on its target (the rows it names are read with the
//!    duplicates, in step 1) is written after the insert, guarded by the
//!    target's `applied` seq, so it is idempotent and never goes back; a
//!    retry (the writer's, or the client's with the same cid) re-applies
//!    the effect of an event found stored, so an acknowledged event has
//!    always changed its target;
//! 5. each room of the batch gets one `$max` of its `last_seq` and
//!    `last_ts` in `rooms` (a DM room's doc also names its two `users`).
//!
//! In a cluster each message carries its writer's `Fence` (`store/mod.rs`).
//! Before a room's first write by a node (per view of the live nodes),
//! the node claims it: it inserts the room's next claim into `claims`
//! (`{room, epoch, node}`, unique `(room, epoch)`; a duplicate means
//! another node claimed that epoch first: read the newest again and try
//! the next). A unique insert is atomic on FerretDB too, where
//! `findAndModify` and conditional updates are not (measured: four
//! clients' 800 concurrent `$inc`s returned 294 distinct values). The
//! room's last seq is read after the claim, and every message stored
//! carries the epoch (`epoch`). Every read of a room's last seq also reads
//! the room's newest claim: while it is this node's, the node numbers from
//! the stored last seq; once it is another's, the room's unstored messages
//! are answered `Moved` and nothing is numbered again. Claims only grow,
//! so the newest is the current owner; the unique `(room, seq)` index is
//! the fence: the owner's first stored seq is one the fenced node's next
//! insert must collide with.
//!
//! A user's conversations are then read, not written per message: the DM
//! rooms naming the user (`rooms.users`), the public rooms the user joined
//! and the read markers (`conversations`), and the user's own newest
//! message in a room (index `(room, from, seq)`), which is the marker a
//! send moves.
//!
//! Retention and purges remove a room's oldest messages: the room's doc
//! gets its `horizon` first (`$max`), then the messages up to it are
//! deleted, then the events above it that named them are erased in place
//! (index `(room, target)`). A room's last seq is the largest of its
//! newest message, its doc's `last_seq` and its `horizon`, so a room whose
//! messages are all gone never numbers from 1 again. The doc's `first_ts`
//! (the oldest stored message's time, `$min` on each batch) lets retention
//! by age skip rooms with nothing to remove. A deleted account keeps its
//! document (`deleted_ms`, no password), so the name stays taken.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use lru::LruCache;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::{Conversation, Msg, MsgKind};

use super::events::{self, Reaction, Row, Verdict};
use super::{
    Added, Appended, Erased, Marker, NewMessage, RoomInfo, Store, StoreError, StoreResult, StoreStats, Trim, Trimmed,
    UserRecord,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageDoc {
    /// `from:cid`. Usernames have no `:`, so this is the (from, cid) key
    /// itself: a retried cid collides here on insert, with no query first.
    #[serde(rename = "_id")]
    id: String,
    room: String,
    seq: i64,
    from: String,
    cid: String,
    body: String,
    ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<MsgKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited_ts: Option<i64>,
    // The state of version 1.1, stored only when not the default (most
    // messages are never edited, deleted or reacted to; smaller documents
    // are faster to insert).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reactions: Vec<ReactionDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    edits: Vec<i64>,
    /// The seq of the newest event applied to this message (step 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    applied: i64,
    /// In a cluster: the owner epoch of the node that stored it.
    #[serde(default, skip_serializing_if = "is_zero")]
    epoch: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReactionDoc {
    emoji: String,
    user: String,
    on: bool,
    seq: i64,
}

/// A seq as stored (MongoDB has no u64); seqs never reach i64::MAX.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    n.max(0) as u64
}

impl MessageDoc {
    fn new(id: String, room: &str, seq: u64, row: &Row) -> Self {
        Self {
            id,
            room: room.to_owned(),
            seq: to_i64(seq),
            from: row.from.clone(),
            cid: row.cid.clone(),
            body: row.body.clone(),
            ts: to_i64(row.ts),
            kind: row.kind,
            target: row.target.map(to_i64),
            reply_to: row.reply_to.map(to_i64),
            emoji: row.emoji.clone(),
            on: row.on,
            edited_ts: row.edited_ts.map(to_i64),
            deleted: row.deleted,
            reactions: row
                .reactions
                .iter()
                .map(|r| ReactionDoc { emoji: r.emoji.clone(), user: r.user.clone(), on: r.on, seq: to_i64(r.seq) })
                .collect(),
            edits: row.edits.iter().map(|&s| to_i64(s)).collect(),
            applied: 0,
            epoch: 0,
        }
    }

    fn row(&self) -> Row {
        Row {
            from: self.from.clone(),
            cid: self.cid.clone(),
            body: self.body.clone(),
            ts: to_u64(self.ts),
            kind: self.kind,
            target: self.target.map(to_u64),
            reply_to: self.reply_to.map(to_u64),
            emoji: self.emoji.clone(),
            on: self.on,
            edited_ts: self.edited_ts.map(to_u64),
            deleted: self.deleted,
            reactions: self
                .reactions
                .iter()
                .map(|r| Reaction { emoji: r.emoji.clone(), user: r.user.clone(), on: r.on, seq: to_u64(r.seq) })
                .collect(),
            edits: self.edits.iter().map(|&s| to_u64(s)).collect(),
        }
    }

    fn msg(&self) -> Msg {
        self.row().to_msg(&self.room, to_u64(self.seq))
    }
}

/// A user's conversation entry: a public room joined, or a DM's read
/// marker or forgetting (a DM is listed from `rooms.users` without one).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConversationDoc {
    /// `user/room`: neither has a `/`.
    #[serde(rename = "_id")]
    id: String,
    user: String,
    room: String,
    dm: bool,
    #[serde(default)]
    read_seq: i64,
    /// A forgotten DM stays hidden while its last seq is `<=` this.
    #[serde(default)]
    hidden_upto: i64,
    /// The room's last seq when it was added: the user's own messages up
    /// to it (from before a `forget`) do not move the new marker.
    #[serde(default)]
    floor: i64,
}

impl ConversationDoc {
    /// The marker, counting the user's own newest message (`own_last`).
    fn read_seq(entry: Option<&Self>, own_last: u64) -> u64 {
        let explicit = entry.map_or(0, |c| to_u64(c.read_seq));
        let floor = entry.map_or(0, |c| to_u64(c.floor));
        if own_last > floor {
            explicit.max(own_last)
        } else {
            explicit
        }
    }
}

fn conversation_id(user: &str, room: &str) -> String {
    format!("{user}/{room}")
}

/// A room's doc in `rooms`, as conversations read it.
#[derive(Debug, Clone, Default, Deserialize)]
struct RoomDoc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    last_seq: i64,
    #[serde(default)]
    last_ts: i64,
    /// Every seq up to this one was removed (retention, a purge).
    #[serde(default)]
    horizon: i64,
    /// When the oldest stored message was stored (absent: none, or not known).
    #[serde(default)]
    first_ts: Option<i64>,
}

/// A node's claim of a room, in `claims` (a cluster's fence: see the
/// module's doc). The newest claim of a room names its owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimDoc {
    room: String,
    epoch: i64,
    node: String,
    /// When it was claimed (ms since the epoch), for a person reading.
    ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserDoc {
    username: String,
    password_hash: String,
    created_ms: i64,
    /// Set when the account was deleted (its password hash is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_ms: Option<i64>,
}

/// How the operator wants writes acknowledged (`--mongo-write-concern`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoWriteConcern {
    /// `"majority"`, a number of nodes, or `"auto"`: `majority` when the
    /// server is a replica set member, else `1`.
    pub w: String,
    /// Wait for the on-disk journal.
    pub journal: bool,
    /// With `majority`: how long the server may wait for the majority
    /// before failing the write (the batch is then retried).
    pub wtimeout: Duration,
}

impl Default for MongoWriteConcern {
    fn default() -> Self {
        Self { w: "auto".into(), journal: true, wtimeout: Duration::from_secs(5) }
    }
}

impl MongoWriteConcern {
    fn to_driver(&self) -> Result<WriteConcern, String> {
        let mut wc = if self.w == "majority" {
            let mut wc = WriteConcern::majority();
            wc.w_timeout = Some(self.wtimeout);
            wc
        } else {
            let n: u32 = self
                .w
                .parse()
                .map_err(|_| format!("write concern w must be \"majority\" or a number, not {:?}", self.w))?;
            if n == 0 {
                return Err("write concern w=0 would acknowledge messages that may not be stored".into());
            }
            WriteConcern::nodes(n)
        };
        wc.journal = Some(self.journal);
        Ok(wc)
    }
}

/// Rooms whose last seq is cached at most; the least recently written
/// ones are forgotten first (and read again when they next get a message).
const SEQ_CACHE_ROOMS_MAX: usize = 100_000;
/// Ids per dedupe query.
const DEDUPE_QUERY_IDS_MAX: usize = 1024;
/// Last-seq reads in flight at once for one batch's uncached rooms.
const LAST_SEQ_READS_CONCURRENT_MAX: usize = 32;
const DUPLICATE_KEY: i32 = 11000;
/// Attempts of one batch whose inserts collide on a key (a retried cid,
/// or a seq another writer of the room took: another node of a cluster)
/// before the batch fails; each collision reads the rooms' last seqs
/// again, so only writers racing on the same rooms see more than one.
const SEQ_COLLISION_ATTEMPTS_MAX: usize = 8;
/// A room's newest claim: its node and epoch.
type Holder = (String, u64);
/// Rooms' newest claims as read.
type RoomClaims = HashMap<String, Holder>;
/// Tries to claim a room while other nodes claim it at the same moment.
const CLAIM_ATTEMPTS_MAX: usize = 8;
/// Reads of a reaction's target while removing a deleted user's reaction.
const REACTION_REMOVAL_TRIES_MAX: usize = 3;

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    users: Collection<UserDoc>,
    messages: Collection<MessageDoc>,
    rooms: Collection<Document>,
    conversations: Collection<ConversationDoc>,
    /// In a cluster: who claimed which room, newest epoch last.
    room_claims: Collection<ClaimDoc>,
    write_concern: WriteConcern,
    /// Reads that decide a duplicate: `majority` when writes are, so that
    /// only a durable original is acknowledged again.
    dedupe_read_concern: Option<ReadConcern>,
    last_seq: Arc<Mutex<LruCache<String, u64>>>,
    /// In a cluster: the rooms this node claimed, with the view of the live
    /// nodes it claimed them in (`Fence::generation`) and the epoch got.
    /// Bounded like `last_seq`; a room forgotten is claimed again.
    claims: Arc<Mutex<LruCache<String, Claim>>>,
    /// Documents per `insert_many` (step 3): unbounded on MongoDB;
    /// `FERRETDB_INSERT_DOCS_MAX` on FerretDB.
    insert_docs_max: usize,
}

/// This node's claim of a room (a cluster's fence: see the module's doc).
#[derive(Debug, Clone)]
struct Claim {
    /// The view of the live nodes it was made in (`Fence::generation`).
    generation: u64,
    epoch: u64,
    /// Another node claimed the room since: this node writes nothing
    /// there until its next view.
    lost_to: Option<String>,
}

/// FerretDB (1.24) inserts in chunks of 100 documents and, even for an
/// ordered insert, goes on with the next chunk after one fails: what is
/// stored is then not a prefix. Sent in chunks of this size, each insert is
/// one of its chunks, so it stops at the first failure as MongoDB does.
const FERRETDB_INSERT_DOCS_MAX: usize = 100;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A message's `_id`: its (from, cid) key. Usernames have no `:`.
fn doc_id(from: &str, cid: &str) -> String {
    format!("{from}:{cid}")
}

/// A find's `limit` as MongoDB takes it: positive (a negative one means
/// "one batch"; 0 means none), so anything past i64::MAX is i64::MAX.
fn mongo_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        &*e.kind,
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) if we.code == DUPLICATE_KEY
    )
}

/// Erases a row in place (see `Row::erase`).
fn erase_update() -> Document {
    doc! {
        "$set": { "body": "", "deleted": true, "reactions": [] },
        "$unset": { "emoji": "", "on": "" },
    }
}

/// Where an ordered `insert_many` stopped on a duplicate key (a retried
/// cid on `_id`, or a seq taken on `(room, seq)`), with nothing else wrong:
/// the documents before it are stored, none after it.
fn collided_at(e: &mongodb::error::Error) -> Option<usize> {
    match &*e.kind {
        mongodb::error::ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
            match failure.write_errors.as_deref() {
                Some([only]) if only.code == DUPLICATE_KEY => Some(only.index),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether an attempt at a batch first looks up which of its messages are
/// stored already.
#[derive(Clone)]
enum Lookup {
    /// No: a retried cid is rare, and the insert's `_id` catches it.
    Skip,
    /// Yes (`$in` on `_id`, under the dedupe read concern); `ours` are the
    /// `_id`s the first attempt stored.
    Stored { ours: HashSet<String> },
}

/// Why an attempt at a batch ended without its outcomes.
enum Attempt {
    /// A `Lookup::Skip` attempt met a message that may be a retry: its
    /// insert collided (`stored` is the prefix inserted before), or an event
    /// was refused or repeats (nothing inserted: the refusal may be its own
    /// effect, stored by an earlier attempt whose ack was lost).
    NeedsLookup {
        stored: Vec<MessageDoc>,
    },
    Failed(StoreError),
}

impl Attempt {
    fn into_error(self) -> StoreError {
        match self {
            Attempt::NeedsLookup { .. } => StoreError::Unavailable("a batch needed a second attempt".into()),
            Attempt::Failed(e) => e,
        }
    }
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Failed(e)
    }
}

/// What a room's doc gets when it is created: when, and a DM room's users.
fn room_created(room: &str) -> Document {
    let mut created = doc! { "created_ms": to_i64(crate::clock::now_ms()) };
    if let Some(RoomKind::Dm(a, b)) = parse_room(room) {
        created.insert("users", vec![a, b]);
    }
    created
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl MongoStore {
    /// Connects, checks the server answers, and creates the indexes.
    pub async fn connect(uri: &str, db_name: &str, write_concern: &MongoWriteConcern) -> anyhow::Result<Self> {
        let mut options =
            ClientOptions::parse(uri).await.map_err(|e| anyhow::anyhow!("parsing the MongoDB URI: {e}"))?;
        // Fail fast while the database is away, so the writer's own retry
        // (with backoff) is what paces attempts, and /readyz answers quickly.
        options.server_selection_timeout.get_or_insert(Duration::from_secs(2));
        options.connect_timeout.get_or_insert(Duration::from_secs(2));
        options.app_name.get_or_insert_with(|| "viche".to_string());
        let client = Client::with_options(options).map_err(|e| anyhow::anyhow!("creating the MongoDB client: {e}"))?;
        let db = client.database(db_name);
        let hello = db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| anyhow::anyhow!("MongoDB at {uri} does not answer: {e}"))?;
        let replica_set = hello.get_str("setName").is_ok();
        let build = db
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(|e| anyhow::anyhow!("MongoDB at {uri} does not answer buildInfo: {e}"))?;
        let ferretdb = build.contains_key("ferretdbVersion");
        let mut concern = write_concern.clone();
        if concern.w == "auto" {
            concern.w = if replica_set { "majority".into() } else { "1".into() };
        }
        tracing::info!(w = %concern.w, j = concern.journal, replica_set, ferretdb, "MongoDB write concern");
        let dedupe_read_concern = (concern.w == "majority").then(ReadConcern::majority);
        let write_concern = concern.to_driver().map_err(|e| anyhow::anyhow!(e))?;
        let store = Self {
            users: db.collection("users"),
            messages: db.collection("messages"),
            rooms: db.collection("rooms"),
            conversations: db.collection("conversations"),
            room_claims: db.collection("claims"),
            db,
            write_concern,
            dedupe_read_concern,
            last_seq: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(SEQ_CACHE_ROOMS_MAX).expect("the cache holds rooms"),
            ))),
            claims: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(SEQ_CACHE_ROOMS_MAX).expect("the cache holds rooms"),
            ))),
            insert_docs_max: if ferretdb { FERRETDB_INSERT_DOCS_MAX } else { usize::MAX },
        };
        store.create_indexes().await?;
        store.migrate_rooms().await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> anyhow::Result<()> {
        let unique = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(true).name(name.to_string()).build())
                .build()
        };
        self.users
            .create_index(unique(doc! { "username": 1 }, "username_unique"))
            .await
            .map_err(|e| anyhow::anyhow!("creating users index: {e}"))?;
        self.messages
            .create_index(unique(doc! { "room": 1, "seq": 1 }, "room_seq_unique"))
            .await
            .map_err(|e| anyhow::anyhow!("creating messages (room, seq) index: {e}"))?;
        self.messages
            .create_index(unique(doc! { "from": 1, "cid": 1 }, "from_cid_unique"))
            .await
            .map_err(|e| anyhow::anyhow!("creating messages (from, cid) index: {e}"))?;
        self.room_claims
            .create_index(unique(doc! { "room": 1, "epoch": -1 }, "room_epoch_unique"))
            .await
            .map_err(|e| anyhow::anyhow!("creating claims (room, epoch) index: {e}"))?;
        let plain = |keys: Document, name: &str| {
            IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_string()).build()).build()
        };
        self.messages
            .create_index(plain(doc! { "room": 1, "from": 1, "seq": -1 }, "room_from_seq"))
            .await
            .map_err(|e| anyhow::anyhow!("creating messages (room, from, seq) index: {e}"))?;
        self.rooms
            .create_index(plain(doc! { "users": 1 }, "users"))
            .await
            .map_err(|e| anyhow::anyhow!("creating rooms users index: {e}"))?;
        self.conversations
            .create_index(plain(doc! { "user": 1 }, "user"))
            .await
            .map_err(|e| anyhow::anyhow!("creating conversations user index: {e}"))?;
        self.messages
            .create_index(plain(doc! { "room": 1, "target": 1 }, "room_target"))
            .await
            .map_err(|e| anyhow::anyhow!("creating messages (room, target) index: {e}"))?;
        Ok(())
    }

    /// Rooms stored before protocol 1.1 get their `last_seq`, `last_ts`
    /// and (DM rooms) `users`, once.
    async fn migrate_rooms(&self) -> anyhow::Result<()> {
        let mut old = self
            .rooms
            .find(doc! { "last_seq": { "$exists": false } })
            .await
            .map_err(|e| anyhow::anyhow!("finding rooms to migrate: {e}"))?;
        let mut migrated = 0u64;
        while let Some(room) = old.try_next().await.map_err(|e| anyhow::anyhow!("reading rooms to migrate: {e}"))? {
            let Ok(name) = room.get_str("_id") else { continue };
            let last = self
                .messages
                .find_one(doc! { "room": name })
                .sort(doc! { "seq": -1 })
                .await
                .map_err(|e| anyhow::anyhow!("reading room {name}'s last message: {e}"))?;
            let (last_seq, last_ts) = last.map_or((0, 0), |m| (m.seq, m.ts));
            let mut set = doc! { "last_seq": last_seq, "last_ts": last_ts };
            if let Some(RoomKind::Dm(a, b)) = parse_room(name) {
                set.insert("users", vec![a, b]);
            }
            self.rooms
                .update_one(doc! { "_id": name }, doc! { "$set": set })
                .await
                .map_err(|e| anyhow::anyhow!("migrating room {name}: {e}"))?;
            migrated += 1;
        }
        if migrated > 0 {
            tracing::info!(migrated, "MongoDB: rooms migrated to protocol 1.1");
        }
        // Rooms stored before retention get the time of their oldest message, once.
        let meta = self.db.collection::<Document>("meta");
        let marker = doc! { "_id": "rooms_first_ts" };
        if meta.find_one(marker.clone()).await.map_err(|e| anyhow::anyhow!("reading meta: {e}"))?.is_some() {
            return Ok(());
        }
        let mut old = self
            .rooms
            .clone_with_type::<RoomDoc>()
            .find(doc! { "first_ts": { "$exists": false }, "last_seq": { "$gt": 0_i64 } })
            .await
            .map_err(|e| anyhow::anyhow!("finding rooms to migrate: {e}"))?;
        let mut migrated = 0u64;
        while let Some(room) = old.try_next().await.map_err(|e| anyhow::anyhow!("reading rooms to migrate: {e}"))? {
            let first = self
                .messages
                .find_one(doc! { "room": &room.id, "seq": { "$gt": room.horizon } })
                .sort(doc! { "seq": 1 })
                .await
                .map_err(|e| anyhow::anyhow!("reading room {}'s first message: {e}", room.id))?;
            if let Some(first) = first {
                self.rooms
                    .update_one(doc! { "_id": &room.id }, doc! { "$min": { "first_ts": first.ts } })
                    .await
                    .map_err(|e| anyhow::anyhow!("migrating room {}: {e}", room.id))?;
                migrated += 1;
            }
        }
        if migrated > 0 {
            tracing::info!(migrated, "MongoDB: rooms given the time of their oldest message");
        }
        meta.update_one(marker, doc! { "$set": { "done": true } })
            .upsert(true)
            .await
            .map_err(|e| anyhow::anyhow!("writing meta: {e}"))?;
        Ok(())
    }

    /// The names of the indexes of a collection (for tests and operators).
    pub async fn index_names(&self, collection: &str) -> StoreResult<Vec<String>> {
        self.db
            .collection::<Document>(collection)
            .list_index_names()
            .await
            .map_err(|e| unavailable("listing indexes", e))
    }

    /// The newest stored message's seq, or the room doc's `last_seq` or
    /// `horizon` when larger (its newest messages were removed).
    async fn stored_last_seq(&self, room: &str) -> StoreResult<u64> {
        let newest = async {
            self.messages
                .find_one(doc! { "room": room })
                .sort(doc! { "seq": -1 })
                .await
                .map_err(|e| unavailable("reading a room's last seq", e))
        };
        let (last, room_doc) = futures_util::try_join!(newest, self.room_doc(room))?;
        let newest = last.map_or(0, |d| to_u64(d.seq));
        Ok(newest.max(to_u64(room_doc.last_seq)).max(to_u64(room_doc.horizon)))
    }

    /// The room's newest claim: its node and epoch (`("", 0)`: none).
    async fn newest_claim(&self, room: &str) -> StoreResult<(String, u64)> {
        let newest = self
            .room_claims
            .find_one(doc! { "room": room })
            .sort(doc! { "epoch": -1 })
            .await
            .map_err(|e| unavailable("reading a room's claim", e))?;
        Ok(newest.map_or((String::new(), 0), |c| (c.node, to_u64(c.epoch))))
    }

    /// The originals already stored under these ids (read so that only a
    /// durable original counts: see the module's doc).
    async fn existing(&self, ids: &[&str]) -> StoreResult<HashMap<String, MessageDoc>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(DEDUPE_QUERY_IDS_MAX) {
            let mut find = self.messages.find(doc! { "_id": { "$in": chunk } });
            if let Some(concern) = &self.dedupe_read_concern {
                find = find.read_concern(concern.clone());
            }
            let docs: Vec<MessageDoc> = find
                .await
                .map_err(|e| unavailable("looking up cids", e))?
                .try_collect()
                .await
                .map_err(|e| unavailable("reading cids", e))?;
            for d in docs {
                found.insert(d.id.clone(), d);
            }
        }
        Ok(found)
    }

    /// The last seq of each of `rooms`: from the cache, the rest read from
    /// the database concurrently (one round trip's wait, not one per room),
    /// with the newest claim (node, epoch) of those read that are `fenced`.
    async fn last_seqs(
        &self,
        rooms: &[&str],
        fenced: &HashMap<String, u64>,
    ) -> StoreResult<(HashMap<String, u64>, RoomClaims)> {
        let mut last = HashMap::with_capacity(rooms.len());
        let mut missing: Vec<String> = Vec::new();
        {
            let mut cache = self.last_seq.lock();
            for room in rooms {
                match cache.get(*room) {
                    Some(seq) => {
                        last.insert(room.to_string(), *seq);
                    }
                    None => missing.push(room.to_string()),
                }
            }
        }
        let reads = futures_util::stream::iter(missing)
            .map(|room| async move {
                let (seq, claim) = if fenced.contains_key(&room) {
                    let (seq, claim) = futures_util::try_join!(self.stored_last_seq(&room), self.newest_claim(&room))?;
                    (seq, Some(claim))
                } else {
                    (self.stored_last_seq(&room).await?, None)
                };
                Ok::<_, StoreError>((room, seq, claim))
            })
            .buffer_unordered(LAST_SEQ_READS_CONCURRENT_MAX);
        let read: Vec<(String, u64, Option<Holder>)> = reads.try_collect().await?;
        let mut claims = HashMap::with_capacity(read.len());
        for (room, seq, claim) in read {
            if let Some(claim) = claim {
                claims.insert(room.clone(), claim);
            }
            last.insert(room, seq);
        }
        Ok((last, claims))
    }

    fn forget_rooms<'a>(&self, rooms: impl Iterator<Item = &'a str>) {
        let mut cache = self.last_seq.lock();
        for room in rooms {
            cache.pop(room);
        }
    }

    /// The rows stored at these (room, seq)s.
    async fn rows_at(&self, wanted: &[(String, u64)]) -> StoreResult<HashMap<(String, u64), MessageDoc>> {
        let mut by_room: HashMap<&str, Vec<i64>> = HashMap::new();
        for (room, seq) in wanted {
            by_room.entry(room.as_str()).or_default().push(to_i64(*seq));
        }
        let mut found = HashMap::new();
        for (room, seqs) in by_room {
            for chunk in seqs.chunks(DEDUPE_QUERY_IDS_MAX) {
                let docs: Vec<MessageDoc> = self
                    .messages
                    .find(doc! { "room": room, "seq": { "$in": chunk } })
                    .await
                    .map_err(|e| unavailable("reading targets", e))?
                    .try_collect()
                    .await
                    .map_err(|e| unavailable("reading targets", e))?;
                for d in docs {
                    found.insert((d.room.clone(), to_u64(d.seq)), d);
                }
            }
        }
        Ok(found)
    }

    /// Steps 1–5 of the module's doc: first without the lookup of step 1
    /// (`Lookup::Skip`), then, only when that attempt meets what may be a
    /// retry, with it.
    async fn append(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        let mut lookup = Lookup::Skip;
        for _ in 0..SEQ_COLLISION_ATTEMPTS_MAX {
            // (A clone: an attempt takes the ids it answers out of its set.)
            match self.attempt(batch, lookup.clone()).await {
                Err(Attempt::NeedsLookup { stored }) => {
                    // What the ordered insert stored before the collision is
                    // this batch's own prefix: the next attempt answers it
                    // `Stored`, not `Duplicate`. The collision may be a seq
                    // that another writer of the room took (another node of
                    // a cluster): the next attempt numbers from the rooms'
                    // last seqs as stored, the prefix included.
                    let mut ours = match lookup {
                        Lookup::Stored { ours } => ours,
                        Lookup::Skip => HashSet::with_capacity(stored.len()),
                    };
                    ours.extend(stored.into_iter().map(|doc| doc.id));
                    self.forget_rooms(batch.iter().map(|m| &*m.room));
                    crate::metrics::STORE_DUPLICATE_LOOKUPS.counter().increment(1);
                    lookup = Lookup::Stored { ours };
                }
                other => return other.map_err(Attempt::into_error),
            }
        }
        Err(StoreError::Unavailable(format!(
            "a batch's seqs collided {SEQ_COLLISION_ATTEMPTS_MAX} times with other writers of its rooms"
        )))
    }

    /// This node's claim of each fenced room of the batch: its epoch, or
    /// (in `moved`) the node it lost the room to. A room not claimed in
    /// this view of the live nodes (`Fence::generation`) is claimed now,
    /// raising its owner epoch, and its cached last seq is forgotten: it is
    /// read after the claim. A room lost stays lost until the next view.
    async fn claim_rooms(
        &self,
        batch: &[NewMessage],
        moved: &mut HashMap<String, String>,
    ) -> StoreResult<HashMap<String, u64>> {
        let mut epochs = HashMap::new();
        for m in batch {
            let Some(fence) = &m.fence else { continue };
            if epochs.contains_key(&*m.room) || moved.contains_key(&*m.room) {
                continue;
            }
            let cached = self.claims.lock().get(&*m.room).cloned();
            match cached {
                Some(claim) if claim.generation == fence.generation => match claim.lost_to {
                    Some(holder) => {
                        moved.insert(m.room.to_string(), holder);
                    }
                    None => {
                        epochs.insert(m.room.to_string(), claim.epoch);
                    }
                },
                _ => {
                    let epoch = self.claim(&m.room, &fence.node).await?;
                    tracing::info!(room = %m.room, node = %fence.node, epoch, "cluster: room claimed");
                    let claim = Claim { generation: fence.generation, epoch, lost_to: None };
                    self.claims.lock().put(m.room.to_string(), claim);
                    self.forget_rooms(std::iter::once(&*m.room));
                    epochs.insert(m.room.to_string(), epoch);
                }
            }
        }
        Ok(epochs)
    }

    /// Inserts `room`'s next claim for `node`; its epoch. A duplicate is
    /// another node's claim of that epoch, made first: the next is tried,
    /// [`CLAIM_ATTEMPTS_MAX`] times. Older claims of the room are then
    /// removed (they name no owner any more; a failed removal leaves them
    /// for the next claim).
    async fn claim(&self, room: &str, node: &str) -> StoreResult<u64> {
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            let (_, newest) = self.newest_claim(room).await?;
            let epoch = newest + 1;
            let doc = ClaimDoc {
                room: room.to_owned(),
                epoch: to_i64(epoch),
                node: node.to_owned(),
                ms: to_i64(crate::clock::now_ms()),
            };
            match self.room_claims.insert_one(&doc).write_concern(self.write_concern.clone()).await {
                Ok(_) => {
                    let older = doc! { "room": room, "epoch": { "$lt": to_i64(epoch) } };
                    if let Err(e) = self.room_claims.delete_many(older).await {
                        tracing::warn!(error = %e, room, "cluster: older claims not removed");
                    }
                    return Ok(epoch);
                }
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(unavailable("claiming a room", e)),
            }
        }
        Err(StoreError::Unavailable(format!("claiming a room: {CLAIM_ATTEMPTS_MAX} other claims came first")))
    }

    /// Checks this node's claims against those read with the rooms' last
    /// seqs (every read of a last seq, hence every numbering that does not
    /// follow this node's own last insert, is checked): a room claimed
    /// since by another node is lost to it, and goes into `moved`.
    fn check_claims(&self, epochs: &HashMap<String, u64>, read: &RoomClaims, moved: &mut HashMap<String, String>) {
        for (room, (holder, stored_epoch)) in read {
            let Some(epoch) = epochs.get(room) else { continue };
            if stored_epoch == epoch {
                continue;
            }
            tracing::warn!(room, holder, epoch, stored_epoch, "cluster: another node claimed this room; fenced");
            crate::metrics::CLUSTER_FENCED.counter().increment(1);
            if let Some(claim) = self.claims.lock().get_mut(room.as_str()) {
                claim.lost_to = Some(holder.clone());
            }
            moved.insert(room.clone(), holder.clone());
        }
    }

    async fn attempt(&self, batch: &[NewMessage], mut lookup: Lookup) -> Result<Vec<Appended>, Attempt> {
        // 1. What is stored already (a client's retry, or an earlier
        //    attempt of this batch that got in), and the rows named by the
        //    batch's events and replies (and by the events found stored,
        //    whose effect is re-applied).
        let ids: Vec<String> = batch.iter().map(|m| doc_id(&m.from, &m.cid)).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut originals = match lookup {
            Lookup::Skip => HashMap::new(),
            Lookup::Stored { .. } => self.existing(&id_refs).await?,
        };
        let mut named: Vec<(String, u64)> = batch
            .iter()
            .zip(&ids)
            .filter_map(|(m, id)| match originals.get(id) {
                Some(original) => original.target.map(|t| (original.room.clone(), to_u64(t))),
                None => m.event.names().map(|seq| (m.room.to_string(), seq)),
            })
            .collect();
        named.sort_unstable();
        named.dedup();
        // (room, seq) → (row, applied, changed by this batch)
        let mut rows: HashMap<(String, u64), (Row, u64, bool)> = self
            .rows_at(&named)
            .await?
            .into_iter()
            .map(|(key, d)| (key, (d.row(), to_u64(d.applied), false)))
            .collect();

        // 2. Number the new ones, per room, in batch order.
        // Rooms another node claimed since this one did, with that node.
        let mut moved: HashMap<String, String> = HashMap::new();
        let epochs = self.claim_rooms(batch, &mut moved).await?;
        let mut rooms: Vec<&str> = batch.iter().map(|m| &*m.room).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let (mut next, read_claims) = self.last_seqs(&rooms, &epochs).await?;
        self.check_claims(&epochs, &read_claims, &mut moved);
        #[cfg(feature = "failpoints")]
        if crate::faults::eval("store.append.between").await.is_some() {
            return Err(StoreError::Unavailable("failpoint store.append.between".into()).into());
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut docs = Vec::new();
        let mut erase: Vec<(String, u64)> = Vec::new();
        for (m, id) in batch.iter().zip(ids) {
            if let Some(original) = originals.get(&id) {
                // Re-apply an event found stored: its effect may not have
                // been written (the `applied` guard makes this idempotent).
                if let (Some(event), Some(target)) = (original.row().as_event(&original.room), original.target) {
                    let seq = to_u64(original.seq);
                    if let Some((row, applied, changed)) = rows.get_mut(&(original.room.clone(), to_u64(target))) {
                        if *applied < seq {
                            erase.extend(
                                events::apply(row, &event, seq).into_iter().map(|s| (event.room.to_string(), s)),
                            );
                            (*applied, *changed) = (seq, true);
                        }
                    }
                }
                // (Its first occurrence, when this batch's first attempt stored it.)
                let ours = match &mut lookup {
                    Lookup::Stored { ours } => ours.remove(&id),
                    Lookup::Skip => false,
                };
                outcomes.push(if ours {
                    Appended::Stored(original.msg())
                } else {
                    Appended::Duplicate(original.msg())
                });
                continue;
            }
            if let Some(holder) = moved.get(&*m.room) {
                outcomes.push(Appended::Moved(holder.clone()));
                continue;
            }
            let key = m.event.names().map(|seq| (m.room.to_string(), seq));
            let target = key.as_ref().and_then(|k| rows.get(k)).map(|(row, _, _)| row);
            match events::check(m, target) {
                Verdict::Store => {}
                Verdict::Refuse(..) | Verdict::Repeat(_) if matches!(lookup, Lookup::Skip) => {
                    return Err(Attempt::NeedsLookup { stored: Vec::new() });
                }
                Verdict::Refuse(code, why) => {
                    outcomes.push(Appended::Refused(code, why));
                    continue;
                }
                Verdict::Repeat(seq) => {
                    // The original is of this batch, or stored.
                    let in_batch = docs.iter().find(|d: &&MessageDoc| *d.room == *m.room && to_u64(d.seq) == seq);
                    let original = match in_batch {
                        Some(d) => d.msg(),
                        None => self
                            .rows_at(&[(m.room.to_string(), seq)])
                            .await?
                            .into_values()
                            .next()
                            .map(|d| d.msg())
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!(
                                    "a reaction names ({}, {seq}), which is not stored",
                                    m.room
                                ))
                            })?,
                    };
                    outcomes.push(Appended::Duplicate(original));
                    continue;
                }
            }
            let seq = next.get_mut(&*m.room).expect("every room's last seq was read above");
            *seq += 1;
            let seq = *seq;
            let row = Row::new(m);
            let mut doc = MessageDoc::new(id.clone(), &m.room, seq, &row);
            doc.epoch = epochs.get(&*m.room).map_or(0, |e| to_i64(*e));
            if let (Some(_), Some(key)) = (m.event.kind(), key) {
                let (target, applied, changed) = rows.get_mut(&key).expect("check found the target");
                erase.extend(events::apply(target, m, seq).into_iter().map(|s| (m.room.to_string(), s)));
                (*applied, *changed) = (seq, true);
            }
            // A later event of this batch may name this message.
            rows.insert((m.room.to_string(), seq), (row.clone(), 0, false));
            originals.insert(id, doc.clone()); // a repeat later in the batch is its duplicate
            docs.push(doc);
            outcomes.push(Appended::Stored(row.to_msg(&m.room, seq)));
        }

        // 3. Ordered inserts, each after the previous one succeeded: what
        //    gets in is a prefix.
        let mut inserted = 0;
        while inserted < docs.len() {
            let end = docs.len().min(inserted.saturating_add(self.insert_docs_max));
            let result = self
                .messages
                .insert_many(&docs[inserted..end])
                .ordered(true)
                .write_concern(self.write_concern.clone())
                .await;
            if let Err(e) = result {
                // A collision after the lookup is a seq taken meanwhile (or
                // a cid stored meanwhile by a retry on another node).
                return Err(match collided_at(&e) {
                    Some(at) => Attempt::NeedsLookup { stored: docs.drain(..inserted + at).collect() },
                    None => Attempt::Failed(unavailable("insert_many", e)),
                });
            }
            inserted = end;
        }

        // 4. The events' effects on their targets.
        let effects =
            rows.into_iter().filter(|(_, (_, _, changed))| *changed).map(|((room, seq), (row, applied, _))| {
                let update = MessageDoc::new(String::new(), &room, seq, &row);
                let set = doc! {
                    "body": &update.body,
                    "edited_ts": update.edited_ts,
                    "deleted": update.deleted,
                    "reactions": mongodb::bson::to_bson(&update.reactions).unwrap_or(Bson::Array(Vec::new())),
                    "edits": &update.edits,
                    "applied": to_i64(applied),
                };
                // A message stored before 1.1 has no `applied`.
                let newer = doc! { "$or": [
                    { "applied": { "$lt": to_i64(applied) } },
                    { "applied": { "$exists": false } },
                ] };
                let filter = doc! { "room": room, "seq": to_i64(seq), "$and": [newer] };
                async move {
                    self.messages
                        .update_one(filter, doc! { "$set": set })
                        .write_concern(self.write_concern.clone())
                        .await
                        .map_err(|e| unavailable("applying an event to its target", e))
                }
            });
        futures_util::stream::iter(effects)
            .buffer_unordered(LAST_SEQ_READS_CONCURRENT_MAX)
            .try_collect::<Vec<_>>()
            .await?;
        let mut erase_by_room: HashMap<String, Vec<i64>> = HashMap::new();
        for (room, seq) in erase {
            erase_by_room.entry(room).or_default().push(to_i64(seq));
        }
        for (room, seqs) in erase_by_room {
            self.messages
                .update_many(doc! { "room": room, "seq": { "$in": seqs } }, doc! { "$set": { "body": "" } })
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("erasing the edits of a deleted message", e))?;
        }

        // 5. Each room's newest seq and time, for conversations (and its
        //    oldest time, for retention).
        let mut newest: HashMap<&str, (u64, u64, u64)> = HashMap::new();
        for outcome in &outcomes {
            if let Appended::Stored(msg) | Appended::Duplicate(msg) = outcome {
                let entry = newest.entry(msg.room.as_str()).or_insert((0, 0, u64::MAX));
                *entry = (entry.0.max(msg.seq), entry.1.max(msg.ts), entry.2.min(msg.ts));
            }
        }
        let newest: Vec<(String, (u64, u64, u64))> = newest.into_iter().map(|(r, last)| (r.to_owned(), last)).collect();
        let upkeep = newest.into_iter().map(|(room, (last_seq, last_ts, first_ts))| {
            let update = doc! {
                "$max": { "last_seq": to_i64(last_seq), "last_ts": to_i64(last_ts) },
                "$min": { "first_ts": to_i64(first_ts) },
                "$setOnInsert": room_created(&room),
            };
            async move {
                self.rooms
                    .update_one(doc! { "_id": room }, update)
                    .upsert(true)
                    .write_concern(self.write_concern.clone())
                    .await
                    .map_err(|e| unavailable("updating a room's last seq", e))
            }
        });
        futures_util::stream::iter(upkeep)
            .buffer_unordered(LAST_SEQ_READS_CONCURRENT_MAX)
            .try_collect::<Vec<_>>()
            .await?;

        let mut cache = self.last_seq.lock();
        for (room, last) in next {
            cache.put(room, last);
        }
        Ok(outcomes)
    }

    /// `user`'s newest message in `room` (a send moves its sender's marker).
    async fn own_last_seq(&self, user: &str, room: &str) -> StoreResult<u64> {
        let mine = self
            .messages
            .find_one(doc! { "room": room, "from": user })
            .sort(doc! { "seq": -1 })
            .await
            .map_err(|e| unavailable("reading a user's last message", e))?;
        Ok(mine.map_or(0, |d| to_u64(d.seq)))
    }

    async fn room_doc(&self, room: &str) -> StoreResult<RoomDoc> {
        let found = self
            .rooms
            .clone_with_type::<RoomDoc>()
            .find_one(doc! { "_id": room })
            .await
            .map_err(|e| unavailable("reading a room", e))?;
        Ok(found.unwrap_or_default())
    }

    async fn conversation_doc(&self, user: &str, room: &str) -> StoreResult<Option<ConversationDoc>> {
        self.conversations
            .find_one(doc! { "_id": conversation_id(user, room) })
            .await
            .map_err(|e| unavailable("reading a conversation", e))
    }

    /// Whether `room` is one of `user`'s conversations; its explicit entry.
    async fn is_conversation(&self, user: &str, room: &str) -> StoreResult<(bool, Option<ConversationDoc>)> {
        let entry = self.conversation_doc(user, room).await?;
        match parse_room(room) {
            Some(RoomKind::Dm(..)) => {
                let last_seq = self.room_doc(room).await?.last_seq;
                let hidden_upto = entry.as_ref().map_or(0, |c| c.hidden_upto);
                Ok((last_seq > 0 && last_seq > hidden_upto, entry))
            }
            _ => Ok((entry.is_some(), entry)),
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.append(batch).await;
        if result.is_err() {
            // The seqs are read again from the database on the retry.
            self.forget_rooms(batch.iter().map(|m| &*m.room));
        }
        result
    }

    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        self.stored_last_seq(room).await
    }

    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        // Seqs are stored as i64: nothing is stored above i64::MAX.
        if after >= upto || limit == 0 || after >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let docs: Vec<MessageDoc> = self
            .messages
            .find(doc! { "room": room, "seq": { "$gt": after as i64, "$lte": upto.min(i64::MAX as u64) as i64 } })
            .sort(doc! { "seq": 1 })
            .limit(mongo_limit(limit))
            .await
            .map_err(|e| unavailable("range read", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("range read", e))?;
        Ok(docs.iter().map(MessageDoc::msg).collect())
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)> {
        let mut filter = doc! { "room": room };
        if let Some(before) = before {
            if before <= 1 {
                return Ok((Vec::new(), false));
            }
            filter.insert("seq", doc! { "$lt": before.min(i64::MAX as u64) as i64 });
        }
        let mut docs: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(mongo_limit(limit.saturating_add(1)))
            .await
            .map_err(|e| unavailable("history read", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("history read", e))?;
        let more = docs.len() > limit;
        docs.truncate(limit);
        Ok((docs.iter().map(MessageDoc::msg).collect(), more))
    }

    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added> {
        if self.conversation_doc(user, room).await?.is_some() {
            return Ok(Added::Kept);
        }
        let public = self
            .conversations
            .count_documents(doc! { "user": user, "dm": false })
            .await
            .map_err(|e| unavailable("counting conversations", e))?;
        if public >= public_max as u64 {
            return Ok(Added::Full);
        }
        let entry = ConversationDoc {
            id: conversation_id(user, room),
            user: user.to_owned(),
            room: room.to_owned(),
            dm: false,
            read_seq: 0,
            hidden_upto: 0,
            floor: to_i64(self.stored_last_seq(room).await?),
        };
        match self.conversations.insert_one(entry).write_concern(self.write_concern.clone()).await {
            Ok(_) => Ok(Added::Kept),
            Err(e) if is_duplicate_key(&e) => Ok(Added::Kept), // added meanwhile
            Err(e) => Err(unavailable("adding a conversation", e)),
        }
    }

    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool> {
        let (found, _) = self.is_conversation(user, room).await?;
        if !found {
            return Ok(false);
        }
        let id = conversation_id(user, room);
        if matches!(parse_room(room), Some(RoomKind::Dm(..))) {
            // Hidden until its next message, all read.
            let last_seq = self.room_doc(room).await?.last_seq;
            self.conversations
                .update_one(
                    doc! { "_id": &id },
                    doc! {
                        "$set": { "read_seq": last_seq, "hidden_upto": last_seq },
                        "$setOnInsert": { "user": user, "room": room, "dm": true, "floor": 0_i64 },
                    },
                )
                .upsert(true)
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("forgetting a conversation", e))?;
        } else {
            self.conversations
                .delete_one(doc! { "_id": &id })
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("forgetting a conversation", e))?;
        }
        Ok(true)
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>> {
        let (found, entry) = self.is_conversation(user, room).await?;
        if !found {
            return Ok(None);
        }
        let explicit = entry.as_ref().map_or(0, |c| to_u64(c.read_seq));
        let last = self.stored_last_seq(room).await?;
        let current = ConversationDoc::read_seq(entry.as_ref(), self.own_last_seq(user, room).await?).min(last);
        let new = current.max(seq.min(last));
        if new > explicit {
            let dm = matches!(parse_room(room), Some(RoomKind::Dm(..)));
            self.conversations
                .update_one(
                    doc! { "_id": conversation_id(user, room) },
                    doc! {
                        "$max": { "read_seq": to_i64(new) },
                        "$setOnInsert": { "user": user, "room": room, "dm": dm, "hidden_upto": 0_i64, "floor": 0_i64 },
                    },
                )
                .upsert(true)
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("moving a read marker", e))?;
        }
        Ok(Some(Marker { read_seq: new, moved: new > current }))
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)> {
        let entries: Vec<ConversationDoc> = self
            .conversations
            .find(doc! { "user": user })
            .await
            .map_err(|e| unavailable("reading conversations", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading conversations", e))?;
        let rooms = self.rooms.clone_with_type::<RoomDoc>();
        let mut listed: Vec<RoomDoc> = rooms
            .find(doc! { "users": user, "last_seq": { "$gt": 0_i64 } })
            .projection(doc! { "last_seq": 1, "last_ts": 1 })
            .await
            .map_err(|e| unavailable("reading DM rooms", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading DM rooms", e))?;
        let public: Vec<&str> = entries.iter().filter(|c| !c.dm).map(|c| c.room.as_str()).collect();
        for chunk in public.chunks(DEDUPE_QUERY_IDS_MAX) {
            let found: Vec<RoomDoc> = rooms
                .find(doc! { "_id": { "$in": chunk } })
                .projection(doc! { "last_seq": 1, "last_ts": 1 })
                .await
                .map_err(|e| unavailable("reading rooms", e))?
                .try_collect()
                .await
                .map_err(|e| unavailable("reading rooms", e))?;
            listed.extend(found);
        }
        let by_room: HashMap<&str, &ConversationDoc> = entries.iter().map(|c| (c.room.as_str(), c)).collect();
        let mut all = Vec::new();
        for room in &listed {
            let entry = by_room.get(room.id.as_str());
            if entry.is_some_and(|c| c.dm && room.last_seq <= c.hidden_upto) {
                continue; // a forgotten DM with nothing new
            }
            let read_seq = entry.map_or(0, |c| to_u64(c.read_seq));
            let last = (to_u64(room.last_seq), to_u64(room.last_ts));
            all.push(super::conversation(user, &room.id, last, None, read_seq));
        }
        // Public rooms joined that have no message yet have no room doc.
        let with_doc: std::collections::HashSet<&str> = listed.iter().map(|r| r.id.as_str()).collect();
        for room in public.iter().filter(|r| !with_doc.contains(**r)) {
            all.push(super::conversation(user, room, (0, 0), None, 0));
        }
        let (mut page, more) = super::page_conversations(all, before, limit);
        // The page's newest messages, and the user's own newest message in
        // each (which moved its marker).
        let wanted: Vec<(String, u64)> = page.iter().map(|c| (c.room.clone(), c.last_seq)).collect();
        let details = wanted.into_iter().map(|(room, last_seq)| async move {
            let last = match last_seq {
                0 => None,
                seq => self.rows_at(&[(room.clone(), seq)]).await?.into_values().next().map(|d| d.msg()),
            };
            let mine = self.own_last_seq(user, &room).await?;
            Ok::<_, StoreError>((last, mine))
        });
        let details: Vec<(Option<Msg>, u64)> =
            futures_util::stream::iter(details).buffered(LAST_SEQ_READS_CONCURRENT_MAX).try_collect().await?;
        for (c, (last, mine)) in page.iter_mut().zip(details) {
            let read_seq = ConversationDoc::read_seq(by_room.get(c.room.as_str()).copied(), mine).min(c.last_seq);
            c.last = last;
            c.read_seq = read_seq;
            c.unread = c.last_seq - read_seq;
        }
        Ok((page, more))
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        let doc = UserDoc {
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            created_ms: user.created_ms as i64,
            deleted_ms: None,
        };
        match self.users.insert_one(doc).write_concern(self.write_concern.clone()).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(unavailable("creating a user", e)),
        }
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let user = self
            .users
            .find_one(doc! { "username": username, "deleted_ms": { "$exists": false } })
            .await
            .map_err(|e| unavailable("reading a user", e))?;
        Ok(user.map(|u| UserRecord {
            username: u.username,
            password_hash: u.password_hash,
            created_ms: u.created_ms.max(0) as u64,
        }))
    }

    async fn check_ready(&self) -> StoreResult<()> {
        self.db
            .collection::<Document>("meta")
            .update_one(doc! { "_id": "ready" }, doc! { "$inc": { "probes": Bson::Int64(1) } })
            .upsert(true)
            .write_concern(self.write_concern.clone())
            .await
            .map_err(|e| unavailable("readiness write", e))?;
        Ok(())
    }

    async fn horizon(&self, room: &str) -> StoreResult<u64> {
        Ok(to_u64(self.room_doc(room).await?.horizon))
    }

    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>> {
        let filter = match after {
            Some(after) => doc! { "_id": { "$gt": after } },
            None => doc! {},
        };
        let docs: Vec<RoomDoc> = self
            .rooms
            .clone_with_type::<RoomDoc>()
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(mongo_limit(limit))
            .projection(doc! { "last_seq": 1, "last_ts": 1, "horizon": 1, "first_ts": 1 })
            .await
            .map_err(|e| unavailable("reading rooms", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading rooms", e))?;
        Ok(docs
            .into_iter()
            .map(|d| RoomInfo {
                last_seq: to_u64(d.last_seq),
                horizon: to_u64(d.horizon),
                first_ts: d.first_ts.map(to_u64).filter(|_| d.horizon < d.last_seq),
                room: d.id,
            })
            .collect())
    }

    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
        let room_doc = self.room_doc(room).await?;
        let old_horizon = to_u64(room_doc.horizon);
        // The oldest rows, and the first one kept.
        let oldest: Vec<Document> = self
            .messages
            .clone_with_type::<Document>()
            .find(doc! { "room": room, "seq": { "$gt": to_i64(old_horizon) } })
            .sort(doc! { "seq": 1 })
            .limit(mongo_limit(rows_max.saturating_add(1)))
            .projection(doc! { "seq": 1, "ts": 1 })
            .await
            .map_err(|e| unavailable("reading a room's oldest messages", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading a room's oldest messages", e))?;
        let (mut horizon, mut removing) = (old_horizon, 0u64);
        let (mut first_ts, mut done) = (None, true);
        for row in &oldest {
            let seq = row.get_i64("seq").map(to_u64).unwrap_or(0);
            let ts = row.get_i64("ts").map(to_u64).unwrap_or(0);
            let goes = seq <= trim.seq_upto || trim.ts_before.is_some_and(|before| ts < before);
            if goes && (removing as usize) < rows_max {
                (horizon, removing) = (seq, removing + 1);
                continue;
            }
            first_ts = Some(ts);
            done = !goes;
            break;
        }
        if horizon == old_horizon {
            if let (None, Some(ts)) = (room_doc.first_ts, first_ts) {
                // Lost to a batch racing an earlier trim: put it back.
                self.rooms
                    .update_one(doc! { "_id": room }, doc! { "$min": { "first_ts": to_i64(ts) } })
                    .write_concern(self.write_concern.clone())
                    .await
                    .map_err(|e| unavailable("repairing a room's first_ts", e))?;
            }
            return Ok(Trimmed { removed: 0, horizon, first_ts, done: true });
        }
        // The horizon first: a crash before the delete leaves rows below
        // it, which the next trim deletes; never a horizon below a gap.
        let first = match first_ts {
            Some(ts) => doc! { "$set": { "first_ts": to_i64(ts) } },
            None => doc! { "$unset": { "first_ts": "" } },
        };
        let mut update = doc! { "$max": { "horizon": to_i64(horizon) } };
        update.extend(first);
        self.rooms
            .update_one(doc! { "_id": room }, update)
            .write_concern(self.write_concern.clone())
            .await
            .map_err(|e| unavailable("moving a room's horizon", e))?;
        let deleted = self
            .messages
            .delete_many(doc! { "room": room, "seq": { "$lte": to_i64(horizon) } })
            .write_concern(self.write_concern.clone())
            .await
            .map_err(|e| unavailable("removing a room's oldest messages", e))?;
        self.messages
            .update_many(
                doc! {
                    "room": room,
                    "target": { "$lte": to_i64(horizon) },
                    "seq": { "$gt": to_i64(horizon) },
                    "deleted": { "$ne": true },
                },
                erase_update(),
            )
            .write_concern(self.write_concern.clone())
            .await
            .map_err(|e| unavailable("erasing the events of removed messages", e))?;
        Ok(Trimmed { removed: deleted.deleted_count, horizon, first_ts, done })
    }

    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>> {
        let deleted = self
            .users
            .update_one(
                doc! { "username": user, "deleted_ms": { "$exists": false } },
                doc! { "$set": { "deleted_ms": to_i64(now_ms), "password_hash": "" } },
            )
            .write_concern(self.write_concern.clone())
            .await
            .map_err(|e| unavailable("deleting an account", e))?;
        let outcome = if deleted.matched_count > 0 {
            Some(false)
        } else {
            let known =
                self.users.find_one(doc! { "username": user }).await.map_err(|e| unavailable("reading a user", e))?;
            known.map(|_| true)
        };
        if outcome.is_some() {
            self.conversations
                .delete_many(doc! { "user": user })
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("removing a user's conversations", e))?;
            // Its DMs stop being listed as its conversations (the other
            // user's stay: each DM room names both).
            self.rooms
                .update_many(doc! { "users": user }, doc! { "$pull": { "users": user } })
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("removing a user's DM conversations", e))?;
        }
        Ok(outcome)
    }

    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased> {
        let filter = match after {
            Some(cid) => doc! { "from": user, "cid": { "$gt": cid } },
            None => doc! { "from": user },
        };
        let rows: Vec<Document> = self
            .messages
            .clone_with_type::<Document>()
            .find(filter)
            .sort(doc! { "cid": 1 })
            .limit(mongo_limit(rows_max))
            .projection(doc! { "cid": 1, "room": 1, "kind": 1, "target": 1 })
            .await
            .map_err(|e| unavailable("reading a user's messages", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading a user's messages", e))?;
        // The user's reactions leave their targets first.
        let targets: Vec<(String, i64)> = rows
            .iter()
            .filter(|r| r.get_str("kind") == Ok("reaction"))
            .filter_map(|r| Some((r.get_str("room").ok()?.to_owned(), r.get_i64("target").ok()?)))
            .collect();
        // Read, then set, guarded by the target's `applied` (FerretDB's
        // `$pull` takes no condition): an event applied meanwhile makes it
        // read again.
        let reactions = targets.into_iter().map(|(room, target)| async move {
            for _ in 0..REACTION_REMOVAL_TRIES_MAX {
                let Some(found) = self.rows_at(&[(room.clone(), to_u64(target))]).await?.into_values().next() else {
                    return Ok(());
                };
                let kept: Vec<&ReactionDoc> = found.reactions.iter().filter(|r| r.user != user).collect();
                if kept.len() == found.reactions.len() {
                    return Ok(());
                }
                let kept = mongodb::bson::to_bson(&kept).unwrap_or(Bson::Array(Vec::new()));
                // A message stored before 1.1 has no `applied`.
                let unchanged = match found.applied {
                    0 => doc! { "$or": [{ "applied": 0_i64 }, { "applied": { "$exists": false } }] },
                    applied => doc! { "applied": applied },
                };
                let done = self
                    .messages
                    .update_one(
                        doc! { "room": &room, "seq": target, "$and": [unchanged] },
                        doc! { "$set": { "reactions": kept } },
                    )
                    .write_concern(self.write_concern.clone())
                    .await
                    .map_err(|e| unavailable("removing a user's reactions", e))?;
                if done.matched_count > 0 {
                    return Ok(());
                }
            }
            Err(unavailable("removing a user's reactions", "its target kept changing; retry"))
        });
        futures_util::stream::iter(reactions)
            .buffer_unordered(LAST_SEQ_READS_CONCURRENT_MAX)
            .try_collect::<Vec<_>>()
            .await?;
        let ids: Vec<Bson> = rows.iter().filter_map(|r| r.get("_id").cloned()).collect();
        let mut erased = 0;
        if !ids.is_empty() {
            let mut erase = erase_update();
            // No retried event may change an erased row again.
            erase.get_document_mut("$set").expect("erase sets").insert("applied", i64::MAX);
            let done = self
                .messages
                .update_many(doc! { "_id": { "$in": ids } }, erase)
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("erasing a user's messages", e))?;
            erased = done.modified_count;
        }
        let next = if rows.len() == rows_max {
            rows.last().and_then(|r| r.get_str("cid").ok()).map(str::to_owned)
        } else {
            None
        };
        Ok(Erased { erased, next })
    }

    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>> {
        let docs: Vec<UserDoc> = self
            .users
            .find(doc! { "deleted_ms": { "$gte": to_i64(since_ms) } })
            .await
            .map_err(|e| unavailable("reading deleted users", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading deleted users", e))?;
        Ok(docs.into_iter().map(|u| u.username).collect())
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let users = self
            .users
            .count_documents(doc! { "deleted_ms": { "$exists": false } })
            .await
            .map_err(|e| unavailable("counting users", e))?;
        let rooms = self.rooms.estimated_document_count().await.map_err(|e| unavailable("counting rooms", e))?;
        let messages =
            self.messages.estimated_document_count().await.map_err(|e| unavailable("counting messages", e))?;
        let db_stats =
            self.db.run_command(doc! { "dbStats": 1 }).await.map_err(|e| unavailable("reading dbStats", e))?;
        let number = |key: &str| match db_stats.get(key) {
            Some(Bson::Int32(n)) => Some((*n).max(0) as u64),
            Some(Bson::Int64(n)) => Some(to_u64(*n)),
            Some(Bson::Double(n)) if *n >= 0.0 => Some(*n as u64),
            _ => None,
        };
        let bytes = number("totalSize")
            .or_else(|| Some(number("storageSize")? + number("indexSize").unwrap_or(0)))
            .or_else(|| number("dataSize"))
            .unwrap_or(0);
        Ok(StoreStats { users, rooms, messages, bytes })
    }
}
