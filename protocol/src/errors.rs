//! Error codes and close codes (docs/protocol.md, "Error codes" and
//! "Close codes").
//!
//! Named here once so that no part of the system spells a code by hand.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    Unauthorized,
    Forbidden,
    NotFound,
    NotJoined,
    Invalid,
    TooLarge,
    RateLimited,
    Conflict,
    Overloaded,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadFrame,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NotJoined,
        ErrorCode::Invalid,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Conflict,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code the server sends (docs/protocol.md, "Close
/// codes"). The numbers are spelled here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed, or stayed silent past two heartbeats.
    Normal = 1000,
    /// The server is shutting down (after finishing the writes in flight).
    GoingAway = 1001,
    /// A WebSocket protocol violation, or a `hello` with an unsupported `v`.
    ProtocolError = 1002,
    /// A frame larger than `max_frame`.
    MessageTooBig = 1009,
    /// The server failed to serve the session (e.g. a replay read failed).
    InternalError = 1011,
    /// Bad, missing or expired token.
    Unauthorized = 4001,
    /// No `hello` in time.
    HelloTimeout = 4002,
    /// The client does not read fast enough: its outbound queue is full,
    /// or its socket took nothing for the write timeout.
    SlowConsumer = 4008,
    /// The user already has as many sessions open as the server allows.
    TooManySessions = 4009,
    /// The client kept sending after `rate_limited`.
    RateLimited = 4029,
}

impl CloseCode {
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::Unauthorized,
        CloseCode::HelloTimeout,
        CloseCode::SlowConsumer,
        CloseCode::TooManySessions,
        CloseCode::RateLimited,
    ];

    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code as text, for metric labels (`"4008"`).
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "1000",
            CloseCode::GoingAway => "1001",
            CloseCode::ProtocolError => "1002",
            CloseCode::MessageTooBig => "1009",
            CloseCode::InternalError => "1011",
            CloseCode::Unauthorized => "4001",
            CloseCode::HelloTimeout => "4002",
            CloseCode::SlowConsumer => "4008",
            CloseCode::TooManySessions => "4009",
            CloseCode::RateLimited => "4029",
        }
    }

    pub fn from_u16(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.as_u16() == code)
    }
}

/// Why the server ends a connection: a code and the reason sent with it.
/// Every disconnect the server can decide on is a named constant here, so
/// the code, the reason and the metric label never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    /// At most 123 bytes (a close frame's payload is at most 125).
    pub reason: &'static str,
}

impl Close {
    pub const CLIENT_CLOSED: Close = Close { code: CloseCode::Normal, reason: "" };
    pub const HEARTBEAT_TIMEOUT: Close = Close { code: CloseCode::Normal, reason: "heartbeat timeout" };
    pub const SHUTDOWN: Close = Close { code: CloseCode::GoingAway, reason: "server shutting down" };
    pub const PROTOCOL_ERROR: Close = Close { code: CloseCode::ProtocolError, reason: "websocket protocol error" };
    pub const UNSUPPORTED_VERSION: Close =
        Close { code: CloseCode::ProtocolError, reason: "unsupported protocol version" };
    pub const FRAME_TOO_LARGE: Close = Close { code: CloseCode::MessageTooBig, reason: "frame larger than max_frame" };
    pub const SESSION_FAILED: Close =
        Close { code: CloseCode::InternalError, reason: "session failed; reconnect and rejoin with since" };
    pub const SERVER_FAILURE: Close = Close { code: CloseCode::InternalError, reason: "server failure; reconnect" };
    pub const REPLAY_UNAVAILABLE: Close =
        Close { code: CloseCode::InternalError, reason: "replay unavailable; rejoin with since" };
    pub const UNAUTHORIZED: Close = Close { code: CloseCode::Unauthorized, reason: "unauthorized" };
    pub const TOKEN_EXPIRED: Close = Close { code: CloseCode::Unauthorized, reason: "token expired" };
    /// An operator deleted the account (docs/operations.md, "Deleting a user").
    pub const ACCOUNT_DELETED: Close = Close { code: CloseCode::Unauthorized, reason: "account deleted" };
    pub const HELLO_TIMEOUT: Close = Close { code: CloseCode::HelloTimeout, reason: "no hello in time" };
    pub const SLOW_CONSUMER: Close =
        Close { code: CloseCode::SlowConsumer, reason: "slow consumer: outbound queue full" };
    pub const WRITE_TIMEOUT: Close =
        Close { code: CloseCode::SlowConsumer, reason: "slow consumer: nothing read within the write timeout" };
    pub const RATE_LIMITED: Close = Close { code: CloseCode::RateLimited, reason: "kept sending after rate_limited" };
    pub const TOO_MANY_SESSIONS: Close =
        Close { code: CloseCode::TooManySessions, reason: "too many sessions for this user" };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_and_label_their_number() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(code.as_u16()), Some(code));
            assert_eq!(code.label(), code.as_u16().to_string());
        }
        assert_eq!(CloseCode::from_u16(1005), None);
    }
}
