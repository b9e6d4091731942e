//! The floor: what this machine spends to hand one delivery to the kernel
//! when nothing else is done. A server CPU-per-delivery figure means
//! little alone (the machine, its kernel and its loopback set most of it),
//! so every report that gives one also gives this floor, measured in the
//! same invocation at the same rate, connection count and frame size, and
//! the ratio of the two; `viche-load floor` measures it alone.
//!
//! N loopback connections; one sender thread (pinned like the server)
//! writes one frame per delivery (or K frames per write) round-robin over
//! the N sockets, open loop at the rate: a late write goes out at once,
//! never skipped. A write that would block is a stall: its rest waits and
//! goes out at the socket's next turn, so nothing is dropped. One reader
//! thread (pinned like the generator) drains every socket with epoll (mio)
//! and counts bytes. The floor is the sender thread's own CPU time over
//! the window (CLOCK_THREAD_CPUTIME_ID) per delivery. [`measure`] is the
//! one front door, for the scenario and for the other reports alike.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use viche_protocol::{encode_server, Encoding, Msg, ServerFrame};

use crate::cli::{Common, EncodingArg, FloorArgs};
use crate::clock::{mono_ns, pin_thread, raise_nofile_limit, thread_cpu_ns, unix_ms};
use crate::report::{c, FloorFigures, Report};

/// File descriptors kept free beside the 2 per connection (the listener,
/// epoll, stdio, the run's own sockets and files).
const FD_MARGIN: u64 = 64;
/// Bytes waiting on stalled sockets, all together, past which the run
/// stops: the reader is not keeping up and the figure would mean nothing.
const PENDING_MAX_BYTES: usize = 64 << 20;
/// After the window, stalled bytes may take this long to be written, and
/// the reader this long to read what was written.
const FLUSH_NS: u64 = 5_000_000_000;
const DRAIN_NS: u64 = 5_000_000_000;
/// From the threads' start to the first write.
const START_NS: u64 = 50_000_000;
/// One read of the reader, bytes.
const READ_BUF_BYTES: usize = 64 << 10;
/// The reader's longest wait for readiness, so that it notices the window's
/// bounds and the sender's end.
const POLL_WAIT: Duration = Duration::from_millis(10);
/// The sender's default tick: it wakes at most once per tick and writes
/// everything due (20 writes a wakeup at 20,000/s).
pub const TICK_US: u64 = 1000;
/// The floor beside another report: its warm-up, at most.
const BESIDE_WARMUP_S: f64 = 1.0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct FloorSpec {
    pub connections: usize,
    /// Deliveries per second, all sockets together.
    pub rate_per_s: f64,
    pub frame_bytes: usize,
    /// Where `frame_bytes` came from, in words (for the report).
    pub frame_bytes_source: String,
    pub frames_per_write: usize,
    /// The sender wakes at most once per tick (0: at each write's due time).
    pub tick_us: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// `None`: the thread is not pinned.
    pub sender_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
}

// ----- pacing and accounting -------------------------------------------------

/// When write `index` is due, in ns after the start: K deliveries per
/// write at `rate_per_s` deliveries per second.
pub fn due_ns(index: u64, frames_per_write: usize, rate_per_s: f64) -> u64 {
    (index as f64 * frames_per_write as f64 * 1e9 / rate_per_s).ceil() as u64
}

/// How many writes are due `elapsed_ns` after the start (write 0 is due at
/// once): the first index whose [`due_ns`] is later than `elapsed_ns`.
pub fn writes_due(elapsed_ns: u64, frames_per_write: usize, rate_per_s: f64) -> u64 {
    let mut n = (elapsed_ns as f64 * rate_per_s / (frames_per_write as f64 * 1e9)).floor() as u64 + 1;
    // The estimate in floating point may be one off near a due time.
    while n > 0 && due_ns(n - 1, frames_per_write, rate_per_s) > elapsed_ns {
        n -= 1;
    }
    while due_ns(n, frames_per_write, rate_per_s) <= elapsed_ns {
        n += 1;
    }
    n
}

