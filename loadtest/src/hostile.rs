//! The `hostile` scenario: the normal users of `fanout`, measured twice in
//! one invocation — a clean phase first, then a hostile phase of the same
//! shape (its own fresh sessions and rooms) during which hostile clients run
//! from the start of its warm-up to the end of its window:
//!
//! - (a) non-readers: raw sockets with a small SO_RCVBUF that complete the
//!   WebSocket handshake, `hello` and `join` one of the normal rooms, then
//!   never read again (they keep writing: a WebSocket ping every 5 s, which
//!   keeps the heartbeat satisfied, and `history` requests whose answers they
//!   leave unread). At the end each reads again, for at most 3 s, to see how
//!   the server left it;
//! - (b) slowloris HTTP connections, four variants in turn: a body trickled
//!   one byte at a time after a Content-Length, a body stalled after a few
//!   bytes, headers trickled one byte at a time, headers stalled mid-line;
//!   each reconnects when the server ends it;
//! - (c) a login flood: wrong passwords for real (registered) usernames and
//!   logins of unknown names, from many tasks at a rate;
//! - (d) a reconnect storm: clients that connect, `join` with `since` (the
//!   last seq they saw), stay a moment, disconnect (dropping the socket or
//!   closing, in turn), again — checking their resumed streams for gaps and
//!   duplicates;
//! - (e) junk frames on otherwise normal sessions (joined, reading):
//!   invalid MessagePack and JSON, frames that are not maps, an unknown
//!   type, a map without its fields, an oversized frame (max_frame + 1), and
//!   a valid `ping` among them.
//!
//! The hostile clients run on a runtime of their own (one thread), so that
//! no normal user's task ever waits behind a hostile one in the generator;
//! at the end that runtime is shut down, whatever its sockets are doing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use viche_client::{ClientError, ClientFrame, Connection, Encoding, Event, HttpClient, JoinOk, ServerFrame};
use viche_protocol::PROTOCOL_VERSION;

use crate::cli::{self, Cmd, HostileArgs};
use crate::clock::{instant_at, mono_ns};
use crate::hist::Hist;
use crate::live::Live;
use crate::net::{self, mint_token, register_only, Target, Tokens};
use crate::rawws::{self, RawWs, OP_PING};
use crate::report::{
    c, Comparison, Expectation, HostileKind, HostileSection, PhaseFigures, Raw, Report, TimelinePoint,
};
use crate::run::{self, Prepared, Progress};
use crate::server::{self, Probe};
use crate::traffic;

/// Counts of one kind of hostile client (or of the login probe).
#[derive(Default)]
pub struct Tally {
    counters: Mutex<BTreeMap<String, u64>>,
    outcomes: Mutex<BTreeMap<String, u64>>,
    hists: Mutex<BTreeMap<String, Hist>>,
}

impl Tally {
    pub fn inc(&self, k: &str) {
        self.add(k, 1);
    }

    pub fn add(&self, k: &str, n: u64) {
        *self.counters.lock().entry(k.to_string()).or_default() += n;
    }

    /// How one connection or attempt ended.
    pub fn outcome(&self, k: &str) {
        *self.outcomes.lock().entry(k.to_string()).or_default() += 1;
    }

    pub fn record(&self, k: &str, ns: u64) {
        self.hists.lock().entry(k.to_string()).or_default().record(ns);
    }

    pub fn figures(&self, what: &str) -> HostileKind {
        HostileKind {
            what: what.to_string(),
            counters: self.counters.lock().clone(),
            outcomes: self.outcomes.lock().clone(),
            latency: self.hists.lock().iter().map(|(k, v)| (k.clone(), v.summary())).collect(),
        }
    }
}

/// Counts a task's end: a task dropped before it finished (aborted at the
/// time bound) is counted as cut off.
struct Guard<'a> {
    tally: &'a Tally,
    done: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.tally.inc("tasks cut off at the time bound");
        }
    }
}

#[derive(Default)]
struct Tallies {
    non_readers: Arc<Tally>,
    slowloris: Arc<Tally>,
    login_flood: Arc<Tally>,
    storm: Arc<Tally>,
    junk: Arc<Tally>,
}

/// What the hostile clients need to know.
pub struct HostilePlan {
    pub args: HostileArgs,
    pub target: Target,
    pub sources: Vec<IpAddr>,
    pub secret: String,
    pub tag: String,
    /// The normal users' rooms of the hostile phase.
    pub rooms: Vec<String>,
    /// Registered users whose names the login flood uses (wrong passwords).
    pub real_users: Vec<String>,
    pub start_ns: u64,
    /// The hostile clients stop here (the end of the window).
    pub stop_ns: u64,
}

impl HostilePlan {
    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }

    fn token(&self, user: &str) -> String {
        mint_token(&self.secret, user, Duration::from_secs(86_400))
    }

    fn room(&self, i: usize) -> &str {
        &self.rooms[i % self.rooms.len()]
    }

    fn host_header(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }
}

