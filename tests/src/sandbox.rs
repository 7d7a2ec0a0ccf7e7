//! Driving `tollgate run`: a builder for the command line, a runner that never hangs, and
//! readers for what an execution leaves behind (`--audit`, `--summary`, its cgroup).
//!
//! Needs root, like `tollgate run` itself.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{netns, tollgate_path, Scratch};

/// Debian's interpreter: root's `python3` on PATH is a pyenv shim the sandbox user cannot run.
pub const PYTHON: &str = "/usr/bin/python3";

/// The test venv's interpreter (`scripts/bootstrap.sh` builds it from PyPI with pinned
/// versions: `httpx[http2]`, `h2`, `grpcio`, `websockets`, `hypercorn`). It lives under
/// `/usr`, which every sandbox can read, so sandboxed clients and test upstreams both use it.
pub const VENV_PYTHON: &str = "/usr/local/lib/tollgate-tests/venv/bin/python3";

/// Longest any single `tollgate run` in these suites may take before the harness kills it
/// and fails the test: a guard against hangs, not a performance assertion.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Forks until the kernel refuses, keeping every child alive; prints `made N ERRNO` (or
/// `made N none`): how many it made and the errno that stopped it.
pub const FORK_UNTIL_REFUSED: &str = r#"
import errno, os, signal
made = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
        made += 1
    print("made", made, "none")
except OSError as e:
    print("made", made, errno.errorcode[e.errno])
"#;

/// A policy with the network enabled: one allowed API, so the proxy runs.
pub const NETWORK_POLICY: &str = "\
version: 1
team: acme
network:
  allow:
    - https://api.example.com
";

/// A valid policy without `network`: the sandbox gets loopback only and no proxy.
pub const OFFLINE_POLICY: &str = "\
version: 1
team: offline
";

/// Where the cgroup v2 hierarchy is mounted, read from `/proc/self/mountinfo` (the first
/// cgroup2 mount of the whole hierarchy).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs_part) = line.split_once(" - ")?;
            if fs_part.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = mount.split(' ');
            let root = fields.nth(3)?;
            let point = fields.next()?;
            (root == "/").then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .expect("a cgroup2 hierarchy is mounted")
}

/// `<cgroup2 mount>/tollgate`: the parent of every execution's cgroup.
pub fn executions_dir() -> PathBuf {
    cgroup2_mount().join("tollgate")
}

/// The cgroup directory of execution `id`.
pub fn execution_cgroup(id: &str) -> PathBuf {
    executions_dir().join(id)
}

/// Whether `name` has the shape of an execution id: `<pid>-<start time>-<16 hex digits>`.
pub fn is_execution_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() == 3
        && parts[0].parse::<u32>().is_ok()
        && parts[1].parse::<u64>().is_ok()
        && parts[2].len() == 16
        && parts[2].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cgroup v2 path of a process relative to the mount (`/tollgate/<id>`), if readable.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The execution id whose cgroup holds `pid`, if it runs in one.
pub fn execution_id_of(pid: u32) -> Option<String> {
    let path = cgroup_of(pid)?;
    let id = path.strip_prefix("/tollgate/")?;
    is_execution_id(id).then(|| id.to_owned())
}

/// Asserts that execution `id` left no cgroup behind. Invariant 5 says it is gone when
/// `tollgate run` returns, so there is no grace period.
pub fn assert_execution_gone(id: &str) {
    let path = execution_cgroup(id);
    assert!(
        !path.exists(),
        "execution {id} left its cgroup {} behind (procs: {:?})",
        path.display(),
        fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default()
    );
}