/// CPU per delivery in µs (none without a delivery).
pub fn us_per_delivery(cpu_ns: u64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| cpu_ns as f64 / 1e3 / deliveries as f64)
}

/// The server's CPU per delivery as a multiple of the floor's (none
/// without a positive floor).
pub fn ratio_to_floor(server_us: f64, floor_us: f64) -> Option<f64> {
    (floor_us.is_finite() && floor_us > 0.0 && server_us.is_finite()).then(|| server_us / floor_us)
}

// ----- the frame -------------------------------------------------------------

/// Bytes of the header of an unmasked WebSocket frame (the server's) with
/// `payload_bytes` of payload (RFC 6455 §5.2).
pub fn ws_header_bytes(payload_bytes: usize) -> usize {
    match payload_bytes {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// A `msg` as the fan-out scenario's receivers get it: the names of
/// `cli::plan` (run tags are `lt` and 7 hex digits, rooms `{tag}-r{r}`,
/// users `{tag}u{index}`, cids `{tag}-{n}`) for a room of 20 and a user
/// of 2,000, a seq of a few hundred messages into a room, a timestamp of
/// this era (ms), and a body as the senders stamp it.
pub fn standard_msg(body_bytes: usize) -> Msg {
    let tag = "lt0000000";
    Msg {
        room: format!("{tag}-r10"),
        seq: 1000,
        from: format!("{tag}u1000"),
        body: if body_bytes >= 40 { crate::traffic::stamp(0, 0, body_bytes) } else { "x".repeat(body_bytes) },
        cid: format!("{tag}-50"),
        ts: 1_760_000_000_000,
        ..Msg::default()
    }
}

/// Bytes on the wire of a server's `msg` frame of a `body_bytes` body:
/// encoded by the protocol crate's encoder (as the server encodes its
/// deliveries), plus the WebSocket header the server frames it with.
pub fn msg_frame_bytes(body_bytes: usize, encoding: Encoding) -> usize {
    let payload = encode_server(&ServerFrame::Msg(standard_msg(body_bytes)), encoding).len();
    payload + ws_header_bytes(payload)
}

fn encoding_of(e: EncodingArg) -> Encoding {
    match e {
        EncodingArg::Msgpack => Encoding::MsgPack,
        EncodingArg::Json => Encoding::Json,
    }
}

// ----- pinning ---------------------------------------------------------------

/// Parses a CPU list as /proc shows it (`0-1,4`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The CPUs a process (`None`: this one) may run on (/proc/PID/status,
/// `Cpus_allowed_list`).
pub fn allowed_cpus(pid: Option<u32>) -> Option<Vec<usize>> {
    let path = pid.map_or("/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    parse_cpu_list(status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?)
}

/// The one CPU a process (`None`: this one) is pinned to, if it is pinned to one.
pub fn pinned_cpu(pid: Option<u32>) -> Option<usize> {
    let list = allowed_cpus(pid)?;
    (list.len() == 1).then(|| list[0])
}

fn pin(cpu: Option<usize>, who: &str) -> anyhow::Result<()> {
    match cpu {
        Some(cpu) => pin_thread(cpu).with_context(|| format!("pinning the floor's {who} to CPU {cpu}")),
        None => Ok(()),
    }
}

// ----- the measurement -------------------------------------------------------

/// Refuses a connection count whose sockets would not fit under the
/// open-files limit (raised to its hard limit first).
fn check_fds(connections: usize) -> anyhow::Result<()> {
    let limit = raise_nofile_limit();
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let need = 2 * connections as u64 + FD_MARGIN;
    if open + need > limit {
        bail!(
            "{connections} connections need {need} file descriptors (2 a connection, {FD_MARGIN} to spare) and only {} \
             are free: the open-files limit (raised to its hard limit) is {limit}, {open} are open; give fewer \
             connections",
            limit.saturating_sub(open)
        );
    }
    Ok(())
}

/// N connected loopback pairs: (the sender's ends, the reader's ends),
/// pair `i` at index `i` of both, non-blocking, the sender's without Nagle
/// (as the server's sockets).
fn pairs(n: usize) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("a loopback listener for the floor")?;
    let addr = listener.local_addr()?;
    let (mut senders, mut readers) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let reader = TcpStream::connect(addr).with_context(|| format!("connecting loopback pair {i} of {n}"))?;
        // One connection at a time in the accept queue: the next accepted is it.
        let (sender, peer) = listener.accept().with_context(|| format!("accepting loopback pair {i} of {n}"))?;
        if peer != reader.local_addr()? {
            bail!("loopback pair {i}: accepted {peer}, expected {}", reader.local_addr()?);
        }
        sender.set_nodelay(true)?;
        sender.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        senders.push(sender);
        readers.push(reader);
    }
    Ok((senders, readers))
}

/// The run's moments, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy)]
struct Times {
    start_ns: u64,
    window_start_ns: u64,
    window_end_ns: u64,
}

/// What the sender tells the reader.
struct Shared {
    /// Set (after `written`) when the sender stopped, normally or not.
    done: AtomicBool,
    /// Bytes the sender wrote in all.
    written: AtomicU64,
}

/// Marks `done` when the sender's thread ends, whichever way.
struct DoneOnDrop<'a>(&'a Shared);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::SeqCst);
    }
}

