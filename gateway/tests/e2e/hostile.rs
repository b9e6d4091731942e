//! Hostile clients at the edge (docs/operations.md, "Connection limits and
//! deadlines"): a WebSocket client that stops reading, HTTP requests and
//! responses that never finish, and one address that opens too many
//! connections. Each is met by its bound, and everyone else is served
//! meanwhile.
//!
//! The hostile clients are raw sockets driven by hand (a small receive
//! buffer, a request cut short), since a well-behaved client library
//! cannot misbehave on purpose. Server state is read from `/metrics` over
//! a fresh connection each time: a pooled keep-alive connection could be
//! the very one a short deadline has just closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use viche_client::{Connection, Encoding, ServerFrame};

use crate::common::*;

// ----- raw sockets -------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to the server from `local` (any loopback address
/// works as a source on Linux), with a receive buffer of `rcvbuf` bytes
/// when given (set before connecting, so the window is small from the start).
async fn tcp_from(server: &Server, local: IpAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let remote = SocketAddr::new(ip("127.0.0.1"), server.port());
    tokio::time::timeout(T, socket.connect(remote)).await.expect("connect in time").expect("connect")
}

/// Reads until the end of an HTTP response's head; returns its status and
/// the head.
async fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, stream.read(&mut byte)).await.expect("a response in time").expect("read");
        assert!(n > 0, "the connection closed before a response: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, head)
}

