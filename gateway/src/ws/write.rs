//! The write side of a connection: server frames framed by hand into one
//! buffer per drain of the outbox and written with one `write_all` — as
//! few syscalls as the queue allows, and no write buffer held while idle.
//! Replays are written here too, straight from the store at the pace the
//! socket takes them (never through the outbox, so a replay never counts
//! toward the slow-consumer limit).

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWriteExt;
use viche_engine::delivery::{OutItem, Outbox};
use viche_engine::metrics::{hot, CONNECTIONS_CLOSED, REPLAYED_MESSAGES};
use viche_engine::Engine;
use viche_protocol::{encode_server, Close, Encoding, ServerFrame};

use super::socket::SocketWriter;

/// Why a write loop must stop: with a close frame to send, or silently
/// when the socket is gone.
pub(super) type Stop = Option<Close>;

/// Appends one unmasked server frame to `buf`.
pub(super) fn append_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; 14];
    let size = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    buf.extend_from_slice(&head[..size]);
    buf.extend_from_slice(payload);
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

/// Sends the close frame, shuts the write side, and counts the close.
pub(super) async fn write_close(writer: &mut SocketWriter, close: Close) {
    let mut buf = Vec::new();
    append_frame(&mut buf, OpCode::Close, &close_payload(close));
    let _ = writer.write_all(&buf).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    CONNECTIONS_CLOSED.counter_with(close.code.label()).increment(1);
}

/// A connection that ended without a close frame from us (the peer went
/// away, or the socket failed): every accepted connection is counted in
/// `viche_connections_closed_total` exactly once, by `write_close` or here.
pub(crate) fn count_closed_without_code() {
    CONNECTIONS_CLOSED.counter_with("none").increment(1);
}

/// Ends the connection as `stop` says.
pub(super) async fn finish(writer: &mut SocketWriter, stop: Stop) {
    match stop {
        Some(close) => write_close(writer, close).await,
        None => count_closed_without_code(),
    }
}

/// One data frame (an `error` before a refusal's close), then the close.
pub(super) async fn write_data_then_close(writer: &mut SocketWriter, encoding: Encoding, frame: &[u8], close: Close) {
    let mut buf = Vec::new();
    append_frame(&mut buf, data_opcode(encoding), frame);
    let _ = writer.write_all(&buf).await;
    write_close(writer, close).await;
}

/// A WebSocket ping; `Err` when the socket is gone.
pub(super) async fn write_ping(writer: &mut SocketWriter) -> std::io::Result<()> {
    let mut buf = Vec::new();
    append_frame(&mut buf, OpCode::Ping, b"");
    writer.write_all(&buf).await
}

/// Writes everything queued in the outbox. `Err` means: stop the session,
/// closing as it says.
pub(super) async fn flush_outbox(
    engine: &Engine,
    outbox: &Outbox,
    encoding: Encoding,
    writer: &mut SocketWriter,
) -> Result<(), Stop> {
    let mut items = Vec::new();
    loop {
        items.clear();
        let close = outbox.drain(&mut items);
        if items.is_empty() {
            return match close {
                Some(close) => Err(Some(close)),
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
        // After a drain-first close (shutdown), the next turn finds the
        // outbox empty and returns the close.
    }
}

async fn write_buf(writer: &mut SocketWriter, buf: &mut Vec<u8>) -> Result<(), Stop> {
    if buf.is_empty() {
        return Ok(());
    }
    let result = writer.write_all(buf).await;
    hot().frames_out_bytes.increment(buf.len() as u64);
    buf.clear();
    result.map_err(|_| None)
}

/// Writes stored messages `after < seq <= upto` oldest first, a page at a
/// time, at the pace the socket takes them.
async fn replay(
    engine: &Engine,
    room: &str,
    mut after: u64,
    upto: u64,
    encoding: Encoding,
    writer: &mut SocketWriter,
) -> Result<(), Stop> {
    while after < upto {
        let page = match engine.replay_page(room, after, upto).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, room, "replay read failed; closing so the client rejoins");
                return Err(Some(Close::REPLAY_UNAVAILABLE));
            }
        };
        let Some(last) = page.last() else { break };
        let next_after = last.seq;
        let mut buf = Vec::new();
        hot().msgs_out(page.len());
        for msg in page {
            append_frame(&mut buf, data_opcode(encoding), &encode_server(&ServerFrame::Msg(msg), encoding));
        }
        REPLAYED_MESSAGES.counter().increment((next_after - after).min(upto - after));
        write_buf(writer, &mut buf).await?;
        after = next_after;
    }
    Ok(())
}
