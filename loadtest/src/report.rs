//! What a run measured.
//!
//! [`Raw`] is what one process counted: named counters, errors and closes
//! by code, HDR histograms, and a per-second timeline. Raws merge exactly
//! (sums, histogram adds, timelines joined by second), which is how the
//! reports of `--workers N` processes become one. [`Report`] is the final,
//! derived form: rates, loss, percentiles, the server's figures, the
//! problems found; it is what `--json` writes and the table shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::{Hist, Summary};
use crate::mix::{Metric, Op, OpK};

/// Counter names (the keys of [`Raw::counters`]).
pub mod c {
    pub const CONNECTIONS_TARGET: &str = "connections_target";
    pub const CONNECTIONS_OPENED: &str = "connections_opened";
    pub const CONNECT_FAILURES: &str = "connect_failures";
    /// Sends whose due time fell in the measured window (the offered load).
    pub const SENDS_DUE: &str = "sends_due_in_window";
    /// Sends written to a socket, whole run.
    pub const SENDS: &str = "sends";
    /// Sends written during the measured window (the achieved load).
    pub const SENDS_IN_WINDOW: &str = "sends_in_window";
    pub const ACKS: &str = "acks";
    pub const SEND_ERRORS: &str = "send_errors";
    pub const SENDS_UNANSWERED: &str = "sends_unanswered";
    /// Distinct messages received in the watched rooms, whole run.
    pub const DELIVERIES: &str = "deliveries";
    /// Deliveries that arrived during the measured window.
    pub const DELIVERIES_IN_WINDOW: &str = "deliveries_in_window";
    pub const EXPECTED: &str = "expected_deliveries";
    pub const LOST: &str = "lost";
    pub const DUPLICATES: &str = "duplicates";
    /// Missing seqs seen as jumps (a gap of 3 counts 3).
    pub const GAPS: &str = "gaps";
    pub const REPLAYED: &str = "replayed";
    pub const REPLAY_MORE: &str = "replay_more";
    pub const OTHER_FRAMES: &str = "other_frames";
    pub const DROPS: &str = "drops";
    pub const UNPLANNED_CLOSES: &str = "unplanned_closes";
    pub const RECONNECTS: &str = "reconnects";
    pub const RECONNECT_FAILURES: &str = "reconnect_failures";
    pub const MEMBERS_LOST: &str = "members_lost";
    pub const REGISTRATIONS: &str = "registrations";
    pub const LOGINS: &str = "logins";
    pub const HTTP_FAILURES: &str = "http_failures";
    pub const GENERATOR_CPU_US: &str = "generator_cpu_us_in_window";
    /// Time each process spent registering, and logging in (`login`).
    pub const REGISTER_PHASE_US: &str = "register_phase_us";
    pub const LOGIN_PHASE_US: &str = "login_phase_us";
    /// History pages read (`soak`): over WebSocket, and over HTTP.
    pub const HISTORY_PAGES_WS: &str = "history_pages_ws";
    pub const HISTORY_PAGES_HTTP: &str = "history_pages_http";
}

/// Histogram names (the keys of [`Raw::histograms`]).
pub mod h {
    /// Send→deliver: the moment the sender wrote the send to each
    /// member's arrival, for sends due in the window, live deliveries only.
    pub const LATENCY: &str = "latency";
    /// The same from the moment the send was due by the open-loop
    /// schedule: adds the generator's own lateness (`send_lag`; tokio's
    /// timer alone is up to 1 ms late), so nothing is hidden when the
    /// generator falls behind (no coordinated omission).
    pub const LATENCY_FROM_DUE: &str = "latency_from_due";
    /// The send's write to its `ack` (stored durably).
    pub const ACK: &str = "ack";
    /// Send's due time to the moment it was written (the generator's own lag).
    pub const SEND_LAG: &str = "send_lag";
    /// Connect + hello + join of a fresh session.
    pub const CONNECT: &str = "connect";
    /// Drop to joined again (churn).
    pub const RECONNECT: &str = "reconnect";
    /// Age of a replayed message when it arrived (churn).
    pub const REPLAY_AGE: &str = "replay_age";
    pub const REGISTER: &str = "register";
    pub const LOGIN: &str = "login";
    /// A history page's request to its answer (`soak`).
    pub const HISTORY_WS: &str = "history_ws";
    pub const HISTORY_HTTP: &str = "history_http";
    /// `--mix`: an edit's write to each member's arrival of its `msg`
    /// (due in the window, live deliveries), the same from its due time,
    /// and its write to its `ack`.
    pub const EDIT_LATENCY: &str = "edit_latency";
    pub const EDIT_LATENCY_FROM_DUE: &str = "edit_latency_from_due";
    pub const EDIT_ACK: &str = "edit_ack";
    /// `--mix`: the same of a reaction.
    pub const REACT_LATENCY: &str = "react_latency";
    pub const REACT_LATENCY_FROM_DUE: &str = "react_latency_from_due";
    pub const REACT_ACK: &str = "react_ack";
    /// `--mix`: a read's write to its `ok`, and to the `read` push at the
    /// user's second session.
    pub const READ_OK: &str = "read_ok";
    pub const READ_PUSH: &str = "read_push";
}

/// One second of the run, counted by the second it ends in (`t` = 1 is
/// the first second after the start).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub errors: u64,
    /// Send→deliver of the deliveries that arrived in this second.
    pub latency: Hist,
}

/// What one process counted; merges exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Raw {
    /// Processes merged into this one (1 for a single process).
    pub processes: u64,
    pub counters: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_code: BTreeMap<String, u64>,
    pub histograms: BTreeMap<String, Hist>,
    pub timeline: Vec<TimelinePoint>,
}

