//! A session: one authenticated connection's state, and the handling of
//! every frame it sends after `welcome`.
//!
//! The session is owned by its connection's task (the gateway's WebSocket
//! loop) and touched by nothing else: replies and deliveries reach the
//! client only through its [`SessionHandle`]'s outbox. It is a plain
//! struct with an actor's semantics, observed by the [`SessionSupervisor`]
//! (`supervisor.rs` says why it is not a ractor actor of its own); a panic
//! while handling a frame ends only this connection, and `Drop` leaves its
//! rooms and the directory and reports the exit whatever happened.

mod rate;
mod supervisor;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use viche_protocol::limits::{Rate, RATE_LIMITED_CLOSE_COUNT, RATE_LIMITED_WINDOW_MS};
use viche_protocol::validate;
use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::{ClientFrame, Close, ErrorCode, ServerFrame};

use rate::ms_since;
pub use rate::TokenBucket;
pub(crate) use supervisor::{SessionEvent, SessionSupervisor};

use crate::delivery::{SessionHandle, UserShare};
use crate::history;
use crate::metrics::{RATE_LIMITED, WRITER_REJECTED};
use crate::refusal::Refusal;
use crate::room::{check_access, RoomHandle};
use crate::services::Services;
use crate::store::{Added, Event, NewMessage};
use crate::writer::{AckTo, UserWrite, WriteRequest};

/// What the connection should do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close(Close),
}

pub struct Session {
    services: Arc<Services>,
    handle: Arc<SessionHandle>,
    /// What this user's sessions hold together (room memberships, writes).
    share: Arc<UserShare>,
    token_exp_ms: u64,
    joined: HashMap<Arc<str>, Arc<RoomHandle>>,
    /// The last DM room used, so a conversation does not ask the
    /// supervisor for its room on every message.
    last_dm: Option<Arc<RoomHandle>>,
    started: Instant,
    send_bucket: TokenBucket,
    typing_bucket: TokenBucket,
    join_bucket: TokenBucket,
    history_bucket: TokenBucket,
    /// `join`s with `since`: each may replay up to 1000 messages.
    replay_bucket: TokenBucket,
    read_bucket: TokenBucket,
    /// When each recent `rate_limited` answer was given (ms since `started`);
    /// never more than RATE_LIMITED_CLOSE_COUNT + 1 entries.
    rate_limited_at_ms: VecDeque<u32>,
}

type Reply = Result<(), Refusal>;

fn refuse(code: ErrorCode, message: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
    Err(Refusal::new(code, message))
}

impl Session {
    pub(crate) fn new(
        services: Arc<Services>,
        handle: Arc<SessionHandle>,
        share: Arc<UserShare>,
        token_exp_ms: u64,
    ) -> Self {
        let config = &services.config;
        Self {
            send_bucket: TokenBucket::full(config.send_rate),
            typing_bucket: TokenBucket::full(config.typing_rate),
            join_bucket: TokenBucket::full(config.join_rate),
            history_bucket: TokenBucket::full(config.history_rate),
            replay_bucket: TokenBucket::full(config.replay_rate),
            read_bucket: TokenBucket::full(config.read_rate),
            services,
            handle,
            share,
            token_exp_ms,
            joined: HashMap::new(),
            last_dm: None,
            started: Instant::now(),
            rate_limited_at_ms: VecDeque::new(),
        }
    }

    /// Where this session's frames go (its outbox), as rooms see it.
    pub fn session_handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    /// When the current token expires, in ms since the epoch.
    pub fn token_exp_ms(&self) -> u64 {
        self.token_exp_ms
    }

