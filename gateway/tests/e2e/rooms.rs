//! docs/protocol.md, client and server frames, for public rooms: join, presence, typing, send, ack,
//! msg fan-out, seq numbering, leave, room names.

use crate::common::*;
use viche_client::{ClientFrame, Encoding, ServerFrame};

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn join_ok_carries_room_seq_members_more() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;

    // The raw `ok` has every field of a join answer.
    let reply = a.request(|req| ClientFrame::Join { req, room: "lobby".into(), since: None }).await.unwrap();
    match reply {
        ServerFrame::Ok { room, seq, members, more, .. } => {
            assert_eq!(room.as_deref(), Some("lobby"));
            assert_eq!(seq, Some(0), "a room without messages has seq 0");
            assert_eq!(members, Some(vec!["alice".to_string()]), "the caller is a member");
            assert_eq!(more, Some(false));
        }
        other => panic!("expected ok, got {other:?}"),
    }
    a.send("lobby", "one", "c1").await.unwrap();
    a.send("lobby", "two", "c2").await.unwrap();

    let ok = b.join("lobby", None).await.unwrap();
    assert_eq!(ok.room, "lobby");
    assert_eq!(ok.seq, 2, "the room's latest seq");
    assert_eq!(sorted(ok.members), vec!["alice", "bob"]);
    assert!(!ok.more);

    // Joining again answers ok again, and membership is not doubled.
    let again = b.join("lobby", None).await.unwrap();
    assert_eq!(sorted(again.members), vec!["alice", "bob"]);
    a.send("lobby", "three", "c3").await.unwrap();
    let m = b.recv_msg(T).await.unwrap();
    assert_eq!(m.seq, 3);
    assert_none(&mut b, "duplicate msg after a second join", |f| matches!(f, ServerFrame::Msg(_))).await;
}

#[tokio::test]
async fn members_list_one_entry_per_user() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut a1 = server.connect(&token).await;
    let mut a2 = server.connect(&token).await;
    a1.join("lobby", None).await.unwrap();
    let ok = a2.join("lobby", None).await.unwrap();
    assert_eq!(ok.members, vec!["alice"], "usernames, not sessions");
}

#[tokio::test]
async fn presence_on_first_join_and_last_leave() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let token_b = server.user("bob").await;
    let mut b1 = server.connect(&token_b).await;
    let mut b2 = server.connect(&token_b).await;
    a.join("lobby", None).await.unwrap();

    b1.join("lobby", None).await.unwrap();
    let p = a.wait_for(T, |f| matches!(f, ServerFrame::Presence { .. })).await.unwrap();
    assert_eq!(p, ServerFrame::Presence { room: "lobby".into(), user: "bob".into(), online: true });

    // A second session of bob joining, then leaving, is no presence change.
    b2.join("lobby", None).await.unwrap();
    b2.leave("lobby").await.unwrap();
    // Sentinel: b1's message is fanned out after those joins/leaves were handled.
    b1.send("lobby", "sentinel", "s1").await.unwrap();
    a.recv_msg(T).await.unwrap();
    assert!(
        !a.pending().iter().any(|f| matches!(f, ServerFrame::Presence { .. })),
        "no presence for a user's second session: {:?}",
        a.pending()
    );

    // Bob's last session leaves: offline.
    b1.leave("lobby").await.unwrap();
    let p = a.wait_for(T, |f| matches!(f, ServerFrame::Presence { .. })).await.unwrap();
    assert_eq!(p, ServerFrame::Presence { room: "lobby".into(), user: "bob".into(), online: false });

    // A presence is not sent to the user it is about: bob saw none of his own.
    for f in b1.take_pending() {
        assert!(!matches!(&f, ServerFrame::Presence { user, .. } if user == "bob"), "{f:?}");
    }
}

