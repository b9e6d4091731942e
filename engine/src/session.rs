//! A session: one authenticated connection's state and the handling of
//! every frame it sends after `welcome`.
//!
//! The session is owned by its connection's task (gateway/src/ws.rs) and
//! touched by nothing else: replies and deliveries reach the client only
//! through its `Peer`'s outbox. It is a plain struct, not a ractor actor,
//! because idle per-session memory is a design target (≤ 8 KiB) and a
//! ractor actor alone costs about that; a panic while handling a frame
//! still ends only this connection, and `Drop` leaves its rooms and the
//! directory whatever happened.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use viche_protocol::limits::{RATE_LIMITED_CLOSE_COUNT, RATE_LIMITED_WINDOW_MS};
use viche_protocol::validate::{self, parse_room, RoomKind};
use viche_protocol::{close_code, ClientFrame, ErrorCode, ServerFrame};

use crate::engine::Engine;
use crate::peer::Peer;
use crate::ratelimit::{ms_since, TokenBucket};
use crate::room::RoomHandle;
use crate::store::NewMessage;
use crate::writer::WriteRequest;

/// What the connection should do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close { code: u16, reason: &'static str },
}

pub struct Session {
    engine: Arc<Engine>,
    peer: Arc<Peer>,
    token_exp_ms: u64,
    joined: HashMap<Arc<str>, Arc<RoomHandle>>,
    /// The last DM room used, so a conversation does not ask the
    /// supervisor for its room on every message.
    last_dm: Option<Arc<RoomHandle>>,
    started: Instant,
    send_bucket: TokenBucket,
    typing_bucket: TokenBucket,
    join_bucket: TokenBucket,
    /// When each recent `rate_limited` answer was given (ms since `started`);
    /// never more than RATE_LIMITED_CLOSE_COUNT + 1 entries.
    rate_limited_at_ms: VecDeque<u32>,
}

type Reply = Result<(), (ErrorCode, String)>;

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Err((code, message.into()))
}