/// The hostile clients, running on their own runtime.
pub struct Hostile {
    runtime: tokio::runtime::Runtime,
    done: tokio::task::JoinHandle<()>,
    tallies: Arc<Tallies>,
}

/// Starts every hostile client (each waits for the plan's start).
pub fn start(plan: HostilePlan) -> anyhow::Result<Hostile> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("viche-load-hostile")
        .enable_all()
        .build()
        .context("starting the hostile clients' runtime")?;
    let tallies = Arc::new(Tallies::default());
    let done = runtime.spawn(run_all(Arc::new(plan), tallies.clone()));
    Ok(Hostile { runtime, done, tallies })
}

impl Hostile {
    /// Waits (at most `grace`) for the hostile clients to finish, shuts
    /// their runtime down, and returns what each kind observed.
    pub async fn finish(self, grace: Duration) -> BTreeMap<String, HostileKind> {
        let Hostile { runtime, mut done, tallies } = self;
        if timeout(grace, &mut done).await.is_err() {
            done.abort();
            tallies.non_readers.inc("runtime shut down at the time bound");
        }
        runtime.shutdown_background();
        let t = &tallies;
        BTreeMap::from([
            (
                "non_readers".to_string(),
                t.non_readers.figures(
                    "join a normal room over a raw socket with a small receive buffer, then never read (a ping every \
                     5 s and unread history requests keep going out); at the end, read again for at most 3 s",
                ),
            ),
            (
                "slowloris".to_string(),
                t.slowloris.figures(
                    "HTTP connections held open: body trickled or stalled after a Content-Length, headers trickled \
                     or stalled; a new one when the server ends one",
                ),
            ),
            (
                "login_flood".to_string(),
                t.login_flood.figures("wrong passwords for registered usernames, and logins of unknown names"),
            ),
            (
                "reconnect_storm".to_string(),
                t.storm.figures(
                    "connect, hello, join with since = the last seq seen, stay --storm-hold-ms, disconnect (drop or \
                     close, in turn), again; resumed streams checked for gaps and duplicates",
                ),
            ),
            (
                "junk_frames".to_string(),
                t.junk.figures(
                    "joined, reading sessions sending junk: invalid MessagePack/JSON, not maps, unknown type, missing \
                     fields, a valid ping, oversized (max_frame + 1); a new session after each close",
                ),
            ),
        ])
    }
}

/// Spawns every client, stops them at the plan's stop, waits for them
/// (at most 8 s), and aborts the rest.
async fn run_all(plan: Arc<HostilePlan>, t: Arc<Tallies>) {
    let stop = CancellationToken::new();
    let a = &plan.args;
    let addr = match rawws::resolve(&plan.target.host, plan.target.port, plan.source(0)).await {
        Ok(addr) => addr,
        Err(e) => {
            t.non_readers.outcome(&format!("cannot resolve the server: {e}"));
            return;
        }
    };
    let mut tasks = JoinSet::new();
    // Spread each kind's starts over its first half second.
    let stagger = |i: usize, n: usize| plan.start_ns + (500_000_000 * i as u64) / n.max(1) as u64;
    for i in 0..a.non_readers {
        let (p, t, s) = (plan.clone(), t.non_readers.clone(), stop.clone());
        let at = stagger(i, a.non_readers);
        tasks.spawn(async move { non_reader(&p, &t, addr, i, at, s).await });
    }
    for i in 0..a.slowloris {
        let (p, t, s) = (plan.clone(), t.slowloris.clone(), stop.clone());
        let at = stagger(i, a.slowloris);
        tasks.spawn(async move { slowloris(&p, &t, addr, i, at, s).await });
    }
    for k in 0..a.login_flood_tasks {
        let (p, t, s) = (plan.clone(), t.login_flood.clone(), stop.clone());
        tasks.spawn(async move { login_flood(&p, &t, k, s).await });
    }
    for i in 0..a.storm_clients {
        let (p, t, s) = (plan.clone(), t.storm.clone(), stop.clone());
        let at = stagger(i, a.storm_clients);
        tasks.spawn(async move { storm(&p, &t, i, at, s).await });
    }
    for i in 0..a.junk_sessions {
        let (p, t, s) = (plan.clone(), t.junk.clone(), stop.clone());
        let at = stagger(i, a.junk_sessions);
        tasks.spawn(async move { junk(&p, &t, i, at, s).await });
    }
    sleep_until(instant_at(plan.stop_ns)).await;
    stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(8);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Waits until `at` (CLOCK_MONOTONIC ns); false if stopped first.
async fn wait_until(at: u64, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep_until(instant_at(at)) => true,
        _ = stop.cancelled() => false,
    }
}

/// Sleeps `d`; false if stopped first.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

fn ns_since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

// ----- (a) non-readers -------------------------------------------------------

