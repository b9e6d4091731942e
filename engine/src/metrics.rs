//! Every metric Viche exports, declared once: name, kind, unit, help and
//! labels. The gateway's exporter describes and pre-registers from this
//! table, `docs/operations.md` must list exactly these (a test compares
//! them), and code records through the entries (`CONNECTIONS_OPEN.gauge()`)
//! instead of spelling names.
//!
//! `metrics::counter!(name, labels…)` looks its key up in the recorder's
//! registry on every call (a hash and a read lock). That is fine for a
//! login, not for something done per message or per flush: those use the
//! [`Hot`] handles, obtained once. The first call to [`hot`] registers them
//! with whatever recorder is installed at that moment, so the gateway calls
//! it right after installing its recorder; with no recorder (`--no-metrics`,
//! unit tests, benches) every handle is a no-op.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, SharedString, Unit};
use viche_protocol::{ClientFrame, ServerFrame};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As `docs/operations.md` and Prometheus's `# TYPE` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One label of a metric, with its values when they are known in advance
/// (those series are exported at zero from the start); empty when open.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    pub key: &'static str,
    pub values: &'static [&'static str],
}

/// Who keeps a metric up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Recorded by Viche's code as things happen.
    Live,
    /// A gauge computed when `/metrics` is scraped.
    Sampled,
    /// Described and kept by the `metrics-process` collector (listed here
    /// so that the documentation check covers it).
    Process,
}

#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    pub labels: &'static [Label],
    pub source: Source,
}

impl Metric {
    fn check(&self, kind: Kind, labels: usize) {
        debug_assert_eq!(self.kind, kind, "{} is a {:?}", self.name, self.kind);
        debug_assert_eq!(self.labels.len(), labels, "{} has labels {:?}", self.name, self.labels);
    }

    pub fn counter(&'static self) -> Counter {
        self.check(Kind::Counter, 0);
        metrics::counter!(self.name)
    }

    /// The counter of one value of its only label.
    pub fn counter_with(&'static self, value: impl Into<SharedString>) -> Counter {
        self.check(Kind::Counter, 1);
        metrics::counter!(self.name, self.labels[0].key => value.into())
    }

    /// The counter of one value of each of its two labels.
    pub fn counter_with2(&'static self, a: impl Into<SharedString>, b: impl Into<SharedString>) -> Counter {
        self.check(Kind::Counter, 2);
        metrics::counter!(self.name, self.labels[0].key => a.into(), self.labels[1].key => b.into())
    }

    pub fn gauge(&'static self) -> Gauge {
        self.check(Kind::Gauge, 0);
        metrics::gauge!(self.name)
    }

    pub fn gauge_with(&'static self, value: impl Into<SharedString>) -> Gauge {
        self.check(Kind::Gauge, 1);
        metrics::gauge!(self.name, self.labels[0].key => value.into())
    }

    pub fn histogram(&'static self) -> Histogram {
        self.check(Kind::Histogram, 0);
        metrics::histogram!(self.name)
    }

    pub fn histogram_with(&'static self, value: impl Into<SharedString>) -> Histogram {
        self.check(Kind::Histogram, 1);
        metrics::histogram!(self.name, self.labels[0].key => value.into())
    }
}

/// `type` label values of `viche_frames_in_total`, in [`client_index`]
/// order; `bad_frame` counts frames that did not decode.
pub const CLIENT_FRAME_TYPES: [&str; 16] = [
    "hello",
    "auth",
    "join",
    "leave",
    "send",
    "dm",
    "typing",
    "history",
    "ping",
    "members",
    "edit",
    "delete",
    "react",
    "read",
    "conversations",
    "bad_frame",
];
const BAD_FRAME: usize = 15;

/// `type` label values of `viche_frames_out_total`, in [`server_index`] order.
pub const SERVER_FRAME_TYPES: [&str; 12] = [
    "welcome",
    "ok",
    "ack",
    "msg",
    "presence",
    "typing",
    "history",
    "error",
    "pong",
    "members",
    "read",
    "conversations",
];

