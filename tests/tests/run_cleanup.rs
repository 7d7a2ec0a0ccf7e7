//! What dead supervisors leave, and how it goes away: `tollgate gc` (and every `tollgate run`
//! at start) removes stale execution cgroups, killing what still runs in them; a supervisor
//! killed with SIGKILL leaves no sandbox with network access.
//!
//! Needs root. The SIGKILL test keeps the sandbox in tollgate's route-less namespace: its
//! outbound attempts can only fail locally.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{
        execution_cgroup, execution_id_of, executions_dir, is_alive, output, process_stat,
        shared_dir, signal, wait_dead, Finished, Running, Sandbox, HANG_LIMIT, NETWORK_POLICY,
        PYTHON,
    },
    tollgate, Scratch,
};

/// A pid that is certainly not running now (a child we started and reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn random_hex() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:016x}",
        nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id())
    )
}

/// A stale execution cgroup (its supervisor is gone) holding a live `sleep`.
struct StaleExecution {
    path: PathBuf,
    sleeper: std::process::Child,
    sleeper_start: u64,
}

impl StaleExecution {
    fn create() -> Self {
        let id = format!("{}-1-{}", dead_pid(), random_hex());
        fs::create_dir_all(executions_dir()).unwrap();
        let path = execution_cgroup(&id);
        fs::create_dir(&path).unwrap();
        let sleeper = Command::new("/bin/sleep")
            .arg("100")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        fs::write(path.join("cgroup.procs"), sleeper.id().to_string())
            .expect("move the sleeper into the stale cgroup");
        let (_, sleeper_start) = process_stat(sleeper.id()).unwrap();
        StaleExecution {
            path,
            sleeper,
            sleeper_start,
        }
    }

    fn assert_reaped(mut self, by: &str) {
        assert!(
            wait_dead(
                self.sleeper.id(),
                self.sleeper_start,
                Duration::from_secs(10)
            ),
            "{by}: the process in the stale cgroup survived"
        );
        let _ = self.sleeper.wait();
        assert!(
            !self.path.exists(),
            "{by}: the stale cgroup {} is still there",
            self.path.display()
        );
    }
}

impl Drop for StaleExecution {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = fs::remove_dir(&self.path);
    }
}

fn gc() -> Finished {
    output(tollgate().arg("gc"), Some(b""), HANG_LIMIT)
}

#[test]
fn gc_removes_stale_cgroups_kills_their_processes_and_spares_live_ones() {
    // Exclusive for the same reason as `run_reaps_stale_cgroups_at_start`.
    let _lock = SuiteLock::exclusive();
    let stale = StaleExecution::create();
    // A cgroup whose owner (this test process, with its real start time) is alive.
    let me = std::process::id();
    let (_, my_start) = process_stat(me).unwrap();
    let live = execution_cgroup(&format!("{me}-{my_start}-{}", random_hex()));
    fs::create_dir(&live).unwrap();

    let finished = gc();
    let live_survived = live.exists();
    let _ = fs::remove_dir(&live);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(live_survived, "gc removed the cgroup of a live supervisor");
    stale.assert_reaped("tollgate gc");
}

#[test]
fn run_reaps_stale_cgroups_at_start() {
    // Exclusive: a gc in a concurrent test could remove the stale cgroup between its mkdir
    // and the move of its process (cgroup v2 cannot rename a directory into place).
    let _lock = SuiteLock::exclusive();
    let stale = StaleExecution::create();
    let finished = Sandbox::new().run(["/bin/true"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    stale.assert_reaped("tollgate run");
}

/// Runs in the sandbox: forks a grandchild in its own session (no PDEATHSIG, ignores the
/// usual signals, stdio on /dev/null); then both keep trying the proxy and an outside
/// address, logging each attempt with a timestamp.
const SURVIVOR_PY: &str = r#"
import os, signal, socket, sys, time

log_dir = sys.argv[1]
proxy = os.environ["HTTP_PROXY"][len("http://"):].rstrip("/")
host, port = proxy.rsplit(":", 1)

def attempt(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(addr)
        return "OK"
    except OSError as e:
        return "ERR%s" % (e.errno if e.errno is not None else "-timeout")
    finally:
        s.close()

def keep_trying(name):
    deadline = time.time() + 60
    while time.time() < deadline:
        line = "%f proxy=%s out=%s\n" % (
            time.time(), attempt((host, int(port))), attempt(("10.0.0.1", 80)))
        with open(os.path.join(log_dir, name), "a") as f:
            f.write(line)
        time.sleep(0.05)
    os._exit(0)

pid = os.fork()
if pid == 0:
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    keep_trying("grandchild.log")
while not os.path.exists(os.path.join(log_dir, "grandchild.log")):
    time.sleep(0.01)
print("READY %d %d" % (os.getpid(), pid), flush=True)
keep_trying("child.log")
"#;

/// Runs `tollgate gc` when dropped, so a failed assertion leaves nothing running.
struct GcOnDrop;

impl Drop for GcOnDrop {
    fn drop(&mut self) {
        let _ = gc();
    }
}

/// Attempts logged after `since` (seconds since the epoch).
fn attempts_after(log: &std::path::Path, since: f64) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            line.split(' ')
                .next()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|t| t > since)
        })
        .map(str::to_owned)
        .collect()
}

