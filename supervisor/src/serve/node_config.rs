//! The node configuration, `/etc/tollgate/node.yaml`: what `tollgate serve` listens on and
//! who may launch what.
//!
//! The file ([`file::NodeFile`]) is read the way a team policy is — at most 1 MiB, the
//! shape limits of `tollgate_policy::yaml_limits` before the full parse, unknown keys
//! refused, every problem reported as `FILE:LINE:COL: message` — and resolved here into a
//! [`NodeConfig`]: user and group names turned into ids, durations and modes into numbers,
//! paths checked, defaults applied. A name that does not resolve is an error at start, never
//! a rule that silently matches nobody. The file decides who gets a root service's help, so
//! it must not be writable by anyone but its owner (as sshd insists of its own files).
//! docs/node-config.md documents every key; `docs/node.schema.json` is [`NodeConfig::schema`].

pub mod file;
#[cfg(test)]
mod tests;

use super::wire::{CallerIdentity, MetricsListen};
use crate::cli::quota_store as quota_flags;
use crate::quota::{QuotaStoreConfig, StoreFailure};
use file::{CallerSection, IdOrName, NodeFile, QuotasSection, StoreFailureName};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tollgate_policy::error::{PolicyError, PolicyErrors};
use tollgate_policy::units::Span;

pub const DEFAULT_PATH: &str = "/etc/tollgate/node.yaml";
pub const DEFAULT_SOCKET: &str = "/run/tollgate/tollgate.sock";
pub const DEFAULT_TEAMS_DIR: &str = "/etc/tollgate/teams";
pub const DEFAULT_MODE: u32 = 0o660;
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EXECUTIONS: usize = 256;

/// Policy files are looked at this often at most: a shorter interval is a busy loop.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// `gc` walks every cgroup and pin; more often than this is work for nothing.
const MIN_GC_INTERVAL: Duration = Duration::from_secs(1);
/// Far more executions than a node can hold at once (each has a cgroup, a namespace, a
/// proxy and a leased uid): a larger number is a typo, not a limit.
const MAX_MAX_EXECUTIONS: u32 = 65_536;
/// Node configurations are small; anything larger is a mistake or an attack on the parser.
const MAX_FILE_BYTES: usize = 1024 * 1024;

/// The node configuration, resolved (names to ids, durations, defaults applied).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub socket: SocketSettings,
    pub teams_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub metrics: Option<MetricsListen>,
    /// The service's own audit log of launches (JSON Lines).
    pub audit: Option<PathBuf>,
    pub reload_interval: Duration,
    pub gc_interval: Duration,
    pub shutdown_grace: Duration,
    pub max_executions: usize,
    /// Who may launch what, in file order (see [`crate::serve::authorize`]). Root is not
    /// listed: it may always launch.
    pub callers: Vec<CallerRule>,
    /// Where the team quotas are counted (`quotas:`); every worker's run gets it.
    pub quota_store: QuotaStoreConfig,
}

#[derive(Debug, Clone)]
pub struct SocketSettings {
    pub path: PathBuf,
    /// The socket's owner; `None` leaves the service's own (root).
    pub uid: Option<u32>,
    /// The socket's group; `None` leaves the service's own.
    pub gid: Option<u32>,
    pub mode: u32,
}

/// One `callers` entry: whom it matches, and what it lets them launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerRule {
    /// The caller's uid must be this one (`uid` or `user`).
    pub uid: Option<u32>,
    /// The caller must have this gid, primary or supplementary (`gid` or `group`).
    pub gid: Option<u32>,
    pub teams: Teams,
    /// Roots of `--share` and `--share-ro` (normalised absolute paths).
    pub shares: Vec<PathBuf>,
    /// Roots of `--share-ro` only.
    pub shares_ro: Vec<PathBuf>,
    /// The `--user` pairs it may ask for.
    pub users: Vec<(u32, u32)>,
    /// The `--rootfs` directories it may ask for, exactly.
    pub rootfs: Vec<PathBuf>,
    pub allow_root: bool,
    pub allow_unenforced_limits: bool,
    /// Longest `--timeout`; `None`: no limit.
    pub max_timeout: Option<Duration>,
}

