//! The engine's front door: every transport goes through [`Engine`] to
//! open a session, register, log in, authenticate a token, read history,
//! page a replay, ask for readiness, and shut down in order; and an
//! operator's admin requests (`admin.rs`). Nothing outside the engine
//! names the store, the writer or the room actors.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use viche_protocol::{Close, Encoding, Msg};

use crate::accounts::{Accounts, Credentials, IssuedToken, Jwt, KeyedLimiter, VerifiedToken};
use crate::admin::{Admin, AdminStats, BackupDone, RoomPurged, UserDeleted};
use crate::cluster::Cluster;
use crate::config::EngineConfig;
use crate::delivery::{Directory, Outbox, Refused, SessionHandle};
use crate::health::{Health, STORE_PROBE_INTERVAL_MS};
use crate::history;
pub use crate::history::{ConversationsPage, HistoryPage};
use crate::metrics::{RATE_LIMITED, SESSIONS_REFUSED, STORE_PROBES, STORE_SIZE_ALERT};
use crate::refusal::Refusal;
use crate::retention::{Retention, RetentionReport};
use crate::room::{Rooms, SupervisorArgs};
use crate::services::Services;
use crate::session::{Session, SessionSupervisor};
use crate::store::{Store, StoreError};
use crate::supervisor::{EngineSupervisor, EngineSupervisorArgs};
use crate::writer::writer_parts;

pub struct Engine {
    services: Arc<Services>,
    next_session_id: AtomicU64,
    /// HTTP history pages per user (a WebSocket session has its own bucket).
    history_by_user: KeyedLimiter,
    admin: Admin,
}

/// Users whose HTTP history rate is tracked at once.
const HISTORY_LIMITER_KEYS_MAX: usize = 100_000;

impl Engine {
    /// Starts the supervision tree on `store` (docs/architecture.md,
    /// "Supervision"); tokens are signed with `jwt_secret` (HS256).
    pub async fn start(config: EngineConfig, store: Arc<dyn Store>, jwt_secret: &[u8]) -> anyhow::Result<Arc<Self>> {
        config.assert_valid();
        #[cfg(feature = "failpoints")]
        let store: Arc<dyn Store> = Arc::new(crate::store::failpoints::FailpointStore(store));
        let store_timeout = Duration::from_millis(config.store_timeout_ms);
        let store: Arc<dyn Store> = Arc::new(crate::store::deadline::DeadlineStore::new(store, store_timeout));
        let health = Arc::new(Health::new());
        let directory = Arc::new(Directory::default());
        let cluster = match &config.cluster {
            Some(cluster) => Some(Arc::new(Cluster::start(cluster).await?)),
            None => None,
        };
        let writer = writer_parts(
            store.clone(),
            health.clone(),
            config.writer_queue_max,
            config.writer_batch_max,
            cluster.clone(),
        );
        let args = EngineSupervisorArgs { writer: writer.shared().clone(), health: health.clone() };
        let (root, _) =
            Actor::spawn(None, EngineSupervisor, args).await.map_err(|e| anyhow::anyhow!("engine supervisor: {e}"))?;
        let rooms = Rooms::start(
            SupervisorArgs {
                store: store.clone(),
                directory: directory.clone(),
                cluster: cluster.clone(),
                room_idle_ms: config.room_idle_ms,
                rooms_max: config.rooms_max,
            },
            root.get_cell(),
        )
        .await?;
        if let Some(cluster) = &cluster {
            tokio::spawn(cluster.clone().watch_nodes(rooms.clone()));
            tokio::spawn(cluster.clone().refresh_rosters(rooms.clone()));
            crate::cluster::forward::serve(cluster.clone(), rooms.clone(), writer.clone(), config.body_bytes_max)
                .await?;
        }
        let (sessions, _) = Actor::spawn_linked(None, SessionSupervisor, (), root.get_cell())
            .await
            .map_err(|e| anyhow::anyhow!("session supervisor: {e}"))?;
        let accounts = Accounts::new(&config, Jwt::new(jwt_secret, config.token_ttl_s));
        // Users deleted within a token's lifetime may still hold tokens.
        let token_ttl_ms = config.token_ttl_s.saturating_mul(1000);
        let now = crate::clock::now_ms();
        let deleted = store.deleted_users_since(now.saturating_sub(token_ttl_ms)).await;
        for user in deleted.map_err(|e| anyhow::anyhow!("reading deleted users: {e}"))? {
            directory.bar(&user, token_ttl_ms, Close::ACCOUNT_DELETED);
        }
        tokio::spawn(probe_store(store.clone(), health.clone()));
        STORE_SIZE_ALERT.gauge().set(config.store_size_alert_bytes as f64);
        let retention = Arc::new(Retention::new(store.clone(), &config));
        retention.spawn(Duration::from_millis(config.retention_interval_ms));
        let services =
            Arc::new(Services { config, store, writer, directory, rooms, accounts, health, cluster, sessions });
        let history_by_user = KeyedLimiter::new(services.config.history_rate, HISTORY_LIMITER_KEYS_MAX);
        let admin = Admin::new(services.clone(), retention);
        Ok(Arc::new(Self { services, next_session_id: AtomicU64::new(1), history_by_user, admin }))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.services.config
    }