/// Handshake, `hello`, `join` over a raw socket; `Err` says what refused it.
async fn open_raw(p: &HostilePlan, addr: SocketAddr, i: usize, room: &str) -> Result<RawWs, String> {
    let a = &p.args;
    let within = Duration::from_secs(10);
    let stream = rawws::connect(addr, p.source(i), Some(a.non_reader_rcvbuf.min(u32::MAX as usize) as u32), within)
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let mut ws = RawWs::upgrade(stream, &p.host_header(), within).await?;
    let token = p.token(&format!("{}n{i}", p.tag));
    ws.send_frame(&ClientFrame::Hello { v: PROTOCOL_VERSION, token }, within)
        .await
        .map_err(|e| format!("hello: write {:?}", e.kind()))?;
    let deadline = Instant::now() + within;
    loop {
        match ws.read_server_frame(deadline).await.map_err(|e| format!("hello: {e}"))? {
            None => return Err("hello: no welcome in time".into()),
            Some(ServerFrame::Welcome { .. }) => break,
            Some(ServerFrame::Error { code, .. }) => return Err(format!("hello: error {}", code.as_str())),
            Some(_) => continue,
        }
    }
    let req = ws.alloc_ref();
    ws.send_frame(&ClientFrame::Join { req, room: room.to_string(), since: None }, within)
        .await
        .map_err(|e| format!("join: write {:?}", e.kind()))?;
    loop {
        match ws.read_server_frame(deadline).await.map_err(|e| format!("join: {e}"))? {
            None => return Err("join: no answer in time".into()),
            Some(ServerFrame::Ok { req: r, .. }) if r == req => return Ok(ws),
            Some(ServerFrame::Error { req: Some(r), code, .. }) if r == req => {
                return Err(format!("join: error {}", code.as_str()))
            }
            Some(_) => continue,
        }
    }
}

async fn non_reader(p: &HostilePlan, t: &Tally, addr: SocketAddr, i: usize, at: u64, stop: CancellationToken) {
    let mut guard = Guard { tally: t, done: false };
    if !wait_until(at, &stop).await {
        guard.done = true;
        return;
    }
    t.inc("clients");
    let room = p.room(i).to_string();
    let opened = tokio::select! {
        r = open_raw(p, addr, i, &room) => r,
        _ = stop.cancelled() => Err("not joined by the end".into()),
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            t.outcome(&format!("not joined: {e}"));
            guard.done = true;
            return;
        }
    };
    t.inc("joined");
    let joined = Instant::now();
    let rate = p.args.non_reader_history_rate;
    let history_every = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next_history = joined + history_every.unwrap_or_default();
    let mut next_ping = joined + Duration::from_secs(5);
    let write_within = Duration::from_secs(2);
    // From here on, nothing is read until the end.
    let failed = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            _ = sleep_until(next_ping) => {
                next_ping += Duration::from_secs(5);
                match ws.send(OP_PING, b"", write_within).await {
                    Ok(()) => t.inc("pings sent"),
                    Err(e) => break Some(format!("{:?}", e.kind())),
                }
            }
            _ = sleep_until(next_history), if history_every.is_some() => {
                next_history += history_every.unwrap_or_default();
                let req = ws.alloc_ref();
                let frame = ClientFrame::History { req, room: room.clone(), before: None, limit: Some(100) };
                match ws.send_frame(&frame, write_within).await {
                    Ok(()) => t.inc("history requests left unread"),
                    Err(e) => break Some(format!("{:?}", e.kind())),
                }
            }
        }
    };
    let drain = Instant::now() + Duration::from_secs(3);
    let (end, bytes) = ws.drain(drain, 64 << 20).await;
    t.add("bytes read at the end", bytes as u64);
    match failed {
        Some(why) => {
            t.record("joined until a write failed", ns_since(joined));
            t.outcome(&format!(
                "a write failed during the run ({why}); reading then: {}",
                end.map_or("nothing within 3 s".into(), |e| rawws::end_name(&e))
            ));
        }
        None => t.outcome(&match end {
            None => "still open at the end (the server never closed it)".to_string(),
            Some(e) => format!("at the end, reading again: {}", rawws::end_name(&e)),
        }),
    }
    guard.done = true;
}

// ----- (b) slowloris ---------------------------------------------------------

const SLOWLORIS: [&str; 4] = ["body-trickle", "body-stall", "header-trickle", "header-stall"];

