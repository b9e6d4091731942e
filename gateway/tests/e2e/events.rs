//! docs/protocol.md, "Version 1.1": edits, deletions, reactions and
//! replies, stored as sequenced events: delivered live, replayed with
//! `since`, paged with `history`, idempotent by `cid`, and refused with the
//! code the contract names.

use crate::common::*;
use viche_client::{Connection, Msg, MsgKind};

/// Ann and Bob in `lobby`; Ann's message "typo" is seq 1.
async fn two_in_a_room(server: &Server) -> (Connection, Connection) {
    let mut ann = server.session("ann").await;
    let mut bob = server.session("bob").await;
    ann.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    assert_eq!(send_retrying(&mut ann, "lobby", "typo", "m1").await.seq, 1);
    assert_eq!(bob.recv_msg(T).await.unwrap().seq, 1);
    assert_eq!(ann.recv_msg(T).await.unwrap().seq, 1, "her own, as every member gets it");
    (ann, bob)
}

/// The `msg` with `seq`, skipping earlier ones.
async fn recv_seq(conn: &mut Connection, seq: u64) -> Msg {
    match conn.wait_for(T, |f| matches!(f, viche_client::ServerFrame::Msg(m) if m.seq == seq)).await {
        Ok(viche_client::ServerFrame::Msg(m)) => m,
        other => panic!("waiting for msg {seq}: {other:?}"),
    }
}

fn event_of(m: &Msg) -> (u64, Option<MsgKind>, Option<u64>, &str) {
    (m.seq, m.kind, m.target, m.body.as_str())
}

#[tokio::test]
async fn each_event_is_delivered_live_replayed_and_paged() {
    let server = Server::start().await;
    let (mut ann, mut bob) = two_in_a_room(&server).await;

    let edit = ann.edit("lobby", 1, "fixed", "e1").await.unwrap();
    assert_eq!((edit.seq, edit.cid.as_str()), (2, "e1"));
    let live = bob.recv_msg(T).await.unwrap();
    assert_eq!(event_of(&live), (2, Some(MsgKind::Edit), Some(1), "fixed"));
    assert_eq!(live.from, "ann");

    let react = bob.react("lobby", 1, "👍", true, "x1").await.unwrap();
    assert_eq!(react.seq, 3);
    let live = recv_seq(&mut ann, 3).await;
    assert_eq!(
        (live.seq, live.kind, live.target, live.emoji.as_deref(), live.on),
        (3, Some(MsgKind::Reaction), Some(1), Some("👍"), Some(true))
    );

    let reply = bob.reply("lobby", "no worries", "r1", Some(1)).await.unwrap();
    assert_eq!(reply.seq, 4);
    let live = recv_seq(&mut ann, 4).await;
    assert_eq!((live.seq, live.kind, live.reply_to), (4, None, Some(1)));

    send_retrying(&mut ann, "lobby", "oops", "m2").await; // seq 5
    let delete = ann.delete("lobby", 5, "d1").await.unwrap();
    assert_eq!(delete.seq, 6);
    let all_live = bob.recv_msgs(4, T).await.unwrap();
    assert_eq!(event_of(&all_live[3]), (6, Some(MsgKind::Delete), Some(5), ""));

    // History: every event is a row, and the targets show their state.
    let page = bob.history("lobby", None, None).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![6, 5, 4, 3, 2, 1]);
    let first = &page.messages[5];
    assert_eq!((first.body.as_str(), first.edited_ts, first.deleted), ("fixed", Some(edit.ts), None));
    assert_eq!(first.reactions.as_ref().unwrap()["👍"], vec!["bob".to_string()]);
    let deleted = &page.messages[1];
    assert_eq!((deleted.body.as_str(), deleted.deleted), ("", Some(true)));
    // The same over HTTP.
    let token = server.user("cat").await;
    let http = full_history_http(&server, &token, "lobby").await;
    assert_eq!(http.iter().rev().cloned().collect::<Vec<_>>(), page.messages);

    // A client that resumes from seq 1 misses no event.
    let mut late = server.connect(&server.http().login("bob", PASSWORD).await.unwrap().token).await;
    late.join("lobby", Some(1)).await.unwrap();
    let replayed = late.recv_msgs(5, T).await.unwrap();
    let kinds: Vec<Option<MsgKind>> = replayed.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![Some(MsgKind::Edit), Some(MsgKind::Reaction), None, None, Some(MsgKind::Delete)]);
    assert_eq!(seqs_of(&replayed), vec![2, 3, 4, 5, 6]);
}

