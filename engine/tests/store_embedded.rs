//! The embedded (redb) store against the `Store` contract, on a real file.

use std::sync::Arc;

use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::{Appended, NewMessage, Store, UserRecord};
use viche_protocol::Msg;

fn new_msg(room: &str, from: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage {
        room: Arc::from(room),
        from: Arc::from(from),
        cid: cid.to_owned(),
        body: body.to_owned(),
        ts_ms: 1_700_000_000_000,
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
async fn fill(store: &EmbeddedStore, room: &str, prefix: &str, n: u64) {
    let batch: Vec<_> = (1..=n).map(|i| new_msg(room, "alice", &format!("{prefix}{i}"), &format!("m{i}"))).collect();
    let out = store.append_batch(&batch).await.expect("append");
    assert_eq!(out.len(), batch.len());
}

fn seqs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
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
async fn seqs_are_consecutive_per_room_and_independent_across_rooms() {
    let (_dir, store) = open_temp();
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

#[tokio::test]
async fn empty_batch_is_a_no_op() {
    let (_dir, store) = open_temp();
    assert!(store.append_batch(&[]).await.unwrap().is_empty());
    assert_eq!(store.last_seq("a").await.unwrap(), 0);
}

#[tokio::test]
async fn duplicate_cid_within_one_batch_returns_the_first() {
    let (_dir, store) = open_temp();
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

#[tokio::test]
async fn duplicate_cid_across_batches_returns_original_and_stores_nothing() {
    let (_dir, store) = open_temp();
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
async fn range_bounds_and_limit() {
    let (_dir, store) = open_temp();
    assert!(store.range("a", 0, u64::MAX, 10).await.unwrap().is_empty(), "empty room");
    fill(&store, "a", "c", 10).await;
    fill(&store, "a.b", "d", 3).await; // a neighbouring room must not leak in

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

#[tokio::test]
async fn history_pages_newest_first_with_more() {
    let (_dir, store) = open_temp();
    let (page, more) = store.history("a", None, 50).await.unwrap();
    assert!(page.is_empty() && !more, "empty room gives an empty page");
    let (page, more) = store.history("a", Some(5), 50).await.unwrap();
    assert!(page.is_empty() && !more);

    fill(&store, "a", "c", 5).await;
    fill(&store, "a.b", "d", 3).await; // a neighbouring room must not leak in

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

#[tokio::test]
async fn create_user_conflict_changes_nothing() {
    let (_dir, store) = open_temp();
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

#[tokio::test]
async fn check_ready_succeeds_repeatedly() {
    let (_dir, store) = open_temp();
    store.check_ready().await.expect("ready");
    store.check_ready().await.expect("ready again");
    // Clones share the database.
    store.clone().check_ready().await.expect("ready through a clone");
}

#[tokio::test]
async fn second_open_of_the_same_file_is_refused_while_open() {
    let (dir, _store) = open_temp();
    assert!(EmbeddedStore::open(dir.path()).is_err());
}
