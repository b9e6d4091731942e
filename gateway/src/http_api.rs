//! The HTTP API of PROTOCOL.md §1, `/ws` upgrades, health, metrics and
//! static files: one router over hyper.
//!
//! Every error body is `{"error": CODE, "message": TEXT}`; a body that is
//! not the expected JSON is a 400 `invalid`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio_util::task::TaskTracker;
use viche_engine::auth::{now_ms, PasswordHasherPool};
use viche_engine::store::UserRecord;
use viche_engine::Engine;
use viche_protocol::frames::tagged_msgs;
use viche_protocol::validate::{self, parse_room, RoomKind};
use viche_protocol::ErrorCode;

use crate::config::Args;
use crate::exporter::Exporter;
use crate::limiter::KeyedLimiter;

/// Largest JSON body the API reads (credentials are at most ~1.1 KiB).
const MAX_HTTP_BODY_BYTES: usize = 16 * 1024;
/// Keys each HTTP rate limiter tracks at most.
const LIMITER_MAX_KEYS: usize = 100_000;

pub type Body = Full<Bytes>;

pub struct App {
    pub engine: Arc<Engine>,
    /// None with `--no-metrics`.
    pub exporter: Option<Exporter>,
    pub hasher: PasswordHasherPool,
    pub failed_logins_by_user: KeyedLimiter,
    pub failed_logins_by_addr: KeyedLimiter,
    pub registrations_by_addr: KeyedLimiter,
    pub web_dir: Option<PathBuf>,
    /// Every WebSocket connection's task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    pub open_connections: AtomicUsize,
    pub max_connections: usize,
}

impl App {
    pub fn new(engine: Arc<Engine>, exporter: Option<Exporter>, args: &Args) -> Self {
        Self {
            engine,
            exporter,
            hasher: PasswordHasherPool::new(args.argon2_concurrency),
            failed_logins_by_user: KeyedLimiter::new(args.failed_login_rate(), LIMITER_MAX_KEYS),
            failed_logins_by_addr: KeyedLimiter::new(args.failed_login_rate(), LIMITER_MAX_KEYS),
            registrations_by_addr: KeyedLimiter::new(args.registration_rate(), LIMITER_MAX_KEYS),
            web_dir: args.web_dir.clone(),
            sessions: TaskTracker::new(),
            open_connections: AtomicUsize::new(0),
            max_connections: args.max_connections,
        }
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    json_response(status, json!({ "error": code.as_str(), "message": message }))
}

fn too_many(retry_after_s: u64) -> Response<Body> {
    let mut r = error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, "too many attempts; retry later");
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
    r
}

/// The route label of a request, for metrics (bounded set).
fn route_label(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::POST, "/api/register") => "register",
        (&Method::POST, "/api/login") => "login",
        (_, p) if p.starts_with("/api/rooms/") => "history",
        (_, "/healthz") => "healthz",
        (_, "/readyz") => "readyz",
        (_, "/metrics") => "metrics",
        (_, "/ws") => "ws",
        (_, p) if p.starts_with("/api/") => "api_other",
        _ => "static",
    }
}

pub async fn route(app: Arc<App>, addr: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = route_label(req.method(), req.uri().path());
    let response = dispatch(&app, addr, req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("viche_http_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("viche_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

async fn dispatch(app: &Arc<App>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/ws") => upgrade(app, req),
        (Method::POST, "/api/register") => register(app, addr, req).await,
        (Method::POST, "/api/login") => login(app, addr, req).await,
        (Method::GET, p) if history_room(p).is_some() => history(app, &req).await,
        (Method::GET, "/healthz") => json_response(StatusCode::OK, json!({ "status": "ok" })),
        (Method::GET, "/readyz") => readyz(app).await,
        (Method::GET, "/metrics") => match &app.exporter {
            Some(exporter) => {
                let mut r = Response::new(Full::new(Bytes::from(exporter.render())));
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            None => error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "metrics are disabled (--no-metrics)"),
        },
        (_, p) if p.starts_with("/api/") => {
            error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
        }
        (Method::GET | Method::HEAD, p) => match crate::web::lookup(app.web_dir.as_deref(), p).await {
            Some((mime, body)) => {
                let mut r = Response::new(Full::new(body));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
                );
                r
            }
            None => error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such file"),
        },
        _ => error_response(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Invalid, "method not allowed"),
    }
}

fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "expected a WebSocket upgrade");
    }
    if app.open_connections.load(Ordering::Relaxed) >= app.max_connections {
        metrics::counter!("viche_connections_refused_total", "reason" => "max_connections").increment(1);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many connections; retry later",
        );
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, &format!("bad upgrade: {e}")),
    };
    metrics::counter!("viche_connections_accepted_total").increment(1);
    let app2 = app.clone();
    app.open_connections.fetch_add(1, Ordering::Relaxed);
    let task = async move {
        match fut.await {
            Ok(ws) => crate::ws::serve(app2.engine.clone(), ws.into_inner().into_inner()).await,
            Err(_) => crate::ws::count_closed_without_code(),
        }
        app2.open_connections.fetch_sub(1, Ordering::Relaxed);
    };
    app.sessions.spawn(task);
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_HTTP_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::Invalid,
                "body unreadable or larger than 16 KiB",
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, &format!("invalid JSON body: {e}")))
}

