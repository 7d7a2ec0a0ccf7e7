//! One execution's worker process: spawned with the caller's descriptors and the worker
//! channel, watched until it is reaped, its events turned into the caller's answer, the
//! metrics and the launch log.
//!
//! The worker is `/proc/self/exe __execution` (this very binary, whatever happened to the
//! file on disk since), with an environment the service builds from scratch: a caller's
//! variable in a root process would be a way to root (`LD_PRELOAD`), so none is ever
//! there. Its descriptors are fixed: 0, 1, 2 the caller's stdio, 3 the worker channel,
//! 4 the caller's `--audit` file and 5 its `--log` file when it gave them, and from 6
//! ([`wire::FIRST_SHARE_FD`]) the caller's own descriptors of the directories it shares;
//! nothing else (every other descriptor of the service is close-on-exec).
//!
//! Closing the service's end of the channel is the one way to end an execution: the worker
//! then kills its sandbox, tears down, reports and exits. It is closed when the caller goes
//! away and when the service stops past its grace; a worker still there [`KILL_AFTER`]
//! later is killed (the next `gc` removes what it left). Signals go to the worker only while
//! it is not reaped, so a recycled pid is never signalled.

use super::wire::{
    self, CallerIdentity, ClientMessage, PolicyText, ServiceMessage, WorkerEvent, WorkerStart,
    PASSED_SIGNALS,
};
use super::{Node, Stage};
use crate::run::RunOptions;
use crate::sandbox::mounts::MAX_SHARES;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tollgate_policy::secrets::SecretRules;

/// The worker's `PATH` (it runs the host's `nft`, and nothing the caller chose).
pub const WORKER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a worker whose channel was closed may take to end its execution before it is
/// killed.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// How long the events still in the channel may take to arrive once the worker has exited.
const LAST_EVENTS: Duration = Duration::from_secs(2);

/// How long the service waits for a caller to take a message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller's descriptors, in the roles the worker gives them.
#[derive(Debug)]
pub struct Descriptors {
    pub stdio: [OwnedFd; 3],
    pub audit: Option<OwnedFd>,
    pub log: Option<OwnedFd>,
    /// The caller's descriptors of its shared directories, in the order of the run's
    /// `shares`.
    pub shares: Vec<OwnedFd>,
}

/// A launch the node accepted.
#[derive(Debug)]
pub struct Admitted {
    pub options: RunOptions,
    pub team: String,
    /// The caller's `TERM` and `LANG` (unchecked: see [`worker_environment`]).
    pub terminal: std::collections::BTreeMap<String, String>,
    pub policy: PolicyText,
    pub wants_summary: bool,
    pub descriptors: Descriptors,
    /// Held until the worker is reaped.
    pub slot: OwnedSemaphorePermit,
}