#[tokio::test]
async fn disconnect_is_offline_presence() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    a.join("lobby", None).await.unwrap();
    b.join("lobby", None).await.unwrap();
    a.wait_for(T, |f| matches!(f, ServerFrame::Presence { online: true, .. })).await.unwrap();
    b.close().await.unwrap();
    let p = a.wait_for(T, |f| matches!(f, ServerFrame::Presence { .. })).await.unwrap();
    assert_eq!(p, ServerFrame::Presence { room: "lobby".into(), user: "bob".into(), online: false });
    // Dropping the socket without a close frame counts too.
    let mut c = server.session("carol").await;
    c.join("lobby", None).await.unwrap();
    a.wait_for(T, |f| matches!(f, ServerFrame::Presence { online: true, .. })).await.unwrap();
    drop(c);
    let p = a.wait_for(T, |f| matches!(f, ServerFrame::Presence { .. })).await.unwrap();
    assert_eq!(p, ServerFrame::Presence { room: "lobby".into(), user: "carol".into(), online: false });
}

#[tokio::test]
async fn typing_reaches_others_not_self() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    let mut outsider = server.session("carol").await;
    a.join("lobby", None).await.unwrap();
    b.join("lobby", None).await.unwrap();
    outsider.join("elsewhere", None).await.unwrap();

    a.typing("lobby").await.unwrap();
    let t = b.wait_for(T, |f| matches!(f, ServerFrame::Typing { .. })).await.unwrap();
    assert_eq!(t, ServerFrame::Typing { room: "lobby".into(), user: "alice".into() });

    // Sentinel from b: by the time a sees it, any typing to a would have come first.
    b.send("lobby", "sentinel", "s1").await.unwrap();
    a.recv_msg(T).await.unwrap();
    assert!(
        !a.pending().iter().any(|f| matches!(f, ServerFrame::Typing { .. })),
        "typing echoed to self: {:?}",
        a.pending()
    );
    assert_none(&mut outsider, "typing in a room not joined", |f| matches!(f, ServerFrame::Typing { .. })).await;
    // Typing is not stored.
    let page = a.history("lobby", None, None).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![1]);
}

#[tokio::test]
async fn send_is_acked_and_delivered_to_every_member_including_sender() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    let mut c = server.session("carol").await;
    let mut outsider = server.session("dave").await;
    for conn in [&mut a, &mut b, &mut c] {
        conn.join("lobby", None).await.unwrap();
    }
    let before = now_ms();
    let ack = a.send("lobby", "hello, world", "cid-1").await.unwrap();
    assert_eq!(ack.room, "lobby");
    assert_eq!(ack.seq, 1);
    assert_eq!(ack.cid, "cid-1");
    assert!(ack.ts + 60_000 >= before && ack.ts <= now_ms() + 60_000, "ts is epoch ms: {}", ack.ts);
    for conn in [&mut a, &mut b, &mut c] {
        let m = conn.recv_msg(T).await.unwrap();
        assert_eq!(m.room, "lobby");
        assert_eq!(m.seq, ack.seq);
        assert_eq!(m.from, "alice");
        assert_eq!(m.body, "hello, world");
        assert_eq!(m.cid, "cid-1");
        assert_eq!(m.ts, ack.ts, "msg and ack carry the stored ts");
    }
    assert_none(&mut outsider, "msg outside the room", |f| matches!(f, ServerFrame::Msg(_))).await;
}

