//! Starting the command and waiting for it: `clone3` straight into the execution's cgroup,
//! the child's setup ([`ChildSetup`]), `execve`; then a pidfd to wait on.
//!
//! Why not `std::process::Command`: it forks in the supervisor's cgroup, so the child had to
//! move itself into the execution's cgroup by writing `cgroup.procs`, and that migration takes
//! the cgroup threadgroup lock for writing, which waits for an RCU grace period whenever the
//! lock is in its fast mode — up to 16 ms of a start that otherwise takes a few. With
//! `CLONE_INTO_CGROUP` the child is born in its cgroup: nothing to migrate, and no moment at
//! which it runs outside the walls. `CLONE_PIDFD` gives a descriptor that becomes readable
//! when the child exits, so waiting needs no SIGCHLD handler.
//!
//! The child is a copy of the supervisor made by a raw `clone3` (no shared memory), so
//! between clone and exec it only makes system calls, on data prepared here before the clone.
//! It reports a failure to the supervisor through a close-on-exec pipe: which stage failed and
//! the errno; a pipe closed without a report means `execve` succeeded.

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
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
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
const STAGE_EXEC: u8 = 0xff;

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
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `command` inside `cgroup` (a cgroup v2 directory), set up by `setup`. Returns once
/// the program is executing, or with the stage that failed.
pub fn launch(
    command: &Command,
    setup: &ChildSetup,
    cgroup: BorrowedFd<'_>,
) -> Result<SandboxChild, LaunchError> {
    let (report_read, report_write) = pipe().map_err(LaunchError::Clone)?;
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM makes a copy of this process, like fork; the child only
    // runs `child`, which makes system calls on memory prepared before this point and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        child(command, setup, report_write.as_raw_fd());
    }
    if pid < 0 {
        return Err(LaunchError::Clone(io::Error::last_os_error()));
    }
    drop(report_write);
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut child = SandboxChild {
        pid: pid as libc::pid_t,
        pidfd: None,
        status: None,
        raw_pidfd: Some(pidfd),
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

/// The child, from clone to exec. System calls only; never returns.
fn child(command: &Command, setup: &ChildSetup, report: libc::c_int) -> ! {
    let fail = |stage: u8, error: io::Error| -> ! {
        let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
        let mut message = [0u8; 5];
        message[0] = stage;
        message[1..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: writes a stack buffer to the report pipe, then exits without unwinding.
        unsafe {
            libc::write(report, message.as_ptr().cast(), message.len());
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls on values prepared before the clone.
    unsafe {
        // Rust ignores SIGPIPE; an ignored signal would stay ignored across exec.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    if let Err((stage, error)) = setup.apply() {
        fail(stage as u8, error);
    }
    // SAFETY: NULL-terminated arrays of pointers into CStrings owned by `command`.
    unsafe {
        libc::execve(
            command.program.as_ptr(),
            command.argv_ptrs.as_ptr(),
            command.envp_ptrs.as_ptr(),
        );
    }
    fail(STAGE_EXEC, io::Error::last_os_error())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
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

/// The running command. Dropping it before it was waited for kills and reaps it.
pub struct SandboxChild {
    pid: libc::pid_t,
    /// Registered with the async runtime on the first `wait`.
    pidfd: Option<AsyncFd<OwnedFd>>,
    raw_pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl SandboxChild {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits until the command exits and reaps it.
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
