//! A session's bounded outbound queue.
//!
//! Rooms and the writer push pre-encoded frames here directly (no actor
//! message per recipient); the connection's write loop drains everything
//! queued at once. The bound (frames and bytes) is the contract's
//! slow-consumer limit: a push past it marks the session for close 4008
//! and drops what is queued, so a slow reader costs bounded memory.
//!
//! The write loop is woken without a lock: a `pending` flag and an
//! `AtomicWaker` (one consumer, the connection's task), instead of a
//! `Notify` whose waiter list a room would lock for every recipient.
//!
//! Most pushes wake nothing at all: while the write loop is idle (it
//! found the outbox empty and has nothing of its own to write), a push
//! writes the frame to the socket itself, at once, without waiting
//! ([`DirectWrite`], attached by the transport). Only what the socket does
//! not take (all of the frame, or its rest) is queued for the loop. The
//! outbox's lock orders the two writers: a push writes only while the loop
//! is idle, and the loop claims the socket back ([`Outbox::claim`]), under
//! the same lock, before it writes anything.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use viche_protocol::Close;

use crate::metrics::SLOW_CONSUMERS;

/// One item for the write loop.
#[derive(Debug, Clone)]
pub enum OutItem {
    /// A frame already encoded in the session's encoding.
    Frame(Bytes),
    /// Replay stored messages of `room` with `after < seq <= upto` (oldest
    /// first) before anything queued behind this marker, but those stored
    /// before `ts_min` (ms since the epoch; 0 for all). Written at the pace
    /// the client reads, and not counted against the bound.
    Replay { room: Arc<str>, after: u64, upto: u64, ts_min: u64 },
    /// A WebSocket pong owed for a ping (payload echoed).
    Pong(Bytes),
}

/// A close the write loop must carry out, and whether what is queued is
/// written first (shutdown) or dropped (slow consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingClose {
    close: Close,
    drain_first: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The bound was reached: the session is now closing with 4008.
    SlowConsumer,
    /// The session is already closing; the item was dropped.
    Closed,
}

/// Members of one fan-out whose pushes may write to their sockets
/// themselves: a room's actor makes at most this many syscalls per
/// message (~0.6 ms at ~5 µs each). The members past it are queued and
/// their connections woken, so a large room's writes spread over every
/// worker thread instead of running one after another in the room.
pub const DIRECT_WRITES_PER_FANOUT_MAX: usize = 128;

/// What a push's write straight to the socket did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// The socket took the whole frame.
    All,
    /// It took part: these are the framed bytes it did not take, which go
    /// out before anything else.
    Part(Bytes),
    /// It took nothing (it would block, or it failed: the write loop will
    /// find out).
    Nothing,
}

/// A connection's socket as a push writes to it while the write loop is
/// idle: one non-blocking write of a frame (the transport frames
/// `payload`), never a wait.
pub trait DirectWrite: Send + Sync {
    fn write_now(&self, payload: &[u8]) -> Direct;
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<OutItem>,
    /// Frames counted against the bound (replay markers are not).
    frames: usize,
    bytes: usize,
    close: Option<PendingClose>,
    /// The socket, while the connection lets pushes write to it.
    direct: Option<Box<dyn DirectWrite>>,
    /// The write loop is idle: it found the queue empty and writes nothing
    /// until it claims the socket back. Only then may a push write.
    idle: bool,
    /// The rest of a frame a push wrote part of; the loop writes it first.
    rest: Option<Bytes>,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Set by every push or close, cleared by the write loop's wake-up.
    pending: AtomicBool,
    /// The write loop's task, while it waits.
    waker: AtomicWaker,
    frames_max: u32,
    bytes_max: u32,
}

impl Outbox {
    pub fn new(frames_max: usize, bytes_max: usize) -> Self {
        assert!(frames_max > 0 && bytes_max > 0, "an outbox bound of zero would close every session");
        Self {
            inner: Mutex::new(Inner::default()),
            pending: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            frames_max: frames_max.min(u32::MAX as usize) as u32,
            bytes_max: bytes_max.min(u32::MAX as usize) as u32,
        }
    }

