//! What executions must not leave behind, and a lock that lets one test look at the whole
//! host while no other sandbox test runs.
//!
//! Every test that starts `tollgate run` holds [`SuiteLock::shared`]; the leak checks hold
//! [`SuiteLock::exclusive`], so they see the host between executions, whether the tests run
//! as threads of one binary (`cargo test`) or as separate processes (`cargo nextest`).

use std::{
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use crate::{
    netns,
    sandbox::{executions_dir, is_execution_id},
};

/// Lock file shared by every sandbox test on this host.
const LOCK_PATH: &str = "/tmp/tollgate-e2e-suite.lock";

/// Where the eBPF wall pins its programs and maps.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/tollgate";

/// An `flock` on [`LOCK_PATH`], released on drop.
#[derive(Debug)]
pub struct SuiteLock {
    _file: File,
}

impl SuiteLock {
    /// Held by every test that runs sandboxes; many at once.
    pub fn shared() -> Self {
        Self::take(libc::LOCK_SH)
    }

    /// Held by a leak check: waits until no sandbox test runs.
    pub fn exclusive() -> Self {
        Self::take(libc::LOCK_EX)
    }

    fn take(mode: i32) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .expect("open the suite lock file");
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        SuiteLock { _file: file }
    }
}

/// Execution cgroups (`<mount>/tollgate/<id>`) that exist right now.
pub fn execution_cgroups() -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(executions_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| is_execution_id(name))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Where the cgroup v1 hierarchy of `controller` (`memory`, `cpu`, `pids`) is mounted, read
/// from `/proc/self/mountinfo`; `None` on hosts without it (pure cgroup v2).
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo.lines().find_map(|line| {
        let (mount, fs_part) = line.split_once(" - ")?;
        let mut fs_fields = fs_part.split(' ');
        if fs_fields.next()? != "cgroup" {
            return None;
        }
        let options = fs_fields.nth(1)?;
        let mut fields = mount.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (root == "/" && options.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(point.replace("\\040", " ")))
    })
}

/// The mounted cgroup v1 hierarchies of the limits' controllers, each once.
pub fn v1_limit_mounts() -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = Vec::new();
    for controller in ["memory", "cpu", "pids"] {
        if let Some(mount) = v1_mount(controller) {
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
    }
    mounts
}

/// Execution cgroups in the v1 hierarchies (`<hierarchy>/tollgate/<id>`) that exist now.
pub fn v1_execution_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for mount in v1_limit_mounts() {
        let Ok(entries) = fs::read_dir(mount.join("tollgate")) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && is_execution_id(&name) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Every pinned object under the eBPF pin root whose name says it is a link. Programs and
/// maps are pinned by design (loaded once, reused); links must never be.
pub fn pinned_links() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_lowercase();
            if name.contains("link") {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new(BPF_PIN_ROOT), &mut found);
    found
}

/// Every pid in /proc now (processes come and go while this reads).
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Live processes (pid, cgroup) in some `tollgate/<id>` cgroup.
pub fn sandboxed_processes() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for pid in all_pids() {
        // A zombie (killed, not yet reaped by init) keeps naming its removed cgroup.
        if matches!(crate::sandbox::process_stat(pid), Some((state, _)) if state == 'Z' || state == 'X')
        {
            continue;
        }
        if let Some(cgroup) = crate::sandbox::cgroup_of(pid) {
            if cgroup.starts_with("/tollgate/") {
                found.push((pid, cgroup));
            }
        }
    }
    found
}

/// Everything the host must not hold once no execution runs; empty when clean.
pub fn leftovers() -> Vec<String> {
    let mut problems = Vec::new();
    for id in execution_cgroups() {
        problems.push(format!("cgroup {}", executions_dir().join(id).display()));
    }
    for path in v1_execution_cgroups() {
        problems.push(format!("cgroup v1 {}", path.display()));
    }
    for name in netns::named_netns() {
        problems.push(format!("named network namespace {name}"));
    }
    for link in pinned_links() {
        problems.push(format!("pinned eBPF link {}", link.display()));
    }
    for (pid, cgroup) in sandboxed_processes() {
        problems.push(format!("process {pid} still in cgroup {cgroup}"));
    }
    problems
}
