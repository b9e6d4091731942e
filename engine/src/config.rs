//! Every bound the engine enforces, in one struct, with the unit last in
//! each name; and each default, spelled once.
//!
//! The contract's defaults (docs/protocol.md, "Limits") come from
//! `viche_protocol::limits`; the engine's own are the constants below. The
//! gateway's flags use these same constants as their defaults.

use viche_protocol::limits::{self, Rate};

/// Messages waiting for the writer; past it, senders get `overloaded`.
pub const WRITER_QUEUE_MAX_DEFAULT: usize = 65_536;
/// Messages in one store commit, at most.
pub const WRITER_BATCH_MAX_DEFAULT: usize = 4096;
/// An empty room with nothing in flight stops after this long.
pub const ROOM_IDLE_MS_DEFAULT: u64 = 30_000;
/// Rooms one session may have joined at once.
pub const SESSION_ROOMS_MAX_DEFAULT: usize = 1024;
/// Rooms one process keeps active at once; past it, joins get `overloaded`.
pub const ROOMS_MAX_DEFAULT: usize = 1_000_000;
/// Lifetime of an issued token.
pub const TOKEN_TTL_S_DEFAULT: u64 = 86_400;
/// A store call with no answer within this long counts as failed (the
/// writer retries it; a room retries loading its last seq).
pub const STORE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// argon2id hashes computed at once (each takes ~19 MiB, held for the
/// life of the process, and a core).
pub const ARGON2_CONCURRENCY_DEFAULT: usize = 2;
/// Password checks waiting for their turn; past it, 503 with Retry-After.
/// The longest wait is about this × one hash (~50 ms) ÷ the concurrency:
/// 1.6 s with the defaults.
pub const ARGON2_QUEUE_MAX_DEFAULT: usize = 64;
/// Sessions one user may have open at once (devices, tabs).
pub const USER_SESSIONS_MAX_DEFAULT: usize = 64;
/// Room memberships of one user, summed over its sessions.
pub const USER_ROOMS_MAX_DEFAULT: usize = 4096;
/// Messages of one user waiting for the writer: a share of the queue all
/// users fill, so one cannot take it all.
pub const WRITER_QUEUE_USER_MAX_DEFAULT: usize = 4096;
/// `history` requests per session (WebSocket) or per user (HTTP).
pub const HISTORY_RATE_DEFAULT: Rate = Rate { per_second: 10.0, burst: 20 };
/// `join`s with `since` (each may replay up to 1000 messages) per session.
pub const REPLAY_RATE_DEFAULT: Rate = Rate { per_second: 2.0, burst: 20 };
/// v1.1 `read` markers per session (a client marks as the user reads).
pub const READ_RATE_DEFAULT: Rate = Rate { per_second: 10.0, burst: 30 };
/// How often the store's upkeep runs: retention, and the store's gauges.
pub const RETENTION_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Rows one retention (or purge, or user erasure) transaction removes or
/// erases at most: each is a short write, so the writer never waits long.
pub const RETENTION_BATCH_ROWS_MAX_DEFAULT: usize = 1000;
/// Failed logins per client address, across all usernames.
pub const FAILED_LOGIN_ADDRESS_RATE_DEFAULT: Rate = Rate { per_second: 30.0 / 60.0, burst: 30 };
/// Failed logins per username, from every address together.
pub const FAILED_LOGIN_USER_RATE_DEFAULT: Rate = Rate { per_second: 100.0 / 60.0, burst: 100 };

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub frame_bytes_max: usize,
    pub body_bytes_max: usize,
    pub heartbeat_ms: u64,
    pub hello_timeout_ms: u64,
    pub outbox_frames_max: usize,
    pub outbox_bytes_max: usize,
    pub send_rate: Rate,
    pub typing_rate: Rate,
    pub join_rate: Rate,
    pub writer_queue_max: usize,
    pub writer_batch_max: usize,
    pub room_idle_ms: u64,
    pub session_rooms_max: usize,
    /// Room memberships of one user, summed over its sessions.
    pub user_rooms_max: usize,
    pub user_sessions_max: usize,
    pub rooms_max: usize,
    pub writer_queue_user_max: usize,
    pub history_rate: Rate,
    pub replay_rate: Rate,
    pub read_rate: Rate,
    /// v1.1: public rooms among one user's conversations.
    pub user_public_conversations_max: usize,
    pub token_ttl_s: u64,
    pub argon2_concurrency: usize,
    pub argon2_queue_max: usize,
    pub store_timeout_ms: u64,
    /// Failed logins, per (username, client address).
    pub failed_login_rate: Rate,
    /// Failed logins, per client address.
    pub failed_login_address_rate: Rate,
    /// Failed logins, per username.
    pub failed_login_user_rate: Rate,
    /// Registrations per client address.
    pub register_rate: Rate,
    /// Retention by age: messages older than this are removed (off: `None`).
    pub retention_age_ms: Option<u64>,
    /// Retention by count: each room keeps at most this many (off: `None`).
    pub retention_room_messages_max: Option<u64>,
    pub retention_interval_ms: u64,
    pub retention_batch_rows_max: usize,
    /// `viche_store_size_alert_bytes`, what the store-size alert compares
    /// with (0: no alert).
    pub store_size_alert_bytes: u64,
    /// Part of a cluster over NATS (`--cluster-nats`), or alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: limits::FRAME_BYTES_MAX_DEFAULT,
            body_bytes_max: limits::BODY_BYTES_MAX_DEFAULT,
            heartbeat_ms: limits::HEARTBEAT_MS_DEFAULT,
            hello_timeout_ms: limits::HELLO_TIMEOUT_MS,
            outbox_frames_max: limits::OUTBOX_FRAMES_MAX_DEFAULT,
            outbox_bytes_max: limits::OUTBOX_BYTES_MAX_DEFAULT,
            send_rate: limits::SEND_RATE_DEFAULT,
            typing_rate: limits::TYPING_RATE_DEFAULT,
            join_rate: limits::JOIN_RATE_DEFAULT,
            writer_queue_max: WRITER_QUEUE_MAX_DEFAULT,
            writer_batch_max: WRITER_BATCH_MAX_DEFAULT,
            room_idle_ms: ROOM_IDLE_MS_DEFAULT,
            session_rooms_max: SESSION_ROOMS_MAX_DEFAULT,
            user_rooms_max: USER_ROOMS_MAX_DEFAULT,
            user_sessions_max: USER_SESSIONS_MAX_DEFAULT,
            rooms_max: ROOMS_MAX_DEFAULT,
            writer_queue_user_max: WRITER_QUEUE_USER_MAX_DEFAULT,
            history_rate: HISTORY_RATE_DEFAULT,
            replay_rate: REPLAY_RATE_DEFAULT,
            read_rate: READ_RATE_DEFAULT,
            user_public_conversations_max: limits::USER_PUBLIC_CONVERSATIONS_MAX,
            token_ttl_s: TOKEN_TTL_S_DEFAULT,
            argon2_concurrency: ARGON2_CONCURRENCY_DEFAULT,
            argon2_queue_max: ARGON2_QUEUE_MAX_DEFAULT,
            store_timeout_ms: STORE_TIMEOUT_MS_DEFAULT,
            failed_login_rate: limits::FAILED_LOGIN_RATE_DEFAULT,
            failed_login_address_rate: FAILED_LOGIN_ADDRESS_RATE_DEFAULT,
            failed_login_user_rate: FAILED_LOGIN_USER_RATE_DEFAULT,
            register_rate: limits::REGISTER_RATE_DEFAULT,
            retention_age_ms: None,
            retention_room_messages_max: None,
            retention_interval_ms: RETENTION_INTERVAL_MS_DEFAULT,
            retention_batch_rows_max: RETENTION_BATCH_ROWS_MAX_DEFAULT,
            store_size_alert_bytes: 0,
            cluster: None,
        }
    }
}

