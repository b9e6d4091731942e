//! `GET /api/rooms/{room}/messages`: a history page over HTTP, with the
//! same access rule and bounds as the WebSocket's `history` (the engine's).

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use viche_engine::{Engine, Refusal, VerifiedToken};
use viche_protocol::frames::tagged_msgs;
use viche_protocol::ErrorCode;

use super::reply::{self, Body};

/// The (still escaped) room segment of `/api/rooms/{room}/messages`.
pub fn room_segment(path: &str) -> Option<&str> {
    let room = path.strip_prefix("/api/rooms/")?.strip_suffix("/messages")?;
    (!room.is_empty() && !room.contains('/')).then_some(room)
}

/// The `key` of a query string as an unsigned integer, if present.
pub(super) fn query_u64(query: &str, key: &str) -> Result<Option<u64>, ()> {
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key) {
        Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| ()),
        None => Ok(None),
    }
}

pub async fn history(engine: &Engine, req: &Request<Incoming>) -> Response<Body> {
    match page(engine, req).await {
        Ok(response) => response,
        Err(refusal) => reply::refusal(refusal),
    }
}

/// The user of the request's `Authorization: Bearer` token.
pub(super) fn bearer(engine: &Engine, req: &Request<Incoming>) -> Result<VerifiedToken, Refusal> {
    let token = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    engine
        .authenticate(token.unwrap_or_default())
        .map_err(|_| Refusal::new(ErrorCode::Unauthorized, "missing, invalid or expired token"))
}

async fn page(engine: &Engine, req: &Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let verified = bearer(engine, req)?;
    // A room id may arrive escaped (`dm%3Aa%3Ab`).
    let encoded = room_segment(req.uri().path()).unwrap_or_default();
    let Ok(room) = percent_encoding::percent_decode_str(encoded).decode_utf8() else {
        return Err(Refusal::new(ErrorCode::Invalid, "invalid room id"));
    };
    let query = req.uri().query().unwrap_or("");
    let (Ok(before), Ok(limit)) = (query_u64(query, "before"), query_u64(query, "limit")) else {
        // The room's access is answered first, as for a well-formed query.
        engine.check_access(&verified.user, &room)?;
        return Err(Refusal::new(ErrorCode::Invalid, "before and limit must be unsigned integers"));
    };
    let page = engine.history(&verified.user, &room, before, limit).await?;
    let messages: Vec<_> = page.messages.iter().map(tagged_msgs::to_json_value).collect();
    Ok(reply::json(StatusCode::OK, json!({ "messages": messages, "more": page.more })))
}
