//! Bounds of a session that the end-to-end suite cannot reach cheaply
//! (their defaults are large): driven in-process, real actors and store.

use std::sync::Arc;
use std::time::Duration;

use viche_engine::clock::now_ms;
use viche_engine::delivery::OutItem;
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::{Engine, EngineConfig, Flow, Session};
use viche_protocol::{decode_server, ClientFrame, Encoding, ErrorCode, ServerFrame};

/// The reply to request `req`, waiting up to 10 s.
async fn reply(session: &Session, req: u64) -> ServerFrame {
    let outbox = &session.session_handle().outbox;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut items = Vec::new();
        assert!(outbox.drain(&mut items).is_none(), "session closing");
        for item in items {
            if let OutItem::Frame(bytes) = item {
                let frame = decode_server(&bytes, Encoding::MsgPack).unwrap();
                match &frame {
                    ServerFrame::Ok { req: r, .. } | ServerFrame::Error { req: Some(r), .. } if *r == req => {
                        return frame
                    }
                    _ => {}
                }
            }
        }
        tokio::select! {
            _ = outbox.notified() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("no reply to {req} within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_may_join_at_most_session_rooms_max() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = EngineConfig { session_rooms_max: 3, ..EngineConfig::default() };
    let engine = Engine::start(config, store, b"0123456789abcdef0123").await.unwrap();
    let mut s = engine.open_session("alice", Encoding::MsgPack, now_ms() + 3_600_000).await.unwrap();

    for (req, room) in [(1, "a"), (2, "b"), (3, "c")] {
        assert_eq!(s.handle(ClientFrame::Join { req, room: room.into(), since: None }).await, Flow::Continue);
        assert!(matches!(reply(&s, req).await, ServerFrame::Ok { .. }), "join {room} within the bound");
    }
    s.handle(ClientFrame::Join { req: 4, room: "d".into(), since: None }).await;
    match reply(&s, 4).await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Invalid),
        other => panic!("a fourth room is refused, got {other:?}"),
    }
    // Joining one already joined is still answered ok; leaving makes room.
    s.handle(ClientFrame::Join { req: 5, room: "b".into(), since: None }).await;
    assert!(matches!(reply(&s, 5).await, ServerFrame::Ok { .. }));
    s.handle(ClientFrame::Leave { req: 6, room: "a".into(), forget: None }).await;
    assert!(matches!(reply(&s, 6).await, ServerFrame::Ok { .. }));
    s.handle(ClientFrame::Join { req: 7, room: "d".into(), since: None }).await;
    assert!(matches!(reply(&s, 7).await, ServerFrame::Ok { .. }), "after a leave, a new room fits");
}
