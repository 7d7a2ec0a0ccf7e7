//! STUB (owner A): the worker side of the node service — one execution launched by `tollgate
//! serve`, its options and policy read from descriptor 3.

/// `tollgate __execution`: runs the execution the service sent on descriptor 3.
pub fn worker_main() -> i32 {
    eprintln!("tollgate: __execution is being built");
    125
}
