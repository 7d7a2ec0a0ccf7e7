//! The per-execution cgroup v2 directory: where the child runs, what the eBPF wall attaches
//! to, and how every process of an execution is killed at once.
//!
//! Each execution gets `<cgroup2 mount>/tollgate/<execution id>`. The child joins it before it
//! execs (sockets created earlier would escape the cgroup programs), teardown writes
//! `cgroup.kill` and removes the directory, and [`gc_stale`] removes what a killed supervisor
//! left behind. cgroupfs cannot hold files of ours, so ownership is in the name: an execution
//! id is `<supervisor pid>-<supervisor start time>-<random>` ([`new_execution_id`]), and a
//! cgroup is stale when no process with that pid *and* start time is alive, which also sees
//! through pid reuse.

use std::{
    collections::HashSet,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::limits::{self, host::HostCgroups};
use super::SandboxError;

/// Directory under the cgroup2 mount that holds every execution's cgroup.
pub const PARENT_DIR: &str = "tollgate";

/// How long teardown waits for SIGKILLed processes to leave the cgroup.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest accepted execution id (ours are at most 45 characters).
const MAX_ID_LEN: usize = 64;

/// Finds where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
///
/// `/sys/fs/cgroup` on pure-v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf, SandboxError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| SandboxError::MountInfo { source })?;
    find_cgroup2_mount(&mountinfo).ok_or(SandboxError::Cgroup2NotMounted)
}

/// The mount point of the first cgroup2 mount of the whole hierarchy (root `/`).
fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (root == "/").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh execution id: `<pid>-<start time>-<16 random hex digits>` of this supervisor.
pub fn new_execution_id() -> Result<String, SandboxError> {
    let pid = std::process::id();
    let start_time = match read_process_stat(pid) {
        ProcessStat::Running { start_time } | ProcessStat::Zombie { start_time } => start_time,
        ProcessStat::Gone => {
            return Err(SandboxError::SelfStat {
                source: io::ErrorKind::NotFound.into(),
            });
        }
        ProcessStat::Unreadable(source) => return Err(SandboxError::SelfStat { source }),
    };
    let mut random = [0u8; 8];
    fill_random(&mut random).map_err(|source| SandboxError::Random { source })?;
    Ok(format!(
        "{pid}-{start_time}-{:016x}",
        u64::from_ne_bytes(random)
    ))
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n.unsigned_abs();
    }
    Ok(())
}

