//! Escape attempts as a small Python program run *inside* the sandbox, and its results.
//!
//! The program takes one spec per argument (`kind:argument`), tries each, and prints one
//! machine-readable line per attempt:
//!
//! ```text
//! PROBE <spec> OK
//! PROBE <spec> ERR <errno> <ERRNO NAME> <stage>
//! INFO <key> <value>
//! DATA <spec> <hex of what a read returned>
//! ```
//!
//! It never hangs: sockets time out after 2 s (reported as errno -1, `TIMEOUT`) and
//! subprocesses after 5 s. With `--pause` it prints `READY` after the probes and waits for
//! stdin to close, so the test can inspect the live sandbox.

use std::{collections::BTreeMap, path::PathBuf};

use crate::Scratch;

/// The probe program (run with `/usr/bin/python3`).
pub const ESCAPE_PY: &str = r#"
import ctypes, errno, os, socket, subprocess, sys

TIMEOUT = 2.0
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
libc = ctypes.CDLL(None, use_errno=True)


class Fail(Exception):
    def __init__(self, stage, err, name=None):
        super().__init__(stage, err)
        self.stage, self.err = stage, err
        self.name = name or errno.errorcode.get(err, "TIMEOUT" if err == -1 else "E%d" % err)


def step(stage, fn):
    try:
        return fn()
    except TimeoutError:
        raise Fail(stage, -1)
    except OSError as e:
        raise Fail(stage, e.errno if e.errno is not None else -2)


def libc_call(stage, rc):
    if rc != 0:
        raise Fail(stage, ctypes.get_errno())


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def tcp(arg, proto=0):
    fam, host, port = parse_addr(arg)
    s = step("socket", lambda: socket.socket(fam, socket.SOCK_STREAM, proto))
    s.settimeout(TIMEOUT)
    try:
        step("connect", lambda: s.connect((host, port)))
    finally:
        s.close()


def udp(arg, proto=0):
    fam, host, port = parse_addr(arg)
    s = step("socket", lambda: socket.socket(fam, socket.SOCK_DGRAM, proto))
    s.settimeout(TIMEOUT)
    try:
        step("send", lambda: s.sendto(b"tollgate-escape-test", (host, port)))
    finally:
        s.close()


def udpconnect(arg):
    fam, host, port = parse_addr(arg)
    s = step("socket", lambda: socket.socket(fam, socket.SOCK_DGRAM))
    s.settimeout(TIMEOUT)
    try:
        step("connect", lambda: s.connect((host, port)))
        step("send", lambda: s.send(b"tollgate-escape-test"))
    finally:
        s.close()


def make_socket(family, kind, proto):
    step("socket", lambda: socket.socket(family, kind, proto)).close()


