//! One WebSocket connection: the `hello` handshake, then a single task that
//! reads frames into the session and writes the session's outbox out.
//!
//! One task per connection (not a reader and a writer task) keeps an idle
//! session small. fastwebsockets' `read_frame` is not cancel-safe, so the
//! read future is kept alive across loop turns instead of being recreated
//! by `select!`. Outgoing frames are framed by hand into one buffer per
//! drain and written with one `write_all`: as few syscalls as the queue
//! allows, and no write buffer held while idle.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use viche_engine::auth::now_ms;
use viche_engine::outbox::{CloseRequest, OutItem, Outbox};
use viche_engine::peer::Peer;
use viche_engine::{Engine, Flow, Session};
use viche_protocol::limits::HISTORY_LIMIT_MAX;
use viche_protocol::{close_code, decode_client, encode_server, ClientFrame, Encoding, ErrorCode, ServerFrame, PROTOCOL_VERSION};

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Io>>;
type Writer = WriteHalf<Io>;

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
    reader: Reader,
    /// Fragments of a message not yet finished; bounded by `max_frame_bytes`.
    partial: Option<(Encoding, BytesMut)>,
    max_frame_bytes: usize,
    /// Where pongs owed for client pings go, once the session exists.
    pong_to: Option<Arc<Peer>>,
}

