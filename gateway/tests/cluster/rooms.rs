//! A room whose members are spread over the nodes of one cluster (one
//! `nats-server`, one MongoDB database, several `viche` processes): every
//! member sees every message once, in seq order, whichever node stored
//! it; a DM reaches every session of both users; typing crosses nodes;
//! messages stored while NATS is away arrive, in order, once it is back;
//! junk on a room's subject changes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use viche_client::{Ack, Connection, Msg, ServerFrame};

use crate::common::*;

/// The nodes of one test cluster, and its NATS.
struct Cluster {
    nats: Nats,
    nodes: Vec<Server>,
    prefix: String,
}

/// `n` nodes on one NATS and one fresh database; `None` to skip (no
/// MongoDB outside CI).
async fn cluster(test: &str, n: usize) -> Option<Cluster> {
    let uri = mongo_or_skip(test)?;
    let nats = Nats::start(None);
    let db = unique_db_name();
    // Its own subjects too: tests share nothing.
    let prefix = db.clone();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let args = [
            "--cluster-nats",
            &nats.url(),
            "--node-id",
            &format!("n{i}"),
            "--cluster-prefix",
            &prefix,
            "--cluster-failover-ms",
            "1000",
        ];
        let opts =
            Opts { mongo_uri: Some(uri.clone()), mongo_db: Some(db.clone()), admin: true, ..Opts::with_args(&args) };
        nodes.push(Server::start_with(opts).await);
    }
    Some(Cluster { nats, nodes, prefix })
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
    // Each node lists both as live (admin stats), within the failover time.
    for node in &c.nodes {
        let deadline = Instant::now() + T;
        loop {
            let (status, stats) = node.admin("GET", "stats", None).await;
            assert_eq!(status, 200, "{stats}");
            if stats["cluster"]["live_nodes"] == serde_json::json!(["n0", "n1"]) {
                break;
            }
            assert!(Instant::now() < deadline, "live nodes never became n0, n1: {stats}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