/// The first bytes of a slowloris request, and what it trickles afterwards.
fn slowloris_request(variant: &str, host: &str) -> (String, &'static [u8]) {
    match variant {
        "body-trickle" => (
            format!(
                "POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: 4096\r\n\r\n{{"
            ),
            b"\"username\":\"slowloris-slowloris-slowloris-slowloris\",",
        ),
        "body-stall" => (
            format!(
                "POST /api/register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: 4096\r\n\r\n{{\"username\":"
            ),
            b"",
        ),
        "header-trickle" => (format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n"), b"X-Slowloris: keep-waiting\r\n"),
        _ => (format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Partial: "), b""),
    }
}

/// `answered HTTP 408` from the first line of an answer.
fn answer_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.split_whitespace().nth(1) {
        Some(status) if text.starts_with("HTTP/") => format!("answered HTTP {status}"),
        _ => "answered something else than HTTP".into(),
    }
}

async fn slowloris(p: &HostilePlan, t: &Tally, addr: SocketAddr, i: usize, at: u64, stop: CancellationToken) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut guard = Guard { tally: t, done: false };
    let variant = SLOWLORIS[i % SLOWLORIS.len()];
    let interval = Duration::from_millis(p.args.slowloris_interval_ms);
    let (head, trickle) = slowloris_request(variant, &p.host_header());
    let mut go = wait_until(at, &stop).await;
    while go && !stop.is_cancelled() {
        let connected = tokio::select! {
            r = rawws::connect(addr, p.source(i), None, Duration::from_secs(5)) => r,
            _ = stop.cancelled() => break,
        };
        let mut stream = match connected {
            Ok(s) => s,
            Err(e) => {
                t.outcome(&format!("{variant}: connect failed ({:?})", e.kind()));
                go = pause(Duration::from_millis(500), &stop).await;
                continue;
            }
        };
        t.inc("connections");
        let opened = Instant::now();
        let mut ended = match timeout(Duration::from_secs(5), stream.write_all(head.as_bytes())).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("write failed ({:?})", e.kind())),
            Err(_) => Some("write timed out".into()),
        };
        let mut next = opened + interval;
        let mut k = 0usize;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while ended.is_none() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sleep_until(next), if !trickle.is_empty() => {
                    next += interval;
                    let byte = [trickle[k % trickle.len()]];
                    k += 1;
                    match timeout(Duration::from_secs(2), stream.write_all(&byte)).await {
                        Ok(Ok(())) => t.inc("bytes trickled"),
                        Ok(Err(e)) => ended = Some(format!("write failed ({:?})", e.kind())),
                        Err(_) => ended = Some("write timed out".into()),
                    }
                }
                r = stream.read(&mut buf) => match r {
                    Ok(0) if got.is_empty() => ended = Some("closed without an answer".into()),
                    Ok(0) => ended = Some(answer_of(&got)),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(2).any(|w| w == b"\r\n") {
                            ended = Some(answer_of(&got));
                        }
                    }
                    Err(e) => ended = Some(format!("reset ({:?})", e.kind())),
                },
            }
        }
        match ended {
            None => {
                t.outcome(&format!("{variant}: still open at the end"));
                t.record(&format!("{variant}: held until the end"), ns_since(opened));
                break;
            }
            Some(how) => {
                t.outcome(&format!("{variant}: {how}"));
                t.record(&format!("{variant}: ended by the server after"), ns_since(opened));
            }
        }
        drop(stream);
        go = pause(Duration::from_millis(100), &stop).await;
    }
    guard.done = true;
}

// ----- (c) login flood -------------------------------------------------------

/// The kind of a failed request without an HTTP status.
fn transport_kind(e: &ClientError) -> String {
    match e {
        ClientError::Transport(e) if e.is_timeout() => "timed out".into(),
        ClientError::Transport(e) if e.is_connect() => "connect failed".into(),
        ClientError::Transport(_) => "transport error".into(),
        other => short(&other.to_string()),
    }
}

/// An HTTP attempt's outcome: `HTTP 401`, `timed out`, …
fn http_outcome<T>(r: &Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "HTTP 2xx".into(),
        Err(e) => match e.status() {
            Some(s) => format!("HTTP {s}"),
            None => transport_kind(e),
        },
    }
}

async fn login_flood(p: &HostilePlan, t: &Tally, k: usize, stop: CancellationToken) {
    let mut guard = Guard { tally: t, done: false };
    let a = &p.args;
    let http = match HttpClient::with_local_address(&p.target.http, Duration::from_secs(10), p.source(k)) {
        Ok(h) => h,
        Err(e) => {
            t.outcome(&format!("no HTTP client: {e}"));
            guard.done = true;
            return;
        }
    };
    let tasks = a.login_flood_tasks.max(1) as u64;
    let interval = if a.login_flood_rate > 0.0 { (tasks as f64 / a.login_flood_rate * 1e9) as u64 } else { 0 };
    let mut next = p.start_ns + interval * k as u64 / tasks;
    let mut n = 0u64;
    loop {
        if interval > 0 {
            if !wait_until(next, &stop).await {
                break;
            }
            // Behind by more than one interval: skip ahead (a flood has no schedule to keep).
            next = (next + interval).max(mono_ns().saturating_sub(interval));
        } else if !wait_until(p.start_ns, &stop).await {
            break;
        }
        let real = n & 1 == 0 && !p.real_users.is_empty();
        let user = if real {
            p.real_users[(n / 2) as usize % p.real_users.len()].clone()
        } else {
            format!("{}x{k}_{n}", p.tag)
        };
        n += 1;
        let t0 = Instant::now();
        let password = format!("wrong-password-{n}");
        let r = tokio::select! {
            r = http.login(&user, &password) => r,
            _ = stop.cancelled() => {
                t.outcome("cut off at the end");
                break;
            }
        };
        t.record("login", ns_since(t0));
        t.inc("attempts");
        let who = if real { "real user" } else { "unknown user" };
        let o = match &r {
            Ok(_) => "HTTP 200 (a wrong password accepted!)".to_string(),
            Err(_) => http_outcome(&r),
        };
        t.outcome(&format!("{who}: {o}"));
    }
    guard.done = true;
}

