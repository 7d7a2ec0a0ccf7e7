//! Starting the command and waiting for it: `clone3` straight into the execution's cgroup and
//! a new PID namespace, whose PID 1 is tollgate's own init ([`super::init`]); the init sets
//! up the box ([`ChildSetup::enter_box`]) and starts the command
//! ([`ChildSetup::become_command`], then `execve`); a pidfd to wait on.
//!
//! Why not `std::process::Command`: it forks in the supervisor's cgroup, so the child had to
//! move itself into the execution's cgroup by writing `cgroup.procs`, and that migration takes
//! the cgroup threadgroup lock for writing, which waits for an RCU grace period whenever the
//! lock is in its fast mode — up to 16 ms of a start that otherwise takes a few. With
//! `CLONE_INTO_CGROUP` the init is born in its cgroup: nothing to migrate, and no moment at
//! which it runs outside the walls. `CLONE_NEWPID` makes it PID 1 of a namespace that dies
//! with it: when the init exits (the command ended) or is killed (its parent-death signal
//! fires when the supervisor dies), the kernel kills every process left in the namespace, so
//! nothing of an execution outlives its supervisor. `CLONE_PIDFD` gives a descriptor that
//! becomes readable when the init exits, so waiting needs no SIGCHLD handler.
//!
//! The init is a copy of the supervisor made by a raw `clone3` (no shared memory), so it only
//! makes system calls, on data prepared here before the clone. Failures are reported through
//! a close-on-exec pipe: which stage failed and the errno; the pipe closed without a report
//! means `execve` of the command succeeded. The command's wait status comes back through a
//! second pipe, written by the init before it exits.

use super::init::{self, InitPipes};
use super::spawn::{ChildSetup, SetupStage};
use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::ExitStatus;
use tokio::io::unix::AsyncFd;

/// The command line and environment, as the child's system calls take them (all
/// allocation happens here, before the clone).
pub struct Command {
    pub(super) program: CString,
    _argv: Vec<CString>,
    pub(super) argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    pub(super) envp_ptrs: Vec<*const libc::c_char>,
}

impl Command {
    /// `program` is executed with `argv` (argv[0] included) and exactly `env`.
    pub fn new(
        program: &Path,
        argv: &[OsString],
        env: &BTreeMap<String, String>,
    ) -> io::Result<Command> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an argument, variable or path contains a NUL byte",
                )
            })
        };
        let argv = argv
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Command {
            program: c(program.as_os_str().as_bytes())?,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            _argv: argv,
            _envp: envp,
        })
    }
}

/// Why the command did not start.
#[derive(Debug)]
pub enum LaunchError {
    /// `clone3` failed: the supervisor could not create the process.
    Clone(io::Error),
    /// The child failed to set itself up (mounts, directory, privileges, filters).
    Setup(SetupStage, io::Error),
    /// `execve` failed: the program could not be executed.
    Exec(io::Error),
}

/// The stage a child reports an `execve` failure from (setup stages are [`SetupStage`]s).
pub(super) const STAGE_EXEC: u8 = 0xff;

