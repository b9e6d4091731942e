//! The end-to-end suite: one test binary, one module per area of
//! docs/protocol.md. Every test starts its own real `viche` process (see the
//! harness in `../common/mod.rs`) and speaks the real protocol to it, so
//! the tests share nothing but this process, and run in parallel.
//!
//! Sharing one process is safe for all of them: no test changes
//! process-wide state (environment, current directory, limits, signal
//! handlers). `emfile` lowers the open-files limit of its server only (the
//! harness runs `ulimit -n` in the child's shell before `exec`), and
//! `crash` kills and signals only its own servers, by pid.
//!
//! The tests that need an outside service are binaries of their own beside
//! this one, on the same harness: `../mongo.rs` (MongoDB, i.e. FerretDB)
//! and `../prometheus.rs` (a real Prometheus). scripts/test.sh runs this
//! suite twice: on the embedded store, then with every server on MongoDB.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod admin;
mod auth_http;
mod conversations;
mod crash;
mod dm;
mod emfile;
mod events;
mod fairness;
// Needs a server built with the `failpoints` feature (scripts/test.sh builds it so).
#[cfg(feature = "failpoints")]
mod faults;
mod history;
mod hostile;
mod limits;
mod memory;
mod retention;
mod rooms;
mod session;
mod web_client;
