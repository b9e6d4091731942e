//! The WebSocket side of the protocol (docs/protocol.md: transport,
//! session lifecycle, frames).
//!
//! A [`Connection`] is used from one task (`&mut self`). Reading is pull
//! based: nothing is read from the socket unless a method that waits for a
//! frame is running, so a test can model a client that does not read at all
//! (and does not answer the server's pings either). While a method is
//! reading, WebSocket pings are answered automatically.
//!
//! Frames that arrive while a request helper waits for its reply are kept,
//! in arrival order, in a buffer that [`Connection::next_frame`],
//! [`Connection::recv_msg`] and [`Connection::wait_for`] consume first.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use viche_protocol::{
    decode_server, encode_client, ClientFrame, Conversation, Encoding, Msg, ServerFrame, PROTOCOL_VERSION,
};

use crate::error::{ClientError, CloseInfo};
use crate::http::HistoryPage;
use crate::Result;

/// The default bound of connecting, sending a frame, and waiting for a reply
/// (generous, for a busy 2-core machine).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `welcome` frame's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub v: u64,
    pub session: String,
    pub user: String,
    pub heartbeat_ms: u64,
    pub max_frame: u64,
    pub max_body: u64,
    /// v1.1: what the server speaks beyond v1 (empty from a v1 server).
    pub features: Vec<String>,
}

/// A page of `conversations` (v1.1), newest activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationsPage {
    pub items: Vec<Conversation>,
    pub more: bool,
}

/// The fields of the `ok` that answers a `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOk {
    pub room: String,
    /// The room's latest seq when joined (0 when it has no messages).
    pub seq: u64,
    /// Usernames with a session in the room, the caller included.
    pub members: Vec<String>,
    /// With `since`: older missed messages remain beyond the replay.
    pub more: bool,
    /// How many users are in the room: `members` lists at most 1000 of them.
    pub members_total: Option<u64>,
    /// The oldest seq the room still stores (retention removes older
    /// ones); 0 when it stores none, or from a server without retention.
    pub first_seq: u64,
    /// With `since`: messages after `since` were removed by retention, and
    /// the replay starts at `first_seq`.
    pub truncated: bool,
}

/// An `ack`: the message is stored durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub req: u64,
    pub room: String,
    pub seq: u64,
    pub cid: String,
    pub ts: u64,
}

/// What [`Connection::next_frame`] observes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The connection ended; every later call reports the same close.
    Closed(CloseInfo),
}

/// One WebSocket connection to a Viche server.
pub struct Connection {
    ws: Ws,
    /// The encoding frames are sent in.
    encoding: Encoding,
    /// Set once a `hello` went out: every server frame must then arrive in it.
    hello_encoding: Option<Encoding>,
    next_ref: u64,
    pending: VecDeque<ServerFrame>,
    closed: Option<CloseInfo>,
    timeout: Duration,
    welcome: Option<Welcome>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("encoding", &self.encoding)
            .field("welcome", &self.welcome)
            .field("pending", &self.pending.len())
            .field("closed", &self.closed)
            .finish()
    }
}

/// The `ref` of a reply frame (`ok`, `ack`, `history`, `pong`, `error`).
pub fn reply_ref(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Ok { req, .. }
        | ServerFrame::Ack { req, .. }
        | ServerFrame::History { req, .. }
        | ServerFrame::Members { req, .. }
        | ServerFrame::Conversations { req, .. }
        | ServerFrame::Pong { req } => Some(*req),
        ServerFrame::Error { req, .. } => *req,
        ServerFrame::Welcome { .. }
        | ServerFrame::Msg(_)
        | ServerFrame::Presence { .. }
        | ServerFrame::Read { .. }
        | ServerFrame::Typing { .. } => None,
    }
}

fn error_of(frame: ServerFrame) -> ClientError {
    match frame {
        ServerFrame::Error { req, code, message } => ClientError::Server { code, message, req },
        other => ClientError::UnexpectedReply(Box::new(other)),
    }
}

impl Connection {
    fn from_ws(ws: Ws, encoding: Encoding) -> Self {
        Connection {
            ws,
            encoding,
            hello_encoding: None,
            next_ref: 1,
            pending: VecDeque::new(),
            closed: None,
            timeout: DEFAULT_TIMEOUT,
            welcome: None,
        }
    }