impl Raw {
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn add(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_string()).or_default() += n;
    }

    pub fn hist(&self, name: &str) -> Hist {
        self.histograms.get(name).cloned().unwrap_or_default()
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Raw) {
        self.processes += other.processes;
        for (k, v) in &other.counters {
            *self.counters.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors_by_code {
            *self.errors_by_code.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.closes_by_code {
            *self.closes_by_code.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.histograms {
            self.histograms.entry(k.clone()).or_default().add(v);
        }
        for point in &other.timeline {
            match self.timeline.binary_search_by_key(&point.t, |p| p.t) {
                Ok(i) => {
                    let mine = &mut self.timeline[i];
                    mine.sends += point.sends;
                    mine.deliveries += point.deliveries;
                    mine.errors += point.errors;
                    mine.latency.add(&point.latency);
                }
                Err(i) => self.timeline.insert(i, point.clone()),
            }
        }
    }

    /// The merge of several raws.
    pub fn merged<'a>(raws: impl IntoIterator<Item = &'a Raw>) -> Raw {
        let mut out = Raw::default();
        for r in raws {
            out.merge(r);
        }
        out
    }
}

/// Server figures over the measured window, from `/proc/PID` (exact) or
/// from `/metrics` (process CPU there is in whole seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFigures {
    /// `proc:PID`, `metrics`, or `none`.
    pub source: String,
    pub cpu_seconds: Option<f64>,
    /// `viche_deliveries_total` over the window (the server's own count).
    pub deliveries: Option<u64>,
    /// Server CPU-seconds per 1,000 deliveries.
    pub cpu_s_per_1000_deliveries: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// (after − before) / sessions, for the `connections` scenario.
    pub rss_per_session_bytes: Option<f64>,
    pub sessions: Option<u64>,
    /// The server's own send→deliver (`viche_send_deliver_latency_seconds`:
    /// decode of a `send` to the last outbox push) over the window: the
    /// share of deliveries at or under each bucket bound, by bound in ms.
    #[serde(default)]
    pub send_deliver_within: BTreeMap<String, f64>,
    /// The store's commits over the window
    /// (`viche_store_commit_duration_seconds`: one per writer batch, the
    /// fsync included): the share at or under each bucket bound, by bound
    /// in ms. What of send→deliver the store owns.
    #[serde(default)]
    pub commit_within: BTreeMap<String, f64>,
    /// Busy CPU-seconds of the whole machine over the window (server,
    /// generator and anything else running): what is left after the
    /// server's and the generator's is other work that skewed the run.
    #[serde(default)]
    pub machine_cpu_seconds: Option<f64>,
    /// Mean bytes of a frame the server wrote over the window, WebSocket
    /// header included (`viche_frames_out_bytes_total` over
    /// `viche_frames_out_total`, every kind of frame).
    #[serde(default)]
    pub frame_bytes_mean: Option<f64>,
    /// This machine's floor measured after the window, in the same
    /// invocation (the report's `floor`): CPU per delivery of one write of
    /// a frame per delivery to as many loopback sockets at the same rate.
    #[serde(default)]
    pub floor_us_per_delivery: Option<f64>,
    /// `cpu_us_per_delivery` / `floor_us_per_delivery`.
    #[serde(default)]
    pub ratio_to_floor: Option<f64>,
    /// Why there is no floor, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_missing: Option<String>,
    /// CPUs the server may run on (its affinity), when its PID is known.
    #[serde(default)]
    pub cpus_allowed: Option<u64>,
}

/// Which side of the run ran out of CPU: each side's busy share of the
/// CPUs it may run on over the window, and the verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saturation {
    /// Server CPU-seconds / (window × its allowed CPUs).
    pub server_busy: Option<f64>,
    pub server_cpus: Option<u64>,
    /// Generator CPU-seconds (all its processes) / (window × its CPUs).
    pub generator_busy: f64,
    pub generator_cpus: u64,
    /// `server`, `generator`, `both` or `neither`: whose busy share is at
    /// least [`SATURATED_BUSY`]. A saturated generator means the run says
    /// little about the server's limit.
    pub saturated: String,
}

/// A side busy this share of its CPUs (or more) over the window is saturated.
pub const SATURATED_BUSY: f64 = 0.9;

impl Saturation {
    pub fn new(server: &ServerFigures, generator_cpu_s: f64, generator_cpus: u64, window_s: f64) -> Saturation {
        assert!(generator_cpus > 0 && window_s > 0.0);
        let server_busy = match (server.cpu_seconds, server.cpus_allowed) {
            (Some(cpu), Some(cpus)) if cpus > 0 => Some(cpu / (window_s * cpus as f64)),
            _ => None,
        };
        let generator_busy = generator_cpu_s / (window_s * generator_cpus as f64);
        let saturated = match (server_busy.is_some_and(|b| b >= SATURATED_BUSY), generator_busy >= SATURATED_BUSY) {
            (true, true) => "both",
            (true, false) => "server",
            (false, true) => "generator",
            (false, false) => "neither",
        };
        Saturation {
            server_busy,
            server_cpus: server.cpus_allowed,
            generator_busy,
            generator_cpus,
            saturated: saturated.into(),
        }
    }

