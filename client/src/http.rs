//! The HTTP API (docs/protocol.md, "HTTP API").
//!
//! [`HttpClient`] keeps one connection pool for a base URL such as
//! `http://127.0.0.1:8080`; the free functions [`register`], [`login`] and
//! [`history_http`] make a one-off client for convenience.

use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use viche_protocol::Msg;

use crate::error::{ApiError, ClientError};
use crate::Result;

/// Generous: a login runs argon2 on a possibly busy, small machine.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The success answer of `register` and `login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOk {
    pub user: String,
    pub token: String,
    /// The token's `exp` in milliseconds since the Unix epoch.
    pub expires_at: u64,
}

/// A page of `GET /api/rooms/{room}/messages`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    #[serde(with = "viche_protocol::frames::tagged_msgs")]
    pub messages: Vec<Msg>,
    pub more: bool,
}

/// `GET /api/conversations` (v1.1): newest activity first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationsHttp {
    pub conversations: Vec<viche_protocol::Conversation>,
    pub more: bool,
}

/// Any HTTP answer, unparsed: for tests of malformed requests.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl RawResponse {
    /// A success body as `T`; a body that does not parse is an error.
    fn parse_success<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.body).map_err(|e| ClientError::Http {
            status: self.status,
            body: None,
            retry_after: None,
            raw: format!("success body does not parse ({e}): {}", self.body),
        })
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The body as an error body `{"error","message"}`, if it is one.
    pub fn api_error(&self) -> Option<ApiError> {
        serde_json::from_str(&self.body).ok()
    }

    /// The `Retry-After` header in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers.get(CONTENT_TYPE)?.to_str().ok()
    }

    fn into_error(self) -> ClientError {
        ClientError::Http {
            status: self.status,
            body: self.api_error(),
            retry_after: self.retry_after(),
            raw: self.body,
        }
    }
}

/// An HTTP client bound to a server's base URL (`http://host:port`, no
/// trailing slash needed).
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    http: reqwest::Client,
}

impl HttpClient {
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_timeout(base_url, DEFAULT_HTTP_TIMEOUT)
    }

    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(HttpClient { base: base_url.trim_end_matches('/').to_string(), http })
    }

    /// Like [`HttpClient::with_timeout`], with the client's sockets bound to
    /// `local_addr` (a load generator spreading requests over source
    /// addresses, each with its own per-address limits on the server).
    pub fn with_local_address(base_url: &str, timeout: Duration, local_addr: Option<std::net::IpAddr>) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).local_address(local_addr).build()?;
        Ok(HttpClient { base: base_url.trim_end_matches('/').to_string(), http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/register`; `201` gives [`AuthOk`], anything else a
    /// [`ClientError::Http`] with the status and error body.
    pub async fn register(&self, username: &str, password: &str) -> Result<AuthOk> {
        self.credentials("/api/register", username, password).await
    }

    /// `POST /api/login`; `200` gives [`AuthOk`].
    pub async fn login(&self, username: &str, password: &str) -> Result<AuthOk> {
        self.credentials("/api/login", username, password).await
    }

    async fn credentials(&self, path: &str, username: &str, password: &str) -> Result<AuthOk> {
        let body = serde_json::json!({ "username": username, "password": password }).to_string();
        let resp = self.post_raw(path, "application/json", body).await?;
        if (200..300).contains(&resp.status) {
            resp.parse_success()
        } else {
            Err(resp.into_error())
        }
    }

    /// `GET /api/rooms/{room}/messages?before=&limit=` with a bearer token.
    pub async fn history(
        &self,
        token: &str,
        room: &str,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> Result<HistoryPage> {
        let resp = self.get_raw(&history_path(room, before, limit), Some(token)).await?;
        if resp.status == 200 {
            resp.parse_success()
        } else {
            Err(resp.into_error())
        }
    }

    /// v1.1 `GET /api/conversations?before=&limit=` with a bearer token.
    pub async fn conversations(
        &self,
        token: &str,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> Result<ConversationsHttp> {
        let mut query = Vec::new();
        if let Some(before) = before {
            query.push(format!("before={before}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let path = if query.is_empty() {
            "/api/conversations".to_string()
        } else {
            format!("/api/conversations?{}", query.join("&"))
        };
        let resp = self.get_raw(&path, Some(token)).await?;
        if resp.status == 200 {
            resp.parse_success()
        } else {
            Err(resp.into_error())
        }
    }

    /// A `POST` of any body with any content type; never fails on an HTTP
    /// status, only on transport errors.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<RawResponse> {
        let req = self.http.post(self.url(path)).header(CONTENT_TYPE, content_type).body(body);
        raw(req.send().await?).await
    }

    /// A `GET` with an optional bearer token; never fails on an HTTP status.
    pub async fn get_raw(&self, path: &str, bearer: Option<&str>) -> Result<RawResponse> {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        raw(req.send().await?).await
    }

    /// A `GET` with arbitrary headers (e.g. a malformed `Authorization`).
    pub async fn get_with_headers(&self, path: &str, headers: HeaderMap) -> Result<RawResponse> {
        raw(self.http.get(self.url(path)).headers(headers).send().await?).await
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{}", self.base, path)
        } else {
            format!("{}/{}", self.base, path)
        }
    }
}

async fn raw(resp: reqwest::Response) -> Result<RawResponse> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await?;
    Ok(RawResponse { status, headers, body })
}

/// The path of a history request, the room percent-encoded.
pub fn history_path(room: &str, before: Option<u64>, limit: Option<u64>) -> String {
    let mut path = format!("/api/rooms/{}/messages", percent_encode_segment(room));
    let mut sep = '?';
    if let Some(before) = before {
        path.push_str(&format!("{sep}before={before}"));
        sep = '&';
    }
    if let Some(limit) = limit {
        path.push_str(&format!("{sep}limit={limit}"));
    }
    path
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:`
/// (valid room ids therefore pass through unchanged).
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /api/register` with a one-off client.
pub async fn register(base_url: &str, username: &str, password: &str) -> Result<AuthOk> {
    HttpClient::new(base_url)?.register(username, password).await
}

/// `POST /api/login` with a one-off client.
pub async fn login(base_url: &str, username: &str, password: &str) -> Result<AuthOk> {
    HttpClient::new(base_url)?.login(username, password).await
}

/// `GET /api/rooms/{room}/messages` with a one-off client.
pub async fn history_http(
    base_url: &str,
    token: &str,
    room: &str,
    before: Option<u64>,
    limit: Option<u64>,
) -> Result<HistoryPage> {
    HttpClient::new(base_url)?.history(token, room, before, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_paths() {
        assert_eq!(history_path("lobby", None, None), "/api/rooms/lobby/messages");
        assert_eq!(history_path("dm:a:b", Some(5), Some(10)), "/api/rooms/dm:a:b/messages?before=5&limit=10");
        assert_eq!(history_path("r", None, Some(1)), "/api/rooms/r/messages?limit=1");
        assert_eq!(history_path("a b/c", None, None), "/api/rooms/a%20b%2Fc/messages");
    }
}
