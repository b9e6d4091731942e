//! Which node owns a room: rendezvous (highest-random-weight) hashing over
//! the live nodes, so a node joining or leaving moves only the rooms it
//! gains or held, and every node computes the same owner from the same
//! live set with no coordination.
//!
//! The weights come from SipHash-1-3 with fixed keys (`siphasher`), whose
//! output is fixed by its algorithm, not by the Rust release (std's
//! `DefaultHasher` promises no such thing): nodes built by different
//! compilers agree. Two nodes with different views of the live set may
//! still name different owners for a while; the store fences that
//! (`store::Fence`), not this.
//!
//! [`Owners`] is this node's answer to "who writes this room now": the
//! ring over its view of the live nodes, except for rooms whose write here
//! was fenced (another node claimed them in the store): those go to that
//! node for a failover time, after which the ring decides again.

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

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

/// Rooms remembered as held by another node at most (the least recently
/// fenced are forgotten first: the ring decides for them again).
pub const HELD_ELSEWHERE_ROOMS_MAX: usize = 65_536;

/// Who writes each room, as this node sees it.
pub(crate) struct Owners {
    me: NodeId,
    /// The ring over the live nodes, and how many times the live set
    /// changed (a new view claims its rooms in the store again).
    ring: RwLock<(Ring, u64)>,
    generation: AtomicU64,
    /// Rooms whose write here was fenced: the node that claimed them, and
    /// when this node learned it.
    held_elsewhere: Mutex<LruCache<Arc<str>, (NodeId, Instant)>>,
    hold: Duration,
}

impl Owners {
    pub(crate) fn new(me: NodeId, live: &[NodeId], hold: Duration) -> Self {
        Self {
            me,
            ring: RwLock::new((Ring::new(live), 0)),
            generation: AtomicU64::new(0),
            held_elsewhere: Mutex::new(LruCache::new(
                NonZeroUsize::new(HELD_ELSEWHERE_ROOMS_MAX).expect("a bound above zero"),
            )),
            hold,
        }
    }

    /// The live set changed.
    pub(crate) fn set_live(&self, live: &[NodeId]) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.ring.write() = (Ring::new(live), generation);
    }

    /// A new view for the store: rooms written from now on are claimed
    /// again (and rooms lost to another node may be won back).
    fn next_view(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.ring.write().1 = generation;
    }

    /// The node that writes `room` now (this one when alone).
    pub(crate) fn owner(&self, room: &str) -> NodeId {
        let held = self.held_elsewhere.lock().get(room).cloned();
        if let Some((holder, since)) = held {
            if since.elapsed() < self.hold && self.is_live(&holder) {
                return holder;
            }
            // The hold is over: the ring decides again, and this node may
            // claim the room again (a new view for the store).
            self.held_elsewhere.lock().pop(room);
            self.next_view();
        }
        // Tests make a node believe it owns every room (engine/src/faults.rs).
        #[cfg(feature = "failpoints")]
        if crate::faults::eval_sync("cluster.owner").is_some() {
            return self.me.clone();
        }
        let ring = self.ring.read();
        ring.0.owner(room).cloned().unwrap_or_else(|| self.me.clone())
    }

    pub(crate) fn is_mine(&self, room: &str) -> bool {
        self.owner(room) == self.me
    }

    fn is_live(&self, node: &NodeId) -> bool {
        self.ring.read().0.nodes.contains(node)
    }

    /// What this node's writes carry for the store to fence.
    pub(crate) fn fence(&self) -> crate::store::Fence {
        crate::store::Fence { node: self.me.clone(), generation: self.ring.read().1 }
    }

    /// The store fenced a write of `room` here: `holder` claimed it since.
    pub(crate) fn moved(&self, room: &str, holder: &str) {
        if holder.is_empty() || holder == &*self.me || holder.len() > super::NODE_ID_BYTES_MAX {
            return;
        }
        self.held_elsewhere.lock().put(Arc::from(room), (NodeId::from(holder), Instant::now()));
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
