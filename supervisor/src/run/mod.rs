//! One execution, end to end: load the policy, build the walls, start the proxy, spawn the
//! command inside, wait, tear everything down, report.
//!
//! ```text
//! policy → gc → user lease → namespace (+ nftables, + proxy listener) ∥ cgroup → eBPF wall
//!        → proxy → child (clone3 into the cgroup → setns → private mounts → drop privileges
//!        → exec) → wait / timeout / signal
//!        → kill cgroup → detach wall → stop proxy → audit + summary → exit status
//! ```
//! Every wall that cannot be built stops the run with exit status 125 and the reason; nothing
//! ever runs with a wall missing. Teardown runs on every path, including errors.

mod env;
pub use env::gc_runtime_dirs;
mod events;
mod summary;

use crate::audit::{now_rfc3339, AuditLog};
use crate::proxy::{Credentials, Interception, Proxy};
use crate::sandbox::bpf::{AttachedWall, EgressPrograms};
use crate::sandbox::cgroup::{self, ExecutionCgroup};
use crate::sandbox::command::{self, CommandProblem};
use crate::sandbox::launch::{self, LaunchError};
use crate::sandbox::layers::Layers;
use crate::sandbox::mounts::{self, PrivateMounts, Share};
use crate::sandbox::netns::{self, NamespaceWalls, SandboxNet};
use crate::sandbox::seccomp::ChildFilters;
use crate::sandbox::spawn::{self, ChildSetup};
use crate::sandbox::users::UserLease;
use serde_json::json;
use std::ffi::OsString;
use std::os::fd::{AsFd as _, AsRawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use summary::Summary;
use tollgate_policy::Policy;

/// Exit statuses of `tollgate run` besides the command's own.
pub mod status {
    pub const TIMEOUT: i32 = 124;
    pub const TOLLGATE_ERROR: i32 = 125;
}

/// How long the execution's CA is valid when the run has no `--timeout` (with one, the CA
/// lives as long as the timeout, plus a margin).
const CA_LIFETIME_WITHOUT_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// Processes and threads an execution may run at once unless `--max-processes` says
/// otherwise: room for thread pools and build tools, far below the host's pid space.
pub const DEFAULT_MAX_PROCESSES: u64 = 1024;

/// Size of the sandbox's `/tmp` and `/var/tmp` (each) unless `--tmp-size` says otherwise.
pub const DEFAULT_TMP_SIZE: u64 = 1 << 30;

/// Everything `tollgate run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// `uid:gid` to run as; `None` leases a user of the execution's own (see
    /// `sandbox::users`).
    pub user: Option<(u32, u32)>,
    /// RLIMIT_NPROC of the sandbox user (see `sandbox::spawn::ChildSetup`).
    pub max_processes: u64,
    pub allow_root: bool,
    pub cwd: Option<PathBuf>,
    /// Directories below /tmp or /var/tmp bound into the sandbox's own (see
    /// `sandbox::mounts`).
    pub shares: Vec<Share>,
    /// Size of the sandbox's own `/tmp` and of its `/var/tmp`, in bytes each.
    pub tmp_size: u64,
    pub env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
    /// Where the team's secrets may come from (`--secrets-dir`, `--allow-secret-env`).
    pub secrets: tollgate_policy::secrets::SecretRules,
    pub audit: Option<PathBuf>,
    pub summary: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// A failure of tollgate itself (exit 125), or a command that cannot run (126/127).
struct Refusal {
    status: i32,
    message: String,
}

impl Refusal {
    fn tollgate(message: impl Into<String>) -> Self {
        Refusal {
            status: status::TOLLGATE_ERROR,
            message: message.into(),
        }
    }
}

impl From<crate::sandbox::SandboxError> for Refusal {
    fn from(error: crate::sandbox::SandboxError) -> Self {
        Refusal::tollgate(error.to_string())
    }
}

/// Runs one execution and returns the exit status for `tollgate run`.
pub fn run(options: RunOptions) -> i32 {
    match execute(options) {
        Ok(status) => status,
        Err(refusal) => {
            eprintln!("tollgate: {}", refusal.message);
            refusal.status
        }
    }
}

/// How the command ended.
struct Ending {
    status: std::process::ExitStatus,
    timed_out: bool,
    /// A signal sent to tollgate that ended the run (SIGINT, SIGTERM, SIGHUP).
    interrupted_by: Option<i32>,
}

fn execute(options: RunOptions) -> Result<i32, Refusal> {
    let started = Instant::now();
    if options.user.is_some_and(|(uid, _)| uid == 0) && !options.allow_root {
        return Err(Refusal::tollgate(
            "refusing to run the command as root (--user 0): a root process could leave its \
             cgroup and its walls; use an unprivileged user, or pass --allow-root if you must",
        ));
    }
    let policy = match &options.policy {
        Some(path) => Some(Policy::load(path).map_err(|errors| {
            // One line: the first problem, and where to see all of them.
            let first = errors
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let more = errors.errors.len().saturating_sub(1);
            let more = if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            };
            Refusal::tollgate(format!(
                "invalid policy: {first}{more}; `tollgate policy check {}` lists every problem",
                path.display()
            ))
        })?),
        None => None,
    };
    let network = policy.as_ref().is_some_and(Policy::network_enabled);
    // Secrets are read once, here, before anything is built: a missing one stops the run.
    let credentials =
        match &policy {
            Some(policy) if network => Some(Credentials::load(policy, &options.secrets).map_err(|e| {
                Refusal::tollgate(format!("cannot load the team's credentials: {e}"))
            })?),
            _ => None,
        };
    let program = options
        .command
        .first()
        .ok_or_else(|| Refusal::tollgate("no command given: write it after `--`"))?;
    // Before a uid is leased: processes a killed supervisor left behind die here, so they
    // can never share a uid with this execution.
    if let Err(error) = cgroup::gc_stale() {
        tracing::warn!("cannot reap stale executions: {error}");
    }
    if let Ok(mount) = cgroup::cgroup2_mount() {
        env::gc_runtime_dirs(&mount.join("tollgate"));
    }
    // Held until this function returns, after every process of the execution is dead.
    let (_lease, (uid, gid)) = match options.user {
        Some(user) => (None, user),
        None => {
            let lease = UserLease::claim()?;
            let id = lease.uid();
            (Some(lease), (id, id))
        }
    };
    let program =
        command::resolve(program, env::SANDBOX_PATH, uid, gid).map_err(|problem| Refusal {
            status: problem.exit_status(),
            message: match &problem {
                CommandProblem::NotFound(m) | CommandProblem::NotExecutable(m) => m.clone(),
            },
        })?;
    check_visible(&program, &options)?;
    let audit = match &options.audit {
        Some(path) => AuditLog::create(path).map_err(|e| {
            Refusal::tollgate(format!(
                "cannot create the audit log {}: {e}",
                path.display()
            ))
        })?,
        None => AuditLog::disabled(),
    };
    let cwd = options.cwd.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
    if !cwd.is_dir() {
        return Err(Refusal::tollgate(format!(
            "--cwd {} is not a directory",
            cwd.display()
        )));
    }
    if let Some(why) = mounts::invisible_because(&cwd, &options.shares) {
        return Err(Refusal::tollgate(format!(
            "the sandbox cannot see --cwd: {why}"
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tollgate-proxy")
        .build()
        .map_err(|e| Refusal::tollgate(format!("cannot start the async runtime: {e}")))?;

    let layers = Layers::for_this_build();
    let execution = cgroup::new_execution_id()?;
    let team = policy.as_ref().map(|p| p.team.clone());
    let mut walls = Walls::build(&execution, layers, network)?;
    let proxy_address = walls.listener.as_ref().and_then(|l| l.local_addr().ok());
    // The execution's CA and the files the sandbox reads (removed when `runtime_dir` drops).
    let (interception, runtime_dir) = match (&policy, proxy_address) {
        (Some(policy), Some(_)) if network => {
            let lifetime = options.timeout.unwrap_or(CA_LIFETIME_WITHOUT_TIMEOUT);
            let interception = Interception::for_policy(policy, &execution, lifetime)
                .map_err(|e| Refusal::tollgate(format!("cannot set up TLS interception: {e}")))?;
            let dir = env::RuntimeDir::create(&execution, &interception.sandbox_bundle())
                .map_err(Refusal::tollgate)?;
            (Some(Arc::new(interception)), Some(dir))
        }
        _ => (None, None),
    };
    let network_env = match (proxy_address, &runtime_dir) {
        (Some(proxy), Some(dir)) => Some(env::NetworkEnv {
            proxy,
            ca_bundle: dir.ca_bundle(),
            python_path: dir.python_path(),
            placeholders: credentials
                .as_ref()
                .map(Credentials::placeholder_environment)
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let environment = env::child_environment(
        policy.as_ref(),
        &options.pass_env,
        &options.env,
        network_env.as_ref(),
        "/tmp",
    )
    .map_err(Refusal::tollgate)?;

    let proxy = match (&policy, walls.listener.take()) {
        (Some(policy), Some(listener)) if network => {
            let mut builder = Proxy::builder(Arc::new(policy.clone()))
                .execution_id(execution.clone())
                .credentials(credentials.unwrap_or_default());
            if let Some(interception) = &interception {
                builder = builder.interception(interception.clone());
            }
            if let Some(writer) = audit.writer() {
                builder = builder.audit(writer);
            }
            Some(
                builder
                    .build()
                    .start(runtime.handle(), listener)
                    .map_err(|e| Refusal::tollgate(format!("cannot start the proxy: {e}")))?,
            )
        }
        _ => None,
    };

    walls.pump = walls
        .wall
        .take()
        .map(|wall| events::EventPump::start(wall, audit.clone(), execution.clone(), team.clone()))
        .transpose()
        .map_err(|e| Refusal::tollgate(format!("cannot start the audit event reader: {e}")))?;
    let child = Child {
        program: &program,
        cwd: &cwd,
        environment,
        uid,
        gid,
        mounts: PrivateMounts::prepare(
            runtime_dir.as_ref().map(|dir| dir.path()),
            &options.shares,
            options.tmp_size,
        )?,
    };
    let ending = runtime.block_on(supervise(&options, child, &walls));
    let report = walls.tear_down(&audit, &execution, team.as_deref());
    let proxy_stats = proxy.map(|handle| runtime.block_on(handle.shutdown()));
    drop(runtime_dir);
    let ending = ending?;

    let (exit_status, signal) = exit_status_of(&ending);
    if let Some(path) = &options.summary {
        let summary = Summary {
            execution: execution.clone(),
            team,
            command: options
                .command
                .first()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default(),
            network,
            uid,
            exit_status,
            signal,
            timed_out: ending.timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
            bypass_attempts: report.denied,
            bypass_reports_dropped: report.dropped,
            proxy: proxy_stats.and_then(|stats| serde_json::to_value(stats).ok()),
        };
        if let Err(error) = summary.write(path) {
            eprintln!(
                "tollgate: cannot write the summary {}: {error}",
                path.display()
            );
        }
    }
    Ok(exit_status)
}

/// Refuses a command the sandbox would not see (under a hidden directory, or an unshared
/// part of its own `/tmp`), and warns about absolute path arguments it would not see — the
/// usual way to trip over the private `/tmp` is a script path.
fn check_visible(program: &std::path::Path, options: &RunOptions) -> Result<(), Refusal> {
    if let Some(why) = mounts::invisible_because(program, &options.shares) {
        return Err(Refusal {
            status: 127,
            message: format!("the sandbox cannot see the command: {why}"),
        });
    }
    for argument in options.command.iter().skip(1).map(std::path::Path::new) {
        if argument.is_absolute() && argument.exists() {
            if let Some(why) = mounts::invisible_because(argument, &options.shares) {
                eprintln!("tollgate: warning: the sandbox will not see an argument: {why}");
            }
        }
    }
    Ok(())
}

/// The status `tollgate run` exits with, and the signal that ended the command.
fn exit_status_of(ending: &Ending) -> (i32, Option<i32>) {
    let signal = ending.status.signal();
    if ending.timed_out {
        return (status::TIMEOUT, signal);
    }
    if let Some(by) = ending.interrupted_by {
        return (128 + by, signal);
    }
    match (ending.status.code(), signal) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (status::TOLLGATE_ERROR, None),
    }
}

/// The walls of one execution, torn down in `tear_down` (and, for what the drop guards own,
/// on any early return).
struct Walls {
    cgroup: ExecutionCgroup,
    wall: Option<AttachedWall>,
    /// The wall, once its reports stream to the audit log (see `events`).
    pump: Option<events::EventPump>,
    net: Option<SandboxNet>,
    /// The proxy's listener: bound inside the sandbox namespace (in test builds without the
    /// namespace wall, on the supervisor's own loopback).
    listener: Option<std::net::TcpListener>,
}

/// What the eBPF wall saw, for the summary.
#[derive(Default)]
struct WallTotals {
    denied: u64,
    dropped: u64,
}

impl Walls {
    fn build(execution: &str, layers: Layers, network: bool) -> Result<Walls, Refusal> {
        // The namespace is built on its own thread while this one builds the cgroup and the
        // eBPF wall.
        let pending = layers
            .netns
            .then(|| {
                netns::start(NamespaceWalls {
                    nftables: layers.nftables,
                    listener: network,
                })
            })
            .transpose()?;
        let cgroup = ExecutionCgroup::create(execution)?;
        let wall = if layers.bpf {
            Some(EgressPrograms::load_or_reuse()?.attach(&cgroup)?)
        } else {
            None
        };
        let (net, listener) = if let Some(pending) = pending {
            let mut net = pending.finish()?;
            let listener = net.listener.take();
            (Some(net), listener)
        } else if network {
            (None, Some(netns::bind_proxy_listener()?))
        } else {
            (None, None)
        };
        Ok(Walls {
            cgroup,
            wall,
            pump: None,
            net,
            listener,
        })
    }

    /// Kills what is left, detaches the programs, records what they saw.
    fn tear_down(self, audit: &AuditLog, execution: &str, team: Option<&str>) -> WallTotals {
        let Walls {
            cgroup,
            wall,
            pump,
            net,
            listener,
        } = self;
        if let Err(error) = cgroup.kill_and_remove() {
            eprintln!("tollgate: {error}");
        }
        let mut totals = WallTotals::default();
        // The pump detaches the wall and writes the last reports; a wall never handed to a
        // pump (an early error) is detached here.
        let report = match (pump, wall) {
            (Some(pump), _) => pump.finish(),
            (None, Some(wall)) => {
                let report = wall.detach();
                for attempt in &report.events {
                    audit.record(&bypass_record(execution, team, attempt));
                }
                Some(report)
            }
            (None, None) => None,
        };
        if let Some(report) = report {
            totals.denied = report.denied;
            totals.dropped = report.dropped;
        }
        drop(listener);
        drop(net);
        totals
    }
}

fn bypass_record(
    execution: &str,
    team: Option<&str>,
    attempt: &crate::sandbox::bpf::BypassAttempt,
) -> serde_json::Value {
    let mut record = json!({
        "type": "bypass_attempt",
        "time": now_rfc3339(),
        "execution": execution,
        "team": team,
        "decision": "deny",
    });
    if let (Some(object), Ok(serde_json::Value::Object(fields))) =
        (record.as_object_mut(), serde_json::to_value(attempt))
    {
        object.extend(fields);
    }
    record
}

/// What the command is started with.
struct Child<'a> {
    program: &'a std::path::Path,
    cwd: &'a std::path::Path,
    environment: std::collections::BTreeMap<String, String>,
    uid: u32,
    gid: u32,
    mounts: PrivateMounts,
}

/// Spawns the command inside the walls and waits for it, a timeout or a signal.
async fn supervise(
    options: &RunOptions,
    child: Child<'_>,
    walls: &Walls,
) -> Result<Ending, Refusal> {
    let Child {
        program,
        cwd,
        environment,
        uid,
        gid,
        mounts,
    } = child;
    use tokio::signal::unix::{signal, SignalKind};
    let foreground = is_foreground_terminal();
    let setup = ChildSetup {
        netns: walls.net.as_ref().map(|n| n.netns.as_raw_fd()),
        mounts: Some(mounts),
        cwd: std::ffi::CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| Refusal::tollgate("--cwd contains a NUL byte"))?,
        uid,
        gid,
        foreground,
        cap_last: spawn::cap_last_cap(),
        max_processes: options.max_processes,
        parent: std::process::id() as libc::pid_t,
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
    let mut child = launch::launch(&command, &setup, walls.cgroup.as_fd())
        .map_err(|e| launch_refusal(program, e))?;
    let timeout = options.timeout.unwrap_or(Duration::MAX);
    let deadline = tokio::time::sleep(timeout.min(Duration::from_secs(365 * 86_400)));
    tokio::pin!(deadline);
    let mut timed_out = false;
    let mut interrupted_by = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                kill_sandbox(walls);
            }
            _ = interrupt.recv() => { interrupted_by = Some(libc::SIGINT); kill_sandbox(walls); }
            _ = terminate.recv() => { interrupted_by = Some(libc::SIGTERM); kill_sandbox(walls); }
            _ = hangup.recv() => { interrupted_by = Some(libc::SIGHUP); kill_sandbox(walls); }
        }
    };
    if foreground {
        reclaim_terminal();
    }
    let status =
        status.map_err(|e| Refusal::tollgate(format!("cannot wait for the command: {e}")))?;
    Ok(Ending {
        status,
        timed_out,
        interrupted_by,
    })
}

fn launch_refusal(program: &std::path::Path, error: LaunchError) -> Refusal {
    match error {
        LaunchError::Exec(error) => match error.raw_os_error() {
            Some(libc::ENOENT) => Refusal {
                status: 127,
                message: format!("command not found in the sandbox: {}", program.display()),
            },
            Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => Refusal {
                status: 126,
                message: format!(
                    "{} cannot be executed by the sandbox user: {error}",
                    program.display()
                ),
            },
            _ => Refusal {
                status: 126,
                message: format!("cannot execute {}: {error}", program.display()),
            },
        },
        LaunchError::Setup(error) => Refusal::tollgate(format!(
            "cannot set up the sandbox for {}: {error}",
            program.display()
        )),
        LaunchError::Clone(error) => Refusal::tollgate(format!(
            "cannot create the sandboxed process (clone3 into the execution's cgroup needs \
             Linux 5.7 or newer): {error}"
        )),
    }
}

/// Kills every process of the execution at once (the whole tree, whatever it ignores).
fn kill_sandbox(walls: &Walls) {
    let kill = walls.cgroup.path().join("cgroup.kill");
    if let Err(error) = std::fs::write(&kill, "1") {
        eprintln!(
            "tollgate: cannot kill the sandbox ({}): {error}",
            kill.display()
        );
    }
}

/// Whether stdin is a terminal whose foreground process group is ours.
fn is_foreground_terminal() -> bool {
    // SAFETY: queries on fd 0 only.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Takes the terminal back after the child's process group had it.
fn reclaim_terminal() {
    // SAFETY: SIGTTOU is ignored around tcsetpgrp so a background supervisor may take the
    // terminal back; the previous disposition is restored.
    unsafe {
        let previous = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::signal(libc::SIGTTOU, previous);
    }
}
