//! The client's error type.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use viche_protocol::{Encoding, ErrorCode, ServerFrame};

/// The body of every HTTP error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

/// How a WebSocket connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code of the server's close frame; `None` when the
    /// connection ended without one (reset, EOF, I/O error).
    pub code: Option<u16>,
    /// The close frame's reason, or a description of how the connection ended.
    pub reason: String,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "closed with {code} ({:?})", self.reason),
            None => write!(f, "closed without a close frame ({})", self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing (or not the awaited thing) arrived in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },

    /// The connection is closed (by the server, or it broke).
    #[error("connection {0}")]
    Closed(CloseInfo),

    /// The server answered the request with an `error` frame.
    #[error("server error {code}: {message} (ref {req:?})")]
    Server { code: ErrorCode, message: String, req: Option<u64> },

    /// The server answered the request with a frame of an unexpected type,
    /// or without a field the protocol requires.
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(Box<ServerFrame>),

    /// The server sent a frame in an encoding other than the one of the
    /// session's `hello` (docs/protocol.md, "WebSocket transport").
    #[error("server frame arrived as {got:?}, the session's hello was {expected:?}")]
    WrongEncoding { expected: Encoding, got: Encoding },

    /// The server sent bytes that do not decode as a server frame.
    #[error("undecodable server frame ({reason}): {raw:?}")]
    Decode { reason: String, raw: Vec<u8> },

    /// An HTTP request was answered with a non-success status.
    #[error("HTTP {status}: {body:?} {raw}")]
    Http {
        status: u16,
        /// The parsed `{"error","message"}` body, when it parses.
        body: Option<ApiError>,
        /// The `Retry-After` header in seconds, when present.
        retry_after: Option<u64>,
        /// The raw body text.
        raw: String,
    },

    /// The HTTP transport failed (connection refused, bad JSON in a success answer, …).
    #[error("HTTP transport: {0}")]
    Transport(#[from] reqwest::Error),

    /// The WebSocket transport failed during connect or send.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

impl ClientError {
    /// The protocol error code, for `Server` errors and HTTP errors with a
    /// known code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::Http { body: Some(body), .. } => {
                ErrorCode::ALL.iter().copied().find(|c| c.as_str() == body.error)
            }
            _ => None,
        }
    }

    /// The HTTP status, for HTTP errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The close code, for a closed connection that ended with a close frame.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed(info) => info.code,
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }

    pub(crate) fn timeout(what: impl Into<String>, after: Duration) -> Self {
        ClientError::Timeout { what: what.into(), after }
    }
}
