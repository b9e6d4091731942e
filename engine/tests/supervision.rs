//! Supervision: a room actor that panics is restarted by the RoomSupervisor,
//! its members stay attached, and the room keeps numbering from the right
//! seq. Also: one room's crash does not touch another room.
//!
//! This drives the engine in-process (real actors, real embedded store);
//! the network path is covered by the gateway's end-to-end tests, which
//! cannot reach the test-only panic hook.

use std::sync::Arc;
use std::time::Duration;

use viche_engine::clock::now_ms;
use viche_engine::delivery::OutItem;
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::{Engine, EngineConfig, Flow, Session};
use viche_protocol::{decode_server, ClientFrame, Encoding, ServerFrame};

async fn next_frame(session: &Session) -> ServerFrame {
    let outbox = &session.session_handle().outbox;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut items = Vec::new();
        // Drain one item at a time is not possible; keep the rest locally.
        assert!(outbox.drain(&mut items).is_none(), "session unexpectedly closing");
        if let Some(first) = items.into_iter().next() {
            match first {
                OutItem::Frame(bytes) => {
                    return decode_server(&bytes, Encoding::MsgPack).expect("server frame decodes")
                }
                other => panic!("unexpected outbox item {other:?}"),
            }
        }
        tokio::select! {
            _ = outbox.notified() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("no frame within 10 s"),
        }
    }
}

/// Collects frames until `n` of them satisfy `want`, returning those. A
/// replay marker is read from the store, as the connection's write loop
/// would (a message published while its room restarted arrives that way).
async fn collect(
    engine: &Engine,
    session: &Session,
    n: usize,
    want: impl Fn(&ServerFrame) -> bool,
) -> Vec<ServerFrame> {
    let outbox = &session.session_handle().outbox;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        let mut items = Vec::new();
        assert!(outbox.drain(&mut items).is_none());
        for item in items {
            let frames = match item {
                OutItem::Frame(bytes) => vec![decode_server(&bytes, Encoding::MsgPack).unwrap()],
                OutItem::Replay { room, after, upto } => {
                    engine.replay_page(&room, after, upto).await.unwrap().into_iter().map(ServerFrame::Msg).collect()
                }
                OutItem::Pong(_) => vec![],
            };
            for frame in frames {
                if want(&frame) {
                    got.push(frame);
                }
            }
        }
        if got.len() >= n {
            break;
        }
        tokio::select! {
            _ = outbox.notified() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("only {} of {n} frames within 10 s: {got:?}", got.len()),
        }
    }
    got
}

async fn start() -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let engine = Engine::start(EngineConfig::default(), Arc::new(store), b"0123456789abcdef0123").await.unwrap();
    (dir, engine)
}

async fn join(s: &mut Session, room: &str) -> ServerFrame {
    assert_eq!(s.handle(ClientFrame::Join { req: 1, room: room.into(), since: None }).await, Flow::Continue);
    next_frame(s).await
}

async fn send(s: &mut Session, room: &str, n: u64) {
    let cid = format!("{room}-{n}-{}", s.session_handle().id);
    assert_eq!(
        s.handle(ClientFrame::Send { req: 100 + n, room: room.into(), body: format!("m{n}"), cid }).await,
        Flow::Continue
    );
}

fn seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| match f {
            ServerFrame::Msg(m) => m.seq,
            ServerFrame::Ack { seq, .. } => *seq,
            other => panic!("not a msg/ack: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_room_is_restarted_with_members_and_seq_intact() {
    let (_dir, engine) = start().await;
    let exp = now_ms() + 3_600_000;
    let mut alice = engine.open_session("alice", Encoding::MsgPack, exp);
    let mut carol = engine.open_session("carol", Encoding::MsgPack, exp);
    assert!(matches!(join(&mut alice, "lobby").await, ServerFrame::Ok { seq: Some(0), .. }));
    assert!(matches!(join(&mut carol, "other").await, ServerFrame::Ok { seq: Some(0), .. }));

    for n in 1..=3 {
        send(&mut alice, "lobby", n).await;
    }
    let msgs = collect(&engine, &alice, 3, |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_eq!(seqs(&msgs), vec![1, 2, 3]);

    engine.inject_room_panic("lobby").await.unwrap();
    // Wait until the supervisor has put a new actor behind the handle.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The member is still attached: its next send is numbered 4 and delivered.
    send(&mut alice, "lobby", 4).await;
    let after =
        collect(&engine, &alice, 2, |f| matches!(f, ServerFrame::Msg(_) | ServerFrame::Ack { req: 104, .. })).await;
    let mut got = seqs(&after);
    got.sort();
    assert_eq!(got, vec![4, 4], "ack and msg of the first message after the restart carry seq 4");

    // A new member sees the right latest seq and the surviving member.
    let mut bob = engine.open_session("bob", Encoding::MsgPack, exp);
    match join(&mut bob, "lobby").await {
        ServerFrame::Ok { seq, members, .. } => {
            assert_eq!(seq, Some(4));
            let mut members = members.unwrap();
            members.sort();
            assert_eq!(members, vec!["alice".to_string(), "bob".to_string()]);
        }
        other => panic!("expected ok, got {other:?}"),
    }

    // The other room never noticed.
    send(&mut carol, "other", 1).await;
    let other = collect(&engine, &carol, 1, |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_eq!(seqs(&other), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_restarted_after_messages_were_stored_meanwhile_replays_them() {
    let (_dir, engine) = start().await;
    let exp = now_ms() + 3_600_000;
    let mut alice = engine.open_session("alice", Encoding::MsgPack, exp);
    join(&mut alice, "r").await;
    send(&mut alice, "r", 1).await;
    collect(&engine, &alice, 1, |f| matches!(f, ServerFrame::Msg(_))).await;

    // Panic, and send at once: the publish may reach the dead actor; the
    // restarted one must still deliver seq 2 exactly once.
    engine.inject_room_panic("r").await.unwrap();
    send(&mut alice, "r", 2).await;
    let first = collect(&engine, &alice, 1, |f| matches!(f, ServerFrame::Msg(_))).await;
    // Whatever else arrives in the next moment must not be seq 2 again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut delivered = seqs(&first);
    let mut items = Vec::new();
    alice.session_handle().outbox.drain(&mut items);
    for item in items {
        match item {
            OutItem::Frame(bytes) => {
                if let ServerFrame::Msg(m) = decode_server(&bytes, Encoding::MsgPack).unwrap() {
                    delivered.push(m.seq)
                }
            }
            OutItem::Replay { after, upto, .. } => delivered.extend(after + 1..=upto),
            OutItem::Pong(_) => {}
        }
    }
    assert_eq!(delivered, vec![2], "seq 2 delivered exactly once, live or by replay");
}