    /// Opens the WebSocket only: no `hello` is sent. Frames are sent in
    /// `encoding` (binary MessagePack or text JSON).
    pub async fn connect(ws_url: &str, encoding: Encoding) -> Result<Self> {
        // The client accepts any size the server sends (history pages of
        // large bodies); the server's limits are what is under test.
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let connecting = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true);
        let (ws, _response) = timeout(DEFAULT_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::timeout(format!("WebSocket connect to {ws_url}"), DEFAULT_TIMEOUT))??;
        Ok(Self::from_ws(ws, encoding))
    }

    /// Like [`Connection::connect`], but with `local_addr` the socket is
    /// bound to that local address (any port) before connecting, so that
    /// a load generator can spread its connections over several source
    /// addresses (each has its own range of ephemeral ports). `None` is
    /// [`Connection::connect`].
    pub async fn connect_from(ws_url: &str, encoding: Encoding, local_addr: Option<std::net::IpAddr>) -> Result<Self> {
        let Some(local) = local_addr else {
            return Self::connect(ws_url, encoding).await;
        };
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let request = ws_url.into_client_request()?;
        let host = request.uri().host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = request.uri().port_u16().unwrap_or(80);
        let connecting = async {
            let remote = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .find(|a| a.is_ipv4() == local.is_ipv4())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::AddrNotAvailable,
                        format!("no address of {host} in the family of {local}"),
                    )
                })?;
            let socket =
                if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(std::net::SocketAddr::new(local, 0))?;
            let stream = socket.connect(remote).await?;
            stream.set_nodelay(true)?;
            tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).await
        };
        let (ws, _response) = timeout(DEFAULT_TIMEOUT, connecting).await.map_err(|_| {
            ClientError::timeout(format!("WebSocket connect to {ws_url} from {local}"), DEFAULT_TIMEOUT)
        })??;
        Ok(Self::from_ws(ws, encoding))
    }

    /// Connects, sends `hello` with `token`, and waits for `welcome`
    /// (available afterwards from [`Connection::welcome`]).
    pub async fn open(ws_url: &str, token: &str, encoding: Encoding) -> Result<Self> {
        let mut conn = Self::connect(ws_url, encoding).await?;
        conn.hello(token).await?;
        Ok(conn)
    }

    /// Sends `hello` (v = 1) and waits for `welcome`. An `error` answer
    /// becomes [`ClientError::Server`]; the close that follows it can then be
    /// read with [`Connection::next_frame`].
    pub async fn hello(&mut self, token: &str) -> Result<Welcome> {
        self.send_frame(&ClientFrame::Hello { v: PROTOCOL_VERSION, token: token.to_string() }).await?;
        let deadline = Instant::now() + self.timeout;
        match self.read_event(deadline, "welcome").await? {
            Event::Frame(ServerFrame::Welcome { v, session, user, heartbeat_ms, max_frame, max_body, features }) => {
                let welcome = Welcome { v, session, user, heartbeat_ms, max_frame, max_body, features };
                self.welcome = Some(welcome.clone());
                Ok(welcome)
            }
            Event::Frame(other) => Err(error_of(other)),
            Event::Closed(info) => Err(ClientError::Closed(info)),
        }
    }

    /// The `welcome` of this session, once `hello` succeeded.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The session's username, once `hello` succeeded.
    pub fn user(&self) -> Option<&str> {
        self.welcome.as_ref().map(|w| w.user.as_str())
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The bound of sends and of the request helpers (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How the connection ended, once it has.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.closed.as_ref()
    }

    /// Frames received but not yet consumed, oldest first.
    pub fn pending(&self) -> &VecDeque<ServerFrame> {
        &self.pending
    }

    /// Takes every buffered frame, oldest first.
    pub fn take_pending(&mut self) -> Vec<ServerFrame> {
        self.pending.drain(..).collect()
    }

    /// A fresh `ref` for a request (1, 2, 3, … per connection).
    pub fn alloc_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    // ----- sending -------------------------------------------------------

    /// Encodes and sends one frame in the connection's encoding.
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        if matches!(frame, ClientFrame::Hello { .. }) {
            self.hello_encoding = Some(self.encoding);
        }
        let message = self.message_of(frame);
        self.send_message(message).await
    }

    /// Sends several frames with a single flush (pipelining).
    pub async fn send_frames(&mut self, frames: &[ClientFrame]) -> Result<()> {
        if let Some(info) = &self.closed {
            return Err(ClientError::Closed(info.clone()));
        }
        let deadline = Instant::now() + self.timeout;
        for frame in frames {
            if matches!(frame, ClientFrame::Hello { .. }) {
                self.hello_encoding = Some(self.encoding);
            }
            let message = self.message_of(frame);
            timeout_at(deadline, self.ws.feed(message))
                .await
                .map_err(|_| ClientError::timeout("sending frames", self.timeout))??;
        }
        timeout_at(deadline, self.ws.flush())
            .await
            .map_err(|_| ClientError::timeout("flushing frames", self.timeout))??;
        Ok(())
    }

    /// Sends arbitrary bytes as one binary WebSocket message.
    pub async fn send_raw_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send_message(Message::Binary(bytes.into())).await
    }

    /// Sends an arbitrary string as one text WebSocket message.
    pub async fn send_raw_text(&mut self, text: String) -> Result<()> {
        self.send_message(Message::Text(text.into())).await
    }

    fn message_of(&self, frame: &ClientFrame) -> Message {
        let bytes = encode_client(frame, self.encoding);
        match self.encoding {
            Encoding::MsgPack => Message::Binary(bytes),
            // JSON encoding always yields UTF-8; fall back to binary if not.
            Encoding::Json => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => Message::Text(text.into()),
                Err(_) => Message::Binary(bytes),
            },
        }
    }

    async fn send_message(&mut self, message: Message) -> Result<()> {
        if let Some(info) = &self.closed {
            return Err(ClientError::Closed(info.clone()));
        }
        timeout(self.timeout, self.ws.send(message))
            .await
            .map_err(|_| ClientError::timeout("sending a frame", self.timeout))??;
        Ok(())
    }

    // ----- receiving -----------------------------------------------------

    /// The next event: a buffered frame first, else the next frame or close
    /// from the socket. A close is reported again by every later call.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Event> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Event::Frame(frame));
        }
        self.read_event(Instant::now() + timeout, "a frame").await
    }

    /// The next frame that `pred` accepts, from the buffer or the socket;
    /// frames it rejects are kept, in order, for later calls.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            if let Some(frame) = self.pending.remove(i) {
                return Ok(frame);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_event(deadline, "a matching frame").await? {
                Event::Frame(frame) if pred(&frame) => return Ok(frame),
                Event::Frame(frame) => self.pending.push_back(frame),
                Event::Closed(info) => return Err(ClientError::Closed(info)),
            }
        }
    }

    /// The next `msg` (buffered or arriving); other frames stay buffered.
    pub async fn recv_msg(&mut self, timeout: Duration) -> Result<Msg> {
        match self.wait_for(timeout, |f| matches!(f, ServerFrame::Msg(_))).await? {
            ServerFrame::Msg(msg) => Ok(msg),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// The next `n` messages, all within `timeout`.
    pub async fn recv_msgs(&mut self, n: usize, timeout: Duration) -> Result<Vec<Msg>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_msg(left).await {
                Ok(msg) => out.push(msg),
                Err(ClientError::Timeout { .. }) => {
                    return Err(ClientError::timeout(format!("{n} messages (got {})", out.len()), timeout))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads until the connection closes, returning the close and every
    /// frame seen before it (buffered ones first).
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<(CloseInfo, Vec<ServerFrame>)> {
        let mut frames = self.take_pending();
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_event(deadline, "the connection to close").await? {
                Event::Frame(frame) => frames.push(frame),
                Event::Closed(info) => return Ok((info, frames)),
            }
        }
    }

    /// Waits for the reply carrying `req` (a frame of another ref, or none,
    /// is buffered). An `error` reply becomes [`ClientError::Server`].
    pub async fn wait_reply(&mut self, req: u64, timeout: Duration) -> Result<ServerFrame> {
        let frame = self.wait_for(timeout, |f| reply_ref(f) == Some(req)).await.map_err(|e| match e {
            ClientError::Timeout { after, .. } => ClientError::timeout(format!("the reply to ref {req}"), after),
            other => other,
        })?;
        match frame {
            ServerFrame::Error { .. } => Err(error_of(frame)),
            other => Ok(other),
        }
    }

    /// Sends the request built with a fresh `ref` and waits for its reply.
    pub async fn request(&mut self, build: impl FnOnce(u64) -> ClientFrame) -> Result<ServerFrame> {
        let req = self.alloc_ref();
        self.send_frame(&build(req)).await?;
        self.wait_reply(req, self.timeout).await
    }

    /// Reads one event from the socket (not the buffer), bounded by `deadline`.
    async fn read_event(&mut self, deadline: Instant, what: &str) -> Result<Event> {
        loop {
            if let Some(info) = &self.closed {
                return Ok(Event::Closed(info.clone()));
            }
            let started = Instant::now();
            let next = match timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => return Err(ClientError::timeout(what, deadline.saturating_duration_since(started))),
            };
            let (bytes, got): (Vec<u8>, Encoding) = match next {
                Some(Ok(Message::Binary(b))) => (b.to_vec(), Encoding::MsgPack),
                Some(Ok(Message::Text(t))) => (t.as_bytes().to_vec(), Encoding::Json),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let info = match frame {
                        Some(f) => CloseInfo { code: Some(u16::from(f.code)), reason: f.reason.to_string() },
                        None => CloseInfo { code: None, reason: "close frame without a code".into() },
                    };
                    // Send our close reply (queued by tungstenite) without waiting long.
                    let _ = timeout(Duration::from_millis(500), self.ws.flush()).await;
                    self.closed = Some(info.clone());
                    return Ok(Event::Closed(info));
                }
                Some(Err(e)) => {
                    let info = CloseInfo { code: None, reason: e.to_string() };
                    self.closed = Some(info.clone());
                    return Ok(Event::Closed(info));
                }
                None => {
                    let info = CloseInfo { code: None, reason: "stream ended".into() };
                    self.closed = Some(info.clone());
                    return Ok(Event::Closed(info));
                }
            };
            if let Some(expected) = self.hello_encoding {
                if expected != got {
                    return Err(ClientError::WrongEncoding { expected, got });
                }
            }
            return match decode_server(&bytes, got) {
                Ok(frame) => Ok(Event::Frame(frame)),
                Err(e) => Err(ClientError::Decode { reason: e.to_string(), raw: bytes }),
            };
        }
    }

    // ----- request helpers -----------------------------------------------

    /// `join`, optionally with `since`; returns the `ok`'s fields. With
    /// `since`, the replayed messages follow and are read with
    /// [`Connection::recv_msg`].
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> Result<JoinOk> {
        let reply = self.request(|req| ClientFrame::Join { req, room: room.to_string(), since }).await?;
        match reply {
            ServerFrame::Ok {
                room: Some(room),
                seq: Some(seq),
                members: Some(members),
                more,
                members_total,
                first_seq,
                truncated,
                ..
            } => Ok(JoinOk {
                room,
                seq,
                members,
                more: more.unwrap_or(false),
                members_total,
                first_seq: first_seq.unwrap_or(0),
                truncated: truncated.unwrap_or(false),
            }),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// `members`: a page of a joined room's online users after `after`, in
    /// name order, and whether more remain.
    pub async fn members(&mut self, room: &str, after: Option<&str>) -> Result<(Vec<String>, bool)> {
        let after = after.map(str::to_string);
        let reply = self.request(|req| ClientFrame::Members { req, room: room.to_string(), after }).await?;
        match reply {
            ServerFrame::Members { users, more, .. } => Ok((users, more)),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// `leave`; `ok` on success.
    pub async fn leave(&mut self, room: &str) -> Result<()> {
        self.expect_ok(|req| ClientFrame::Leave { req, room: room.to_string(), forget: None }).await
    }

    /// v1.1 `leave` with `forget: true`: also removes the room from the
    /// user's conversations.
    pub async fn forget(&mut self, room: &str) -> Result<()> {
        self.expect_ok(|req| ClientFrame::Leave { req, room: room.to_string(), forget: Some(true) }).await
    }

    /// `send`; returns the `ack` (the message is stored durably).
    pub async fn send(&mut self, room: &str, body: &str, cid: &str) -> Result<Ack> {
        self.reply(room, body, cid, None).await
    }

    /// v1.1 `send` answering the message `reply_to` (when given).
    pub async fn reply(&mut self, room: &str, body: &str, cid: &str, reply_to: Option<u64>) -> Result<Ack> {
        self.expect_ack(|req| ClientFrame::Send {
            req,
            room: room.to_string(),
            body: body.to_string(),
            cid: cid.to_string(),
            reply_to,
        })
        .await
    }

    /// `dm` to user `to`; returns the `ack`.
    pub async fn dm(&mut self, to: &str, body: &str, cid: &str) -> Result<Ack> {
        self.expect_ack(|req| ClientFrame::Dm {
            req,
            to: to.to_string(),
            body: body.to_string(),
            cid: cid.to_string(),
            reply_to: None,
        })
        .await
    }

    /// v1.1 `edit` of one's own message `target`; returns the `ack`.
    pub async fn edit(&mut self, room: &str, target: u64, body: &str, cid: &str) -> Result<Ack> {
        self.expect_ack(|req| ClientFrame::Edit {
            req,
            room: room.to_string(),
            target,
            body: body.to_string(),
            cid: cid.to_string(),
        })
        .await
    }

    /// v1.1 `delete` of one's own message `target`; returns the `ack`.
    pub async fn delete(&mut self, room: &str, target: u64, cid: &str) -> Result<Ack> {
        self.expect_ack(|req| ClientFrame::Delete { req, room: room.to_string(), target, cid: cid.to_string() }).await
    }

    /// v1.1 `react`: adds (`on`) or removes this user's `emoji` on `target`.
    pub async fn react(&mut self, room: &str, target: u64, emoji: &str, on: bool, cid: &str) -> Result<Ack> {
        self.expect_ack(|req| ClientFrame::React {
            req,
            room: room.to_string(),
            target,
            emoji: emoji.to_string(),
            on,
            cid: cid.to_string(),
        })
        .await
    }

    /// v1.1 `read`: moves this user's read marker of `room`; `ok` on success.
    pub async fn read(&mut self, room: &str, seq: u64) -> Result<()> {
        self.expect_ok(|req| ClientFrame::Read { req, room: room.to_string(), seq }).await
    }

    /// v1.1 `conversations`: a page of this user's conversations.
    pub async fn conversations(&mut self, before: Option<u64>, limit: Option<u64>) -> Result<ConversationsPage> {
        match self.request(|req| ClientFrame::Conversations { req, before, limit }).await? {
            ServerFrame::Conversations { items, more, .. } => Ok(ConversationsPage { items, more }),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// `history`; returns the page (newest first).
    pub async fn history(&mut self, room: &str, before: Option<u64>, limit: Option<u64>) -> Result<HistoryPage> {
        let reply = self.request(|req| ClientFrame::History { req, room: room.to_string(), before, limit }).await?;
        match reply {
            ServerFrame::History { room: r, messages, more, .. } if r == room => Ok(HistoryPage { messages, more }),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// `ping`; waits for the `pong` with the same `ref`.
    pub async fn ping(&mut self) -> Result<()> {
        match self.request(|req| ClientFrame::Ping { req }).await? {
            ServerFrame::Pong { .. } => Ok(()),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// `auth` with a fresh token; `ok` on success.
    pub async fn auth(&mut self, token: &str) -> Result<()> {
        self.expect_ok(|req| ClientFrame::Auth { req, token: token.to_string() }).await
    }

    /// `typing` (no reply).
    pub async fn typing(&mut self, room: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Typing { room: room.to_string() }).await
    }

    async fn expect_ok(&mut self, build: impl FnOnce(u64) -> ClientFrame) -> Result<()> {
        match self.request(build).await? {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    async fn expect_ack(&mut self, build: impl FnOnce(u64) -> ClientFrame) -> Result<Ack> {
        match self.request(build).await? {
            ServerFrame::Ack { req, room, seq, cid, ts } => Ok(Ack { req, room, seq, cid, ts }),
            other => Err(ClientError::UnexpectedReply(Box::new(other))),
        }
    }

    /// Closes the connection normally (1000) and waits, within the
    /// connection's timeout, for the server's close or the end of the
    /// stream; frames arriving meanwhile are dropped.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        let sent = timeout(self.timeout, self.ws.close(Some(frame))).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.closed = Some(CloseInfo { code: None, reason: "closed by the client".into() });
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(CloseInfo { code, reason: "closed by the client".into() });
                    return Ok(());
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => {
                    self.closed = Some(CloseInfo { code: None, reason: "closed by the client".into() });
                    return Ok(());
                }
                Err(_) => {
                    self.closed = Some(CloseInfo { code: None, reason: "closed by the client".into() });
                    return Err(ClientError::timeout("the server's close reply", self.timeout));
                }
            }
        }
    }
}
