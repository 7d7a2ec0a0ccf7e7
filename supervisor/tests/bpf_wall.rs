//! The eBPF egress wall against real sockets: programs attached to a real cgroup, a real
//! child process (`/usr/bin/python3`) trying to get out, and the events it leaves behind.
//!
//! Needs root (creates cgroups, loads eBPF). Every child also runs in a fresh network
//! namespace with only `lo` up, so even a broken wall could not send a packet off the machine;
//! the wall's refusal is told apart by its errno: `EPERM`, where the namespace alone gives
//! `ENETUNREACH`.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::Duration,
};

use tollgate::sandbox::{
    bpf::{
        AddressFamily, BypassAttempt, BypassKind, EgressPrograms, ProgramsOrigin, Protocol,
        SocketType,
    },
    cgroup::{self, ExecutionCgroup},
};

/// Debian's interpreter: root's `python3` on PATH is a pyenv shim.
const PYTHON: &str = "/usr/bin/python3";
const EPERM: i64 = 1;
const ENETUNREACH: i64 = 101;

/// Prints one JSON line per probe: `{"probe": name, "errno": 0 or the errno}`.
const PROBE_PRELUDE: &str = r#"
import fcntl, json, socket, struct, sys

def probe(name, fn):
    try:
        fn()
        err = 0
    except OSError as e:
        err = e.errno
    print(json.dumps({"probe": name, "errno": err}), flush=True)

# Bring lo up (SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK | IFF_RUNNING) in the fresh namespace.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x8 | 0x40))
s.close()

def tcp(host, port, family=socket.AF_INET):
    def connect():
        c = socket.socket(family, socket.SOCK_STREAM)
        c.settimeout(2)
        try:
            c.connect((host, port))
        finally:
            c.close()
    return connect

def udp_sendto(host, port, family=socket.AF_INET):
    def send():
        u = socket.socket(family, socket.SOCK_DGRAM)
        try:
            u.sendto(b"x", (host, port))
        finally:
            u.close()
    return send

def make_socket(family, kind, proto):
    return lambda: socket.socket(family, kind, proto).close()
"#;

/// Every way out the wall must refuse, plus loopback it must allow.
const ESCAPE_PROBES: &str = r#"
# Without the wall, root in this namespace could open ping sockets: prove the wall refuses.
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 2147483647")

v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
v4.bind(("127.0.0.1", 0))
v4.listen(8)
v4_port = v4.getsockname()[1]
v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::1", 0))
v6.listen(8)
v6_port = v6.getsockname()[1]

probe("tcp 127.0.0.1", tcp("127.0.0.1", v4_port))
probe("tcp ::1", tcp("::1", v6_port, socket.AF_INET6))
probe("tcp ::ffff:127.0.0.1", tcp("::ffff:127.0.0.1", v4_port, socket.AF_INET6))
probe("udp 127.0.0.1", udp_sendto("127.0.0.1", v4_port))
probe("tcp 10.0.0.1:80", tcp("10.0.0.1", 80))
probe("tcp 192.0.2.1:443", tcp("192.0.2.1", 443))
probe("tcp [2001:db8::1]:443", tcp("2001:db8::1", 443, socket.AF_INET6))
probe("tcp [::ffff:10.0.0.1]:80", tcp("::ffff:10.0.0.1", 80, socket.AF_INET6))
probe("udp 10.0.0.53:53", udp_sendto("10.0.0.53", 53))

def fast_open():
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        c.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, ("198.51.100.9", 80))
    finally:
        c.close()
probe("tcp fast open 198.51.100.9:80", fast_open)
probe("raw icmp", make_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
probe("ping icmp", make_socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
"#;

/// Removes a cgroup directory made outside `ExecutionCgroup` (or leaked on purpose), even
/// when an assertion fails first.
struct CgroupDirGuard(PathBuf);

impl Drop for CgroupDirGuard {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..500 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Removes a test's private pin root on bpffs.
struct PinRootGuard(PathBuf);

impl PinRootGuard {
    fn new(test: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/tollgate-test-{test}-{}",
            std::process::id()
        )))
    }
}

impl Drop for PinRootGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn new_cgroup() -> ExecutionCgroup {
    ExecutionCgroup::create(&cgroup::new_execution_id().unwrap()).unwrap()
}