impl Session {
    pub(crate) fn new(engine: Arc<Engine>, peer: Arc<Peer>, token_exp_ms: u64) -> Self {
        let config = &engine.config;
        Self {
            send_bucket: TokenBucket::full(config.send_rate),
            typing_bucket: TokenBucket::full(config.typing_rate),
            join_bucket: TokenBucket::full(config.join_rate),
            engine,
            peer,
            token_exp_ms,
            joined: HashMap::new(),
            last_dm: None,
            started: Instant::now(),
            rate_limited_at_ms: VecDeque::new(),
        }
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// When the current token expires, in ms since the epoch.
    pub fn token_exp_ms(&self) -> u64 {
        self.token_exp_ms
    }

    pub async fn handle(&mut self, frame: ClientFrame) -> Flow {
        let req = frame.req();
        crate::metrics::hot().frame_in(&frame);
        let result = match frame {
            ClientFrame::Hello { .. } => err(ErrorCode::Invalid, "already authenticated"),
            ClientFrame::Auth { req, token } => self.auth(req, &token),
            ClientFrame::Join { req, room, since } => self.join(req, room, since).await,
            ClientFrame::Leave { req, room } => self.leave(req, &room),
            ClientFrame::Send { req, room, body, cid } => self.send(req, &room, body, cid),
            ClientFrame::Dm { req, to, body, cid } => self.dm(req, &to, body, cid).await,
            ClientFrame::Typing { room } => self.typing(&room),
            ClientFrame::History { req, room, before, limit } => self.history(req, &room, before, limit).await,
            ClientFrame::Ping { req } => self.reply(&ServerFrame::Pong { req }),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err((code, message)) => self.fail(req, code, message),
        }
    }

    /// Answers a request with an `error` frame; counts `rate_limited` toward
    /// the 4029 close.
    pub fn fail(&mut self, req: Option<u64>, code: ErrorCode, message: String) -> Flow {
        let _ = self.peer.send(&ServerFrame::Error { req, code, message });
        if code != ErrorCode::RateLimited {
            return Flow::Continue;
        }
        let now_ms = ms_since(self.started);
        while self.rate_limited_at_ms.front().is_some_and(|&t| now_ms.saturating_sub(t) as u64 > RATE_LIMITED_WINDOW_MS)
        {
            self.rate_limited_at_ms.pop_front();
        }
        self.rate_limited_at_ms.push_back(now_ms);
        if self.rate_limited_at_ms.len() > RATE_LIMITED_CLOSE_COUNT as usize {
            return Flow::Close { code: close_code::RATE_LIMITED, reason: "kept sending after rate_limited" };
        }
        Flow::Continue
    }

    fn reply(&self, frame: &ServerFrame) -> Reply {
        let _ = self.peer.send(frame);
        Ok(())
    }

    fn take(
        bucket: &mut TokenBucket,
        rate: viche_protocol::limits::Rate,
        started: Instant,
        what: &'static str,
    ) -> Reply {
        if bucket.try_take(rate, ms_since(started)) {
            Ok(())
        } else {
            metrics::counter!("viche_rate_limited_total", "kind" => what).increment(1);
            err(ErrorCode::RateLimited, format!("too many {what} requests; slow down"))
        }
    }

    fn auth(&mut self, req: u64, token: &str) -> Reply {
        let Some(verified) = self.engine.jwt.verify(token) else {
            metrics::counter!("viche_auth_failures_total", "reason" => "bad_token").increment(1);
            return err(ErrorCode::Unauthorized, "invalid or expired token");
        };
        if *verified.user != *self.peer.user {
            return err(ErrorCode::Forbidden, "token is for another user");
        }
        self.token_exp_ms = verified.exp_ms;
        self.reply(&ServerFrame::ok(req))
    }

    /// Checks a room id and whether this user may use it.
    fn check_room<'r>(&self, room: &'r str) -> Result<RoomKind<'r>, (ErrorCode, String)> {
        let kind = parse_room(room).ok_or_else(|| (ErrorCode::Invalid, format!("invalid room id {room:?}")))?;
        if let RoomKind::Dm(a, b) = kind {
            if *self.peer.user != *a && *self.peer.user != *b {
                return Err((ErrorCode::Forbidden, "a DM room is only for its two users".into()));
            }
        }
        Ok(kind)
    }

    async fn join(&mut self, req: u64, room: String, since: Option<u64>) -> Reply {
        Self::take(&mut self.join_bucket, self.engine.config.join_rate, self.started, "join")?;
        self.check_room(&room)?;
        if let Some(handle) = self.joined.get(room.as_str()) {
            if handle.join(self.peer.clone(), req, since).is_ok() {
                return Ok(());
            }
        } else if self.joined.len() >= self.engine.config.session_max_rooms {
            return err(
                ErrorCode::Invalid,
                format!("a session may join at most {} rooms", self.engine.config.session_max_rooms),
            );
        }
        // A handle can close between the supervisor's answer and our join
        // (the room went idle); then a second fetch gets a fresh room.
        for _ in 0..2 {
            let handle = self.engine.room(&room).await?;
            if handle.join(self.peer.clone(), req, since).is_ok() {
                self.joined.insert(handle.name.clone(), handle);
                return Ok(());
            }
        }
        err(ErrorCode::Overloaded, "room is restarting; retry")
    }

    fn leave(&mut self, req: u64, room: &str) -> Reply {
        Self::take(&mut self.join_bucket, self.engine.config.join_rate, self.started, "join")?;
        self.check_room(room)?;
        match self.joined.remove(room) {
            Some(handle) => {
                handle.leave(self.peer.id, Some((self.peer.clone(), req)));
                Ok(())
            }
            None => err(ErrorCode::NotJoined, format!("not joined to {room:?}")),
        }
    }

    fn check_message(&self, body: &str, cid: &str) -> Reply {
        if let Err(code) = validate::check_body(body, self.engine.config.max_body_bytes) {
            return err(code, format!("body must be 1 to {} bytes", self.engine.config.max_body_bytes));
        }
        if !validate::is_valid_cid(cid) {
            return err(ErrorCode::Invalid, "cid must be 1 to 64 bytes");
        }
        Ok(())
    }

    fn send(&mut self, req: u64, room: &str, body: String, cid: String) -> Reply {
        let received_at = Instant::now();
        Self::take(&mut self.send_bucket, self.engine.config.send_rate, self.started, "send")?;
        self.check_message(&body, &cid)?;
        self.check_room(room)?;
        let Some(handle) = self.joined.get(room).cloned() else {
            return err(ErrorCode::NotJoined, format!("join {room:?} before sending to it"));
        };
        self.submit(handle, body, cid, req, received_at)
    }

    async fn dm(&mut self, req: u64, to: &str, body: String, cid: String) -> Reply {
        let received_at = Instant::now();
        Self::take(&mut self.send_bucket, self.engine.config.send_rate, self.started, "send")?;
        self.check_message(&body, &cid)?;
        if !validate::is_valid_username(to) {
            return err(ErrorCode::Invalid, "`to` is not a valid username");
        }
        let Some(room) = validate::dm_room(&self.peer.user, to) else {
            return err(ErrorCode::Invalid, "cannot send a DM to yourself");
        };
        let handle = match &self.last_dm {
            Some(h) if *h.name == *room && !h.is_closed() => h.clone(),
            _ => {
                let h = self.engine.room(&room).await?;
                self.last_dm = Some(h.clone());
                h
            }
        };
        self.submit(handle, body, cid, req, received_at)
    }

    fn submit(&self, room: Arc<RoomHandle>, body: String, cid: String, req: u64, received_at: Instant) -> Reply {
        if room.begin_write().is_err() {
            return err(ErrorCode::Overloaded, "room is restarting; retry");
        }
        let request = WriteRequest {
            message: NewMessage { room: room.name.clone(), from: self.peer.user.clone(), cid, body, ts_ms: 0 },
            room: room.clone(),
            ack_to: self.peer.clone(),
            req,
            received_at,
        };
        if let Err(code) = self.engine.writer.submit(request) {
            room.end();
            return err(code, "the server is saturated; retry later");
        }
        Ok(())
    }

    fn typing(&mut self, room: &str) -> Reply {
        Self::take(&mut self.typing_bucket, self.engine.config.typing_rate, self.started, "typing")?;
        self.check_room(room)?;
        match self.joined.get(room) {
            Some(handle) => {
                handle.typing(self.peer.clone());
                Ok(())
            }
            None => err(ErrorCode::NotJoined, format!("not joined to {room:?}")),
        }
    }

    async fn history(&mut self, req: u64, room: &str, before: Option<u64>, limit: Option<u64>) -> Reply {
        self.check_room(room)?;
        let Some(limit) = validate::history_limit(limit) else {
            return err(ErrorCode::Invalid, "limit must be 1 to 100");
        };
        match self.engine.store.history(room, before, limit as usize).await {
            Ok((messages, more)) => self.reply(&ServerFrame::History { req, room: room.to_string(), messages, more }),
            Err(e) => {
                tracing::warn!(error = %e, room, "history read failed");
                err(ErrorCode::Internal, "history is unavailable right now")
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for handle in self.joined.values() {
            handle.leave(self.peer.id, None);
        }
        self.engine.directory.unregister(&self.peer.user, self.peer.id);
    }
}
