//! The write side of a connection: the session's outbox, replays and
//! heartbeat pings, framed by hand into one buffer per drain of the outbox
//! and written as fast as the socket takes it, in as few syscalls as the
//! queue allows.
//!
//! Writing is never awaited by the connection loop (`ws/mod.rs`): it is a
//! state machine ([`WriteSide`]) that the loop polls beside reading, the
//! heartbeat and the token's expiry. So a client that stops reading (its
//! TCP window at zero) cannot stop the loop from reading, pinging,
//! expiring its token, or closing it when its outbox overflows; and a
//! socket that accepts no byte of a pending write for `--write-timeout-ms`
//! ends the session as a slow consumer.
//!
//! Idle, it holds the socket and nothing else: no buffer, no timer. Busy,
//! a boxed [`Busy`] holds the framed bytes and how many the socket took,
//! the items drained from the outbox and not yet framed, a replay in
//! progress, and the write deadline while the socket refuses bytes.
//!
//! Replays are written here too, straight from the store a page at a time,
//! at the pace the socket takes them (never through the outbox, so a
//! replay never counts toward the slow-consumer limit); what was queued
//! behind a replay marker waits for it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use viche_engine::delivery::{OutItem, Outbox};
use viche_engine::metrics::{hot, CONNECTIONS_CLOSED, REPLAYED_MESSAGES, SLOW_CONSUMERS};
use viche_engine::store::StoreError;
use viche_engine::Engine;
use viche_protocol::{encode_server, Close, Encoding, Msg, ServerFrame};

use super::socket::SocketWriter;

/// How long the last bytes of a connection (the rest of the frame being
/// written, then the close frame) may take; a socket that will not take
/// them by then is reset.
pub(super) const CLOSE_WAIT_MS: u64 = 1000;
/// A write buffer larger than this is freed once written, rather than kept
/// for the next drain of a busy connection.
const BUF_KEEP_BYTES: usize = 64 * 1024;

/// Why a session must stop: with a close frame to send, or silently when
/// the socket is gone.
pub(super) type Stop = Option<Close>;

/// Why writing stopped.
pub(super) enum WriteError {
    /// End the session, closing as it says.
    Stop(Stop),
    /// The socket took no byte for the write timeout.
    Timeout,
}

impl WriteError {
    /// The close a write error ends the session with; a write timeout is
    /// counted here, once.
    pub(super) fn into_stop(self) -> Stop {
        match self {
            WriteError::Stop(stop) => stop,
            WriteError::Timeout => {
                SLOW_CONSUMERS.counter_with("write_timeout").increment(1);
                Some(Close::WRITE_TIMEOUT)
            }
        }
    }
}

/// Appends one unmasked server frame to `buf`.
pub(super) fn append_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; 14];
    let size = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    buf.extend_from_slice(&head[..size]);
    buf.extend_from_slice(payload);
}

/// The length of the server frame at the start of `frame` (unmasked: a
/// 2-byte head, then 0, 2 or 8 bytes of extended length, then the payload).
fn frame_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4 + usize::from(u16::from_be_bytes([frame[2], frame[3]])),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&frame[2..10]);
            10 + u64::from_be_bytes(len) as usize
        }
        n => 2 + usize::from(n),
    }
}

/// Where the frame of `buf` (whole server frames) that byte `at` falls in
/// ends; `at` itself when a frame starts there.
fn frame_end(buf: &[u8], at: usize) -> usize {
    let mut end = 0;
    while end < at {
        end += frame_len(&buf[end..]);
    }
    end
}

pub(super) fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::MsgPack => OpCode::Binary,
        Encoding::Json => OpCode::Text,
    }
}

fn close_payload(close: Close) -> Vec<u8> {
    let mut p = close.code.as_u16().to_be_bytes().to_vec();
    let reason = close.reason.as_bytes();
    p.extend_from_slice(&reason[..reason.len().min(120)]);
    p
}

/// A connection that ended without a close frame from us (the peer went
/// away, or the socket failed): every accepted connection is counted in
/// `viche_connections_closed_total` exactly once, by [`WriteSide::close`]
/// or here.
pub(crate) fn count_closed_without_code() {
    CONNECTIONS_CLOSED.counter_with("none").increment(1);
}

