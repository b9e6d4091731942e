//! The HTTP side of the server: one route table (`Route::of`) that names
//! every route once, for dispatch and for the metrics label alike.
//!
//! - `accounts.rs`: `POST /api/register`, `POST /api/login`
//! - `history.rs`: `GET /api/rooms/{room}/messages`
//! - `conversations.rs`: `GET /api/conversations` (v1.1)
//! - `admin.rs`: `/api/admin/…`, the operator's API (off without `--admin-token`)
//! - `health.rs`: `/healthz`, `/readyz`, `/metrics`
//! - `upgrade.rs`: `GET /ws`
//! - `reply.rs`: JSON answers, and refusals as HTTP statuses
//! - static files: `crate::web`
//! - `io.rs`, `slots.rs`: the connection under hyper, and the caps on
//!   connections (`server.rs` applies them at accept)
//!
//! Every error body is `{"error": CODE, "message": TEXT}`; a body that is
//! not the expected JSON is a 400 `invalid`.

mod accounts;
mod admin;
mod client_addr;
mod conversations;
mod health;
mod history;
mod io;
mod reply;
mod slots;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;
use viche_engine::metrics::{CONNECTIONS_REFUSED, HTTP_REQUESTS, HTTP_REQUEST_DURATION};
use viche_engine::Engine;
use viche_protocol::ErrorCode;

pub use admin::AdminAccess;
pub use client_addr::TrustedProxies;
pub use io::HttpIo;
pub use reply::{Body, RequestDeadline};
pub use slots::{AddressSlot, AddressSlots, HttpSlots};
pub use upgrade::AllowedOrigins;

use crate::config::EdgeLimits;
use crate::exporter::Exporter;

pub struct App {
    pub engine: Arc<Engine>,
    /// None with `--no-metrics`.
    pub exporter: Option<Exporter>,
    pub web_dir: Option<PathBuf>,
    /// Every WebSocket connection's task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    pub open_connections: AtomicUsize,
    pub connections_max: usize,
    pub allowed_origins: AllowedOrigins,
    pub trusted_proxies: TrustedProxies,
    pub edge: EdgeLimits,
    /// Connections in their HTTP phase (`--max-http-connections`).
    pub http_connections: Arc<HttpSlots>,
    /// Connections per client address (`--max-connections-per-ip`).
    pub addresses: Arc<AddressSlots>,
    /// The admin API, when `--admin-token` is given (set after `new`).
    pub admin: Option<AdminAccess>,
}

impl App {
    pub fn new(
        engine: Arc<Engine>,
        exporter: Option<Exporter>,
        web_dir: Option<PathBuf>,
        connections_max: usize,
        allowed_origins: AllowedOrigins,
        trusted_proxies: TrustedProxies,
        edge: EdgeLimits,
    ) -> Self {
        Self {
            engine,
            exporter,
            web_dir,
            sessions: TaskTracker::new(),
            open_connections: AtomicUsize::new(0),
            connections_max,
            allowed_origins,
            trusted_proxies,
            edge,
            http_connections: HttpSlots::new(edge.http_connections_max),
            addresses: AddressSlots::new(edge.connections_per_ip_max),
            admin: None,
        }
    }
}

/// The web client's Content-Security-Policy: its own scripts, styles and
/// connections only (the WebSocket is same-origin), nothing framed, no
/// plugins. The client has no inline script or style.
const CONTENT_SECURITY_POLICY_WEB: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
form-action 'self'";

/// Every route the server answers. Its label is the `route` of the HTTP
/// metrics (`viche_engine::metrics::HTTP_ROUTES`, checked by a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Register,
    Login,
    History,
    Conversations,
    /// `/api/admin/…` (404 without `--admin-token`).
    Admin,
    Healthz,
    Readyz,
    Metrics,
    Ws,
    /// Any other `/api/…` request: 404.
    ApiOther,
    /// Everything else: the web client's files (GET and HEAD; else 405).
    Static,
}

impl Route {
    #[cfg(test)]
    const ALL: [Route; 11] = [
        Route::Register,
        Route::Login,
        Route::History,
        Route::Conversations,
        Route::Admin,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Ws,
        Route::ApiOther,
        Route::Static,
    ];

