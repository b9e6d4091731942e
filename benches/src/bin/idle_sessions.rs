//! System bench: server memory per idle session. Reads the server's RSS,
//! opens N authenticated sessions each joined to one of R rooms, waits for
//! the server to settle, reads RSS again: (after − before) / N.
//!
//! Run it on the same machine as the server (it reads /proc/PID/status).
//! Past ~18,000 sessions use several processes: each may open at most
//! 20,000 files here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use viche_benches::{mint_token, rss_kib};
use viche_client::{Connection, Encoding};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long)]
    secret: String,
    /// PID of the viche server to measure.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// How far each connection goes: `connect` (WebSocket only), `hello`
    /// (authenticated), `join` (authenticated and in a room).
    #[arg(long, default_value = "join")]
    stage: String,
    /// How long to hold the sessions after the last one joined.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let before_kib = rss_kib(args.server_pid)?;
    let run_id = std::process::id();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut joins = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let (url, secret, sem, rooms, stage) =
            (args.url.clone(), args.secret.clone(), sem.clone(), args.rooms, args.stage.clone());
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let mut conn = Connection::connect(&url, Encoding::MsgPack).await?;
            if stage != "connect" {
                conn.hello(&mint_token(&secret, &format!("i{run_id}u{i}"))).await?;
            }
            if stage == "join" {
                conn.join(&format!("idle{run_id}-{}", i % rooms), None).await?;
            }
            anyhow::Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(args.sessions);
    for j in joins {
        conns.push(j.await??);
    }
    println!("{} sessions joined in {:.1} s", conns.len(), started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let after_kib = rss_kib(args.server_pid)?;
    let per_session_b = (after_kib.saturating_sub(before_kib) * 1024) as f64 / args.sessions as f64;
    println!(
        "server RSS: before {before_kib} KiB, after {after_kib} KiB, {per_session_b:.0} B per session ({:.2} KiB)",
        per_session_b / 1024.0
    );
    drop(conns);
    Ok(())
}
