//! `tollgate serve`: the node service, through which unprivileged launchers start executions.
//!
//! A platform's workers (CI runners, job queues, agent hosts) should not be root to start a
//! sandbox. One service per node runs as root and listens on a Unix socket; a caller runs
//! `tollgate run --connect SOCKET [run options] -- CMD` as itself. The client sends one
//! launch frame ([`wire::LaunchRequest`]: its run arguments as strings, its own values of
//! the `--pass-env` names) with its stdin, stdout and stderr, and the `--audit`/`--log`
//! files it opened as itself, attached as `SCM_RIGHTS` descriptors ([`fds`]), so the
//! command's output never passes through the service and a terminal works.
//!
//! The service knows the caller from the socket (`SO_PEERCRED`, `SO_PEERGROUPS`), parses
//! the arguments with the very parser of a local `tollgate run`, refuses what only the
//! node decides (a policy file, a secrets root, a missing `--team`), asks the node
//! configuration ([`node_config`], [`authorize`]) whether this caller may launch this team
//! with these options, and takes the team's last good policy from the team directory
//! ([`teams`], rescanned on an interval: a broken edit never replaces a good version).
//! Each accepted launch gets a worker process of its own ([`worker_process`]):
//! `/proc/self/exe __execution`, with the caller's descriptors as its 0, 1, 2 (and 4, 5),
//! and a socketpair end as descriptor 3 on which it reads the authorised options and the
//! policy and reports its execution's id, every audit record (what the [`metrics`] count)
//! and its exit status. The worker is a local `tollgate run` in every other respect: the
//! same walls, the same exit statuses, the same handling of the signals the caller
//! receives (the client forwards them; the service passes them on to the worker). When
//! the worker's descriptor 3 reaches end of file (the caller went away, the service is
//! stopping past its grace, or the service died) it ends the execution at once.
//!
//! So a crash of one execution's supervisor takes nothing else down, and the service holds
//! no sandbox state but its children. It also keeps the eBPF programs pinned, collects what
//! killed supervisors left behind ([`housekeeping`]), writes a `launch` audit record of
//! every launch ([`launch_log`]) and serves `/metrics`. On SIGTERM or SIGINT it stops
//! accepting (the socket file goes), lets running executions finish for `shutdown_grace`,
//! then ends the rest and exits 0; a second signal ends them at once.

pub mod authorize;
pub mod fds;
mod housekeeping;
mod launch_log;
mod listener;
pub mod metrics;
pub mod metrics_http;
pub mod node_config;
mod session;
pub mod teams;
pub mod wire;
mod worker_process;

use crate::cli::serve::ServeArgs;
use crate::cli::EXIT_USAGE;
use crate::run::status::TOLLGATE_ERROR;
use launch_log::LaunchLog;
use listener::LaunchSocket;
use metrics::Metrics;
use node_config::NodeConfig;
use std::sync::Arc;
use teams::TeamPolicies;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Where the service is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Serving,
    /// Stopped accepting: launches still in their handshake are refused, running executions
    /// may finish.
    Draining,
    /// Past the grace (or a second signal): every execution is ended now.
    Ending,
}

/// What every session shares.
pub(crate) struct Node {
    pub config: NodeConfig,
    pub teams: Arc<TeamPolicies>,
    pub metrics: Arc<Metrics>,
    pub launches: LaunchLog,
    /// One permit per running execution, `max_executions` in all.
    pub slots: Arc<Semaphore>,
    /// One permit per connection still in its handshake (not yet refused or admitted):
    /// callers that connect and say nothing cannot pile up without bound.
    pub handshakes: Arc<Semaphore>,
    /// Each uid's share of the handshakes (see `session::MAX_HANDSHAKES_PER_UID`).
    pub handshakes_by_uid: session::HandshakesByUid,
    /// The descriptor limit the service was started with, which workers get back.
    pub inherited_nofile: (u64, u64),
    pub stage: watch::Receiver<Stage>,
}

