//! `POST /api/register` and `POST /api/login`: the body is read here, the
//! rules are the engine's.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use viche_engine::{Credentials, Engine, IssuedToken};

use super::reply::{self, Body};

fn token(status: StatusCode, issued: IssuedToken) -> Response<Body> {
    reply::json(status, json!({ "user": issued.user, "token": issued.token, "expires_at": issued.expires_at_ms }))
}

pub async fn register(engine: &Engine, client: IpAddr, req: Request<Incoming>) -> Response<Body> {
    // Charged before the body is read: a flood of bad bodies is limited too.
    if let Err(refusal) = engine.admit_registration(client) {
        return reply::refusal(refusal);
    }
    let creds = match reply::read_json::<Credentials>(req).await {
        Ok(creds) => creds,
        Err(response) => return response,
    };
    match engine.register(creds).await {
        Ok(issued) => token(StatusCode::CREATED, issued),
        Err(refusal) => reply::refusal(refusal),
    }
}

pub async fn login(engine: &Engine, client: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let creds = match reply::read_json::<Credentials>(req).await {
        Ok(creds) => creds,
        Err(response) => return response,
    };
    match engine.login(client, creds).await {
        Ok(issued) => token(StatusCode::OK, issued),
        Err(refusal) => reply::refusal(refusal),
    }
}
