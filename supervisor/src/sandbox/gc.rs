//! Garbage collection: what killed supervisors left behind, of every kind, in one place.
//!
//! A supervisor that is SIGKILLed takes its execution down with it (the PID namespace's init
//! dies with it, see `init`), but not the objects that outlive processes: the execution's
//! cgroups (v2, and v1 on hybrid hosts), its runtime directory under `/run/tollgate`, its user
//! lease file, its entry in the eBPF event registry, and a pin directory a loader was killed
//! in the middle of. `tollgate run` collects the cheap, per-execution leftovers before it
//! leases a uid ([`before_run`]); `tollgate gc` collects everything ([`everything`]).

use super::bpf::{EgressPrograms, DEFAULT_PIN_ROOT};
use super::cgroup::{self, GcReport};
use super::{users, SandboxError};
use std::path::{Path, PathBuf};

/// Where executions' runtime directories live (CA bundle, Python helper).
pub const RUNTIME_ROOT: &str = "/run/tollgate";

/// What [`everything`] removed.
pub struct Collected {
    /// Stale execution cgroups (v1 and v2), with what still runs and what failed.
    pub cgroups: GcReport,
    pub leases: usize,
    pub runtime_dirs: usize,
    /// Stale eBPF event registrations, when the programs are loaded.
    pub registrations: Option<Result<usize, SandboxError>>,
    /// Abandoned, half-loaded pin directories.
    pub pins: Vec<PathBuf>,
}

/// Before a run leases a uid: stale executions' cgroups (killing what still runs in them, so
/// nothing of theirs can ever share a uid with this execution) and their runtime directories.
/// Failures are logged, never fatal.
pub fn before_run() {
    if let Err(error) = cgroup::gc_stale() {
        tracing::warn!("cannot reap stale executions: {error}");
    }
    runtime_dirs();
}

/// Everything a killed supervisor can leave behind.
pub fn everything() -> Result<Collected, SandboxError> {
    let cgroups = cgroup::gc_stale()?;
    let leases = users::gc_leases(Path::new(users::LEASE_DIR));
    let runtime_dirs = runtime_dirs();
    let (registrations, pins) = if Path::new(DEFAULT_PIN_ROOT).exists() {
        let registrations =
            EgressPrograms::load_or_reuse().and_then(|programs| programs.gc_stale_registrations());
        (
            Some(registrations),
            EgressPrograms::gc_stale_pins(Path::new(DEFAULT_PIN_ROOT)),
        )
    } else {
        (None, Vec::new())
    };
    Ok(Collected {
        cgroups,
        leases,
        runtime_dirs,
        registrations,
        pins,
    })
}

/// Removes the runtime directories of executions whose cgroup is gone; returns how many.
fn runtime_dirs() -> usize {
    match cgroup::cgroup2_mount() {
        Ok(mount) => runtime_dirs_under(Path::new(RUNTIME_ROOT), &mount.join("tollgate")),
        Err(_) => 0,
    }
}

/// Removes every directory of `runtime_root` named like an execution (an id from
/// `new_execution_id`) whose cgroup under `cgroup_root` no longer exists.
pub fn runtime_dirs_under(runtime_root: &Path, cgroup_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(runtime_root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        // Only names of executions: the node keeps state of its own here too (the quota
        // store's `quotas/`), which no execution's end may take.
        if !cgroup::is_execution_id(id) || cgroup_root.join(id).exists() {
            continue;
        }
        // The entry itself, not what a link there points to: remove_dir_all does not follow
        // a link at its root.
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_execution_directories_are_removed() {
        let scratch =
            std::env::temp_dir().join(format!("tollgate-gc-runtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let runtime = scratch.join("run");
        let cgroups = scratch.join("cgroup");
        let stale = "4242-1-0123456789abcdef";
        let live = "4243-1-0123456789abcdee";
        for dir in [stale, live, "quotas"] {
            std::fs::create_dir_all(runtime.join(dir)).unwrap();
        }
        std::fs::write(runtime.join("quotas/acme.json"), "{}").unwrap();
        std::fs::create_dir_all(cgroups.join(live)).unwrap();

        assert_eq!(runtime_dirs_under(&runtime, &cgroups), 1);
        assert!(
            !runtime.join(stale).exists(),
            "a dead execution's directory goes"
        );
        assert!(runtime.join(live).exists(), "a running execution's stays");
        // The node's own state beside the executions' (the quota store's files) is no
        // execution's: it stays.
        assert!(runtime.join("quotas/acme.json").exists());
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
