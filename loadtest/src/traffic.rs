//! Sessions that join rooms, send on an open-loop schedule, receive, and
//! (for churn) drop and come back: the machinery of the `fanout`, `dm`,
//! `connections` and `churn` scenarios.
//!
//! Every session watches one room (its room, or its DM room) and checks
//! what arrives there: each seq exactly once and in order, from the seq of
//! its first `join` to the room's last. A send's body starts with the time
//! it was written and the time it was due by the schedule (20 digits each,
//! CLOCK_MONOTONIC ns). The schedule is open loop: a late send goes out at
//! once, never skipped, so a server that falls behind shows as latency,
//! not as a quieter test.
//!
//! With `--mix` (fan-out) a sender also edits, reacts and reads
//! ([`crate::mix`]): edits and reactions are events in the same seq stream,
//! checked and timed like messages; reads are timed to their `ok` and to
//! the push at the user's second session.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use viche_client::{ClientError, ClientFrame, Connection, Encoding, Event, HttpClient, Msg, ServerFrame};

use crate::clock::{instant_at, mono_ns, process_cpu_us};
use crate::live::{Live, K};
use crate::mix::{cid_stamps_of, stamped_cid, Metric, Mix, Op, OpK, PendingRead, Push, ReadSync, EMOJI};
use crate::net::{mint_token, register_and_login, register_only, Tokens};
use crate::report::{h, Raw, TimelinePoint};

/// Own messages a sender remembers as edit targets.
const OWN_KEPT: usize = 32;
/// The room's ordinary messages a sender remembers as reaction targets.
const RECENT_KEPT: usize = 64;
/// Edits of one message the server allows (`MESSAGE_EDITS_MAX`).
const EDITS_PER_MESSAGE_MAX: u32 = 100;

/// When traffic starts, and the measured window, in CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub start_ns: u64,
    pub window_start_ns: u64,
    /// Sends stop being due here.
    pub window_end_ns: u64,
}

impl Start {
    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start_ns && ns < self.window_end_ns
    }
}

/// A room watched by sessions of this process.
pub struct RoomShared {
    pub name: String,
    /// The highest seq anyone saw (a `msg` or an `ack`).
    pub final_seq: AtomicU64,
    /// The seqs acknowledged to this process's senders, with their
    /// operation: what each kind's deliveries should be.
    stored: Mutex<Vec<(u64, Op)>>,
}

/// A room's acknowledged seqs, sorted, with running counts by operation.
struct Tally {
    seqs: Vec<u64>,
    /// `prefix[i]`: the counts by operation of the first `i` seqs.
    prefix: Vec<[u64; 4]>,
}

impl Tally {
    fn of(room: &RoomShared) -> Tally {
        let mut stored = room.stored.lock().clone();
        stored.sort_unstable();
        stored.dedup_by_key(|(seq, _)| *seq);
        let mut prefix = vec![[0u64; 4]];
        for (_, op) in &stored {
            let mut next = *prefix.last().expect("one at least");
            next[*op as usize] += 1;
            prefix.push(next);
        }
        Tally { seqs: stored.into_iter().map(|(seq, _)| seq).collect(), prefix }
    }

    /// Acknowledged seqs in (`after`, `upto`], by operation.
    fn count(&self, after: u64, upto: u64) -> [u64; 4] {
        let a = self.seqs.partition_point(|s| *s <= after);
        let b = self.seqs.partition_point(|s| *s <= upto).max(a);
        std::array::from_fn(|i| self.prefix[b][i] - self.prefix[a][i])
    }
}

/// How a session sends.
#[derive(Clone, Debug)]
pub enum SendTarget {
    /// `send` to its room.
    Room,
    /// `dm` to this user.
    Dm(String),
}

#[derive(Clone, Debug)]
pub struct SendPlan {
    pub target: SendTarget,
    pub interval_ns: u64,
    /// The first send is due this long after the start.
    pub offset_ns: u64,
    pub body_bytes: usize,
    /// What each due operation is (by weight; default: a send).
    pub mix: Mix,
}

/// Reconnect storms (churn): every `every_ns` after the start (until the
/// window ends), each churning session drops its connection with
/// probability `fraction`, and reconnects after a full-jitter exponential
/// backoff, resuming with `join since`.
#[derive(Clone, Debug)]
pub struct ChurnPlan {
    pub every_ns: u64,
    pub fraction: f64,
    pub backoff_base_ns: u64,
    pub backoff_max_ns: u64,
}