    /// The report's row.
    pub fn line(&self) -> String {
        let server = match (self.server_busy, self.server_cpus) {
            (Some(b), Some(n)) => format!("server {:.1}% of its {n} CPU{}", b * 100.0, if n == 1 { "" } else { "s" }),
            _ => "server n/a (its PID is not known)".into(),
        };
        let n = self.generator_cpus;
        format!(
            "{server}, generator {:.1}% of its {n} CPU{} → {} saturated (≥ {:.0}% busy)",
            self.generator_busy * 100.0,
            if n == 1 { "" } else { "s" },
            self.saturated,
            SATURATED_BUSY * 100.0
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub offered_sends_per_s: f64,
    pub achieved_sends_per_s: f64,
    /// Deliveries expected per second at the offered rate.
    pub offered_deliveries_per_s: f64,
    pub deliveries_per_s: f64,
    pub registrations_per_s: f64,
    pub logins_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    pub t: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

/// The final report (`--json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub scenario: String,
    pub command: Vec<String>,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    pub started_unix_ms: u64,
    pub host: Host,
    pub processes: u64,
    pub warmup_s: f64,
    /// The measured window (after the warm-up).
    pub window_s: f64,
    pub rates: Rates,
    pub loss: Loss,
    /// Percentiles of every histogram, by name (see [`h`]).
    pub latency: BTreeMap<String, Summary>,
    pub server: ServerFigures,
    pub counters: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_code: BTreeMap<String, u64>,
    pub timeline: Vec<TimelineRow>,
    /// Every histogram, V2 + DEFLATE, base64.
    pub histograms: BTreeMap<String, Hist>,
    /// What broke an invariant (loss, gaps, duplicates, errors, failed
    /// connections, unanswered sends); empty on a clean run.
    pub problems: Vec<String>,
    /// `hostile`: the clean phase, the comparison with it, and what the
    /// hostile clients observed (the top level is the hostile phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostile: Option<HostileSection>,
    /// `soak`: the server's RSS over time and its growth per operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakSection>,
    /// Each kind of operation the senders performed (`send`, and with
    /// `--mix` also `edit`, `react`, `read`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, OpFigures>,
    /// This machine's floor: the `floor` scenario's result, or the floor
    /// measured after another scenario's window (see `server.ratio_to_floor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<FloorFigures>,
    /// Which side ran out of CPU in the window (when the generator's CPU was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Saturation>,
}

/// This machine's floor (`crate::floor`): one write(2) of a frame per
/// delivery (or of `frames_per_write` frames per write) to loopback
/// sockets, round-robin, open loop, and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloorFigures {
    /// Loopback connections written to.
    pub connections: u64,
    /// Deliveries per second asked for, and achieved in the window.
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    /// Bytes of one frame, and where that size came from.
    pub frame_bytes: u64,
    pub frame_bytes_source: String,
    pub frames_per_write: u64,
    /// The sender woke at most once per this many µs (0: at each due time).
    pub tick_us: u64,
    /// CPUs the sender and the reader threads were pinned to (none: unpinned).
    pub sender_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
    pub warmup_s: f64,
    /// The window as the sender measured it.
    pub window_s: f64,
    /// Deliveries, writes and sender wakeups in the window.
    pub deliveries: u64,
    pub writes: u64,
    pub wakeups: u64,
    /// The sender thread's CPU time over the window, and per delivery: the floor.
    pub sender_cpu_s: f64,
    pub us_per_delivery: f64,
    /// The reader thread's CPU time over the window, and per delivery.
    pub reader_cpu_s: f64,
    pub reader_us_per_delivery: f64,
    /// How late the sender was behind its schedule at worst, in the window.
    pub late_max_ms: f64,
    /// Writes (whole run) that would block or took part of their bytes;
    /// the rest went out at the socket's next turn.
    pub stalls: u64,
    /// Deliveries of the whole run (warm-up and window).
    pub deliveries_total: u64,
    /// Whole run: bytes written, read, and left unwritten (stalled at the end).
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub bytes_unwritten: u64,
    /// Sockets whose bytes read differ from their bytes written.
    pub sockets_short: u64,
    /// What makes the figure doubtful (bytes not received, rate not achieved).
    pub problems: Vec<String>,
}

/// One kind of operation of the senders (`--mix`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpFigures {
    /// Due in the window, per second (offered), and written in it (achieved).
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    /// Written, whole run.
    pub performed: u64,
    /// Answered with `ack` (a read: `ok`).
    pub answered: u64,
    pub errors: u64,
    pub unanswered: u64,
    /// Edits or reactions due before their sender had a target, sent as
    /// messages instead (and counted as sends).
    pub fallbacks: u64,
    /// `send`, `edit`, `react`: their `msg` frames at the members (loss,
    /// duplicates and gaps of this kind's seqs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Loss>,
    /// `read`: the pushes at the user's second session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes: Option<Pushes>,
    /// Percentiles, ms: `deliver` (write → each member's arrival),
    /// `deliver_from_due`, `ack`; for `read`: `ok`, `push`.
    pub latency: BTreeMap<String, Summary>,
}

/// The `read` pushes of `--mix`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pushes {
    /// Reads past the marker as the reader knew it, with none of its writes
    /// unanswered: each must push.
    pub expected: u64,
    /// Pushes matched to a read (expected or not).
    pub received: u64,
    /// Expected and never pushed.
    pub lost: u64,
    /// Pushes of no read of ours, or out of order.
    pub unmatched: u64,
    pub duplicates: u64,
}

