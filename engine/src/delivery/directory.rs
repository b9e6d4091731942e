//! User → live sessions, for DMs (every session of both users receives a
//! DM), for counting who is online, and for what one user may take of the
//! capacity everyone shares: at most `sessions_max` sessions, and a
//! [`UserShare`] counting the user's room memberships and writes in flight
//! across all its sessions.
//!
//! A read-mostly map rather than an actor: a DM's delivery reads it once per
//! message, and an actor round trip there would add latency for nothing;
//! the lock is held only to copy out a few `Arc`s.
//!
//! A deleted user is barred: its sessions are closed, and it may open none
//! until every token issued before the deletion has expired. Barring and
//! registering take the same lock, so no session can slip in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use viche_protocol::Close;

use super::session_handle::{SessionHandle, SessionId};
use crate::metrics::SESSIONS;

/// What all the sessions of one user hold together; each session keeps a
/// clone, so counting costs no lookup.
#[derive(Debug, Default)]
pub struct UserShare {
    /// Rooms joined, summed over the user's sessions.
    pub room_memberships: AtomicU32,
    /// Messages submitted to the writer and not yet answered.
    pub writes_pending: AtomicU32,
    /// When the user's first session here (of those still open) opened,
    /// in ms since the epoch.
    pub since_ms: u64,
    /// In a cluster: the task receiving the user's DMs stored by other
    /// nodes (`cluster/relay.rs`), and whether its subscription is up.
    /// Ends with the user's last session here.
    pub(crate) relay_follow: Mutex<Option<(tokio::task::AbortHandle, tokio::sync::watch::Receiver<bool>)>>,
}

impl Drop for UserShare {
    fn drop(&mut self) {
        if let Some((task, _)) = self.relay_follow.get_mut().take() {
            task.abort();
        }
    }
}

impl UserShare {
    pub fn new(since_ms: u64) -> Self {
        Self {
            room_memberships: AtomicU32::new(0),
            writes_pending: AtomicU32::new(0),
            since_ms,
            relay_follow: Mutex::new(None),
        }
    }

    /// Takes one unit of `counter` if it stays within `max`.
    pub fn try_take(counter: &AtomicU32, max: usize) -> bool {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    pub fn give_back(counter: &AtomicU32) {
        let previous = counter.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "a user share given back more than taken");
    }
}

struct UserEntry {
    sessions: Vec<Arc<SessionHandle>>,
    share: Arc<UserShare>,
}

/// Why a session was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The user already has `sessions_max` sessions.
    TooManySessions { sessions_max: usize },
    /// The user's account was deleted.
    Barred,
}

#[derive(Default)]
pub struct Directory {
    users: RwLock<HashMap<Arc<str>, UserEntry>>,
    /// Deleted users, and until when they are barred (taken after `users`).
    barred: Mutex<HashMap<String, Instant>>,
}

impl Directory {
    /// Adds a session, unless its user has `sessions_max` already; returns
    /// the user's share.
    pub fn register(&self, session: Arc<SessionHandle>, sessions_max: usize) -> Result<Arc<UserShare>, Refused> {
        let mut users = self.users.write();
        if self.is_barred(&session.user) {
            return Err(Refused::Barred);
        }
        let entry = users.entry(session.user.clone()).or_insert_with(|| UserEntry {
            sessions: Vec::new(),
            share: Arc::new(UserShare::new(crate::clock::now_ms())),
        });
        if entry.sessions.len() >= sessions_max {
            return Err(Refused::TooManySessions { sessions_max });
        }
        entry.sessions.push(session);
        SESSIONS.gauge().increment(1.0);
        Ok(entry.share.clone())
    }

