//! The supervision tree, proved by fault injection: each test configures a
//! failpoint (engine/src/faults.rs) and drives the engine in-process (real
//! actors, real embedded store), then checks what a client would see. The
//! network path (close 1011, `/readyz`, `/metrics`) is covered by the
//! gateway's end-to-end failpoint tests.
//!
//! Failpoints are global to the process: `FailScenario::setup` serializes
//! the tests of this binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fail::FailScenario;
use viche_engine::clock::now_ms;
use viche_engine::delivery::OutItem;
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::{Credentials, Engine, EngineConfig, Flow, Session};
use viche_protocol::{decode_server, ClientFrame, Encoding, ErrorCode, ServerFrame};

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    store: EmbeddedStore,
}

async fn start(config: EngineConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let engine = Engine::start(config, Arc::new(store.clone()), b"0123456789abcdef0123").await.unwrap();
    Fixture { _dir: dir, engine, store }
}

async fn open(f: &Fixture, user: &str) -> Session {
    f.engine.open_session(user, Encoding::MsgPack, now_ms() + 3_600_000).await.expect("a session")
}

/// A session's frames as its client would read them: replay markers are
/// read from the store, as the connection's write loop does.
struct Reader {
    frames: Vec<ServerFrame>,
}

impl Reader {
    fn new() -> Self {
        Self { frames: Vec::new() }
    }

    /// Reads until `want` holds of what was read, or fails after [`WAIT`].
    async fn until(&mut self, engine: &Engine, session: &Session, what: &str, want: impl Fn(&[ServerFrame]) -> bool) {
        let outbox = &session.session_handle().outbox;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut items = Vec::new();
            assert!(outbox.drain(&mut items).is_none(), "session unexpectedly closing");
            for item in items {
                match item {
                    OutItem::Frame(bytes) => self.frames.push(decode_server(&bytes, Encoding::MsgPack).unwrap()),
                    OutItem::Replay { room, mut after, upto, ts_min } => {
                        while after < upto {
                            let page = engine.replay_page(&room, after, upto).await.expect("replay page");
                            let Some(last) = page.last() else { break };
                            after = last.seq;
                            self.frames.extend(page.into_iter().filter(|m| m.ts >= ts_min).map(ServerFrame::Msg));
                        }
                    }
                    OutItem::Pong(_) => {}
                }
            }
            if want(&self.frames) {
                return;
            }
            tokio::select! {
                _ = outbox.notified() => {}
                _ = tokio::time::sleep_until(deadline) => panic!("{what}: not within {WAIT:?}; read {:?}", self.frames),
            }
        }
    }

    fn reply(&self, req: u64) -> Option<&ServerFrame> {
        self.frames.iter().find(|f| match f {
            ServerFrame::Ok { req: r, .. } | ServerFrame::Ack { req: r, .. } => *r == req,
            ServerFrame::Error { req: Some(r), .. } => *r == req,
            _ => false,
        })
    }

    fn msg_seqs(&self, room: &str) -> Vec<u64> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Msg(m) if m.room == room => Some(m.seq),
                _ => None,
            })
            .collect()
    }
}

async fn join(s: &mut Session, req: u64, room: &str) {
    assert_eq!(s.handle(ClientFrame::Join { req, room: room.into(), since: None }).await, Flow::Continue);
}

async fn send(s: &mut Session, req: u64, room: &str, body: &str) {
    let cid = format!("{room}-{req}-{}", s.session_handle().id);
    let frame = ClientFrame::Send { req, room: room.into(), body: body.into(), cid, reply_to: None };
    assert_eq!(s.handle(frame).await, Flow::Continue);
}