/// Runs the node service until SIGTERM; returns the process exit status.
pub fn run(args: ServeArgs) -> i32 {
    if args.print_schema {
        let schema = serde_json::to_string_pretty(&NodeConfig::schema())
            .expect("a JSON value always serialises");
        crate::cli::print(&schema);
        return 0;
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("tollgate: {message}");
            return EXIT_USAGE;
        }
    };
    if args.check_config {
        crate::cli::print(&format!("{}: ok", args.config_name()));
        return 0;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "tollgate: serve must run as root: it builds every execution's walls (namespaces, \
             cgroups, eBPF programs, nftables); start it from systemd or as a privileged pod \
             (see docs/deploy.md)"
        );
        return TOLLGATE_ERROR;
    }
    tracing::info!("node configuration: {}", args.config_name());
    if let Err(message) = check_quota_store(&config.quota_store) {
        eprintln!("tollgate: {message}");
        return EXIT_USAGE;
    }
    match start(config) {
        Ok(status) => status,
        Err(message) => {
            eprintln!("tollgate: {message}");
            TOLLGATE_ERROR
        }
    }
}

/// Reaches the node's quota store once, before serving: a Redis that refuses the password
/// is a configuration error (every execution under a quota would fail), one that does not
/// answer yet is a warning (executions recover when it does, as the node configured).
fn check_quota_store(store: &crate::quota::QuotaStoreConfig) -> Result<(), String> {
    use crate::cli::quota_store::{self, Reach};
    let shown = quota_store::describe_store(store);
    match quota_store::reach(store) {
        Reach::PerNode => tracing::info!(
            "quotas: {shown} (no `quotas: redis_url` in the node configuration): team quotas \
             are not fleet-wide"
        ),
        Reach::Reachable => tracing::info!("quotas: {shown}"),
        Reach::Unreachable(why) => {
            let meanwhile = match store.on_failure {
                crate::quota::StoreFailure::Deny => {
                    "attempts under a quota are refused (quota_unavailable)".to_owned()
                }
                crate::quota::StoreFailure::Local => format!(
                    "this node enforces each quota alone at 1/{} of its limit",
                    store.expected_nodes
                ),
            };
            tracing::warn!(
                "quotas: {shown} is unreachable ({why}); serving: until it answers, {meanwhile}"
            );
        }
        Reach::PasswordRefused(why) => {
            return Err(format!(
                "{why}: refusing to serve (fix `quotas:` in the node configuration)"
            ))
        }
    }
    Ok(())
}

/// Everything before the socket opens, then the service, then the last collection.
fn start(config: NodeConfig) -> Result<i32, String> {
    keep_inherited_descriptors_from_children()?;
    let inherited_nofile = raise_descriptor_limit();
    let failures = housekeeping::doctor_failures();
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("tollgate: doctor: {failure}");
        }
        eprintln!(
            "tollgate: refusing to serve: this host cannot build every wall (`tollgate doctor` \
             shows every check)"
        );
        return Ok(1);
    }
    housekeeping::collect_garbage();
    // Held for the service's life, so the programs stay loaded and pinned between
    // executions: each worker reuses them from their pins.
    let programs = crate::sandbox::bpf::EgressPrograms::load_or_reuse()
        .map_err(|e| format!("cannot load the eBPF programs: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    // Checked against the node's secrets root, as each worker's run will check them.
    let secret_rules = tollgate_policy::secrets::SecretRules::new(&config.secrets_dir, [])
        .map_err(|e| format!("secrets_dir {}: {e}", config.secrets_dir.display()))?;
    let (teams, reloads) = TeamPolicies::load_with_secret_rules(&config.teams_dir, secret_rules);
    housekeeping::report_reloads(&reloads, &metrics);
    let launches = LaunchLog::open(config.audit.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate-serve")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let served = runtime.block_on(serve(
        config,
        Arc::new(teams),
        metrics,
        launches,
        inherited_nofile,
    ));
    drop(runtime);
    // Workers ended past the grace were killed; whatever they left goes now.
    housekeeping::collect_garbage();
    drop(programs);
    served.map(|()| 0)
}