/// Correct logins of a real user nobody attacks, at `rate`, from the normal
/// users' address, from `start_ns` to `end_ns`.
pub async fn login_probe(
    http: HttpClient,
    user: String,
    password: String,
    rate: f64,
    start_ns: u64,
    end_ns: u64,
) -> Tally {
    let t = Tally::default();
    if rate <= 0.0 {
        return t;
    }
    let interval = (1e9 / rate) as u64;
    let mut next = start_ns;
    while next < end_ns {
        sleep_until(instant_at(next)).await;
        next = (next + interval).max(mono_ns());
        let t0 = Instant::now();
        let r = http.login(&user, &password).await;
        t.record("login", ns_since(t0));
        t.inc("attempts");
        match &r {
            Ok(_) => t.inc("ok"),
            Err(_) => t.inc("refused"),
        }
        t.outcome(&match &r {
            Ok(_) => "HTTP 200".to_string(),
            Err(_) => http_outcome(&r),
        });
    }
    t
}

// ----- (d) reconnect storm ---------------------------------------------------

async fn open_session(
    p: &HostilePlan,
    i: usize,
    user: &str,
    room: &str,
    since: Option<u64>,
) -> Result<(Connection, JoinOk), ClientError> {
    let mut conn = Connection::connect_from(&p.target.ws, Encoding::MsgPack, p.source(i)).await?;
    conn.set_timeout(Duration::from_secs(10));
    conn.hello(&p.token(user)).await?;
    let ok = conn.join(room, since).await?;
    Ok((conn, ok))
}

/// How a session could not be opened.
fn open_failure(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => format!("error {}", code.as_str()),
        ClientError::Closed(info) => format!("closed {}", info.code.map_or("without a code".into(), |c| c.to_string())),
        ClientError::WebSocket(e) => format!("WebSocket: {}", short(&e.to_string())),
        other => short(&other.to_string()),
    }
}

async fn storm(p: &HostilePlan, t: &Tally, i: usize, at: u64, stop: CancellationToken) {
    let mut guard = Guard { tally: t, done: false };
    let user = format!("{}s{i}", p.tag);
    let room = p.room(i).to_string();
    let hold = Duration::from_millis(p.args.storm_hold_ms);
    let mut rng = StdRng::seed_from_u64(cli::mix(p.args.common.seed ^ 0x5707, i as u64));
    let mut since: Option<u64> = None;
    let mut cycle = 0u64;
    let mut go = wait_until(at, &stop).await;
    while go && !stop.is_cancelled() {
        let t0 = Instant::now();
        let opened = tokio::select! {
            r = timeout(Duration::from_secs(15), open_session(p, i, &user, &room, since)) => r,
            _ = stop.cancelled() => break,
        };
        let (mut conn, ok) = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                t.outcome(&format!("could not join: {}", open_failure(&e)));
                go = pause(Duration::from_millis(200), &stop).await;
                continue;
            }
            Err(_) => {
                t.outcome("could not join: timed out");
                go = pause(Duration::from_millis(200), &stop).await;
                continue;
            }
        };
        t.record("connect + hello + join", ns_since(t0));
        t.inc("joins");
        if since.is_some() {
            t.inc("joins with since");
        }
        // What the join promises: every seq after `since` (the newest 1000
        // of them when `more`), then every live one, once each, in order.
        let mut last = match since {
            Some(s) if ok.more => {
                t.inc("replays cut at 1000 (more)");
                ok.seq.saturating_sub(1000).max(s)
            }
            Some(s) => s,
            None => ok.seq,
        };
        let until = Instant::now() + hold;
        let mut closed = false;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ev = tokio::select! {
                ev = conn.next_frame(left) => ev,
                _ = stop.cancelled() => break,
            };
            match ev {
                Ok(Event::Frame(ServerFrame::Msg(m))) if m.room == room => {
                    if m.seq <= last {
                        t.inc("duplicates");
                    } else {
                        if m.seq > last + 1 {
                            t.add("gaps", m.seq - last - 1);
                        }
                        last = m.seq;
                        t.inc(if m.seq <= ok.seq { "replayed" } else { "live" });
                    }
                }
                Ok(Event::Frame(ServerFrame::Error { code, .. })) => t.inc(&format!("error {}", code.as_str())),
                Ok(Event::Frame(_)) => {}
                Ok(Event::Closed(info)) => {
                    t.outcome(&format!(
                        "closed by the server {}",
                        info.code.map_or("without a code".into(), |c| c.to_string())
                    ));
                    closed = true;
                    break;
                }
                Err(e) if e.is_timeout() => break,
                Err(e) => {
                    t.outcome(&format!("read failed: {}", short(&e.to_string())));
                    closed = true;
                    break;
                }
            }
        }
        since = Some(last);
        cycle += 1;
        if !closed {
            if cycle & 1 == 0 {
                drop(conn);
                t.outcome("left by dropping the socket");
            } else {
                let _ = timeout(Duration::from_secs(2), conn.close()).await;
                t.outcome("left with a close (1000)");
            }
        }
        go = pause(Duration::from_millis(rng.random_range(0..=50)), &stop).await;
    }
    guard.done = true;
}

