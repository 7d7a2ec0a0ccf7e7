//! The kernel surface a sandbox can reach: every entry of the seccomp table in
//! `docs/architecture.md` is called from inside a real `tollgate run` and must get its
//! documented errno — from the filter itself, not from the kernel's own capability checks or
//! sysctls, which another worker node may set differently.
//!
//! The probe (`escape_kernel_probe.py`, run by `/usr/bin/python3` inside the sandbox) makes
//! the refused calls in a forked child that first stacks a seccomp filter of its own, sending
//! each of their numbers to `SECCOMP_RET_USER_NOTIF` with no listener: a call tollgate's
//! filter lets through fails there with ENOSYS and is never executed (reported as
//! `passed-the-filter`), while a call tollgate refuses gets tollgate's errno (an ERRNO action
//! outranks USER_NOTIF). Calls the table answers with ENOSYS are made as they are, with
//! arguments the kernel itself would reject with another errno. Also attacked for real: the
//! kernel keyrings (a channel between executions through `/proc/key-users`) and `TIOCSTI`
//! into the caller's terminal (a pty the test owns, with the caller's shell played by a small
//! session leader). And the other way round: ordinary calls, and real programs (Python,
//! Node, a Go binary, git, pip, curl, bash, coreutils), keep working.
//!
//! Nothing is sent over any network. x86-64 system call numbers. Needs root.

use std::{
    fs,
    io::Read as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
};

use serde_json::{json, Value};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{Finished, Sandbox, HANG_LIMIT, PYTHON},
};

const PROBE: &str = include_str!("escape_kernel_probe.py");

/// A call and the outcome the table documents for it.
struct Call {
    name: &'static str,
    number: u64,
    args: &'static [u64],
    expected: &'static str,
}

const fn call(
    name: &'static str,
    number: u64,
    args: &'static [u64],
    expected: &'static str,
) -> Call {
    Call {
        name,
        number,
        args,
        expected,
    }
}

const EPERM: &str = "EPERM";
const EAFNOSUPPORT: &str = "EAFNOSUPPORT";
const ENOSYS: &str = "ENOSYS";

/// Bits above the 32 the kernel reads: `cmd` of `ioctl`, `personality`, the flags of `clone`
/// and the family of `socketpair` are 32-bit in the kernel, which drops these.
const HIGH: u64 = 0xffff_ffff_0000_0000;
const SIGCHLD: u64 = 17;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const CLONE_NEWTIME: u64 = 0x80;
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const AF_INET: u64 = 2;
const AF_NETLINK: u64 = 16;
const AF_PACKET: u64 = 17;
const AF_VSOCK: u64 = 40;
const AF_XDP: u64 = 44;
const SOCK_STREAM: u64 = 1;
const SOCK_RAW: u64 = 3;
/// `userfaultfd(UFFD_USER_MODE_ONLY)` works for unprivileged users even with
/// `vm.unprivileged_userfaultfd = 0`.
const UFFD_USER_MODE_ONLY: u64 = 1;

