//! What only the embedded (redb) store has, on a real file: the directory
//! and file it creates, reopening (persistence), the lock against a second
//! open, clones sharing the open database. The `Store` contract itself is
//! tested on this store and on MongoDB in `store_contract.rs`.

use std::sync::Arc;

use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::{Appended, Event, NewMessage, Store, UserRecord};
use viche_protocol::Msg;

fn new_msg(room: &str, from: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage {
        room: Arc::from(room),
        from: Arc::from(from),
        cid: cid.to_owned(),
        body: body.to_owned(),
        ts_ms: 1_700_000_000_000,
        event: Event::Message { reply_to: None },
        fence: None,
    }
}

fn open_temp() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    (dir, store)
}

fn stored(outcome: &Appended) -> &Msg {
    match outcome {
        Appended::Stored(m) => m,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn duplicate(outcome: &Appended) -> &Msg {
    match outcome {
        Appended::Duplicate(m) => m,
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

#[tokio::test]
async fn open_creates_missing_dir_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let store = EmbeddedStore::open(&nested).expect("open");
    assert!(nested.join("viche.redb").is_file());
    assert_eq!(store.last_seq("lobby").await.unwrap(), 0);
}

#[tokio::test]
async fn reopen_keeps_messages_last_seq_dedupe_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let original = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let out = store
            .append_batch(&[new_msg("a", "alice", "c1", "one"), new_msg("a", "alice", "c2", "two")])
            .await
            .unwrap();
        let user = UserRecord { username: "alice".into(), password_hash: "$argon2id$stub".into(), created_ms: 42 };
        assert!(store.create_user(&user).await.unwrap());
        stored(&out[0]).clone()
    }; // the store (the only handle on the database) is dropped here

    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(store.last_seq("a").await.unwrap(), 2);
    let out = store
        .append_batch(&[new_msg("a", "alice", "c1", "retried after restart"), new_msg("a", "bob", "c1", "new")])
        .await
        .unwrap();
    assert_eq!(duplicate(&out[0]), &original);
    assert_eq!(stored(&out[1]).seq, 3, "seqs continue after reopen, never reused");
    assert_eq!(store.get_user("alice").await.unwrap().unwrap().created_ms, 42);
}

#[tokio::test]
async fn clones_share_the_database() {
    let (_dir, store) = open_temp();
    let clone = store.clone();
    clone.check_ready().await.expect("ready through a clone");
    let out = clone.append_batch(&[new_msg("a", "alice", "c1", "one")]).await.unwrap();
    let original = stored(&out[0]).clone();
    assert_eq!(store.last_seq("a").await.unwrap(), 1, "written through the clone, read through the original");
    let out = store.append_batch(&[new_msg("a", "alice", "c1", "retried")]).await.unwrap();
    assert_eq!(duplicate(&out[0]), &original, "one dedupe index for both handles");
}

#[tokio::test]
async fn second_open_of_the_same_file_is_refused_while_open() {
    let (dir, _store) = open_temp();
    assert!(EmbeddedStore::open(dir.path()).is_err());
}

/// A database written before protocol 1.1 (messages as tuples, no
/// conversations) opens with every message readable and every stored DM
/// in both its users' conversations.
#[tokio::test]
async fn a_database_from_before_1_1_is_migrated_at_open() {
    use redb::{Database, TableDefinition};
    const OLD: TableDefinition<'static, (&str, u64), (&str, &str, &str, u64)> = TableDefinition::new("messages");
    const LAST: TableDefinition<'static, &str, u64> = TableDefinition::new("room_last_seq");
    const CIDS: TableDefinition<'static, (&str, &str), (&str, u64)> = TableDefinition::new("cids");
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join("viche.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut old = txn.open_table(OLD).unwrap();
            let mut last = txn.open_table(LAST).unwrap();
            let mut cids = txn.open_table(CIDS).unwrap();
            old.insert(("lobby", 1), ("alice", "c1", "hello", 10)).unwrap();
            old.insert(("dm:alice:bob", 1), ("alice", "c2", "psst", 20)).unwrap();
            last.insert("lobby", 1).unwrap();
            last.insert("dm:alice:bob", 1).unwrap();
            cids.insert(("alice", "c1"), ("lobby", 1)).unwrap();
            cids.insert(("alice", "c2"), ("dm:alice:bob", 1)).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).expect("the old database opens");
    let lobby = store.range("lobby", 0, 10, 10).await.unwrap();
    assert_eq!((lobby.len(), lobby[0].body.as_str(), lobby[0].ts), (1, "hello", 10));
    let (bob, _) = store.conversations("bob", None, 10).await.unwrap();
    assert_eq!((bob.len(), bob[0].room.as_str(), bob[0].unread), (1, "dm:alice:bob", 1));
    // A retry of an old cid is still a duplicate, and new messages follow.
    let out =
        store.append_batch(&[new_msg("lobby", "alice", "c1", "hello"), new_msg("lobby", "bob", "n", "new")]).await;
    let out = out.unwrap();
    assert_eq!(duplicate(&out[0]).seq, 1);
    assert_eq!(stored(&out[1]).seq, 2);
    drop(store);
    // Opening again migrates nothing twice.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.range("lobby", 0, 10, 10).await.unwrap().len(), 2);
}

/// A backup is one snapshot: everything committed before it, copied into
/// a new file a server opens as its store; the live store goes on.
#[tokio::test]
async fn a_backup_is_a_consistent_copy_that_opens_as_a_store() {
    use std::sync::atomic::AtomicBool;
    use viche_engine::store::Trim;

    let (_dir, store) = open_temp();
    store
        .create_user(&UserRecord { username: "alice".into(), password_hash: "h".into(), created_ms: 1 })
        .await
        .unwrap();
    let batch: Vec<_> = (0..25_000).map(|i| new_msg(&format!("r{}", i % 7), "alice", &format!("c{i}"), "b")).collect();
    store.append_batch(&batch).await.unwrap();
    store.trim_room("r0", Trim { seq_upto: 100, ts_before: None }, 1000).await.unwrap();

    let backups = tempfile::tempdir().unwrap();
    let target = backups.path().join("copy");
    std::fs::create_dir(&target).unwrap();
    let report = store.backup(&target, Arc::new(AtomicBool::new(false))).await.unwrap();
    assert!(report.rows > 25_000 && report.bytes > 0, "{report:?}");
    // The live store takes writes after the snapshot; the copy does not have them.
    store.append_batch(&[new_msg("r1", "alice", "after", "later")]).await.unwrap();

    let copy = EmbeddedStore::open(&target).expect("the backup opens as a store");
    for room in (0..7).map(|i| format!("r{i}")) {
        let live = store.last_seq(&room).await.unwrap();
        let copied = copy.last_seq(&room).await.unwrap();
        assert_eq!(copied, if room == "r1" { live - 1 } else { live }, "{room}");
        assert_eq!(copy.horizon(&room).await.unwrap(), store.horizon(&room).await.unwrap());
        let (a, _) = copy.history(&room, Some(copied + 1), 100).await.unwrap();
        let (b, _) = store.history(&room, Some(copied + 1), 100).await.unwrap();
        assert_eq!(a, b, "{room}: the same history up to the backup point");
    }
    assert!(copy.get_user("alice").await.unwrap().is_some());
    let next = copy.append_batch(&[new_msg("r1", "alice", "restored", "x")]).await.unwrap();
    assert_eq!(stored(&next[0]).seq, store.last_seq("r1").await.unwrap(), "the copy's next seq continues");
    assert_eq!(duplicate(&copy.append_batch(&[new_msg("r2", "alice", "c2", "x")]).await.unwrap()[0]).seq, 1);

    // The backup refuses to overwrite a file, and stops when cancelled.
    let again = store.backup(&target, Arc::new(AtomicBool::new(false))).await;
    assert!(again.is_err(), "an existing backup file is never overwritten");
    let other = backups.path().join("cancelled");
    std::fs::create_dir(&other).unwrap();
    assert!(store.backup(&other, Arc::new(AtomicBool::new(true))).await.is_err());
    assert!(store.stats().await.unwrap().bytes > 0);
}
