//! A room whose members are spread over the nodes of one cluster (one
//! `nats-server`, one MongoDB database, several `viche` processes): each
//! room is stored by its owner, the others forward to it; every member
//! sees every message once, in seq order; a DM reaches every session of
//! both users; typing crosses nodes; while NATS is away a room's owner
//! goes on and the others answer `overloaded`, and what was stored
//! arrives in order once NATS is back; the owner killed, another takes
//! the room over; two nodes that both believe they own a room cannot both
//! store in it; junk on a room's subject changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use viche_client::{Ack, ClientError, Connection, ErrorCode, Msg, ServerFrame};
use viche_engine::cluster::{NodeId, Ring};

use crate::common::*;

/// The nodes of one test cluster, its NATS and its database.
struct Cluster {
    nats: Nats,
    nodes: Vec<Server>,
    prefix: String,
    uri: String,
    db: String,
    /// More flags for every node.
    extra: Vec<String>,
}

/// `n` nodes on one NATS and one fresh database; `None` to skip (no
/// MongoDB outside CI).
async fn cluster(test: &str, n: usize) -> Option<Cluster> {
    cluster_with(test, n, &[]).await
}

/// As [`cluster`], every node with more flags.
async fn cluster_with(test: &str, n: usize, extra: &[&str]) -> Option<Cluster> {
    let uri = mongo_or_skip(test)?;
    let db = unique_db_name();
    // Its own subjects too: tests share nothing.
    let prefix = db.clone();
    let extra = extra.iter().map(|f| f.to_string()).collect();
    let mut c = Cluster { nats: Nats::start(None), nodes: Vec::with_capacity(n), prefix, uri, db, extra };
    for _ in 0..n {
        c.add_node().await;
    }
    Some(c)
}

impl Cluster {
    /// Starts node `n{i}` (i: the next index) and adds it.
    async fn add_node(&mut self) {
        self.add_node_with_failpoints(None).await;
    }

    /// Starts node `n{i}` with these failpoints (`FAILPOINTS`) and adds it.
    async fn add_node_with_failpoints(&mut self, failpoints: Option<&str>) {
        let args = [
            "--cluster-nats",
            &self.nats.url(),
            "--node-id",
            &format!("n{}", self.nodes.len()),
            "--cluster-prefix",
            &self.prefix,
            "--cluster-failover-ms",
            &failover_ms().to_string(),
        ];
        let mut opts = Opts {
            mongo_uri: Some(self.uri.clone()),
            mongo_db: Some(self.db.clone()),
            admin: true,
            failpoints: failpoints.map(String::from),
            ..Opts::with_args(&args)
        };
        opts.extra_args.extend(self.extra.iter().cloned());
        self.nodes.push(Server::start_with(opts).await);
    }
}

