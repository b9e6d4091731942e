//! The `Store` contract (engine/src/store/mod.rs), written once against the
//! trait and run on both stores:
//!
//! * `embedded::*`: the embedded store (redb) in a fresh temporary
//!   directory, always;
//! * `mongo::*`: [`MongoStore`] on the MongoDB at `VICHE_TEST_MONGO_URI`
//!   (scripts/test.sh starts FerretDB and sets it), each test on a database
//!   of its own. Without the variable these print that they were skipped and
//!   pass, except under CI (`CI` set), where they fail.
//!
//! Each contract test is an `async fn(&dyn Store)`; [`contract_tests!`]
//! makes one `#[tokio::test]` per store of each. What only the embedded
//! store has (a file to reopen, lock or create) is in `store_embedded.rs`.
//!
//! Known bugs of the MongoDB store are marked `#[mongo_known_bug = ...]` in
//! the list at the end: that store's test is ignored, with the reason, until
//! it is fixed (`cargo test -- --ignored` runs it).

use std::sync::Arc;

use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::mongo::{MongoStore, MongoWriteConcern};
use viche_engine::store::{Appended, NewMessage, Store, UserRecord};
use viche_protocol::Msg;

// ----- helpers ----------------------------------------------------------------

const TS: u64 = 1_700_000_000_000;

fn new_msg(room: &str, from: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage { room: Arc::from(room), from: Arc::from(from), cid: cid.to_owned(), body: body.to_owned(), ts_ms: TS }
}

fn stored(outcome: &Appended) -> &Msg {
    match outcome {
        Appended::Stored(m) => m,
        Appended::Duplicate(m) => panic!("expected Stored, got Duplicate({m:?})"),
    }
}

fn duplicate(outcome: &Appended) -> &Msg {
    match outcome {
        Appended::Duplicate(m) => m,
        Appended::Stored(m) => panic!("expected Duplicate, got Stored({m:?})"),
    }
}

/// Appends `n` messages to `room`, one batch, cids `{prefix}{i}`.
async fn fill(store: &dyn Store, room: &str, prefix: &str, n: u64) {
    let batch: Vec<_> = (1..=n).map(|i| new_msg(room, "alice", &format!("{prefix}{i}"), &format!("m{i}"))).collect();
    let out = store.append_batch(&batch).await.expect("append");
    assert_eq!(out.len(), batch.len());
}

fn seqs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

// ----- the contract -------------------------------------------------------------

async fn seqs_are_consecutive_per_room_and_independent_across_rooms(store: &dyn Store) {
    let out = store
        .append_batch(&[
            new_msg("a", "alice", "c1", "a1"),
            new_msg("b", "alice", "c2", "b1"),
            new_msg("a", "bob", "c1", "a2"),
            new_msg("a", "alice", "c3", "a3"),
        ])
        .await
        .unwrap();
    let got: Vec<_> = out.iter().map(|o| (stored(o).room.clone(), stored(o).seq)).collect();
    assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2), ("a".into(), 3)]);
    let first = stored(&out[0]);
    assert_eq!(
        (first.from.as_str(), first.cid.as_str(), first.body.as_str(), first.ts),
        ("alice", "c1", "a1", 1_700_000_000_000)
    );

    // A second batch continues where the first left off.
    let out = store.append_batch(&[new_msg("b", "bob", "x", "b2"), new_msg("a", "bob", "y", "a4")]).await.unwrap();
    assert_eq!(stored(&out[0]).seq, 2);
    assert_eq!(stored(&out[1]).seq, 4);

    assert_eq!(store.last_seq("a").await.unwrap(), 4);
    assert_eq!(store.last_seq("b").await.unwrap(), 2);
    assert_eq!(store.last_seq("never-used").await.unwrap(), 0);

    let a = store.range("a", 0, u64::MAX, 100).await.unwrap();
    assert_eq!(seqs(&a), vec![1, 2, 3, 4]);
    assert_eq!(a.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), vec!["a1", "a2", "a3", "a4"]);
}

async fn empty_batch_is_a_no_op(store: &dyn Store) {
    assert!(store.append_batch(&[]).await.unwrap().is_empty());
    assert_eq!(store.last_seq("a").await.unwrap(), 0);
}

