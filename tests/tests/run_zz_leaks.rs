//! The last word of the sandbox suites: once no sandbox test runs, the host holds no
//! execution cgroup (in cgroup v2 or in a v1 hierarchy of the limits), no named network
//! namespace, no pinned eBPF link, and no process in a `tollgate/<id>` cgroup.
//!
//! Every other sandbox test holds the suite lock shared; this one takes it exclusively, so it
//! looks at the host between executions whether tests run as threads (`cargo test`, which
//! runs this binary after the others) or as processes (`cargo nextest`). Each test also
//! checks its own executions by id as it goes.
//!
//! Needs root.

use tollgate_tests::leaks::{leftovers, SuiteLock};

#[test]
fn nothing_is_left_behind() {
    let _lock = SuiteLock::exclusive();
    let problems = leftovers();
    assert!(
        problems.is_empty(),
        "sandbox executions left things behind:\n{}",
        problems.join("\n")
    );
}