    pub async fn handle(&mut self, frame: ClientFrame) -> Flow {
        let req = frame.req();
        crate::metrics::hot().frame_in(&frame);
        #[cfg(feature = "failpoints")]
        if crate::faults::eval_sync("session.handle").is_some() {
            return self.fail(req, Refusal::internal("failpoint session.handle"));
        }
        let result = match frame {
            ClientFrame::Hello { .. } => refuse(ErrorCode::Invalid, "already authenticated"),
            ClientFrame::Auth { req, token } => self.auth(req, &token),
            ClientFrame::Join { req, room, since } => self.join(req, room, since).await,
            ClientFrame::Leave { req, room, forget } => self.leave(req, &room, forget == Some(true)).await,
            ClientFrame::Send { req, room, body, cid, reply_to } => {
                self.send(req, &room, body, cid, Event::Message { reply_to }).await
            }
            ClientFrame::Dm { req, to, body, cid, reply_to } => {
                self.dm(req, &to, body, cid, Event::Message { reply_to }).await
            }
            ClientFrame::Edit { req, room, target, body, cid } => {
                self.change(req, &room, body, cid, Event::Edit { target }).await
            }
            ClientFrame::Delete { req, room, target, cid } => {
                self.change(req, &room, String::new(), cid, Event::Delete { target }).await
            }
            ClientFrame::React { req, room, target, emoji, on, cid } => {
                if !validate::is_valid_emoji(&emoji) {
                    Err(Refusal::new(ErrorCode::Invalid, "emoji must be 1 to 32 bytes"))
                } else {
                    self.change(req, &room, String::new(), cid, Event::React { target, emoji, on }).await
                }
            }
            ClientFrame::Read { req, room, seq } => self.read(req, &room, seq).await,
            ClientFrame::Conversations { req, before, limit } => self.conversations(req, before, limit).await,
            ClientFrame::Typing { room } => self.typing(&room),
            ClientFrame::History { req, room, before, limit } => self.history(req, &room, before, limit).await,
            ClientFrame::Ping { req } => self.reply(&ServerFrame::Pong { req }),
            ClientFrame::Members { req, room, after } => self.members(req, &room, after),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(refusal) => self.fail(req, refusal),
        }
    }

    /// Answers a request with an `error` frame; counts `rate_limited` toward
    /// the 4029 close.
    pub fn fail(&mut self, req: Option<u64>, refusal: Refusal) -> Flow {
        let code = refusal.code;
        let _ = self.handle.send(&ServerFrame::Error { req, code, message: refusal.message.into_owned() });
        if code != ErrorCode::RateLimited {
            return Flow::Continue;
        }
        let now_ms = ms_since(self.started);
        while self.rate_limited_at_ms.front().is_some_and(|&t| now_ms.wrapping_sub(t) as u64 > RATE_LIMITED_WINDOW_MS) {
            self.rate_limited_at_ms.pop_front();
        }
        self.rate_limited_at_ms.push_back(now_ms);
        if self.rate_limited_at_ms.len() > RATE_LIMITED_CLOSE_COUNT as usize {
            return Flow::Close(Close::RATE_LIMITED);
        }
        Flow::Continue
    }

    fn reply(&self, frame: &ServerFrame) -> Reply {
        let _ = self.handle.send(frame);
        Ok(())
    }

    fn take(bucket: &mut TokenBucket, rate: Rate, started: Instant, what: &'static str) -> Reply {
        if bucket.try_take(rate, ms_since(started)) {
            Ok(())
        } else {
            RATE_LIMITED.counter_with(what).increment(1);
            refuse(ErrorCode::RateLimited, format!("too many {what} requests; slow down"))
        }
    }

    fn auth(&mut self, req: u64, token: &str) -> Reply {
        let verified = self.services.accounts.authenticate(token)?;
        if *verified.user != *self.handle.user {
            return refuse(ErrorCode::Forbidden, "token is for another user");
        }
        self.token_exp_ms = verified.exp_ms;
        self.reply(&ServerFrame::ok(req))
    }

