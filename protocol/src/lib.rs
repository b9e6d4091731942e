//! The Viche wire protocol, version 1, as typed Rust.
//!
//! This crate exists so that the server, the Rust client and the load
//! generator share one definition of every frame, limit and error code, and
//! so that decoding untrusted bytes lives in one place that can be fuzzed.
//! It does no I/O.

pub mod codec;
pub mod errors;
pub mod frames;
pub mod limits;
pub mod validate;

pub use codec::{decode_client, decode_server, encode_client, encode_server, DecodeError, Encoding};
pub use errors::{Close, CloseCode, ErrorCode};
pub use frames::{ClientFrame, Conversation, Msg, MsgKind, ServerFrame, FEATURES};

/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;
