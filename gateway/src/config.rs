//! Command-line flags and environment variables (README.md,
//! "Configuration"; docs/architecture.md, "Bounds").
//!
//! Bad configuration is refused at start with one clear line, before
//! anything is opened. Each default is the engine's or the protocol's
//! constant: spelled once, there. Flags keep their documented spelling.
//!
//! Without a subcommand `viche` is the server; `viche admin …` is the
//! command-line client of a running server's admin API (`admin_cli.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use viche_engine::cluster::{ClusterConfig, NatsAuth, NatsTls};
use viche_engine::config::{self as engine, EngineConfig};
use viche_protocol::limits::{self, Rate};

/// Open WebSocket connections at most (`--max-connections`).
pub const CONNECTIONS_MAX_DEFAULT: usize = 100_000;
/// TCP connections in their HTTP phase (not upgraded to a WebSocket) at
/// most (`--max-http-connections`): a tenth of the WebSocket bound, since
/// a client holds one only while it logs in, registers, reads history or
/// upgrades.
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Connections per client address (an IPv6 /64) at most, HTTP and
/// WebSocket, before `hello` and after (`--max-connections-per-ip`). Room
/// for a few dozen users behind one NAT with several tabs each, while one
/// address can take at most 1/40 of the HTTP slots and 1/400 of the
/// WebSocket slots.
pub const CONNECTIONS_PER_IP_MAX_DEFAULT: usize = 256;
/// A socket that accepts no byte of a pending write for this long is
/// closed: a WebSocket as a slow consumer (4008), an HTTP connection
/// without its response (`--write-timeout-ms`).
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// A request's headers must arrive within this long, and then its body
/// within this long (`--http-request-timeout-ms`).
pub const HTTP_REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The embedded store's page cache (redb's own default is 1 GiB).
pub const STORE_CACHE_MIB_DEFAULT: usize = viche_engine::store::embedded::CACHE_BYTES_DEFAULT >> 20;
/// At most 1 TiB, so that it fits in bytes.
pub const STORE_CACHE_MIB_MAX: usize = 1 << 20;
/// Threads for blocking work: the embedded store's reads and commits
/// (`--blocking-threads`). tokio's own default is 512, and its pool keeps
/// the threads of a burst under steady load (each new task wakes an idle
/// one, so none idles out), each with its own allocator caches: a soak
/// held 200 of them and its RSS grew for as long as it ran.
pub const BLOCKING_THREADS_DEFAULT: usize = 16;
/// tokio's own default, the most this flag allows.
pub const BLOCKING_THREADS_MAX: usize = 512;

/// The bounds of the connection edge: sockets and their deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    pub write_timeout_ms: u64,
    pub http_request_timeout_ms: u64,
    pub http_connections_max: usize,
    pub connections_per_ip_max: usize,
}

impl EdgeLimits {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn http_request_timeout(&self) -> Duration {
        Duration::from_millis(self.http_request_timeout_ms)
    }
}

/// Retention by age: at most this many days (fractions allowed, for tests).
pub const RETENTION_DAYS_MAX: f64 = 36_500.0;
/// The admin token, like a JWT secret, is at least this long.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 16;