/// Spawns `program` inside `cgroup` and, if asked, a fresh network namespace.
///
/// The order in `pre_exec` is the one `tollgate run` needs: join the cgroup first (so every
/// socket the child ever makes is seen by the wall), then change namespaces.
fn spawn_in(cgroup: &ExecutionCgroup, new_netns: bool, program: &str, args: &[&str]) -> Child {
    let joiner = cgroup.joiner().unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook only makes async-signal-safe calls (write, unshare).
    unsafe {
        command.pre_exec(move || {
            joiner.join_current_process()?;
            if new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// Runs python probes in `cgroup` + a fresh netns; returns (child pid, probe name -> errno).
fn run_probes(cgroup: &ExecutionCgroup, probes: &str) -> (u32, BTreeMap<String, i64>) {
    let script = format!("{PROBE_PRELUDE}\n{probes}");
    let child = spawn_in(cgroup, true, PYTHON, &["-c", &script]);
    let pid = child.id();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "probe script failed: {status}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    let results = String::from_utf8_lossy(&stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                value["probe"].as_str().unwrap().to_owned(),
                value["errno"].as_i64().unwrap(),
            )
        })
        .collect();
    (pid, results)
}

fn attempt<'a>(events: &'a [BypassAttempt], kind: BypassKind, dest: &str) -> &'a BypassAttempt {
    let dest = dest.parse().unwrap();
    events
        .iter()
        .find(|e| e.kind == kind && e.destination == Some(dest))
        .unwrap_or_else(|| panic!("no {kind:?} event for {dest} in {events:#?}"))
}