#[tokio::test]
async fn seqs_are_consecutive_from_one_and_in_send_order() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    let mut watcher = server.session("carol").await;
    for conn in [&mut a, &mut b, &mut watcher] {
        conn.join("lobby", None).await.unwrap();
    }
    // Pipelined sends of one session are numbered in the order sent.
    let frames: Vec<ClientFrame> = (0..30)
        .map(|i| ClientFrame::Send {
            req: 1000 + i,
            room: "lobby".into(),
            body: format!("a{i}"),
            cid: format!("a{i}"),
            reply_to: None,
        })
        .collect();
    a.send_frames(&frames).await.unwrap();
    // Meanwhile b sends too.
    let b_acks = send_n(&mut b, "lobby", 10, "b").await;
    let mut a_acks = Vec::new();
    for i in 0..30 {
        match a.wait_reply(1000 + i, T).await.unwrap() {
            ServerFrame::Ack { seq, cid, .. } => a_acks.push((seq, cid)),
            other => panic!("{other:?}"),
        }
    }
    let a_seqs: Vec<u64> = a_acks.iter().map(|(s, _)| *s).collect();
    assert!(a_seqs.windows(2).all(|w| w[0] < w[1]), "one session's sends keep their order: {a_seqs:?}");

    let mut all: Vec<u64> = a_seqs.clone();
    all.extend(b_acks.iter().map(|a| a.seq));
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<_>>(), "seq starts at 1, no gap, no reuse");

    // Every member sees all 40 in seq order.
    for conn in [&mut a, &mut b, &mut watcher] {
        let msgs = conn.recv_msgs(40, T).await.unwrap();
        assert_eq!(seqs(&msgs), (1..=40).collect::<Vec<_>>());
        let a_bodies: Vec<&str> = msgs.iter().filter(|m| m.from == "alice").map(|m| m.body.as_str()).collect();
        let expected: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
        assert_eq!(a_bodies, expected);
    }
}

#[tokio::test]
async fn rooms_are_numbered_independently() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    a.join("r1", None).await.unwrap();
    a.join("r2", None).await.unwrap();
    assert_eq!(a.send("r1", "x", "1").await.unwrap().seq, 1);
    assert_eq!(a.send("r1", "x", "2").await.unwrap().seq, 2);
    assert_eq!(a.send("r2", "x", "3").await.unwrap().seq, 1);
    assert_eq!(a.send("r1", "x", "4").await.unwrap().seq, 3);
}

