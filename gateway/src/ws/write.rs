//! The write side of a connection: the session's outbox, replays and
//! heartbeat pings, written as fast as the socket takes them, in as few
//! syscalls as the queue allows. Outbox frames go out without a heap
//! buffer: up to 4 KiB of them framed into one on the stack and written
//! with `write` (the usual delivery), larger ones with `writev` straight
//! from their shared encoded bytes (their WebSocket heads framed on the
//! stack). Only a frame the socket took part of is copied, whole, into a
//! buffer finished before anything else. Pings and replay pages are framed
//! by hand into that buffer.
//!
//! While the loop is idle, a push writes its frame itself ([`DirectSocket`],
//! through the outbox's lock; see `viche_engine::delivery::Outbox`): the
//! usual delivery costs no wake-up of this task. The loop writes what the
//! socket did not take then, starting with the rest of a frame cut short.
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
//! the items drained from the outbox and not yet written, a replay in
//! progress, and the write deadline while the socket refuses bytes.
//!
//! Replays are written here too, straight from the store a page at a time,
//! at the pace the socket takes them (never through the outbox, so a
//! replay never counts toward the slow-consumer limit); what was queued
//! behind a replay marker waits for it.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use viche_engine::delivery::{Direct, DirectWrite, OutItem, Outbox, SessionHandle};
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

/// Stored messages `after < seq <= upto` of `room` still to write, but
/// those stored before `ts_min`.
struct Replay {
    room: Arc<str>,
    after: u64,
    upto: u64,
    ts_min: u64,
    /// The page being read from the store.
    page: Option<PageFuture>,
}

/// What a busy write side holds; dropped when it is idle again.
#[derive(Default)]
struct Busy {
    /// The rest of a frame a push wrote part of: written before anything.
    rest: Bytes,
    /// Framed bytes, of which the socket took `off`.
    buf: Vec<u8>,
    off: usize,
    /// Drained from the outbox, not written yet; in reverse order (the next
    /// is last), so each is popped.
    items: Vec<OutItem>,
    replay: Option<Replay>,
    /// While the socket refuses bytes: when that becomes a write timeout.
    stall: Option<Pin<Box<Sleep>>>,
}

/// Frames written by one `writev`, at most (two slices each: the head,
/// framed on the stack, and the shared payload).
const WRITEV_FRAMES_MAX: usize = 32;
/// Frames that fit in this many bytes are copied into a buffer on the
/// stack and written with one `write` instead: measured, `writev` of a
/// head and a 190-byte payload cost the server 0.6 µs more per delivery
/// than a copy and a `write` (docs/benchmarks.md, "Where the time goes").
const STACK_WRITE_BYTES_MAX: usize = 4096;

/// `Ok` when the socket may take bytes; else what `poll_write` returns: a
/// stall past `write_timeout` is a write timeout, a failed socket ends the
/// session, and otherwise the task waits for writability.
fn poll_ready(
    stream: &TcpStream,
    stall: &mut Option<Pin<Box<Sleep>>>,
    write_timeout: Duration,
    cx: &mut Context<'_>,
) -> Result<(), Poll<Result<(), WriteError>>> {
    match stream.poll_write_ready(cx) {
        Poll::Ready(Ok(())) => Ok(()),
        Poll::Ready(Err(_)) => Err(Poll::Ready(Err(WriteError::Stop(None)))),
        Poll::Pending => {
            let stall = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(write_timeout)));
            Err(match stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(WriteError::Timeout)),
                Poll::Pending => Poll::Pending,
            })
        }
    }
}

