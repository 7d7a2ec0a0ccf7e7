//! tollgate's supervisor library: the CLI commands, the sandbox runtime and the egress proxy.
//!
//! The binary in `main.rs` is thin glue over this library, so tests and embedders can drive
//! every piece in-process.

pub mod audit;
pub mod cli;
pub mod dns;
pub mod host_addresses;
pub mod logging;
pub mod proxy;
pub mod quota;
pub mod resolve;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod team_rules;