async fn duplicate_cid_within_one_batch_returns_the_first(store: &dyn Store) {
    let out = store
        .append_batch(&[
            new_msg("a", "alice", "same", "first"),
            new_msg("a", "bob", "same", "bob's own cid space"),
            new_msg("a", "alice", "same", "retry"),
            new_msg("b", "alice", "same", "retry in another room"),
            new_msg("a", "alice", "other", "next"),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    let original = stored(&out[0]).clone();
    assert_eq!(original.seq, 1);
    assert_eq!(stored(&out[1]).seq, 2);
    assert_eq!(duplicate(&out[2]), &original);
    assert_eq!(duplicate(&out[3]), &original);
    assert_eq!(stored(&out[4]).seq, 3, "a duplicate consumes no seq");

    assert_eq!(store.last_seq("a").await.unwrap(), 3);
    assert_eq!(store.last_seq("b").await.unwrap(), 0, "nothing stored for the duplicate");
    assert!(store.range("b", 0, u64::MAX, 10).await.unwrap().is_empty());
}

async fn duplicate_cid_across_batches_returns_original_and_stores_nothing(store: &dyn Store) {
    store.append_batch(&[new_msg("a", "alice", "c0", "zero")]).await.unwrap();
    let out = store.append_batch(&[new_msg("a", "alice", "c1", "hello")]).await.unwrap();
    let original = stored(&out[0]).clone();
    assert_eq!(original.seq, 2);

    let out = store
        .append_batch(&[new_msg("a", "alice", "c1", "hello again"), new_msg("a", "alice", "c2", "new")])
        .await
        .unwrap();
    assert_eq!(duplicate(&out[0]), &original);
    assert_eq!(duplicate(&out[0]).body, "hello", "the original body, not the retry's");
    assert_eq!(stored(&out[1]).seq, 3);

    let all = store.range("a", 0, u64::MAX, 100).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3]);
}

async fn range_bounds_and_limit(store: &dyn Store) {
    assert!(store.range("a", 0, u64::MAX, 10).await.unwrap().is_empty(), "empty room");
    fill(store, "a", "c", 10).await;
    fill(store, "a.b", "d", 3).await; // a neighbouring room must not leak in

    assert_eq!(seqs(&store.range("a", 0, 10, 100).await.unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&store.range("a", 3, 6, 100).await.unwrap()), vec![4, 5, 6]);
    assert_eq!(seqs(&store.range("a", 3, 6, 2).await.unwrap()), vec![4, 5], "oldest first");
    assert_eq!(seqs(&store.range("a", 9, 10, 100).await.unwrap()), vec![10]);
    assert!(store.range("a", 10, 100, 100).await.unwrap().is_empty(), "nothing after the last");
    assert!(store.range("a", 5, 5, 100).await.unwrap().is_empty(), "after == upto");
    assert!(store.range("a", 6, 5, 100).await.unwrap().is_empty(), "after > upto");
    assert!(store.range("a", 0, 10, 0).await.unwrap().is_empty(), "limit 0");
    assert!(store.range("a", u64::MAX, u64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(seqs(&store.range("a.b", 0, u64::MAX, 100).await.unwrap()), vec![1, 2, 3]);
}

async fn history_pages_newest_first_with_more(store: &dyn Store) {
    let (page, more) = store.history("a", None, 50).await.unwrap();
    assert!(page.is_empty() && !more, "empty room gives an empty page");
    let (page, more) = store.history("a", Some(5), 50).await.unwrap();
    assert!(page.is_empty() && !more);

    fill(store, "a", "c", 5).await;
    fill(store, "a.b", "d", 3).await; // a neighbouring room must not leak in

    let (page, more) = store.history("a", None, 50).await.unwrap();
    assert_eq!(seqs(&page), vec![5, 4, 3, 2, 1]);
    assert!(!more);

    // limit exactly the number of messages: no more.
    let (page, more) = store.history("a", None, 5).await.unwrap();
    assert_eq!(seqs(&page), vec![5, 4, 3, 2, 1]);
    assert!(!more);

    // Paging back two at a time.
    let (page, more) = store.history("a", None, 2).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![5, 4], true));
    let (page, more) = store.history("a", Some(4), 2).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![3, 2], true));
    let (page, more) = store.history("a", Some(2), 2).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![1], false));

    // limit exactly what remains below `before`.
    let (page, more) = store.history("a", Some(3), 2).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![2, 1], false));

    // before=1 and before=0: nothing is older.
    let (page, more) = store.history("a", Some(1), 50).await.unwrap();
    assert!(page.is_empty() && !more);
    let (page, more) = store.history("a", Some(0), 50).await.unwrap();
    assert!(page.is_empty() && !more);

    // before past the newest behaves as None.
    let (page, more) = store.history("a", Some(1_000), 3).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![5, 4, 3], true));

    // limit 0: an empty page that still says whether messages remain.
    let (page, more) = store.history("a", None, 0).await.unwrap();
    assert!(page.is_empty() && more);

    let (page, _) = store.history("a.b", None, 50).await.unwrap();
    assert_eq!(seqs(&page), vec![3, 2, 1]);
    assert!(page.iter().all(|m| m.room == "a.b"));
}

