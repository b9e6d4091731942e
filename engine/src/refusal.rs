//! A refused request: the protocol's error code and a sentence for a
//! person. Every engine entry point answers `Result<T, Refusal>`; the
//! WebSocket path sends it as an `error` frame, the HTTP API as a status
//! and a JSON body.

use std::borrow::Cow;

use viche_protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// For `rate_limited` over HTTP: seconds until a retry may succeed.
    pub retry_after_s: Option<u64>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into(), retry_after_s: None }
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: "too many attempts; retry later".into(),
            retry_after_s: Some(retry_after_s.max(1)),
        }
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
