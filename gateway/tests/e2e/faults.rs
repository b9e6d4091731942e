//! Faults injected into a real server (built with the `failpoints`
//! feature, started with `FAILPOINTS`), under traffic, and the invariants
//! that must hold afterwards (docs/architecture.md, "Supervision"):
//!
//! - every acknowledged message is in the history, with the seq of its ack,
//!   and the history holds nothing else; seqs are dense from 1;
//! - each client's view of each room (live, and replayed after a reconnect
//!   with `since` where it was closed) holds every message from its first
//!   join on exactly once, in order;
//! - no ghost: a newcomer's `ok.members` is exactly the users connected;
//! - `/metrics`: accepted = closed + open; `/readyz` answers 200 after;
//! - the fault really happened (its counter, or the closes clients saw).
//!
//! The clients are resilient as a real one is: on a close they reconnect
//! and rejoin with `since` = the last seq they saw; a send refused with
//! `overloaded` or `internal`, or lost with its connection, is sent again
//! with the same `cid`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use viche_client::{ClientError, CloseInfo, Connection, Encoding, ErrorCode, ServerFrame};

use crate::common::*;

/// One user's client: its view of every room it is in, and its acks.
struct Member {
    user: String,
    token: String,
    ws_url: String,
    conn: Option<Connection>,
    rooms: Vec<String>,
    /// Seqs received per room, in arrival order.
    seen: BTreeMap<String, Vec<u64>>,
    /// The room's seq when this client first joined: its view starts after.
    base: HashMap<String, u64>,
    /// cid → (room, seq) of every acknowledged send.
    acked: HashMap<String, (String, u64)>,
    closes: Vec<CloseInfo>,
    /// Reconnect on its own after this many sends (to exercise replays).
    reconnect_every: Option<usize>,
    sends: usize,
}

impl Member {
    async fn new(server: &Server, user: &str, rooms: &[&str]) -> Member {
        Member {
            user: user.to_string(),
            token: server.user(user).await,
            ws_url: server.ws_url(),
            conn: None,
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            seen: BTreeMap::new(),
            base: HashMap::new(),
            acked: HashMap::new(),
            closes: Vec::new(),
            reconnect_every: None,
            sends: 0,
        }
    }

    fn last(&self, room: &str) -> u64 {
        self.seen.get(room).and_then(|s| s.last().copied()).or_else(|| self.base.get(room).copied()).unwrap_or(0)
    }

