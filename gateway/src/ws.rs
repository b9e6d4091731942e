//! One WebSocket connection: the `hello` handshake, then a single task that
//! reads frames into the session and writes the session's outbox out.
//!
//! One task per connection (not a reader and a writer task) keeps an idle
//! session small, and so does dropping fastwebsockets' reader (and its
//! 8 KiB buffer) whenever it holds no unread bytes: an idle session waits
//! on socket readiness alone. `read_frame` is not cancel-safe, so the read
//! future is kept alive across loop turns instead of being recreated by
//! `select!`. Outgoing frames are framed by hand into one buffer per drain
//! and written with one `write_all`: as few syscalls as the queue allows,
//! and no write buffer held while idle.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use viche_engine::auth::now_ms;
use viche_engine::outbox::{CloseRequest, OutItem, Outbox};
use viche_engine::peer::Peer;
use viche_engine::{Engine, Flow, Session};
use viche_protocol::limits::HISTORY_LIMIT_MAX;
use viche_protocol::{
    close_code, decode_client, encode_server, ClientFrame, Encoding, ErrorCode, ServerFrame, PROTOCOL_VERSION,
};

use crate::socket::{SocketReader, SocketWriter};

type Reader = WebSocketRead<SocketReader>;
type Writer = SocketWriter;

/// A whole message as read (fragments joined), with the encoding its
/// opcode implies.
enum Incoming {
    Data(Encoding, Bytes),
    /// A pong, or a ping we queued the pong for: proof of life.
    Control,
    Close,
}

/// Why reading failed, mapped to how we close.
enum ReadError {
    TooLarge,
    Protocol,
    Gone,
}

struct ReadState {
    stream: Arc<TcpStream>,
    /// Bytes read but not yet given to a reader: what hyper read past the
    /// upgrade request, or the first bytes after an idle wait.
    prefix: Option<Bytes>,
    /// Bytes the socket has delivered to readers, and bytes of the frames
    /// they returned: equal means the reader's buffer is empty.
    delivered: Arc<AtomicU64>,
    consumed: u64,
    /// Present only while bytes may be buffered in it.
    reader: Option<Reader>,
    /// Fragments of a message not yet finished; bounded by `max_frame_bytes`.
    partial: Option<(Encoding, BytesMut)>,
    max_frame_bytes: usize,
    /// Where pongs owed for client pings go, once the session exists.
    pong_to: Option<Arc<Peer>>,
}

impl ReadState {
    fn reader(&mut self) -> &mut Reader {
        let (stream, prefix, delivered, max) = (&self.stream, &mut self.prefix, &self.delivered, self.max_frame_bytes);
        self.reader.get_or_insert_with(|| {
            let socket = SocketReader::new(stream.clone(), prefix.take().unwrap_or_default(), delivered.clone());
            let (mut reader, _) = fastwebsockets::after_handshake_split(socket, tokio::io::sink(), Role::Server);
            // A frame of exactly max_frame bytes is allowed; fastwebsockets
            // refuses payloads >= its max.
            reader.set_max_message_size(max + 1);
            // We answer pings and closes ourselves, through the outbox.
            reader.set_auto_close(false);
            reader.set_auto_pong(false);
            reader
        })
    }

    /// Drops the reader if nothing is left in its buffer. The count of a
    /// frame's bytes assumes minimal length encoding; a client that encodes
    /// lengths otherwise only makes the counts differ, which keeps its
    /// reader: safe, just not lean.
    fn release_if_drained(&mut self) {
        if self.partial.is_none() && self.delivered.load(Ordering::Relaxed) == self.consumed {
            self.reader = None;
        }
    }
}

async fn read_message(mut st: ReadState) -> (ReadState, Result<Incoming, ReadError>) {
    let result = read_message_inner(&mut st).await;
    if result.is_ok() {
        st.release_if_drained();
    }
    (st, result)
}

