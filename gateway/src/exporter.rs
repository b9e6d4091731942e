//! The Prometheus exporter: the recorder and its buckets, a description of
//! every metric, the series registered at zero at start, the gauges
//! sampled at each scrape, process metrics, and the readiness gauge.
//!
//! Every metric, with what to do when its alert fires, is in
//! `docs/operations.md`; the dashboards and alerts in `grafana/` use only
//! names exported here (checked by `gateway/tests/prometheus.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use viche_engine::Engine;

/// Histogram buckets of every `_seconds` histogram: they resolve 50 µs
/// to 10 s (above the last bucket, only `+Inf`).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Messages per store commit (`--writer-batch-max` is 4096 by default).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too); without it they would pile up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the store's readiness is probed in the background, so that
/// `viche_store_ready` is true to `/readyz` even if nothing calls it.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(10);
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close codes the server sends (`viche_connections_closed_total{code}`);
/// `none`: the connection ended without a close frame from us.
const CLOSE_CODES: [&str; 10] = ["1000", "1001", "1002", "1009", "1011", "4001", "4002", "4008", "4029", "none"];
const RATE_LIMITED_KINDS: [&str; 5] = ["send", "typing", "join", "login", "register"];
const AUTH_FAILURE_REASONS: [&str; 4] = ["wrong_password", "unknown_user", "bad_token", "no_hello"];
const ACCEPT_ERROR_KINDS: [&str; 2] = ["emfile", "other"];

/// The last result of the store's readiness check (`/readyz` or the
/// background probe).
static STORE_PROBE_OK: AtomicBool = AtomicBool::new(true);

/// What `/metrics` renders from.
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    engine: Arc<Engine>,
}

/// Installs the Prometheus recorder, describes every metric and registers
/// the known series at zero (so that rates and alerts have a series before
/// the first event). Must run before the engine starts.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("viche_writer_batch_size".into()), BATCH_SIZE_BUCKETS)?
        .install_recorder()?;
    describe();
    register_known_series();
    // The hot-path handles bind to the recorder installed now.
    viche_engine::metrics::hot();
    Ok(handle)
}

impl Exporter {
    /// Starts the upkeep and the readiness probe, and sets what is fixed
    /// for the life of the process.
    pub fn start(handle: PrometheusHandle, engine: Arc<Engine>) -> Self {
        let process = metrics_process::Collector::new("viche_");
        process.describe();
        process.collect();
        metrics::gauge!("viche_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics::gauge!("viche_writer_queue_capacity").set(engine.writer.queue_capacity() as f64);
        metrics::gauge!("viche_store_ready").set(if engine.writer.is_healthy() { 1.0 } else { 0.0 });

        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let probed = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(READY_PROBE_INTERVAL);
            loop {
                tick.tick().await;
                let ok =
                    matches!(tokio::time::timeout(READY_PROBE_TIMEOUT, probed.store.check_ready()).await, Ok(Ok(())));
                record_store_probe(&probed, ok);
            }
        });
        Self { handle, process, engine }
    }

    /// The text of `/metrics`: sampled gauges refreshed, then everything.
    pub fn render(&self) -> String {
        viche_engine::metrics::sample(&self.engine);
        set_ready_gauge(&self.engine);
        self.process.collect();
        self.handle.render()
    }
}

/// Records the outcome of a store readiness check and updates
/// `viche_store_ready` (store answers and the writer's last commit succeeded).
pub fn record_store_probe(engine: &Engine, ok: bool) {
    STORE_PROBE_OK.store(ok, Ordering::Relaxed);
    set_ready_gauge(engine);
}

fn set_ready_gauge(engine: &Engine) {
    let ready = STORE_PROBE_OK.load(Ordering::Relaxed) && engine.writer.is_healthy();
    metrics::gauge!("viche_store_ready").set(if ready { 1.0 } else { 0.0 });
}

