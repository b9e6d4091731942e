//! The read side of a connection: whole WebSocket messages out of the
//! socket, holding no buffer while idle.
//!
//! fastwebsockets gives each reader an 8 KiB buffer. After every message
//! we compare the bytes the socket delivered with the bytes of the frames
//! returned ([`ReadState::release_if_drained`]); when they are equal the
//! buffer is empty and the reader is dropped. Idle, the connection waits
//! on socket readiness alone, then takes the first ≤ 64 bytes with
//! `try_read` (readiness can be stale; only a read clears it) and hands
//! them, as a prefix, to a fresh reader (`socket.rs`).
//!
//! `read_frame` is not cancel-safe, so the future of [`read_message`]
//! owns the whole state and gives it back: the connection loop keeps that
//! one future alive across its turns instead of recreating it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::net::TcpStream;
use viche_engine::delivery::{OutItem, SessionHandle};
use viche_protocol::Encoding;

use super::socket::SocketReader;

type Reader = WebSocketRead<SocketReader>;

/// A whole message as read (fragments joined), with the encoding its
/// opcode implies.
pub(super) enum Incoming {
    Data(Encoding, Bytes),
    /// A pong, or a ping we queued the pong for: proof of life.
    Control,
    Close,
}

/// Why reading failed, mapped to how we close.
pub(super) enum ReadError {
    TooLarge,
    Protocol,
    Gone,
}

pub(super) struct ReadState {
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
    /// Fragments of a message not yet finished; bounded by `frame_bytes_max`.
    partial: Option<(Encoding, BytesMut)>,
    frame_bytes_max: usize,
    /// Where pongs owed for client pings go, once the session exists.
    pub pong_to: Option<Arc<SessionHandle>>,
}

impl ReadState {
    /// `read_buf`: what hyper read past the upgrade request.
    pub fn new(stream: Arc<TcpStream>, read_buf: Bytes, frame_bytes_max: usize) -> Self {
        Self {
            stream,
            delivered: Arc::new(AtomicU64::new(read_buf.len() as u64)),
            // An empty `Bytes` here would still pin hyper's read buffer.
            prefix: (!read_buf.is_empty()).then_some(read_buf),
            consumed: 0,
            reader: None,
            partial: None,
            frame_bytes_max,
            pong_to: None,
        }
    }

    fn reader(&mut self) -> &mut Reader {
        let (stream, prefix, delivered, max) = (&self.stream, &mut self.prefix, &self.delivered, self.frame_bytes_max);
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

/// Reads the next whole message; gives the state back with the result.
pub(super) async fn read_message(mut st: ReadState) -> (ReadState, Result<Incoming, ReadError>) {
    let result = read_message_inner(&mut st).await;
    if result.is_ok() {
        st.release_if_drained();
    }
    (st, result)
}

/// Like [`read_message`], skipping control frames.
pub(super) async fn read_until_data(mut st: ReadState) -> (ReadState, Result<Incoming, ReadError>) {
    loop {
        let (next, r) = read_message(st).await;
        st = next;
        match r {
            Ok(Incoming::Control) => continue,
            other => return (st, other),
        }
    }
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
                    if buf.len() + payload.len() > st.frame_bytes_max {
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
