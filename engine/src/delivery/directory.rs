//! User → live sessions, for DMs (every session of both users receives a
//! DM) and for counting who is online.
//!
//! A read-mostly map rather than an actor: a DM's delivery reads it once per
//! message, and an actor round trip there would add latency for nothing;
//! the lock is held only to copy out a few `Arc`s.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::session_handle::{SessionHandle, SessionId};
use crate::metrics::SESSIONS;

#[derive(Default)]
pub struct Directory {
    users: RwLock<HashMap<Arc<str>, Vec<Arc<SessionHandle>>>>,
}

impl Directory {
    pub fn register(&self, peer: Arc<SessionHandle>) {
        self.users.write().entry(peer.user.clone()).or_default().push(peer);
        SESSIONS.gauge().increment(1.0);
    }

    pub fn unregister(&self, user: &str, id: SessionId) {
        let mut users = self.users.write();
        if let Some(peers) = users.get_mut(user) {
            let before = peers.len();
            peers.retain(|p| p.id != id);
            if peers.len() < before {
                SESSIONS.gauge().decrement(1.0);
            }
            if peers.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Every live session of `user`, appended to `out`.
    pub fn sessions_of(&self, user: &str, out: &mut Vec<Arc<SessionHandle>>) {
        if let Some(peers) = self.users.read().get(user) {
            out.extend(peers.iter().cloned());
        }
    }

    /// Every live session of every user (for shutdown).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.users.read().values().flatten().cloned().collect()
    }

    pub fn online_users(&self) -> usize {
        self.users.read().len()
    }
}
