//! Throwaway accounts for the node service suites: system users and groups the tests create
//! and remove, so a launch really comes from an unprivileged caller.
//!
//! Names carry the test process's pid (`tg-test-<pid>-<n>`, `tg-grp-<pid>-<n>`): an account
//! left by a test process that was killed before its `Drop` ran is removed by the next one
//! that creates an account (its pid is gone). `useradd` and `groupdel` lock `/etc/passwd`
//! and `/etc/group`, so this process creates and removes accounts one at a time and retries
//! while another process holds the lock.

use std::{
    ffi::OsStr,
    fs,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

const USER_PREFIX: &str = "tg-test-";
const GROUP_PREFIX: &str = "tg-grp-";

/// How long to keep retrying a command that found the account files locked.
const LOCKED_LIMIT: Duration = Duration::from_secs(30);

/// The `PATH` a test user's commands get (the caller's environment is cleared).
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

static ACCOUNTS: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A system group, removed on drop.
#[derive(Debug)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn create() -> TestGroup {
        let _guard = lock();
        remove_stale();
        let name = fresh_name(GROUP_PREFIX);
        edit_accounts(Command::new("/usr/sbin/groupadd").args(["--system", &name]));
        let gid = lookup("/etc/group", &name).expect("the new group is in /etc/group");
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _guard = lock();
        let _ = try_edit_accounts(Command::new("/usr/sbin/groupdel").arg(&self.name));
    }
}

/// A system user with no home and no login shell (and a group of its own), removed on drop
/// with whatever processes it still runs.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// Its own group's id (its primary group).
    pub gid: u32,
}

impl TestUser {
    /// A new user, member of `groups` besides its own group.
    pub fn create(groups: &[&TestGroup]) -> TestUser {
        let _guard = lock();
        remove_stale();
        let name = fresh_name(USER_PREFIX);
        let mut useradd = Command::new("/usr/sbin/useradd");
        useradd.args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            useradd.arg("--groups").arg(names.join(","));
        }
        edit_accounts(useradd.arg(&name));
        let uid = lookup("/etc/passwd", &name).expect("the new user is in /etc/passwd");
        let gid = lookup("/etc/group", &name).expect("the new user's group is in /etc/group");
        TestUser { name, uid, gid }
    }

    /// `program` run as this user: its uid, its group, its supplementary groups from
    /// `/etc/group` (`setpriv --init-groups`), no capabilities, an environment of `PATH` and
    /// `HOME=/` only, in `/`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("/usr/bin/setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", USER_PATH)
            .env("HOME", "/")
            .current_dir("/");
        command
    }

    /// A directory `name` inside `parent`, owned by this user, mode 0700: where its own
    /// `--audit`, `--summary` and `--log` files go.
    pub fn own_dir(&self, parent: &Path, name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = parent.join(name);
        fs::create_dir_all(&dir).expect("create the user's directory");
        std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.gid)).expect("chown");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        dir
    }

    /// Live processes whose real or effective uid is this user's.
    pub fn processes(&self) -> Vec<u32> {
        processes_of(self.uid)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        kill_all(self.uid);
        let _guard = lock();
        let _ = try_edit_accounts(Command::new("/usr/sbin/userdel").arg(&self.name));
    }
}

/// Live (not zombie) processes whose real or effective uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        if field("State:").starts_with('Z') || field("State:").starts_with('X') {
            continue;
        }
        let uids: Vec<u32> = field("Uid:")
            .split_whitespace()
            .take(2)
            .filter_map(|id| id.parse().ok())
            .collect();
        if uids.contains(&uid) {
            found.push(pid);
        }
    }
    found
}

/// SIGKILLs every process of `uid`, by pid, until none is left (a fork between the scan and
/// the kill is caught by the next scan).
fn kill_all(uid: u32) {
    let deadline = Instant::now() + LOCKED_LIMIT;
    loop {
        let pids = processes_of(uid);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on one positive pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ACCOUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fresh_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The id (third field) of `name` in an `/etc/passwd`-shaped file.
fn lookup(file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Names in an `/etc/passwd`-shaped file that start with `prefix`.
fn names_with(file: &str, prefix: &str) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(':').next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Whether an account name of ours belongs to a test process that no longer runs.
fn is_stale(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the accounts (and the processes) test processes that were killed left behind.
fn remove_stale() {
    for name in names_with("/etc/passwd", USER_PREFIX) {
        if is_stale(&name, USER_PREFIX) {
            if let Some(uid) = lookup("/etc/passwd", &name) {
                kill_all(uid);
            }
            let _ = try_edit_accounts(Command::new("/usr/sbin/userdel").arg(&name));
        }
    }
    for name in names_with("/etc/group", GROUP_PREFIX) {
        if is_stale(&name, GROUP_PREFIX) {
            let _ = try_edit_accounts(Command::new("/usr/sbin/groupdel").arg(&name));
        }
    }
}

/// Runs an account tool, panicking with its message when it fails.
fn edit_accounts(command: &mut Command) {
    if let Err(message) = try_edit_accounts(command) {
        panic!("{command:?}: {message}");
    }
}

/// Runs an account tool, retrying while another process holds the account files' lock.
fn try_edit_accounts(command: &mut Command) -> Result<(), String> {
    let deadline = Instant::now() + LOCKED_LIMIT;
    loop {
        let out = command
            .output()
            .map_err(|e| format!("cannot run it: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.contains("lock") || Instant::now() >= deadline {
            return Err(stderr);
        }
        thread::sleep(Duration::from_millis(50));
    }
}