/// Asserts that the server closes `stream` (EOF or reset) within
/// [`T`], discarding whatever it still had buffered.
async fn assert_closed_by_server(stream: &mut TcpStream, what: &str) {
    let deadline = Instant::now() + T;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: the server did not close the connection within {T:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

/// `GET path` on a fresh connection; the response's status and body.
async fn get(server: &Server, path: &str) -> (u16, String) {
    let mut stream = tcp_from(server, ip("127.0.0.1"), None).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut response)).await.expect("a response in time").unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one series of `/metrics` (`name{label="value"}`), 0 when absent.
async fn metric(server: &Server, series: &str) -> f64 {
    let (status, text) = get(server, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

/// Waits (at most [`T`]) until `series` is at least `min`.
async fn wait_metric(server: &Server, series: &str, min: f64) {
    let deadline = Instant::now() + T;
    loop {
        let v = metric(server, series).await;
        if v >= min {
            return;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {v}, below {min}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One masked client frame (a client must mask what it sends).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one server frame (unmasked): its opcode and payload.
async fn read_server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.expect("a frame head");
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            stream.read_exact(&mut l).await.unwrap();
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            stream.read_exact(&mut l).await.unwrap();
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.expect("a frame payload");
    (head[0] & 0x0f, payload)
}

/// Reads JSON text frames until one satisfies `done`.
async fn read_json_until(stream: &mut TcpStream, mut done: impl FnMut(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (opcode, payload) = tokio::time::timeout(left, read_server_frame(stream)).await.expect("a frame in time");
        if opcode == 0x1 {
            let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            if done(&value) {
                return;
            }
        }
    }
}

/// Upgrades `stream` to a WebSocket (`extra` headers added); the status.
async fn upgrade(stream: &mut TcpStream, extra: &str) -> u16 {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(stream).await.0
}

/// A JSON session that joins `rooms` and then never reads again, with a
/// small receive buffer: the server's writes to it stall at once. It keeps
/// sending WebSocket pings (every 100 ms, until the connection fails), so
/// it is never silent: whatever closes it, it is not the heartbeat. Returns
/// the read half, never read, to check at the end that it was closed.
struct Deaf {
    read: tokio::net::tcp::OwnedReadHalf,
    stop_pinging: Arc<AtomicBool>,
}

impl Deaf {
    async fn join(server: &Server, token: &str, rooms: &[&str]) -> Deaf {
        let mut stream = tcp_from(server, ip("127.0.0.1"), Some(4096)).await;
        assert_eq!(upgrade(&mut stream, "").await, 101);
        let hello = format!(r#"{{"t":"hello","v":1,"token":"{token}"}}"#);
        stream.write_all(&client_frame(0x1, hello.as_bytes())).await.unwrap();
        read_json_until(&mut stream, |v| v["t"] == "welcome").await;
        for (i, room) in rooms.iter().enumerate() {
            let join = format!(r#"{{"t":"join","ref":{},"room":"{room}"}}"#, i + 1);
            stream.write_all(&client_frame(0x1, join.as_bytes())).await.unwrap();
            read_json_until(&mut stream, |v| v["t"] == "ok" && v["ref"] == i + 1).await;
        }
        let (read, write) = stream.into_split();
        let stop_pinging = Arc::new(AtomicBool::new(false));
        tokio::spawn(keep_pinging(write, stop_pinging.clone()));
        Deaf { read, stop_pinging }
    }

    /// Reads now, until the server's close (EOF or reset), within [`T`].
    async fn assert_closed(mut self) {
        self.stop_pinging.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + T;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read.read(&mut buf)).await {
                Err(_) => panic!("the deaf client's connection was not closed within {T:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

async fn keep_pinging(mut write: OwnedWriteHalf, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if write.write_all(&client_frame(0x9, b"still here")).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most the kernel may buffer for one socket's sends (bytes).
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

const BIG_BODY: usize = 60_000;

fn flood_opts(extra: &[&str]) -> Opts {
    let mut args: Vec<String> =
        ["--send-per-second", "1000", "--send-burst", "1000"].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Opts { heartbeat_ms: Some(2000), max_body_bytes: Some(BIG_BODY as u64), extra_args: args, ..Opts::default() }
}

/// A flooder in room "flood", a bystander in room "quiet", and a client
/// that joins both and then never reads.
/// Also the deaf client's token, to come back with.
async fn flood_scene(server: &Server) -> (Connection, Connection, Deaf, String) {
    let mut flooder = server.session("flooder").await;
    let mut bystander = server.session("bystander").await;
    flooder.join("flood", None).await.unwrap();
    bystander.join("quiet", None).await.unwrap();
    let deaf_token = server.user("deaf").await;
    let deaf = Deaf::join(server, &deaf_token, &["flood", "quiet"]).await;
    (flooder, bystander, deaf, deaf_token)
}

/// Sends big messages to room "flood" in rounds until `series` counts one
/// (and returns how many were sent), checking after each round that
/// `bystander` (in another room) is served normally meanwhile. Past far
/// more bytes than the kernel can buffer for one socket, it sends no more
/// and waits (within [`T`]) for `series`: a deaf client's write is then
/// pending for certain, and the flood may well outrun a write timeout.
async fn flood_until(server: &Server, flooder: &mut Connection, bystander: &mut Connection, series: &str) -> usize {
    let body = "f".repeat(BIG_BODY);
    let cap = 4 * send_buffer_max() + (16 << 20);
    let mut sent = 0usize;
    let deadline = Instant::now() + T;
    while metric(server, series).await < 1.0 {
        assert!(Instant::now() < deadline, "{sent} messages of {BIG_BODY} B and no {series} within {T:?}");
        if sent * BIG_BODY >= cap {
            tokio::time::sleep(Duration::from_millis(50)).await;
            bystander.ping().await.expect("the bystander is served while the deaf client stalls");
            continue;
        }
        for _ in 0..8 {
            send_retrying(flooder, "flood", &body, &format!("f{sent}")).await;
            // The flooder's own copies are not needed.
            flooder.take_pending();
            sent += 1;
        }
        bystander.ping().await.expect("the bystander is served while the deaf client stalls");
    }
    sent
}

/// Waits until `observer` sees `user` go offline in `room`.
async fn wait_offline(observer: &mut Connection, room: &str, user: &str) {
    observer
        .wait_for(
            T,
            |f| matches!(f, ServerFrame::Presence { room: r, user: u, online: false } if r == room && u == user),
        )
        .await
        .unwrap_or_else(|e| panic!("{user} never went offline in {room}: {e}"));
}

// ----- WebSocket: clients that stop reading --------------------------------------

/// A client that stops reading (but keeps sending pings) in a flooded
/// room: the socket takes nothing for --write-timeout-ms, so the session is
/// ended as a slow consumer with reason write_timeout, its presence goes
/// offline at once, and the others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_at_the_write_timeout() {
    let server = Server::start_with(flood_opts(&[
        "--write-timeout-ms",
        "1000",
        // Room for everything flooded: only the write timeout can end it.
        "--outbox-max-frames",
        "1000000",
        "--outbox-max-bytes",
        "1000000000",
    ]))
    .await;
    let (mut flooder, mut bystander, deaf, _) = flood_scene(&server).await;

    let sent =
        flood_until(&server, &mut flooder, &mut bystander, r#"viche_slow_consumers_total{reason="write_timeout"}"#)
            .await;
    // Dropped at once: offline in every room, gone from the members.
    wait_offline(&mut bystander, "quiet", "deaf").await;
    let mut newcomer = server.session("newcomer").await;
    let ok = newcomer.join("flood", None).await.unwrap();
    assert!(!ok.members.contains(&"deaf".to_string()), "members: {:?}", ok.members);
    assert!(ok.members.contains(&"flooder".to_string()), "members: {:?}", ok.members);
    assert_eq!(ok.seq, sent as u64, "every message was stored");
    deaf.assert_closed().await;

    assert_eq!(metric(&server, r#"viche_slow_consumers_total{reason="write_timeout"}"#).await, 1.0);
    assert_eq!(metric(&server, r#"viche_slow_consumers_total{reason="outbox_full"}"#).await, 0.0);
    assert!(metric(&server, r#"viche_connections_closed_total{code="4008"}"#).await >= 1.0);
    assert_eq!(metric(&server, r#"viche_connections_closed_total{code="1000"}"#).await, 0.0, "not the heartbeat");
    // Everyone else still works.
    bystander.send("quiet", "still here", "q1").await.expect("the bystander sends");
    newcomer.ping().await.unwrap();
    flooder.ping().await.unwrap();
}

/// A client that stops reading while its outbox fills: the outbox
/// overflows first (reason outbox_full), and the session is dropped at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_while_its_outbox_fills_is_an_outbox_full_slow_consumer() {
    let server = Server::start_with(flood_opts(&[
        // Only the outbox can end it.
        "--write-timeout-ms",
        "600000",
        "--outbox-max-frames",
        "8",
    ]))
    .await;
    let (mut flooder, mut bystander, deaf, deaf_token) = flood_scene(&server).await;

    flood_until(&server, &mut flooder, &mut bystander, r#"viche_slow_consumers_total{reason="outbox_full"}"#).await;
    wait_offline(&mut bystander, "quiet", "deaf").await;
    let mut newcomer = server.session("newcomer").await;
    let ok = newcomer.join("flood", None).await.unwrap();
    assert!(!ok.members.contains(&"deaf".to_string()), "members: {:?}", ok.members);
    deaf.assert_closed().await;

    assert_eq!(metric(&server, r#"viche_slow_consumers_total{reason="outbox_full"}"#).await, 1.0);
    assert_eq!(metric(&server, r#"viche_slow_consumers_total{reason="write_timeout"}"#).await, 0.0);
    assert!(metric(&server, r#"viche_connections_closed_total{code="4008"}"#).await >= 1.0);
    // It may come back and resume.
    let mut again = server.connect(&deaf_token).await;
    again.join("flood", Some(0)).await.expect("the slow consumer rejoins");
    bystander.ping().await.unwrap();
}

// ----- HTTP: requests and responses that never finish ------------------------------

/// A body that stops arriving is answered 408 at --http-request-timeout-ms
/// and its connection closed; headers that stop arriving close the
/// connection; an idle keep-alive connection is closed too, uncounted.
/// Other requests are served meanwhile.
#[tokio::test]
async fn requests_that_never_finish_are_cut_at_the_request_deadline() {
    let server = Server::start_with(Opts {
        extra_args: vec!["--http-request-timeout-ms".into(), "1000".into()],
        ..Opts::default()
    })
    .await;

    // Slowloris body: Content-Length 1000, a few bytes, then nothing.
    let mut body = tcp_from(&server, ip("127.0.0.1"), None).await;
    let head = "POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n{\"username\":";
    body.write_all(head.as_bytes()).await.unwrap();
    // Slowloris headers: a request line and one header, then nothing.
    let mut headers = tcp_from(&server, ip("127.0.0.1"), None).await;
    headers.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    // A keep-alive connection that answers one request, then idles.
    let mut idle = tcp_from(&server, ip("127.0.0.1"), None).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_head(&mut idle).await.0, 200);

    assert_eq!(get(&server, "/healthz").await.0, 200, "others are served meanwhile");
    let (status, response_head) = read_head(&mut body).await;
    assert_eq!(status, 408, "{response_head}");
    assert!(response_head.to_ascii_lowercase().contains("connection: close"), "{response_head}");
    assert_closed_by_server(&mut body, "after the 408").await;
    assert_closed_by_server(&mut headers, "headers never completed").await;
    assert_closed_by_server(&mut idle, "an idle keep-alive connection").await;

    // Counted as the connection's task ends, just after the socket closes.
    wait_metric(&server, r#"viche_http_timeouts_total{phase="headers"}"#, 1.0).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        metric(&server, r#"viche_http_timeouts_total{phase="headers"}"#).await,
        1.0,
        "the idle one is not counted"
    );
    assert_eq!(metric(&server, r#"viche_http_timeouts_total{phase="body"}"#).await, 1.0);
    assert_eq!(metric(&server, r#"viche_http_requests_total{route="login",status="408"}"#).await, 1.0);
    // Requests that do complete are unaffected.
    server.register("alice").await;
    server.http().login("alice", PASSWORD).await.expect("a whole login is answered");
}

/// A client that never reads a large response: the socket takes nothing
/// for --write-timeout-ms and the connection is dropped.
#[tokio::test]
async fn a_response_the_client_never_reads_is_cut_at_the_write_timeout() {
    let server =
        Server::start_with(Opts { extra_args: vec!["--write-timeout-ms".into(), "1000".into()], ..Opts::default() })
            .await;
    let size = 4 * send_buffer_max() + (8 << 20);
    std::fs::write(server.web_dir().join("big.bin"), vec![b'b'; size]).unwrap();

    let mut deaf = tcp_from(&server, ip("127.0.0.1"), Some(4096)).await;
    deaf.write_all(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    wait_metric(&server, r#"viche_http_timeouts_total{phase="response"}"#, 1.0).await;
    assert_closed_by_server(&mut deaf, "a response never read").await;
    assert_eq!(get(&server, "/healthz").await.0, 200, "others are served");
}

// ----- connections per address ------------------------------------------------------

/// --max-connections-per-ip counts an address's connections of every kind:
/// a session, a WebSocket before hello, a socket that sent nothing. Past it
/// that address's new connections are closed at once, while other addresses
/// are served; once one closes, the address is served again.
#[tokio::test]
async fn an_address_past_max_connections_per_ip_is_refused_while_others_are_served() {
    let server = Server::start_with(Opts {
        hello_timeout_ms: Some(120_000),
        ..Opts::with_args(&["--max-connections-per-ip", "3", "--http-request-timeout-ms", "120000"])
    })
    .await;
    let token = server.user("alice").await;
    let crowded = ip("127.0.0.2");
    let mut session = Connection::connect_from(&server.ws_url(), Encoding::MsgPack, Some(crowded)).await.unwrap();
    session.hello(&token).await.expect("a session from 127.0.0.2");
    let _no_hello = Connection::connect_from(&server.ws_url(), Encoding::MsgPack, Some(crowded)).await.unwrap();
    let silent = tcp_from(&server, crowded, None).await;

    // A fourth connection from that address is closed at once.
    let mut fourth = tcp_from(&server, crowded, None).await;
    assert_closed_by_server(&mut fourth, "a fourth connection from 127.0.0.2").await;
    assert!(Connection::connect_from(&server.ws_url(), Encoding::MsgPack, Some(crowded)).await.is_err());
    assert_eq!(metric(&server, r#"viche_connections_refused_total{reason="max_connections_per_ip"}"#).await, 2.0);

    // Other addresses are served, and the connections held still work.
    let mut other = Connection::connect_from(&server.ws_url(), Encoding::MsgPack, Some(ip("127.0.0.3"))).await.unwrap();
    other.hello(&token).await.expect("a session from 127.0.0.3");
    other.ping().await.unwrap();
    session.ping().await.expect("a session at the cap keeps working");
    assert_eq!(get(&server, "/healthz").await.0, 200);

    // Once one closes, the address gets a connection again.
    drop(silent);
    let deadline = Instant::now() + T;
    loop {
        let mut again = tcp_from(&server, crowded, None).await;
        again.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(T, again.read_to_end(&mut response)).await;
        if response.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.2 was not served again after one of its connections closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Behind a trusted proxy every TCP connection comes from the proxy: they
/// are not capped at accept, and each client the proxy names in
/// X-Forwarded-For has its own budget, counted per request and held by its
/// WebSocket for the connection's life.
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap() {
    let server = Server::start_with(Opts {
        hello_timeout_ms: Some(120_000),
        ..Opts::with_args(&["--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "2"])
    })
    .await;
    let proxy = ip("127.0.0.1");
    let client_a = "X-Forwarded-For: 203.0.113.1\r\n";
    let client_b = "X-Forwarded-For: 198.51.100.20, 203.0.113.2\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = tcp_from(&server, proxy, None).await;
        assert_eq!(upgrade(&mut ws, client_a).await, 101);
        held.push(ws);
    }
    // The third WebSocket of client A is refused; client B is not.
    let mut third = tcp_from(&server, proxy, None).await;
    assert_eq!(upgrade(&mut third, client_a).await, 503);
    let mut b = tcp_from(&server, proxy, None).await;
    assert_eq!(upgrade(&mut b, client_b).await, 101);
    // More TCP connections from the proxy than the cap: not refused at accept.
    assert_eq!(get(&server, "/healthz").await.0, 200);
    let mut session = server.session("alice").await;
    session.ping().await.unwrap();
    assert_eq!(metric(&server, r#"viche_connections_refused_total{reason="max_connections_per_ip"}"#).await, 1.0);

    // Client A's budget comes back when one of its WebSockets closes.
    drop(held.pop());
    let deadline = Instant::now() + T;
    loop {
        let mut ws = tcp_from(&server, proxy, None).await;
        if upgrade(&mut ws, client_a).await == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "client A was not served again after one of its WebSockets closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