    /// Writes a frame to the socket (when `write_now` and the loop is
    /// idle) or queues it (a clone of `frame`: a reference count), or
    /// closes the session as a slow consumer when full.
    pub fn push(&self, frame: &Bytes, write_now: bool) -> Result<(), PushError> {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return Err(PushError::Closed);
        }
        if inner.frames >= self.frames_max as usize || inner.bytes + frame.len() > self.bytes_max as usize {
            inner.queue = VecDeque::new();
            inner.frames = 0;
            inner.bytes = 0;
            inner.close = Some(PendingClose { close: Close::SLOW_CONSUMER, drain_first: false });
            drop(inner);
            SLOW_CONSUMERS.counter_with("outbox_full").increment(1);
            self.wake();
            return Err(PushError::SlowConsumer);
        }
        if inner.idle {
            debug_assert!(inner.queue.is_empty() && inner.rest.is_none(), "an idle loop left nothing behind");
            // A push that may not write is queued: the loop is no longer
            // idle (it is woken), and the pushes after it queue behind it.
            inner.idle = write_now;
            if let Some(direct) = inner.direct.as_ref().filter(|_| write_now) {
                match direct.write_now(frame) {
                    Direct::All => return Ok(()),
                    Direct::Part(rest) => {
                        inner.rest = Some(rest);
                        inner.idle = false;
                        drop(inner);
                        self.wake();
                        return Ok(());
                    }
                    Direct::Nothing => inner.idle = false,
                }
            }
        }
        inner.frames += 1;
        inner.bytes += frame.len();
        inner.queue.push_back(OutItem::Frame(frame.clone()));
        let depth = inner.frames;
        drop(inner);
        crate::metrics::note_outbox_depth(depth);
        self.wake();
        Ok(())
    }

    /// Queues an item that is not counted against the bound (a replay
    /// marker, a pong). Their number is bounded by the caller: one replay
    /// per join (rate-limited), one pong per ping read.
    pub fn push_unbounded(&self, item: OutItem) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return;
        }
        // Queued for the loop, so later pushes queue behind it (a replay
        // marker must come before the live messages that follow it).
        inner.idle = false;
        inner.queue.push_back(item);
        drop(inner);
        self.wake();
    }

    /// Asks the write loop to close, after writing what is queued when
    /// `drain_first`. The first request wins.
    pub fn close(&self, close: Close, drain_first: bool) {
        let mut inner = self.inner.lock();
        if inner.close.is_none() {
            inner.close = Some(PendingClose { close, drain_first });
        }
        drop(inner);
        self.wake();
    }

    /// A requested close that does not wait for the queue (a slow
    /// consumer's): the connection must end at once.
    pub fn close_now(&self) -> Option<Close> {
        self.inner.lock().close.filter(|c| !c.drain_first).map(|c| c.close)
    }

    pub fn is_closing(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Lets pushes write to `socket` while the write loop is idle (from its
    /// next [`Outbox::drain`] that finds nothing).
    pub fn attach(&self, socket: Box<dyn DirectWrite>) {
        self.inner.lock().direct = Some(socket);
    }

    /// Pushes write to the socket no more; returns the rest of a frame one
    /// of them wrote part of, to be written before anything else.
    pub fn detach(&self) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        inner.direct = None;
        inner.idle = false;
        inner.rest.take()
    }

    /// The write loop is about to write: pushes queue from now on. Returns
    /// the rest of a frame a push wrote part of, to be written first.
    pub fn claim(&self) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        inner.idle = false;
        inner.rest.take()
    }

    /// Moves everything queued into `out` and returns a pending close, if any.
    /// With a close that does not drain first, nothing is moved. Finding
    /// nothing (and no close), the loop goes idle: pushes write to the
    /// socket themselves until it claims it back.
    pub fn drain(&self, out: &mut Vec<OutItem>) -> Option<Close> {
        let mut inner = self.inner.lock();
        debug_assert!(inner.rest.is_none(), "the loop claimed a rest before draining");
        let close = inner.close;
        if close.is_none() && inner.queue.is_empty() {
            inner.idle = inner.direct.is_some();
            return None;
        }
        if close.is_some_and(|c| !c.drain_first) {
            inner.queue = VecDeque::new();
        } else {
            out.extend(inner.queue.drain(..));
            if inner.queue.capacity() > 64 {
                // A burst should not leave a large idle allocation behind.
                inner.queue = VecDeque::new();
            }
        }
        inner.frames = 0;
        inner.bytes = 0;
        close.map(|c| c.close)
    }

    pub fn depth(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Wakes the write loop, unless a wake-up is already pending (it has
    /// not run since: it will see this push too).
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Resolves when something was pushed or a close was requested since
    /// it last resolved. One waiter at a time: the connection's task.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A push between the check and the registration found no
            // waker to wake: it left the flag, seen here.
            if self.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock-free wake-up: a push before the wait is not lost, several
    /// pushes make one wake-up, a resolved wait does not resolve again
    /// without a push, and a push from another thread wakes a waiting task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_wakes_the_waiting_loop_once_and_is_never_lost() {
        use std::time::Duration;
        let o = Arc::new(Outbox::new(100, 1 << 20));
        o.push(&Bytes::from_static(b"a"), true).unwrap();
        o.push(&Bytes::from_static(b"b"), true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), o.notified()).await.expect("a push before the wait");
        let again = tokio::time::timeout(Duration::from_millis(50), o.notified()).await;
        assert!(again.is_err(), "two pushes, one wake-up: nothing new since");
        for round in 0..1000u32 {
            let pusher = o.clone();
            let push =
                std::thread::spawn(move || pusher.push(&Bytes::from(round.to_be_bytes().to_vec()), true).unwrap());
            tokio::time::timeout(Duration::from_secs(5), o.notified()).await.expect("a push from another thread");
            push.join().unwrap();
            let mut out = Vec::new();
            o.drain(&mut out);
            assert_eq!(out.len(), if round == 0 { 3 } else { 1 }, "every push drained once");
        }
        o.close(Close::SHUTDOWN, true);
        tokio::time::timeout(Duration::from_secs(5), o.notified()).await.expect("a close wakes the loop");
    }

    /// A socket that takes what `takes` says, and records what it took.
    struct Socket {
        takes: Mutex<Vec<Direct>>,
        took: Arc<Mutex<Vec<Bytes>>>,
    }

    impl DirectWrite for Socket {
        fn write_now(&self, payload: &[u8]) -> Direct {
            let taken = self.takes.lock().pop().unwrap_or(Direct::All);
            if taken != Direct::Nothing {
                self.took.lock().push(Bytes::copy_from_slice(payload));
            }
            taken
        }
    }

    /// Pushes write to the socket only while the loop is idle (after a
    /// drain that found nothing), in push order; what the socket does not
    /// take is queued, and the rest of a frame cut short is handed to the
    /// loop's next claim; once claimed or detached, pushes queue.
    #[test]
    fn pushes_write_to_the_socket_only_while_the_loop_is_idle() {
        let o = Outbox::new(100, 1 << 20);
        let took = Arc::new(Mutex::new(Vec::new()));
        // Popped from the end: the third write is partial, the fourth takes nothing.
        let takes = vec![Direct::Nothing, Direct::Part(Bytes::from_static(b"rest")), Direct::All, Direct::All];
        o.attach(Box::new(Socket { takes: Mutex::new(takes), took: took.clone() }));
        let mut out = Vec::new();
        o.push(&Bytes::from_static(b"welcome"), true).unwrap();
        assert!(took.lock().is_empty(), "not idle before the loop's first empty drain");
        assert!(o.drain(&mut out).is_none());
        assert_eq!(out.len(), 1);
        out.clear();
        assert!(o.drain(&mut out).is_none() && out.is_empty(), "nothing left: the loop goes idle");
        o.push(&Bytes::from_static(b"a"), true).unwrap();
        o.push(&Bytes::from_static(b"b"), true).unwrap();
        assert_eq!(*took.lock(), vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert_eq!(o.depth(), 0, "written, not queued");
        // Cut short: the rest waits for the loop, and pushes queue behind it.
        o.push(&Bytes::from_static(b"c"), true).unwrap();
        o.push(&Bytes::from_static(b"d"), true).unwrap();
        assert_eq!(took.lock().len(), 3, "not idle while a rest is owed");
        assert_eq!(o.claim(), Some(Bytes::from_static(b"rest")));
        assert_eq!(o.claim(), None, "a rest is handed over once");
        assert!(o.drain(&mut out).is_none());
        assert!(matches!(&out[..], [OutItem::Frame(d)] if &d[..] == b"d"));
        out.clear();
        // Idle again; the socket takes nothing: the frame is queued.
        assert!(o.drain(&mut out).is_none() && out.is_empty());
        o.push(&Bytes::from_static(b"e"), true).unwrap();
        o.push(&Bytes::from_static(b"f"), true).unwrap();
        assert_eq!(took.lock().len(), 3);
        assert!(o.drain(&mut out).is_none());
        assert_eq!(out.len(), 2, "e and f, in order");
        out.clear();
        // Idle, then claimed by the loop (a ping, say): pushes queue.
        assert!(o.drain(&mut out).is_none());
        assert_eq!(o.claim(), None);
        o.push(&Bytes::from_static(b"g"), true).unwrap();
        assert_eq!((took.lock().len(), o.depth()), (3, 1));
        o.drain(&mut out);
        out.clear();
        // A push told not to write (past a fan-out's first members) while
        // idle: queued, and the pushes after it queue behind it.
        assert!(o.drain(&mut out).is_none() && out.is_empty());
        o.push(&Bytes::from_static(b"late"), false).unwrap();
        o.push(&Bytes::from_static(b"later"), true).unwrap();
        assert_eq!((took.lock().len(), o.depth()), (3, 2));
        o.drain(&mut out);
        out.clear();
        // A marker (a replay) pushed while idle: later frames queue behind it.
        assert!(o.drain(&mut out).is_none() && out.is_empty());
        o.push_unbounded(OutItem::Replay { room: "r".into(), after: 0, upto: 5, ts_min: 0 });
        o.push(&Bytes::from_static(b"live"), true).unwrap();
        assert_eq!(took.lock().len(), 3, "not written ahead of the replay");
        o.drain(&mut out);
        assert!(matches!(&out[..], [OutItem::Replay { .. }, OutItem::Frame(f)] if &f[..] == b"live"), "{out:?}");
        out.clear();
        // Detached at the end: never again.
        assert!(o.drain(&mut out).is_none());
        assert_eq!(o.detach(), None);
        o.push(&Bytes::from_static(b"h"), true).unwrap();
        assert_eq!((took.lock().len(), o.depth()), (3, 1));
    }

    #[test]
    fn full_by_frames_closes_as_slow_consumer() {
        let o = Outbox::new(2, 1 << 20);
        o.push(&Bytes::from_static(b"a"), true).unwrap();
        o.push(&Bytes::from_static(b"b"), true).unwrap();
        assert_eq!(o.push(&Bytes::from_static(b"c"), true), Err(PushError::SlowConsumer));
        assert_eq!(o.push(&Bytes::from_static(b"d"), true), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(o.close_now(), Some(Close::SLOW_CONSUMER), "a slow consumer's close does not wait");
        let close = o.drain(&mut out).unwrap();
        assert_eq!(close, Close::SLOW_CONSUMER);
        assert!(out.is_empty(), "a slow consumer's queue is dropped");
    }

    #[test]
    fn full_by_bytes_closes_as_slow_consumer() {
        let o = Outbox::new(100, 10);
        o.push(&Bytes::from(vec![0u8; 10]), true).unwrap();
        assert_eq!(o.push(&Bytes::from_static(b"x"), true), Err(PushError::SlowConsumer));
    }

    #[test]
    fn drain_resets_the_bound_and_keeps_order() {
        let o = Outbox::new(2, 100);
        for round in 0..3u8 {
            o.push(&Bytes::from(vec![round]), true).unwrap();
            o.push_unbounded(OutItem::Pong(Bytes::new()));
            o.push(&Bytes::from(vec![round + 10]), true).unwrap();
            let mut out = Vec::new();
            assert!(o.drain(&mut out).is_none());
            assert_eq!(out.len(), 3);
            assert!(matches!(&out[0], OutItem::Frame(b) if b[0] == round));
        }
    }

    #[test]
    fn shutdown_close_drains_first() {
        let o = Outbox::new(10, 100);
        o.push(&Bytes::from_static(b"a"), true).unwrap();
        o.close(Close::SHUTDOWN, true);
        assert_eq!(o.close_now(), None, "a shutdown close waits for the queue");
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out).unwrap(), Close::SHUTDOWN);
        assert_eq!(out.len(), 1);
    }
}