/// Runs the admitted execution to its end and answers the caller.
pub async fn run(
    node: Arc<Node>,
    caller_stream: UnixStream,
    caller: CallerIdentity,
    admitted: Admitted,
) {
    let Admitted {
        options,
        team,
        terminal,
        policy,
        wants_summary,
        descriptors,
        slot: _slot,
    } = admitted;
    let began = Instant::now();
    let (caller_in, mut caller_out) = caller_stream.into_split();
    let start = match serde_json::to_value(&options) {
        Ok(options) => WorkerStart {
            options,
            policy: Some(policy),
            caller: caller.clone(),
        },
        Err(error) => {
            return failed_to_start(
                &node,
                &mut caller_out,
                &caller,
                &team,
                format!("cannot encode the run: {error}"),
            )
            .await
        }
    };
    let environment = worker_environment(&team, std::env::vars_os(), &terminal);
    let worker = match Worker::spawn(descriptors, environment, node.inherited_nofile) {
        Ok(worker) => worker,
        Err(error) => {
            return failed_to_start(
                &node,
                &mut caller_out,
                &caller,
                &team,
                format!("cannot start the execution's supervisor: {error}"),
            )
            .await
        }
    };
    let outcome = watch(
        &node,
        worker,
        start,
        caller_in,
        &mut caller_out,
        &caller,
        &team,
    )
    .await;

    let execution = outcome.execution.as_deref();
    let shown = execution.unwrap_or("(no id yet)");
    let (status, summary) = match &outcome.finished {
        Some((status, summary)) => (*status, summary.clone()),
        None => {
            tracing::warn!(
                "execution {shown} (team {team}): its supervisor ended without reporting a \
                 result ({})",
                outcome
                    .exit
                    .map(describe_exit)
                    .unwrap_or_else(|| "not reaped".into())
            );
            (crate::run::status::TOLLGATE_ERROR, None)
        }
    };
    let duration = began.elapsed();
    if execution.is_none() {
        // Ended before it had an id (refused in preparation, 126/127): still an execution.
        node.metrics.execution_started(&team);
    }
    node.metrics
        .execution_finished(&team, status, duration, summary.as_ref());
    node.launches
        .finished(execution, &team, &caller, status, duration);
    tracing::info!(
        "execution {shown} (team {team}, uid {}): exit status {status} after {}",
        caller.uid,
        humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
    );
    let answer = match outcome.finished {
        Some((status, summary)) => ServiceMessage::Exited {
            status,
            summary: summary.filter(|_| wants_summary),
        },
        None => ServiceMessage::Refused {
            status,
            message: "the execution's supervisor ended without reporting a result (the node's \
                      log says why)"
                .into(),
        },
    };
    if outcome.caller_present {
        answer_caller(&mut caller_out, &answer).await;
    }
}

/// A launch that was accepted but whose worker could not start: an execution that failed.
async fn failed_to_start(
    node: &Node,
    caller_out: &mut OwnedWriteHalf,
    caller: &CallerIdentity,
    team: &str,
    message: String,
) {
    tracing::error!("team {team}, uid {}: {message}", caller.uid);
    let status = crate::run::status::TOLLGATE_ERROR;
    node.metrics.execution_started(team);
    node.metrics
        .execution_finished(team, status, Duration::ZERO, None);
    node.launches
        .finished(None, team, caller, status, Duration::ZERO);
    answer_caller(caller_out, &ServiceMessage::Refused { status, message }).await;
}

async fn answer_caller(caller_out: &mut OwnedWriteHalf, answer: &ServiceMessage) {
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, wire::write_frame_async(caller_out, answer)).await;
}

/// What watching a worker came to.
struct Outcome {
    execution: Option<String>,
    finished: Option<(i32, Option<serde_json::Value>)>,
    exit: Option<ExitStatus>,
    /// The caller is still connected (it gets the answer).
    caller_present: bool,
}