/// What the `hostile` scenario adds to its report. The report's top level
/// is the normal users of the hostile phase; `clean` is the same shape of
/// normal users measured first, without hostile clients.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostileSection {
    /// How the phases ran, in words.
    pub order: String,
    /// The clean phase's report (same fields as the top level).
    pub clean: Box<Report>,
    /// The normal users' figures side by side, and the goal.
    pub comparison: Comparison,
    /// Each kind of hostile client: what it did and what it observed, by
    /// kind (`non_readers`, `slowloris`, `login_flood`, `reconnect_storm`,
    /// `junk_frames`).
    pub clients: BTreeMap<String, HostileKind>,
    /// Correct logins of a real user nobody attacks, by phase (`clean`, `hostile`).
    pub login_probe: BTreeMap<String, HostileKind>,
    /// The server's own counters over each phase (`/metrics`, by phase,
    /// then by series): the increase of every counter that moved (traffic
    /// volume excluded), and a few gauges at the phase's end.
    pub server_view: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The normal users of one phase, in a few figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseFigures {
    /// Send→deliver percentiles (the `latency` histogram), ms.
    pub latency: Summary,
    pub sends: u64,
    pub acks: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub sessions_lost: u64,
    pub error_frames: u64,
    pub closes: u64,
}

impl PhaseFigures {
    pub fn of(r: &Report) -> Self {
        let g = |k: &str| r.counters.get(k).copied().unwrap_or(0);
        PhaseFigures {
            latency: r.latency.get(h::LATENCY).cloned().unwrap_or_default(),
            sends: g(c::SENDS),
            acks: g(c::ACKS),
            expected: r.loss.expected,
            received: r.loss.received,
            lost: r.loss.lost,
            gaps: r.loss.gaps,
            duplicates: r.loss.duplicates,
            sessions_lost: g(c::MEMBERS_LOST),
            error_frames: r.errors_by_code.values().sum(),
            closes: r.closes_by_code.values().sum(),
        }
    }

    /// Nothing lost, skipped, repeated, unanswered or cut off.
    pub fn intact(&self) -> bool {
        self.lost == 0 && self.gaps == 0 && self.duplicates == 0 && self.sessions_lost == 0 && self.acks == self.sends
    }
}

/// The goal of `hostile`: the normal users' p99 in the hostile phase at
/// most `p99_ratio_max` × the clean phase's, and nothing lost in either.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub clean: PhaseFigures,
    pub hostile: PhaseFigures,
    /// Hostile p99 / clean p99 (none when either phase delivered nothing).
    pub p99_ratio: Option<f64>,
    pub p99_ratio_max: f64,
    pub p99_within_goal: bool,
    /// Both phases: nothing lost, no gap, no duplicate, every send acknowledged, no session lost.
    pub nothing_lost: bool,
    pub goal_met: bool,
}

/// One kind of hostile client (or the login probe): what it did
/// (`counters`), how each connection or attempt ended as the client saw it
/// (`outcomes`), and timings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostileKind {
    pub what: String,
    pub counters: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub latency: BTreeMap<String, Summary>,
}

/// What the `soak` scenario adds to its report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakSection {
    /// What counts as an operation.
    pub operations_definition: String,
    /// Where RSS came from (`proc:PID`, `metrics`, `none`).
    pub rss_source: String,
    /// One sample a second from the start (warm-up included).
    pub samples: Vec<RssSample>,
    /// The first sample at or after the warm-up's end, and the last (the window's end).
    pub rss_at_warmup_end_bytes: Option<u64>,
    pub rss_at_end_bytes: Option<u64>,
    /// Highest sample after the warm-up.
    pub rss_peak_bytes: Option<u64>,
    /// End minus warm-up end.
    pub rss_growth_bytes: Option<i64>,
    /// Operations between those two samples, in all and by kind.
    pub operations_after_warmup: u64,
    pub operations_by_kind: BTreeMap<String, u64>,
    /// `rss_growth_bytes` per 1,000 operations after the warm-up.
    pub rss_growth_per_1000_ops_bytes: Option<f64>,
    /// Least-squares slope of RSS against operations over the samples after
    /// the warm-up, per 1,000 operations (less sensitive to the two end samples).
    pub rss_slope_per_1000_ops_bytes: Option<f64>,
    /// `--check-rss-growth-mib`, when given.
    pub check_rss_growth_mib: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the start (warm-up included).
    pub t_s: f64,
    pub rss_bytes: Option<u64>,
    /// Operations so far (cumulative, from the start).
    pub operations: u64,
}

/// What a scenario expected, for the derived figures.
#[derive(Clone, Debug, Default)]
pub struct Expectation {
    pub warmup_s: f64,
    pub window_s: f64,
    /// Deliveries each send should produce (room size; 2 for a DM).
    pub deliveries_per_send: f64,
    /// Close codes that are part of the scenario (none by default).
    pub expected_closes: Vec<String>,
}