#[tokio::test]
async fn send_to_a_room_not_joined_is_not_joined() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    b.join("lobby", None).await.unwrap();
    // An existing room and a room that does not exist.
    assert_eq!(code_of(a.send("lobby", "hi", "c1").await), "not_joined");
    assert_eq!(code_of(a.send("nowhere", "hi", "c2").await), "not_joined");
    // Nothing was stored or delivered.
    assert_none(&mut b, "msg from a non-member", |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_eq!(b.join("lobby", None).await.unwrap().seq, 0);
    // The error carries the request's ref.
    a.send_frame(&ClientFrame::Send {
        req: 555,
        room: "lobby".into(),
        body: "x".into(),
        cid: "c3".into(),
        reply_to: None,
    })
    .await
    .unwrap();
    match next_frame(&mut a).await {
        ServerFrame::Error { req, code, .. } => assert_eq!((req, code.as_str()), (Some(555), "not_joined")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn leave_stops_delivery_and_sending() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let mut b = server.session("bob").await;
    a.join("lobby", None).await.unwrap();
    b.join("lobby", None).await.unwrap();
    b.send("lobby", "before", "c1").await.unwrap();
    assert_eq!(a.recv_msg(T).await.unwrap().body, "before");
    a.leave("lobby").await.unwrap();
    b.send("lobby", "after", "c2").await.unwrap();
    assert_none(&mut a, "msg after leave", |f| matches!(f, ServerFrame::Msg(_))).await;
    assert_eq!(code_of(a.send("lobby", "x", "c3").await), "not_joined");
    // Join again: live messages resume.
    let ok = a.join("lobby", None).await.unwrap();
    assert_eq!(ok.seq, 2);
    b.send("lobby", "again", "c4").await.unwrap();
    let m = a.recv_msg(T).await.unwrap();
    assert_eq!((m.seq, m.body.as_str()), (3, "again"));
}

#[tokio::test]
async fn room_names_at_and_past_the_bounds() {
    let server = Server::start().await;
    let mut a = server.session("alice").await;
    let max = "r".repeat(64);
    for (i, room) in ["a", "A.b-c_9", max.as_str()].into_iter().enumerate() {
        let ok = a.join(room, None).await.unwrap_or_else(|e| panic!("join {room:?}: {e}"));
        assert_eq!(ok.room, room);
        a.send(room, "hi", &format!("c{i}")).await.unwrap();
        let page = a.history(room, None, None).await.unwrap();
        assert_eq!(page.messages.len(), 1);
    }
    let too_long = "r".repeat(65);
    let bad = [
        "",
        too_long.as_str(),
        "has space",
        "slash/no",
        "ünï",
        "semi;colon",
        "dm:",
        "dm:alice",
        "dm:bob:alice",
        "dm:alice:alice",
    ];
    for room in bad {
        assert_eq!(code_of(a.join(room, None).await), "invalid", "join {room:?}");
        assert_eq!(code_of(a.history(room, None, None).await), "invalid", "history {room:?}");
        let res = a.send(room, "x", "c").await;
        let code = code_of(res);
        assert!(code == "invalid" || code == "not_joined", "send to {room:?}: {code}");
    }
    a.ping().await.unwrap();
}

#[tokio::test]
async fn each_member_sees_the_same_order_under_concurrent_senders() {
    let server = Server::start().await;
    let names = ["user1", "user2", "user3", "user4"];
    let mut conns = Vec::new();
    for n in names {
        let mut c = server.session(n).await;
        c.join("busy", None).await.unwrap();
        conns.push(c);
    }
    let per = 15;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                send_n(&mut c, "busy", per, &format!("s{i}")).await;
                c
            })
        })
        .collect();
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    let total = per * names.len();
    let mut first: Option<Vec<(u64, String)>> = None;
    for c in &mut conns {
        let msgs = c.recv_msgs(total, T).await.unwrap();
        assert_eq!(seqs(&msgs), (1..=total as u64).collect::<Vec<_>>());
        let view: Vec<(u64, String)> = msgs.into_iter().map(|m| (m.seq, m.cid)).collect();
        match &first {
            None => first = Some(view),
            Some(f) => assert_eq!(&view, f, "every member sees the same messages under the same seqs"),
        }
    }
}