    /// The route table.
    fn of(method: &Method, path: &str) -> Route {
        match (method, path) {
            (&Method::POST, "/api/register") => Route::Register,
            (&Method::POST, "/api/login") => Route::Login,
            (&Method::GET, p) if history::room_segment(p).is_some() => Route::History,
            (&Method::GET, "/api/conversations") => Route::Conversations,
            (_, p) if p.starts_with("/api/admin/") => Route::Admin,
            (&Method::GET, "/healthz") => Route::Healthz,
            (&Method::GET, "/readyz") => Route::Readyz,
            (&Method::GET, "/metrics") => Route::Metrics,
            (&Method::GET, "/ws") => Route::Ws,
            (_, p) if p.starts_with("/api/") => Route::ApiOther,
            _ => Route::Static,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Register => "register",
            Route::Login => "login",
            Route::History => "history",
            Route::Conversations => "conversations",
            Route::Admin => "admin",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Ws => "ws",
            Route::ApiOther => "api_other",
            Route::Static => "static",
        }
    }
}

pub async fn route(app: Arc<App>, addr: SocketAddr, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = Route::of(req.method(), req.uri().path());
    // The address every per-address limit of this request is charged to.
    let client = app.trusted_proxies.client(addr.ip(), req.headers());
    // The body, if the handler reads one, must arrive by then (`reply::read_json`).
    req.extensions_mut().insert(RequestDeadline(tokio::time::Instant::now() + app.edge.http_request_timeout()));
    // A connection from a trusted proxy was not charged at accept: each of
    // its requests is, to the client the proxy names, for as long as the
    // request lasts (or the WebSocket it upgrades to).
    let address_slot = match app.trusted_proxies.trusts(addr.ip()) {
        false => Ok(None),
        true => app.addresses.try_acquire(client).map(Some).ok_or(()),
    };
    let response = match (route, address_slot) {
        (_, Err(())) => {
            CONNECTIONS_REFUSED.counter_with("max_connections_per_ip").increment(1);
            let message = "too many connections from your address; retry later";
            reply::error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded, message)
        }
        (Route::Register, Ok(_slot)) => accounts::register(&app.engine, client, req).await,
        (Route::Login, Ok(_slot)) => accounts::login(&app.engine, client, req).await,
        (Route::History, Ok(_slot)) => history::history(&app.engine, &req).await,
        (Route::Conversations, Ok(_slot)) => conversations::conversations(&app.engine, &req).await,
        (Route::Admin, Ok(_slot)) => admin::admin(&app.engine, app.admin.as_ref(), client, req).await,
        (Route::Healthz, Ok(_slot)) => health::healthz(),
        (Route::Readyz, Ok(_slot)) => health::readyz(&app),
        (Route::Metrics, Ok(_slot)) => health::metrics(&app),
        (Route::Ws, Ok(slot)) => upgrade::upgrade(&app, req, slot),
        (Route::ApiOther, Ok(_slot)) => reply::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint"),
        (Route::Static, Ok(_slot)) => static_file(&app, &req).await,
    };
    let mut response = response;
    // No answer of ours may be sniffed into another type (a JSON error as HTML, say).
    response.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let status = response.status().as_u16().to_string();
    HTTP_REQUESTS.counter_with2(route.label(), status).increment(1);
    HTTP_REQUEST_DURATION.histogram_with(route.label()).record(started.elapsed().as_secs_f64());
    Ok(response)
}

async fn static_file(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return reply::error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Invalid, "method not allowed");
    }
    match crate::web::lookup(app.web_dir.as_deref(), req.uri().path()).await {
        Some((mime, body)) => {
            let mut r = Response::new(Full::new(body));
            let content_type =
                HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
            r.headers_mut().insert(CONTENT_TYPE, content_type);
            r.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY_WEB));
            r
        }
        None => reply::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_the_metrics_table() {
        let labels: Vec<&str> = Route::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, viche_engine::metrics::HTTP_ROUTES.to_vec());
    }

    #[test]
    fn the_table_routes_by_method_and_path() {
        assert_eq!(Route::of(&Method::POST, "/api/login"), Route::Login);
        assert_eq!(Route::of(&Method::GET, "/api/login"), Route::ApiOther);
        assert_eq!(Route::of(&Method::GET, "/api/rooms/lobby/messages"), Route::History);
        assert_eq!(Route::of(&Method::GET, "/api/rooms/a/b/messages"), Route::ApiOther);
        assert_eq!(Route::of(&Method::POST, "/healthz"), Route::Static);
        assert_eq!(Route::of(&Method::DELETE, "/api/admin/users/ann"), Route::Admin);
        assert_eq!(Route::of(&Method::GET, "/api/admin"), Route::ApiOther);
        assert_eq!(Route::of(&Method::GET, "/assets/app.js"), Route::Static);
    }
}
