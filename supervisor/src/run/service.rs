//! `tollgate __execution`: one execution launched by the node service (`tollgate serve`),
//! run by a worker process of its own.
//!
//! Why a process per execution: a supervisor that crashes takes one execution down, not
//! the service and every other execution; and the service holds no sandbox state, only its
//! children. The worker is an ordinary `tollgate run` in every other respect (the same
//! steps, walls, refusals and exit statuses); what differs is carried by a [`ServiceLink`]:
//!
//! - its descriptors are fixed: 0, 1, 2 the caller's stdio; 3 the worker channel (a stream
//!   socket to the service); 4 the caller's `--audit` file and 5 its `--log` file when the
//!   options name them (see `run::outputs::adopt_audit`); from 6 on
//!   ([`wire::FIRST_SHARE_FD`]) the caller's own descriptors of the directories it shares,
//!   one per share of the options, in their order (see `run::caller_shares`);
//! - it reads its run from the channel ([`WorkerStart`]: the options, the team's policy text,
//!   the caller), and writes back [`WorkerEvent`]s: `started` once the execution has an id,
//!   every audit record (the audit log's tee, from its writer thread), and `finished` with the
//!   exit status and the summary document, which the caller writes itself if it asked;
//! - the end of file on the channel means "end this execution now" (the caller went away, the
//!   service is stopping past its grace, or the service died): the sandbox is killed at once,
//!   torn down, and the worker exits 125.
//!
//! Every write to the channel is a `send(MSG_NOSIGNAL)`: a service gone is `EPIPE`, never a
//! `SIGPIPE` (which the Rust runtime ignores anyway), and the execution goes on to its end.

use super::caller_shares::{self, CallerShare};
use super::{status, PolicySource, RunOptions};
use crate::audit::{Record, Tee};
use crate::sandbox::mounts::{OpenShare, MAX_SHARES};
use crate::serve::wire::{self, CallerIdentity, WorkerEvent, WorkerStart};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// The worker channel's descriptor.
const CHANNEL_FD: RawFd = 3;
/// The caller's `--audit` file, open iff the options have `audit`.
const AUDIT_FD: RawFd = 4;
/// The caller's `--log` file, open iff the options have `log`.
const LOG_FD: RawFd = 5;

/// The numbers of the caller's descriptors of its first `count` shared directories.
fn share_fds(count: usize) -> impl Iterator<Item = RawFd> {
    (wire::FIRST_SHARE_FD..).take(count)
}

/// What the caller is told when the service ends its execution.
pub(super) const ENDED_BY_SERVICE: &str = "the node service ended this execution (its caller \
                                           went away, or the service is stopping)";

/// Tells the caller the service ended its execution, unless the service is gone altogether
/// (it died): the caller's client then says so itself, and one sentence is enough. A service
/// that ends an execution on purpose shuts its side of the channel down and keeps reading
/// it; a dead one leaves it hung up.
pub(super) fn say_ended(link: Option<&ServiceLink>) {
    if !link.is_some_and(|link| link.channel.is_gone()) {
        say(ENDED_BY_SERVICE);
    }
}

/// `tollgate __execution`: runs the execution the service sent on descriptor 3 and returns
/// the exit status (the caller's, as a local run's).
pub fn worker_main() -> i32 {
    // First of all, so that nothing the service passed reaches the sandbox's processes.
    for fd in [CHANNEL_FD, AUDIT_FD, LOG_FD]
        .into_iter()
        .chain(share_fds(MAX_SHARES))
    {
        set_cloexec(fd);
    }
    if !is_stream_socket(CHANNEL_FD) {
        say(
            "__execution is started by `tollgate serve`, with its execution on descriptor 3; \
             run commands with `tollgate run`",
        );
        return status::TOLLGATE_ERROR;
    }
    // SAFETY: descriptor 3 is open (checked just above) and nothing else in this process
    // owns it.
    let channel = Arc::new(Channel {
        fd: unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) },
        finished: Mutex::new(false),
    });
    let (status, summary) = match begin(&channel) {
        Ok((options, mut link)) => {
            let status = super::run_served(options, &mut link);
            (status, link.summary.take())
        }
        Err(message) => {
            say(&message);
            (status::TOLLGATE_ERROR, None)
        }
    };
    channel.finish(status, summary);
    status
}

