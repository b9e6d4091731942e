//! `/api/admin/…`: the operator's API (docs/operations.md, "The admin
//! API"). Off unless `--admin-token` is given (then every admin path is a
//! 404, like any unknown `/api` path). Each request is charged to its
//! client address first (its own rate, 429), then must carry
//! `Authorization: Bearer ADMIN_TOKEN`, compared in constant time; a
//! user's token, however valid, is not the admin token (401). The
//! operations are the engine's (`viche_engine::admin`).

use std::net::IpAddr;
use std::path::PathBuf;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use viche_engine::accounts::KeyedLimiter;
use viche_engine::address::limit_key;
use viche_engine::metrics::{AUTH_FAILURES, RATE_LIMITED};
use viche_engine::{Engine, Refusal};
use viche_protocol::limits::Rate;
use viche_protocol::ErrorCode;

use super::reply::{self, Body};

/// Admin requests per client address: an operator's few, and a ceiling on
/// guessing the token.
pub const ADMIN_RATE: Rate = Rate { per_second: 2.0, burst: 10 };
/// Client addresses whose admin rate is tracked at once.
const ADMIN_LIMITER_KEYS_MAX: usize = 10_000;

/// The admin token, and what a backup takes beside the database.
pub struct AdminAccess {
    token: String,
    /// The generated JWT secret's file, copied into each backup (none when
    /// the secret is given with `--jwt-secret`).
    secret_file: Option<PathBuf>,
    limiter: KeyedLimiter,
}

impl AdminAccess {
    pub fn new(token: String, secret_file: Option<PathBuf>) -> Self {
        Self { token, secret_file, limiter: KeyedLimiter::new(ADMIN_RATE, ADMIN_LIMITER_KEYS_MAX) }
    }

    /// The request's Bearer token is the admin token (constant time in its
    /// content; a token of another length differs at once).
    fn allows(&self, headers: &HeaderMap) -> bool {
        let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(self.token.as_bytes())))
    }
}

#[derive(Deserialize)]
struct BackupBody {
    path: String,
}

pub async fn admin(
    engine: &Engine,
    access: Option<&AdminAccess>,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(access) = access else {
        return reply::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint");
    };
    if let Err(retry_after_s) = access.limiter.take(&limit_key(client).to_string()) {
        RATE_LIMITED.counter_with("admin").increment(1);
        return reply::refusal(Refusal::rate_limited(retry_after_s));
    }
    if !access.allows(req.headers()) {
        AUTH_FAILURES.counter_with("bad_admin_token").increment(1);
        return reply::error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong admin token");
    }
    let path = req.uri().path().to_owned();
    let decoded = |segment: &str| percent_encoding::percent_decode_str(segment).decode_utf8().map(|s| s.into_owned());
    let answer = match (req.method().clone(), path.strip_prefix("/api/admin/").unwrap_or("")) {
        (Method::GET, "stats") => engine.admin_stats().await.map(|s| json!(s)),
        (Method::POST, "retention") => engine.run_retention().await.map(|r| json!(r)),
        (Method::POST, "backup") => match reply::read_json::<BackupBody>(req).await {
            Ok(body) => backup(engine, access, &body.path).await,
            Err(response) => return response,
        },
        (Method::DELETE, rest) => match rest.split_once('/') {
            Some(("users", name)) if !name.contains('/') => match decoded(name) {
                Ok(name) => engine.delete_user(&name).await.map(|d| json!(d)),
                Err(_) => Err(Refusal::new(ErrorCode::Invalid, "not a valid username")),
            },
            Some(("rooms", room)) if !room.contains('/') => match decoded(room) {
                Ok(room) => engine.purge_room(&room).await.map(|p| json!(p)),
                Err(_) => Err(Refusal::new(ErrorCode::Invalid, "invalid room id")),
            },
            _ => Err(Refusal::new(ErrorCode::NotFound, "no such admin endpoint")),
        },
        _ => Err(Refusal::new(ErrorCode::NotFound, "no such admin endpoint")),
    };
    match answer {
        Ok(body) => reply::json(StatusCode::OK, body),
        Err(refusal) => reply::refusal(refusal),
    }
}

/// The engine's backup, then the JWT secret beside it (so that a server
/// restored from it accepts the tokens already issued).
async fn backup(engine: &Engine, access: &AdminAccess, path: &str) -> Result<serde_json::Value, Refusal> {
    let done = engine.backup(path).await?;
    let secret_copied = match &access.secret_file {
        Some(file) if file.exists() => {
            let to = PathBuf::from(path).join(crate::secret::FILE_NAME);
            match std::fs::copy(file, &to) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, to = %to.display(), "admin: the JWT secret was not copied into the backup");
                    false
                }
            }
        }
        _ => false,
    };
    let mut body = json!(done);
    body["jwt_secret_copied"] = json!(secret_copied);
    Ok(body)
}
