//! A room whose members are spread over the nodes of one cluster (one
//! `nats-server`, one MongoDB database, several `viche` processes): every
//! member sees every message once, in seq order, whichever node stored
//! it; a DM reaches every session of both users; typing crosses nodes;
//! messages stored while NATS is away arrive, in order, once it is back;
//! junk on a room's subject changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use viche_client::{Ack, ClientError, Connection, ErrorCode, Msg, ServerFrame};

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
    let uri = mongo_or_skip(test)?;
    let db = unique_db_name();
    // Its own subjects too: tests share nothing.
    let prefix = db.clone();
    let mut c = Cluster { nats: Nats::start(None), nodes: Vec::with_capacity(n), prefix, uri, db, extra: Vec::new() };
    for _ in 0..n {
        c.add_node().await;
    }
    Some(c)
}

impl Cluster {
    /// Starts node `n{i}` (i: the next index) and adds it.
    async fn add_node(&mut self) {
        let args = [
            "--cluster-nats",
            &self.nats.url(),
            "--node-id",
            &format!("n{}", self.nodes.len()),
            "--cluster-prefix",
            &self.prefix,
            "--cluster-failover-ms",
            "1000",
        ];
        let mut opts = Opts {
            mongo_uri: Some(self.uri.clone()),
            mongo_db: Some(self.db.clone()),
            admin: true,
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

/// Sends to `room` until `stop` is set, one message at a time; returns
/// the acks, and stops at the first failure (its node was killed).
fn keep_sending(mut conn: Connection, room: &'static str, tag: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Ack>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match conn.send(room, "traffic", &format!("{tag}-{}", acks.len())).await {
                Ok(ack) => acks.push(ack),
                Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => {}
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acks
    })
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
    // Each node saw the others' messages arrive over NATS.
    for node in &c.nodes {
        let relayed = scrape_value(node, r#"viche_cluster_relayed_total{kind="msgs"}"#).await;
        assert!(relayed >= 1.0, "node {} relayed its messages ({relayed})", node.port());
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
    let mut alice = c.nodes[0].session("alice").await;
    let mut bob = c.nodes[1].session("bob").await;
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
    while scrape_value(&c.nodes[1], "viche_cluster_relay_junk_total").await < 2.0 {
        assert!(Instant::now() < deadline, "the junk was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NATS goes away for 10 s; both nodes go on storing their own
    // senders' messages meanwhile.
    let port = c.nats.port;
    c.nats.stop();
    let outage = Instant::now();
    let mut round = 0;
    let mut last = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        round += 1;
        send_retrying(&mut alice, "lobby", "away", &format!("away-a-{round}")).await;
        last = send_retrying(&mut bob, "lobby", "away", &format!("away-b-{round}")).await.seq;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.nats = Nats::start(Some(port));
    // Nobody writes now: what each side missed arrives anyway, in order,
    // once the nodes are back on NATS (each announces the last seq of the
    // rooms it wrote lately).
    receive_through(&mut alice, &mut at_alice, last, "alice").await;
    receive_through(&mut bob, &mut at_bob, last, "bob").await;
    assert_eq!(seqs(&at_alice), (1..=last).collect::<Vec<_>>());
    assert_eq!(seqs(&at_bob), (1..=last).collect::<Vec<_>>());
    let repairs: f64 = scrape_value(&c.nodes[0], "viche_gap_repairs_total").await
        + scrape_value(&c.nodes[1], "viche_gap_repairs_total").await;
    assert!(repairs >= 1.0, "what NATS did not carry was repaired from the store");
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
async fn a_node_killed_mid_traffic_loses_no_acknowledged_message_and_its_clients_resume_on_another() {
    let test = "a_node_killed_mid_traffic_loses_no_acknowledged_message_and_its_clients_resume_on_another";
    let Some(mut c) = cluster(test, 3).await else { return };
    let token = |user: &str| mint(user, now_s() + 3600);
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
    // Traffic from all three, then node 1 dies mid-traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[1].kill9();
    let mut member1 = listeners.remove(1);
    let mut seen1 = Vec::new();
    loop {
        match member1.recv_msg(T).await {
            Ok(msg) => {
                let expected = seen1.last().map_or(1, |m: &Msg| m.seq + 1);
                assert_eq!(msg.seq, expected, "member1 before the kill: in order, once each");
                seen1.push(msg);
            }
            Err(e) if e.is_timeout() => panic!("member1's connection should close with its node: {e}"),
            Err(_) => break, // closed with its node
        }
    }
    // Its member comes back on node 2, from the last seq it saw.
    let mut member1 = c.nodes[2].connect(&token("member1")).await;
    let since = seen1.last().map_or(0, |m| m.seq);
    member1.join("lobby", Some(since)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<Ack> = Vec::new();
    for sender in senders {
        acks.extend(sender.await.expect("a sender"));
    }
    let last = acks.iter().map(|a| a.seq).max().expect("acknowledged messages");
    // Every acknowledged message is stored, the seqs dense.
    let reader = c.nodes[0].user("reader").await;
    let history = full_history_http(&c.nodes[0], &reader, "lobby").await;
    let stored = seqs(&history);
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense");
    for ack in &acks {
        assert_eq!(history[ack.seq as usize - 1].cid, ack.cid, "acknowledged seq {} is stored as acked", ack.seq);
    }
    // The survivors' members, and the resumed one, have everything once, in order.
    let total = stored.len() as u64;
    assert!(total >= last);
    receive_through(&mut member1, &mut seen1, total, "member1, resumed on n2").await;
    for (conn, who) in listeners.iter_mut().zip(["member0", "member2"]) {
        let mut got = Vec::new();
        receive_through(conn, &mut got, total, who).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_traffic_serves_the_room_at_once_and_loses_nothing() {
    let test = "a_node_joining_mid_traffic_serves_the_room_at_once_and_loses_nothing";
    let Some(mut c) = cluster(test, 2).await else { return };
    let token = |user: &str| mint(user, now_s() + 3600);
    c.nodes[0].user("member0").await;
    c.nodes[0].user("sender0").await;
    c.nodes[1].user("member2").await;
    let mut member0 = c.nodes[0].connect(&token("member0")).await;
    member0.join("lobby", None).await.unwrap();
    let mut sender = c.nodes[0].connect(&token("sender0")).await;
    sender.join("lobby", None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = keep_sending(sender, "lobby", "s0".into(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A third node starts mid-traffic; a member joins there, replaying
    // from the start, then writes too.
    c.add_node().await;
    let mut member2 = c.nodes[2].connect(&token("member2")).await;
    member2.join("lobby", Some(0)).await.unwrap();
    let ack = member2.send("lobby", "from the new node", "new-node").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let last = sending.await.expect("the sender").iter().map(|a| a.seq).max().unwrap().max(ack.seq);
    for (who, conn) in [("member0", &mut member0), ("member2 on the new node", &mut member2)] {
        let mut got = Vec::new();
        receive_through(conn, &mut got, last, who).await;
        assert_eq!(got[ack.seq as usize - 1].cid, "new-node", "{who}");
    }
    let (_, stats) = c.nodes[2].admin("GET", "stats", None).await;
    assert!(
        stats["cluster"]["live_nodes"].as_array().is_some_and(|n| n.len() == 3) || {
            // Heartbeats every third of the failover time: seen within it.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            c.nodes[2].admin("GET", "stats", None).await.1["cluster"]["live_nodes"]
                == serde_json::json!(["n0", "n1", "n2"])
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_room_opening_on_a_node_first_replays_what_other_nodes_stored_for_its_sessions() {
    let test = "a_dm_room_opening_on_a_node_first_replays_what_other_nodes_stored_for_its_sessions";
    let Some(mut c) = cluster(test, 2).await else { return };
    c.nodes[0].user("alice").await;
    c.nodes[1].user("bob").await;
    let token = |user: &str| mint(user, now_s() + 3600);
    let mut alice = c.nodes[0].connect(&token("alice")).await;
    let mut bob = c.nodes[1].connect(&token("bob")).await;
    // With NATS away, nothing is relayed: bob's node learns of alice's DM
    // only from MongoDB, when bob's own DM opens the room there.
    let port = c.nats.port;
    c.nats.stop();
    let first = alice.dm("bob", "stored on n0", "a-1").await.unwrap();
    let second = bob.dm("alice", "stored on n1", "b-1").await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    let mut got = Vec::new();
    receive_through(&mut bob, &mut got, 2, "bob on n1").await;
    assert_eq!(got.iter().map(|m| m.cid.as_str()).collect::<Vec<_>>(), ["a-1", "b-1"]);
    // Once NATS is back, alice gets bob's, and nobody gets anything twice.
    c.nats = Nats::start(Some(port));
    let mut at_alice = Vec::new();
    receive_through(&mut alice, &mut at_alice, 2, "alice on n0").await;
    assert_none(&mut bob, "a DM twice", |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_none(&mut alice, "a DM twice", |f| matches!(f, ServerFrame::Msg(_))).await;
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
    let db = unique_db_name();
    let password = ["--cluster-nats-user", "viche", "--cluster-nats-password", "cluster-secret-1"];
    let extra = password.map(String::from).to_vec();
    let mut c = Cluster { nats, nodes: Vec::new(), prefix: db.clone(), uri: uri.clone(), db: db.clone(), extra };
    c.add_node().await;
    c.add_node().await;
    for node in &c.nodes {
        wait_for_live_nodes(node, &["n0", "n1"]).await;
    }
    let mut alice = c.nodes[0].session("alice").await;
    let mut bob = c.nodes[1].session("bob").await;
    alice.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    let ack = alice.send("lobby", "over an authenticated NATS", "auth-1").await.unwrap();
    let mut got = Vec::new();
    receive_through(&mut bob, &mut got, ack.seq, "bob").await;

    // A node with the wrong password, or none, does not start, and says why.
    for creds in [&["--cluster-nats-user", "viche", "--cluster-nats-password", "wrong-password"][..], &[]] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_viche"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VICHE_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--mongo-uri", &uri, "--mongo-db", &db])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--cluster-nats", &c.nats.url(), "--node-id", "intruder", "--cluster-prefix", &c.prefix])
            .args(creds)
            .kill_on_drop(true);
        let out = tokio::time::timeout(T, cmd.output()).await.expect("the node gives up in time").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a node without the right password started: {stderr}");
        assert!(stderr.contains("cannot reach NATS"), "{stderr}");
    }
    wait_for_live_nodes(&c.nodes[0], &["n0", "n1"]).await;
}
