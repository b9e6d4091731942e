//! What one user (or one session) may take of the capacity everyone
//! shares: sessions, room memberships, rooms, history pages and replays —
//! each at and past its bound. (The writer's per-user share needs a slow
//! store, so its test is in `faults.rs`.)

use viche_client::{ClientError, Connection, Encoding, ErrorCode};

use crate::common::*;

fn code_of_refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_sessions_of_one_user_give_sixty_four_and_sixteen_refused() {
    let server = Server::start().await;
    let token = server.user("many").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..80 {
        match Connection::open(&server.ws_url(), &token, Encoding::MsgPack).await {
            Ok(conn) => open.push(conn),
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, ErrorCode::Forbidden);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((open.len(), refused), (64, 16), "the default is 64 sessions per user");
    for conn in open.iter_mut().take(3) {
        conn.ping().await.expect("the 64 work");
    }
    // A refused one is closed with 4009, after its error.
    let mut extra = Connection::connect(&server.ws_url(), Encoding::MsgPack).await.unwrap();
    let _ = extra.hello(&token).await;
    let (close, _) = extra.expect_close(T).await.expect("closed");
    assert_eq!(close.code, Some(4009), "{close}");
    // Another user is not affected, and a closed session frees its place.
    server.session("other").await.ping().await.unwrap();
    open.pop().unwrap().close().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if Connection::open(&server.ws_url(), &token, Encoding::MsgPack).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the freed place was never given to a new session");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(metrics.lines().any(|l| l.starts_with("viche_sessions_refused_total ") && !l.ends_with(" 0")));
}

#[tokio::test]
async fn room_memberships_are_bounded_per_user_across_sessions() {
    let server = Server::start_with(Opts::with_args(&["--max-rooms-per-user", "3"])).await;
    let token = server.user("joiner").await;
    let (mut a, mut b) = (server.connect(&token).await, server.connect(&token).await);
    a.join("r1", None).await.unwrap();
    a.join("r2", None).await.unwrap();
    b.join("r1", None).await.unwrap();
    assert_eq!(code_of_refusal(b.join("r3", None).await), ErrorCode::Invalid, "4 memberships over 2 sessions");
    b.join("r1", None).await.expect("joining a room already joined costs nothing");
    a.leave("r2").await.unwrap();
    b.join("r3", None).await.expect("a leave frees a membership");
    drop(a);
    // The closed session's membership comes back too.
    let deadline = tokio::time::Instant::now() + T;
    while b.join("r4", None).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "a closed session's memberships were never given back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_number_of_rooms_is_bounded() {
    let server = Server::start_with(Opts::with_args(&["--rooms-max", "2"])).await;
    let mut s = server.session("roomy").await;
    s.join("one", None).await.unwrap();
    s.join("two", None).await.unwrap();
    assert_eq!(code_of_refusal(s.join("three", None).await), ErrorCode::Overloaded);
    s.join("one", None).await.expect("an open room still takes joins");
}

#[tokio::test]
async fn history_is_rate_limited_over_websocket_and_http() {
    let server = Server::start_with(Opts::with_args(&["--history-per-second", "0.2", "--history-burst", "3"])).await;
    let token = server.user("reader").await;
    let mut s = server.connect(&token).await;
    for _ in 0..3 {
        s.history("lobby", None, None).await.expect("within the burst");
    }
    assert_eq!(code_of_refusal(s.history("lobby", None, None).await), ErrorCode::RateLimited);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let path = "/api/rooms/lobby/messages";
        statuses.push(server.http().get_raw(path, Some(&token)).await.unwrap().status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429], "per user over HTTP");
}

#[tokio::test]
async fn joins_with_since_are_rate_limited_per_session() {
    let server = Server::start_with(Opts::with_args(&["--replays-per-second", "0.2", "--replays-burst", "2"])).await;
    let mut s = server.session("resumer").await;
    s.join("lobby", None).await.expect("a join without since is not a replay");
    s.join("lobby", Some(0)).await.unwrap();
    s.join("lobby", Some(0)).await.unwrap();
    assert_eq!(code_of_refusal(s.join("lobby", Some(0)).await), ErrorCode::RateLimited);
    s.join("lobby", None).await.expect("plain joins still go");
}