/// Binds the sockets, accepts launches until a signal, then drains and ends.
async fn serve(
    config: NodeConfig,
    teams: Arc<TeamPolicies>,
    metrics: Arc<Metrics>,
    launches: LaunchLog,
    inherited_nofile: (u64, u64),
) -> Result<(), String> {
    let metrics_server = match &config.metrics {
        Some(listen) => Some(
            metrics_http::MetricsServer::bind(listen)
                .await
                .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?,
        ),
        None => None,
    };
    let (socket, listener) = LaunchSocket::bind(&config.socket)?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .map_err(|e| {
            socket.remove();
            format!("cannot listen on {}: {e}", socket.path().display())
        })?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    let (stage_tx, stage) = watch::channel(Stage::Serving);
    let (metrics_stop_tx, metrics_stop) = watch::channel(false);
    if let (Some(server), Some(listen)) = (metrics_server, &config.metrics) {
        tracing::info!("serving metrics on {listen}/metrics");
        tokio::spawn(server.run(metrics.clone(), metrics_stop.clone()));
    }
    let grace = config.shutdown_grace;
    let node = Arc::new(Node {
        slots: Arc::new(Semaphore::new(config.max_executions)),
        handshakes: Arc::new(Semaphore::new(session::MAX_HANDSHAKES)),
        handshakes_by_uid: Default::default(),
        inherited_nofile,
        config,
        teams,
        metrics,
        launches,
        stage,
    });
    let housekeeping = tokio::spawn(housekeeping::run(node.clone(), metrics_stop.clone()));
    tracing::info!(
        "listening on {} (at most {} executions at once)",
        socket.path().display(),
        node.config.max_executions
    );

    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(session::run(node.clone(), stream));
                }
                Err(error) => {
                    // Out of descriptors, most likely: the sessions that end free some.
                    tracing::warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(ended) = sessions.join_next() => report_session(ended),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    drop(listener);
    socket.remove();
    let _ = stage_tx.send(Stage::Draining);
    tracing::info!(
        "stopping: no more launches; {} running executions have {} to finish",
        sessions.len(),
        humantime::format_duration(grace)
    );
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ended = sessions.join_next() => match ended {
                Some(ended) => report_session(ended),
                None => break,
            },
            _ = &mut deadline => break,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if !sessions.is_empty() {
        tracing::info!("ending the {} executions still running", sessions.len());
    }
    let _ = stage_tx.send(Stage::Ending);
    while let Some(ended) = sessions.join_next().await {
        report_session(ended);
    }
    let _ = metrics_stop_tx.send(true);
    let _ = housekeeping.await;
    node.launches.close();
    tracing::info!("stopped");
    Ok(())
}

fn report_session(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended {
        tracing::error!("a launch session failed: {error}");
    }
}

/// Marks every descriptor the service inherited (above stderr) close-on-exec: whatever its
/// parent left open must reach neither a worker nor, through it, a sandbox. Everything the
/// service opens itself is close-on-exec already.
fn keep_inherited_descriptors_from_children() -> Result<(), String> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on open descriptors.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if done != 0 {
        return Err(format!(
            "cannot mark inherited descriptors close-on-exec: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard one: each running execution holds
/// a few in the service (its caller's connection, its worker channel, its worker), and the
/// usual 1024 would cap a node at a few hundred. Returns the limit as inherited, which each
/// worker gets back, so that a sandbox has the limit a local run's has.
fn raise_descriptor_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (libc::RLIM_INFINITY, libc::RLIM_INFINITY);
    };
    if soft < hard {
        if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the open descriptor limit from {soft} to {hard}: {error}");
        }
    }
    (soft, hard)
}
