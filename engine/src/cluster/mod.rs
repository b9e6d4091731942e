//! The cluster (issue 14): many nodes over core NATS and one MongoDB.
//!
//! - `membership.rs`: which nodes are alive (heartbeats over NATS).
//! - `ownership.rs`: which node owns a room (rendezvous hashing over the
//!   live nodes); the owner alone stores the room's messages.
//! - `forward.rs`: a message for a room owned elsewhere, sent to its owner
//!   and answered from there.
//! - `relay.rs`: a room's stored messages and typing notices, relayed to
//!   every node that has the room open; each delivers to its own members.
//!
//! Any node takes any session. A room's messages are stored by its owner;
//! MongoDB's unique `(room, seq)` index and the epochs of the rooms' claims
//! fence two nodes that both believe they own one (`store::Fence`).
//! What is guaranteed and what is not is in docs/architecture.md ("The
//! cluster").

pub(crate) mod forward;
pub mod membership;
pub mod ownership;
pub(crate) mod relay;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use forward::{FORWARDS_PENDING_MAX, FORWARD_TIMEOUT_MS};
pub use membership::{Membership, MembershipConfig};
pub(crate) use ownership::Owners;
pub use ownership::Ring;
pub use relay::{RELAY_FRAME_BYTES_MAX, RELAY_QUEUE_MAX};

use crate::metrics::CLUSTER_NODES;

/// A node's name, as given by `--node-id` (or made up at start).
pub type NodeId = std::sync::Arc<str>;

/// The longest node name accepted, in bytes: heartbeats naming a longer
/// one are dropped.
pub const NODE_ID_BYTES_MAX: usize = 64;
/// `--cluster-failover-ms`'s default.
pub const FAILOVER_MS_DEFAULT: u64 = 3_000;
/// Other nodes one node tracks at most.
pub const NODES_MAX: usize = 256;
/// Frames one room's subscription holds before NATS drops (the relay's
/// receivers then repair the gap from the store).
pub const SUBSCRIPTION_FRAMES_MAX: usize = 4096;
/// How far apart two nodes' clocks may be: a DM room opening on a node
/// replays what was stored since its users' first session there, less
/// this (a few messages from just before may be replayed too).
pub const CLOCK_SKEW_MS: u64 = 2_000;
/// `--cluster-roster-ms`'s default.
pub const ROSTER_MS_DEFAULT: u64 = 30_000;
/// Roster periods a node may stay silent in a room before the others
/// forget its users there.
pub const ROSTER_SILENT_PERIODS_MAX: u32 = 3;

/// How long connecting to NATS at start, or subscribing to a room, may take.
pub const NATS_WAIT_MS: u64 = 5_000;

/// How a node joins a cluster (`--cluster-nats` and its companions).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nats_url: String,
    /// NATS's user and password, when it asks for them.
    pub nats_auth: Option<NatsAuth>,
    /// TLS to NATS (a `tls://` URL, or a CA or client certificate given).
    pub nats_tls: Option<NatsTls>,
    pub node_id: String,
    pub failover_ms: u64,
    /// Subjects start with this, so that clusters can share one NATS.
    pub prefix: String,
    /// How often each node restates who is in each room it has open.
    pub roster_ms: u64,
}

/// A NATS user and password (`--cluster-nats-user`, `--cluster-nats-password`).
#[derive(Clone)]
pub struct NatsAuth {
    pub user: String,
    pub password: String,
}

/// TLS to NATS (`--cluster-nats-ca`, `--cluster-nats-cert`/`-key`): the
/// server's certificate is checked against the system's roots and `ca`.
#[derive(Debug, Clone)]
pub struct NatsTls {
    pub ca: Option<std::path::PathBuf>,
    /// This node's certificate and key, for a NATS that verifies clients.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth").field("user", &self.user).field("password", &"…").finish()
    }
}

/// This node's part in the cluster.
pub(crate) struct Cluster {
    client: async_nats::Client,
    pub relay: Arc<relay::Relay>,
    pub owners: Arc<Owners>,
    pub forwarder: Arc<forward::Forwarder>,
    membership: Membership,
    node_id: NodeId,
    prefix: String,
    roster_ms: u64,
}

