//! Abuse at the HTTP edge: password guessing (sent at once, to race the
//! limits; against one account from several addresses), a flood of
//! password checks, requests a browser could be tricked into sending, and
//! frames that are not frames. Several client addresses are simulated with
//! `--trusted-proxies 127.0.0.1` and `X-Forwarded-For`.

use futures_util::future::join_all;
use viche_client::{Encoding, Event, ServerFrame};

use crate::common::*;

fn creds(username: &str, password: &str) -> String {
    serde_json::json!({ "username": username, "password": password }).to_string()
}

/// A login from `addr` (as a trusted proxy would name it); the status.
async fn login_from(server: &Server, addr: &str, username: &str, password: &str) -> (u16, Option<String>) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/login", server.base_url()))
        .header("content-type", "application/json")
        .header("x-forwarded-for", addr)
        .body(creds(username, password))
        .send()
        .await
        .expect("POST /api/login");
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    (resp.status().as_u16(), retry)
}

fn behind_a_proxy(extra: &[&str]) -> Opts {
    let mut args = vec!["--trusted-proxies".to_string(), "127.0.0.1".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    Opts { extra_args: args, ..Opts::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_get_at_most_the_burst_checked() {
    let server = Server::start_with(behind_a_proxy(&[])).await;
    server.register("victim").await;
    let guesses = (0..100)
        .map(|i| login_from(&server, "203.0.113.1", "victim", if i % 2 == 0 { "guess-one" } else { "guess-two" }));
    let answers = join_all(guesses).await;
    let unauthorized = answers.iter().filter(|(s, _)| *s == 401).count();
    let limited = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(unauthorized + limited, 100, "only 401 or 429: {answers:?}");
    // The burst is 10 per (username, address); a token or so may refill
    // while the checks run (10 per minute).
    assert!(unauthorized <= 11, "at most the burst of guesses were checked, got {unauthorized}");
    assert!(answers.iter().filter(|(s, _)| *s == 429).all(|(_, retry)| retry.is_some()), "every 429 has Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victim_logs_in_while_an_attacker_hammers_their_name_from_another_address() {
    let server = Server::start_with(behind_a_proxy(&[])).await;
    server.register("victim").await;
    let attack = join_all((0..40).map(|_| login_from(&server, "203.0.113.66", "victim", "not the password"))).await;
    assert!(attack.iter().any(|(s, _)| *s == 429), "the attacker is limited: {attack:?}");
    let (status, _) = login_from(&server, "198.51.100.7", "victim", PASSWORD).await;
    assert_eq!(status, 200, "the victim, from their own address, still gets in");
    // And the right password costs no token: the victim can log in again and again.
    for _ in 0..15 {
        assert_eq!(login_from(&server, "198.51.100.7", "victim", PASSWORD).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_accounts_is_limited_per_address() {
    let server = Server::start_with(behind_a_proxy(&[
        "--failed-logins-per-address-per-minute",
        "5",
        "--failed-logins-per-address-burst",
        "5",
    ]))
    .await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(login_from(&server, "203.0.113.9", &format!("nobody{i}"), "not the password").await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "5 guesses across accounts: {statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        login_from(&server, "203.0.113.10", "nobody0", "not the password").await.0,
        401,
        "another address is not charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_past_the_queue_bound_get_503_with_retry_after() {
    let server = Server::start_with(behind_a_proxy(&["--argon2-concurrency", "1", "--argon2-queue-max", "2"])).await;
    // From many addresses, so no rate limit applies: only the queue can refuse.
    let server = &server;
    let logins = (0..24).map(|i| async move {
        let addr = format!("198.51.100.{}", i + 1);
        login_from(server, &addr, "nobody", "password1").await
    });
    let answers = join_all(logins).await;
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "past one running and two waiting, checks are refused: {answers:?}");
    assert!(busy.iter().all(|(_, retry)| retry.is_some()), "each 503 says when to retry");
    assert!(answers.iter().all(|(s, _)| *s == 401 || *s == 503), "{answers:?}");
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("viche_rate_limited_total{kind=\"argon2_queue\"}") && !l.ends_with(" 0")));
}

#[tokio::test]
async fn a_json_post_without_a_json_content_type_is_refused_with_415() {
    let server = Server::start().await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let resp = server.http().post_raw("/api/register", content_type, creds("mallory", PASSWORD)).await.unwrap();
        assert_eq!(resp.status, 415, "{content_type}: {resp:?}");
        assert_eq!(resp.api_error().expect("error body").error, "invalid");
    }
    let resp = server
        .http()
        .post_raw("/api/register", "application/json; charset=utf-8", creds("alice", PASSWORD))
        .await
        .unwrap();
    assert_eq!(resp.status, 201, "with a charset parameter it is JSON: {resp:?}");
}

#[tokio::test]
async fn static_files_carry_a_content_security_policy_and_nosniff() {
    let server = Server::start().await;
    let resp = server.http().get_raw("/", None).await.unwrap();
    assert_eq!(resp.status, 200);
    let csp = resp.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).expect("CSP on the page");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(resp.headers.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
    let api = server.http().get_raw("/healthz", None).await.unwrap();
    assert_eq!(api.headers.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
}

/// The status of a WebSocket upgrade sent with these headers.
async fn upgrade_status(server: &Server, origin: Option<&str>, host: &str) -> u16 {
    let mut req = reqwest::Client::new()
        .get(format!("{}/ws", server.base_url()))
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    req.send().await.expect("upgrade request").status().as_u16()
}

#[tokio::test]
async fn websocket_upgrades_from_other_sites_are_refused() {
    let server = Server::start().await;
    let host = format!("127.0.0.1:{}", server.port());
    assert_eq!(upgrade_status(&server, Some(&format!("http://{host}")), &host).await, 101, "the page's own host");
    assert_eq!(upgrade_status(&server, None, &host).await, 101, "no Origin: not a browser page");
    assert_eq!(upgrade_status(&server, Some("https://evil.example"), &host).await, 403, "another site");

    let listed = Server::start_with(Opts {
        extra_args: vec!["--allowed-origins".into(), "https://chat.example.com".into()],
        ..Opts::default()
    })
    .await;
    let host = format!("127.0.0.1:{}", listed.port());
    assert_eq!(upgrade_status(&listed, Some("https://chat.example.com"), &host).await, 101);
    assert_eq!(upgrade_status(&listed, Some("https://evil.example"), &host).await, 403);
    let any =
        Server::start_with(Opts { extra_args: vec!["--allowed-origins".into(), "*".into()], ..Opts::default() }).await;
    let host = format!("127.0.0.1:{}", any.port());
    assert_eq!(upgrade_status(&any, Some("https://evil.example"), &host).await, 101);
}

#[tokio::test]
async fn a_json_frame_that_is_not_a_map_is_a_bad_frame() {
    let server = Server::start().await;
    let token = server.user("lists").await;
    let mut conn = server.connect_enc(&token, Encoding::Json).await;
    for junk in [r#"["ping",7]"#, r#""ping""#, "7", "null"] {
        conn.send_raw_text(junk.to_string()).await.unwrap();
        match conn.next_frame(T).await.unwrap() {
            Event::Frame(ServerFrame::Error { code, .. }) => assert_eq!(code.as_str(), "bad_frame", "{junk}"),
            other => panic!("{junk}: expected bad_frame, got {other:?}"),
        }
    }
    conn.ping().await.expect("the session stays open");
}

#[tokio::test]
async fn readyz_costs_the_store_nothing() {
    let server = Server::start().await;
    let probes = r#"viche_store_probes_total{result="ok"}"#;
    // The first probe runs at start, on the store's own schedule (on a
    // busy FerretDB it may finish after /healthz answers).
    let deadline = std::time::Instant::now() + T;
    let mut before = scrape_value(&server, probes).await;
    while before < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the store is probed on its own schedule");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        before = scrape_value(&server, probes).await;
    }
    for _ in 0..50 {
        let ready = server.http().get_raw("/readyz", None).await.unwrap();
        assert_eq!(ready.status, 200, "{}", ready.body);
    }
    let after = scrape_value(&server, probes).await;
    // The store is probed every 5 s whatever /readyz is asked: at most a
    // couple of probes happened meanwhile, not 50.
    assert!(after - before <= 2.0, "{} store probes for 50 /readyz", after - before);
}
