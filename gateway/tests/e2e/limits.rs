//! docs/protocol.md, frames, close codes and limits: field and frame limits, rate limits, the
//! slow-consumer close.

use std::time::{Duration, Instant};

use crate::common::*;
use viche_client::{ClientError, ClientFrame, Encoding, ErrorCode, Event, ServerFrame};

#[tokio::test]
async fn body_bounds_in_bytes() {
    let server = Server::start_with(Opts { max_body_bytes: Some(100), ..Opts::default() }).await;
    let mut a = server.session("alice").await;
    assert_eq!(a.welcome().unwrap().max_body, 100);
    a.join("lobby", None).await.unwrap();

    assert_eq!(a.send("lobby", &"x".repeat(100), "c1").await.unwrap().seq, 1);
    assert_eq!(code_of(a.send("lobby", &"x".repeat(101), "c2").await), "too_large");
    // Bytes, not characters: 50 × 'é' = 100 bytes, 51 × 'é' = 102.
    assert_eq!(a.send("lobby", &"é".repeat(50), "c3").await.unwrap().seq, 2);
    assert_eq!(code_of(a.send("lobby", &"é".repeat(51), "c4").await), "too_large");
    assert_eq!(code_of(a.send("lobby", "", "c5").await), "invalid");
    // Refused sends stored nothing and took no seq.
    assert_eq!(a.send("lobby", "ok", "c6").await.unwrap().seq, 3);
    let page = a.history("lobby", None, None).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![3, 2, 1]);
}

#[tokio::test]
async fn default_body_limit_is_4096() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("lobby", None).await.unwrap();
    a.send("lobby", &"x".repeat(4096), "c1").await.unwrap();
    assert_eq!(code_of(a.send("lobby", &"x".repeat(4097), "c2").await), "too_large");
}

#[tokio::test]
async fn cid_bounds_in_bytes() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("lobby", None).await.unwrap();
    assert_eq!(a.send("lobby", "x", &"c".repeat(64)).await.unwrap().cid, "c".repeat(64));
    assert_eq!(code_of(a.send("lobby", "x", &"d".repeat(65)).await), "invalid");
    assert_eq!(code_of(a.send("lobby", "x", "").await), "invalid");
    a.send("lobby", "x", &"é".repeat(32)).await.expect("64 bytes of UTF-8");
    assert_eq!(code_of(a.send("lobby", "x", &"ü".repeat(33)).await), "invalid");
    assert_eq!(a.send("lobby", "x", "1").await.unwrap().seq, 3);
}

