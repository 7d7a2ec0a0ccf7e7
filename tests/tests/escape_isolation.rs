//! Executions are kept apart from each other and from the host's daemons, not only from the
//! network. Attacked here, from inside a sandbox:
//!
//! - another execution running at the same time: its uid (each execution without `--user`
//!   gets a uid and gid of its own, leased from the pool at 0x70000000), its `/proc` entries,
//!   `kill`, `ptrace`, `process_vm_readv`, `pidfd_send_signal` and `pidfd_getfd` on its
//!   processes;
//! - the host's `/run` (where D-Bus, nscd and systemd-resolved listen) and `/dev/shm`: a
//!   world-writable Unix socket and a world-writable file the test creates there, another
//!   execution's runtime directory; and the host's mount table (nothing may propagate back);
//! - the host's System V IPC objects: a world-readable shared-memory segment and message
//!   queue with fixed keys;
//! - new namespaces (`unshare`, `clone` with `CLONE_NEW*`, `clone3`, `setns`, the x32 system
//!   call numbers where the kernel has them), while ordinary process creation (`fork`,
//!   `posix_spawn`, `subprocess`, threads) keeps working.
//!
//! Nothing is sent over any network: the only socket used is a Unix socket on this host,
//! which the sandbox must not even find. The sandboxed probes are `/usr/bin/python3` programs
//! that print one line per check, `<check> <outcome>` (an errno name, `ok`, or a value); the
//! tests assert the exact outcomes. Everything a test creates on the host (socket and
//! `/dev/shm` files, System V objects, sandboxes) is removed when it ends, pass or fail.
//!
//! Needs root.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    os::unix::{
        fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixListener,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use tollgate_tests::{
    checks::{assert_outcomes, outcome},
    leaks::SuiteLock,
    sandbox::{
        execution_id_of, is_alive, process_stat, Running, Sandbox, HANG_LIMIT, NETWORK_POLICY,
        PYTHON,
    },
    unique, Scratch,
};

/// First uid of the per-execution pool (0x70000000).
const POOL_BASE: u32 = 0x7000_0000;
/// The user `--user 65534` names.
const NOBODY: u32 = 65_534;

/// Removes host files when dropped (the test's socket and `/dev/shm` files).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A user per execution

/// Prints the process's ids and groups, then waits for stdin to close.
const IDENTITY_PY: &str = r#"
import os, sys
print("ids", *os.getresuid(), *os.getresgid(), flush=True)
print("groups", ",".join(map(str, os.getgroups())) or "none", flush=True)
print("READY", flush=True)
sys.stdin.read()
"#;

/// `(real, effective, saved uid, real, effective, saved gid)` from an `ids` line.
fn parse_ids(line: &str) -> Vec<u32> {
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a numeric id"))
        .collect();
    assert_eq!(ids.len(), 6, "six ids in {line:?}");
    ids
}

