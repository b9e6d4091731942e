//! docs/protocol.md, "HTTP API": register, login, their failures and rate limits, and the
//! operational endpoints.

use crate::common::*;
use viche_client::{ClientError, RawResponse};

async fn post_json(server: &Server, path: &str, body: impl Into<String>) -> RawResponse {
    server.http().post_raw(path, "application/json", body.into()).await.expect("POST")
}

fn creds(username: &str, password: &str) -> String {
    serde_json::json!({ "username": username, "password": password }).to_string()
}

/// A 400 with the `invalid` error body.
fn assert_invalid(resp: &RawResponse, what: &str) {
    assert_eq!(resp.status, 400, "{what}: {resp:?}");
    let err = resp.api_error().unwrap_or_else(|| panic!("{what}: error body expected, got {:?}", resp.body));
    assert_eq!(err.error, "invalid", "{what}");
    assert!(!err.message.is_empty(), "{what}: message");
}

fn assert_auth_ok(resp: &RawResponse, status: u16, user: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert!(resp.content_type().unwrap_or("").starts_with("application/json"), "{resp:?}");
    let v = resp.json().expect("JSON body");
    assert_eq!(v["user"], user);
    let token = v["token"].as_str().expect("token string");
    let expires_at = v["expires_at"].as_u64().expect("expires_at integer");
    let claims = verify(token);
    assert_eq!(claims.sub, user);
    assert_eq!(expires_at, claims.exp * 1000, "expires_at is exp in milliseconds");
    assert!(claims.iat <= now_s() + 5 && claims.iat + 300 >= now_s(), "iat is now-ish");
}

#[tokio::test]
async fn register_then_login_issue_working_tokens() {
    let server = Server::start_with(Opts { token_ttl: Some(600), ..Opts::default() }).await;
    let before = now_ms();
    let resp = post_json(&server, "/api/register", &creds("alice", PASSWORD)).await;
    assert_auth_ok(&resp, 201, "alice");
    let expires_at = resp.json().unwrap()["expires_at"].as_u64().unwrap();
    // token ttl 600 s: exp is about now + 600 s (second granularity, slack for a slow machine).
    assert!(expires_at + 2_000 >= before + 600_000 && expires_at <= now_ms() + 600_000 + 2_000, "{expires_at}");

    let resp = post_json(&server, "/api/login", &creds("alice", PASSWORD)).await;
    assert_auth_ok(&resp, 200, "alice");

    // Both tokens open a session as alice.
    let login = server.http().login("alice", PASSWORD).await.unwrap();
    let mut conn = server.connect(&login.token).await;
    assert_eq!(conn.user(), Some("alice"));
    conn.ping().await.unwrap();
}

#[tokio::test]
async fn usernames_are_unique_and_case_sensitive() {
    let server = Server::start().await;
    server.register("alice").await;
    let resp = post_json(&server, "/api/register", &creds("alice", "another password")).await;
    assert_eq!(resp.status, 409, "{resp:?}");
    assert_eq!(resp.api_error().expect("error body").error, "conflict");
    // The failed registration changed nothing: the first password still works.
    server.http().login("alice", PASSWORD).await.expect("original password still valid");
    assert_eq!(server.http().login("alice", "another password").await.unwrap_err().status(), Some(401));
    // Case-sensitive: Alice is someone else.
    let resp = post_json(&server, "/api/register", &creds("Alice", PASSWORD)).await;
    assert_auth_ok(&resp, 201, "Alice");
}