#[derive(Debug, Clone, Parser)]
#[command(name = "viche", version, about = "Viche: a real-time chat engine")]
pub struct Args {
    /// Without one, run the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP + WebSocket address.
    #[arg(long, env = "VICHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The embedded store's directory (used when no MongoDB URI is given).
    #[arg(long, env = "VICHE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Use MongoDB instead of the embedded store.
    #[arg(long, env = "VICHE_MONGO_URI")]
    pub mongo_uri: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "VICHE_MONGO_DB", default_value = "viche")]
    pub mongo_db: String,
    /// MongoDB write concern `w` for messages and users: `majority`, a
    /// number of nodes, or `auto`: `majority` when the server is a replica
    /// set member (detected at start), else `1`.
    #[arg(long, env = "VICHE_MONGO_WRITE_CONCERN", default_value = "auto")]
    pub mongo_write_concern: String,
    /// Whether MongoDB acknowledges only after its journal is on disk (`j`).
    #[arg(long, env = "VICHE_MONGO_JOURNAL", default_value_t = true, action = clap::ArgAction::Set)]
    pub mongo_journal: bool,
    /// HS256 signing key; generated once and kept in the data dir when absent.
    #[arg(long, env = "VICHE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "VICHE_TOKEN_TTL", default_value_t = engine::TOKEN_TTL_S_DEFAULT)]
    pub token_ttl: u64,
    /// Static files served at `/` (the web client). Default: the committed
    /// build `web/dist`, of the current directory or else of this source tree.
    #[arg(long, env = "VICHE_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "VICHE_LOG_JSON")]
    pub log_json: bool,
    /// Record no metrics and serve no `/metrics` (to measure their cost).
    #[arg(long, env = "VICHE_NO_METRICS")]
    pub no_metrics: bool,

    /// WebSocket ping interval; a connection silent for twice this is closed.
    #[arg(long, env = "VICHE_HEARTBEAT_MS", default_value_t = limits::HEARTBEAT_MS_DEFAULT)]
    pub heartbeat_ms: u64,
    /// Time a new connection has to send `hello`.
    #[arg(long, env = "VICHE_HELLO_TIMEOUT_MS", default_value_t = limits::HELLO_TIMEOUT_MS)]
    pub hello_timeout_ms: u64,
    /// Largest frame a client may send.
    #[arg(long, env = "VICHE_MAX_FRAME_BYTES", default_value_t = limits::FRAME_BYTES_MAX_DEFAULT)]
    pub max_frame_bytes: usize,
    /// Largest message body.
    #[arg(long, env = "VICHE_MAX_BODY_BYTES", default_value_t = limits::BODY_BYTES_MAX_DEFAULT)]
    pub max_body_bytes: usize,
    /// Outbound queue per session, in frames (slow-consumer limit).
    #[arg(long, env = "VICHE_OUTBOX_MAX_FRAMES", default_value_t = limits::OUTBOX_FRAMES_MAX_DEFAULT)]
    pub outbox_max_frames: usize,
    /// Outbound queue per session, in bytes (slow-consumer limit).
    #[arg(long, env = "VICHE_OUTBOX_MAX_BYTES", default_value_t = limits::OUTBOX_BYTES_MAX_DEFAULT)]
    pub outbox_max_bytes: usize,
    /// Messages waiting for the store before senders get `overloaded`.
    #[arg(long, env = "VICHE_WRITER_QUEUE_MAX", default_value_t = engine::WRITER_QUEUE_MAX_DEFAULT)]
    pub writer_queue_max: usize,
    /// Messages per store commit, at most.
    #[arg(long, env = "VICHE_WRITER_BATCH_MAX", default_value_t = engine::WRITER_BATCH_MAX_DEFAULT)]
    pub writer_batch_max: usize,
    /// An empty room stops after this long without activity.
    #[arg(long, env = "VICHE_ROOM_IDLE_MS", default_value_t = engine::ROOM_IDLE_MS_DEFAULT)]
    pub room_idle_ms: u64,
    /// The embedded store's page cache, in MiB (redb's reads and writes; the
    /// server's RSS grows with the store up to about this much).
    #[arg(long, env = "VICHE_STORE_CACHE_MIB", default_value_t = STORE_CACHE_MIB_DEFAULT)]
    pub store_cache_mib: usize,
    /// Threads for blocking work (the embedded store's reads and commits);
    /// more calls at once wait for one of them.
    #[arg(long, env = "VICHE_BLOCKING_THREADS", default_value_t = BLOCKING_THREADS_DEFAULT)]
    pub blocking_threads: usize,
    /// A store call with no answer within this long counts as failed (and is retried).
    #[arg(long, env = "VICHE_STORE_TIMEOUT_MS", default_value_t = engine::STORE_TIMEOUT_MS_DEFAULT)]
    pub store_timeout_ms: u64,
    /// Password hashes computed at once (argon2id is CPU- and memory-heavy).
    #[arg(long, env = "VICHE_ARGON2_CONCURRENCY", default_value_t = engine::ARGON2_CONCURRENCY_DEFAULT)]
    pub argon2_concurrency: usize,
    /// Password checks waiting for a turn; past it, logins and registrations
    /// get 503 with Retry-After.
    #[arg(long, env = "VICHE_ARGON2_QUEUE_MAX", default_value_t = engine::ARGON2_QUEUE_MAX_DEFAULT)]
    pub argon2_queue_max: usize,
    /// `send` + `dm` per session: tokens per second and burst.
    #[arg(long, env = "VICHE_SEND_PER_SECOND", default_value_t = limits::SEND_RATE_DEFAULT.per_second)]
    pub send_per_second: f64,
    #[arg(long, env = "VICHE_SEND_BURST", default_value_t = limits::SEND_RATE_DEFAULT.burst)]
    pub send_burst: u32,
    /// `typing` per session.
    #[arg(long, env = "VICHE_TYPING_PER_SECOND", default_value_t = limits::TYPING_RATE_DEFAULT.per_second)]
    pub typing_per_second: f64,
    #[arg(long, env = "VICHE_TYPING_BURST", default_value_t = limits::TYPING_RATE_DEFAULT.burst)]
    pub typing_burst: u32,
    /// `join` + `leave` per session.
    #[arg(long, env = "VICHE_JOIN_PER_SECOND", default_value_t = limits::JOIN_RATE_DEFAULT.per_second)]
    pub join_per_second: f64,
    #[arg(long, env = "VICHE_JOIN_BURST", default_value_t = limits::JOIN_RATE_DEFAULT.burst)]
    pub join_burst: u32,
    /// Failed logins per (username, client address), per minute.
    #[arg(long, env = "VICHE_FAILED_LOGINS_PER_MINUTE", default_value_t = limits::FAILED_LOGIN_RATE_DEFAULT.per_second * 60.0)]
    pub failed_logins_per_minute: f64,
    #[arg(long, env = "VICHE_FAILED_LOGINS_BURST", default_value_t = limits::FAILED_LOGIN_RATE_DEFAULT.burst)]
    pub failed_logins_burst: u32,
    /// Failed logins per client address (all usernames), per minute.
    #[arg(long, env = "VICHE_FAILED_LOGINS_PER_ADDRESS_PER_MINUTE", default_value_t = engine::FAILED_LOGIN_ADDRESS_RATE_DEFAULT.per_second * 60.0)]
    pub failed_logins_per_address_per_minute: f64,
    #[arg(long, env = "VICHE_FAILED_LOGINS_PER_ADDRESS_BURST", default_value_t = engine::FAILED_LOGIN_ADDRESS_RATE_DEFAULT.burst)]
    pub failed_logins_per_address_burst: u32,
    /// Failed logins per username (all addresses), per minute: a ceiling
    /// on guessing one account from many addresses.
    #[arg(long, env = "VICHE_FAILED_LOGINS_PER_USER_PER_MINUTE", default_value_t = engine::FAILED_LOGIN_USER_RATE_DEFAULT.per_second * 60.0)]
    pub failed_logins_per_user_per_minute: f64,
    #[arg(long, env = "VICHE_FAILED_LOGINS_PER_USER_BURST", default_value_t = engine::FAILED_LOGIN_USER_RATE_DEFAULT.burst)]
    pub failed_logins_per_user_burst: u32,
    /// Registrations per client address, per minute.
    #[arg(long, env = "VICHE_REGISTRATIONS_PER_MINUTE", default_value_t = limits::REGISTER_RATE_DEFAULT.per_second * 60.0)]
    pub registrations_per_minute: f64,
    #[arg(long, env = "VICHE_REGISTRATIONS_BURST", default_value_t = limits::REGISTER_RATE_DEFAULT.burst)]
    pub registrations_burst: u32,
    /// Browser pages that may open a WebSocket, as origins separated by
    /// commas (`https://chat.example.com`); `*` allows any. Empty: pages
    /// served by this server only (Origin matches Host). Requests without
    /// an Origin (not from a browser) are always allowed.
    #[arg(long, env = "VICHE_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` headers name
    /// the real client (CIDRs separated by commas). Empty: the TCP peer is
    /// the client, and those headers are ignored.
    #[arg(long, env = "VICHE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Sessions one user may have open at once; the next is refused at
    /// `hello` with an `error` and close 4009.
    #[arg(long, env = "VICHE_MAX_SESSIONS_PER_USER", default_value_t = engine::USER_SESSIONS_MAX_DEFAULT)]
    pub max_sessions_per_user: usize,
    /// Room memberships of one user, summed over its sessions; past it, `join` gets `invalid`.
    #[arg(long, env = "VICHE_MAX_ROOMS_PER_USER", default_value_t = engine::USER_ROOMS_MAX_DEFAULT)]
    pub max_rooms_per_user: usize,
    /// v1.1: public rooms among one user's conversations (the contract's
    /// 1024); past it, `join` of another room gets `invalid`.
    #[arg(
        long,
        env = "VICHE_MAX_PUBLIC_CONVERSATIONS_PER_USER",
        default_value_t = viche_protocol::limits::USER_PUBLIC_CONVERSATIONS_MAX
    )]
    pub max_public_conversations_per_user: usize,
    /// Rooms active in this process at once; past it, joins to new rooms get `overloaded`.
    #[arg(long, env = "VICHE_ROOMS_MAX", default_value_t = engine::ROOMS_MAX_DEFAULT)]
    pub rooms_max: usize,
    /// Messages of one user waiting for the writer; past it, that user's sends get `overloaded`.
    #[arg(long, env = "VICHE_WRITER_QUEUE_PER_USER_MAX", default_value_t = engine::WRITER_QUEUE_USER_MAX_DEFAULT)]
    pub writer_queue_per_user_max: usize,
    /// `history` per session (WebSocket) or per user (HTTP): tokens per second and burst.
    #[arg(long, env = "VICHE_HISTORY_PER_SECOND", default_value_t = engine::HISTORY_RATE_DEFAULT.per_second)]
    pub history_per_second: f64,
    #[arg(long, env = "VICHE_HISTORY_BURST", default_value_t = engine::HISTORY_RATE_DEFAULT.burst)]
    pub history_burst: u32,
    /// `join` with `since` (a replay) per session.
    #[arg(long, env = "VICHE_REPLAYS_PER_SECOND", default_value_t = engine::REPLAY_RATE_DEFAULT.per_second)]
    pub replays_per_second: f64,
    #[arg(long, env = "VICHE_REPLAYS_BURST", default_value_t = engine::REPLAY_RATE_DEFAULT.burst)]
    pub replays_burst: u32,
    /// Open connections at most; past it new ones are refused at once.
    #[arg(long, env = "VICHE_MAX_CONNECTIONS", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    pub max_connections: usize,
    /// TCP connections in their HTTP phase (not upgraded) at most; past it
    /// new ones are closed at once.
    #[arg(long, env = "VICHE_MAX_HTTP_CONNECTIONS", default_value_t = HTTP_CONNECTIONS_MAX_DEFAULT)]
    pub max_http_connections: usize,
    /// Connections (HTTP and WebSocket, before `hello` too) per client
    /// address at most, an IPv6 address counting as its /64; past it new
    /// ones are closed at once (503 when they come through a trusted proxy).
    #[arg(long, env = "VICHE_MAX_CONNECTIONS_PER_IP", default_value_t = CONNECTIONS_PER_IP_MAX_DEFAULT)]
    pub max_connections_per_ip: usize,
    /// A socket that accepts no byte of a pending write for this long is
    /// closed (a WebSocket with 4008, as a slow consumer).
    #[arg(long, env = "VICHE_WRITE_TIMEOUT_MS", default_value_t = WRITE_TIMEOUT_MS_DEFAULT)]
    pub write_timeout_ms: u64,
    /// An HTTP request's headers must arrive within this long, and then its
    /// body within this long; else the connection is closed (408 for a body).
    #[arg(long, env = "VICHE_HTTP_REQUEST_TIMEOUT_MS", default_value_t = HTTP_REQUEST_TIMEOUT_MS_DEFAULT)]
    pub http_request_timeout_ms: u64,

    /// Retention by age: messages older than this many days are removed
    /// (fractions allowed). Off when absent.
    #[arg(long, env = "VICHE_RETENTION_DAYS")]
    pub retention_days: Option<f64>,
    /// Retention by count: each room keeps at most this many of its newest
    /// messages (events count). Off when absent.
    #[arg(long, env = "VICHE_RETENTION_MESSAGES_PER_ROOM")]
    pub retention_messages_per_room: Option<u64>,
    /// How often the store's upkeep runs (retention, and the store gauges).
    #[arg(long, env = "VICHE_RETENTION_INTERVAL_MS", default_value_t = engine::RETENTION_INTERVAL_MS_DEFAULT)]
    pub retention_interval_ms: u64,
    /// Rows one retention, purge or erasure transaction touches at most.
    #[arg(long, env = "VICHE_RETENTION_BATCH_ROWS", default_value_t = engine::RETENTION_BATCH_ROWS_MAX_DEFAULT)]
    pub retention_batch_rows: usize,
    /// Turns the admin API on (`/api/admin/…`), for requests carrying this
    /// token as `Authorization: Bearer`. At least 16 characters.
    #[arg(long, env = "VICHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// `viche_store_size_alert_bytes`: the store size past which the
    /// VicheStoreLarge alert fires (0: never).
    #[arg(long, env = "VICHE_STORE_SIZE_ALERT_BYTES", default_value_t = 0)]
    pub store_size_alert_bytes: u64,

    /// Join a cluster whose nodes talk through this NATS server
    /// (`nats://HOST:PORT`, or `tls://HOST:PORT` to require TLS). Needs
    /// --mongo-uri: the nodes share one MongoDB.
    #[arg(long, env = "VICHE_CLUSTER_NATS")]
    pub cluster_nats: Option<String>,
    /// TLS to NATS: trust the certificates this CA (PEM file) signed, as
    /// well as the system's roots. Implies TLS.
    #[arg(long, env = "VICHE_CLUSTER_NATS_CA")]
    pub cluster_nats_ca: Option<PathBuf>,
    /// TLS to NATS: this node's certificate (PEM), for a NATS that verifies
    /// its clients (with --cluster-nats-key). Implies TLS.
    #[arg(long, env = "VICHE_CLUSTER_NATS_CERT")]
    pub cluster_nats_cert: Option<PathBuf>,
    /// TLS to NATS: the key of --cluster-nats-cert (PEM).
    #[arg(long, env = "VICHE_CLUSTER_NATS_KEY")]
    pub cluster_nats_key: Option<PathBuf>,
    /// The NATS user, when NATS asks for one (with --cluster-nats-password).
    #[arg(long, env = "VICHE_CLUSTER_NATS_USER")]
    pub cluster_nats_user: Option<String>,
    /// The NATS user's password (better given in the environment).
    #[arg(long, env = "VICHE_CLUSTER_NATS_PASSWORD", hide_env_values = true)]
    pub cluster_nats_password: Option<String>,
    /// This node's name in the cluster: 1 to 64 of `A-Z a-z 0-9 _ . -`,
    /// unique among the nodes. Default: the host name and the process id.
    #[arg(long, env = "VICHE_NODE_ID")]
    pub node_id: Option<String>,
    /// A node not heard from for this long is gone.
    #[arg(long, env = "VICHE_CLUSTER_FAILOVER_MS", default_value_t = viche_engine::cluster::FAILOVER_MS_DEFAULT)]
    pub cluster_failover_ms: u64,
    /// How often each node restates who is in each room it has open, so
    /// that presence lost between nodes is corrected.
    #[arg(long, env = "VICHE_CLUSTER_ROSTER_MS", default_value_t = viche_engine::cluster::ROSTER_MS_DEFAULT)]
    pub cluster_roster_ms: u64,
    /// NATS subjects start with this, so that clusters may share one NATS:
    /// `A-Z a-z 0-9 _ -` tokens joined by `.`, at most 64 bytes.
    #[arg(long, env = "VICHE_CLUSTER_PREFIX", default_value = "viche")]
    pub cluster_prefix: String,
}

