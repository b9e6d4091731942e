//! System bench: R rooms × M members, S senders per room at a fixed rate,
//! against a running `viche`. Measures send→deliver latency (the sender's
//! send time to each member's arrival, one clock, one process), checks
//! that every message reached every member exactly once and in seq order.
//!
//! This is the small bench binary of the core issue; `viche-load` will
//! make it formal. Start the server with `--jwt-secret` and pass the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use viche_client::{ClientFrame, Connection, Encoding, Event, ServerFrame};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long)]
    secret: String,
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    #[arg(long, default_value_t = 100)]
    members: usize,
    #[arg(long, default_value_t = 5)]
    senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

static BASE: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    sent_measured: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    now_ns();
    let run_id = std::process::id();
    let total = args.rooms * args.members;
    println!("connecting {total} sessions ({} rooms × {} members)…", args.rooms, args.members);
    let ramp = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut joins = Vec::with_capacity(total);
    for room in 0..args.rooms {
        for member in 0..args.members {
            let (url, secret, sem) = (args.url.clone(), args.secret.clone(), semaphore.clone());
            joins.push(tokio::spawn(async move {
                let _permit = sem.acquire().await?;
                let user = format!("b{run_id}r{room}m{member}");
                let token = viche_bench_token(&secret, &user);
                let mut conn = Connection::open(&url, &token, Encoding::MsgPack).await?;
                let ok = conn.join(&format!("bench{run_id}-{room}"), None).await?;
                anyhow::Ok((room, member, conn, ok.seq))
            }));
        }
    }
    let mut conns = Vec::with_capacity(total);
    for j in joins {
        conns.push(j.await??);
    }
    println!("connected and joined in {:.1} s", ramp.elapsed().as_secs_f64());

    let totals = Arc::new(Totals::default());
    let stop_sending = Arc::new(AtomicBool::new(false));
    let measure_from_ns = now_ns() + args.warmup_s * 1_000_000_000;
    let end = Instant::now() + Duration::from_secs(args.warmup_s + args.duration_s);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let body_pad = "x".repeat(args.body_bytes.saturating_sub(24));
    let mut tasks = Vec::new();
    for (room, member, conn, start_seq) in conns {
        let sender = member < args.senders;
        let (totals, stop, pad) = (totals.clone(), stop_sending.clone(), body_pad.clone());
        let room_name = format!("bench{run_id}-{room}");
        tasks.push(tokio::spawn(run_member(
            conn,
            room_name,
            sender,
            interval,
            end,
            measure_from_ns,
            start_seq,
            totals,
            stop,
            pad,
        )));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in tasks {
        histogram.add(t.await?)?;
    }
    let sent = totals.sent.load(Ordering::Relaxed);
    let expected = sent * args.members as u64;
    let received = totals.received.load(Ordering::Relaxed);
    let secs = args.duration_s as f64;
    println!("sends: {sent} total, {:.0}/s measured", totals.sent_measured.load(Ordering::Relaxed) as f64 / secs);
    println!(
        "deliveries: {received} of {expected} expected ({} lost), {:.0}/s measured",
        expected.saturating_sub(received),
        histogram.len() as f64 / secs
    );
    println!(
        "gaps: {}, duplicates: {}, errors: {}",
        totals.gaps.load(Ordering::Relaxed),
        totals.duplicates.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed)
    );
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "send→deliver latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n = {})",
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.9)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max()),
        histogram.len()
    );
    Ok(())
}

fn viche_bench_token(secret: &str, user: &str) -> String {
    viche_benches::mint_token(secret, user)
}

#[allow(clippy::too_many_arguments)]
async fn run_member(
    mut conn: Connection,
    room: String,
    sender: bool,
    interval: Duration,
    end: Instant,
    measure_from_ns: u64,
    mut last_seq: u64,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    pad: String,
) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    // Spread senders' first sends over one interval.
    let offset = Duration::from_nanos(rand_offset(&room, interval));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    let drain_until = end + Duration::from_secs(3);
    loop {
        let sending = sender && Instant::now() < end && !stop.load(Ordering::Relaxed);
        tokio::select! {
            _ = tick.tick(), if sending => {
                n += 1;
                let sent_ns = now_ns();
                let body = format!("{sent_ns:020}:{pad}");
                let frame = ClientFrame::Send { req: n, room: room.clone(), body, cid: format!("{}-{n}", std::process::id()) };
                if conn.send_frame(&frame).await.is_err() {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                totals.sent.fetch_add(1, Ordering::Relaxed);
                if sent_ns >= measure_from_ns {
                    totals.sent_measured.fetch_add(1, Ordering::Relaxed);
                }
            }
            event = conn.next_frame(Duration::from_millis(250)) => match event {
                Ok(Event::Frame(ServerFrame::Msg(m))) => {
                    let arrived_ns = now_ns();
                    if m.seq <= last_seq {
                        totals.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if m.seq != last_seq + 1 {
                        totals.gaps.fetch_add(m.seq - last_seq - 1, Ordering::Relaxed);
                    }
                    last_seq = m.seq;
                    totals.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent_ns) = m.body.get(..20).and_then(|s| s.parse::<u64>().ok()) {
                        if sent_ns >= measure_from_ns {
                            let _ = histogram.record(arrived_ns.saturating_sub(sent_ns).max(1));
                        }
                    }
                }
                Ok(Event::Frame(ServerFrame::Error { .. })) => { totals.errors.fetch_add(1, Ordering::Relaxed); }
                Ok(Event::Frame(_)) => {}
                Ok(Event::Closed(_)) => { totals.errors.fetch_add(1, Ordering::Relaxed); break; }
                Err(e) if e.is_timeout() => {
                    if Instant::now() >= drain_until {
                        break;
                    }
                }
                Err(_) => { totals.errors.fetch_add(1, Ordering::Relaxed); break; }
            }
        }
    }
    let _ = conn.close().await;
    histogram
}

fn rand_offset(room: &str, interval: Duration) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(room.as_bytes());
    h.finish() % interval.as_nanos().max(1) as u64
}