impl Report {
    /// Derives the report from the merged raw counts.
    pub fn finalize(scenario: &str, raw: &Raw, exp: &Expectation, server: ServerFigures) -> Report {
        let window = exp.window_s.max(1e-9);
        let g = |k: &str| raw.get(k);
        let rates = Rates {
            offered_sends_per_s: g(c::SENDS_DUE) as f64 / window,
            achieved_sends_per_s: g(c::SENDS_IN_WINDOW) as f64 / window,
            // Every operation but a read is delivered to the room.
            offered_deliveries_per_s: Op::ALL
                .iter()
                .filter(|op| op.delivers())
                .map(|op| g(&op.counter(OpK::Due)))
                .sum::<u64>() as f64
                * exp.deliveries_per_send
                / window,
            deliveries_per_s: g(c::DELIVERIES_IN_WINDOW) as f64 / window,
            registrations_per_s: per_phase(g(c::REGISTRATIONS), g(c::REGISTER_PHASE_US), raw.processes, window),
            logins_per_s: per_phase(g(c::LOGINS), g(c::LOGIN_PHASE_US), raw.processes, window),
        };
        let loss = Loss {
            expected: g(c::EXPECTED),
            received: g(c::DELIVERIES),
            lost: g(c::LOST),
            duplicates: g(c::DUPLICATES),
            gaps: g(c::GAPS),
        };
        let mut problems = Vec::new();
        let mut check = |name: &str, what: &str| {
            let n = g(name);
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        };
        check(c::CONNECT_FAILURES, "connections failed to open");
        check(c::LOST, "deliveries lost");
        check(c::GAPS, "seqs skipped (gaps)");
        check(c::DUPLICATES, "duplicate deliveries");
        check(c::SENDS_UNANSWERED, "sends never answered");
        check(c::SEND_ERRORS, "sends answered with an error");
        check(c::MEMBERS_LOST, "sessions lost for good");
        check(c::HTTP_FAILURES, "HTTP requests failed");
        check(c::REPLAY_MORE, "resumes with more than a replay's worth missed");
        for (op, many) in [(Op::Edit, "edits"), (Op::React, "reactions"), (Op::Read, "reads")] {
            check(&op.counter(OpK::Errors), &format!("{many} answered with an error"));
            check(&op.counter(OpK::Unanswered), &format!("{many} never answered"));
        }
        check(&Op::Read.counter(OpK::PushesLost), "read markers that moved without a push to the second session");
        check(&Op::Read.counter(OpK::PushesUnmatched), "read pushes that match no read");
        check(&Op::Read.counter(OpK::PushesDuplicate), "duplicate read pushes");
        let errors: u64 = raw.errors_by_code.values().sum();
        if errors > 0 {
            problems.push(format!("{errors} error frames: {:?}", raw.errors_by_code));
        }
        let unexpected_closes: BTreeMap<_, _> = raw
            .closes_by_code
            .iter()
            .filter(|(k, _)| !exp.expected_closes.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if !unexpected_closes.is_empty() {
            problems.push(format!("connections closed by the server: {unexpected_closes:?}"));
        }
        let timeline = raw
            .timeline
            .iter()
            .map(|p| {
                let s = p.latency.summary();
                TimelineRow {
                    t: p.t,
                    sends: p.sends,
                    deliveries: p.deliveries,
                    errors: p.errors,
                    p50_ms: s.p50_ms,
                    p90_ms: s.p90_ms,
                    p99_ms: s.p99_ms,
                    p999_ms: s.p999_ms,
                    max_ms: s.max_ms,
                }
            })
            .collect();
        Report {
            tool: "viche-load".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scenario: scenario.into(),
            processes: raw.processes,
            warmup_s: exp.warmup_s,
            window_s: exp.window_s,
            rates,
            loss,
            latency: raw.histograms.iter().map(|(k, v)| (k.clone(), v.summary())).collect(),
            counters: raw.counters.clone(),
            errors_by_code: raw.errors_by_code.clone(),
            closes_by_code: raw.closes_by_code.clone(),
            timeline,
            histograms: raw.histograms.clone(),
            problems,
            operations: operations(raw, window),
            saturation: (g(c::GENERATOR_CPU_US) > 0).then(|| {
                let cpus = crate::floor::allowed_cpus(None).map_or(1, |cpus| cpus.len() as u64);
                Saturation::new(&server, g(c::GENERATOR_CPU_US) as f64 / 1e6, cpus, window)
            }),
            server,
            ..Report::default()
        }
    }

    /// The human-readable summary table.
    pub fn table(&self) -> String {
        if let Some(hostile) = &self.hostile {
            return crate::tables::hostile(self, hostile);
        }
        if let (Some(floor), "floor") = (&self.floor, self.scenario.as_str()) {
            return crate::tables::floor(self, floor);
        }
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        let g = |k: &str| self.counters.get(k).copied().unwrap_or(0);
        row(
            "scenario",
            format!("{} ({} process{})", self.scenario, self.processes, if self.processes == 1 { "" } else { "es" }),
        );
        row("window", format!("{:.1} s after {:.1} s warm-up", self.window_s, self.warmup_s));
        if g(c::CONNECTIONS_TARGET) > 0 {
            row(
                "connections",
                format!(
                    "{} of {} opened, {} failed",
                    g(c::CONNECTIONS_OPENED),
                    g(c::CONNECTIONS_TARGET),
                    g(c::CONNECT_FAILURES)
                ),
            );
        }
        if g(c::SENDS) > 0 || self.rates.offered_sends_per_s > 0.0 {
            row(
                "sends/s",
                format!(
                    "offered {:.1}, achieved {:.1} ({} sent, {} acked, {} errors, {} unanswered)",
                    self.rates.offered_sends_per_s,
                    self.rates.achieved_sends_per_s,
                    g(c::SENDS),
                    g(c::ACKS),
                    g(c::SEND_ERRORS),
                    g(c::SENDS_UNANSWERED)
                ),
            );
            row(
                "deliveries/s",
                format!(
                    "offered {:.0}, achieved {:.0}",
                    self.rates.offered_deliveries_per_s, self.rates.deliveries_per_s
                ),
            );
            row(
                "deliveries",
                format!(
                    "{} of {} expected: {} lost, {} gaps, {} duplicates",
                    self.loss.received, self.loss.expected, self.loss.lost, self.loss.gaps, self.loss.duplicates
                ),
            );
        }
        for (name, label) in [
            (h::LATENCY, "send→deliver ms"),
            (h::LATENCY_FROM_DUE, "due→deliver ms"),
            (h::ACK, "send→ack ms"),
            (h::SEND_LAG, "send lag ms"),
            (h::CONNECT, "connect ms"),
            (h::RECONNECT, "reconnect ms"),
            (h::REPLAY_AGE, "replayed age ms"),
            (h::REGISTER, "register ms"),
            (h::LOGIN, "login ms"),
            (h::HISTORY_WS, "history (WS) ms"),
            (h::HISTORY_HTTP, "history (HTTP) ms"),
        ] {
            if let Some(s) = self.latency.get(name).filter(|s| s.count > 0) {
                row(
                    label,
                    format!(
                        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n = {})",
                        s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.count
                    ),
                );
            }
        }
        if self.operations.keys().any(|k| k != Op::Send.name()) {
            rows.extend(self.operation_rows());
        }
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        if g(c::DROPS) + g(c::RECONNECTS) > 0 {
            row(
                "churn",
                format!(
                    "{} drops, {} reconnects ({} failed attempts), {} replayed, {} unplanned closes",
                    g(c::DROPS),
                    g(c::RECONNECTS),
                    g(c::RECONNECT_FAILURES),
                    g(c::REPLAYED),
                    g(c::UNPLANNED_CLOSES)
                ),
            );
        }
        if g(c::REGISTRATIONS) + g(c::LOGINS) > 0 || self.latency.contains_key(h::REGISTER) {
            row(
                "HTTP",
                format!(
                    "{} registrations ({:.1}/s), {} logins ({:.1}/s), {} failed",
                    g(c::REGISTRATIONS),
                    self.rates.registrations_per_s,
                    g(c::LOGINS),
                    self.rates.logins_per_s,
                    g(c::HTTP_FAILURES)
                ),
            );
        }
        row(
            "errors by code",
            if self.errors_by_code.is_empty() { "none".into() } else { format!("{:?}", self.errors_by_code) },
        );
        row(
            "closes by code",
            if self.closes_by_code.is_empty() { "none".into() } else { format!("{:?}", self.closes_by_code) },
        );
        let s = &self.server;
        let opt =
            |v: Option<f64>, unit: &str, digits: usize| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}{unit}"));
        if s.cpu_us_per_delivery.is_some() {
            row(
                "server CPU",
                format!(
                    "{} s over the window, {} per 1,000 deliveries = {} per delivery ({}); {}",
                    opt(s.cpu_seconds, "", 3),
                    opt(s.cpu_s_per_1000_deliveries, " s", 4),
                    opt(s.cpu_us_per_delivery, " µs", 2),
                    s.source,
                    crate::tables::against_floor(s, self.floor.as_ref())
                ),
            );
            if let Some(floor) = &self.floor {
                row("floor", crate::tables::floor_line(floor));
            }
        } else {
            row("server CPU", format!("{} s over the window ({})", opt(s.cpu_seconds, "", 3), s.source));
        }
        for (name, within) in [("server send→deliver", &s.send_deliver_within), ("store commits", &s.commit_within)] {
            if within.is_empty() {
                continue;
            }
            let mut within: Vec<(f64, f64)> =
                within.iter().filter_map(|(k, v)| Some((k.parse::<f64>().ok()?, *v))).collect();
            within.sort_by(|a, b| a.0.total_cmp(&b.0));
            let shown: Vec<String> = within
                .iter()
                .filter(|(le, _)| [0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 100.0].contains(le))
                .map(|(le, v)| format!("{:.1}% ≤ {le} ms", v * 100.0))
                .collect();
            row(name, shown.join(", "));
        }
        if s.rss_after_bytes.is_some() {
            row(
                "server RSS",
                format!(
                    "{} → {} KiB{}",
                    s.rss_before_bytes.map_or("n/a".into(), |b| (b / 1024).to_string()),
                    s.rss_after_bytes.map_or("n/a".into(), |b| (b / 1024).to_string()),
                    s.rss_per_session_bytes.map_or(String::new(), |b| format!(
                        ", {:.0} B ({:.2} KiB) per session over {} sessions",
                        b,
                        b / 1024.0,
                        s.sessions.unwrap_or(0)
                    ))
                ),
            );
        }
        if g(c::GENERATOR_CPU_US) > 0 {
            row(
                "generator CPU",
                format!("{:.2} s over the window (all its processes)", g(c::GENERATOR_CPU_US) as f64 / 1e6),
            );
        }
        if let Some(machine) = s.machine_cpu_seconds {
            let others = machine - s.cpu_seconds.unwrap_or(0.0) - g(c::GENERATOR_CPU_US) as f64 / 1e6;
            row(
                "machine CPU",
                format!(
                    "{machine:.2} s busy over the window, of which {:.2} s neither server nor generator",
                    others.max(0.0)
                ),
            );
        }
        if let Some(saturation) = &self.saturation {
            row("saturation", saturation.line());
        }
        if let Some(soak) = &self.soak {
            rows.extend(crate::tables::soak_rows(self, soak));
        }
        rows.push(("problems".into(), if self.problems.is_empty() { "none".into() } else { self.problems.join("; ") }));
        crate::tables::align(&rows)
    }
}

