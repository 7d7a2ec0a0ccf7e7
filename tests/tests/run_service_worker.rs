//! The node service's worker process alone (`tollgate __execution`), driven the way
//! `tollgate serve` drives it: a socketpair end on descriptor 3 carrying one `WorkerStart`,
//! the caller's `--audit` file on descriptor 4, and the events read back.
//!
//! Needs root. The runs have no network section, or one the sandbox never uses.

use std::{
    fs,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use serde_json::Value;
use tollgate::run::RunOptions;
use tollgate::sandbox::mounts::Share;
use tollgate::serve::wire::{
    self, CallerIdentity, FrameError, PolicyText, WorkerEvent, WorkerStart,
};
use tollgate_tests::{
    leaks::{sandboxed_processes, v1_execution_cgroups, SuiteLock},
    sandbox::{assert_execution_gone, shared_dir, HANG_LIMIT, NETWORK_POLICY},
    tollgate_path, Scratch,
};

/// The PATH `tollgate serve` gives its workers.
const WORKER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn caller() -> CallerIdentity {
    CallerIdentity {
        uid: 1000,
        gid: 1000,
        pid: 4242,
        groups: vec![1000, 27],
    }
}

fn options(command: &[&str]) -> RunOptions {
    RunOptions::new(command.iter().map(Into::into).collect())
}

/// What the service sends a worker: `run`, the team's policy as (name, text) if any, and
/// the caller.
fn worker_start(run: &RunOptions, policy: Option<(&str, &str)>) -> WorkerStart {
    WorkerStart {
        options: serde_json::to_value(run).unwrap(),
        policy: policy.map(|(name, text)| PolicyText {
            name: name.into(),
            text: text.into(),
        }),
        caller: caller(),
    }
}

/// `path` opened for appending, as the caller opens its `--audit` or `--log` file.
fn appended(path: &Path) -> OwnedFd {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .into()
}

/// `--share path`.
fn writable(path: &Path) -> Share {
    Share {
        path: path.to_owned(),
        read_only: false,
    }
}

/// A worker started as the service starts one.
struct Worker {
    child: Child,
    /// The service's end of the worker channel (`None` once the test closed it).
    channel: Option<UnixStream>,
}

/// What the service passes a worker besides its `WorkerStart`.
#[derive(Default)]
struct Passed<'a> {
    /// The caller's `--audit` file, on descriptor 4.
    audit: Option<&'a OwnedFd>,
    /// The caller's `--log` file, on descriptor 5.
    log: Option<&'a OwnedFd>,
    /// The caller's stderr (by default a pipe the test reads).
    stderr: Option<OwnedFd>,
    /// The service's own `TOLLGATE_LOG`, which it passes on.
    log_filter: Option<&'a str>,
    /// The caller's descriptors of the run's shares, on descriptors 6, 7, … in the run's
    /// order (`wire::FIRST_SHARE_FD`).
    shares: Vec<&'a OwnedFd>,
}

