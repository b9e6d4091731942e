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
//! it is fixed (`cargo test -- --ignored` runs it). Today: `range` and
//! `history` with bounds or limits past i64::MAX, which the server never
//! asks for (limits are at most 100; a replay's `after` is at most the
//! room's last seq).

use std::collections::BTreeMap;
use std::sync::Arc;

use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::mongo::{MongoStore, MongoWriteConcern};
use viche_engine::store::{Added, Appended, Event, Marker, NewMessage, Store, Trim, UserRecord};
use viche_protocol::{ErrorCode, Msg, MsgKind};

// ----- helpers ----------------------------------------------------------------

const TS: u64 = 1_700_000_000_000;

fn new_msg(room: &str, from: &str, cid: &str, body: &str) -> NewMessage {
    NewMessage {
        room: Arc::from(room),
        from: Arc::from(from),
        cid: cid.to_owned(),
        body: body.to_owned(),
        ts_ms: TS,
        event: Event::Message { reply_to: None },
        fence: None,
    }
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

/// Appends `n` messages to `room`, one batch, cids `{prefix}{i}`.
async fn fill(store: &dyn Store, room: &str, prefix: &str, n: u64) {
    let batch: Vec<_> = (1..=n).map(|i| new_msg(room, "alice", &format!("{prefix}{i}"), &format!("m{i}"))).collect();
    let out = store.append_batch(&batch).await.expect("append");
    assert_eq!(out.len(), batch.len());
}

fn seqs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// Every stored message of `room`, oldest first.
async fn all(store: &dyn Store, room: &str) -> Vec<Msg> {
    store.range(room, 0, u64::MAX, 1_000_000).await.expect("range")
}

/// Asserts `room` holds exactly seqs 1..=n (no gap, no duplicate cid) and
/// that `last_seq` says n.
async fn assert_dense(store: &dyn Store, room: &str, n: u64) {
    let msgs = all(store, room).await;
    assert_eq!(seqs(&msgs), (1..=n).collect::<Vec<_>>(), "room {room}: seqs 1..={n}, no gap");
    let mut cids: Vec<(&str, &str)> = msgs.iter().map(|m| (m.from.as_str(), m.cid.as_str())).collect();
    cids.sort_unstable();
    cids.dedup();
    assert_eq!(cids.len(), msgs.len(), "room {room}: each (from, cid) stored once");
    assert!(msgs.iter().all(|m| m.room == room), "room {room}: only its own messages");
    assert_eq!(store.last_seq(room).await.unwrap(), n, "room {room}: last_seq");
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

/// A batch of retries only: every one is its original, nothing is stored,
/// and the next new message takes the next seq.
async fn batch_of_retries_only_stores_nothing(store: &dyn Store) {
    let out =
        store.append_batch(&[new_msg("a", "alice", "c1", "one"), new_msg("b", "bob", "c1", "b one")]).await.unwrap();
    let originals: Vec<Msg> = out.iter().map(|o| stored(o).clone()).collect();

    let out = store
        .append_batch(&[
            new_msg("b", "bob", "c1", "b one, retried"),
            new_msg("a", "alice", "c1", "one, retried"),
            new_msg("a", "alice", "c1", "one, retried twice"),
        ])
        .await
        .unwrap();
    assert_eq!(duplicate(&out[0]), &originals[1]);
    assert_eq!(duplicate(&out[1]), &originals[0]);
    assert_eq!(duplicate(&out[2]), &originals[0]);
    assert_dense(store, "a", 1).await;
    assert_dense(store, "b", 1).await;

    let out = store.append_batch(&[new_msg("a", "alice", "c2", "two")]).await.unwrap();
    assert_eq!(stored(&out[0]).seq, 2);
    assert_dense(store, "a", 2).await;
}

/// New messages and retried ones, mixed in one batch over several rooms:
/// each retry is its original and takes no seq, so every room's seqs stay
/// dense, in this batch and in the next ones.
async fn mixed_batch_of_new_and_retried_messages_leaves_no_gap(store: &dyn Store) {
    // Already stored: a 1..=3, b 1..=2; c and d have nothing.
    let out = store
        .append_batch(&[
            new_msg("a", "alice", "a1", "a one"),
            new_msg("b", "bob", "b1", "b one"),
            new_msg("a", "bob", "a2", "a two"),
            new_msg("a", "alice", "a3", "a three"),
            new_msg("b", "alice", "b2", "b two"),
        ])
        .await
        .unwrap();
    let original: BTreeMap<(String, String), Msg> =
        out.iter().map(stored).map(|m| ((m.from.clone(), m.cid.clone()), m.clone())).collect();
    let orig = |from: &str, cid: &str| original[&(from.to_string(), cid.to_string())].clone();

    // Retries first, last, between new messages of their own room, in
    // another room than their original's, and one repeated; new messages
    // in rooms with and without history.
    let out = store
        .append_batch(&[
            new_msg("a", "alice", "a1", "a one, retried"), // 0: dup of a/1
            new_msg("a", "carol", "n1", "new in a"),       // 1: a/4
            new_msg("b", "bob", "b1", "b one, retried"),   // 2: dup of b/1
            new_msg("c", "carol", "n2", "new in c"),       // 3: c/1
            new_msg("a", "bob", "a2", "a two, retried"),   // 4: dup of a/2
            new_msg("a", "carol", "n3", "new in a"),       // 5: a/5
            new_msg("c", "alice", "a3", "a three, in c"),  // 6: dup of a/3 (another room)
            new_msg("d", "bob", "b1", "b one, in d"),      // 7: dup of b/1 (a room with nothing)
            new_msg("b", "carol", "n4", "new in b"),       // 8: b/3
            new_msg("c", "carol", "n5", "new in c"),       // 9: c/2
            new_msg("a", "carol", "n1", "repeat of 1"),    // 10: dup of 1, in-batch
            new_msg("b", "alice", "b2", "b two, retried"), // 11: dup of b/2
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 12);
    assert_eq!(duplicate(&out[0]), &orig("alice", "a1"));
    assert_eq!((stored(&out[1]).room.as_str(), stored(&out[1]).seq), ("a", 4));
    assert_eq!(duplicate(&out[2]), &orig("bob", "b1"));
    assert_eq!((stored(&out[3]).room.as_str(), stored(&out[3]).seq), ("c", 1));
    assert_eq!(duplicate(&out[4]), &orig("bob", "a2"));
    assert_eq!((stored(&out[5]).room.as_str(), stored(&out[5]).seq), ("a", 5));
    assert_eq!(duplicate(&out[6]), &orig("alice", "a3"));
    assert_eq!(duplicate(&out[7]), &orig("bob", "b1"));
    assert_eq!((stored(&out[8]).room.as_str(), stored(&out[8]).seq), ("b", 3));
    assert_eq!((stored(&out[9]).room.as_str(), stored(&out[9]).seq), ("c", 2));
    assert_eq!(duplicate(&out[10]), stored(&out[1]));
    assert_eq!(duplicate(&out[11]), &orig("alice", "b2"));
    assert_dense(store, "a", 5).await;
    assert_dense(store, "b", 3).await;
    assert_dense(store, "c", 2).await;
    assert_dense(store, "d", 0).await;
    let a = all(store, "a").await;
    assert_eq!(
        a.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["a one", "a two", "a three", "new in a", "new in a"],
        "the originals' bodies stay, the new ones follow in input order"
    );

    // The next batches keep numbering from there, with and without retries.
    let out = store.append_batch(&[new_msg("a", "dave", "x1", "x"), new_msg("d", "dave", "x2", "x")]).await.unwrap();
    assert_eq!((stored(&out[0]).seq, stored(&out[1]).seq), (6, 1));
    let out = store
        .append_batch(&[
            new_msg("c", "dave", "x3", "x"),
            new_msg("a", "dave", "x1", "x, retried"),
            new_msg("c", "dave", "x4", "x"),
        ])
        .await
        .unwrap();
    assert_eq!((stored(&out[0]).seq, duplicate(&out[1]).seq, stored(&out[2]).seq), (3, 6, 4));
    assert_dense(store, "a", 6).await;
    assert_dense(store, "b", 3).await;
    assert_dense(store, "c", 4).await;
    assert_dense(store, "d", 1).await;
}

/// What the writer does after a failed commit: the whole batch again, here
/// with new messages queued meanwhile, and larger than one lookup of the
/// MongoDB store (1024 ids).
async fn retried_large_batch_with_new_messages_keeps_seqs_dense(store: &dyn Store) {
    let rooms = ["r0", "r1", "r2"];
    let first: Vec<NewMessage> =
        (0..1500).map(|i| new_msg(rooms[i % 3], "alice", &format!("c{i}"), &format!("body {i}"))).collect();
    let out = store.append_batch(&first).await.unwrap();
    let originals: Vec<Msg> = out.iter().map(|o| stored(o).clone()).collect();
    for room in rooms {
        assert_dense(store, room, 500).await;
    }

    let mut again = first.clone();
    for (i, m) in again.iter_mut().enumerate() {
        m.body = format!("body {i}, retried");
    }
    // New messages between the retries, in every room.
    for i in 0..90 {
        again.insert(i * 16, new_msg(rooms[i % 3], "bob", &format!("n{i}"), &format!("new {i}")));
    }
    let out = store.append_batch(&again).await.unwrap();
    assert_eq!(out.len(), 1590);
    let mut next: BTreeMap<&str, u64> = rooms.iter().map(|r| (*r, 500)).collect();
    let mut dups = 0;
    for (m, o) in again.iter().zip(&out) {
        if &*m.from == "bob" {
            let seq = next.get_mut(&*m.room).unwrap();
            *seq += 1;
            let s = stored(o);
            assert_eq!((s.room.as_str(), s.seq, s.cid.as_str()), (&*m.room, *seq, m.cid.as_str()));
        } else {
            let i: usize = m.cid[1..].parse().unwrap();
            assert_eq!(duplicate(o), &originals[i], "retry of {}", m.cid);
            dups += 1;
        }
    }
    assert_eq!(dups, 1500);
    for room in rooms {
        assert_dense(store, room, 530).await;
    }
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

/// `limit` is "at most", whatever its size: a huge one returns the whole
/// range.
async fn range_with_a_huge_limit_returns_everything(store: &dyn Store) {
    fill(store, "a", "c", 5).await;
    for limit in [usize::MAX, usize::MAX - 1, 1 << 63, i64::MAX as usize] {
        assert_eq!(seqs(&store.range("a", 0, u64::MAX, limit).await.unwrap()), vec![1, 2, 3, 4, 5], "limit {limit}");
        assert_eq!(seqs(&store.range("a", 2, 4, limit).await.unwrap()), vec![3, 4], "limit {limit}");
    }
}

/// `after < seq <= upto` for any u64 bounds: no message is after 2^63.
async fn range_after_past_i64_max_returns_nothing(store: &dyn Store) {
    fill(store, "a", "c", 5).await;
    assert!(store.range("a", 1 << 63, u64::MAX, 10).await.unwrap().is_empty(), "after = 2^63");
    assert!(store.range("a", u64::MAX - 1, u64::MAX, 10).await.unwrap().is_empty(), "after = 2^64 - 2");
}

/// `upto` and `before` past i64::MAX bound nothing: every message is below.
async fn range_upto_and_history_before_past_i64_max_bound_nothing(store: &dyn Store) {
    fill(store, "a", "c", 5).await;
    assert_eq!(seqs(&store.range("a", 3, 1 << 63, 10).await.unwrap()), vec![4, 5], "upto = 2^63");
    assert_eq!(seqs(&store.range("a", 3, u64::MAX, 10).await.unwrap()), vec![4, 5], "upto = 2^64 - 1");
    for before in [1 << 63, u64::MAX] {
        let (page, more) = store.history("a", Some(before), 3).await.unwrap();
        assert_eq!((seqs(&page), more), (vec![5, 4, 3], true), "before {before}");
        let (page, more) = store.history("a", Some(before), 50).await.unwrap();
        assert_eq!((seqs(&page), more), (vec![5, 4, 3, 2, 1], false), "before {before}");
    }
}

/// `limit` is "at most", whatever its size: a huge one returns the whole
/// history, and nothing more remains.
async fn history_with_a_huge_limit_returns_everything(store: &dyn Store) {
    fill(store, "a", "c", 5).await;
    for limit in [usize::MAX, usize::MAX - 1, 1 << 63, i64::MAX as usize] {
        for before in [None, Some(u64::MAX)] {
            let (page, more) = store.history("a", before, limit).await.unwrap();
            assert_eq!((seqs(&page), more), (vec![5, 4, 3, 2, 1], false), "before {before:?}, limit {limit}");
        }
    }
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

/// History returns whole messages, the same ones `range` and the append
/// outcomes give.
async fn history_and_range_return_the_stored_messages(store: &dyn Store) {
    let out = store
        .append_batch(&[
            NewMessage { ts_ms: 1, ..new_msg("a", "alice", "c1", "one") },
            NewMessage { ts_ms: 2, ..new_msg("a", "bob", "c1", "two: ünïcødé ✓") },
        ])
        .await
        .unwrap();
    let appended: Vec<Msg> = out.iter().map(|o| stored(o).clone()).collect();
    assert_eq!(
        appended[1],
        Msg {
            room: "a".into(),
            seq: 2,
            from: "bob".into(),
            body: "two: ünïcødé ✓".into(),
            cid: "c1".into(),
            ts: 2,
            ..Msg::default()
        }
    );
    assert_eq!(store.range("a", 0, 2, 10).await.unwrap(), appended);
    let (mut page, more) = store.history("a", None, 10).await.unwrap();
    page.reverse();
    assert_eq!((page, more), (appended, false));
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

async fn get_user_finds_exactly_the_user_asked_for(store: &dyn Store) {
    let users: Vec<UserRecord> = ["alice", "bob", "alice2"]
        .iter()
        .enumerate()
        .map(|(i, name)| UserRecord {
            username: name.to_string(),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt{i}$hash{i}"),
            created_ms: TS + i as u64,
        })
        .collect();
    for user in &users {
        assert!(store.create_user(user).await.unwrap(), "{} is new", user.username);
    }
    for user in &users {
        assert_eq!(store.get_user(&user.username).await.unwrap().as_ref(), Some(user));
    }
    for missing in ["alic", "ALICE", "carol", ""] {
        assert_eq!(store.get_user(missing).await.unwrap(), None, "{missing:?} was never created");
    }
}

async fn check_ready_succeeds_repeatedly(store: &dyn Store) {
    store.check_ready().await.expect("ready");
    store.check_ready().await.expect("ready again");
}

// ----- protocol 1.1: events --------------------------------------------------------

fn event(room: &str, from: &str, cid: &str, body: &str, event: Event) -> NewMessage {
    NewMessage { event, ..new_msg(room, from, cid, body) }
}

fn refused(outcome: &Appended) -> ErrorCode {
    match outcome {
        Appended::Refused(code, _) => *code,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// The row at `seq` as history shows it.
async fn at(store: &dyn Store, room: &str, seq: u64) -> Msg {
    let got = store.range(room, seq - 1, seq, 1).await.unwrap();
    assert_eq!(got.len(), 1, "({room}, {seq}) is stored");
    got.into_iter().next().unwrap()
}

async fn one(store: &dyn Store, m: NewMessage) -> Appended {
    store.append_batch(&[m]).await.unwrap().remove(0)
}

async fn replies_need_an_ordinary_message_of_the_room(store: &dyn Store) {
    fill(store, "r", "m", 2).await;
    fill(store, "other", "o", 5).await;
    let reply = one(store, event("r", "bob", "re1", "yes", Event::Message { reply_to: Some(1) })).await;
    assert_eq!((stored(&reply).seq, stored(&reply).reply_to), (3, Some(1)));
    assert_eq!(at(store, "r", 3).await.reply_to, Some(1), "stored with its reply_to");
    // Not stored in this room (though it is in another), or an event: not_found.
    let missing = one(store, event("r", "bob", "re2", "?", Event::Message { reply_to: Some(5) })).await;
    assert_eq!(refused(&missing), ErrorCode::NotFound);
    one(store, event("r", "alice", "e1", "edited", Event::Edit { target: 1 })).await;
    let to_event = one(store, event("r", "bob", "re3", "?", Event::Message { reply_to: Some(4) })).await;
    assert_eq!(refused(&to_event), ErrorCode::NotFound);
    assert_dense(store, "r", 4).await;
}

async fn edits_change_the_target_and_only_its_author_may(store: &dyn Store) {
    fill(store, "r", "m", 1).await; // seq 1, by alice
    let by_bob = one(store, event("r", "bob", "e0", "mine now", Event::Edit { target: 1 })).await;
    assert_eq!(refused(&by_bob), ErrorCode::Forbidden);
    let missing = one(store, event("r", "alice", "e1", "x", Event::Edit { target: 9 })).await;
    assert_eq!(refused(&missing), ErrorCode::NotFound);
    let mut edit = event("r", "alice", "e2", "fixed", Event::Edit { target: 1 });
    edit.ts_ms = TS + 5;
    let out = one(store, edit.clone()).await;
    let ev = stored(&out);
    assert_eq!((ev.seq, ev.kind, ev.target, ev.body.as_str()), (2, Some(MsgKind::Edit), Some(1), "fixed"));
    let target = at(store, "r", 1).await;
    assert_eq!((target.body.as_str(), target.edited_ts, target.kind), ("fixed", Some(TS + 5), None));
    let (page, _) = store.history("r", None, 10).await.unwrap();
    assert_eq!(page[1].body, "fixed", "history shows the newest body");
    // Idempotent by cid: the retry answers the first seq and changes nothing.
    let mut retry = edit.clone();
    retry.body = "other".into();
    assert_eq!(duplicate(&one(store, retry).await).seq, 2);
    assert_eq!(at(store, "r", 1).await.body, "fixed");
    // An edit of an edit is not an edit of a message.
    let of_event = one(store, event("r", "alice", "e3", "y", Event::Edit { target: 2 })).await;
    assert_eq!(refused(&of_event), ErrorCode::NotFound);
    assert_dense(store, "r", 2).await;
}

async fn deletes_erase_the_body_and_every_edit(store: &dyn Store) {
    fill(store, "r", "m", 1).await;
    one(store, event("r", "alice", "e1", "secret v2", Event::Edit { target: 1 })).await;
    one(store, event("r", "bob", "x1", "", Event::React { target: 1, emoji: "👍".into(), on: true })).await;
    let by_bob = one(store, event("r", "bob", "d0", "", Event::Delete { target: 1 })).await;
    assert_eq!(refused(&by_bob), ErrorCode::Forbidden);
    let out = one(store, event("r", "alice", "d1", "", Event::Delete { target: 1 })).await;
    let ev = stored(&out);
    assert_eq!((ev.seq, ev.kind, ev.target, ev.body.as_str()), (4, Some(MsgKind::Delete), Some(1), ""));
    let target = at(store, "r", 1).await;
    assert_eq!((target.body.as_str(), target.deleted, target.reactions.clone()), ("", Some(true), None));
    assert_eq!(at(store, "r", 2).await.body, "", "the edit's body is erased too");
    for e in [Event::Edit { target: 1 }, Event::Delete { target: 1 }] {
        assert_eq!(refused(&one(store, event("r", "alice", "late", "z", e)).await), ErrorCode::NotFound);
    }
    let react = Event::React { target: 1, emoji: "🎉".into(), on: true };
    assert_eq!(refused(&one(store, event("r", "bob", "late2", "", react)).await), ErrorCode::NotFound);
    // Gone from every read: no row holds the old bodies.
    let bodies: Vec<String> = all(store, "r").await.into_iter().map(|m| m.body).collect();
    assert!(bodies.iter().all(|b| !b.contains("secret") && b != "m1"), "{bodies:?}");
}

/// A client that retries an event whose ack it lost meets the event's own
/// effect (the target deleted, the reaction already on): the answer is the
/// original ack, not a refusal, alone or in a batch with new messages.
async fn a_retried_event_answers_its_original_ack(store: &dyn Store) {
    fill(store, "r", "m", 2).await;
    let delete = one(store, event("r", "alice", "d1", "", Event::Delete { target: 1 })).await;
    let react = Event::React { target: 2, emoji: "👍".into(), on: true };
    let reaction = one(store, event("r", "bob", "x1", "", react.clone())).await;
    let out = store
        .append_batch(&[
            new_msg("r", "carol", "n1", "new"),
            event("r", "alice", "d1", "", Event::Delete { target: 1 }),
            event("r", "bob", "x1", "", react),
            new_msg("r", "carol", "n2", "newer"),
        ])
        .await
        .unwrap();
    assert_eq!(duplicate(&out[1]), stored(&delete));
    assert_eq!(duplicate(&out[2]), stored(&reaction));
    assert_eq!((stored(&out[0]).seq, stored(&out[3]).seq), (5, 6));
    assert_dense(store, "r", 6).await;
}

async fn reactions_toggle_and_a_repeat_answers_the_original(store: &dyn Store) {
    fill(store, "r", "m", 1).await;
    let react = |cid: &str, user: &str, emoji: &str, on: bool| {
        event("r", user, cid, "", Event::React { target: 1, emoji: emoji.into(), on })
    };
    let first = one(store, react("a", "bob", "👍", true)).await;
    assert_eq!((stored(&first).seq, stored(&first).kind, stored(&first).on), (2, Some(MsgKind::Reaction), Some(true)));
    one(store, react("b", "carol", "👍", true)).await;
    one(store, react("c", "bob", "🎉", true)).await;
    let reactions = at(store, "r", 1).await.reactions.unwrap();
    assert_eq!(reactions["👍"], vec!["bob".to_string(), "carol".to_string()]);
    assert_eq!(reactions["🎉"], vec!["bob".to_string()]);
    // The same state again, with a new cid: the original ack, nothing stored.
    let repeat = one(store, react("d", "bob", "👍", true)).await;
    assert_eq!((duplicate(&repeat).seq, duplicate(&repeat).cid.as_str()), (2, "a"));
    let off = one(store, react("e", "bob", "👍", false)).await;
    assert_eq!(stored(&off).seq, 5);
    assert_eq!(duplicate(&one(store, react("f", "bob", "👍", false)).await).seq, 5);
    assert_eq!(refused(&one(store, react("g", "bob", "🚀", false)).await), ErrorCode::NotFound);
    let reactions = at(store, "r", 1).await.reactions.unwrap();
    assert_eq!(reactions["👍"], vec!["carol".to_string()]);
    assert_dense(store, "r", 5).await;
}

async fn events_of_one_batch_see_each_other(store: &dyn Store) {
    let out = store
        .append_batch(&[
            new_msg("r", "alice", "m1", "first"),
            event("r", "alice", "e1", "second", Event::Edit { target: 1 }),
            event("r", "bob", "x1", "", Event::React { target: 1, emoji: "👍".into(), on: true }),
            event("r", "bob", "x2", "", Event::React { target: 1, emoji: "👍".into(), on: true }),
            event("r", "alice", "d1", "", Event::Delete { target: 1 }),
            event("r", "alice", "e2", "third", Event::Edit { target: 1 }),
        ])
        .await
        .unwrap();
    assert_eq!(stored(&out[1]).seq, 2);
    assert_eq!(duplicate(&out[3]).seq, 3, "a repeat of the batch's own reaction");
    assert_eq!(stored(&out[4]).seq, 4);
    assert_eq!(refused(&out[5]), ErrorCode::NotFound, "edited after its deletion");
    let target = at(store, "r", 1).await;
    assert_eq!((target.body.as_str(), target.deleted), ("", Some(true)));
    assert_dense(store, "r", 4).await;
}

// ----- protocol 1.1: conversations and read markers --------------------------------

async fn a_dm_is_a_conversation_of_both_users_from_its_first_message(store: &dyn Store) {
    let room = "dm:alice:bob";
    assert_eq!(store.conversations("bob", None, 100).await.unwrap(), (Vec::new(), false));
    let mut m = new_msg(room, "alice", "c1", "hi bob");
    m.ts_ms = TS + 10;
    one(store, m).await;
    let (bob, more) = store.conversations("bob", None, 100).await.unwrap();
    assert!(!more);
    assert_eq!(bob.len(), 1);
    let c = &bob[0];
    assert_eq!(
        (c.room.as_str(), c.kind.as_str(), c.peer.as_deref(), c.last_seq, c.last_ts, c.read_seq, c.unread),
        (room, "dm", Some("alice"), 1, TS + 10, 0, 1)
    );
    assert_eq!(c.last.as_ref().map(|m| m.body.as_str()), Some("hi bob"));
    // The sender has read what it sent.
    let (alice, _) = store.conversations("alice", None, 100).await.unwrap();
    assert_eq!((alice[0].peer.as_deref(), alice[0].read_seq, alice[0].unread), (Some("bob"), 1, 0));
    assert_eq!(store.conversations("carol", None, 100).await.unwrap().0, Vec::new());
}

async fn read_markers_only_move_forward_and_stop_at_the_last_seq(store: &dyn Store) {
    let room = "dm:alice:bob";
    let batch: Vec<_> = (1..=5).map(|i| new_msg(room, "alice", &format!("c{i}"), "m")).collect();
    store.append_batch(&batch).await.unwrap();
    assert_eq!(store.mark_read("bob", room, 3).await.unwrap(), Some(Marker { read_seq: 3, moved: true }));
    assert_eq!(store.mark_read("bob", room, 2).await.unwrap(), Some(Marker { read_seq: 3, moved: false }));
    assert_eq!(store.mark_read("bob", room, 99).await.unwrap(), Some(Marker { read_seq: 5, moved: true }));
    let (bob, _) = store.conversations("bob", None, 100).await.unwrap();
    assert_eq!((bob[0].read_seq, bob[0].unread), (5, 0));
    // Not a conversation: a public room never joined, a DM with no message.
    assert_eq!(store.mark_read("bob", "lobby", 1).await.unwrap(), None);
    assert_eq!(store.mark_read("bob", "dm:bob:carol", 1).await.unwrap(), None);
    // A new message is unread; the sender's own moves the sender's marker.
    one(store, new_msg(room, "bob", "b1", "back")).await;
    let (alice, _) = store.conversations("alice", None, 100).await.unwrap();
    assert_eq!((alice[0].last_seq, alice[0].read_seq, alice[0].unread), (6, 5, 1));
    let (bob, _) = store.conversations("bob", None, 100).await.unwrap();
    assert_eq!((bob[0].read_seq, bob[0].unread), (6, 0));
    assert_eq!(store.mark_read("bob", room, 4).await.unwrap(), Some(Marker { read_seq: 6, moved: false }));
}

async fn public_rooms_are_added_once_and_bounded(store: &dyn Store) {
    for room in ["a", "b", "c"] {
        assert_eq!(store.add_conversation("alice", room, 3).await.unwrap(), Added::Kept);
    }
    assert_eq!(store.add_conversation("alice", "a", 3).await.unwrap(), Added::Kept, "idempotent");
    assert_eq!(store.add_conversation("alice", "d", 3).await.unwrap(), Added::Full);
    // DMs are not counted.
    one(store, new_msg("dm:alice:bob", "bob", "c1", "hi")).await;
    assert_eq!(store.add_conversation("alice", "d", 3).await.unwrap(), Added::Full);
    let (list, _) = store.conversations("alice", None, 100).await.unwrap();
    let mut rooms: Vec<&str> = list.iter().map(|c| c.room.as_str()).collect();
    rooms.sort_unstable();
    assert_eq!(rooms, vec!["a", "b", "c", "dm:alice:bob"]);
    let empty = list.iter().find(|c| c.room == "a").unwrap();
    assert_eq!(
        (empty.kind.as_str(), empty.peer.as_deref(), empty.last_seq, empty.last.clone()),
        ("room", None, 0, None)
    );
    // Another user's list is their own.
    assert_eq!(store.add_conversation("bob", "d", 3).await.unwrap(), Added::Kept);
    // Forgetting one makes room.
    assert!(store.forget_conversation("alice", "b").await.unwrap());
    assert!(!store.forget_conversation("alice", "b").await.unwrap(), "already gone");
    assert_eq!(store.mark_read("alice", "b", 1).await.unwrap(), None);
    assert_eq!(store.add_conversation("alice", "d", 3).await.unwrap(), Added::Kept);
}

async fn a_forgotten_dm_comes_back_with_its_next_message(store: &dyn Store) {
    let room = "dm:alice:bob";
    store.append_batch(&[new_msg(room, "alice", "c1", "one"), new_msg(room, "alice", "c2", "two")]).await.unwrap();
    assert!(store.forget_conversation("bob", room).await.unwrap());
    assert_eq!(store.conversations("bob", None, 100).await.unwrap().0, Vec::new());
    assert_eq!(store.mark_read("bob", room, 2).await.unwrap(), None, "no longer a conversation");
    assert!(!store.forget_conversation("bob", room).await.unwrap());
    assert_eq!(store.conversations("alice", None, 100).await.unwrap().0.len(), 1, "alice still has it");
    one(store, new_msg(room, "alice", "c3", "three")).await;
    let (bob, _) = store.conversations("bob", None, 100).await.unwrap();
    assert_eq!((bob.len(), bob[0].last_seq, bob[0].unread), (1, 3, 1), "back, with only the new message unread");
}

async fn conversations_page_newest_activity_first(store: &dyn Store) {
    // Five DMs of alice's, activity at TS+1 .. TS+5; and a public room.
    for (i, peer) in ["bob", "carol", "dave", "erin", "fred"].iter().enumerate() {
        let room = viche_protocol::validate::dm_room("alice", peer).unwrap();
        let mut m = new_msg(&room, peer, "c", "hi");
        m.ts_ms = TS + 1 + i as u64;
        one(store, m).await;
    }
    store.add_conversation("alice", "quiet", 10).await.unwrap();
    let (first, more) = store.conversations("alice", None, 2).await.unwrap();
    let peers = |page: &[viche_protocol::Conversation]| -> Vec<String> {
        page.iter().map(|c| c.peer.clone().unwrap_or_else(|| c.room.clone())).collect()
    };
    assert_eq!((peers(&first), more), (vec!["fred".to_string(), "erin".to_string()], true));
    let (second, more) = store.conversations("alice", Some(first[1].last_ts), 2).await.unwrap();
    assert_eq!((peers(&second), more), (vec!["dave".to_string(), "carol".to_string()], true));
    let (third, more) = store.conversations("alice", Some(second[1].last_ts), 2).await.unwrap();
    assert_eq!((peers(&third), more), (vec!["bob".to_string(), "quiet".to_string()], false));
    let unread: u64 = store.conversations("alice", None, 200).await.unwrap().0.iter().map(|c| c.unread).sum();
    assert_eq!(unread, 5);
}

// ----- operating for months: retention, deleting a user, counts ----------------------

/// The seqs stored in `room`, oldest first.
async fn stored_seqs(store: &dyn Store, room: &str) -> Vec<u64> {
    seqs(&all(store, room).await)
}

async fn retention_by_count_removes_the_oldest_in_bounded_batches(store: &dyn Store) {
    fill(store, "a", "m", 10).await;
    let trim = Trim { seq_upto: 6, ts_before: None };
    let first = store.trim_room("a", trim, 4).await.unwrap();
    assert_eq!((first.removed, first.horizon, first.done), (4, 4, false), "{first:?}");
    let second = store.trim_room("a", trim, 4).await.unwrap();
    assert_eq!((second.removed, second.horizon, second.done, second.first_ts), (2, 6, true, Some(TS)));
    assert_eq!(store.trim_room("a", trim, 4).await.unwrap().removed, 0, "nothing more to remove");
    assert_eq!(stored_seqs(store, "a").await, vec![7, 8, 9, 10], "dense above the horizon");
    assert_eq!((store.horizon("a").await.unwrap(), store.last_seq("a").await.unwrap()), (6, 10));
    let (page, more) = store.history("a", None, 100).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![10, 9, 8, 7], false), "history ends at the horizon");
    let (page, more) = store.history("a", Some(8), 1).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![7], false));
    assert_eq!(store.history("a", Some(7), 10).await.unwrap(), (Vec::new(), false));
    let next = one(store, new_msg("a", "alice", "next", "after")).await;
    assert_eq!(stored(&next).seq, 11, "seqs are never reused");
    assert_eq!(store.horizon("never-used").await.unwrap(), 0);
}

async fn retention_by_age_stops_at_the_first_newer_message(store: &dyn Store) {
    let at_ts = |cid: &str, ts: u64| NewMessage { ts_ms: ts, ..new_msg("a", "alice", cid, cid) };
    let batch = [at_ts("o1", 1_000), at_ts("o2", 1_000), at_ts("n1", 5_000), at_ts("o3", 1_000), at_ts("n2", 6_000)];
    store.append_batch(&batch).await.unwrap();
    let trimmed = store.trim_room("a", Trim { seq_upto: 0, ts_before: Some(2_000) }, 100).await.unwrap();
    assert_eq!((trimmed.removed, trimmed.horizon, trimmed.first_ts, trimmed.done), (2, 2, Some(5_000), true));
    assert_eq!(stored_seqs(store, "a").await, vec![3, 4, 5], "an older message above a newer one stays");
    // Either rule removes: here the count.
    let trimmed = store.trim_room("a", Trim { seq_upto: 3, ts_before: Some(2_000) }, 100).await.unwrap();
    assert_eq!((trimmed.removed, trimmed.horizon), (2, 4), "seq 3 by count, then seq 4 by age");
}

async fn a_room_emptied_by_retention_never_numbers_from_one_again(store: &dyn Store) {
    fill(store, "a", "m", 3).await;
    let trimmed = store.trim_room("a", Trim { seq_upto: 3, ts_before: None }, 100).await.unwrap();
    assert_eq!((trimmed.removed, trimmed.horizon, trimmed.first_ts), (3, 3, None));
    assert!(all(store, "a").await.is_empty());
    assert_eq!(store.last_seq("a").await.unwrap(), 3);
    assert_eq!(store.history("a", None, 10).await.unwrap(), (Vec::new(), false));
    let next = one(store, new_msg("a", "bob", "n", "again")).await;
    assert_eq!(stored(&next).seq, 4);
    assert_eq!(stored_seqs(store, "a").await, vec![4]);
}

async fn removing_a_message_erases_its_events_and_frees_its_cid(store: &dyn Store) {
    fill(store, "r", "m", 2).await; // 1, 2 by alice
    one(store, event("r", "bob", "x1", "", Event::React { target: 1, emoji: "👍".into(), on: true })).await; // 3
    one(store, event("r", "alice", "e1", "secret edit", Event::Edit { target: 1 })).await; // 4
    one(store, event("r", "bob", "x2", "", Event::React { target: 2, emoji: "🎉".into(), on: true })).await; // 5
    let trimmed = store.trim_room("r", Trim { seq_upto: 1, ts_before: None }, 100).await.unwrap();
    assert_eq!((trimmed.removed, trimmed.horizon), (1, 1));
    let rows = all(store, "r").await;
    assert_eq!(seqs(&rows), vec![2, 3, 4, 5], "seqs stay dense: the events are erased in place");
    for event in &rows[1..3] {
        assert_eq!((event.body.as_str(), event.deleted, event.emoji.clone()), ("", Some(true), None), "{event:?}");
    }
    assert_eq!(rows[3].emoji.as_deref(), Some("🎉"), "an event of a kept message stays");
    assert_eq!(at(store, "r", 2).await.reactions.unwrap()["🎉"], vec!["bob".to_string()]);
    // The removed message's cid is free again.
    let again = one(store, new_msg("r", "alice", "m1", "new")).await;
    assert_eq!(stored(&again).seq, 6);
}

async fn rooms_page_walks_every_room_with_its_span(store: &dyn Store) {
    for room in ["c", "a", "b"] {
        fill(store, room, room, 2).await;
    }
    store.trim_room("b", Trim { seq_upto: 1, ts_before: None }, 10).await.unwrap();
    let page = store.rooms_page(None, 2).await.unwrap();
    let names: Vec<&str> = page.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!((page[1].last_seq, page[1].horizon, page[1].first_ts), (2, 1, Some(TS)));
    let rest = store.rooms_page(Some("b"), 2).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.room.as_str()).collect::<Vec<_>>(), vec!["c"]);
    assert!(store.rooms_page(Some("c"), 2).await.unwrap().is_empty());
}

fn user(name: &str) -> UserRecord {
    UserRecord { username: name.into(), password_hash: "$argon2id$x".into(), created_ms: TS }
}

async fn deleting_a_user_erases_in_place_and_keeps_the_name_taken(store: &dyn Store) {
    for name in ["alice", "bob"] {
        assert!(store.create_user(&user(name)).await.unwrap());
    }
    fill(store, "r", "a", 3).await; // 1..=3 by alice
    one(store, new_msg("r", "bob", "b1", "bob's")).await; // 4
    one(store, event("r", "alice", "ax", "", Event::React { target: 4, emoji: "👍".into(), on: true })).await; // 5
    one(store, event("r", "bob", "bx", "", Event::React { target: 1, emoji: "🎉".into(), on: true })).await; // 6
    one(store, new_msg("dm:alice:bob", "alice", "d1", "psst")).await;
    assert_eq!(store.add_conversation("alice", "r", 10).await.unwrap(), Added::Kept);

    assert_eq!(store.delete_account("alice", TS).await.unwrap(), Some(false));
    assert_eq!(store.delete_account("alice", TS).await.unwrap(), Some(true), "deleted before");
    assert_eq!(store.delete_account("nobody", TS).await.unwrap(), None);
    assert_eq!(store.get_user("alice").await.unwrap(), None);
    assert!(!store.create_user(&user("alice")).await.unwrap(), "the name stays taken");
    assert!(store.conversations("alice", None, 100).await.unwrap().0.is_empty());
    assert_eq!(store.deleted_users_since(TS).await.unwrap(), vec!["alice".to_string()]);
    assert!(store.deleted_users_since(TS + 1).await.unwrap().is_empty());

    // In batches of 2, by cid.
    let (mut erased, mut after, mut calls) = (0, None::<String>, 0);
    loop {
        let batch = store.erase_user_messages("alice", after.as_deref(), 2).await.unwrap();
        erased += batch.erased;
        calls += 1;
        match batch.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(calls < 10);
    }
    assert_eq!(erased, 5, "three messages, a reaction and a DM");
    assert_eq!(store.erase_user_messages("alice", None, 100).await.unwrap().erased, 0, "erased once");
    let rows = all(store, "r").await;
    assert_eq!(seqs(&rows), (1..=6).collect::<Vec<_>>(), "no seq used or removed");
    for m in rows.iter().filter(|m| m.from == "alice") {
        assert_eq!((m.body.as_str(), m.deleted, m.reactions.clone()), ("", Some(true), None), "{m:?}");
    }
    assert_eq!(rows[3].body, "bob's");
    assert_eq!(rows[3].reactions, None, "alice's reaction left bob's message");
    assert_eq!(rows[5].emoji.as_deref(), Some("🎉"), "bob's own event stays");
    assert_eq!(at(store, "dm:alice:bob", 1).await.body, "");
    assert_eq!(store.get_user("bob").await.unwrap().map(|u| u.username), Some("bob".to_string()));
}

async fn stats_count_what_is_stored(store: &dyn Store) {
    for name in ["alice", "bob", "carol"] {
        store.create_user(&user(name)).await.unwrap();
    }
    fill(store, "a", "x", 4).await;
    fill(store, "b", "y", 2).await;
    store.delete_account("carol", TS).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.users, stats.rooms, stats.messages), (2, 2, 6), "{stats:?}");
    store.trim_room("a", Trim { seq_upto: 3, ts_before: None }, 10).await.unwrap();
    assert_eq!(store.stats().await.unwrap().messages, 3);
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
    batch_of_retries_only_stores_nothing,
    mixed_batch_of_new_and_retried_messages_leaves_no_gap,
    retried_large_batch_with_new_messages_keeps_seqs_dense,
    range_bounds_and_limit,
    range_with_a_huge_limit_returns_everything,
    range_after_past_i64_max_returns_nothing,
    range_upto_and_history_before_past_i64_max_bound_nothing,
    history_with_a_huge_limit_returns_everything,
    history_pages_newest_first_with_more,
    history_and_range_return_the_stored_messages,
    create_user_conflict_changes_nothing,
    get_user_finds_exactly_the_user_asked_for,
    check_ready_succeeds_repeatedly,
    replies_need_an_ordinary_message_of_the_room,
    edits_change_the_target_and_only_its_author_may,
    deletes_erase_the_body_and_every_edit,
    reactions_toggle_and_a_repeat_answers_the_original,
    a_retried_event_answers_its_original_ack,
    events_of_one_batch_see_each_other,
    a_dm_is_a_conversation_of_both_users_from_its_first_message,
    read_markers_only_move_forward_and_stop_at_the_last_seq,
    public_rooms_are_added_once_and_bounded,
    a_forgotten_dm_comes_back_with_its_next_message,
    conversations_page_newest_activity_first,
    retention_by_count_removes_the_oldest_in_bounded_batches,
    retention_by_age_stops_at_the_first_newer_message,
    a_room_emptied_by_retention_never_numbers_from_one_again,
    removing_a_message_erases_its_events_and_frees_its_cid,
    rooms_page_walks_every_room_with_its_span,
    deleting_a_user_erases_in_place_and_keeps_the_name_taken,
    stats_count_what_is_stored,
);