#[tokio::test]
async fn a_retried_cid_gets_the_original_ack_and_is_not_delivered_again() {
    let server = Server::start().await;
    let token = server.user("alice").await;
    let mut a1 = server.connect(&token).await;
    let mut a2 = server.connect(&token).await;
    let mut watcher = server.session("bob").await;
    for c in [&mut a1, &mut a2, &mut watcher] {
        c.join("lobby", None).await.unwrap();
    }
    let first = a1.send("lobby", "once", "retry-me").await.unwrap();
    assert_eq!(first.seq, 1);
    // Same connection.
    let again = a1.send("lobby", "once", "retry-me").await.unwrap();
    assert_eq!((again.seq, again.cid.as_str(), again.room.as_str()), (1, "retry-me", "lobby"));
    assert_eq!(again.ts, first.ts, "the original ack");
    // Another connection of the same user.
    let other = a2.send("lobby", "once", "retry-me").await.unwrap();
    assert_eq!((other.seq, other.ts), (first.seq, first.ts));
    // Pipelined duplicates (a retry while the first is in flight).
    let frames: Vec<_> = (0..3)
        .map(|i| viche_client::ClientFrame::Send {
            req: 100 + i,
            room: "lobby".into(),
            body: "twice".into(),
            cid: "in-flight".into(),
            reply_to: None,
        })
        .collect();
    a1.send_frames(&frames).await.unwrap();
    let mut in_flight = Vec::new();
    for i in 0..3 {
        match a1.wait_reply(100 + i, T).await.unwrap() {
            ServerFrame::Ack { seq, .. } => in_flight.push(seq),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(in_flight, vec![2, 2, 2], "one message for one cid");

    // The same cid from another user is another message.
    let b = watcher.send("lobby", "mine", "retry-me").await.unwrap();
    assert_eq!(b.seq, 3);
    // No seq was consumed by the retries.
    assert_eq!(a1.send("lobby", "next", "fresh").await.unwrap().seq, 4);

    let msgs = watcher.recv_msgs(4, T).await.unwrap();
    assert_eq!(seqs(&msgs), vec![1, 2, 3, 4]);
    assert_none(&mut watcher, "a duplicate delivery", |f| matches!(f, ServerFrame::Msg(_))).await;
    let page = watcher.history("lobby", None, None).await.unwrap();
    assert_eq!(page.messages.len(), 4, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_lists_at_most_a_thousand_members_per_page() {
    // 1,002 connections from one address: past the default per-address cap.
    let server = Server::start_with(Opts {
        extra_args: vec!["--max-connections-per-ip".into(), "2000".into()],
        ..Opts::default()
    })
    .await;
    let exp = now_s() + 3600;
    // 1,001 users in the room (tokens minted with the secret: no argon2).
    let mut conns = Vec::new();
    for i in 0..1001 {
        let mut conn = server.connect(&mint(&format!("m{i:04}"), exp)).await;
        conn.join("big", None).await.expect("join");
        conns.push(conn);
    }
    let mut newcomer = server.connect(&mint("zz-newcomer", exp)).await;
    let ok = newcomer.join("big", None).await.unwrap();
    assert_eq!(ok.members_total, Some(1002), "everyone is counted");
    assert_eq!(ok.members.len(), 1000, "but the ok lists a thousand");
    let mut sorted = ok.members.clone();
    sorted.sort();
    assert_eq!(ok.members, sorted, "in name order");
    // The rest come by pages.
    let (rest, more) = newcomer.members("big", ok.members.last().map(String::as_str)).await.unwrap();
    assert_eq!(rest, vec!["m1000".to_string(), "zz-newcomer".to_string()]);
    assert!(!more);
    let (first, more) = newcomer.members("big", None).await.unwrap();
    assert_eq!((first.len(), more), (1000, true));
    // Only a member may list a room.
    let mut outsider = server.connect(&mint("outsider", exp)).await;
    match outsider.members("big", None).await {
        Err(viche_client::ClientError::Server { code, .. }) => assert_eq!(code.as_str(), "not_joined"),
        other => panic!("{other:?}"),
    }
}

/// A room larger than one fan-out's direct writes (its first 128 members'
/// pushes write to their sockets; the rest are queued for their
/// connections): every member, MessagePack or JSON, on either side of
/// that line, gets every message once and in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_past_the_direct_writes_of_one_fanout_delivers_to_everyone_in_order() {
    let server = Server::start_with(Opts::with_args(&["--max-connections-per-ip", "1000"])).await;
    let exp = now_s() + 3600;
    let mut conns = Vec::new();
    for i in 0..300 {
        let encoding = if i % 3 == 0 { Encoding::Json } else { Encoding::MsgPack };
        let mut conn = server.connect_enc(&mint(&format!("w{i:03}"), exp), encoding).await;
        conn.join("wide", None).await.expect("join");
        conns.push(conn);
    }
    // Five messages, then a sixth once all five are in: a duplicate of
    // any would arrive before it.
    for round in [0..5, 5..6] {
        for k in round.clone() {
            let sender = &mut conns[k * 37];
            let ack = sender.send("wide", &format!("m{k}"), &format!("c{k}")).await.expect("ack");
            assert_eq!(ack.seq, k as u64 + 1);
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            let msgs = conn.recv_msgs(round.len(), T).await.unwrap_or_else(|e| panic!("member {i}: {e}"));
            let expected: Vec<u64> = round.clone().map(|k| k as u64 + 1).collect();
            assert_eq!(seqs(&msgs), expected, "member {i}");
            assert_eq!(msgs[0].body, format!("m{}", round.start), "member {i}");
        }
    }
}