    async fn join(&mut self, req: u64, room: String, since: Option<u64>) -> Reply {
        let config = &self.services.config;
        Self::take(&mut self.join_bucket, config.join_rate, self.started, "join")?;
        check_access(&self.handle.user, &room)?;
        if since.is_some() {
            Self::take(&mut self.replay_bucket, config.replay_rate, self.started, "replay")?;
        }
        self.add_conversation(&room).await?;
        // Retention: where the room's stored messages begin (ok.first_seq).
        let horizon = match self.services.store.horizon(&room).await {
            Ok(horizon) => horizon,
            Err(e) => {
                tracing::warn!(error = %e, room, "reading a room's horizon failed");
                return refuse(ErrorCode::Overloaded, "the room cannot be read right now; retry");
            }
        };
        let config = &self.services.config;
        let stale = match self.joined.get(room.as_str()) {
            Some(handle) if handle.join(self.handle.clone(), req, since, horizon).is_ok() => return Ok(()),
            // The room stopped meanwhile: a fresh one takes its place.
            Some(_) => true,
            None if self.joined.len() >= config.session_rooms_max => {
                let max = config.session_rooms_max;
                return refuse(ErrorCode::Invalid, format!("a session may join at most {max} rooms"));
            }
            None if !UserShare::try_take(&self.share.room_memberships, config.user_rooms_max) => {
                let max = config.user_rooms_max;
                return refuse(
                    ErrorCode::Invalid,
                    format!("a user may be in at most {max} rooms, over all its sessions"),
                );
            }
            None => false,
        };
        // A handle can close between the supervisor's answer and our join
        // (the room went idle); then a second fetch gets a fresh room.
        for _ in 0..2 {
            let handle = match self.services.rooms.get(&room).await {
                Ok(handle) => handle,
                Err(refusal) => {
                    self.forget_membership(stale, &room);
                    return Err(refusal);
                }
            };
            if handle.join(self.handle.clone(), req, since, horizon).is_ok() {
                self.joined.insert(handle.name.clone(), handle);
                return Ok(());
            }
        }
        self.forget_membership(stale, &room);
        refuse(ErrorCode::Overloaded, "room is restarting; retry")
    }

    /// v1.1: a public room joined is one of the user's conversations
    /// (durably, before the join is answered).
    async fn add_conversation(&self, room: &str) -> Reply {
        if !matches!(parse_room(room), Some(RoomKind::Public)) {
            return Ok(());
        }
        let max = self.services.config.user_public_conversations_max;
        match self.services.store.add_conversation(&self.handle.user, room, max).await {
            Ok(Added::Kept) => Ok(()),
            Ok(Added::Full) => refuse(
                ErrorCode::Invalid,
                format!("a user may keep at most {max} public rooms; leave one with forget first"),
            ),
            Err(e) => {
                tracing::warn!(error = %e, room, "adding a conversation failed");
                refuse(ErrorCode::Internal, "the room could not be added to your conversations; retry")
            }
        }
    }

    /// A join that did not happen gives its membership back: a new one's
    /// reserved unit, or a stale one's entry.
    fn forget_membership(&mut self, stale: bool, room: &str) {
        if stale {
            self.joined.remove(room);
        }
        UserShare::give_back(&self.share.room_memberships);
    }

