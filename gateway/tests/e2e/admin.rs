//! The admin API and `viche admin` (docs/operations.md, "The admin API"):
//! who may call it, deleting a user while it is connected and while others
//! page its messages, purging a room, a backup under load restored into a
//! server that goes on, and the command line.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use viche_client::{ClientFrame, Encoding};

use crate::common::*;

fn admin_server() -> Opts {
    Opts { admin: true, ..Opts::default() }
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token() {
    let server = Server::start().await;
    let (status, body) = server.admin("GET", "stats", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_token_and_a_users_jwt_then_a_flood() {
    let server = Server::start_with(admin_server()).await;
    let jwt = server.user("mallory").await;
    for token in [None, Some("wrong-token-wrong-token-wrong"), Some(jwt.as_str()), Some(SECRET)] {
        let (status, body) = server.admin_as(token, "GET", "stats", None).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{token:?}");
        let (status, _) = server.admin_as(token, "DELETE", "users/mallory", None).await;
        assert_eq!(status, 401);
    }
    let (status, stats) = server.admin("GET", "stats", None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["users"], 1);
    let (status, _) = server.admin("GET", "nothing-here", None).await;
    assert_eq!(status, 404);
    // A flood from one address meets the admin rate (and the right token too, then).
    let mut limited = 0;
    for _ in 0..30 {
        let (status, _) = server.admin_as(Some("guess-guess-guess-guess"), "GET", "stats", None).await;
        limited += (status == 429) as usize;
    }
    assert!(limited >= 10, "429s: {limited}");
    let raw = reqwest::Client::new()
        .get(format!("{}/api/admin/stats", server.base_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert!(raw.headers().contains_key("retry-after"));
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(metrics.contains("viche_auth_failures_total{reason=\"bad_admin_token\"}"), "{metrics}");
}

#[tokio::test]
async fn deleting_a_user_closes_its_sessions_erases_its_messages_and_keeps_its_name() {
    let server = Arc::new(Server::start_with(admin_server()).await);
    let alice = server.register("alice").await;
    let mut a1 = server.connect(&alice.token).await;
    let mut a2 = server.connect(&alice.token).await;
    let bob_token = server.user("bob").await;
    let mut bob = server.connect(&bob_token).await;
    a1.join("lobby", None).await.unwrap();
    bob.join("lobby", None).await.unwrap();
    let bobs = send_n(&mut bob, "lobby", 3, "bob").await;
    send_n(&mut a1, "lobby", 40, "alice").await;
    a1.react("lobby", bobs[0].seq, "👍", true, "alice-likes").await.unwrap();
    a2.dm("bob", "a secret", "alice-dm").await.unwrap();
    let total = 3 + 40 + 1;

    // Carol pages the room's history throughout.
    let carol = server.user("carol").await;
    let stop = Arc::new(AtomicBool::new(false));
    let pager = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut pages = 0;
            while !stop.load(Ordering::Relaxed) {
                let history = full_history_http(&server, &carol, "lobby").await;
                assert_eq!(seqs(&history), (1..=total).collect::<Vec<_>>(), "no seq lost or added");
                for m in history.iter().filter(|m| m.from == "alice" && m.deleted == Some(true)) {
                    assert!(m.body.is_empty() && m.reactions.is_none(), "{m:?}");
                }
                pages += 1;
                // Within the history rate (10 a second), which is not what this tests.
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
            pages
        })
    };

    let (status, deleted) = server.admin("DELETE", "users/alice", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["already_deleted"], false);
    assert_eq!(deleted["messages_erased"], 42, "{deleted}");
    assert_eq!(deleted["sessions_closed"], 2);
    assert_eq!(deleted["done"], true);
    expect_error_then_close(&mut a1, Some("unauthorized"), 4001).await;
    expect_error_then_close(&mut a2, Some("unauthorized"), 4001).await;
    stop.store(true, Ordering::Relaxed);
    assert!(pager.await.unwrap() > 0);

    // What history shows now: alice's messages erased in place, bob's kept.
    let history = full_history_http(&server, &bob_token, "lobby").await;
    assert_eq!(seqs(&history), (1..=total).collect::<Vec<_>>());
    for m in &history {
        if m.from == "alice" {
            assert_eq!((m.body.as_str(), m.deleted), ("", Some(true)), "{m:?}");
        } else {
            assert!(m.body.starts_with("bob body") && m.reactions.is_none(), "{m:?}");
        }
    }
    let dm = full_history_http(&server, &bob_token, "dm:alice:bob").await;
    assert_eq!((dm.len(), dm[0].body.as_str()), (1, ""));

    // Its token is refused everywhere; its name stays taken.
    let mut again = server.connect_raw(Encoding::MsgPack).await;
    again.send_frame(&ClientFrame::Hello { v: 1, token: alice.token.clone() }).await.unwrap();
    expect_error_then_close(&mut again, Some("unauthorized"), 4001).await;
    let page = server.http().get_raw("/api/rooms/lobby/messages", Some(&alice.token)).await.unwrap();
    assert_eq!(page.status, 401);
    let status = |r: Result<viche_client::AuthOk, viche_client::ClientError>| match r {
        Err(viche_client::ClientError::Http { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    };
    assert_eq!(status(server.http().login("alice", PASSWORD).await), 401);
    assert_eq!(status(server.http().register("alice", PASSWORD).await), 409, "the name stays taken");

    // Twice: nothing left to erase. Unknown or invalid names: 404, 400.
    let (status, twice) = server.admin("DELETE", "users/alice", None).await;
    assert_eq!(status, 200);
    assert_eq!((twice["already_deleted"].as_bool(), twice["messages_erased"].as_u64()), (Some(true), Some(0)));
    assert_eq!(server.admin("DELETE", "users/nobody", None).await.0, 404);
    assert_eq!(server.admin("DELETE", "users/a%20b", None).await.0, 400);
    let (_, stats) = server.admin("GET", "stats", None).await;
    assert_eq!(stats["users"], 2, "bob and carol");
}

#[tokio::test]
async fn purging_a_room_removes_its_messages_and_keeps_its_seqs() {
    let server = Server::start_with(admin_server()).await;
    let token = server.user("ann").await;
    server.user("ben").await;
    let mut conn = server.connect(&token).await;
    conn.join("lobby", None).await.unwrap();
    send_n(&mut conn, "lobby", 10, "x").await;
    conn.dm("ben", "hello", "d1").await.unwrap();

    let (status, purged) = server.admin("DELETE", "rooms/lobby", None).await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!((purged["messages_removed"].as_u64(), purged["last_seq"].as_u64()), (Some(10), Some(10)));
    assert!(full_history_http(&server, &token, "lobby").await.is_empty());
    let mut other = server.connect(&token).await;
    let ok = other.join("lobby", Some(3)).await.unwrap();
    assert_eq!((ok.seq, ok.first_seq, ok.truncated), (10, 0, true));
    assert_eq!(conn.send("lobby", "after", "after").await.unwrap().seq, 11, "seqs are never reused");
    let ok = server.connect(&token).await.join("lobby", None).await.unwrap();
    assert_eq!(ok.first_seq, 11);

    let (status, purged) = server.admin("DELETE", "rooms/dm%3Aann%3Aben", None).await;
    assert_eq!((status, purged["messages_removed"].as_u64()), (200, Some(1)));
    assert_eq!(server.admin("DELETE", "rooms/bad%20room", None).await.0, 400);
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(metrics.contains("viche_messages_removed_total{reason=\"purge\"} 11"), "{metrics}");
}

#[tokio::test]
async fn a_backup_under_load_restores_into_a_server_whose_history_and_seqs_go_on() {
    let server = Arc::new(Server::start_with(admin_server()).await);
    let backups = tempfile::tempdir().unwrap();
    let path = backups.path().join("backup-1");
    if server.mongo().is_some() {
        let (status, body) = server.admin("POST", "backup", Some(serde_json::json!({ "path": path }))).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains("mongodump"), "{body}");
        return;
    }
    let rooms = ["r1", "r2"];
    let mut senders = Vec::new();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (i, room) in rooms.into_iter().enumerate() {
        let mut conn = server.session(&format!("writer{i}")).await;
        conn.join(room, None).await.unwrap();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..120 {
                send_retrying(&mut conn, room, &format!("{room} {n}"), &format!("{room}-{n}")).await;
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while acked.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_before = acked.load(Ordering::Relaxed);
    let (status, done) = server.admin("POST", "backup", Some(serde_json::json!({ "path": path }))).await;
    assert_eq!(status, 200, "{done}");
    assert!(done["rows"].as_u64().unwrap() > 0 && done["bytes"].as_u64().unwrap() > 0, "{done}");

    // Hostile paths: taken, relative, under a missing directory or a file.
    let body = |p: &str| Some(serde_json::json!({ "path": p }));
    assert_eq!(server.admin("POST", "backup", body(path.to_str().unwrap())).await.0, 409);
    assert_eq!(server.admin("POST", "backup", body("relative/backup")).await.0, 400);
    let missing = backups.path().join("no/such/dir");
    assert_eq!(server.admin("POST", "backup", body(missing.to_str().unwrap())).await.0, 400);
    let file = backups.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert_eq!(server.admin("POST", "backup", body(file.join("sub").to_str().unwrap())).await.0, 400);
    assert_eq!(server.admin("POST", "backup", Some(serde_json::json!({ "nope": 1 }))).await.0, 400);
    for sender in senders {
        sender.await.unwrap();
    }

    let restored = Server::start_with(Opts { restore_from: Some(path.clone()), ..Opts::default() }).await;
    let reader = server.user("reader").await;
    let mut restored_total = 0;
    for room in rooms {
        let source = full_history_http(&server, &reader, room).await;
        let copy = full_history_http(&restored, &reader, room).await;
        let upto = copy.last().map_or(0, |m| m.seq);
        restored_total += upto;
        let expected: Vec<_> = source.iter().filter(|m| m.seq <= upto).cloned().collect();
        assert_eq!(copy, expected, "{room}: the source's history up to the backup point");
    }
    assert!(restored_total >= acked_before, "everything acknowledged before the backup is in it");
    assert!(restored_total < 240, "nothing after it");
    // Its users log in and its seqs go on.
    let login = restored.http().login("writer0", PASSWORD).await.unwrap();
    let mut conn = restored.connect(&login.token).await;
    let ok = conn.join("r1", None).await.unwrap();
    assert_eq!(conn.send("r1", "after restore", "after-restore").await.unwrap().seq, ok.seq + 1);
}

/// `viche admin …` against `server`, with `args` after the subcommand.
fn cli(server: &Server, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_viche"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VICHE_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["admin", "--url", &server.base_url()]);
    if let Some(token) = token {
        cmd.env("VICHE_ADMIN_TOKEN", token);
    }
    let out = cmd.args(args).output().expect("running viche admin");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn the_command_line_speaks_to_people_and_to_scripts() {
    let server = Server::start_with(admin_server()).await;
    let token = server.user("ann").await;
    let mut conn = server.connect(&token).await;
    conn.join("lobby", None).await.unwrap();
    send_n(&mut conn, "lobby", 4, "x").await;

    let (code, out, err) = cli(&server, Some(ADMIN_TOKEN), &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("users           1") && out.contains("messages        4"), "{out}");
    assert!(out.contains("retention       off"), "{out}");
    let (code, out, _) = cli(&server, Some(ADMIN_TOKEN), &["--json", "stats"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(json["messages"], 4);
    let (code, out, _) = cli(&server, Some(ADMIN_TOKEN), &["purge-room", "lobby"]);
    assert_eq!(code, 0);
    assert!(out.contains("4 messages removed") && out.contains("seq 5"), "{out}");
    let (code, out, _) = cli(&server, Some(ADMIN_TOKEN), &["retention"]);
    assert!(code == 0 && out.starts_with("retention pass"), "{out}");
    let (code, out, _) = cli(&server, Some(ADMIN_TOKEN), &["delete-user", "ann"]);
    assert!(code == 0 && out.contains("deleted ann"), "{out}");

    let (code, _, err) = cli(&server, Some("wrong-wrong-wrong-wrong"), &["stats"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&server, None, &["stats"]);
    assert_eq!(code, 2);
    assert!(err.contains("--admin-token"), "{err}");
}