/// Waits until `node`'s admin stats list exactly `expected` as live.
async fn wait_for_live_nodes(node: &Server, expected: &[&str]) {
    let deadline = Instant::now() + T;
    loop {
        let (status, stats) = node.admin("GET", "stats", None).await;
        assert_eq!(status, 200, "{stats}");
        if stats["cluster"]["live_nodes"] == serde_json::json!(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "live nodes never became {expected:?}: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes' `--cluster-failover-ms`: 1000, or `VICHE_TEST_CLUSTER_FAILOVER_MS`
/// (to measure the failover with another, docs/benchmarks.md).
fn failover_ms() -> u64 {
    std::env::var("VICHE_TEST_CLUSTER_FAILOVER_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// The node that owns `room` when `nodes` are live (as every node computes it).
fn owner_of(nodes: usize, room: &str) -> usize {
    let live: Vec<NodeId> = (0..nodes).map(|i| NodeId::from(format!("n{i}"))).collect();
    let owner = Ring::new(&live).owner(room).expect("a live node").clone();
    live.iter().position(|n| *n == owner).expect("one of them")
}

/// Sends to `room` until `stop` is set, one message at a time, retrying
/// one refused `overloaded` (its room moving between nodes) or
/// `rate_limited` with the same cid; returns the acks with when each
/// came, and stops at the first other failure (its node was killed).
fn keep_sending(
    mut conn: Connection,
    room: &'static str,
    tag: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(Ack, Instant)>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match conn.send(room, "traffic", &format!("{tag}-{}", acks.len())).await {
                Ok(ack) => acks.push((ack, Instant::now())),
                Err(ClientError::Server { code: ErrorCode::RateLimited | ErrorCode::Overloaded, .. }) => {}
                Err(e) => {
                    eprintln!("{tag}: sending stopped: {e}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acks
    })
}

/// One `send`, retried with the same cid while it is refused `overloaded`
/// or `rate_limited` (bounded by `T`); how many times it was refused
/// `overloaded`.
async fn send_through_overloaded(conn: &mut Connection, room: &str, cid: &str) -> (Ack, usize) {
    let deadline = Instant::now() + T;
    let mut overloaded = 0;
    loop {
        match conn.send(room, "body", cid).await {
            Ok(ack) => return (ack, overloaded),
            Err(ClientError::Server { code, .. })
                if matches!(code, ErrorCode::Overloaded | ErrorCode::RateLimited) && Instant::now() < deadline =>
            {
                overloaded += usize::from(code == ErrorCode::Overloaded);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("send {cid} to {room}: {e}"),
        }
    }
}

/// Receives until `conn` has every seq up to `last` (true), or `within`
/// passed (false), asserting on the way that each arrives once and in seq
/// order.
async fn try_receive_through(
    conn: &mut Connection,
    got: &mut Vec<Msg>,
    last: u64,
    who: &str,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while got.last().map_or(0, |m| m.seq) < last {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match conn.recv_msg(left).await {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => return false,
            Err(e) => panic!("{who}: waiting for seq {last}, has {:?}: {e}", seqs(got)),
        };
        let expected = got.last().map_or(1, |m| m.seq + 1);
        assert_eq!(msg.seq, expected, "{who}: seqs arrive once each, in order (after {:?})", seqs(got));
        got.push(msg);
    }
    true
}

async fn receive_through(conn: &mut Connection, got: &mut Vec<Msg>, last: u64, who: &str) {
    let done = try_receive_through(conn, got, last, who, T).await;
    assert!(done, "{who}: waited {T:?} for seq {last}, has {:?}", seqs(got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_members_on_three_nodes_sees_every_message_once_in_seq_order() {
    let test = "a_room_with_members_on_three_nodes_sees_every_message_once_in_seq_order";
    let Some(c) = cluster(test, 3).await else { return };
    // Two listening members on each node.
    let mut members = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for j in 0..2 {
            let mut conn = node.session(&format!("m{i}{j}")).await;
            conn.join("lobby", None).await.unwrap();
            members.push((format!("m{i}{j} on n{i}"), conn));
        }
    }
    // One sender on each node, all at once: the three nodes store into the
    // same room concurrently.
    const PER_NODE: usize = 40;
    let mut senders = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let mut conn = node.session(&format!("sender{i}")).await;
        conn.join("lobby", None).await.unwrap();
        senders.push(tokio::spawn(async move { send_n(&mut conn, "lobby", PER_NODE, &format!("n{i}")).await }));
    }
    let mut acks: Vec<Ack> = Vec::new();
    for sender in senders {
        acks.extend(sender.await.expect("a sender"));
    }
    let total = (3 * PER_NODE) as u64;
    let mut acked: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=total).collect::<Vec<_>>(), "every seq given once: no two nodes stored the same seq");
    let cid_of: HashMap<u64, &str> = acks.iter().map(|a| (a.seq, a.cid.as_str())).collect();

    for (who, conn) in &mut members {
        let mut got = Vec::new();
        receive_through(conn, &mut got, total, who).await;
        for m in &got {
            assert_eq!(m.cid, cid_of[&m.seq], "{who}: seq {} is the message acknowledged with it", m.seq);
        }
        assert_none(conn, "a message past the last", |f| matches!(f, ServerFrame::Msg(_))).await;
    }
    // Stored once each, dense, as any node reads it.
    let token = c.nodes[2].user("reader").await;
    let history = full_history_http(&c.nodes[2], &token, "lobby").await;
    assert_eq!(seqs(&history), (1..=total).collect::<Vec<_>>());
    // The owner stored everything and relayed it; the others forwarded
    // their senders' messages to it; nothing was fenced.
    let owner = owner_of(3, "lobby");
    for (i, node) in c.nodes.iter().enumerate() {
        let relayed = scrape_value(node, r#"viche_cluster_relayed_total{kind="msgs"}"#).await;
        let forwarded = scrape_value(node, r#"viche_cluster_forwarded_total{outcome="ack"}"#).await;
        let served = scrape_value(node, r#"viche_cluster_forwards_served_total{outcome="queued"}"#).await;
        if i == owner {
            assert!(relayed >= 1.0, "the owner n{i} relayed the messages ({relayed})");
            assert_eq!(forwarded, 0.0, "the owner n{i} forwards nothing");
            assert_eq!(served, (2 * PER_NODE) as f64, "the owner n{i} stored the others' senders' messages");
        } else {
            assert_eq!(relayed, 0.0, "n{i} owns nothing here and stores nothing");
            assert_eq!(forwarded, PER_NODE as f64, "n{i} forwarded its sender's messages to the owner");
        }
        assert_eq!(scrape_value(node, "viche_cluster_fenced_total").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_other_and_typing_crosses_nodes_but_not_back_to_the_typist() {
    let Some(c) = cluster("nodes_see_each_other_and_typing_crosses_nodes_but_not_back_to_the_typist", 2).await else {
        return;
    };
    // Each node lists both as live (admin stats).
    for node in &c.nodes {
        wait_for_live_nodes(node, &["n0", "n1"]).await;
        assert_eq!(scrape_value(node, "viche_cluster_nodes").await, 2.0);
    }
    let mut alice = c.nodes[0].session("alice").await;
    let mut alice_too = c.nodes[1].connect(&mint("alice", now_s() + 3600)).await;
    let mut bob = c.nodes[1].session("bob").await;
    for conn in [&mut alice, &mut alice_too, &mut bob] {
        conn.join("lobby", None).await.unwrap();
    }
    alice.typing("lobby").await.unwrap();
    let typing = bob.wait_for(T, |f| matches!(f, ServerFrame::Typing { .. })).await.unwrap();
    assert_eq!(typing, ServerFrame::Typing { room: "lobby".into(), user: "alice".into() });
    bob.typing("lobby").await.unwrap();
    let typing = alice.wait_for(T, |f| matches!(f, ServerFrame::Typing { .. })).await.unwrap();
    assert_eq!(typing, ServerFrame::Typing { room: "lobby".into(), user: "bob".into() });
    // Alice's own sessions, on either node, are not told she types.
    assert_none(
        &mut alice_too,
        "alice's own typing",
        |f| matches!(f, ServerFrame::Typing { user, .. } if user == "alice"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_during_a_10_s_nats_outage_arrive_in_order_after_it_and_junk_changes_nothing() {
    let test = "messages_stored_during_a_10_s_nats_outage_arrive_in_order_after_it_and_junk_changes_nothing";
    let Some(mut c) = cluster(test, 2).await else { return };
    // alice on the room's owner, bob on the other node.
    let owner = owner_of(2, "lobby");
    let mut alice = c.nodes[owner].session("alice").await;
    let mut bob = c.nodes[1 - owner].session("bob").await;
    alice.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    let (mut at_alice, mut at_bob) = (Vec::new(), Vec::new());
    let acks = send_n(&mut alice, "lobby", 5, "before").await;
    receive_through(&mut bob, &mut at_bob, acks[4].seq, "bob").await;

    // Junk on the room's subject, from a stranger on the same NATS.
    let stranger = async_nats::connect(c.nats.url()).await.expect("connect to nats-server");
    let subject = format!("{}.room.lobby", c.prefix);
    for junk in [b"\xc1 not msgpack".to_vec(), rmp_serde::to_vec_named(&serde_json::json!({"Typing": "a b"})).unwrap()]
    {
        stranger.publish(subject.clone(), junk.into()).await.unwrap();
    }
    stranger.flush().await.unwrap();
    drop(stranger);
    let deadline = Instant::now() + T;
    while scrape_value(&c.nodes[1 - owner], "viche_cluster_relay_junk_total").await < 2.0 {
        assert!(Instant::now() < deadline, "the junk was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NATS goes away for 10 s: the owner goes on storing alice's
    // messages; bob's node cannot reach the owner, and says so.
    let port = c.nats.port;
    c.nats.stop();
    let outage = Instant::now();
    let mut round = 0;
    let mut last = 0;
    let mut bob_refused = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        round += 1;
        last = send_retrying(&mut alice, "lobby", "away", &format!("away-a-{round}")).await.seq;
        match bob.send("lobby", "away", &format!("away-b-{round}")).await {
            Err(ClientError::Server { code: ErrorCode::Overloaded, .. }) => bob_refused += 1,
            // Before bob's node noticed that NATS is gone.
            Ok(ack) if bob_refused == 0 => last = last.max(ack.seq),
            other => panic!("bob's send to a room owned across a NATS outage: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(bob_refused >= 10, "{bob_refused}");
    // bob's node kept its view of the cluster: the room is not taken over.
    assert_eq!(scrape_value(&c.nodes[1 - owner], "viche_cluster_nodes").await, 2.0);
    c.nats = Nats::start(Some(port));
    // What bob missed arrives, in order, once the nodes are back on NATS
    // (the owner announces the last seq of the rooms it wrote lately);
    // then bob writes again, through the owner.
    receive_through(&mut bob, &mut at_bob, last, "bob").await;
    let (again, _) = send_through_overloaded(&mut bob, "lobby", "after").await;
    assert_eq!(again.seq, last + 1);
    receive_through(&mut alice, &mut at_alice, again.seq, "alice").await;
    receive_through(&mut bob, &mut at_bob, again.seq, "bob").await;
    assert_eq!(seqs(&at_alice), (1..=again.seq).collect::<Vec<_>>());
    assert_eq!(seqs(&at_bob), (1..=again.seq).collect::<Vec<_>>());
    // (What the owner relayed during the outage is carried late, if its
    // NATS client held it, or repaired from the store: either way, above.)
    let refused = scrape_value(&c.nodes[1 - owner], r#"viche_cluster_forwarded_total{outcome="refused"}"#).await;
    assert!(refused >= 10.0, "bob's node counted what it could not forward ({refused})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_reaches_every_session_of_both_users_on_every_node_once_in_order() {
    let Some(c) = cluster("a_dm_reaches_every_session_of_both_users_on_every_node_once_in_order", 2).await else {
        return;
    };
    c.nodes[0].user("alice").await;
    c.nodes[1].user("bob").await;
    let token = |user: &str| mint(user, now_s() + 3600);
    // Each user on both nodes; nobody joins the DM room.
    let mut alice_0 = c.nodes[0].connect(&token("alice")).await;
    let mut alice_1 = c.nodes[1].connect(&token("alice")).await;
    let mut bob_0 = c.nodes[0].connect(&token("bob")).await;
    let mut bob_1 = c.nodes[1].connect(&token("bob")).await;
    // Both sides write, from different nodes, interleaved.
    const EACH: usize = 10;
    for i in 0..EACH {
        alice_0.dm("bob", &format!("from alice {i}"), &format!("a-{i}")).await.unwrap();
        bob_1.dm("alice", &format!("from bob {i}"), &format!("b-{i}")).await.unwrap();
    }
    let last = (2 * EACH) as u64;
    for (who, conn) in [
        ("alice on n0", &mut alice_0),
        ("alice on n1", &mut alice_1),
        ("bob on n0", &mut bob_0),
        ("bob on n1", &mut bob_1),
    ] {
        let mut got = Vec::new();
        receive_through(conn, &mut got, last, who).await;
        assert!(got.iter().all(|m| m.room == "dm:alice:bob"), "{who}: {got:?}");
        assert_none(conn, "a DM twice", |f| matches!(f, ServerFrame::Msg(_))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_traffic_loses_no_acknowledged_message_and_its_room_is_taken_over_within_seconds() {
    let test = "the_owner_killed_mid_traffic_loses_no_acknowledged_message_and_its_room_is_taken_over_within_seconds";
    let Some(mut c) = cluster(test, 3).await else { return };
    let token = |user: &str| mint(user, now_s() + 3600);
    let owner = owner_of(3, "lobby");
    let mut listeners = Vec::new();
    for i in 0..3 {
        c.nodes[i].user(&format!("member{i}")).await;
        c.nodes[i].user(&format!("sender{i}")).await;
        let mut conn = c.nodes[i].connect(&token(&format!("member{i}"))).await;
        conn.join("lobby", None).await.unwrap();
        listeners.push(conn);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..3 {
        let mut conn = c.nodes[i].connect(&token(&format!("sender{i}"))).await;
        conn.join("lobby", None).await.unwrap();
        senders.push(keep_sending(conn, "lobby", format!("s{i}"), stop.clone()));
    }
    // Traffic from all three, then the room's owner dies mid-traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[owner].kill9();
    let killed_at = Instant::now();
    let mut orphan = listeners.remove(owner);
    let mut seen = Vec::new();
    loop {
        match orphan.recv_msg(T).await {
            Ok(msg) => {
                let expected = seen.last().map_or(1, |m: &Msg| m.seq + 1);
                assert_eq!(msg.seq, expected, "the owner's member before the kill: in order, once each");
                seen.push(msg);
            }
            Err(e) if e.is_timeout() => panic!("the owner's member's connection should close with it: {e}"),
            Err(_) => break, // closed with its node
        }
    }
    // Its member comes back on another node, from the last seq it saw.
    let other = (owner + 1) % 3;
    let mut orphan = c.nodes[other].connect(&token(&format!("member{owner}"))).await;
    let since = seen.last().map_or(0, |m| m.seq);
    orphan.join("lobby", Some(since)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<(Ack, Instant)> = Vec::new();
    for sender in senders {
        acks.extend(sender.await.expect("a sender"));
    }
    let last = acks.iter().map(|(a, _)| a.seq).max().expect("acknowledged messages");
    // Every acknowledged message is stored, the seqs dense.
    let reader = c.nodes[other].user("reader").await;
    let history = full_history_http(&c.nodes[other], &reader, "lobby").await;
    let stored = seqs(&history);
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense");
    for (ack, _) in &acks {
        assert_eq!(history[ack.seq as usize - 1].cid, ack.cid, "acknowledged seq {} is stored as acked", ack.seq);
    }
    // The survivors' members, and the resumed one, have everything once, in order.
    let total = stored.len() as u64;
    assert!(total >= last);
    receive_through(&mut orphan, &mut seen, total, "the owner's member, resumed").await;
    for (i, conn) in listeners.iter_mut().enumerate() {
        let mut got = Vec::new();
        receive_through(conn, &mut got, total, &format!("a survivor's member ({i})")).await;
    }
    // The failover: from the kill to the first message stored by the new
    // owner (acknowledged past every seq acknowledged before the kill).
    let before = acks.iter().filter(|(_, at)| *at < killed_at).map(|(a, _)| a.seq).max().unwrap_or(0);
    let first_after = acks
        .iter()
        .filter(|(a, at)| *at >= killed_at && a.seq > before)
        .map(|(_, at)| *at)
        .min()
        .expect("the survivors stored messages after the kill");
    let failover = first_after - killed_at;
    let failover_ms = failover_ms();
    eprintln!("failover: the first message stored by the new owner was acknowledged {failover:?} after the kill (--cluster-failover-ms {failover_ms})");
    // The failover time plus a second, and two more for a loaded machine.
    assert!(failover < Duration::from_millis(failover_ms + 1000 + 2000), "{failover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_traffic_takes_its_rooms_over_and_loses_nothing() {
    let test = "a_node_joining_mid_traffic_takes_its_rooms_over_and_loses_nothing";
    let Some(mut c) = cluster(test, 2).await else { return };
    // A room n0 owns while n0 and n1 are live, and n2 once it joins.
    let room = (0..).map(|i| format!("moving{i}")).find(|r| owner_of(2, r) == 0 && owner_of(3, r) == 2).unwrap();
    let room: &'static str = Box::leak(room.into_boxed_str());
    let token = |user: &str| mint(user, now_s() + 3600);
    c.nodes[0].user("member0").await;
    c.nodes[0].user("sender0").await;
    c.nodes[1].user("member2").await;
    let mut member0 = c.nodes[0].connect(&token("member0")).await;
    member0.join(room, None).await.unwrap();
    let mut sender = c.nodes[0].connect(&token("sender0")).await;
    sender.join(room, None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = keep_sending(sender, room, "s0".into(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A third node starts mid-traffic; a member joins there, replaying
    // from the start, then writes too.
    c.add_node().await;
    let mut member2 = c.nodes[2].connect(&token("member2")).await;
    member2.join(room, Some(0)).await.unwrap();
    // (Refused `overloaded` while the room moves to its new owner.)
    let (ack, _) = send_through_overloaded(&mut member2, room, "new-node").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let acks = sending.await.expect("the sender");
    let last = acks.iter().map(|(a, _)| a.seq).max().unwrap().max(ack.seq);
    for (who, conn) in [("member0", &mut member0), ("member2 on the new node", &mut member2)] {
        let mut got = Vec::new();
        receive_through(conn, &mut got, last, who).await;
        assert_eq!(got[ack.seq as usize - 1].cid, "new-node", "{who}");
    }
    // The room moved: the new node stored (and relayed) its messages, n0
    // forwarded its sender's to it.
    let relayed = scrape_value(&c.nodes[2], r#"viche_cluster_relayed_total{kind="msgs"}"#).await;
    assert!(relayed >= 1.0, "the new node stores the room ({relayed})");
    let forwarded = scrape_value(&c.nodes[0], r#"viche_cluster_forwarded_total{outcome="ack"}"#).await;
    assert!(forwarded >= 1.0, "n0 forwards to the room's new owner ({forwarded})");
    let (_, stats) = c.nodes[2].admin("GET", "stats", None).await;
    assert_eq!(stats["cluster"]["live_nodes"], serde_json::json!(["n0", "n1", "n2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_room_opening_on_a_node_first_replays_what_other_nodes_stored_for_its_sessions() {
    let test = "a_dm_room_opening_on_a_node_first_replays_what_other_nodes_stored_for_its_sessions";
    let Some(mut c) = cluster(test, 2).await else { return };
    // alice on the DM room's owner, bob on the other node.
    let owner = owner_of(2, "dm:alice:bob");
    c.nodes[owner].user("alice").await;
    c.nodes[1 - owner].user("bob").await;
    let token = |user: &str| mint(user, now_s() + 3600);
    let mut alice = c.nodes[owner].connect(&token("alice")).await;
    let mut bob = c.nodes[1 - owner].connect(&token("bob")).await;
    // With NATS away, nothing is relayed: bob's node learns of alice's DM
    // only from MongoDB, when bob's own DM opens the room there (which
    // cannot reach the owner, and says so).
    let port = c.nats.port;
    c.nats.stop();
    let first = alice.dm("bob", "stored by the owner", "a-1").await.unwrap();
    assert_eq!(first.seq, 1);
    match bob.dm("alice", "from bob", "b-1").await {
        Err(ClientError::Server { code: ErrorCode::Overloaded, .. }) => {}
        other => panic!("bob's DM across a NATS outage: {other:?}"),
    }
    let mut got = Vec::new();
    receive_through(&mut bob, &mut got, 1, "bob").await;
    assert_eq!(got[0].cid, "a-1");
    // Once NATS is back bob's DM goes through the owner; nobody gets
    // anything twice.
    c.nats = Nats::start(Some(port));
    let deadline = Instant::now() + T;
    let second = loop {
        match bob.dm("alice", "from bob", "b-1").await {
            Ok(ack) => break ack,
            Err(ClientError::Server { code: ErrorCode::Overloaded, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bob's DM after the outage: {e}"),
        }
    };
    assert_eq!(second.seq, 2);
    receive_through(&mut bob, &mut got, 2, "bob").await;
    let mut at_alice = Vec::new();
    receive_through(&mut alice, &mut at_alice, 2, "alice").await;
    assert_eq!(at_alice.iter().map(|m| m.cid.as_str()).collect::<Vec<_>>(), ["a-1", "b-1"]);
    assert_none(&mut bob, "a DM twice", |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_none(&mut alice, "a DM twice", |f| matches!(f, ServerFrame::Msg(_))).await;
}

/// Two nodes that both believe they own a room (one forced by the
/// `cluster.owner` failpoint to believe it owns every room) and both take
/// sends for it: the store fences them. Each acknowledged message is
/// stored once, the seqs are dense, and in seq order the owner epochs of
/// the stored messages never go back: once a node's claim has stored a
/// message, a node with an older claim stores nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_both_believe_they_own_a_room_cannot_both_store_in_it() {
    let test = "two_nodes_that_both_believe_they_own_a_room_cannot_both_store_in_it";
    let Some(uri) = mongo_or_skip(test) else { return };
    let mut c = cluster(test, 1).await.expect("MongoDB is there");
    // The room's rightful owner is n0 or n1; the other one believes it owns
    // every room.
    let room = (0..).map(|i| format!("contested{i}")).find(|r| owner_of(2, r) == 0).unwrap();
    let room: &'static str = Box::leak(room.into_boxed_str());
    c.add_node_with_failpoints(Some("cluster.owner=return")).await;
    wait_for_live_nodes(&c.nodes[0], &["n0", "n1"]).await;
    wait_for_live_nodes(&c.nodes[1], &["n0", "n1"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for j in 0..2 {
            let mut conn = node.session(&format!("s{i}{j}")).await;
            conn.join(room, None).await.unwrap();
            senders.push(keep_sending(conn, room, format!("s{i}{j}"), stop.clone()));
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<Ack> = Vec::new();
    for sender in senders {
        acks.extend(sender.await.expect("a sender").into_iter().map(|(a, _)| a));
    }
    // Stored once each, dense, as acknowledged.
    let mut acked: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(acked.len(), acks.len(), "no seq acknowledged twice");
    let client = mongodb::Client::with_uri_str(&uri).await.expect("connecting to MongoDB");
    let messages = client.database(&c.db).collection::<mongodb::bson::Document>("messages");
    let docs: Vec<mongodb::bson::Document> = futures_util::TryStreamExt::try_collect(
        messages.find(mongodb::bson::doc! { "room": room }).sort(mongodb::bson::doc! { "seq": 1 }).await.unwrap(),
    )
    .await
    .unwrap();
    let stored: Vec<u64> = docs.iter().map(|d| d.get_i64("seq").unwrap() as u64).collect();
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense, each seq once");
    for ack in &acks {
        let doc = &docs[ack.seq as usize - 1];
        assert_eq!(doc.get_str("cid").unwrap(), ack.cid, "seq {} is stored as acknowledged", ack.seq);
    }
    let mut cids: Vec<&str> = docs.iter().map(|d| d.get_str("cid").unwrap()).collect();
    cids.sort_unstable();
    let n = cids.len();
    cids.dedup();
    assert_eq!(cids.len(), n, "no message stored twice");
    // The fence: in seq order, epochs never go back.
    let epochs: Vec<i64> = docs.iter().map(|d| d.get_i64("epoch").expect("an owner epoch")).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "a node with an older claim stored after a newer one: {epochs:?}");
    // Both nodes wrote the room as its owner, so one was fenced.
    let fenced = scrape_value(&c.nodes[0], "viche_cluster_fenced_total").await
        + scrape_value(&c.nodes[1], "viche_cluster_fenced_total").await;
    assert!(fenced >= 1.0, "the two would-be owners met in the store");
    let claims = epochs.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(claims >= 2, "messages of both claims were stored: {epochs:?}");
}

/// Waits for `presence` of `user` with `online` in `room` on `conn`.
async fn wait_presence(conn: &mut Connection, who: &str, user: &str, online: bool) {
    let want = ServerFrame::Presence { room: "lobby".into(), user: user.into(), online };
    let got = conn.wait_for(T, |f| *f == want).await;
    assert!(got.is_ok(), "{who}: no {want:?}: {got:?}");
}

/// Whether `user` is in `room` as `conn`'s node lists it (`members`).
async fn lists(conn: &mut Connection, user: &str) -> bool {
    let (users, _) = conn.members("lobby", None).await.unwrap();
    users.iter().any(|u| u == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_members_span_the_nodes_and_a_dead_node_takes_its_users_with_it() {
    let test = "presence_and_members_span_the_nodes_and_a_dead_node_takes_its_users_with_it";
    let Some(mut c) = cluster(test, 3).await else { return };
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        c.nodes[i].user(user).await;
    }
    let token = |user: &str| mint(user, now_s() + 3600);
    let mut alice = c.nodes[0].connect(&token("alice")).await;
    alice.join("lobby", None).await.unwrap();
    let mut bob = c.nodes[1].connect(&token("bob")).await;
    let joined = bob.join("lobby", None).await.unwrap();
    // Bob learns of alice in his ok, or (the room was not open on his node
    // yet) from her node's roster a moment later.
    if !joined.members.iter().any(|u| u == "alice") {
        wait_presence(&mut bob, "bob", "alice", true).await;
    }
    wait_presence(&mut alice, "alice", "bob", true).await;
    let mut carol = c.nodes[2].connect(&token("carol")).await;
    carol.join("lobby", None).await.unwrap();
    wait_presence(&mut alice, "alice", "carol", true).await;
    wait_presence(&mut bob, "bob", "carol", true).await;
    let deadline = Instant::now() + T;
    while !(lists(&mut carol, "alice").await && lists(&mut carol, "bob").await) {
        assert!(Instant::now() < deadline, "carol's node never listed alice and bob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice on a second node too: still one presence; she leaves her first
    // node: still present; she leaves the second: gone, for everyone.
    let mut alice_2 = c.nodes[2].connect(&token("alice")).await;
    alice_2.join("lobby", None).await.unwrap();
    alice.leave("lobby").await.unwrap();
    assert_none(
        &mut bob,
        "alice's presence changing while she has a session in the room",
        |f| matches!(f, ServerFrame::Presence { user, .. } if user == "alice"),
    )
    .await;
    assert!(lists(&mut bob, "alice").await, "alice is still in the room, on n2");
    alice_2.leave("lobby").await.unwrap();
    wait_presence(&mut bob, "bob", "alice", false).await;
    wait_presence(&mut carol, "carol", "alice", false).await;
    // Carol's node dies: after the failover time she is gone for the others.
    c.nodes[2].kill9();
    wait_presence(&mut bob, "bob", "carol", false).await;
    assert!(!lists(&mut bob, "carol").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_asks_for_a_password_admits_only_nodes_that_give_the_right_one() {
    let Some(uri) = mongo_or_skip("a_nats_that_asks_for_a_password_admits_only_nodes_that_give_the_right_one") else {
        return;
    };
    let nats = Nats::start_with(None, &["--user", "viche", "--pass", "cluster-secret-1"]);
    let password = ["--cluster-nats-user", "viche", "--cluster-nats-password", "cluster-secret-1"];
    let c = two_nodes_that_chat(nats, uri, &password).await;

    // A node with the wrong password, or none, does not start, and says why.
    for creds in [&["--cluster-nats-user", "viche", "--cluster-nats-password", "wrong-password"][..], &[]] {
        assert_node_cannot_reach_nats(&c, &c.nats.url(), creds).await;
    }
    wait_for_live_nodes(&c.nodes[0], &["n0", "n1"]).await;
}

/// Two nodes on `nats` (and a fresh database), each with `flags`, that
/// see each other and carry a message from one to the other.
async fn two_nodes_that_chat(nats: Nats, uri: String, flags: &[&str]) -> Cluster {
    let db = unique_db_name();
    let extra = flags.iter().map(|f| f.to_string()).collect();
    let mut c = Cluster { nats, nodes: Vec::new(), prefix: db.clone(), uri, db, extra };
    c.add_node().await;
    c.add_node().await;
    for node in &c.nodes {
        wait_for_live_nodes(node, &["n0", "n1"]).await;
    }
    let mut alice = c.nodes[0].session("alice").await;
    let mut bob = c.nodes[1].session("bob").await;
    alice.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    let ack = alice.send("lobby", "from one node to the other", "hop-1").await.unwrap();
    let mut got = Vec::new();
    receive_through(&mut bob, &mut got, ack.seq, "bob").await;
    c
}

/// A node started on `c`'s database with `nats_url` and `flags` exits
/// non-zero, saying it cannot reach NATS.
async fn assert_node_cannot_reach_nats(c: &Cluster, nats_url: &str, flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_viche"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VICHE_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--mongo-uri", &c.uri, "--mongo-db", &c.db])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--cluster-nats", nats_url, "--node-id", "intruder", "--cluster-prefix", &c.prefix])
        .args(flags)
        .kill_on_drop(true);
    let out = tokio::time::timeout(T, cmd.output()).await.expect("the node gives up in time").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node with {flags:?} started: {stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_requires_tls_admits_only_nodes_that_trust_its_certificate() {
    let test = "a_nats_that_requires_tls_admits_only_nodes_that_trust_its_certificate";
    let Some(uri) = mongo_or_skip(test) else { return };
    let certs = tempfile::tempdir().unwrap();
    let write_cert = |name: &str| {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let (pem, key) = (certs.path().join(format!("{name}.pem")), certs.path().join(format!("{name}-key.pem")));
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&key, key_pair.serialize_pem()).unwrap();
        (pem.to_string_lossy().into_owned(), key.to_string_lossy().into_owned())
    };
    let (nats_pem, nats_key) = write_cert("nats");
    let (other_pem, _) = write_cert("other");
    let nats = Nats::start_with(None, &["--tls", "--tlscert", &nats_pem, "--tlskey", &nats_key]);
    let c = two_nodes_that_chat(nats, uri, &["--cluster-nats-ca", &nats_pem]).await;

    // Without TLS, trusting another certificate, or asking for TLS
    // without trusting this one: the node does not start, and says why.
    let tls_url = format!("tls://127.0.0.1:{}", c.nats.port);
    assert_node_cannot_reach_nats(&c, &c.nats.url(), &[]).await;
    assert_node_cannot_reach_nats(&c, &c.nats.url(), &["--cluster-nats-ca", &other_pem]).await;
    assert_node_cannot_reach_nats(&c, &tls_url, &[]).await;
    wait_for_live_nodes(&c.nodes[0], &["n0", "n1"]).await;
}

/// What a stranger on the cluster's NATS publishes on a node's forward
/// subject: junk is answered `invalid`, a forward a session could not have
/// sent (a DM room of others, a bad cid) is answered as the session would
/// have been, one without a reply subject is dropped, and one older than
/// its sender's deadline is dropped unanswered; each is counted, and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_late_forwards_are_refused_and_store_nothing() {
    let test = "junk_and_late_forwards_are_refused_and_store_nothing";
    let Some(c) = cluster(test, 2).await else { return };
    let owner = owner_of(2, "lobby");
    let stranger = async_nats::connect(c.nats.url()).await.expect("connect to nats-server");
    let subject = format!("{}.node.n{owner}.write", c.prefix);
    let ask = |payload: Vec<u8>| {
        let (stranger, subject) = (stranger.clone(), subject.clone());
        async move {
            let reply = tokio::time::timeout(Duration::from_secs(2), stranger.request(subject, payload.into())).await;
            reply.ok().map(|r| rmp_serde::from_slice::<serde_json::Value>(&r.expect("a reply").payload).unwrap())
        }
    };
    let forward = |room: &str, from: &str, cid: &str, sent_ms: u64| {
        rmp_serde::to_vec_named(&serde_json::json!({
            "sent_ms": sent_ms, "room": room, "from": from, "cid": cid, "body": "hi",
            "event": { "Message": { "reply_to": null } },
        }))
        .unwrap()
    };
    let answer = ask(b"\xc1 not msgpack".to_vec()).await.expect("junk is answered");
    assert_eq!(answer["Error"]["code"], "invalid", "{answer}");
    let answer = ask(forward("dm:alice:bob", "mallory", "c1", now_ms())).await.expect("answered");
    assert_eq!(answer["Error"]["code"], "forbidden", "{answer}");
    let answer = ask(forward("lobby", "mallory", "", now_ms())).await.expect("answered");
    assert_eq!(answer["Error"]["code"], "invalid", "{answer}");
    // No reply subject: nobody to answer.
    stranger.publish(subject.clone(), forward("lobby", "mallory", "c2", now_ms()).into()).await.unwrap();
    // Ten seconds old: its sender gave up on it long ago.
    assert!(ask(forward("lobby", "mallory", "c3", now_ms() - 10_000)).await.is_none(), "a late forward is dropped");
    let node = &c.nodes[owner];
    let junk = scrape_value(node, r#"viche_cluster_forwards_served_total{outcome="junk"}"#).await;
    assert_eq!(junk, 4.0, "junk, forbidden, invalid cid, no reply subject");
    let late = scrape_value(node, r#"viche_cluster_forwards_served_total{outcome="late"}"#).await;
    assert_eq!(late, 1.0);
    assert_eq!(scrape_value(node, "viche_messages_stored_total").await, 0.0, "nothing was stored");
}

/// Presence lost between nodes is corrected: each node restates who is in
/// its rooms every `--cluster-roster-ms`, which replaces what the others
/// believed of it, and the users of a node silent for three periods are
/// forgotten. (A stranger on NATS plays the lost frames: a `Presence`
/// claiming n1 has a user it does not have, and one from a node that
/// never restates anything.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_between_nodes_is_corrected_by_the_periodic_roster() {
    let test = "presence_lost_between_nodes_is_corrected_by_the_periodic_roster";
    let Some(c) = cluster_with(test, 2, &["--cluster-roster-ms", "1000"]).await else { return };
    let mut alice = c.nodes[0].session("alice").await;
    let mut bob = c.nodes[1].session("bob").await;
    alice.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    wait_presence(&mut alice, "alice", "bob", true).await;
    let stranger = async_nats::connect(c.nats.url()).await.expect("connect to nats-server");
    let subject = format!("{}.room.lobby", c.prefix);
    for (node, user) in [("n1", "phantom"), ("ghost", "casper")] {
        let frame = serde_json::json!({ "Presence": { "room": "lobby", "node": node, "user": user, "online": true } });
        stranger.publish(subject.clone(), rmp_serde::to_vec_named(&frame).unwrap().into()).await.unwrap();
    }
    stranger.flush().await.unwrap();
    wait_presence(&mut alice, "alice", "phantom", true).await;
    wait_presence(&mut alice, "alice", "casper", true).await;
    // n1's next roster does not name phantom; ghost never speaks again.
    wait_presence(&mut alice, "alice", "phantom", false).await;
    wait_presence(&mut alice, "alice", "casper", false).await;
    // bob, really on n1, stays.
    let (users, _) = alice.members("lobby", None).await.unwrap();
    assert_eq!(users, ["alice", "bob"]);
}

/// The room's owner hangs in its store (a failpoint: its first append
/// sleeps 6 s) while a message forwarded to it waits: the sender is
/// answered `overloaded` at the forward's 5 s deadline, and its retry with
/// the same cid is acknowledged with the one seq the message got; it is
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_whose_owner_hangs_is_answered_overloaded_and_its_retry_is_stored_once() {
    let test = "a_forward_whose_owner_hangs_is_answered_overloaded_and_its_retry_is_stored_once";
    let Some(mut c) = cluster_with(test, 0, &["--store-timeout-ms", "10000"]).await else { return };
    let owner = owner_of(2, "lobby");
    for i in 0..2 {
        let failpoints = (i == owner).then_some("store.append=1*sleep(6000)");
        c.add_node_with_failpoints(failpoints).await;
    }
    let mut alice = c.nodes[1 - owner].session("alice").await;
    alice.join("lobby", None).await.unwrap();
    match alice.send("lobby", "slow", "slow-1").await {
        Err(ClientError::Server { code: ErrorCode::Overloaded, message, .. }) => {
            assert!(message.contains("did not answer within 5000 ms"), "{message}");
        }
        other => panic!("a forward to a hung owner: {other:?}"),
    }
    let (ack, _) = send_through_overloaded(&mut alice, "lobby", "slow-1").await;
    assert_eq!(ack.seq, 1);
    let history = full_history_http(&c.nodes[owner], &c.nodes[owner].user("reader").await, "lobby").await;
    assert_eq!(history.iter().map(|m| (m.seq, m.cid.as_str())).collect::<Vec<_>>(), [(1, "slow-1")]);
    let node = &c.nodes[1 - owner];
    assert_eq!(scrape_value(node, r#"viche_cluster_forwarded_total{outcome="timeout"}"#).await, 1.0);
}

/// A client that floods a room owned by another node, without waiting for
/// its acks, while the owner is slow (each commit takes 1.5 s): forwards
/// waiting for the owner count against the user's writer share (2 here),
/// so past it its sends are refused `overloaded` at once, and another
/// user still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_flooding_a_room_owned_elsewhere_is_held_to_its_share() {
    let test = "a_user_flooding_a_room_owned_elsewhere_is_held_to_its_share";
    let Some(mut c) = cluster_with(test, 0, &["--writer-queue-per-user-max", "2"]).await else { return };
    let owner = owner_of(2, "lobby");
    for i in 0..2 {
        c.add_node_with_failpoints((i == owner).then_some("store.append=sleep(1500)")).await;
    }
    let mut greedy = c.nodes[1 - owner].session("greedy").await;
    greedy.join("lobby", None).await.unwrap();
    let reqs: Vec<u64> = (0..8).map(|_| greedy.alloc_ref()).collect();
    let frames: Vec<viche_client::ClientFrame> = reqs
        .iter()
        .enumerate()
        .map(|(i, req)| viche_client::ClientFrame::Send {
            req: *req,
            room: "lobby".into(),
            body: "x".into(),
            cid: format!("g{i}"),
            reply_to: None,
        })
        .collect();
    greedy.send_frames(&frames).await.unwrap();
    let (mut acked, mut refused) = (0, 0);
    for req in &reqs {
        match greedy.wait_reply(*req, T).await {
            Ok(ServerFrame::Ack { .. }) => acked += 1,
            Err(ClientError::Server { code: ErrorCode::Overloaded, message, .. }) => {
                assert!(message.contains("too many of your messages"), "{message}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((acked, refused), (2, 6), "two forwarded and acknowledged, the rest refused at once");
    let mut patient = c.nodes[1 - owner].session("patient").await;
    patient.join("lobby", None).await.unwrap();
    patient.send("lobby", "still room for me", "p1").await.expect("another user is not refused");
    let forwarded = scrape_value(&c.nodes[1 - owner], r#"viche_cluster_forwarded_total{outcome="ack"}"#).await;
    assert_eq!(forwarded, 3.0);
}
