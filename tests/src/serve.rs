//! The node service under test: a `tollgate serve` started as root in a directory of its own,
//! unprivileged callers that launch through its socket, its `/metrics`, and what it must not
//! leave behind.
//!
//! Each test starts its own service (`Service::start`) from a [`Node`]: the `node.yaml` it
//! writes puts the launch socket, the team policy directory, the metrics socket and the
//! service's launch audit inside the service's directory, so tests never share one, and the
//! service reads exactly the configuration a deployment would. Callers are real accounts
//! ([`accounts::TestUser`]) running the real client (`tollgate run --connect`) under
//! `setpriv`.
//!
//! Needs root.

pub mod accounts;
pub mod exposition;

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    leaks,
    sandbox::{
        executions_dir, output, process_stat, read_json_lines, wait_within, Finished, Running,
        HANG_LIMIT,
    },
    tollgate_path,
};
pub use accounts::{TestGroup, TestUser};
pub use exposition::Exposition;

/// Where the services' directories live (short: the socket path must fit `sun_path`).
const SERVICE_ROOT: &str = "/tmp/tollgate-serve";

/// How long a service may take to start listening (doctor, eBPF, gc run first).
const START_LIMIT: Duration = Duration::from_secs(60);

/// How long something the service or a worker does on its own (a reload, an execution
/// ended because its caller went away, a worker exiting) may take before the test fails: a
/// guard against hangs, not a performance assertion.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The interval the test services rescan their team directory at.
pub const RELOAD_INTERVAL: &str = "100ms";

static NEXT_SERVICE: AtomicU32 = AtomicU32::new(0);

/// One entry of `node.yaml`'s `callers`: who, and what it may use.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub uid: u32,
    pub teams: Vec<String>,
    pub shares: Vec<PathBuf>,
    pub users: Vec<String>,
    pub rootfs: Vec<PathBuf>,
    pub allow_root: bool,
    pub allow_unenforced_limits: bool,
}

impl Caller {
    /// The caller with uid `uid`, allowed `teams` and nothing more.
    pub fn new(uid: u32, teams: &[&str]) -> Caller {
        Caller {
            uid,
            teams: teams.iter().map(|t| t.to_string()).collect(),
            ..Caller::default()
        }
    }

    pub fn shares(mut self, roots: &[&Path]) -> Caller {
        self.shares = roots.iter().map(|p| p.to_path_buf()).collect();
        self
    }

    pub fn users(mut self, users: &[&str]) -> Caller {
        self.users = users.iter().map(|u| u.to_string()).collect();
        self
    }

    pub fn rootfs(mut self, dirs: &[&Path]) -> Caller {
        self.rootfs = dirs.iter().map(|p| p.to_path_buf()).collect();
        self
    }

    fn yaml(&self) -> String {
        format!(
            "  - uid: {}\n    teams: {}\n    shares: {}\n    users: {}\n    rootfs: {}\n    \
             allow_root: {}\n    allow_unenforced_limits: {}\n",
            self.uid,
            json_list(&self.teams),
            json_list(&self.shares),
            json_list(&self.users),
            json_list(&self.rootfs),
            self.allow_root,
            self.allow_unenforced_limits,
        )
    }
}

/// A list as a JSON (and so YAML flow) sequence of strings.
fn json_list<T: AsRef<OsStr>>(items: &[T]) -> String {
    let strings: Vec<String> = items
        .iter()
        .map(|item| item.as_ref().to_string_lossy().into_owned())
        .collect();
    serde_json::to_string(&strings).expect("strings serialise")
}

/// What a test service is configured with, beyond the paths [`Service::start`] chooses.
#[derive(Debug, Clone)]
pub struct Node {
    pub callers: Vec<Caller>,
    /// The launch socket's group (a name); `None` leaves it root's.
    pub socket_group: Option<String>,
    pub socket_mode: String,
    pub shutdown_grace: String,
    pub max_executions: u32,
    /// Team policies written into the team directory before the service starts.
    pub teams: Vec<(String, String)>,
    /// The service's own environment besides `PATH` (which is the worker's `PATH`).
    pub env: Vec<(String, String)>,
}