// ----- (e) junk frames -------------------------------------------------------

const JUNK: [&str; 8] = [
    "invalid MessagePack",
    "invalid JSON",
    "MessagePack array (not a map)",
    "JSON string (not a map)",
    "unknown frame type",
    "MessagePack map without its fields",
    "a valid ping",
    "oversized (max_frame + 1 bytes)",
];

async fn junk(p: &HostilePlan, t: &Tally, i: usize, at: u64, stop: CancellationToken) {
    let mut guard = Guard { tally: t, done: false };
    let user = format!("{}j{i}", p.tag);
    let room = p.room(i).to_string();
    let rate = p.args.junk_rate;
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut k = i;
    let mut go = wait_until(at, &stop).await;
    while go && !stop.is_cancelled() {
        let opened = tokio::select! {
            r = timeout(Duration::from_secs(15), open_session(p, i, &user, &room, None)) => r,
            _ = stop.cancelled() => break,
        };
        let mut conn = match opened {
            Ok(Ok((conn, _))) => conn,
            Ok(Err(e)) => {
                t.outcome(&format!("could not join: {}", open_failure(&e)));
                go = pause(Duration::from_millis(200), &stop).await;
                continue;
            }
            Err(_) => {
                t.outcome("could not join: timed out");
                go = pause(Duration::from_millis(200), &stop).await;
                continue;
            }
        };
        t.inc("sessions");
        let max_frame = conn.welcome().map_or(65_536, |w| w.max_frame as usize).min(16 << 20);
        let mut next = Instant::now() + interval.unwrap_or_default();
        let mut last_kind = "nothing";
        let ended = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = sleep_until(next), if interval.is_some() => {
                    next += interval.unwrap_or_default();
                    let kind = k % JUNK.len();
                    k += 1;
                    last_kind = JUNK[kind];
                    t.inc(&format!("sent: {}", JUNK[kind]));
                    let sent = match kind {
                        0 => conn.send_raw_binary(vec![0xc1, 0x00, 0xff, 0xc1]).await,
                        1 => conn.send_raw_text("{\"t\":\"send\",\"room\":".into()).await,
                        2 => conn.send_raw_binary(vec![0x93, 0x01, 0x02, 0x03]).await,
                        3 => conn.send_raw_text("\"just a string\"".into()).await,
                        4 => conn.send_raw_text("{\"t\":\"teleport\",\"ref\":7}".into()).await,
                        5 => conn.send_raw_binary(vec![0x81, 0xa1, b't', 0xa4, b's', b'e', b'n', b'd']).await,
                        6 => {
                            let req = conn.alloc_ref();
                            conn.send_frame(&ClientFrame::Ping { req }).await
                        }
                        _ => conn.send_raw_binary(vec![0u8; max_frame + 1]).await,
                    };
                    if let Err(e) = sent {
                        break Some(format!("sending failed after {last_kind}: {}", open_failure(&e)));
                    }
                }
                ev = conn.next_frame(Duration::from_secs(3600)) => match ev {
                    Ok(Event::Frame(ServerFrame::Error { code, .. })) => t.inc(&format!("answered: error {}", code.as_str())),
                    Ok(Event::Frame(ServerFrame::Pong { .. })) => t.inc("answered: pong"),
                    Ok(Event::Frame(_)) => t.inc("room frames read"),
                    Ok(Event::Closed(info)) => break Some(format!(
                        "closed {} after {last_kind}",
                        info.code.map_or("without a code".into(), |c| c.to_string())
                    )),
                    Err(e) if e.is_timeout() => {}
                    Err(e) => break Some(format!("read failed after {last_kind}: {}", short(&e.to_string()))),
                },
            }
        };
        match ended {
            None => {
                t.outcome("open at the end");
                break;
            }
            Some(how) => {
                t.outcome(&how);
                go = pause(Duration::from_millis(100), &stop).await;
            }
        }
    }
    guard.done = true;
}

fn short(e: &str) -> String {
    let e: String = e.chars().take(80).collect();
    e.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
}

// ----- the coordinator -------------------------------------------------------

/// One phase's outcome.
struct PhaseOut {
    raw: Raw,
    samples: (server::Sample, server::Sample),
    view: BTreeMap<String, f64>,
    probe: HostileKind,
    clients: Option<BTreeMap<String, HostileKind>>,
}

