//! Unit tests of the client against a scripted in-process WebSocket peer:
//! reply matching, buffering order, encoding checks and close codes. (The
//! client against the real server is tested in gateway/tests.)

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use viche_client::{ClientError, Connection, Encoding, Event};
use viche_protocol::{decode_client, encode_server, ClientFrame, ErrorCode, Msg, ServerFrame};

const T: Duration = Duration::from_secs(10);

type Peer = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Starts a one-connection peer running `script`; returns its ws URL.
async fn peer<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        script(ws).await;
    });
    (format!("ws://{addr}/ws"), task)
}

async fn recv(ws: &mut Peer) -> (ClientFrame, Encoding) {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => return (decode_client(&b, Encoding::MsgPack).unwrap(), Encoding::MsgPack),
            Message::Text(t) => return (decode_client(t.as_bytes(), Encoding::Json).unwrap(), Encoding::Json),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Peer, frame: ServerFrame, enc: Encoding) {
    let bytes = encode_server(&frame, enc);
    let msg = match enc {
        Encoding::MsgPack => Message::Binary(bytes),
        Encoding::Json => Message::Text(String::from_utf8(bytes.to_vec()).unwrap().into()),
    };
    ws.send(msg).await.unwrap();
}

fn welcome() -> ServerFrame {
    ServerFrame::Welcome {
        v: 1,
        session: "s1".into(),
        user: "alice".into(),
        heartbeat_ms: 30_000,
        max_frame: 65536,
        max_body: 4096,
        features: Vec::new(),
    }
}

fn msg(seq: u64) -> Msg {
    Msg {
        room: "r".into(),
        seq,
        from: "bob".into(),
        body: format!("m{seq}"),
        cid: format!("c{seq}"),
        ts: 1,
        ..Msg::default()
    }
}

#[tokio::test]
async fn request_helpers_buffer_other_frames_in_order() {
    for enc in [Encoding::MsgPack, Encoding::Json] {
        let (url, task) = peer(move |mut ws| async move {
            let (hello, got) = recv(&mut ws).await;
            assert_eq!(got, enc);
            assert!(matches!(hello, ClientFrame::Hello { v: 1, .. }));
            send(&mut ws, welcome(), enc).await;
            let (join, _) = recv(&mut ws).await;
            let req = join.req().unwrap();
            send(&mut ws, ServerFrame::Presence { room: "r".into(), user: "bob".into(), online: true }, enc).await;
            send(&mut ws, ServerFrame::Msg(msg(1)), enc).await;
            // A reply to another ref is not taken for this one.
            send(&mut ws, ServerFrame::Pong { req: req + 100 }, enc).await;
            let ok = ServerFrame::Ok {
                req,
                room: Some("r".into()),
                seq: Some(1),
                members: Some(vec!["alice".into(), "bob".into()]),
                more: Some(false),
                members_total: Some(2),
                first_seq: Some(1),
                truncated: None,
            };
            send(&mut ws, ok, enc).await;
            send(&mut ws, ServerFrame::Msg(msg(2)), enc).await;
            let (s, _) = recv(&mut ws).await;
            send(&mut ws, ServerFrame::error(s.req(), ErrorCode::NotJoined, "join first"), enc).await;
            let frame = CloseFrame { code: CloseCode::from(4008), reason: "slow".into() };
            ws.close(Some(frame)).await.unwrap();
            while ws.next().await.is_some() {}
        })
        .await;

        let mut c = Connection::open(&url, "tok", enc).await.unwrap();
        assert_eq!(c.user(), Some("alice"));
        let ok = c.join("r", None).await.unwrap();
        assert_eq!(ok.members, vec!["alice", "bob"]);
        assert_eq!(ok.seq, 1);
        let err = c.send("x", "b", "c").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotJoined));
        // recv_msg skips (and keeps) the presence and the pong.
        assert_eq!(c.recv_msg(T).await.unwrap().seq, 1);
        assert_eq!(c.recv_msg(T).await.unwrap().seq, 2);
        assert!(matches!(c.next_frame(T).await.unwrap(), Event::Frame(ServerFrame::Presence { online: true, .. })));
        assert!(matches!(c.next_frame(T).await.unwrap(), Event::Frame(ServerFrame::Pong { .. })));
        let (close, frames) = c.expect_close(T).await.unwrap();
        assert!(frames.is_empty());
        assert_eq!(close.code, Some(4008));
        // The close is sticky.
        assert_eq!(c.next_frame(T).await.unwrap(), Event::Closed(close.clone()));
        assert!(matches!(c.ping().await, Err(ClientError::Closed(_))));
        task.await.unwrap();
    }
}

#[tokio::test]
async fn wrong_encoding_and_timeouts_are_reported() {
    let (url, task) = peer(|mut ws| async move {
        let _ = recv(&mut ws).await;
        send(&mut ws, welcome(), Encoding::MsgPack).await;
        let _ = recv(&mut ws).await;
        // Answers a JSON session in MessagePack: a protocol violation.
        send(&mut ws, ServerFrame::Pong { req: 1 }, Encoding::MsgPack).await;
        ws.send(Message::Binary(vec![0xc1].into())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let mut c = Connection::connect(&url, Encoding::Json).await.unwrap();
    // Before hello any encoding is accepted; the welcome comes in MessagePack
    // but hello already went out as JSON, so it is rejected.
    let err = c.hello("t").await.unwrap_err();
    assert!(matches!(err, ClientError::WrongEncoding { expected: Encoding::Json, got: Encoding::MsgPack }), "{err}");
    c.send_frame(&ClientFrame::Ping { req: 1 }).await.unwrap();
    assert!(matches!(c.next_frame(T).await, Err(ClientError::WrongEncoding { .. })));
    assert!(matches!(c.next_frame(T).await, Err(ClientError::WrongEncoding { .. })));
    let err = c.next_frame(Duration::from_millis(200)).await.unwrap_err();
    assert!(err.is_timeout());
    task.await.unwrap();
}
