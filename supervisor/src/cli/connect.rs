//! STUB (owner B2): `tollgate run --connect SOCKET`, the caller's side of the node service.

/// TEMPORARY (added by A so `cli::run` can dispatch; B2 replaces this file).
pub fn run(socket: &std::path::Path, args: super::run::RunArgs) -> i32 {
    let _ = args;
    eprintln!(
        "tollgate: cannot reach the node service at {}: --connect is being built",
        socket.display()
    );
    crate::run::status::TOLLGATE_ERROR
}
