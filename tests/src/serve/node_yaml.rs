//! The `node.yaml` a test service is started with: its callers and what they may use, the
//! socket's group and mode, the grace, the team policies written before the start.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use super::{accounts::TestGroup, ServicePaths, RELOAD_INTERVAL};

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
    /// The `quotas:` section's keys, as YAML lines (`redis_url: ...`); empty: none.
    pub quotas: Vec<String>,
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
            quotas: Vec::new(),
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

    /// A key of the `quotas:` section (the quota store), e.g. `redis_url: redis://...`.
    pub fn quota_store(mut self, line: &str) -> Node {
        self.quotas.push(line.to_owned());
        self
    }

    /// A variable of the service's own environment.
    pub fn env(mut self, key: &str, value: &str) -> Node {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(super) fn yaml(&self, paths: &ServicePaths) -> String {
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
        if !self.quotas.is_empty() {
            text.push_str("quotas:\n");
            for line in &self.quotas {
                text.push_str(&format!("  {line}\n"));
            }
        }
        text
    }
}
