//! Building HTTP answers: JSON bodies, and every refusal as the status its
//! error code maps to with `{"error": CODE, "message": TEXT}`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use viche_engine::metrics::HTTP_TIMEOUTS;
use viche_engine::Refusal;
use viche_protocol::ErrorCode;

pub type Body = Full<Bytes>;

/// When a request's body must have arrived: `--http-request-timeout-ms`
/// after its headers (set by `route` as a request extension).
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub tokio::time::Instant);

/// Largest JSON body the API reads (credentials are at most ~1.1 KiB).
const JSON_BODY_BYTES_MAX: usize = 16 * 1024;

pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The HTTP status of a refusal.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::Invalid | ErrorCode::TooLarge | ErrorCode::NotJoined => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    json(status, json!({ "error": code.as_str(), "message": message }))
}

pub fn refusal(refusal: Refusal) -> Response<Body> {
    let mut response = error(status_of(refusal.code), refusal.code, &refusal.message);
    if let Some(retry_after_s) = refusal.retry_after_s {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    response
}

/// The body as JSON of type `T`; a 400 `invalid` answer otherwise, and a
/// 415 when the request does not say `Content-Type: application/json`
/// (so a cross-site "simple" form POST from a browser is refused before
/// anything is read).
#[allow(clippy::result_large_err)] // the error is the answer, built once per bad request
pub async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        let message = "the body must be JSON, sent with Content-Type: application/json";
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::Invalid, message));
    }
    let deadline = req.extensions().get::<RequestDeadline>().copied();
    let collect = Limited::new(req.into_body(), JSON_BODY_BYTES_MAX).collect();
    let collected = match deadline {
        Some(RequestDeadline(at)) => match tokio::time::timeout_at(at, collect).await {
            Ok(collected) => collected,
            Err(_) => {
                // A body that does not arrive would hold the connection and
                // its task: answer 408 and close (what is unread is dropped).
                HTTP_TIMEOUTS.counter_with("body").increment(1);
                let message = "the request body did not arrive in time";
                let mut response = error(StatusCode::REQUEST_TIMEOUT, ErrorCode::Invalid, message);
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                return Err(response);
            }
        },
        None => collect.await,
    };
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error(StatusCode::BAD_REQUEST, ErrorCode::Invalid, "body unreadable or larger than 16 KiB"))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, ErrorCode::Invalid, &format!("invalid JSON body: {e}")))
}