/// The teams a rule lets its callers launch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teams {
    /// `"*"`.
    Every,
    Named(BTreeSet<String>),
}

impl CallerRule {
    /// Whether this rule is about `caller`: its uid, and a group it has (primary or
    /// supplementary), as far as the rule names them.
    pub fn matches(&self, caller: &CallerIdentity) -> bool {
        let uid = self.uid.is_none_or(|uid| uid == caller.uid);
        let gid = self
            .gid
            .is_none_or(|gid| gid == caller.gid || caller.groups.contains(&gid));
        uid && gid
    }

    pub fn allows_team(&self, team: &str) -> bool {
        match &self.teams {
            Teams::Every => true,
            Teams::Named(names) => names.contains(team),
        }
    }
}

impl Default for NodeConfig {
    /// The configuration without a file: the default paths and intervals, no metrics, no
    /// launch audit, and no callers (only root may launch).
    fn default() -> Self {
        NodeConfig {
            socket: SocketSettings {
                path: PathBuf::from(DEFAULT_SOCKET),
                uid: None,
                gid: None,
                mode: DEFAULT_MODE,
            },
            teams_dir: PathBuf::from(DEFAULT_TEAMS_DIR),
            secrets_dir: PathBuf::from(tollgate_policy::secrets::DEFAULT_SECRETS_ROOT),
            metrics: None,
            audit: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            gc_interval: DEFAULT_GC_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_executions: DEFAULT_MAX_EXECUTIONS,
            callers: Vec::new(),
            quota_store: QuotaStoreConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Reads and resolves the file at `path`: a regular file of at most 1 MiB, writable by
    /// its owner only, owned by root or by this process's user. Names are looked up in the
    /// system's user and group databases.
    pub fn load(path: &Path) -> Result<NodeConfig, String> {
        let name = path.display().to_string();
        let text = read_file(path).map_err(|message| format!("{name}: {message}"))?;
        NodeConfig::from_yaml(&name, &text)
    }

    /// Resolves a configuration from YAML text; `name` is the file it is reported as.
    pub fn from_yaml(name: &str, text: &str) -> Result<NodeConfig, String> {
        NodeConfig::from_yaml_with(name, text, &SystemAccounts)
    }

    /// [`NodeConfig::from_yaml`], with names looked up in `accounts`.
    pub fn from_yaml_with(
        name: &str,
        text: &str,
        accounts: &dyn Accounts,
    ) -> Result<NodeConfig, String> {
        let file = parse(name, text)?;
        let mut resolver = Resolver {
            accounts,
            problems: Vec::new(),
        };
        let config = resolver.config(file);
        if resolver.problems.is_empty() {
            return Ok(config);
        }
        let mut errors = tollgate_policy::locate::locate(name, Some(text), resolver.problems);
        // In the order of the file, as its reader goes through it.
        errors.errors.sort_by_key(|e| (e.line, e.column));
        Err(errors.to_string())
    }

    /// The JSON Schema of the file (`docs/node.schema.json`, `tollgate serve --print-schema`).
    pub fn schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(NodeFile)).expect("a schema is JSON")
    }
}

/// Where user and group names are looked up: the system's databases, or a table in tests.
pub trait Accounts {
    /// The uid and primary gid of the user called `name`.
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String>;
    /// The gid of the group called `name`.
    fn group(&self, name: &str) -> Result<Option<u32>, String>;
}

/// The system's user and group databases (NSS: /etc/passwd, /etc/group, ...).
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        nix::unistd::User::from_name(name)
            .map(|user| user.map(|u| (u.uid.as_raw(), u.gid.as_raw())))
            .map_err(|e| format!("cannot look up user `{name}`: {e}"))
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        nix::unistd::Group::from_name(name)
            .map(|group| group.map(|g| g.gid.as_raw()))
            .map_err(|e| format!("cannot look up group `{name}`: {e}"))
    }
}