    /// A token's owner and expiry, if its signature, algorithm and `exp` hold.
    pub fn authenticate(&self, token: &str) -> Result<VerifiedToken, Refusal> {
        let verified = self.services.accounts.authenticate(token)?;
        if self.services.directory.is_barred(&verified.user) {
            return Err(Refusal::new(viche_protocol::ErrorCode::Unauthorized, "this account was deleted"));
        }
        Ok(verified)
    }

    /// Charges a registration attempt to `client` (before its body is read).
    pub fn admit_registration(&self, client: IpAddr) -> Result<(), Refusal> {
        self.services.accounts.admit_registration(client)
    }

    pub async fn register(&self, creds: Credentials) -> Result<IssuedToken, Refusal> {
        self.services.accounts.register(self.services.store.as_ref(), creds).await
    }

    pub async fn login(&self, client: IpAddr, creds: Credentials) -> Result<IssuedToken, Refusal> {
        self.services.accounts.login(self.services.store.as_ref(), client, creds).await
    }

    /// Registers an authenticated connection and returns its session;
    /// refused (`forbidden`; the transport closes with 4009) when the user
    /// already has `user_sessions_max` sessions, and (`unauthorized`; 4001)
    /// when its account was deleted.
    ///
    /// In a cluster, the user's first session here also starts following
    /// the user's DMs stored by other nodes, and waits (at most
    /// `NATS_WAIT_MS`) until that subscription is up.
    pub async fn open_session(&self, user: &str, encoding: Encoding, token_exp_ms: u64) -> Result<Session, Refusal> {
        let config = &self.services.config;
        let handle = Arc::new(SessionHandle {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            user: user.into(),
            encoding,
            outbox: Outbox::new(config.outbox_frames_max, config.outbox_bytes_max),
        });
        let share =
            self.services.directory.register(handle.clone(), config.user_sessions_max).map_err(|e| match e {
                Refused::TooManySessions { sessions_max } => {
                    SESSIONS_REFUSED.counter().increment(1);
                    Refusal::new(
                        viche_protocol::ErrorCode::Forbidden,
                        format!("this user already has {sessions_max} sessions open; close one first"),
                    )
                }
                Refused::Barred => Refusal::new(viche_protocol::ErrorCode::Unauthorized, "this account was deleted"),
            })?;
        let session = Session::new(self.services.clone(), handle, share.clone(), token_exp_ms);
        if let Some(cluster) = &self.services.cluster {
            let mut ready = {
                let mut follow = share.relay_follow.lock();
                let (_, ready) = follow.get_or_insert_with(|| {
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    let task = crate::cluster::relay::follow_user(
                        cluster.clone(),
                        user.into(),
                        self.services.rooms.clone(),
                        tx,
                    );
                    (tokio::spawn(task).abort_handle(), rx)
                });
                ready.clone()
            };
            let wait = Duration::from_millis(crate::cluster::NATS_WAIT_MS);
            if tokio::time::timeout(wait, ready.wait_for(|up| *up)).await.is_err() {
                tracing::warn!(user, "cluster: the user's DMs from other nodes are not followed yet");
            }
        }
        Ok(session)
    }

