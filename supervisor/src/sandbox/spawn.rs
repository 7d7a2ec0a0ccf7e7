//! What the child does between clone and exec, to put itself inside the walls: enter the
//! namespace, drop every privilege, then hand over to exec.
//!
//! The order is the point. The child is born in the execution's cgroup (see `launch`), so no
//! socket it ever creates escapes the eBPF programs; it enters the sandbox namespace before it
//! can open a socket in the host's; it gets its private mounts (see `mounts`); it drops the
//! capability bounding set while it still holds CAP_SETPCAP, then switches user, clears every
//! capability set and sets no_new_privs, so nothing it execs can regain a privilege; only then
//! is the parent-death signal armed (a credential change clears it). Every descriptor above
//! stderr is marked close-on-exec, so nothing the caller leaked crosses into the sandbox.
//! Last, seccomp filters limit socket families and refuse io_uring and namespaces (see
//! `seccomp`). The child is a copy of a multi-threaded process, so this code only makes raw
//! system calls: no allocation, no locks.

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
    /// Make the child the terminal's foreground process group (stdin is a terminal).
    pub foreground: bool,
    /// Highest capability number of this kernel (/proc/sys/kernel/cap_last_cap).
    pub cap_last: u32,
    /// RLIMIT_NPROC, soft and hard: processes and threads of the sandbox user. With a user of
    /// its own per execution this bounds the execution (a fork bomb stops at it), also on
    /// hosts whose cgroups have no pids controller.
    pub max_processes: u64,
    /// The supervisor's pid, to notice it died before PR_SET_PDEATHSIG took effect.
    pub parent: libc::pid_t,
    /// Socket-family, io_uring and namespace filters, installed last (see [`super::seccomp`]).
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

impl ChildSetup {
    /// Runs in the child after fork. Async-signal-safe system calls only.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values owned by this process; no allocation.
        unsafe {
            check(libc::setpgid(0, 0))?;
            if self.foreground {
                // A background group may not take the terminal unless SIGTTOU is blocked.
                let mut block: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut block);
                libc::sigaddset(&mut block, libc::SIGTTOU);
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old);
                let _ = libc::tcsetpgrp(0, libc::getpid());
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
            // Nothing the supervisor's caller left open may cross into the sandbox: an
            // inherited socket would be a door past every wall. Marked close-on-exec rather
            // than closed, so the descriptors used below stay usable until exec.
            check(libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) as libc::c_int)?;
        }
        unsafe {
            if let Some(netns) = self.netns {
                check(libc::setns(netns, libc::CLONE_NEWNET))?;
            }
        }
        if let Some(mounts) = &self.mounts {
            mounts.apply()?;
        }
        unsafe {
            check(libc::chdir(self.cwd.as_ptr()))?;
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
            // After the credential change: the kernel clears the parent-death signal when
            // credentials change, so arming it earlier would be silently undone.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != self.parent {
                // The supervisor died before the death signal was armed.
                // (No message: allocating here could deadlock; nobody is left to read it.)
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        self.filters.apply()
    }
}

/// capset(2) with empty effective, permitted and inheritable sets (version 3 ABI).
unsafe fn clear_capabilities() -> io::Result<()> {
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
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data follow the kernel's capset ABI for version 3.
    let result = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
