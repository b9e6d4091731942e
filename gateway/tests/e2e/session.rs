//! docs/protocol.md, "Session lifecycle": the session lifecycle (hello, tokens, auth refresh,
//! heartbeats), ping, bad frames and the two encodings.

use std::time::Duration;

use crate::common::*;
use viche_client::{ClientError, ClientFrame, Connection, Encoding, ErrorCode, Event, ServerFrame};

#[tokio::test]
async fn hello_gets_welcome_with_the_limits() {
    let server = Server::start_with(Opts {
        heartbeat_ms: Some(7000),
        max_frame_bytes: Some(20_000),
        max_body_bytes: Some(1000),
        ..Opts::default()
    })
    .await;
    let token = server.user("alice").await;
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let conn = server.connect_enc(&token, encoding).await;
        let w = conn.welcome().expect("welcome").clone();
        assert_eq!(w.v, 1);
        assert_eq!(w.user, "alice");
        assert!(!w.session.is_empty());
        assert_eq!(w.heartbeat_ms, 7000);
        assert_eq!(w.max_frame, 20_000);
        assert_eq!(w.max_body, 1000);
    }
    // Two sessions of one user have different ids.
    let a = server.connect(&token).await;
    let b = server.connect(&token).await;
    assert_ne!(a.welcome().unwrap().session, b.welcome().unwrap().session);
}

#[tokio::test]
async fn default_limits_in_welcome() {
    let server = Server::start().await;
    let conn = server.session("alice").await;
    let w = conn.welcome().unwrap();
    assert_eq!(w.max_frame, 65536);
    assert_eq!(w.max_body, 4096);
    assert!(w.heartbeat_ms > 0);
}

#[tokio::test]
async fn unsupported_version_is_invalid_and_closes_1002() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    for (v, encoding) in [(2, Encoding::MsgPack), (0, Encoding::Json)] {
        let mut conn = server.connect_raw(encoding).await;
        conn.send_frame(&ClientFrame::Hello { v, token: token.clone() }).await.unwrap();
        expect_error_then_close(&mut conn, Some("invalid"), 1002).await;
    }
}

#[tokio::test]
async fn first_frame_not_hello_is_unauthorized_4001() {
    let server = Server::start().await;
    let firsts = [
        ClientFrame::Ping { req: 1 },
        ClientFrame::Join { req: 2, room: "lobby".into(), since: None },
        ClientFrame::Auth { req: 3, token: "x".into() },
    ];
    for first in firsts {
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let mut conn = server.connect_raw(encoding).await;
            conn.send_frame(&first).await.unwrap();
            expect_error_then_close(&mut conn, Some("unauthorized"), 4001).await;
        }
    }
    // Garbage as the first frame is no hello either.
    let mut conn = server.connect_raw(Encoding::MsgPack).await;
    conn.send_raw_binary(vec![0xc1, 0x00]).await.unwrap();
    let (close, _) = conn.expect_close(T).await.unwrap();
    assert_eq!(close.code, Some(4001), "{close}");
}

async fn hello_rejected(server: &Server, token: &str) {
    let mut conn = server.connect_raw(Encoding::MsgPack).await;
    conn.send_frame(&ClientFrame::Hello { v: 1, token: token.to_string() }).await.unwrap();
    expect_error_then_close(&mut conn, Some("unauthorized"), 4001).await;
}

#[tokio::test]
async fn bad_tokens_are_unauthorized_4001() {
    let server = Server::start().await;
    server.register("alice").await;
    let in_an_hour = now_s() + 3600;
    // Sanity: a token minted by the test with the server's secret works.
    let mut ok = server.connect(&mint("alice", in_an_hour)).await;
    ok.ping().await.unwrap();

    hello_rejected(&server, &mint_with("some-other-secret-0123456789", "alice", in_an_hour)).await;
    hello_rejected(&server, &mint("alice", now_s() - 120)).await;
    hello_rejected(&server, &mint_alg_none("alice", in_an_hour)).await;
    hello_rejected(&server, "").await;
    hello_rejected(&server, "not.a.jwt").await;
    hello_rejected(&server, "garbage").await;
    // A valid signature over a tampered payload.
    let good = mint("alice", in_an_hour);
    let parts: Vec<&str> = good.split('.').collect();
    let other = mint("bob", in_an_hour);
    let other_payload = other.split('.').nth(1).unwrap();
    hello_rejected(&server, &format!("{}.{}.{}", parts[0], other_payload, parts[2])).await;
}

#[tokio::test]
async fn hello_timeout_closes_4002() {
    let server = Server::start_with(Opts { hello_timeout_ms: Some(500), ..Opts::default() }).await;
    let mut conn = server.connect_raw(Encoding::MsgPack).await;
    let (close, _frames) = conn.expect_close(T).await.expect("closed for lack of hello");
    assert_eq!(close.code, Some(4002), "{close}");
    // A hello in time is fine.
    let token = server.user("alice").await;
    let mut conn = server.connect(&token).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    conn.ping().await.expect("a session past hello is not subject to the hello timeout");
}