/// The one loop over the worker's events, the caller's frames, the service's stage and the
/// worker's exit.
async fn watch(
    node: &Node,
    mut worker: Worker,
    start: WorkerStart,
    caller_in: OwnedReadHalf,
    caller_out: &mut OwnedWriteHalf,
    caller: &CallerIdentity,
    team: &str,
) -> Outcome {
    let (events_in, channel_out) = worker.channel.into_split();
    let close_channel = send_start(channel_out, start);
    let mut close_channel = Some(close_channel);
    let mut events = read_frames::<WorkerEvent>(events_in, "the execution's supervisor");
    let mut frames = read_frames::<ClientMessage>(caller_in, "the caller");
    let mut stage = node.stage.clone();
    let mut outcome = Outcome {
        execution: None,
        finished: None,
        exit: None,
        caller_present: true,
    };
    let mut events_open = true;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let mut last_events_by: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    loop {
        if outcome.exit.is_some() && !events_open {
            break;
        }
        let mut end_execution = None;
        tokio::select! {
            event = events.recv(), if events_open => match event {
                None => events_open = false,
                Some(WorkerEvent::Started { execution }) => {
                    if outcome.execution.is_none() {
                        node.metrics.execution_started(team);
                        node.launches.started(&execution, team, caller);
                        tracing::info!(
                            "execution {execution} started for uid {} (pid {}), team {team}",
                            caller.uid,
                            caller.pid
                        );
                        let started = ServiceMessage::Started { execution: execution.clone() };
                        if outcome.caller_present {
                            answer_caller(caller_out, &started).await;
                        }
                        outcome.execution = Some(execution);
                    }
                }
                Some(WorkerEvent::Record { record }) => node.metrics.record(team, &record),
                Some(WorkerEvent::Finished { status, summary }) => {
                    outcome.finished = Some((status, summary));
                }
            },
            frame = frames.recv(), if outcome.caller_present => match frame {
                None => {
                    outcome.caller_present = false;
                    end_execution = Some("its caller went away");
                }
                Some(ClientMessage::Signal { signal }) => {
                    if outcome.exit.is_none() {
                        pass_signal(worker.pid, signal);
                    }
                }
                Some(ClientMessage::Launch(_)) => {
                    tracing::debug!("ignored a second launch frame on a running launch");
                }
            },
            () = ending(&mut stage), if close_channel.is_some() => {
                end_execution = Some("the service is stopping");
            }
            exit = worker.child.wait(), if outcome.exit.is_none() => {
                outcome.exit = Some(exit.unwrap_or_else(|error| {
                    tracing::warn!("cannot reap worker {}: {error}", worker.pid);
                    ExitStatus::default()
                }));
                last_events_by = Some(tokio::time::Instant::now() + LAST_EVENTS);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() && outcome.exit.is_none() => {
                tracing::warn!(
                    "worker {} did not end its execution within {}s of being told to: killed \
                     (the next gc removes what it left)",
                    worker.pid,
                    KILL_AFTER.as_secs()
                );
                let _ = kill(Pid::from_raw(worker.pid), Signal::SIGKILL);
                kill_at = None;
                killed = true;
            }
            _ = tokio::time::sleep_until(last_events_by.unwrap_or_else(far)), if last_events_by.is_some() && events_open => {
                tracing::warn!("worker {} exited but its channel stayed open: not waiting", worker.pid);
                events_open = false;
            }
        }
        // (The channel is closed once, whichever reason comes first.)
        if let Some(why) = end_execution {
            if let Some(close) = close_channel.take() {
                tracing::info!(
                    "ending execution {} (team {team}): {why}",
                    outcome.execution.as_deref().unwrap_or("(no id yet)")
                );
                let _ = close.send(());
                kill_at = Some(tokio::time::Instant::now() + KILL_AFTER);
            }
        }
    }
    if killed {
        // Now that it is reaped, its cgroups are stale: collect what it left.
        tokio::task::spawn_blocking(super::housekeeping::collect_garbage);
    }
    outcome
}

/// Resolves once the service is past its grace (or gone).
async fn ending(stage: &mut tokio::sync::watch::Receiver<Stage>) {
    let _ = stage.wait_for(|stage| *stage == Stage::Ending).await;
}

/// Writes the `WorkerStart` frame, then holds the channel's writing end until told (or
/// until the watcher is gone): dropping it is the worker's end-of-file.
fn send_start(mut channel_out: OwnedWriteHalf, start: WorkerStart) -> oneshot::Sender<()> {
    let (close, mut closed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            written = wire::write_frame_async(&mut channel_out, &start) => {
                if let Err(error) = written {
                    tracing::debug!("cannot send the worker its execution: {error}");
                }
                let _ = closed.await;
            }
            _ = &mut closed => {}
        }
        use tokio::io::AsyncWriteExt as _;
        let _ = channel_out.shutdown().await;
    });
    close
}