/// The run the service sent, its link, and tollgate's log installed as a local run with
/// these options installs it (`main` leaves that to the worker).
fn begin(channel: &Arc<Channel>) -> Result<(RunOptions, ServiceLink), String> {
    let (options, caller) = read_start(channel)?;
    crate::logging::init(match options.log {
        Some(_) => crate::logging::Destination::LogFile,
        None => crate::logging::Destination::Stderr,
    });
    let link = ServiceLink::adopt(channel.clone(), &options, caller)?;
    Ok((options, link))
}

/// Reads the one `WorkerStart` frame and turns it into the run's options and its caller.
fn read_start(channel: &Channel) -> Result<(RunOptions, CallerIdentity), String> {
    let mut reader = File::from(
        channel
            .fd
            .try_clone()
            .map_err(|e| format!("cannot read the execution from the node service: {e}"))?,
    );
    let start: WorkerStart = wire::read_frame(&mut reader)
        .map_err(|e| format!("cannot read the execution from the node service: {e}"))?;
    let options = options_of(start.options, start.policy)?;
    Ok((options, start.caller))
}

/// The run the service asked for, with the team policy it sent.
pub(crate) fn options_of(
    options: serde_json::Value,
    policy: Option<wire::PolicyText>,
) -> Result<RunOptions, String> {
    let mut options: RunOptions = serde_json::from_value(options).map_err(|e| {
        format!("the node service sent a run this tollgate cannot read ({e}); are the service and its binary the same version?")
    })?;
    if let Some(policy) = policy {
        options.policy = Some(PolicySource::Text(policy));
    }
    Ok(options)
}

/// What makes a run one the node service launched (see the module's documentation).
pub struct ServiceLink {
    channel: Arc<Channel>,
    caller: CallerIdentity,
    /// The caller's `--audit` file (descriptor 4), until `prepare` adopts it.
    audit_file: Option<File>,
    /// The caller's `--log` file (descriptor 5), until `prepare` adopts it.
    log_file: Option<File>,
    /// The caller's descriptors of the directories it shares (6 on).
    shares: Vec<CallerShare>,
    /// The summary document, once the report made it.
    pub(super) summary: Option<serde_json::Value>,
}