impl Report {
    /// The rows of `--mix`: each operation's rates, answers, deliveries or
    /// pushes, and percentiles.
    fn operation_rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        let (offered, achieved) =
            self.operations.values().fold((0.0, 0.0), |(o, a), f| (o + f.offered_per_s, a + f.achieved_per_s));
        let mix = self.params.get("mix").and_then(|m| m.as_str()).unwrap_or("");
        rows.push(("operations/s".to_string(), format!("offered {offered:.1}, achieved {achieved:.1} (mix {mix})")));
        for op in Op::ALL {
            let Some(f) = self.operations.get(op.name()) else { continue };
            let name = op.name();
            let mut text = format!(
                "offered {:.1}/s, achieved {:.1}/s: {} performed, {} {}, {} errors, {} unanswered",
                f.offered_per_s,
                f.achieved_per_s,
                f.performed,
                f.answered,
                if op.delivers() { "acked" } else { "ok" },
                f.errors,
                f.unanswered
            );
            if f.fallbacks > 0 {
                text.push_str(&format!(", {} sent as messages (no target yet)", f.fallbacks));
            }
            if let Some(d) = &f.deliveries {
                text.push_str(&format!(
                    "; deliveries {} of {}: {} lost, {} gaps, {} duplicates",
                    d.received, d.expected, d.lost, d.gaps, d.duplicates
                ));
            }
            if let Some(p) = &f.pushes {
                text.push_str(&format!(
                    "; pushes {} received, {} expected: {} lost, {} unmatched, {} duplicates",
                    p.received, p.expected, p.lost, p.unmatched, p.duplicates
                ));
            }
            rows.push((name.to_string(), text));
            if op == Op::Send {
                // Its percentiles are the rows above (send→deliver, ...).
                continue;
            }
            let labels: &[(&str, &str)] = if op.delivers() {
                &[("deliver", "→deliver ms"), ("deliver_from_due", " due→deliver ms"), ("ack", "→ack ms")]
            } else {
                &[("ok", "→ok ms"), ("push", "→push ms")]
            };
            for (key, label) in labels {
                if let Some(s) = f.latency.get(*key).filter(|s| s.count > 0) {
                    rows.push((format!("{name}{label}"), percentiles(s)));
                }
            }
        }
        rows
    }
}