/// Checks an execution id is usable as a single cgroup directory name.
pub fn validate_execution_id(id: &str) -> Result<(), SandboxError> {
    let invalid = |reason| SandboxError::InvalidExecutionId {
        id: id.chars().take(MAX_ID_LEN + 8).collect(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid("it is too long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid("it has a character outside [A-Za-z0-9_-]"));
    }
    Ok(())
}

/// Whether `name` is an id made by [`new_execution_id`]: what garbage collection may take
/// for an execution's leftovers (anything else is not an execution's).
pub fn is_execution_id(name: &str) -> bool {
    owner_of(name).is_some()
}

/// The supervisor that owns an execution id made by [`new_execution_id`]: its pid and start time.
fn owner_of(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    let random = parts.next()?;
    let well_formed = parts.next().is_none()
        && random.len() == 16
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then_some((pid, start_time))
}

/// What `/proc/<pid>/stat` says about a process.
enum ProcessStat {
    Running { start_time: u64 },
    Zombie { start_time: u64 },
    Gone,
    Unreadable(io::Error),
}

fn read_process_stat(pid: u32) -> ProcessStat {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_stat(&stat) {
            Some((state, start_time)) if state == 'Z' || state == 'X' => {
                ProcessStat::Zombie { start_time }
            }
            Some((_, start_time)) => ProcessStat::Running { start_time },
            None => ProcessStat::Unreadable(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{pid}/stat"),
            )),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => ProcessStat::Gone,
        Err(err) => ProcessStat::Unreadable(err),
    }
}

/// State (field 3) and start time (field 22) from a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // `comm` (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// Whether the supervisor that made `id` still runs. Ids of another shape are never stale.
fn owner_is_alive(id: &str) -> Option<bool> {
    let (pid, start_time) = owner_of(id)?;
    Some(match read_process_stat(pid) {
        ProcessStat::Running { start_time: actual } => actual == start_time,
        ProcessStat::Zombie { .. } | ProcessStat::Gone => false,
        // Cannot tell (e.g. hidepid): keep it rather than kill a live execution.
        ProcessStat::Unreadable(_) => true,
    })
}

/// One execution's cgroup: `<cgroup2 mount>/tollgate/<execution id>`.
///
/// Dropping it kills whatever still runs inside and removes the directory (best effort);
/// [`ExecutionCgroup::kill_and_remove`] does the same and reports failures.
#[derive(Debug)]
pub struct ExecutionCgroup {
    /// The cgroup2 mount it was created under.
    mount: PathBuf,
    path: PathBuf,
    procs_path: PathBuf,
    dir: OwnedFd,
    id: u64,
    removed: bool,
}

impl ExecutionCgroup {
    /// Creates the cgroup of `execution_id` under the host's cgroup2 mount.
    pub fn create(execution_id: &str) -> Result<Self, SandboxError> {
        Self::create_under(&cgroup2_mount()?, execution_id)
    }

    /// Creates `<mount>/tollgate/<execution_id>`; it must not exist yet.
    pub fn create_under(mount: &Path, execution_id: &str) -> Result<Self, SandboxError> {
        validate_execution_id(execution_id)?;
        let parent = mount.join(PARENT_DIR);
        match DirBuilder::new().mode(0o755).create(&parent) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(SandboxError::CgroupCreate {
                    path: parent,
                    source,
                });
            }
        }
        let path = parent.join(execution_id);
        match DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::CgroupExists { path });
            }
            Err(source) => return Err(SandboxError::CgroupCreate { path, source }),
        }
        let opened = File::open(&path).and_then(|dir| Ok((dir.metadata()?.ino(), dir)));
        match opened {
            Ok((id, dir)) => Ok(Self {
                mount: mount.to_path_buf(),
                procs_path: path.join("cgroup.procs"),
                path,
                dir: dir.into(),
                id,
                removed: false,
            }),
            Err(source) => {
                let _ = fs::remove_dir(&path);
                Err(SandboxError::CgroupOpen { path, source })
            }
        }
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup2 mount the directory is in.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The cgroup id: what `bpf_get_current_cgroup_id()` returns for tasks inside it (the
    /// directory's inode number on 64-bit hosts).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `cgroup.procs`: writing a pid (or `0`, meaning "myself") there moves that process in.
    pub fn procs_path(&self) -> &Path {
        &self.procs_path
    }

    /// Opens `cgroup.procs` now so a child can join in `pre_exec` without touching a path
    /// (its mount namespace or credentials may differ by then); see [`CgroupJoiner`].
    pub fn joiner(&self) -> Result<CgroupJoiner, SandboxError> {
        OpenOptions::new()
            .write(true)
            .open(&self.procs_path)
            .map(|file| CgroupJoiner { procs: file.into() })
            .map_err(|source| SandboxError::CgroupOpen {
                path: self.procs_path.clone(),
                source,
            })
    }

    /// A guard that, when dropped, kills every process in the cgroup and waits for them to
    /// go, leaving the directory in place. The eBPF wall holds one so it never comes down
    /// around a live process.
    pub(crate) fn killer(&self) -> CgroupKiller {
        CgroupKiller {
            path: self.path.clone(),
        }
    }

    /// Kills every process in the cgroup (and its descendants) at once, without waiting for
    /// them to go (`cgroup.kill`, or a SIGKILL to each listed process before Linux 5.14).
    pub fn kill_now(&self) -> Result<(), SandboxError> {
        kill_all(&self.path).map(drop)
    }

    /// Kills every process in the cgroup (and its descendants) and waits up to
    /// [`KILL_TIMEOUT`] for them to go, leaving the directory (and its counters) in place.
    pub fn kill(&self) -> Result<(), SandboxError> {
        kill_and_wait(&self.path, KILL_TIMEOUT)
    }

    /// Kills every process in the cgroup (and its descendants), waits up to [`KILL_TIMEOUT`]
    /// for them to go, and removes the directory.
    pub fn kill_and_remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        kill_and_remove_path(&self.path, KILL_TIMEOUT)
    }
}