fn url_wants_tls(url: &str) -> bool {
    url.starts_with("tls://")
}

/// `--cluster-failover-ms`'s bounds: short enough to fail over, long
/// enough that a busy node's heartbeat is not missed.
pub const CLUSTER_FAILOVER_MS_MIN: u64 = 300;
pub const CLUSTER_FAILOVER_MS_MAX: u64 = 600_000;
/// `--cluster-roster-ms`'s bounds: a roster a second at most per room.
pub const CLUSTER_ROSTER_MS_MIN: u64 = 1_000;
pub const CLUSTER_ROSTER_MS_MAX: u64 = 3_600_000;
/// `--cluster-prefix`'s longest.
pub const CLUSTER_PREFIX_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Calls the admin API of a running server (docs/operations.md).
    Admin(AdminArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's base URL.
    #[arg(long, env = "VICHE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's `--admin-token`.
    #[arg(long, env = "VICHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the server's JSON answer instead of sentences.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// Users, rooms, messages, store size, oldest message, retention.
    Stats,
    /// Deletes a user: account, conversations, markers; closes its
    /// sessions; erases every message it sent.
    DeleteUser { user: String },
    /// Removes every stored message of a room (its seqs are not reused).
    PurgeRoom { room: String },
    /// Runs a retention pass now.
    Retention,
    /// Backs the embedded store up into a new directory (absolute path on
    /// the server's machine); restore with `viche --data-dir PATH`.
    Backup { path: String },
}

