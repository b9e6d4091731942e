//! The `hello` handshake: the first data frame must be a `hello` with a
//! version we speak and a valid token, within `--hello-timeout-ms`; then
//! the engine opens the session and `welcome` is queued. Anything else is
//! answered and closed as docs/protocol.md, "Session lifecycle", says.

use std::time::Duration;

use viche_engine::metrics::{hot, AUTH_FAILURES};
use viche_engine::{Engine, Session};
use viche_protocol::{decode_client, encode_server, ClientFrame, Close, ErrorCode, ServerFrame, PROTOCOL_VERSION};

use super::read::{read_until_data, Incoming, ReadError, ReadState};
use super::write::{count_closed_without_code, WriteSide};

/// The session and the read state, or `None` when the connection was
/// closed (and counted) here.
pub(super) async fn handshake(engine: &Engine, st: ReadState, write: &mut WriteSide) -> Option<(Session, ReadState)> {
    let timeout = Duration::from_millis(engine.config().hello_timeout_ms);
    let (st, first) = match tokio::time::timeout(timeout, read_until_data(st)).await {
        Err(_) => {
            write.close(Some(Close::HELLO_TIMEOUT)).await;
            return None;
        }
        Ok(r) => r,
    };
    let (encoding, bytes) = match first {
        Ok(Incoming::Data(e, b)) => (e, b),
        Ok(_) | Err(ReadError::Gone) => {
            count_closed_without_code();
            return None;
        }
        Err(ReadError::TooLarge) => {
            write.close(Some(Close::FRAME_TOO_LARGE)).await;
            return None;
        }
        Err(ReadError::Protocol) => {
            write.close(Some(Close::PROTOCOL_ERROR)).await;
            return None;
        }
    };
    let reject = |code: ErrorCode, message: &str| {
        let frame = ServerFrame::error(None, code, message);
        hot().frames_out(&frame, 1);
        encode_server(&frame, encoding)
    };
    let hello = decode_client(&bytes, encoding);
    hot().frames_in_bytes.increment(bytes.len() as u64);
    match &hello {
        Ok(frame) => hot().frame_in(frame),
        Err(_) => hot().bad_frame_in(),
    }
    let (v, token) = match hello {
        Ok(ClientFrame::Hello { v, token }) => (v, token),
        _ => {
            AUTH_FAILURES.counter_with("no_hello").increment(1);
            let frame = reject(ErrorCode::Unauthorized, "the first frame must be hello");
            write.refuse(encoding, &frame, Close::UNAUTHORIZED).await;
            return None;
        }
    };
    if v != PROTOCOL_VERSION {
        let frame = reject(ErrorCode::Invalid, "unsupported protocol version; this server speaks v=1");
        write.refuse(encoding, &frame, Close::UNSUPPORTED_VERSION).await;
        return None;
    }
    let verified = match engine.authenticate(&token) {
        Ok(verified) => verified,
        Err(refusal) => {
            let frame = reject(refusal.code, &refusal.message);
            write.refuse(encoding, &frame, Close::UNAUTHORIZED).await;
            return None;
        }
    };
    let session = match engine.open_session(&verified.user, encoding, verified.exp_ms).await {
        Ok(session) => session,
        Err(refusal) => {
            let frame = reject(refusal.code, &refusal.message);
            // A deleted account (barred meanwhile) is unauthorized; else too many sessions.
            let close = match refusal.code {
                ErrorCode::Unauthorized => Close::UNAUTHORIZED,
                _ => Close::TOO_MANY_SESSIONS,
            };
            write.refuse(encoding, &frame, close).await;
            return None;
        }
    };
    let handle = session.session_handle().clone();
    let config = engine.config();
    let welcome = ServerFrame::Welcome {
        v: PROTOCOL_VERSION,
        session: handle.id.to_string(),
        user: verified.user,
        heartbeat_ms: config.heartbeat_ms,
        max_frame: config.frame_bytes_max as u64,
        max_body: config.body_bytes_max as u64,
        features: viche_protocol::FEATURES.iter().map(|f| f.to_string()).collect(),
    };
    let _ = handle.send(&welcome);
    let mut st = st;
    st.pong_to = Some(handle);
    Some((session, st))
}
