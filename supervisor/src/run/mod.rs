//! One execution, end to end, in named steps:
//!
//! ```text
//! prepare (policy, secrets, gc, user lease, root and view, command, shares, outputs, cwd)
//!   → Walls::build (namespace + nftables + proxy listener ∥ cgroup + limits → eBPF wall)
//!   → network::start (CA, runtime dir, proxy, the child's environment)
//!   → supervise (init in a new PID namespace → the box → the command; wait / timeout /
//!     signals)
//!   → Walls::tear_down (kill, usage, detach) → report (audit, summary) → exit status
//! ```
//! Every wall that cannot be built stops the run with exit status 125 and the reason; nothing
//! ever runs with a wall missing. Teardown runs on every path, including errors.
//!
//! An execution the node service launched runs these same steps in a worker process of its
//! own, with a [`service::ServiceLink`] for what differs (see `service`).

mod caller_shares;
mod env;
mod events;
mod network;
mod outputs;
mod prepare;
mod report;
pub mod service;
mod summary;
mod supervise;
mod tty;
mod violation;
mod walls;

use crate::sandbox::cgroup;
use crate::sandbox::limits::{LimitFlags, ResourceLimits};
use crate::sandbox::mounts::{self, PrivateMounts, Share};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
pub use summary::Summary;
use walls::Walls;

/// Exit statuses of `tollgate run` besides the command's own (and `128 + N` when signal N
/// ended it).
pub mod status {
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// tollgate itself failed, or refused what it was asked.
    pub const TOLLGATE_ERROR: i32 = 125;
    /// The command exists but cannot be executed by the sandbox user.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found (in the sandbox's view).
    pub const NOT_FOUND: i32 = 127;
    /// Added to the number of the signal that ended the command.
    pub const SIGNAL_BASE: i32 = 128;
}

/// Size of the sandbox's `/tmp` and `/var/tmp` (each) unless `--tmp-size` says otherwise.
pub const DEFAULT_TMP_SIZE: u64 = 1 << 30;

/// Where an execution's team policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicySource {
    /// A file (`--policy`, or `--policy-dir` and `--team`), read when the run starts.
    File(PathBuf),
    /// Text the node service already validated: the team's last good version (see
    /// `crate::serve::teams`), reported under its file's name.
    Text(crate::serve::wire::PolicyText),
}

impl PolicySource {
    /// The name the policy is reported under.
    pub fn name(&self) -> String {
        match self {
            PolicySource::File(path) => path.display().to_string(),
            PolicySource::Text(text) => text.name.clone(),
        }
    }
}

/// Everything `tollgate run` was asked to do; serialisable, as the node service hands it to
/// the execution's worker process (`service`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    pub policy: Option<PolicySource>,
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
    /// Host directories bound into the sandbox at the same path (see
    /// `sandbox::mounts`).
    pub shares: Vec<Share>,
    /// Size of the sandbox's own `/tmp` and of its `/var/tmp`, in bytes each.
    pub tmp_size: u64,
    pub env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
    /// Where the team's secrets may come from (`--secrets-dir`, `--allow-secret-env`).
    pub secrets: tollgate_policy::secrets::SecretRules,
    pub audit: Option<PathBuf>,
    /// How the audit log is written (`--audit-format`).
    pub audit_format: crate::audit::Format,
    pub summary: Option<PathBuf>,
    /// Where tollgate's own log lines go instead of stderr (see `crate::logging`).
    pub log: Option<PathBuf>,
    /// Give the command a terminal of its own, relayed to the caller's (see `tty`).
    pub tty: bool,
    /// A prepared root filesystem to run on instead of the host's system directories.
    pub rootfs: Option<PathBuf>,
    /// Transparent egress (`--no-transparent` turns it off; so does the policy's
    /// `network.transparent: false`).
    pub transparent: bool,
    /// Where the team's quotas are counted (`--redis-url`, the node configuration): the
    /// node's choice (see `crate::quota`).
    pub quota_store: crate::quota::QuotaStoreConfig,
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
            audit_format: crate::audit::Format::Json,
            summary: None,
            log: None,
            tty: false,
            rootfs: None,
            transparent: true,
            quota_store: crate::quota::QuotaStoreConfig::default(),
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
    exit_status(execute(options, None), None)
}

/// Runs one execution the node service launched (see `service`).
fn run_served(options: RunOptions, link: &mut service::ServiceLink) -> i32 {
    let result = execute(options, Some(&mut *link));
    exit_status(result, Some(link))
}