/// The `clone3` arguments (`struct clone_args`, version 2: with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_NEWPID: u64 = libc::CLONE_NEWPID as u64;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `command` inside `cgroup` (a cgroup v2 directory) and a new PID namespace, set up by
/// `setup`. Returns once the program is executing, or with the stage that failed.
pub fn launch(
    command: &Command,
    setup: &ChildSetup,
    cgroup: BorrowedFd<'_>,
) -> Result<SandboxChild, LaunchError> {
    let (report_read, report_write) = pipe().map_err(LaunchError::Clone)?;
    let (status_read, status_write) = pipe().map_err(LaunchError::Clone)?;
    // Held here while the execution runs: the init sees the supervisor is gone when the
    // last write end closes.
    let (life_read, life_write) = pipe().map_err(LaunchError::Clone)?;
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP | CLONE_NEWPID,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let pipes = InitPipes {
        report: report_write.as_raw_fd(),
        status: status_write.as_raw_fd(),
        life: life_read.as_raw_fd(),
        life_write: life_write.as_raw_fd(),
    };
    // SAFETY: clone3 without CLONE_VM makes a copy of this process, like fork; the child only
    // runs the init, which makes system calls on memory prepared before this point and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        init::run(command, setup, &pipes);
    }
    if pid < 0 {
        return Err(LaunchError::Clone(io::Error::last_os_error()));
    }
    drop((report_write, status_write, life_read));
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut child = SandboxChild {
        pid: pid as libc::pid_t,
        pidfd: None,
        status: None,
        raw_pidfd: Some(pidfd),
        command_status: status_read,
        _life: life_write,
    };
    if let Some((stage, errno)) = read_report(&report_read) {
        child.reap_now();
        let error = io::Error::from_raw_os_error(errno);
        return Err(match SetupStage::from_u8(stage) {
            Some(stage) => LaunchError::Setup(stage, error),
            None => LaunchError::Exec(error),
        });
    }
    Ok(child)
}

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's failure report, or `None` when the pipe closed without one (exec succeeded).
fn read_report(pipe: &OwnedFd) -> Option<(u8, i32)> {
    let mut message = [0u8; 5];
    let mut filled = 0;
    while filled < message.len() {
        // SAFETY: reads into the unfilled part of a stack buffer.
        let n = unsafe {
            libc::read(
                pipe.as_raw_fd(),
                message[filled..].as_mut_ptr().cast(),
                message.len() - filled,
            )
        };
        match n {
            0 => break,
            n if n > 0 => filled += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    (filled == message.len()).then(|| {
        let errno = i32::from_ne_bytes([message[1], message[2], message[3], message[4]]);
        (message[0], errno)
    })
}

/// The running execution: its init, and through it the command. Dropping it before it was
/// waited for kills and reaps the init (and so everything in its namespace).
pub struct SandboxChild {
    pid: libc::pid_t,
    /// Registered with the async runtime on the first `wait`.
    pidfd: Option<AsyncFd<OwnedFd>>,
    raw_pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
    /// Where the init writes the command's wait status before it exits.
    command_status: OwnedFd,
    /// The supervisor's end of the init's life pipe.
    _life: OwnedFd,
}

impl SandboxChild {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Sends `signal` to the init, which passes it on to the command.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let pidfd = match (&self.pidfd, &self.raw_pidfd) {
            (Some(registered), _) => registered.get_ref().as_raw_fd(),
            (None, Some(raw)) => raw.as_raw_fd(),
            (None, None) => return Err(io::Error::from_raw_os_error(libc::ESRCH)),
        };
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                signal,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if sent == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// How the command ended, once the init has exited: the status the init reported, or,
    /// when the init was killed before it could (a timeout, a kill of the whole execution),
    /// the init's own.
    pub fn command_status(&self) -> Option<ExitStatus> {
        let mut raw = [0u8; 4];
        // SAFETY: a non-blocking read into a stack buffer; the init wrote at most once.
        let n = unsafe {
            libc::fcntl(
                self.command_status.as_raw_fd(),
                libc::F_SETFL,
                libc::O_NONBLOCK,
            );
            libc::read(
                self.command_status.as_raw_fd(),
                raw.as_mut_ptr().cast(),
                raw.len(),
            )
        };
        if n == 4 {
            Some(ExitStatus::from_raw(i32::from_ne_bytes(raw)))
        } else {
            self.status
        }
    }

    /// Waits until the init exits and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if self.pidfd.is_none() {
            let raw = self.raw_pidfd.take().expect("a pidfd until registered");
            // SAFETY: the OwnedFd moves into the AsyncFd, which alone owns and closes it.
            self.pidfd = Some(unsafe {
                AsyncFd::register_with_interest(raw, tokio::io::Interest::READABLE)?
            });
        }
        let pidfd = self.pidfd.as_ref().expect("registered above");
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(status) = self.try_reap()? {
                self.status = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }

    /// Reaps the child if it has exited.
    fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waits for our own child only.
        match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            pid if pid == self.pid => Ok(Some(ExitStatus::from_raw(status))),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Kills (if needed) and reaps the child, blocking.
    fn reap_now(&mut self) {
        if self.status.is_some() {
            return;
        }
        let mut status = 0;
        // SAFETY: signals and waits for our own child only.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            if libc::waitpid(self.pid, &mut status, 0) == self.pid {
                self.status = Some(ExitStatus::from_raw(status));
            }
        }
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        // The pid is ours until reaped, so the signal cannot reach a recycled pid.
        self.reap_now();
    }
}
