//! docs/protocol.md "Ordering and durability": an acknowledged message is never
//! lost, seqs never reused, across a kill -9 and across a graceful stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use viche_client::{ClientError, ClientFrame, Connection, ErrorCode, Event, Msg, ServerFrame};

#[derive(Default)]
struct Log {
    /// (room, cid) → acked seq.
    acked: HashMap<(String, String), u64>,
    /// (room, cid) sent but not acked when the connection died.
    in_flight: Vec<(String, String)>,
}

/// Sends to `room` until the connection dies; acked and in-flight sends
/// are logged. Backs off on `rate_limited`.
async fn keep_sending(mut conn: Connection, room: String, tag: String, log: Arc<Mutex<Log>>) {
    for i in 0.. {
        let cid = format!("{tag}-{i}");
        let body = format!("{tag} body {i}");
        loop {
            match conn.send(&room, &body, &cid).await {
                Ok(ack) => {
                    assert_eq!(ack.cid, cid);
                    log.lock().unwrap().acked.insert((room.clone(), cid.clone()), ack.seq);
                    break;
                }
                Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {
                    log.lock().unwrap().in_flight.push((room.clone(), cid.clone()));
                    return;
                }
            }
        }
    }
}

/// Records every msg until the connection dies.
async fn watch(mut conn: Connection, seen: Arc<Mutex<Vec<Msg>>>) {
    loop {
        match conn.next_frame(Duration::from_secs(120)).await {
            Ok(Event::Frame(ServerFrame::Msg(m))) => seen.lock().unwrap().push(m),
            Ok(Event::Frame(_)) => {}
            Ok(Event::Closed(_)) | Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_traffic_loses_no_acked_message() {
    let mut server = Server::start().await;
    let token_a = server.user("alice").await;
    let token_w = server.user("watcher").await;
    let rooms = ["crash1", "crash2"];

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut watcher = server.connect(&token_w).await;
    for room in rooms {
        watcher.join(room, None).await.unwrap();
    }
    let watcher_task = tokio::spawn(watch(watcher, seen.clone()));

    let log = Arc::new(Mutex::new(Log::default()));
    let mut senders = Vec::new();
    for (i, room) in rooms.iter().chain(rooms.iter()).enumerate() {
        let mut conn = server.connect(&token_a).await;
        conn.join(room, None).await.unwrap();
        senders.push(tokio::spawn(keep_sending(conn, room.to_string(), format!("s{i}"), log.clone())));
    }
    // Let traffic flow, then kill -9 while sends are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while log.lock().unwrap().acked.len() < 80 {
        assert!(tokio::time::Instant::now() < deadline, "traffic did not flow");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    for s in senders {
        tokio::time::timeout(Duration::from_secs(60), s).await.expect("senders stop").unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), watcher_task).await.expect("watcher stops").unwrap();
    let (acked, in_flight) = {
        let log = log.lock().unwrap();
        (log.acked.clone(), log.in_flight.clone())
    };
    let seen = seen.lock().unwrap().clone();
    assert!(acked.len() >= 80);

    server.restart().await;
    let mut next_seq = BTreeMap::new();
    for room in rooms {
        let stored = full_history_http(&server, &token_w, room).await;
        let n = stored.len() as u64;
        assert_eq!(seqs(&stored), (1..=n).collect::<Vec<_>>(), "{room}: seqs 1..={n} without gap");
        let by_cid: HashMap<&str, &Msg> = stored.iter().map(|m| (m.cid.as_str(), m)).collect();
        assert_eq!(by_cid.len(), stored.len(), "{room}: each cid stored once");
        for ((r, cid), seq) in acked.iter().filter(|((r, _), _)| r == room) {
            let m = by_cid.get(cid.as_str()).unwrap_or_else(|| panic!("acked {r}/{cid} (seq {seq}) lost in the crash"));
            assert_eq!(m.seq, *seq, "{r}/{cid} keeps its seq");
            assert_eq!(m.from, "alice");
            assert!(m.body.ends_with(&format!("body {}", cid.rsplit('-').next().unwrap())), "{m:?}");
        }
        for m in seen.iter().filter(|m| m.room == room) {
            assert_eq!(stored.get(m.seq as usize - 1), Some(m), "a message someone saw is in the history");
        }
        next_seq.insert(room, n + 1);
    }

    // After the restart: acked cids are still deduplicated, in-flight ones
    // are stored at most once, and new messages take the next seq.
    let mut a = server.connect(&token_a).await;
    for room in rooms {
        a.join(room, None).await.unwrap();
    }
    for ((room, cid), seq) in acked.iter().take(10) {
        let idx = cid.rsplit('-').next().unwrap();
        let tag = cid.rsplit_once('-').unwrap().0;
        let ack = send_retrying(&mut a, room, &format!("{tag} body {idx}"), cid).await;
        assert_eq!(ack.seq, *seq, "a retried acked cid gets its original seq after a restart");
    }
    for (room, cid) in &in_flight {
        let idx = cid.rsplit('-').next().unwrap();
        let tag = cid.rsplit_once('-').unwrap().0;
        let ack = send_retrying(&mut a, room, &format!("{tag} body {idx}"), cid).await;
        let next = next_seq.get_mut(room.as_str()).unwrap();
        if ack.seq == *next {
            *next += 1; // it had not been stored: now it is, as the next message
        } else {
            assert!(ack.seq < *next, "an in-flight cid stored before the crash keeps its seq");
        }
    }
    for room in rooms {
        let ack = send_retrying(&mut a, room, "after the crash", &format!("after-{room}")).await;
        assert_eq!(ack.seq, next_seq[room], "{room}: the next seq follows the last stored one");
        let stored = full_history_http(&server, &token_w, room).await;
        assert_eq!(seqs(&stored), (1..=ack.seq).collect::<Vec<_>>());
        let cids: HashSet<&str> = stored.iter().map(|m| m.cid.as_str()).collect();
        assert_eq!(cids.len(), stored.len(), "no cid stored twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_crashes_keep_seqs_monotonic() {
    let mut server = Server::start().await;
    let token = server.user("alice").await;
    let mut expected = 0u64;
    for round in 0..3 {
        let mut a = server.connect(&token).await;
        let ok = a.join("r", None).await.unwrap();
        assert_eq!(ok.seq, expected, "round {round}: the room's seq survived the crash");
        for ack in send_n(&mut a, "r", 5, &format!("round{round}")).await {
            expected += 1;
            assert_eq!(ack.seq, expected);
        }
        server.restart().await; // kill -9, start again
    }
    let stored = full_history_http(&server, &token, "r").await;
    assert_eq!(seqs(&stored), (1..=15).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_1001_exits_0_and_keeps_acked_messages() {
    let mut server = Server::start().await;
    let token = server.user("alice").await;
    let mut idle = server.session("bob").await;
    let mut a = server.connect(&token).await;
    a.join("lobby", None).await.unwrap();
    send_n(&mut a, "lobby", 5, "pre").await;

    // Sends in flight when the signal arrives.
    let frames: Vec<_> = (0..30u64)
        .map(|i| ClientFrame::Send {
            req: 100 + i,
            room: "lobby".into(),
            body: format!("late {i}"),
            cid: format!("late-{i}"),
            reply_to: None,
        })
        .collect();
    a.send_frames(&frames).await.unwrap();
    let status = server.sigterm().await;
    assert!(status.success(), "exit status {status}");

    let mut acked = Vec::new();
    let close = loop {
        match a.next_frame(T).await.unwrap() {
            Event::Frame(ServerFrame::Ack { seq, cid, .. }) => acked.push((seq, cid)),
            Event::Frame(_) => {}
            Event::Closed(info) => break info,
        }
    };
    assert_eq!(close.code, Some(1001), "{close}");
    let (close, _) = idle.expect_close(T).await.unwrap();
    assert_eq!(close.code, Some(1001), "{close}");

    server.restart().await;
    let stored = full_history_http(&server, &token, "lobby").await;
    let n = stored.len() as u64;
    assert_eq!(seqs(&stored), (1..=n).collect::<Vec<_>>());
    for (seq, cid) in &acked {
        assert_eq!(stored[*seq as usize - 1].cid, *cid, "acked before shutdown, stored");
    }
    let mut a = server.connect(&token).await;
    a.join("lobby", None).await.unwrap();
    assert_eq!(a.send("lobby", "after", "after-1").await.unwrap().seq, n + 1);
}