/// What the hostile phase adds to a phase.
struct HostileInput {
    args: HostileArgs,
    sources: Vec<IpAddr>,
    secret: String,
    real_users: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    cmd: &Cmd,
    target: &Target,
    source_ips: &[IpAddr],
    tokens: &Tokens,
    tag: &str,
    probe: &Arc<Probe>,
    progress: &Progress,
    name: &str,
    login_user: Option<&str>,
    hostile: Option<HostileInput>,
) -> anyhow::Result<PhaseOut> {
    let common = cmd.common();
    let Cmd::Hostile(a) = cmd else { bail!("not the hostile scenario") };
    let live = Arc::new(Live::default());
    let ctx = run::ctx(cmd, std::slice::from_ref(target), source_ips, tokens.clone(), tag, live.clone())?;
    let plan = cli::plan(cmd, tag, 0, 1);
    let rooms = plan.rooms.clone();
    progress.message(&format!("{name} phase: connecting"));
    let running = traffic::spawn(plan, ctx.clone());
    run::wait_local_setup(&running, progress, ctx.setup_deadline).await;
    let (ready, failed) = running.setup_progress();
    if ready == 0 {
        running.abort().await;
        bail!("{name} phase: no session could connect ({failed} failed); is the server's secret the one given?");
    }
    let start = run::start_of(cmd);
    let scraper = run::scrape_window(probe.clone(), start);
    let metrics_before = probe.metrics_text().await;
    let hostile = match hostile {
        Some(h) => Some(start_hostile(h, target, tag, rooms, start)?),
        None => None,
    };
    let login = login_user.filter(|_| a.login_probe_rate > 0.0).map(|user| {
        tokio::spawn(login_probe(
            ctx.http[0].clone(),
            user.to_string(),
            common.password.clone(),
            a.login_probe_rate,
            start.start_ns,
            start.window_end_ns,
        ))
    });
    let total_s = (common.warmup + common.duration).ceil() as u64;
    progress.running(total_s);
    let p = progress.clone();
    let raw = running
        .run(start, Duration::from_secs_f64(common.drain), move |pt: &TimelinePoint| {
            p.tick(pt.t, pt.sends, pt.deliveries, pt.errors, pt.latency.quantile_ms(0.99), total_s);
        })
        .await;
    let samples = scraper.await.context("server sampler")?;
    let clients = match hostile {
        Some(h) => Some(h.finish(Duration::from_secs(15)).await),
        None => None,
    };
    let probe_figures = match login {
        Some(task) => task.await.context("login probe")?.figures("correct logins of a registered user nobody attacks"),
        None => HostileKind::default(),
    };
    let metrics_after = probe.metrics_text().await;
    let view = match (metrics_before, metrics_after) {
        (Some(a), Some(b)) => server::view(&a, &b),
        _ => BTreeMap::new(),
    };
    Ok(PhaseOut { raw, samples, view, probe: probe_figures, clients })
}

fn start_hostile(
    h: HostileInput,
    target: &Target,
    tag: &str,
    rooms: Vec<String>,
    at: traffic::Start,
) -> anyhow::Result<Hostile> {
    start(HostilePlan {
        args: h.args,
        target: target.clone(),
        sources: h.sources,
        secret: h.secret,
        tag: tag.to_string(),
        rooms,
        real_users: h.real_users,
        start_ns: at.start_ns,
        stop_ns: at.window_end_ns,
    })
}