    /// Records every `msg` the connection has buffered.
    fn harvest(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            for frame in conn.take_pending() {
                if let ServerFrame::Msg(m) = frame {
                    self.seen.entry(m.room.clone()).or_default().push(m.seq);
                }
            }
        }
    }

    /// Drops the connection after recording what it buffered and how it closed.
    fn lost(&mut self, info: Option<CloseInfo>) {
        self.harvest();
        if let Some(info) = info.or_else(|| self.conn.as_ref().and_then(|c| c.close_info().cloned())) {
            self.closes.push(info);
        }
        self.conn = None;
    }

    /// Connected, and joined to every room (with `since` after the first time).
    async fn ensure(&mut self) {
        'again: loop {
            if self.conn.is_some() {
                return;
            }
            let mut conn = match Connection::open(&self.ws_url, &self.token, Encoding::MsgPack).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            conn.set_timeout(T);
            self.conn = Some(conn);
            for room in self.rooms.clone() {
                let since = self.base.contains_key(&room).then(|| self.last(&room));
                let joined = self.conn.as_mut().unwrap().join(&room, since).await;
                match joined {
                    Ok(ok) => {
                        self.base.entry(room.clone()).or_insert(ok.seq);
                        self.harvest();
                    }
                    Err(ClientError::Server { code: ErrorCode::Overloaded | ErrorCode::Internal, .. }) => {
                        self.harvest();
                        self.conn = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'again;
                    }
                    Err(ClientError::Closed(info)) => {
                        self.lost(Some(info));
                        continue 'again;
                    }
                    Err(e) => panic!("{} joining {room}: {e}", self.user),
                }
            }
            return;
        }
    }

    /// Sends until acknowledged, whatever happens to the connection.
    async fn send(&mut self, room: &str, cid: &str) {
        self.sends += 1;
        if self.reconnect_every.is_some_and(|n| self.sends.is_multiple_of(n)) {
            self.lost(None);
        }
        loop {
            self.ensure().await;
            let result = self.conn.as_mut().unwrap().send(room, &format!("{} says {cid}", self.user), cid).await;
            self.harvest();
            match result {
                Ok(ack) => {
                    let previous = self.acked.insert(cid.to_string(), (ack.room.clone(), ack.seq));
                    assert!(previous.is_none(), "{cid} acknowledged twice");
                    return;
                }
                Err(ClientError::Server { code: ErrorCode::Overloaded | ErrorCode::Internal, .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(ClientError::Closed(info)) => self.lost(Some(info)),
                Err(ClientError::Timeout { .. }) => self.lost(None),
                Err(e) => panic!("{} sending {cid}: {e}", self.user),
            }
        }
    }

    /// Reads until it has seen `room` up to `upto`.
    async fn catch_up(&mut self, room: &str, upto: u64) {
        let deadline = tokio::time::Instant::now() + T;
        while self.last(room) < upto {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} stuck at {} of {upto} in {room}",
                self.user,
                self.last(room)
            );
            self.ensure().await;
            let event = self.conn.as_mut().unwrap().next_frame(Duration::from_millis(500)).await;
            match event {
                Ok(viche_client::Event::Frame(ServerFrame::Msg(m))) => {
                    self.seen.entry(m.room.clone()).or_default().push(m.seq);
                }
                Ok(viche_client::Event::Frame(_)) | Err(ClientError::Timeout { .. }) => {}
                Ok(viche_client::Event::Closed(info)) => self.lost(Some(info)),
                Err(e) => panic!("{} reading {room}: {e}", self.user),
            }
        }
    }
}

/// The shape of the traffic a test runs.
struct Traffic {
    users: usize,
    rooms: &'static [&'static str],
    sends_per_user: usize,
    reconnect_every: Option<usize>,
}

const TRAFFIC: Traffic = Traffic { users: 4, rooms: &["lobby", "side"], sends_per_user: 30, reconnect_every: None };

/// What the clients saw, for the checks.
struct Outcome {
    members: Vec<Member>,
}

/// Runs the traffic (each user in its own task), then lets every client
/// catch up with the whole history.
async fn run(server: &Server, traffic: &Traffic, tag: &str) -> Outcome {
    let mut tasks = Vec::new();
    for u in 0..traffic.users {
        let user = format!("{tag}{u}");
        let mut member = Member::new(server, &user, traffic.rooms).await;
        member.reconnect_every = traffic.reconnect_every;
        let rooms = traffic.rooms;
        let sends = traffic.sends_per_user;
        tasks.push(tokio::spawn(async move {
            for n in 0..sends {
                let room = rooms[n % rooms.len()];
                member.send(room, &format!("{user}-{n}")).await;
            }
            member
        }));
    }
    let mut members = Vec::new();
    for task in tasks {
        members.push(task.await.expect("a client task"));
    }
    // Everyone catches up with the whole history of every room.
    let token = server.user(&format!("{tag}reader")).await;
    for room in traffic.rooms {
        let upto = full_history_http(server, &token, room).await.last().map_or(0, |m| m.seq);
        for m in members.iter_mut() {
            m.catch_up(room, upto).await;
        }
    }
    tokio::time::sleep(QUIET).await;
    for m in members.iter_mut() {
        m.harvest();
    }
    Outcome { members }
}

/// The numbers in `/metrics` for a name with any labels, summed.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of one labelled series in `/metrics`, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(server: &Server) -> String {
    let r = server.http().get_raw("/metrics", None).await.expect("/metrics");
    assert_eq!(r.status, 200);
    r.body
}

