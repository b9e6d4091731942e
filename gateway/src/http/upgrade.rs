//! `GET /ws`: the upgrade to a WebSocket, within `--max-connections`. Each
//! connection holds a [`ConnectionSlot`] for its whole life; the slot is
//! given back when the connection's task ends, however it ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use viche_engine::metrics::{CONNECTIONS_ACCEPTED, CONNECTIONS_REFUSED};
use viche_protocol::ErrorCode;

use super::reply::{self, Body};
use super::App;

/// One of the `--max-connections` open connections.
struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return reply::error(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "expected a WebSocket upgrade");
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
    app.sessions.spawn(async move {
        let _slot = slot;
        match fut.await {
            Ok(ws) => crate::ws::serve(engine, ws.into_inner().into_inner()).await,
            Err(_) => crate::ws::count_closed_without_code(),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
