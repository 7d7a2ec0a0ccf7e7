//! PID 1 of the sandbox's PID namespace: tollgate's own init.
//!
//! The init is the process `clone3` creates (see `launch`). It sets up the box as root
//! ([`ChildSetup::enter_box`]), forks the command (which drops every privilege and execs, see
//! [`ChildSetup::become_command`]), then only waits: it reaps every orphan the command leaves
//! (a PID 1 must, or zombies pile up), passes on the signals the supervisor sends it
//! (`SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2`) to the command, and when
//! the command exits, writes its wait status to the supervisor and exits — and the kernel
//! kills everything left in the namespace at once (daemons included).
//!
//! It dies with the supervisor: its parent-death signal is `SIGKILL`, armed first, and a life
//! pipe (the supervisor holds the write end) catches a supervisor that died before that. The
//! init keeps root's uid, so the command (another uid) can neither signal nor trace it, and it
//! is not dumpable, so its memory — a copy of the supervisor's, secrets included — cannot be
//! read through `/proc` either; it keeps no capability but `CAP_KILL` (to pass signals to a
//! process of another uid) and closes every descriptor but the status pipe once the command
//! runs. It makes system calls only: it is a copy of a multi-threaded process.

use super::launch::{Command, STAGE_EXEC};
use super::spawn::ChildSetup;
use std::io;
use std::os::fd::RawFd;

/// The pipes between the supervisor and the init (raw descriptors in the init's copy of the
/// supervisor's table).
pub struct InitPipes {
    /// Write end for failure reports (stage, errno); close-on-exec.
    pub report: RawFd,
    /// Write end for the command's wait status.
    pub status: RawFd,
    /// Read end of the life pipe, and the write end the supervisor holds (closed here).
    pub life: RawFd,
    pub life_write: RawFd,
}

/// The signals passed on to the command.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Writes a failure report and exits (127). Never returns.
fn fail(report: RawFd, stage: u8, error: io::Error) -> ! {
    let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
    let mut message = [0u8; 5];
    message[0] = stage;
    message[1..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes a stack buffer to the report pipe, then exits without unwinding.
    unsafe {
        libc::write(report, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// The init, from clone to its exit. Never returns.
pub fn run(command: &Command, setup: &ChildSetup, pipes: &InitPipes) -> ! {
    // SAFETY: system calls on this process and on values prepared before the clone.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::close(pipes.life_write);
        if supervisor_gone(pipes.life) {
            libc::_exit(127);
        }
        libc::close(pipes.life);
        // Rust ignores SIGPIPE; an ignored signal would stay ignored across exec.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Blocked, to be taken with sigwaitinfo (a blocked signal reaches a PID 1 even without
        // a handler); SIGTTOU too, so the command can take its terminal's foreground.
        let mut waited: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut waited);
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD, libc::SIGTTOU]) {
            libc::sigaddset(&mut waited, signal);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &waited, std::ptr::null_mut());
    }
    if let Err((stage, error)) = setup.enter_box() {
        fail(pipes.report, stage as u8, error);
    }
    // SAFETY: prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // A raw fork: glibc's would run atfork handlers and take locks other threads of the
    // supervisor may have held at the clone.
    // SAFETY: a fork without CLONE_VM; the child runs `start_command`, which never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if pid == 0 {
        start_command(command, setup, pipes.report);
    }
    if pid < 0 {
        fail(
            pipes.report,
            super::spawn::SetupStage::Session as u8,
            io::Error::last_os_error(),
        );
    }
    let command_pid = pid as libc::pid_t;
    // SAFETY: this process's own descriptors and capabilities.
    unsafe {
        close_all_but(pipes.status);
        keep_only_cap_kill(setup.cap_last);
    }
    wait_for(command_pid, pipes.status)
}

/// Whether the supervisor is gone: the life pipe's last write end closed.
unsafe fn supervisor_gone(life: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd: life,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, no wait.
    unsafe { libc::poll(&mut poll, 1, 0) == 1 && poll.revents & libc::POLLHUP != 0 }
}

/// In the command's process: drop everything, restore the signal mask, exec.
fn start_command(command: &Command, setup: &ChildSetup, report: RawFd) -> ! {
    if let Err((stage, error)) = setup.become_command() {
        fail(report, stage as u8, error);
    }
    // SAFETY: NULL-terminated arrays of pointers into CStrings owned by `command`.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(
            command.program.as_ptr(),
            command.argv_ptrs.as_ptr(),
            command.envp_ptrs.as_ptr(),
        );
    }
    fail(report, STAGE_EXEC, io::Error::last_os_error())
}

/// Closes every descriptor above stderr but `keep`.
unsafe fn close_all_but(keep: RawFd) {
    // SAFETY: close_range on this process's own table.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// Drops every capability but `CAP_KILL`, from the bounding set and the other sets.
unsafe fn keep_only_cap_kill(cap_last: u32) {
    const CAP_KILL: u32 = 5;
    // SAFETY: prctl and capset on this process.
    unsafe {
        for cap in (0..=cap_last).filter(|cap| *cap != CAP_KILL) {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        let _ = super::spawn::keep_capabilities(1 << CAP_KILL);
    }
}

/// Reaps and passes signals on until the command exits; then reports its status and exits.
fn wait_for(command: libc::pid_t, status_pipe: RawFd) -> ! {
    // SAFETY: signal-mask, wait and kill system calls on this process and its children.
    unsafe {
        let mut waited: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut waited);
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut waited, signal);
        }
        loop {
            let signal = libc::sigwaitinfo(&waited, std::ptr::null_mut());
            if signal == libc::SIGCHLD || signal < 0 {
                // Reap everything that has exited; the command's status ends the init.
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid == command {
                        let raw = status.to_ne_bytes();
                        libc::write(status_pipe, raw.as_ptr().cast(), raw.len());
                        libc::_exit(0);
                    }
                    if pid <= 0 {
                        break;
                    }
                }
            } else {
                libc::kill(command, signal);
            }
        }
    }
}
