//! An accepted TCP connection while it speaks HTTP, as hyper sees it.
//!
//! It exists for two reasons. It holds the connection's slots
//! (`slots.rs`) for as long as the connection lives, so they are given
//! back however it ends; on an upgrade `ws::serve` takes the stream and the
//! address slot back out ([`HttpIo::into_parts`]) and the HTTP slot is
//! given back. And it bounds writing a response: hyper has no write
//! deadline, so a client that never reads its response would hold the
//! connection and its task forever. Here a write the socket accepts no
//! byte of for `--write-timeout-ms` fails, and hyper drops the connection
//! (`viche_http_timeouts_total{phase="response"}`).
//!
//! It also notes whether a request has begun ([`Progress`]), so that the
//! server can tell headers that never completed (counted) from a keep-alive
//! connection that simply sent nothing more (closed, not counted).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use viche_engine::metrics::HTTP_TIMEOUTS;

use super::slots::{AddressSlot, HttpSlot};

/// Bytes were read since the last bytes were written: a request has begun.
const READ_SINCE_WRITE: u8 = 1;
/// Some response bytes were written on this connection.
const WROTE: u8 = 2;

/// What the connection has done so far, shared with the task serving it.
#[derive(Default)]
pub struct Progress(AtomicU8);

impl Progress {
    /// True when a request had begun and was not answered, or when nothing
    /// was ever answered on this connection (a client that connects and
    /// sends nothing): a header timeout then cut a request, not an idle
    /// keep-alive connection.
    pub fn request_pending(&self) -> bool {
        let v = self.0.load(Ordering::Relaxed);
        v & READ_SINCE_WRITE != 0 || v & WROTE == 0
    }
}

pub struct HttpIo {
    stream: TcpStream,
    write_timeout: Duration,
    /// While a write waits for the socket: when it fails.
    stall: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    progress: Arc<Progress>,
    _http_slot: HttpSlot,
    /// `None` for a connection from a trusted proxy (charged per request).
    address_slot: Option<AddressSlot>,
}

impl HttpIo {
    pub fn new(
        stream: TcpStream,
        write_timeout: Duration,
        http_slot: HttpSlot,
        address_slot: Option<AddressSlot>,
    ) -> Self {
        Self {
            stream,
            write_timeout,
            stall: None,
            timed_out: false,
            progress: Arc::default(),
            _http_slot: http_slot,
            address_slot,
        }
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// After an upgrade: the stream and the address slot, which the
    /// WebSocket keeps for its life; the HTTP slot is given back.
    pub fn into_parts(self) -> (TcpStream, Option<AddressSlot>) {
        (self.stream, self.address_slot)
    }

    fn guard_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        match write(Pin::new(&mut self.stream), cx) {
            Poll::Ready(Ok(n)) => {
                self.stall = None;
                if n > 0 {
                    self.progress.0.store(WROTE, Ordering::Relaxed);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timed_out = true;
                self.stall = None;
                HTTP_TIMEOUTS.counter_with("response").increment(1);
                Poll::Ready(Err(timed_out()))
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client took no byte of the response within --write-timeout-ms")
}

impl AsyncRead for HttpIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.progress.0.fetch_or(READ_SINCE_WRITE, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().guard_write(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard_write(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