impl<'a> Passed<'a> {
    /// The caller's `--audit` file and nothing else.
    fn audit(file: &'a OwnedFd) -> Passed<'a> {
        Passed {
            audit: Some(file),
            ..Passed::default()
        }
    }
}

/// Shares a test passes at most.
const MOST_SHARES: usize = 4;

/// The caller's descriptor of a directory it shares (the worker checks it is that directory).
fn share_descriptor(dir: &std::path::Path) -> OwnedFd {
    fs::File::open(dir)
        .map(OwnedFd::from)
        .expect("open the shared directory")
}

impl Worker {
    /// Spawns `tollgate __execution` with the descriptors in their places and sends it
    /// `start`.
    fn start(start: &WorkerStart, passed: Passed<'_>) -> Worker {
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        // For descriptors 3, 4, 5, then the shares from 6; -1: leave it closed.
        let mut sources: [RawFd; 3 + MOST_SHARES] = [-1; 3 + MOST_SHARES];
        sources[0] = theirs.as_raw_fd();
        sources[1] = passed.audit.map_or(-1, |fd| fd.as_raw_fd());
        sources[2] = passed.log.map_or(-1, |fd| fd.as_raw_fd());
        assert!(passed.shares.len() <= MOST_SHARES);
        for (source, share) in sources[3..].iter_mut().zip(&passed.shares) {
            *source = share.as_raw_fd();
        }
        let mut command = Command::new(tollgate_path());
        command
            .arg("__execution")
            .env_clear()
            .env("PATH", WORKER_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(passed.stderr.map_or_else(Stdio::piped, Stdio::from));
        if let Some(filter) = passed.log_filter {
            command.env("TOLLGATE_LOG", filter);
        }
        // SAFETY: only fcntl and dup2 between fork and exec, no allocation.
        unsafe {
            command.pre_exec(move || {
                // Above every target first, so that placing one never overwrites another.
                let mut high: [RawFd; 3 + MOST_SHARES] = [-1; 3 + MOST_SHARES];
                for (copy, &fd) in high.iter_mut().zip(&sources) {
                    if fd >= 0 {
                        *copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                        if *copy < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                for (target, &fd) in (3..).zip(&high) {
                    if fd >= 0 && libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn tollgate __execution");
        drop(theirs);
        wire::write_frame(&mut ours, start).expect("send WorkerStart");
        Worker {
            child,
            channel: Some(ours),
        }
    }

    /// Reads the next event; `None` at the end of the channel.
    fn next_event(&mut self) -> Option<WorkerEvent> {
        let channel = self.channel.as_mut().expect("the channel is open");
        match wire::read_frame::<WorkerEvent>(channel) {
            Ok(event) => Some(event),
            Err(FrameError::Closed) => None,
            Err(error) => panic!("the worker sent what cannot be read: {error}"),
        }
    }

    /// Every event to the end of the channel.
    fn events(&mut self) -> Vec<WorkerEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }

    /// Waits for the worker to exit (a hang guard, not a performance bound): status, stdout,
    /// stderr.
    fn finish(mut self) -> (i32, String, String) {
        let mut stdout = String::new();
        let mut stderr = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        let deadline = Instant::now() + HANG_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), stdout, stderr);
            }
            assert!(Instant::now() < deadline, "the worker did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records among `events`.
fn records(events: &[WorkerEvent]) -> Vec<&Value> {
    events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Record { record } => Some(record),
            _ => None,
        })
        .collect()
}

/// Nothing of execution `id` is left: no cgroup (v2 or v1), no process in one.
fn assert_nothing_left(id: &str) {
    assert_execution_gone(id);
    let v1: Vec<_> = v1_execution_cgroups()
        .into_iter()
        .filter(|path| path.ends_with(id))
        .collect();
    assert!(v1.is_empty(), "v1 cgroups of {id} left: {v1:?}");
    let processes: Vec<_> = sandboxed_processes()
        .into_iter()
        .filter(|(_, cgroup)| cgroup.contains(id))
        .collect();
    assert!(
        processes.is_empty(),
        "processes of {id} left: {processes:?}"
    );
}

#[test]
fn a_worker_runs_its_execution_and_reports_started_records_and_finished() {
    let _lock = SuiteLock::shared();
    let mut run = options(&["/bin/echo", "hi"]);
    run.team = Some("acme".into());
    let start = worker_start(
        &run,
        Some(("/etc/tollgate/teams/acme.yaml", NETWORK_POLICY)),
    );
    let mut worker = Worker::start(&start, Passed::default());
    let events = worker.events();
    let (status, stdout, stderr) = worker.finish();
    assert_eq!(status, 0, "stderr: {stderr}");
    assert_eq!(stdout, "hi\n");

    let Some(WorkerEvent::Started { execution }) = events.first() else {
        panic!("the first event is not `started`: {events:?}");
    };
    let Some(WorkerEvent::Finished {
        status: 0,
        summary: Some(summary),
    }) = events.last()
    else {
        panic!("the last event is not `finished` with status 0 and a summary: {events:?}");
    };
    assert_eq!(summary["execution"], execution.as_str());
    assert_eq!(summary["exit_status"], 0);
    assert_eq!(summary["team"], "acme");
    assert_eq!(summary["network"], true, "the team policy came as text");
    let sandbox = records(&events)
        .into_iter()
        .find(|record| record["type"] == "sandbox")
        .expect("the sandbox record is teed with no --audit");
    assert_eq!(sandbox["execution"], execution.as_str());
    assert_eq!(sandbox["caller"], serde_json::to_value(caller()).unwrap());
    assert_nothing_left(execution);
}

#[test]
fn the_callers_audit_file_gets_its_format_the_service_gets_json_and_no_descriptor_leaks() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("worker-audit");
    let audit = scratch.output("audit.ocsf");
    // The caller opens its own file and sends it.
    let file: OwnedFd = appended(&audit);
    let mut run = options(&["/bin/ls", "/proc/self/fd"]);
    run.audit = Some(audit.clone());
    run.audit_format = tollgate::audit::Format::Ocsf;
    let start = worker_start(&run, None);
    let mut worker = Worker::start(&start, Passed::audit(&file));
    let events = worker.events();
    let (status, stdout, stderr) = worker.finish();
    assert_eq!(status, 0, "stderr: {stderr}");
    // ls's own listing descriptor besides 0, 1, 2: nothing of the service's reached it.
    let descriptors: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(descriptors, ["0", "1", "2", "3"], "{stdout}");

    let teed = records(&events);
    assert!(
        teed.iter().any(|record| record["type"] == "sandbox"),
        "{events:?}"
    );
    let written = fs::read_to_string(&audit).unwrap();
    let first: Value = serde_json::from_str(written.lines().next().expect("a line")).unwrap();
    assert_eq!(
        first["class_uid"], 6002,
        "OCSF in the caller's file: {written}"
    );
}

#[test]
fn an_audit_descriptor_that_is_not_the_named_file_is_refused() {
    // The caller names a root-only path but sends a file inside a directory the sandbox
    // shares, where the sandbox could forge or delete records: the worker must not take it.
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("worker-forged-audit");
    let named = scratch.output("audit.jsonl");
    fs::write(&named, "").unwrap();
    let share = shared_dir(&scratch, "shared");
    let elsewhere = share.join("audit.jsonl");
    let file: OwnedFd = appended(&elsewhere);
    let ran = share.join("ran");
    let mut run = options(&["/bin/touch", ran.to_str().unwrap()]);
    run.audit = Some(named.clone());
    run.shares = vec![writable(&share)];
    let start = worker_start(&run, None);
    let share_fd = share_descriptor(&share);
    let mut worker = Worker::start(
        &start,
        Passed {
            shares: vec![&share_fd],
            ..Passed::audit(&file)
        },
    );
    let events = worker.events();
    let (status, _, stderr) = worker.finish();
    assert_eq!(status, 125, "stderr: {stderr}");
    assert!(
        stderr.contains("is not the one this path names"),
        "{stderr}"
    );
    assert!(
        matches!(
            events.last(),
            Some(WorkerEvent::Finished {
                status: 125,
                summary: None
            })
        ),
        "{events:?}"
    );
    assert!(!ran.exists(), "the command ran");
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "");
}

#[test]
fn a_relative_output_path_is_refused_with_what_to_give() {
    // The worker runs in `/`, not in its caller's working directory.
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("worker-relative");
    let file: OwnedFd = fs::File::create(scratch.output("audit.jsonl"))
        .unwrap()
        .into();
    let mut run = options(&["/bin/true"]);
    run.audit = Some("audit.jsonl".into());
    let start = worker_start(&run, None);
    let worker = Worker::start(&start, Passed::audit(&file));
    let (status, _, stderr) = worker.finish();
    assert_eq!(status, 125, "{stderr}");
    assert!(stderr.contains("give an absolute path"), "{stderr}");
}

#[test]
fn closing_the_channel_mid_run_kills_the_sandbox_and_the_worker_exits_125() {
    let _lock = SuiteLock::shared();
    // A service ending the execution shuts its side down and reads on: the worker tells the
    // caller why. A dead service leaves the channel hung up: the caller's client says it
    // then, and the worker adds nothing.
    for service_died in [false, true] {
        let run = options(&["/bin/sh", "-c", "echo ready; exec /bin/sleep 30"]);
        let start = worker_start(&run, None);
        let mut worker = Worker::start(&start, Passed::default());
        let Some(WorkerEvent::Started { execution }) = worker.next_event() else {
            panic!("no `started` event");
        };
        let mut ready = [0u8; 6];
        worker
            .child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .unwrap();
        assert_eq!(&ready, b"ready\n", "the command runs");

        let mut events = Vec::new();
        if service_died {
            worker.channel = None;
        } else {
            let channel = worker.channel.as_ref().unwrap();
            channel.shutdown(std::net::Shutdown::Write).unwrap();
            events = worker.events();
        }
        let (status, _, stderr) = worker.finish();
        assert_eq!(
            status, 125,
            "service died: {service_died}; stderr: {stderr}"
        );
        if service_died {
            assert_eq!(stderr, "", "the caller's client says it");
        } else {
            assert_eq!(
                stderr,
                "tollgate: the node service ended this execution (its caller went away, or \
                 the service is stopping)\n"
            );
            assert!(
                matches!(
                    events.last(),
                    Some(WorkerEvent::Finished {
                        status: 125,
                        summary: Some(_)
                    })
                ),
                "{events:?}"
            );
        }
        assert_nothing_left(&execution);
    }
}

#[test]
fn a_launch_abandoned_before_its_command_started_never_runs_it() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("worker-abandoned");
    let share = shared_dir(&scratch, "shared");
    let ran = share.join("ran");
    let mut run = options(&["/bin/touch", ran.to_str().unwrap()]);
    run.shares = vec![writable(&share)];
    let start = worker_start(&run, None);
    let share_fd = share_descriptor(&share);
    let mut worker = Worker::start(
        &start,
        Passed {
            shares: vec![&share_fd],
            ..Passed::default()
        },
    );
    // The service closes its end right after sending the execution, as `tollgate serve`
    // does (a shutdown of its writing side: the worker's events can still be read).
    worker
        .channel
        .as_ref()
        .unwrap()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let events = worker.events();
    let (status, _, stderr) = worker.finish();
    assert_eq!(status, 125, "stderr: {stderr}");
    assert!(
        stderr.contains("the node service ended this execution"),
        "{stderr}"
    );
    assert!(!ran.exists(), "the command ran after the service had gone");
    let Some(WorkerEvent::Started { execution }) = events.first() else {
        panic!("no `started` event: {events:?}");
    };
    assert!(
        matches!(
            events.last(),
            Some(WorkerEvent::Finished { status: 125, .. })
        ),
        "{events:?}"
    );
    assert_nothing_left(execution);
}

#[test]
fn a_command_that_cannot_run_exits_as_a_local_run_does() {
    let _lock = SuiteLock::shared();
    for (command, status, said) in [
        ("/nonexistent/tool", 127, "not found"),
        ("/etc/passwd", 126, "cannot execute"),
    ] {
        let start = worker_start(&options(&[command]), None);
        let mut worker = Worker::start(&start, Passed::default());
        let events = worker.events();
        let (exit, _, stderr) = worker.finish();
        assert_eq!(exit, status, "{command}: {stderr}");
        assert!(
            stderr.starts_with("tollgate: ") && stderr.contains(said),
            "{stderr}"
        );
        assert!(
            matches!(events.last(), Some(WorkerEvent::Finished { status: s, .. }) if *s == status),
            "{command}: {events:?}"
        );
    }
}

/// A pseudo-terminal: (master, slave).
fn terminal() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors, which the OwnedFds then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// What the terminal's master side holds now (the slave side closed).
fn drain(master: OwnedFd) -> String {
    // SAFETY: F_SETFL on a descriptor this test owns.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut file = fs::File::from(master);
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    // Ends with EAGAIN (nothing more) or EIO (no slave left).
    while let Ok(n @ 1..) = file.read(&mut buffer) {
        text.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn the_log_file_gets_every_line_even_those_before_it_opened_and_no_terminal_colours() {
    // The caller's stderr is a terminal: tollgate's lines go to its --log file all the same,
    // without colour codes, those logged before the file was adopted included.
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("worker-log");
    let log = scratch.output("tollgate.log");
    let file: OwnedFd = appended(&log);
    let mut run = options(&[
        "/usr/bin/curl",
        "-sS",
        "-o",
        "/dev/null",
        "http://refused.test/",
    ]);
    run.team = Some("acme".into());
    run.log = Some(log.clone());
    let start = worker_start(&run, Some(("acme.yaml", NETWORK_POLICY)));
    let (master, slave) = terminal();
    let mut worker = Worker::start(
        &start,
        Passed {
            log: Some(&file),
            stderr: Some(slave),
            log_filter: Some("debug"),
            ..Passed::default()
        },
    );
    let events = worker.events();
    let (status, _, _) = worker.finish();
    let on_terminal = drain(master);
    assert_eq!(status, 0, "{on_terminal}");
    assert!(
        matches!(events.last(), Some(WorkerEvent::Finished { status: 0, .. })),
        "{events:?}"
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("refused.test"), "the proxy's line:\n{text}");
    assert!(text.contains("DEBUG"), "the debug lines:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a file:\n{text}"
    );
    assert!(
        !on_terminal.contains("refused.test") && !on_terminal.contains("DEBUG"),
        "tollgate's lines on the caller's terminal: {on_terminal}"
    );
}

#[test]
fn started_by_hand_it_says_what_it_is_for() {
    let out = Command::new(tollgate_path())
        .arg("__execution")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tollgate serve"), "{stderr}");
}