    /// Unsubscribes this session; with `forget` (v1.1) also removes the
    /// room from the user's conversations, joined here or not.
    async fn leave(&mut self, req: u64, room: &str, forget: bool) -> Reply {
        Self::take(&mut self.join_bucket, self.services.config.join_rate, self.started, "join")?;
        check_access(&self.handle.user, room)?;
        let forgot = forget
            && match self.services.store.forget_conversation(&self.handle.user, room).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, room, "forgetting a conversation failed");
                    return refuse(ErrorCode::Internal, "the conversation could not be removed; retry");
                }
            };
        match self.joined.remove(room) {
            Some(handle) => {
                UserShare::give_back(&self.share.room_memberships);
                handle.leave(self.handle.id, Some((self.handle.clone(), req)));
                Ok(())
            }
            None if forgot => self.reply(&ServerFrame::ok(req)),
            None => refuse(ErrorCode::NotJoined, format!("not joined to {room:?}")),
        }
    }

    fn check_message(&self, body: &str, cid: &str) -> Reply {
        let body_bytes_max = self.services.config.body_bytes_max;
        if let Err(code) = validate::check_body(body, body_bytes_max) {
            return refuse(code, format!("body must be 1 to {body_bytes_max} bytes"));
        }
        if !validate::is_valid_cid(cid) {
            return refuse(ErrorCode::Invalid, "cid must be 1 to 64 bytes");
        }
        Ok(())
    }

    async fn send(&mut self, req: u64, room: &str, body: String, cid: String, event: Event) -> Reply {
        let received_at = Instant::now();
        Self::take(&mut self.send_bucket, self.services.config.send_rate, self.started, "send")?;
        self.check_message(&body, &cid)?;
        check_access(&self.handle.user, room)?;
        let Some(handle) = self.joined.get(room).cloned() else {
            return refuse(ErrorCode::NotJoined, format!("join {room:?} before sending to it"));
        };
        self.submit(handle, body, cid, event, req, received_at).await
    }

    /// v1.1: an edit, deletion or reaction; like a `send` (rate, ack, cid),
    /// to a room the session joined, or to a DM room of the user.
    async fn change(&mut self, req: u64, room: &str, body: String, cid: String, event: Event) -> Reply {
        let received_at = Instant::now();
        Self::take(&mut self.send_bucket, self.services.config.send_rate, self.started, "send")?;
        if matches!(event, Event::Edit { .. }) {
            self.check_message(&body, &cid)?;
        } else if !validate::is_valid_cid(&cid) {
            return refuse(ErrorCode::Invalid, "cid must be 1 to 64 bytes");
        }
        let handle = match check_access(&self.handle.user, room)? {
            RoomKind::Dm(..) => self.dm_room(room).await?,
            RoomKind::Public => match self.joined.get(room) {
                Some(handle) => handle.clone(),
                None => return refuse(ErrorCode::NotJoined, format!("join {room:?} before changing its messages")),
            },
        };
        self.submit(handle, body, cid, event, req, received_at).await
    }

    /// The handle of a DM room, kept for the next message of the conversation.
    async fn dm_room(&mut self, room: &str) -> Result<Arc<RoomHandle>, Refusal> {
        Ok(match &self.last_dm {
            Some(h) if *h.name == *room && !h.is_closed() => h.clone(),
            _ => {
                let h = self.services.rooms.get(room).await?;
                self.last_dm = Some(h.clone());
                h
            }
        })
    }

    async fn dm(&mut self, req: u64, to: &str, body: String, cid: String, event: Event) -> Reply {
        let received_at = Instant::now();
        Self::take(&mut self.send_bucket, self.services.config.send_rate, self.started, "send")?;
        self.check_message(&body, &cid)?;
        if !validate::is_valid_username(to) {
            return refuse(ErrorCode::Invalid, "`to` is not a valid username");
        }
        let Some(room) = validate::dm_room(&self.handle.user, to) else {
            return refuse(ErrorCode::Invalid, "cannot send a DM to yourself");
        };
        let handle = self.dm_room(&room).await?;
        self.submit(handle, body, cid, event, req, received_at).await
    }

    /// Hands a message to the writer, or, in a cluster, to the room's
    /// owner when that is another node (`cluster/forward.rs`).
    async fn submit(
        &self,
        room: Arc<RoomHandle>,
        body: String,
        cid: String,
        event: Event,
        req: u64,
        received_at: Instant,
    ) -> Reply {
        let Ok(in_flight) = room.begin() else {
            return refuse(ErrorCode::Overloaded, "room is restarting; retry");
        };
        // This user's share of the writer's queue, which every user fills.
        let Some(user_write) = UserWrite::take(&self.share, self.services.config.writer_queue_user_max) else {
            WRITER_REJECTED.counter().increment(1);
            return refuse(ErrorCode::Overloaded, "too many of your messages are waiting to be stored; retry later");
        };
        let mut message = NewMessage {
            room: room.name.clone(),
            from: self.handle.user.clone(),
            cid,
            body,
            ts_ms: 0,
            event,
            fence: None,
        };
        if let Some(cluster) = &self.services.cluster {
            let owner = cluster.owners.owner(&room.name);
            if owner != *cluster.node_id() {
                drop(in_flight);
                return cluster.forwarder.forward(&owner, &self.handle, req, message, user_write).await;
            }
            message.fence = Some(cluster.owners.fence());
        }
        let request = WriteRequest {
            message,
            in_flight,
            _user_write: Some(user_write),
            ack_to: AckTo::Session(self.handle.clone()),
            req,
            received_at,
        };
        // A refused request is dropped here, and its InFlight guard with it.
        self.services.writer.submit(request).or_else(|code| refuse(code, "the server is saturated; retry later"))
    }

    fn typing(&mut self, room: &str) -> Reply {
        Self::take(&mut self.typing_bucket, self.services.config.typing_rate, self.started, "typing")?;
        check_access(&self.handle.user, room)?;
        match self.joined.get(room) {
            Some(handle) => {
                handle.typing(self.handle.clone());
                Ok(())
            }
            None => refuse(ErrorCode::NotJoined, format!("not joined to {room:?}")),
        }
    }

    fn members(&mut self, req: u64, room: &str, after: Option<String>) -> Reply {
        Self::take(&mut self.history_bucket, self.services.config.history_rate, self.started, "history")?;
        check_access(&self.handle.user, room)?;
        match self.joined.get(room) {
            Some(handle) if handle.members(self.handle.clone(), req, after) => Ok(()),
            Some(_) => refuse(ErrorCode::Overloaded, "room is restarting; retry"),
            None => refuse(ErrorCode::NotJoined, format!("join {room:?} to list its members")),
        }
    }

    /// v1.1: moves the user's read marker; the user's other sessions are
    /// told when it moved.
    async fn read(&mut self, req: u64, room: &str, seq: u64) -> Reply {
        Self::take(&mut self.read_bucket, self.services.config.read_rate, self.started, "read")?;
        check_access(&self.handle.user, room)?;
        let marker = match self.services.store.mark_read(&self.handle.user, room, seq).await {
            Ok(Some(marker)) => marker,
            Ok(None) => return refuse(ErrorCode::NotJoined, format!("{room:?} is not one of your conversations")),
            Err(e) => {
                tracing::warn!(error = %e, room, "moving a read marker failed");
                return refuse(ErrorCode::Internal, "the read marker could not be stored; retry");
            }
        };
        self.reply(&ServerFrame::ok(req))?;
        if marker.moved {
            let pushed = ServerFrame::Read { room: room.to_owned(), seq: marker.read_seq };
            let mut sessions = Vec::new();
            self.services.directory.sessions_of(&self.handle.user, &mut sessions);
            for session in sessions {
                if session.id != self.handle.id {
                    let _ = session.send(&pushed);
                }
            }
        }
        Ok(())
    }

    async fn conversations(&mut self, req: u64, before: Option<u64>, limit: Option<u64>) -> Reply {
        Self::take(&mut self.history_bucket, self.services.config.history_rate, self.started, "history")?;
        let page = history::conversations(self.services.store.as_ref(), &self.handle.user, before, limit).await?;
        self.reply(&ServerFrame::Conversations { req, items: page.items, more: page.more })
    }

    async fn history(&mut self, req: u64, room: &str, before: Option<u64>, limit: Option<u64>) -> Reply {
        Self::take(&mut self.history_bucket, self.services.config.history_rate, self.started, "history")?;
        let page = history::page(self.services.store.as_ref(), &self.handle.user, room, before, limit).await?;
        self.reply(&ServerFrame::History { req, room: room.to_string(), messages: page.messages, more: page.more })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for room in self.joined.values() {
            room.leave(self.handle.id, None);
            UserShare::give_back(&self.share.room_memberships);
        }
        self.services.directory.unregister(&self.handle.user, self.handle.id);
        let exited = SessionEvent::Exited {
            user: self.handle.user.clone(),
            session: self.handle.id,
            panicked: std::thread::panicking(),
        };
        let _ = self.services.sessions.send_message(exited);
    }
}
