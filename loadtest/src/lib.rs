//! viche-load: the load generator of Viche (`src/main.rs` is the binary;
//! `docs/benchmarks.md`, "viche-load", says how to run it and what it
//! found). The modules are a library so that tests reach them.

pub mod cli;
pub mod clock;
pub mod floor;
pub mod hist;
pub mod hostile;
pub mod live;
pub mod login;
pub mod mix;
pub mod net;
pub mod plot;
pub mod rawws;
pub mod report;
pub mod run;
pub mod server;
pub mod soak;
pub mod tables;
pub mod traffic;