impl AsFd for ExecutionCgroup {
    /// The open cgroup directory: what eBPF programs attach to.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

impl Drop for ExecutionCgroup {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(err) = kill_and_remove_path(&self.path, KILL_TIMEOUT) {
                tracing::warn!("{err}");
            }
        }
    }
}

/// Kills what runs in a cgroup when dropped; see [`ExecutionCgroup::killer`].
#[derive(Debug)]
pub(crate) struct CgroupKiller {
    path: PathBuf,
}

impl Drop for CgroupKiller {
    fn drop(&mut self) {
        if let Err(err) = kill_and_wait(&self.path, KILL_TIMEOUT) {
            tracing::warn!("{err}");
        }
    }
}

/// Moves the calling process into an execution cgroup, from a `pre_exec` hook.
///
/// Holds `cgroup.procs` open (close-on-exec) from the supervisor: the kernel checks the
/// opener's permissions, so this works after the child changed namespaces, and
/// [`CgroupJoiner::join_current_process`] only calls `write(2)`, which is async-signal-safe.
#[derive(Debug)]
pub struct CgroupJoiner {
    procs: OwnedFd,
}

impl CgroupJoiner {
    /// Moves the calling process into the cgroup (writes `0` to `cgroup.procs`).
    ///
    /// Safe to call between `fork` and `exec`: no allocation, no lock, one `write(2)`.
    pub fn join_current_process(&self) -> io::Result<()> {
        // SAFETY: writes one byte from a static buffer to a descriptor we own.
        let written = unsafe { libc::write(self.procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if written == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Kills, waits for and removes one cgroup directory; a missing directory is already done.
fn kill_and_remove_path(path: &Path, timeout: Duration) -> Result<(), SandboxError> {
    kill_and_wait(path, timeout)?;
    remove_tree(path)
}

/// SIGKILLs every process in a cgroup and its descendants and waits until none is left.
fn kill_and_wait(path: &Path, timeout: Duration) -> Result<(), SandboxError> {
    if !path.exists() {
        return Ok(());
    }
    let killed_at_once = kill_all(path)?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    while is_populated(path)? {
        if !killed_at_once {
            kill_listed_processes(path);
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::CgroupNotEmpty {
                path: path.to_path_buf(),
                waited: timeout,
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

/// Writes `1` to `cgroup.kill` (SIGKILL to the whole subtree). `Ok(false)`: the kernel has no
/// `cgroup.kill` (before 5.14) and processes must be killed one by one.
fn kill_all(path: &Path) -> Result<bool, SandboxError> {
    let written = OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut file| file.write_all(b"1"));
    match written {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound && path.exists() => {
            kill_listed_processes(path);
            Ok(false)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(SandboxError::CgroupKill {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// SIGKILLs every pid in `cgroup.procs` of `path` and its descendants.
fn kill_listed_processes(path: &Path) {
    if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
        {
            if pid > 0 {
                // SAFETY: kill(2) with a positive pid signals that one process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for child in child_cgroups(path) {
        kill_listed_processes(&child);
    }
}

/// Whether any process is left in the cgroup or its descendants (`cgroup.events`).
fn is_populated(path: &Path) -> Result<bool, SandboxError> {
    match fs::read_to_string(path.join("cgroup.events")) {
        Ok(events) => Ok(events.lines().any(|line| line.trim() == "populated 1")),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SandboxError::CgroupOpen {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn child_cgroups(path: &Path) -> Vec<PathBuf> {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an empty cgroup and any (empty) cgroups the execution created beneath it.
fn remove_tree(path: &Path) -> Result<(), SandboxError> {
    for child in child_cgroups(path) {
        remove_tree(&child)?;
    }
    let mut attempts = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A task that just exited can hold the cgroup for a moment.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && attempts < 50 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Err(source) => {
                return Err(SandboxError::CgroupRemove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// What [`gc_stale`] did.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Cgroups of dead supervisors that were killed and removed.
    pub removed: Vec<PathBuf>,
    /// Cgroups whose supervisor still runs.
    pub live: Vec<PathBuf>,
    /// Directories whose name is not an id from [`new_execution_id`]: left alone.
    pub foreign: Vec<PathBuf>,
    /// Stale cgroups that could not be removed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Kills and removes every execution cgroup whose supervisor is gone: in the cgroup2
/// hierarchy, then in the v1 hierarchies of the limits (hybrid hosts, see `limits::v1`).
pub fn gc_stale() -> Result<GcReport, SandboxError> {
    let mount = cgroup2_mount()?;
    let mut report = gc_stale_under(&mount)?;
    match HostCgroups::detect(&mount) {
        Ok(host) => {
            for hierarchy in host.v1_mounts() {
                gc_stale_v1_under(&hierarchy, &mut report);
            }
        }
        Err(error) => report.failed.push((
            mount,
            format!("cannot find the cgroup v1 hierarchies: {error}"),
        )),
    }
    Ok(report)
}

/// Removes the v1 cgroups (`<mount>/tollgate/<id>`) of supervisors that are gone, after
/// their v2 cgroups: the v2 kill leaves them empty. Only what is removed or fails is
/// reported; the live and foreign ones are those of v2 again.
pub fn gc_stale_v1_under(mount: &Path, report: &mut GcReport) {
    let dirs = match execution_dirs(mount) {
        Ok(dirs) => dirs,
        Err(error) => {
            report
                .failed
                .push((mount.join(PARENT_DIR), error.to_string()));
            return;
        }
    };
    for (name, path) in dirs {
        if owner_is_alive(&name) == Some(false) {
            match limits::v1::remove_stale(mount, &name) {
                Ok(()) => report.removed.push(path),
                Err(error) => report.failed.push((path, error.to_string())),
            }
        }
    }
}

/// [`gc_stale`] for the hierarchy mounted at `mount`.
pub fn gc_stale_under(mount: &Path) -> Result<GcReport, SandboxError> {
    let mut report = GcReport::default();
    for (name, path) in execution_dirs(mount)? {
        match owner_is_alive(&name) {
            None => report.foreign.push(path),
            Some(true) => report.live.push(path),
            Some(false) => match kill_and_remove_path(&path, KILL_TIMEOUT) {
                Ok(()) => report.removed.push(path),
                Err(err) => report.failed.push((path, err.to_string())),
            },
        }
    }
    Ok(report)
}

/// Cgroup ids of every directory under `<mount>/tollgate`: the executions that may still own
/// entries in the eBPF wall's maps.
pub fn execution_cgroup_ids(mount: &Path) -> Result<HashSet<u64>, SandboxError> {
    Ok(execution_dirs(mount)?
        .into_iter()
        .filter_map(|(_, path)| fs::metadata(path).ok().map(|meta| meta.ino()))
        .collect())
}

/// `(name, path)` of each directory in `<mount>/tollgate`; none when it does not exist.
fn execution_dirs(mount: &Path) -> Result<Vec<(String, PathBuf)>, SandboxError> {
    let parent = mount.join(PARENT_DIR);
    let entries = match fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SandboxError::CgroupScan {
                path: parent,
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_pure_hosts() {
        let hybrid = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd";
        assert_eq!(
            find_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw";
        assert_eq!(
            find_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn skips_subtree_bind_mounts_and_unescapes_paths() {
        let info = "\
40 30 0:29 /user.slice /mnt/sub rw - cgroup2 cgroup2 rw
41 30 0:29 / /mnt/with\\040space rw - cgroup2 cgroup2 rw";
        assert_eq!(
            find_cgroup2_mount(info),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(
            find_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/sda rw"),
            None
        );
    }

    #[test]
    fn execution_ids_name_their_owner() {
        let id = new_execution_id().unwrap();
        validate_execution_id(&id).unwrap();
        let (pid, _) = owner_of(&id).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(owner_is_alive(&id), Some(true));
        assert_ne!(new_execution_id().unwrap(), id);
    }

    #[test]
    fn a_reused_pid_does_not_make_an_owner_alive() {
        let pid = std::process::id();
        assert_eq!(
            owner_is_alive(&format!("{pid}-1-0123456789abcdef")),
            Some(false)
        );
        assert_eq!(owner_is_alive("my-own-id"), None);
        assert_eq!(owner_is_alive("1-2-xyz"), None);
    }

    #[test]
    fn rejects_ids_that_are_not_one_path_component() {
        for id in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_execution_id(id).is_err(), "{id:?}");
        }
        validate_execution_id("exec_1-A").unwrap();
    }

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let stat =
            "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
    }
}
