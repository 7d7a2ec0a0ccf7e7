//! Landlock holds alone. Every attack here runs with the sandbox's own root switched off (the
//! `root` test layer: the child keeps the host's tree, with the private `/tmp`, `/var/tmp`,
//! `/run`, `/dev/shm`, `/proc` and `/sys` on top), so only the Landlock rules stand between
//! the command and the host:
//!
//! - a world-readable file and a world-executable program in a host directory outside the
//!   view (`/var/lib/tollgate-test-…`, created by the test);
//! - a world-writable host directory outside the view, and `/proc`; while `/tmp`,
//!   `/var/tmp`, `/dev/shm`, a read-write share and `/dev/null` stay writable, and renames,
//!   links, sockets, FIFOs and POSIX semaphores keep working there;
//! - an abstract Unix socket bound outside the sandbox in the network namespace it runs in
//!   (with the `netns` layer off too, so that namespace is shared as the host's would be);
//! - a process of the sandbox's own uid that the test starts in the sandbox's PID namespace,
//!   outside its Landlock domain (`kill(pid, 0)`);
//! - and what is reported: the summary's and the audit log's `landlock_abi`, `tollgate
//!   doctor`, and `filesystem.landlock: required` on a host without Landlock (the `landlock`
//!   test layer off stands for such a host): exit 125 and nothing run.
//!
//! Where a control makes sense, the same probe runs with the `landlock` layer off too and
//! gets through, so what refused it is Landlock.
//!
//! The sandboxed probes are `/usr/bin/python3` programs that print one line per check,
//! `<check> <outcome>` (an errno name or `ok`). Nothing is sent over any network. Everything
//! a test creates on the host is removed when it ends, pass or fail.
//!
//! Needs root.

use std::{
    fs,
    os::fd::AsRawFd as _,
    os::unix::{
        fs::PermissionsExt as _,
        net::{SocketAddr, UnixListener},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use std::os::linux::net::SocketAddrExt as _;

use tollgate_tests::{
    checks::assert_outcomes,
    leaks::SuiteLock,
    sandbox::{read_json, read_json_lines, wait_within, Running, Sandbox, HANG_LIMIT, PYTHON},
    tollgate, unique, Scratch,
};

/// The Landlock ABI of this kernel, asked the way tollgate asks; `None` without Landlock.
fn kernel_landlock_abi() -> Option<u64> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the documented version query: no attributes, size 0.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi as u64)
}

/// A directory of the host outside the sandbox's view, removed on drop: a world-readable
/// file, a world-executable program and a world-writable directory, all of which the
/// sandbox user may use as far as file permissions go.
struct HostTree {
    dir: PathBuf,
}