def unix(name):
    s = step("socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    s.settimeout(TIMEOUT)
    try:
        step("connect", lambda: s.connect("\0" + name))
    finally:
        s.close()


def loopback(_):
    server = step("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        step("bind", lambda: server.bind(("127.0.0.1", 0)))
        server.listen(1)
        tcp("127.0.0.1:%d" % server.getsockname()[1])
    finally:
        server.close()


def proxy(_):
    url = os.environ.get("HTTP_PROXY", "")
    if not url.startswith("http://"):
        raise Fail("env", -3, "NOPROXY")
    tcp(url[len("http://"):].rstrip("/"))


def unshare_bin(_):
    try:
        done = subprocess.run(["/usr/bin/unshare", "-n", "/bin/true"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        raise Fail("exit", -1)
    if done.returncode != 0:
        raise Fail("exit", done.returncode, "EXIT")


def unshare_net(_):
    libc_call("unshare", libc.unshare(CLONE_NEWNET))


def userns(arg):
    # A user namespace gives capabilities over new namespaces only; the new network namespace
    # has no route, and the cgroup programs still apply. Try it in a forked child.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = "OK"
        try:
            libc_call("unshare", libc.unshare(CLONE_NEWUSER | CLONE_NEWNET))
            tcp(arg)
        except Fail as f:
            result = "%s %d %s" % (f.stage, f.err, f.name)
        except BaseException as e:
            result = "crash -4 %s" % type(e).__name__
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 256)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = data.decode()
    if text != "OK":
        stage, err, name = text.split(" ")
        raise Fail(stage, int(err), name)


def in_child(fn, timeout):
    # Runs fn in a forked child (so a blocking library call cannot hang the probes) and
    # re-raises its Fail here; a child that takes longer than `timeout` is a timeout.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = "OK"
        try:
            fn()
        except Fail as f:
            result = "%s %d %s" % (f.stage, f.err, f.name)
        except BaseException as e:
            result = "crash -4 %s" % type(e).__name__
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    import select
    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        raise Fail("wait", -1)
    data = os.read(r, 256)
    os.close(r)
    os.waitpid(pid, 0)
    text = data.decode()
    if text != "OK":
        stage, err, name = text.split(" ")
        raise Fail(stage, int(err), name)


def dns(name):
    def lookup():
        try:
            socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise Fail("resolve", e.errno, "EAI%d" % e.errno)
    in_child(lookup, 8)


def lsfd(arg):
    step("listdir", lambda: os.listdir("/proc/%d/fd" % target_pid(arg)))


def ptrace(arg):
    PTRACE_ATTACH = 16
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc_call("ptrace", libc.ptrace(PTRACE_ATTACH, target_pid(arg), None, None))


def signal0(arg):
    # Signal 0: only the permission check, nothing is delivered.
    step("kill", lambda: os.kill(target_pid(arg), 0))


def target_pid(arg):
    return os.getppid() if arg == "ppid" else int(arg)


def setns(arg):
    path = "/proc/%d/ns/net" % target_pid(arg) if not arg.startswith("/") else arg
    fd = step("open", lambda: os.open(path, os.O_RDONLY))
    try:
        libc_call("setns", libc.setns(fd, CLONE_NEWNET))
    finally:
        os.close(fd)


def own_cgroup_dir():
    with open("/proc/self/cgroup") as f:
        rel = [l.strip()[3:] for l in f if l.startswith("0::")][0]
    return CGROUP_MOUNT + rel


def cgroup_move(path):
    fd = step("open", lambda: os.open(path, os.O_WRONLY))
    try:
        step("write", lambda: os.write(fd, str(os.getpid()).encode()))
    finally:
        os.close(fd)


def mkdir(arg):
    path = own_cgroup_dir() + "/escape" if arg == "own" else arg
    step("mkdir", lambda: os.mkdir(path))


def read(spec, path):
    fd = step("open", lambda: os.open(path, os.O_RDONLY))
    try:
        data = step("read", lambda: os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    emit("DATA %s %s" % (spec, data.hex()))


PROBES = {
    "tcp": tcp,
    "udp": udp,
    "udpconnect": udpconnect,
    "mptcp": lambda a: tcp(a, 262),
    "udplite": lambda a: udp(a, 136),
    "packet": lambda _: make_socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)),
    "rawicmp": lambda _: make_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "rawicmp6": lambda _: make_socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    "ping": lambda _: make_socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    "unix": unix,
    "proxy": proxy,
    "loopback": loopback,
    "dns": dns,
    "lsfd": lsfd,
    "ptrace": ptrace,
    "signal0": signal0,
    "unshare-bin": unshare_bin,
    "unshare": unshare_net,
    "userns": userns,
    "setns": setns,
    "cgroup-move": cgroup_move,
    "mkdir": mkdir,
}


def run(spec):
    kind, _, arg = spec.partition(":")
    try:
        if kind == "read":
            read(spec, arg)
        elif kind == "environ":
            if arg == "tollgate":
                # Every supervisor this process can see, by command name.
                found = False
                for entry in os.listdir("/proc"):
                    if not entry.isdigit():
                        continue
                    try:
                        with open("/proc/%s/comm" % entry) as f:
                            comm = f.read().strip()
                    except OSError:
                        continue
                    if comm == "tollgate":
                        found = True
                        run("environ:%s" % entry)
                if not found:
                    emit("PROBE %s ERR -5 NOTFOUND scan" % spec)
                return
            read(spec, "/proc/%d/environ" % target_pid(arg))
        else:
            PROBES[kind](arg)
        emit("PROBE %s OK" % spec)
    except Fail as f:
        emit("PROBE %s ERR %d %s %s" % (spec, f.err, f.name, f.stage))
    except Exception as e:
        emit("PROBE %s ERR -4 CRASH %s" % (spec, type(e).__name__))


args = sys.argv[1:]
pause = "--pause" in args
args = [a for a in args if a != "--pause"]
CGROUP_MOUNT = ""
if args and args[0].startswith("--cgroup-mount="):
    CGROUP_MOUNT = args.pop(0).split("=", 1)[1]

fds = []
for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
    try:
        fds.append("%d=%s" % (fd, os.readlink("/proc/self/fd/%d" % fd)))
    except OSError:
        pass
emit("INFO fds " + ",".join(fds))
emit("INFO pid %d" % os.getpid())
emit("INFO ppid %d" % os.getppid())
emit("INFO uid %d %d" % (os.getuid(), os.getgid()))
emit("INFO netns " + os.readlink("/proc/self/ns/net"))
emit("INFO proxy " + os.environ.get("HTTP_PROXY", "-"))
emit("INFO ifaces " + ",".join(sorted(name for _, name in socket.if_nameindex())))
with open("/proc/self/cgroup") as f:
    emit("INFO cgroup-before " + [l.strip()[3:] for l in f if l.startswith("0::")][0])
for spec in args:
    run(spec)
with open("/proc/self/cgroup") as f:
    emit("INFO cgroup-after " + [l.strip()[3:] for l in f if l.startswith("0::")][0])
if pause:
    emit("READY")
    sys.stdin.read()
emit("DONE")
"#;

/// Writes the probe program into a scratch dir (readable by the sandbox user).
pub fn write_escape_script(scratch: &Scratch) -> PathBuf {
    scratch.file("escape.py", ESCAPE_PY)
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt succeeded.
    Ok,
    /// It failed with `errno` (negative: `-1` timeout, others harness-specific) at `stage`.
    Err {
        errno: i32,
        name: String,
        stage: String,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    pub fn errno(&self) -> Option<i32> {
        match self {
            Outcome::Ok => None,
            Outcome::Err { errno, .. } => Some(*errno),
        }
    }

    pub fn stage(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Err { stage, .. } => Some(stage),
        }
    }
}

/// Everything the probe program printed, parsed.
#[derive(Debug, Default)]
pub struct ProbeReport {
    /// Outcome of each probe, by spec (`environ:tollgate` expands to `environ:<pid>`).
    pub probes: BTreeMap<String, Outcome>,
    /// `INFO` lines, by key.
    pub info: BTreeMap<String, String>,
    /// Bytes a successful read returned, by spec.
    pub data: BTreeMap<String, Vec<u8>>,
    /// Whether the program ran to its end.
    pub done: bool,
}

impl ProbeReport {
    pub fn parse(stdout: &str) -> Self {
        let mut report = ProbeReport::default();
        for line in stdout.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("PROBE") => {
                    let spec = words.next().unwrap_or_default().to_owned();
                    let outcome = match words.next() {
                        Some("OK") => Outcome::Ok,
                        _ => Outcome::Err {
                            errno: words.next().and_then(|e| e.parse().ok()).unwrap_or(-9),
                            name: words.next().unwrap_or_default().to_owned(),
                            stage: words.next().unwrap_or_default().to_owned(),
                        },
                    };
                    report.probes.insert(spec, outcome);
                }
                Some("INFO") => {
                    let key = words.next().unwrap_or_default().to_owned();
                    report.info.insert(key, words.collect::<Vec<_>>().join(" "));
                }
                Some("DATA") => {
                    let spec = words.next().unwrap_or_default().to_owned();
                    let hex = words.next().unwrap_or_default();
                    let bytes = (0..hex.len() / 2)
                        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect();
                    report.data.insert(spec, bytes);
                }
                Some("DONE") => report.done = true,
                _ => {}
            }
        }
        report
    }

    /// The outcome of `spec`; panics when the program did not report it.
    pub fn outcome(&self, spec: &str) -> &Outcome {
        self.probes
            .get(spec)
            .unwrap_or_else(|| panic!("probe {spec} did not report; got {:#?}", self.probes))
    }

    /// An `INFO` value; panics when missing.
    pub fn info(&self, key: &str) -> &str {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("no INFO {key}; got {:#?}", self.info))
    }
}