#[test]
fn every_execution_without_user_runs_as_a_leased_uid_of_its_own() {
    let _lock = SuiteLock::shared();
    const AT_ONCE: usize = 4;
    let mut running: Vec<Running> = (0..AT_ONCE)
        .map(|_| {
            Running::spawn(
                &mut Sandbox::new()
                    .timeout("120s")
                    .command([PYTHON, "-c", IDENTITY_PY]),
            )
        })
        .collect();
    // All of them are alive at once when their ids are read.
    let mut seen = Vec::new();
    for run in &mut running {
        let ids = parse_ids(&run.wait_line("ids ", HANG_LIMIT));
        let groups = run.wait_line("groups ", HANG_LIMIT);
        run.wait_line("READY", HANG_LIMIT);
        seen.push((ids, groups));
    }
    for run in running {
        let finished = run.finish(HANG_LIMIT);
        assert_eq!(finished.code(), 0, "{}", finished.describe());
    }
    let mut uids = BTreeSet::new();
    for (ids, groups) in &seen {
        let uid = ids[0];
        assert!(
            ids.iter().all(|&id| id == uid),
            "real, effective and saved uid and gid are one number: {ids:?}"
        );
        assert!(
            uid >= POOL_BASE,
            "uid {uid} is not from the per-execution pool at {POOL_BASE} (0 and 65534 never are)"
        );
        assert!(
            i32::try_from(uid).is_ok(),
            "uid {uid} does not fit a signed 32-bit id, which some programs still assume"
        );
        assert_eq!(groups, "groups none", "no supplementary groups (uid {uid})");
        uids.insert(uid);
    }
    assert_eq!(
        uids.len(),
        AT_ONCE,
        "{AT_ONCE} executions alive at once shared a uid: {seen:?}"
    );

    // An explicit --user is kept as given.
    let finished =
        Sandbox::new()
            .arg("--user")
            .arg(NOBODY.to_string())
            .run([PYTHON, "-c", IDENTITY_PY]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let line = finished
        .stdout
        .lines()
        .find(|l| l.starts_with("ids "))
        .unwrap_or_else(|| panic!("no ids line: {}", finished.describe()));
    assert_eq!(parse_ids(line), vec![NOBODY; 6], "--user {NOBODY}");
}

// ---------------------------------------------------------------------------------------------
// 2. Processes of another execution are out of sight and reach

/// The victim: its pid, its uid and the address of a buffer, then it waits for stdin to close
/// and says whether the buffer is as it was.
const VICTIM_PY: &str = r#"
import ctypes, os, sys
secret = ctypes.create_string_buffer(b"tollgate-victim-memory")
print("VICTIM", os.getpid(), os.getuid(), ctypes.addressof(secret), flush=True)
sys.stdin.read()
print("victim", "intact" if secret.value == b"tollgate-victim-memory" else "changed", flush=True)
"#;

/// The attacker: argv = victim pid, victim buffer address. Each attempt is one the kernel
/// allows between processes of one user (there is no Yama here); SIGKILL comes last.
const ATTACKER_PY: &str = r#"
import ctypes, errno, os, signal, sys
victim, address = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)

def name(err):
    return errno.errorcode.get(err, "E%d" % err)

def raise_errno():
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))

def report(check, attempt):
    try:
        attempt()
        print(check, "ok", flush=True)
    except OSError as e:
        print(check, name(e.errno), flush=True)

print("attacker_uid", os.getuid(), flush=True)
me = os.getuid()
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
print("own_process_listed", "ok" if os.getpid() in pids else "missing", flush=True)
foreign = []
for pid in pids:
    try:
        if os.stat("/proc/%d" % pid).st_uid != me:
            foreign.append(pid)
    except FileNotFoundError:
        pass
print("foreign_processes_listed", len(foreign), flush=True)
options = "no-proc-mount"
for line in open("/proc/self/mountinfo"):
    mount, _, fs = line.partition(" - ")
    if mount.split()[4] == "/proc":
        options = fs.split()[2]
print("proc_hidepid", "invisible" if "hidepid=invisible" in options.split(",") else options,
      flush=True)
report("stat_proc_1", lambda: os.stat("/proc/1"))
report("stat_proc_victim", lambda: os.stat("/proc/%d" % victim))
report("kill_0", lambda: os.kill(victim, 0))

libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def attach():
    if libc.ptrace(16, victim, None, None) != 0:  # PTRACE_ATTACH
        raise_errno()
    os.waitpid(victim, 0x40000000)  # __WALL: the attached victim stops
    libc.ptrace(17, victim, None, None)  # PTRACE_DETACH
