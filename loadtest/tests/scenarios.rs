//! Each scenario of viche-load, short and small, against a real `viche`
//! (the debug build next to this test's executable, built if missing),
//! asserting the report's invariants: nothing lost, no gap, no duplicate,
//! no error, and figures present and sane. A few seconds each (`hostile`
//! and `soak`, about ten). Each report's floor is measured for half a
//! second (`--floor-duration 0.5`); `floor` runs alone, without a server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use viche_load::report::{c, h, FloorFigures, HostileKind, Report};

const SECRET: &str = "viche-load-test-secret-0123456789";

/// The `viche` binary: `target/debug/viche` beside this test's
/// `target/debug/deps/` (`cargo test --workspace` builds it for the
/// gateway's tests); when it is not there, built with cargo into a target
/// dir of its own (`target/viche-load-server/`), so that this build does
/// not wait on the lock of the `cargo test` that runs us.
fn viche_bin() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let bin = profile_dir.join("viche");
    if bin.is_file() {
        return bin;
    }
    let own_target = profile_dir.parent().expect("target").join("viche-load-server");
    let own_bin = own_target.join("debug").join("viche");
    if !own_bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(cargo)
            .args(["build", "-p", "viche-gateway", "--bin", "viche", "--target-dir"])
            .arg(&own_target)
            .current_dir(root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of viche failed");
    }
    assert!(own_bin.is_file(), "no viche at {} nor {}", bin.display(), own_bin.display());
    own_bin
}

