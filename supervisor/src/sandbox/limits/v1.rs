//! The limits on a hybrid host: a cgroup of the execution's own in each cgroup v1 hierarchy
//! of the memory, cpu and pids controllers, `<hierarchy>/tollgate/<execution id>`.
//!
//! The command is born in its cgroup v2 directory (`clone3`), which v1 knows nothing of, so
//! the child joins each v1 cgroup itself, as root before it drops privileges, by writing to
//! the `cgroup.procs` descriptors opened here (see [`super::ChildLimits`]). Every process of
//! the execution is then in both trees, and the v2 `cgroup.kill` kills them all: after it the
//! v1 directories are empty and are removed. As in v2, ownership is in the name (the
//! execution id names its supervisor), so `gc` removes the directories of dead supervisors.
//!
//! v1 has neither `cgroup.kill` nor a populated flag: a directory that still holds a process
//! (a supervisor killed in the middle of its teardown) has each listed process killed
//! through a pidfd, once it is known to be in the cgroup still, until `rmdir` succeeds.
//! Every path is opened relative to descriptors, following no link.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use tollgate_policy::units::Cores;

use super::files;
use super::host::Controller;
use super::{LimitsError, Usage};
use crate::sandbox::cgroup::{KILL_TIMEOUT, PARENT_DIR};
use crate::sandbox::host_path;

/// The CFS period the CPU quota is given for: the kernel's default, 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;

/// One execution's cgroup in one v1 hierarchy. Dropping it removes the directory (best
/// effort); [`V1Cgroup::remove`] does the same and reports failures.
#[derive(Debug)]
pub struct V1Cgroup {
    /// `<hierarchy>/tollgate/<execution id>`, for messages.
    path: PathBuf,
    /// `<hierarchy>/tollgate`, held open: the directory is removed relative to it.
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    /// `cgroup.procs`, open for writing: the child joins through it.
    procs: OwnedFd,
    controllers: Vec<Controller>,
    removed: bool,
}

impl V1Cgroup {
    /// Creates `<mount>/tollgate/<execution_id>` in the hierarchy mounted at `mount`, which
    /// holds `controllers`; the directory must not exist yet.
    pub fn create(
        mount: &Path,
        execution_id: &str,
        controllers: Vec<Controller>,
    ) -> Result<V1Cgroup, LimitsError> {
        let fail = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| LimitsError::Cgroup {
                action,
                path,
                source,
            }
        };
        let parent_path = mount.join(PARENT_DIR);
        let root = host_path::open_dir(mount).map_err(fail("open", mount))?;
        let fresh_parent = match nix::sys::stat::mkdirat(
            root.as_fd(),
            PARENT_DIR,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(errno) => return Err(fail("create", &parent_path)(errno.into())),
        };
        let parent = open_dir_in(root.as_fd(), PARENT_DIR).map_err(fail("open", &parent_path))?;
        if fresh_parent && controllers.contains(&Controller::Memory) {
            // Kernels before 5.x default to flat accounting; later ones are always
            // hierarchical and accept this as a no-op.
            let _ = files::write(parent.as_fd(), "memory.use_hierarchy", "1");
        }
        let path = parent_path.join(execution_id);
        match nix::sys::stat::mkdirat(
            parent.as_fd(),
            execution_id,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(LimitsError::Exists { path }),
            Err(errno) => return Err(fail("create", &path)(errno.into())),
        }
        let opened = open_dir_in(parent.as_fd(), execution_id).and_then(|dir| {
            let procs =
                host_path::open_in(dir.as_fd(), OsStr::new("cgroup.procs"), OFlag::O_WRONLY, 0)?;
            Ok((dir, procs))
        });
        match opened {
            Ok((dir, procs)) => Ok(V1Cgroup {
                path,
                parent,
                name: execution_id.to_owned(),
                dir,
                procs,
                controllers,
                removed: false,
            }),
            Err(source) => {
                let _ =
                    nix::unistd::unlinkat(parent.as_fd(), execution_id, UnlinkatFlags::RemoveDir);
                Err(LimitsError::Cgroup {
                    action: "open",
                    path,
                    source,
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// The `cgroup.procs` descriptor the child writes `0` to (see [`super::ChildLimits`]).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    fn write(&self, name: &str, value: &str) -> Result<(), LimitsError> {
        files::write(self.dir.as_fd(), name, value).map_err(|source| LimitsError::Cgroup {
            action: "write",
            path: self.path.join(name),
            source,
        })
    }

    /// `memory.limit_in_bytes`, and the same for memory plus swap, so nothing is swapped out
    /// past the limit. Where swap is not accounted (no `memory.memsw.*`), swapping is turned
    /// down instead (`memory.swappiness` 0). The OOM killer stays on.
    pub fn set_memory(&self, bytes: u64) -> Result<(), LimitsError> {
        self.write("memory.limit_in_bytes", &bytes.to_string())?;
        match files::write(
            self.dir.as_fd(),
            "memory.memsw.limit_in_bytes",
            &bytes.to_string(),
        ) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let _ = files::write(self.dir.as_fd(), "memory.swappiness", "0");
            }
            Err(source) => {
                return Err(LimitsError::Cgroup {
                    action: "write",
                    path: self.path.join("memory.memsw.limit_in_bytes"),
                    source,
                })
            }
        }
        // A new v1 memory cgroup inherits `oom_kill_disable` from its parent: a cgroup that
        // stalls at its limit instead of killing would hang the command.
        self.write("memory.oom_control", "0")
    }

    /// `cpu.cfs_quota_us` of `cores` per `cpu.cfs_period_us` of [`CPU_PERIOD_US`].
    pub fn set_cpu(&self, cores: Cores) -> Result<(), LimitsError> {
        self.write("cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        self.write(
            "cpu.cfs_quota_us",
            &cores.quota_us(CPU_PERIOD_US).to_string(),
        )
    }

    /// `pids.max`: tasks (processes and threads) at once.
    pub fn set_pids(&self, tasks: u64) -> Result<(), LimitsError> {
        self.write("pids.max", &tasks.to_string())
    }

    /// What this cgroup's controllers counted.
    pub fn read_usage(&self, usage: &mut Usage) {
        let dir = self.dir.as_fd();
        for controller in &self.controllers {
            match controller {
                Controller::Memory => {
                    // `oom_kill`: Linux 4.13 and newer.
                    usage.oom_kills =
                        files::read_keyed(dir, "memory.oom_control", "oom_kill").unwrap_or(0);
                    usage.memory_peak_bytes = files::read_number(dir, "memory.max_usage_in_bytes");
                }
                Controller::Cpu => {
                    usage.cpu_throttled_periods =
                        files::read_keyed(dir, "cpu.stat", "nr_throttled");
                }
                // `pids.peak`: Linux 6.12 and newer.
                Controller::Pids => usage.tasks_peak = files::read_number(dir, "pids.peak"),
            }
        }
    }

    /// Removes the directory, killing whatever still runs in it first.
    pub fn remove(mut self) -> Result<(), LimitsError> {
        self.removed = true;
        remove_dir(self.parent.as_fd(), &self.name, &self.path, KILL_TIMEOUT)
    }
}

impl Drop for V1Cgroup {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(error) =
                remove_dir(self.parent.as_fd(), &self.name, &self.path, KILL_TIMEOUT)
            {
                tracing::warn!("{error}");
            }
        }
    }
}