report("ptrace_attach", attach)

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc.process_vm_readv.restype = ctypes.c_ssize_t
libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                                  ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
def read_memory():
    buf = ctypes.create_string_buffer(32)
    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 22)
    remote = iovec(address, 22)
    if libc.process_vm_readv(victim, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        raise_errno()
report("process_vm_readv", read_memory)

libc.syscall.restype = ctypes.c_long
def with_pidfd(use):
    def attempt():
        fd = libc.syscall(434, victim, 0)  # pidfd_open
        if fd < 0:
            raise_errno()
        try:
            use(fd)
        finally:
            os.close(fd)
    return attempt
def signal_0(fd):
    if libc.syscall(424, fd, 0, None, 0) != 0:  # pidfd_send_signal
        raise_errno()
def steal_stdin(fd):
    stolen = libc.syscall(438, fd, 0, 0)  # pidfd_getfd
    if stolen < 0:
        raise_errno()
    os.close(stolen)
report("pidfd_send_signal", with_pidfd(signal_0))
report("pidfd_getfd", with_pidfd(steal_stdin))
report("kill_sigkill", lambda: os.kill(victim, signal.SIGKILL))
"#;

#[test]
fn a_sandbox_cannot_see_signal_trace_or_read_another_execution() {
    let _lock = SuiteLock::shared();
    let mut victim = Running::spawn(
        &mut Sandbox::new()
            .timeout("120s")
            .command([PYTHON, "-c", VICTIM_PY]),
    );
    let line = victim.wait_line("VICTIM ", HANG_LIMIT);
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (victim_ns_pid, victim_uid, address) = (fields[1], fields[2], fields[3]);
    // The victim sees its pid in its own PID namespace; the attacker is handed its host pid,
    // the most an attacker could learn from outside.
    let pid = tollgate_tests::sandbox::wait_host_pid(
        victim.pid(),
        victim_ns_pid.parse().expect("victim pid"),
    );
    let victim_pid = pid.to_string();
    let victim_pid = victim_pid.as_str();
    let (_, start) = process_stat(pid).expect("the victim runs");
    assert!(
        execution_id_of(pid).is_some(),
        "pid {pid} is the sandboxed victim (it runs in an execution cgroup)"
    );

    let attacker =
        Sandbox::new()
            .timeout("60s")
            .run([PYTHON, "-c", ATTACKER_PY, victim_pid, address]);
    assert_eq!(attacker.code(), 0, "{}", attacker.describe());
    let denied: &[&str] = &["EPERM", "ESRCH"];
    assert_outcomes(
        "another execution's processes are invisible and out of reach",
        &attacker.stdout,
        &[
            ("own_process_listed", &["ok"]),
            ("foreign_processes_listed", &["0"]),
            ("proc_hidepid", &["invisible"]),
            ("stat_proc_1", &["ENOENT"]),
            ("stat_proc_victim", &["ENOENT"]),
            ("kill_0", denied),
            ("ptrace_attach", denied),
            ("process_vm_readv", denied),
            ("pidfd_send_signal", denied),
            ("pidfd_getfd", denied),
            ("kill_sigkill", denied),
        ],
    );
    let attacker_uid = outcome(&attacker.stdout, "attacker_uid");
    assert_ne!(
        attacker_uid,
        Some(victim_uid),
        "the two executions run as one uid\n{}",
        attacker.stdout
    );
    assert!(
        is_alive(pid, start),
        "the victim (pid {pid}) did not survive the attack"
    );
    victim.close_stdin();
    let finished = victim.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.lines().any(|l| l == "victim intact"),
        "{}",
        finished.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A private /run and /dev/shm

/// A neighbouring execution with the network on: prints its CA bundle path, then waits.
const NEIGHBOUR_PY: &str = r#"
import os, sys
print("NEIGHBOUR", os.environ.get("SSL_CERT_FILE", "unset"), flush=True)
sys.stdin.read()
"#;

/// argv: host socket path, host /dev/shm name, /dev/shm name to create, host /run entries
/// (comma-separated), host daemon sockets (comma-separated or `-`), the neighbour's runtime
/// directory.
const FILESYSTEM_PY: &str = r#"
import errno, os, socket, sys
sock_path, host_shm, own_shm, run_entries, daemon_sockets, neighbour = sys.argv[1:7]

def report(check, attempt):
    try:
        attempt()
        print(check, "ok", flush=True)
    except OSError as e:
        print(check, errno.errorcode.get(e.errno, "E%d" % e.errno), flush=True)

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
    finally:
        s.close()

def exists(path):
    try:
        os.lstat(path)
        return True
    except FileNotFoundError:
        return False

report("host_socket_connect", connect)
report("host_socket_stat", lambda: os.lstat(sock_path))
report("host_shm_open", lambda: open("/dev/shm/" + host_shm, "rb").close())
visible = [p for p in daemon_sockets.split(",") if p != "-" and exists(p)]
print("host_daemon_sockets_visible", ",".join(visible) or "none", flush=True)
visible = sorted(set(os.listdir("/run")) & set(run_entries.split(",")))
print("host_run_entries_visible", ",".join(visible) or "none", flush=True)
report("neighbour_runtime_dir", lambda: os.lstat(neighbour))

def create_shm():
    fd = os.open("/dev/shm/" + own_shm, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"sandbox")
    os.close(fd)
report("own_shm_create", create_shm)

bundle = os.environ.get("SSL_CERT_FILE", "")
own_dir = os.path.dirname(bundle)
try:
    with open(bundle) as f:
        ok = bundle.startswith("/run/tollgate/") and f.read().startswith("-----BEGIN")
    print("ca_bundle", "ok" if ok else "unexpected " + bundle, flush=True)
except OSError as e:
    print("ca_bundle", errno.errorcode.get(e.errno, "E%d" % e.errno), flush=True)
try:
    import tollgate_http
    where = os.path.realpath(tollgate_http.__file__)
    print("python_helper", "ok" if where.startswith(own_dir + "/") else "elsewhere " + where,
          flush=True)
except Exception as e:
    print("python_helper", type(e).__name__, flush=True)
try:
    listing = sorted(os.listdir("/run/tollgate"))
    own = os.path.basename(own_dir)
    print("run_tollgate_listing", "only-own" if listing == [own] else ",".join(listing),
          flush=True)
except OSError as e:
    print("run_tollgate_listing", errno.errorcode.get(e.errno, "E%d" % e.errno), flush=True)
runtime = os.environ.get("TOLLGATE_RUNTIME_DIR")
if runtime is None:
    print("runtime_dir_env", "unset", flush=True)
else:
    print("runtime_dir_env", "ok" if os.path.isdir(runtime) else "missing " + runtime,
          flush=True)
print("mnt_ns", os.readlink("/proc/self/ns/mnt"), flush=True)
"#;

/// Whether `uid` is one a sandbox runs as: the pool, or nobody (the old shared user).
fn is_sandbox_uid(uid: u32) -> bool {
    uid >= POOL_BASE || uid == NOBODY
}

/// Entries of `dir` owned by a sandbox user (what a sandbox could have made there; host
/// daemons such as PostgreSQL come and go in `/dev/shm` under their own users).
fn sandbox_owned_entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.metadata().is_ok_and(|m| is_sandbox_uid(m.uid())))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The host's mounts on the directories a sandbox gets private copies of, and on runtime
/// directories (`<id> <point> <type>`): a sandbox mount that propagated back would show here
/// (other mounts under `/run`, such as the test harness's `/run/netns`, come and go).
fn host_private_dir_mounts() -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs_part) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            let point = *fields.get(4)?;
            let fs_type = fs_part.split(' ').next()?;
            (["/run", "/dev/shm", "/proc"].contains(&point) || point.starts_with("/run/tollgate/"))
                .then(|| format!("{} {point} {fs_type}", fields[0]))
        })
        .collect()
}