/// `(state, start time)` of a process from `/proc/<pid>/stat`; `None` when it is gone.
pub fn process_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat (starttime) is index 19 after the state (field 3).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process `pid` that started at `start` is still alive (a zombie is dead).
pub fn is_alive(pid: u32, start: u64) -> bool {
    matches!(process_stat(pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
}

/// Waits up to `limit` for a process to die; returns whether it did.
pub fn wait_dead(pid: u32, start: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while is_alive(pid, start) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The host pid of the process a sandbox knows as `ns_pid` (its pid in the sandbox's own PID
/// namespace), among the descendants of the supervisor `supervisor`. A sandbox cannot learn
/// its host pids (that is the point of its namespace), so tests that look at a sandboxed
/// process from outside ask here.
pub fn host_pid_of(supervisor: u32, ns_pid: u32) -> Option<u32> {
    let field = |status: &str, name: &str| -> Option<String> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
    };
    let parent_of = |pid: u32| -> Option<u32> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        field(&status, "PPid:")?.parse().ok()
    };
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match parent_of(pid) {
                Some(parent) if parent == supervisor => return true,
                Some(parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ids: Vec<u32> = field(&status, "NSpid:")?
            .split_whitespace()
            .filter_map(|id| id.parse().ok())
            .collect();
        (ids.len() >= 2 && ids.last() == Some(&ns_pid) && descends(pid)).then_some(pid)
    })
}

/// [`host_pid_of`], waiting (up to [`HANG_LIMIT`]) for the process to appear.
pub fn wait_host_pid(supervisor: u32, ns_pid: u32) -> u32 {
    let deadline = Instant::now() + HANG_LIMIT;
    loop {
        if let Some(pid) = host_pid_of(supervisor, ns_pid) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process of supervisor {supervisor} has pid {ns_pid} in its namespace"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on one positive pid.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// A writable-by-anyone directory inside a scratch dir, for files the sandbox user writes.
pub fn shared_dir(scratch: &Scratch, name: &str) -> PathBuf {
    let dir = scratch.dir.join(name);
    fs::create_dir_all(&dir).expect("create shared dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod 777");
    dir
}

/// One `tollgate run` invocation, built up option by option.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    disable: Option<String>,
    route_less: bool,
}

impl Sandbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// `--policy FILE`.
    pub fn policy(self, path: impl AsRef<Path>) -> Self {
        self.arg("--policy").arg(path.as_ref())
    }

    /// `--audit FILE`.
    pub fn audit(self, path: impl AsRef<Path>) -> Self {
        self.arg("--audit").arg(path.as_ref())
    }

    /// `--summary FILE`.
    pub fn summary(self, path: impl AsRef<Path>) -> Self {
        self.arg("--summary").arg(path.as_ref())
    }

    /// `--timeout DURATION`.
    pub fn timeout(self, duration: &str) -> Self {
        self.arg("--timeout").arg(duration)
    }

    /// Any other option of `tollgate run`, placed before `--`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// An environment variable of the *supervisor* (not passed to the child unless asked).
    pub fn supervisor_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Disables walls through the test-only switch (`nft`, `bpf`, `netns`, comma-separated).
    pub fn disable_layers(mut self, layers: &str) -> Self {
        if !layers.is_empty() {
            self.disable = Some(layers.to_owned());
        }
        self
    }

    /// Runs the whole `tollgate run` inside a route-less network namespace the harness
    /// creates (`unshare -n`, `lo` up), so that even a supervisor whose own walls are off
    /// has no network but loopback. Required whenever the `netns` wall is disabled.
    pub fn route_less(mut self) -> Self {
        self.route_less = true;
        self
    }

    /// The full command: `tollgate run <options> -- <cmd...>`, wrapped when route-less.
    pub fn command<I, S>(&self, cmd: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let disables_netns = self
            .disable
            .as_deref()
            .is_some_and(|d| d.split(',').any(|l| l.trim() == "netns"));
        assert!(
            !disables_netns || self.route_less,
            "a run without the netns wall must be wrapped in a route-less namespace"
        );
        let mut command = if self.route_less {
            netns::route_less_command(&tollgate_path())
        } else {
            Command::new(tollgate_path())
        };
        command
            .env_remove("TOLLGATE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("TOLLGATE_TEST_DISABLE_LAYERS");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(disable) = &self.disable {
            command.env("TOLLGATE_TEST_DISABLE_LAYERS", disable);
        }
        // Scratch directories live below SCRATCH_ROOT in /tmp, which the sandbox gets its own
        // of: share them.
        std::fs::create_dir_all(crate::SCRATCH_ROOT).expect("create the scratch root");
        command
            .arg("run")
            .arg("--share")
            .arg(crate::SCRATCH_ROOT)
            .args(&self.args)
            .arg("--")
            .args(cmd);
        command
    }

    /// Runs `cmd` in the sandbox to completion (stdin empty) and captures everything.
    pub fn run<I, S>(&self, cmd: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.command(cmd), Some(b""), HANG_LIMIT)
    }
}

/// What a finished process left: status and captured output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: Vec<u8>,
}

