//! What the child does between clone and exec, to put itself inside the walls: enter the
//! namespace, drop every privilege, then hand over to exec.
//!
//! The order is the point. The child is born in the execution's cgroup (see `launch`), so no
//! socket it ever creates escapes the eBPF programs. It starts a session of its own, so the
//! caller's terminal is not its controlling terminal (from there it could push input into the
//! caller's shell with `TIOCSTI`); with `--tty` a pseudo-terminal of its own takes that place.
//! It enters the sandbox namespace before it can open a socket in the host's; it gets its
//! private mounts (see `mounts`); it drops the capability bounding set while it still holds
//! CAP_SETPCAP, then switches user, clears every capability set and checks that its ids are
//! exactly the ones asked for; only then does it enter the working directory, so the kernel
//! checks the sandbox user's permissions on the way (and on any link planted in it); then the
//! parent-death signal is armed (a credential change clears it) and no_new_privs set, so
//! nothing it execs can regain a privilege. Every descriptor above stderr is marked
//! close-on-exec, so nothing the caller leaked crosses into the sandbox. Last, the seccomp
//! filters (see `seccomp`). The child is a copy of a multi-threaded process, so this code only
//! makes raw system calls: no allocation, no locks. A failure is reported with the
//! [`SetupStage`] it happened in.

use std::io;
use std::os::fd::RawFd;