impl Node {
    /// A node whose socket belongs to `group` (mode 0660), for `callers`.
    pub fn new(group: &TestGroup, callers: Vec<Caller>) -> Node {
        Node {
            callers,
            socket_group: Some(group.name.clone()),
            socket_mode: "0660".into(),
            shutdown_grace: "30s".into(),
            max_executions: 64,
            teams: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds team `name`'s policy.
    pub fn team(mut self, name: &str, policy: &str) -> Node {
        self.teams.push((name.to_owned(), policy.to_owned()));
        self
    }

    pub fn shutdown_grace(mut self, grace: &str) -> Node {
        self.shutdown_grace = grace.to_owned();
        self
    }

    /// A variable of the service's own environment.
    pub fn env(mut self, key: &str, value: &str) -> Node {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn yaml(&self, paths: &ServicePaths) -> String {
        let quoted = |path: &Path| serde_json::to_string(path).expect("a UTF-8 path");
        let group = self
            .socket_group
            .as_deref()
            .map(|g| format!(", group: {g}"))
            .unwrap_or_default();
        let mut text = format!(
            "socket: {{path: {socket}, owner: root{group}, mode: \"{mode}\"}}\n\
             teams_dir: {teams}\n\
             secrets_dir: {secrets}\n\
             metrics: {metrics}\n\
             audit: {audit}\n\
             reload_interval: {RELOAD_INTERVAL}\n\
             gc_interval: 10m\n\
             shutdown_grace: {grace}\n\
             max_executions: {max}\n\
             callers:\n",
            socket = quoted(&paths.socket),
            mode = self.socket_mode,
            teams = quoted(&paths.teams),
            secrets = quoted(&paths.secrets),
            metrics = serde_json::to_string(&format!("unix:{}", paths.metrics.display()))
                .expect("a string"),
            audit = quoted(&paths.launches),
            grace = self.shutdown_grace,
            max = self.max_executions,
        );
        if self.callers.is_empty() {
            text = text.replace("callers:\n", "callers: []\n");
        }
        for caller in &self.callers {
            text.push_str(&caller.yaml());
        }
        text
    }
}

/// The files of one service, all inside its directory.
#[derive(Debug, Clone)]
pub struct ServicePaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: PathBuf,
    pub teams: PathBuf,
    pub secrets: PathBuf,
    /// The service's own audit of launches (`audit:` in node.yaml).
    pub launches: PathBuf,
    /// The service's stdout and stderr.
    pub log: PathBuf,
}

impl ServicePaths {
    fn new() -> ServicePaths {
        let dir = Path::new(SERVICE_ROOT).join(format!(
            "{}-{}",
            std::process::id(),
            NEXT_SERVICE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        for made in [Path::new(SERVICE_ROOT), &dir] {
            fs::create_dir_all(made).expect("create the service directory");
            // Callers must reach the socket; nobody but root writes here.
            fs::set_permissions(made, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        }
        let paths = ServicePaths {
            config: dir.join("node.yaml"),
            socket: dir.join("tollgate.sock"),
            metrics: dir.join("metrics.sock"),
            teams: dir.join("teams"),
            secrets: dir.join("secrets"),
            launches: dir.join("launches.jsonl"),
            log: dir.join("service.log"),
            dir,
        };
        for made in [&paths.teams, &paths.secrets] {
            fs::create_dir_all(made).expect("create a service directory");
            fs::set_permissions(made, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        }
        paths
    }
}

/// A running `tollgate serve`; on drop, killed (SIGKILL) if a test did not stop it, its
/// workers given their time to end their executions (killed past it, and collected), and its
/// directory removed.
pub struct Service {
    pub paths: ServicePaths,
    node: Node,
    child: Option<Child>,
    pid: u32,
    start: u64,
    /// Every worker (pid, start time) seen as a child of the service.
    workers: Mutex<Vec<(u32, u64)>>,
}

impl Service {
    /// Writes `node.yaml` and the team policies, starts `tollgate serve --config` and waits
    /// until the launch socket and the metrics socket accept connections.
    pub fn start(node: Node) -> Service {
        Self::start_in(ServicePaths::new(), node)
    }

    /// Starts the service again with the same configuration, directory and team files,
    /// after it died or was stopped (killing it first if it still runs).
    pub fn restart(&mut self) {
        self.reap();
        self.launch();
    }

    fn start_in(paths: ServicePaths, node: Node) -> Service {
        fs::write(&paths.config, node.yaml(&paths)).expect("write node.yaml");
        let mut service = Service {
            paths,
            node,
            child: None,
            pid: 0,
            start: 0,
            workers: Mutex::new(Vec::new()),
        };
        for (team, policy) in &service.node.teams {
            service.write_team(team, policy);
        }
        service.launch();
        service
    }

    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .expect("open the service log");
        let mut command = Command::new(tollgate_path());
        command
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(self.node.env.iter().map(|(k, v)| (k, v)))
            .arg("serve")
            .arg("--config")
            .arg(&self.paths.config)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        self.pid = child.id();
        self.start = process_stat(self.pid).map(|(_, s)| s).unwrap_or(0);
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "tollgate serve exited with {status} before it listened\n{}",
                    self.describe()
                );
            }
            let launch = UnixStream::connect(&self.paths.socket).is_ok();
            let metrics = UnixStream::connect(&self.paths.metrics).is_ok();
            if launch && metrics {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate serve did not listen on {} and {} within {START_LIMIT:?}\n{}",
                self.paths.socket.display(),
                self.paths.metrics.display(),
                self.describe()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The service's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the service process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The service's log (its stdout and stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    /// The service's log and configuration, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "--- node.yaml ---\n{}\n--- service log ---\n{}",
            fs::read_to_string(&self.paths.config).unwrap_or_default(),
            self.log()
        )
    }

    /// Writes team `team`'s policy the way a deployment replaces it (a new file renamed over
    /// the old one, as a ConfigMap update does), so the service never reads half a file.
    pub fn write_team(&self, team: &str, policy: &str) {
        let path = self.paths.teams.join(format!("{team}.yaml"));
        let staging = self.paths.teams.join(format!(".{team}.yaml.new"));
        fs::write(&staging, policy).expect("write a team policy");
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
        fs::rename(&staging, &path).expect("rename the team policy into place");
    }

    /// A launch through this service's socket as `user`.
    pub fn client<'a>(&'a self, user: &'a TestUser) -> Client<'a> {
        Client {
            socket: &self.paths.socket,
            user,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// One scrape of `/metrics`, parsed.
    pub fn scrape(&self) -> Exposition {
        let text = http_get_unix(&self.paths.metrics, "/metrics")
            .unwrap_or_else(|e| panic!("scrape /metrics: {e}\n{}", self.describe()));
        Exposition::parse(&text)
            .unwrap_or_else(|e| panic!("/metrics is not a text exposition ({e}):\n{text}"))
    }

    /// Scrapes until `done` holds (the service counts events as it learns of them, a worker
    /// or a rescan after the test acted), up to [`SETTLE_LIMIT`]; returns that scrape.
    pub fn scrape_until(
        &self,
        what: &str,
        mut done: impl FnMut(&Exposition) -> bool,
    ) -> Exposition {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let scrape = self.scrape();
            if done(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics never showed {what} within {SETTLE_LIMIT:?}:\n{}\n{}",
                scrape.text,
                self.describe()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The service's launch records (`audit:` of node.yaml) so far.
    pub fn launch_records(&self) -> Vec<Value> {
        read_json_lines(&self.paths.launches)
    }

    /// How many descriptors the service holds open now.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// The service's worker processes running now (its children), remembered for the leak
    /// checks.
    pub fn workers(&self) -> Vec<u32> {
        let found = children_of(self.pid);
        let mut seen = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for &pid in &found {
            if let Some((_, start)) = process_stat(pid) {
                if !seen.contains(&(pid, start)) {
                    seen.push((pid, start));
                }
            }
        }
        found
    }

    /// Waits until the service runs `count` workers; returns them.
    pub fn wait_workers(&self, count: usize) -> Vec<u32> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let workers = self.workers();
            if workers.len() == count {
                return workers;
            }
            assert!(
                Instant::now() < deadline,
                "the service runs {} workers, not {count}\n{}",
                workers.len(),
                self.describe()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The execution ids this service is known to have run: from its launch records, and
    /// the cgroups named after a worker it was seen to run.
    pub fn execution_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .launch_records()
            .iter()
            .filter_map(|r| r["execution"].as_str().map(str::to_owned))
            .collect();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for id in leaks::execution_cgroups() {
            if workers
                .iter()
                .any(|(pid, start)| id.starts_with(&format!("{pid}-{start}-")))
            {
                ids.push(id);
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// What this service's executions and `users` left: live workers, execution cgroups
    /// (v2 and v1), runtime directories, processes in an execution's cgroup, processes of
    /// the users. Empty when clean.
    pub fn leftovers(&self, users: &[&TestUser]) -> Vec<String> {
        let mut problems = Vec::new();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (pid, start) in workers {
            if crate::sandbox::is_alive(pid, start) {
                problems.push(format!("worker process {pid} still runs"));
            }
        }
        let ids = self.execution_ids();
        for id in &ids {
            let cgroup = executions_dir().join(id);
            if cgroup.exists() {
                problems.push(format!("cgroup {}", cgroup.display()));
            }
            for v1 in leaks::v1_limit_mounts() {
                let path = v1.join("tollgate").join(id);
                if path.exists() {
                    problems.push(format!("cgroup v1 {}", path.display()));
                }
            }
            let runtime = Path::new("/run/tollgate").join(id);
            if runtime.exists() {
                problems.push(format!("runtime directory {}", runtime.display()));
            }
        }
        for (pid, cgroup) in leaks::sandboxed_processes() {
            if ids.iter().any(|id| cgroup == format!("/tollgate/{id}")) {
                problems.push(format!("process {pid} still in cgroup {cgroup}"));
            }
        }
        for user in users {
            for pid in user.processes() {
                problems.push(format!("process {pid} of caller {} still runs", user.name));
            }
        }
        problems
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until [`Service::leftovers`] is empty; panics with
    /// what remains.
    pub fn assert_clean(&self, users: &[&TestUser]) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let problems = self.leftovers(users);
            if problems.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind after {SETTLE_LIMIT:?}:\n{}\n{}",
                problems.join("\n"),
                self.describe()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the service.
    pub fn signal(&self, signal: i32) {
        crate::sandbox::signal(self.pid, signal);
    }

    /// SIGTERMs the service and waits (up to its grace and [`HANG_LIMIT`]) for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for the service to exit (up to its grace and [`HANG_LIMIT`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.workers();
        let child = self.child.as_mut().expect("the service was started");
        let grace = humantime_secs(&self.node.shutdown_grace);
        wait_within(child, HANG_LIMIT + grace)
    }

    /// SIGKILLs the service and reaps it.
    pub fn kill(&mut self) {
        self.workers();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the service if it still runs; its workers then end their executions on their
    /// own (their channel closed). One that has not within [`SETTLE_LIMIT`] is killed, and
    /// `tollgate gc` removes what it left.
    fn reap(&mut self) {
        self.kill();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut killed = false;
        for (pid, start) in workers {
            if !crate::sandbox::wait_dead(pid, start, SETTLE_LIMIT) {
                // SAFETY: kill(2) on one positive pid we checked is still our worker.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed = true;
            }
        }
        if killed {
            let _ = crate::tollgate().arg("gc").output();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.reap();
        let _ = fs::remove_dir_all(&self.paths.dir);
    }
}

/// Seconds of a duration written `30s`, `2s`, `500ms` or `1m` (the test configurations').
fn humantime_secs(text: &str) -> Duration {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().unwrap_or(0);
    match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(60 * n),
        _ => Duration::from_secs(n),
    }
}

/// The live children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && state != "Z" && state != "X" {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// One `tollgate run --connect SOCKET ...` as a test user.
pub struct Client<'a> {
    socket: &'a Path,
    user: &'a TestUser,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Client<'_> {
    /// `--team NAME`.
    pub fn team(self, team: &str) -> Self {
        self.arg("--team").arg(team)
    }

    /// Any option of `tollgate run`, placed before `--`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// A variable of the client's own environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The whole command line, as the user.
    pub fn command<I, S>(&self, cmd: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.user.command(tollgate_path());
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("run")
            .arg("--connect")
            .arg(self.socket)
            .args(&self.args)
            .arg("--")
            .args(cmd);
        command
    }

    /// Runs `cmd` to completion (stdin empty), capturing the client's stdout and stderr:
    /// the pipes the sandbox writes to, since the client passes its own.
    pub fn run<I, S>(&self, cmd: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.command(cmd), Some(b""), HANG_LIMIT)
    }

    /// Starts `cmd`, reading the client's stdout line by line.
    pub fn spawn<I, S>(&self, cmd: I) -> Running
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Running::spawn(&mut self.command(cmd))
    }
}

/// `GET target` over HTTP/1.1 on a Unix socket; the body of a 200 answer.
pub fn http_get_unix(socket: &Path, target: &str) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(HANG_LIMIT))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send the request: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read the answer: {e}"))?;
    let answer = String::from_utf8(answer).map_err(|_| "an answer that is not UTF-8")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("an answer without a header end: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}: {body}"));
    }
    let chunked = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    })
}

/// The body of a chunked transfer coding.
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or("a chunk without a size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk shorter than its size")?;
        out.push_str(chunk);
        body = rest[size..]
            .strip_prefix("\r\n")
            .ok_or("a chunk without CRLF")?;
    }
}

/// A team policy that lets `team` reach the upstream host `up` as `up.test` (port 8080,
/// http), through a `hosts` pin and `allowed_ips` covering its /30.
pub fn upstream_policy(team: &str, up: &crate::upstream::UpstreamHost) -> String {
    format!(
        "version: 1
team: {team}
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{port}]
      schemes: [http]
      allowed_ips: [{subnet}]
",
        addr = up.addr,
        port = crate::upstream::HTTP_PORT,
        subnet = up.subnet(),
    )
}

/// `curl` in the sandbox asking `url` through the proxy; prints the HTTP status it got.
pub fn curl(url: &str) -> Vec<String> {
    [
        "/usr/bin/curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A directory tree for `--share` roots, root-owned (0755) and outside every service's
/// directory (as `/srv/work` would be), removed on drop.
pub struct ShareTree {
    pub dir: PathBuf,
}

impl ShareTree {
    /// `work/` (the root a caller is allowed, holding `data.txt`), `workshop/` beside it
    /// (a name `work` is a prefix of, holding `secret.txt`), and `work/escape`, a symbolic
    /// link to `workshop`.
    pub fn new() -> ShareTree {
        let dir = Path::new("/tmp/tollgate-serve-shares").join(format!(
            "{}-{}",
            std::process::id(),
            NEXT_SERVICE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let tree = ShareTree { dir };
        for sub in ["work", "workshop"] {
            fs::create_dir_all(tree.dir.join(sub)).expect("create a share directory");
        }
        fs::write(tree.work().join("data.txt"), "shared\n").expect("write data.txt");
        fs::write(tree.workshop().join("secret.txt"), "secret\n").expect("write secret.txt");
        std::os::unix::fs::symlink(tree.workshop(), tree.work().join("escape"))
            .expect("link work/escape");
        tree
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn workshop(&self) -> PathBuf {
        self.dir.join("workshop")
    }
}

impl Default for ShareTree {
    fn default() -> Self {
        ShareTree::new()
    }
}

impl Drop for ShareTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
