//! The command line, and each scenario's plan of sessions for one process
//! (worker `i` of `n` takes every `n`-th room, pair, session or user).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::mix::{Mix, Op};
use crate::traffic::{ChurnPlan, MemberSpec, Plan, SendPlan, SendTarget};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "viche-load",
    version,
    about = "Load generator for a Viche server: fan-out, DMs, idle connections, reconnect storms, logins, hostile clients, soak.",
    long_about = "Load generator for a Viche server. Every run is bounded in time and stops by itself, and goes only to \
                  loopback addresses unless --allow-remote is given. Latency is the send's due time to each \
                  receiver's arrival on one clock (open loop: a late send goes out at once, never skipped). \
                  See docs/benchmarks.md, \"viche-load\"."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

/// Every scenario: those against a server ([`Cmd`]), and `floor`, which
/// needs none.
#[derive(Subcommand, Debug, Clone)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    #[command(flatten)]
    Server(Cmd),
    /// This machine's floor: one write(2) of a frame per delivery to N loopback sockets, nothing else; CPU per delivery.
    #[command(
        long_about = "This machine's floor, the limit that every server CPU-per-delivery figure is read against: N \
                      loopback connections, one write(2) of a frame of the server's real `msg` size per delivery at \
                      --rate, round-robin over the sockets (open loop: a late write goes out at once, never skipped), \
                      from one sender thread pinned like the server (--sender-cpu); one reader thread pinned like the \
                      generator (--reader-cpu) drains every socket with epoll. Reports the sender's CPU per delivery, \
                      the reader's, the achieved rate, writes that would block (stalls), and whether every byte \
                      written was read. Needs no server; every report that gives server CPU per delivery measures the \
                      same floor after its window (see --floor-duration, --no-floor)."
    )]
    Floor(FloorArgs),
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// R rooms × M members, S senders per room at a rate each (--mix: also edits, reactions and reads).
    Fanout(FanoutArgs),
    /// Pairs of users exchanging direct messages.
    Dm(DmArgs),
    /// Ramp N sessions into rooms, hold them, report server memory per session.
    Connections(ConnectionsArgs),
    /// Clients drop and reconnect (backoff, jitter) and resume with `join since` while messages flow.
    Churn(ChurnArgs),
    /// Registration and login throughput through the HTTP API.
    Login(LoginArgs),
    /// Fan-out measured twice: clean, then mixed with hostile clients (non-readers, slowloris, login flood, reconnect storm, junk frames).
    #[command(
        long_about = "Fan-out measured twice in one invocation: first a clean phase, then a hostile phase of the same \
                      shape (fresh sessions, fresh rooms) during which hostile clients run from the warm-up's start to \
                      the window's end: (a) --non-readers that join the rooms and never read, (b) --slowloris HTTP \
                      connections (stalled or trickled bodies and headers), (c) a login flood (wrong passwords for real \
                      users and unknown names), (d) a reconnect storm (join with since, disconnect, again), (e) junk \
                      frames (invalid MessagePack/JSON, frames that are not maps, oversized frames). The report compares \
                      the normal users' latency and loss in both phases (goal: hostile p99 within --p99-ratio-max × the \
                      clean p99, nothing lost) and says what the hostile clients observed; with --check a missed goal exits 1. \
                      Needs --jwt-secret; one process."
    )]
    Hostile(HostileArgs),
    /// A bounded mixed run (fan-out, DMs, churn with resumes, logins, registrations, history paging) sampling the server's RSS every second.
    #[command(
        long_about = "A bounded mixed run (default 5 minutes after a 1-minute warm-up): fan-out, DMs, churn with resumes \
                      (join with since; gaps and duplicates checked), registrations and logins, history paging over \
                      WebSocket and HTTP. The server's RSS is sampled every second (/proc/PID/status, else /metrics) and \
                      --plot draws it. Reports the RSS growth after the warm-up per 1,000 operations (operations = sends + \
                      logins + registrations + history pages + reconnects); --check-rss-growth-mib N fails the run when \
                      RSS grows more than N MiB after the warm-up. One process."
    )]
    Soak(SoakArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum EncodingArg {
    Msgpack,
    Json,
}

/// Options of every scenario.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// The server's base URL (loopback only unless --allow-remote), or
    /// several separated by commas: the nodes of a cluster, which the
    /// sessions are spread over in turn (traffic scenarios only; the
    /// server figures are their sums).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Mint tokens locally with the server's JWT secret (argon2 is then not what a run measures).
    #[arg(long)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
    /// Register and log in real users through the HTTP API for their tokens.
    #[arg(long)]
    pub login: bool,
    /// Password of the users registered by --login, `dm` and `login`.
    #[arg(long, default_value = "viche-load-password")]
    #[serde(skip)]
    pub password: String,
    /// Measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up, seconds: traffic flows but is not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// After the window, wait at most this long (seconds) for every answer and delivery.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// Connecting (and logging in) every session may take at most this long, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub setup_timeout: f64,
    /// Seed of every random choice (send offsets, storms, backoff jitter): same seed, same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of this run's user and room names (default: random, so that runs do not collide).
    #[arg(long)]
    pub run_tag: Option<String>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency percentiles over time and the latency histogram into this SVG file (hostile: both phases;
    /// soak: the server's RSS over time).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Generator processes (this program re-executed, each with a slice of the sessions).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Source addresses to spread connections over: `127.0.0.2-127.0.0.9` or a comma list.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Allow a target or source address other than loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// No live progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Sessions connecting (or logging in) at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// PID of the server, for exact CPU and RSS from /proc (default: the process listening on the port, if any).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Frame encoding of the sessions.
    #[arg(long, value_enum, default_value = "msgpack")]
    pub encoding: EncodingArg,
    /// Exit with status 1 when the run broke an invariant (loss, gaps, duplicates, errors, failed connections).
    #[arg(long)]
    pub check: bool,
    /// After the window, measure this machine's floor (as `viche-load floor`) at the run's delivery rate,
    /// connection count and mean frame size for this many seconds (after a warm-up of at most 1 s), and give the
    /// server's CPU per delivery as a multiple of it.
    #[arg(long, default_value_t = 5.0)]
    pub floor_duration: f64,
    /// Do not measure the floor (the report then says it has none).
    #[arg(long)]
    pub no_floor: bool,
    /// With several --url: every sending session connects to the first
    /// server (the others still spread over all), so that one node stores
    /// every message and the run measures delivery across nodes alone.
    #[arg(long)]
    pub senders_on_first_url: bool,
    /// The floor's sender thread on this CPU, or `none` (default: the server's CPU when it is pinned to one).
    #[arg(long, value_name = "CPU|none")]
    pub floor_sender_cpu: Option<Cpu>,
    /// The floor's reader thread on this CPU, or `none` (default: this process's CPU when it is pinned to one).
    #[arg(long, value_name = "CPU|none")]
    pub floor_reader_cpu: Option<Cpu>,
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub worker_index: Option<usize>,
    #[arg(long, hide = true, default_value_t = 1)]
    #[serde(skip)]
    pub worker_count: usize,
}

/// A CPU to pin a thread to, or none (`none`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cpu(pub Option<usize>);

impl std::str::FromStr for Cpu {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" => Ok(Cpu(None)),
            n => n.parse::<usize>().map(|c| Cpu(Some(c))).map_err(|_| format!("{s}: a CPU number or `none`")),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c}"),
            None => f.write_str("none"),
        }
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FloorArgs {
    /// Loopback connections (each a pair of sockets: two file descriptors).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Deliveries per second, all sockets together.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Bytes of one frame, WebSocket header included (default: the server's `msg` frame of a --body-bytes body in
    /// the standard fan-out shape, encoded by the protocol crate).
    #[arg(long)]
    pub frame_bytes: Option<usize>,
    /// Body of the default frame's `msg`, bytes.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Encoding of the default frame's `msg`.
    #[arg(long, value_enum, default_value = "msgpack")]
    pub encoding: EncodingArg,
    /// Frames concatenated into one write to the same socket (K deliveries per write).
    #[arg(long, default_value_t = 1)]
    pub frames_per_write: usize,
    /// The sender wakes at most once per this many µs and writes everything due (0: it sleeps until each write is
    /// due).
    #[arg(long, default_value_t = 1000)]
    pub tick_us: u64,
    /// Measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up, seconds: writes flow but are not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// The sender thread on this CPU (as `loadtest/scripts/server.sh` pins the server), or `none`.
    #[arg(long, default_value = "0", value_name = "CPU|none")]
    pub sender_cpu: Cpu,
    /// The reader thread on this CPU (as the standard runs pin the generator), or `none`.
    #[arg(long, default_value = "1", value_name = "CPU|none")]
    pub reader_cpu: Cpu,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl FloorArgs {
    /// Checks the parameters; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 || self.connections > 1_000_000 {
            return Err("floor: --connections must be between 1 and 1,000,000".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000_000.0) {
            return Err("floor: --rate must be in (0, 10,000,000] deliveries per second".into());
        }
        if self.frame_bytes.is_some_and(|b| !(2..=1 << 20).contains(&b)) || !(1..=1_000_000).contains(&self.body_bytes)
        {
            return Err("floor: --frame-bytes must be in [2, 1 MiB], --body-bytes in [1, 1,000,000]".into());
        }
        if !(1..=1024).contains(&self.frames_per_write) || self.tick_us > 1_000_000 {
            return Err("floor: --frames-per-write must be in [1, 1024], --tick-us at most 1,000,000".into());
        }
        let duration_ok = self.duration > 0.0 && self.duration <= 3600.0;
        if !duration_ok || !(0.0..=3600.0).contains(&self.warmup) {
            return Err("floor: --duration must be in (0, 3600] and --warmup in [0, 3600] seconds".into());
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Sessions per room (each a distinct user).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per room (among its members).
    #[arg(long, default_value_t = 5)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Body size in bytes (at least 40: the send and due times are stamped in it).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// What each sender does at --rate, by weight: `send=70,edit=10,react=15,read=5` (an operation left out weighs
    /// 0). Edits target the sender's own recent messages, reactions toggle one emoji on a recent message of the
    /// room, reads move the marker to the newest seq seen (each sender then has a second session that receives the
    /// push). Default: sends only.
    #[arg(long, value_name = "OP=WEIGHT,...")]
    pub mix: Option<Mix>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct DmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pairs of users; each user registers through HTTP (the server's registration limits must allow 2 × pairs).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// DMs per second per user.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Sessions opened per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_rate: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that drop and come back, spread over the rooms.
    #[arg(long, default_value_t = 5_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Steady senders per room (they do not churn).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// A storm every this many seconds (until the window ends).
    #[arg(long, default_value_t = 5.0)]
    pub storm_every: f64,
    /// Share of the clients that drop in each storm.
    #[arg(long, default_value_t = 1.0)]
    pub storm_fraction: f64,
    /// First reconnect within [0, this] ms; then exponential backoff with full jitter.
    #[arg(long, default_value_t = 100)]
    pub backoff_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    pub backoff_max_ms: u64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users registered, then logged in.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct HostileArgs {
    #[command(flatten)]
    pub common: Common,
    /// Normal users: rooms (as `fanout`).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Normal users: sessions per room (each a distinct user).
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Normal users: senders per room (among its members).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Normal users: messages per second per sender.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Normal users: body size in bytes (at least 40).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// (a) Clients that join the normal users' rooms and never read (raw sockets with a small receive buffer); 0: none.
    #[arg(long, default_value_t = 20)]
    pub non_readers: usize,
    /// Receive buffer of a non-reader's socket, bytes (SO_RCVBUF, set before connecting; the kernel doubles it).
    #[arg(long, default_value_t = 4096)]
    pub non_reader_rcvbuf: usize,
    /// `history` requests (limit 100) per second each non-reader sends and never reads the answer of; 0: none.
    #[arg(long, default_value_t = 5.0)]
    pub non_reader_history_rate: f64,
    /// (b) Slowloris HTTP connections held at once (stalled or trickled bodies after a Content-Length, partial headers); 0: none.
    #[arg(long, default_value_t = 40)]
    pub slowloris: usize,
    /// A trickling slowloris connection sends its next byte every this many ms.
    #[arg(long, default_value_t = 1000)]
    pub slowloris_interval_ms: u64,
    /// (c) Login flood: concurrent tasks sending wrong passwords for real usernames and logins of unknown names; 0: none.
    #[arg(long, default_value_t = 16)]
    pub login_flood_tasks: usize,
    /// Login flood attempts per second, all tasks together (0: as fast as the server answers).
    #[arg(long, default_value_t = 100.0)]
    pub login_flood_rate: f64,
    /// (d) Reconnect storm: clients that connect, join with `since`, stay --storm-hold-ms, disconnect, again; 0: none.
    #[arg(long, default_value_t = 10)]
    pub storm_clients: usize,
    /// How long a storm client stays joined before it disconnects (drops the socket or closes, alternately), ms.
    #[arg(long, default_value_t = 250)]
    pub storm_hold_ms: u64,
    /// (e) Sessions that join a room, read, and send junk frames (invalid MessagePack/JSON, not maps, oversized); 0: none.
    #[arg(long, default_value_t = 5)]
    pub junk_sessions: usize,
    /// Junk frames per second per junk session (every 8th is oversized: max_frame + 1 bytes).
    #[arg(long, default_value_t = 5.0)]
    pub junk_rate: f64,
    /// Correct logins per second of a real user nobody attacks, in both phases (what a legitimate login sees); 0: none.
    #[arg(long, default_value_t = 1.0)]
    pub login_probe_rate: f64,
    /// Source addresses of the hostile clients (as --source-ips; default: the system's choice), so that
    /// per-address limits of the server can tell them from the normal users.
    #[arg(long)]
    pub hostile_source_ips: Option<String>,
    /// The goal: the normal users' p99 in the hostile phase at most this many times the clean phase's.
    #[arg(long, default_value_t = 2.0)]
    pub p99_ratio_max: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
#[command(
    mut_arg("duration", |a| a.default_value("300")),
    mut_arg("warmup", |a| a.default_value("60"))
)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    /// Fan-out rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Steady sessions per fan-out room (each a distinct user).
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// Senders per fan-out room (among its members).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Messages per second per fan-out sender.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Pairs of registered users exchanging DMs.
    #[arg(long, default_value_t = 5)]
    pub dm_pairs: usize,
    /// DMs per second per DM user.
    #[arg(long, default_value_t = 1.0)]
    pub dm_rate: f64,
    /// Clients in the fan-out rooms that drop and resume with `join since` (gaps and duplicates checked).
    #[arg(long, default_value_t = 20)]
    pub churn_clients: usize,
    /// A storm every this many seconds: each churn client drops with probability --storm-fraction.
    #[arg(long, default_value_t = 10.0)]
    pub storm_every: f64,
    #[arg(long, default_value_t = 0.5)]
    pub storm_fraction: f64,
    /// First reconnect within [0, this] ms; then exponential backoff with full jitter.
    #[arg(long, default_value_t = 100)]
    pub backoff_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    pub backoff_max_ms: u64,
    /// New users registered per second through HTTP (the server's per-address registration limit applies).
    #[arg(long, default_value_t = 0.2)]
    pub registrations_rate: f64,
    /// Logins per second (correct passwords) of the users registered so far.
    #[arg(long, default_value_t = 1.0)]
    pub logins_rate: f64,
    /// History pages per second (limit 50, paging back to the first message), alternately over WebSocket and HTTP.
    #[arg(long, default_value_t = 4.0)]
    pub history_rate: f64,
    /// Fail the run (exit 1, a problem listed) when the server's RSS grows by more than this many MiB after the
    /// warm-up. Implies --check.
    #[arg(long)]
    pub check_rss_growth_mib: Option<f64>,
}

impl Cmd {
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Fanout(_) => "fanout",
            Cmd::Dm(_) => "dm",
            Cmd::Connections(_) => "connections",
            Cmd::Churn(_) => "churn",
            Cmd::Login(_) => "login",
            Cmd::Hostile(_) => "hostile",
            Cmd::Soak(_) => "soak",
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Cmd::Fanout(a) => &a.common,
            Cmd::Dm(a) => &a.common,
            Cmd::Connections(a) => &a.common,
            Cmd::Churn(a) => &a.common,
            Cmd::Login(a) => &a.common,
            Cmd::Hostile(a) => &a.common,
            Cmd::Soak(a) => &a.common,
        }
    }

    pub fn params(&self) -> serde_json::Value {
        match self {
            Cmd::Fanout(a) => serde_json::to_value(a),
            Cmd::Dm(a) => serde_json::to_value(a),
            Cmd::Connections(a) => serde_json::to_value(a),
            Cmd::Churn(a) => serde_json::to_value(a),
            Cmd::Login(a) => serde_json::to_value(a),
            Cmd::Hostile(a) => serde_json::to_value(a),
            Cmd::Soak(a) => serde_json::to_value(a),
        }
        .unwrap_or_default()
    }

    /// Checks the parameters; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.common();
        if !(c.duration > 0.0 && c.duration <= 86_400.0) {
            return Err("--duration must be in (0, 86400] seconds".into());
        }
        let in_hour = |v: f64| (0.0..=3600.0).contains(&v);
        if !in_hour(c.warmup) || !in_hour(c.drain) {
            return Err("--warmup and --drain must be in [0, 3600] seconds".into());
        }
        if !(c.setup_timeout > 0.0 && c.setup_timeout <= 3600.0) {
            return Err("--setup-timeout must be in (0, 3600] seconds".into());
        }
        if c.workers == 0 || c.workers > 64 {
            return Err("--workers must be between 1 and 64".into());
        }
        if c.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if !(c.floor_duration > 0.0 && c.floor_duration <= 600.0) {
            return Err("--floor-duration must be in (0, 600] seconds".into());
        }
        if let Some(tag) = &c.run_tag {
            if tag.is_empty() || tag.len() > 12 || !tag.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                return Err("--run-tag must be 1 to 12 ASCII letters or digits".into());
            }
        }
        let rate_ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1_000_000.0;
        let body_ok = |b: usize| (40..=1_000_000).contains(&b);
        let sliced = |units: usize, what: &str| {
            if c.workers > units.max(1) {
                Err(format!("--workers {} is more than the {units} {what} to share out", c.workers))
            } else {
                Ok(())
            }
        };
        match self {
            Cmd::Fanout(a) => {
                if a.rooms == 0 || a.members == 0 || a.senders > a.members || !rate_ok(a.rate) || !body_ok(a.body_bytes)
                {
                    return Err(
                        "fanout: needs rooms ≥ 1, members ≥ 1, senders ≤ members, 0 < rate, 40 ≤ body-bytes".into()
                    );
                }
                sliced(a.rooms, "rooms")?;
            }
            Cmd::Dm(a) => {
                if a.pairs == 0 || !rate_ok(a.rate) || !body_ok(a.body_bytes) {
                    return Err("dm: needs pairs ≥ 1, 0 < rate, 40 ≤ body-bytes".into());
                }
                sliced(a.pairs, "pairs")?;
            }
            Cmd::Connections(a) => {
                if a.sessions == 0 || a.rooms == 0 || !(a.ramp_rate >= 0.0 && a.ramp_rate.is_finite()) {
                    return Err("connections: needs sessions ≥ 1, rooms ≥ 1, ramp-rate ≥ 0".into());
                }
                sliced(a.sessions, "sessions")?;
            }
            Cmd::Churn(a) => {
                if a.clients == 0 || a.rooms == 0 || a.senders == 0 || !rate_ok(a.rate) || !body_ok(a.body_bytes) {
                    return Err("churn: needs clients ≥ 1, rooms ≥ 1, senders ≥ 1, 0 < rate, 40 ≤ body-bytes".into());
                }
                if a.storm_every.is_nan()
                    || a.storm_every <= 0.0
                    || !(0.0..=1.0).contains(&a.storm_fraction)
                    || a.backoff_ms == 0
                    || a.backoff_max_ms < a.backoff_ms
                {
                    return Err(
                        "churn: needs storm-every > 0, storm-fraction in [0, 1], 0 < backoff-ms ≤ backoff-max-ms"
                            .into(),
                    );
                }
                sliced(a.rooms, "rooms")?;
            }
            Cmd::Login(a) => {
                if a.users == 0 || a.concurrency == 0 {
                    return Err("login: needs users ≥ 1 and concurrency ≥ 1".into());
                }
                sliced(a.users, "users")?;
            }
            Cmd::Hostile(a) => {
                if a.rooms == 0 || a.members == 0 || a.senders == 0 || a.senders > a.members {
                    return Err("hostile: needs rooms ≥ 1, members ≥ 1, 1 ≤ senders ≤ members".into());
                }
                if !rate_ok(a.rate) || !body_ok(a.body_bytes) {
                    return Err("hostile: needs 0 < rate, 40 ≤ body-bytes".into());
                }
                let opt_rate = |r: f64| r.is_finite() && (0.0..=1_000_000.0).contains(&r);
                if !opt_rate(a.non_reader_history_rate)
                    || !opt_rate(a.login_flood_rate)
                    || !opt_rate(a.junk_rate)
                    || !opt_rate(a.login_probe_rate)
                {
                    return Err("hostile: the rates of the hostile clients and the login probe must be ≥ 0".into());
                }
                if a.non_reader_rcvbuf == 0 || a.non_reader_rcvbuf > 64 << 20 || a.slowloris_interval_ms == 0 {
                    return Err("hostile: needs 0 < non-reader-rcvbuf ≤ 64 MiB, slowloris-interval-ms > 0".into());
                }
                if !(a.p99_ratio_max.is_finite() && a.p99_ratio_max >= 1.0) {
                    return Err("hostile: --p99-ratio-max must be at least 1".into());
                }
                let many = a.non_readers + a.slowloris + a.login_flood_tasks + a.storm_clients + a.junk_sessions;
                if many > 50_000 {
                    return Err("hostile: at most 50,000 hostile clients in all".into());
                }
                if c.workers != 1 {
                    return Err("hostile runs in one process (--workers 1)".into());
                }
            }
            Cmd::Soak(a) => {
                if a.rooms == 0 || a.members == 0 || a.senders == 0 || a.senders > a.members {
                    return Err("soak: needs rooms ≥ 1, members ≥ 1, 1 ≤ senders ≤ members".into());
                }
                if !rate_ok(a.rate) || !body_ok(a.body_bytes) || (a.dm_pairs > 0 && !rate_ok(a.dm_rate)) {
                    return Err("soak: needs 0 < rate, 0 < dm-rate, 40 ≤ body-bytes".into());
                }
                let opt_rate = |r: f64| r.is_finite() && (0.0..=10_000.0).contains(&r);
                if !opt_rate(a.registrations_rate) || !opt_rate(a.logins_rate) || !opt_rate(a.history_rate) {
                    return Err("soak: registrations-rate, logins-rate and history-rate must be in [0, 10000]".into());
                }
                if a.churn_clients > 0
                    && (a.storm_every.is_nan()
                        || a.storm_every <= 0.0
                        || !(0.0..=1.0).contains(&a.storm_fraction)
                        || a.backoff_ms == 0
                        || a.backoff_max_ms < a.backoff_ms)
                {
                    return Err(
                        "soak: needs storm-every > 0, storm-fraction in [0, 1], 0 < backoff-ms ≤ backoff-max-ms".into(),
                    );
                }
                if a.check_rss_growth_mib.is_some_and(|m| !(m.is_finite() && m >= 0.0)) {
                    return Err("soak: --check-rss-growth-mib must be ≥ 0".into());
                }
                if c.workers != 1 {
                    return Err("soak runs in one process (--workers 1)".into());
                }
            }
        }
        Ok(())
    }
}