fn seqs_of(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn events_are_idempotent_by_cid() {
    let server = Server::start().await;
    let (mut ann, mut bob) = two_in_a_room(&server).await;
    let first = ann.edit("lobby", 1, "fixed", "e1").await.unwrap();
    let again = ann.edit("lobby", 1, "fixed", "e1").await.unwrap();
    assert_eq!((again.seq, again.ts), (first.seq, first.ts));
    let react = bob.react("lobby", 1, "🎉", true, "x1").await.unwrap();
    assert_eq!(bob.react("lobby", 1, "🎉", true, "x1").await.unwrap().seq, react.seq);
    // A repeat of the current state with a new cid: the original ack.
    let repeat = bob.react("lobby", 1, "🎉", true, "x2").await.unwrap();
    assert_eq!((repeat.seq, repeat.cid.as_str()), (react.seq, "x1"));
    let delete = ann.delete("lobby", 1, "d1").await.unwrap();
    assert_eq!(ann.delete("lobby", 1, "d1").await.unwrap().seq, delete.seq);
    // Exactly three events were stored and delivered.
    let live = drain_msgs(&mut bob).await;
    assert_eq!(seqs_of(&live), vec![2, 3, 4]);
    let page = ann.history("lobby", None, None).await.unwrap();
    assert_eq!(page.messages.len(), 4);
}

#[tokio::test]
async fn only_the_author_may_edit_or_delete_and_targets_must_exist() {
    let server = Server::start().await;
    let (mut ann, mut bob) = two_in_a_room(&server).await;
    assert_eq!(code_of(bob.edit("lobby", 1, "mine", "e1").await), "forbidden");
    assert_eq!(code_of(bob.delete("lobby", 1, "d1").await), "forbidden");
    assert_eq!(code_of(ann.edit("lobby", 99, "x", "e2").await), "not_found");
    assert_eq!(code_of(ann.delete("lobby", 0, "d2").await), "not_found");
    assert_eq!(code_of(bob.react("lobby", 99, "👍", true, "x1").await), "not_found");
    assert_eq!(code_of(bob.react("lobby", 1, "👍", false, "x2").await), "not_found", "no reaction to remove");
    assert_eq!(code_of(bob.reply("lobby", "re", "r1", Some(99)).await), "not_found");
    let edit = ann.edit("lobby", 1, "fixed", "e3").await.unwrap();
    assert_eq!(code_of(ann.edit("lobby", edit.seq, "edit an edit", "e4").await), "not_found");
    assert_eq!(code_of(bob.reply("lobby", "re", "r2", Some(edit.seq)).await), "not_found", "an event is no message");
    ann.delete("lobby", 1, "d3").await.unwrap();
    assert_eq!(code_of(ann.edit("lobby", 1, "too late", "e5").await), "not_found");
    assert_eq!(code_of(ann.delete("lobby", 1, "d4").await), "not_found");
    assert_eq!(code_of(bob.react("lobby", 1, "👍", true, "x3").await), "not_found");
    // A refused event stores nothing: its cid is still free.
    assert_eq!(code_of(bob.edit("lobby", 1, "mine", "e1").await), "not_found");
    let page = ann.history("lobby", None, None).await.unwrap();
    assert_eq!(seqs_of(&page.messages), vec![3, 2, 1]);
    assert_eq!(drain_msgs(&mut bob).await.len(), 2, "only the edit and the deletion were delivered");
}

#[tokio::test]
async fn events_are_checked_like_sends() {
    let server = Server::start_with(Opts { max_body_bytes: Some(64), ..Opts::default() }).await;
    let (mut ann, mut bob) = two_in_a_room(&server).await;
    assert_eq!(code_of(ann.edit("lobby", 1, "", "e1").await), "invalid", "an empty body");
    assert_eq!(code_of(ann.edit("lobby", 1, &"x".repeat(65), "e2").await), "too_large");
    assert_eq!(code_of(ann.edit("lobby", 1, "ok", "").await), "invalid", "an empty cid");
    assert_eq!(code_of(bob.react("lobby", 1, "", true, "x1").await), "invalid", "an empty emoji");
    assert_eq!(code_of(bob.react("lobby", 1, &"e".repeat(33), true, "x2").await), "invalid", "33 bytes");
    bob.react("lobby", 1, &"e".repeat(32), true, "x3").await.unwrap();
    // The room must be joined (a DM room: be one of its users).
    let mut cat = server.session("cat").await;
    assert_eq!(code_of(cat.react("lobby", 1, "👍", true, "c1").await), "not_joined");
    assert_eq!(code_of(cat.edit("lobby", 1, "x", "c2").await), "not_joined");
    ann.dm("bob", "dm typo", "d1").await.unwrap();
    ann.edit("dm:ann:bob", 1, "dm fixed", "d2").await.unwrap();
    bob.react("dm:ann:bob", 1, "👍", true, "d3").await.unwrap();
    assert_eq!(code_of(cat.react("dm:ann:bob", 1, "👍", true, "c3").await), "forbidden");
    assert_eq!(code_of(ann.edit("bad room!", 1, "x", "c4").await), "invalid");
    let dm = bob.history("dm:ann:bob", None, None).await.unwrap();
    assert_eq!((dm.messages[2].body.as_str(), dm.messages[2].reactions.as_ref().unwrap()["👍"].len()), ("dm fixed", 1));
}

#[tokio::test]
async fn events_count_against_the_send_rate() {
    let server = Server::start_with(Opts {
        extra_args: vec!["--send-per-second".into(), "0.01".into(), "--send-burst".into(), "3".into()],
        ..Opts::default()
    })
    .await;
    let mut ann = server.session("ann").await;
    ann.join("lobby", None).await.unwrap();
    ann.send("lobby", "one", "m1").await.unwrap();
    ann.edit("lobby", 1, "uno", "e1").await.unwrap();
    ann.react("lobby", 1, "👍", true, "x1").await.unwrap();
    assert_eq!(code_of(ann.react("lobby", 1, "🎉", true, "x2").await), "rate_limited");
    assert_eq!(code_of(ann.delete("lobby", 1, "d1").await), "rate_limited");
}

#[tokio::test]
async fn a_dm_can_answer_a_message() {
    let server = Server::start().await;
    let mut ann = server.session("ann").await;
    let mut bob = server.session("bob").await;
    ann.dm("bob", "lunch?", "d1").await.unwrap();
    let frame = viche_client::ClientFrame::Dm {
        req: 77,
        to: "ann".into(),
        body: "yes".into(),
        cid: "d2".into(),
        reply_to: Some(1),
    };
    bob.send_frame(&frame).await.unwrap();
    let reply = ann.wait_for(T, |f| matches!(f, viche_client::ServerFrame::Msg(m) if m.seq == 2)).await.unwrap();
    match reply {
        viche_client::ServerFrame::Msg(m) => assert_eq!((m.reply_to, m.body.as_str()), (Some(1), "yes")),
        other => unreachable!("{other:?}"),
    }
    let frame = viche_client::ClientFrame::Dm {
        req: 78,
        to: "ann".into(),
        body: "?".into(),
        cid: "d3".into(),
        reply_to: Some(40),
    };
    bob.send_frame(&frame).await.unwrap();
    assert_eq!(code_of(bob.wait_reply(78, T).await), "not_found");
}
