//! docs/protocol.md, "Client frames": direct messages and DM rooms.

use crate::common::*;
use viche_client::ServerFrame;
use viche_protocol::validate::dm_room;

#[tokio::test]
async fn dm_reaches_every_session_of_both_users_without_joining() {
    let server = Server::start().await;
    let token_a = server.user("alice").await;
    let token_b = server.user("bob").await;
    let mut a1 = server.connect(&token_a).await;
    let mut a2 = server.connect(&token_a).await;
    let mut b1 = server.connect(&token_b).await;
    let mut b2 = server.connect(&token_b).await;
    let mut carol = server.session("carol").await;
    let room = dm_room("alice", "bob").unwrap();
    assert_eq!(room, "dm:alice:bob");

    let ack = a1.dm("bob", "psst", "d1").await.unwrap();
    assert_eq!(ack.room, room);
    assert_eq!(ack.seq, 1);
    assert_eq!(ack.cid, "d1");
    for conn in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let m = conn.recv_msg(T).await.unwrap();
        assert_eq!(
            (m.room.as_str(), m.seq, m.from.as_str(), m.body.as_str(), m.cid.as_str()),
            (room.as_str(), 1, "alice", "psst", "d1")
        );
        assert_eq!(m.ts, ack.ts);
    }
    assert_none(&mut carol, "someone else's DM", |f| matches!(f, ServerFrame::Msg(_))).await;

    // The answer goes back the same way, in the same room, next seq.
    let ack = b2.dm("alice", "hi back", "d2").await.unwrap();
    assert_eq!((ack.room.as_str(), ack.seq), (room.as_str(), 2));
    for conn in [&mut a1, &mut a2, &mut b1, &mut b2] {
        assert_eq!(conn.recv_msg(T).await.unwrap().seq, 2);
    }
}

#[tokio::test]
async fn dm_room_ids_are_in_byte_order() {
    let server = Server::start().await;
    let mut upper = server.session("Zed").await;
    let mut lower = server.session("amy").await;
    // 'Z' (0x5a) sorts before 'a' (0x61).
    let ack = lower.dm("Zed", "hi", "c1").await.unwrap();
    assert_eq!(ack.room, "dm:Zed:amy");
    assert_eq!(upper.recv_msg(T).await.unwrap().room, "dm:Zed:amy");
}

#[tokio::test]
async fn dm_to_unknown_user_is_not_found() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    assert_eq!(code_of(a.dm("nobody", "hello?", "c1").await), "not_found");
    // Case-sensitive usernames: Alice is not alice.
    let _bob = server.session("bob").await;
    assert_eq!(code_of(a.dm("Bob", "hello?", "c2").await), "not_found");
    a.ping().await.unwrap();
}

#[tokio::test]
async fn dm_field_bounds() {
    let server = Server::start_with(Opts { max_body_bytes: Some(100), ..Opts::default() }).await;
    let mut a = server.session("alice").await;
    server.register("bob").await;
    assert_eq!(code_of(a.dm("bob", &"x".repeat(101), "c1").await), "too_large");
    assert_eq!(code_of(a.dm("bob", "", "c2").await), "invalid");
    assert_eq!(code_of(a.dm("bob", "x", "").await), "invalid");
    assert_eq!(code_of(a.dm("bob", "x", &"c".repeat(65)).await), "invalid");
    let ack = a.dm("bob", &"x".repeat(100), &"c".repeat(64)).await.unwrap();
    assert_eq!(ack.seq, 1, "nothing was stored by the refused DMs");
}

#[tokio::test]
async fn a_third_user_cannot_join_read_or_send_to_a_dm_room() {
    let server = Server::start().await;
    let token_a = server.user("alice").await;
    let mut a = server.connect(&token_a).await;
    let _b = server.session("bob").await;
    let token_c = server.user("carol").await;
    let mut c = server.connect(&token_c).await;
    a.dm("bob", "secret", "d1").await.unwrap();

    assert_eq!(code_of(c.join("dm:alice:bob", None).await), "forbidden");
    assert_eq!(code_of(c.history("dm:alice:bob", None, None).await), "forbidden");
    let sent = code_of(c.send("dm:alice:bob", "let me in", "x1").await);
    assert!(sent == "forbidden" || sent == "not_joined", "send by a third user: {sent}");
    let http = server.http().history(&token_c, "dm:alice:bob", None, None).await.unwrap_err();
    assert_eq!(http.status(), Some(403), "{http}");
    assert_eq!(http.code().map(|c| c.as_str()), Some("forbidden"));

    // The participants can read it.
    let page = a.history("dm:alice:bob", None, None).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].body, "secret");
    let page = server.http().history(&token_a, "dm:alice:bob", None, None).await.unwrap();
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn a_participant_may_join_the_dm_room_and_gets_each_message_once() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    a.dm("bob", "first", "d1").await.unwrap();
    b.recv_msg(T).await.unwrap();
    a.recv_msg(T).await.unwrap();

    let ok = b.join("dm:alice:bob", Some(0)).await.unwrap();
    assert_eq!(ok.seq, 1);
    let replayed = b.recv_msg(T).await.unwrap();
    assert_eq!(replayed.seq, 1);

    // Joined and a DM participant: each new message arrives once.
    a.dm("bob", "second", "d2").await.unwrap();
    let m = b.recv_msg(T).await.unwrap();
    assert_eq!(m.seq, 2);
    a.dm("bob", "third", "d3").await.unwrap();
    let m = b.recv_msg(T).await.unwrap();
    assert_eq!(m.seq, 3, "no duplicate of seq 2 before seq 3");
    assert_none(&mut b, "a duplicate DM", |f| matches!(f, ServerFrame::Msg(_))).await;

    // A joined participant may also `send` to the DM room.
    let ack = b.send("dm:alice:bob", "via send", "s1").await.unwrap();
    assert_eq!(ack.seq, 4);
    let m = a.wait_for(T, |f| matches!(f, ServerFrame::Msg(m) if m.seq == 4)).await.unwrap();
    assert!(matches!(m, ServerFrame::Msg(m) if m.body == "via send" && m.from == "bob"));
}

#[tokio::test]
async fn dm_to_self_is_refused() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let code = code_of(a.dm("alice", "me", "c1").await);
    assert_eq!(code, "invalid", "a DM needs two different users");
}