async fn read_message(mut st: ReadState) -> (ReadState, Result<Incoming, ReadError>) {
    // Auto-pong and auto-close are off (we answer both ourselves), so
    // fastwebsockets never has a frame for us to send here.
    let mut send_fn = |_frame: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    loop {
        let frame = match st.reader.read_frame(&mut send_fn).await {
            Ok(frame) => frame,
            Err(WebSocketError::FrameTooLarge) => return (st, Err(ReadError::TooLarge)),
            Err(WebSocketError::UnexpectedEOF) | Err(WebSocketError::IoError(_)) | Err(WebSocketError::ConnectionClosed) => {
                return (st, Err(ReadError::Gone))
            }
            Err(_) => return (st, Err(ReadError::Protocol)),
        };
        let encoding = match frame.opcode {
            OpCode::Text => Encoding::Json,
            OpCode::Binary => Encoding::MsgPack,
            OpCode::Close => return (st, Ok(Incoming::Close)),
            OpCode::Pong => return (st, Ok(Incoming::Control)),
            OpCode::Ping => {
                if let Some(peer) = &st.pong_to {
                    peer.outbox.push_unbounded(OutItem::Pong(Bytes::copy_from_slice(&frame.payload)));
                }
                return (st, Ok(Incoming::Control));
            }
            OpCode::Continuation => match st.partial.as_mut() {
                None => return (st, Err(ReadError::Protocol)),
                Some((enc, buf)) => {
                    if buf.len() + frame.payload.len() > st.max_frame_bytes {
                        return (st, Err(ReadError::TooLarge));
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let (enc, buf) = (*enc, std::mem::take(buf));
                        st.partial = None;
                        return (st, Ok(Incoming::Data(enc, buf.freeze())));
                    }
                    continue;
                }
            },
        };
        if st.partial.is_some() {
            return (st, Err(ReadError::Protocol));
        }
        let payload = match frame.payload {
            Payload::Bytes(b) => b,
            other => BytesMut::from(&other[..]),
        };
        if frame.fin {
            return (st, Ok(Incoming::Data(encoding, payload.freeze())));
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

fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::MsgPack => OpCode::Binary,
        Encoding::Json => OpCode::Text,
    }
}

/// Serves one upgraded connection until it closes.
pub async fn serve(engine: Arc<Engine>, io: Io) {
    metrics::gauge!("viche_connections_open").increment(1.0);
    let (r, mut writer) = tokio::io::split(io);
    let (mut reader, _) = fastwebsockets::after_handshake_split(r, tokio::io::sink(), Role::Server);
    // A frame of exactly max_frame bytes is allowed; fastwebsockets refuses
    // payloads >= its max.
    reader.set_max_message_size(engine.config.max_frame_bytes + 1);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    let st = ReadState { reader, partial: None, max_frame_bytes: engine.config.max_frame_bytes, pong_to: None };

    let Some((session, st)) = handshake(&engine, st, &mut writer).await else {
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
        Ok(_) | Err(ReadError::Gone) => return None,
        Err(ReadError::TooLarge) => {
            write_close(writer, close_code::MESSAGE_TOO_BIG, "frame larger than max_frame").await;
            return None;
        }
        Err(ReadError::Protocol) => {
            write_close(writer, close_code::PROTOCOL_ERROR, "websocket protocol error").await;
            return None;
        }
    };
    let reject = |code: ErrorCode, message: &str| encode_server(&ServerFrame::error(None, code, message), encoding);
    let hello = decode_client(&bytes, encoding);
    let (v, token) = match hello {
        Ok(ClientFrame::Hello { v, token }) => (v, token),
        _ => {
            metrics::counter!("viche_auth_failures_total", "reason" => "no_hello").increment(1);
            write_data_then_close(writer, encoding, &reject(ErrorCode::Unauthorized, "the first frame must be hello"), close_code::UNAUTHORIZED).await;
            return None;
        }
    };
    if v != PROTOCOL_VERSION {
        write_data_then_close(writer, encoding, &reject(ErrorCode::Invalid, "unsupported protocol version; this server speaks v=1"), close_code::PROTOCOL_ERROR).await;
        return None;
    }
    let Some(verified) = engine.jwt.verify(&token) else {
        metrics::counter!("viche_auth_failures_total", "reason" => "bad_token").increment(1);
        write_data_then_close(writer, encoding, &reject(ErrorCode::Unauthorized, "invalid or expired token"), close_code::UNAUTHORIZED).await;
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
                match flush_outbox(&engine, &peer.outbox, peer.encoding, &mut writer).await {
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
                        metrics::counter!("viche_frames_in_bytes_total").increment(bytes.len() as u64);
                        let flow = match decode_client(&bytes, encoding) {
                            Ok(frame) => session.handle(frame).await,
                            Err(e) => {
                                metrics::counter!("viche_frames_in_total", "type" => "bad_frame").increment(1);
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
        None => metrics::counter!("viche_connections_closed_total", "code" => "none").increment(1),
    }
}

async fn finish(writer: &mut Writer, close: Option<(u16, &'static str)>) {
    if let Some((code, reason)) = close {
        write_close(writer, code, reason).await;
    }
}

/// Writes everything queued in the outbox. `Err` means: stop the session,
/// closing with the given code (or silently when the socket is gone).
async fn flush_outbox(engine: &Engine, outbox: &Outbox, encoding: Encoding, writer: &mut Writer) -> Result<(), Option<(u16, &'static str)>> {
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
        let mut frames_out = 0u64;
        for item in items.drain(..) {
            match item {
                OutItem::Frame(bytes) => {
                    append_frame(&mut buf, data_opcode(encoding), &bytes);
                    frames_out += 1;
                }
                OutItem::Pong(payload) => append_frame(&mut buf, OpCode::Pong, &payload),
                OutItem::Replay { room, after, upto } => {
                    write_buf(writer, &mut buf).await?;
                    replay(engine, &room, after, upto, encoding, writer).await?;
                }
            }
        }
        metrics::counter!("viche_frames_out_total").increment(frames_out);
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
    buf.clear();
    result.map_err(|_| None)
}

/// Writes stored messages `after < seq <= upto` oldest first, a page at a
/// time, at the pace the socket takes them (not through the outbox, so a
/// replay never counts toward the slow-consumer limit).
async fn replay(engine: &Engine, room: &str, mut after: u64, upto: u64, encoding: Encoding, writer: &mut Writer) -> Result<(), Option<(u16, &'static str)>> {
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
        for msg in page {
            append_frame(&mut buf, data_opcode(encoding), &encode_server(&ServerFrame::Msg(msg), encoding));
        }
        metrics::counter!("viche_replayed_messages_total").increment((next_after - after).min(upto - after));
        write_buf(writer, &mut buf).await?;
        after = next_after;
    }
    Ok(())
}
