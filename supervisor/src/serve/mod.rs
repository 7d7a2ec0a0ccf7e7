//! `tollgate serve`: the node service that unprivileged launchers call.
//!
//! (Module documentation: owner B1 writes it — the launch socket, who may launch what, the
//! worker process per execution, team policies from a directory, metrics, housekeeping,
//! shutdown.)

pub mod authorize;
pub mod fds;
pub mod metrics;
pub mod metrics_http;
pub mod node_config;
pub mod teams;
pub mod wire;

/// Runs the node service until SIGTERM; returns the process exit status.
pub fn run(args: crate::cli::serve::ServeArgs) -> i32 {
    let _ = args;
    eprintln!("tollgate: serve is being built");
    125
}