impl Finished {
    /// The exit code; panics (with the output) when the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "tollgate itself was killed by signal {:?}\n{}",
                self.status.signal(),
                self.describe()
            )
        })
    }

    /// Status, stdout and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect()
    }
}

/// Reads a pipe to the end on a thread.
fn drain(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Feeds `input` to a child's stdin on a thread and closes it.
fn feed(mut stdin: ChildStdin, input: Vec<u8>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    })
}

/// Waits for `child` up to `limit`; on expiry kills it and panics.
pub fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} hung for more than {limit:?}", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` with piped stdio, feeding `stdin` (`None`: inherit nothing, closed stdin),
/// and returns its output; kills it and panics if it runs longer than `limit`.
pub fn output(command: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Finished {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let feeder = feed(
        child.stdin.take().expect("stdin"),
        stdin.unwrap_or_default().to_vec(),
    );
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_within(&mut child, limit);
    let _ = feeder.join();
    let stdout_bytes = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_bytes,
    }
}

/// A running `tollgate run` whose stdout is read line by line as it comes.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdin: Option<ChildStdin>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Spawns `command` with piped stdio.
    pub fn spawn(command: &mut Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr")));
        let stdin = child.stdin.take();
        Running {
            child,
            lines,
            seen: Vec::new(),
            stdin,
            stderr,
        }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to `limit`) for a stdout line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if line.starts_with(prefix) => return line,
                Some(_) => {}
                None => self.fail(&format!(
                    "no stdout line starting with {prefix:?} within {limit:?}"
                )),
            }
        }
    }

    /// The next stdout line, waiting up to `limit` (`None`: none came). Every line read is
    /// kept for [`Running::fail`] and [`Running::finish`].
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Kills the supervisor and fails the test with `what` and everything it printed.
    pub fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
        panic!(
            "{what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.seen.join("\n"),
            self.take_stderr()
        );
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }

    /// Waits (up to `limit`) for the supervisor process itself to exit, without waiting for
    /// its output pipes to close (a surviving sandboxed process may still hold them).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.stdin = None;
        wait_within(&mut self.child, limit)
    }

    /// Waits (up to `limit`) for the supervisor to exit and returns everything it printed.
    pub fn finish(mut self, limit: Duration) -> Finished {
        self.stdin = None;
        let status = wait_within(&mut self.child, limit);
        let stderr = self.take_stderr();
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.iter());
        let stdout = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        Finished {
            status,
            stdout_bytes: stdout.clone().into_bytes(),
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads a JSON Lines file (missing file: no records).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} has a line that is not JSON ({e}): {line}",
                    path.display()
                )
            })
        })
        .collect()
}

/// Reads a file holding one JSON object.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{} is not one JSON value ({e}): {text}", path.display()))
}

/// The `bypass_attempt` records of an audit log.
pub fn bypass_records(audit: &[Value]) -> Vec<&Value> {
    audit
        .iter()
        .filter(|record| record["type"] == "bypass_attempt")
        .collect()
}

/// The destination of a `bypass_attempt` record, whatever way it is spelled:
/// `"destination": "10.0.0.1:80"`, `"destination": {"address"|"ip": .., "port": ..}`, or
/// top-level `address`/`port`.
pub fn record_destination(record: &Value) -> Option<std::net::SocketAddr> {
    fn from_parts(object: &Value) -> Option<std::net::SocketAddr> {
        let ip = ["address", "ip", "addr", "destination_address"]
            .iter()
            .find_map(|k| object.get(*k)?.as_str()?.parse::<std::net::IpAddr>().ok())?;
        let port = ["port", "destination_port"]
            .iter()
            .find_map(|k| object.get(*k)?.as_u64())?;
        Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?))
    }
    match record.get("destination") {
        Some(Value::String(text)) => text.parse().ok(),
        Some(object @ Value::Object(_)) => from_parts(object),
        _ => from_parts(record),
    }
}

/// A new pseudo-terminal: (master, slave). The master stands for a terminal emulator, the
/// slave for the terminal a caller runs `tollgate run` on.
pub fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers given; no name, termios or size.
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
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}
