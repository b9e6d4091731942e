//! The cluster (issue 14) against real parts: a real `nats-server`
//! (`common::Nats`), FerretDB standing in for MongoDB (started by
//! scripts/test.sh), and real `viche` processes on loopback ports.
//!
//! - `membership.rs`: nodes find each other over NATS and drop the silent.
//! - `rooms.rs`: a room's members spread over three nodes.
//!
//! The tests that need MongoDB skip outside CI when scripts/test.sh did
//! not start FerretDB (as `../mongo.rs` does); under CI they fail instead.

#[path = "../common/mod.rs"]
mod common;

mod membership;
mod rooms;