impl HostTree {
    fn new(tag: &str) -> Self {
        let dir = Path::new("/var/lib").join(unique(tag));
        fs::create_dir(&dir).expect("create the host directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        let tree = HostTree { dir };
        fs::write(tree.secret(), "host secret\n").expect("write the secret");
        fs::set_permissions(tree.secret(), fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::copy("/usr/bin/true", tree.program()).expect("copy a program");
        fs::set_permissions(tree.program(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(tree.drop_box()).expect("create the drop box");
        fs::set_permissions(tree.drop_box(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        tree
    }

    fn secret(&self) -> PathBuf {
        self.dir.join("secret.txt")
    }

    fn program(&self) -> PathBuf {
        self.dir.join("tool")
    }

    fn drop_box(&self) -> PathBuf {
        self.dir.join("drop")
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Helpers every probe starts with.
const PROBE_PRELUDE: &str = r#"
import errno, os, subprocess, sys
def attempt(check, action):
    try:
        action()
        print(check, "ok", flush=True)
    except OSError as error:
        print(check, errno.errorcode.get(error.errno, error.errno), flush=True)
"#;

fn probe(body: &str) -> String {
    format!("{PROBE_PRELUDE}{body}")
}

// ---------------------------------------------------------------------------------------------
// 1. Outside the view, nothing can be read or executed (names can be listed: the box's own
//    root must be listable, and a Landlock rule holds for a whole tree)

const OUTSIDE_PY: &str = r#"
tree = sys.argv[1]
attempt("read", lambda: open(tree + "/secret.txt").read())
attempt("exec", lambda: subprocess.run([tree + "/tool"], check=True))
# What the view holds stays usable.
attempt("read-etc", lambda: open("/etc/passwd").read())
attempt("list-usr", lambda: os.listdir("/usr/bin"))
attempt("exec-usr", lambda: subprocess.run(["/usr/bin/true"], check=True))
attempt("read-proc", lambda: open("/proc/self/status").read())
attempt("read-sys", lambda: os.listdir("/sys/class/net"))
"#;

#[test]
fn host_files_outside_the_view_cannot_be_read_or_executed() {
    let _lock = SuiteLock::shared();
    let tree = HostTree::new("landlock-outside");
    let finished = Sandbox::new().disable_layers("root").run([
        PYTHON,
        "-c",
        &probe(OUTSIDE_PY),
        tree.dir.to_str().unwrap(),
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_outcomes(
        "with the mount view off, Landlock alone keeps the host out",
        &finished.stdout,
        &[
            ("read", &["EACCES"]),
            ("exec", &["EACCES"]),
            ("read-etc", &["ok"]),
            ("list-usr", &["ok"]),
            ("exec-usr", &["ok"]),
            ("read-proc", &["ok"]),
            ("read-sys", &["ok"]),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Writes land only in the scratch directories and the read-write shares

const WRITES_PY: &str = r#"
shared, read_only, drop_box = sys.argv[1], sys.argv[2], sys.argv[3]
def write(path):
    with open(path, "w") as f:
        f.write("x")
for scratch in ["/tmp", "/var/tmp", "/dev/shm"]:
    attempt("write " + scratch, lambda: write(scratch + "/landlock-probe"))
attempt("write share", lambda: write(shared + "/landlock-probe"))
attempt("write read-only-share", lambda: write(read_only + "/landlock-probe"))
attempt("write host", lambda: write(drop_box + "/planted"))
attempt("mkdir host", lambda: os.mkdir(drop_box + "/dir"))
attempt("write proc", lambda: write("/proc/self/comm"))
attempt("write usr", lambda: write("/usr/landlock-probe"))
attempt("write etc", lambda: write("/etc/landlock-probe"))
attempt("write dev-null", lambda: write("/dev/null"))
attempt("truncate", lambda: os.truncate("/tmp/landlock-probe", 0))
def across_directories():
    os.makedirs("/tmp/a/b")
    os.rename("/tmp/landlock-probe", "/tmp/a/b/moved")
    os.link("/tmp/a/b/moved", "/tmp/linked")
    os.symlink("/tmp/linked", "/tmp/a/symlink")
    os.mkfifo("/tmp/a/fifo")
attempt("rename-link-symlink-fifo", across_directories)
def unix_socket():
    import socket
    socket.socket(socket.AF_UNIX).bind("/tmp/a/socket")
attempt("bind-socket", unix_socket)
def semaphore():
    import multiprocessing
    lock = multiprocessing.Lock()
    lock.acquire()
    lock.release()
attempt("semaphore", semaphore)
attempt("shell-redirect", lambda: subprocess.run(["/bin/sh", "-c", "echo x > /dev/null && echo y > /tmp/sh"], check=True))
attempt("exec-scratch", lambda: (subprocess.run(["/bin/cp", "/usr/bin/true", "/tmp/true"], check=True), subprocess.run(["/tmp/true"], check=True)))
"#;

#[test]
fn writes_land_only_in_the_scratch_directories_and_the_read_write_shares() {
    let _lock = SuiteLock::shared();
    let tree = HostTree::new("landlock-writes");
    let scratch = Scratch::new("landlock-writes");
    let shared = tollgate_tests::sandbox::shared_dir(&scratch, "rw");
    let read_only = tollgate_tests::sandbox::shared_dir(&scratch, "ro");
    let finished = Sandbox::new()
        .disable_layers("root")
        .arg("--share-ro")
        .arg(&read_only)
        .run([
            PYTHON,
            "-c",
            &probe(WRITES_PY),
            shared.to_str().unwrap(),
            read_only.to_str().unwrap(),
            tree.drop_box().to_str().unwrap(),
        ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_outcomes(
        "with the mount view off, Landlock allows writes where the view does",
        &finished.stdout,
        &[
            ("write /tmp", &["ok"]),
            ("write /var/tmp", &["ok"]),
            ("write /dev/shm", &["ok"]),
            ("write share", &["ok"]),
            // Inside the writable share the harness gives every sandbox, the read-only one
            // is read-only by its mount: Landlock's rules add up down a tree.
            ("write read-only-share", &["EROFS", "EACCES"]),
            // A world-writable host directory outside the view, and the kernel's files.
            ("write host", &["EACCES"]),
            ("mkdir host", &["EACCES"]),
            ("write proc", &["EACCES"]),
            ("write usr", &["EACCES", "EROFS"]),
            ("write etc", &["EACCES", "EROFS"]),
            ("write dev-null", &["ok"]),
            ("truncate", &["ok"]),
            ("rename-link-symlink-fifo", &["ok"]),
            ("bind-socket", &["ok"]),
            ("semaphore", &["ok"]),
            ("shell-redirect", &["ok"]),
            ("exec-scratch", &["ok"]),
        ],
    );
    assert_eq!(
        fs::read_to_string(shared.join("landlock-probe"))
            .ok()
            .as_deref(),
        Some("x"),
        "the write into the read-write share reached the host"
    );
    assert!(
        fs::read_dir(tree.drop_box()).unwrap().next().is_none(),
        "nothing was planted in the host's world-writable directory"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The command's own stdin stays reachable by path, wherever the file is

#[test]
fn stdin_from_a_host_file_outside_the_view_can_be_reopened_as_dev_stdin() {
    let _lock = SuiteLock::shared();
    let tree = HostTree::new("landlock-stdin");
    let mut command = Sandbox::new()
        .disable_layers("root")
        .command(["/bin/cat", "/dev/stdin"]);
    let mut child = command
        .stdin(fs::File::open(tree.secret()).expect("open the input"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_within(&mut child, HANG_LIMIT);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "status {status:?}\n{out}\n{err}");
    assert_eq!(out, "host secret\n", "stderr: {err}");
}

// ---------------------------------------------------------------------------------------------
// 4. Abstract Unix sockets bound outside the sandbox are out of reach

/// Waits for stdin to close (the test binds its socket meanwhile), then connects to the
/// abstract socket bound outside, and to one of its own.
const ABSTRACT_PY: &str = r#"
import socket
name = sys.argv[1]
print("READY", flush=True)
sys.stdin.read()
def connect(address):
    client = socket.socket(socket.AF_UNIX)
    client.connect(address)
attempt("outside", lambda: connect("\0" + name))
own = socket.socket(socket.AF_UNIX)
own.bind("\0" + name + "-own")
own.listen(1)
attempt("own", lambda: connect("\0" + name + "-own"))
"#;

/// Binds an abstract Unix socket in the network namespace at `netns` (abstract socket names
/// live in a network namespace), from a thread of its own that enters it.
fn bind_abstract_in(netns: &Path, name: &str) -> UnixListener {
    let namespace = fs::File::open(netns).expect("open the namespace");
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract address");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace descriptor we hold.
        let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        UnixListener::bind_addr(&address).expect("bind the abstract socket")
    })
    .join()
    .expect("the binding thread")
}

/// The probe's output, in a sandbox without the `layers` walls (and without its own network
/// namespace: it shares the one tollgate runs in, the harness's route-less one, as it would
/// share the host's), after the test bound an abstract socket in that namespace.
fn connect_to_abstract_socket_from(layers: &str) -> String {
    let name = unique("landlock-abstract");
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .disable_layers(&format!("netns,{layers}"))
            .route_less()
            .command([PYTHON, "-c", &probe(ABSTRACT_PY), &name]),
    );
    running.wait_line("READY", HANG_LIMIT);
    let _listener = bind_abstract_in(Path::new(&format!("/proc/{}/ns/net", running.pid())), &name);
    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    finished.stdout
}

#[test]
fn an_abstract_unix_socket_bound_outside_the_sandbox_cannot_be_connected_to() {
    let _lock = SuiteLock::shared();
    assert_outcomes(
        "abstract Unix sockets are scoped to the sandbox (Landlock ABI 6)",
        &connect_to_abstract_socket_from("root"),
        &[("outside", &["EPERM"]), ("own", &["ok"])],
    );
    // The control: without Landlock, nothing else in this namespace stops it.
    assert_outcomes(
        "without Landlock",
        &connect_to_abstract_socket_from("root,landlock"),
        &[("outside", &["ok"]), ("own", &["ok"])],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Processes outside the sandbox cannot be signalled, even with its uid

/// A uid outside the lease pool that nothing else on the host runs as.
const SHARED_UID: u32 = 61_234;

/// A process the test started, killed when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints its PID namespace, waits for stdin to close, then signals the process whose pid
/// (in that namespace) the test wrote to the file argv[1], and a child of its own.
const SIGNAL_PY: &str = r#"
print("PIDNS", os.readlink("/proc/self/ns/pid"), flush=True)
sys.stdin.read()
target = int(open(sys.argv[1]).read())
attempt("outside", lambda: os.kill(target, 0))
child = subprocess.Popen(["/bin/sleep", "60"])
attempt("own", lambda: os.kill(child.pid, 15))
child.wait()
"#;

/// A `/proc/<pid>/ns/pid` of a process in the PID namespace `link` names (`pid:[…]`).
fn pid_namespace_path(link: &str) -> PathBuf {
    fs::read_dir("/proc")
        .expect("list /proc")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|entry| entry.path().join("ns/pid"))
        .find(|path| fs::read_link(path).is_ok_and(|l| l.to_str() == Some(link)))
        .unwrap_or_else(|| panic!("no process is in {link}"))
}

/// Starts `/bin/sleep` as [`SHARED_UID`] inside the PID namespace at `namespace` (so the
/// sandbox can address it whether or not it has a namespace of its own), outside the
/// sandbox's Landlock domain; returns it and its pid in that namespace.
fn start_in_pid_namespace(namespace: &Path) -> (Started, u32) {
    let namespace = fs::File::open(namespace).expect("open the PID namespace");
    let started = std::thread::spawn(move || {
        // SAFETY: setns on this thread only: the children it starts are in `namespace`.
        let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWPID) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Command::new("/bin/sleep")
            .arg("600")
            .uid(SHARED_UID)
            .gid(SHARED_UID)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the process")
    })
    .join()
    .expect("the starting thread");
    let status = fs::read_to_string(format!("/proc/{}/status", started.id())).expect("status");
    let ns_pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().next_back()?.parse().ok())
        .expect("its pid in the namespace");
    (Started(started), ns_pid)
}

/// The probe's output, run as [`SHARED_UID`] without the `layers` walls, after the test
/// started a process of that uid in the sandbox's PID namespace.
fn signal_from(layers: &str) -> String {
    let scratch = Scratch::new("landlock-signal");
    let target = tollgate_tests::sandbox::shared_dir(&scratch, "in").join("target");
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .disable_layers(layers)
            .arg("--user")
            .arg(format!("{SHARED_UID}:{SHARED_UID}"))
            .command([PYTHON, "-c", &probe(SIGNAL_PY), target.to_str().unwrap()]),
    );
    let line = running.wait_line("PIDNS ", HANG_LIMIT);
    let (outsider, ns_pid) = start_in_pid_namespace(&pid_namespace_path(&line["PIDNS ".len()..]));
    fs::write(&target, ns_pid.to_string()).expect("write the target");
    running.close_stdin();
    running.wait_line("own ", HANG_LIMIT);
    // Reaped before the sandbox ends: the init of a PID namespace exits only once every
    // process in it is reaped, and this one's parent is the test.
    drop(outsider);
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    finished.stdout
}

#[test]
fn a_process_of_the_sandboxs_uid_outside_it_cannot_be_signalled() {
    let _lock = SuiteLock::shared();
    assert_outcomes(
        "signals are scoped to the sandbox (Landlock ABI 6)",
        &signal_from("root"),
        &[("outside", &["EPERM"]), ("own", &["ok"])],
    );
    // The control: without Landlock, a process of the same uid may be signalled.
    assert_outcomes(
        "without Landlock",
        &signal_from("root,landlock"),
        &[("outside", &["ok"]), ("own", &["ok"])],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. What was applied is reported

/// The summary's `landlock_abi` and the audit log's `sandbox` record of one run of
/// `/bin/true` with `layers` switched off.
fn reported_abi(layers: &str) -> (serde_json::Value, serde_json::Value) {
    let scratch = Scratch::new("landlock-report");
    let (summary, audit) = (
        scratch.output("summary.json"),
        scratch.output("audit.jsonl"),
    );
    let finished = Sandbox::new()
        .disable_layers(layers)
        .summary(&summary)
        .audit(&audit)
        .run(["/bin/true"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let records = read_json_lines(&audit);
    let sandbox: Vec<_> = records.iter().filter(|r| r["type"] == "sandbox").collect();
    assert_eq!(sandbox.len(), 1, "one sandbox record: {records:?}");
    assert!(
        sandbox[0]["execution"].is_string() && sandbox[0]["time"].is_string(),
        "{:?}",
        sandbox[0]
    );
    (
        read_json(&summary)["landlock_abi"].clone(),
        sandbox[0]["landlock_abi"].clone(),
    )
}

#[test]
fn the_summary_the_audit_log_and_doctor_report_the_landlock_abi_applied() {
    let _lock = SuiteLock::shared();
    let abi = kernel_landlock_abi().expect("this host has Landlock");
    let applied = serde_json::Value::from(abi);
    assert_eq!(reported_abi(""), (applied.clone(), applied));
    assert_eq!(
        reported_abi("landlock"),
        (serde_json::Value::Null, serde_json::Value::Null),
        "without the layer, null"
    );
    let doctor = tollgate_tests::sandbox::output(tollgate().arg("doctor"), None, HANG_LIMIT);
    assert!(
        doctor
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("ok    Landlock: ABI {abi}:"))),
        "{}",
        doctor.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A policy may require Landlock

#[test]
fn a_policy_that_requires_landlock_fails_with_125_on_a_host_without_it() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("landlock-required");
    let tree = HostTree::new("landlock-required");
    let required = scratch.file(
        "required.yaml",
        "version: 1\nteam: acme\nfilesystem:\n  landlock: required\n",
    );
    let best_effort = scratch.file(
        "best-effort.yaml",
        "version: 1\nteam: acme\nfilesystem:\n  landlock: best_effort\n",
    );
    let ran = tollgate_tests::sandbox::shared_dir(&scratch, "out").join("ran");
    let touch = ["/usr/bin/touch", ran.to_str().unwrap()];

    let refused = Sandbox::new()
        .disable_layers("landlock")
        .policy(&required)
        .run(touch);
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    let lines = refused.stderr_lines();
    assert!(
        lines.len() == 1
            && lines[0].contains("requires Landlock (filesystem.landlock: required)")
            && lines[0].contains("switched off"),
        "one line saying why: {}",
        refused.describe()
    );
    assert!(!ran.exists(), "the command did not run");

    // Where the kernel has it, the same policy runs.
    let finished = Sandbox::new().policy(&required).run(touch);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(ran.exists(), "the command ran");

    // Best effort runs without it: then, with the root off too, nothing keeps the host out,
    // which is what the other tests of this file show Landlock alone doing.
    let finished = Sandbox::new()
        .disable_layers("root,landlock")
        .policy(&best_effort)
        .run(["/bin/cat", tree.secret().to_str().unwrap()]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(finished.stdout, "host secret\n");
}
