//! End-to-end test harness: runs the real `viche` binary on a free loopback
//! port with a fresh temporary data dir, and speaks to it with
//! `viche-client`.
//!
//! Shared by the crate's test binaries: `mongo.rs` and `prometheus.rs`
//! declare `mod common;`, and the end-to-end suite in `e2e/` includes this
//! file with `#[path = "../common/mod.rs"]`.
//!
//! Each test starts its own server (tests run in parallel). The server is
//! killed when the [`Server`] is dropped; if the test panicked, the tail of
//! the server's log is printed to help the diagnosis.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use viche_client::{Ack, AuthOk, ClientError, Connection, Encoding, Event, HttpClient, Msg, ServerFrame};

/// The HS256 secret every test server is started with.
pub const SECRET: &str = "viche-e2e-test-secret-0123456789abcdef";
/// The password of users made by [`Server::user`].
pub const PASSWORD: &str = "correct horse battery";
/// A generous bound for anything that should happen "soon" on a busy
/// 2-core machine. Tests never assert on speed.
pub const T: Duration = Duration::from_secs(30);
/// How long to watch for something that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(700);

/// Flags for a test server. `None` leaves the server's default.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub token_ttl: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub hello_timeout_ms: Option<u64>,
    pub outbox_max_frames: Option<u64>,
    pub outbox_max_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_frame_bytes: Option<u64>,
    /// More `--flag value` arguments, verbatim.
    pub extra_args: Vec<String>,
    /// Use MongoDB at this URI (each server gets a database of its own).
    /// Absent: MongoDB at `VICHE_TEST_MONGO_URI` when `VICHE_TEST_STORE` is
    /// `mongo`, else the embedded store.
    pub mongo_uri: Option<String>,
    /// With `mongo_uri`: this database instead of one of the server's own
    /// (the nodes of a cluster share one).
    pub mongo_db: Option<String>,
    /// Start the server with this limit of open files (`ulimit -n`).
    pub max_open_files: Option<u64>,
    /// Failpoints, as the `FAILPOINTS` environment variable of a server
    /// built with the `failpoints` feature (engine/src/faults.rs).
    pub failpoints: Option<String>,
    /// Start on a copy of this backup directory (its files are copied into
    /// the data dir first): a restore.
    pub restore_from: Option<PathBuf>,
    /// Start with `--admin-token` [`ADMIN_TOKEN`].
    pub admin: bool,
}

/// The `--admin-token` of servers started with [`Opts::admin`].
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// The MongoDB (FerretDB) the tests may use, if scripts/test.sh started one.
pub fn mongo_uri() -> Option<String> {
    std::env::var("VICHE_TEST_MONGO_URI").ok().filter(|u| !u.is_empty())
}

/// True when the generic end-to-end suite runs on MongoDB (scripts/test.sh's second pass).
pub fn suite_on_mongo() -> bool {
    std::env::var("VICHE_TEST_STORE").is_ok_and(|s| s == "mongo")
}

/// The MongoDB URI, or `None` to skip (never under CI).
pub fn mongo_or_skip(test: &str) -> Option<String> {
    match mongo_uri() {
        Some(uri) => Some(uri),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: VICHE_TEST_MONGO_URI is not set under CI; run scripts/test.sh")
        }
        None => {
            eprintln!("{test}: skipped, VICHE_TEST_MONGO_URI is not set (scripts/test.sh starts FerretDB and sets it)");
            None
        }
    }
}

/// A database name no other test server uses.
pub fn unique_db_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("e2e_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos)
}

