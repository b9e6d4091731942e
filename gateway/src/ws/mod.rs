//! One WebSocket connection: the `hello` handshake (`handshake.rs`), then
//! a single task that reads frames into the session (`read.rs`) and
//! writes the session's outbox out (`write.rs`), over the two halves of
//! the socket (`socket.rs`).
//!
//! One task per connection (not a reader and a writer task) keeps an idle
//! session small, and so does dropping fastwebsockets' reader whenever it
//! holds no unread bytes (see `read.rs`). Rarely awaited futures (the
//! handshake, frame handling, replay pages, the close) are boxed, so the
//! connection task's own future stays small while it idles.
//!
//! Reading and writing never wait for each other: the loop keeps the one
//! read future alive across its turns and polls the write side
//! (`write.rs`) as one more branch, so a client that stops reading is
//! still heard, pinged, expired, and closed when its outbox overflows or
//! its socket takes nothing for `--write-timeout-ms`. A slow consumer's
//! session is dropped at once (its presence goes offline, its directory
//! entry goes); only then is the close attempted, briefly.

mod handshake;
mod read;
mod socket;
mod write;

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use viche_engine::clock::now_ms;
use viche_engine::metrics::{hot, CONNECTIONS_OPEN};
use viche_engine::{Engine, Flow, Refusal, Session};
use viche_protocol::{decode_client, Close, ErrorCode, ServerFrame};

use crate::http::{AddressSlot, HttpIo};
use read::{read_message, Incoming, ReadError, ReadState};
pub(crate) use write::count_closed_without_code;
use write::{Stop, WriteSide};

/// Serves one upgraded connection until it closes. `request_slot`: its
/// client's slot of `--max-connections-per-ip` when it came through a
/// trusted proxy; it is held, like the connection's own, until the end.
pub async fn serve(
    engine: Arc<Engine>,
    upgraded: Upgraded,
    write_timeout: Duration,
    request_slot: Option<AddressSlot>,
) {
    let parts = match upgraded.downcast::<TokioIo<HttpIo>>() {
        Ok(parts) => parts,
        Err(_) => {
            tracing::error!("upgraded connection is not ours");
            count_closed_without_code();
            return;
        }
    };
    // Out of its HTTP phase: the HTTP slot is given back, the address's
    // kept (the connection's own, or else its client's behind a proxy).
    let (stream, address_slot) = parts.io.into_inner().into_parts();
    let _address_slot = address_slot.or(request_slot);
    CONNECTIONS_OPEN.gauge().increment(1.0);
    let stream = Arc::new(stream);
    let mut write = WriteSide::new(stream.clone(), write_timeout);
    let st = ReadState::new(stream, parts.read_buf, engine.config().frame_bytes_max);
    if let Some((session, st)) = Box::pin(handshake::handshake(&engine, st, &mut write)).await {
        // A panic in the session (handling a frame, say) unwinds to here:
        // the session's Drop has already left its rooms and the directory
        // and reported the failure to the session supervisor; the client
        // is told with 1011 and may reconnect and resume with `since`.
        let run = AssertUnwindSafe(run_session(&engine, session, st, &mut write)).catch_unwind();
        let stop = Box::pin(run).await.unwrap_or(Some(Close::SESSION_FAILED));
        Box::pin(write.close(stop)).await;
    }
    CONNECTIONS_OPEN.gauge().decrement(1.0);
}

type ReadFuture = Pin<Box<dyn std::future::Future<Output = (ReadState, Result<Incoming, ReadError>)> + Send>>;

/// How the loop of a session ended.
enum Ending {
    /// Close now (after the frame being written), as it says.
    Now(Stop),
    /// Write what is queued (the error that caused it), then close.
    Drain(Close),
}