/// A `viche` on a free loopback port with its own data dir; killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let bin = viche_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--jwt-secret", SECRET])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .env("RUST_LOG", "warn");
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("VICHE_")) {
                cmd.env_remove(k);
            }
            let mut child = cmd.spawn().expect("starting viche");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if http_status(port, "/healthz") == Some(200) {
                    return Server { child, port, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("viche did not start");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// The options every run here gets: a short floor.
const FLOOR: [&str; 2] = ["--floor-duration", "0.5"];

/// Runs viche-load with `args` (plus --json, --no-progress, --check and a
/// short floor) and returns its report; fails the test on a non-zero exit.
fn load(server: &Server, args: &[&str]) -> Report {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_viche-load"));
    cmd.args(args)
        .args(FLOOR)
        .args(["--url", &server.url(), "--no-progress", "--check", "--json"])
        .arg(&json)
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd.output().expect("running viche-load");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "viche-load {args:?} failed ({:?}) after {:?}:\n{text}",
        out.status,
        started.elapsed()
    );
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the --json file")).expect("a report");
    assert!(report.problems.is_empty(), "problems: {:?}\n{text}", report.problems);
    assert!(text.contains("problems"), "the summary table is printed:\n{text}");
    report
}

fn count(r: &Report, name: &str) -> u64 {
    r.counters.get(name).copied().unwrap_or(0)
}

/// The invariants of every traffic scenario.
fn assert_clean_traffic(r: &Report, connections: u64) {
    assert_eq!(count(r, c::CONNECTIONS_OPENED), connections);
    assert_eq!(count(r, c::CONNECT_FAILURES), 0);
    let sends = count(r, c::SENDS);
    assert!(sends > 0, "something was sent");
    assert_eq!(count(r, c::ACKS), sends, "every send acknowledged");
    assert_eq!(count(r, c::SEND_ERRORS) + count(r, c::SENDS_UNANSWERED), 0);
    assert_eq!((r.loss.lost, r.loss.gaps, r.loss.duplicates), (0, 0, 0), "{:?}", r.loss);
    assert!(r.loss.expected > 0 && r.loss.received == r.loss.expected, "{:?}", r.loss);
    assert!(
        r.errors_by_code.is_empty() && r.closes_by_code.is_empty(),
        "{:?} {:?}",
        r.errors_by_code,
        r.closes_by_code
    );
    let lat = &r.latency[h::LATENCY];
    assert!(lat.count > 0);
    assert!(
        0.0 < lat.p50_ms && lat.p50_ms <= lat.p99_ms && lat.p99_ms <= lat.max_ms && lat.max_ms < 10_000.0,
        "{lat:?}"
    );
    assert!(r.latency[h::LATENCY_FROM_DUE].p50_ms >= lat.p50_ms, "due→deliver includes the send's lateness");
    assert_eq!(r.histograms[h::LATENCY].len(), lat.count, "the histogram travels with the report");
    // Open loop at the asked rate: everything due in the window went out.
    assert!(r.rates.offered_sends_per_s > 0.0);
    assert!(
        (r.rates.achieved_sends_per_s - r.rates.offered_sends_per_s).abs() <= 0.5 * r.rates.offered_sends_per_s + 2.0,
        "{:?}",
        r.rates
    );
    assert!(r.rates.deliveries_per_s > 0.0);
    assert!(!r.timeline.is_empty());
    // The server's figures over the window.
    assert!(r.server.source.starts_with("proc:"), "server found by its port: {:?}", r.server);
    let cpu = r.server.cpu_seconds.expect("server CPU");
    assert!((0.0..60.0).contains(&cpu));
    assert!(r.server.cpu_us_per_delivery.is_some() && r.server.deliveries.unwrap_or(0) > 0, "{:?}", r.server);
    // Beside it, the floor measured in the same invocation, or why there is none.
    match &r.floor {
        Some(f) => assert_floor_beside(r, f),
        None => assert!(r.server.floor_missing.is_some(), "{:?}", r.server),
    }
}

/// A floor measured after a run's window: at its delivery rate, to as many
/// sockets as it had sessions, every byte received, and the ratio given.
fn assert_floor_beside(r: &Report, f: &FloorFigures) {
    assert_eq!(f.connections, count(r, c::CONNECTIONS_TARGET));
    let window_rate = r.server.deliveries.unwrap_or(0) as f64 / r.window_s;
    assert!((f.offered_per_s - window_rate).abs() < 1e-6, "{} vs {window_rate}", f.offered_per_s);
    assert!(f.deliveries > 0 && f.us_per_delivery > 0.0, "{f:?}");
    assert_eq!((f.bytes_read, f.bytes_unwritten), (f.bytes_written, 0), "{f:?}");
    assert_eq!(f.bytes_written, f.deliveries_total * f.frame_bytes);
    assert_eq!(r.server.floor_us_per_delivery, Some(f.us_per_delivery));
    let ratio = r.server.ratio_to_floor.expect("the ratio to the floor");
    assert!((ratio - r.server.cpu_us_per_delivery.unwrap() / f.us_per_delivery).abs() < 1e-9);
}

#[test]
fn fanout_small_run_is_clean_and_plots() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("latency.svg");
    let r = load(
        &server,
        &[
            "fanout",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--members",
            "4",
            "--senders",
            "2",
            "--rate",
            "10",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--seed",
            "7",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(r.scenario, "fanout");
    assert_eq!(r.processes, 1);
    assert_clean_traffic(&r, 8);
    // 2 rooms × 2 senders × 10/s over 2 s, 4 members each.
    assert!((r.rates.offered_sends_per_s - 40.0).abs() < 1e-6, "{:?}", r.rates);
    assert_eq!(r.loss.expected, count(&r, c::SENDS) * 4);
    assert_eq!(r.params["rooms"], 2);
    let plot = std::fs::read_to_string(&svg).expect("the --plot file");
    assert!(plot.starts_with("<svg") && plot.contains("p99"), "an SVG with the percentiles");
    // Without --mix: sends only, and no second session.
    assert_eq!(r.operations.keys().collect::<Vec<_>>(), vec!["send"], "{:?}", r.operations.keys());
    let send = &r.operations["send"];
    assert_eq!((send.performed, send.answered), (count(&r, c::SENDS), count(&r, c::ACKS)));
    assert_eq!(send.deliveries.as_ref().map(|d| (d.expected, d.received)), Some((r.loss.expected, r.loss.received)));
    assert_eq!(send.latency["deliver"], r.latency[h::LATENCY]);
    // The floor: of the server's mean frame over the window.
    let floor = r.floor.as_ref().expect("the floor beside the server's CPU per delivery");
    let mean = r.server.frame_bytes_mean.expect("the server's mean frame");
    assert_eq!(floor.frame_bytes, mean.round() as u64);
    assert!(floor.frame_bytes_source.contains("/metrics"), "{}", floor.frame_bytes_source);
    // The store's commits over the same window: a share at or under each
    // bound, growing with the bound (every send was committed).
    let mut commits: Vec<(f64, f64)> =
        r.server.commit_within.iter().map(|(le, share)| (le.parse().expect("a bound in ms"), *share)).collect();
    commits.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(!commits.is_empty(), "the commit latency distribution beside send→deliver");
    assert!(commits.windows(2).all(|w| w[0].1 <= w[1].1) && commits.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
    assert!(commits.last().unwrap().1 > 0.0, "{commits:?}");
    // Which side ran out of CPU: both sides' busy shares, and a verdict.
    let sat = r.saturation.as_ref().expect("the saturation verdict beside the CPU figures");
    let cpus = viche_load::floor::allowed_cpus(None).expect("this process's CPUs").len() as u64;
    assert_eq!(sat.server_cpus, Some(cpus), "the test server runs unpinned: {sat:?}");
    assert!(sat.server_busy.is_some_and(|b| b > 0.0) && sat.generator_busy > 0.0, "{sat:?}");
    assert!(["server", "generator", "both", "neither"].contains(&sat.saturated.as_str()), "{sat:?}");
}

/// The figures of every kind of a `--mix` run: each performed, answered,
/// delivered to every member (or pushed, for reads) without loss, timed,
/// and in the table. `members` is the room size.
fn assert_every_kind_reported(r: &Report, text: &str, members: u64) {
    let ops = &r.operations;
    assert_eq!(ops.keys().map(String::as_str).collect::<Vec<_>>(), vec!["edit", "react", "read", "send"]);
    let mut delivering_acks = 0;
    for (name, op) in ops {
        assert!(op.performed > 0, "{name}: {op:?}");
        assert_eq!((op.answered, op.errors, op.unanswered), (op.performed, 0, 0), "{name}: {op:?}");
        assert!(op.offered_per_s > 0.0 && op.achieved_per_s > 0.0, "{name}: {op:?}");
        if name == "read" {
            let p = op.pushes.as_ref().expect("read pushes");
            assert!(p.expected > 0 && p.received >= p.expected, "{p:?}");
            assert_eq!((p.lost, p.unmatched, p.duplicates), (0, 0, 0), "{p:?}");
            assert!(op.deliveries.is_none());
            for key in ["ok", "push"] {
                let s = &op.latency[key];
                assert!(s.count > 0 && 0.0 < s.p50_ms && s.p50_ms <= s.p99_ms && s.max_ms < 10_000.0, "{key}: {s:?}");
            }
        } else {
            let d = op.deliveries.as_ref().expect("deliveries");
            // Every member joined before the first send: each sees every acknowledged seq of the kind.
            assert_eq!(d.expected, op.answered * members, "{name}: {d:?}");
            assert_eq!((d.received, d.lost, d.gaps, d.duplicates), (d.expected, 0, 0, 0), "{name}: {d:?}");
            delivering_acks += op.answered;
            for key in ["deliver", "deliver_from_due", "ack"] {
                let s = &op.latency[key];
                assert!(s.count > 0 && 0.0 < s.p50_ms && s.p50_ms <= s.p99_ms && s.max_ms < 10_000.0, "{key}: {s:?}");
            }
            assert!(op.latency["deliver_from_due"].p50_ms >= op.latency["deliver"].p50_ms, "{name}");
        }
    }
    // The stream: messages, edits and reactions share the rooms' seqs, and nothing is missing from it.
    assert_eq!(r.loss.expected, delivering_acks * members, "{:?}", r.loss);
    assert_eq!((r.loss.received, r.loss.lost, r.loss.gaps, r.loss.duplicates), (r.loss.expected, 0, 0, 0));
    assert_eq!(ops["send"].performed, count(r, c::SENDS), "a send keeps its old counters");
    assert_eq!(ops["send"].latency["deliver"], r.latency[h::LATENCY], "a message's latency is the headline");
    for key in [h::EDIT_LATENCY, h::EDIT_ACK, h::REACT_LATENCY, h::REACT_ACK, h::READ_OK, h::READ_PUSH] {
        assert!(!r.histograms[key].is_empty(), "{key} travels with the report");
    }
    for label in ["operations/s", "edit→deliver ms", "edit→ack ms", "react→deliver ms", "read→ok ms", "read→push ms"]
    {
        assert!(text.contains(label), "{label} in the table:\n{text}");
    }
}

#[test]
fn fanout_mix_of_edits_reactions_and_reads_is_delivered_and_reported() {
    let server = Server::start(&[]);
    let (r, text) = load_unchecked(
        &server,
        &[
            "fanout",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--members",
            "4",
            "--senders",
            "2",
            "--rate",
            "10",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--seed",
            "5",
            "--mix",
            "send=40,edit=20,react=25,read=15",
            "--check",
        ],
    );
    assert!(r.problems.is_empty(), "problems: {:?}\n{text}", r.problems);
    assert_eq!(r.params["mix"], "send=40,edit=20,react=25,read=15");
    // 2 rooms × 4 members, and a second session for each of the 4 senders.
    assert_eq!(count(&r, c::CONNECTIONS_OPENED), 12);
    assert_eq!(count(&r, c::CONNECT_FAILURES), 0);
    assert!(
        r.errors_by_code.is_empty() && r.closes_by_code.is_empty(),
        "{:?} {:?}",
        r.errors_by_code,
        r.closes_by_code
    );
    assert_every_kind_reported(&r, &text, 4);
    // The rate is every operation's: 2 rooms × 2 senders × 10/s.
    let offered: f64 = r.operations.values().map(|o| o.offered_per_s).sum();
    assert!((offered - 40.0).abs() < 1e-6, "{offered}");
}

#[test]
fn fanout_mix_over_two_workers_keeps_each_reader_with_its_second_session() {
    let server = Server::start(&[]);
    let (r, text) = load_unchecked(
        &server,
        &[
            "fanout",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--members",
            "3",
            "--senders",
            "2",
            "--rate",
            "10",
            "--duration",
            "2.5",
            "--warmup",
            "0.5",
            "--workers",
            "2",
            "--mix",
            "send=40,edit=20,react=20,read=20",
            "--check",
        ],
    );
    assert_eq!(r.processes, 2);
    assert!(r.problems.is_empty(), "problems: {:?}\n{text}", r.problems);
    assert_eq!(count(&r, c::CONNECTIONS_OPENED), 10);
    assert_every_kind_reported(&r, &text, 3);
}

#[test]
fn fanout_over_two_workers_and_source_addresses_merges() {
    let server = Server::start(&[]);
    let r = load(
        &server,
        &[
            "fanout",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "3",
            "--members",
            "3",
            "--senders",
            "1",
            "--rate",
            "10",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--workers",
            "2",
            "--source-ips",
            "127.0.0.2-127.0.0.3",
        ],
    );
    assert_eq!(r.processes, 2, "two worker reports merged");
    assert_clean_traffic(&r, 9);
    assert_eq!(r.loss.expected, count(&r, c::SENDS) * 3);
    assert!((r.rates.offered_sends_per_s - 30.0).abs() < 1e-6, "{:?}", r.rates);
}

#[test]
fn dm_pairs_deliver_to_both_sides() {
    let server = Server::start(&["--registrations-burst", "1000"]);
    let r = load(&server, &["dm", "--pairs", "3", "--rate", "5", "--duration", "2", "--warmup", "0.5", "--no-floor"]);
    assert_clean_traffic(&r, 6);
    assert_eq!((r.floor.as_ref(), r.server.floor_missing.as_deref()), (None, Some("not measured (--no-floor)")));
    // Each DM reaches the recipient and the sender's own session.
    assert_eq!(r.loss.expected, 2 * count(&r, c::SENDS));
}

#[test]
fn connections_report_memory_per_session() {
    let server = Server::start(&[]);
    let r = load(
        &server,
        &[
            "connections",
            "--jwt-secret",
            SECRET,
            "--sessions",
            "200",
            "--rooms",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.5",
        ],
    );
    assert_eq!(count(&r, c::CONNECTIONS_OPENED), 200);
    assert_eq!(count(&r, c::CONNECT_FAILURES), 0);
    assert_eq!(r.latency[h::CONNECT].count, 200);
    assert!(r.closes_by_code.is_empty(), "sessions held: {:?}", r.closes_by_code);
    assert_eq!(r.server.sessions, Some(200));
    let per = r.server.rss_per_session_bytes.expect("RSS per session");
    assert!(per.abs() < 1024.0 * 1024.0, "a sane figure: {per} B per session");
}

#[test]
fn churn_resumes_without_gaps_or_duplicates() {
    let server = Server::start(&[]);
    let r = load(
        &server,
        &[
            "churn",
            "--jwt-secret",
            SECRET,
            "--clients",
            "30",
            "--rooms",
            "2",
            "--senders",
            "1",
            "--rate",
            "10",
            "--storm-every",
            "0.8",
            "--backoff-ms",
            "50",
            "--backoff-max-ms",
            "400",
            "--duration",
            "2.5",
            "--warmup",
            "0.3",
        ],
    );
    assert_clean_traffic(&r, 32);
    let drops = count(&r, c::DROPS);
    assert!(drops >= 30, "at least one storm dropped every client: {drops}");
    assert_eq!(count(&r, c::RECONNECTS), drops, "every dropped client came back");
    assert_eq!(r.latency[h::RECONNECT].count, drops);
}

#[test]
fn login_registers_and_logs_in() {
    let server = Server::start(&["--registrations-burst", "1000"]);
    let r = load(&server, &["login", "--users", "6", "--concurrency", "2", "--duration", "60", "--warmup", "0"]);
    assert_eq!((count(&r, c::REGISTRATIONS), count(&r, c::LOGINS), count(&r, c::HTTP_FAILURES)), (6, 6, 0));
    assert_eq!(r.latency[h::REGISTER].count, 6);
    assert_eq!(r.latency[h::LOGIN].count, 6);
    assert!(r.rates.registrations_per_s > 0.0 && r.rates.logins_per_s > 0.0, "{:?}", r.rates);
}

/// Runs viche-load with `args` (plus --json, --no-progress, without
/// --check) and returns its report and its output; fails the test on a
/// non-zero exit.
fn load_unchecked(server: &Server, args: &[&str]) -> (Report, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_viche-load"))
        .args(args)
        .args(FLOOR)
        .args(["--url", &server.url(), "--no-progress", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("running viche-load");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "viche-load {args:?} failed ({:?}):\n{text}", out.status);
    let report = serde_json::from_str(&std::fs::read_to_string(&json).expect("the --json file")).expect("a report");
    (report, text)
}

fn outcomes_matching(k: &HostileKind, pat: &str) -> u64 {
    k.outcomes.iter().filter(|(o, _)| o.contains(pat)).map(|(_, n)| n).sum()
}

#[test]
fn hostile_compares_the_normal_users_with_a_clean_phase() {
    // A failed-login burst of one, so that the flood meets 429 within its
    // few seconds even on a loaded machine: argon2 paces the attempts, and
    // once only 3 got through in the whole phase (a burst of 3 met no 429).
    let server = Server::start(&["--registrations-burst", "1000", "--failed-logins-burst", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("hostile.svg");
    let (r, text) = load_unchecked(
        &server,
        &[
            "hostile",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--members",
            "5",
            "--senders",
            "1",
            "--rate",
            "10",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--non-readers",
            "4",
            "--non-reader-history-rate",
            "20",
            "--slowloris",
            "4",
            "--slowloris-interval-ms",
            "200",
            "--login-flood-tasks",
            "4",
            "--login-flood-rate",
            "40",
            "--storm-clients",
            "3",
            "--storm-hold-ms",
            "150",
            "--junk-sessions",
            "2",
            "--junk-rate",
            "16",
            "--login-probe-rate",
            "2",
            "--hostile-source-ips",
            "127.0.0.2-127.0.0.5",
            "--seed",
            "3",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(r.scenario, "hostile");
    let hs = r.hostile.as_ref().expect("the hostile section");
    // The normal users, both phases: everything sent arrived, once, in order.
    for (phase, rep) in [("clean", &*hs.clean), ("hostile", &r)] {
        assert_eq!(count(rep, c::CONNECTIONS_OPENED), 10, "{phase}");
        assert!(count(rep, c::SENDS) > 0 && count(rep, c::ACKS) == count(rep, c::SENDS), "{phase}");
        assert_eq!((rep.loss.lost, rep.loss.gaps, rep.loss.duplicates), (0, 0, 0), "{phase}: {:?}", rep.loss);
        assert!(rep.loss.expected > 0 && rep.loss.received == rep.loss.expected, "{phase}: {:?}", rep.loss);
        assert!(rep.latency[h::LATENCY].count > 0 && rep.latency[h::LATENCY].p99_ms > 0.0, "{phase}");
    }
    let cmp = &hs.comparison;
    assert!(cmp.nothing_lost, "{cmp:?}");
    assert_eq!(cmp.clean.latency.p99_ms, hs.clean.latency[h::LATENCY].p99_ms);
    assert_eq!(cmp.hostile.latency.p99_ms, r.latency[h::LATENCY].p99_ms);
    let ratio = cmp.p99_ratio.expect("a p99 ratio");
    assert!((ratio - cmp.hostile.latency.p99_ms / cmp.clean.latency.p99_ms).abs() < 1e-9);
    assert_eq!(cmp.goal_met, cmp.p99_within_goal && cmp.nothing_lost);
    assert_eq!(cmp.p99_within_goal, ratio <= 2.0);
    assert_eq!(r.problems.iter().any(|p| p.contains("p99")), !cmp.p99_within_goal, "{:?}", r.problems);
    // What the hostile clients observed.
    let k = |name: &str| hs.clients.get(name).unwrap_or_else(|| panic!("{name} in {:?}", hs.clients.keys()));
    let n = |kind: &HostileKind, key: &str| kind.counters.get(key).copied().unwrap_or(0);
    let non_readers = k("non_readers");
    assert_eq!(n(non_readers, "joined"), 4, "{non_readers:?}");
    assert_eq!(non_readers.outcomes.values().sum::<u64>(), 4, "each non-reader's end: {non_readers:?}");
    assert!(n(non_readers, "history requests left unread") > 0, "{non_readers:?}");
    let slowloris = k("slowloris");
    assert!(n(slowloris, "connections") >= 4, "{slowloris:?}");
    assert!(slowloris.outcomes.values().sum::<u64>() >= 4, "{slowloris:?}");
    let flood = k("login_flood");
    assert!(outcomes_matching(flood, "real user: HTTP 401") > 0, "{flood:?}");
    assert!(outcomes_matching(flood, "HTTP 429") > 0, "the flood is refused: {flood:?}");
    assert_eq!(outcomes_matching(flood, "HTTP 200"), 0, "{flood:?}");
    let storm = k("reconnect_storm");
    assert!(n(storm, "joins with since") > 0, "{storm:?}");
    assert_eq!((n(storm, "gaps"), n(storm, "duplicates")), (0, 0), "{storm:?}");
    let junk = k("junk_frames");
    assert!(n(junk, "answered: error bad_frame") > 0, "{junk:?}");
    assert!(n(junk, "answered: pong") > 0, "the junk sessions are still served: {junk:?}");
    assert!(outcomes_matching(junk, "closed 1009 after oversized") > 0, "{junk:?}");
    for kind in hs.clients.values() {
        assert_eq!(n(kind, "tasks cut off at the time bound"), 0, "{kind:?}");
    }
    // The probe's correct logins, from the normal users' address, in both phases.
    for phase in ["clean", "hostile"] {
        assert!(n(&hs.login_probe[phase], "attempts") > 0, "{phase}: {:?}", hs.login_probe);
    }
    assert!(n(&hs.login_probe["clean"], "ok") > 0, "{:?}", hs.login_probe);
    // The server's own view of the hostile phase.
    let view = &hs.server_view["hostile"];
    assert!(view.keys().any(|k| k.contains("bad_frame")), "{view:?}");
    assert!(text.contains("goal") && text.contains("non-readers") && text.contains("login flood"), "{text}");
    let plot = std::fs::read_to_string(&svg).expect("the --plot file");
    assert!(plot.contains("clean phase") && plot.contains("hostile phase"));
}

#[test]
fn soak_samples_rss_and_reports_its_growth_per_operation() {
    let server = Server::start(&["--registrations-burst", "1000"]);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("soak.svg");
    let r = load(
        &server,
        &[
            "soak",
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--members",
            "4",
            "--senders",
            "1",
            "--rate",
            "5",
            "--dm-pairs",
            "2",
            "--dm-rate",
            "2",
            "--churn-clients",
            "6",
            "--storm-every",
            "1",
            "--storm-fraction",
            "1",
            "--backoff-ms",
            "50",
            "--backoff-max-ms",
            "300",
            "--registrations-rate",
            "2",
            "--logins-rate",
            "4",
            "--history-rate",
            "10",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--check-rss-growth-mib",
            "1024",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(r.scenario, "soak");
    // 2 rooms × 4 members, 6 churn clients, 2 DM pairs.
    assert_eq!(count(&r, c::CONNECTIONS_OPENED), 18);
    assert_eq!((r.loss.lost, r.loss.gaps, r.loss.duplicates), (0, 0, 0), "{:?}", r.loss);
    assert!(r.loss.expected > 0 && r.loss.received == r.loss.expected, "{:?}", r.loss);
    assert!(count(&r, c::RECONNECTS) >= 6, "the churn clients resumed");
    let soak = r.soak.as_ref().expect("the soak section");
    assert!(soak.samples.len() >= 5, "{:?}", soak.samples);
    assert!(soak.samples.iter().all(|s| s.rss_bytes.is_some_and(|b| b > 0)), "{:?}", soak.samples);
    assert!(soak.rss_source.starts_with("proc:"), "{}", soak.rss_source);
    assert!(soak.samples.windows(2).all(|w| w[0].t_s < w[1].t_s && w[0].operations <= w[1].operations));
    for kind in ["sends", "logins", "registrations", "history pages", "reconnects"] {
        assert!(soak.operations_by_kind.get(kind).copied().unwrap_or(0) > 0, "{kind}: {:?}", soak.operations_by_kind);
    }
    assert_eq!(soak.operations_after_warmup, soak.operations_by_kind.values().sum::<u64>());
    let growth = soak.rss_growth_bytes.expect("the growth");
    assert_eq!(Some(growth), soak.rss_at_end_bytes.zip(soak.rss_at_warmup_end_bytes).map(|(b, a)| b as i64 - a as i64));
    let per = soak.rss_growth_per_1000_ops_bytes.expect("per 1,000 operations");
    assert!((per - growth as f64 / soak.operations_after_warmup as f64 * 1000.0).abs() < 1e-6);
    assert!(count(&r, c::HISTORY_PAGES_WS) > 0 && count(&r, c::HISTORY_PAGES_HTTP) > 0);
    assert!(r.errors_by_code.is_empty(), "{:?}", r.errors_by_code);
    let plot = std::fs::read_to_string(&svg).expect("the --plot file");
    assert!(plot.contains("RSS"), "the RSS plot");
}

#[test]
fn refuses_a_remote_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_viche-load"))
        .args(["fanout", "--jwt-secret", SECRET, "--url", "http://10.1.2.3:8080", "--no-progress"])
        .output()
        .expect("running viche-load");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

/// Runs `viche-load floor` with `args` (plus --json) and returns its
/// report and its output; fails the test on a non-zero exit.
fn floor(args: &[&str]) -> (Report, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("floor.json");
    let out = Command::new(env!("CARGO_BIN_EXE_viche-load"))
        .arg("floor")
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("running viche-load floor");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "viche-load floor {args:?} failed ({:?}):\n{text}", out.status);
    let report = serde_json::from_str(&std::fs::read_to_string(&json).expect("the --json file")).expect("a report");
    (report, text)
}

#[test]
fn floor_writes_one_frame_per_delivery_and_reads_every_byte() {
    let common =
        ["--connections", "50", "--rate", "2000", "--duration", "1.5", "--warmup", "0.5", "--reader-cpu", "none"];
    let (r, text) = floor(&[&common[..], &["--sender-cpu", "0"]].concat());
    assert_eq!(r.scenario, "floor");
    let f = r.floor.as_ref().expect("the floor's figures");
    assert_eq!((f.connections, f.frames_per_write, f.sender_cpu, f.reader_cpu), (50, 1, Some(0), None));
    // The default frame: a real `msg` of a 100-byte body with its header.
    let frame = viche_load::floor::msg_frame_bytes(100, viche_protocol::Encoding::MsgPack) as u64;
    assert_eq!(f.frame_bytes, frame);
    // Open loop at the rate: rate × window deliveries, give or take the bounds' wakeups.
    assert!((f.window_s - 1.5).abs() < 0.5, "{f:?}");
    let expected = 2000.0 * f.window_s;
    assert!((f.deliveries as f64 - expected).abs() <= 0.1 * expected + 20.0, "{} of {expected}", f.deliveries);
    assert_eq!(f.writes, f.deliveries);
    // Every byte written was read; nothing was left unwritten.
    assert_eq!((f.bytes_read, f.bytes_unwritten, f.sockets_short), (f.bytes_written, 0, 0), "{f:?}");
    assert_eq!(f.bytes_written, f.deliveries_total * frame);
    assert!(f.deliveries_total >= f.deliveries);
    assert!(f.us_per_delivery > 0.0 && f.sender_cpu_s > 0.0, "{f:?}");
    assert!((f.us_per_delivery - f.sender_cpu_s * 1e6 / f.deliveries as f64).abs() < 1e-6);
    assert!(text.contains("(the floor)") && text.contains("problems"), "{text}");

    // Four frames a write, of a given size: a quarter of the writes.
    let (r, _) =
        floor(&[&common[..], &["--sender-cpu", "none", "--frames-per-write", "4", "--frame-bytes", "100"]].concat());
    let f = r.floor.as_ref().expect("the floor's figures");
    assert_eq!((f.frame_bytes, f.frames_per_write, f.sender_cpu), (100, 4, None));
    assert_eq!(f.deliveries, 4 * f.writes);
    assert_eq!(f.bytes_read, f.bytes_written);
    assert_eq!(f.bytes_written, f.deliveries_total * 100);
}

#[test]
fn floor_refuses_more_connections_than_file_descriptors() {
    let out = Command::new(env!("CARGO_BIN_EXE_viche-load"))
        .args(["floor", "--connections", "1000000", "--duration", "1"])
        .output()
        .expect("running viche-load floor");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file descriptors") && err.contains("fewer connections"), "{err}");
}