impl Cluster {
    /// Connects to NATS (refused after [`NATS_WAIT_MS`]), starts the
    /// heartbeats and the relay.
    pub(crate) async fn start(config: &ClusterConfig) -> anyhow::Result<Self> {
        let node_id = NodeId::from(config.node_id.as_str());
        let mut options = async_nats::ConnectOptions::new();
        if let Some(auth) = &config.nats_auth {
            options = options.user_and_password(auth.user.clone(), auth.password.clone());
        }
        if let Some(tls) = &config.nats_tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let client = options
            .name(format!("viche {node_id}"))
            // What this node publishes it has delivered already.
            .no_echo()
            .subscription_capacity(SUBSCRIPTION_FRAMES_MAX)
            .connection_timeout(Duration::from_millis(NATS_WAIT_MS))
            .connect(config.nats_url.as_str())
            .await
            .with_context(|| format!("cannot reach NATS at {} (--cluster-nats)", config.nats_url))?;
        let membership = Membership::start(
            client.clone(),
            MembershipConfig {
                prefix: config.prefix.clone(),
                node_id: node_id.clone(),
                failover: Duration::from_millis(config.failover_ms),
                nodes_max: NODES_MAX,
            },
        )
        .await?;
        membership.settle().await;
        let owners =
            Arc::new(Owners::new(node_id.clone(), &membership.live(), Duration::from_millis(config.failover_ms)));
        let mut changes = membership.changes();
        let ring = owners.clone();
        tokio::spawn(async move {
            loop {
                let live = changes.borrow_and_update().clone();
                ring.set_live(&live);
                CLUSTER_NODES.gauge().set(live.len() as f64);
                tracing::info!(nodes = ?live, "cluster: live nodes");
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        let relay = relay::Relay::start(client.clone(), config.prefix.clone(), node_id.clone());
        let forwarder = forward::Forwarder::start(client.clone(), &config.prefix, &node_id, owners.clone())
            .await
            .context("subscribing to forwards' replies")?;
        tracing::info!(node = %node_id, nats = %config.nats_url, prefix = %config.prefix, "cluster: joined");
        let prefix = config.prefix.clone();
        Ok(Self { client, relay, owners, forwarder, membership, node_id, prefix, roster_ms: config.roster_ms })
    }

    /// Subscribes to a room's or a user's subject, within [`NATS_WAIT_MS`].
    pub(crate) async fn subscribe(&self, subject: String) -> anyhow::Result<async_nats::Subscriber> {
        let subscribe = self.client.subscribe(subject.clone());
        match tokio::time::timeout(Duration::from_millis(NATS_WAIT_MS), subscribe).await {
            Ok(result) => result.with_context(|| format!("subscribing to {subject}")),
            Err(_) => anyhow::bail!("subscribing to {subject}: no answer within {NATS_WAIT_MS} ms"),
        }
    }

    /// Tells every open public room here when a node leaves the live set
    /// (its users leave the room with it), and asks who is in them when a
    /// node that had left comes back (after a partition or an outage of
    /// NATS it still has its users; a node starting anew announces its
    /// own as it opens rooms).
    pub(crate) async fn watch_nodes(self: Arc<Self>, rooms: crate::room::Rooms) {
        let mut changes = self.membership.changes();
        let mut live: BTreeSet<NodeId> = changes.borrow_and_update().iter().cloned().collect();
        // Nodes that were live once and left: bounded like the live set.
        let mut left: BTreeSet<NodeId> = BTreeSet::new();
        while changes.changed().await.is_ok() {
            let now: BTreeSet<NodeId> = changes.borrow_and_update().iter().cloned().collect();
            let gone: Vec<NodeId> = live.difference(&now).cloned().collect();
            let back = now.iter().any(|n| left.contains(n));
            left.retain(|n| !now.contains(n));
            for node in &gone {
                self.forwarder.node_gone(node);
                if left.len() < NODES_MAX {
                    left.insert(node.clone());
                }
            }
            if !gone.is_empty() || back {
                for room in rooms.open_public() {
                    for node in &gone {
                        room.node_gone(node.clone());
                    }
                    if back {
                        self.relay.hello(&room.name);
                    }
                }
            }
            live = now;
        }
    }

    /// Every `--cluster-roster-ms`, each open public room here tells the others who
    /// is in it here, and forgets the users of nodes silent in it for
    /// [`ROSTER_SILENT_PERIODS_MAX`] periods: presence lost on the way
    /// (core NATS is at-most-once) is corrected within a period.
    pub(crate) async fn refresh_rosters(self: Arc<Self>, rooms: crate::room::Rooms) {
        let period = Duration::from_millis(self.roster_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for room in rooms.open_public() {
                room.refresh_roster(period * ROSTER_SILENT_PERIODS_MAX);
            }
        }
    }

    /// The live nodes, this one included, in name order.
    pub(crate) fn live(&self) -> Vec<NodeId> {
        self.membership.live()
    }

    pub(crate) fn node_id(&self) -> &NodeId {
        &self.node_id
    }
}
