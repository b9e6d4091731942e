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
//! 1. one `find` of the batch's `_id`s (`$in`; a message's `_id` is its
//!    (from, cid) key, the primary key, which FerretDB serves without a
//!    scan): those found are answered `Duplicate` with their original seq.
//!    With `--mongo-write-concern majority` this read uses read concern
//!    `majority`, so a duplicate is acknowledged only once it is durable as
//!    configured: a retried message that reached the primary but not yet a
//!    majority is not seen here, its insert then collides, and the batch
//!    fails and is retried until the original is majority-committed (or
//!    rolled back by a failover, after which it is stored anew);
//! 2. the new ones are numbered from each room's last seq (a bounded LRU
//!    cache; the rooms missing from it are read together, concurrently);
//! 3. one ordered `insert_many` under the write concern (with `wtimeout`
//!    when `majority`). Ordered: if it stops at a failure, what was
//!    inserted is a prefix of the batch, hence a prefix of every room's new
//!    seqs. Nothing is ever deleted.
//!
//! A process that dies between any two of these calls leaves each room's
//! stored seqs dense: the only write is the insert, and its stored part is
//! a prefix. Any failure forgets the cached seqs of the batch's rooms and
//! fails the batch; the writer's retry starts again at step 1.

use std::collections::HashMap;
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
use viche_protocol::Msg;

use super::{Appended, NewMessage, Store, StoreError, StoreResult, UserRecord};

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
}

impl From<MessageDoc> for Msg {
    fn from(d: MessageDoc) -> Msg {
        Msg { room: d.room, seq: d.seq.max(0) as u64, from: d.from, body: d.body, cid: d.cid, ts: d.ts.max(0) as u64 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserDoc {
    username: String,
    password_hash: String,
    created_ms: i64,
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

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    users: Collection<UserDoc>,
    messages: Collection<MessageDoc>,
    rooms: Collection<Document>,
    write_concern: WriteConcern,
    /// Reads that decide a duplicate: `majority` when writes are, so that
    /// only a durable original is acknowledged again.
    dedupe_read_concern: Option<ReadConcern>,
    last_seq: Arc<Mutex<LruCache<String, u64>>>,
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
        let mut concern = write_concern.clone();
        if concern.w == "auto" {
            concern.w = if replica_set { "majority".into() } else { "1".into() };
        }
        tracing::info!(w = %concern.w, j = concern.journal, replica_set, "MongoDB write concern");
        let dedupe_read_concern = (concern.w == "majority").then(ReadConcern::majority);
        let write_concern = concern.to_driver().map_err(|e| anyhow::anyhow!(e))?;
        let store = Self {
            users: db.collection("users"),
            messages: db.collection("messages"),
            rooms: db.collection("rooms"),
            db,
            write_concern,
            dedupe_read_concern,
            last_seq: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(SEQ_CACHE_ROOMS_MAX).expect("the cache holds rooms"),
            ))),
        };
        store.create_indexes().await?;
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

    async fn stored_last_seq(&self, room: &str) -> StoreResult<u64> {
        let last = self
            .messages
            .find_one(doc! { "room": room })
            .sort(doc! { "seq": -1 })
            .await
            .map_err(|e| unavailable("reading a room's last seq", e))?;
        Ok(last.map_or(0, |d| d.seq.max(0) as u64))
    }

    /// The originals already stored under these ids (read so that only a
    /// durable original counts: see the module's doc).
    async fn existing(&self, ids: &[&str]) -> StoreResult<HashMap<String, Msg>> {
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
                found.insert(d.id.clone(), Msg::from(d));
            }
        }
        Ok(found)
    }

    /// The last seq of each of `rooms`: from the cache, the rest read from
    /// the database concurrently (one round trip's wait, not one per room).
    async fn last_seqs(&self, rooms: &[&str]) -> StoreResult<HashMap<String, u64>> {
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
                let seq = self.stored_last_seq(&room).await?;
                if seq == 0 {
                    // Rooms are listed once, when they first get a message.
                    let created = doc! { "$setOnInsert": { "created_ms": crate::clock::now_ms() as i64 } };
                    let _ = self.rooms.update_one(doc! { "_id": &room }, created).upsert(true).await;
                }
                Ok::<_, StoreError>((room, seq))
            })
            .buffer_unordered(LAST_SEQ_READS_CONCURRENT_MAX);
        let read: Vec<(String, u64)> = reads.try_collect().await?;
        last.extend(read);
        Ok(last)
    }

    fn forget_rooms<'a>(&self, rooms: impl Iterator<Item = &'a str>) {
        let mut cache = self.last_seq.lock();
        for room in rooms {
            cache.pop(room);
        }
    }

    async fn append(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        // 1. What is stored already (a client's retry, or an earlier
        //    attempt of this batch that got in).
        let ids: Vec<String> = batch.iter().map(|m| doc_id(&m.from, &m.cid)).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut originals = self.existing(&id_refs).await?;

        // 2. Number the new ones, per room, in batch order.
        let mut rooms: Vec<&str> = batch.iter().map(|m| &*m.room).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut next = self.last_seqs(&rooms).await?;
        #[cfg(feature = "failpoints")]
        if crate::faults::eval("store.append.between").await.is_some() {
            return Err(StoreError::Unavailable("failpoint store.append.between".into()));
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut docs = Vec::new();
        for (m, id) in batch.iter().zip(ids) {
            if let Some(original) = originals.get(&id) {
                outcomes.push(Appended::Duplicate(original.clone()));
                continue;
            }
            let seq = next.get_mut(&*m.room).expect("every room's last seq was read above");
            *seq += 1;
            let msg = Msg {
                room: m.room.to_string(),
                seq: *seq,
                from: m.from.to_string(),
                body: m.body.clone(),
                cid: m.cid.clone(),
                ts: m.ts_ms,
            };
            docs.push(MessageDoc {
                id: id.clone(),
                room: msg.room.clone(),
                seq: msg.seq as i64,
                from: msg.from.clone(),
                cid: msg.cid.clone(),
                body: msg.body.clone(),
                ts: msg.ts as i64,
            });
            originals.insert(id, msg.clone()); // a repeat later in the batch is its duplicate
            outcomes.push(Appended::Stored(msg));
        }

        // 3. One ordered insert: what gets in is a prefix.
        if !docs.is_empty() {
            self.messages
                .insert_many(&docs)
                .ordered(true)
                .write_concern(self.write_concern.clone())
                .await
                .map_err(|e| unavailable("insert_many", e))?;
        }
        let mut cache = self.last_seq.lock();
        for (room, last) in next {
            cache.put(room, last);
        }
        Ok(outcomes)
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
        Ok(docs.into_iter().map(Msg::from).collect())
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
        Ok((docs.into_iter().map(Msg::from).collect(), more))
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        let doc = UserDoc {
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            created_ms: user.created_ms as i64,
        };
        match self.users.insert_one(doc).write_concern(self.write_concern.clone()).await {
            Ok(_) => Ok(true),
            Err(e) => match &*e.kind {
                mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we))
                    if we.code == DUPLICATE_KEY =>
                {
                    Ok(false)
                }
                _ => Err(unavailable("creating a user", e)),
            },
        }
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let user =
            self.users.find_one(doc! { "username": username }).await.map_err(|e| unavailable("reading a user", e))?;
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
}
