//! MongoDB-specific behaviour, against a real MongoDB-wire server
//! (FerretDB, started by scripts/test.sh). The generic end-to-end suite also
//! runs on MongoDB in scripts/test.sh's second pass; these are the tests
//! that only mean something there: indexes, dedupe across a restart, and
//! no loss through an outage of the database.
//!
//! Every test here is named `mongo_*`, so the second pass can skip them
//! (they already ran in the first).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use viche_client::{ClientFrame, ErrorCode, Event, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_indexes_exist_after_start() {
    let Some(uri) = mongo_or_skip("mongo_indexes_exist_after_start") else { return };
    let server = Server::start_with(Opts { mongo_uri: Some(uri.clone()), ..Opts::default() }).await;
    let (_, db_name) = server.mongo().expect("server runs on MongoDB").clone();

    let client = mongodb::Client::with_uri_str(&uri).await.expect("connecting to MongoDB");
    let db = client.database(&db_name);
    let mut unique_keys: Vec<(String, Vec<String>)> = Vec::new();
    for collection in ["users", "messages"] {
        let mut cursor =
            db.collection::<mongodb::bson::Document>(collection).list_indexes().await.expect("listing indexes");
        while cursor.advance().await.expect("reading an index") {
            let index = cursor.deserialize_current().expect("index model");
            let unique = index.options.as_ref().and_then(|o| o.unique).unwrap_or(false);
            if unique {
                unique_keys.push((collection.to_string(), index.keys.keys().cloned().collect()));
            }
        }
    }
    unique_keys.sort();
    let expect = |c: &str, k: &[&str]| (c.to_string(), k.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(unique_keys.contains(&expect("users", &["username"])), "unique users.username, got {unique_keys:?}");
    assert!(
        unique_keys.contains(&expect("messages", &["room", "seq"])),
        "unique messages.(room, seq), got {unique_keys:?}"
    );
    assert!(
        unique_keys.contains(&expect("messages", &["from", "cid"])),
        "unique messages.(from, cid), got {unique_keys:?}"
    );

    // Creating them is idempotent: a second server on the same database starts.
    drop(server);
    let again = Server::start_with(Opts { mongo_uri: Some(uri), ..Opts::default() }).await;
    assert!(again.mongo().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_retried_cid_is_deduplicated_across_a_restart() {
    let Some(uri) = mongo_or_skip("mongo_retried_cid_is_deduplicated_across_a_restart") else { return };
    let mut server = Server::start_with(Opts { mongo_uri: Some(uri), ..Opts::default() }).await;
    let token = server.user("alice").await;
    let mut conn = server.connect(&token).await;
    conn.join("r", None).await.unwrap();
    let first = conn.send("r", "hello", "cid-1").await.unwrap();
    let second = conn.send("r", "again", "cid-2").await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    drop(conn);

    server.restart().await;
    let mut conn = server.connect(&token).await;
    conn.join("r", None).await.unwrap();
    let retried = conn.send("r", "hello (retried)", "cid-1").await.unwrap();
    assert_eq!(retried.seq, 1, "the original seq of cid-1");
    let next = conn.send("r", "new", "cid-3").await.unwrap();
    assert_eq!(next.seq, 3, "the next seq follows the last stored one");

    let history = full_history_http(&server, &token, "r").await;
    let bodies: Vec<(u64, &str)> = history.iter().map(|m| (m.seq, m.body.as_str())).collect();
    assert_eq!(bodies, vec![(1, "hello"), (2, "again"), (3, "new")], "stored once, never delivered twice");
}

/// A FerretDB process of this test's own, to stop and start.
struct Ferret {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Ferret {
    fn start() -> Ferret {
        let bin =
            PathBuf::from(std::env::var("VICHE_FERRETDB_BIN").expect("VICHE_FERRETDB_BIN (scripts/test.sh sets it)"));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut f = Ferret { bin, dir: tempfile::tempdir().unwrap(), port, child: None };
        f.up();
        f
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    fn up(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("ferretdb.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-listen-addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-sqlite-url")
            .arg(format!("file:{}/", self.dir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting ferretdb");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "ferretdb did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        self.down();
    }
}

async fn ready_status(server: &Server) -> u16 {
    match server.http().get_raw("/readyz", None).await {
        Ok(r) => r.status,
        Err(_) => 0,
    }
}

/// The database goes away for 12 s under a steady send load and comes
/// back: every acknowledged message is stored exactly once with
/// consecutive seqs, senders were answered `overloaded` (the writer's queue
/// is small here) or waited, and /readyz went 503 and back to 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_outage_loses_nothing_acked_and_stores_nothing_twice() {
    if mongo_or_skip("mongo_outage_loses_nothing_acked_and_stores_nothing_twice").is_none() {
        return;
    }
    let mut ferret = Ferret::start();
    let server = Server::start_with(Opts {
        mongo_uri: Some(ferret.uri()),
        extra_args: vec!["--writer-queue-max".into(), "16".into()],
        ..Opts::default()
    })
    .await;
    let token = server.user("alice").await;
    let mut conn = server.connect(&token).await;
    conn.set_timeout(Duration::from_secs(120));
    let joined = conn.join("outage", None).await.unwrap();
    assert_eq!(joined.seq, 0);

    // Open loop: one send every 100 ms (under the 20/s rate limit); replies
    // are collected as they come.
    let mut sent: BTreeMap<u64, String> = BTreeMap::new(); // ref → cid
    let mut acked: HashMap<String, u64> = HashMap::new(); // cid → seq
    let mut refused: HashMap<u64, ErrorCode> = HashMap::new(); // ref → code
    let mut delivered: Vec<u64> = Vec::new();
    let mut saw_503 = false;
    let mut next_ref = 1_000u64;

    let start = Instant::now();
    let outage_from = Duration::from_secs(4);
    let outage_to = outage_from + Duration::from_secs(12);
    let stop_sending = outage_to + Duration::from_secs(6);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ready_poll = tokio::time::interval(Duration::from_millis(500));
    let mut db_up = true;
    loop {
        let elapsed = start.elapsed();
        if db_up && elapsed >= outage_from && elapsed < outage_to {
            ferret.down();
            db_up = false;
        }
        if !db_up && elapsed >= outage_to {
            ferret.up();
            db_up = true;
        }
        let all_answered = sent.keys().all(|r| refused.contains_key(r) || acked.contains_key(&sent[r]));
        if elapsed >= stop_sending && all_answered {
            break;
        }
        assert!(elapsed < stop_sending + Duration::from_secs(90), "replies still missing 90 s after the last send");
        tokio::select! {
            _ = tick.tick(), if elapsed < stop_sending => {
                next_ref += 1;
                let cid = format!("c{next_ref}");
                conn.send_frame(&ClientFrame::Send { req: next_ref, room: "outage".into(), body: format!("m{next_ref}"), cid: cid.clone(), reply_to: None }).await.unwrap();
                sent.insert(next_ref, cid);
            }
            _ = ready_poll.tick(), if !db_up => {
                if ready_status(&server).await == 503 {
                    saw_503 = true;
                }
            }
            event = conn.next_frame(Duration::from_millis(50)) => match event {
                Ok(Event::Frame(ServerFrame::Ack { req, seq, cid, .. })) => {
                    assert_eq!(sent.get(&req), Some(&cid), "ack for the cid sent with that ref");
                    assert!(acked.insert(cid, seq).is_none(), "one ack per send");
                }
                Ok(Event::Frame(ServerFrame::Error { req: Some(req), code, .. })) => {
                    assert!(matches!(code, ErrorCode::Overloaded | ErrorCode::RateLimited), "unexpected error {code}");
                    refused.insert(req, code);
                }
                Ok(Event::Frame(ServerFrame::Msg(m))) => delivered.push(m.seq),
                Ok(Event::Frame(_)) => {}
                Ok(Event::Closed(c)) => panic!("connection closed during the outage: {c}"),
                Err(e) if e.is_timeout() => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }
    // Late deliveries of the last acks.
    while let Ok(m) = conn.recv_msg(Duration::from_secs(2)).await {
        delivered.push(m.seq);
    }

    assert!(saw_503, "/readyz answered 503 while the database was down");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_status(&server).await != 200 {
        assert!(Instant::now() < deadline, "/readyz back to 200 after the database returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let overloaded = refused.values().filter(|c| **c == ErrorCode::Overloaded).count();
    assert!(overloaded > 0, "with a 16-message writer queue, a 12 s outage at 10 sends/s sheds some with overloaded");
    assert!(!acked.is_empty());

    // Stored exactly once, consecutive, and equal to what was acked.
    let history = full_history_http(&server, &token, "outage").await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "consecutive seqs from 1, no duplicates");
    let stored: HashMap<String, u64> = history.iter().map(|m| (m.cid.clone(), m.seq)).collect();
    assert_eq!(stored.len(), history.len(), "each cid stored once");
    assert_eq!(stored, acked, "what is stored is exactly what was acknowledged, with the acked seqs");
    for r in refused.keys() {
        assert!(!stored.contains_key(&sent[r]), "a refused send is not stored");
    }
    // The member saw every stored message once, in order.
    assert_eq!(delivered, seqs, "delivered live: every stored seq once, in order");
}

/// A process killed between the lookup of a batch's cids and its insert
/// (held there by the failpoint `store.append.between`), and killed again
/// mid-traffic: after each restart every room's seqs are dense from 1,
/// every acknowledged message is stored once with its seq, and clients'
/// retries (same cid) never take a second seq.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_kill9_between_lookup_and_insert_leaves_dense_seqs() {
    let Some(uri) = mongo_or_skip("mongo_kill9_between_lookup_and_insert_leaves_dense_seqs") else { return };
    let mut server = Server::start_with(Opts {
        mongo_uri: Some(uri),
        failpoints: Some("store.append.between=50%sleep(400)".into()),
        ..Opts::default()
    })
    .await;
    let token = server.user("killer").await;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    for round in 0..3 {
        let mut conn = server.connect(&token).await;
        conn.join("r", None).await.unwrap();
        // Fire 20 sends (new cids, and the previous round's again), read
        // whatever acks come within a moment, then kill -9 mid-flight.
        let mut reqs = Vec::new();
        for i in 0..20 {
            let cid = format!("c{}", sent + i);
            let req = conn.alloc_ref();
            let frame =
                ClientFrame::Send { req, room: "r".into(), body: format!("m {cid}"), cid: cid.clone(), reply_to: None };
            conn.send_frame(&frame).await.unwrap();
            reqs.push((req, cid));
        }
        sent += 20;
        let deadline = Instant::now() + Duration::from_millis(600);
        while Instant::now() < deadline {
            match conn.next_frame(Duration::from_millis(100)).await {
                Ok(Event::Frame(ServerFrame::Ack { cid, seq, .. })) => {
                    if let Some(previous) = acked.insert(cid.clone(), seq) {
                        assert_eq!(previous, seq, "{cid} acknowledged with two seqs");
                    }
                }
                Ok(Event::Closed(_)) => break,
                _ => {}
            }
        }
        server.restart_with_failpoints(if round < 2 { Some("store.append.between=50%sleep(400)") } else { None }).await;
    }
    // Every cid sent is retried once more (the client does not know which
    // got in): each is answered with one seq, the first one if it was acked.
    let mut conn = server.connect(&token).await;
    conn.join("r", None).await.unwrap();
    for i in 0..sent {
        let cid = format!("c{i}");
        let ack = send_retrying(&mut conn, "r", &format!("m {cid}"), &cid).await;
        if let Some(seq) = acked.get(&cid) {
            assert_eq!(ack.seq, *seq, "{cid}: a retry of an acknowledged message gets its seq");
        }
    }
    let history = full_history_http(&server, &token, "r").await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "dense from 1, each cid stored once");
    let cids: std::collections::BTreeSet<&str> = history.iter().map(|m| m.cid.as_str()).collect();
    assert_eq!(cids.len() as u64, sent);
}
