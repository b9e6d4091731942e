//! Running out of file descriptors (EMFILE) must not kill the server or
//! spin its accept loop: the error is counted, accepting backs off, the
//! open sessions keep working, and new connections are accepted again once
//! descriptors are free.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat has a command") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_keeps_sessions_and_recovers() {
    let server = Server::start_with(Opts { max_open_files: Some(96), ..Opts::default() }).await;
    let pid = server.pid();
    let token = server.user("alice").await;
    let mut alice = server.connect(&token).await;
    alice.join("fd", None).await.unwrap();

    // Hold raw TCP connections until the server has no descriptor left:
    // the kernel completes their handshakes, accept() then fails.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(("127.0.0.1", server.port())).expect("the kernel accepts into the backlog"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) < 90 {
        assert!(Instant::now() < deadline, "the server never reached its descriptor limit ({} open)", open_fds(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // At the limit: the accept loop must not spin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_used = cpu_seconds(pid) - cpu_before;
    assert!(cpu_used < 0.5, "the server used {cpu_used:.2} s of CPU in 2 s at EMFILE: the accept loop spins");

    // The open session is still served.
    alice.ping().await.expect("ping on an open session at EMFILE");
    let ack = alice.send("fd", "still here", "c1").await.expect("send on an open session at EMFILE");
    assert_eq!(ack.seq, 1);
    let msg = alice.recv_msg(T).await.unwrap();
    assert_eq!(msg.body, "still here");

    // Free the descriptors: new connections are accepted again, and the
    // errors were counted.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Ok(r) = server.http().get_raw("/metrics", None).await {
            if r.status == 200 {
                break r.body;
            }
        }
        assert!(Instant::now() < deadline, "the server accepts connections again once descriptors are free");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let emfile: f64 = metrics
        .lines()
        .find(|l| l.starts_with("viche_accept_errors_total{") && l.contains("kind=\"emfile\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(emfile >= 1.0, "viche_accept_errors_total{{kind=\"emfile\"}} counted the failures; metrics:\n{metrics}");
    let mut bob = server.session("bob").await;
    bob.join("fd", None).await.expect("a new session works after recovery");
}