/// A 64-bit mix (splitmix64): a seed per session from the run's seed.
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn interval_ns(rate: f64) -> u64 {
    (1e9 / rate).round().max(1.0) as u64
}

/// The first send of a sender: at a seeded offset within one interval, so
/// that senders do not fire together.
fn offset_ns(seed: u64, index: usize, interval: u64) -> u64 {
    mix(seed ^ 0x5EED, index as u64) % interval.max(1)
}

/// The plan of worker `worker` of `workers` (or of the only process).
pub fn plan(cmd: &Cmd, tag: &str, worker: usize, workers: usize) -> Plan {
    let seed = cmd.common().seed;
    let mut plan = Plan::default();
    match cmd {
        Cmd::Fanout(a) => {
            let mut shape = FanoutShape::of(a.rooms, a.members, a.senders, a.rate, a.body_bytes);
            shape.mix = a.mix.unwrap_or_default();
            fanout_members(&mut plan, &shape, tag, seed, worker, workers);
        }
        Cmd::Hostile(a) => {
            let shape = FanoutShape::of(a.rooms, a.members, a.senders, a.rate, a.body_bytes);
            fanout_members(&mut plan, &shape, tag, seed, worker, workers);
        }
        Cmd::Soak(a) => {
            let shape = FanoutShape::of(a.rooms, a.members, a.senders, a.rate, a.body_bytes);
            fanout_members(&mut plan, &shape, tag, seed, worker, workers);
            // Churn clients in the fan-out rooms, after the steady members.
            let churn = ChurnPlan {
                every_ns: (a.storm_every * 1e9) as u64,
                fraction: a.storm_fraction,
                backoff_base_ns: a.backoff_ms * 1_000_000,
                backoff_max_ns: a.backoff_max_ms * 1_000_000,
            };
            let base = a.rooms * a.members;
            for c in 0..a.churn_clients {
                let index = base + c;
                plan.members.push(MemberSpec {
                    index,
                    user: format!("{tag}u{index}"),
                    room: c % a.rooms,
                    join: true,
                    send: None,
                    churn: Some(churn.clone()),
                    connect_after_ns: 0,
                    seed: mix(seed, index as u64),
                    register: false,
                    second_session: false,
                });
            }
            // DM pairs: registered users (a DM's peer must exist).
            let interval = interval_ns(a.dm_rate.max(1e-9));
            let base = base + a.churn_clients;
            for p in 0..a.dm_pairs {
                let (ua, ub) = (format!("{tag}a{p}"), format!("{tag}b{p}"));
                let room = plan.rooms.len();
                let (lo, hi) = if ua.as_bytes() <= ub.as_bytes() { (&ua, &ub) } else { (&ub, &ua) };
                plan.rooms.push(format!("dm:{lo}:{hi}"));
                for (k, (me, other)) in [(&ua, &ub), (&ub, &ua)].into_iter().enumerate() {
                    let index = base + 2 * p + k;
                    plan.members.push(MemberSpec {
                        index,
                        user: me.clone(),
                        room,
                        join: false,
                        send: Some(SendPlan {
                            target: SendTarget::Dm(other.clone()),
                            interval_ns: interval,
                            offset_ns: offset_ns(seed, index, interval),
                            body_bytes: a.body_bytes,
                            mix: Mix::default(),
                        }),
                        churn: None,
                        connect_after_ns: 0,
                        seed: mix(seed, index as u64),
                        register: true,
                        second_session: false,
                    });
                }
            }
        }
        Cmd::Dm(a) => {
            plan.register_users = true;
            let interval = interval_ns(a.rate);
            for p in (0..a.pairs).filter(|p| p % workers == worker) {
                let (ua, ub) = (format!("{tag}a{p}"), format!("{tag}b{p}"));
                let room = plan.rooms.len();
                // DM room id: the two usernames in byte order.
                let (lo, hi) = if ua.as_bytes() <= ub.as_bytes() { (&ua, &ub) } else { (&ub, &ua) };
                plan.rooms.push(format!("dm:{lo}:{hi}"));
                for (k, (me, other)) in [(&ua, &ub), (&ub, &ua)].into_iter().enumerate() {
                    let index = 2 * p + k;
                    plan.members.push(MemberSpec {
                        index,
                        user: me.clone(),
                        room,
                        join: false,
                        send: Some(SendPlan {
                            target: SendTarget::Dm(other.clone()),
                            interval_ns: interval,
                            offset_ns: offset_ns(seed, index, interval),
                            body_bytes: a.body_bytes,
                            mix: Mix::default(),
                        }),
                        churn: None,
                        connect_after_ns: 0,
                        seed: mix(seed, index as u64),
                        register: false,
                        second_session: false,
                    });
                }
            }
        }
        Cmd::Connections(a) => {
            plan.rooms = (0..a.rooms).map(|r| format!("{tag}-r{r}")).collect();
            for s in (0..a.sessions).filter(|s| s % workers == worker) {
                plan.members.push(MemberSpec {
                    index: s,
                    user: format!("{tag}u{s}"),
                    room: s % a.rooms,
                    join: true,
                    send: None,
                    churn: None,
                    connect_after_ns: if a.ramp_rate > 0.0 { (s as f64 / a.ramp_rate * 1e9) as u64 } else { 0 },
                    seed: mix(seed, s as u64),
                    register: false,
                    second_session: false,
                });
            }
        }
        Cmd::Churn(a) => {
            let interval = interval_ns(a.rate);
            let churn = ChurnPlan {
                every_ns: (a.storm_every * 1e9) as u64,
                fraction: a.storm_fraction,
                backoff_base_ns: a.backoff_ms * 1_000_000,
                backoff_max_ns: a.backoff_max_ms * 1_000_000,
            };
            for r in (0..a.rooms).filter(|r| r % workers == worker) {
                let room = plan.rooms.len();
                plan.rooms.push(format!("{tag}-r{r}"));
                for s in 0..a.senders {
                    let index = a.clients + r * a.senders + s;
                    plan.members.push(MemberSpec {
                        index,
                        user: format!("{tag}u{index}"),
                        room,
                        join: true,
                        send: Some(SendPlan {
                            target: SendTarget::Room,
                            interval_ns: interval,
                            offset_ns: offset_ns(seed, index, interval),
                            body_bytes: a.body_bytes,
                            mix: Mix::default(),
                        }),
                        churn: None,
                        connect_after_ns: 0,
                        seed: mix(seed, index as u64),
                        register: false,
                        second_session: false,
                    });
                }
                for index in (0..a.clients).filter(|c| c % a.rooms == r) {
                    plan.members.push(MemberSpec {
                        index,
                        user: format!("{tag}u{index}"),
                        room,
                        join: true,
                        send: None,
                        churn: Some(churn.clone()),
                        connect_after_ns: 0,
                        seed: mix(seed, index as u64),
                        register: false,
                        second_session: false,
                    });
                }
            }
        }
        Cmd::Login(_) => {}
    }
    plan
}

