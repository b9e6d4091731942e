//! The cluster (issue 14), as far as it is built: which nodes are alive
//! (`membership.rs`, heartbeats over core NATS) and which node owns a
//! room (`ownership.rs`, rendezvous hashing over the live nodes). Not yet
//! wired into the server: no flag starts it, so a node still serves every
//! room itself. What is guaranteed and what is not is in
//! docs/architecture.md ("The cluster, so far").

pub mod membership;
pub mod ownership;

pub use membership::{Membership, MembershipConfig};
pub use ownership::Ring;

/// A node's name, as given by `--node-id` (or made up at start).
pub type NodeId = std::sync::Arc<str>;

/// The longest node name accepted, in bytes: heartbeats naming a longer
/// one are dropped.
pub const NODE_ID_BYTES_MAX: usize = 64;