pub async fn coordinator(cmd: Cmd, target: Target, source_ips: Vec<IpAddr>, tokens: Tokens) -> anyhow::Result<u8> {
    let Cmd::Hostile(a) = &cmd else { bail!("not the hostile scenario") };
    let Tokens::Mint { secret, .. } = &tokens else { bail!("hostile needs --jwt-secret") };
    let common = a.common.clone();
    let hostile_sources = match &a.hostile_source_ips {
        Some(spec) => net::source_ips(spec, common.allow_remote)?,
        None => Vec::new(),
    };
    let Prepared { tag, started_unix_ms, probe, .. } = run::prepare(&cmd, std::slice::from_ref(&target)).await?;
    let progress = Progress::new(!common.no_progress, common.warmup);

    // The real users the flood guesses passwords for, and the probe's user.
    let http = HttpClient::with_local_address(&target.http, Duration::from_secs(60), source_ips.first().copied())?;
    let deadline = Instant::now() + Duration::from_secs_f64(common.setup_timeout);
    let real_users: Vec<String> =
        if a.login_flood_tasks > 0 { (0..2).map(|k| format!("{tag}v{k}")).collect() } else { Vec::new() };
    let probe_user = format!("{tag}p");
    let mut to_register = real_users.clone();
    if a.login_probe_rate > 0.0 {
        to_register.push(probe_user.clone());
    }
    progress.message("registering the real users");
    for user in &to_register {
        register_only(&http, user, &common.password, deadline)
            .await
            .with_context(|| format!("registering {user} (the login flood's and the probe's real users)"))?;
    }

    let clean = phase(
        &cmd,
        &target,
        &source_ips,
        &tokens,
        &format!("{tag}c"),
        &probe,
        &progress,
        "clean",
        Some(&probe_user),
        None,
    )
    .await?;
    let hostile = phase(
        &cmd,
        &target,
        &source_ips,
        &tokens,
        &format!("{tag}h"),
        &probe,
        &progress,
        "hostile",
        Some(&probe_user),
        Some(HostileInput { args: a.clone(), sources: hostile_sources, secret: secret.clone(), real_users }),
    )
    .await?;
    progress.finish();

    let exp = Expectation {
        warmup_s: common.warmup,
        window_s: common.duration,
        deliveries_per_send: cli::deliveries_per_send(&cmd),
        expected_closes: Vec::new(),
    };
    let figures = |o: &PhaseOut| server::figures(&o.samples.0, &o.samples.1, o.raw.get(c::DELIVERIES_IN_WINDOW));
    let mut clean_report = Report::finalize("hostile: clean phase", &clean.raw, &exp, figures(&clean));
    clean_report.params = cmd.params();
    let mut report = Report::finalize("hostile", &hostile.raw, &exp, figures(&hostile));
    report.command = std::env::args().collect();
    report.params = cmd.params();
    report.started_unix_ms = started_unix_ms;
    report.host = run::host();

    // One floor after both phases (of one shape: the same rate and size).
    if let Some(floor) = crate::floor::beside(&report, &common, probe.pid()).await {
        crate::floor::apply(&mut clean_report, &floor);
        crate::floor::apply(&mut report, &floor);
    }
    let (cf, hf) = (PhaseFigures::of(&clean_report), PhaseFigures::of(&report));
    let p99_ratio = (cf.latency.count > 0 && hf.latency.count > 0 && cf.latency.p99_ms > 0.0)
        .then(|| hf.latency.p99_ms / cf.latency.p99_ms);
    let p99_within_goal = p99_ratio.is_some_and(|r| r <= a.p99_ratio_max);
    let nothing_lost = cf.intact() && hf.intact();
    let comparison = Comparison {
        p99_ratio,
        p99_ratio_max: a.p99_ratio_max,
        p99_within_goal,
        nothing_lost,
        goal_met: p99_within_goal && nothing_lost,
        clean: cf,
        hostile: hf,
    };
    let mut problems: Vec<String> = Vec::new();
    problems.extend(clean_report.problems.iter().map(|p| format!("clean phase: {p}")));
    problems.extend(report.problems.iter().map(|p| format!("hostile phase: {p}")));
    if !p99_within_goal {
        problems.push(match p99_ratio {
            Some(r) => format!(
                "the normal users' p99 in the hostile phase ({:.3} ms) is {r:.2}× the clean phase's ({:.3} ms), more \
                 than {}×",
                comparison.hostile.latency.p99_ms, comparison.clean.latency.p99_ms, a.p99_ratio_max
            ),
            None => "no p99 to compare (a phase delivered nothing)".to_string(),
        });
    }
    let clients = hostile.clients.unwrap_or_default();
    if let Some(storm) = clients.get("reconnect_storm") {
        for what in ["gaps", "duplicates"] {
            if let Some(n) = storm.counters.get(what).filter(|n| **n > 0) {
                problems.push(format!("reconnect storm: {n} {what} in resumed streams"));
            }
        }
    }
    report.problems = problems;
    report.hostile = Some(HostileSection {
        order: "clean phase first, then the hostile phase; each has its own normal sessions of the same shape in \
                fresh rooms; the hostile clients run from the hostile phase's warm-up to the end of its window"
            .into(),
        clean: Box::new(clean_report),
        comparison,
        clients,
        login_probe: BTreeMap::from([("clean".to_string(), clean.probe), ("hostile".to_string(), hostile.probe)]),
        server_view: BTreeMap::from([("clean".to_string(), clean.view), ("hostile".to_string(), hostile.view)]),
    });
    run::output(&report, &common)?;
    Ok(if common.check && !report.problems.is_empty() { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_requests() {
        assert_eq!(answer_of(b"HTTP/1.1 408 Request Timeout\r\n"), "answered HTTP 408");
        assert_eq!(answer_of(b"garbage\r\n"), "answered something else than HTTP");
        for v in SLOWLORIS {
            let (head, _) = slowloris_request(v, "h:1");
            assert!(head.starts_with("GET ") || head.starts_with("POST "));
            // None of them is a complete request.
            assert!(!head.ends_with("\r\n\r\n"), "{v}");
        }
    }

    #[test]
    fn a_guard_counts_an_aborted_task() {
        let t = Tally::default();
        {
            let _g = Guard { tally: &t, done: false };
        }
        {
            let mut g = Guard { tally: &t, done: false };
            g.done = true;
        }
        assert_eq!(t.figures("x").counters["tasks cut off at the time bound"], 1);
    }
}