    /// A page of `room`'s history as `user` may read it (no join needed),
    /// within the user's history rate (`history_rate`, over HTTP).
    pub async fn history(
        &self,
        user: &str,
        room: &str,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> Result<HistoryPage, Refusal> {
        if let Err(retry_after_s) = self.history_by_user.take(user) {
            RATE_LIMITED.counter_with("history").increment(1);
            return Err(Refusal::rate_limited(retry_after_s));
        }
        history::page(self.services.store.as_ref(), user, room, before, limit).await
    }

    /// A page of `user`'s conversations (v1.1), newest activity first,
    /// within the user's HTTP history rate.
    pub async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> Result<ConversationsPage, Refusal> {
        if let Err(retry_after_s) = self.history_by_user.take(user) {
            RATE_LIMITED.counter_with("history").increment(1);
            return Err(Refusal::rate_limited(retry_after_s));
        }
        history::conversations(self.services.store.as_ref(), user, before, limit).await
    }

    /// Whether `user` may use `room` (and the id is valid): the rule every
    /// room request is checked against.
    pub fn check_access(&self, user: &str, room: &str) -> Result<(), Refusal> {
        crate::room::check_access(user, room).map(|_| ())
    }

    /// The next page of a replay: messages `after < seq <= upto`, oldest first.
    pub async fn replay_page(&self, room: &str, after: u64, upto: u64) -> Result<Vec<Msg>, StoreError> {
        history::replay_page(self.services.store.as_ref(), room, after, upto).await
    }

    /// Why the engine cannot take messages now (the store failed its last
    /// probe, the writer is restarting or its last commit failed, or the
    /// engine failed for good), if it cannot. Reads flags only: no store
    /// call.
    pub fn not_ready(&self) -> Option<String> {
        self.services.health.not_ready()
    }

    /// Resolves with the reason if the engine gives up for good (a
    /// supervisor passed its restart intensity limit): the process should
    /// then exit non-zero, so that its orchestrator restarts it.
    pub async fn failed(&self) -> String {
        self.services.health.wait_failed().await
    }

    /// Rooms open now (an empty room stops after `room_idle_ms`).
    pub fn rooms_open(&self) -> usize {
        self.services.rooms.open_count()
    }

    /// The writer queue's bound (`--writer-queue-max`).
    pub fn writer_queue_capacity(&self) -> usize {
        self.services.writer.queue_capacity()
    }

    // ----- the admin API (docs/operations.md, "The admin API") ----------

    /// What the store holds.
    pub async fn admin_stats(&self) -> Result<AdminStats, Refusal> {
        self.admin.stats().await
    }

    /// Deletes a user: account, conversations, markers; its sessions are
    /// closed with 4001; every message it sent is erased in place.
    pub async fn delete_user(&self, user: &str) -> Result<UserDeleted, Refusal> {
        self.admin.delete_user(user).await
    }

    /// Removes every stored message of a room; its seqs are not reused.
    pub async fn purge_room(&self, room: &str) -> Result<RoomPurged, Refusal> {
        self.admin.purge_room(room).await
    }

    /// A retention pass now.
    pub async fn run_retention(&self) -> Result<RetentionReport, Refusal> {
        self.admin.run_retention().await
    }

    /// A consistent online backup of the embedded store into the new
    /// directory `path` (`invalid` on MongoDB: use mongodump).
    pub async fn backup(&self, path: &str) -> Result<BackupDone, Refusal> {
        self.admin.backup(path).await
    }

    /// Refreshes the gauges that are sampled at scrape time.
    pub fn sample_metrics(&self) {
        crate::metrics::sample(&self.services.writer);
        if let Some(cluster) = &self.services.cluster {
            let owned = self.services.rooms.count_open(|room| cluster.owners.is_mine(room));
            crate::metrics::CLUSTER_ROOMS_OWNED.gauge().set(owned as f64);
        }
    }

    /// Shutdown, in order: wait (bounded) until the writer has committed
    /// and published everything queued, then ask every session to close
    /// with 1001 once its outbox is written.
    pub async fn shutdown(&self, wait_max: Duration) {
        let deadline = tokio::time::Instant::now() + wait_max;
        while self.services.writer.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let rooms publish what the writer just handed them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.close_sessions(Close::SHUTDOWN);
    }

    /// Asks every session to close with `close` once its outbox is written.
    pub fn close_sessions(&self, close: Close) {
        for session in self.services.directory.all() {
            session.outbox.close(close, true);
        }
    }
}

/// Probes the store with a small write every [`STORE_PROBE_INTERVAL_MS`]
/// (within the store's deadline) and records the result for readiness.
async fn probe_store(store: Arc<dyn Store>, health: Arc<Health>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STORE_PROBE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = store.check_ready().await;
        STORE_PROBES.counter_with(if result.is_ok() { "ok" } else { "failed" }).increment(1);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "the store failed its readiness probe");
        }
        health.set_store_probe(result.err().map(|e| e.to_string()));
    }
}
