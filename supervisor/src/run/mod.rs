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
mod outputs;
mod summary;
mod tty;

use crate::audit::{now_rfc3339, AuditLog};
use crate::proxy::{Credentials, Interception, Proxy};
use crate::sandbox::bpf::{AttachedWall, EgressPrograms};
use crate::sandbox::cgroup::{self, ExecutionCgroup};
use crate::sandbox::command::{self, CommandProblem};
use crate::sandbox::landlock::{self, LandlockPlan};
use crate::sandbox::launch::{self, LaunchError};
use crate::sandbox::layers::Layers;
use crate::sandbox::limits::{self, ExecutionLimits, LimitFlags, ResourceLimits};
use crate::sandbox::mounts::{self, PrivateMounts, Share};
use crate::sandbox::netns::{self, NamespaceWalls, SandboxNet};
use crate::sandbox::seccomp::ChildFilters;
use crate::sandbox::spawn::{self, ChildSetup, SetupStage};
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

/// Size of the sandbox's `/tmp` and `/var/tmp` (each) unless `--tmp-size` says otherwise.
pub const DEFAULT_TMP_SIZE: u64 = 1 << 30;

/// Everything `tollgate run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: Option<PathBuf>,
    /// The team `--team` named: the policy loaded must say `team:` the same.
    pub team: Option<String>,
    pub timeout: Option<Duration>,
    /// `uid:gid` to run as; `None` leases a user of the execution's own (see
    /// `sandbox::users`).
    pub user: Option<(u32, u32)>,
    /// `--memory`, `--cpus`, `--max-processes`: each may only lower the policy's limit (see
    /// `sandbox::limits`).
    pub limits: LimitFlags,
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
    /// Give the command a terminal of its own, relayed to the caller's (see `tty`).
    pub tty: bool,
    /// A prepared root filesystem to run on instead of the host's system directories.
    pub rootfs: Option<PathBuf>,
    pub command: Vec<OsString>,
}