async fn create_user_conflict_changes_nothing(store: &dyn Store) {
    assert_eq!(store.get_user("alice").await.unwrap(), None);
    let alice = UserRecord { username: "alice".into(), password_hash: "$argon2id$first".into(), created_ms: 1 };
    assert!(store.create_user(&alice).await.unwrap());
    let impostor = UserRecord { username: "alice".into(), password_hash: "$argon2id$second".into(), created_ms: 2 };
    assert!(!store.create_user(&impostor).await.unwrap());
    assert_eq!(store.get_user("alice").await.unwrap(), Some(alice));

    // Usernames are case-sensitive.
    let upper = UserRecord { username: "Alice".into(), password_hash: "$argon2id$third".into(), created_ms: 3 };
    assert!(store.create_user(&upper).await.unwrap());
    assert_eq!(store.get_user("Alice").await.unwrap(), Some(upper));
}

async fn check_ready_succeeds_repeatedly(store: &dyn Store) {
    store.check_ready().await.expect("ready");
    store.check_ready().await.expect("ready again");
}

// ----- the stores -----------------------------------------------------------------

/// The embedded store in a fresh temporary directory (removed on drop).
fn embedded_store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    (dir, store)
}

/// The MongoDB URI, or `None` to skip (never under CI).
fn mongo_or_skip(test: &str) -> Option<String> {
    match std::env::var("VICHE_TEST_MONGO_URI").ok().filter(|u| !u.is_empty()) {
        Some(uri) => Some(uri),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: VICHE_TEST_MONGO_URI is not set under CI; run scripts/test.sh")
        }
        None => {
            eprintln!("{test}: skipped, VICHE_TEST_MONGO_URI is not set (scripts/test.sh starts FerretDB and sets it)");
            None
        }
    }
}

/// A database name no other test uses.
fn unique_db_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("store_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos)
}

/// A [`MongoStore`] on a fresh database of its own.
struct MongoDb {
    store: MongoStore,
    uri: String,
    name: String,
}

impl MongoDb {
    /// `None` when the test is skipped (see [`mongo_or_skip`]).
    async fn open(test: &str) -> Option<MongoDb> {
        let uri = mongo_or_skip(&format!("mongo::{test}"))?;
        let name = unique_db_name();
        let store = MongoStore::connect(&uri, &name, &MongoWriteConcern::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to MongoDB at {uri}: {e:#}"));
        Some(MongoDb { store, uri, name })
    }

    /// Drops the database (after a passing test; a failing one leaves it
    /// for inspection).
    async fn drop_database(self) {
        let client = mongodb::Client::with_uri_str(&self.uri).await.expect("connecting to MongoDB");
        client.database(&self.name).drop().await.expect("dropping the test database");
    }
}

/// One `#[tokio::test]` per store for each contract test named:
/// `embedded::NAME` and `mongo::NAME`. A name preceded by
/// `#[mongo_known_bug = "why"]` makes `mongo::NAME` `#[ignore = "why"]`
/// (it still runs with `cargo test -- --ignored`); the embedded one runs.
macro_rules! contract_tests {
    ($($(#[mongo_known_bug = $bug:literal])? $name:ident),+ $(,)?) => {
        /// The contract on the embedded store.
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = super::embedded_store();
                    super::$name(&store).await;
                }
            )+
        }

        /// The contract on MongoDB (`VICHE_TEST_MONGO_URI`).
        mod mongo {
            $(
                #[tokio::test]
                $(#[ignore = $bug])?
                async fn $name() {
                    let Some(db) = super::MongoDb::open(stringify!($name)).await else { return };
                    super::$name(&db.store).await;
                    db.drop_database().await;
                }
            )+
        }
    };
}

contract_tests!(
    seqs_are_consecutive_per_room_and_independent_across_rooms,
    empty_batch_is_a_no_op,
    duplicate_cid_within_one_batch_returns_the_first,
    duplicate_cid_across_batches_returns_original_and_stores_nothing,
    range_bounds_and_limit,
    history_pages_newest_first_with_more,
    create_user_conflict_changes_nothing,
    check_ready_succeeds_repeatedly,
);
