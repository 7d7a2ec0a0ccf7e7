//! tollgate's team policy: the schema, its validation, URL and IP rules, and every decision.
//!
//! Pure functions and types: no sockets, no threads. The supervisor's proxy asks this crate
//! whether a request may leave, and at which addresses it may be dialed. Reading order:
//! [`schema`] (the YAML) → [`validate`] → [`model`] → [`url`] and [`ip`] (the parsers and the
//! address classes) → [`decision`] (the pipeline) → `verdict.rs` (the verdict, specified by
//! `rego/tollgate.rego`).

pub mod decision;
pub mod error;
pub mod filesystem;
pub mod host_addresses;
pub mod ip;
mod load;
pub mod locate;
mod matcher;
pub mod model;
pub mod path_readings;
pub mod quotas;
pub mod rego;
pub mod request;
pub mod sandbox_env;
pub mod schema;
pub mod secrets;
pub mod units;
pub mod url;
pub mod validate;
mod verdict;
pub mod yaml_limits;

pub use decision::{Decision, Destination, Reason, Request};
pub use error::{PolicyError, PolicyErrors};
pub use host_addresses::HostAddresses;
pub use load::Policy;
pub use rego::{TeamEvaluator, TeamModule, TeamOutcome, TeamRego};
pub use request::{check_method, MethodError};