/// Every labelled series whose label values are known in advance, at 0.
fn register_known_series() {
    for code in CLOSE_CODES {
        metrics::counter!("viche_connections_closed_total", "code" => code).absolute(0);
    }
    for kind in RATE_LIMITED_KINDS {
        metrics::counter!("viche_rate_limited_total", "kind" => kind).absolute(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        metrics::counter!("viche_auth_failures_total", "reason" => reason).absolute(0);
    }
    for kind in ACCEPT_ERROR_KINDS {
        metrics::counter!("viche_accept_errors_total", "kind" => kind).absolute(0);
    }
    metrics::counter!("viche_connections_refused_total", "reason" => "max_connections").absolute(0);
    for name in [
        "viche_connections_accepted_total",
        "viche_slow_consumer_closes_total",
        "viche_writer_rejected_total",
        "viche_store_commit_failures_total",
        "viche_room_restarts_total",
        "viche_replayed_messages_total",
        "viche_logins_total",
        "viche_registrations_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        "viche_connections_open",
        "viche_sessions",
        "viche_rooms_active",
        "viche_writer_queue_depth",
        "viche_writer_pending",
        "viche_outbox_depth_max",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    for name in ["viche_store_commit_duration_seconds", "viche_argon2_duration_seconds", "viche_writer_batch_size"] {
        // Registering is enough for the histogram to be rendered (empty).
        let _ = metrics::histogram!(name);
    }
}

fn describe() {
    use Unit::{Bytes, Count, Seconds};
    let c = |name: &'static str, unit: Unit, help: &'static str| describe_counter!(name, unit, help);
    let g = |name: &'static str, unit: Unit, help: &'static str| describe_gauge!(name, unit, help);
    let h = |name: &'static str, unit: Unit, help: &'static str| describe_histogram!(name, unit, help);

    g("viche_connections_open", Count, "WebSocket connections open now (before and after hello).");
    c("viche_connections_accepted_total", Count, "WebSocket upgrades accepted.");
    c("viche_connections_closed_total", Count, "WebSocket connections ended, by the close code the server sent (none: the peer went away or the socket failed).");
    c("viche_connections_refused_total", Count, "WebSocket upgrades refused, by reason (max_connections: HTTP 503).");
    g("viche_sessions", Count, "Authenticated sessions (past hello) now.");
    g("viche_rooms_active", Count, "Room actors running now.");
    c("viche_room_restarts_total", Count, "Room actors restarted by the supervisor after a crash.");
    c("viche_frames_in_total", Count, "Client frames received, by type (bad_frame: did not decode).");
    c("viche_frames_in_bytes_total", Bytes, "Bytes of client frame payloads received.");
    c("viche_frames_out_total", Count, "Server frames queued for clients (or written directly, for replays), by type.");
    c("viche_frames_out_bytes_total", Bytes, "Bytes written to WebSockets, frame headers included.");
    c("viche_messages_stored_total", Count, "Messages durably stored (duplicates by cid excluded).");
    c("viche_deliveries_total", Count, "msg frames queued to recipients' outboxes (one per recipient session).");
    h(
        "viche_send_deliver_latency_seconds",
        Seconds,
        "From decoding a send to queueing its msg in the last recipient's outbox.",
    );
    c(
        "viche_replayed_messages_total",
        Count,
        "Stored messages written to clients as a replay (join with since, restart).",
    );
    h(
        "viche_store_commit_duration_seconds",
        Seconds,
        "Duration of one successful store commit (a batch, fsync included).",
    );
    h("viche_writer_batch_size", Count, "Messages per store commit.");
    c("viche_store_commit_failures_total", Count, "Failed store commits (each is retried with backoff).");
    g("viche_writer_queue_depth", Count, "Messages waiting in the writer's queue, sampled at scrape.");
    g(
        "viche_writer_queue_capacity",
        Count,
        "The writer queue's bound (--writer-queue-max); full means senders get overloaded.",
    );
    g("viche_writer_pending", Count, "Messages submitted and not yet acknowledged, sampled at scrape.");
    c("viche_writer_rejected_total", Count, "Sends refused with overloaded because the writer's queue was full.");
    g(
        "viche_store_ready",
        Count,
        "1 when the store answers its readiness probe and the writer's last commit succeeded (as /readyz), else 0.",
    );
    g("viche_outbox_depth_max", Count, "The deepest any session's outbox got (frames) since the previous scrape.");
    c("viche_slow_consumer_closes_total", Count, "Sessions closed with 4008 because their outbox was full.");
    c(
        "viche_rate_limited_total",
        Count,
        "Requests refused for rate, by kind (send, typing, join: WebSocket; login, register: HTTP 429).",
    );
    c("viche_auth_failures_total", Count, "Authentication failures, by reason.");
    c("viche_logins_total", Count, "Successful logins.");
    c("viche_registrations_total", Count, "Users registered.");
    c("viche_http_requests_total", Count, "HTTP requests answered, by route and status.");
    h("viche_http_request_duration_seconds", Seconds, "HTTP request duration by route (a ws upgrade: until the 101).");
    h("viche_argon2_duration_seconds", Seconds, "Duration of one argon2id hash or verify, permit wait excluded.");
    c(
        "viche_accept_errors_total",
        Count,
        "Failed TCP accepts, by kind (emfile: out of file descriptors; accept paused 100 ms).",
    );
    g("viche_build_info", Count, "Always 1; the version label is the server's version.");
}
