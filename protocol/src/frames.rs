//! Every frame of docs/protocol.md, "Client frames" and "Server frames".
//!
//! Frames are internally tagged by `t`; unknown keys are ignored by serde's
//! default. `ref` is a Rust keyword, so the field is `req` on our side.
//! Version 1.1's additions (docs/protocol.md, "Version 1.1") are optional
//! fields and new frame types: a v1 client sees nothing new unless it asks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::errors::ErrorCode;

/// What `welcome.features` says this server speaks beyond v1.
pub const FEATURES: [&str; 4] = ["conversations", "edits", "reactions", "replies"];

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
        /// v1.1: also remove the room from the user's conversations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forget: Option<bool>,
    },
    Send {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        body: String,
        cid: String,
        /// v1.1: the seq of the ordinary message this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    Dm {
        #[serde(rename = "ref")]
        req: u64,
        to: String,
        body: String,
        cid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// v1.1: a new body for one's own message.
    Edit {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        target: u64,
        body: String,
        cid: String,
    },
    /// v1.1: erase one's own message.
    Delete {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        target: u64,
        cid: String,
    },
    /// v1.1: add (`on`) or remove this user's reaction to a message.
    React {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        target: u64,
        emoji: String,
        on: bool,
        cid: String,
    },
    /// v1.1: move this user's read marker of a conversation.
    Read {
        #[serde(rename = "ref")]
        req: u64,
        room: String,
        seq: u64,
    },
    /// v1.1: a page of this user's conversations, newest activity first.
    Conversations {
        #[serde(rename = "ref")]
        req: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
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
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::React { .. } => "react",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Conversations { .. } => "conversations",
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
            | ClientFrame::Edit { req, .. }
            | ClientFrame::Delete { req, .. }
            | ClientFrame::React { req, .. }
            | ClientFrame::Read { req, .. }
            | ClientFrame::Conversations { req, .. }
            | ClientFrame::Ping { req } => Some(*req),
        }
    }
}

/// What kind of event a `msg` is (v1.1); absent for an ordinary message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgKind {
    Edit,
    Delete,
    Reaction,
}

/// A stored message or event: the `msg` frame's fields. Every v1.1 field is
/// optional and omitted when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub from: String,
    pub body: String,
    pub cid: String,
    pub ts: u64,
    /// v1.1: an edit, a deletion or a reaction (of `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MsgKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// v1.1: the seq of the ordinary message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// v1.1, in history and replays: when the body was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    /// v1.1, in history and replays: the message was deleted (its body is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// v1.1, in history and replays: the users reacting, by emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<BTreeMap<String, Vec<String>>>,
}

impl Msg {
    /// An ordinary message (not an edit, deletion or reaction).
    pub fn is_ordinary(&self) -> bool {
        self.kind.is_none()
    }
}

/// One of a user's conversations (v1.1), as `conversations` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub room: String,
    /// `"room"` or `"dm"`.
    pub kind: String,
    /// For a DM: the other user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub last_seq: u64,
    pub last_ts: u64,
    /// The newest message, a whole `msg` frame (with `t`), or null.
    #[serde(with = "tagged_msg_opt")]
    pub last: Option<Msg>,
    pub read_seq: u64,
    pub unread: u64,
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
        /// v1.1: what this server speaks beyond v1 ([`FEATURES`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
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
        /// For `join` (retention): the oldest seq the room still stores, 0
        /// when it stores none (docs/protocol.md, "Retention").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
        /// For `join` with `since`: present (`true`) when messages after
        /// `since` were removed by retention, so the replay starts at `first_seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        truncated: Option<bool>,
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
    /// v1.1: the user's read marker of a conversation moved (sent to the
    /// user's other sessions).
    Read {
        room: String,
        seq: u64,
    },
    /// v1.1: a page of conversations (the answer to `conversations`).
    Conversations {
        #[serde(rename = "ref")]
        req: u64,
        items: Vec<Conversation>,
        more: bool,
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
            ServerFrame::Read { .. } => "read",
            ServerFrame::Conversations { .. } => "conversations",
        }
    }

    pub fn error(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { req, code, message: message.into() }
    }

    /// A plain `ok` (for `auth`, `leave`).
    pub fn ok(req: u64) -> Self {
        ServerFrame::Ok {
            req,
            room: None,
            seq: None,
            members: None,
            more: None,
            members_total: None,
            first_seq: None,
            truncated: None,
        }
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

    pub(super) fn serialize_one<S: Serializer>(msg: &Msg, s: S) -> Result<S::Ok, S::Error> {
        TaggedRef::Msg(msg).serialize(s)
    }

    pub(super) fn deserialize_one<'de, D: Deserializer<'de>>(d: D) -> Result<Msg, D::Error> {
        let Tagged::Msg(m) = Tagged::deserialize(d)?;
        Ok(m)
    }
}

/// `last` of a conversation: a whole `msg` frame (with `t`), or null.
mod tagged_msg_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{tagged_msgs, Msg};

    pub fn serialize<S: Serializer>(msg: &Option<Msg>, s: S) -> Result<S::Ok, S::Error> {
        match msg {
            Some(m) => tagged_msgs::serialize_one(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Msg>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(deserialize_with = "tagged_msgs::deserialize_one")] Msg);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(m)| m))
    }
}
