//! Memory that stays bounded under repeated work: the server's resident
//! memory (from /proc, exact on this machine) before and after many
//! logins. Each argon2id check needs 19 MiB; when every check allocated its
//! own on whichever thread ran it, 120 logins left the server at 1.1 GB.

use futures_util::future::join_all;

use crate::common::*;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_logins_leave_memory_where_it_was() {
    let server = Server::start().await;
    server.register("alice").await;
    let before = rss_bytes(server.pid());
    for _round in 0..20 {
        let logins = (0..10).map(|_| server.http().login("alice", PASSWORD));
        for result in join_all(logins).await {
            result.expect("a login with the right password");
        }
    }
    let after = rss_bytes(server.pid());
    let growth_mib = after.saturating_sub(before) as f64 / (1024.0 * 1024.0);
    // The password pool's 2 × 19 MiB were allocated at start (and may be
    // touched only now); anything per login would show as hundreds of MiB.
    assert!(growth_mib < 64.0, "200 logins grew the server by {growth_mib:.1} MiB ({before} → {after} bytes)");
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task").count()
}

/// Blocking work (the embedded store's reads and commits) runs on at most
/// `--blocking-threads` threads: a burst of store calls waits for them
/// rather than adding a thread per call. Unbounded (tokio's 512), a soak's
/// opening burst left 200 threads that steady load never let go, and the
/// RSS grew with their allocator caches for as long as it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_store_calls_adds_at_most_the_blocking_threads() {
    const BLOCKING_THREADS: usize = 4;
    let server = Server::start_with(Opts::with_args(&[
        "--blocking-threads",
        &BLOCKING_THREADS.to_string(),
        "--history-per-second",
        "100000",
        "--history-burst",
        "100000",
    ]))
    .await;
    let token = server.user("alice").await;
    let rooms: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    let before = threads(server.pid());
    for _round in 0..3 {
        let pages = (0..200).map(|i| server.http().history(&token, &rooms[i % rooms.len()], None, Some(10)));
        for page in join_all(pages).await {
            page.expect("a history page");
        }
    }
    let after = threads(server.pid());
    assert!(
        after <= before + BLOCKING_THREADS,
        "600 history pages, 200 at once, took the server from {before} to {after} threads (at most {BLOCKING_THREADS} more)"
    );
}