/// Writes the next frames of `items` (in reverse order: the next is last;
/// up to a replay marker, at most [`WRITEV_FRAMES_MAX`]) with one `writev`
/// straight from their shared bytes (or, when they are small, one `write`
/// from a copy on the stack), and pops those the socket took. A
/// frame it took only part of is copied whole into `buf` (empty here), with
/// `off` at what was taken, for the caller to finish first.
fn write_items(
    stream: &TcpStream,
    items: &mut Vec<OutItem>,
    buf: &mut Vec<u8>,
    off: &mut usize,
    encoding: Encoding,
) -> io::Result<()> {
    debug_assert!(buf.is_empty() && *off == 0, "bytes framed earlier are written first");
    fn frame_of(item: &OutItem, encoding: Encoding) -> Option<(OpCode, &[u8])> {
        match item {
            OutItem::Frame(bytes) => Some((data_opcode(encoding), &bytes[..])),
            OutItem::Pong(payload) => Some((OpCode::Pong, &payload[..])),
            OutItem::Replay { .. } => None,
        }
    }
    let mut heads = [[0u8; 14]; WRITEV_FRAMES_MAX];
    let mut frame_lens = [(0usize, 0usize); WRITEV_FRAMES_MAX];
    let mut count = 0;
    let written = {
        let mut slices = [IoSlice::new(&[]); 2 * WRITEV_FRAMES_MAX];
        for item in items.iter().rev().take(WRITEV_FRAMES_MAX) {
            let Some((opcode, payload)) = frame_of(item, encoding) else { break };
            let head = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut heads[count]);
            frame_lens[count] = (head, payload.len());
            slices[2 * count + 1] = IoSlice::new(payload);
            count += 1;
        }
        assert!(count > 0, "the caller writes a replay marker's pages instead");
        let framed_bytes: usize = frame_lens[..count].iter().map(|(head, payload)| head + payload).sum();
        if framed_bytes <= STACK_WRITE_BYTES_MAX {
            // Small frames (the usual delivery): copied into one buffer on
            // the stack and written with a plain `write`, which costs the
            // kernel less than walking an iovec per head and payload.
            let mut framed = [0u8; STACK_WRITE_BYTES_MAX];
            let mut at = 0;
            for (i, head) in heads.iter().enumerate().take(count) {
                for part in [&head[..frame_lens[i].0], &slices[2 * i + 1][..]] {
                    framed[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
            }
            stream.try_write(&framed[..at])?
        } else {
            for (i, head) in heads.iter().enumerate().take(count) {
                slices[2 * i] = IoSlice::new(&head[..frame_lens[i].0]);
            }
            stream.try_write_vectored(&slices[..2 * count])?
        }
    };
    if written == 0 {
        // Only a socket that can take no more bytes ever says 0 to a
        // write of at least one frame head.
        return Err(io::ErrorKind::WriteZero.into());
    }
    hot().frames_out_bytes.increment(written as u64);
    let mut rest = written;
    let mut done = 0;
    while done < count && rest >= frame_lens[done].0 + frame_lens[done].1 {
        rest -= frame_lens[done].0 + frame_lens[done].1;
        done += 1;
    }
    if done < count && rest > 0 {
        let (_, payload) = frame_of(&items[items.len() - 1 - done], encoding).expect("a frame, as framed above");
        buf.extend_from_slice(&heads[done][..frame_lens[done].0]);
        buf.extend_from_slice(payload);
        *off = rest;
        done += 1;
    }
    items.truncate(items.len() - done);
    Ok(())
}

/// The socket as a push writes to it while the write loop is idle: one
/// non-blocking write of the whole frame (framed on the stack, or with
/// `writev` when large), never a wait.
struct DirectSocket {
    stream: Arc<TcpStream>,
    opcode: OpCode,
}

impl DirectWrite for DirectSocket {
    fn write_now(&self, payload: &[u8]) -> Direct {
        let mut head = [0u8; 14];
        let head_len = Frame::new(true, self.opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
        let total = head_len + payload.len();
        let written = if total <= STACK_WRITE_BYTES_MAX {
            let mut framed = [0u8; STACK_WRITE_BYTES_MAX];
            framed[..head_len].copy_from_slice(&head[..head_len]);
            framed[head_len..total].copy_from_slice(payload);
            self.stream.try_write(&framed[..total])
        } else {
            self.stream.try_write_vectored(&[IoSlice::new(&head[..head_len]), IoSlice::new(payload)])
        };
        match written {
            Ok(0) | Err(_) => Direct::Nothing,
            Ok(n) => {
                hot().frames_out_bytes.increment(n as u64);
                if n == total {
                    return Direct::All;
                }
                let mut rest = Vec::with_capacity(total - n);
                if n < head_len {
                    rest.extend_from_slice(&head[n..head_len]);
                }
                rest.extend_from_slice(&payload[n.saturating_sub(head_len)..]);
                Direct::Part(rest.into())
            }
        }
    }
}

/// The write side of one connection.
pub(super) struct WriteSide {
    stream: Arc<TcpStream>,
    write_timeout: Duration,
    busy: Option<Box<Busy>>,
    /// A heartbeat ping to write before the next frames.
    ping_owed: bool,
    /// The session whose pushes write to the socket while this side is idle.
    attached: Option<Arc<SessionHandle>>,
    /// This side has claimed the socket back from pushes since it was last idle.
    claimed: bool,
}

impl WriteSide {
    pub fn new(stream: Arc<TcpStream>, write_timeout: Duration) -> Self {
        Self { stream, write_timeout, busy: None, ping_owed: false, attached: None, claimed: false }
    }

    /// Lets `session`'s pushes write to the socket while this side is idle,
    /// until the connection ends.
    pub fn attach(&mut self, session: &Arc<SessionHandle>) {
        let opcode = data_opcode(session.encoding);
        session.outbox.attach(Box::new(DirectSocket { stream: self.stream.clone(), opcode }));
        self.attached = Some(session.clone());
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
            if !self.claimed {
                // Pushes queue from now on; one may have left a frame's rest.
                if let Some(rest) = outbox.claim() {
                    assert!(busy.buf.is_empty() && busy.items.is_empty(), "an idle side holds nothing");
                    busy.rest = rest;
                }
                self.claimed = true;
            }
            // 0. The rest of a frame a push wrote part of.
            if !busy.rest.is_empty() {
                if let Err(pending) = poll_ready(&self.stream, &mut busy.stall, self.write_timeout, cx) {
                    return pending;
                }
                match self.stream.try_write(&busy.rest) {
                    Ok(0) => return Poll::Ready(Err(WriteError::Stop(None))),
                    Ok(n) => {
                        busy.rest.advance(n);
                        busy.stall = None;
                        hot().frames_out_bytes.increment(n as u64);
                    }
                    // Readiness was stale; polling it again registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(WriteError::Stop(None))),
                }
                continue;
            }
            // 1. Bytes framed and not yet taken by the socket.
            if busy.off < busy.buf.len() {
                if let Err(pending) = poll_ready(&self.stream, &mut busy.stall, self.write_timeout, cx) {
                    return pending;
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
                let ts_min = replay.ts_min;
                let mut written = 0;
                for msg in page.into_iter().filter(|m| m.ts >= ts_min) {
                    append_frame(
                        &mut busy.buf,
                        data_opcode(encoding),
                        &encode_server(&ServerFrame::Msg(msg), encoding),
                    );
                    written += 1;
                }
                hot().msgs_out(written);
                REPLAYED_MESSAGES.counter().increment(written as u64);
                replay.after = next_after;
                continue;
            }
            // 3. Items drained earlier, up to the next replay marker: written
            // without a heap buffer (`write_items`).
            if let Some(OutItem::Replay { .. }) = busy.items.last() {
                let Some(OutItem::Replay { room, after, upto, ts_min }) = busy.items.pop() else { unreachable!() };
                busy.replay = Some(Replay { room, after, upto, ts_min, page: None });
                continue;
            }
            if !busy.items.is_empty() {
                if let Err(pending) = poll_ready(&self.stream, &mut busy.stall, self.write_timeout, cx) {
                    return pending;
                }
                match write_items(&self.stream, &mut busy.items, &mut busy.buf, &mut busy.off, encoding) {
                    Ok(()) => busy.stall = None,
                    // Readiness was stale; polling it again registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(WriteError::Stop(None))),
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
                // Idle: pushes write to the socket until the next claim.
                self.claimed = false;
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
        // Pushes write to the socket no more (nor keep it open).
        let pushed_rest = self.attached.take().and_then(|s| s.outbox.detach());
        let Some(close) = stop else {
            self.busy = None;
            count_closed_without_code();
            return;
        };
        // The rest of the frame being written first: a push's (from the
        // outbox, or claimed already), or this side's own.
        let mut buf: Vec<u8> = pushed_rest.map_or(Vec::new(), Vec::from);
        if let Some(busy) = self.busy.take() {
            let Busy { rest, buf: mut own, off, .. } = *busy;
            buf.extend_from_slice(&rest);
            own.truncate(frame_end(&own, off).min(own.len()));
            buf.extend_from_slice(&own[off.min(own.len())..]);
        }
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

    /// A loopback pair (client, server) whose server side has a 4 KiB send
    /// buffer, so that writes to it are often partial.
    async fn small_send_buffer_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
        (client, server)
    }

    /// Reads `total` bytes from `client` 1,500 at a time, yielding between
    /// reads (a slow reader), and returns them.
    fn read_slowly(mut client: TcpStream, total: usize) -> tokio::task::JoinHandle<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(total);
            let mut chunk = [0u8; 1500];
            while got.len() < total {
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the writer closed early");
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
            got
        })
    }

    /// The write path of every delivery: frames written with `writev`
    /// straight from their bytes, through a socket with a small send
    /// buffer and a slow reader, so that many writes are partial and the
    /// frame cut short is finished from `buf`: the peer reads every frame,
    /// whole and in order.
    #[tokio::test]
    async fn frames_written_from_their_bytes_arrive_whole_and_in_order() {
        use bytes::Bytes;
        let (client, server) = small_send_buffer_pair().await;
        let sizes = [0usize, 1, 125, 126, 190, 300, 4096, 65_535, 65_536, 70_000];
        let frames: Vec<Bytes> = (0..300).map(|i| Bytes::from(vec![(i % 251) as u8; sizes[i % sizes.len()]])).collect();
        let mut expected = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            append_frame(&mut expected, if i % 7 == 3 { OpCode::Pong } else { OpCode::Binary }, frame);
        }
        let total = expected.len();
        let reader = read_slowly(client, total);
        let mut items: Vec<OutItem> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| if i % 7 == 3 { OutItem::Pong(f.clone()) } else { OutItem::Frame(f.clone()) })
            .rev()
            .collect();
        let (mut buf, mut off, mut partial) = (Vec::new(), 0usize, 0usize);
        loop {
            server.writable().await.unwrap();
            if off < buf.len() {
                match server.try_write(&buf[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                continue;
            }
            buf.clear();
            off = 0;
            if items.is_empty() {
                break;
            }
            match write_items(&server, &mut items, &mut buf, &mut off, Encoding::MsgPack) {
                Ok(()) => partial += !buf.is_empty() as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let got = reader.await.unwrap();
        assert!(got == expected, "the peer read {} bytes, not the {} framed", got.len(), total);
        assert!(partial > 0, "no write was partial: the test did not exercise the frame cut short");
    }

    /// A push's write straight to the socket, through a 4 KiB send buffer
    /// and a slow reader: each frame is taken whole, or in part with the
    /// rest handed back (written here before the next frame, as the write
    /// loop does), or not at all (and written here whole). The peer reads
    /// every frame, whole and in order.
    #[tokio::test]
    async fn a_push_written_straight_to_the_socket_hands_back_what_it_did_not_take() {
        let (client, server) = small_send_buffer_pair().await;
        let server = Arc::new(server);
        let direct = DirectSocket { stream: server.clone(), opcode: OpCode::Binary };
        let sizes = [0usize, 1, 125, 126, 190, 4000, 4096, 65_535, 65_536, 70_000];
        let frames: Vec<Vec<u8>> = (0..200).map(|i| vec![(i % 251) as u8; sizes[i % sizes.len()]]).collect();
        let mut expected = Vec::new();
        for frame in &frames {
            append_frame(&mut expected, OpCode::Binary, frame);
        }
        let total = expected.len();
        let reader = read_slowly(client, total);
        let (mut parts, mut nothings) = (0, 0);
        let mut writer = SocketWriter::new(server.clone());
        for frame in &frames {
            match direct.write_now(frame) {
                Direct::All => {}
                Direct::Part(rest) => {
                    parts += 1;
                    writer.write_all(&rest).await.unwrap();
                }
                Direct::Nothing => {
                    nothings += 1;
                    let mut whole = Vec::new();
                    append_frame(&mut whole, OpCode::Binary, frame);
                    writer.write_all(&whole).await.unwrap();
                }
            }
        }
        let got = reader.await.unwrap();
        assert!(got == expected, "the peer read {} bytes, not the {} framed", got.len(), total);
        assert!(parts > 0, "no write was partial: the test did not exercise a frame cut short");
        assert!(nothings + parts < frames.len(), "some frames went whole");
    }

    /// The two writers of one socket, racing: four threads push numbered
    /// frames of many sizes in bursts (some allowed to write, some not)
    /// while the write loop runs as `ws/mod.rs` runs it (woken by the
    /// outbox, pinging every 3 ms), through a 4 KiB send buffer and a
    /// reader that stalls now and then. Measured while writing it: about a
    /// thousand frames written by their push, a dozen cut short and two
    /// dozen not taken, a run. The peer reads whole frames only, every
    /// frame once, and each thread's frames in the order it pushed them
    /// (it fails when the loop drops a frame's rest, and mostly when a push
    /// cut short leaves pushes writing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_and_the_write_loop_never_interleave_or_reorder_frames() {
        use tokio::io::AsyncReadExt;
        use viche_engine::store::embedded::EmbeddedStore;
        use viche_engine::EngineConfig;
        const THREADS: u8 = 4;
        const FRAMES_PER_THREAD: u32 = 1500;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let engine = Engine::start(EngineConfig::default(), store, b"0123456789abcdef0123").await.unwrap();
        let (mut client, server) = small_send_buffer_pair().await;
        let server = Arc::new(server);
        let handle = Arc::new(SessionHandle {
            id: 1,
            user: "racer".into(),
            encoding: Encoding::MsgPack,
            outbox: Outbox::new(1_000_000, 1 << 30),
        });

        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let (handle, engine, server) = (handle.clone(), engine.clone(), server.clone());
            tokio::spawn(async move {
                let mut write = WriteSide::new(server, Duration::from_secs(30));
                write.attach(&handle);
                write.start();
                let mut ping = tokio::time::interval(Duration::from_millis(3));
                loop {
                    tokio::select! {
                        biased;
                        _ = handle.outbox.notified() => write.start(),
                        _ = ping.tick() => write.ping(),
                        written = std::future::poll_fn(|cx| write.poll_write(cx, &engine, &handle.outbox, Encoding::MsgPack)),
                            if write.is_busy() => assert!(written.is_ok(), "the write loop failed"),
                        _ = &mut done_rx => break,
                    }
                }
            })
        };
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    for seq in 0..FRAMES_PER_THREAD {
                        let size = [5usize, 60, 190, 900, 3000, 5000][(seq as usize * 7 + t as usize) % 6];
                        let mut payload = vec![t; size];
                        payload[1..5].copy_from_slice(&seq.to_be_bytes());
                        let write_now = seq % 5 != 0;
                        handle.outbox.push(&Bytes::from(payload), write_now).expect("the outbox has room");
                        // Bursts, then a pause: the loop goes idle between them.
                        if seq % 4 == 3 {
                            std::thread::sleep(Duration::from_micros(500 + 300 * u64::from(t)));
                        }
                    }
                })
            })
            .collect();

        let mut next = [0u32; THREADS as usize];
        let mut stream = Vec::new();
        let mut chunk = [0u8; 2048];
        let (mut pings, mut reads) = (0, 0u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while next.iter().any(|n| *n < FRAMES_PER_THREAD) {
            let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("frames still missing after 60 s: next {next:?}"))
                .unwrap();
            assert!(n > 0, "the socket closed early");
            stream.extend_from_slice(&chunk[..n]);
            // Whole frames off the front.
            let mut at = 0;
            while stream.len() - at >= 2 {
                let head_len = match stream[at + 1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                if stream.len() - at < head_len || stream.len() - at < frame_len(&stream[at..]) {
                    break;
                }
                let len = frame_len(&stream[at..]);
                let (opcode, payload) = (stream[at] & 0x0f, &stream[at + head_len..at + len]);
                assert_eq!(stream[at] & 0x80, 0x80, "a final frame");
                match opcode {
                    0x9 => pings += 1,
                    0x2 => {
                        let t = payload[0] as usize;
                        let seq = u32::from_be_bytes(payload[1..5].try_into().unwrap());
                        assert!(t < THREADS as usize, "a frame of no thread: garbled bytes");
                        assert_eq!(seq, next[t], "thread {t}'s frames in push order, each once");
                        assert!(payload.iter().skip(5).all(|b| *b == t as u8), "thread {t}'s frame {seq} is whole");
                        next[t] += 1;
                    }
                    other => panic!("opcode {other:#x}: garbled bytes"),
                }
                at += len;
            }
            stream.drain(..at);
            // A slow reader now and then: the send buffer fills, and
            // writes take part of a frame, or nothing.
            reads += 1;
            if reads % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        for pusher in pushers {
            pusher.join().unwrap();
        }
        let _ = done_tx.send(());
        writer.await.unwrap();
        assert!(stream.is_empty(), "no bytes past the last frame");
        assert!(pings > 0, "the loop wrote its own frames between the pushes'");
    }

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