#[tokio::test]
async fn malformed_bodies_are_400_invalid() {
    let server = Server::start().await;
    for path in ["/api/register", "/api/login"] {
        assert_invalid(&post_json(&server, path, "not json").await, "not JSON");
        assert_invalid(&post_json(&server, path, "").await, "empty body");
        assert_invalid(&post_json(&server, path, "[1,2]").await, "an array");
        assert_invalid(&post_json(&server, path, r#"{"username":"alice"}"#).await, "missing password");
        assert_invalid(&post_json(&server, path, r#"{"password":"12345678"}"#).await, "missing username");
        assert_invalid(&post_json(&server, path, r#"{"username":5,"password":"12345678"}"#).await, "username a number");
        assert_invalid(
            &post_json(&server, path, r#"{"username":"alice","password":12345678}"#).await,
            "password a number",
        );
        assert_invalid(&post_json(&server, path, r#"{"username":null,"password":"12345678"}"#).await, "username null");
        let truncated = r#"{"username":"alice","password":"1234"#;
        assert_invalid(&post_json(&server, path, truncated).await, "truncated JSON");
    }
    // Nothing was created by any of these.
    assert_eq!(server.http().login("alice", "12345678").await.unwrap_err().status(), Some(401));
}

#[tokio::test]
async fn username_bounds() {
    let server = Server::start().await;
    let ok = ["abc", "A.b-c_9", &"u".repeat(32)];
    for name in ok {
        let resp = post_json(&server, "/api/register", &creds(name, PASSWORD)).await;
        assert_auth_ok(&resp, 201, name);
    }
    let bad = ["", "ab", &"u".repeat(33), "has space", "slash/no", "colon:no", "ünï", "tab\tx", "at@x"];
    for name in bad {
        let resp = post_json(&server, "/api/register", &creds(name, PASSWORD)).await;
        assert_invalid(&resp, &format!("username {name:?}"));
        let resp = post_json(&server, "/api/login", &creds(name, PASSWORD)).await;
        assert_invalid(&resp, &format!("login username {name:?}"));
    }
}

#[tokio::test]
async fn password_bounds_in_bytes() {
    let server = Server::start().await;
    let cases = [
        ("pw7", "1234567".to_string(), false),
        ("pw8", "12345678".to_string(), true),
        ("pw1024", "p".repeat(1024), true),
        ("pw1025", "p".repeat(1025), false),
        // Bytes, not characters: 4 × 2-byte 'é' is 8 bytes.
        ("pwutf8ok", "éééé".to_string(), true),
        // 512 × 'é' is 1024 bytes; 513 is 1026.
        ("pwutf8max", "é".repeat(512), true),
        ("pwutf8over", "é".repeat(513), false),
        ("pwempty", String::new(), false),
    ];
    for (user, password, valid) in cases {
        let resp = post_json(&server, "/api/register", &creds(user, &password)).await;
        if valid {
            assert_auth_ok(&resp, 201, user);
            server.http().login(user, &password).await.unwrap_or_else(|e| panic!("login {user}: {e}"));
        } else {
            assert_invalid(&resp, &format!("password of {} bytes", password.len()));
        }
    }
}

#[tokio::test]
async fn login_failures_look_the_same() {
    let server = Server::start().await;
    server.register("alice").await;
    let wrong = post_json(&server, "/api/login", &creds("alice", "wrong password")).await;
    let unknown = post_json(&server, "/api/login", &creds("nobody", "wrong password")).await;
    for resp in [&wrong, &unknown] {
        assert_eq!(resp.status, 401, "{resp:?}");
        assert_eq!(resp.api_error().expect("error body").error, "unauthorized");
    }
    assert_eq!(wrong.body, unknown.body, "same answer for an unknown user and a wrong password");
    // The typed client reports the status and the body.
    match server.http().login("alice", "wrong password").await {
        Err(ClientError::Http { status: 401, body: Some(body), .. }) => assert_eq!(body.error, "unauthorized"),
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_logins_are_rate_limited_with_retry_after() {
    let server = Server::start().await;
    server.register("alice").await;
    for i in 0..10 {
        let resp = post_json(&server, "/api/login", &creds("alice", "wrong password")).await;
        assert_eq!(resp.status, 401, "failed login {i}: {resp:?}");
    }
    // The 11th is refused unless the slow hashing let the bucket refill
    // (10 per minute); a few more attempts must then hit the limit.
    let mut attempts = 0;
    let resp = loop {
        attempts += 1;
        let resp = post_json(&server, "/api/login", &creds("alice", "wrong password")).await;
        if resp.status != 401 || attempts == 10 {
            break resp;
        }
    };
    assert_eq!(resp.status, 429, "failed logins past 10 within a minute: {resp:?}");
    let retry = resp.retry_after().expect("Retry-After header in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(resp.api_error().expect("error body").error, "rate_limited");
    match server.http().login("alice", "wrong password").await {
        Err(ClientError::Http { status: 429, retry_after: Some(_), .. }) => {}
        other => panic!("expected a 429 with Retry-After, got {other:?}"),
    }
}

#[tokio::test]
async fn registrations_are_rate_limited_per_address() {
    let server = Server::start().await;
    // 60 per minute, bursts of 60. Sent at once, so that the refill (one per
    // second) during the slow password hashing cannot hide the limit.
    let n = 80;
    let attempts = (0..n).map(|i| post_json(&server, "/api/register", creds(&format!("user{i}"), PASSWORD)));
    let answers = futures_util::future::join_all(attempts).await;
    let created = answers.iter().filter(|r| r.status == 201).count();
    let limited: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        created + limited.len(),
        n,
        "only 201 or 429: {:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(created >= 60, "a burst of 60 passes, got {created}");
    assert!(!limited.is_empty(), "registrations past the burst are refused");
    for resp in limited {
        assert!(resp.retry_after().is_some(), "Retry-After header: {resp:?}");
        assert_eq!(resp.api_error().expect("error body").error, "rate_limited");
    }
}

#[tokio::test]
async fn health_ready_metrics_and_static_files() {
    let server = Server::start().await;
    let http = server.http();
    assert_eq!(http.get_raw("/healthz", None).await.unwrap().status, 200);
    assert_eq!(http.get_raw("/readyz", None).await.unwrap().status, 200);
    let metrics = http.get_raw("/metrics", None).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type().unwrap_or("").starts_with("text/plain"), "{:?}", metrics.content_type());
    // Some traffic, then the metrics show the server's own families.
    let mut conn = server.session("alice").await;
    conn.join("lobby", None).await.unwrap();
    conn.send("lobby", "hi", "c1").await.unwrap();
    let metrics = http.get_raw("/metrics", None).await.unwrap();
    assert!(metrics.body.contains("viche_"), "metrics expose viche_ families:\n{}", metrics.body);
    let index = http.get_raw("/", None).await.unwrap();
    assert_eq!(index.status, 200);
    assert!(index.body.contains("viche test"), "serves --web-dir at /: {}", index.body);
}
