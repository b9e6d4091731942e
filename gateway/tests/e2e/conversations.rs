//! docs/protocol.md, "Version 1.1": a user's conversations and read
//! markers, over the WebSocket and `GET /api/conversations`.

use crate::common::*;
use viche_client::{ClientFrame, ServerFrame};

#[tokio::test]
async fn welcome_names_the_features_of_1_1() {
    let server = Server::start().await;
    let conn = server.session("alice").await;
    let features = conn.welcome().unwrap().features.clone();
    assert_eq!(features, vec!["conversations", "edits", "reactions", "replies"]);
}

#[tokio::test]
async fn a_dm_sent_to_a_user_who_is_offline_is_found_after_login() {
    let server = Server::start().await;
    let _cat = server.register("cat").await; // registered, then logged out
    let mut ann = server.session("ann").await;
    ann.dm("cat", "are you there?", "d1").await.unwrap();
    ann.dm("cat", "call me", "d2").await.unwrap();

    // Cat logs in on a device that never saw anything.
    let login = server.http().login("cat", PASSWORD).await.unwrap();
    let mut cat = server.connect(&login.token).await;
    let page = cat.conversations(None, None).await.unwrap();
    assert!(!page.more);
    assert_eq!(page.items.len(), 1);
    let c = &page.items[0];
    assert_eq!(
        (c.room.as_str(), c.kind.as_str(), c.peer.as_deref(), c.last_seq, c.read_seq, c.unread),
        ("dm:ann:cat", "dm", Some("ann"), 2, 0, 2)
    );
    let last = c.last.as_ref().expect("the newest message");
    assert_eq!((last.seq, last.from.as_str(), last.body.as_str()), (2, "ann", "call me"));
    assert_eq!(c.last_ts, last.ts);

    // The same over HTTP.
    let http = server.http().conversations(&login.token, None, None).await.unwrap();
    assert_eq!(http.conversations, page.items);
    assert!(!http.more);

    // Ann's side: she has read what she sent.
    let ann_side = ann.conversations(None, None).await.unwrap();
    assert_eq!((ann_side.items[0].peer.as_deref(), ann_side.items[0].unread), (Some("cat"), 0));
}

#[tokio::test]
async fn read_markers_follow_the_user_to_every_session() {
    let server = Server::start().await;
    let token = server.user("bob").await;
    let mut phone = server.connect(&token).await;
    let mut laptop = server.connect(&token).await;
    let mut ann = server.session("ann").await;
    for i in 1..=3 {
        ann.dm("bob", &format!("m{i}"), &format!("d{i}")).await.unwrap();
    }
    assert_eq!(phone.recv_msgs(3, T).await.unwrap().len(), 3);
    assert_eq!(laptop.recv_msgs(3, T).await.unwrap().len(), 3);

    phone.read("dm:ann:bob", 2).await.unwrap();
    match laptop.wait_for(T, |f| matches!(f, ServerFrame::Read { .. })).await.unwrap() {
        ServerFrame::Read { room, seq } => assert_eq!((room.as_str(), seq), ("dm:ann:bob", 2)),
        other => unreachable!("{other:?}"),
    }
    assert_none(&mut phone, "a read echoed to its own session", |f| matches!(f, ServerFrame::Read { .. })).await;
    let unread = laptop.conversations(None, None).await.unwrap().items[0].unread;
    assert_eq!(unread, 1, "the laptop's badge agrees with the phone");

    // Backwards changes nothing and tells no one; past the end stops at the end.
    phone.read("dm:ann:bob", 1).await.unwrap();
    assert_none(&mut laptop, "a read that moved nothing", |f| matches!(f, ServerFrame::Read { .. })).await;
    phone.read("dm:ann:bob", 1_000).await.unwrap();
    match laptop.wait_for(T, |f| matches!(f, ServerFrame::Read { .. })).await.unwrap() {
        ServerFrame::Read { seq, .. } => assert_eq!(seq, 3),
        other => unreachable!("{other:?}"),
    }
    let http = server.http().conversations(&token, None, None).await.unwrap();
    assert_eq!((http.conversations[0].read_seq, http.conversations[0].unread), (3, 0));
    // Ann never read what Bob did; her marker is her own.
    assert_eq!(ann.conversations(None, None).await.unwrap().items[0].read_seq, 3, "her own messages only");
}