fn percentiles(s: &Summary) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n = {})",
        s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.count
    )
}

/// The figures of each operation performed (or due).
fn operations(raw: &Raw, window: f64) -> BTreeMap<String, OpFigures> {
    let mut out = BTreeMap::new();
    for op in Op::ALL {
        let g = |k: OpK| raw.get(&op.counter(k));
        if g(OpK::Performed) + g(OpK::Due) + g(OpK::Fallbacks) == 0 {
            continue;
        }
        let mut latency = BTreeMap::new();
        let metrics: &[(&str, Metric)] = if op.delivers() {
            &[("deliver", Metric::Deliver), ("deliver_from_due", Metric::DeliverFromDue), ("ack", Metric::Ack)]
        } else {
            &[("ok", Metric::Ack), ("push", Metric::Push)]
        };
        for (name, metric) in metrics {
            if let Some(hist) = raw.histograms.get(op.hist(*metric)) {
                latency.insert(name.to_string(), hist.summary());
            }
        }
        let figures = OpFigures {
            offered_per_s: g(OpK::Due) as f64 / window,
            achieved_per_s: g(OpK::InWindow) as f64 / window,
            performed: g(OpK::Performed),
            answered: g(OpK::Answered),
            errors: g(OpK::Errors),
            unanswered: g(OpK::Unanswered),
            fallbacks: g(OpK::Fallbacks),
            deliveries: op.delivers().then(|| Loss {
                expected: g(OpK::Expected),
                received: g(OpK::Deliveries),
                lost: g(OpK::Lost),
                duplicates: g(OpK::Duplicates),
                gaps: g(OpK::Gaps),
            }),
            pushes: (!op.delivers()).then(|| Pushes {
                expected: g(OpK::PushesExpected),
                received: g(OpK::Pushes),
                lost: g(OpK::PushesLost),
                unmatched: g(OpK::PushesUnmatched),
                duplicates: g(OpK::PushesDuplicate),
            }),
            latency,
        };
        out.insert(op.name().to_string(), figures);
    }
    out
}