/// A moment of the sender: when, its CPU, its writes and wakeups so far.
#[derive(Clone, Copy, Default)]
struct Mark {
    at_ns: u64,
    cpu_ns: u64,
    writes: u64,
    wakeups: u64,
}

struct SenderOut {
    start: Mark,
    end: Mark,
    writes: u64,
    late_max_ns: u64,
    stalls: u64,
    written: Vec<u64>,
    unwritten: u64,
}

/// One socket's turn: the frame (after whatever waits on it) in one write;
/// what the socket does not take waits for its next turn. Returns the
/// bytes written and whether the write stalled.
fn turn(stream: &mut TcpStream, pending: &mut Vec<u8>, frame: &[u8]) -> std::io::Result<(usize, bool)> {
    let result = if pending.is_empty() {
        stream.write(frame)
    } else {
        pending.extend_from_slice(frame);
        stream.write(pending)
    };
    let n = match result {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
        Err(e) => return Err(e),
    };
    if pending.is_empty() {
        pending.extend_from_slice(&frame[n..]);
    } else {
        pending.drain(..n);
    }
    Ok((n, !pending.is_empty()))
}

fn send(
    mut streams: Vec<TcpStream>,
    spec: &FloorSpec,
    frame: &[u8],
    t: Times,
    shared: &Shared,
) -> anyhow::Result<SenderOut> {
    let _done = DoneOnDrop(shared);
    pin(spec.sender_cpu, "sender")?;
    let n = streams.len();
    let (k, rate) = (spec.frames_per_write, spec.rate_per_s);
    let tick_ns = spec.tick_us * 1000;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut pending_bytes = 0usize;
    let mut written = vec![0u64; n];
    let (mut writes, mut wakeups, mut stalls, mut late_max_ns) = (0u64, 0u64, 0u64, 0u64);
    let mut start: Option<Mark> = None;
    let end = loop {
        let now = mono_ns();
        let mark = |at_ns| Mark { at_ns, cpu_ns: thread_cpu_ns(), writes, wakeups };
        if start.is_none() && now >= t.window_start_ns {
            start = Some(mark(now));
        }
        if now >= t.window_end_ns {
            break mark(now);
        }
        wakeups += 1;
        let due = if now >= t.start_ns { writes_due(now - t.start_ns, k, rate) } else { 0 };
        while writes < due {
            if start.is_some() {
                late_max_ns = late_max_ns.max(now.saturating_sub(t.start_ns + due_ns(writes, k, rate)));
            }
            let i = (writes % n as u64) as usize;
            let before = pending[i].len();
            let (w, stalled) = turn(&mut streams[i], &mut pending[i], frame)
                .with_context(|| format!("writing to loopback connection {i}"))?;
            pending_bytes = pending_bytes - before + pending[i].len();
            written[i] += w as u64;
            stalls += u64::from(stalled);
            writes += 1;
        }
        if pending_bytes > PENDING_MAX_BYTES {
            bail!(
                "{pending_bytes} bytes wait on stalled loopback sockets: the reader does not keep up with {rate}/s \
                 (give a lower rate, or pin the reader elsewhere)"
            );
        }
        // Wake at the next write's due time, a tick from now at the
        // earliest, and at the window's bounds.
        let mut next = (t.start_ns + due_ns(writes, k, rate)).max(now + tick_ns);
        for bound in [t.window_start_ns, t.window_end_ns] {
            if bound > now {
                next = next.min(bound);
            }
        }
        let now = mono_ns();
        if next > now {
            std::thread::sleep(Duration::from_nanos(next - now));
        }
    };
    let start = start.unwrap_or(end);
    // What stalled sockets still hold goes out now, within a bound.
    let flush_end_ns = mono_ns() + FLUSH_NS;
    loop {
        let mut left = 0usize;
        for (i, p) in pending.iter_mut().enumerate().filter(|(_, p)| !p.is_empty()) {
            let w = match streams[i].write(p) {
                Ok(w) => w,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
                Err(e) => return Err(e).with_context(|| format!("writing to loopback connection {i}")),
            };
            p.drain(..w);
            written[i] += w as u64;
            left += p.len();
        }
        if left == 0 || mono_ns() >= flush_end_ns {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let unwritten = pending.iter().map(|p| p.len() as u64).sum();
    shared.written.store(written.iter().sum(), Ordering::SeqCst);
    Ok(SenderOut { start, end, writes, late_max_ns, stalls, written, unwritten })
}

struct ReaderOut {
    read: Vec<u64>,
    cpu_ns: u64,
}

fn read(streams: Vec<TcpStream>, spec: &FloorSpec, t: Times, shared: &Shared) -> anyhow::Result<ReaderOut> {
    use mio::{Events, Interest, Poll, Token};
    pin(spec.reader_cpu, "reader")?;
    let mut poll = Poll::new().context("epoll for the floor's reader")?;
    let mut socks = Vec::with_capacity(streams.len());
    for (i, s) in streams.into_iter().enumerate() {
        let mut s = mio::net::TcpStream::from_std(s);
        poll.registry().register(&mut s, Token(i), Interest::READABLE).context("registering a loopback socket")?;
        socks.push(s);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut read = vec![0u64; socks.len()];
    let mut total = 0u64;
    let (mut cpu_start, mut cpu_end) = (None, None);
    let mut done_at: Option<u64> = None;
    let hard_end_ns = t.window_end_ns + FLUSH_NS + DRAIN_NS + 1_000_000_000;
    loop {
        match poll.poll(&mut events, Some(POLL_WAIT)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting on the loopback sockets"),
        }
        for event in events.iter() {
            let i = event.token().0;
            // Edge-triggered: read until the socket has nothing more.
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(got) => {
                        read[i] += got as u64;
                        total += got as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).with_context(|| format!("reading loopback connection {i}")),
                }
            }
        }
        let now = mono_ns();
        if cpu_start.is_none() && now >= t.window_start_ns {
            cpu_start = Some(thread_cpu_ns());
        }
        if cpu_end.is_none() && now >= t.window_end_ns {
            cpu_end = Some(thread_cpu_ns());
        }
        if shared.done.load(Ordering::SeqCst) {
            let done_at = *done_at.get_or_insert(now);
            if total >= shared.written.load(Ordering::SeqCst) || now >= done_at + DRAIN_NS {
                break;
            }
        }
        if now >= hard_end_ns {
            break;
        }
    }
    let cpu_ns = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    Ok(ReaderOut { read, cpu_ns })
}

/// Measures the floor as `spec` says: opens the pairs, runs the sender and
/// the reader for the warm-up and the window, then checks that every byte
/// written was read. Blocks for the whole run (warm-up + window, plus at
/// most a few seconds to flush and drain); call it off the async runtime.
pub fn measure(spec: &FloorSpec) -> anyhow::Result<FloorFigures> {
    if spec.connections == 0 || spec.frames_per_write == 0 || spec.frame_bytes == 0 {
        bail!("the floor needs connections, frames per write and frame bytes ≥ 1");
    }
    if !(spec.rate_per_s.is_finite() && spec.rate_per_s > 0.0) {
        bail!("the floor needs a rate > 0 (got {})", spec.rate_per_s);
    }
    check_fds(spec.connections)?;
    let (senders, readers) = pairs(spec.connections)?;
    // The bytes matter to the kernel only by their count.
    let frame = vec![b'x'; spec.frame_bytes * spec.frames_per_write];
    let start_ns = mono_ns() + START_NS;
    let window_start_ns = start_ns + spec.warmup.as_nanos() as u64;
    let t = Times { start_ns, window_start_ns, window_end_ns: window_start_ns + spec.duration.as_nanos() as u64 };
    let shared = Shared { done: AtomicBool::new(false), written: AtomicU64::new(0) };
    let (sent, got) = std::thread::scope(|s| -> anyhow::Result<_> {
        let reader = std::thread::Builder::new()
            .name("floor-reader".into())
            .spawn_scoped(s, || read(readers, spec, t, &shared))
            .context("starting the floor's reader")?;
        let sender = std::thread::Builder::new()
            .name("floor-sender".into())
            .spawn_scoped(s, || send(senders, spec, &frame, t, &shared));
        let sent = match sender {
            Ok(h) => h.join().map_err(|_| anyhow::anyhow!("the floor's sender panicked")),
            Err(e) => {
                shared.done.store(true, Ordering::SeqCst);
                Err(e).context("starting the floor's sender")
            }
        };
        let got = reader.join().map_err(|_| anyhow::anyhow!("the floor's reader panicked"));
        Ok((sent??, got??))
    })?;
    Ok(figures(spec, &sent, &got))
}

/// The figures of one measurement.
fn figures(spec: &FloorSpec, sent: &SenderOut, got: &ReaderOut) -> FloorFigures {
    let k = spec.frames_per_write as u64;
    let writes = sent.end.writes - sent.start.writes;
    let deliveries = writes * k;
    let window_s = sent.end.at_ns.saturating_sub(sent.start.at_ns) as f64 / 1e9;
    let sender_cpu_ns = sent.end.cpu_ns.saturating_sub(sent.start.cpu_ns);
    let bytes_written: u64 = sent.written.iter().sum();
    let bytes_read: u64 = got.read.iter().sum();
    let sockets_short = sent.written.iter().zip(&got.read).filter(|(w, r)| w != r).count() as u64;
    let achieved_per_s = if window_s > 0.0 { deliveries as f64 / window_s } else { 0.0 };
    let mut problems = Vec::new();
    if bytes_read != bytes_written {
        problems.push(format!(
            "{bytes_written} bytes written and {bytes_read} read ({sockets_short} sockets differ): not everything \
             written was received"
        ));
    }
    if sent.unwritten > 0 {
        problems.push(format!("{} bytes of stalled writes never went out", sent.unwritten));
    }
    if achieved_per_s < 0.95 * spec.rate_per_s {
        problems.push(format!(
            "the sender achieved {achieved_per_s:.0} deliveries/s of the {:.0} offered: this floor is of a lower rate",
            spec.rate_per_s
        ));
    }
    FloorFigures {
        connections: spec.connections as u64,
        offered_per_s: spec.rate_per_s,
        frame_bytes: spec.frame_bytes as u64,
        frame_bytes_source: spec.frame_bytes_source.clone(),
        frames_per_write: k,
        tick_us: spec.tick_us,
        sender_cpu: spec.sender_cpu,
        reader_cpu: spec.reader_cpu,
        warmup_s: spec.warmup.as_secs_f64(),
        window_s,
        deliveries,
        writes,
        wakeups: sent.end.wakeups - sent.start.wakeups,
        achieved_per_s,
        sender_cpu_s: sender_cpu_ns as f64 / 1e9,
        us_per_delivery: us_per_delivery(sender_cpu_ns, deliveries).unwrap_or(0.0),
        reader_cpu_s: got.cpu_ns as f64 / 1e9,
        reader_us_per_delivery: us_per_delivery(got.cpu_ns, deliveries).unwrap_or(0.0),
        late_max_ms: sent.late_max_ns as f64 / 1e6,
        stalls: sent.stalls,
        deliveries_total: sent.writes * k,
        bytes_written,
        bytes_read,
        bytes_unwritten: sent.unwritten,
        sockets_short,
        problems,
    }
}

// ----- the scenario, and the floor beside other reports ---------------------

/// `viche-load floor`: measures, prints the table, writes `--json`.
pub async fn scenario(a: FloorArgs) -> anyhow::Result<u8> {
    a.validate().map_err(anyhow::Error::msg)?;
    let started_unix_ms = unix_ms();
    let (frame_bytes, frame_bytes_source) = match a.frame_bytes {
        Some(b) => (b, "--frame-bytes".to_string()),
        None => (
            msg_frame_bytes(a.body_bytes, encoding_of(a.encoding)),
            format!(
                "a server `msg` frame of a {}-byte body (protocol crate's encoder + WebSocket header)",
                a.body_bytes
            ),
        ),
    };
    let spec = FloorSpec {
        connections: a.connections,
        rate_per_s: a.rate,
        frame_bytes,
        frame_bytes_source,
        frames_per_write: a.frames_per_write,
        tick_us: a.tick_us,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        sender_cpu: a.sender_cpu.0,
        reader_cpu: a.reader_cpu.0,
    };
    eprintln!("viche-load floor: {}", describe(&spec));
    let floor = tokio::task::spawn_blocking(move || measure(&spec)).await.context("the floor's threads")??;
    let report = Report {
        tool: "viche-load".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: "floor".into(),
        command: std::env::args().collect(),
        params: serde_json::to_value(&a).unwrap_or_default(),
        started_unix_ms,
        host: crate::run::host(),
        processes: 1,
        warmup_s: a.warmup,
        window_s: floor.window_s,
        problems: floor.problems.clone(),
        floor: Some(floor),
        ..Report::default()
    };
    crate::run::write_report(&report, a.json.as_deref(), None)?;
    Ok(0)
}

fn describe(spec: &FloorSpec) -> String {
    let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("CPU {c}"));
    format!(
        "{:.0} deliveries/s to {} loopback sockets, {}-byte frames, {} per write, {:.1} s after {:.1} s warm-up; sender \
         {}, reader {}",
        spec.rate_per_s,
        spec.connections,
        spec.frame_bytes,
        spec.frames_per_write,
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64(),
        cpu(spec.sender_cpu),
        cpu(spec.reader_cpu)
    )
}

