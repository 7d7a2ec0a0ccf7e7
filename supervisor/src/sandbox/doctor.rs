//! `tollgate doctor`: checks every prerequisite of a sandbox on this host, by building each
//! wall for real on scratch objects, and says how to fix what fails.
//!
//! `tollgate run` refuses to start when a wall cannot be built, with the same wording, so an
//! operator who saw a failure can run this to see the whole picture at once. It also reports
//! the sysctls that decide what an unprivileged process may reach in the kernel, with the
//! seccomp rule that makes each one irrelevant to tollgate: they never fail a check.

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
        Check {
            name: "limits",
            result: super::limits::check_host(),
        },
        Check {
            name: "Landlock",
            result: landlock(),
        },
    ]
    .into_iter()
    .chain(sysctls())
    .collect()
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
        transparent: true,
    })
    .map_err(|e| e.to_string())?;
    let address = net
        .proxy_address()
        .ok_or("the proxy listener has no address")?;
    Ok(format!(
        "loopback up, nftables table installed, proxy listener bound on {address}, \
         transparent redirect and stub resolver sockets ready"
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

/// The sysctls that decide what an unprivileged process may reach in the kernel, and what
/// the sandbox's seccomp filter refuses whatever each one says.
const SYSCTLS: [(&str, &str); 7] = [
    ("kernel.unprivileged_bpf_disabled", "bpf"),
    ("kernel.perf_event_paranoid", "perf_event_open"),
    ("vm.unprivileged_userfaultfd", "userfaultfd"),
    ("dev.tty.legacy_tiocsti", "ioctl TIOCSTI"),
    ("kernel.io_uring_disabled", "io_uring (ENOSYS)"),
    ("user.max_user_namespaces", "new namespaces"),
    ("kernel.unprivileged_userns_clone", "new namespaces"),
];

/// One check per sysctl of [`SYSCTLS`]: its value, what it means, and that tollgate does not
/// depend on it. Always passes.
fn sysctls() -> Vec<Check> {
    SYSCTLS
        .iter()
        .map(|&(name, refused)| {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            let value = std::fs::read_to_string(path)
                .map(|v| v.trim().to_owned())
                .ok();
            let state = match &value {
                Some(value) => match sysctl_meaning(name, value) {
                    Some(meaning) => format!("{value} ({meaning})"),
                    None => value.clone(),
                },
                None => "absent on this kernel".to_owned(),
            };
            Check {
                name,
                result: Ok(format!(
                    "{state}; tollgate does not depend on it: its seccomp filter refuses \
                     {refused} whatever it says"
                )),
            }
        })
        .collect()
}

/// What a value of one of [`SYSCTLS`] lets an unprivileged process do.
fn sysctl_meaning(name: &str, value: &str) -> Option<&'static str> {
    Some(match (name, value) {
        ("kernel.unprivileged_bpf_disabled", "0") => "unprivileged bpf() allowed",
        ("kernel.unprivileged_bpf_disabled", _) => "unprivileged bpf() refused",
        ("kernel.perf_event_paranoid", "-1" | "0" | "1") => "unprivileged kernel profiling",
        ("kernel.perf_event_paranoid", "2") => "unprivileged user-space profiling",
        ("kernel.perf_event_paranoid", _) => "unprivileged perf_event_open refused",
        ("vm.unprivileged_userfaultfd", "0") => "unprivileged users: user-mode faults only",
        ("vm.unprivileged_userfaultfd", _) => "unprivileged userfaultfd allowed",
        ("dev.tty.legacy_tiocsti", "0") => "TIOCSTI needs CAP_SYS_ADMIN",
        ("dev.tty.legacy_tiocsti", _) => "TIOCSTI allowed on one's controlling terminal",
        ("kernel.io_uring_disabled", "0") => "io_uring allowed",
        ("kernel.io_uring_disabled", "1") => "io_uring for one group only",
        ("kernel.io_uring_disabled", _) => "io_uring refused",
        ("user.max_user_namespaces", "0") => "no user namespaces",
        ("user.max_user_namespaces", _) => "unprivileged user namespaces allowed",
        ("kernel.unprivileged_userns_clone", "0") => "unprivileged user namespaces refused",
        ("kernel.unprivileged_userns_clone", _) => "unprivileged user namespaces allowed",
        _ => return None,
    })
}

/// The Landlock ABI executions apply (see `landlock`). Without it runs go on (unless a policy
/// requires it), but with one wall fewer: a failed check.
fn landlock() -> Result<String, String> {
    let abi = super::landlock::usable_abi(super::layers::Layers::ALL).map_err(|why| {
        format!(
            "{why}; executions run without this layer, and a policy with \
             `filesystem.landlock: required` fails"
        )
    })?;
    let scoping = if abi >= 6 {
        "abstract Unix sockets and signals scoped to the sandbox"
    } else {
        "no scoping of abstract Unix sockets and signals (ABI 6, Linux 6.12)"
    };
    Ok(format!(
        "ABI {abi}: filesystem rules matching the sandbox's view, {scoping}"
    ))
}