/// A count per second of its phase (the processes' phases run side by
/// side: their mean length), or of the window when no phase was timed.
fn per_phase(count: u64, phase_us_sum: u64, processes: u64, window_s: f64) -> f64 {
    if phase_us_sum > 0 {
        count as f64 / (phase_us_sum as f64 / processes.max(1) as f64 / 1e6)
    } else {
        count as f64 / window_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_with(latencies: &[u64], counters: &[(&str, u64)], seconds: &[(u64, u64)]) -> Raw {
        let mut raw = Raw { processes: 1, ..Raw::default() };
        let mut hist = Hist::default();
        for &v in latencies {
            hist.record(v);
        }
        raw.histograms.insert(h::LATENCY.into(), hist);
        for &(k, v) in counters {
            raw.add(k, v);
        }
        for &(t, n) in seconds {
            let mut latency = Hist::default();
            latency.record(n * 1000);
            raw.timeline.push(TimelinePoint { t, sends: n, deliveries: n * 10, errors: 0, latency });
        }
        raw.errors_by_code.insert("rate_limited".into(), 1);
        raw
    }

    #[test]
    fn merging_worker_reports_is_exact() {
        let a = raw_with(&[1_000, 2_000, 3_000], &[(c::SENDS, 10), (c::DELIVERIES, 100)], &[(1, 5), (2, 6)]);
        let b = raw_with(&[4_000, 5_000_000], &[(c::SENDS, 7), (c::GAPS, 1)], &[(2, 1), (3, 2)]);
        // Through JSON, as the workers send them.
        let a: Raw = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b: Raw = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let m = Raw::merged([&a, &b]);
        assert_eq!(m.processes, 2);
        assert_eq!(m.get(c::SENDS), 17);
        assert_eq!(m.get(c::DELIVERIES), 100);
        assert_eq!(m.get(c::GAPS), 1);
        assert_eq!(m.errors_by_code["rate_limited"], 2);
        let lat = &m.histograms[h::LATENCY];
        assert_eq!(lat.len(), 5);
        // The merged histogram is the histogram of all the values.
        let mut all = Hist::default();
        for v in [1_000, 2_000, 3_000, 4_000, 5_000_000] {
            all.record(v);
        }
        assert_eq!(lat, &all);
        assert_eq!(lat.0.max(), all.0.max());
        assert_eq!(lat.quantile_ms(0.5), all.quantile_ms(0.5));
        // Timelines join by second.
        assert_eq!(
            m.timeline.iter().map(|p| (p.t, p.sends, p.deliveries)).collect::<Vec<_>>(),
            vec![(1, 5, 50), (2, 7, 70), (3, 2, 20)]
        );
        assert_eq!(m.timeline[1].latency.len(), 2);
        // Merge order does not matter.
        let m2 = Raw::merged([&b, &a]);
        assert_eq!(m2, m);
    }

    #[test]
    fn saturation_names_the_side_busy_past_the_bound() {
        let server =
            |cpu: f64| ServerFigures { cpu_seconds: Some(cpu), cpus_allowed: Some(1), ..ServerFigures::default() };
        let verdict = |s: f64, g: f64| Saturation::new(&server(s), g, 1, 20.0).saturated;
        assert_eq!(verdict(19.2, 19.5), "both");
        assert_eq!(verdict(19.2, 10.0), "server");
        assert_eq!(verdict(12.0, 18.5), "generator");
        assert_eq!(verdict(12.0, 10.0), "neither");
        // Two generator CPUs: 19.5 s of 40 is not saturated.
        let two = Saturation::new(&server(12.0), 19.5, 2, 20.0);
        assert_eq!((two.saturated.as_str(), two.generator_busy), ("neither", 0.4875));
        // No server PID: only the generator can be judged.
        let unknown = Saturation::new(&ServerFigures::default(), 19.5, 1, 20.0);
        assert_eq!((unknown.server_busy, unknown.saturated.as_str()), (None, "generator"));
        assert!(unknown.line().contains("server n/a"), "{}", unknown.line());
        let line = Saturation::new(&server(19.2), 10.0, 1, 20.0).line();
        assert!(
            line.starts_with("server 96.0% of its 1 CPU, generator 50.0% of its 1 CPU → server saturated"),
            "{line}"
        );
    }

    #[test]
    fn finalize_derives_rates_and_problems() {
        let mut raw = raw_with(
            &[1_000_000],
            &[(c::SENDS_DUE, 200), (c::SENDS_IN_WINDOW, 190), (c::DELIVERIES_IN_WINDOW, 19_000), (c::LOST, 3)],
            &[],
        );
        raw.closes_by_code.insert("4008".into(), 2);
        let exp = Expectation { warmup_s: 1.0, window_s: 10.0, deliveries_per_send: 100.0, expected_closes: vec![] };
        let r = Report::finalize("fanout", &raw, &exp, ServerFigures::default());
        assert_eq!(r.rates.offered_sends_per_s, 20.0);
        assert_eq!(r.rates.achieved_sends_per_s, 19.0);
        assert_eq!(r.rates.offered_deliveries_per_s, 2000.0);
        assert_eq!(r.rates.deliveries_per_s, 1900.0);
        assert_eq!(r.latency[h::LATENCY].count, 1);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        let table = r.table();
        assert!(table.contains("send→deliver ms"), "{table}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // Sends only: one operation, and no rows of its own.
        assert_eq!(r.operations.keys().collect::<Vec<_>>(), vec!["send"]);
        assert!(!table.contains("operations/s"), "{table}");
    }

    #[test]
    fn operations_of_a_mix() {
        let mut raw = raw_with(&[1_000_000], &[(c::SENDS_DUE, 70), (c::SENDS, 70), (c::ACKS, 70)], &[]);
        for (op, k, n) in [
            (Op::Edit, OpK::Due, 10),
            (Op::Edit, OpK::Performed, 10),
            (Op::Edit, OpK::Answered, 10),
            (Op::Edit, OpK::Expected, 40),
            (Op::Edit, OpK::Deliveries, 40),
            (Op::React, OpK::Due, 15),
            (Op::React, OpK::Performed, 15),
            (Op::React, OpK::Errors, 1),
            (Op::Read, OpK::Due, 5),
            (Op::Read, OpK::Performed, 5),
            (Op::Read, OpK::Answered, 5),
            (Op::Read, OpK::PushesExpected, 4),
            (Op::Read, OpK::Pushes, 3),
            (Op::Read, OpK::PushesLost, 1),
        ] {
            raw.add(&op.counter(k), n);
        }
        let mut push = Hist::default();
        push.record(2_000_000);
        raw.histograms.insert(h::READ_PUSH.into(), push);
        let exp = Expectation { warmup_s: 0.0, window_s: 10.0, deliveries_per_send: 4.0, expected_closes: vec![] };
        let mut r = Report::finalize("fanout", &raw, &exp, ServerFigures::default());
        assert_eq!(r.operations.len(), 4);
        // Edits and reactions are delivered to the room too; reads are not.
        assert_eq!(r.rates.offered_deliveries_per_s, (70.0 + 10.0 + 15.0) * 4.0 / 10.0);
        assert_eq!(r.operations["edit"].deliveries.as_ref().map(|d| d.received), Some(40));
        assert_eq!(r.operations["read"].pushes.as_ref().map(|p| (p.expected, p.lost)), Some((4, 1)));
        assert_eq!(r.operations["read"].latency["push"].count, 1);
        assert!(r.problems.iter().any(|p| p.contains("reactions answered with an error")), "{:?}", r.problems);
        assert!(r.problems.iter().any(|p| p.contains("without a push")), "{:?}", r.problems);
        r.params = serde_json::json!({ "mix": "send=70,edit=10,react=15,read=5" });
        let table = r.table();
        for text in ["operations/s", "offered 10.0, achieved 0.0 (mix send=70", "read→push ms", "pushes 3 received"] {
            assert!(table.contains(text), "{text}: {table}");
        }
    }
}