impl Opts {
    /// The defaults, with these `--flag value` arguments.
    pub fn with_args(flags: &[&str]) -> Opts {
        Opts { extra_args: flags.iter().map(|f| f.to_string()).collect(), ..Opts::default() }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, v: Option<u64>| {
            if let Some(v) = v {
                args.push(flag.to_string());
                args.push(v.to_string());
            }
        };
        push("--token-ttl", Some(self.token_ttl.unwrap_or(3600)));
        push("--heartbeat-ms", self.heartbeat_ms);
        push("--hello-timeout-ms", self.hello_timeout_ms);
        push("--outbox-max-frames", self.outbox_max_frames);
        push("--outbox-max-bytes", self.outbox_max_bytes);
        push("--max-body-bytes", self.max_body_bytes);
        push("--max-frame-bytes", self.max_frame_bytes);
        if self.admin {
            args.extend(["--admin-token".to_string(), ADMIN_TOKEN.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running `viche` process.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    opts: Opts,
    /// `--mongo-uri` and `--mongo-db` when this server runs on MongoDB; kept
    /// across restarts, like the data dir.
    mongo: Option<(String, String)>,
    port: u16,
    log: PathBuf,
    http: HttpClient,
}

fn free_port() -> u16 {
    // Bind port 0, read the port, release it. Another process could take it
    // before the server binds; `Server::start_with` then retries.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl Server {
    /// A server with default limits.
    pub async fn start() -> Server {
        Server::start_with(Opts::default()).await
    }

    /// A server with the given flags, ready (GET /healthz answered 200).
    pub async fn start_with(opts: Opts) -> Server {
        let dir = tempfile::Builder::new().prefix("viche-e2e-").tempdir().expect("creating a temp dir");
        std::fs::create_dir_all(dir.path().join("web")).expect("creating web dir");
        std::fs::write(dir.path().join("web").join("index.html"), "<!doctype html><title>viche test</title>")
            .expect("writing index.html");
        let log = dir.path().join("server.log");
        if let Some(backup) = &opts.restore_from {
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("creating the data dir");
            for entry in std::fs::read_dir(backup).expect("reading the backup") {
                let entry = entry.expect("a backup file");
                std::fs::copy(entry.path(), data.join(entry.file_name())).expect("copying a backup file");
            }
        }
        let uri = opts.mongo_uri.clone().or_else(|| if suite_on_mongo() { mongo_uri() } else { None });
        if suite_on_mongo() && uri.is_none() {
            panic!("VICHE_TEST_STORE=mongo needs VICHE_TEST_MONGO_URI (scripts/test.sh sets both)");
        }
        let mut server = Server {
            child: None,
            dir,
            mongo: uri.map(|u| (u, opts.mongo_db.clone().unwrap_or_else(unique_db_name))),
            opts,
            port: 0,
            log,
            http: HttpClient::new("http://127.0.0.1:1").expect("http client"),
        };
        server.spawn_ready().await;
        server
    }

    /// Spawns on a fresh free port and waits for /healthz; retries on
    /// another port if the process exits early (e.g. the port was taken).
    async fn spawn_ready(&mut self) {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = self.spawn(port);
            let http = HttpClient::with_timeout(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5))
                .expect("http client");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!("viche exited early with {status}: {}", self.log_tail(2000));
                    break;
                }
                if let Ok(resp) = http.get_raw("/healthz", None).await {
                    if resp.status == 200 {
                        self.port = port;
                        self.child = Some(child);
                        self.http = HttpClient::new(&format!("http://127.0.0.1:{port}")).expect("http client");
                        return;
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("viche did not answer /healthz within 60 s: {}", self.log_tail(4000));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("viche did not start: {last_err}");
    }

    fn spawn(&self, port: u16) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("opening the server log");
        let log2 = log.try_clone().expect("cloning the log handle");
        let mut cmd = match self.opts.max_open_files {
            None => Command::new(env!("CARGO_BIN_EXE_viche")),
            Some(n) => {
                // `exec` keeps the pid: the limit applies to viche itself.
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_viche"));
                sh
            }
        };
        // Only the flags below configure a test server, whatever the
        // environment of the test run says.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VICHE_") || key == "FAILPOINTS" {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--jwt-secret")
            .arg(SECRET)
            .arg("--web-dir")
            .arg(self.dir.path().join("web"))
            .args(self.opts.args())
            .args(
                self.mongo.iter().flat_map(|(uri, db)| {
                    ["--mongo-uri".to_string(), uri.clone(), "--mongo-db".to_string(), db.clone()]
                }),
            )
            .env("RUST_LOG", "info")
            .envs(self.opts.failpoints.iter().map(|spec| ("FAILPOINTS", spec.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .expect("spawning the viche binary")
    }

    /// The MongoDB URI and database of this server, when it runs on MongoDB.
    pub fn mongo(&self) -> Option<&(String, String)> {
        self.mongo.as_ref()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The `--web-dir` the server serves its static files from.
    pub fn web_dir(&self) -> PathBuf {
        self.dir.path().join("web")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("viche did not exit within 60 s of SIGTERM: {}", self.log_tail(4000));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server again on the same data dir (on a new port: read
    /// `base_url`/`ws_url` again).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn_ready().await;
    }

    /// Restarts (after kill -9) with other failpoints (`None`: none).
    pub async fn restart_with_failpoints(&mut self, failpoints: Option<&str>) {
        self.kill9();
        self.opts.failpoints = failpoints.map(String::from);
        self.spawn_ready().await;
    }

    /// The last `max` bytes of the server's output.
    pub fn log_tail(&self, max: u64) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    // ----- users and connections -------------------------------------------

    /// An admin API request (`path` under `/api/admin/`) with `token` as
    /// its Bearer token (none: no header); the status and the JSON body.
    pub async fn admin_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = client.request(method, format!("{}/api/admin/{path}", self.base_url()));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("an admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("an admin answer");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// An admin API request with [`ADMIN_TOKEN`].
    pub async fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        self.admin_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    /// Registers `name` with [`PASSWORD`] and returns its token.
    pub async fn user(&self, name: &str) -> String {
        self.register(name).await.token
    }

    pub async fn register(&self, name: &str) -> AuthOk {
        match self.http.register(name, PASSWORD).await {
            Ok(auth) => auth,
            Err(e) => panic!("registering {name}: {e}"),
        }
    }

    /// A MessagePack session for `token`, past `welcome`.
    pub async fn connect(&self, token: &str) -> Connection {
        self.connect_enc(token, Encoding::MsgPack).await
    }

    pub async fn connect_enc(&self, token: &str, encoding: Encoding) -> Connection {
        let mut conn = match Connection::open(&self.ws_url(), token, encoding).await {
            Ok(c) => c,
            Err(e) => panic!("opening a session: {e}"),
        };
        conn.set_timeout(T);
        conn
    }

    /// A WebSocket with no `hello` sent yet.
    pub async fn connect_raw(&self, encoding: Encoding) -> Connection {
        let mut conn = Connection::connect(&self.ws_url(), encoding).await.expect("connecting");
        conn.set_timeout(T);
        conn
    }

    /// Registers `name` and opens a MessagePack session for it.
    pub async fn session(&self, name: &str) -> Connection {
        let token = self.user(name).await;
        self.connect(&token).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- viche log (tail) -----\n{}\n----- end of viche log -----", self.log_tail(8000));
        }
    }
}

// ----- tokens ---------------------------------------------------------------

pub use viche_client::token::{now_s, Claims};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An HS256 token for `sub` expiring at `exp` (seconds), signed with `secret`.
pub fn mint_with(secret: &str, sub: &str, exp: u64) -> String {
    viche_client::token::mint(secret, sub, exp)
}

/// A valid token for `sub` (signed with the server's secret), expiring at `exp`.
pub fn mint(sub: &str, exp: u64) -> String {
    mint_with(SECRET, sub, exp)
}

/// Verifies a token the server issued with the test secret.
pub fn verify(token: &str) -> Claims {
    viche_client::token::verify(SECRET, token).expect("a server-issued token verifies with the secret")
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for c in chars.iter().take(chunk.len() + 1) {
            out.push(A[*c as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`) with otherwise valid claims.
pub fn mint_alg_none(sub: &str, exp: u64) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = serde_json::json!({ "sub": sub, "iat": now_s(), "exp": exp }).to_string();
    format!("{header}.{}.", b64url(claims.as_bytes()))
}

// ----- assertions -------------------------------------------------------------

/// Asserts the next events are an `error` with `code` (if `error` is
/// given) and then a close with `close_code`, skipping nothing else.
pub async fn expect_error_then_close(conn: &mut Connection, error: Option<&str>, close_code: u16) {
    let (close, frames) = conn.expect_close(T).await.expect("the connection closes");
    if let Some(code) = error {
        let found = frames.iter().any(|f| matches!(f, ServerFrame::Error { code: c, .. } if c.as_str() == code));
        assert!(found, "expected error {code} before the close, got {frames:?} then {close}");
    }
    assert_eq!(close.code, Some(close_code), "close code; frames before: {frames:?}; close: {close}");
}

/// Asserts that no frame accepted by `pred` arrives within [`QUIET`] (and
/// none is buffered). Other frames stay buffered.
pub async fn assert_none(conn: &mut Connection, what: &str, pred: impl FnMut(&ServerFrame) -> bool) {
    match conn.wait_for(QUIET, pred).await {
        Err(ClientError::Timeout { .. }) => {}
        Ok(frame) => panic!("unexpected {what}: {frame:?}"),
        Err(e) => panic!("while checking that no {what} arrives: {e}"),
    }
}

/// The server error code of a failed request, panicking on anything else.
pub fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Server { code, .. }) => code.as_str().to_string(),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Sends `n` messages to `room`, one at a time, retrying (same cid) after
/// `rate_limited`; returns the acks in order.
pub async fn send_n(conn: &mut Connection, room: &str, n: usize, prefix: &str) -> Vec<Ack> {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let cid = format!("{prefix}-{i}");
        let body = format!("{prefix} body {i}");
        acks.push(send_retrying(conn, room, &body, &cid).await);
    }
    acks
}

/// One `send`, retried after `rate_limited` (bounded: 2 minutes).
pub async fn send_retrying(conn: &mut Connection, room: &str, body: &str, cid: &str) -> Ack {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match conn.send(room, body, cid).await {
            Ok(ack) => return ack,
            Err(ClientError::Server { code: viche_client::ErrorCode::RateLimited, .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("send {cid} to {room}: {e}"),
        }
    }
}

/// Drains and returns every buffered or arriving `msg` until none arrives
/// for [`QUIET`].
pub async fn drain_msgs(conn: &mut Connection) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        match conn.recv_msg(QUIET).await {
            Ok(m) => out.push(m),
            Err(ClientError::Timeout { .. }) => return out,
            Err(e) => panic!("draining messages: {e}"),
        }
    }
}

/// Reads every page of a room's history over HTTP, returned oldest first.
pub async fn full_history_http(server: &Server, token: &str, room: &str) -> Vec<Msg> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = server.http().history(token, room, before, Some(100)).await.expect("history page");
        let more = page.more;
        let oldest = page.messages.last().map(|m| m.seq);
        all.extend(page.messages);
        match (more, oldest) {
            (true, Some(seq)) => before = Some(seq),
            _ => break,
        }
    }
    all.reverse();
    all
}

/// The next event must be a frame; returns it.
pub async fn next_frame(conn: &mut Connection) -> ServerFrame {
    match conn.next_frame(T).await {
        Ok(Event::Frame(f)) => f,
        Ok(Event::Closed(info)) => panic!("expected a frame, the connection {info}"),
        Err(e) => panic!("expected a frame: {e}"),
    }
}

/// The value of a series in a `/metrics` scrape (0 when absent).
pub async fn scrape_value(server: &Server, series: &str) -> f64 {
    let text = server.http().get_raw("/metrics", None).await.unwrap().body;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

pub fn seqs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// A real `nats-server` on a free loopback port (`.ci/run` installs
/// Debian's package; `VICHE_NATS_SERVER_BIN` names another), killed when
/// dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    /// Starts one on `port` (a restart after [`Nats::stop`]), or a free one.
    pub fn start(port: Option<u16>) -> Nats {
        Nats::start_with(port, &[])
    }

    /// Starts one with more `nats-server` arguments (`--user`, `--pass`).
    pub fn start_with(port: Option<u16>, args: &[&str]) -> Nats {
        let port = port.unwrap_or_else(free_port);
        let bin = std::env::var("VICHE_NATS_SERVER_BIN").unwrap_or_else(|_| {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("nats-server")
                .to_string()
        });
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (set VICHE_NATS_SERVER_BIN, or install nats-server): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