/// `code` label values of `viche_connections_closed_total`: every
/// `CloseCode` (a test checks), and `none` for a connection that ended
/// without a close frame from us.
pub const CLOSE_CODE_LABELS: [&str; 11] =
    ["1000", "1001", "1002", "1009", "1011", "4001", "4002", "4008", "4009", "4029", "none"];

/// `kind` label values of `viche_actor_failures_total`.
pub const ACTOR_KINDS: [&str; 3] = ["session", "room", "writer"];
/// `kind` label values of `viche_actor_restarts_total`.
pub const RESTARTED_ACTOR_KINDS: [&str; 2] = ["room", "writer"];

/// `reason` label values of `viche_connections_refused_total`.
pub const CONNECTION_REFUSAL_REASONS: [&str; 3] = ["max_connections", "max_connections_per_ip", "max_http_connections"];
/// `reason` label values of `viche_slow_consumers_total`.
pub const SLOW_CONSUMER_REASONS: [&str; 2] = ["outbox_full", "write_timeout"];
/// `phase` label values of `viche_http_timeouts_total`.
pub const HTTP_TIMEOUT_PHASES: [&str; 3] = ["headers", "body", "response"];

/// `kind` label values of `viche_rate_limited_total`.
pub const RATE_LIMITED_KINDS: [&str; 10] =
    ["send", "typing", "join", "history", "replay", "read", "login", "register", "argon2_queue", "admin"];
/// `reason` label values of `viche_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 5] =
    ["wrong_password", "unknown_user", "bad_token", "no_hello", "bad_admin_token"];
/// `reason` label values of `viche_messages_removed_total`.
pub const REMOVAL_REASONS: [&str; 2] = ["retention", "purge"];
/// `route` label values of the HTTP metrics (the gateway's route table; a
/// gateway test checks they agree).
pub const HTTP_ROUTES: [&str; 11] = [
    "register",
    "login",
    "history",
    "conversations",
    "admin",
    "healthz",
    "readyz",
    "metrics",
    "ws",
    "api_other",
    "static",
];

const NO_LABELS: &[Label] = &[];

/// Declares every metric once, and [`ALL`] in the same order.
macro_rules! metrics_table {
    ($($id:ident: $name:literal, $kind:ident, $unit:ident, $source:ident, $labels:expr, $help:literal;)*) => {
        $(
            pub const $id: Metric = Metric {
                name: $name,
                kind: Kind::$kind,
                unit: Unit::$unit,
                help: $help,
                labels: $labels,
                source: Source::$source,
            };
        )*
        /// The table: every metric, in the order `docs/operations.md` lists them.
        pub const ALL: &[Metric] = &[$($id),*];
    };
}