/// A JSON ping padded with an unknown key to exactly `len` bytes.
fn padded_ping(req: u64, len: usize) -> String {
    let head = format!(r#"{{"t":"ping","ref":{req},"pad":""#);
    let tail = r#""}"#;
    let pad = len - head.len() - tail.len();
    let s = format!("{head}{}{tail}", "p".repeat(pad));
    assert_eq!(s.len(), len);
    s
}

#[tokio::test]
async fn frame_over_max_frame_closes_1009() {
    let server =
        Server::start_with(Opts { max_frame_bytes: Some(2048), max_body_bytes: Some(1000), ..Opts::default() }).await;
    let token = server.user("alice").await;
    let mut a = server.connect(&token).await;
    assert_eq!(a.welcome().unwrap().max_frame, 2048);
    // Exactly max_frame is allowed.
    a.send_raw_text(padded_ping(7, 2048)).await.unwrap();
    assert_eq!(next_frame(&mut a).await, ServerFrame::Pong { req: 7 });
    // One byte more closes with 1009.
    a.send_raw_text(padded_ping(8, 2049)).await.unwrap();
    let (close, frames) = a.expect_close(T).await.unwrap();
    assert_eq!(close.code, Some(1009), "{close}; {frames:?}");

    // The same over MessagePack, with a large body.
    let mut b = server.connect_enc(&token, Encoding::MsgPack).await;
    b.join("lobby", None).await.unwrap();
    let huge =
        ClientFrame::Send { req: 1, room: "lobby".into(), body: "x".repeat(3000), cid: "c".into(), reply_to: None };
    b.send_frame(&huge).await.unwrap();
    let (close, _) = b.expect_close(T).await.unwrap();
    assert_eq!(close.code, Some(1009), "{close}");
    // Nothing was stored.
    let mut c = server.connect(&token).await;
    assert!(c.history("lobby", None, None).await.unwrap().messages.is_empty());

    // Before hello too.
    let mut raw = server.connect_raw(Encoding::Json).await;
    raw.send_raw_text(padded_ping(9, 4000)).await.unwrap();
    let (close, _) = raw.expect_close(T).await.unwrap();
    assert_eq!(close.code, Some(1009), "{close}");
}

#[tokio::test]
async fn send_burst_of_50_then_rate_limited() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut watcher = server.session("bob").await;
    a.join("lobby", None).await.unwrap();
    watcher.join("lobby", None).await.unwrap();

    let n = 100u64;
    let frames: Vec<_> = (0..n)
        .map(|i| ClientFrame::Send {
            req: 1000 + i,
            room: "lobby".into(),
            body: format!("b{i}"),
            cid: format!("c{i}"),
            reply_to: None,
        })
        .collect();
    let started = Instant::now();
    a.send_frames(&frames).await.unwrap();
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    for i in 0..n {
        match a.wait_reply(1000 + i, T).await {
            Ok(ServerFrame::Ack { req, .. }) => acked.push(req),
            Err(ClientError::Server { code: ErrorCode::RateLimited, req, .. }) => {
                limited.push(req.expect("rate_limited carries the ref"))
            }
            other => panic!("reply {i}: {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(&acked[..50], &(1000..1050).collect::<Vec<_>>()[..], "a burst of 50 passes");
    assert!(!limited.is_empty(), "past the burst: rate_limited");
    // 20 per second refill: no more than that got through meanwhile.
    let allowed = 50.0 + 20.0 * elapsed + 1.0;
    assert!((acked.len() as f64) <= allowed, "{} acked in {elapsed:.2}s", acked.len());

    // Only the acked ones were stored and delivered.
    let msgs = watcher.recv_msgs(acked.len(), T).await.unwrap();
    assert_eq!(seqs(&msgs), (1..=acked.len() as u64).collect::<Vec<_>>());
    assert_none(&mut watcher, "a rate-limited message", |f| matches!(f, ServerFrame::Msg(_))).await;

    // The bucket refills: after a pause, sending works again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.send("lobby", "later", "later-1").await.expect("the bucket refilled");
}

#[tokio::test]
async fn dm_shares_the_send_bucket() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    server.register("bob").await;
    let frames: Vec<_> = (0..80u64)
        .map(|i| ClientFrame::Dm {
            req: 1 + i,
            to: "bob".into(),
            body: "x".into(),
            cid: format!("c{i}"),
            reply_to: None,
        })
        .collect();
    a.send_frames(&frames).await.unwrap();
    let mut limited = 0;
    for i in 0..80u64 {
        match a.wait_reply(1 + i, T).await {
            Ok(ServerFrame::Ack { .. }) => {}
            Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(limited > 0, "dm is rate limited like send");
}

#[tokio::test]
async fn join_burst_of_20_then_rate_limited() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let n = 50u64;
    let frames: Vec<_> =
        (0..n).map(|i| ClientFrame::Join { req: 1 + i, room: format!("room{i}"), since: None }).collect();
    let started = Instant::now();
    a.send_frames(&frames).await.unwrap();
    let (mut ok, mut limited) = (Vec::new(), 0);
    for i in 0..n {
        match a.wait_reply(1 + i, T).await {
            Ok(ServerFrame::Ok { req, .. }) => ok.push(req),
            Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(&ok[..20], &(1..=20).collect::<Vec<_>>()[..], "a burst of 20 joins passes");
    assert!(limited > 0);
    assert!((ok.len() as f64) <= 20.0 + 10.0 * elapsed + 1.0, "{} joins in {elapsed:.2}s", ok.len());
}

#[tokio::test]
async fn typing_is_rate_limited() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    a.join("lobby", None).await.unwrap();
    b.join("lobby", None).await.unwrap();
    let frames: Vec<_> = (0..30).map(|_| ClientFrame::Typing { room: "lobby".into() }).collect();
    let started = Instant::now();
    a.send_frames(&frames).await.unwrap();
    // Sentinel: once b sees it, every typing that passed came before.
    a.send("lobby", "sentinel", "s").await.unwrap();
    b.recv_msg(T).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let typings = b.take_pending().into_iter().filter(|f| matches!(f, ServerFrame::Typing { .. })).count();
    assert!(typings >= 5, "a burst of 5 passes, got {typings}");
    assert!((typings as f64) <= 5.0 + 2.0 * elapsed + 1.0, "{typings} typing in {elapsed:.2}s");
    a.ping().await.expect("still open");
}

#[tokio::test]
async fn persistent_flooding_after_rate_limited_closes_4029() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("lobby", None).await.unwrap();
    let mut limited = 0usize;
    let mut next_ref = 1u64;
    let close = 'outer: loop {
        assert!(next_ref < 5000, "no 4029 after {limited} rate_limited answers");
        // Chunks of 50, each read back before the next is sent.
        let frames: Vec<_> = (next_ref..next_ref + 50)
            .map(|r| ClientFrame::Send {
                req: r,
                room: "lobby".into(),
                body: "flood".into(),
                cid: format!("c{r}"),
                reply_to: None,
            })
            .collect();
        if a.send_frames(&frames).await.is_err() {
            // The server closed while this chunk was being written: count
            // the answers that arrived before the close.
            let (close, frames) = a.expect_close(T).await.unwrap();
            limited +=
                frames.iter().filter(|f| matches!(f, ServerFrame::Error { code: ErrorCode::RateLimited, .. })).count();
            break close;
        }
        for r in next_ref..next_ref + 50 {
            match a.wait_reply(r, T).await {
                Ok(_) => {}
                Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => limited += 1,
                Err(ClientError::Closed(info)) => {
                    // An ack still awaited (it comes after the store commit)
                    // is lost with the close; answers to later refs may be
                    // buffered already.
                    limited += a
                        .take_pending()
                        .iter()
                        .filter(|f| matches!(f, ServerFrame::Error { code: ErrorCode::RateLimited, .. }))
                        .count();
                    break 'outer info;
                }
                Err(e) => panic!("{e}"),
            }
        }
        next_ref += 50;
    };
    assert_eq!(close.code, Some(4029), "{close}");
    assert!(limited >= 200, "closed only after more than 200 rate_limited answers, saw {limited}");
}

#[tokio::test]
async fn a_few_rate_limited_answers_do_not_close() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("lobby", None).await.unwrap();
    let frames: Vec<_> = (0..150u64)
        .map(|r| ClientFrame::Send {
            req: 1 + r,
            room: "lobby".into(),
            body: "x".into(),
            cid: format!("c{r}"),
            reply_to: None,
        })
        .collect();
    a.send_frames(&frames).await.unwrap();
    for r in 0..150u64 {
        let _ = a.wait_reply(1 + r, T).await;
    }
    assert!(a.close_info().is_none(), "about 100 rate_limited answers are no reason to close");
    a.ping().await.unwrap();
}

/// Bodies large enough that a few messages overflow the kernel's socket
/// buffers, so that a client that does not read fills its outbox.
const BIG: usize = 512 * 1024;

fn slow_opts() -> Opts {
    Opts {
        max_frame_bytes: Some(1024 * 1024),
        max_body_bytes: Some(BIG as u64),
        // The frame count is the binding limit; the byte limit is high so
        // that the readers that do keep up (the sender, the watcher) are
        // never mistaken for slow consumers on a busy machine.
        outbox_max_frames: Some(8),
        outbox_max_bytes: Some(64 * 1024 * 1024),
        ..Opts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4008_and_others_are_unaffected() {
    let server = Server::start_with(slow_opts()).await;
    let mut sender = server.session("alice").await;
    let mut watcher = server.session("bob").await;
    let token_slow = server.user("slowpoke").await;
    let mut slow = server.connect(&token_slow).await;
    for c in [&mut sender, &mut watcher, &mut slow] {
        c.join("firehose", None).await.unwrap();
    }
    // `slow` reads nothing from here on. The watcher reads concurrently.
    let n = 60usize;
    let reader = tokio::spawn(async move {
        let msgs = watcher.recv_msgs(n, Duration::from_secs(300)).await.expect("the watcher gets every message");
        (watcher, msgs)
    });
    let body = "z".repeat(BIG);
    for i in 0..n {
        send_retrying(&mut sender, "firehose", &body, &format!("big{i}")).await;
        // The sender's own copies are not needed.
        sender.take_pending();
    }
    let (_watcher, msgs) = reader.await.unwrap();
    assert_eq!(seqs(&msgs), (1..=n as u64).collect::<Vec<_>>());

    // Now `slow` reads: what was queued in the kernel, then the close.
    let mut got = Vec::new();
    let close = loop {
        match slow.next_frame(Duration::from_secs(60)).await.expect("the slow consumer is closed") {
            Event::Frame(ServerFrame::Msg(m)) => got.push(m.seq),
            Event::Frame(_) => {}
            Event::Closed(info) => break info,
        }
    };
    // The session ended as a slow consumer the moment its outbox overflowed;
    // the 4008 close frame is sent only if the socket takes it within 1 s,
    // and this client was not reading then: it may find a reset instead.
    assert!(matches!(close.code, Some(4008) | None), "{close}");
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"viche_slow_consumers_total{reason="outbox_full"} "#) && !l.ends_with(" 0")),
        "counted as an outbox_full slow consumer"
    );
    assert!(got.len() < n, "closed before everything was delivered");
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "what it got is in order");

    // It reconnects and joins with since: it gets exactly the rest.
    let mut again = server.connect(&token_slow).await;
    let last = got.last().copied().unwrap_or(0);
    again.join("firehose", Some(last)).await.unwrap();
    let rest = again.recv_msgs(n - last as usize, Duration::from_secs(120)).await.unwrap();
    assert_eq!(seqs(&rest), (last + 1..=n as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_count_toward_the_slow_consumer_limit() {
    let server = Server::start_with(slow_opts()).await;
    let token = server.user("alice").await;
    let mut sender = server.connect(&token).await;
    sender.join("archive", None).await.unwrap();
    let body = "r".repeat(BIG);
    let n = 40u64;
    for i in 0..n {
        send_retrying(&mut sender, "archive", &body, &format!("r{i}")).await;
        sender.take_pending();
    }
    sender.leave("archive").await.unwrap();

    // 40 × 512 KiB replayed to a client that waits before reading:
    // far more than 8 frames' worth, yet no 4008.
    let mut reader = server.session("bob").await;
    let ok = reader.join("archive", Some(0)).await.unwrap();
    assert_eq!(ok.seq, n);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = reader.recv_msgs(n as usize, Duration::from_secs(120)).await.expect("the whole replay, no close");
    assert_eq!(seqs(&msgs), (1..=n).collect::<Vec<_>>());
    reader.ping().await.unwrap();
}

/// `--max-connections`: past it, an upgrade is refused with HTTP 503
/// `overloaded` (the open sessions are untouched); once one closes, a new
/// connection is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_get_503_until_one_closes() {
    let server =
        Server::start_with(Opts { extra_args: vec!["--max-connections".into(), "2".into()], ..Opts::default() }).await;
    let mut a = server.session("alice").await;
    let b = server.session("bob").await;

    let refused = viche_client::Connection::connect(&server.ws_url(), Encoding::MsgPack).await;
    let Err(err) = refused else { panic!("a third connection is refused") };
    let err = err.to_string();
    assert!(err.contains("503"), "refused with HTTP 503: {err}");
    a.ping().await.expect("an open session keeps working at the limit");

    drop(b);
    let deadline = Instant::now() + T;
    loop {
        match viche_client::Connection::connect(&server.ws_url(), Encoding::MsgPack).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "a connection is accepted again after one closed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