impl EngineConfig {
    /// Asserts what every part of the engine relies on (the gateway checks
    /// flags with clear messages before this).
    pub fn assert_valid(&self) {
        assert!(self.frame_bytes_max > 0 && self.body_bytes_max > 0);
        assert!(self.heartbeat_ms > 0 && self.hello_timeout_ms > 0);
        assert!(self.outbox_frames_max > 0 && self.outbox_bytes_max > 0);
        assert!(self.writer_queue_max > 0 && self.writer_batch_max > 0);
        assert!(self.session_rooms_max > 0 && self.rooms_max > 0);
        assert!(self.user_rooms_max > 0 && self.user_sessions_max > 0 && self.writer_queue_user_max > 0);
        assert!(self.user_public_conversations_max > 0);
        assert!(self.token_ttl_s > 0 && self.argon2_concurrency > 0 && self.store_timeout_ms > 0);
        assert!(self.retention_interval_ms > 0 && self.retention_batch_rows_max > 0);
        assert!(self.retention_age_ms != Some(0) && self.retention_room_messages_max != Some(0));
        if let Some(cluster) = &self.cluster {
            let id = &cluster.node_id;
            assert!(!id.is_empty() && id.len() <= crate::cluster::NODE_ID_BYTES_MAX);
            assert!(cluster.failover_ms >= 300 && !cluster.prefix.is_empty());
        }
        let rates = [
            self.send_rate,
            self.typing_rate,
            self.join_rate,
            self.history_rate,
            self.replay_rate,
            self.read_rate,
            self.failed_login_rate,
            self.failed_login_address_rate,
            self.failed_login_user_rate,
            self.register_rate,
        ];
        for rate in rates {
            assert!(rate.per_second > 0.0 && rate.burst > 0, "a rate of zero would refuse everything");
        }
    }
}
