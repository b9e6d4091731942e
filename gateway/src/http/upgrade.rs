//! `GET /ws`: the upgrade to a WebSocket, within `--max-connections`. Each
//! connection holds a [`ConnectionSlot`] for its whole life, and its
//! address's slot of `--max-connections-per-ip` (`slots.rs`); the slots are
//! given back when the connection's task ends, however it ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HOST, ORIGIN};
use hyper::{Request, Response, StatusCode};
use viche_engine::metrics::{CONNECTIONS_ACCEPTED, CONNECTIONS_REFUSED};
use viche_protocol::ErrorCode;

use super::reply::{self, Body};
use super::slots::AddressSlot;
use super::App;

/// Which browser pages may open a WebSocket (`--allowed-origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Only pages served by this server: the `Origin`'s host and port are
    /// the request's `Host` (the default).
    SameHost,
    /// `*`: any page.
    Any,
    /// These origins exactly (`https://chat.example.com`), and same-host.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// From the flag's value: empty for [`AllowedOrigins::SameHost`].
    pub fn parse(value: &str) -> Result<Self, String> {
        let origins: Vec<String> =
            value.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect();
        if origins.is_empty() {
            return Ok(Self::SameHost);
        }
        if origins.iter().any(|o| o == "*") {
            return Ok(Self::Any);
        }
        for o in &origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(format!("--allowed-origins: {o:?} is not an origin like https://chat.example.com"));
            }
        }
        Ok(Self::List(origins))
    }
}

/// A request without `Origin` is not from a browser page (a browser always
/// sends it on a WebSocket upgrade), so no other site can be behind it.
fn origin_allowed(allowed: &AllowedOrigins, req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let same_host = || {
        let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        req.headers().get(HOST).and_then(|h| h.to_str().ok()).is_some_and(|host| host.eq_ignore_ascii_case(authority))
    };
    match allowed {
        AllowedOrigins::Any => true,
        AllowedOrigins::SameHost => same_host(),
        AllowedOrigins::List(list) => same_host() || list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
    }
}

/// One of the `--max-connections` open connections.
struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `address_slot`: the client's, taken by `route` when the request came
/// through a trusted proxy (else the TCP connection holds one already).
pub fn upgrade(app: &Arc<App>, mut req: Request<Incoming>, address_slot: Option<AddressSlot>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return reply::error(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "expected a WebSocket upgrade");
    }
    if !origin_allowed(&app.allowed_origins, &req) {
        return reply::error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "this origin may not open a WebSocket here");
    }
    if app.open_connections.load(Ordering::Relaxed) >= app.connections_max {
        CONNECTIONS_REFUSED.counter_with("max_connections").increment(1);
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many connections; retry later",
        );
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, ErrorCode::Invalid, &format!("bad upgrade: {e}")),
    };
    CONNECTIONS_ACCEPTED.counter().increment(1);
    app.open_connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot(app.clone());
    let engine = app.engine.clone();
    let write_timeout = app.edge.write_timeout();
    app.sessions.spawn(async move {
        let _slot = slot;
        match fut.await {
            Ok(ws) => crate::ws::serve(engine, ws.into_inner().into_inner(), write_timeout, address_slot).await,
            Err(_) => crate::ws::count_closed_without_code(),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