type PageFuture = Pin<Box<dyn Future<Output = Result<Vec<Msg>, StoreError>> + Send>>;

/// Stored messages `after < seq <= upto` of `room` still to write.
struct Replay {
    room: Arc<str>,
    after: u64,
    upto: u64,
    /// The page being read from the store.
    page: Option<PageFuture>,
}

/// What a busy write side holds; dropped when it is idle again.
#[derive(Default)]
struct Busy {
    /// Framed bytes, of which the socket took `off`.
    buf: Vec<u8>,
    off: usize,
    /// Drained from the outbox, not framed yet; in reverse order (the next
    /// is last), so each is popped.
    items: Vec<OutItem>,
    replay: Option<Replay>,
    /// While the socket refuses bytes: when that becomes a write timeout.
    stall: Option<Pin<Box<Sleep>>>,
}

/// The write side of one connection.
pub(super) struct WriteSide {
    stream: Arc<TcpStream>,
    write_timeout: Duration,
    busy: Option<Box<Busy>>,
    /// A heartbeat ping to write before the next frames.
    ping_owed: bool,
}

impl WriteSide {
    pub fn new(stream: Arc<TcpStream>, write_timeout: Duration) -> Self {
        Self { stream, write_timeout, busy: None, ping_owed: false }
    }

    /// Something may be queued in the outbox: write it.
    pub fn start(&mut self) {
        if self.busy.is_none() {
            self.busy = Some(Box::default());
        }
    }

    /// A heartbeat ping, written before the next frames.
    pub fn ping(&mut self) {
        self.ping_owed = true;
        self.start();
    }