#[test]
fn wall_refuses_every_destination_but_loopback_and_reports_each_attempt() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let cgroup = new_cgroup();
    let path = cgroup.path().to_path_buf();
    let id = cgroup.id();
    let mut wall = programs.attach(&cgroup).unwrap();
    assert!(programs.registered_cgroup_ids().contains(&id));

    let (pid, results) = run_probes(&cgroup, ESCAPE_PROBES);
    for allowed in [
        "tcp 127.0.0.1",
        "tcp ::1",
        "tcp ::ffff:127.0.0.1",
        "udp 127.0.0.1",
    ] {
        assert_eq!(results.get(allowed), Some(&0), "{allowed}: {results:?}");
    }
    for refused in [
        "tcp 10.0.0.1:80",
        "tcp 192.0.2.1:443",
        "tcp [2001:db8::1]:443",
        "tcp [::ffff:10.0.0.1]:80",
        "udp 10.0.0.53:53",
        "tcp fast open 198.51.100.9:80",
        "raw icmp",
        "ping icmp",
    ] {
        assert_eq!(results.get(refused), Some(&EPERM), "{refused}: {results:?}");
    }

    let events = wall.drain_events();
    assert_eq!(events.len(), 8, "{events:#?}");
    for event in &events {
        assert_eq!(event.pid, pid);
        assert!(event.comm.starts_with("python3"), "{event:?}");
        assert_eq!(event.cgroup_id, id);
    }
    for dest in ["10.0.0.1:80", "192.0.2.1:443", "198.51.100.9:80"] {
        let e = attempt(&events, BypassKind::Connect, dest);
        assert_eq!(
            (e.family, e.sock_type),
            (AddressFamily::Inet, SocketType::Stream)
        );
    }
    for dest in ["[2001:db8::1]:443", "[::ffff:10.0.0.1]:80"] {
        let e = attempt(&events, BypassKind::Connect, dest);
        assert_eq!(e.family, AddressFamily::Inet6);
    }
    let udp = attempt(&events, BypassKind::Sendmsg, "10.0.0.53:53");
    assert_eq!(
        (udp.family, udp.sock_type, udp.protocol),
        (AddressFamily::Inet, SocketType::Dgram, Protocol::Udp)
    );
    let sockets: Vec<_> = events
        .iter()
        .filter(|e| e.kind == BypassKind::SockCreate)
        .map(|e| (e.family, e.sock_type, e.protocol, e.destination))
        .collect();
    assert!(sockets.contains(&(AddressFamily::Inet, SocketType::Raw, Protocol::Icmp, None)));
    assert!(sockets.contains(&(AddressFamily::Inet, SocketType::Dgram, Protocol::Icmp, None)));
    let counters = wall.counters();
    assert_eq!((counters.denied, counters.dropped), (8, 0));

    let report = wall.detach();
    assert_eq!(
        (report.events.len(), report.denied, report.dropped),
        (0, 8, 0)
    );
    assert!(!programs.registered_cgroup_ids().contains(&id));

    // Links gone: the same cgroup no longer refuses; only the empty namespace stops it.
    let (_, results) = run_probes(&cgroup, r#"probe("tcp 10.0.0.1:80", tcp("10.0.0.1", 80))"#);
    assert_eq!(results.get("tcp 10.0.0.1:80"), Some(&ENETUNREACH));

    cgroup.kill_and_remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn concurrent_executions_each_get_only_their_own_events() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let first = new_cgroup();
    let second = new_cgroup();
    let mut first_wall = programs.attach(&first).unwrap();
    let mut second_wall = programs.attach(&second).unwrap();

    let (first_pid, first_results) = run_probes(&first, r#"probe("a", tcp("198.51.100.1", 1111))"#);
    let (second_pid, second_results) =
        run_probes(&second, r#"probe("b", udp_sendto("198.51.100.2", 2222))"#);
    assert_eq!(first_results.get("a"), Some(&EPERM));
    assert_eq!(second_results.get("b"), Some(&EPERM));

    let first_events = first_wall.drain_events();
    let second_events = second_wall.drain_events();
    assert_eq!(first_events.len(), 1, "{first_events:#?}");
    assert_eq!(second_events.len(), 1, "{second_events:#?}");
    assert_eq!(first_events[0].pid, first_pid);
    assert_eq!(
        first_events[0].destination,
        Some("198.51.100.1:1111".parse().unwrap())
    );
    assert_eq!(second_events[0].pid, second_pid);
    assert_eq!(second_events[0].kind, BypassKind::Sendmsg);

    assert!(first_wall.drain_events().is_empty());
    assert!(second_wall.drain_events().is_empty());
}

#[test]
fn events_can_be_awaited_on_the_ring_descriptor() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let cgroup = new_cgroup();
    let mut wall = programs.attach(&cgroup).unwrap();
    assert!(!wall.wait_for_events(Duration::from_millis(10)).unwrap());
    let child = spawn_in(
        &cgroup,
        true,
        PYTHON,
        &[
            "-c",
            "import socket\ntry:\n socket.socket().connect(('203.0.113.7', 9))\nexcept OSError: pass",
        ],
    );
    assert!(wall.wait_for_events(Duration::from_secs(10)).unwrap());
    let events = wall.drain_events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        events[0].destination,
        Some("203.0.113.7:9".parse().unwrap())
    );
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn second_load_reuses_the_pinned_programs() {
    let root = PinRootGuard::new("reuse");
    let first = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
    assert_eq!(first.origin(), ProgramsOrigin::Loaded);
    assert!(first.pin_dir().starts_with(&root.0));
    let second = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
    assert_eq!(second.origin(), ProgramsOrigin::Reused);
    assert_eq!(second.program_ids(), first.program_ids());

    // Reused programs work: attach them and get refused.
    let cgroup = new_cgroup();
    let mut wall = second.attach(&cgroup).unwrap();
    let (_, results) = run_probes(&cgroup, r#"probe("x", tcp("10.0.0.1", 80))"#);
    assert_eq!(results.get("x"), Some(&EPERM));
    assert_eq!(wall.drain_events().len(), 1);

    // Unpinned, the next call loads anew.
    second.unpin().unwrap();
    let third = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
    assert_eq!(third.origin(), ProgramsOrigin::Loaded);
    assert_ne!(third.program_ids(), first.program_ids());
}

#[test]
fn concurrent_first_loads_all_succeed_and_publish_one_pin_dir() {
    let root = PinRootGuard::new("race");
    let callers = 4;
    let barrier = Arc::new(Barrier::new(callers));
    let handles: Vec<_> = (0..callers)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let root = root.0.clone();
            thread::spawn(move || {
                barrier.wait();
                EgressPrograms::load_or_reuse_in(&root)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let programs: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert!(programs
        .iter()
        .any(|p| p.origin() == ProgramsOrigin::Loaded));

    let entries: Vec<String> = fs::read_dir(&root.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one published dir, no staging left: {entries:?}"
    );
    let mut pins: Vec<String> = fs::read_dir(programs[0].pin_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pins.sort();
    assert_eq!(
        pins,
        [
            "COUNTERS",
            "EVENT_RINGS",
            "EVENT_SLOTS",
            "connect4",
            "connect6",
            "sendmsg4",
            "sendmsg6",
            "slots",
            "sock_create",
        ]
    );

    let again = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
    assert_eq!(again.origin(), ProgramsOrigin::Reused);
    // Every caller's programs work, whichever set it ended up with.
    for programs in &programs {
        let cgroup = new_cgroup();
        let _wall = programs.attach(&cgroup).unwrap();
        let (_, results) = run_probes(&cgroup, r#"probe("x", tcp("10.0.0.1", 80))"#);
        assert_eq!(results.get("x"), Some(&EPERM));
    }
}

#[test]
fn kill_and_remove_kills_a_process_that_ignores_sigterm() {
    let cgroup = new_cgroup();
    let path = cgroup.path().to_path_buf();
    let mut child = spawn_in(
        &cgroup,
        false,
        PYTHON,
        &[
            "-c",
            "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    wait_for_ready(&mut child);
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(child.try_wait().unwrap(), None, "SIGTERM should be ignored");

    cgroup.kill_and_remove().unwrap();
    assert!(!path.exists());
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

fn wait_for_ready(child: &mut Child) {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
}

#[test]
fn gc_removes_cgroups_of_dead_supervisors_and_keeps_live_ones() {
    let mount = cgroup::cgroup2_mount().unwrap();
    // A supervisor that exited: its pid is gone.
    let mut exited = Command::new("/bin/true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let dead_id = format!("{dead_pid}-12345-{:016x}", u64::from(dead_pid) << 8 | 1);
    // A pid that was reused: alive, but not started when the id says.
    let reused_id = format!(
        "{}-1-{:016x}",
        std::process::id(),
        u64::from(dead_pid) << 8 | 2
    );
    let live = new_cgroup();

    let mut guards = Vec::new();
    let mut sleepers = Vec::new();
    for id in [&dead_id, &reused_id] {
        let stale = ExecutionCgroup::create_under(&mount, id).unwrap();
        guards.push(CgroupDirGuard(stale.path().to_path_buf()));
        let mut sleeper = spawn_in(
            &stale,
            false,
            PYTHON,
            &[
                "-c",
                "import time\nprint('ready', flush=True)\ntime.sleep(600)",
            ],
        );
        wait_for_ready(&mut sleeper);
        sleepers.push(sleeper);
        // The owner "dies" without tearing down.
        std::mem::forget(stale);
    }

    let report = cgroup::gc_stale().unwrap();
    for guard in &guards {
        assert!(report.removed.contains(&guard.0), "{report:#?}");
        assert!(!guard.0.exists());
    }
    assert!(
        report.live.contains(&live.path().to_path_buf()),
        "{report:#?}"
    );
    assert!(live.path().exists());
    for mut sleeper in sleepers {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}

#[test]
fn gc_removes_registrations_left_by_a_dead_supervisor() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let cgroup = new_cgroup();
    let id = cgroup.id();
    let wall = programs.attach(&cgroup).unwrap();
    // The supervisor "dies": its wall is never detached, only its cgroup goes (gc does that).
    std::mem::forget(wall);
    cgroup.kill_and_remove().unwrap();
    assert!(programs.registered_cgroup_ids().contains(&id));

    let removed = programs.gc_stale_registrations().unwrap();
    assert!(removed >= 1);
    assert!(!programs.registered_cgroup_ids().contains(&id));
}

#[test]
fn dropping_the_guards_tears_everything_down() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let path: PathBuf;
    let id;
    {
        let cgroup = new_cgroup();
        path = cgroup.path().to_path_buf();
        id = cgroup.id();
        let _wall = programs.attach(&cgroup).unwrap();
        let mut child = spawn_in(
            &cgroup,
            false,
            PYTHON,
            &[
                "-c",
                "import time\nprint('ready', flush=True)\ntime.sleep(600)",
            ],
        );
        wait_for_ready(&mut child);
        // Reaped after the cgroup is killed at the end of this scope.
        thread::spawn(move || child.wait());
    }
    assert!(!Path::new(&path).exists());
    assert!(!programs.registered_cgroup_ids().contains(&id));
}

/// Median of `samples` in milliseconds.
fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Checks that a second load reuses the pins (what keeps loading off the execution path) and
/// prints the per-execution costs side by side; timings are reported, never asserted. `TOLLGATE_BPF_BENCH_ROUNDS` (default 5) sets the
/// rounds; `scripts/bench-bpf.sh` runs it in release mode with more rounds and prints medians.
#[test]
fn a_second_load_reuses_the_pins_and_reports_costs() {
    use std::time::Instant;
    let rounds: usize = std::env::var("TOLLGATE_BPF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let root = PinRootGuard::new("bench");
    let mut cold = vec![];
    let mut reuse = vec![];
    let mut first_attach = vec![];
    let mut attach = vec![];
    let mut cgroups = vec![];
    for _ in 0..rounds {
        let start = Instant::now();
        let loaded = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
        cold.push(start.elapsed());
        assert_eq!(loaded.origin(), ProgramsOrigin::Loaded);
        drop(loaded);

        let start = Instant::now();
        let programs = EgressPrograms::load_or_reuse_in(&root.0).unwrap();
        reuse.push(start.elapsed());
        assert_eq!(programs.origin(), ProgramsOrigin::Reused);

        let start = Instant::now();
        let cgroup = new_cgroup();
        let created = start.elapsed();

        // A fresh pin set: slot 0 gets its ring now (once per slot per boot).
        let start = Instant::now();
        programs.attach(&cgroup).unwrap().detach();
        first_attach.push(start.elapsed());

        // The steady state of every later execution.
        let start = Instant::now();
        let report = programs.attach(&cgroup).unwrap().detach();
        attach.push(start.elapsed());
        assert_eq!(report.denied, 0);

        let start = Instant::now();
        cgroup.kill_and_remove().unwrap();
        cgroups.push(created + start.elapsed());

        programs.unpin().unwrap();
    }
    let cold = median_ms(cold);
    let reuse = median_ms(reuse);
    let first_attach = median_ms(first_attach);
    let attach = median_ms(attach);
    let cgroups = median_ms(cgroups);
    println!(
        "bpf-bench rounds={rounds} median_ms: cold_load_and_pin={cold:.3} \
         reuse_from_pin={reuse:.3} attach_and_detach={attach:.3} \
         first_attach_and_detach_on_a_new_slot={first_attach:.3} \
         cgroup_create_and_remove={cgroups:.3}"
    );
}

#[test]
fn a_reused_event_slot_does_not_leak_the_previous_executions_events() {
    let root = PinRootGuard::new("slots");
    let programs = EgressPrograms::load_or_reuse_in(&root.0).unwrap();

    let first = new_cgroup();
    let wall = programs.attach(&first).unwrap();
    let slot = wall.event_slot();
    let (_, results) = run_probes(&first, r#"probe("x", tcp("10.0.0.1", 80))"#);
    assert_eq!(results.get("x"), Some(&EPERM));
    // Torn down without reading: the event stays in the slot's ring.
    drop(wall);
    first.kill_and_remove().unwrap();

    let second = new_cgroup();
    // The freed slot is the lowest free one, but a child forked by a concurrent test holds a
    // copy of its lock until that child execs: retry until the slot comes back.
    let mut tries = 0;
    let mut wall = loop {
        let wall = programs.attach(&second).unwrap();
        if wall.event_slot() == slot {
            break wall;
        }
        drop(wall);
        tries += 1;
        assert!(tries < 200, "slot {slot} never came back");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(wall.drain_events().is_empty());
    let (_, results) = run_probes(&second, r#"probe("y", tcp("10.0.0.2", 81))"#);
    assert_eq!(results.get("y"), Some(&EPERM));
    let events = wall.drain_events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].destination, Some("10.0.0.2:81".parse().unwrap()));
    assert_eq!(events[0].cgroup_id, second.id());

    // Concurrent executions hold different slots.
    let third = new_cgroup();
    let other = programs.attach(&third).unwrap();
    assert_ne!(other.event_slot(), wall.event_slot());
}

#[test]
fn detaching_kills_what_still_runs_before_the_wall_opens() {
    let programs = EgressPrograms::load_or_reuse().unwrap();
    let cgroup = new_cgroup();
    let wall = programs.attach(&cgroup).unwrap();
    let mut sleeper = spawn_in(
        &cgroup,
        false,
        PYTHON,
        &[
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    wait_for_ready(&mut sleeper);

    wall.detach();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(
        cgroup.path().exists(),
        "the cgroup itself stays until kill_and_remove"
    );
    cgroup.kill_and_remove().unwrap();
}
