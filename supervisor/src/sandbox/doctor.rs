//! `tollgate doctor`: checks every prerequisite of a sandbox on this host, by building each
//! wall for real on scratch objects, and says how to fix what fails.
//!
//! `tollgate run` refuses to start when a wall cannot be built, with the same wording, so an
//! operator who saw a failure can run this to see the whole picture at once.

use super::bpf::EgressPrograms;
use super::cgroup::{self, ExecutionCgroup};
use super::netns::{self, NamespaceWalls};
use caps::{CapSet, Capability};

/// One check and its outcome.
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, String>,
}

/// Runs every check; none is skipped because an earlier one failed.
pub fn run_checks() -> Vec<Check> {
    vec![
        Check {
            name: "privileges",
            result: privileges(),
        },
        Check {
            name: "cgroup v2",
            result: cgroup_v2(),
        },
        Check {
            name: "eBPF cgroup programs",
            result: bpf_wall(),
        },
        Check {
            name: "network namespace + nftables",
            result: namespace(),
        },
        Check {
            name: "sandbox user",
            result: sandbox_user(),
        },
    ]
}

fn privileges() -> Result<String, String> {
    let needed = [
        (Capability::CAP_SYS_ADMIN, "namespaces, cgroups"),
        (
            Capability::CAP_NET_ADMIN,
            "loopback and nftables in the sandbox",
        ),
        (Capability::CAP_SETUID, "switching to the sandbox user"),
        (Capability::CAP_SETGID, "switching to the sandbox group"),
        (
            Capability::CAP_SETPCAP,
            "dropping the capability bounding set",
        ),
    ];
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|(cap, _)| !caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false))
        .map(|(cap, why)| format!("{cap} ({why})"))
        .collect();
    let bpf = caps::has_cap(None, CapSet::Effective, Capability::CAP_BPF).unwrap_or(false)
        || caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false);
    if !bpf {
        missing.push("CAP_BPF or CAP_SYS_ADMIN (loading eBPF programs)".into());
    }
    if missing.is_empty() {
        Ok("running with every capability tollgate needs".into())
    } else {
        Err(format!(
            "missing {}: run tollgate as root",
            missing.join(", ")
        ))
    }
}

fn cgroup_v2() -> Result<String, String> {
    let mount = cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
    let id = cgroup::new_execution_id().map_err(|e| e.to_string())?;
    let scratch = ExecutionCgroup::create(&id).map_err(|e| e.to_string())?;
    scratch.kill_and_remove().map_err(|e| e.to_string())?;
    Ok(format!(
        "mounted at {}, execution cgroups can be created and removed",
        mount.display()
    ))
}

fn bpf_wall() -> Result<String, String> {
    let programs = EgressPrograms::load_or_reuse().map_err(|e| e.to_string())?;
    let id = cgroup::new_execution_id().map_err(|e| e.to_string())?;
    let scratch = ExecutionCgroup::create(&id).map_err(|e| e.to_string())?;
    let attached = programs.attach(&scratch);
    let outcome = match attached {
        Ok(wall) => {
            wall.detach();
            Ok(format!(
                "connect4/6, sendmsg4/6 and sock_create load and attach (pinned at {})",
                programs.pin_dir().display()
            ))
        }
        Err(error) => Err(error.to_string()),
    };
    scratch.kill_and_remove().map_err(|e| e.to_string())?;
    outcome
}

fn namespace() -> Result<String, String> {
    let net = netns::create(NamespaceWalls {
        nftables: true,
        listener: true,
    })
    .map_err(|e| e.to_string())?;
    let address = net
        .proxy_address()
        .ok_or("the proxy listener has no address")?;
    Ok(format!(
        "loopback up, nftables table installed, proxy listener bound on {address}"
    ))
}

fn sandbox_user() -> Result<String, String> {
    let lease = super::users::UserLease::claim().map_err(|e| e.to_string())?;
    Ok(format!(
        "leased uid {} from {} (each execution runs as a user of its own)",
        lease.uid(),
        super::users::LEASE_DIR
    ))
}
