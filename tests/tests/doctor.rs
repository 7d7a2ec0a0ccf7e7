//! `tollgate doctor` builds every wall for real on scratch objects, then runs a command in a
//! whole sandbox, and reports each check. On this host (the one the suite needs) all pass.
//! It also reports the kernel sysctls the seccomp filter makes irrelevant, with their values.
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

#[test]
fn doctor_reports_the_kernel_sysctls_without_depending_on_them() {
    let _lock = SuiteLock::shared();
    let finished = output(tollgate().arg("doctor"), None, HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    for (sysctl, path) in [
        (
            "kernel.unprivileged_bpf_disabled",
            "/proc/sys/kernel/unprivileged_bpf_disabled",
        ),
        (
            "kernel.perf_event_paranoid",
            "/proc/sys/kernel/perf_event_paranoid",
        ),
        (
            "vm.unprivileged_userfaultfd",
            "/proc/sys/vm/unprivileged_userfaultfd",
        ),
        ("dev.tty.legacy_tiocsti", "/proc/sys/dev/tty/legacy_tiocsti"),
        (
            "user.max_user_namespaces",
            "/proc/sys/user/max_user_namespaces",
        ),
    ] {
        let value = std::fs::read_to_string(path).expect("the sysctl exists on this host");
        let line = finished
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("ok    {sysctl}: ")))
            .unwrap_or_else(|| panic!("`{sysctl}` is reported: {}", finished.stdout));
        assert!(
            line.starts_with(&format!("ok    {sysctl}: {} ", value.trim())),
            "`{sysctl}` is reported with its value {}: {line}",
            value.trim()
        );
        assert!(
            line.contains("tollgate does not depend on it"),
            "the report of `{sysctl}` says tollgate does not depend on it: {line}"
        );
    }
}
