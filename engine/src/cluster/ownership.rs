//! Which node owns a room: rendezvous (highest-random-weight) hashing over
//! the live nodes, so a node joining or leaving moves only the rooms it
//! gains or held, and every node computes the same owner from the same
//! live set with no coordination.
//!
//! The weights come from SipHash-1-3 with fixed keys (`siphasher`), whose
//! output is fixed by its algorithm, not by the Rust release (std's
//! `DefaultHasher` promises no such thing): nodes built by different
//! compilers agree. Two nodes with different views of the live set may
//! still name different owners for a while; the store must fence that
//! (issue 14), not this.

use std::hash::{Hash, Hasher};

use rendezvous_hash::{IdNode, NodeHasher, RendezvousNodes};
use siphasher::sip::SipHasher13;

use super::NodeId;

/// SipHash-1-3 of (node, room), keys fixed.
#[derive(Debug, Clone, Copy, Default)]
struct StableHasher;

impl<N: Hash> NodeHasher<N> for StableHasher {
    fn hash<T: Hash>(&self, node: &N, item: &T) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(0, 0);
        node.hash(&mut hasher);
        item.hash(&mut hasher);
        hasher.finish()
    }
}

/// The live nodes, ready to place rooms. Built again when the live set
/// changes (`Membership::changes`).
pub struct Ring {
    nodes: RendezvousNodes<IdNode<NodeId>, StableHasher>,
}

impl Ring {
    pub fn new(live: &[NodeId]) -> Self {
        let mut nodes = RendezvousNodes::new(StableHasher);
        for node in live {
            nodes.insert(IdNode::new(node.clone()));
        }
        Self { nodes }
    }

    /// The node that owns `room`; `None` only with no live node.
    pub fn owner(&self, room: &str) -> Option<&NodeId> {
        self.nodes.calc_candidates(&room).next().map(|node| &**node)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str]) -> Ring {
        Ring::new(&names.iter().map(|n| NodeId::from(*n)).collect::<Vec<_>>())
    }

    fn rooms() -> impl Iterator<Item = String> {
        (0..3000).map(|i| format!("room-{i}"))
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_the_order() {
        let (a, b) = (ring(&["n1", "n2", "n3"]), ring(&["n3", "n1", "n2"]));
        for room in rooms() {
            assert_eq!(a.owner(&room), b.owner(&room), "{room}");
        }
        assert_eq!(ring(&[]).owner("lobby"), None);
        assert_eq!(ring(&["solo"]).owner("lobby").map(|n| &**n), Some("solo"));
    }

    #[test]
    fn rooms_spread_evenly_over_the_nodes() {
        let r = ring(&["n1", "n2", "n3"]);
        let mut counts = std::collections::BTreeMap::new();
        for room in rooms() {
            *counts.entry(r.owner(&room).unwrap().clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        for (node, n) in counts {
            assert!((900..=1100).contains(&n), "{node} owns {n} of 3000");
        }
    }

    /// A node leaving moves only the rooms it held; a node joining takes
    /// rooms from the others and moves nothing else.
    #[test]
    fn a_node_leaving_or_joining_moves_only_its_own_rooms() {
        let (three, two) = (ring(&["n1", "n2", "n3"]), ring(&["n1", "n2"]));
        let mut moved = 0;
        for room in rooms() {
            let (before, after) = (three.owner(&room).unwrap(), two.owner(&room).unwrap());
            if &**before == "n3" {
                moved += 1;
            } else {
                assert_eq!(before, after, "{room} moved though its owner stayed");
            }
        }
        assert!(moved > 0);
        let four = ring(&["n1", "n2", "n3", "n4"]);
        for room in rooms() {
            let (before, after) = (three.owner(&room).unwrap(), four.owner(&room).unwrap());
            assert!(before == after || &**after == "n4", "{room} moved to {after}, not to the new node");
        }
    }

    /// The weights are SipHash-1-3's, keys fixed: these owners are what
    /// any build computes (a change here would split a mixed cluster).
    #[test]
    fn owners_are_fixed_by_the_algorithm() {
        let r = ring(&["n1", "n2", "n3"]);
        let rooms = ["lobby", "general", "dm:alice:bob", "random", "ops", "dm:bob:carol", "help", "news"];
        let owners: Vec<&str> = rooms.iter().map(|room| &**r.owner(room).unwrap()).collect();
        assert_eq!(owners, ["n3", "n1", "n1", "n3", "n3", "n2", "n3", "n3"]);
    }
}
