//! `GET /api/conversations` (protocol 1.1): a page of the token's user's
//! conversations, the same page as the WebSocket's `conversations` (the
//! engine's), within the user's HTTP history rate.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use viche_engine::{Engine, Refusal};
use viche_protocol::ErrorCode;

use super::history::{bearer, query_u64};
use super::reply::{self, Body};

pub async fn conversations(engine: &Engine, req: &Request<Incoming>) -> Response<Body> {
    match page(engine, req).await {
        Ok(response) => response,
        Err(refusal) => reply::refusal(refusal),
    }
}

async fn page(engine: &Engine, req: &Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let verified = bearer(engine, req)?;
    let query = req.uri().query().unwrap_or("");
    let (Ok(before), Ok(limit)) = (query_u64(query, "before"), query_u64(query, "limit")) else {
        return Err(Refusal::new(ErrorCode::Invalid, "before and limit must be unsigned integers"));
    };
    let page = engine.conversations(&verified.user, before, limit).await?;
    Ok(reply::json(StatusCode::OK, json!({ "conversations": page.items, "more": page.more })))
}
