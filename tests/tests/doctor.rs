//! `tollgate doctor` builds every wall for real on scratch objects, then runs a command in a
//! whole sandbox, and reports each check. On this host (the one the suite needs) all pass.
//!
//! Needs root.

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, HANG_LIMIT},
    tollgate,
};

#[test]
fn doctor_passes_every_check_here_including_a_whole_sandbox() {
    let _lock = SuiteLock::shared();
    let finished = output(tollgate().arg("doctor"), None, HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let lines: Vec<&str> = finished.stdout.lines().collect();
    for check in [
        "privileges",
        "cgroup v2",
        "eBPF cgroup programs",
        "network namespace + nftables",
        "sandbox user",
        "a command in a whole sandbox",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("ok    {check}:"))),
            "`{check}` passed: {}",
            finished.stdout
        );
    }
    assert!(!finished.stdout.contains("FAIL"), "{}", finished.stdout);
}