#[tokio::test]
async fn unread_counts_follow_messages_and_the_sender_reads_its_own() {
    let server = Server::start().await;
    let mut ann = server.session("ann").await;
    let mut bob = server.session("bob").await;
    ann.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    send_n(&mut ann, "lobby", 4, "a").await;
    let lobby = |page: viche_client::ConversationsPage| page.items.into_iter().find(|c| c.room == "lobby").unwrap();
    let c = lobby(bob.conversations(None, None).await.unwrap());
    assert_eq!((c.kind.as_str(), c.peer, c.last_seq, c.unread), ("room", None, 4, 4));
    assert_eq!(lobby(ann.conversations(None, None).await.unwrap()).unread, 0);
    bob.read("lobby", 4).await.unwrap();
    send_retrying(&mut bob, "lobby", "reply", "b1").await;
    assert_eq!(lobby(bob.conversations(None, None).await.unwrap()).unread, 0);
    assert_eq!(lobby(ann.conversations(None, None).await.unwrap()).unread, 1);
}

#[tokio::test]
async fn read_outside_ones_conversations_is_not_joined() {
    let server = Server::start().await;
    let mut ann = server.session("ann").await;
    let _bob = server.session("bob").await;
    assert_eq!(code_of(ann.read("never-joined", 1).await), "not_joined");
    assert_eq!(code_of(ann.read("dm:ann:bob", 1).await), "not_joined", "a DM with no message yet");
    assert_eq!(code_of(ann.read("dm:bob:cat", 1).await), "forbidden", "someone else's DM");
    assert_eq!(code_of(ann.read("bad room!", 1).await), "invalid");
    assert_eq!(ann.conversations(None, None).await.unwrap().items, Vec::new(), "nothing was added");
}

#[tokio::test]
async fn leave_with_forget_removes_the_conversation_and_without_it_keeps_it() {
    let server = Server::start().await;
    let token = server.user("ann").await;
    let mut ann = server.connect(&token).await;
    let mut other = server.connect(&token).await;
    for room in ["a", "b"] {
        ann.join(room, None).await.unwrap();
    }
    send_retrying(&mut ann, "a", "hello", "c1").await;
    ann.leave("a").await.unwrap();
    let rooms = |page: viche_client::ConversationsPage| -> Vec<String> {
        let mut r: Vec<String> = page.items.into_iter().map(|c| c.room).collect();
        r.sort();
        r
    };
    assert_eq!(rooms(ann.conversations(None, None).await.unwrap()), vec!["a", "b"], "leave alone keeps it");
    // Forget from a session that is not joined: it goes for every session.
    other.forget("a").await.unwrap();
    assert_eq!(rooms(ann.conversations(None, None).await.unwrap()), vec!["b"]);
    assert_eq!(code_of(ann.read("a", 1).await), "not_joined", "its marker went with it");
    ann.forget("b").await.unwrap();
    assert_eq!(rooms(other.conversations(None, None).await.unwrap()), Vec::<String>::new());
    assert_eq!(code_of(ann.forget("b").await), "not_joined", "nothing left to leave or forget");
    // The session left b too: a send there needs a join.
    assert_eq!(code_of(ann.send("b", "x", "c2").await), "not_joined");
    // Joining again adds it again, with its marker from zero.
    ann.join("a", None).await.unwrap();
    let c = ann.conversations(None, None).await.unwrap().items.remove(0);
    assert_eq!((c.room.as_str(), c.last_seq, c.read_seq, c.unread), ("a", 1, 0, 1));
}

#[tokio::test]
async fn a_forgotten_dm_returns_with_its_next_message() {
    let server = Server::start().await;
    let mut ann = server.session("ann").await;
    let mut bob = server.session("bob").await;
    ann.dm("bob", "one", "d1").await.unwrap();
    bob.forget("dm:ann:bob").await.unwrap();
    assert_eq!(bob.conversations(None, None).await.unwrap().items.len(), 0);
    ann.dm("bob", "two", "d2").await.unwrap();
    let c = bob.conversations(None, None).await.unwrap().items.remove(0);
    assert_eq!((c.room.as_str(), c.last_seq, c.unread), ("dm:ann:bob", 2, 1));
}