/// The shape of fan-out traffic: R rooms × M members, S senders per room.
pub struct FanoutShape {
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub interval_ns: u64,
    pub body_bytes: usize,
    /// What the senders do (default: sends only).
    pub mix: Mix,
}

impl FanoutShape {
    pub fn of(rooms: usize, members: usize, senders: usize, rate: f64, body_bytes: usize) -> Self {
        FanoutShape { rooms, members, senders, interval_ns: interval_ns(rate), body_bytes, mix: Mix::default() }
    }
}

/// The fan-out rooms `{tag}-r{r}` of this worker and their members; when
/// the senders read, each sender's second session (indexes after every
/// member's).
fn fanout_members(plan: &mut Plan, a: &FanoutShape, tag: &str, seed: u64, worker: usize, workers: usize) {
    for r in (0..a.rooms).filter(|r| r % workers == worker) {
        let room = plan.rooms.len();
        plan.rooms.push(format!("{tag}-r{r}"));
        for m in 0..a.members {
            let index = r * a.members + m;
            plan.members.push(MemberSpec {
                index,
                user: format!("{tag}u{index}"),
                room,
                join: true,
                send: (m < a.senders).then(|| SendPlan {
                    target: SendTarget::Room,
                    interval_ns: a.interval_ns,
                    offset_ns: offset_ns(seed, index, a.interval_ns),
                    body_bytes: a.body_bytes,
                    mix: a.mix,
                }),
                churn: None,
                connect_after_ns: 0,
                seed: mix(seed, index as u64),
                register: false,
                second_session: false,
            });
        }
        // A reader's pushes go to the user's other sessions.
        if a.mix.weight(Op::Read) > 0 {
            for m in 0..a.senders.min(a.members) {
                let sender = r * a.members + m;
                let index = a.rooms * a.members + r * a.senders + m;
                plan.members.push(MemberSpec {
                    index,
                    user: format!("{tag}u{sender}"),
                    room,
                    join: false,
                    send: None,
                    churn: None,
                    connect_after_ns: 0,
                    seed: mix(seed, index as u64),
                    register: false,
                    second_session: true,
                });
            }
        }
    }
}

