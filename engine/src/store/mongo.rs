//! The MongoDB store: what high-traffic deployments run on.
//!
//! One shared `Client`; collections `users`, `messages`, `rooms`; indexes
//! created at start (idempotently): unique `users.username`, unique
//! `messages.(room, seq)` (which also serves history and replay reads, by
//! range, sorted), unique `messages.(from, cid)`.
//!
//! `append_batch` keeps the `Store` contract with standard driver calls
//! only. Fast path, taken by every batch without a retried cid: seqs from a
//! per-room cache of the last stored seq (this process is its rooms' only
//! writer) and one `insert_many` (ordered: false) acknowledged with the
//! configured write concern — no query before it, since a message's `_id`
//! is its (from, cid) key. If the insert reports duplicate keys, the
//! documents this attempt did insert are deleted (nothing of it was acked),
//! and the slow path runs: look the batch's ids up, answer the ones found
//! as `Duplicate`, number the rest from the database's last seq, insert.
//! Any other failure invalidates the cache of the rooms involved and fails
//! the batch; the writer retries it, and the retry finds whatever did get
//! in as `Duplicate` with its original seq.
//!
//! Why not always look up first: on FerretDB (the test server) a `find` by
//! many keys scans the collection, so a lookup per batch made throughput
//! fall with the history's size; on MongoDB it would be an index probe per
//! batch, cheap but still a round trip on every message's critical path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions, WriteConcern};
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
    /// `"majority"` or a number of nodes.
    pub w: String,
    /// Wait for the on-disk journal.
    pub journal: bool,
}

impl Default for MongoWriteConcern {
    fn default() -> Self {
        Self { w: "1".into(), journal: true }
    }
}

