//! docs/protocol.md, HTTP API and frames: history over WebSocket and HTTP, join with
//! `since` (replay then live, no gap, no duplicate), the replay cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use viche_client::{ClientError, Msg, ServerFrame};

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[tokio::test]
async fn ws_history_pages_newest_first() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("lobby", None).await.unwrap();
    let acks = send_n(&mut a, "lobby", 25, "m").await;
    assert_eq!(acks.last().unwrap().seq, 25);

    let p = a.history("lobby", None, Some(10)).await.unwrap();
    assert_eq!(seqs(&p.messages), (16..=25).rev().collect::<Vec<_>>());
    assert!(p.more);
    let p = a.history("lobby", Some(16), Some(10)).await.unwrap();
    assert_eq!(seqs(&p.messages), (6..=15).rev().collect::<Vec<_>>());
    assert!(p.more);
    let p = a.history("lobby", Some(6), Some(10)).await.unwrap();
    assert_eq!(seqs(&p.messages), (1..=5).rev().collect::<Vec<_>>());
    assert!(!p.more, "nothing older than seq 1");
    // Exactly the rest: more is false.
    let p = a.history("lobby", Some(11), Some(10)).await.unwrap();
    assert_eq!(seqs(&p.messages), (1..=10).rev().collect::<Vec<_>>());
    assert!(!p.more);
    // Default limit 50 takes all 25.
    let p = a.history("lobby", None, None).await.unwrap();
    assert_eq!(p.messages.len(), 25);
    assert!(!p.more);
    // Message contents are what was sent.
    let m = &p.messages[24];
    assert_eq!(
        (m.seq, m.from.as_str(), m.body.as_str(), m.cid.as_str(), m.room.as_str()),
        (1, "alice", "m body 0", "m-0", "lobby")
    );
    assert_eq!(m.ts, acks[0].ts);
    // before = 1 and before = 0: nothing older.
    for before in [0, 1] {
        let p = a.history("lobby", Some(before), None).await.unwrap();
        assert!(p.messages.is_empty() && !p.more, "before {before}: {p:?}");
    }
    // before past the newest: from the newest.
    let p = a.history("lobby", Some(1_000_000), Some(3)).await.unwrap();
    assert_eq!(seqs(&p.messages), vec![25, 24, 23]);
}

#[tokio::test]
async fn ws_history_limit_bounds_and_empty_rooms() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    a.join("lobby", None).await.unwrap();
    send_n(&mut a, "lobby", 3, "m").await;

    assert_eq!(code_of(a.history("lobby", None, Some(0)).await), "invalid");
    assert_eq!(code_of(a.history("lobby", None, Some(101)).await), "invalid");
    assert_eq!(code_of(a.history("lobby", None, Some(u64::MAX)).await), "invalid");
    assert_eq!(a.history("lobby", None, Some(1)).await.unwrap().messages.len(), 1);
    assert!(a.history("lobby", None, Some(1)).await.unwrap().more);
    assert_eq!(a.history("lobby", None, Some(100)).await.unwrap().messages.len(), 3);

    // A room with no messages (never joined by anyone) is an empty page.
    let p = a.history("empty-room", None, None).await.unwrap();
    assert!(p.messages.is_empty() && !p.more);
    // History of a public room does not need a join.
    let p = b.history("lobby", None, None).await.unwrap();
    assert_eq!(seqs(&p.messages), vec![3, 2, 1]);
    // The history reply carries the ref; an error reply too.
    b.send_frame(&viche_client::ClientFrame::History { req: 4242, room: "lobby".into(), before: None, limit: Some(0) })
        .await
        .unwrap();
    match next_frame(&mut b).await {
        ServerFrame::Error { req, code, .. } => assert_eq!((req, code.as_str()), (Some(4242), "invalid")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_history_matches_ws_history() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut a = server.connect(&token).await;
    a.join("lobby", None).await.unwrap();
    send_n(&mut a, "lobby", 12, "m").await;
    let http = server.http();

    for (before, limit) in [(None, None), (None, Some(5)), (Some(8), Some(5)), (Some(3), Some(5)), (Some(1), None)] {
        let ws = a.history("lobby", before, limit).await.unwrap();
        let h = http.history(&token, "lobby", before, limit).await.unwrap();
        assert_eq!(h, ws, "before {before:?} limit {limit:?}");
    }
    // The raw JSON: each message is a whole msg frame with its t.
    let raw = http.get_raw("/api/rooms/lobby/messages?limit=2", Some(&token)).await.unwrap();
    assert_eq!(raw.status, 200);
    let v = raw.json().unwrap();
    assert_eq!(v["messages"][0]["t"], "msg");
    assert_eq!(v["messages"][0]["seq"], 12);
    assert_eq!(v["more"], true);
    // Empty room.
    let empty = http.history(&token, "nothing-here", None, None).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.more);
    // The full history, paged.
    assert_eq!(seqs(&full_history_http(&server, &token, "lobby").await), range(1, 12));
}