metrics_table! {
    // Connections, sessions and actors.
    CONNECTIONS_OPEN: "viche_connections_open", Gauge, Count, Live, NO_LABELS,
        "WebSocket connections open now (before and after hello).";
    CONNECTIONS_ACCEPTED: "viche_connections_accepted_total", Counter, Count, Live, NO_LABELS,
        "WebSocket upgrades accepted.";
    CONNECTIONS_CLOSED: "viche_connections_closed_total", Counter, Count, Live,
        &[Label { key: "code", values: &CLOSE_CODE_LABELS }],
        "WebSocket connections ended, by the close code the server sent (none: the peer went away or the socket failed).";
    CONNECTIONS_REFUSED: "viche_connections_refused_total", Counter, Count, Live,
        &[Label { key: "reason", values: &CONNECTION_REFUSAL_REASONS }],
        "Connections refused, by reason (max_connections: WebSocket upgrade answered 503; max_connections_per_ip: closed at accept, or 503 behind a trusted proxy; max_http_connections: closed at accept).";
    SESSIONS: "viche_sessions", Gauge, Count, Live, NO_LABELS,
        "Authenticated sessions (past hello) now.";
    SESSIONS_REFUSED: "viche_sessions_refused_total", Counter, Count, Live, NO_LABELS,
        "Sessions refused at hello because their user already had --max-sessions-per-user open (closed with 4009).";
    ROOMS_ACTIVE: "viche_rooms_active", Gauge, Count, Live, NO_LABELS,
        "Room actors running now.";
    ACTOR_FAILURES: "viche_actor_failures_total", Counter, Count, Live,
        &[Label { key: "kind", values: &ACTOR_KINDS }],
        "Supervised actors that failed (panicked), by kind: session, room, writer.";
    ACTOR_RESTARTS: "viche_actor_restarts_total", Counter, Count, Live,
        &[Label { key: "kind", values: &RESTARTED_ACTOR_KINDS }],
        "Supervised actors restarted by their supervisor after a failure, by kind (a session is not restarted: its client reconnects).";

    // Traffic.
    FRAMES_IN: "viche_frames_in_total", Counter, Count, Live,
        &[Label { key: "type", values: &CLIENT_FRAME_TYPES }],
        "Client frames received, by type (bad_frame: did not decode).";
    FRAMES_IN_BYTES: "viche_frames_in_bytes_total", Counter, Bytes, Live, NO_LABELS,
        "Bytes of client frame payloads received.";
    FRAMES_OUT: "viche_frames_out_total", Counter, Count, Live,
        &[Label { key: "type", values: &SERVER_FRAME_TYPES }],
        "Server frames queued for clients (or written directly, for replays), by type.";
    FRAMES_OUT_BYTES: "viche_frames_out_bytes_total", Counter, Bytes, Live, NO_LABELS,
        "Bytes written to WebSockets, frame headers included.";
    MESSAGES_STORED: "viche_messages_stored_total", Counter, Count, Live, NO_LABELS,
        "Messages durably stored (duplicates by cid excluded).";
    DELIVERIES: "viche_deliveries_total", Counter, Count, Live, NO_LABELS,
        "msg frames pushed to recipients' outboxes (one per recipient session).";
    SEND_DELIVER_LATENCY: "viche_send_deliver_latency_seconds", Histogram, Seconds, Live, NO_LABELS,
        "From decoding a send to pushing its msg to the last recipient's outbox (which writes it to an idle connection's socket).";
    REPLAYED_MESSAGES: "viche_replayed_messages_total", Counter, Count, Live, NO_LABELS,
        "Stored messages written to clients as a replay (join with since, restart).";

    // The writer and the store.
    STORE_COMMIT_DURATION: "viche_store_commit_duration_seconds", Histogram, Seconds, Live, NO_LABELS,
        "Duration of one successful store commit (a batch, fsync included).";
    WRITER_BATCH_SIZE: "viche_writer_batch_size", Histogram, Count, Live, NO_LABELS,
        "Messages per store commit.";
    STORE_COMMIT_FAILURES: "viche_store_commit_failures_total", Counter, Count, Live,
        &[Label { key: "reason", values: &["error", "timeout"] }],
        "Failed store commits, by reason (error; timeout: no answer within --store-timeout-ms); each is retried with backoff.";
    POISON_MESSAGES: "viche_poison_messages_total", Counter, Count, Live, NO_LABELS,
        "Messages the writer isolated as the cause of a batch that kept failing while the store was up; each sender got internal.";
    STORE_DUPLICATE_LOOKUPS: "viche_store_duplicate_lookups_total", Counter, Count, Live, NO_LABELS,
        "MongoDB batches attempted again after a lookup of their stored cids: the insert met a stored (from, cid) or seq, or an event was refused or repeated (each may be a retry).";
    STORE_REOPENS: "viche_store_reopens_total", Counter, Count, Live, NO_LABELS,
        "Times the embedded store was closed and reopened after an I/O error.";
    WRITER_QUEUE_DEPTH: "viche_writer_queue_depth", Gauge, Count, Sampled, NO_LABELS,
        "Messages waiting in the writer's queue, sampled at scrape.";
    WRITER_QUEUE_CAPACITY: "viche_writer_queue_capacity", Gauge, Count, Live, NO_LABELS,
        "The writer queue's bound (--writer-queue-max); full means senders get overloaded.";
    WRITER_PENDING: "viche_writer_pending", Gauge, Count, Sampled, NO_LABELS,
        "Messages submitted and not yet acknowledged, sampled at scrape.";
    WRITER_REJECTED: "viche_writer_rejected_total", Counter, Count, Live, NO_LABELS,
        "Sends refused with overloaded because the writer's queue was full or the writer was restarting.";
    STORE_READY: "viche_store_ready", Gauge, Count, Live, NO_LABELS,
        "1 when the store answered its last readiness probe and the writer is up and its last commit succeeded (as /readyz), else 0.";
    STORE_PROBES: "viche_store_probes_total", Counter, Count, Live,
        &[Label { key: "result", values: &["ok", "failed"] }],
        "Readiness probes of the store (a small write every 5 s, whatever /readyz is asked), by result.";
    STORE_SIZE: "viche_store_size_bytes", Gauge, Bytes, Live, NO_LABELS,
        "The store's size on disk (redb: the file; MongoDB: dbStats), as of the last upkeep pass.";
    STORE_SIZE_ALERT: "viche_store_size_alert_bytes", Gauge, Bytes, Live, NO_LABELS,
        "--store-size-alert-bytes: the size past which VicheStoreLarge fires (0: never).";
    OLDEST_MESSAGE_AGE: "viche_oldest_message_age_seconds", Gauge, Seconds, Live, NO_LABELS,
        "Age of the oldest stored message as of the last upkeep pass (0 when none is stored).";
    MESSAGES_REMOVED: "viche_messages_removed_total", Counter, Count, Live,
        &[Label { key: "reason", values: &REMOVAL_REASONS }],
        "Messages (and events) removed from the store, by reason (retention; purge: an admin purged a room).";
    RETENTION_PASSES: "viche_retention_passes_total", Counter, Count, Live,
        &[Label { key: "result", values: &["ok", "failed"] }],
        "Upkeep passes over the store (retention, then the store gauges), by result; one every --retention-interval-ms.";

    // The cluster (issue 14).
    CLUSTER_NODES: "viche_cluster_nodes", Gauge, Count, Live, NO_LABELS,
        "Live nodes of the cluster as this node sees them, itself included (heartbeats over NATS; absent on a node alone).";
    CLUSTER_RELAYED: "viche_cluster_relayed_total", Counter, Count, Live,
        &[Label { key: "kind", values: &["msgs", "typing", "last", "presence", "roster"] }],
        "Frames queued for the other nodes on a room's (or a DM's users') NATS subject, by kind (msgs: a batch of one room's stored messages; typing; last: a room's last seq, announced every second for 10 s after a write; presence: a user came into or left a room here; roster: who is in a room here, asked for or given).";
    CLUSTER_RELAY_DROPPED: "viche_cluster_relay_dropped_total", Counter, Count, Live, NO_LABELS,
        "Frames dropped: for the other nodes (the relay's queue full, or NATS refused them), or from them (a room here held 1024 relayed operations); message gaps are repaired from the store.";
    CLUSTER_RELAY_JUNK: "viche_cluster_relay_junk_total", Counter, Count, Live, NO_LABELS,
        "Frames received on a room's subject that did not decode or named another room or an invalid user; dropped.";
    CLUSTER_FORWARDED: "viche_cluster_forwarded_total", Counter, Count, Live,
        &[Label { key: "outcome", values: &["ack", "error", "moved", "no_owner", "timeout", "refused"] }],
        "Messages this node forwarded to the room's owner on another node, by outcome (ack: stored; error: the owner refused it; moved: the owner had lost the room; no_owner: nobody listens on the owner's subject, or the owner left the live set while it waited; timeout: no answer within 5 s; refused: not sent, NATS unreachable or 16384 forwards pending). All but ack answer the client with an error (overloaded, or the owner's).";
    CLUSTER_FORWARD_DURATION: "viche_cluster_forward_duration_seconds", Histogram, Seconds, Live, NO_LABELS,
        "From forwarding a message to its room's owner to the owner's answer (its store commit included).";
    CLUSTER_FORWARDS_SERVED: "viche_cluster_forwards_served_total", Counter, Count, Live,
        &[Label { key: "outcome", values: &["queued", "not_owner", "refused", "late", "junk"] }],
        "Messages other nodes forwarded to this node as their room's owner, by outcome (queued: handed to the writer; not_owner: this node does not own the room in its view; refused: the room or the writer refused it; late: older than the 5 s its sender waits plus 2 s of clock skew, dropped; junk: did not decode or failed validation).";
    CLUSTER_FENCED: "viche_cluster_fenced_total", Counter, Count, Live, NO_LABELS,
        "Times this node's write to a room was fenced: another node had claimed the room since (a newer owner epoch in the store) and stored in it. The messages are refused overloaded and the room is forwarded to that node.";
    CLUSTER_ROOMS_OWNED: "viche_cluster_rooms_owned", Gauge, Count, Sampled, NO_LABELS,
        "Open rooms this node owns in its view of the live nodes, sampled at scrape.";
    GAP_REPAIRS: "viche_gap_repairs_total", Counter, Count, Live, NO_LABELS,
        "Gaps in a room's seqs met at delivery and replayed from the store before the message after them (in a cluster: a relayed message lost or overtaken).";

    // Delivery and abuse.
    OUTBOX_DEPTH_MAX: "viche_outbox_depth_max", Gauge, Count, Sampled, NO_LABELS,
        "The deepest any session's outbox got (frames) since the previous scrape.";
    SLOW_CONSUMERS: "viche_slow_consumers_total", Counter, Count, Live,
        &[Label { key: "reason", values: &SLOW_CONSUMER_REASONS }],
        "Sessions ended as slow consumers (close 4008), by reason (outbox_full: --outbox-max-frames/-bytes; write_timeout: the socket took nothing for --write-timeout-ms).";
    TYPING_DROPPED: "viche_typing_dropped_total", Counter, Count, Live, NO_LABELS,
        "typing notices dropped because a room's actor had 256 of them queued.";
    RATE_LIMITED: "viche_rate_limited_total", Counter, Count, Live,
        &[Label { key: "kind", values: &RATE_LIMITED_KINDS }],
        "Requests refused for rate, by kind (send, typing, join, replay: WebSocket; history: WebSocket or HTTP; login, register: HTTP 429; argon2_queue: HTTP 503, too many password checks waiting).";
    AUTH_FAILURES: "viche_auth_failures_total", Counter, Count, Live,
        &[Label { key: "reason", values: &AUTH_FAILURE_REASONS }],
        "Authentication failures, by reason.";
    LOGINS: "viche_logins_total", Counter, Count, Live, NO_LABELS,
        "Successful logins.";
    REGISTRATIONS: "viche_registrations_total", Counter, Count, Live, NO_LABELS,
        "Users registered.";
    ARGON2_DURATION: "viche_argon2_duration_seconds", Histogram, Seconds, Live, NO_LABELS,
        "Duration of one argon2id hash or verify, permit wait excluded.";

    // HTTP and the process.
    HTTP_REQUESTS: "viche_http_requests_total", Counter, Count, Live,
        &[Label { key: "route", values: &HTTP_ROUTES }, Label { key: "status", values: &[] }],
        "HTTP requests answered, by route and status.";
    HTTP_REQUEST_DURATION: "viche_http_request_duration_seconds", Histogram, Seconds, Live,
        &[Label { key: "route", values: &HTTP_ROUTES }],
        "HTTP request duration by route (a ws upgrade: until the 101).";
    HTTP_TIMEOUTS: "viche_http_timeouts_total", Counter, Count, Live,
        &[Label { key: "phase", values: &HTTP_TIMEOUT_PHASES }],
        "HTTP connections cut by a deadline, by phase (headers, body: not received within --http-request-timeout-ms; response: the socket took nothing for --write-timeout-ms).";
    ACCEPT_ERRORS: "viche_accept_errors_total", Counter, Count, Live,
        &[Label { key: "kind", values: &["emfile", "other"] }],
        "Failed TCP accepts, by kind (emfile: out of file descriptors; accept paused 100 ms).";
    BUILD_INFO: "viche_build_info", Gauge, Count, Live,
        &[Label { key: "version", values: &[] }],
        "Always 1; the version label is the server's version.";
    PROCESS_CPU: "viche_process_cpu_seconds_total", Counter, Seconds, Process, NO_LABELS,
        "CPU time, user and system.";
    PROCESS_RSS: "viche_process_resident_memory_bytes", Gauge, Bytes, Process, NO_LABELS,
        "Resident set size.";
    PROCESS_VIRTUAL: "viche_process_virtual_memory_bytes", Gauge, Bytes, Process, NO_LABELS,
        "Virtual memory size.";
    PROCESS_VIRTUAL_MAX: "viche_process_virtual_memory_max_bytes", Gauge, Bytes, Process, NO_LABELS,
        "The address-space limit.";
    PROCESS_OPEN_FDS: "viche_process_open_fds", Gauge, Count, Process, NO_LABELS,
        "Open file descriptors.";
    PROCESS_MAX_FDS: "viche_process_max_fds", Gauge, Count, Process, NO_LABELS,
        "The process's open-file limit.";
    PROCESS_THREADS: "viche_process_threads", Gauge, Count, Process, NO_LABELS,
        "OS threads.";
    PROCESS_START_TIME: "viche_process_start_time_seconds", Gauge, Seconds, Process, NO_LABELS,
        "Start time, seconds since the epoch.";
}

