//! A session as the rest of the engine sees it: who it is, how it
//! encodes, and where to put its frames. Rooms hold one per member, the
//! writer one per sender (for the `ack`), the directory one per session.

use std::sync::Arc;

use viche_protocol::{encode_server, Encoding, ServerFrame};

use super::encoded::EncodedFrame;
use super::outbox::{Outbox, PushError};

pub type SessionId = u64;

pub struct SessionHandle {
    pub id: SessionId,
    pub user: Arc<str>,
    pub encoding: Encoding,
    pub outbox: Outbox,
}

impl SessionHandle {
    /// Encodes one frame for this session and pushes it (written at once
    /// when the connection is idle, else queued). For frames sent to many
    /// sessions, encode once and use `send_shared` instead.
    pub fn send(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.outbox.push(&encode_server(frame, self.encoding), true)?;
        crate::metrics::hot().frames_out(frame, 1);
        Ok(())
    }

    /// Queues a frame already encoded once per encoding (or, `write_now`,
    /// writes it to an idle connection's socket: see
    /// [`super::outbox::DIRECT_WRITES_PER_FANOUT_MAX`]). The caller counts
    /// it in `viche_frames_out_total` (once for all recipients).
    pub fn send_shared(&self, frame: &EncodedFrame, write_now: bool) -> Result<(), PushError> {
        self.outbox.push(frame.for_encoding(self.encoding), write_now)
    }
}