#[tokio::test]
async fn auth_refresh_keeps_the_session_past_the_first_tokens_exp() {
    let server = Server::start().await;
    server.register("alice").await;
    let exp = now_s() + 4;
    let short = mint("alice", exp);
    let mut refreshed = server.connect(&short).await;
    let mut expiring = server.connect(&short).await;
    refreshed.join("lobby", None).await.unwrap();
    expiring.join("lobby", None).await.unwrap();

    refreshed.auth(&mint("alice", now_s() + 3600)).await.expect("auth with a fresh token answers ok");

    // The session without a refresh is closed 4001 once its token expires.
    let (close, frames) = expiring.expect_close(Duration::from_secs(40)).await.expect("the expired session closes");
    assert_eq!(close.code, Some(4001), "{close}; before: {frames:?}");
    assert!(now_s() >= exp, "closed only once the token expired (exp {exp}, now {})", now_s());

    // Past the first token's exp, the refreshed session still works.
    while now_s() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refreshed.ping().await.expect("the refreshed session is alive");
    let ack = refreshed.send("lobby", "still here", "c1").await.unwrap();
    assert_eq!(ack.seq, 1);
}

#[tokio::test]
async fn auth_with_a_bad_token_is_refused() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut conn = server.connect(&token).await;
    let forged = mint_with("some-other-secret-0123456789", "alice", now_s() + 3600);
    match conn.auth(&forged).await {
        Err(ClientError::Server { code: ErrorCode::Unauthorized, req, .. }) => {
            assert!(req.is_some(), "the error echoes the ref")
        }
        Err(ClientError::Closed(info)) => assert_eq!(info.code, Some(4001), "{info}"),
        other => panic!("a forged token must not be accepted: {other:?}"),
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_ref() {
    let server = Server::start().await;
    let mut conn = server.session("alice").await;
    for req in [0u64, 1, 42, u64::MAX] {
        conn.send_frame(&ClientFrame::Ping { req }).await.unwrap();
        assert_eq!(next_frame(&mut conn).await, ServerFrame::Pong { req });
    }
    conn.ping().await.unwrap();
}

fn msgpack_map(entries: &[(&str, MpVal)]) -> Vec<u8> {
    assert!(entries.len() < 16);
    let mut out = vec![0x80 | entries.len() as u8];
    for (k, v) in entries {
        mp_str(&mut out, k);
        match v {
            MpVal::Str(s) => mp_str(&mut out, s),
            MpVal::Uint(n) => {
                out.push(0xcf);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
    out
}

enum MpVal {
    Str(&'static str),
    Uint(u64),
}

fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The next frame must be `error{bad_frame}` with `req`.
async fn expect_bad_frame(conn: &mut Connection, req: Option<u64>, what: &str) {
    match next_frame(conn).await {
        ServerFrame::Error { req: r, code, .. } => {
            assert_eq!(code, ErrorCode::BadFrame, "{what}");
            assert_eq!(r, req, "{what}: ref echoed when present");
        }
        other => panic!("{what}: expected bad_frame, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_stays_open() {
    let server = Server::start().await;
    let mut conn = server.session("alice").await;

    conn.send_raw_binary(vec![0xc1]).await.unwrap();
    expect_bad_frame(&mut conn, None, "undecodable MessagePack").await;
    conn.send_raw_binary(vec![0x92, 0x01, 0x02]).await.unwrap();
    expect_bad_frame(&mut conn, None, "a MessagePack array").await;
    conn.send_raw_binary(vec![0x2a]).await.unwrap();
    expect_bad_frame(&mut conn, None, "a MessagePack integer").await;
    conn.send_raw_binary(Vec::new()).await.unwrap();
    expect_bad_frame(&mut conn, None, "an empty binary message").await;
    conn.send_raw_binary(msgpack_map(&[("t", MpVal::Str("nope")), ("ref", MpVal::Uint(77))])).await.unwrap();
    expect_bad_frame(&mut conn, Some(77), "unknown t with ref").await;
    conn.send_raw_binary(msgpack_map(&[("t", MpVal::Str("nope"))])).await.unwrap();
    expect_bad_frame(&mut conn, None, "unknown t without ref").await;
    conn.send_raw_binary(msgpack_map(&[("ref", MpVal::Uint(78))])).await.unwrap();
    expect_bad_frame(&mut conn, Some(78), "no t").await;
    conn.send_raw_binary(msgpack_map(&[("t", MpVal::Str("join")), ("ref", MpVal::Uint(79)), ("room", MpVal::Uint(5))]))
        .await
        .unwrap();
    expect_bad_frame(&mut conn, Some(79), "a field of the wrong type").await;
    conn.send_raw_binary(msgpack_map(&[
        ("t", MpVal::Str("send")),
        ("ref", MpVal::Uint(80)),
        ("room", MpVal::Str("r")),
    ]))
    .await
    .unwrap();
    expect_bad_frame(&mut conn, Some(80), "missing fields").await;

    // JSON text frames on a MessagePack session are decoded too.
    conn.send_raw_text("{not json".into()).await.unwrap();
    expect_bad_frame(&mut conn, None, "bad JSON").await;
    conn.send_raw_text("[1,2]".into()).await.unwrap();
    expect_bad_frame(&mut conn, None, "a JSON array").await;
    conn.send_raw_text(r#"{"t":"nope","ref":81}"#.into()).await.unwrap();
    expect_bad_frame(&mut conn, Some(81), "unknown t in JSON").await;

    // Unknown keys are ignored.
    conn.send_raw_text(r#"{"t":"ping","ref":82,"extra":{"deep":[1,2,3]}}"#.into()).await.unwrap();
    assert_eq!(next_frame(&mut conn).await, ServerFrame::Pong { req: 82 });
    conn.send_raw_binary(msgpack_map(&[("t", MpVal::Str("ping")), ("ref", MpVal::Uint(83)), ("x", MpVal::Str("y"))]))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut conn).await, ServerFrame::Pong { req: 83 });

    // Still open and working.
    conn.join("lobby", None).await.unwrap();
    conn.send("lobby", "after all that", "c1").await.unwrap();
    assert_eq!(conn.recv_msg(T).await.unwrap().body, "after all that");
}

#[tokio::test]
async fn json_text_mode_end_to_end() {
    let server = Server::start().await;
    let token_a = server.user("alice").await;
    let token_b = server.user("bob").await;
    // The client rejects any frame not in the hello's encoding, so every
    // exchange below also checks that the server answers in JSON text.
    let mut a = server.connect_enc(&token_a, Encoding::Json).await;
    let mut b = server.connect(&token_b).await; // MessagePack
    a.join("lobby", None).await.unwrap();
    b.join("lobby", None).await.unwrap();
    let ack = a.send("lobby", "héllo ✓", "j1").await.unwrap();
    for conn in [&mut a, &mut b] {
        let m = conn.recv_msg(T).await.unwrap();
        assert_eq!((m.seq, m.body.as_str(), m.from.as_str(), m.cid.as_str()), (ack.seq, "héllo ✓", "alice", "j1"));
    }
    let page = a.history("lobby", None, None).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    a.ping().await.unwrap();

    // A JSON session may send MessagePack frames; answers stay JSON.
    let req = a.alloc_ref();
    a.send_raw_binary(viche_protocol::encode_client(&ClientFrame::Ping { req }, Encoding::MsgPack).to_vec())
        .await
        .unwrap();
    assert_eq!(a.wait_reply(req, T).await.unwrap(), ServerFrame::Pong { req });
    // And a MessagePack session may send JSON frames; answers stay MessagePack.
    b.send_raw_text(r#"{"t":"ping","ref":9001}"#.into()).await.unwrap();
    assert_eq!(b.wait_reply(9001, T).await.unwrap(), ServerFrame::Pong { req: 9001 });

    // Raw check of the wire: a JSON object with "t".
    let mut raw = server.connect_raw(Encoding::Json).await;
    raw.send_raw_text(format!(r#"{{"t":"hello","v":1,"token":"{token_a}"}}"#)).await.unwrap();
    match next_frame(&mut raw).await {
        ServerFrame::Welcome { user, .. } => assert_eq!(user, "alice"),
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn heartbeat_closes_a_silent_connection_but_not_a_live_one() {
    let server = Server::start_with(Opts { heartbeat_ms: Some(300), ..Opts::default() }).await;
    let token = server.user("alice").await;
    let mut live = server.connect(&token).await;
    let mut silent = server.connect(&token).await;
    assert_eq!(live.welcome().unwrap().heartbeat_ms, 300);

    // `live` keeps reading (its WebSocket layer answers pings); `silent`
    // reads nothing, so it answers no ping and sends nothing.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        match live.next_frame(Duration::from_millis(200)).await {
            Err(ClientError::Timeout { .. }) => {}
            Ok(Event::Frame(f)) => panic!("unexpected frame {f:?}"),
            Ok(Event::Closed(info)) => panic!("a connection that answers pings was closed: {info}"),
            Err(e) => panic!("{e}"),
        }
    }
    live.ping().await.expect("the live connection is open");
    let (close, _) = silent.expect_close(T).await.expect("the silent connection was closed");
    assert_ne!(close.code, Some(4001), "{close}");
}

#[tokio::test]
async fn many_sessions_of_one_user() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(server.connect(&token).await);
    }
    for c in &mut conns {
        c.join("lobby", None).await.unwrap();
    }
    conns[0].send("lobby", "to all my sessions", "c1").await.unwrap();
    for c in &mut conns {
        assert_eq!(c.recv_msg(T).await.unwrap().body, "to all my sessions");
    }
}