fn client_index(frame: &ClientFrame) -> usize {
    match frame {
        ClientFrame::Hello { .. } => 0,
        ClientFrame::Auth { .. } => 1,
        ClientFrame::Join { .. } => 2,
        ClientFrame::Leave { .. } => 3,
        ClientFrame::Send { .. } => 4,
        ClientFrame::Dm { .. } => 5,
        ClientFrame::Typing { .. } => 6,
        ClientFrame::History { .. } => 7,
        ClientFrame::Ping { .. } => 8,
        ClientFrame::Members { .. } => 9,
        ClientFrame::Edit { .. } => 10,
        ClientFrame::Delete { .. } => 11,
        ClientFrame::React { .. } => 12,
        ClientFrame::Read { .. } => 13,
        ClientFrame::Conversations { .. } => 14,
    }
}

fn server_index(frame: &ServerFrame) -> usize {
    match frame {
        ServerFrame::Welcome { .. } => 0,
        ServerFrame::Ok { .. } => 1,
        ServerFrame::Ack { .. } => 2,
        ServerFrame::Msg(_) => 3,
        ServerFrame::Presence { .. } => 4,
        ServerFrame::Typing { .. } => 5,
        ServerFrame::History { .. } => 6,
        ServerFrame::Error { .. } => 7,
        ServerFrame::Pong { .. } => 8,
        ServerFrame::Members { .. } => 9,
        ServerFrame::Read { .. } => 10,
        ServerFrame::Conversations { .. } => 11,
    }
}

