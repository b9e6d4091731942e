//! What an operator may do to a running server (the admin API,
//! docs/operations.md, "The admin API"): see what the store holds, delete
//! a user and erase what they wrote, purge a room, run retention now, and
//! back the embedded store up while it runs. The gateway checks the admin
//! token and the admin rate; these are the operations behind it, each
//! bounded in time and done in bounded batches like retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use viche_protocol::{validate, Close, ErrorCode};

use crate::clock::now_ms;
use crate::refusal::Refusal;
use crate::retention::{Retention, RetentionReport, ROOMS_PAGE_MAX};
use crate::room::check_access;
use crate::services::Services;
use crate::store::{StoreError, Trim};

/// A deletion or purge stops after this long and says it is not done
/// (running it again goes on: both are idempotent).
pub const ADMIN_OPERATION_MS_MAX: u64 = 10 * 60 * 1000;
/// A backup is cancelled (and its directory removed) after this long.
pub const BACKUP_MS_MAX: u64 = 60 * 60 * 1000;
/// How long an admin request waits for a retention pass in progress.
const PASS_WAIT_MS_MAX: u64 = 60 * 1000;
/// The pause between two erasure batches: the writer's turn.
const BATCH_PAUSE_MS: u64 = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminStats {
    /// Accounts (deleted ones not counted).
    pub users: u64,
    /// Rooms with a stored message.
    pub rooms: u64,
    /// Stored messages and events.
    pub messages: u64,
    pub store_bytes: u64,
    /// When the oldest stored message was stored (ms since the epoch).
    pub oldest_message_ts: Option<u64>,
    pub retention_days: Option<f64>,
    pub retention_messages_per_room: Option<u64>,
    /// In a cluster: this node and the live nodes it sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// This node's view of its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    pub node: String,
    /// Itself included, in name order.
    pub live_nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserDeleted {
    pub user: String,
    /// It had been deleted before (its messages were erased again).
    pub already_deleted: bool,
    pub messages_erased: u64,
    pub sessions_closed: usize,
    /// False when the erasure stopped at its time bound: run it again.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomPurged {
    pub room: String,
    pub messages_removed: u64,
    /// The room's last seq: the next message gets the one after it.
    pub last_seq: u64,
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupDone {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

pub(crate) struct Admin {
    services: Arc<Services>,
    retention: Arc<Retention>,
    backup_running: AtomicBool,
}

fn store_failed(what: &'static str) -> impl FnOnce(StoreError) -> Refusal {
    move |e| {
        tracing::warn!(error = %e, "admin: {what} failed");
        Refusal::internal(format!("{what} failed: {e}"))
    }
}

impl Admin {
    pub(crate) fn new(services: Arc<Services>, retention: Arc<Retention>) -> Self {
        Self { services, retention, backup_running: AtomicBool::new(false) }
    }

    pub(crate) async fn stats(&self) -> Result<AdminStats, Refusal> {
        let store = self.services.store.as_ref();
        let stats = store.stats().await.map_err(store_failed("reading the store's counts"))?;
        // The oldest message: the oldest first message of any room.
        let mut oldest: Option<u64> = None;
        let mut after: Option<String> = None;
        loop {
            let page =
                store.rooms_page(after.as_deref(), ROOMS_PAGE_MAX).await.map_err(store_failed("reading rooms"))?;
            for ts in page.iter().filter_map(|r| r.first_ts) {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
            if page.len() < ROOMS_PAGE_MAX {
                break;
            }
            after = page.last().map(|r| r.room.clone());
        }
        let config = &self.services.config;
        Ok(AdminStats {
            users: stats.users,
            rooms: stats.rooms,
            messages: stats.messages,
            store_bytes: stats.bytes,
            oldest_message_ts: oldest,
            retention_days: config.retention_age_ms.map(|ms| ms as f64 / 86_400_000.0),
            retention_messages_per_room: config.retention_room_messages_max,
            cluster: self.services.cluster.as_ref().map(|c| ClusterStats {
                node: c.node_id().to_string(),
                live_nodes: c.live().iter().map(|n| n.to_string()).collect(),
            }),
        })
    }

    /// Deletes `user`: the account (the name stays taken), its
    /// conversations and markers; closes its sessions with 4001 and bars
    /// its tokens; then erases every message it sent, in place.
    pub(crate) async fn delete_user(&self, user: &str) -> Result<UserDeleted, Refusal> {
        if !validate::is_valid_username(user) {
            return Err(Refusal::new(ErrorCode::Invalid, "not a valid username"));
        }
        let services = &self.services;
        let store = services.store.as_ref();
        let already_deleted = match store.delete_account(user, now_ms()).await {
            Ok(Some(before)) => before,
            Ok(None) => return Err(Refusal::new(ErrorCode::NotFound, "no such user")),
            Err(e) => return Err(store_failed("deleting the account")(e)),
        };
        let share = services.directory.share_of(user);
        let token_ttl_ms = services.config.token_ttl_s.saturating_mul(1000);
        let sessions_closed = services.directory.bar(user, token_ttl_ms, Close::ACCOUNT_DELETED);
        // Its sends already queued are stored before the erasure starts
        // (no new one can come: its sessions are closing and it is barred).
        if let Some(share) = share {
            let until = Instant::now() + Duration::from_millis(services.config.store_timeout_ms.saturating_mul(2));
            while share.writes_pending.load(Ordering::Acquire) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(BATCH_PAUSE_MS)).await;
            }
        }
        let deadline = Instant::now() + Duration::from_millis(ADMIN_OPERATION_MS_MAX);
        let (mut messages_erased, mut after, mut done) = (0, None::<String>, false);
        while Instant::now() < deadline {
            let batch = store
                .erase_user_messages(user, after.as_deref(), self.retention.rows_max())
                .await
                .map_err(store_failed("erasing the user's messages"))?;
            messages_erased += batch.erased;
            match batch.next {
                Some(next) => after = Some(next),
                None => {
                    done = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(BATCH_PAUSE_MS)).await;
        }
        tracing::info!(user, messages_erased, sessions_closed, done, "admin: user deleted");
        Ok(UserDeleted { user: user.to_owned(), already_deleted, messages_erased, sessions_closed, done })
    }

    /// Removes every message of `room` stored so far (its seqs are not
    /// reused: the next message continues after the last one).
    pub(crate) async fn purge_room(&self, room: &str) -> Result<RoomPurged, Refusal> {
        check_access("", room).map(|_| ()).or_else(|r| match r.code {
            // A DM room of any two users may be purged.
            ErrorCode::Forbidden => Ok(()),
            _ => Err(r),
        })?;
        let store = self.services.store.as_ref();
        let last_seq = store.last_seq(room).await.map_err(store_failed("reading the room's last seq"))?;
        let trim = Trim { seq_upto: last_seq, ts_before: None };
        let purge = self.retention.trim(room, trim, "purge");
        match tokio::time::timeout(Duration::from_millis(ADMIN_OPERATION_MS_MAX), purge).await {
            Ok(Ok((messages_removed, _))) => {
                tracing::info!(room, messages_removed, "admin: room purged");
                Ok(RoomPurged { room: room.to_owned(), messages_removed, last_seq, done: true })
            }
            Ok(Err(e)) => Err(store_failed("purging the room")(e)),
            Err(_) => Ok(RoomPurged { room: room.to_owned(), messages_removed: 0, last_seq, done: false }),
        }
    }

    pub(crate) async fn run_retention(&self) -> Result<RetentionReport, Refusal> {
        match tokio::time::timeout(Duration::from_millis(PASS_WAIT_MS_MAX), self.retention.run()).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(store_failed("the retention pass")(e)),
            Err(_) => Err(Refusal::new(ErrorCode::Overloaded, "the retention pass is still running; try again later")),
        }
    }

    /// A consistent copy of the embedded store in the new directory `path`
    /// (restore: `viche --data-dir PATH`).
    pub(crate) async fn backup(&self, path: &str) -> Result<BackupDone, Refusal> {
        let dir = PathBuf::from(path);
        if !dir.is_absolute() {
            return Err(Refusal::new(ErrorCode::Invalid, "the backup path must be absolute"));
        }
        if self.backup_running.swap(true, Ordering::AcqRel) {
            return Err(Refusal::new(ErrorCode::Conflict, "a backup is running already"));
        }
        let result = self.backup_into(&dir).await;
        self.backup_running.store(false, Ordering::Release);
        result
    }

    async fn backup_into(&self, dir: &Path) -> Result<BackupDone, Refusal> {
        let started = Instant::now();
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Refusal::new(ErrorCode::Conflict, format!("{} exists already", dir.display())))
            }
            Err(e) => return Err(Refusal::new(ErrorCode::Invalid, format!("cannot create {}: {e}", dir.display()))),
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let copy = self.services.store.backup(dir, cancel.clone());
        let outcome = match tokio::time::timeout(Duration::from_millis(BACKUP_MS_MAX), copy).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(StoreError::Unsupported(why))) => Err(Refusal::new(ErrorCode::Invalid, why)),
            Ok(Err(e)) => Err(store_failed("the backup")(e)),
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                Err(Refusal::new(ErrorCode::Overloaded, "the backup took too long and was cancelled"))
            }
        };
        match outcome {
            Ok(report) => {
                let duration_ms = started.elapsed().as_millis() as u64;
                tracing::info!(path = %dir.display(), rows = report.rows, bytes = report.bytes, duration_ms, "admin: backup done");
                Ok(BackupDone { path: dir.display().to_string(), rows: report.rows, bytes: report.bytes, duration_ms })
            }
            Err(refusal) => {
                // Only what this backup made: its file, then its directory.
                // (After a timeout the copy may still be closing its file: the
                // directory then stays, and is named in the log.)
                let _ = std::fs::remove_file(dir.join(crate::store::embedded::FILE_NAME));
                if let Err(e) = std::fs::remove_dir(dir) {
                    tracing::warn!(path = %dir.display(), error = %e, "admin: could not remove a failed backup");
                }
                Err(refusal)
            }
        }
    }
}
