//! Cluster membership against a real `nats-server` (`common::Nats`): nodes find each
//! other, a node that stops heart-beating is dropped after the failover
//! time, an outage of NATS leaves each node with the view it had (a node
//! that died meanwhile is dropped after it), and junk or too many names
//! are dropped and counted.

use std::time::Duration;

use viche_engine::cluster::{Membership, MembershipConfig, NodeId};

use crate::common::Nats;

const FAILOVER: Duration = Duration::from_millis(600);
/// Longest wait for a change the failover time promises.
const T: Duration = Duration::from_secs(15);

async fn node(nats: &Nats, prefix: &str, name: &str, nodes_max: usize) -> (async_nats::Client, Membership) {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await
        .expect("connect to nats-server");
    let config = MembershipConfig { prefix: prefix.into(), node_id: NodeId::from(name), failover: FAILOVER, nodes_max };
    let membership = Membership::start(client.clone(), config).await.expect("membership starts");
    (client, membership)
}

async fn wait_live(m: &Membership, expected: &[&str]) {
    let mut changes = m.changes();
    let want: Vec<NodeId> = expected.iter().map(|n| NodeId::from(*n)).collect();
    let result = tokio::time::timeout(T, changes.wait_for(|live| *live == want)).await;
    assert!(result.is_ok(), "live set {:?}, not {want:?}, within {T:?}", m.live());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_and_a_silent_one_is_dropped_after_the_failover_time() {
    let nats = Nats::start(None);
    let (_ca, a) = node(&nats, "t1", "a", 16).await;
    let (_cb, b) = node(&nats, "t1", "b", 16).await;
    let (_cc, c) = node(&nats, "t1", "c", 16).await;
    // Another cluster on the same NATS, under another prefix: not seen.
    let (_cx, x) = node(&nats, "other", "x", 16).await;
    for m in [&a, &b, &c] {
        wait_live(m, &["a", "b", "c"]).await;
    }
    assert_eq!(x.live(), vec![NodeId::from("x")], "prefixes keep clusters apart");
    // c stops heart-beating (as if killed): gone from a and b, not before
    // the failover time.
    let stopped = tokio::time::Instant::now();
    drop(c);
    wait_live(&a, &["a", "b"]).await;
    assert!(stopped.elapsed() >= FAILOVER / 2, "dropped after {:?}: not after missed heartbeats", stopped.elapsed());
    wait_live(&b, &["a", "b"]).await;
    // It comes back: seen again.
    let (_cc2, c2) = node(&nats, "t1", "c", 16).await;
    wait_live(&a, &["a", "b", "c"]).await;
    wait_live(&c2, &["a", "b", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_keeps_each_nodes_view_and_a_node_that_died_meanwhile_is_dropped_after_it() {
    let mut nats = Nats::start(None);
    let port = nats.port;
    let (_ca, a) = node(&nats, "t2", "a", 16).await;
    let (_cb, b) = node(&nats, "t2", "b", 16).await;
    let (_cc, c) = node(&nats, "t2", "c", 16).await;
    for m in [&a, &b, &c] {
        wait_live(m, &["a", "b", "c"]).await;
    }
    nats.stop();
    // Deaf for five failover times: nobody is dropped (a node cannot tell
    // its own outage from the others' deaths).
    tokio::time::sleep(FAILOVER * 5).await;
    let all: Vec<NodeId> = ["a", "b", "c"].into_iter().map(NodeId::from).collect();
    assert_eq!(a.live(), all, "a kept its view through the outage");
    assert_eq!(b.live(), all, "b kept its view through the outage");
    // c dies during the outage: dropped once NATS is back and c stays silent.
    drop(c);
    let _nats = Nats::start(Some(port));
    wait_live(&a, &["a", "b"]).await;
    wait_live(&b, &["a", "b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_too_many_names_are_dropped_and_counted() {
    let nats = Nats::start(None);
    let (client, a) = node(&nats, "t3", "a", 2).await;
    for junk in [vec![b'n'; 65], vec![0xff, 0xfe], Vec::new()] {
        client.publish("t3.heartbeat", junk.into()).await.unwrap();
    }
    for name in ["b", "c", "d"] {
        client.publish("t3.heartbeat", name.as_bytes().to_vec().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while a.heartbeats_dropped() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "dropped {}", a.heartbeats_dropped());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.heartbeats_dropped(), 4, "three junk names and the third other node");
    assert_eq!(a.live(), ["a", "b", "c"].map(NodeId::from).to_vec(), "at most two others tracked");
    // A bad configuration is refused.
    let config = |name: &str, failover_ms| MembershipConfig {
        prefix: "t3".into(),
        node_id: NodeId::from(name),
        failover: Duration::from_millis(failover_ms),
        nodes_max: 2,
    };
    assert!(Membership::start(client.clone(), config("", 600)).await.is_err());
    assert!(Membership::start(client.clone(), config(&"n".repeat(65), 600)).await.is_err());
    assert!(Membership::start(client.clone(), config("ok", 100)).await.is_err());
}