/// Unix sockets of host daemons under `/run` (a few levels deep), `-` when there are none.
fn host_daemon_sockets() -> String {
    fn walk(dir: &Path, depth: u32, found: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if name.starts_with("tollgate") || name.contains(',') {
                continue;
            }
            if kind.is_socket() && found.len() < 32 {
                found.push(entry.path().display().to_string());
            } else if kind.is_dir() && depth > 0 {
                walk(&entry.path(), depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/run"), 3, &mut found);
    if found.is_empty() {
        "-".to_owned()
    } else {
        found.join(",")
    }
}

#[test]
fn host_run_and_dev_shm_are_out_of_reach_but_the_runtime_dir_is_there() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("isolation-fs");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let name = unique("fs");
    let socket_path = PathBuf::from(format!("/run/{name}.sock"));
    let host_shm = Path::new("/dev/shm").join(&name);
    let own_shm_name = format!("{name}-sandbox");
    let own_shm_on_host = Path::new("/dev/shm").join(&own_shm_name);
    let _cleanup = RemoveOnDrop(vec![
        socket_path.clone(),
        host_shm.clone(),
        own_shm_on_host.clone(),
    ]);

    // Host side: a world-writable listener under /run and a world-writable file in /dev/shm.
    let listener = UnixListener::bind(&socket_path).expect("bind the host socket");
    listener.set_nonblocking(true).expect("non-blocking");
    fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o666)).expect("chmod socket");
    fs::write(&host_shm, b"host").expect("write the host /dev/shm file");
    fs::set_permissions(&host_shm, fs::Permissions::from_mode(0o666)).expect("chmod shm file");
    let shm_before = sandbox_owned_entries(Path::new("/dev/shm"));
    let run_entries: Vec<String> = fs::read_dir("/run")
        .expect("read /run")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tollgate" && !n.contains(','))
        .collect();
    assert!(run_entries.contains(&format!("{name}.sock")));
    let host_mnt_ns = fs::read_link("/proc/self/ns/mnt").expect("host mount namespace");
    let mounts_before = host_private_dir_mounts();

    // A neighbouring execution, so that its runtime directory exists meanwhile.
    let mut neighbour = Running::spawn(
        &mut Sandbox::new()
            .policy(&policy)
            .timeout("120s")
            .command([PYTHON, "-c", NEIGHBOUR_PY]),
    );
    let bundle = neighbour.wait_line("NEIGHBOUR ", HANG_LIMIT);
    let neighbour_dir = Path::new(bundle.trim_start_matches("NEIGHBOUR "))
        .parent()
        .expect("the neighbour's CA bundle is in its runtime directory")
        .to_path_buf();
    assert!(
        neighbour_dir.starts_with("/run/tollgate/") && neighbour_dir.is_dir(),
        "the neighbour's runtime directory {} exists on the host",
        neighbour_dir.display()
    );

    let probe = Sandbox::new().policy(&policy).timeout("60s").run([
        PYTHON,
        "-c",
        FILESYSTEM_PY,
        &socket_path.display().to_string(),
        &name,
        &own_shm_name,
        &run_entries.join(","),
        &host_daemon_sockets(),
        &neighbour_dir.display().to_string(),
    ]);
    neighbour.close_stdin();
    let neighbour = neighbour.finish(HANG_LIMIT);
    assert_eq!(neighbour.code(), 0, "{}", neighbour.describe());
    assert_eq!(probe.code(), 0, "{}", probe.describe());
    assert_outcomes(
        "the host's /run and /dev/shm are private, the runtime directory is there",
        &probe.stdout,
        &[
            ("host_socket_connect", &["ENOENT"]),
            ("host_socket_stat", &["ENOENT"]),
            ("host_shm_open", &["ENOENT"]),
            ("host_daemon_sockets_visible", &["none"]),
            ("host_run_entries_visible", &["none"]),
            ("neighbour_runtime_dir", &["ENOENT"]),
            ("own_shm_create", &["ok"]),
            ("ca_bundle", &["ok"]),
            ("python_helper", &["ok"]),
            ("run_tollgate_listing", &["only-own"]),
            ("runtime_dir_env", &["ok", "unset"]),
        ],
    );
    let sandbox_mnt_ns = outcome(&probe.stdout, "mnt_ns");
    assert!(
        sandbox_mnt_ns.is_some_and(|ns| Path::new(ns) != host_mnt_ns),
        "the sandbox has a mount namespace of its own (host {}, sandbox {sandbox_mnt_ns:?})",
        host_mnt_ns.display()
    );

    // The host's side is as it was: nobody connected, the files are there, nothing new.
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(_) => panic!(
            "the sandbox connected to the host socket {}",
            socket_path.display()
        ),
        Err(e) => panic!("accept on the host socket: {e}"),
    }
    assert!(
        fs::symlink_metadata(&socket_path).is_ok_and(|m| m.file_type().is_socket()),
        "the host socket {} is still there",
        socket_path.display()
    );
    assert_eq!(
        fs::read(&host_shm).ok().as_deref(),
        Some(&b"host"[..]),
        "the host's /dev/shm file is unchanged"
    );
    assert!(
        !own_shm_on_host.exists(),
        "the file the sandbox made in its /dev/shm landed in the host's"
    );
    assert_eq!(
        host_private_dir_mounts(),
        mounts_before,
        "the sandbox's mounts reached the host"
    );
    let new: Vec<String> = sandbox_owned_entries(Path::new("/dev/shm"))
        .difference(&shm_before)
        .cloned()
        .collect();
    assert!(
        new.is_empty(),
        "the sandbox created {new:?} in the host's /dev/shm"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A private IPC namespace

/// argv: key of the host's shared-memory segment, key of its message queue.
const IPC_PY: &str = r#"
import ctypes, errno, os, sys
shm_key, msg_key = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]