/// Every call the filter refuses with an errno of its own. None of them is ever executed: the
/// probe's marker filter stops whatever tollgate's lets through.
const REFUSED: &[Call] = &[
    // Kernel keyrings: per-uid keyrings outlive the execution.
    call("keyctl", 250, &[0, 0, 0, 0, 0], EPERM),
    call("add_key", 248, &[0, 0, 0, 0, 0], EPERM),
    call("request_key", 249, &[0, 0, 0, 0], EPERM),
    // Kernel attack surface closed elsewhere only by sysctls.
    call(
        "perf_event_open",
        298,
        &[0, 0, u32::MAX as u64, u32::MAX as u64, 0],
        EPERM,
    ),
    call("userfaultfd", 323, &[UFFD_USER_MODE_ONLY], EPERM),
    call("bpf", 321, &[0, 0, 0], EPERM),
    // Other processes' insides.
    call("kcmp", 312, &[0, 0, 0, 0, 0], EPERM),
    call("pidfd_getfd", 438, &[0, 0, 0], EPERM),
    call("process_madvise", 440, &[0, 0, 0, 0, 0], EPERM),
    // NUMA memory policy and page migration.
    call("mbind", 237, &[0, 0, 0, 0, 0, 0], EPERM),
    call("set_mempolicy", 238, &[0, 0, 0], EPERM),
    call("get_mempolicy", 239, &[0, 0, 0, 0, 0], EPERM),
    call("migrate_pages", 256, &[0, 0, 0, 0], EPERM),
    call("move_pages", 279, &[0, 0, 0, 0, 0, 0], EPERM),
    call("set_mempolicy_home_node", 450, &[0, 0, 0, 0], EPERM),
    // Mounts and the root.
    call("mount", 165, &[0, 0, 0, 0, 0], EPERM),
    call("umount2", 166, &[0, 0], EPERM),
    call("pivot_root", 155, &[0, 0], EPERM),
    call("chroot", 161, &[0], EPERM),
    call("open_tree", 428, &[0, 0, 0], EPERM),
    call("move_mount", 429, &[0, 0, 0, 0, 0], EPERM),
    call("fsopen", 430, &[0, 0], EPERM),
    call("fsconfig", 431, &[0, 0, 0, 0, 0], EPERM),
    call("fsmount", 432, &[0, 0, 0], EPERM),
    call("fspick", 433, &[0, 0, 0], EPERM),
    call("mount_setattr", 442, &[0, 0, 0, 0, 0], EPERM),
    call("open_tree_attr", 467, &[0, 0, 0, 0, 0], EPERM),
    // The running kernel.
    call("kexec_load", 246, &[0, 0, 0, 0], EPERM),
    call("kexec_file_load", 320, &[0, 0, 0, 0, 0], EPERM),
    call("init_module", 175, &[0, 0, 0], EPERM),
    call("finit_module", 313, &[0, 0, 0], EPERM),
    call("delete_module", 176, &[0, 0], EPERM),
    call("acct", 163, &[0], EPERM),
    call("swapon", 167, &[0, 0], EPERM),
    call("swapoff", 168, &[0], EPERM),
    call("reboot", 169, &[0, 0, 0, 0], EPERM),
    call("syslog", 103, &[0, 0, 0], EPERM),
    call("quotactl", 179, &[0, 0, 0, 0], EPERM),
    call("quotactl_fd", 443, &[0, 0, 0, 0], EPERM),
    call("sethostname", 170, &[0, 0], EPERM),
    call("setdomainname", 171, &[0, 0], EPERM),
    call("vhangup", 153, &[], EPERM),
    // Files by handle, bypassing the path walk.
    call("open_by_handle_at", 304, &[0, 0, 0], EPERM),
    // Watching the whole filesystem.
    call("fanotify_init", 300, &[0, 0], EPERM),
    call("fanotify_mark", 301, &[0, 0, 0, 0, 0], EPERM),
    // Hardware and the clock.
    call("iopl", 172, &[3], EPERM),
    call("ioperm", 173, &[0, 1, 1], EPERM),
    call("modify_ldt", 154, &[0, 0, 0], EPERM),
    call("settimeofday", 164, &[0, 0], EPERM),
    call("clock_settime", 227, &[0, 0], EPERM),
    call("clock_adjtime", 305, &[0, 0], EPERM),
    call("adjtimex", 159, &[0], EPERM),
    // Namespaces.
    call("setns", 308, &[0, 0], EPERM),
    call("unshare(CLONE_NEWUSER)", 272, &[CLONE_NEWUSER], EPERM),
    call("unshare(CLONE_NEWNET)", 272, &[CLONE_NEWNET], EPERM),
    call("unshare(CLONE_NEWNS)", 272, &[CLONE_NEWNS], EPERM),
    call("unshare(CLONE_NEWPID)", 272, &[CLONE_NEWPID], EPERM),
    call("unshare(CLONE_NEWUTS)", 272, &[CLONE_NEWUTS], EPERM),
    call("unshare(CLONE_NEWIPC)", 272, &[CLONE_NEWIPC], EPERM),
    call("unshare(CLONE_NEWCGROUP)", 272, &[CLONE_NEWCGROUP], EPERM),
    call("unshare(CLONE_NEWTIME)", 272, &[CLONE_NEWTIME], EPERM),
    call(
        "clone(CLONE_NEWUSER)",
        56,
        &[CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWNET)",
        56,
        &[CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWNS)",
        56,
        &[CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWPID)",
        56,
        &[CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWUTS)",
        56,
        &[CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWIPC)",
        56,
        &[CLONE_NEWIPC | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWCGROUP)",
        56,
        &[CLONE_NEWCGROUP | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    call(
        "clone(CLONE_NEWUSER, high bits set)",
        56,
        &[HIGH | CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
        EPERM,
    ),
    // Personas other than the default, the query and the ones Docker allows.
    call("personality(ADDR_NO_RANDOMIZE)", 135, &[0x0040000], EPERM),
    call("personality(READ_IMPLIES_EXEC)", 135, &[0x0400000], EPERM),
    call("personality(MMAP_PAGE_ZERO)", 135, &[0x0100000], EPERM),
    call("personality(ADDR_COMPAT_LAYOUT)", 135, &[0x0200000], EPERM),
    call("personality(PER_BSD)", 135, &[0x0006], EPERM),
    call(
        "personality(READ_IMPLIES_EXEC, high bits set)",
        135,
        &[HIGH | 0x0400000],
        EPERM,
    ),
    // Terminal input injection and console control.
    call("ioctl(TIOCSTI)", 16, &[0, TIOCSTI, 0], EPERM),
    call("ioctl(TIOCLINUX)", 16, &[0, TIOCLINUX, 0], EPERM),
    call(
        "ioctl(TIOCSTI, high bits set)",
        16,
        &[0, HIGH | TIOCSTI, 0],
        EPERM,
    ),
    call(
        "ioctl(TIOCLINUX, high bits set)",
        16,
        &[0, HIGH | TIOCLINUX, 0],
        EPERM,
    ),
    // Socket families past the eBPF wall (the cgroup hook sees only IPv4 and IPv6).
    call(
        "socket(AF_VSOCK)",
        41,
        &[AF_VSOCK, SOCK_STREAM, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socket(AF_PACKET)",
        41,
        &[AF_PACKET, SOCK_RAW, 0],
        EAFNOSUPPORT,
    ),
    call("socket(AF_XDP)", 41, &[AF_XDP, SOCK_RAW, 0], EAFNOSUPPORT),
    call(
        "socketpair(AF_VSOCK)",
        53,
        &[AF_VSOCK, SOCK_STREAM, 0, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socketpair(AF_PACKET)",
        53,
        &[AF_PACKET, SOCK_RAW, 0, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socketpair(AF_XDP)",
        53,
        &[AF_XDP, SOCK_RAW, 0, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socketpair(AF_INET)",
        53,
        &[AF_INET, SOCK_STREAM, 0, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socketpair(AF_NETLINK)",
        53,
        &[AF_NETLINK, SOCK_RAW, 0, 0],
        EAFNOSUPPORT,
    ),
    call(
        "socketpair(AF_VSOCK, high bits set)",
        53,
        &[HIGH | AF_VSOCK, SOCK_STREAM, 0, 0],
        EAFNOSUPPORT,
    ),
];

const NOT_FD: u64 = u32::MAX as u64;

/// Calls the table answers with ENOSYS, made as they are: without the filter the kernel would
/// answer these arguments with another errno (EFAULT, EBADF, EINVAL), or has no such call.
const NOT_THERE: &[Call] = &[
    // Callers fall back to another call.
    call("clone3", 435, &[0, 64], ENOSYS),
    call("io_uring_setup", 425, &[1, 0], ENOSYS),
    call("io_uring_enter", 426, &[NOT_FD, 0, 0, 0, 0, 0], ENOSYS),
    call("io_uring_register", 427, &[NOT_FD, 0, 0, 0], ENOSYS),
    // Obsolete calls, as on kernels without them.
    call("uselib", 134, &[0], ENOSYS),
    call("ustat", 136, &[0, 0], ENOSYS),
    call("sysfs", 139, &[1, 0], ENOSYS),
    call("_sysctl", 156, &[0], ENOSYS),
    call("create_module", 174, &[0, 0], ENOSYS),
    call("get_kernel_syms", 177, &[0], ENOSYS),
    call("query_module", 178, &[0, 0, 0, 0, 0], ENOSYS),
    call("nfsservctl", 180, &[0, 0, 0], ENOSYS),
    call("lookup_dcookie", 212, &[0, 0, 0], ENOSYS),
    // Calls the table does not name.
    call("cachestat", 451, &[NOT_FD, 0, 0, 0], ENOSYS),
    call("statmount", 457, &[0, 0, 0, 0], ENOSYS),
    call("listmount", 458, &[0, 0, 0, 0], ENOSYS),
    call("lsm_list_modules", 461, &[0, 0, 0], ENOSYS),
    // The x32 numbers of a refused call and of an allowed one.
    call("x32 keyctl", 0x4000_0000 | 250, &[0, 0, 0, 0, 0], ENOSYS),
    call("x32 getpid", 0x4000_0000 | 39, &[], ENOSYS),
];

/// Ordinary calls that keep working (names as the probe reports them).
const ALLOWED: &[(&str, &str)] = &[
    ("socketpair(AF_UNIX, SOCK_STREAM)", "ok"),
    ("socketpair(AF_UNIX, SOCK_DGRAM)", "ok"),
    ("personality(0xffffffff)", "ok"),
    ("personality(PER_LINUX)", "ok"),
    ("personality(PER_LINUX32)", "ok"),
    ("personality(UNAME26)", "ok"),
    ("personality(PER_LINUX32|UNAME26)", "ok"),
    ("thread", "ok"),
    ("fork", "ok"),
    ("ioctl(FIONREAD)", "ok"),
    // The kernel's own answer: the call reached it.
    ("ioctl(TCGETS) on a pipe", "ENOTTY"),
    ("ptrace(PTRACE_TRACEME)", "ok"),
    ("memfd_create", "ok"),
    ("fchmodat2", "ok"),
    ("futex_wake", "ok"),
    ("seccomp (a filter of the program's own)", "ok"),
];

fn as_json(calls: &[Call]) -> Value {
    calls
        .iter()
        .map(|c| json!([c.name, c.number, c.args]))
        .collect()
}

/// Runs the probe in a sandbox with `request` and returns the sandbox's output and its answer.
fn probe(request: Value) -> (Finished, Value) {
    let finished = Sandbox::new()
        .timeout("60s")
        .run([PYTHON, "-c", PROBE, &request.to_string()]);
    assert_eq!(finished.code(), 0, "the probe ran: {}", finished.describe());
    let line = finished
        .stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("the probe printed its answer: {}", finished.describe()));
    let answer: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the probe's answer is JSON ({e}): {line}"));
    (finished, answer)
}

/// Asserts `section` of `answer` holds `expected` for every name, listing all mismatches.
fn assert_section(answer: &Value, section: &str, expected: &[(&str, &str)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(name, want)| {
            let got = answer[section][name].as_str();
            (got != Some(want)).then(|| format!("  {name}: expected {want}, got {got:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{section} calls:\n{}\n--- answer ---\n{answer}",
        wrong.join("\n")
    );
}

fn expectations(calls: &[Call]) -> Vec<(&str, &str)> {
    calls.iter().map(|c| (c.name, c.expected)).collect()
}

#[test]
fn the_filter_itself_refuses_every_call_of_its_table() {
    let _lock = SuiteLock::shared();
    let (_, answer) = probe(json!({
        "marked": as_json(REFUSED),
        "plain": as_json(NOT_THERE),
    }));
    assert_eq!(
        answer["marked"]["marker filter"], "ok",
        "the probe stacked its marker filter: {answer}"
    );
    assert_section(&answer, "marked", &expectations(REFUSED));
    assert_section(&answer, "plain", &expectations(NOT_THERE));
}

#[test]
fn a_32_bit_system_call_kills_the_process() {
    let _lock = SuiteLock::shared();
    let (_, answer) = probe(json!({ "i386": true }));
    // The table is written for x86-64 numbers; the i386 entry (int 0x80) has other ones.
    assert_section(&answer, "i386", &[("getpid", "killed-SIGSYS")]);
}

#[test]
fn ordinary_calls_keep_working_under_the_filter() {
    let _lock = SuiteLock::shared();
    let (_, answer) = probe(json!({ "allowed": true }));
    assert_section(&answer, "allowed", ALLOWED);
}

/// The uids that hold kernel keys right now (`/proc/key-users`: `<uid>: <usage> ...`).
fn key_users() -> Vec<u32> {
    fs::read_to_string("/proc/key-users")
        .expect("read /proc/key-users")
        .lines()
        .filter_map(|line| line.trim().split(':').next()?.trim().parse().ok())
        .collect()
}

/// Best effort, for a broken filter only: invalidates every key `uid` left behind (found in
/// its own view of `/proc/keys`: naming its keyring with a special id would create it anew),
/// so the kernel collects them.
fn clear_keys_of(uid: u32) {
    const INVALIDATE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None)
for line in open("/proc/keys"):
    fields = line.split()
    if int(fields[5]) == os.getuid():
        libc.syscall(250, 21, int(fields[0], 16))  # KEYCTL_INVALIDATE
"#;
    let _ = Command::new(PYTHON)
        .args(["-c", INVALIDATE])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output();
}

#[test]
fn kernel_keyrings_are_refused_and_leave_nothing_for_the_next_execution() {
    let _lock = SuiteLock::shared();
    let (_, answer) = probe(json!({ "keys": true }));
    let uid = answer["uid"].as_u64().expect("the probe's uid") as u32;
    let holders = key_users();
    if holders.contains(&uid) {
        clear_keys_of(uid);
    }
    assert_section(
        &answer,
        "keys",
        &[
            ("add_key", EPERM),
            ("keyctl(KEYCTL_GET_KEYRING_ID, user keyring, create)", EPERM),
            ("request_key", EPERM),
        ],
    );
    assert!(
        !holders.contains(&uid),
        "uid {uid} of the execution holds kernel keys after it ended (/proc/key-users: {holders:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// TIOCSTI into the caller's terminal

/// Pushes a command line into its stdin's terminal, one byte at a time.
const INJECT_PY: &str = r#"
import errno, fcntl, os, termios
print("tty", "yes" if os.isatty(0) else "no", flush=True)
outcome = "ok"
for byte in b"echo tollgate-injected\n":
    try:
        fcntl.ioctl(0, termios.TIOCSTI, bytes([byte]))
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
        break
print("tiocsti", outcome, flush=True)
"#;

/// The caller's shell: leads a session whose controlling terminal is its stdin (the pty),
/// runs tollgate (argv[1], JSON) in it, takes the terminal back when tollgate ends, and
/// reports what is waiting to be read from it: what the shell would run next.
const CALLER_PY: &str = r#"
import fcntl, json, os, signal, sys, termios
argv = json.loads(sys.argv[1])
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status = os.waitpid(pid, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
os.tcsetpgrp(0, os.getpgrp())
waiting = int.from_bytes(fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0"), "little")
os.set_blocking(0, False)
try:
    typed = os.read(0, 4096).decode(errors="replace")
except BlockingIOError:
    typed = ""
print("caller", json.dumps({"tollgate": os.waitstatus_to_exitcode(status), "waiting": waiting,
                           "typed": typed}), flush=True)
"#;

#[test]
fn tiocsti_cannot_type_into_the_callers_terminal() {
    let _lock = SuiteLock::shared();
    let (master, slave) = tollgate_tests::sandbox::open_pty();
    let tollgate = Sandbox::new()
        .timeout("60s")
        .command([PYTHON, "-c", INJECT_PY]);
    let argv: Vec<String> = std::iter::once(tollgate.get_program())
        .chain(tollgate.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut caller = Command::new(PYTHON);
    caller
        .args(["-c", CALLER_PY, &json!(argv).to_string()])
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in tollgate.get_envs() {
        match value {
            Some(value) => caller.env(key, value),
            None => caller.env_remove(key),
        };
    }
    let child = caller.spawn().expect("spawn the caller's shell");
    let (done, finished) = mpsc::channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(HANG_LIMIT) {
        Ok(output) => output.expect("the caller's shell ran"),
        Err(_) => {
            // SAFETY: kill(2) on the child this test spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the caller's shell hung for more than {HANG_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let describe = format!(
        "--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let caller: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("caller "))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the caller's shell reported: {describe}"));
    assert_eq!(caller["tollgate"], 0, "tollgate ran the probe: {describe}");
    assert!(
        stdout.lines().any(|l| l == "tiocsti EPERM"),
        "TIOCSTI is refused with EPERM: {describe}"
    );
    assert_eq!(
        (caller["waiting"].as_u64(), caller["typed"].as_str()),
        (Some(0), Some("")),
        "nothing the sandbox typed waits in the caller's terminal: {describe}"
    );
    // And nothing was echoed to the terminal's other end (the caller's screen).
    // SAFETY: fcntl on a descriptor this test owns.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut screen = Vec::new();
    let _ = fs::File::from(master).read_to_end(&mut screen);
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        !screen.contains("tollgate-injected"),
        "the injected line reached the caller's screen: {screen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Real programs under the filter

/// Each workload prints `workload <name> ok` when it did its job.
const WORKLOADS_SH: &str = r#"
cd /tmp
check() { name=$1; shift; if "$@" >/tmp/out 2>&1; then echo "workload $name ok"; else echo "workload $name failed: $(head -c 400 /tmp/out)"; fi; }
check bash /usr/bin/bash -c 'x=$(echo hi | tr a-z A-Z); [ "$x" = HI ]'
check coreutils /usr/bin/bash -c 'seq 1 1000 | sort -rn | head -1 | grep -qx 1000 && ls -la /tmp /usr/bin >/dev/null && mkdir -p d && cp /etc/passwd d/ && tar -czf d.tgz d && rm -r d'
check python /usr/bin/python3 -c 'import concurrent.futures as f, subprocess, ssl, sqlite3, json
with f.ProcessPoolExecutor(2) as p: assert sum(p.map(abs, [-1, -2])) == 3
with f.ThreadPoolExecutor(4) as p: assert list(p.map(str, [1])) == ["1"]
subprocess.run(["/usr/bin/true"], check=True)
sqlite3.connect(":memory:").execute("select 1")'
check pip /usr/bin/python3 -m pip --version
check pip-list /usr/bin/python3 -m pip list --disable-pip-version-check
check node /usr/bin/node -e 'const {Worker} = require("worker_threads");
const {execFileSync} = require("child_process");
require("fs").writeFileSync("/tmp/n.txt", "x");
if (execFileSync("/usr/bin/cat", ["/tmp/n.txt"]).toString() !== "x") process.exit(1);
new Worker("require(\"worker_threads\").parentPort.postMessage(2)", {eval: true})
  .on("message", (m) => process.exit(m === 2 ? 0 : 1));'
check go /usr/local/bin/docker --version
check git /usr/bin/bash -c 'g=/usr/local/bin/git; $g init -q repo && cd repo && echo a > a && $g add a && $g -c user.name=t -c user.email=t@example.com commit -qm one && $g log --oneline | grep -q one'
check curl /usr/bin/curl --version
"#;

#[test]
fn real_programs_run_under_the_filter() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new()
        .timeout("120s")
        .run(["/usr/bin/bash", "-c", WORKLOADS_SH]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let wrong: Vec<&str> = [
        "bash",
        "coreutils",
        "python",
        "pip",
        "pip-list",
        "node",
        "go",
        "git",
        "curl",
    ]
    .into_iter()
    .filter(|name| {
        !finished
            .stdout
            .lines()
            .any(|l| l == format!("workload {name} ok"))
    })
    .collect();
    assert!(
        wrong.is_empty(),
        "these workloads failed under the filter: {wrong:?}\n{}",
        finished.describe()
    );
}
