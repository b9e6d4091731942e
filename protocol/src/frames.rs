//! Every frame of docs/protocol.md, "Client frames" and "Server frames".
//!
//! Frames are internally tagged by `t`; unknown keys are ignored by serde's
//! default. `ref` is a Rust keyword, so the field is `req` on our side.

use serde::{Deserialize, Serialize};

use crate::errors::ErrorCode;

/// Client → server (docs/protocol.md, "Client frames").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        v: u64,
        token: String,
    },
    Auth {
        #[serde(rename = "ref")]
        req: u64,
        token: String,
    },
    Join {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    Leave {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
    },
    Send {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        body: String,
        cid: String,
    },
    Dm {
        #[serde(rename = "ref")]
        req: u64,
        to: String,
        body: String,
        cid: String,
    },
    Typing {
        room: String,
    },
    History {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    Ping {
        #[serde(rename = "ref")]
        req: u64,
    },
    /// A page of a joined room's online users, in name order, after `after`
    /// (an extension of v1: `ok` of a `join` lists at most 1000).
    Members {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
}

impl ClientFrame {
    /// The frame's `t`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Dm { .. } => "dm",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::History { .. } => "history",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Members { .. } => "members",
        }
    }

    /// The request's `ref`, if the frame carries one.
    pub fn req(&self) -> Option<u64> {
        match self {
            ClientFrame::Hello { .. } | ClientFrame::Typing { .. } => None,
            ClientFrame::Auth { req, .. }
            | ClientFrame::Join { req, .. }
            | ClientFrame::Leave { req, .. }
            | ClientFrame::Send { req, .. }
            | ClientFrame::Dm { req, .. }
            | ClientFrame::History { req, .. }
            | ClientFrame::Members { req, .. }
            | ClientFrame::Ping { req } => Some(*req),
        }
    }
}

/// A stored message: the `msg` frame's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub from: String,
    pub body: String,
    pub cid: String,
    pub ts: u64,
}

/// Server → client (docs/protocol.md, "Server frames").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        v: u64,
        session: String,
        user: String,
        heartbeat_ms: u64,
        max_frame: u64,
        max_body: u64,
    },
    Ok {
        #[serde(rename = "ref")]
        req: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// For `join`: the room's online users in name order, at most
        /// 1000 ([`crate::limits::MEMBERS_PAGE_MAX`]); `members_total` says
        /// how many there are, and `members` requests page the rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        more: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members_total: Option<u64>,
    },
    Ack {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        seq: u64,
        cid: String,
        ts: u64,
    },
    Msg(Msg),
    Presence {
        room: String,
        user: String,
        online: bool,
    },
    Typing {
        room: String,
        user: String,
    },
    History {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        #[serde(with = "tagged_msgs")]
        messages: Vec<Msg>,
        more: bool,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Pong {
        #[serde(rename = "ref")]
        req: u64,
    },
    /// A page of a room's online users (the answer to `members`).
    Members {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        users: Vec<String>,
        /// True when users remain after the last of this page.
        more: bool,
    },
}

impl ServerFrame {
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Msg(_) => "msg",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::History { .. } => "history",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Members { .. } => "members",
        }
    }

    pub fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { req, code, message: message.into() }
    }

    /// A plain `ok` (for `auth`, `leave`).
    pub fn ok(req: u64) -> Self {
        ServerFrame::Ok { req, room: None, seq: None, members: None, more: None, members_total: None }
    }
}

/// History pages (and the HTTP API) carry each message as a whole `msg`
/// frame, `t` included, so a client can treat both alike.
pub mod tagged_msgs {
    use super::Msg;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    #[serde(tag = "t", rename_all = "snake_case")]
    enum TaggedRef<'a> {
        Msg(&'a Msg),
    }

    #[derive(Deserialize)]
    #[serde(tag = "t", rename_all = "snake_case")]
    enum Tagged {
        Msg(Msg),
    }

    pub fn serialize<S: Serializer>(msgs: &[Msg], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(msgs.iter().map(TaggedRef::Msg))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Msg>, D::Error> {
        let tagged = Vec::<Tagged>::deserialize(d)?;
        Ok(tagged.into_iter().map(|Tagged::Msg(m)| m).collect())
    }

    /// A single message as a tagged JSON object (the `MSG` of the HTTP API).
    pub fn to_json_value(msg: &Msg) -> serde_json::Value {
        serde_json::to_value(TaggedRef::Msg(msg)).expect("a Msg always serializes")
    }
}
