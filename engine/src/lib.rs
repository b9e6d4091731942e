//! The Viche engine: actors and domain, no HTTP.
//!
//! Read in this order: `engine` (wiring), `session` (a connection's
//! frames), `room` and `rooms` (fan-out and supervision), `writer` (group
//! commit), `store` (durability), `outbox` (bounded delivery).

pub mod auth;
pub mod config;
pub mod directory;
pub mod engine;
pub mod metrics;
pub mod outbox;
pub mod peer;
pub mod ratelimit;
pub mod room;
pub mod rooms;
pub mod session;
pub mod store;
pub mod writer;

pub use config::EngineConfig;
pub use engine::Engine;
pub use session::{Flow, Session};