/// One session of the plan.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// Global index (across worker processes): picks the source address.
    pub index: usize,
    pub user: String,
    /// Index into the plan's rooms: the room it watches.
    pub room: usize,
    /// `join` the room (false for a DM room, which delivers without it).
    pub join: bool,
    pub send: Option<SendPlan>,
    pub churn: Option<ChurnPlan>,
    /// Connect no earlier than this long after setup began (a ramp).
    pub connect_after_ns: u64,
    pub seed: u64,
    /// Register this user through HTTP for its token (a DM peer must exist),
    /// even when tokens are minted.
    pub register: bool,
    /// The second session of a sender that reads (`--mix` with reads): the
    /// same user, joins nothing, receives the `read` pushes of the user's
    /// reads. Its room is the sender's.
    pub second_session: bool,
}

/// A plan for one process: rooms and sessions.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub rooms: Vec<String>,
    pub members: Vec<MemberSpec>,
    /// The tokens of the DM scenario come from registering its users.
    pub register_users: bool,
}

/// What the sessions of a process share.
pub struct Ctx {
    /// One WebSocket URL per server (`--url` may name several).
    pub ws_urls: Vec<String>,
    /// Sending sessions connect to the first server (`--senders-on-first-url`).
    pub senders_on_first_url: bool,
    pub tokens: Tokens,
    pub encoding: Encoding,
    pub source_ips: Vec<IpAddr>,
    /// One HTTP client per source address (or one).
    pub http: Vec<HttpClient>,
    pub connect_sem: Arc<Semaphore>,
    pub live: Arc<Live>,
    pub stop: CancellationToken,
    pub setup_deadline: tokio::time::Instant,
    pub run_tag: String,
    /// Password of registered users.
    pub password: String,
}

impl Ctx {
    /// The server of session `index`: the servers in turn.
    pub fn ws_url(&self, index: usize) -> &str {
        &self.ws_urls[index % self.ws_urls.len()]
    }

    fn source_ip(&self, index: usize) -> Option<IpAddr> {
        if self.source_ips.is_empty() {
            None
        } else {
            Some(self.source_ips[index % self.source_ips.len()])
        }
    }

    fn http(&self, index: usize) -> &HttpClient {
        &self.http[index % self.http.len()]
    }
}

const CONNECTING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;
const GONE: u8 = 3;

/// A session's state, visible to the process's coordinator.
pub struct MemberShared {
    pub room: usize,
    state: AtomicU8,
    start_seq: AtomicU64,
    last_seq: AtomicU64,
    received: AtomicU64,
    outstanding: AtomicU64,
    /// Set while a churning session is between connections.
    away: AtomicU8,
    /// A sender's second session (watches read pushes, not the room).
    second: bool,
    /// The reads of this user, for a second session.
    read_sync: Option<Arc<ReadSync>>,
    /// Distinct messages received, by operation.
    received_by: [AtomicU64; 4],
    /// Seqs skipped, as (first, last) ranges.
    gaps: Mutex<Vec<(u64, u64)>>,
}

/// The running sessions of a process.
pub struct Running {
    pub live: Arc<Live>,
    rooms: Vec<Arc<RoomShared>>,
    members: Vec<Arc<MemberShared>>,
    tasks: Vec<JoinHandle<()>>,
    start_tx: watch::Sender<Option<Start>>,
    stop: CancellationToken,
}

