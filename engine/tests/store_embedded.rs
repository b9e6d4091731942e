//! What only the embedded (redb) store has, on a real file: the directory
//! and file it creates, reopening (persistence), the lock against a second
//! open, clones sharing the open database. The `Store` contract itself is
//! tested on this store and on MongoDB in `store_contract.rs`.

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