// The error is the answer itself, returned early by the handlers; it is
// built once per bad request, so its size does not matter.
#[allow(clippy::result_large_err)]
fn check_credentials(c: &Credentials) -> Result<(), Response<Body>> {
    if !validate::is_valid_username(&c.username) {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            "username must be 3 to 32 characters of A-Z a-z 0-9 _ . -",
        ));
    }
    if !validate::is_valid_password(&c.password) {
        return Err(error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "password must be 8 to 1024 bytes"));
    }
    Ok(())
}

fn token_response(app: &App, status: StatusCode, user: &str) -> Response<Body> {
    let (token, expires_at) = app.engine.jwt.mint(user);
    json_response(status, json!({ "user": user, "token": token, "expires_at": expires_at }))
}

fn internal(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "internal error answering an HTTP request");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
}

async fn register(app: &App, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let ip = addr.ip().to_string();
    if let Err(retry) = app.registrations_by_addr.take(&ip) {
        metrics::counter!("viche_rate_limited_total", "kind" => "register").increment(1);
        return too_many(retry);
    }
    let creds: Credentials = match read_json(req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = check_credentials(&creds) {
        return r;
    }
    // Cheap early answer for a taken name; the store's insert decides.
    match app.engine.store.get_user(&creds.username).await {
        Ok(Some(_)) => return error_response(StatusCode::CONFLICT, ErrorCode::Conflict, "username taken"),
        Ok(None) => {}
        Err(e) => return internal(e),
    }
    let hash = match app.hasher.hash(creds.password).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    let record = UserRecord { username: creds.username.clone(), password_hash: hash, created_ms: now_ms() };
    match app.engine.store.create_user(&record).await {
        Ok(true) => {
            metrics::counter!("viche_registrations_total").increment(1);
            token_response(app, StatusCode::CREATED, &creds.username)
        }
        Ok(false) => error_response(StatusCode::CONFLICT, ErrorCode::Conflict, "username taken"),
        Err(e) => internal(e),
    }
}

async fn login(app: &App, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let creds: Credentials = match read_json(req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = check_credentials(&creds) {
        return r;
    }
    let ip = addr.ip().to_string();
    let limited =
        app.failed_logins_by_user.retry_after_s(&creds.username).max(app.failed_logins_by_addr.retry_after_s(&ip));
    if let Some(retry) = limited {
        metrics::counter!("viche_rate_limited_total", "kind" => "login").increment(1);
        return too_many(retry);
    }
    let user = match app.engine.store.get_user(&creds.username).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    // An unknown user costs the same hash as a known one: same answer, same time.
    let hash = user.as_ref().map_or_else(|| PasswordHasherPool::dummy_hash().to_string(), |u| u.password_hash.clone());
    let ok = match app.hasher.verify(creds.password, hash).await {
        Ok(ok) => ok && user.is_some(),
        Err(e) => return internal(e),
    };
    if !ok {
        let reason = if user.is_some() { "wrong_password" } else { "unknown_user" };
        metrics::counter!("viche_auth_failures_total", "reason" => reason).increment(1);
        let _ = app.failed_logins_by_user.take(&creds.username);
        let _ = app.failed_logins_by_addr.take(&ip);
        return error_response(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "wrong username or password");
    }
    metrics::counter!("viche_logins_total").increment(1);
    token_response(app, StatusCode::OK, &creds.username)
}

/// The (still escaped) room segment of `/api/rooms/{room}/messages`.
fn history_room(path: &str) -> Option<&str> {
    let room = path.strip_prefix("/api/rooms/")?.strip_suffix("/messages")?;
    (!room.is_empty() && !room.contains('/')).then_some(room)
}

fn query_u64(query: &str, key: &str) -> Result<Option<u64>, ()> {
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key) {
        Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| ()),
        None => Ok(None),
    }
}

async fn history(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let token = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(verified) = token.and_then(|t| app.engine.jwt.verify(t)) else {
        metrics::counter!("viche_auth_failures_total", "reason" => "bad_token").increment(1);
        return error_response(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing, invalid or expired token");
    };
    let encoded = history_room(req.uri().path()).unwrap_or_default();
    // A room id may arrive escaped (`dm%3Aa%3Ab`).
    let room = percent_encoding::percent_decode_str(encoded).decode_utf8().ok();
    let Some(kind) = room.as_deref().and_then(parse_room) else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "invalid room id");
    };
    if let RoomKind::Dm(a, b) = kind {
        if verified.user != a && verified.user != b {
            return error_response(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "a DM room is only for its two users");
        }
    }
    let room = room.as_deref().unwrap_or_default();
    let query = req.uri().query().unwrap_or("");
    let (Ok(before), Ok(limit)) = (query_u64(query, "before"), query_u64(query, "limit")) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            "before and limit must be unsigned integers",
        );
    };
    let Some(limit) = validate::history_limit(limit) else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "limit must be 1 to 100");
    };
    match app.engine.store.history(room, before, limit as usize).await {
        Ok((messages, more)) => {
            let messages: Vec<_> = messages.iter().map(tagged_msgs::to_json_value).collect();
            json_response(StatusCode::OK, json!({ "messages": messages, "more": more }))
        }
        Err(e) => internal(e),
    }
}

async fn readyz(app: &App) -> Response<Body> {
    let store = app.engine.store.check_ready().await;
    crate::exporter::record_store_probe(&app.engine, store.is_ok());
    match store {
        Ok(()) if app.engine.writer.is_healthy() => json_response(StatusCode::OK, json!({ "status": "ready" })),
        Ok(()) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded, "the writer's last commit failed")
        }
        Err(e) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded, &format!("store not ready: {e}"))
        }
    }
}