/// Spawns every session of `plan` (each connects, within the connect
/// concurrency, and then waits for the start while reading).
pub fn spawn(plan: Plan, ctx: Arc<Ctx>) -> Running {
    let rooms: Vec<Arc<RoomShared>> = plan
        .rooms
        .iter()
        .map(|name| {
            Arc::new(RoomShared { name: name.clone(), final_seq: AtomicU64::new(0), stored: Mutex::new(Vec::new()) })
        })
        .collect();
    // The users with a second session share their reads with it.
    let read_syncs: HashMap<String, Arc<ReadSync>> = plan
        .members
        .iter()
        .filter(|m| m.second_session)
        .map(|m| (m.user.clone(), Arc::new(ReadSync::default())))
        .collect();
    let (start_tx, start_rx) = watch::channel(None);
    let setup_began = mono_ns();
    let mut members = Vec::with_capacity(plan.members.len());
    let mut tasks = Vec::with_capacity(plan.members.len());
    ctx.live.add(K::ConnectionsTarget, plan.members.len() as u64);
    for spec in plan.members {
        let shared = Arc::new(MemberShared {
            room: spec.room,
            state: AtomicU8::new(CONNECTING),
            start_seq: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            received: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            away: AtomicU8::new(0),
            second: spec.second_session,
            read_sync: read_syncs.get(&spec.user).filter(|_| spec.second_session).cloned(),
            received_by: Default::default(),
            gaps: Mutex::new(Vec::new()),
        });
        members.push(shared.clone());
        let mix = spec.send.as_ref().map(|s| s.mix).unwrap_or_default();
        let member = Member {
            room: rooms[spec.room].clone(),
            shared,
            ctx: ctx.clone(),
            conn: None,
            start: None,
            last_seq: 0,
            replay_upto: 0,
            pending: HashMap::new(),
            sent: 0,
            rng: StdRng::seed_from_u64(0),
            mix_rng: StdRng::seed_from_u64(crate::cli::mix(spec.seed, 0x004D_4958)),
            own: VecDeque::new(),
            recent: VecDeque::new(),
            track_recent: mix.weight(Op::React) > 0,
            track_own: mix.weight(Op::Edit) > 0,
            marker: 0,
            writes_pending: 0,
            read_sync: read_syncs.get(&spec.user).cloned(),
            register: plan.register_users || spec.register,
            spec,
        };
        tasks.push(tokio::spawn(member.run(start_rx.clone(), setup_began)));
    }
    Running { live: ctx.live.clone(), rooms, members, tasks, start_tx, stop: ctx.stop.clone() }
}

impl Running {
    /// (ready, failed) sessions so far.
    pub fn setup_progress(&self) -> (usize, usize) {
        let mut ready = 0;
        let mut failed = 0;
        for m in &self.members {
            match m.state.load(Ordering::Relaxed) {
                READY => ready += 1,
                FAILED | GONE => failed += 1,
                _ => {}
            }
        }
        (ready, failed)
    }

    pub fn total(&self) -> usize {
        self.members.len()
    }