/// What the child must do between fork and exec.
pub struct ChildSetup {
    /// The sandbox network namespace (kept open by the caller until the child has started).
    pub netns: Option<RawFd>,
    /// The child's private mount and IPC namespaces (see [`super::mounts`]).
    pub mounts: Option<super::mounts::PrivateMounts>,
    /// The working directory, entered once the mounts are in place (so a relative path means
    /// the same directory as its absolute form inside the sandbox).
    pub cwd: std::ffi::CString,
    pub uid: u32,
    pub gid: u32,
    /// The slave side of a terminal of the sandbox's own (`--tty`): it becomes the child's
    /// controlling terminal and its stdin, stdout and stderr.
    pub tty: Option<RawFd>,
    /// Highest capability number of this kernel (/proc/sys/kernel/cap_last_cap).
    pub cap_last: u32,
    /// RLIMIT_NPROC, soft and hard: processes and threads of the sandbox user. With a user of
    /// its own per execution this bounds the execution (a fork bomb stops at it), also on
    /// hosts whose cgroups have no pids controller.
    pub max_processes: u64,
    /// The execution's cgroup v1 directories to join, as root (see [`super::limits`]).
    pub limits: Option<super::limits::ChildLimits>,
    /// Landlock rules the command restricts itself with, after no_new_privs (see
    /// [`super::landlock`]).
    pub landlock: Option<super::landlock::LandlockPlan>,
    /// The seccomp filter (an allowlist), installed last (see [`super::seccomp`]).
    pub filters: super::seccomp::ChildFilters,
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Highest capability number the running kernel knows.
pub fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The step of [`ChildSetup::apply`] that failed, reported to the supervisor with the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SetupStage {
    Session = 1,
    Namespace = 2,
    Mounts = 3,
    Credentials = 4,
    WorkingDirectory = 5,
    Filters = 6,
    Limits = 7,
    Landlock = 8,
}

impl SetupStage {
    pub fn from_u8(value: u8) -> Option<SetupStage> {
        [
            SetupStage::Session,
            SetupStage::Namespace,
            SetupStage::Mounts,
            SetupStage::Credentials,
            SetupStage::WorkingDirectory,
            SetupStage::Filters,
            SetupStage::Limits,
            SetupStage::Landlock,
        ]
        .into_iter()
        .find(|stage| *stage as u8 == value)
    }
}

/// A failed setup step and its error.
pub type SetupError = (SetupStage, io::Error);

fn at<T>(stage: SetupStage, result: io::Result<T>) -> Result<T, SetupError> {
    result.map_err(|error| (stage, error))
}

impl ChildSetup {
    /// The first half, in the sandbox's init (PID 1 of its namespace), as root: a session of
    /// its own, the network namespace, the mounts, the v1 cgroups. What the init's children
    /// inherit. Async-signal-safe system calls only.
    pub fn enter_box(&self) -> Result<(), SetupError> {
        at(SetupStage::Session, self.new_session())?;
        // Nothing the supervisor's caller left open may cross into the sandbox: an
        // inherited socket would be a door past every wall. Marked close-on-exec rather
        // than closed, so the descriptors used below stay usable until exec.
        // SAFETY: close_range on this process's own table.
        at(
            SetupStage::Session,
            check(unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) as libc::c_int
            }),
        )?;
        if let Some(netns) = self.netns {
            // SAFETY: setns on a descriptor the supervisor keeps open.
            at(
                SetupStage::Namespace,
                check(unsafe { libc::setns(netns, libc::CLONE_NEWNET) }),
            )?;
        }
        if let Some(mounts) = &self.mounts {
            at(SetupStage::Mounts, mounts.apply())?;
        }
        if let Some(limits) = &self.limits {
            at(SetupStage::Limits, limits.join())?;
        }
        Ok(())
    }

    /// The second half, in the command's own process (a child of the init), up to exec:
    /// drop every privilege, enter the working directory, Landlock, seccomp.
    pub fn become_command(&self) -> Result<(), SetupError> {
        // The command leads a process group of its own; with --tty it is the foreground group
        // of its terminal, so the keys that signal (Ctrl-C) reach it. SIGTTOU is blocked (the
        // init's mask).
        // SAFETY: plain system calls on this process.
        at(SetupStage::Session, check(unsafe { libc::setpgid(0, 0) }))?;
        if self.tty.is_some() {
            // SAFETY: as above; fd 0 is the sandbox's terminal.
            at(
                SetupStage::Session,
                check(unsafe { libc::tcsetpgrp(0, libc::getpid()) }),
            )?;
        }
        // Under memory pressure the kernel picks the command's processes before the init
        // (whose death would lose the command's status) and before the host's. Raising the
        // score needs no privilege; the init keeps the default.
        // SAFETY: a literal path in the sandbox's own /proc and a static buffer.
        unsafe {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
        }
        at(SetupStage::Credentials, self.drop_privileges())?;
        // Entered as the sandbox user, with no capability left: the kernel checks that user's
        // permissions on every directory of the path (and on any link planted in it), so a
        // link left in a shared directory cannot lead into a tree only root may enter.
        // SAFETY: a NUL-terminated path prepared before the clone.
        at(
            SetupStage::WorkingDirectory,
            check(unsafe { libc::chdir(self.cwd.as_ptr()) }),
        )?;
        at(SetupStage::Credentials, self.arm_death_signal())?;
        if let Some(landlock) = &self.landlock {
            at(SetupStage::Landlock, landlock.restrict_self())?;
        }
        at(SetupStage::Filters, self.filters.apply())
    }

    /// A session of the child's own, so it has no controlling terminal: the caller's terminal
    /// (still its stdin, perhaps) is then one the sandbox cannot push input into (`TIOCSTI`
    /// needs the terminal to be the caller's controlling one) nor signal the caller's jobs
    /// through. With `--tty`, the sandbox's own terminal becomes its controlling terminal.
    fn new_session(&self) -> io::Result<()> {
        // SAFETY: plain system calls on descriptors this process owns.
        unsafe {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(tty) = self.tty {
                check(libc::ioctl(tty, libc::TIOCSCTTY, 0))?;
                for target in 0..=2 {
                    check(libc::dup2(tty, target))?;
                }
            }
        }
        Ok(())
    }

    /// Drops the capability bounding set, switches to the sandbox user and group, clears every
    /// capability set, and checks that the kernel did exactly that.
    fn drop_privileges(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values owned by this process; no allocation.
        unsafe {
            for cap in 0..=self.cap_last {
                // EINVAL for capabilities this kernel does not have is fine.
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // Raw system calls: glibc's wrappers would try to change the credentials of every
            // thread of the process this one was copied from, and wait for them forever.
            let limit = libc::rlimit {
                rlim_cur: self.max_processes,
                rlim_max: self.max_processes,
            };
            check(libc::setrlimit(libc::RLIMIT_NPROC, &limit))?;
            check(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) as _)?;
            check(libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid) as _)?;
            check(libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid) as _)?;
            clear_capabilities()?;
            self.check_credentials()
        }
    }

    /// Fails (EPERM) unless the real, effective and saved ids are exactly the ones asked for
    /// and no supplementary group is left: a value the kernel reads as "unchanged", or a
    /// switch that silently did less, must not start the command with root's ids.
    unsafe fn check_credentials(&self) -> io::Result<()> {
        let (mut ruid, mut euid, mut suid) = (u32::MAX, u32::MAX, u32::MAX);
        let (mut rgid, mut egid, mut sgid) = (u32::MAX, u32::MAX, u32::MAX);
        // SAFETY: the kernel writes three ids to each set of pointers.
        unsafe {
            check(libc::syscall(libc::SYS_getresuid, &mut ruid, &mut euid, &mut suid) as _)?;
            check(libc::syscall(libc::SYS_getresgid, &mut rgid, &mut egid, &mut sgid) as _)?;
            let groups = libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>());
            let expected =
                [ruid, euid, suid] == [self.uid; 3] && [rgid, egid, sgid] == [self.gid; 3];
            if !expected || groups != 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }

    /// Kills the command when the init dies, then forbids gaining privileges on exec.
    fn arm_death_signal(&self) -> io::Result<()> {
        // SAFETY: prctl and getppid only.
        unsafe {
            // After the credential change: the kernel clears the parent-death signal when
            // credentials change, so arming it earlier would be silently undone.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != 1 {
                // The init died before the death signal was armed.
                // (No message: allocating here could deadlock; nobody is left to read it.)
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        }
    }
}

/// capset(2) with empty effective, permitted and inheritable sets (version 3 ABI).
unsafe fn clear_capabilities() -> io::Result<()> {
    // SAFETY: as `keep_capabilities`.
    unsafe { keep_capabilities(0) }
}

/// capset(2) keeping exactly the capabilities of `kept` (a mask of the first 32) in the
/// effective and permitted sets, and none inheritable (version 3 ABI).
pub(super) unsafe fn keep_capabilities(kept: u32) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let low = Data {
        effective: kept,
        permitted: kept,
        inheritable: 0,
    };
    let high = Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let data = [low, high];
    // SAFETY: header and data follow the kernel's capset ABI for version 3.
    let result = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