/// The text of the file, refused unless it is a regular file of at most 1 MiB of UTF-8 that
/// only its owner (root, or this process's user) may write. Reads no more than 1 MiB and a
/// byte.
fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read the node configuration: {e}");
    // Checked before opening too: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err("the node configuration is not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let opened = file.metadata().map_err(cannot)?;
    if !opened.is_file() {
        return Err("the node configuration is not a regular file".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if opened.uid() != 0 && opened.uid() != me {
        return Err(format!(
            "the node configuration is owned by uid {}: it decides who may launch what, so it \
             must be owned by root",
            opened.uid()
        ));
    }
    if opened.mode() & 0o022 != 0 {
        return Err(format!(
            "the node configuration is writable by its group or others (mode {:04o}): it \
             decides who may launch what; chmod go-w it",
            opened.mode() & 0o7777
        ));
    }
    if opened.len() > MAX_FILE_BYTES as u64 {
        return Err("the node configuration is larger than 1 MiB".into());
    }
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(cannot)?;
    if text.len() > MAX_FILE_BYTES {
        return Err("the node configuration is larger than 1 MiB".into());
    }
    String::from_utf8(text).map_err(|_| "the node configuration is not UTF-8 text".into())
}

/// Whether a Redis URL carries a password (`redis://:PASSWORD@host`, `redis://user:PASSWORD@host`).
fn holds_password(url: &str) -> bool {
    url::Url::parse(url.trim()).is_ok_and(|url| url.password().is_some())
}

/// The file's syntax: shape limits first, then serde (an empty file is every default).
fn parse(name: &str, text: &str) -> Result<NodeFile, String> {
    let located = |line: Option<usize>, column: Option<usize>, message: String| {
        PolicyErrors {
            file: name.to_owned(),
            errors: vec![PolicyError {
                path: String::new(),
                line,
                column,
                message,
            }],
        }
        .to_string()
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(located(
            None,
            None,
            "the node configuration is larger than 1 MiB".into(),
        ));
    }
    tollgate_policy::yaml_limits::check(text)
        .map_err(|e| located(Some(e.line), Some(e.column), e.message))?;
    // A document of comments only is no document at all to serde_yaml.
    let empty = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if empty {
        return Ok(NodeFile::default());
    }
    serde_yaml::from_str(text).map_err(|e| {
        let location = e.location();
        // serde_yaml appends " at line L column C"; the location is printed in front instead.
        let mut message = e.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        located(
            location.as_ref().map(|l| l.line()),
            location.as_ref().map(|l| l.column()),
            message,
        )
    })
}

/// Turns the file into a [`NodeConfig`], collecting every problem with the YAML path of the
/// key it is about.
struct Resolver<'a> {
    accounts: &'a dyn Accounts,
    problems: Vec<(String, String)>,
}

