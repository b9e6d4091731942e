//! The two halves of an upgraded WebSocket's TCP stream, sharing one
//! `Arc<TcpStream>`.
//!
//! Why not `tokio::io::split` or `into_split`: the read half must outlive
//! the fastwebsockets reader built on it. fastwebsockets gives every reader
//! an 8 KiB buffer; an idle session should hold none, so `read.rs` drops the
//! reader whenever its buffer is empty and builds a fresh one when the
//! socket is readable again. That needs a read half that can be handed to
//! a new reader any number of times: a clone of this one. The reader also
//! counts the bytes it delivers, which is how `read.rs` knows the buffer is
//! empty.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct SocketReader {
    stream: Arc<TcpStream>,
    /// Bytes already taken from the socket (and counted), delivered first.
    prefix: Bytes,
    /// Every byte read from the socket so far, across all readers.
    delivered: Arc<AtomicU64>,
}

impl SocketReader {
    pub fn new(stream: Arc<TcpStream>, prefix: Bytes, delivered: Arc<AtomicU64>) -> Self {
        let prefix = if prefix.is_empty() { Bytes::new() } else { prefix };
        Self { stream, prefix, delivered }
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if !this.prefix.has_remaining() {
                // An emptied `Bytes` may still pin a larger buffer.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            // `try_read_buf` fills the unfilled part without zeroing it
            // first, so an 8 KiB read buffer only touches what arrives.
            match this.stream.try_read_buf(buf) {
                Ok(n) => {
                    this.delivered.fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                // try_read cleared the readiness; poll again to register.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

pub struct SocketWriter {
    stream: Arc<TcpStream>,
}

impl SocketWriter {
    pub fn new(stream: Arc<TcpStream>) -> Self {
        Self { stream }
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // writes go straight to the socket
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}
