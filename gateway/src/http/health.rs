//! `GET /healthz` (the process serves), `GET /readyz` (the store answers,
//! the writer is up and its last commit succeeded) and `GET /metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use viche_protocol::ErrorCode;

use super::reply::{self, Body};
use super::App;

pub fn healthz() -> Response<Body> {
    reply::json(StatusCode::OK, json!({ "status": "ok" }))
}

/// From the engine's last probe and its writer's state: no store call, so
/// anyone may ask as often as they like.
pub fn readyz(app: &App) -> Response<Body> {
    match app.engine.not_ready() {
        None => reply::json(StatusCode::OK, json!({ "status": "ready" })),
        Some(why) => reply::error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded, &why),
    }
}

pub fn metrics(app: &App) -> Response<Body> {
    match &app.exporter {
        Some(exporter) => {
            let mut r = Response::new(Full::new(Bytes::from(exporter.render())));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        None => reply::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "metrics are disabled (--no-metrics)"),
    }
}