/// Idle: waits, holding no buffer, until the socket has bytes, and takes
/// the first few (readiness alone can be stale; only a read clears it).
async fn wait_for_bytes(st: &ReadState) -> Result<Bytes, ReadError> {
    loop {
        st.stream.readable().await.map_err(|_| ReadError::Gone)?;
        let mut first = [0u8; 64];
        match st.stream.try_read(&mut first) {
            Ok(0) => return Err(ReadError::Gone),
            Ok(n) => {
                st.delivered.fetch_add(n as u64, Ordering::Relaxed);
                return Ok(Bytes::copy_from_slice(&first[..n]));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(ReadError::Gone),
        }
    }
}

async fn read_message_inner(st: &mut ReadState) -> Result<Incoming, ReadError> {
    // Auto-pong and auto-close are off, so fastwebsockets never has a frame
    // for us to send here.
    let mut send_fn = |_frame: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    loop {
        if st.reader.is_none() && st.prefix.is_none() {
            st.prefix = Some(wait_for_bytes(st).await?);
        }
        let (opcode, fin, payload, frame_bytes) = match st.reader().read_frame(&mut send_fn).await {
            Ok(mut frame) => {
                let mut head = [0u8; 14];
                let frame_bytes = (frame.fmt_head(&mut head) + frame.payload.len()) as u64;
                let payload = match frame.payload {
                    Payload::Bytes(b) => b,
                    other => BytesMut::from(&other[..]),
                };
                (frame.opcode, frame.fin, payload, frame_bytes)
            }
            Err(WebSocketError::FrameTooLarge) => return Err(ReadError::TooLarge),
            Err(WebSocketError::UnexpectedEOF)
            | Err(WebSocketError::IoError(_))
            | Err(WebSocketError::ConnectionClosed) => return Err(ReadError::Gone),
            Err(_) => return Err(ReadError::Protocol),
        };
        st.consumed += frame_bytes;
        let encoding = match opcode {
            OpCode::Text => Encoding::Json,
            OpCode::Binary => Encoding::MsgPack,
            OpCode::Close => return Ok(Incoming::Close),
            OpCode::Pong => return Ok(Incoming::Control),
            OpCode::Ping => {
                if let Some(peer) = &st.pong_to {
                    peer.outbox.push_unbounded(OutItem::Pong(payload.freeze()));
                }
                return Ok(Incoming::Control);
            }
            OpCode::Continuation => match st.partial.as_mut() {
                None => return Err(ReadError::Protocol),
                Some((enc, buf)) => {
                    if buf.len() + payload.len() > st.max_frame_bytes {
                        return Err(ReadError::TooLarge);
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        let (enc, buf) = (*enc, std::mem::take(buf));
                        st.partial = None;
                        return Ok(Incoming::Data(enc, buf.freeze()));
                    }
                    continue;
                }
            },
        };
        if st.partial.is_some() {
            return Err(ReadError::Protocol);
        }
        if fin {
            return Ok(Incoming::Data(encoding, payload.freeze()));
        }
        st.partial = Some((encoding, payload));
    }
}

/// Appends one unmasked server frame to `buf`.
fn append_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; 14];
    let size = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    buf.extend_from_slice(&head[..size]);
    buf.extend_from_slice(payload);
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    p
}

async fn write_close(writer: &mut Writer, code: u16, reason: &str) {
    let mut buf = Vec::new();
    append_frame(&mut buf, OpCode::Close, &close_payload(code, reason));
    let _ = writer.write_all(&buf).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    metrics::counter!("viche_connections_closed_total", "code" => code.to_string()).increment(1);
}

/// A connection that ended without a close frame from us (the peer went
/// away, or the socket failed): every accepted connection is counted in
/// `viche_connections_closed_total` exactly once, by `write_close` or here.
pub(crate) fn count_closed_without_code() {
    metrics::counter!("viche_connections_closed_total", "code" => "none").increment(1);
}

fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::MsgPack => OpCode::Binary,
        Encoding::Json => OpCode::Text,
    }
}

/// Serves one upgraded connection until it closes.
pub async fn serve(engine: Arc<Engine>, upgraded: Upgraded) {
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP stream");
            count_closed_without_code();
            return;
        }
    };
    metrics::gauge!("viche_connections_open").increment(1.0);
    let stream = Arc::new(parts.io.into_inner());
    let mut writer = SocketWriter::new(stream.clone());
    let st = ReadState {
        stream,
        delivered: Arc::new(AtomicU64::new(parts.read_buf.len() as u64)),
        // An empty `Bytes` here would still pin hyper's read buffer.
        prefix: (!parts.read_buf.is_empty()).then_some(parts.read_buf),
        consumed: 0,
        reader: None,
        partial: None,
        max_frame_bytes: engine.config.max_frame_bytes,
        pong_to: None,
    };

    // Boxed, like the other rarely-awaited futures below, so that the
    // connection task itself stays small while it idles.
    let Some((session, st)) = Box::pin(handshake(&engine, st, &mut writer)).await else {
        metrics::gauge!("viche_connections_open").decrement(1.0);
        return;
    };
    run_session(engine, session, st, writer).await;
    metrics::gauge!("viche_connections_open").decrement(1.0);
}