    pub fn unregister(&self, user: &str, id: SessionId) {
        let mut users = self.users.write();
        if let Some(entry) = users.get_mut(user) {
            let before = entry.sessions.len();
            entry.sessions.retain(|p| p.id != id);
            if entry.sessions.len() < before {
                SESSIONS.gauge().decrement(1.0);
            }
            if entry.sessions.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Every live session of `user`, appended to `out`.
    pub fn sessions_of(&self, user: &str, out: &mut Vec<Arc<SessionHandle>>) {
        if let Some(entry) = self.users.read().get(user) {
            out.extend(entry.sessions.iter().cloned());
        }
    }

    /// Since when `user` has had a session here (of those still open), in
    /// ms since the epoch; `None` when it has none.
    pub fn present_since(&self, user: &str) -> Option<u64> {
        self.users.read().get(user).map(|e| e.share.since_ms)
    }

    /// Every live session of every user (for shutdown).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.users.read().values().flat_map(|e| e.sessions.iter().cloned()).collect()
    }

    pub fn online_users(&self) -> usize {
        self.users.read().len()
    }

    /// Bars `user` for `for_ms` (the lifetime of the tokens it may hold)
    /// and asks each of its sessions to close with `close`; returns how
    /// many it had. Expired bars are forgotten here, so the table holds at
    /// most the users deleted within one token lifetime.
    pub fn bar(&self, user: &str, for_ms: u64, close: Close) -> usize {
        let users = self.users.write();
        let now = Instant::now();
        {
            let mut barred = self.barred.lock();
            barred.retain(|_, until| *until > now);
            barred.insert(user.to_owned(), now + Duration::from_millis(for_ms));
        }
        let sessions = users.get(user).map(|e| e.sessions.clone()).unwrap_or_default();
        drop(users);
        let frame = viche_protocol::ServerFrame::error(None, viche_protocol::ErrorCode::Unauthorized, close.reason);
        for session in &sessions {
            let _ = session.send(&frame);
            session.outbox.close(close, true);
        }
        sessions.len()
    }

    /// What `user`'s sessions hold together, while it has one.
    pub fn share_of(&self, user: &str) -> Option<Arc<UserShare>> {
        self.users.read().get(user).map(|e| e.share.clone())
    }

    pub fn is_barred(&self, user: &str) -> bool {
        self.barred.lock().get(user).is_some_and(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Outbox;

    fn session(id: u64, user: &str) -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            id,
            user: user.into(),
            encoding: viche_protocol::Encoding::MsgPack,
            outbox: Outbox::new(8, 1024),
        })
    }

    #[test]
    fn a_user_has_at_most_sessions_max_sessions_and_one_share() {
        let d = Directory::default();
        let a = d.register(session(1, "ann"), 2).unwrap();
        let b = d.register(session(2, "ann"), 2).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the sessions of a user share one count");
        assert_eq!(d.register(session(3, "ann"), 2).err(), Some(Refused::TooManySessions { sessions_max: 2 }));
        assert!(d.register(session(4, "bob"), 2).is_ok(), "users are independent");
        d.unregister("ann", 1);
        assert!(d.register(session(5, "ann"), 2).is_ok(), "a closed session frees its place");
    }

    #[test]
    fn a_barred_user_has_its_sessions_closed_and_opens_none() {
        let d = Directory::default();
        d.register(session(1, "ann"), 4).unwrap();
        d.register(session(2, "ann"), 4).unwrap();
        assert_eq!(d.bar("ann", 60_000, Close::UNAUTHORIZED), 2);
        assert_eq!(d.register(session(3, "ann"), 4).err(), Some(Refused::Barred));
        assert!(d.register(session(4, "bob"), 4).is_ok(), "others are not barred");
        assert_eq!(d.bar("cy", 0, Close::UNAUTHORIZED), 0);
        assert!(!d.is_barred("cy"), "a bar ends");
    }

    #[test]
    fn a_share_is_taken_within_its_bound_and_given_back() {
        let share = UserShare::default();
        assert!(UserShare::try_take(&share.writes_pending, 2));
        assert!(UserShare::try_take(&share.writes_pending, 2));
        assert!(!UserShare::try_take(&share.writes_pending, 2));
        UserShare::give_back(&share.writes_pending);
        assert!(UserShare::try_take(&share.writes_pending, 2));
    }
}