/// Every invariant of the module's doc; returns the `/metrics` text.
async fn check_invariants(server: &Server, traffic: &Traffic, outcome: &Outcome, tag: &str) -> String {
    let token = server.user(&format!("{tag}checker")).await;
    let mut acked: HashMap<(String, u64), String> = HashMap::new();
    for m in &outcome.members {
        for (cid, (room, seq)) in &m.acked {
            let other = acked.insert((room.clone(), *seq), cid.clone());
            assert!(other.is_none(), "seq {seq} of {room} acknowledged for two cids: {cid} and {other:?}");
        }
        assert_eq!(m.acked.len(), traffic.sends_per_user, "{}: every send acknowledged", m.user);
    }
    for room in traffic.rooms {
        let history = full_history_http(server, &token, room).await;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        let dense: Vec<u64> = (1..=history.len() as u64).collect();
        assert_eq!(seqs, dense, "{room}: seqs dense from 1");
        for msg in &history {
            assert_eq!(
                acked.get(&(room.to_string(), msg.seq)),
                Some(&msg.cid),
                "{room} seq {}: stored = acknowledged",
                msg.seq
            );
        }
        let acked_here = acked.keys().filter(|(r, _)| r == room).count();
        assert_eq!(acked_here, history.len(), "{room}: every acknowledged message is stored");
        for m in &outcome.members {
            let base = m.base[*room];
            let seen = m.seen.get(*room).cloned().unwrap_or_default();
            let expected: Vec<u64> = (base + 1..=history.len() as u64).collect();
            assert_eq!(seen, expected, "{} in {room}: every message since its join, once, in order", m.user);
        }
    }
    // No ghost: a newcomer sees exactly the users connected now. (Its own
    // joins meet the failpoints too: it retries as any client would.)
    let newcomer_token = server.user(&format!("{tag}newcomer")).await;
    let connected: HashSet<&str> =
        outcome.members.iter().filter(|m| m.conn.is_some()).map(|m| m.user.as_str()).collect();
    for room in traffic.rooms {
        let ok = loop {
            let mut newcomer = server.connect(&newcomer_token).await;
            match newcomer.join(room, None).await {
                Ok(ok) => break ok,
                Err(ClientError::Server { code: ErrorCode::Internal | ErrorCode::Overloaded, .. })
                | Err(ClientError::Closed(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("newcomer joining {room}: {e}"),
            }
        };
        let members: HashSet<&str> =
            ok.members.iter().map(String::as_str).filter(|u| !u.ends_with("newcomer")).collect();
        assert_eq!(members, connected, "{room}: ok.members is exactly who is connected");
    }
    // The server is ready, and every connection is accounted for.
    let ready = server.http().get_raw("/readyz", None).await.expect("/readyz");
    assert_eq!(ready.status, 200, "ready after the faults: {}", ready.body);
    // A connection is counted closed just after its close is written: wait
    // for the counts to settle.
    let deadline = tokio::time::Instant::now() + T;
    let text = loop {
        let text = metrics(server).await;
        let accepted = metric_sum(&text, "viche_connections_accepted_total");
        let closed = metric_sum(&text, "viche_connections_closed_total");
        let open = metric_sum(&text, "viche_connections_open");
        if accepted == closed + open {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "accepted = closed + open: {accepted} vs {closed} + {open}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    text
}

async fn faulty(failpoints: &str) -> Server {
    Server::start_with(Opts { failpoints: Some(failpoints.to_string()), ..Opts::default() }).await
}

fn closes_with(outcome: &Outcome, code: u16) -> usize {
    outcome.members.iter().flat_map(|m| &m.closes).filter(|c| c.code == Some(code)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_panics_close_1011_and_clients_resume_exactly() {
    let server = faulty("session.handle=6%panic").await;
    let outcome = run(&server, &TRAFFIC, "sp").await;
    // Before the checks' own clients meet the failpoint too.
    let failures = metric(&metrics(&server).await, "viche_actor_failures_total{kind=\"session\"}");
    assert!(failures > 0.0, "sessions panicked");
    assert_eq!(closes_with(&outcome, 1011) as f64, failures, "each panicked session closed with 1011");
    check_invariants(&server, &TRAFFIC, &outcome, "sp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_are_retried_and_nothing_is_lost() {
    // `return`: the frame is refused with internal, the session stays.
    let server = faulty("session.handle=10%return").await;
    let outcome = run(&server, &TRAFFIC, "sr").await;
    check_invariants(&server, &TRAFFIC, &outcome, "sr").await;
    assert_eq!(outcome.members.iter().map(|m| m.closes.len()).sum::<usize>(), 0, "no session was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_join_panics_restart_the_room_and_every_join_is_answered() {
    let server = faulty("room.join=25%panic").await;
    let traffic = Traffic { reconnect_every: Some(7), ..TRAFFIC };
    let outcome = run(&server, &traffic, "rj").await;
    let text = check_invariants(&server, &traffic, &outcome, "rj").await;
    assert!(metric(&text, "viche_actor_failures_total{kind=\"room\"}") > 0.0, "rooms crashed");
    assert!(metric(&text, "viche_actor_restarts_total{kind=\"room\"}") > 0.0, "and were restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_publish_panics_lose_and_repeat_nothing() {
    let server = faulty("room.publish=12%panic").await;
    let outcome = run(&server, &TRAFFIC, "rp").await;
    let text = check_invariants(&server, &TRAFFIC, &outcome, "rp").await;
    assert!(metric(&text, "viche_actor_restarts_total{kind=\"room\"}") > 0.0, "rooms were restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_panics_restart_it_and_each_message_is_acknowledged_once() {
    // At most 4 failures: below the intensity limit, so the engine recovers.
    let server = faulty("writer.commit=10%4*panic").await;
    let outcome = run(&server, &TRAFFIC, "wp").await;
    let text = check_invariants(&server, &TRAFFIC, &outcome, "wp").await;
    let failures = metric(&text, "viche_actor_failures_total{kind=\"writer\"}");
    assert!(failures > 0.0, "the writer failed");
    assert_eq!(metric(&text, "viche_actor_restarts_total{kind=\"writer\"}"), failures, "and was restarted each time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_append_failures_are_retried_without_loss() {
    let server = faulty("store.append=15%return").await;
    let outcome = run(&server, &TRAFFIC, "sa").await;
    let text = check_invariants(&server, &TRAFFIC, &outcome, "sa").await;
    assert!(metric(&text, "viche_store_commit_failures_total{reason=\"error\"}") > 0.0, "commits failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_last_seq_failures_delay_rooms_only() {
    let server = faulty("store.last_seq=50%return").await;
    let traffic = Traffic { rooms: &["a", "b", "c", "d"], ..TRAFFIC };
    let outcome = run(&server, &traffic, "sl").await;
    check_invariants(&server, &traffic, &outcome, "sl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_that_fail_close_1011_and_the_client_resumes() {
    let server = faulty("store.range=30%return").await;
    // Clients reconnect on their own every 5 sends, so they replay often.
    let traffic = Traffic { reconnect_every: Some(5), ..TRAFFIC };
    let outcome = run(&server, &traffic, "sg").await;
    check_invariants(&server, &traffic, &outcome, "sg").await;
    assert!(closes_with(&outcome, 1011) > 0, "some replays failed and were closed with 1011");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_commits_time_out_and_200_after() {
    let server = Server::start_with(Opts {
        failpoints: Some("store.append=3*sleep(1500)".into()),
        extra_args: vec!["--store-timeout-ms".into(), "300".into()],
        ..Opts::default()
    })
    .await;
    let mut alice = server.session("ready_alice").await;
    alice.join("lobby", None).await.unwrap();
    let req = alice.alloc_ref();
    alice
        .send_frame(&viche_client::ClientFrame::Send {
            req,
            room: "lobby".into(),
            body: "patience".into(),
            cid: "c1".into(),
            reply_to: None,
        })
        .await
        .unwrap();
    let mut saw_503 = false;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let ready = server.http().get_raw("/readyz", None).await.expect("/readyz");
        saw_503 |= ready.status == 503;
        if saw_503 && ready.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never went 503 then 200 (503 seen: {saw_503})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match alice.wait_reply(req, T).await.expect("the ack") {
        ServerFrame::Ack { seq: 1, .. } => {}
        other => panic!("{other:?}"),
    }
    let text = metrics(&server).await;
    assert!(metric(&text, "viche_store_commit_failures_total{reason=\"timeout\"}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_failpoint_at_a_low_rate() {
    let server = faulty(
        "session.handle=2%panic;room.join=5%panic;room.publish=3%panic;writer.commit=3%3*panic;\
         store.append=3%return;store.last_seq=10%return;store.range=10%return",
    )
    .await;
    let traffic = Traffic { users: 5, sends_per_user: 40, reconnect_every: Some(9), ..TRAFFIC };
    let outcome = run(&server, &traffic, "ch").await;
    check_invariants(&server, &traffic, &outcome, "ch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_panic_give_back_their_connection_slot() {
    // Every frame after hello panics its session; only 2 connections at once.
    let server = Server::start_with(Opts {
        failpoints: Some("session.handle=panic".into()),
        extra_args: vec!["--max-connections".into(), "2".into()],
        ..Opts::default()
    })
    .await;
    let token = server.user("slots").await;
    for round in 0..5 {
        let mut conn = server.connect(&token).await;
        let err = conn.ping().await.expect_err("the session panics on its first frame");
        match err {
            ClientError::Closed(info) => assert_eq!(info.code, Some(1011), "round {round}: {info}"),
            other => panic!("round {round}: {other}"),
        }
    }
    // Five panics later, both slots are free again (the server counts a
    // connection closed just after its close frame is written), and the
    // session supervisor (told by message) has counted the five.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = metrics(&server).await;
        let failures = metric(&text, "viche_actor_failures_total{kind=\"session\"}");
        assert!(failures <= 5.0, "{failures} session failures counted for 5 panics");
        if metric_sum(&text, "viche_connections_open") == 0.0 && failures == 5.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still counted open, or failures uncounted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _a = server.connect(&token).await;
    let _b = server.connect(&token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_fill_the_writer_queue_everyone_shares() {
    // A store that takes 1.5 s per commit, and a share of 2 messages per user.
    let server = Server::start_with(Opts {
        failpoints: Some("store.append=sleep(1500)".into()),
        extra_args: vec!["--writer-queue-per-user-max".into(), "2".into()],
        ..Opts::default()
    })
    .await;
    let mut greedy = server.session("greedy").await;
    greedy.join("lobby", None).await.unwrap();
    let reqs: Vec<u64> = (0..6).map(|_| greedy.alloc_ref()).collect();
    for (i, req) in reqs.iter().enumerate() {
        let frame = viche_client::ClientFrame::Send {
            req: *req,
            room: "lobby".into(),
            body: "x".into(),
            cid: format!("g{i}"),
            reply_to: None,
        };
        greedy.send_frame(&frame).await.unwrap();
    }
    let mut refused = 0;
    for req in &reqs {
        match greedy.wait_reply(*req, T).await {
            Ok(ServerFrame::Ack { .. }) => {}
            Err(ClientError::Server { code: ErrorCode::Overloaded, .. }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused >= 3, "past its share of 2 waiting, the user's sends are refused ({refused} of 6)");
    // Another user's message still goes in meanwhile.
    let mut other = server.session("patient").await;
    other.join("lobby", None).await.unwrap();
    other.send("lobby", "still room for me", "p1").await.expect("another user is not refused");
}

#[tokio::test]
async fn conversation_store_errors_are_refused_with_internal_and_the_session_lives_on() {
    let server = faulty("store.conversations=return").await;
    let mut ann = server.session("cf_ann").await;
    let mut bob = server.session("cf_bob").await;
    assert_eq!(code_of(ann.join("lobby", None).await), "internal", "the join could not be made durable");
    assert_eq!(code_of(ann.send("lobby", "x", "c1").await), "not_joined", "so it did not happen");
    assert_eq!(code_of(ann.read("lobby", 1).await), "internal");
    assert_eq!(code_of(ann.conversations(None, None).await), "internal");
    assert_eq!(code_of(ann.forget("lobby").await), "internal");
    let raw = server.http().get_raw("/api/conversations", Some(&mint("cf_ann", now_s() + 60))).await.unwrap();
    assert_eq!(raw.status, 500, "{}", raw.body);
    ann.ping().await.unwrap();
    // Sending needs no conversation call: DMs still flow.
    ann.dm("cf_bob", "still here", "d1").await.unwrap();
    assert_eq!(bob.recv_msg(T).await.unwrap().body, "still here");
}