impl ServiceLink {
    /// The link of a run with `options`: descriptors 4 and 5 taken as the files they name.
    fn adopt(
        channel: Arc<Channel>,
        options: &RunOptions,
        caller: CallerIdentity,
    ) -> Result<ServiceLink, String> {
        let passed = |fd: RawFd, flag: &str, named: bool| -> Result<Option<File>, String> {
            if !named {
                return Ok(None);
            }
            if !is_open(fd) {
                return Err(format!(
                    "the node service sent no {flag} file (descriptor {fd}) for a run that \
                     names one"
                ));
            }
            // SAFETY: `fd` is open, and the service gave it to this process for this use.
            Ok(Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
        };
        let shares = options
            .shares
            .iter()
            .zip(share_fds(options.shares.len()))
            .map(|(share, fd)| {
                let flag = if share.read_only {
                    "--share-ro"
                } else {
                    "--share"
                };
                let file = passed(fd, flag, true)?.expect("named");
                Ok(CallerShare {
                    path: share.path.clone(),
                    fd: file.into(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ServiceLink {
            audit_file: passed(AUDIT_FD, "--audit", options.audit.is_some())?,
            log_file: passed(LOG_FD, "--log", options.log.is_some())?,
            shares,
            channel,
            caller,
            summary: None,
        })
    }

    pub(super) fn caller(&self) -> &CallerIdentity {
        &self.caller
    }

    /// Refuses a share of the caller's that is not the directory it sent, or one it could
    /// not use itself (see `run::caller_shares`); `opened` are the worker's own descriptors.
    pub(super) fn check_shares(&self, opened: &[OpenShare]) -> Result<(), String> {
        caller_shares::check(&self.caller, &self.shares, opened)
    }

    /// The caller's `--audit` file (once).
    pub(super) fn take_audit_file(&mut self) -> Result<File, String> {
        self.audit_file
            .take()
            .ok_or_else(|| "the node service sent no --audit file".to_owned())
    }

    /// The caller's `--log` file (once).
    pub(super) fn take_log_file(&mut self) -> Result<File, String> {
        self.log_file
            .take()
            .ok_or_else(|| "the node service sent no --log file".to_owned())
    }

    /// The audit log's second sink: every record, to the service.
    pub(super) fn tee(&self) -> Box<dyn Tee> {
        Box::new(ChannelTee {
            channel: self.channel.clone(),
            frames: Vec::new(),
        })
    }

    /// Tells the service the execution's id.
    pub(super) fn started(&self, execution: &str) {
        self.channel.send(&wire::encode(&WorkerEvent::Started {
            execution: execution.to_owned(),
        }));
    }

    /// Whether the service has closed the channel already (checked before the command
    /// starts, so a launch abandoned during preparation never runs it).
    pub(super) fn is_closed(&self) -> bool {
        self.channel.is_closed()
    }

    /// Resolves once the service has closed the channel (or it broke).
    pub(super) async fn closed(&self) {
        self.channel.closed().await
    }
}

/// The worker's end of the channel: frames out (whole, in order, from any thread), end of
/// file in.
struct Channel {
    fd: OwnedFd,
    /// `finished` went out: nothing follows it, whatever thread still has a record.
    finished: Mutex<bool>,
}

impl Channel {
    /// Sends `frames` (whole frames, back to back) unless `finished` went out already.
    fn send(&self, frames: &[u8]) {
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if *finished || frames.is_empty() {
            return;
        }
        if let Err(error) = send_all(self.fd.as_fd(), frames) {
            tracing::debug!("the node service did not take the execution's events: {error}");
        }
    }

    /// Sends the last event: the exit status and the summary.
    fn finish(&self, status: i32, summary: Option<serde_json::Value>) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if *finished {
            return;
        }
        let frame = wire::encode(&WorkerEvent::Finished { status, summary });
        if frame.len() - 4 > wire::MAX_FRAME {
            tracing::warn!("the summary is too large for the node service; sent without it");
            let _ = send_all(
                self.fd.as_fd(),
                &wire::encode(&WorkerEvent::Finished {
                    status,
                    summary: None,
                }),
            );
        } else if let Err(error) = send_all(self.fd.as_fd(), &frame) {
            tracing::debug!("the node service did not take the execution's end: {error}");
        }
        *finished = true;
    }

    /// Whether the service closed its end: shut down its writing side, or hung up.
    fn is_closed(&self) -> bool {
        self.poll() & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Whether the service's end is closed altogether (both ways: it died, or closed it).
    fn is_gone(&self) -> bool {
        self.poll() & (libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The channel's state now, as `poll` reports it (`revents`).
    fn poll(&self) -> libc::c_short {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready > 0 {
            poll.revents
        } else {
            0
        }
    }

    /// Resolves at the end of file (or an error) on the channel. The service sends nothing
    /// after `WorkerStart`; anything it does send is read and ignored. The descriptor stays
    /// blocking for the writers: reads here are `MSG_DONTWAIT`.
    async fn closed(&self) {
        // SAFETY: the descriptor is `self.fd`, open for as long as `self` is borrowed here,
        // which outlives `watched`.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.fd.as_fd(),
                tokio::io::Interest::READABLE,
            )
        };
        let watched = match registered {
            Ok(watched) => watched,
            Err(error) => {
                // Not knowing when the service is gone would outlive it: end instead.
                tracing::error!("cannot watch the node service's channel: {error}");
                return;
            }
        };
        let mut buffer = [0u8; 512];
        loop {
            let Ok(mut ready) = watched.readable().await else {
                return;
            };
            match ready.try_io(|fd| recv_now(fd.get_ref().as_fd(), &mut buffer)) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) | Err(_) => continue,
            }
        }
    }
}

/// The audit log's tee into the channel: each record as one `record` event, sent with the
/// audit writer's batch.
struct ChannelTee {
    channel: Arc<Channel>,
    frames: Vec<u8>,
}

impl Tee for ChannelTee {
    fn record(&mut self, record: &Record) {
        match serde_json::to_value(record) {
            Ok(record) => self
                .frames
                .extend_from_slice(&wire::encode(&WorkerEvent::Record { record })),
            Err(error) => tracing::error!("an audit record could not be encoded: {error}"),
        }
    }

    fn buffered(&self) -> usize {
        self.frames.len()
    }

    fn flush(&mut self) {
        self.channel.send(&self.frames);
        self.frames.clear();
    }
}

/// Writes all of `bytes`, retrying after signals and partial writes.
fn send_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    while !bytes.is_empty() {
        match send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(sent) => bytes = &bytes[sent..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// One non-blocking read; `WouldBlock` when there is nothing.
fn recv_now(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> std::io::Result<usize> {
    use nix::sys::socket::{recv, MsgFlags};
    loop {
        match recv(fd.as_raw_fd(), buffer, MsgFlags::MSG_DONTWAIT) {
            Ok(read) => return Ok(read),
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Marks `fd` close-on-exec if it is open.
fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on a number this process may or may not have open; EBADF is harmless.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only asks.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Whether `fd` is an open stream socket (the worker channel is one end of a socketpair).
fn is_stream_socket(fd: RawFd) -> bool {
    if !is_open(fd) {
        return false;
    }
    // SAFETY: `fd` is open; borrowed for this call only.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|kind| kind == nix::sys::socket::SockType::Stream)
}

/// One line on stderr (the caller's), whether or not anyone still reads it.
pub(super) fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "tollgate: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::limits::LimitFlags;
    use crate::sandbox::mounts::Share;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A run with every field away from its default.
    fn everything() -> RunOptions {
        RunOptions {
            policy: Some(PolicySource::File("/etc/tollgate/teams/acme.yaml".into())),
            team: Some("acme".into()),
            timeout: Some(Duration::from_millis(1500)),
            user: Some((2000, 2001)),
            limits: LimitFlags {
                memory: Some(256 << 20),
                cpus: Some(tollgate_policy::units::Cores::parse("0.5").unwrap()),
                max_processes: Some(64),
                allow_unenforced: true,
            },
            allow_root: true,
            cwd: Some("/srv/work".into()),
            shares: vec![
                Share {
                    path: "/srv/work".into(),
                    read_only: false,
                },
                Share {
                    path: "/srv/data".into(),
                    read_only: true,
                },
            ],
            tmp_size: 64 << 20,
            env: vec![("A".into(), "b=c".into())],
            pass_env: vec!["HOME".into()],
            secrets: tollgate_policy::secrets::SecretRules::default(),
            audit: Some("/var/log/a.jsonl".into()),
            audit_format: crate::audit::Format::Ocsf,
            summary: Some("/var/log/s.json".into()),
            log: Some(PathBuf::from("/var/log/t.log")),
            tty: true,
            rootfs: Some("/srv/rootfs".into()),
            transparent: false,
            quota_store: crate::quota::QuotaStoreConfig {
                redis: Some(crate::quota::RedisConfig {
                    url: "rediss://redis.internal:6380/1".into(),
                    password: Some("from-the-node".into()),
                    ca_file: Some("/etc/tollgate/redis-ca.pem".into()),
                }),
                on_failure: crate::quota::StoreFailure::Local,
                expected_nodes: 3,
                connect_timeout: Duration::from_millis(750),
                node_dir: "/run/tollgate/quotas".into(),
            },
            command: vec![
                "/bin/echo".into(),
                // Not UTF-8: arguments are bytes.
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(vec![0xff, b'x']),
            ],
        }
    }

    #[test]
    fn run_options_cross_the_worker_channel_whole_and_the_team_policy_replaces_the_path() {
        let sent = everything();
        let value = serde_json::to_value(&sent).unwrap();
        assert_eq!(options_of(value.clone(), None).unwrap(), sent);
        let policy = wire::PolicyText {
            name: "/etc/tollgate/teams/acme.yaml".into(),
            text: "version: 1\nteam: acme\n".into(),
        };
        let received = options_of(value.clone(), Some(policy.clone())).unwrap();
        assert_eq!(received.policy, Some(PolicySource::Text(policy)));
        assert_eq!(
            RunOptions {
                policy: sent.policy.clone(),
                ..received
            },
            sent
        );
        // What this tollgate does not know is refused, never half-read.
        let mut unknown = value.clone();
        unknown["surprise"] = serde_json::json!(true);
        let error = options_of(unknown, None).expect_err("refused");
        assert!(error.contains("surprise"), "{error}");
        let mut cores = value;
        cores["limits"]["cpus"] = serde_json::json!(0);
        assert!(options_of(cores, None).is_err(), "0 cores");
    }

    #[test]
    fn events_go_out_in_order_and_nothing_follows_finished() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let channel = Arc::new(Channel {
            fd: OwnedFd::from(theirs),
            finished: Mutex::new(false),
        });
        let mut tee = ChannelTee {
            channel: channel.clone(),
            frames: Vec::new(),
        };
        let link = |event: &WorkerEvent| channel.send(&wire::encode(event));
        link(&WorkerEvent::Started {
            execution: "e-1".into(),
        });
        tee.record(&Record::sandbox("e-1", None, None));
        tee.record(&Record::sandbox("e-1", Some("acme"), Some(7)));
        assert!(tee.buffered() > 0);
        tee.flush();
        channel.finish(0, Some(serde_json::json!({"exit_status": 0})));
        // A record some thread still had: dropped, not sent after the end.
        tee.record(&Record::sandbox("e-1", None, None));
        tee.flush();
        drop(channel);
        drop(tee);
        let mut ours = ours;
        let events: Vec<WorkerEvent> =
            std::iter::from_fn(|| wire::read_frame(&mut ours).ok()).collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|event| match event {
                WorkerEvent::Started { .. } => "started",
                WorkerEvent::Record { .. } => "record",
                WorkerEvent::Finished { .. } => "finished",
            })
            .collect();
        assert_eq!(kinds, ["started", "record", "record", "finished"]);
        let WorkerEvent::Record { record } = &events[2] else {
            unreachable!()
        };
        assert_eq!(record["team"], "acme");
        assert_eq!(record["landlock_abi"], 7);
    }

    #[test]
    fn a_closed_channel_is_seen_at_once_and_writing_to_a_gone_service_is_harmless() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let channel = Channel {
            fd: OwnedFd::from(theirs),
            finished: Mutex::new(false),
        };
        assert!(!channel.is_closed());
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(channel.is_closed(), "a shut-down writing side is the end");
        assert!(!channel.is_gone(), "but the service still reads");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(channel.closed());
        drop(ours);
        assert!(channel.is_gone());
        // Writing to a peer that is gone: EPIPE, reported, and this process lives on.
        channel.send(&wire::encode(&WorkerEvent::Started {
            execution: "e-2".into(),
        }));
        channel.finish(1, None);
    }
}