/// The users of the `login` scenario for one process.
pub fn login_users(a: &LoginArgs, tag: &str, worker: usize, workers: usize) -> Vec<(usize, String)> {
    (0..a.users).filter(|u| u % workers == worker).map(|u| (u, format!("{tag}l{u}"))).collect()
}

/// Deliveries each send should produce.
pub fn deliveries_per_send(cmd: &Cmd) -> f64 {
    match cmd {
        Cmd::Fanout(a) => a.members as f64,
        Cmd::Dm(_) => 2.0,
        Cmd::Churn(a) => (a.clients as f64 / a.rooms as f64) + a.senders as f64,
        Cmd::Hostile(a) => a.members as f64,
        Cmd::Soak(a) => {
            // Sends per second of each kind, each with its own audience.
            let fanout = (a.rooms * a.senders) as f64 * a.rate;
            let dm = (2 * a.dm_pairs) as f64 * a.dm_rate;
            let audience = a.members as f64 + a.churn_clients as f64 / a.rooms as f64;
            if fanout + dm > 0.0 {
                (fanout * audience + dm * 2.0) / (fanout + dm)
            } else {
                0.0
            }
        }
        Cmd::Connections(_) | Cmd::Login(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server scenario a command line names.
    fn server(cli: Cli) -> Cmd {
        match cli.cmd {
            Command::Server(cmd) => cmd,
            other => panic!("not a server scenario: {other:?}"),
        }
    }

    fn fanout(workers: usize) -> Cmd {
        let cli = Cli::parse_from([
            "viche-load",
            "fanout",
            "--rooms",
            "4",
            "--members",
            "3",
            "--senders",
            "1",
            "--workers",
            &workers.to_string(),
        ]);
        server(cli)
    }

    #[test]
    fn slices_cover_every_session_once() {
        let cmd = fanout(3);
        cmd.validate().unwrap();
        let mut all: Vec<usize> =
            (0..3).flat_map(|w| plan(&cmd, "t", w, 3).members.into_iter().map(|m| m.index)).collect();
        all.sort();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        // A room is never split between processes.
        let p = plan(&cmd, "t", 0, 3);
        assert_eq!(p.rooms, vec!["t-r0".to_string(), "t-r3".to_string()]);
        assert_eq!(p.members.iter().filter(|m| m.send.is_some()).count(), 2);
        assert!(fanout(5).validate().is_err());
    }

    #[test]
    fn same_seed_same_schedule() {
        let cmd = fanout(1);
        let a: Vec<_> =
            plan(&cmd, "t", 0, 1).members.iter().map(|m| (m.seed, m.send.as_ref().map(|s| s.offset_ns))).collect();
        let b: Vec<_> =
            plan(&cmd, "t", 0, 1).members.iter().map(|m| (m.seed, m.send.as_ref().map(|s| s.offset_ns))).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn a_mix_with_reads_gives_each_sender_a_second_session_in_its_worker() {
        let args = ["viche-load", "fanout", "--rooms", "4", "--members", "3", "--senders", "2", "--workers", "2"];
        let cmd = server(Cli::parse_from(args.into_iter().chain(["--mix", "send=70,edit=10,react=15,read=5"])));
        cmd.validate().unwrap();
        let plans: Vec<Plan> = (0..2).map(|w| plan(&cmd, "t", w, 2)).collect();
        let mut indexes: Vec<usize> = plans.iter().flat_map(|p| p.members.iter().map(|m| m.index)).collect();
        indexes.sort();
        assert_eq!(indexes, (0..4 * 3 + 4 * 2).collect::<Vec<_>>(), "12 members, 8 second sessions");
        for p in &plans {
            for second in p.members.iter().filter(|m| m.second_session) {
                assert!(!second.join && second.send.is_none());
                // Its user is a sender of the same room, in the same process.
                let first = p.members.iter().find(|m| m.user == second.user && !m.second_session).unwrap();
                assert_eq!(first.room, second.room);
                assert_eq!(first.send.as_ref().unwrap().mix.to_string(), "send=70,edit=10,react=15,read=5");
            }
            assert_eq!(p.members.iter().filter(|m| m.second_session).count(), 4);
        }
        // Without reads, or without --mix: no second session, and sends only by default.
        let cmd = server(Cli::parse_from(args.into_iter().chain(["--mix", "send=1,edit=1"])));
        assert!(plan(&cmd, "t", 0, 2).members.iter().all(|m| !m.second_session));
        let p = plan(&fanout(1), "t", 0, 1);
        assert!(p.members.iter().all(|m| !m.second_session));
        assert!(p.members.iter().filter_map(|m| m.send.as_ref()).all(|s| s.mix.sends_only()));
        assert!(Cli::try_parse_from(["viche-load", "fanout", "--mix", "send=1,poke=2"]).is_err());
    }

    #[test]
    fn floor_needs_no_server_and_pins_like_the_standard_runs() {
        let Command::Floor(a) = Cli::parse_from(["viche-load", "floor"]).cmd else { panic!("floor") };
        assert_eq!((a.connections, a.rate, a.frame_bytes, a.frames_per_write), (2000, 20_000.0, None, 1));
        assert_eq!((a.sender_cpu, a.reader_cpu), (Cpu(Some(0)), Cpu(Some(1))));
        a.validate().unwrap();
        let args = ["viche-load", "floor", "--sender-cpu", "none", "--reader-cpu", "3", "--frames-per-write", "4"];
        let Command::Floor(a) = Cli::parse_from(args).cmd else { panic!("floor") };
        assert_eq!((a.sender_cpu, a.reader_cpu, a.frames_per_write), (Cpu(None), Cpu(Some(3)), 4));
        assert_eq!((a.sender_cpu.to_string(), a.reader_cpu.to_string()), ("none".to_string(), "3".to_string()));
        assert!(Cli::try_parse_from(["viche-load", "floor", "--sender-cpu", "first"]).is_err());
        assert!(Cli::try_parse_from(["viche-load", "floor", "--url", "http://127.0.0.1:1"]).is_err(), "no server");
        for bad in [["--rate", "0"], ["--connections", "0"], ["--frames-per-write", "0"], ["--frame-bytes", "1"]] {
            let Command::Floor(a) = Cli::parse_from(["viche-load", "floor"].into_iter().chain(bad)).cmd else {
                panic!("floor")
            };
            assert!(a.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dm_rooms_are_in_byte_order() {
        let cmd = server(Cli::parse_from(["viche-load", "dm", "--pairs", "2"]));
        let p = plan(&cmd, "t", 0, 1);
        assert_eq!(p.rooms, vec!["dm:ta0:tb0".to_string(), "dm:ta1:tb1".to_string()]);
        assert!(p.register_users);
    }
}
