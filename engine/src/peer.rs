//! A connected, authenticated session as the rest of the engine sees it:
//! who it is, how it encodes, and where to put its frames.

use std::sync::Arc;

use bytes::Bytes;
use viche_protocol::{encode_server, Encoding, ServerFrame};

use crate::outbox::{Outbox, PushError};

pub type SessionId = u64;

pub struct Peer {
    pub id: SessionId,
    pub user: Arc<str>,
    pub encoding: Encoding,
    pub outbox: Outbox,
}

impl Peer {
    /// Encodes one frame for this peer and queues it. For frames sent to
    /// many peers, encode once and use `outbox.push` instead.
    pub fn send(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.outbox.push(encode_server(frame, self.encoding))?;
        crate::metrics::hot().frames_out(frame, 1);
        Ok(())
    }

    /// Queues a frame already encoded once per encoding. The caller counts
    /// it in `viche_frames_out_total` (once for all recipients).
    pub fn send_shared(&self, frame: &EncodedFrame) -> Result<(), PushError> {
        self.outbox.push(frame.for_encoding(self.encoding))
    }
}

/// One frame encoded at most once per encoding in use, shared by every
/// recipient (`Bytes` clones are a reference-count increment).
pub struct EncodedFrame {
    pub msgpack: Bytes,
    pub json: Option<Bytes>,
}

impl EncodedFrame {
    pub fn new(frame: &ServerFrame, with_json: bool) -> Self {
        Self {
            msgpack: encode_server(frame, Encoding::MsgPack),
            json: with_json.then(|| encode_server(frame, Encoding::Json)),
        }
    }

    pub fn for_encoding(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::MsgPack => self.msgpack.clone(),
            // `with_json` was false only when no JSON peer is a recipient.
            Encoding::Json => self.json.clone().unwrap_or_default(),
        }
    }
}