/// The session's life after `welcome`: frames in, outbox out, heartbeat,
/// token expiry, until one of them ends it. Returns how to close.
async fn run_session(engine: &Arc<Engine>, mut session: Session, st: ReadState, write: &mut WriteSide) -> Stop {
    let handle = session.session_handle().clone();
    let heartbeat = Duration::from_millis(engine.config().heartbeat_ms);
    let mut ping_timer = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut read: ReadFuture = Box::pin(read_message(st));
    let until_expiry = |exp_ms: u64| Duration::from_millis(exp_ms.saturating_sub(now_ms()));
    let mut exp_ms = session.token_exp_ms();
    let expiry = tokio::time::sleep(until_expiry(exp_ms));
    tokio::pin!(expiry);
    // The welcome, queued by the handshake, is the first thing written;
    // after it, pushes write to the socket while the loop is idle.
    write.attach(&handle);
    write.start();
    let ending = loop {
        // Writing before reading: a client whose frames keep arriving must
        // still get its answers (the write branch yields between drains).
        tokio::select! {
            biased;
            _ = handle.outbox.notified() => {
                if let Some(close) = handle.outbox.close_now() {
                    break Ending::Now(Some(close)); // a slow consumer, counted by the outbox
                }
                write.start();
                // Written now, in this turn: the usual delivery (one frame,
                // a socket with room) needs no second turn of the loop,
                // which would poll every other branch again for nothing.
                // What the socket does not take now, the write branch
                // carries on with.
                let written = std::future::poll_fn(|cx| {
                    Poll::Ready(write.poll_write(cx, engine, &handle.outbox, handle.encoding))
                })
                .await;
                if let Poll::Ready(Err(e)) = written {
                    break Ending::Now(e.into_stop());
                }
            }
            _ = &mut expiry => {
                let _ = handle.send(&ServerFrame::error(None, ErrorCode::Unauthorized, "token expired"));
                break Ending::Drain(Close::TOKEN_EXPIRED);
            }
            _ = ping_timer.tick() => {
                if last_heard.elapsed() >= heartbeat * 2 {
                    break Ending::Now(Some(Close::HEARTBEAT_TIMEOUT));
                }
                write.ping();
            }
            written = std::future::poll_fn(|cx| write.poll_write(cx, engine, &handle.outbox, handle.encoding)),
                if write.is_busy() =>
            {
                if let Err(e) = written {
                    break Ending::Now(e.into_stop());
                }
            }
            (st, result) = &mut read => {
                last_heard = Instant::now();
                match result {
                    Ok(Incoming::Data(encoding, bytes)) => {
                        hot().frames_in_bytes.increment(bytes.len() as u64);
                        let flow = match decode_client(&bytes, encoding) {
                            Ok(frame) => Box::pin(session.handle(frame)).await,
                            Err(e) => {
                                hot().bad_frame_in();
                                session.fail(e.req(), Refusal::new(ErrorCode::BadFrame, e.to_string()))
                            }
                        };
                        if let Flow::Close(close) = flow {
                            break Ending::Drain(close);
                        }
                        if session.token_exp_ms() != exp_ms {
                            exp_ms = session.token_exp_ms();
                            expiry.as_mut().reset(tokio::time::Instant::now() + until_expiry(exp_ms));
                        }
                    }
                    Ok(Incoming::Control) => {}
                    Ok(Incoming::Close) => break Ending::Now(Some(Close::CLIENT_CLOSED)),
                    Err(ReadError::Gone) => break Ending::Now(None),
                    Err(ReadError::TooLarge) => break Ending::Now(Some(Close::FRAME_TOO_LARGE)),
                    Err(ReadError::Protocol) => break Ending::Now(Some(Close::PROTOCOL_ERROR)),
                }
                read = Box::pin(read_message(st));
            }
        }
    };
    drop(read);
    // Leaves its rooms (presence goes offline) and the directory now,
    // whatever the socket does next.
    drop(session);
    match ending {
        Ending::Now(stop) => stop,
        Ending::Drain(close) => {
            // The first close asked for wins (a slow consumer's, say).
            handle.outbox.close(close, true);
            write.start();
            let written =
                std::future::poll_fn(|cx| write.poll_write(cx, engine, &handle.outbox, handle.encoding)).await;
            match written {
                Ok(()) => Some(close),
                Err(e) => e.into_stop(),
            }
        }
    }
}
