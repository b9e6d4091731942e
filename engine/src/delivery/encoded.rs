//! A frame encoded at most once per encoding in use, shared by every
//! recipient: the encode-once half of fan-out.

use bytes::Bytes;
use viche_protocol::{encode_server, Encoding, ServerFrame};

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

    /// The bytes for `encoding`, borrowed: a push clones them only when
    /// it queues them (most are written to the socket at once).
    pub fn for_encoding(&self, encoding: Encoding) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match encoding {
            Encoding::MsgPack => &self.msgpack,
            // `with_json` was false only when no JSON peer is a recipient.
            Encoding::Json => self.json.as_ref().unwrap_or(&EMPTY),
        }
    }
}