/// SIGKILL to the supervisor: the command dies with it (PDEATHSIG), whatever escaped that
/// (a grandchild in its own session) has no network (the listener and the eBPF links died
/// with the supervisor, and the namespace has no route), and the next `gc` reaps the rest.
#[test]
fn a_sigkilled_supervisor_leaves_no_sandbox_with_network_access() {
    // Alone: any other `tollgate run` starting meanwhile would reap the dead supervisor's
    // cgroup (as it should) and hide whether PDEATHSIG works.
    let _lock = SuiteLock::exclusive();
    let _gc = GcOnDrop;
    let scratch = Scratch::new("sigkill");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let script = scratch.file("survivor.py", SURVIVOR_PY);
    let logs = shared_dir(&scratch, "logs");
    let mut running = Running::spawn(&mut Sandbox::new().policy(&policy).timeout("90s").command([
        PYTHON,
        &script.display().to_string(),
        &logs.display().to_string(),
    ]));
    let ready = running.wait_line("READY", HANG_LIMIT);
    let pids: Vec<u32> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    // Pids in the sandbox's PID namespace; the host's are found from here.
    let (child, grandchild) = (
        tollgate_tests::sandbox::wait_host_pid(running.pid(), pids[0]),
        tollgate_tests::sandbox::wait_host_pid(running.pid(), pids[1]),
    );
    let (_, child_start) = process_stat(child).expect("child runs");
    let (_, grandchild_start) = process_stat(grandchild).expect("grandchild runs");
    let id = execution_id_of(grandchild).expect("the grandchild is in the execution cgroup");
    let before = fs::read_to_string(logs.join("grandchild.log")).unwrap_or_default();
    assert!(
        before.lines().any(|l| l.contains("proxy=OK")),
        "while the supervisor lives, the proxy is reachable: {before}"
    );

    signal(running.pid(), libc::SIGKILL);
    let killed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    running.wait_exit(HANG_LIMIT);
    let child_died_with_supervisor = wait_dead(child, child_start, Duration::from_secs(5));
    // Let any survivor try for a while.
    std::thread::sleep(Duration::from_millis(800));
    for name in ["child.log", "grandchild.log"] {
        for line in attempts_after(&logs.join(name), killed_at + 0.1) {
            assert!(
                !line.contains("=OK"),
                "after the supervisor died, the sandbox ({name}) still got through: {line}"
            );
            assert!(
                !line.contains("ERR-timeout"),
                "attempts fail at once, not by timing out ({name}): {line}"
            );
        }
    }
    if is_alive(grandchild, grandchild_start) {
        assert!(
            !attempts_after(&logs.join("grandchild.log"), killed_at + 0.1).is_empty(),
            "the surviving grandchild kept trying (and failing)"
        );
    }

    // The next gc reaps the cgroup and whatever still runs in it.
    let finished = gc();
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    for (name, pid, start) in [
        ("child", child, child_start),
        ("grandchild", grandchild, grandchild_start),
    ] {
        assert!(
            wait_dead(pid, start, Duration::from_secs(10)),
            "gc left the sandbox's {name} alive"
        );
    }
    assert!(
        !execution_cgroup(&id).exists(),
        "gc left the dead supervisor's cgroup {id}"
    );
    assert!(
        child_died_with_supervisor,
        "the sandboxed command (pid {child}) outlived its SIGKILLed supervisor: \
         PR_SET_PDEATHSIG did not take effect (the kernel clears it when the credentials \
         change, so it must be set after setresuid/setresgid)"
    );
}
