//! Starting the command inside the walls and waiting for it: the timeout, the signals
//! tollgate receives (passed on to the command through the sandbox's init), the circuit
//! breaker (`violation`), the terminal of `--tty`; then how the command ended.

use super::service::ServiceLink;
use super::violation::Violations;
use super::walls::{kill_sandbox, Walls};
use super::{status, tty, Refusal, RunOptions};
use crate::sandbox::landlock::LandlockPlan;
use crate::sandbox::launch::{self, LaunchError};
use crate::sandbox::mounts::PrivateMounts;
use crate::sandbox::seccomp::ChildFilters;
use crate::sandbox::spawn::{self, ChildSetup, SetupStage};
use std::os::fd::{AsFd as _, AsRawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// How the command ended.
pub(super) struct Ending {
    pub(super) status: std::process::ExitStatus,
    pub(super) timed_out: bool,
    /// A signal sent to tollgate that ended the run (SIGINT, SIGTERM, SIGHUP).
    pub(super) interrupted_by: Option<i32>,
    /// Why the circuit breaker ended the execution (`limits.on_violation: kill`).
    pub(super) violation: Option<String>,
    /// The node service closed the worker channel: its caller went away, or it is stopping.
    pub(super) ended_by_service: bool,
}

/// The status `tollgate run` exits with, and the signal that ended the command.
pub(super) fn exit_status_of(ending: &Ending) -> (i32, Option<i32>) {
    let signal = ending.status.signal();
    if ending.violation.is_some() || ending.ended_by_service {
        return (status::TOLLGATE_ERROR, signal);
    }
    if ending.timed_out {
        return (status::TIMEOUT, signal);
    }
    if let Some(by) = ending.interrupted_by {
        return (status::SIGNAL_BASE + by, signal);
    }
    match (ending.status.code(), signal) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (status::SIGNAL_BASE + signal, Some(signal)),
        (None, None) => (status::TOLLGATE_ERROR, None),
    }
}

/// What the command is started with.
pub(super) struct Child<'a> {
    pub(super) program: &'a std::path::Path,
    pub(super) cwd: &'a std::path::Path,
    pub(super) environment: std::collections::BTreeMap<String, String>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The Landlock rules the command restricts itself with, where the kernel has Landlock.
    pub(super) landlock: Option<LandlockPlan>,
    pub(super) mounts: PrivateMounts,
}