/// Removes `<mount>/tollgate/<name>` of a supervisor that is gone (for `gc`).
pub fn remove_stale(mount: &Path, name: &str) -> Result<(), LimitsError> {
    let parent_path = mount.join(PARENT_DIR);
    let parent = host_path::open_dir(&parent_path).map_err(|source| LimitsError::Cgroup {
        action: "open",
        path: parent_path.clone(),
        source,
    })?;
    remove_dir(parent.as_fd(), name, &parent_path.join(name), KILL_TIMEOUT)
}

fn open_dir_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    host_path::open_in(dir, OsStr::new(name), OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
}

/// `rmdir` of `parent/name`, retried while the kernel says it is busy: a task that just
/// exited can hold it for a moment, and one still running is killed.
fn remove_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    timeout: Duration,
) -> Result<(), LimitsError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(LimitsError::Cgroup {
                    action: "remove",
                    path: path.to_path_buf(),
                    source: errno.into(),
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(LimitsError::NotEmpty {
                path: path.to_path_buf(),
                waited: timeout,
            });
        }
        kill_members(parent, name);
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs every process listed in `parent/name/cgroup.procs` that is still a process of
/// that execution when the signal is sent (a listed pid may have exited and been reused).
fn kill_members(parent: BorrowedFd<'_>, name: &str) {
    let Ok(dir) = open_dir_in(parent, name) else {
        return;
    };
    let Ok(procs) = files::read(dir.as_fd(), "cgroup.procs") else {
        return;
    };
    let member = format!(":/{PARENT_DIR}/{name}");
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        if pid > 0 {
            kill_if_member(pid, &member);
        }
    }
}

/// The pidfd pins one process: if it is alive when signalled, it was alive when its cgroups
/// were read, so the pid named it then too.
fn kill_if_member(pid: i32, member: &str) {
    // SAFETY: pidfd_open(2) of one pid; the descriptor is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let is_member = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|text| text.lines().any(|line| line.ends_with(member)));
    if is_member {
        // SAFETY: pidfd_send_signal(2) on the descriptor above; ESRCH if it already exited.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}
