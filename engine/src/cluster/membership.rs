//! Which nodes are alive. Every node publishes a heartbeat (its name) on
//! `PREFIX.heartbeat` every third of `--cluster-failover-ms` and listens to
//! everyone's; a node unheard for the failover time is gone. Core NATS is
//! at-most-once: one lost heartbeat does not drop a node, three do.
//!
//! No consensus: two nodes may disagree about the live set for up to the
//! failover time (a partition, a slow link). What depends on agreement —
//! one owner per room — is fenced by the store (`store::Fence`), not here.
//!
//! While this node's connection to NATS is down it keeps the live set it
//! had: it cannot hear heartbeats, so it cannot tell a dead node from its
//! own outage, and taking every room over would make it a second writer
//! of each. It goes on writing the rooms it owned; messages for the
//! others are refused `overloaded` (they cannot be forwarded). Once back,
//! a node unheard for the failover time is dropped as usual.
//!
//! Bounded: at most `nodes_max` others are tracked (heartbeats naming more
//! are dropped and counted), a name is at most [`NODE_ID_BYTES_MAX`] bytes,
//! and the subscription's buffer is NATS's (the client's
//! `subscription_capacity`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{NodeId, NODE_ID_BYTES_MAX};

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Subjects start with this (`--cluster-prefix`), so that several
    /// clusters can share one NATS.
    pub prefix: String,
    pub node_id: NodeId,
    /// A node unheard for this long is gone (`--cluster-failover-ms`).
    pub failover: Duration,
    /// Other nodes tracked at most.
    pub nodes_max: usize,
}

/// The live set, kept by a task; dropping this stops the heartbeats (to
/// the others, as if the node had died).
pub struct Membership {
    live: watch::Receiver<Vec<NodeId>>,
    heartbeat_interval: Duration,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Subscribes to the heartbeats, sends the first, and keeps both going.
    /// Returns at once; [`Membership::settle`] waits until the live set
    /// holds every node that is heart-beating.
    pub async fn start(client: async_nats::Client, config: MembershipConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.node_id.is_empty() && config.node_id.len() <= NODE_ID_BYTES_MAX,
            "a node id is 1 to {NODE_ID_BYTES_MAX} bytes"
        );
        anyhow::ensure!(config.failover >= Duration::from_millis(300), "the failover time is at least 300 ms");
        anyhow::ensure!(config.nodes_max > 0, "a cluster tracks at least one other node");
        let subject = format!("{}.heartbeat", config.prefix);
        let heartbeats =
            client.subscribe(subject.clone()).await.with_context(|| format!("subscribing to {subject}"))?;
        let (tx, live) = watch::channel(vec![config.node_id.clone()]);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let heartbeat_interval = config.failover / 3;
        let task = tokio::spawn(run(client, subject, heartbeats, config, tx, dropped.clone()));
        Ok(Self { live, heartbeat_interval, dropped, task })
    }

    /// Waits one heartbeat interval (a third of the failover time): every
    /// live node has been heard by then (each also answers a node new to
    /// it at once). A node takes rooms only after this, or it would own
    /// every room until it heard the others.
    pub async fn settle(&self) {
        tokio::time::sleep(self.heartbeat_interval).await;
    }

    /// The live nodes, this one included, in name order.
    pub fn live(&self) -> Vec<NodeId> {
        self.live.borrow().clone()
    }

    /// Changes to the live set, as they happen.
    pub fn changes(&self) -> watch::Receiver<Vec<NodeId>> {
        self.live.clone()
    }

    /// Heartbeats dropped: a name too long, not UTF-8, or past `nodes_max`.
    pub fn heartbeats_dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn run(
    client: async_nats::Client,
    subject: String,
    mut heartbeats: async_nats::Subscriber,
    config: MembershipConfig,
    tx: watch::Sender<Vec<NodeId>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(config.failover / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // With NATS away nothing is sent (the client's buffer would
                // fill and hold this loop): the others drop this node,
                // which goes on serving its own members.
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                if connected {
                    if let Err(e) = client.publish(subject.clone(), config.node_id.as_bytes().to_vec().into()).await {
                        tracing::warn!(error = %e, "cluster: heartbeat not sent");
                    }
                }
                let now = Instant::now();
                if connected {
                    seen.retain(|_, at| now.duration_since(*at) < config.failover);
                } else {
                    // Deaf: keep the view, and give every node a whole
                    // failover time to be heard once NATS is back.
                    seen.values_mut().for_each(|at| *at = now);
                }
            }
            heartbeat = heartbeats.next() => {
                let Some(heartbeat) = heartbeat else {
                    tracing::error!("cluster: the heartbeat subscription ended");
                    return;
                };
                let name = match std::str::from_utf8(&heartbeat.payload) {
                    Ok(name) if !name.is_empty() && name.len() <= NODE_ID_BYTES_MAX => name,
                    _ => {
                        dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                };
                if name == &*config.node_id {
                    continue;
                }
                if let Some(at) = seen.get_mut(name) {
                    *at = Instant::now();
                    continue;
                }
                if seen.len() >= config.nodes_max {
                    dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                seen.insert(NodeId::from(name), Instant::now());
                // A node new to this one may be starting: answer at once,
                // so that it knows of this node before it takes rooms.
                if let Err(e) = client.publish(subject.clone(), config.node_id.as_bytes().to_vec().into()).await {
                    tracing::warn!(error = %e, "cluster: heartbeat not sent");
                }
            }
        }
        let mut live: Vec<NodeId> = seen.keys().cloned().chain([config.node_id.clone()]).collect();
        live.sort();
        tx.send_if_modified(|current| {
            let changed = *current != live;
            if changed {
                *current = live;
            }
            changed
        });
    }
}