def outcome(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "E%d" % ctypes.get_errno())

print("host_shm_segment", outcome(libc.shmget(shm_key, 0, 0)), flush=True)
print("host_msg_queue", outcome(libc.msgget(msg_key, 0)), flush=True)
own = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
print("own_shm_segment", outcome(own), flush=True)
if own >= 0:
    libc.shmctl(own, 0, None)  # IPC_RMID
print("ipc_ns", os.readlink("/proc/self/ns/ipc"), flush=True)
"#;

/// System V objects of the host, removed when dropped.
struct SysvObjects {
    shm: Option<i32>,
    msg: Option<i32>,
}

impl Drop for SysvObjects {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID on ids this test created; no buffer is read or written.
        unsafe {
            if let Some(id) = self.shm {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            if let Some(id) = self.msg {
                libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

/// Creates a System V object with `create(key)` (IPC_CREAT|IPC_EXCL, mode 0666) at the first
/// free key from `first`; a key some other object holds is skipped, never taken over.
fn create_sysv(
    what: &str,
    first: libc::key_t,
    create: impl Fn(libc::key_t) -> i32,
) -> (libc::key_t, i32) {
    for key in (first..).step_by(2).take(64) {
        let id = create(key);
        if id >= 0 {
            return (key, id);
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EEXIST),
            "create the {what}: {err}"
        );
    }
    panic!("no free key for the {what} from {first:#x}");
}

#[test]
fn host_sysv_ipc_objects_are_invisible_in_the_sandbox() {
    let _lock = SuiteLock::shared();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let first = 0x5447_0000 | ((std::process::id() ^ nanos) as i32 & 0x7f00);
    // Filled in one by one, so that a failure creating the second still removes the first.
    let mut objects = SysvObjects {
        shm: None,
        msg: None,
    };
    // SAFETY (all blocks below): System V calls on plain integers; IPC_STAT on an id this
    // test created, into a zeroed shmid_ds of the right type.
    let (shm_key, shm) = create_sysv("shared-memory segment", first, |key| unsafe {
        libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o666)
    });
    objects.shm = Some(shm);
    let (msg_key, msg) = create_sysv("message queue", first + 1, |key| unsafe {
        libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o666)
    });
    objects.msg = Some(msg);
    let host_ipc_ns = fs::read_link("/proc/self/ns/ipc").expect("host IPC namespace");

    let probe = Sandbox::new().timeout("60s").run([
        PYTHON,
        "-c",
        IPC_PY,
        &shm_key.to_string(),
        &msg_key.to_string(),
    ]);
    assert_eq!(probe.code(), 0, "{}", probe.describe());
    assert_outcomes(
        "the host's System V objects are out of reach",
        &probe.stdout,
        &[
            ("host_shm_segment", &["ENOENT"]),
            ("host_msg_queue", &["ENOENT"]),
            ("own_shm_segment", &["ok"]),
        ],
    );
    let sandbox_ipc_ns = outcome(&probe.stdout, "ipc_ns");
    assert!(
        sandbox_ipc_ns.is_some_and(|ns| Path::new(ns) != host_ipc_ns),
        "the sandbox has an IPC namespace of its own (host {}, sandbox {sandbox_ipc_ns:?})",
        host_ipc_ns.display()
    );
    // The host's segment is still there, and nothing attached to it.
    let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::shmctl(shm, libc::IPC_STAT, &mut stat) };
    assert_eq!(
        rc,
        0,
        "the host's segment survived: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(stat.shm_nattch, 0, "nothing attached the host's segment");
}

// ---------------------------------------------------------------------------------------------
// 5. No new namespaces, but processes as usual

/// Each namespace attempt runs in a forked child, so that one that succeeds (against a
/// broken sandbox) cannot change what the next one sees.
const NAMESPACES_PY: &str = r#"
import ctypes, errno, os, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR_CLONE = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
NR_CLONE3 = 435
SIGCHLD = 17
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x40000000
CLONE_NEWTIME, CLONE_FILES = 0x80, 0x400

def name(err):
    return errno.errorcode.get(err, "E%d" % err)

def errno_of(rc):
    return "ok" if rc >= 0 else name(ctypes.get_errno())

def in_child(check, attempt):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = attempt()
        except BaseException as e:
            result = "raised-" + type(e).__name__
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    result = os.read(r, 200).decode() or "no-answer"
    os.close(r)
    os.waitpid(pid, 0)
    print(check, result, flush=True)

def unshare(flags):
    return lambda: errno_of(libc.unshare(flags))

def reap(rc):
    # A raw clone that worked: the copy exits at once, the original reaps it.
    if rc == 0:
        os._exit(0)
    if rc > 0:
        os.waitpid(rc, 0)
        return "ok"
    return name(ctypes.get_errno())

def clone(flags):
    return lambda: reap(libc.syscall(NR_CLONE, ctypes.c_ulong(flags | SIGCHLD), None, None,
                                     None, ctypes.c_ulong(0)))

def clone3(flags):
    def attempt():
        args = (ctypes.c_uint64 * 8)()  # struct clone_args, CLONE_ARGS_SIZE_VER0
        args[0], args[4] = flags, SIGCHLD
        return reap(libc.syscall(NR_CLONE3, ctypes.byref(args), ctypes.c_size_t(64)))
    return attempt

def setns(path):
    def attempt():
        fd = os.open(path, os.O_RDONLY)
        return errno_of(libc.setns(fd, 0))
    return attempt

in_child("unshare_user", unshare(CLONE_NEWUSER))
in_child("unshare_user_net", unshare(CLONE_NEWUSER | CLONE_NEWNET))
in_child("unshare_net", unshare(CLONE_NEWNET))
in_child("unshare_mnt", unshare(CLONE_NEWNS))
in_child("unshare_ipc", unshare(CLONE_NEWIPC))
in_child("unshare_time", unshare(CLONE_NEWTIME))
in_child("unshare_files", unshare(CLONE_FILES))
in_child("clone_user", clone(CLONE_NEWUSER))
in_child("clone_plain", clone(0))
in_child("clone3_plain", clone3(0))
in_child("clone3_user", clone3(CLONE_NEWUSER))
in_child("setns_net", setns("/proc/self/ns/net"))
in_child("setns_mnt", setns("/proc/self/ns/mnt"))
if NR_CLONE == 56:
    # The x32 ABI numbers unshare 272 | 0x40000000 under the x86_64 audit arch: a filter
    # that matches only 272 would let it through on kernels that enable x32.
    in_child("x32_unshare_user", lambda: errno_of(libc.syscall(0x40000000 | 272,
                                                               ctypes.c_ulong(CLONE_NEWUSER))))
else:
    print("x32_unshare_user", "not-x86_64", flush=True)

if os.path.exists("/usr/bin/unshare"):
    done = subprocess.run(["/usr/bin/unshare", "-U", "/usr/bin/true"], capture_output=True,
                          timeout=30)
    print("unshare_command", "failed" if done.returncode != 0 else "ok", flush=True)
else:
    print("unshare_command", "absent", flush=True)

pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
print("fork", "ok" if os.waitstatus_to_exitcode(status) == 7 else "status-%d" % status,
      flush=True)
done = subprocess.run(["/usr/bin/true"])
print("subprocess_run", "ok" if done.returncode == 0 else "exit-%d" % done.returncode,
      flush=True)
pid = os.posix_spawn("/usr/bin/true", ["true"], os.environ)
_, status = os.waitpid(pid, 0)
print("posix_spawn", "ok" if status == 0 else "status-%d" % status, flush=True)
ran = []
thread = threading.Thread(target=lambda: ran.append(True))
thread.start()
thread.join()
print("thread", "ok" if ran else "did-not-run", flush=True)
"#;

#[test]
fn a_sandbox_cannot_make_or_enter_namespaces_but_can_fork_and_spawn() {
    let _lock = SuiteLock::shared();
    let probe = Sandbox::new()
        .timeout("60s")
        .run([PYTHON, "-c", NAMESPACES_PY]);
    assert_eq!(probe.code(), 0, "{}", probe.describe());
    let unshare_command: &[&str] = if Path::new("/usr/bin/unshare").exists() {
        &["failed"]
    } else {
        &["absent"]
    };
    assert_outcomes(
        "no namespace can be made or entered; processes and threads still start",
        &probe.stdout,
        &[
            ("unshare_user", &["EPERM"]),
            ("unshare_user_net", &["EPERM"]),
            ("unshare_net", &["EPERM"]),
            ("unshare_mnt", &["EPERM"]),
            ("unshare_ipc", &["EPERM"]),
            ("unshare_time", &["EPERM"]),
            ("unshare_files", &["ok"]),
            ("clone_user", &["EPERM"]),
            ("clone_plain", &["ok"]),
            ("clone3_plain", &["ENOSYS"]),
            ("clone3_user", &["ENOSYS"]),
            ("setns_net", &["EPERM"]),
            ("setns_mnt", &["EPERM"]),
            ("x32_unshare_user", &["ENOSYS", "EPERM", "not-x86_64"]),
            ("unshare_command", unshare_command),
            ("fork", &["ok"]),
            ("subprocess_run", &["ok"]),
            ("posix_spawn", &["ok"]),
            ("thread", &["ok"]),
        ],
    );
}