/// Reads frames from `input` into a channel until end of file or an error (logged), so the
/// watcher's `select!` never holds a half-read frame.
fn read_frames<T>(mut input: OwnedReadHalf, from: &'static str) -> mpsc::Receiver<T>
where
    T: for<'de> serde::Deserialize<'de> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match wire::read_frame_async::<T>(&mut input).await {
                Ok(message) => {
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
                Err(wire::FrameError::Closed) => break,
                Err(error) => {
                    tracing::debug!("{from} sent what cannot be read: {error}");
                    break;
                }
            }
        }
    });
    rx
}

/// Passes `signal` on to the worker (which treats it as a local run treats the signals it
/// receives), if it is one a caller may pass.
fn pass_signal(pid: i32, signal: i32) {
    match Signal::try_from(signal) {
        Ok(signal) if PASSED_SIGNALS.contains(&signal) => {
            if let Err(error) = kill(Pid::from_raw(pid), signal) {
                tracing::debug!("cannot pass {signal} to worker {pid}: {error}");
            }
        }
        _ => tracing::debug!("ignored signal {signal} from a caller: not one it may pass"),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with status {code}"),
        (None, Some(signal)) => format!("it was killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

/// The worker's whole environment: `PATH`, the service's `TOLLGATE_LOG`, and the service's
/// `TOLLGATE_SECRET_<TEAM>_<NAME>` variables of this team only (NAME of letters and digits,
/// so team `a` never gets team `a-b`'s). Of the caller's, only `TERM` and `LANG` (which the
/// run hands the sandbox as a local run does), and only with values like `xterm-256color`
/// or `en_US.UTF-8`: nothing a root process could read as more than a name.
pub fn worker_environment(
    team: &str,
    service: impl IntoIterator<Item = (OsString, OsString)>,
    terminal: &std::collections::BTreeMap<String, String>,
) -> Vec<(OsString, OsString)> {
    let prefix = SecretRules::env_prefix(team);
    let mut environment = vec![(OsString::from("PATH"), OsString::from(WORKER_PATH))];
    let plain = |value: &str| {
        !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b))
    };
    environment.extend(
        ["TERM", "LANG"]
            .into_iter()
            .filter_map(|name| Some((name, terminal.get(name)?)))
            .filter(|(_, value)| plain(value))
            .map(|(name, value)| (OsString::from(name), OsString::from(value))),
    );
    environment.extend(service.into_iter().filter(|(name, _)| {
        let Some(name) = name.to_str() else {
            return false;
        };
        name == "TOLLGATE_LOG"
            || name.strip_prefix(&prefix).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            })
    }));
    environment
}

/// A spawned worker.
struct Worker {
    child: tokio::process::Child,
    /// Valid to signal until `child` is reaped.
    pid: i32,
    /// The service's end of the worker channel.
    channel: UnixStream,
}

impl Worker {
    fn spawn(
        descriptors: Descriptors,
        environment: Vec<(OsString, OsString)>,
        nofile: (u64, u64),
    ) -> io::Result<Worker> {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )?;
        // Above every fixed number, so that placing one never overwrites another still to
        // be placed.
        let channel = above_worker_descriptors(theirs)?;
        let audit = descriptors
            .audit
            .map(above_worker_descriptors)
            .transpose()?;
        let log = descriptors.log.map(above_worker_descriptors).transpose()?;
        let shares = descriptors
            .shares
            .into_iter()
            .map(above_worker_descriptors)
            .collect::<io::Result<Vec<_>>>()?;
        // Made here: the closure below runs between fork and exec and must not allocate.
        let sources: Vec<Option<RawFd>> = [
            Some(channel.as_raw_fd()),
            audit.as_ref().map(|fd| fd.as_raw_fd()),
            log.as_ref().map(|fd| fd.as_raw_fd()),
        ]
        .into_iter()
        .chain(shares.iter().map(|fd| Some(fd.as_raw_fd())))
        .collect();
        let [stdin, stdout, stderr] = descriptors.stdio;
        let mut command = tokio::process::Command::new("/proc/self/exe");
        command
            .arg("__execution")
            .env_clear()
            .envs(environment)
            .current_dir("/")
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Its own process group: a Ctrl-C at the service's terminal is the service's to
            // handle (a grace, then the end), not every worker's.
            .process_group(0);
        // SAFETY: the closure only calls dup2 and setrlimit, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                place_descriptors(&sources)?;
                restore_descriptor_limit(nofile)
            });
        }
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the worker has no pid"))? as i32;
        let ours = std::os::unix::net::UnixStream::from(ours);
        ours.set_nonblocking(true)?;
        Ok(Worker {
            child,
            pid,
            channel: UnixStream::from_std(ours)?,
        })
    }
}