/// The web client's build when `--web-dir` is absent: `web/dist` (the
/// committed output of `npm run build` in `web/`) under the current
/// directory, else under the source tree this binary was built from.
/// `None` when neither has an `index.html`; `/` then shows a placeholder.
pub fn default_web_dir() -> Option<PathBuf> {
    let candidates = [PathBuf::from("web/dist"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist")];
    candidates.into_iter().find(|dir| dir.join("index.html").is_file()).map(|dir| dir.canonicalize().unwrap_or(dir))
}

impl Args {
    /// `--web-dir`, or else [`default_web_dir`].
    pub fn resolved_web_dir(&self) -> Option<PathBuf> {
        self.web_dir.clone().or_else(default_web_dir)
    }

    /// Checks every bound; the error is the one line printed at start.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--heartbeat-ms", self.heartbeat_ms as usize),
            ("--hello-timeout-ms", self.hello_timeout_ms as usize),
            ("--outbox-max-frames", self.outbox_max_frames),
            ("--outbox-max-bytes", self.outbox_max_bytes),
            ("--writer-queue-max", self.writer_queue_max),
            ("--writer-batch-max", self.writer_batch_max),
            ("--argon2-concurrency", self.argon2_concurrency),
            ("--store-timeout-ms", self.store_timeout_ms as usize),
            ("--store-cache-mib", self.store_cache_mib),
            ("--blocking-threads", self.blocking_threads),
            ("--max-sessions-per-user", self.max_sessions_per_user),
            ("--max-rooms-per-user", self.max_rooms_per_user),
            ("--max-public-conversations-per-user", self.max_public_conversations_per_user),
            ("--rooms-max", self.rooms_max),
            ("--writer-queue-per-user-max", self.writer_queue_per_user_max),
            ("--max-connections", self.max_connections),
            ("--max-http-connections", self.max_http_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            ("--write-timeout-ms", self.write_timeout_ms as usize),
            ("--http-request-timeout-ms", self.http_request_timeout_ms as usize),
            ("--token-ttl", self.token_ttl as usize),
            ("--retention-interval-ms", self.retention_interval_ms as usize),
            ("--retention-batch-rows", self.retention_batch_rows),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        let maxima = [
            ("--store-cache-mib", self.store_cache_mib, STORE_CACHE_MIB_MAX),
            ("--blocking-threads", self.blocking_threads, BLOCKING_THREADS_MAX),
        ];
        for (flag, value, max) in maxima {
            if value > max {
                return Err(format!("{flag} must be at most {max}"));
            }
        }
        let rates = [
            ("--send-per-second/--send-burst", self.send_per_second, self.send_burst),
            ("--typing-per-second/--typing-burst", self.typing_per_second, self.typing_burst),
            ("--join-per-second/--join-burst", self.join_per_second, self.join_burst),
            ("--history-per-second/--history-burst", self.history_per_second, self.history_burst),
            ("--replays-per-second/--replays-burst", self.replays_per_second, self.replays_burst),
            (
                "--failed-logins-per-minute/--failed-logins-burst",
                self.failed_logins_per_minute,
                self.failed_logins_burst,
            ),
            (
                "--failed-logins-per-address-per-minute/--failed-logins-per-address-burst",
                self.failed_logins_per_address_per_minute,
                self.failed_logins_per_address_burst,
            ),
            (
                "--failed-logins-per-user-per-minute/--failed-logins-per-user-burst",
                self.failed_logins_per_user_per_minute,
                self.failed_logins_per_user_burst,
            ),
            (
                "--registrations-per-minute/--registrations-burst",
                self.registrations_per_minute,
                self.registrations_burst,
            ),
        ];
        for (flags, rate, burst) in rates {
            if !(rate.is_finite() && rate > 0.0) || burst == 0 {
                return Err(format!("{flags} must both be greater than 0"));
            }
        }
        crate::http::AllowedOrigins::parse(&self.allowed_origins)?;
        crate::http::TrustedProxies::parse(&self.trusted_proxies)?;
        if self.max_frame_bytes < 256 {
            return Err("--max-frame-bytes must be at least 256".into());
        }
        if self.max_body_bytes == 0 || self.max_body_bytes + 512 > self.max_frame_bytes {
            return Err(format!(
                "--max-body-bytes must be between 1 and --max-frame-bytes minus 512 ({})",
                self.max_frame_bytes.saturating_sub(512)
            ));
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < 16 {
                return Err("--jwt-secret must be at least 16 bytes".into());
            }
        }
        if let Some(days) = self.retention_days {
            if !(days.is_finite() && days > 0.0 && days <= RETENTION_DAYS_MAX) {
                return Err(format!("--retention-days must be greater than 0 and at most {RETENTION_DAYS_MAX}"));
            }
        }
        if self.retention_messages_per_room == Some(0) {
            return Err("--retention-messages-per-room must be greater than 0".into());
        }
        if let Some(token) = &self.admin_token {
            if token.chars().count() < ADMIN_TOKEN_CHARS_MIN {
                return Err(format!("--admin-token must be at least {ADMIN_TOKEN_CHARS_MIN} characters"));
            }
            if self.jwt_secret.as_deref() == Some(token.as_str()) {
                return Err("--admin-token must not be the --jwt-secret".into());
            }
        }
        self.validate_cluster()?;
        if let Some(uri) = &self.mongo_uri {
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err("--mongo-uri must start with mongodb:// or mongodb+srv://".into());
            }
            if self.mongo_db.is_empty() || self.mongo_db.contains(['/', '\\', '.', ' ', '"', '$']) {
                return Err("--mongo-db must be a non-empty name without / \\ . space \" or $".into());
            }
            if !["majority", "auto"].contains(&self.mongo_write_concern.as_str())
                && self.mongo_write_concern.parse::<u32>().map_or(true, |n| n == 0)
            {
                return Err("--mongo-write-concern must be \"majority\", \"auto\" or a number of nodes ≥ 1".into());
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), String> {
        let Some(url) = &self.cluster_nats else {
            if self.node_id.is_some()
                || self.cluster_nats_user.is_some()
                || self.cluster_nats_password.is_some()
                || self.cluster_nats_ca.is_some()
                || self.cluster_nats_cert.is_some()
                || self.cluster_nats_key.is_some()
            {
                return Err("--node-id and the other --cluster-nats-* flags need --cluster-nats".into());
            }
            return Ok(());
        };
        if self.cluster_nats_cert.is_some() != self.cluster_nats_key.is_some() {
            return Err("--cluster-nats-cert and --cluster-nats-key go together".into());
        }
        if self.cluster_nats_user.is_some() != self.cluster_nats_password.is_some()
            || self.cluster_nats_user.as_deref() == Some("")
        {
            return Err("--cluster-nats-user and --cluster-nats-password go together (a non-empty user)".into());
        }
        if self.mongo_uri.is_none() {
            return Err("--cluster-nats needs --mongo-uri: the nodes of a cluster share one MongoDB, and the embedded store belongs to one process".into());
        }
        let host = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
        if host.is_none_or(str::is_empty) {
            return Err("--cluster-nats must be a nats:// or tls:// URL".into());
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > viche_engine::cluster::NODE_ID_BYTES_MAX || !id.chars().all(is_name_char) {
                return Err(format!(
                    "--node-id must be 1 to {} of A-Z a-z 0-9 _ . -",
                    viche_engine::cluster::NODE_ID_BYTES_MAX
                ));
            }
        }
        if !(CLUSTER_FAILOVER_MS_MIN..=CLUSTER_FAILOVER_MS_MAX).contains(&self.cluster_failover_ms) {
            return Err(format!(
                "--cluster-failover-ms must be {CLUSTER_FAILOVER_MS_MIN} to {CLUSTER_FAILOVER_MS_MAX}"
            ));
        }
        if !(CLUSTER_ROSTER_MS_MIN..=CLUSTER_ROSTER_MS_MAX).contains(&self.cluster_roster_ms) {
            return Err(format!("--cluster-roster-ms must be {CLUSTER_ROSTER_MS_MIN} to {CLUSTER_ROSTER_MS_MAX}"));
        }
        let prefix = &self.cluster_prefix;
        let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if prefix.len() > CLUSTER_PREFIX_BYTES_MAX || !prefix.split('.').all(token_ok) {
            return Err(format!(
                "--cluster-prefix must be tokens of A-Z a-z 0-9 _ - joined by '.', at most {CLUSTER_PREFIX_BYTES_MAX} bytes"
            ));
        }
        Ok(())
    }

    /// This node's part in a cluster, if `--cluster-nats` is given.
    fn cluster_config(&self) -> Option<ClusterConfig> {
        let nats_url = self.cluster_nats.clone()?;
        let node_id = self.node_id.clone().unwrap_or_else(default_node_id);
        let nats_auth = match (&self.cluster_nats_user, &self.cluster_nats_password) {
            (Some(user), Some(password)) => Some(NatsAuth { user: user.clone(), password: password.clone() }),
            _ => None,
        };
        let tls = url_wants_tls(&nats_url) || self.cluster_nats_ca.is_some() || self.cluster_nats_cert.is_some();
        let nats_tls = tls.then(|| NatsTls {
            ca: self.cluster_nats_ca.clone(),
            client: self.cluster_nats_cert.clone().zip(self.cluster_nats_key.clone()),
        });
        Some(ClusterConfig {
            nats_url,
            nats_auth,
            nats_tls,
            node_id,
            failover_ms: self.cluster_failover_ms,
            prefix: self.cluster_prefix.clone(),
            roster_ms: self.cluster_roster_ms,
        })
    }

    pub fn edge_limits(&self) -> EdgeLimits {
        EdgeLimits {
            write_timeout_ms: self.write_timeout_ms,
            http_request_timeout_ms: self.http_request_timeout_ms,
            http_connections_max: self.max_http_connections,
            connections_per_ip_max: self.max_connections_per_ip,
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            frame_bytes_max: self.max_frame_bytes,
            body_bytes_max: self.max_body_bytes,
            heartbeat_ms: self.heartbeat_ms,
            hello_timeout_ms: self.hello_timeout_ms,
            outbox_frames_max: self.outbox_max_frames,
            outbox_bytes_max: self.outbox_max_bytes,
            writer_queue_max: self.writer_queue_max,
            writer_batch_max: self.writer_batch_max,
            room_idle_ms: self.room_idle_ms,
            send_rate: Rate { per_second: self.send_per_second, burst: self.send_burst },
            typing_rate: Rate { per_second: self.typing_per_second, burst: self.typing_burst },
            join_rate: Rate { per_second: self.join_per_second, burst: self.join_burst },
            token_ttl_s: self.token_ttl,
            argon2_concurrency: self.argon2_concurrency,
            argon2_queue_max: self.argon2_queue_max,
            user_sessions_max: self.max_sessions_per_user,
            user_rooms_max: self.max_rooms_per_user,
            user_public_conversations_max: self.max_public_conversations_per_user,
            rooms_max: self.rooms_max,
            writer_queue_user_max: self.writer_queue_per_user_max,
            history_rate: Rate { per_second: self.history_per_second, burst: self.history_burst },
            replay_rate: Rate { per_second: self.replays_per_second, burst: self.replays_burst },
            failed_login_address_rate: Rate {
                per_second: self.failed_logins_per_address_per_minute / 60.0,
                burst: self.failed_logins_per_address_burst,
            },
            failed_login_user_rate: Rate {
                per_second: self.failed_logins_per_user_per_minute / 60.0,
                burst: self.failed_logins_per_user_burst,
            },
            store_timeout_ms: self.store_timeout_ms,
            failed_login_rate: Rate {
                per_second: self.failed_logins_per_minute / 60.0,
                burst: self.failed_logins_burst,
            },
            register_rate: Rate { per_second: self.registrations_per_minute / 60.0, burst: self.registrations_burst },
            retention_age_ms: self.retention_days.map(|days| ((days * 86_400_000.0) as u64).max(1)),
            retention_room_messages_max: self.retention_messages_per_room,
            retention_interval_ms: self.retention_interval_ms,
            retention_batch_rows_max: self.retention_batch_rows,
            store_size_alert_bytes: self.store_size_alert_bytes,
            cluster: self.cluster_config(),
            ..EngineConfig::default()
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// The host name and the process id (unique among this host's nodes),
/// cut to a node id's length.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| is_name_char(*c)).collect();
    let host = if host.is_empty() { "node".to_string() } else { host };
    let pid = format!("-{}", std::process::id());
    let keep = viche_engine::cluster::NODE_ID_BYTES_MAX - pid.len();
    format!("{}{pid}", &host[..host.len().min(keep)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(flags: &[&str]) -> Result<(), String> {
        let args = Args::try_parse_from(std::iter::once("viche").chain(flags.iter().copied())).expect("flags parse");
        args.validate()
    }

    #[test]
    fn bounded_flags_refuse_zero_and_past_their_maximum() {
        assert_eq!(validated(&[]), Ok(()));
        for (flag, max) in [("--store-cache-mib", STORE_CACHE_MIB_MAX), ("--blocking-threads", BLOCKING_THREADS_MAX)] {
            assert_eq!(validated(&[flag, "1"]), Ok(()));
            assert_eq!(validated(&[flag, &max.to_string()]), Ok(()));
            for bad in ["0".to_string(), (max + 1).to_string()] {
                let refused = validated(&[flag, &bad]).unwrap_err();
                assert!(refused.contains(flag), "{flag} {bad}: {refused}");
            }
        }
    }

    #[test]
    fn cluster_flags_are_refused_without_mongodb_and_when_malformed() {
        let mongo = ["--mongo-uri", "mongodb://127.0.0.1:27017/"];
        let with = |more: &[&str]| validated(&[&mongo[..], more].concat());
        assert_eq!(with(&["--cluster-nats", "nats://127.0.0.1:4222"]), Ok(()));
        assert_eq!(
            with(&["--cluster-nats", "nats://n:4222", "--node-id", "a-1.b_2", "--cluster-prefix", "prod.eu-1"]),
            Ok(())
        );
        let embedded = validated(&["--cluster-nats", "nats://127.0.0.1:4222"]).unwrap_err();
        assert!(embedded.contains("--mongo-uri") && embedded.contains("embedded"), "{embedded}");
        assert!(validated(&["--node-id", "a"]).unwrap_err().contains("--cluster-nats"));
        assert!(validated(&["--cluster-nats-user", "a"]).unwrap_err().contains("--cluster-nats"));
        assert!(validated(&["--cluster-nats-ca", "ca.pem"]).unwrap_err().contains("--cluster-nats"));
        assert_eq!(with(&["--cluster-nats", "tls://n:4222", "--cluster-nats-ca", "ca.pem"]), Ok(()));
        assert_eq!(
            with(&["--cluster-nats", "nats://n:4222", "--cluster-nats-user", "u", "--cluster-nats-password", "p"]),
            Ok(())
        );
        let nats = ["--cluster-nats", "nats://127.0.0.1:4222"];
        for (bad, flag) in [
            (vec!["--cluster-nats", "http://x"], "--cluster-nats"),
            (vec!["--cluster-nats", "nats://"], "--cluster-nats"),
            ([&nats[..], &["--node-id", ""]].concat(), "--node-id"),
            ([&nats[..], &["--node-id", "a b"]].concat(), "--node-id"),
            ([&nats[..], &["--node-id", &"n".repeat(65)]].concat(), "--node-id"),
            ([&nats[..], &["--cluster-failover-ms", "299"]].concat(), "--cluster-failover-ms"),
            ([&nats[..], &["--cluster-failover-ms", "600001"]].concat(), "--cluster-failover-ms"),
            ([&nats[..], &["--cluster-roster-ms", "999"]].concat(), "--cluster-roster-ms"),
            ([&nats[..], &["--cluster-prefix", "a.*"]].concat(), "--cluster-prefix"),
            ([&nats[..], &["--cluster-prefix", "a..b"]].concat(), "--cluster-prefix"),
            ([&nats[..], &["--cluster-prefix", ""]].concat(), "--cluster-prefix"),
            ([&nats[..], &["--cluster-nats-user", "u"]].concat(), "--cluster-nats-password"),
            ([&nats[..], &["--cluster-nats-password", "p"]].concat(), "--cluster-nats-user"),
            ([&nats[..], &["--cluster-nats-user", "", "--cluster-nats-password", "p"]].concat(), "--cluster-nats-user"),
            ([&nats[..], &["--cluster-nats-cert", "c.pem"]].concat(), "--cluster-nats-key"),
            ([&nats[..], &["--cluster-nats-key", "k.pem"]].concat(), "--cluster-nats-cert"),
            (vec!["--cluster-nats", "tls://"], "--cluster-nats"),
        ] {
            let refused = with(&bad).unwrap_err();
            assert!(refused.contains(flag), "{bad:?}: {refused}");
        }
        let id = default_node_id();
        assert!(!id.is_empty() && id.len() <= viche_engine::cluster::NODE_ID_BYTES_MAX && id.chars().all(is_name_char));
    }
}