    /// Waits until every session is connected or failed, or `deadline`.
    pub async fn wait_ready(&self, deadline: tokio::time::Instant) {
        loop {
            let (ready, failed) = self.setup_progress();
            if ready + failed >= self.members.len() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything sent has been answered and every live session has seen
    /// its room's last seq.
    fn settled(&self) -> bool {
        self.members.iter().all(|m| match m.state.load(Ordering::Relaxed) {
            READY if m.second => m.read_sync.as_ref().is_none_or(|s| s.awaiting() == 0),
            READY => {
                m.away.load(Ordering::Relaxed) == 0
                    && m.outstanding.load(Ordering::Relaxed) == 0
                    && m.last_seq.load(Ordering::Relaxed) >= self.rooms[m.room].final_seq.load(Ordering::Relaxed)
            }
            _ => true,
        })
    }

    /// Starts the traffic, runs to the end of the window, waits (up to
    /// `drain`) for every delivery, stops every session, and counts.
    pub async fn run(self, start: Start, drain: Duration, on_tick: impl Fn(&TimelinePoint) + Send + 'static) -> Raw {
        let live = self.live.clone();
        let _ = self.start_tx.send(Some(start));
        // The timeline, one point per second.
        let ticker_stop = CancellationToken::new();
        let ticker = {
            let (live, stop) = (live.clone(), ticker_stop.clone());
            tokio::spawn(async move {
                let mut t = 1u64;
                loop {
                    tokio::select! {
                        _ = sleep_until(instant_at(start.start_ns + t * 1_000_000_000)) => {
                            let point = live.tick(t);
                            on_tick(&point);
                            t += 1;
                        }
                        _ = stop.cancelled() => {
                            live.tick(t);
                            return;
                        }
                    }
                }
            })
        };
        // The generator's own CPU over the window.
        let cpu = {
            let live = live.clone();
            tokio::spawn(async move {
                sleep_until(instant_at(start.window_start_ns)).await;
                let a = process_cpu_us();
                sleep_until(instant_at(start.window_end_ns)).await;
                live.add(K::GeneratorCpuUs, process_cpu_us().saturating_sub(a));
            })
        };
        sleep_until(instant_at(start.window_end_ns)).await;
        let _ = cpu.await;
        let drain_deadline = tokio::time::Instant::now() + drain;
        // A little grace for answers in flight before judging.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while !self.settled() && tokio::time::Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        ticker_stop.cancel();
        let _ = ticker.await;
        // Loss: what each session that ever joined should have seen; by
        // operation, its acknowledged seqs after the session's first join.
        let tallies: Vec<Tally> = self.rooms.iter().map(|r| Tally::of(r)).collect();
        for m in &self.members {
            if m.second {
                // Expected pushes that never came.
                if let Some(sync) = &m.read_sync {
                    live.op_add(Op::Read, OpK::PushesLost, sync.awaiting());
                }
                continue;
            }
            for op in Op::ALL.into_iter().filter(|op| op.delivers()) {
                live.op_add(op, OpK::Deliveries, m.received_by[op as usize].load(Ordering::Relaxed));
            }
            if matches!(m.state.load(Ordering::Relaxed), READY | GONE) {
                let final_seq = self.rooms[m.room].final_seq.load(Ordering::Relaxed);
                let start_seq = m.start_seq.load(Ordering::Relaxed);
                let expected = final_seq.saturating_sub(start_seq);
                let received = m.received.load(Ordering::Relaxed);
                live.add(K::Expected, expected);
                live.add(K::Lost, expected.saturating_sub(received));
                let tally = &tallies[m.room];
                let by_op = tally.count(start_seq, final_seq);
                for op in Op::ALL.into_iter().filter(|op| op.delivers()) {
                    let expected = by_op[op as usize];
                    let received = m.received_by[op as usize].load(Ordering::Relaxed);
                    live.op_add(op, OpK::Expected, expected);
                    live.op_add(op, OpK::Lost, expected.saturating_sub(received));
                }
                for &(first, last) in m.gaps.lock().iter() {
                    let skipped = tally.count(first - 1, last);
                    for op in Op::ALL {
                        live.op_add(op, OpK::Gaps, skipped[op as usize]);
                    }
                }
            }
        }
        live.snapshot()
    }

    /// Stops every session without traffic (setup failed).
    pub async fn abort(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// The body of a send written at `sent_ns` and due at `due_ns`: 20 digits
/// each, then padding to `body_bytes`.
pub fn stamp(sent_ns: u64, due_ns: u64, body_bytes: usize) -> String {
    let mut body = format!("{sent_ns:020}{due_ns:020}");
    while body.len() < body_bytes {
        body.push('x');
    }
    body
}

/// (sent, due) stamped in a body.
pub fn stamps_of(body: &str) -> Option<(u64, u64)> {
    Some((body.get(..20)?.parse().ok()?, body.get(20..40)?.parse().ok()?))
}

enum Flow {
    Continue,
    Closed,
}

struct Member {
    spec: MemberSpec,
    shared: Arc<MemberShared>,
    room: Arc<RoomShared>,
    ctx: Arc<Ctx>,
    conn: Option<Connection>,
    start: Option<Start>,
    last_seq: u64,
    /// Messages with seq ≤ this were replayed by the last `join since`.
    replay_upto: u64,
    /// Unanswered requests by ref.
    pending: HashMap<u64, Pending>,
    sent: u64,
    rng: StdRng,
    /// Draws the operations of `--mix` (apart from `rng`, so that churn's
    /// draws are those of the runs before it).
    mix_rng: StdRng,
    /// The sender's own messages (seqs of their acks), newest last, with
    /// the edits made to each: the targets of its edits.
    own: VecDeque<(u64, u32)>,
    /// The room's ordinary messages seen, newest last, with this user's
    /// reactions to each (a bit per emoji): the targets of its reactions.
    recent: VecDeque<(u64, u8)>,
    track_recent: bool,
    track_own: bool,
    /// This user's read marker as far as this session knows: its reads and
    /// the seqs of its acknowledged writes (each moves it).
    marker: u64,
    /// Writes (sends, edits, reactions) not answered yet: any may have
    /// moved the marker past what this session has seen.
    writes_pending: u64,
    /// The user's reads, shared with its second session.
    read_sync: Option<Arc<ReadSync>>,
    register: bool,
}

/// An unanswered request.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Written (ns).
    sent: u64,
    /// Due by the schedule (ns).
    due: u64,
    op: Op,
}

impl Member {
    async fn token(&self) -> anyhow::Result<String> {
        let http = self.ctx.http(self.spec.index);
        let (user, password, deadline) = (&self.spec.user, &self.ctx.password, self.ctx.setup_deadline);
        match &self.ctx.tokens {
            Tokens::Login => register_and_login(http, user, password, deadline).await,
            Tokens::Register => register_only(http, user, password, deadline).await,
            // DM users must exist on the server: registered even with a secret.
            Tokens::Mint { .. } if self.register => register_only(http, user, password, deadline).await,
            Tokens::Mint { secret, ttl } => Ok(mint_token(secret, user, *ttl)),
        }
    }

    /// Connect, hello, and (if it joins) join with `since`.
    async fn open(&self, token: &str, since: Option<u64>) -> Result<(Connection, u64, bool), ClientError> {
        let mut conn = Connection::connect_from(
            if self.ctx.senders_on_first_url && self.spec.send.is_some() {
                &self.ctx.ws_urls[0]
            } else {
                self.ctx.ws_url(self.spec.index)
            },
            self.ctx.encoding,
            self.ctx.source_ip(self.spec.index),
        )
        .await?;
        conn.hello(token).await?;
        if self.spec.join {
            let ok = conn.join(&self.room.name, since).await?;
            Ok((conn, ok.seq, ok.more))
        } else {
            Ok((conn, since.unwrap_or(0), false))
        }
    }

    async fn run(mut self, mut start_rx: watch::Receiver<Option<Start>>, setup_began: u64) {
        self.rng = StdRng::seed_from_u64(self.spec.seed);
        let live = self.ctx.live.clone();
        let stop = self.ctx.stop.clone();
        if self.spec.connect_after_ns > 0 {
            tokio::select! {
                _ = sleep_until(instant_at(setup_began + self.spec.connect_after_ns)) => {}
                _ = stop.cancelled() => return,
            }
        }
        // Token, connect, hello, join: one permit of the connect concurrency.
        let opened = {
            let _permit = tokio::select! {
                p = self.ctx.connect_sem.acquire() => p,
                _ = stop.cancelled() => return,
            };
            let t0 = mono_ns();
            let opened = match self.token().await {
                Ok(token) => self.open(&token, None).await.map(|o| (o, token)).map_err(|e| e.to_string()),
                Err(e) => Err(format!("token: {e:#}")),
            };
            if opened.is_ok() {
                live.record(h::CONNECT, mono_ns() - t0);
            }
            opened
        };
        let ((conn, seq, _), token) = match opened {
            Ok(o) => o,
            Err(e) => {
                live.inc(K::ConnectFailures);
                live.error(&format!("connect: {}", short(&e)));
                self.shared.state.store(FAILED, Ordering::Relaxed);
                return;
            }
        };
        live.inc(K::ConnectionsOpened);
        self.conn = Some(conn);
        self.last_seq = seq;
        self.replay_upto = seq;
        self.room.final_seq.fetch_max(seq, Ordering::Relaxed);
        self.shared.start_seq.store(seq, Ordering::Relaxed);
        self.shared.last_seq.store(seq, Ordering::Relaxed);
        self.shared.state.store(READY, Ordering::Relaxed);

        // Wait for the start, reading (pings are answered while reading).
        let start = loop {
            if let Some(s) = *start_rx.borrow_and_update() {
                break s;
            }
            let conn = self.conn.as_mut().expect("connected");
            tokio::select! {
                changed = start_rx.changed() => if changed.is_err() { return },
                ev = conn.next_frame(Duration::from_secs(3600)) => {
                    if let Flow::Closed = self.on_event(ev) {
                        if !self.come_back(&token, false).await { return self.finish() }
                    }
                }
                _ = stop.cancelled() => return self.finish(),
            }
        };
        self.start = Some(start);
        let interval = self.spec.send.as_ref().map_or(0, |s| s.interval_ns.max(1));
        let mut next_due = self.spec.send.as_ref().map(|s| start.start_ns + s.offset_ns);
        let mut next_storm = self.spec.churn.as_ref().map(|c| start.start_ns + c.every_ns.max(1));
        loop {
            let due = next_due.filter(|d| *d < start.window_end_ns);
            let storm = next_storm.filter(|d| *d < start.window_end_ns);
            let Some(conn) = self.conn.as_mut() else { break };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(instant_at(due.unwrap_or(0))), if due.is_some() => {
                    let due = due.unwrap_or(0);
                    next_due = Some(due + interval);
                    if !self.send(due).await {
                        // The connection broke while sending.
                        self.on_closed_while_sending();
                        if !self.come_back(&token, false).await { break }
                    }
                }
                _ = sleep_until(instant_at(storm.unwrap_or(0))), if storm.is_some() => {
                    let churn = self.spec.churn.clone().expect("storms only with churn");
                    next_storm = Some(storm.unwrap_or(0) + churn.every_ns.max(1));
                    if self.rng.random_bool(churn.fraction.clamp(0.0, 1.0)) {
                        live.inc(K::Drops);
                        // Dropped, not closed: the server sees the socket end.
                        self.conn = None;
                        if !self.come_back(&token, true).await { break }
                    }
                }
                ev = conn.next_frame(Duration::from_secs(3600)) => {
                    if let Flow::Closed = self.on_event(ev) {
                        if !self.come_back(&token, false).await { break }
                    }
                }
            }
        }
        // Sends that were due in the window but never went out.
        if let (Some(mut d), Some(_)) = (next_due, self.spec.send.as_ref()) {
            while d < start.window_end_ns {
                if start.in_window(d) {
                    live.inc(K::SendsDue);
                }
                d += interval;
            }
        }
        self.finish()
    }

    fn finish(&mut self) {
        let live = &self.ctx.live;
        for p in self.pending.values() {
            live.op_inc(p.op, OpK::Unanswered);
        }
        self.pending.clear();
        self.conn = None;
    }

    /// The operation due now: a send, or by `--mix`'s weights an edit, a
    /// reaction or a read (an edit or reaction with no target yet is sent
    /// as a message, and counted as a fallback of its kind).
    fn next_op(&mut self, mix: Mix) -> Op {
        if mix.sends_only() {
            return Op::Send;
        }
        let op = mix.pick(self.mix_rng.random_range(0..mix.total()));
        let no_target = match op {
            Op::Edit => !self.own.iter().any(|(_, edits)| *edits < EDITS_PER_MESSAGE_MAX),
            Op::React => self.recent.is_empty(),
            Op::Send | Op::Read => false,
        };
        if no_target {
            self.ctx.live.op_inc(op, OpK::Fallbacks);
            return Op::Send;
        }
        op
    }

    /// Performs the operation due at `due` (a send unless `--mix` says
    /// otherwise); false when the connection broke.
    async fn send(&mut self, due: u64) -> bool {
        let live = self.ctx.live.clone();
        let start = self.start.expect("sending after the start");
        let plan = self.spec.send.clone().expect("a sender");
        let op = self.next_op(plan.mix);
        let Some(conn) = self.conn.as_mut() else { return false };
        self.sent += 1;
        let req = conn.alloc_ref();
        let sent_ns = mono_ns();
        let cid = format!("{}-{}", self.ctx.run_tag, self.sent);
        let room = self.room.name.clone();
        let frame = match op {
            Op::Send => {
                let body = stamp(sent_ns, due, plan.body_bytes);
                match &plan.target {
                    SendTarget::Room => ClientFrame::Send { req, room, body, cid, reply_to: None },
                    SendTarget::Dm(to) => ClientFrame::Dm { req, to: to.clone(), body, cid, reply_to: None },
                }
            }
            Op::Edit => {
                // One of its own recent messages, edited fewer times than the bound.
                let editable: Vec<usize> =
                    (0..self.own.len()).filter(|i| self.own[*i].1 < EDITS_PER_MESSAGE_MAX).collect();
                let i = editable[self.mix_rng.random_range(0..editable.len())];
                self.own[i].1 += 1;
                let body = stamp(sent_ns, due, plan.body_bytes);
                ClientFrame::Edit { req, room, target: self.own[i].0, body, cid }
            }
            Op::React => {
                // Toggle: on when this user's reaction with that emoji is
                // off, else off; never a repeat of the current state.
                let i = self.mix_rng.random_range(0..self.recent.len());
                let e = self.mix_rng.random_range(0..EMOJI.len());
                let bit = 1u8 << e;
                let (target, reactions) = &mut self.recent[i];
                let on = *reactions & bit == 0;
                *reactions ^= bit;
                let cid = stamped_cid(sent_ns, due, &self.ctx.run_tag, self.sent);
                ClientFrame::React { req, room, target: *target, emoji: EMOJI[e].to_string(), on, cid }
            }
            Op::Read => {
                // The newest seq seen; it must push when it is past the
                // marker as this session knows it and no write of ours
                // (which moves the marker) is unanswered.
                let seq = self.last_seq;
                let expected = seq > self.marker && self.writes_pending == 0;
                if let Some(sync) = &self.read_sync {
                    sync.register(seq, PendingRead { sent_ns, due_ns: due, expected });
                    if expected {
                        live.op_inc(Op::Read, OpK::PushesExpected);
                    }
                }
                self.marker = self.marker.max(seq);
                ClientFrame::Read { req, room, seq }
            }
        };
        let result = conn.send_frame(&frame).await;
        let now = mono_ns();
        if start.in_window(due) {
            live.op_inc(op, OpK::Due);
            live.record(h::SEND_LAG, now.saturating_sub(due));
        }
        if result.is_err() {
            return false;
        }
        live.op_inc(op, OpK::Performed);
        if start.in_window(now) {
            live.op_inc(op, OpK::InWindow);
        }
        self.pending.insert(req, Pending { sent: sent_ns, due, op });
        if op.delivers() {
            self.writes_pending += 1;
        }
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn on_closed_while_sending(&mut self) {
        let info = self.conn.as_ref().and_then(|c| c.close_info().cloned());
        self.ctx.live.close(info.and_then(|i| i.code));
        self.conn = None;
    }

    fn answered(&mut self, req: u64) -> Option<Pending> {
        let pending = self.pending.remove(&req)?;
        self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
        if pending.op.delivers() {
            self.writes_pending -= 1;
        }
        Some(pending)
    }

    fn in_window(&self, ns: u64) -> bool {
        self.start.is_some_and(|s| s.in_window(ns))
    }

    /// A `read` push at a second session: the push of which read, and when.
    fn on_read_push(&mut self, room: &str, seq: u64) {
        let live = self.ctx.live.clone();
        let arrival = mono_ns();
        let Some(sync) = self.read_sync.as_ref().filter(|_| self.shared.second && room == self.room.name) else {
            live.inc(K::OtherFrames);
            return;
        };
        match sync.pushed(seq) {
            Push::Matched { read, skipped } => {
                live.op_inc(Op::Read, OpK::Pushes);
                live.op_add(Op::Read, OpK::PushesLost, skipped);
                if self.in_window(read.due_ns) {
                    live.record(h::READ_PUSH, arrival.saturating_sub(read.sent_ns));
                }
            }
            Push::Duplicate => live.op_inc(Op::Read, OpK::PushesDuplicate),
            Push::Unmatched { skipped } => {
                live.op_inc(Op::Read, OpK::PushesUnmatched);
                live.op_add(Op::Read, OpK::PushesLost, skipped);
            }
        }
    }

    fn on_event(&mut self, ev: Result<Event, ClientError>) -> Flow {
        let live = self.ctx.live.clone();
        match ev {
            Ok(Event::Frame(ServerFrame::Msg(m))) => self.on_msg(m),
            Ok(Event::Frame(ServerFrame::Ack { req, seq, .. })) => {
                self.room.final_seq.fetch_max(seq, Ordering::Relaxed);
                if let Some(p) = self.answered(req) {
                    live.op_inc(p.op, OpK::Answered);
                    if self.in_window(p.due) {
                        live.record(p.op.hist(Metric::Ack), mono_ns().saturating_sub(p.sent));
                    }
                    // Stored at `seq`: a delivery every member should see,
                    // and this user's marker is there now.
                    self.room.stored.lock().push((seq, p.op));
                    self.marker = self.marker.max(seq);
                    if p.op == Op::Send && self.track_own {
                        self.own.push_back((seq, 0));
                        if self.own.len() > OWN_KEPT {
                            self.own.pop_front();
                        }
                    }
                }
            }
            Ok(Event::Frame(ServerFrame::Ok { req, .. }))
                if self.pending.get(&req).is_some_and(|p| p.op == Op::Read) =>
            {
                if let Some(p) = self.answered(req) {
                    live.op_inc(Op::Read, OpK::Answered);
                    if self.in_window(p.due) {
                        live.record(h::READ_OK, mono_ns().saturating_sub(p.sent));
                    }
                }
            }
            Ok(Event::Frame(ServerFrame::Read { room, seq })) => self.on_read_push(&room, seq),
            Ok(Event::Frame(ServerFrame::Error { req, code, .. })) => {
                live.error(code.as_str());
                if let Some(req) = req {
                    if let Some(p) = self.answered(req) {
                        live.op_inc(p.op, OpK::Errors);
                    }
                }
            }
            Ok(Event::Frame(_)) => live.inc(K::OtherFrames),
            Ok(Event::Closed(info)) => {
                live.close(info.code);
                self.conn = None;
                return Flow::Closed;
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => {
                live.error(&format!("client: {}", short(&e.to_string())));
                self.conn = None;
                return Flow::Closed;
            }
        }
        Flow::Continue
    }

    fn on_msg(&mut self, m: Msg) {
        let live = &self.ctx.live;
        let arrival = mono_ns();
        if m.room != self.room.name {
            live.inc(K::OtherFrames);
            return;
        }
        self.room.final_seq.fetch_max(m.seq, Ordering::Relaxed);
        // Edits and reactions are in the room's seq stream like messages.
        let op = Op::of_msg(m.kind);
        if m.seq <= self.last_seq {
            live.inc(K::Duplicates);
            if let Some(op) = op {
                live.op_inc(op, OpK::Duplicates);
            }
            return;
        }
        if m.seq > self.last_seq + 1 {
            live.add(K::Gaps, m.seq - self.last_seq - 1);
            self.shared.gaps.lock().push((self.last_seq + 1, m.seq - 1));
        }
        self.last_seq = m.seq;
        self.shared.last_seq.store(m.seq, Ordering::Relaxed);
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        live.inc(K::Deliveries);
        if let Some(op) = op {
            self.shared.received_by[op as usize].fetch_add(1, Ordering::Relaxed);
        }
        if self.in_window(arrival) {
            live.inc(K::DeliveriesInWindow);
        }
        if op == Some(Op::Send) && self.track_recent {
            self.recent.push_back((m.seq, 0));
            if self.recent.len() > RECENT_KEPT {
                self.recent.pop_front();
            }
        }
        // A reaction's body is empty: its stamps are in its cid.
        let stamps = match op {
            Some(Op::React) => cid_stamps_of(&m.cid),
            _ => stamps_of(&m.body),
        };
        let Some((sent, due)) = stamps else { return };
        if m.seq <= self.replay_upto {
            live.inc(K::Replayed);
            live.record(h::REPLAY_AGE, arrival.saturating_sub(sent));
            return;
        }
        live.record_op_delivery(
            op.unwrap_or(Op::Send),
            arrival.saturating_sub(sent),
            arrival.saturating_sub(due),
            self.in_window(due),
        );
    }

    /// After a drop or a close: a churning session reconnects with
    /// backoff and resumes with `join since`; any other is gone for good.
    /// False when the session is over.
    async fn come_back(&mut self, token: &str, planned: bool) -> bool {
        let live = self.ctx.live.clone();
        let Some(churn) = self.spec.churn.clone() else {
            live.inc(K::MembersLost);
            self.shared.state.store(GONE, Ordering::Relaxed);
            return false;
        };
        if !planned {
            // Closed by the server (or broken), not dropped by a storm.
            live.inc(K::UnplannedCloses);
        }
        self.conn = None;
        self.shared.away.store(1, Ordering::Relaxed);
        let dropped_at = mono_ns();
        let mut attempt: u32 = 0;
        loop {
            let cap = churn.backoff_base_ns.saturating_mul(1u64 << attempt.min(30)).min(churn.backoff_max_ns).max(1);
            let delay = self.rng.random_range(0..=cap);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_nanos(delay)) => {}
                _ = self.ctx.stop.cancelled() => return false,
            }
            let opened = tokio::select! {
                o = self.open(token, Some(self.last_seq)) => o,
                _ = self.ctx.stop.cancelled() => return false,
            };
            match opened {
                Ok((conn, seq, more)) => {
                    self.conn = Some(conn);
                    self.replay_upto = seq;
                    self.room.final_seq.fetch_max(seq, Ordering::Relaxed);
                    if more {
                        live.inc(K::ReplayMore);
                    }
                    live.inc(K::Reconnects);
                    live.record(h::RECONNECT, mono_ns() - dropped_at);
                    self.shared.away.store(0, Ordering::Relaxed);
                    return true;
                }
                Err(_) => {
                    live.inc(K::ReconnectFailures);
                    attempt += 1;
                }
            }
        }
    }
}

fn short(e: &str) -> String {
    let e: String = e.chars().take(80).collect();
    // Keep the key stable across sessions: drop numbers (ports, refs).
    e.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        let b = stamp(123, 45, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(stamps_of(&b), Some((123, 45)));
        assert_eq!(stamp(u64::MAX, u64::MAX, 10).len(), 40);
        assert_eq!(stamps_of("short"), None);
    }
}
