//! MessagePack and JSON encodings of frames (docs/protocol.md, "WebSocket
//! transport").
//!
//! Decoding takes untrusted bytes from the network: it must never panic,
//! whatever the input (proptest and a cargo-fuzz target check this).

use bytes::Bytes;
use serde::Deserialize;

use crate::frames::{ClientFrame, ServerFrame};

/// The encoding of a session, fixed by the encoding of its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// WebSocket binary messages, one MessagePack map each.
    MsgPack,
    /// WebSocket text messages, one JSON object each.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame does not decode: {reason}")]
    Malformed {
        reason: String,
        /// The `ref` found in the frame, so the error can echo it.
        req: Option<u64>,
    },
}

impl DecodeError {
    pub fn req(&self) -> Option<u64> {
        match self {
            DecodeError::Malformed { req, .. } => *req,
        }
    }
}

/// Only looked at when a frame fails to decode: recovers its `ref`.
#[derive(Deserialize)]
struct RefProbe {
    #[serde(rename = "ref")]
    req: Option<u64>,
}

pub fn decode_client(bytes: &[u8], encoding: Encoding) -> Result<ClientFrame, DecodeError> {
    decode(bytes, encoding)
}

pub fn decode_server(bytes: &[u8], encoding: Encoding) -> Result<ServerFrame, DecodeError> {
    decode(bytes, encoding)
}

/// How deeply a MessagePack frame may nest, as serde_json's limit for JSON.
/// A frame needs 3 (frame, `messages`, msg). rmp-serde's default of 1024 let a
/// 1 KB frame of nested arrays under an unknown key overflow a 2 MiB stack
/// (a tokio worker's) in a debug build: an abort, not an error.
const MSGPACK_MAX_DEPTH: usize = 128;

fn from_msgpack<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MSGPACK_MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Whether the frame is a map (an object), as the contract requires: serde
/// would also take an internally tagged enum from a sequence such as
/// `["ping", 7]`, which is not a frame.
fn is_map(bytes: &[u8], encoding: Encoding) -> bool {
    match encoding {
        Encoding::MsgPack => matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
        Encoding::Json => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], encoding: Encoding) -> Result<T, DecodeError> {
    if !is_map(bytes, encoding) {
        return Err(DecodeError::Malformed { reason: "a frame must be a map".into(), req: None });
    }
    let result = match encoding {
        Encoding::MsgPack => from_msgpack::<T>(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice::<T>(bytes).map_err(|e| e.to_string()),
    };
    result.map_err(|reason| {
        let req = match encoding {
            Encoding::MsgPack => from_msgpack::<RefProbe>(bytes).ok(),
            Encoding::Json => serde_json::from_slice::<RefProbe>(bytes).ok(),
        }
        .and_then(|p| p.req);
        DecodeError::Malformed { reason, req }
    })
}

pub fn encode_server(frame: &ServerFrame, encoding: Encoding) -> Bytes {
    encode(frame, encoding)
}

pub fn encode_client(frame: &ClientFrame, encoding: Encoding) -> Bytes {
    encode(frame, encoding)
}

fn encode<T: serde::Serialize>(frame: &T, encoding: Encoding) -> Bytes {
    // Our frames hold only strings, integers, bools and vectors of those,
    // which both encoders always accept.
    match encoding {
        Encoding::MsgPack => rmp_serde::to_vec_named(frame).expect("frame encodes as MessagePack").into(),
        Encoding::Json => serde_json::to_vec(frame).expect("frame encodes as JSON").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, Msg};

    fn msg() -> Msg {
        Msg {
            room: "r".into(),
            seq: 7,
            from: "alice".into(),
            body: "hi".into(),
            cid: "c1".into(),
            ts: 123,
            ..Msg::default()
        }
    }

    #[test]
    fn a_frame_that_is_not_a_map_is_malformed() {
        for (bytes, encoding) in [
            (&b"[\"ping\",7]"[..], Encoding::Json),
            (&b" \"ping\""[..], Encoding::Json),
            (&b"7"[..], Encoding::Json),
            (&rmp_serde::to_vec(&("ping", 7u64)).unwrap()[..], Encoding::MsgPack),
        ] {
            assert!(decode_client(bytes, encoding).is_err(), "{bytes:?}");
        }
        assert!(decode_client(b" {\"t\":\"ping\",\"ref\":7}", Encoding::Json).is_ok());
        let map = encode_client(&ClientFrame::Ping { req: 7 }, Encoding::MsgPack);
        assert_eq!(decode_client(&map, Encoding::MsgPack).unwrap(), ClientFrame::Ping { req: 7 });
    }

    #[test]
    fn msg_frame_is_flat_with_t() {
        let json = encode_server(&ServerFrame::Msg(msg()), Encoding::Json);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["t"], "msg");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["from"], "alice");
    }

    #[test]
    fn history_messages_carry_t() {
        let f = ServerFrame::History { req: 3, room: "r".into(), messages: vec![msg()], more: false };
        let v: serde_json::Value = serde_json::from_slice(&encode_server(&f, Encoding::Json)).unwrap();
        assert_eq!(v["messages"][0]["t"], "msg");
        for enc in [Encoding::Json, Encoding::MsgPack] {
            assert_eq!(decode_server(&encode_server(&f, enc), enc).unwrap(), f);
        }
    }

    #[test]
    fn msgpack_is_a_map_with_string_keys() {
        let bytes = encode_server(&ServerFrame::Pong { req: 9 }, Encoding::MsgPack);
        // fixmap with 2 entries, first key "t".
        assert_eq!(bytes[0], 0x82);
        assert_eq!(&bytes[1..3], &[0xa1, b't']);
    }

    #[test]
    fn error_echoes_ref_and_omits_it_when_absent() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_server(&ServerFrame::error(None, ErrorCode::BadFrame, "x"), Encoding::Json))
                .unwrap();
        assert!(v.get("ref").is_none());
        assert_eq!(v["code"], "bad_frame");
    }

    #[test]
    fn unknown_keys_are_ignored_and_unknown_t_rejected() {
        let f = decode_client(br#"{"t":"ping","ref":5,"extra":[1,2]}"#, Encoding::Json).unwrap();
        assert_eq!(f, ClientFrame::Ping { req: 5 });
        let e = decode_client(br#"{"t":"nope","ref":6}"#, Encoding::Json).unwrap_err();
        assert_eq!(e.req(), Some(6));
        assert!(decode_client(b"[1,2]", Encoding::Json).is_err());
        assert!(decode_client(b"\xc1", Encoding::MsgPack).is_err());
    }

    #[test]
    fn wrong_field_type_is_malformed_with_ref() {
        let e = decode_client(br#"{"t":"join","ref":8,"room":5}"#, Encoding::Json).unwrap_err();
        assert_eq!(e.req(), Some(8));
    }
}