/// Spawns the command inside the walls and waits for it, a timeout, a signal, the circuit
/// breaker or (launched by the node service) the service ending it.
pub(super) async fn supervise(
    options: &RunOptions,
    child: Child<'_>,
    walls: &Walls,
    violations: &Violations,
    mut terminal: Option<&mut tty::SandboxTerminal>,
    service: Option<&ServiceLink>,
) -> Result<Ending, Refusal> {
    let Child {
        program,
        cwd,
        environment,
        uid,
        gid,
        landlock,
        mounts,
    } = child;
    use tokio::signal::unix::{signal, SignalKind};
    let setup = ChildSetup {
        netns: walls.net.as_ref().map(|n| n.netns.as_raw_fd()),
        mounts: Some(mounts),
        cwd: std::ffi::CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| Refusal::tollgate("--cwd contains a NUL byte"))?,
        uid,
        gid,
        tty: terminal.as_ref().and_then(|t| t.slave()),
        limits: Some(walls.limits.child()),
        landlock,
        cap_last: spawn::cap_last_cap(),
        max_processes: walls.limits.limits().processes,
        filters: ChildFilters::compile()
            .map_err(|e| Refusal::tollgate(format!("cannot compile the seccomp filter: {e}")))?,
    };
    let command = launch::Command::new(program, &options.command, &environment)
        .map_err(|e| Refusal::tollgate(format!("cannot prepare the command: {e}")))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    // A launch the service gave up on while it was prepared never starts its command.
    if service.is_some_and(ServiceLink::is_closed) {
        return Err(Refusal::tollgate(super::service::ENDED_BY_SERVICE));
    }
    let mut child = launch::launch(&command, &setup, walls.cgroup.as_fd())
        .map_err(|e| launch_refusal(program, cwd, e))?;
    let mut window =
        signal(SignalKind::window_change()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    if let Some(terminal) = terminal.as_mut() {
        terminal
            .start_relay()
            .map_err(|e| Refusal::tollgate(format!("cannot relay the --tty terminal: {e}")))?;
    }
    let timeout = options.timeout.unwrap_or(Duration::MAX);
    let deadline = tokio::time::sleep(timeout.min(Duration::from_secs(365 * 86_400)));
    tokio::pin!(deadline);
    // After a terminating signal is passed on, the command has STOP_GRACE to end on its own.
    let stop = tokio::time::sleep(Duration::MAX.min(Duration::from_secs(365 * 86_400)));
    tokio::pin!(stop);
    let mut quit = signal(SignalKind::quit()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    let mut user1 =
        signal(SignalKind::user_defined1()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    let mut user2 =
        signal(SignalKind::user_defined2()).map_err(|e| Refusal::tollgate(e.to_string()))?;
    let mut timed_out = false;
    let mut interrupted_by = None;
    let mut killed = false;
    let mut violation = None;
    let service_gone = async {
        match service {
            Some(link) => link.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(service_gone);
    let mut ended_by_service = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = &mut service_gone, if !ended_by_service => {
                ended_by_service = true;
                kill_sandbox(walls);
            }
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                kill_sandbox(walls);
            }
            reason = violations.rung(), if violation.is_none() && !timed_out && !killed => {
                violation = Some(reason);
                kill_sandbox(walls);
            }
            _ = interrupt.recv() => {
                stopping(&child, walls, libc::SIGINT, &mut interrupted_by, &mut killed);
                stop.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = terminate.recv() => {
                stopping(&child, walls, libc::SIGTERM, &mut interrupted_by, &mut killed);
                stop.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = hangup.recv() => {
                stopping(&child, walls, libc::SIGHUP, &mut interrupted_by, &mut killed);
                stop.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = &mut stop, if interrupted_by.is_some() && !killed => {
                killed = true;
                kill_sandbox(walls);
            }
            _ = quit.recv() => forward(&child, libc::SIGQUIT),
            _ = user1.recv() => forward(&child, libc::SIGUSR1),
            _ = user2.recv() => forward(&child, libc::SIGUSR2),
            _ = window.recv() => {
                if let Some(terminal) = terminal.as_ref() {
                    terminal.resize();
                }
            }
        }
    };
    status.map_err(|e| Refusal::tollgate(format!("cannot wait for the command: {e}")))?;
    let status = child
        .command_status()
        .ok_or_else(|| Refusal::tollgate("the command's status was lost"))?;
    Ok(Ending {
        status,
        timed_out,
        // A command that ended on its own after the signal reports its own status.
        interrupted_by: interrupted_by.filter(|_| killed),
        violation,
        ended_by_service,
    })
}

/// A terminating signal to tollgate: the first is passed on to the command, a second kills
/// the execution at once.
fn stopping(
    child: &launch::SandboxChild,
    walls: &Walls,
    signal: i32,
    interrupted_by: &mut Option<i32>,
    killed: &mut bool,
) {
    if interrupted_by.is_some() {
        *killed = true;
        kill_sandbox(walls);
    } else {
        *interrupted_by = Some(signal);
        forward(child, signal);
    }
}

/// How long a command has to end after tollgate passed on `SIGINT`, `SIGTERM` or `SIGHUP`
/// before the whole execution is killed (a second such signal kills at once).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Passes `signal` on to the command, through the sandbox's init.
fn forward(child: &launch::SandboxChild, signal: i32) {
    if let Err(error) = child.signal(signal) {
        tracing::debug!("cannot pass signal {signal} on to the sandbox: {error}");
    }
}

fn launch_refusal(program: &std::path::Path, cwd: &std::path::Path, error: LaunchError) -> Refusal {
    match error {
        LaunchError::Exec(error) => match error.raw_os_error() {
            Some(libc::ENOENT) => Refusal {
                status: status::NOT_FOUND,
                message: format!("command not found in the sandbox: {}", program.display()),
            },
            Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => Refusal {
                status: status::NOT_EXECUTABLE,
                message: format!(
                    "{} cannot be executed by the sandbox user: {error}",
                    program.display()
                ),
            },
            _ => Refusal {
                status: status::NOT_EXECUTABLE,
                message: format!("cannot execute {}: {error}", program.display()),
            },
        },
        LaunchError::Setup(SetupStage::WorkingDirectory, error) => Refusal::tollgate(format!(
            "the sandbox user cannot enter --cwd {}: {error}",
            cwd.display()
        )),
        LaunchError::Setup(SetupStage::Credentials, error)
            if error.raw_os_error() == Some(libc::EPERM) =>
        {
            Refusal::tollgate(format!(
                "the command's user and groups are not exactly the ones asked for after the \
                 switch, so it was not started: {error}"
            ))
        }
        LaunchError::Setup(stage, error) => Refusal::tollgate(format!(
            "cannot set up the sandbox for {} ({stage:?}): {error}",
            program.display()
        )),
        LaunchError::Clone(error) => Refusal::tollgate(format!(
            "cannot create the sandboxed process (clone3 into the execution's cgroup needs \
             Linux 5.7 or newer): {error}"
        )),
    }
}