impl MongoWriteConcern {
    fn to_driver(&self) -> Result<WriteConcern, String> {
        let mut wc = if self.w == "majority" {
            WriteConcern::majority()
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

/// Rooms whose last seq is cached at most; past it the cache is cleared
/// (and refilled from the database on demand).
const SEQ_CACHE_MAX_ROOMS: usize = 100_000;
/// Ids per dedupe query (slow path only).
const DEDUPE_QUERY_MAX_IDS: usize = 1024;
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    users: Collection<UserDoc>,
    messages: Collection<MessageDoc>,
    rooms: Collection<Document>,
    write_concern: WriteConcern,
    last_seq: Arc<Mutex<HashMap<String, u64>>>,
}

enum Attempt {
    Done(Vec<Appended>),
    /// The insert hit duplicate keys; nothing of this attempt remains.
    Duplicates,
}

/// A message's `_id`: its (from, cid) key. Usernames have no `:`.
fn doc_id(from: &str, cid: &str) -> String {
    format!("{from}:{cid}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl MongoStore {
    /// Connects, checks the server answers, and creates the indexes.
    pub async fn connect(uri: &str, db_name: &str, write_concern: &MongoWriteConcern) -> anyhow::Result<Self> {
        let write_concern = write_concern.to_driver().map_err(|e| anyhow::anyhow!(e))?;
        let mut options =
            ClientOptions::parse(uri).await.map_err(|e| anyhow::anyhow!("parsing the MongoDB URI: {e}"))?;
        // Fail fast while the database is away, so the writer's own retry
        // (with backoff) is what paces attempts, and /readyz answers quickly.
        options.server_selection_timeout.get_or_insert(Duration::from_secs(2));
        options.connect_timeout.get_or_insert(Duration::from_secs(2));
        options.app_name.get_or_insert_with(|| "viche".to_string());
        let client = Client::with_options(options).map_err(|e| anyhow::anyhow!("creating the MongoDB client: {e}"))?;
        let db = client.database(db_name);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| anyhow::anyhow!("MongoDB at {uri} does not answer: {e}"))?;
        let store = Self {
            users: db.collection("users"),
            messages: db.collection("messages"),
            rooms: db.collection("rooms"),
            db,
            write_concern,
            last_seq: Arc::new(Mutex::new(HashMap::new())),
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

    /// The originals already stored under these ids.
    async fn existing(&self, ids: &[String]) -> StoreResult<HashMap<String, Msg>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(DEDUPE_QUERY_MAX_IDS) {
            let docs: Vec<MessageDoc> = self
                .messages
                .find(doc! { "_id": { "$in": chunk } })
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

    /// One attempt: numbers the batch (`originals` are answered as
    /// duplicates) and inserts it. On duplicate keys, removes what this
    /// attempt inserted and says so.
    async fn try_append(&self, batch: &[NewMessage], mut originals: HashMap<String, Msg>) -> StoreResult<Attempt> {
        // Last seq of every room that gets a new message, from the cache or the database.
        let mut next: HashMap<&str, u64> = HashMap::new();
        for m in batch {
            if next.contains_key(&*m.room) {
                continue;
            }
            let cached = self.last_seq.lock().get(&*m.room).copied();
            let last = match cached {
                Some(last) => last,
                None => {
                    let last = self.stored_last_seq(&m.room).await?;
                    let _ = self
                        .rooms
                        .update_one(doc! { "_id": &*m.room }, doc! { "$setOnInsert": { "created_ms": m.ts_ms as i64 } })
                        .upsert(true)
                        .await;
                    last
                }
            };
            next.insert(&m.room, last);
        }

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut docs = Vec::new();
        for m in batch {
            let id = doc_id(&m.from, &m.cid);
            if let Some(original) = originals.get(&id) {
                outcomes.push(Appended::Duplicate(original.clone()));
                continue;
            }
            let seq = next.get_mut(&*m.room).expect("every room was looked up above");
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
            originals.insert(id, msg.clone());
            outcomes.push(Appended::Stored(msg));
        }

        if !docs.is_empty() {
            if let Err(e) =
                self.messages.insert_many(&docs).ordered(false).write_concern(self.write_concern.clone()).await
            {
                self.forget_rooms(batch.iter().map(|m| &*m.room));
                let failed: Option<HashSet<usize>> = match &*e.kind {
                    mongodb::error::ErrorKind::InsertMany(ime) if ime.write_concern_error.is_none() => ime
                        .write_errors
                        .as_ref()
                        .filter(|we| !we.is_empty() && we.iter().all(|w| w.code == DUPLICATE_KEY))
                        .map(|we| we.iter().map(|w| w.index).collect()),
                    _ => None,
                };
                let Some(failed) = failed else {
                    return Err(unavailable("insert_many", e));
                };
                // Only duplicate keys: undo this attempt (nothing of it was
                // acknowledged), so the slow path starts from a clean slate.
                let inserted: Vec<&str> =
                    docs.iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, d)| d.id.as_str()).collect();
                if !inserted.is_empty() {
                    self.messages
                        .delete_many(doc! { "_id": { "$in": inserted } })
                        .write_concern(self.write_concern.clone())
                        .await
                        .map_err(|e| unavailable("undoing a batch with duplicate keys", e))?;
                }
                return Ok(Attempt::Duplicates);
            }
        }

        let mut cache = self.last_seq.lock();
        if cache.len() + next.len() > SEQ_CACHE_MAX_ROOMS {
            cache.clear();
        }
        for (room, last) in next {
            cache.insert(room.to_string(), last);
        }
        Ok(Attempt::Done(outcomes))
    }

    fn forget_rooms<'a>(&self, rooms: impl Iterator<Item = &'a str>) {
        let mut cache = self.last_seq.lock();
        for room in rooms {
            cache.remove(room);
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.try_append(batch, HashMap::new()).await? {
            Attempt::Done(outcomes) => Ok(outcomes),
            Attempt::Duplicates => {
                // Some cids were stored before: the slow path, which asks first.
                let ids: Vec<String> = batch.iter().map(|m| doc_id(&m.from, &m.cid)).collect();
                let originals = self.existing(&ids).await?;
                self.forget_rooms(batch.iter().map(|m| &*m.room));
                match self.try_append(batch, originals).await? {
                    Attempt::Done(outcomes) => Ok(outcomes),
                    Attempt::Duplicates => Err(StoreError::Unavailable(
                        "insert_many: duplicate keys again after the lookup (another writer?)".into(),
                    )),
                }
            }
        }
    }

    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        self.stored_last_seq(room).await
    }

    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        if after >= upto || limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<MessageDoc> = self
            .messages
            .find(doc! { "room": room, "seq": { "$gt": after as i64, "$lte": upto.min(i64::MAX as u64) as i64 } })
            .sort(doc! { "seq": 1 })
            .limit(limit as i64)
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
            .limit(limit as i64 + 1)
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