/// Waits for `hello` and answers `welcome`, or closes as PROTOCOL.md §2 says.
async fn handshake(engine: &Arc<Engine>, st: ReadState, writer: &mut Writer) -> Option<(Session, ReadState)> {
    let timeout = Duration::from_millis(engine.config.hello_timeout_ms);
    let (st, first) = match tokio::time::timeout(timeout, read_until_data(st)).await {
        Err(_) => {
            write_close(writer, close_code::HELLO_TIMEOUT, "no hello in time").await;
            return None;
        }
        Ok(r) => r,
    };
    let (encoding, bytes) = match first {
        Ok(Incoming::Data(e, b)) => (e, b),
        Ok(_) | Err(ReadError::Gone) => {
            count_closed_without_code();
            return None;
        }
        Err(ReadError::TooLarge) => {
            write_close(writer, close_code::MESSAGE_TOO_BIG, "frame larger than max_frame").await;
            return None;
        }
        Err(ReadError::Protocol) => {
            write_close(writer, close_code::PROTOCOL_ERROR, "websocket protocol error").await;
            return None;
        }
    };
    let reject = |code: ErrorCode, message: &str| {
        let frame = ServerFrame::error(None, code, message);
        viche_engine::metrics::hot().frames_out(&frame, 1);
        encode_server(&frame, encoding)
    };
    let hello = decode_client(&bytes, encoding);
    viche_engine::metrics::hot().frames_in_bytes.increment(bytes.len() as u64);
    match &hello {
        Ok(frame) => viche_engine::metrics::hot().frame_in(frame),
        Err(_) => viche_engine::metrics::hot().bad_frame_in(),
    }
    let (v, token) = match hello {
        Ok(ClientFrame::Hello { v, token }) => (v, token),
        _ => {
            metrics::counter!("viche_auth_failures_total", "reason" => "no_hello").increment(1);
            write_data_then_close(
                writer,
                encoding,
                &reject(ErrorCode::Unauthorized, "the first frame must be hello"),
                close_code::UNAUTHORIZED,
            )
            .await;
            return None;
        }
    };
    if v != PROTOCOL_VERSION {
        write_data_then_close(
            writer,
            encoding,
            &reject(ErrorCode::Invalid, "unsupported protocol version; this server speaks v=1"),
            close_code::PROTOCOL_ERROR,
        )
        .await;
        return None;
    }
    let Some(verified) = engine.jwt.verify(&token) else {
        metrics::counter!("viche_auth_failures_total", "reason" => "bad_token").increment(1);
        write_data_then_close(
            writer,
            encoding,
            &reject(ErrorCode::Unauthorized, "invalid or expired token"),
            close_code::UNAUTHORIZED,
        )
        .await;
        return None;
    };
    let session = engine.open_session(&verified.user, encoding, verified.exp_ms);
    let peer = session.peer().clone();
    let welcome = ServerFrame::Welcome {
        v: PROTOCOL_VERSION,
        session: peer.id.to_string(),
        user: verified.user,
        heartbeat_ms: engine.config.heartbeat_ms,
        max_frame: engine.config.max_frame_bytes as u64,
        max_body: engine.config.max_body_bytes as u64,
    };
    let _ = peer.send(&welcome);
    let st = ReadState { pong_to: Some(peer), ..st };
    Some((session, st))
}

async fn read_until_data(mut st: ReadState) -> (ReadState, Result<Incoming, ReadError>) {
    loop {
        let (next, r) = read_message(st).await;
        st = next;
        match r {
            Ok(Incoming::Control) => continue,
            other => return (st, other),
        }
    }
}

async fn write_data_then_close(writer: &mut Writer, encoding: Encoding, frame: &[u8], code: u16) {
    let mut buf = Vec::new();
    append_frame(&mut buf, data_opcode(encoding), frame);
    let _ = writer.write_all(&buf).await;
    write_close(writer, code, "").await;
}

type ReadFuture = Pin<Box<dyn std::future::Future<Output = (ReadState, Result<Incoming, ReadError>)> + Send>>;

