//! One WebSocket connection: the `hello` handshake (`handshake.rs`), then
//! a single task that reads frames into the session (`read.rs`) and
//! writes the session's outbox out (`write.rs`), over the two halves of
//! the socket (`socket.rs`).
//!
//! One task per connection (not a reader and a writer task) keeps an idle
//! session small, and so does dropping fastwebsockets' reader whenever it
//! holds no unread bytes (see `read.rs`). Rarely awaited futures (the
//! handshake, frame handling, flushes, replays) are boxed, so the
//! connection task's own future stays small while it idles.

mod handshake;
mod read;
mod socket;
mod write;

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use viche_engine::clock::now_ms;
use viche_engine::metrics::{hot, CONNECTIONS_OPEN};
use viche_engine::{Engine, Flow, Refusal, Session};
use viche_protocol::{decode_client, Close, ErrorCode, ServerFrame};

use read::{read_message, Incoming, ReadError, ReadState};
use socket::SocketWriter;
pub(crate) use write::count_closed_without_code;
use write::{finish, flush_outbox, write_close, write_ping, Stop};

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
    CONNECTIONS_OPEN.gauge().increment(1.0);
    let stream = Arc::new(parts.io.into_inner());
    let mut writer = SocketWriter::new(stream.clone());
    let st = ReadState::new(stream.clone(), parts.read_buf, engine.config().frame_bytes_max);
    if let Some((session, st)) = Box::pin(handshake::handshake(&engine, st, &mut writer)).await {
        // A panic in the session (handling a frame, say) unwinds to here:
        // the session's Drop has already left its rooms and the directory
        // and reported the failure to the session supervisor; the client
        // is told with 1011 and may reconnect and resume with `since`.
        let run = AssertUnwindSafe(run_session(&engine, session, st, writer)).catch_unwind();
        if Box::pin(run).await.is_err() {
            write_close(&mut SocketWriter::new(stream), Close::SESSION_FAILED).await;
        }
    }
    CONNECTIONS_OPEN.gauge().decrement(1.0);
}

type ReadFuture = Pin<Box<dyn std::future::Future<Output = (ReadState, Result<Incoming, ReadError>)> + Send>>;

/// The session's life after `welcome`: frames in, outbox out, heartbeat,
/// token expiry, until one of them ends it.
async fn run_session(engine: &Engine, mut session: Session, st: ReadState, mut writer: SocketWriter) {
    let handle = session.session_handle().clone();
    let heartbeat = Duration::from_millis(engine.config().heartbeat_ms);
    let mut ping_timer = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut read: ReadFuture = Box::pin(read_message(st));
    // Write the welcome before anything else can be read.
    if let Err(stop) = flush_outbox(engine, &handle.outbox, handle.encoding, &mut writer).await {
        finish(&mut writer, stop).await;
        return;
    }
    let stop: Stop = loop {
        let exp_in = Duration::from_millis(session.token_exp_ms().saturating_sub(now_ms()));
        tokio::select! {
            biased;
            _ = handle.outbox.notified() => {
                if let Err(stop) = Box::pin(flush_outbox(engine, &handle.outbox, handle.encoding, &mut writer)).await {
                    break stop;
                }
            }
            _ = tokio::time::sleep(exp_in) => {
                let _ = handle.send(&ServerFrame::error(None, ErrorCode::Unauthorized, "token expired"));
                let _ = flush_outbox(engine, &handle.outbox, handle.encoding, &mut writer).await;
                break Some(Close::TOKEN_EXPIRED);
            }
            _ = ping_timer.tick() => {
                if last_heard.elapsed() >= heartbeat * 2 {
                    break Some(Close::HEARTBEAT_TIMEOUT);
                }
                if write_ping(&mut writer).await.is_err() {
                    break None;
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
                            // Write the error that caused it first.
                            let _ = flush_outbox(engine, &handle.outbox, handle.encoding, &mut writer).await;
                            break Some(close);
                        }
                    }
                    Ok(Incoming::Control) => {}
                    Ok(Incoming::Close) => break Some(Close::CLIENT_CLOSED),
                    Err(ReadError::Gone) => break None,
                    Err(ReadError::TooLarge) => break Some(Close::FRAME_TOO_LARGE),
                    Err(ReadError::Protocol) => break Some(Close::PROTOCOL_ERROR),
                }
                read = Box::pin(read_message(st));
            }
        }
    };
    drop(read);
    drop(session); // leaves rooms and the directory before the socket closes
    finish(&mut writer, stop).await;
}