impl RunOptions {
    /// Runs `command` with every default: no policy, a leased user, the default limits.
    pub fn new(command: Vec<OsString>) -> RunOptions {
        RunOptions {
            policy: None,
            team: None,
            timeout: None,
            user: None,
            limits: LimitFlags::default(),
            allow_root: false,
            cwd: None,
            shares: Vec::new(),
            tmp_size: DEFAULT_TMP_SIZE,
            env: Vec::new(),
            pass_env: Vec::new(),
            secrets: Default::default(),
            audit: None,
            summary: None,
            tty: false,
            rootfs: None,
            command,
        }
    }
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

fn execute(mut options: RunOptions) -> Result<i32, Refusal> {
    let started = Instant::now();
    if let Some(user) = options.user {
        check_user(user, options.allow_root)?;
    }
    let policy = match &options.policy {
        Some(path) => Some(crate::team_rules::load(path).map_err(|errors| {
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
    if let (Some(expected), Some(policy)) = (&options.team, &policy) {
        if &policy.team != expected {
            return Err(Refusal::tollgate(format!(
                "--team {expected} loaded {}, whose `team:` is `{}`; a team's file must name \
                 that team",
                options
                    .policy
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                policy.team
            )));
        }
    }
    if let Some(policy) = &policy {
        apply_filesystem_section(&mut options, &policy.filesystem)?;
    }
    let network = policy.as_ref().is_some_and(Policy::network_enabled);
    // Secrets are read once, here, before anything is built: a missing one stops the run.
    let credentials = match &policy {
        Some(policy) if network => {
            Some(Credentials::load(policy, &options.secrets).map_err(|e| {
                Refusal::tollgate(format!("cannot load the team's credentials: {e}"))
            })?)
        }
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
    let layers = Layers::for_this_build();
    let root = match (&options.rootfs, layers.root) {
        (_, false) => mounts::Root::Host,
        (Some(dir), true) => mounts::Root::Image(dir.clone()),
        (None, true) => mounts::Root::System,
    };
    let view = mounts::View {
        root: &root,
        shares: &options.shares,
    };
    // Before anything is built: a policy that requires Landlock on a host without it stops
    // the run here.
    let landlock = LandlockPlan::prepare(
        &landlock::view_of(&root, &options.shares),
        policy
            .as_ref()
            .map(|policy| policy.filesystem.landlock)
            .unwrap_or_default(),
        landlock::usable_abi(layers),
    )
    .map_err(Refusal::tollgate)?;
    let landlock_abi = landlock.as_ref().map(LandlockPlan::abi);
    let resolved = match &root {
        mounts::Root::Image(dir) => command::resolve_in_image(program, env::SANDBOX_PATH, dir),
        _ => command::resolve(program, env::SANDBOX_PATH, uid, gid),
    };
    let program = resolved.map_err(|problem| Refusal {
        status: problem.exit_status(),
        message: match &problem {
            CommandProblem::NotFound(m) | CommandProblem::NotExecutable(m) => m.clone(),
        },
    })?;
    check_visible(&program, &options, &view)?;
    // Opened once, with no link followed; what is checked below and bound later is these
    // directories, whatever their paths name by then.
    let shares = mounts::open_shares(&options.shares).map_err(Refusal::tollgate)?;
    let share_ids: Vec<_> = shares.iter().map(|share| share.id).collect();
    let output_view = outputs::SandboxView {
        root: &root,
        uid,
        gid,
        shares: &options.shares,
        share_ids: &share_ids,
    };
    // Both outputs are opened before the child exists (see `outputs`).
    let audit = match &options.audit {
        Some(path) => outputs::open_audit(path, &output_view).map_err(Refusal::tollgate)?,
        None => AuditLog::disabled(),
    };
    let summary_target = options
        .summary
        .as_deref()
        .map(|path| outputs::SummaryTarget::open(path, &output_view))
        .transpose()
        .map_err(Refusal::tollgate)?;
    let cwd = options.cwd.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
    if !cwd.is_dir() {
        return Err(Refusal::tollgate(format!(
            "--cwd {} is not a directory",
            cwd.display()
        )));
    }
    if let Some(why) = view.invisible_because(&cwd) {
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

    let execution = cgroup::new_execution_id()?;
    let team = policy.as_ref().map(|p| p.team.clone());
    let limits = ResourceLimits::of_policy(policy.as_ref().map(|p| &p.limits))
        .lowered_by(&options.limits)
        .map_err(Refusal::tollgate)?;
    let mut walls = Walls::build(&execution, layers, network, limits, &options.limits)?;
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
    audit.record(&sandbox_record(&execution, team.as_deref(), landlock_abi));
    let child = Child {
        program: &program,
        cwd: &cwd,
        environment,
        uid,
        gid,
        landlock,
        mounts: PrivateMounts::prepare(&mounts::MountRequest {
            root: root.clone(),
            runtime_dir: runtime_dir.as_ref().map(|dir| dir.path()),
            shares: &shares,
            tmp_size: options.tmp_size,
        })?,
    };
    let mut terminal = options
        .tty
        .then(tty::SandboxTerminal::open)
        .transpose()
        .map_err(|e| Refusal::tollgate(format!("cannot open a terminal for --tty: {e}")))?;
    let ending = runtime.block_on(supervise(&options, child, &walls, terminal.as_mut()));
    let report = walls.tear_down(&audit, &execution, team.as_deref());
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    let proxy_stats = proxy.map(|handle| runtime.block_on(handle.shutdown()));
    drop(runtime_dir);
    let ending = ending?;

    let (exit_status, signal) = exit_status_of(&ending);
    let ended_by = signal.filter(|_| !ending.timed_out && ending.interrupted_by.is_none());
    if let Some(message) = limits::oom_message(&report.usage, &limits, ended_by) {
        eprintln!("tollgate: {message}");
    }
    if let Some(target) = &summary_target {
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
            landlock_abi,
            exit_status,
            signal,
            timed_out: ending.timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
            bypass_attempts: report.denied,
            bypass_reports_dropped: report.dropped,
            proxy: proxy_stats.and_then(|stats| serde_json::to_value(stats).ok()),
            oom_killed: report.usage.oom_kills > 0,
            memory_peak_bytes: report.usage.memory_peak_bytes,
            cpu_time_ms: report.usage.cpu_time_ms,
            cpu_throttled_periods: report.usage.cpu_throttled_periods,
            tasks_peak: report.usage.tasks_peak,
            limits: report.limits,
        };
        if let Err(error) = summary.write(target) {
            eprintln!(
                "tollgate: cannot write the summary {}: {error}",
                target.path().display()
            );
        }
    }
    Ok(exit_status)
}

/// Adds what the team's policy always shares (`filesystem.read_only`, `read_write`) to the
/// shares of the command line, which win for a path both name, and takes the policy's
/// `filesystem.rootfs` unless `--rootfs` chose one.
fn apply_filesystem_section(
    options: &mut RunOptions,
    filesystem: &tollgate_policy::filesystem::Filesystem,
) -> Result<(), Refusal> {
    let named = |path: &PathBuf| options.shares.iter().any(|share| &share.path == path);
    let from_policy = |dirs: &[PathBuf], read_only: bool| {
        dirs.iter()
            .filter(|dir| !named(dir))
            .map(|dir| Share {
                path: dir.clone(),
                read_only,
            })
            .collect::<Vec<_>>()
    };
    let mut added = from_policy(&filesystem.read_only, true);
    added.extend(from_policy(&filesystem.read_write, false));
    for share in &added {
        mounts::check_share(&share.path)
            .map_err(|why| Refusal::tollgate(format!("the policy's filesystem section: {why}")))?;
    }
    let (read_write, read_only): (Vec<_>, Vec<_>) = options
        .shares
        .iter()
        .chain(&added)
        .partition(|share| !share.read_only);
    let paths = |shares: Vec<&Share>| {
        shares
            .into_iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    };
    options.shares = mounts::arrange_shares(&paths(read_write), &paths(read_only))
        .map_err(|why| Refusal::tollgate(format!("with the policy's filesystem section: {why}")))?;
    if options.rootfs.is_none() {
        options.rootfs = filesystem.rootfs.clone();
    }
    Ok(())
}

/// Refuses a `--user` the sandbox must not run as: `u32::MAX` (which `setresuid` and
/// `setresgid` read as "leave unchanged", so the command would keep root's ids), root's ids
/// without `--allow-root`, and the uids of the lease pool, which belong to other executions.
fn check_user((uid, gid): (u32, u32), allow_root: bool) -> Result<(), Refusal> {
    if uid == u32::MAX || gid == u32::MAX {
        return Err(Refusal::tollgate(format!(
            "--user {uid}:{gid}: {} is not a usable id ((uid_t)-1 means \"unchanged\" to the \
             kernel); give a real uid and gid",
            u32::MAX
        )));
    }
    if (uid == 0 || gid == 0) && !allow_root {
        return Err(Refusal::tollgate(format!(
            "refusing to run the command with root's {} (--user {uid}:{gid}): a root process \
             could leave its cgroup and its walls, and group 0 owns host files; use an \
             unprivileged user and group, or pass --allow-root if you must",
            if uid == 0 { "uid" } else { "gid" }
        )));
    }
    if UserLease::pool_holds(uid) || UserLease::pool_holds(gid) {
        return Err(Refusal::tollgate(format!(
            "--user {uid}:{gid}: ids {} are leased to executions of their own; give an id \
             outside that range, or leave --user out to get one",
            UserLease::pool_description()
        )));
    }
    Ok(())
}

/// Refuses a command the sandbox would not see (under a hidden directory, or an unshared
/// part of its own `/tmp`), and warns about absolute path arguments it would not see — the
/// usual way to trip over the private `/tmp` is a script path.
fn check_visible(
    program: &std::path::Path,
    options: &RunOptions,
    view: &mounts::View<'_>,
) -> Result<(), Refusal> {
    if let Some(why) = view.invisible_because(program) {
        return Err(Refusal {
            status: 127,
            message: format!("the sandbox cannot see the command: {why}"),
        });
    }
    for argument in options.command.iter().skip(1).map(std::path::Path::new) {
        if argument.is_absolute() && argument.exists() {
            if let Some(why) = view.invisible_because(argument) {
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
    /// Memory, CPU and process limits: in the cgroup, or in v1 cgroups of the execution
    /// (dropped after `cgroup`, whose kill empties them).
    limits: ExecutionLimits,
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
    /// What the execution used, from its cgroups.
    usage: limits::Usage,
    limits: Option<limits::LimitsReport>,
}

impl Walls {
    fn build(
        execution: &str,
        layers: Layers,
        network: bool,
        limits: ResourceLimits,
        flags: &LimitFlags,
    ) -> Result<Walls, Refusal> {
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
        let limits = ExecutionLimits::apply(&cgroup, execution, limits, flags.allow_unenforced)
            .map_err(|e| Refusal::tollgate(e.to_string()))?;
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
            limits,
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
            limits,
            wall,
            pump,
            net,
            listener,
        } = self;
        // Killed first, so the counters are final when read; removed after.
        if let Err(error) = cgroup.kill() {
            eprintln!("tollgate: {error}");
        }
        let mut totals = WallTotals {
            usage: limits.usage(&cgroup),
            limits: Some(limits.report()),
            ..WallTotals::default()
        };
        if let Err(error) = limits.remove() {
            eprintln!("tollgate: {error}");
        }
        if let Err(error) = cgroup.kill_and_remove() {
            eprintln!("tollgate: {error}");
        }
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

/// The record that opens an execution's audit trail: how its sandbox was built.
fn sandbox_record(
    execution: &str,
    team: Option<&str>,
    landlock_abi: Option<u32>,
) -> serde_json::Value {
    json!({
        "type": "sandbox",
        "time": now_rfc3339(),
        "execution": execution,
        "team": team,
        "landlock_abi": landlock_abi,
    })
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
    /// The Landlock rules the command restricts itself with, where the kernel has Landlock.
    landlock: Option<LandlockPlan>,
    mounts: PrivateMounts,
}

/// Spawns the command inside the walls and waits for it, a timeout or a signal.
async fn supervise(
    options: &RunOptions,
    child: Child<'_>,
    walls: &Walls,
    mut terminal: Option<&mut tty::SandboxTerminal>,
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
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
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