    /// Whether there is writing to do ([`WriteSide::poll_write`] makes progress).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Writes until everything owed is on the socket and the outbox is
    /// empty: `Ready(Ok(()))`, idle again. `Ready(Err(_))`: the session
    /// must end. Drains the outbox once per call: when it is found
    /// non-empty again, yields, so that the connection loop reads between
    /// drains of a busy outbox.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        engine: &Arc<Engine>,
        outbox: &Outbox,
        encoding: Encoding,
    ) -> Poll<Result<(), WriteError>> {
        let mut drained = false;
        loop {
            let Some(busy) = self.busy.as_deref_mut() else { return Poll::Ready(Ok(())) };
            // 1. Bytes framed and not yet taken by the socket.
            if busy.off < busy.buf.len() {
                match self.stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Stop(None))),
                    Poll::Pending => {
                        let timeout = self.write_timeout;
                        let stall = busy.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        return match stall.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(Err(WriteError::Timeout)),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                }
                match self.stream.try_write(&busy.buf[busy.off..]) {
                    Ok(0) => return Poll::Ready(Err(WriteError::Stop(None))),
                    Ok(n) => {
                        busy.off += n;
                        busy.stall = None;
                        hot().frames_out_bytes.increment(n as u64);
                    }
                    // Readiness was stale; polling it again registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(WriteError::Stop(None))),
                }
                continue;
            }
            if busy.buf.capacity() > BUF_KEEP_BYTES {
                busy.buf = Vec::new();
            } else {
                busy.buf.clear();
            }
            busy.off = 0;
            if std::mem::take(&mut self.ping_owed) {
                append_frame(&mut busy.buf, OpCode::Ping, b"");
                continue;
            }
            // 2. A replay in progress: its next page.
            if let Some(replay) = busy.replay.as_mut() {
                if replay.after >= replay.upto {
                    busy.replay = None;
                    continue;
                }
                let page = replay.page.get_or_insert_with(|| {
                    let (engine, room, after, upto) = (engine.clone(), replay.room.clone(), replay.after, replay.upto);
                    Box::pin(async move { engine.replay_page(&room, after, upto).await })
                });
                let Poll::Ready(page) = page.as_mut().poll(cx) else { return Poll::Pending };
                replay.page = None;
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(error = %e, room = %replay.room, "replay read failed; closing so the client rejoins");
                        return Poll::Ready(Err(WriteError::Stop(Some(Close::REPLAY_UNAVAILABLE))));
                    }
                };
                let Some(last) = page.last() else {
                    busy.replay = None;
                    continue;
                };
                let next_after = last.seq;
                hot().msgs_out(page.len());
                for msg in page {
                    append_frame(
                        &mut busy.buf,
                        data_opcode(encoding),
                        &encode_server(&ServerFrame::Msg(msg), encoding),
                    );
                }
                REPLAYED_MESSAGES.counter().increment((next_after - replay.after).min(replay.upto - replay.after));
                replay.after = next_after;
                continue;
            }
            // 3. Items drained earlier: framed up to the next replay marker.
            if !busy.items.is_empty() {
                while let Some(item) = busy.items.pop() {
                    match item {
                        OutItem::Frame(bytes) => append_frame(&mut busy.buf, data_opcode(encoding), &bytes),
                        OutItem::Pong(payload) => append_frame(&mut busy.buf, OpCode::Pong, &payload),
                        OutItem::Replay { room, after, upto } => {
                            busy.replay = Some(Replay { room, after, upto, page: None });
                            break;
                        }
                    }
                }
                continue;
            }
            // 4. Whatever the outbox holds now.
            let close = outbox.drain(&mut busy.items);
            if busy.items.is_empty() {
                // After a drain-first close (shutdown), what was queued is
                // written and this turn finds the outbox empty.
                if let Some(close) = close {
                    return Poll::Ready(Err(WriteError::Stop(Some(close))));
                }
                self.busy = None;
                return Poll::Ready(Ok(()));
            }
            busy.items.reverse();
            if drained {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            drained = true;
        }
    }

    /// Ends the connection as `stop` says, and counts how it ended. With a
    /// close: the rest of the frame being written (a frame cut short would
    /// garble what follows), then the close frame, within
    /// [`CLOSE_WAIT_MS`]; a socket that does not take them by then is reset
    /// rather than left to linger with what it holds.
    pub async fn close(&mut self, stop: Stop) {
        self.finish(None, stop).await;
    }

    /// One data frame (an `error` before a refusal's close), then the close.
    pub async fn refuse(&mut self, encoding: Encoding, frame: &[u8], close: Close) {
        self.finish(Some((encoding, frame)), Some(close)).await;
    }

    async fn finish(&mut self, data: Option<(Encoding, &[u8])>, stop: Stop) {
        let Some(close) = stop else {
            self.busy = None;
            count_closed_without_code();
            return;
        };
        let mut buf = match self.busy.take() {
            Some(busy) => {
                let Busy { mut buf, off, .. } = *busy;
                buf.truncate(frame_end(&buf, off).min(buf.len()));
                buf.drain(..off.min(buf.len()));
                buf
            }
            None => Vec::new(),
        };
        if let Some((encoding, frame)) = data {
            append_frame(&mut buf, data_opcode(encoding), frame);
        }
        append_frame(&mut buf, OpCode::Close, &close_payload(close));
        let mut writer = SocketWriter::new(self.stream.clone());
        let last = async {
            writer.write_all(&buf).await?;
            writer.shutdown().await
        };
        let sent = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), last).await;
        if !matches!(sent, Ok(Ok(()))) {
            // RST: the kernel drops what the client never read, now.
            let _ = socket2::SockRef::from(&*self.stream).set_linger(Some(Duration::ZERO));
        }
        CONNECTIONS_CLOSED.counter_with(close.code.label()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_end_finds_the_end_of_the_frame_being_written() {
        let mut buf = Vec::new();
        let sizes = [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000];
        let mut ends = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            append_frame(&mut buf, if i % 2 == 0 { OpCode::Binary } else { OpCode::Text }, &vec![b'x'; *size]);
            ends.push(buf.len());
        }
        assert_eq!(frame_end(&buf, 0), 0, "a frame starts at 0");
        let mut start = 0;
        for end in ends {
            assert_eq!(frame_end(&buf, start), start, "a frame starts there");
            assert_eq!(frame_end(&buf, start + 1), end);
            assert_eq!(frame_end(&buf, end - 1), end);
            start = end;
        }
        assert_eq!(frame_end(&buf, buf.len()), buf.len());
    }
}