/// Handles used per message, per delivery batch or per socket flush.
pub struct Hot {
    pub deliveries: Counter,
    pub send_deliver_latency: Histogram,
    pub messages_stored: Counter,
    pub frames_in_bytes: Counter,
    pub frames_out_bytes: Counter,
    frames_in: [Counter; CLIENT_FRAME_TYPES.len()],
    frames_out: [Counter; SERVER_FRAME_TYPES.len()],
}

impl Hot {
    fn register() -> Self {
        Self {
            deliveries: DELIVERIES.counter(),
            send_deliver_latency: SEND_DELIVER_LATENCY.histogram(),
            messages_stored: MESSAGES_STORED.counter(),
            frames_in_bytes: FRAMES_IN_BYTES.counter(),
            frames_out_bytes: FRAMES_OUT_BYTES.counter(),
            frames_in: CLIENT_FRAME_TYPES.map(|t| FRAMES_IN.counter_with(t)),
            frames_out: SERVER_FRAME_TYPES.map(|t| FRAMES_OUT.counter_with(t)),
        }
    }

    /// One decoded client frame.
    #[inline]
    pub fn frame_in(&self, frame: &ClientFrame) {
        self.frames_in[client_index(frame)].increment(1);
    }

    /// One client frame that did not decode.
    #[inline]
    pub fn bad_frame_in(&self) {
        self.frames_in[BAD_FRAME].increment(1);
    }