/// The floor beside a report that gives server CPU per delivery: measured
/// now (after the run's traffic), at the window's delivery rate, the run's
/// connection count and the server's mean frame over the window (else a
/// `msg` of the run's body size), pinned as the server and this process
/// are (or as `--floor-sender-cpu` and `--floor-reader-cpu` say). `None`
/// when the report gives no server CPU per delivery; `Err` says why the
/// floor is missing.
pub async fn beside(report: &Report, common: &Common, server_pid: Option<u32>) -> Option<Result<FloorFigures, String>> {
    report.server.cpu_us_per_delivery?;
    if common.no_floor {
        return Some(Err("not measured (--no-floor)".into()));
    }
    let window_s = report.window_s.max(1e-9);
    let rate_per_s = match report.server.deliveries {
        Some(d) if d > 0 => d as f64 / window_s,
        _ => report.rates.deliveries_per_s,
    };
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        return Some(Err("not measured: no delivery in the window".into()));
    }
    let (frame_bytes, frame_bytes_source) = match report.server.frame_bytes_mean {
        Some(mean) if mean >= 1.0 => {
            (mean.round() as usize, "the server's mean frame over the window (/metrics: bytes out / frames out)".into())
        }
        _ => {
            let body = report.params.get("body_bytes").and_then(|b| b.as_u64()).unwrap_or(100) as usize;
            (
                msg_frame_bytes(body, encoding_of(common.encoding)),
                format!("a server `msg` frame of a {body}-byte body (protocol crate's encoder + WebSocket header)"),
            )
        }
    };
    let spec = FloorSpec {
        connections: report.counters.get(c::CONNECTIONS_TARGET).copied().unwrap_or(0).max(1) as usize,
        rate_per_s,
        frame_bytes,
        frame_bytes_source,
        frames_per_write: 1,
        tick_us: TICK_US,
        warmup: Duration::from_secs_f64(common.floor_duration.min(BESIDE_WARMUP_S)),
        duration: Duration::from_secs_f64(common.floor_duration),
        sender_cpu: common.floor_sender_cpu.map_or_else(|| server_pid.and_then(|p| pinned_cpu(Some(p))), |c| c.0),
        reader_cpu: common.floor_reader_cpu.map_or_else(|| pinned_cpu(None), |c| c.0),
    };
    eprintln!("viche-load: measuring the floor: {}", describe(&spec));
    Some(match tokio::task::spawn_blocking(move || measure(&spec)).await {
        Ok(Ok(floor)) => Ok(floor),
        Ok(Err(e)) => Err(format!("not measured: {e:#}")),
        Err(e) => Err(format!("not measured: {e}")),
    })
}

