//! An async Rust client of the Viche wire protocol, version 1.
//!
//! Two halves, both bounded by timeouts and free of panics:
//!
//! - [`http`]: the HTTP API (`register`, `login`, the history endpoint), plus
//!   raw requests for tests that send malformed input.
//! - [`token`]: minting a token with the server's secret (load, tests).
//! - [`ws`]: a WebSocket [`Connection`] speaking MessagePack or JSON frames,
//!   with request helpers (`join`, `send`, `history`, …) that allocate `ref`s
//!   and wait for the matching reply while buffering, in order, every other
//!   frame that arrives meanwhile (`msg`, `presence`, `typing`, …), so that
//!   none is lost.
//!
//! ```no_run
//! # async fn demo() -> Result<(), viche_client::ClientError> {
//! use viche_client::{http, Connection, Encoding};
//! use std::time::Duration;
//!
//! let auth = http::register("http://127.0.0.1:8080", "alice", "correct horse").await?;
//! let mut conn = Connection::open("ws://127.0.0.1:8080/ws", &auth.token, Encoding::MsgPack).await?;
//! let joined = conn.join("lobby", None).await?;
//! let ack = conn.send("lobby", "hello", "c-1").await?;
//! let msg = conn.recv_msg(Duration::from_secs(5)).await?;
//! assert_eq!((msg.seq, joined.room.as_str()), (ack.seq, "lobby"));
//! conn.close().await?;
//! # Ok(()) }
//! ```
//!
//! The crate is used by the end-to-end tests (so it also lets a caller send
//! raw bytes and observe every frame and close code) and by the load
//! generator.

pub mod error;
pub mod http;
pub mod token;
pub mod ws;

pub use error::{ApiError, ClientError, CloseInfo};
pub use http::{history_http, login, register, AuthOk, ConversationsHttp, HistoryPage, HttpClient, RawResponse};
pub use ws::{Ack, Connection, ConversationsPage, Event, JoinOk, Welcome, DEFAULT_TIMEOUT};

pub use viche_protocol::{ClientFrame, Conversation, Encoding, ErrorCode, Msg, MsgKind, ServerFrame};

/// The result type of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
