//! The box: a root of the sandbox's own (only the host's system directories, its private
//! mounts and what is shared), a minimal `/dev`, and a PID namespace whose init is
//! tollgate's, so that host processes are out of sight and nothing outlives a killed
//! supervisor.
//!
//! Needs root.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{
        process_stat, signal, wait_dead, wait_host_pid, Running, Sandbox, HANG_LIMIT, PYTHON,
    },
    Scratch,
};

/// A directory (and a file in it) the test plants on the host, removed on drop.
struct Planted(PathBuf);

impl Planted {
    fn new(path: String) -> Planted {
        let dir = PathBuf::from(path);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("file"), "host data\n").unwrap();
        fs::set_permissions(dir.join("file"), fs::Permissions::from_mode(0o644)).unwrap();
        Planted(dir)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Prints `path verdict` for each argument: `exists`, or the errno name.
const EXISTS: &str = r#"
import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.stat(path)
        print(path, "exists")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"#;

fn verdicts(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(path, verdict)| (path.to_owned(), verdict.to_owned()))
        .collect()
}

#[test]
fn only_the_system_directories_private_mounts_and_shares_exist() {
    let _lock = SuiteLock::shared();
    let id = std::process::id();
    let opt = Planted::new(format!("/opt/tollgate-box-{id}"));
    let var_lib = Planted::new(format!("/var/lib/tollgate-box-{id}"));
    let etc_tollgate = Planted::new(format!("/etc/tollgate/box-test-{id}"));
    let shared = Planted::new(format!("/opt/tollgate-box-shared-{id}"));
    let mut paths: Vec<String> = [
        "/home",
        "/root",
        "/var/lib",
        "/var/log",
        "/srv",
        "/mnt",
        "/media",
        "/boot",
        "/var/cache",
        "/lost+found",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    // /opt exists only as the way to the shared directory: its other entries do not.
    paths.extend([
        opt.0.display().to_string(),
        var_lib.0.display().to_string(),
        etc_tollgate.0.display().to_string(),
    ]);
    let present = [
        "/usr/bin/python3",
        "/bin/sh",
        "/etc/hosts",
        "/tmp",
        "/var/tmp",
        "/run",
        "/dev/null",
        "/dev/urandom",
        "/dev/pts/ptmx",
        "/proc/self",
        "/sys/class/net/lo",
    ];
    let shared_file = shared.0.join("file").display().to_string();
    let finished = Sandbox::new().arg("--share-ro").arg(&shared.0).run(
        [PYTHON, "-c", EXISTS]
            .into_iter()
            .map(str::to_owned)
            .chain(paths.iter().cloned())
            .chain(present.iter().map(|p| p.to_string()))
            .chain([shared_file.clone()]),
    );
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let seen = verdicts(&finished.stdout);
    for path in &paths {
        assert_eq!(
            seen.get(path).map(String::as_str),
            Some("ENOENT"),
            "{path}: {}",
            finished.stdout
        );
    }
    for path in present.iter().map(|p| p.to_string()).chain([shared_file]) {
        assert_eq!(
            seen.get(&path).map(String::as_str),
            Some("exists"),
            "{path}: {}",
            finished.stdout
        );
    }
}

#[test]
fn the_root_and_the_system_directories_are_read_only_and_dev_is_minimal() {
    let _lock = SuiteLock::shared();
    let script = r#"
import errno, os
for path in ["/newfile", "/usr/newfile", "/etc/newfile", "/bin/newfile", "/dev/newfile"]:
    try:
        open(path, "w").close()
        print(path, "written")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
print("dev", " ".join(sorted(os.listdir("/dev"))))
print("top", " ".join(sorted(os.listdir("/"))))
with open("/dev/null", "w") as f:
    f.write("x")
print("devnull", "ok")
"#;
    let finished = Sandbox::new().run([PYTHON, "-c", script]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let seen = verdicts(&finished.stdout);
    for path in [
        "/newfile",
        "/usr/newfile",
        "/etc/newfile",
        "/bin/newfile",
        "/dev/newfile",
    ] {
        let verdict = seen.get(path).map(String::as_str);
        assert!(
            matches!(verdict, Some("EROFS") | Some("EACCES")),
            "{path}: {verdict:?}"
        );
    }
    assert_eq!(
        seen["dev"], "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{}",
        finished.stdout
    );
    let top: Vec<&str> = seen["top"].split(' ').collect();
    for extra in ["home", "root", "srv", "opt", "boot", "mnt", "media"] {
        assert!(
            !top.contains(&extra),
            "/{extra} is in the sandbox's root: {top:?}"
        );
    }
    assert_eq!(seen["devnull"], "ok");
}

#[test]
fn a_root_daemons_socket_outside_the_view_cannot_be_reached() {
    let _lock = SuiteLock::shared();
    let path = format!("/var/lib/tollgate-box-daemon-{}.sock", std::process::id());
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n";
    let finished = Sandbox::new().run([PYTHON, "-c", script, &path]);
    drop(listener);
    let _ = fs::remove_file(&path);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(finished.stdout.trim(), "refused 2", "{}", finished.stdout);
}

#[test]
fn host_processes_are_out_of_sight_and_reach() {
    let _lock = SuiteLock::shared();
    let script = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("pids", len(pids), max(pids))
for pid in map(int, sys.argv[1:]):
    try:
        os.kill(pid, 0)
        print("kill", pid, "ok")
    except OSError as e:
        print("kill", pid, errno.errorcode[e.errno])
    fd = libc.syscall(434, pid, 0)
    print("pidfd", pid, "ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()])
print("me", os.getpid())
"#;
    let me = std::process::id().to_string();
    let finished = Sandbox::new().run([PYTHON, "-c", script, "1", &me]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let out = &finished.stdout;
    assert!(out.contains(&format!("kill {me} ESRCH")), "{out}");
    assert!(out.contains(&format!("pidfd {me} ESRCH")), "{out}");
    // pid 1 is the sandbox's init: root's, not visible (hidepid) and not signalable.
    assert!(
        out.contains("kill 1 EPERM") || out.contains("kill 1 ESRCH"),
        "{out}"
    );
    let count: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count <= 2, "the sandbox sees {count} processes: {out}");
    assert!(
        out.contains("me 2"),
        "the command is the init's first child: {out}"
    );
}

/// A command that ignores SIGTERM, with a daemonised grandchild (double fork + setsid) that
/// ignores everything it can.
const SURVIVORS: &str = r#"
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print("DAEMON", os.getpid(), flush=True)
        while True:
            time.sleep(1)
    os._exit(0)
time.sleep(0.2)
print("COMMAND", os.getpid(), flush=True)
while True:
    time.sleep(1)
"#;

#[test]
fn nothing_outlives_a_sigkilled_supervisor() {
    // Alone: a concurrent `tollgate run` would reap the dead supervisor's cgroup (gc) and
    // hide whether the namespace alone ends everything.
    let _lock = SuiteLock::exclusive();
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .timeout("90s")
            .command([PYTHON, "-c", SURVIVORS]),
    );
    let supervisor = running.pid();
    let daemon: u32 = running.wait_line("DAEMON ", HANG_LIMIT)[7..]
        .trim()
        .parse()
        .unwrap();
    let command: u32 = running.wait_line("COMMAND ", HANG_LIMIT)[8..]
        .trim()
        .parse()
        .unwrap();
    let processes: Vec<(u32, u64)> = [daemon, command]
        .into_iter()
        .map(|ns_pid| {
            let pid = wait_host_pid(supervisor, ns_pid);
            (pid, process_stat(pid).expect("it runs").1)
        })
        .collect();
    signal(supervisor, libc::SIGKILL);
    let _ = running.finish(HANG_LIMIT);
    for (pid, start) in processes {
        assert!(
            wait_dead(pid, start, Duration::from_secs(10)),
            "process {pid} outlived the supervisor"
        );
    }
    // Dead at once, not at the next gc: no gc ran meanwhile (the suite lock is exclusive).
    // The dead supervisor's cgroup is gc's to remove.
    let _ = tollgate_tests::tollgate().arg("gc").output();
}

#[test]
fn signals_reach_the_command_which_may_end_on_its_own() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("box-signals");
    let dir = tollgate_tests::sandbox::shared_dir(&scratch, "signals");
    let script = format!(
        r#"
import os, signal, sys, time
got = []
def note(sig, frame):
    got.append(sig)
    with open("{d}/got", "a") as f:
        f.write("%d\n" % sig)
    if sig == signal.SIGTERM:
        sys.exit(3)
signal.signal(signal.SIGUSR1, note)
signal.signal(signal.SIGTERM, note)
print("READY", flush=True)
while True:
    time.sleep(0.05)
"#,
        d = dir.display()
    );
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .timeout("60s")
            .command([PYTHON, "-c", &script]),
    );
    running.wait_line("READY", HANG_LIMIT);
    signal(running.pid(), libc::SIGUSR1);
    let deadline = Instant::now() + HANG_LIMIT;
    while !fs::read_to_string(dir.join("got"))
        .unwrap_or_default()
        .contains("10")
    {
        assert!(
            Instant::now() < deadline,
            "SIGUSR1 never reached the command"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(running.pid(), libc::SIGTERM);
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(
        finished.code(),
        3,
        "the command handled SIGTERM and exited 3: {}",
        finished.describe()
    );
    let got = fs::read_to_string(dir.join("got")).unwrap();
    assert_eq!(got, "10\n15\n");
}

#[test]
fn shares_may_be_any_host_directory_but_kernel_trees() {
    let _lock = SuiteLock::shared();
    let id = std::process::id();
    let read_only = Planted::new(format!("/opt/tollgate-box-ro-{id}"));
    let read_write = Planted::new(format!("/var/lib/tollgate-box-rw-{id}"));
    fs::set_permissions(&read_write.0, fs::Permissions::from_mode(0o777)).unwrap();
    let script = r#"
import errno, sys
for path in sys.argv[1:]:
    try:
        with open(path + "/new", "w") as f:
            f.write("x")
        print(path, "written")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"#;
    let finished = Sandbox::new()
        .arg("--share-ro")
        .arg(&read_only.0)
        .arg("--share")
        .arg(&read_write.0)
        .run([
            PYTHON,
            "-c",
            script,
            &read_only.0.display().to_string(),
            &read_write.0.display().to_string(),
        ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let seen = verdicts(&finished.stdout);
    assert_eq!(seen[&read_only.0.display().to_string()], "EROFS");
    assert_eq!(seen[&read_write.0.display().to_string()], "written");
    assert!(read_write.0.join("new").exists());
    for bad in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/proc/1",
        "/dev/pts",
        "/run/tollgate",
        "/",
    ] {
        let finished = Sandbox::new().arg("--share-ro").arg(bad).run(["/bin/true"]);
        assert_eq!(
            finished.code(),
            125,
            "--share-ro {bad}: {}",
            finished.describe()
        );
    }
}

#[test]
fn the_policys_filesystem_section_shares_what_the_team_always_needs() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("box-policy-fs");
    let id = std::process::id();
    let tools = Planted::new(format!("/opt/tollgate-box-tools-{id}"));
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "version: 1\nteam: box\nfilesystem:\n  read_only: [{}]\n",
            tools.0.display()
        ),
    );
    let file = tools.0.join("file").display().to_string();
    let script = "import errno, sys\nprint(open(sys.argv[1]).read().strip())\ntry:\n    open(sys.argv[1], 'a')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n";
    let finished = Sandbox::new()
        .policy(&policy)
        .run([PYTHON, "-c", script, &file]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    // Read-only twice over: the mount (EROFS) and Landlock (EACCES), whichever the kernel
    // checks first.
    assert!(
        finished.stdout == "host data\nEROFS\n" || finished.stdout == "host data\nEACCES\n",
        "{}",
        finished.describe()
    );
    // Without the policy the directory is not there.
    let finished = Sandbox::new().run([PYTHON, "-c", EXISTS, &file]);
    assert!(
        finished.stdout.contains("ENOENT"),
        "{}",
        finished.describe()
    );
}