    /// `n` copies of `frame` queued for (or written to) clients.
    #[inline]
    pub fn frames_out(&self, frame: &ServerFrame, n: usize) {
        if n > 0 {
            self.frames_out[server_index(frame)].increment(n as u64);
        }
    }

    /// `n` `msg` frames written from the store (a replay).
    #[inline]
    pub fn msgs_out(&self, n: usize) {
        self.frames_out[3].increment(n as u64);
    }
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot-path handles (registered on first use).
#[inline]
pub fn hot() -> &'static Hot {
    HOT.get_or_init(Hot::register)
}

/// The deepest any session's outbox got (in frames) since the last
/// [`take_outbox_depth_max`]. A push reads it and writes only when it
/// exceeds it, so the shared cache line is rarely written.
static OUTBOX_DEPTH_PEAK: AtomicUsize = AtomicUsize::new(0);

#[inline]
pub(crate) fn note_outbox_depth(frames: usize) {
    if frames > OUTBOX_DEPTH_PEAK.load(Ordering::Relaxed) {
        OUTBOX_DEPTH_PEAK.fetch_max(frames, Ordering::Relaxed);
    }
}

/// Returns the largest outbox depth seen since the previous call, and
/// starts a new period.
pub fn take_outbox_depth_max() -> usize {
    OUTBOX_DEPTH_PEAK.swap(0, Ordering::Relaxed)
}

