//! `tollgate gc` and `tollgate doctor`: the operator's commands.

use super::quota_store::{self, Reach, RedisArgs};
use crate::sandbox::{doctor, gc};
use clap::Args;

/// `tollgate doctor`'s flags: the quota store to reach, as `tollgate run` would be given it.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
}

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

/// Prints each check with `ok` or `FAIL` and the fix, then where quotas are counted; exits
/// 1 if any check failed (a Redis that refuses the password is one; one that does not
/// answer is a warning: the node may start before it), 2 for a bad flag.
pub fn doctor(args: DoctorArgs) -> i32 {
    let store = match args.redis.redis() {
        Ok(redis) => crate::quota::QuotaStoreConfig {
            redis,
            connect_timeout: args.redis.connect_timeout(),
            ..Default::default()
        },
        Err(message) => {
            eprintln!("tollgate: {message}");
            return super::EXIT_USAGE;
        }
    };
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
    let (mark, line) = quota_line(&store);
    if mark == "FAIL" {
        failed += 1;
    }
    super::print(&format!("{mark:<6}{line}"));
    if failed == 0 {
        super::print("tollgate can build every wall on this host");
        0
    } else {
        1
    }
}

/// The mark and the line of the quota store: reachable, not, or per node.
fn quota_line(store: &crate::quota::QuotaStoreConfig) -> (&'static str, String) {
    let shown = quota_store::describe_store(store);
    match quota_store::reach(store) {
        Reach::PerNode => (
            "note",
            format!(
                "quotas: {shown} (no Redis configured: set --redis-url or {}); team quotas \
                 are not fleet-wide",
                quota_store::REDIS_URL_ENV
            ),
        ),
        Reach::Reachable => ("ok", format!("quotas: {shown} (reachable)")),
        Reach::Unreachable(why) => ("warn", format!("quotas: {shown} (unreachable: {why})")),
        Reach::PasswordRefused(why) => ("FAIL", format!("quotas: {shown} ({why})")),
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