impl Resolver<'_> {
    fn config(&mut self, file: NodeFile) -> NodeConfig {
        let defaults = NodeConfig::default();
        if let Some(version) = file.version.filter(|v| *v != 1) {
            self.problem::<()>(
                "version",
                format!("version {version}: this tollgate reads version 1"),
            );
        }
        let socket = SocketSettings {
            path: self.path("socket.path", file.socket.path, defaults.socket.path),
            uid: file
                .socket
                .owner
                .and_then(|owner| self.uid_of("socket.owner", &owner)),
            gid: file
                .socket
                .group
                .and_then(|group| self.gid_of("socket.group", &group)),
            mode: file.socket.mode.map_or(DEFAULT_MODE, |mode| mode.0),
        };
        let metrics = file
            .metrics
            .and_then(|text| match MetricsListen::parse(&text) {
                Ok(listen) => Some(listen),
                Err(message) => self.problem("metrics", message),
            });
        let audit = file
            .audit
            .and_then(|path| self.absolute("audit", &path).then_some(path));
        let max_executions = match file.max_executions {
            None => DEFAULT_MAX_EXECUTIONS,
            Some(n) if (1..=MAX_MAX_EXECUTIONS).contains(&n) => n as usize,
            Some(n) => {
                self.problem::<()>(
                    "max_executions",
                    format!("max_executions {n}: give a number from 1 to {MAX_MAX_EXECUTIONS}"),
                );
                DEFAULT_MAX_EXECUTIONS
            }
        };
        let callers = file
            .callers
            .into_iter()
            .enumerate()
            .filter_map(|(i, section)| self.caller(&format!("callers[{i}]"), section))
            .collect();
        NodeConfig {
            socket,
            teams_dir: self.path("teams_dir", file.teams_dir, defaults.teams_dir),
            secrets_dir: self.path("secrets_dir", file.secrets_dir, defaults.secrets_dir),
            metrics,
            audit,
            reload_interval: self.interval(
                "reload_interval",
                file.reload_interval,
                DEFAULT_RELOAD_INTERVAL,
                MIN_RELOAD_INTERVAL,
            ),
            gc_interval: self.interval(
                "gc_interval",
                file.gc_interval,
                DEFAULT_GC_INTERVAL,
                MIN_GC_INTERVAL,
            ),
            shutdown_grace: file
                .shutdown_grace
                .map_or(DEFAULT_SHUTDOWN_GRACE, Span::as_duration),
            max_executions,
            callers,
            quota_store: self.quotas(file.quotas),
        }
    }

    /// The `quotas:` section: the URL (from the file or `redis_url_file`) and the password
    /// file read now, as the service starts, like the rest of the file.
    fn quotas(&mut self, section: QuotasSection) -> QuotaStoreConfig {
        let defaults = QuotaStoreConfig::default();
        // What only means something with a Redis to reach.
        let companions = [
            ("redis_password_file", section.redis_password_file.is_some()),
            ("redis_ca", section.redis_ca.is_some()),
            ("connect_timeout", section.connect_timeout.is_some()),
            ("store_failure", section.store_failure.is_some()),
            ("expected_nodes", section.expected_nodes.is_some()),
        ];
        let url = match (section.redis_url, &section.redis_url_file) {
            (Some(_), Some(_)) => self.problem(
                "quotas.redis_url_file",
                "give redis_url or redis_url_file, not both".into(),
            ),
            (Some(url), None) if holds_password(&url) => self.problem(
                "quotas.redis_url",
                "the URL holds a password, and node.yaml may be read by every user of the node: \
                 put the URL in a root-only file named by redis_url_file, or the password in \
                 one named by redis_password_file"
                    .into(),
            ),
            (Some(url), None) => Some(("quotas.redis_url", url)),
            (None, Some(path)) => self
                .secret_file("quotas.redis_url_file", path)
                .map(|url| ("quotas.redis_url_file", url)),
            (None, None) => None,
        };
        let password = section
            .redis_password_file
            .and_then(|path| self.secret_file("quotas.redis_password_file", &path));
        let ca_file = section
            .redis_ca
            .filter(|path| self.absolute("quotas.redis_ca", path));
        let connect_timeout = match section.connect_timeout.map(Span::as_duration) {
            None => defaults.connect_timeout,
            Some(timeout) => match quota_flags::check_connect_timeout(timeout) {
                Ok(()) => timeout,
                Err(message) => {
                    self.problem::<()>("quotas.connect_timeout", message);
                    defaults.connect_timeout
                }
            },
        };
        let expected_nodes = match section.expected_nodes {
            None => defaults.expected_nodes,
            Some(0) => {
                self.problem::<()>(
                    "quotas.expected_nodes",
                    "expected_nodes must be at least 1".into(),
                );
                defaults.expected_nodes
            }
            Some(n) => n,
        };
        let on_failure = match section.store_failure {
            None | Some(StoreFailureName::Deny) => StoreFailure::Deny,
            Some(StoreFailureName::Local) => StoreFailure::Local,
        };
        let redis = match url {
            Some((at, url)) => match quota_flags::redis_config(url.trim(), password, ca_file) {
                Ok(redis) => Some(redis),
                Err(message) => self.problem(at, message),
            },
            None => {
                for (key, _) in companions.iter().filter(|(_, given)| *given) {
                    self.problem::<()>(
                        &format!("quotas.{key}"),
                        format!(
                            "{key} is about the Redis that holds the team quotas: give \
                             redis_url or redis_url_file too, or leave it out"
                        ),
                    );
                }
                None
            }
        };
        QuotaStoreConfig {
            redis,
            on_failure,
            expected_nodes,
            connect_timeout,
            node_dir: defaults.node_dir,
        }
    }

    /// The line of a secret file the section names (an absolute path), read now.
    fn secret_file(&mut self, at: &str, path: &Path) -> Option<String> {
        if !self.absolute(at, path) {
            return None;
        }
        match quota_flags::read_secret_file(path, at) {
            Ok(text) => Some(text),
            Err(message) => self.problem(at, message),
        }
    }

    fn caller(&mut self, at: &str, section: CallerSection) -> Option<CallerRule> {
        let before = self.problems.len();
        let uid = match (section.uid, &section.user) {
            (Some(_), Some(_)) => {
                self.problem(&format!("{at}.user"), "give uid or user, not both".into())
            }
            (Some(uid), None) => Some(uid),
            (None, Some(user)) => self.user_named(&format!("{at}.user"), user),
            (None, None) => None,
        };
        let gid = match (section.gid, &section.group) {
            (Some(_), Some(_)) => {
                self.problem(&format!("{at}.group"), "give gid or group, not both".into())
            }
            (Some(gid), None) => Some(gid),
            (None, Some(group)) => self.group_named(&format!("{at}.group"), group),
            (None, None) => None,
        };
        let anyone = [
            section.uid.is_none(),
            section.user.is_none(),
            section.gid.is_none(),
            section.group.is_none(),
        ]
        .iter()
        .all(|absent| *absent);
        if anyone {
            self.problem::<()>(
                at,
                "a caller rule names whom it is for: give uid, user, gid or group".into(),
            );
        }
        let teams = self.teams(&format!("{at}.teams"), section.teams);
        let shares = self.roots(&format!("{at}.shares"), section.shares);
        let shares_ro = self.roots(&format!("{at}.shares_ro"), section.shares_ro);
        let rootfs = self.roots(&format!("{at}.rootfs"), section.rootfs);
        let users = section
            .users
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| self.run_as(&format!("{at}.users[{i}]"), entry))
            .collect();
        let max_timeout = section.max_timeout.map(Span::as_duration);
        if max_timeout.is_some_and(|t| t.is_zero()) {
            self.problem::<()>(
                &format!("{at}.max_timeout"),
                "max_timeout must be longer than zero".into(),
            );
        }
        (self.problems.len() == before).then_some(CallerRule {
            uid,
            gid,
            teams,
            shares,
            shares_ro,
            users,
            rootfs,
            allow_root: section.allow_root,
            allow_unenforced_limits: section.allow_unenforced_limits,
            max_timeout,
        })
    }

    fn teams(&mut self, at: &str, names: Vec<String>) -> Teams {
        if names.is_empty() {
            self.problem::<()>(
                at,
                "list the teams this rule may launch for (\"*\" for every team)".into(),
            );
        }
        if names.iter().any(|name| name == "*") {
            return Teams::Every;
        }
        let mut teams = BTreeSet::new();
        for (i, name) in names.into_iter().enumerate() {
            match crate::cli::run::check_team_name(&name) {
                Ok(()) => {
                    teams.insert(name);
                }
                Err(message) => {
                    self.problem::<()>(&format!("{at}[{i}]"), message);
                }
            }
        }
        Teams::Named(teams)
    }

    /// Directories a rule grants: absolute, normalised, not `/` (that would be every
    /// directory the run itself accepts, surely not what was meant).
    fn roots(&mut self, at: &str, paths: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut roots = Vec::new();
        for (i, path) in paths.into_iter().enumerate() {
            let at = format!("{at}[{i}]");
            if !self.absolute(&at, &path) {
                continue;
            }
            if path == Path::new("/") {
                self.problem::<()>(
                    &at,
                    "/ would grant every host directory: list the directories callers need".into(),
                );
                continue;
            }
            roots.push(path.components().collect());
        }
        roots
    }

    /// A `users` entry as `--user` reads it: `UID` (gid the same number), `NAME` (its
    /// primary group), either with `:GID` or `:GROUP`.
    fn run_as(&mut self, at: &str, entry: &IdOrName) -> Option<(u32, u32)> {
        let (user, group) = match entry.0.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (entry.0.as_str(), None),
        };
        let (uid, primary) = match user.parse::<u32>() {
            Ok(uid) => (uid, uid),
            Err(_) => self.user_and_group_named(at, user)?,
        };
        let gid = match group {
            None => primary,
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self.group_named(at, group)?,
            },
        };
        Some((uid, gid))
    }

    fn uid_of(&mut self, at: &str, owner: &IdOrName) -> Option<u32> {
        match owner.0.parse::<u32>() {
            Ok(uid) => Some(uid),
            Err(_) => self.user_named(at, &owner.0),
        }
    }

    fn gid_of(&mut self, at: &str, group: &IdOrName) -> Option<u32> {
        match group.0.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => self.group_named(at, &group.0),
        }
    }

    fn user_named(&mut self, at: &str, name: &str) -> Option<u32> {
        self.user_and_group_named(at, name).map(|(uid, _)| uid)
    }

    fn user_and_group_named(&mut self, at: &str, name: &str) -> Option<(u32, u32)> {
        match self.accounts.user(name) {
            Ok(Some(found)) => Some(found),
            Ok(None) => self.problem(
                at,
                format!(
                    "no user named `{name}` on this node: give a name from /etc/passwd or a uid"
                ),
            ),
            Err(message) => self.problem(at, message),
        }
    }

    fn group_named(&mut self, at: &str, name: &str) -> Option<u32> {
        match self.accounts.group(name) {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => self.problem(
                at,
                format!(
                    "no group named `{name}` on this node: give a name from /etc/group or a gid"
                ),
            ),
            Err(message) => self.problem(at, message),
        }
    }

    /// `value`, checked absolute, or `default`.
    fn path(&mut self, at: &str, value: Option<PathBuf>, default: PathBuf) -> PathBuf {
        match value {
            Some(path) if self.absolute(at, &path) => path,
            _ => default,
        }
    }

    /// Whether `path` is absolute without `..`; if not, a problem says so.
    fn absolute(&mut self, at: &str, path: &Path) -> bool {
        let shown = path.display();
        let bytes = path.as_os_str().as_encoded_bytes();
        let problem = if !path.is_absolute() {
            format!("{shown} is not an absolute path")
        } else if path.components().any(|c| c == Component::ParentDir) {
            format!("{shown} contains `..`: give the directory itself")
        } else if bytes.iter().any(u8::is_ascii_control) {
            "the path contains control characters".into()
        } else {
            return true;
        };
        self.problem::<()>(at, problem);
        false
    }

    fn interval(
        &mut self,
        at: &str,
        value: Option<Span>,
        default: Duration,
        least: Duration,
    ) -> Duration {
        match value.map(Span::as_duration) {
            None => default,
            Some(interval) if interval >= least => interval,
            Some(interval) => {
                self.problem::<()>(
                    at,
                    format!(
                        "{at} {} is too short: give at least {}",
                        Span(interval),
                        Span(least)
                    ),
                );
                default
            }
        }
    }

    /// Records a problem at YAML path `at`; `None`, for the value that could not be had.
    fn problem<T>(&mut self, at: &str, message: String) -> Option<T> {
        self.problems.push((at.to_owned(), message));
        None
    }
}