/// Sets the gauges that are sampled rather than kept up to date on every
/// change: the writer's queue depth and the largest outbox depth since the
/// previous scrape. Called by `/metrics` right before rendering.
pub(crate) fn sample(writer: &crate::writer::WriterHandle) {
    WRITER_QUEUE_DEPTH.gauge().set(writer.queue_depth() as f64);
    WRITER_PENDING.gauge().set(writer.pending() as f64);
    OUTBOX_DEPTH_MAX.gauge().set(take_outbox_depth_max() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_depth_max_is_a_high_water_mark_per_period() {
        // Other tests in this process push to outboxes too: only check
        // what holds whatever they do.
        note_outbox_depth(1_000_000);
        assert!(take_outbox_depth_max() >= 1_000_000);
        note_outbox_depth(3);
        note_outbox_depth(2);
        let max = take_outbox_depth_max();
        assert!((3..1_000_000).contains(&max), "{max}");
    }

    #[test]
    fn close_code_labels_are_every_close_code_and_none() {
        let mut expected: Vec<&str> = viche_protocol::CloseCode::ALL.iter().map(|c| c.label()).collect();
        expected.push("none");
        assert_eq!(CLOSE_CODE_LABELS.to_vec(), expected);
    }

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(m.name.starts_with("viche_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            if m.unit == Unit::Seconds && m.kind != Kind::Counter {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            assert!(m.source != Source::Sampled || m.kind == Kind::Gauge, "{}: only gauges are sampled", m.name);
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn type_tables_match_the_protocol() {
        let frames = [
            ClientFrame::Hello { v: 1, token: String::new() },
            ClientFrame::Ping { req: 1 },
            ClientFrame::Typing { room: "r".into() },
        ];
        for f in &frames {
            assert_eq!(CLIENT_FRAME_TYPES[client_index(f)], f.kind());
        }
        for f in [
            ServerFrame::ok(1),
            ServerFrame::Pong { req: 1 },
            ServerFrame::error(None, viche_protocol::ErrorCode::Invalid, "x"),
        ] {
            assert_eq!(SERVER_FRAME_TYPES[server_index(&f)], f.kind());
        }
    }
}