fn ok_seq(frame: Option<&ServerFrame>) -> u64 {
    match frame {
        Some(ServerFrame::Ok { seq: Some(seq), .. }) => *seq,
        other => panic!("expected ok of a join, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_panics_while_publishing_restarts_and_delivers_each_message_once() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let (mut alice, mut carol) = (open(&f, "alice").await, open(&f, "carol").await);
    let (mut ra, mut rc) = (Reader::new(), Reader::new());
    join(&mut alice, 1, "lobby").await;
    join(&mut carol, 1, "other").await;
    ra.until(&f.engine, &alice, "alice joined", |_| true).await;
    rc.until(&f.engine, &carol, "carol joined", |_| true).await;

    // The second publish in the lobby panics its actor once.
    fail::cfg("room.publish", "1*off->1*panic").unwrap();
    for n in 1..=5 {
        send(&mut alice, 100 + n, "lobby", &format!("m{n}")).await;
    }
    ra.until(&f.engine, &alice, "five messages", |fr| {
        fr.iter().filter(|x| matches!(x, ServerFrame::Msg(m) if m.room == "lobby")).count() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // anything extra would show now
    ra.until(&f.engine, &alice, "settled", |_| true).await;
    assert_eq!(ra.msg_seqs("lobby"), vec![1, 2, 3, 4, 5], "every message once, in order, live or replayed");
    for n in 1..=5 {
        assert!(matches!(ra.reply(100 + n), Some(ServerFrame::Ack { seq, .. }) if *seq == n), "ack {n}");
    }

    // The restarted room knows its members and its last seq.
    let mut bob = open(&f, "bob").await;
    let mut rb = Reader::new();
    join(&mut bob, 7, "lobby").await;
    rb.until(&f.engine, &bob, "bob's ok", |fr| fr.iter().any(|x| matches!(x, ServerFrame::Ok { req: 7, .. }))).await;
    assert_eq!(ok_seq(rb.reply(7)), 5);
    match rb.reply(7) {
        Some(ServerFrame::Ok { members: Some(members), .. }) => {
            let mut members = members.clone();
            members.sort();
            assert_eq!(members, vec!["alice".to_string(), "bob".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // The other room never noticed.
    send(&mut carol, 9, "other", "hi").await;
    rc.until(&f.engine, &carol, "carol's message", |fr| fr.iter().any(|x| matches!(x, ServerFrame::Msg(_)))).await;
    assert_eq!(rc.msg_seqs("other"), vec![1]);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_queued_when_its_room_crashes_is_answered_by_the_restarted_room() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    fail::cfg("room.join", "1*panic").unwrap();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "the join's answer", |fr| r_has(fr, 1)).await;
    assert_eq!(ok_seq(r.reply(1)), 0, "the join that crashed the room is done by its successor");
    send(&mut alice, 2, "lobby", "after").await;
    r.until(&f.engine, &alice, "the message", |fr| fr.iter().any(|x| matches!(x, ServerFrame::Msg(_)))).await;
    assert_eq!(r.msg_seqs("lobby"), vec![1], "the member is attached");
    scenario.teardown();
}

fn r_has(frames: &[ServerFrame], req: u64) -> bool {
    frames.iter().any(|f| match f {
        ServerFrame::Ok { req: r, .. } | ServerFrame::Ack { req: r, .. } => *r == req,
        ServerFrame::Error { req: Some(r), .. } => *r == req,
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_keeps_crashing_its_room_is_dropped_and_the_room_goes_on() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let (mut alice, mut bob) = (open(&f, "alice").await, open(&f, "bob").await);
    let (mut ra, mut rb) = (Reader::new(), Reader::new());
    join(&mut alice, 1, "lobby").await;
    ra.until(&f.engine, &alice, "alice's ok", |fr| r_has(fr, 1)).await;
    // Every join panics: bob's join crashes three actors in a row.
    fail::cfg("room.join", "panic").unwrap();
    join(&mut bob, 2, "lobby").await;
    rb.until(&f.engine, &bob, "bob's answer", |fr| r_has(fr, 2)).await;
    assert!(matches!(rb.reply(2), Some(ServerFrame::Error { code: ErrorCode::Internal, .. })), "{:?}", rb.reply(2));
    fail::remove("room.join");
    // The room still works for its member.
    send(&mut alice, 3, "lobby", "still here").await;
    ra.until(&f.engine, &alice, "the message", |fr| fr.iter().any(|x| matches!(x, ServerFrame::Msg(_)))).await;
    assert_eq!(ra.msg_seqs("lobby"), vec![1]);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_after_committing_is_restarted_and_acks_the_batch_once() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    // Before the first commit: off; after it: panic. The batch is stored,
    // then the writer dies before acknowledging or publishing it.
    fail::cfg("writer.commit", "1*off->1*panic").unwrap();
    send(&mut alice, 2, "lobby", "one").await;
    r.until(&f.engine, &alice, "ack and msg", |fr| r_has(fr, 2) && fr.iter().any(|x| matches!(x, ServerFrame::Msg(_))))
        .await;
    send(&mut alice, 3, "lobby", "two").await;
    r.until(&f.engine, &alice, "second ack", |fr| r_has(fr, 3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.until(&f.engine, &alice, "settled", |_| true).await;
    let acks: Vec<u64> = r
        .frames
        .iter()
        .filter_map(|x| match x {
            ServerFrame::Ack { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 2], "each message acknowledged once, with one seq");
    assert_eq!(r.msg_seqs("lobby"), vec![1, 2], "and delivered once");
    assert_eq!(f.engine.not_ready(), None, "ready again after the restart");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_refused_and_its_neighbours_are_stored() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    fail::cfg("store.append", "return(POISON)").unwrap();
    send(&mut alice, 2, "lobby", "before").await;
    send(&mut alice, 3, "lobby", "POISON pill").await;
    send(&mut alice, 4, "lobby", "after").await;
    r.until(&f.engine, &alice, "three answers", |fr| (2..=4).all(|q| r_has(fr, q))).await;
    assert!(matches!(r.reply(3), Some(ServerFrame::Error { code: ErrorCode::Internal, .. })), "{:?}", r.reply(3));
    assert!(matches!(r.reply(2), Some(ServerFrame::Ack { seq: 1, .. })));
    assert!(matches!(r.reply(4), Some(ServerFrame::Ack { seq: 2, .. })), "no seq is spent on the poison message");
    r.until(&f.engine, &alice, "two messages", |fr| {
        fr.iter().filter(|x| matches!(x, ServerFrame::Msg(_))).count() >= 2
    })
    .await;
    assert_eq!(r.msg_seqs("lobby"), vec![1, 2]);
    assert_eq!(f.engine.not_ready(), None, "the writer is healthy after isolating it");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_call_that_hangs_times_out_and_is_retried() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig { store_timeout_ms: 300, ..EngineConfig::default() }).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    fail::cfg("store.append", "1*sleep(3000)").unwrap();
    send(&mut alice, 2, "lobby", "patience").await;
    r.until(&f.engine, &alice, "the ack", |fr| r_has(fr, 2)).await;
    assert!(matches!(r.reply(2), Some(ServerFrame::Ack { seq: 1, .. })), "{:?}", r.reply(2));
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_reopens_after_an_io_error() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    fail::cfg("embedded.io", "1*return").unwrap();
    send(&mut alice, 2, "lobby", "through").await;
    r.until(&f.engine, &alice, "the ack", |fr| r_has(fr, 2)).await;
    assert!(matches!(r.reply(2), Some(ServerFrame::Ack { seq: 1, .. })), "{:?}", r.reply(2));
    assert_eq!(f.store.reopens(), 1, "the file was closed and opened again, without a restart of the process");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_cannot_load_its_last_seq_answers_its_joiner_and_recovers_later() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    fail::cfg("store.last_seq", "return").unwrap();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "the join's answer", |fr| r_has(fr, 1)).await;
    assert!(matches!(r.reply(1), Some(ServerFrame::Error { code: ErrorCode::Overloaded, .. })), "{:?}", r.reply(1));
    fail::remove("store.last_seq");
    join(&mut alice, 2, "lobby").await;
    r.until(&f.engine, &alice, "the second join's answer", |fr| r_has(fr, 2)).await;
    assert_eq!(ok_seq(r.reply(2)), 0, "once the store answers, the room opens");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_cannot_restart_tells_its_members_to_join_again() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    // The room crashes, and its restarts cannot read the store.
    fail::cfg("store.last_seq", "return").unwrap();
    fail::cfg("room.publish", "1*panic").unwrap();
    send(&mut alice, 2, "lobby", "crash").await;
    r.until(&f.engine, &alice, "the room's notice", |fr| {
        fr.iter().any(|x| matches!(x, ServerFrame::Error { req: None, code: ErrorCode::Overloaded, .. }))
    })
    .await;
    fail::remove("store.last_seq");
    // Joining again opens a fresh room, with everything stored.
    join(&mut alice, 3, "lobby").await;
    r.until(&f.engine, &alice, "the rejoin", |fr| r_has(fr, 3)).await;
    assert_eq!(ok_seq(r.reply(3)), 1, "the message stored before the crash is there");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_room_that_crashes_replays_to_both_users_sessions() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    for user in ["ann", "cat"] {
        let creds = Credentials { username: user.into(), password: "correct horse battery".into() };
        f.engine.register(creds).await.expect("a DM needs both users to exist");
    }
    let (mut ann, cat) = (open(&f, "ann").await, open(&f, "cat").await);
    let (mut ra, mut rc) = (Reader::new(), Reader::new());
    let dm = |req: u64, body: &str| ClientFrame::Dm {
        req,
        to: "cat".into(),
        body: body.into(),
        cid: format!("d{req}"),
        reply_to: None,
    };
    assert_eq!(ann.handle(dm(1, "first")).await, Flow::Continue);
    rc.until(&f.engine, &cat, "the first DM", |fr| fr.iter().any(|x| matches!(x, ServerFrame::Msg(_)))).await;
    fail::cfg("room.publish", "1*panic").unwrap();
    assert_eq!(ann.handle(dm(2, "second")).await, Flow::Continue);
    rc.until(&f.engine, &cat, "the second DM", |fr| {
        fr.iter().filter(|x| matches!(x, ServerFrame::Msg(_))).count() >= 2
    })
    .await;
    ra.until(&f.engine, &ann, "both on the sender's side", |fr| {
        fr.iter().filter(|x| matches!(x, ServerFrame::Msg(_))).count() >= 2
    })
    .await;
    assert_eq!(rc.msg_seqs("dm:ann:cat"), vec![1, 2], "neither user joined the DM room; both get it, once");
    assert_eq!(ra.msg_seqs("dm:ann:cat"), vec![1, 2]);
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_waiting_on_the_store_does_not_hold_up_joins_to_open_rooms() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let (mut alice, mut bob, mut carol) = (open(&f, "alice").await, open(&f, "bob").await, open(&f, "carol").await);
    let (mut ra, mut rc) = (Reader::new(), Reader::new());
    join(&mut alice, 1, "open").await;
    ra.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    // Opening a new room now waits 3 s on the store (in the opener's task).
    fail::cfg("store.last_seq", "sleep(3000)").unwrap();
    let slow = tokio::spawn(async move {
        join(&mut bob, 1, "slow").await;
        bob
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // bob is waiting on the store now
    join(&mut carol, 1, "open").await;
    rc.until(&f.engine, &carol, "carol's ok", |fr| r_has(fr, 1)).await;
    assert!(!slow.is_finished(), "the open room answered while the new one was still being opened");
    fail::remove("store.last_seq");
    let bob = slow.await.unwrap();
    let mut rb = Reader::new();
    rb.until(&f.engine, &bob, "bob's ok", |fr| r_has(fr, 1)).await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_keeps_failing_makes_the_engine_give_up() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig::default()).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    join(&mut alice, 1, "lobby").await;
    r.until(&f.engine, &alice, "ok", |fr| r_has(fr, 1)).await;
    fail::cfg("writer.commit", "panic").unwrap();
    send(&mut alice, 2, "lobby", "doomed").await;
    let reason = tokio::time::timeout(WAIT, f.engine.failed()).await.expect("the engine gives up");
    assert!(reason.contains("writer failed"), "{reason}");
    assert!(f.engine.not_ready().is_some(), "and stays not ready");
    // Sends are refused (the writer is down), not queued forever.
    send(&mut alice, 3, "lobby", "refused").await;
    r.until(&f.engine, &alice, "the refusal", |fr| r_has(fr, 3)).await;
    assert!(matches!(r.reply(3), Some(ServerFrame::Error { code: ErrorCode::Overloaded, .. })), "{:?}", r.reply(3));
    assert!(!r_has(&r.frames, 2), "the message that kept failing was never acknowledged");
    fail::remove("writer.commit");
    scenario.teardown();
}

/// A room that crashed many times still stops once idle: no crash leaves
/// an operation counted in flight (a guard ends wherever its operation
/// does, a dropped queue included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_leave_no_operation_in_flight() {
    let scenario = FailScenario::setup();
    let f = start(EngineConfig { room_idle_ms: 200, ..EngineConfig::default() }).await;
    let mut alice = open(&f, "alice").await;
    let mut r = Reader::new();
    fail::cfg("room.publish", "50%panic").unwrap();
    join(&mut alice, 1, "lobby").await;
    for n in 0..10 {
        send(&mut alice, 10 + n, "lobby", "x").await;
    }
    r.until(&f.engine, &alice, "ten acks", |fr| (10..20).all(|q| r_has(fr, q))).await;
    fail::remove("room.publish");
    r.until(&f.engine, &alice, "ten messages", |fr| {
        fr.iter().filter(|x| matches!(x, ServerFrame::Msg(_))).count() >= 10
    })
    .await;
    let mut seen = HashMap::new();
    for seq in r.msg_seqs("lobby") {
        *seen.entry(seq).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "each message once: {seen:?}");
    assert_eq!(f.engine.rooms_open(), 1);
    drop(alice); // leaves the room
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.engine.rooms_open() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the room never stopped: something is still in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh room continues the room's numbering from the store.
    let mut bob = open(&f, "bob").await;
    let mut rb = Reader::new();
    join(&mut bob, 1, "lobby").await;
    rb.until(&f.engine, &bob, "ok", |fr| r_has(fr, 1)).await;
    assert_eq!(ok_seq(rb.reply(1)), 10);
    scenario.teardown();
}