#[tokio::test]
async fn http_history_errors() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let http = server.http();
    let path = "/api/rooms/lobby/messages";

    for bearer in [None, Some("garbage"), Some("")] {
        let r = http.get_raw(path, bearer).await.unwrap();
        assert_eq!(r.status, 401, "bearer {bearer:?}: {r:?}");
        assert_eq!(r.api_error().expect("error body").error, "unauthorized");
    }
    let expired = mint("alice", now_s() - 120);
    assert_eq!(http.get_raw(path, Some(&expired)).await.unwrap().status, 401);
    let forged = mint_with("some-other-secret-0123456789", "alice", now_s() + 3600);
    assert_eq!(http.get_raw(path, Some(&forged)).await.unwrap().status, 401);
    let none = mint_alg_none("alice", now_s() + 3600);
    assert_eq!(http.get_raw(path, Some(&none)).await.unwrap().status, 401);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, token.parse().unwrap()); // no "Bearer "
    assert_eq!(http.get_with_headers(path, headers).await.unwrap().status, 401);

    for query in ["limit=0", "limit=101", "limit=abc", "limit=-1", "before=abc", "before=-1", "limit=1.5"] {
        let r = http.get_raw(&format!("{path}?{query}"), Some(&token)).await.unwrap();
        assert_eq!(r.status, 400, "{query}: {r:?}");
        assert_eq!(r.api_error().expect("error body").error, "invalid", "{query}");
    }
    for ok in ["limit=1", "limit=100", "before=1", "before=5&limit=3"] {
        let r = http.get_raw(&format!("{path}?{ok}"), Some(&token)).await.unwrap();
        assert_eq!(r.status, 200, "{ok}: {r:?}");
    }
    let long = "r".repeat(65);
    for room in [long.as_str(), "has space", "dm:bob:alice"] {
        let err = http.history(&token, room, None, None).await.unwrap_err();
        assert_eq!(err.status(), Some(400), "room {room:?}: {err}");
    }
    assert_eq!(http.history(&token, &"r".repeat(64), None, None).await.unwrap().messages.len(), 0);
    // Someone else's DM room.
    server.register("bob").await;
    server.register("carol").await;
    let err = http.history(&token, "dm:bob:carol", None, None).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    // One's own DM room, even empty, is fine.
    assert!(http.history(&token, "dm:alice:bob", None, None).await.unwrap().messages.is_empty());
}

