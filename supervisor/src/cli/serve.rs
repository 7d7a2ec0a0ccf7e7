//! STUB (owner B1): `tollgate serve`'s arguments.
use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {}
