//! `tollgate gc` and `tollgate doctor`: the operator's commands.

use crate::sandbox::{doctor, gc};

/// Removes what killed supervisors left behind (see `sandbox::gc`).
pub fn gc() -> i32 {
    let collected = match gc::everything() {
        Ok(collected) => collected,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return 125;
        }
    };
    let report = &collected.cgroups;
    for path in &report.removed {
        super::print(&format!(
            "removed stale execution cgroup {}",
            path.display()
        ));
    }
    for (path, why) in &report.failed {
        eprintln!("tollgate: cannot remove {}: {why}", path.display());
    }
    let mut status = if report.failed.is_empty() { 0 } else { 1 };
    if collected.leases > 0 {
        super::print(&format!(
            "removed {} abandoned user leases",
            collected.leases
        ));
    }
    if collected.runtime_dirs > 0 {
        super::print(&format!(
            "removed {} runtime directories of dead executions",
            collected.runtime_dirs
        ));
    }
    match &collected.registrations {
        Some(Ok(n)) if *n > 0 => {
            super::print(&format!("removed {n} stale eBPF event registrations"))
        }
        Some(Err(error)) => {
            eprintln!("tollgate: {error}");
            status = 1;
        }
        _ => {}
    }
    for path in &collected.pins {
        super::print(&format!(
            "removed abandoned pin directory {}",
            path.display()
        ));
    }
    super::print(&format!(
        "gc: {} removed, {} still running, {} failed",
        report.removed.len(),
        report.live.len(),
        report.failed.len()
    ));
    status
}

/// Every check `tollgate doctor` makes: each wall on scratch objects, then a command in a
/// whole sandbox. `tollgate serve` makes the same checks before it serves.
pub fn doctor_checks() -> Vec<doctor::Check> {
    let mut checks = doctor::run_checks();
    checks.push(doctor::Check {
        name: "a command in a whole sandbox",
        result: whole_sandbox(),
    });
    checks
}

/// Prints each check with `ok` or `FAIL` and the fix; exits 1 if any failed.
pub fn doctor() -> i32 {
    let mut failed = 0;
    for check in doctor_checks() {
        match check.result {
            Ok(detail) => super::print(&format!("ok    {}: {detail}", check.name)),
            Err(fix) => {
                failed += 1;
                super::print(&format!("FAIL  {}: {fix}", check.name));
            }
        }
    }
    if failed == 0 {
        super::print("tollgate can build every wall on this host");
        0
    } else {
        1
    }
}

/// Runs `/bin/true` through `tollgate run` itself: every wall, the private mounts, the
/// leased user, the seccomp filters and the launch into the cgroup, together.
fn whole_sandbox() -> Result<String, String> {
    let status = crate::run::run(crate::run::RunOptions {
        timeout: Some(std::time::Duration::from_secs(30)),
        ..crate::run::RunOptions::new(vec!["/bin/true".into()])
    });
    if status == 0 {
        Ok("/bin/true ran with every wall, private mounts and a leased user".into())
    } else {
        Err(format!(
            "`tollgate run -- /bin/true` exited {status} (its reason is printed above)"
        ))
    }
}
