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
mod client;
pub mod exposition;
mod fixtures;
mod metrics_http;
mod node_yaml;

use std::{
    fs,
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
    sandbox::{executions_dir, process_stat, read_json_lines, wait_within, HANG_LIMIT},
    tollgate_path,
};
pub use accounts::{TestGroup, TestUser};
pub use client::Client;
pub use exposition::Exposition;
pub use fixtures::{curl, upstream_policy, ShareTree};
pub use metrics_http::http_get_unix;
pub use node_yaml::{Caller, Node};

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
        Client::new(&self.paths.socket, user)
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

    /// The service exited 0 (`status`, from [`Service::stop`] or [`Service::wait_exit`]),
    /// removed its socket, and left nothing of `users` behind.
    pub fn assert_shut_down(&self, status: ExitStatus, users: &[&TestUser]) {
        assert!(
            status.success(),
            "serve exited {status}\n{}",
            self.describe()
        );
        assert!(
            !self.paths.socket.exists(),
            "the socket stayed after shutdown"
        );
        self.assert_clean(users);
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
    for pid in crate::leaks::all_pids() {
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
