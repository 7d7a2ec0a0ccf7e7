//! tollgate's team policy: the schema, its validation, URL and IP rules, and every decision.
//!
//! Pure functions and types: no sockets, no threads. The supervisor's proxy asks this crate
//! whether a request may leave, and which addresses it may be dialed at.

pub mod ip;
pub mod url;