#[tokio::test]
async fn public_rooms_are_bounded_per_user_and_dms_are_not_counted() {
    let server = Server::start_with(Opts {
        extra_args: vec!["--max-public-conversations-per-user".into(), "3".into()],
        ..Opts::default()
    })
    .await;
    let mut ann = server.session("ann").await;
    let _bob = server.session("bob").await;
    for room in ["r1", "r2", "r3"] {
        ann.join(room, None).await.unwrap();
    }
    ann.join("r3", None).await.unwrap(); // again: nothing new
    assert_eq!(code_of(ann.join("r4", None).await), "invalid");
    ann.dm("bob", "dms do not count", "d1").await.unwrap();
    assert_eq!(ann.conversations(None, None).await.unwrap().items.len(), 4);
    // Leaving without forget frees nothing; forgetting does.
    ann.leave("r1").await.unwrap();
    assert_eq!(code_of(ann.join("r4", None).await), "invalid");
    ann.forget("r2").await.unwrap();
    ann.join("r4", None).await.unwrap();
}

#[tokio::test]
async fn conversations_page_by_last_activity_with_bounded_limits() {
    let server = Server::start().await;
    let token = server.user("ann").await;
    let mut ann = server.connect(&token).await;
    let peers = ["bob", "cat", "dan", "eve"];
    for peer in peers {
        let mut p = server.session(peer).await;
        p.dm("ann", "hi", "d1").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await; // distinct last_ts
    }
    let first = ann.conversations(None, Some(3)).await.unwrap();
    let names = |items: &[viche_client::Conversation]| -> Vec<String> {
        items.iter().map(|c| c.peer.clone().unwrap()).collect()
    };
    assert_eq!((names(&first.items), first.more), (vec!["eve".into(), "dan".into(), "cat".into()], true));
    let rest = ann.conversations(Some(first.items[2].last_ts), Some(3)).await.unwrap();
    assert_eq!((names(&rest.items), rest.more), (vec!["bob".to_string()], false));
    let http = server.http().conversations(&token, Some(first.items[2].last_ts), Some(3)).await.unwrap();
    assert_eq!(names(&http.conversations), vec!["bob".to_string()]);

    for limit in [0, 201] {
        assert_eq!(code_of(ann.conversations(None, Some(limit)).await), "invalid", "limit {limit}");
        let raw = server.http().get_raw(&format!("/api/conversations?limit={limit}"), Some(&token)).await.unwrap();
        assert_eq!(raw.status, 400, "limit {limit} over HTTP: {}", raw.body);
    }
    assert_eq!(ann.conversations(None, Some(200)).await.unwrap().items.len(), 4);
    let raw = server.http().get_raw("/api/conversations?before=soon", Some(&token)).await.unwrap();
    assert_eq!(raw.status, 400);
    let raw = server.http().get_raw("/api/conversations", None).await.unwrap();
    assert_eq!(raw.status, 401);
    let raw = server.http().get_raw("/api/conversations", Some("not-a-token")).await.unwrap();
    assert_eq!(raw.status, 401);
}

#[tokio::test]
async fn a_v1_client_sees_nothing_new() {
    let server = Server::start().await;
    let mut ann = server.session("ann").await;
    let mut bob = server.session("bob").await;
    ann.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    send_retrying(&mut ann, "lobby", "plain", "c1").await;
    let m = bob.recv_msg(T).await.unwrap();
    // No 1.1 field appears on an ordinary message.
    assert_eq!((m.kind, m.target, m.reply_to, m.emoji, m.on, m.edited_ts, m.deleted, m.reactions), Default::default());
    // `read` frames go only to a user's other sessions, after a `read` of theirs.
    ann.send_frame(&ClientFrame::Ping { req: 9 }).await.unwrap();
    assert_none(&mut bob, "a read push", |f| matches!(f, ServerFrame::Read { .. })).await;
}