async fn run_session(engine: Arc<Engine>, mut session: Session, st: ReadState, mut writer: Writer) {
    let peer = session.peer().clone();
    let heartbeat = Duration::from_millis(engine.config.heartbeat_ms);
    let mut ping_timer = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut read: ReadFuture = Box::pin(read_message(st));
    // Write the welcome before anything else can be read.
    if let Err(close) = flush_outbox(&engine, &peer.outbox, peer.encoding, &mut writer).await {
        finish(&mut writer, close).await;
        return;
    }
    let close: Option<(u16, &'static str)> = loop {
        let exp_in = Duration::from_millis(session.token_exp_ms().saturating_sub(now_ms()));
        tokio::select! {
            biased;
            _ = peer.outbox.notified() => {
                match Box::pin(flush_outbox(&engine, &peer.outbox, peer.encoding, &mut writer)).await {
                    Ok(()) => {}
                    Err(close) => break close,
                }
            }
            _ = tokio::time::sleep(exp_in) => {
                let _ = peer.send(&ServerFrame::error(None, ErrorCode::Unauthorized, "token expired"));
                let _ = flush_outbox(&engine, &peer.outbox, peer.encoding, &mut writer).await;
                break Some((close_code::UNAUTHORIZED, "token expired"));
            }
            _ = ping_timer.tick() => {
                if last_heard.elapsed() >= heartbeat * 2 {
                    break Some((1000, "heartbeat timeout"));
                }
                let mut buf = Vec::new();
                append_frame(&mut buf, OpCode::Ping, b"");
                if writer.write_all(&buf).await.is_err() {
                    break None;
                }
            }
            (st, result) = &mut read => {
                last_heard = Instant::now();
                match result {
                    Ok(Incoming::Data(encoding, bytes)) => {
                        viche_engine::metrics::hot().frames_in_bytes.increment(bytes.len() as u64);
                        let flow = match decode_client(&bytes, encoding) {
                            Ok(frame) => Box::pin(session.handle(frame)).await,
                            Err(e) => {
                                viche_engine::metrics::hot().bad_frame_in();
                                session.fail(e.req(), ErrorCode::BadFrame, e.to_string())
                            }
                        };
                        if let Flow::Close { code, reason } = flow {
                            // Write the error that caused it first.
                            let _ = flush_outbox(&engine, &peer.outbox, peer.encoding, &mut writer).await;
                            break Some((code, reason));
                        }
                    }
                    Ok(Incoming::Control) => {}
                    Ok(Incoming::Close) => break Some((1000, "")),
                    Err(ReadError::Gone) => break None,
                    Err(ReadError::TooLarge) => break Some((close_code::MESSAGE_TOO_BIG, "frame larger than max_frame")),
                    Err(ReadError::Protocol) => break Some((close_code::PROTOCOL_ERROR, "websocket protocol error")),
                }
                read = Box::pin(read_message(st));
            }
        }
    };
    drop(read);
    drop(session); // leaves rooms and the directory before the socket closes
    match close {
        Some((code, reason)) => write_close(&mut writer, code, reason).await,
        None => count_closed_without_code(),
    }
}

async fn finish(writer: &mut Writer, close: Option<(u16, &'static str)>) {
    match close {
        Some((code, reason)) => write_close(writer, code, reason).await,
        None => count_closed_without_code(),
    }
}

/// Writes everything queued in the outbox. `Err` means: stop the session,
/// closing with the given code (or silently when the socket is gone).
async fn flush_outbox(
    engine: &Engine,
    outbox: &Outbox,
    encoding: Encoding,
    writer: &mut Writer,
) -> Result<(), Option<(u16, &'static str)>> {
    let mut items = Vec::new();
    loop {
        items.clear();
        let close = outbox.drain(&mut items);
        if items.is_empty() {
            return match close {
                Some(CloseRequest { code, reason, .. }) => Err(Some((code, reason))),
                None => Ok(()),
            };
        }
        let mut buf = Vec::new();
        for item in items.drain(..) {
            match item {
                OutItem::Frame(bytes) => append_frame(&mut buf, data_opcode(encoding), &bytes),
                OutItem::Pong(payload) => append_frame(&mut buf, OpCode::Pong, &payload),
                OutItem::Replay { room, after, upto } => {
                    write_buf(writer, &mut buf).await?;
                    Box::pin(replay(engine, &room, after, upto, encoding, writer)).await?;
                }
            }
        }
        write_buf(writer, &mut buf).await?;
        if close.is_some() {
            // A drain-first close (shutdown): everything is written now.
            continue;
        }
    }
}

async fn write_buf(writer: &mut Writer, buf: &mut Vec<u8>) -> Result<(), Option<(u16, &'static str)>> {
    if buf.is_empty() {
        return Ok(());
    }
    let result = writer.write_all(buf).await;
    viche_engine::metrics::hot().frames_out_bytes.increment(buf.len() as u64);
    buf.clear();
    result.map_err(|_| None)
}

/// Writes stored messages `after < seq <= upto` oldest first, a page at a
/// time, at the pace the socket takes them (not through the outbox, so a
/// replay never counts toward the slow-consumer limit).
async fn replay(
    engine: &Engine,
    room: &str,
    mut after: u64,
    upto: u64,
    encoding: Encoding,
    writer: &mut Writer,
) -> Result<(), Option<(u16, &'static str)>> {
    while after < upto {
        let page = match engine.store.range(room, after, upto, HISTORY_LIMIT_MAX as usize).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, room, "replay read failed; closing so the client rejoins");
                return Err(Some((1011, "replay unavailable; rejoin with since")));
            }
        };
        let Some(last) = page.last() else { break };
        let next_after = last.seq;
        let mut buf = Vec::new();
        viche_engine::metrics::hot().msgs_out(page.len());
        for msg in page {
            append_frame(&mut buf, data_opcode(encoding), &encode_server(&ServerFrame::Msg(msg), encoding));
        }
        metrics::counter!("viche_replayed_messages_total").increment((next_after - after).min(upto - after));
        write_buf(writer, &mut buf).await?;
        after = next_after;
    }
    Ok(())
}
