//! The Viche engine: the domain and its actors, no HTTP.
//!
//! [`Engine`] (`engine.rs`) is the one front door: every transport (the
//! gateway's HTTP API and WebSocket loop, the tests, the benches) goes
//! through it, and none reaches past it into the store or the actors.
//!
//! Read in this order:
//! - `engine.rs`: the front door; `services.rs`: the parts it wires up;
//!   `supervisor.rs`: the root of the supervision tree; `health.rs`:
//!   readiness and giving up; `faults.rs`: the failpoints.
//! - `accounts/`: register, login, tokens, passwords, login limits.
//! - `session/`: one connection's frames, after `welcome`.
//! - `room/`: a room's handle, its actor, and their supervisor.
//! - `writer.rs`: group commit into the store, then publish and ack.
//! - `store/`: the `Store` trait and its two implementations.
//! - `delivery/`: how frames reach a session (handle, outbox, directory).
//! - `history.rs`: who may read a room, and its pages.
//! - `retention.rs`: the store's upkeep (retention, its gauges);
//!   `admin.rs`: an operator's requests (stats, deleting a user, purging
//!   a room, backups).
//! - `metrics.rs`: every metric, declared once.

pub mod accounts;
pub mod address;
pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
mod engine;
mod faults;
mod health;
mod history;
pub mod metrics;
pub mod refusal;
pub mod retention;
mod room;
mod services;
pub mod session;
pub mod store;
mod supervisor;
mod writer;

pub use accounts::{Credentials, IssuedToken, VerifiedToken};
pub use config::EngineConfig;
pub use engine::{Engine, HistoryPage};
pub use refusal::Refusal;
pub use session::{Flow, Session};