/// Puts the floor (or why there is none) into a report: `server.floor_us_per_delivery`,
/// `server.ratio_to_floor` and `floor`, or `server.floor_missing`.
pub fn apply(report: &mut Report, floor: &Result<FloorFigures, String>) {
    match floor {
        Ok(f) => {
            report.server.floor_us_per_delivery = Some(f.us_per_delivery);
            report.server.ratio_to_floor =
                report.server.cpu_us_per_delivery.and_then(|s| ratio_to_floor(s, f.us_per_delivery));
            report.floor = Some(f.clone());
        }
        Err(why) => report.server.floor_missing = Some(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_due_on_an_open_loop_schedule() {
        // 20,000 deliveries/s, one a write: one every 50 µs, the first at once.
        assert_eq!(due_ns(0, 1, 20_000.0), 0);
        assert_eq!(due_ns(1, 1, 20_000.0), 50_000);
        assert_eq!(due_ns(20_000, 1, 20_000.0), 1_000_000_000);
        assert_eq!(writes_due(0, 1, 20_000.0), 1);
        assert_eq!(writes_due(49_999, 1, 20_000.0), 1);
        assert_eq!(writes_due(50_000, 1, 20_000.0), 2);
        // A second holds rate × 1 s writes (plus the one at its end).
        assert_eq!(writes_due(999_999_999, 1, 20_000.0), 20_000);
        // 4 frames a write: a quarter of the writes, each due 4 deliveries apart.
        assert_eq!(due_ns(1, 4, 20_000.0), 200_000);
        assert_eq!(writes_due(999_999_999, 4, 20_000.0), 5_000);
        // A rate that does not divide a second: due times round up, never early.
        assert_eq!(due_ns(1, 1, 3.0), 333_333_334);
        assert_eq!(writes_due(333_333_333, 1, 3.0), 1);
        assert_eq!(writes_due(333_333_334, 1, 3.0), 2);
    }

    #[test]
    fn writes_due_agrees_with_due_ns_everywhere() {
        for (rate, k) in [(20_000.0, 1), (7.0, 3), (123_456.7, 1), (0.5, 1), (80_000.0, 4)] {
            for e in (0..3_000_000_000u64).step_by(7_777_777).chain([1, 49_999, 50_000, 50_001]) {
                let n = writes_due(e, k, rate);
                assert!(n >= 1 && due_ns(n - 1, k, rate) <= e && due_ns(n, k, rate) > e, "{rate} {k} {e}: {n}");
            }
        }
    }

    #[test]
    fn per_delivery_and_ratio() {
        // 1.9 s of sender CPU over 200,000 deliveries: 9.5 µs each.
        assert_eq!(us_per_delivery(1_900_000_000, 200_000), Some(9.5));
        assert_eq!(us_per_delivery(5, 0), None);
        assert!((ratio_to_floor(17.2, 9.5).unwrap() - 1.8105).abs() < 1e-4);
        assert_eq!(ratio_to_floor(17.2, 0.0), None);
        assert_eq!(ratio_to_floor(17.2, f64::NAN), None);
    }

    #[test]
    fn the_default_frame_is_a_real_msg_with_its_header() {
        assert_eq!(
            (ws_header_bytes(125), ws_header_bytes(126), ws_header_bytes(65_535), ws_header_bytes(65_536)),
            (2, 4, 4, 10)
        );
        let msg = standard_msg(100);
        assert_eq!(msg.body.len(), 100);
        assert!(crate::traffic::stamps_of(&msg.body).is_some(), "stamped as the senders stamp");
        let payload = encode_server(&ServerFrame::Msg(msg.clone()), Encoding::MsgPack);
        assert_eq!(msg_frame_bytes(100, Encoding::MsgPack), payload.len() + 4);
        // The frame decodes as the server's `msg`.
        let back = viche_protocol::decode_server(&payload, Encoding::MsgPack).unwrap();
        assert_eq!(back, ServerFrame::Msg(msg));
        // About the 190 bytes of the first measurements, and larger in JSON.
        let bytes = msg_frame_bytes(100, Encoding::MsgPack);
        assert!((180..=200).contains(&bytes), "{bytes}");
        assert!(msg_frame_bytes(100, Encoding::Json) > bytes);
        assert!(msg_frame_bytes(1000, Encoding::MsgPack) > bytes + 890);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5\n"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        // This process: pinned to one CPU or not, its list parses.
        let _ = pinned_cpu(None);
    }

    #[test]
    fn a_turn_keeps_what_the_socket_did_not_take() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut reader, _) = listener.accept().unwrap();
        writer.set_nonblocking(true).unwrap();
        let frame = vec![7u8; 64 << 10];
        let mut pending = Vec::new();
        let (mut written, mut stalls, mut turns) = (0usize, 0, 0);
        // Nobody reads: the socket's buffers fill and writes stall.
        while stalls < 3 && turns < 10_000 {
            let (w, stalled) = turn(&mut writer, &mut pending, &frame).unwrap();
            written += w;
            stalls += usize::from(stalled);
            turns += 1;
        }
        assert!(stalls >= 3, "a socket nobody reads stalls");
        assert_eq!(written + pending.len(), turns * frame.len(), "every byte is written or waits");
        // Read it all: what waited goes out at the next turns.
        reader.set_nonblocking(true).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (got < turns * frame.len() || !pending.is_empty()) && std::time::Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !pending.is_empty() {
                        let w = writer.write(&pending).unwrap_or(0);
                        pending.drain(..w);
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, turns * frame.len());
    }
}