#[tokio::test]
async fn join_since_replays_exactly_the_missed_messages_then_live() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let token_b = server.user("bob").await;
    a.join("lobby", None).await.unwrap();

    // Bob reads up to seq 4, then disconnects.
    let mut b = server.connect(&token_b).await;
    b.join("lobby", None).await.unwrap();
    send_n(&mut a, "lobby", 4, "x").await;
    let seen = b.recv_msgs(4, T).await.unwrap();
    let last_seen = seen.last().unwrap().seq;
    assert_eq!(last_seen, 4);
    b.close().await.unwrap();

    // Bob misses 6 messages.
    send_n(&mut a, "lobby", 6, "y").await;

    let mut b = server.connect(&token_b).await;
    let ok = b.join("lobby", Some(last_seen)).await.unwrap();
    assert_eq!(ok.seq, 10);
    assert!(!ok.more);
    let replay = b.recv_msgs(6, T).await.unwrap();
    assert_eq!(seqs(&replay), range(5, 10), "oldest first, exactly the missed ones");
    assert_eq!(replay[0].body, "y body 0");
    // Then live, no gap, no duplicate.
    a.send("lobby", "live", "z1").await.unwrap();
    let live = b.recv_msg(T).await.unwrap();
    assert_eq!((live.seq, live.body.as_str()), (11, "live"));
    assert_none(&mut b, "a duplicate", |f| matches!(f, ServerFrame::Msg(_))).await;

    // since = the latest seq: nothing to replay.
    let mut c = server.connect(&token_b).await;
    let ok = c.join("lobby", Some(11)).await.unwrap();
    assert_eq!(ok.seq, 11);
    assert_none(&mut c, "a replay when nothing was missed", |f| matches!(f, ServerFrame::Msg(_))).await;
    // since = 0: everything.
    let mut d = server.connect(&token_b).await;
    d.join("lobby", Some(0)).await.unwrap();
    assert_eq!(seqs(&d.recv_msgs(11, T).await.unwrap()), range(1, 11));
    assert_none(&mut d, "more than the room holds", |f| matches!(f, ServerFrame::Msg(_))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_has_no_gap_or_duplicate_under_concurrent_sends() {
    let server = Server::start().await;
    let token_a = server.user("alice").await;
    let token_b = server.user("bob").await;
    let mut a = server.connect(&token_a).await;
    a.join("busy", None).await.unwrap();
    send_n(&mut a, "busy", 10, "pre").await;

    // A sender keeps sending while bob joins with since.
    let acked = Arc::new(AtomicU64::new(10));
    let acked2 = acked.clone();
    let total = 70u64;
    let sender = tokio::spawn(async move {
        for i in 0..(total - 10) {
            let ack = send_retrying(&mut a, "busy", &format!("during {i}"), &format!("d{i}")).await;
            acked2.store(ack.seq, Ordering::SeqCst);
        }
        a
    });
    while acked.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut joins = Vec::new();
    for since in [3u64, 10, 0] {
        let mut b = server.connect(&token_b).await;
        let ok = b.join("busy", Some(since)).await.unwrap();
        assert!(ok.seq >= 20, "joined mid-traffic");
        joins.push((since, b));
    }
    let _a = sender.await.unwrap();
    for (since, mut b) in joins {
        let msgs = b.recv_msgs((total - since) as usize, Duration::from_secs(60)).await.unwrap();
        assert_eq!(seqs(&msgs), range(since + 1, total), "since {since}: replay then live, no gap, no duplicate");
        assert_none(&mut b, "an extra msg", |f| matches!(f, ServerFrame::Msg(_))).await;
    }
}

/// Sends `n` messages to `room` from `sessions` sessions of one user, in parallel.
async fn fill_room(server: &Server, token: &str, room: &str, n: usize, sessions: usize) {
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let mut conn = server.connect(token).await;
        conn.join(room, None).await.unwrap();
        let count = n / sessions + usize::from(s < n % sessions);
        let room = room.to_string();
        tasks.push(tokio::spawn(async move {
            send_n(&mut conn, &room, count, &format!("f{s}")).await;
            conn.close().await.ok();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_capped_at_the_newest_1000_with_more() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let total = 1010u64;
    fill_room(&server, &token, "big", total as usize, 10).await;

    let check = |msgs: &[Msg], from: u64| {
        assert_eq!(seqs(msgs), range(from, total));
    };
    // Missed 1010: the newest 1000 are replayed, more = true.
    let mut b = server.session("bob").await;
    let ok = b.join("big", Some(0)).await.unwrap();
    assert_eq!(ok.seq, total);
    assert!(ok.more, "older missed messages remain");
    check(&b.recv_msgs(1000, Duration::from_secs(120)).await.unwrap(), 11);
    assert_none(&mut b, "more than 1000 replayed", |f| matches!(f, ServerFrame::Msg(_))).await;
    // The rest pages in with history.
    let p = b.history("big", Some(11), Some(100)).await.unwrap();
    assert_eq!(seqs(&p.messages), (1..=10).rev().collect::<Vec<_>>());
    assert!(!p.more);

    // Missed exactly 1000: all replayed, more = false.
    let mut c = server.connect(&server.user("carol").await).await;
    let ok = c.join("big", Some(10)).await.unwrap();
    assert!(!ok.more);
    check(&c.recv_msgs(1000, Duration::from_secs(120)).await.unwrap(), 11);
    // Missed 1001: more = true.
    let mut d = server.connect(&server.user("dave").await).await;
    let ok = d.join("big", Some(9)).await.unwrap();
    assert!(ok.more);
    check(&d.recv_msgs(1000, Duration::from_secs(120)).await.unwrap(), 11);
}

#[tokio::test]
async fn history_holds_exactly_what_was_seen() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut a = server.connect(&token).await;
    let mut watcher = server.session("bob").await;
    a.join("r", None).await.unwrap();
    watcher.join("r", None).await.unwrap();
    send_n(&mut a, "r", 30, "h").await;
    let seen = watcher.recv_msgs(30, T).await.unwrap();
    let stored = full_history_http(&server, &token, "r").await;
    assert_eq!(seen, stored);
    let err = watcher.history("r", None, Some(0)).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { .. }));
}