fn exit_status(result: Result<i32, Refusal>, link: Option<&service::ServiceLink>) -> i32 {
    match result {
        Ok(status) => status,
        Err(refusal) => {
            // Log lines held for a `--log` file that was never opened come first, in order.
            crate::logging::release();
            if refusal.message == service::ENDED_BY_SERVICE {
                service::say_ended(link);
            } else {
                service::say(&refusal.message);
            }
            refusal.status
        }
    }
}

/// The steps of one execution (see the module's diagram).
fn execute(
    options: RunOptions,
    mut link: Option<&mut service::ServiceLink>,
) -> Result<i32, Refusal> {
    let started = Instant::now();
    let mut prepared = prepare::prepare(options, link.as_deref_mut())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A worker's request lines are written, and the audit writer woken for its records,
        // when the worker runs out of work: after its answers went out (`logging`,
        // `audit::wake`).
        .on_thread_start(crate::audit::defer_on_this_thread)
        .on_thread_park(|| {
            crate::logging::flush();
            crate::audit::wake_deferred();
        })
        .on_thread_stop(crate::audit::wake_deferred)
        .enable_all()
        .thread_name("tollgate-proxy")
        .build()
        .map_err(|e| Refusal::tollgate(format!("cannot start the async runtime: {e}")))?;
    let execution = cgroup::new_execution_id()?;
    if let Some(link) = &link {
        link.started(&execution);
    }
    let team = prepared.team();
    let limits = ResourceLimits::of_policy(prepared.policy.as_ref().map(|p| &p.limits))
        .lowered_by(&prepared.options.limits)
        .map_err(Refusal::tollgate)?;
    let mut walls = Walls::build(
        &execution,
        prepared.layers,
        prepared.network,
        prepared.transparent,
        limits,
        &prepared.options.limits,
    )?;
    let violations = violation::Violations::new(prepared.policy.as_ref().map(|p| &p.limits));
    let network = network::start(
        &mut prepared,
        &execution,
        walls.listener.take(),
        walls.transparent.take(),
        &runtime,
        &violations,
    )?;
    walls.pump = walls
        .wall
        .take()
        .map(|wall| {
            events::EventPump::start(
                wall,
                prepared.audit.clone(),
                execution.clone(),
                team.clone(),
                violations.clone(),
            )
        })
        .transpose()
        .map_err(|e| Refusal::tollgate(format!("cannot start the audit event reader: {e}")))?;
    prepared.audit.write(
        crate::audit::Record::sandbox(&execution, team.as_deref(), prepared.landlock_abi)
            .launched_by(link.as_deref().map(service::ServiceLink::caller)),
    );
    let child = supervise::Child {
        program: &prepared.program,
        cwd: &prepared.cwd,
        environment: network.environment.clone(),
        uid: prepared.uid,
        gid: prepared.gid,
        landlock: prepared.landlock.take(),
        mounts: PrivateMounts::prepare(&mounts::MountRequest {
            root: prepared.root.clone(),
            runtime_dir: network.runtime_dir.as_ref().map(|dir| dir.path()),
            shares: &prepared.shares,
            tmp_size: prepared.options.tmp_size,
            trust_store: network
                .runtime_dir
                .as_ref()
                .is_some_and(|dir| dir.holds_ca_bundle()),
            resolv_conf: prepared.transparent,
        })?,
    };
    let mut terminal = prepared
        .options
        .tty
        .then(tty::SandboxTerminal::open)
        .transpose()
        .map_err(|e| Refusal::tollgate(format!("cannot open a terminal for --tty: {e}")))?;
    let ending = runtime.block_on(supervise::supervise(
        &prepared.options,
        child,
        &walls,
        &violations,
        terminal.as_mut(),
        link.as_deref(),
    ));
    let totals = walls.tear_down(&prepared.audit, &execution, team.as_deref());
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    let proxy_stats = network
        .proxy
        .map(|handle| runtime.block_on(handle.shutdown()));
    let dns_stats = network
        .resolver
        .map(|resolver| runtime.block_on(resolver.shutdown()));
    drop(network.runtime_dir);
    // The proxy's last request lines go out before the report of how the run ended.
    crate::logging::flush();
    let ending = ending?;
    let (status, summary) = report::report(report::Outcome {
        prepared: &prepared,
        execution: &execution,
        team,
        started,
        ending: &ending,
        totals,
        limits: &limits,
        proxy_stats,
        dns_stats,
        service: link.as_deref(),
    });
    if let Some(link) = link {
        // Every record reaches the service before the worker reports the end.
        prepared.audit.close();
        link.summary = summary.and_then(|summary| serde_json::to_value(summary).ok());
    }
    Ok(status)
}
