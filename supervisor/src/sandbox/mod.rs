//! The sandbox runtime: the walls built around one execution, and their teardown.
//!
//! Each wall must hold on its own (see docs/architecture.md). This module holds the cgroup an
//! execution runs in ([`cgroup`]) and the eBPF programs attached to it ([`bpf`]); every failure
//! is a [`SandboxError`] that says what failed and how an operator fixes it.

pub mod bpf;
pub mod cgroup;
pub mod command;
pub mod doctor;
pub mod gc;
pub mod host_path;
pub mod init;
pub mod landlock;
pub mod launch;
pub mod layers;
pub mod limits;
pub mod mounts;
pub mod netns;
pub mod nft;
pub mod seccomp;
pub mod spawn;
pub mod users;

use std::{io, path::PathBuf, time::Duration};

/// Points operators at the command that checks every prerequisite at once.
const DOCTOR: &str = "run `tollgate doctor` to check this host";

/// Why a sandbox wall could not be built or torn down.
///
/// Every message names what failed and how to fix it, so the CLI can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot build the sandbox network namespace ({step}): {detail}; tollgate needs root \
         (CAP_SYS_ADMIN, CAP_NET_ADMIN); {DOCTOR}"
    )]
    Netns { step: &'static str, detail: String },
    #[error(
        "cannot install the nftables wall in the sandbox namespace: {detail}; the kernel needs \
         nf_tables (CONFIG_NF_TABLES, nft_reject_inet); {DOCTOR}"
    )]
    Nftables { detail: String },
    #[error(
        "cannot read /proc/self/mountinfo to find the cgroup v2 hierarchy: {source}; {DOCTOR}"
    )]
    MountInfo { source: io::Error },

    #[error(
        "no cgroup v2 hierarchy is mounted: tollgate needs one to contain each execution; \
         mount it with `mount -t cgroup2 none /sys/fs/cgroup` (or /sys/fs/cgroup/unified on \
         hybrid hosts); {DOCTOR}"
    )]
    Cgroup2NotMounted,

    #[error(
        "invalid execution id {id:?}: {reason} (ids are 1-64 characters of [A-Za-z0-9_-]; \
         use sandbox::cgroup::new_execution_id)"
    )]
    InvalidExecutionId { id: String, reason: &'static str },

    #[error("cannot generate an execution id: getrandom failed: {source}")]
    Random { source: io::Error },

    #[error("cannot read /proc/self/stat to name the execution: {source}; is /proc mounted?")]
    SelfStat { source: io::Error },

    #[error(
        "cannot create cgroup {path}: {source}; tollgate must run as root on a writable cgroup2 \
         hierarchy; {DOCTOR}"
    )]
    CgroupCreate { path: PathBuf, source: io::Error },

    #[error(
        "cgroup {path} already exists: another execution uses this id; generate a fresh one \
         (sandbox::cgroup::new_execution_id)"
    )]
    CgroupExists { path: PathBuf },

    #[error("cannot open cgroup {path}: {source}; {DOCTOR}")]
    CgroupOpen { path: PathBuf, source: io::Error },

    #[error(
        "cannot kill the processes of cgroup {path}: {source}; cgroup.kill needs Linux 5.14 or \
         newer; {DOCTOR}"
    )]
    CgroupKill { path: PathBuf, source: io::Error },

    #[error(
        "processes in cgroup {path} did not exit within {waited:?} of SIGKILL (stuck in the \
         kernel?); `tollgate gc` removes the cgroup once they are gone"
    )]
    CgroupNotEmpty { path: PathBuf, waited: Duration },

    #[error("cannot remove cgroup {path}: {source}; `tollgate gc` retries stale cgroups")]
    CgroupRemove { path: PathBuf, source: io::Error },

    #[error("cannot list {path} to find stale execution cgroups: {source}")]
    CgroupScan { path: PathBuf, source: io::Error },

    #[error(
        "cannot mount the BPF filesystem at {path}: {source}; mount it with \
         `mount -t bpf bpf /sys/fs/bpf` (needs root); {DOCTOR}"
    )]
    BpffsMount { path: PathBuf, source: io::Error },

    #[error(
        "cannot prepare the eBPF pin directory {path}: {source}; tollgate needs root and bpffs \
         at /sys/fs/bpf; {DOCTOR}"
    )]
    BpfPinDir { path: PathBuf, source: io::Error },

    #[error(
        "this tollgate binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
         rebuild it with Rust nightly-2026-05-20, rust-src and bpf-linker 0.10.0 installed \
         (scripts/bootstrap.sh)"
    )]
    BpfObjectMissing,

    #[error(
        "cannot load the eBPF egress programs: {source}; the kernel needs \
         CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and BTF (CONFIG_DEBUG_INFO_BTF), and tollgate \
         needs root (CAP_BPF, CAP_NET_ADMIN); {DOCTOR}"
    )]
    BpfLoad { source: Box<aya::EbpfError> },

    #[error("the eBPF object has no {what} named {name:?}: the build is broken; rebuild tollgate")]
    BpfObjectIncomplete {
        what: &'static str,
        name: &'static str,
    },

    #[error(
        "cannot {action} the eBPF program {program}: {source}; the kernel needs \
         CONFIG_CGROUP_BPF and BTF, and tollgate needs root; {DOCTOR}"
    )]
    BpfProgram {
        program: &'static str,
        action: &'static str,
        source: Box<aya::programs::ProgramError>,
    },

    #[error("cannot {action} the eBPF map {map}: {source}; {DOCTOR}")]
    BpfMap {
        map: &'static str,
        action: &'static str,
        source: Box<aya::maps::MapError>,
    },

    #[error("cannot pin {path} on the BPF filesystem: {source}; {DOCTOR}")]
    BpfPin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },

    #[error(
        "cannot attach the eBPF program {program} to cgroup {path}: {source}; the kernel needs \
         CONFIG_CGROUP_BPF (Linux 5.7+ for BPF links), and no ancestor cgroup may hold a \
         non-overridable program of the same type; {DOCTOR}"
    )]
    BpfAttach {
        program: &'static str,
        path: PathBuf,
        source: Box<aya::programs::ProgramError>,
    },

    #[error(
        "cannot register the event ring of cgroup {path}: {source}; if a map is full, entries \
         of killed supervisors are left: run `tollgate gc`"
    )]
    EventRing {
        path: PathBuf,
        source: Box<aya::maps::MapError>,
    },

    #[error(
        "all {limit} eBPF event slots are in use: this host runs as many walled executions as \
         it can; wait for some to finish"
    )]
    EventSlotsExhausted { limit: u32 },

    #[error("cannot wait for eBPF events: poll failed: {source}")]
    EventPoll { source: io::Error },

    #[error(
        "cannot lease a sandbox user ({path}): {source}; tollgate must run as root with a \
         writable /run; {DOCTOR}"
    )]
    UserLease { path: PathBuf, source: io::Error },

    #[error(
        "all {limit} sandbox users are leased: this host runs as many executions as it can; \
         wait for some to finish"
    )]
    UsersExhausted { limit: u32 },

    #[error(
        "cannot give the sandbox its private mounts ({step}): {source}; tollgate needs root \
         (CAP_SYS_ADMIN) and mount namespaces; {DOCTOR}"
    )]
    Mounts {
        step: &'static str,
        source: io::Error,
    },
}