/// The first descriptor number above every one the worker's descriptors are placed on.
const ABOVE_WORKER_DESCRIPTORS: RawFd = wire::FIRST_SHARE_FD + MAX_SHARES as RawFd;

/// `fd` moved above the worker's fixed numbers (close-on-exec, as every descriptor of the
/// service is).
fn above_worker_descriptors(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, which the OwnedFd then owns.
    let moved = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_DUPFD_CLOEXEC,
            ABOVE_WORKER_DESCRIPTORS,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// In the worker, between fork and exec: the channel on 3, the audit file on 4, the log file
/// on 5, the shared directories from 6 on (`dup2` leaves the copies without close-on-exec;
/// the originals close at exec). A descriptor not given leaves its number closed at exec.
fn place_descriptors(sources: &[Option<RawFd>]) -> io::Result<()> {
    for (target, source) in (3..).zip(sources.iter().copied()) {
        if let Some(source) = source {
            // SAFETY: dup2 on descriptors this process holds.
            if unsafe { libc::dup2(source, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// In the worker: the descriptor limit the service was started with (the service raised
/// its own, see `serve::raise_descriptor_limit`).
fn restore_descriptor_limit((soft, hard): (u64, u64)) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn names(environment: &[(OsString, OsString)]) -> Vec<&str> {
        environment
            .iter()
            .map(|(name, _)| name.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_worker_gets_path_the_log_filter_and_its_teams_secrets_only() {
        let service = [
            ("HOME", "/root"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("TOLLGATE_LOG", "debug"),
            ("TOLLGATE_SECRET_DATA_ENG_KEY", "k1"),
            ("TOLLGATE_SECRET_DATA_ENG_B_KEY", "team data-eng-b's"),
            ("TOLLGATE_SECRET_DATA_ENG_", "no name"),
            ("TOLLGATE_SECRET_DATA_KEY", "team data's"),
            ("PATH", "/root/.cargo/bin:/usr/bin"),
        ]
        .map(|(name, value)| (OsString::from(name), OsString::from(value)));
        let environment = worker_environment("data-eng", service, &BTreeMap::new());
        assert_eq!(
            names(&environment),
            ["PATH", "TOLLGATE_LOG", "TOLLGATE_SECRET_DATA_ENG_KEY"]
        );
        assert_eq!(environment[0].1, WORKER_PATH);
    }

    #[test]
    fn of_the_callers_variables_only_term_and_lang_with_plain_values_reach_the_worker() {
        let terminal: BTreeMap<String, String> = [
            ("TERM", "xterm-256color"),
            ("LANG", "en_US.UTF-8"),
            ("LD_PRELOAD", "/tmp/evil.so"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .into();
        let environment = worker_environment("data-eng", [], &terminal);
        assert_eq!(names(&environment), ["PATH", "TERM", "LANG"]);
        for hostile in ["x;rm -rf /", "a/b", "", &"x".repeat(65), "v\nw"] {
            let terminal: BTreeMap<String, String> =
                [("TERM".to_owned(), hostile.to_owned())].into();
            assert_eq!(
                names(&worker_environment("data-eng", [], &terminal)),
                ["PATH"],
                "{hostile:?}"
            );
        }
    }
}
