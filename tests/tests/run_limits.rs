//! Memory, CPU and process limits, on the real kernel: an execution that allocates past
//! `limits.memory` (anonymous memory, a memfd, a `/dev/shm` or `/tmp` file) is killed and
//! reported; a busy loop is held to `limits.cpu`; a fork loop stops at `limits.processes`;
//! flags can only lower what the policy allows; a limit the host cannot enforce stops the
//! run; and every cgroup of an execution, v1 and v2, is gone after every way it can end.
//!
//! The limits live in the execution's cgroups: cgroup v2 controllers on pure v2 hosts, the
//! v1 hierarchies on hybrid hosts like the one these tests were written on; the tests read
//! whichever this host has. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::{
    leaks::{v1_limit_mounts, v1_mount, SuiteLock},
    sandbox::FORK_UNTIL_REFUSED,
    sandbox::{
        cgroup2_mount, execution_cgroup, output, process_stat, read_json, shared_dir, signal,
        wait_dead, Finished, Running, Sandbox, HANG_LIMIT, PYTHON,
    },
    tollgate, Scratch,
};

/// A policy with only execution limits (`limits:` lines, indented).
fn policy(scratch: &Scratch, limits: &str) -> PathBuf {
    scratch.file(
        "policy.yaml",
        &format!("version: 1\nteam: limits\nlimits:\n{limits}"),
    )
}

/// `MemAvailable` of the host, in bytes.
fn mem_available() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .expect("MemAvailable in /proc/meminfo")
        * 1024
}

/// Samples `MemAvailable` as fast as it can until stopped; returns the lowest value seen.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl MemorySampler {
    fn start() -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut lowest = u64::MAX;
            while !flag.load(Ordering::Relaxed) {
                lowest = lowest.min(mem_available());
                thread::sleep(Duration::from_millis(1));
            }
            lowest
        });
        MemorySampler { stop, thread }
    }

    fn lowest(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// Allocates up to 2 GiB of anonymous memory, 32 MiB at a time, touching every page, and
/// says how far it got after each step.
const ALLOCATE_2_GIB: &str = r#"
chunks = []
for i in range(64):
    chunks.append(bytearray(32 << 20))
    print("allocated", (i + 1) * 32, flush=True)
print("all allocated", flush=True)
"#;

/// The number after the last `allocated` line: MiB the command held when it stopped.
fn last_allocated(stdout: &str) -> u64 {
    stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("allocated ")?.trim().parse().ok())
        .unwrap_or(0)
}

const MIB: u64 = 1 << 20;

fn assert_oom_killed(finished: &Finished, summary: &Value, limit: &str) {
    assert_eq!(finished.code(), 137, "{}", finished.describe());
    assert!(
        finished.stderr_lines().contains(
            &format!("tollgate: the command ran out of memory (limits.memory {limit})").as_str()
        ),
        "{}",
        finished.describe()
    );
    assert_eq!(summary["oom_killed"], true, "{summary}");
    assert_eq!(summary["exit_status"], 137, "{summary}");
    assert_eq!(summary["signal"], 9, "{summary}");
}

#[test]
fn memory_past_the_limit_kills_the_command_and_the_host_keeps_its_memory() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-memory");
    let policy = policy(&scratch, "  memory: 64MiB\n");
    let summary_path = scratch.output("summary.json");
    let baseline = mem_available();
    let sampler = MemorySampler::start();
    let finished =
        Sandbox::new()
            .policy(&policy)
            .summary(&summary_path)
            .run([PYTHON, "-c", ALLOCATE_2_GIB]);
    let lowest = sampler.lowest();
    let summary = read_json(&summary_path);
    assert_oom_killed(&finished, &summary, "64MiB");
    assert!(
        last_allocated(&finished.stdout) < 64,
        "the command held 64 MiB or more: {}",
        finished.describe()
    );
    let peak = summary["memory_peak_bytes"]
        .as_u64()
        .expect("memory_peak_bytes");
    assert!(
        peak <= 64 * MIB,
        "peak {peak} is above the limit: {summary}"
    );
    assert!(
        peak >= 32 * MIB,
        "peak {peak}: the command held 32 MiB at least: {summary}"
    );
    assert_eq!(summary["limits"]["memory_bytes"], 64 * MIB, "{summary}");
    // The command asked for 2 GiB; the host gave up at most the limit, plus whatever the
    // rest of the machine (other tests, builds) did meanwhile: well under what was asked.
    let dropped = baseline.saturating_sub(lowest);
    assert!(
        dropped < 512 * MIB,
        "MemAvailable dropped by {} MiB while a 64 MiB execution asked for 2 GiB",
        dropped / MIB
    );
}

#[test]
fn without_a_policy_the_memory_limit_is_one_gib() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-default");
    let summary_path = scratch.output("summary.json");
    let baseline = mem_available();
    let sampler = MemorySampler::start();
    let finished = Sandbox::new()
        .summary(&summary_path)
        .run([PYTHON, "-c", ALLOCATE_2_GIB]);
    let lowest = sampler.lowest();
    let summary = read_json(&summary_path);
    assert_oom_killed(&finished, &summary, "1GiB");
    assert!(
        last_allocated(&finished.stdout) < 1024,
        "{}",
        finished.describe()
    );
    let dropped = baseline.saturating_sub(lowest);
    assert!(
        dropped < 1536 * MIB,
        "MemAvailable dropped by {} MiB while a 1 GiB execution asked for 2 GiB",
        dropped / MIB
    );
}

/// Writes `total` MiB into a file (a memfd, or a path), 1 MiB at a time, saying how far it
/// got every 4 MiB.
fn fill_script(target: &str, total: u64) -> String {
    let open = match target {
        "memfd" => "fd = os.memfd_create('fill')".to_owned(),
        path => format!("fd = os.open({path:?}, os.O_WRONLY | os.O_CREAT, 0o600)"),
    };
    format!(
        "import os\n{open}\nchunk = b'x' * (1 << 20)\nfor i in range({total}):\n    \
         os.write(fd, chunk)\n    if (i + 1) % 4 == 0:\n        print('allocated', i + 1, \
         flush=True)\nprint('all written', flush=True)\n"
    )
}

#[test]
fn a_memfd_a_dev_shm_file_and_a_tmp_file_count_against_the_limit() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-files");
    // /dev/shm is 64 MiB: a 32 MiB limit is reached before the filesystem is full.
    for (target, limit, total) in [
        ("memfd", "32MiB", 256),
        ("/dev/shm/fill", "32MiB", 60),
        ("/tmp/fill", "32MiB", 256),
    ] {
        let summary_path = scratch.output(&format!("summary-{}.json", target.replace('/', "_")));
        let finished = Sandbox::new()
            .arg("--memory")
            .arg(limit)
            .summary(&summary_path)
            .run([PYTHON, "-c", &fill_script(target, total)]);
        let summary = read_json(&summary_path);
        assert_oom_killed(&finished, &summary, limit);
        assert!(
            !finished.stdout.contains("all written") && last_allocated(&finished.stdout) < 32,
            "{target}: the command wrote 32 MiB or more: {}",
            finished.describe()
        );
        assert!(
            summary["memory_peak_bytes"].as_u64().unwrap_or(u64::MAX) <= 32 * MIB,
            "{target}: {summary}"
        );
    }
}

#[test]
fn the_page_cache_the_execution_causes_is_charged_and_reclaimed_at_the_limit() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-cache");
    // A directory of the host's disk (the scratch root is shared with every sandbox).
    let dir = shared_dir(&scratch, "cache");
    let write = |file: &str, total: u64| {
        let path = dir.join(file);
        format!(
            "chunk = b'x' * (1 << 20)\nwith open({:?}, 'wb') as f:\n    for _ in \
             range({total}):\n        f.write(chunk)\nprint('written', flush=True)\n",
            path.display().to_string()
        )
    };
    // Below the limit, the file's pages are the execution's: its peak counts them.
    let summary_path = scratch.output("below.json");
    let below = Sandbox::new()
        .arg("--memory")
        .arg("256MiB")
        .summary(&summary_path)
        .run([PYTHON, "-c", &write("below", 96)]);
    assert_eq!(below.code(), 0, "{}", below.describe());
    let summary = read_json(&summary_path);
    let peak = summary["memory_peak_bytes"].as_u64().expect("peak");
    assert!(
        peak >= 96 * MIB,
        "96 MiB of page cache, peak {peak}: {summary}"
    );
    // Past it, clean and written-back pages are reclaimed: the write completes within the
    // limit and nothing is killed.
    let summary_path = scratch.output("past.json");
    let past = Sandbox::new()
        .arg("--memory")
        .arg("32MiB")
        .summary(&summary_path)
        .run([PYTHON, "-c", &write("past", 128)]);
    assert_eq!(past.code(), 0, "{}", past.describe());
    assert_eq!(past.stdout, "written\n");
    assert_eq!(
        fs::metadata(dir.join("past")).expect("the file").len(),
        128 * MIB
    );
    let summary = read_json(&summary_path);
    assert_eq!(summary["oom_killed"], false, "{summary}");
    let peak = summary["memory_peak_bytes"].as_u64().expect("peak");
    assert!(peak <= 32 * MIB, "peak {peak} above the limit: {summary}");
}

/// The execution cgroup directories of the running execution of supervisor `pid`: the one
/// in v2, then those in the v1 hierarchies (none on pure v2 hosts).
fn running_execution(pid: u32) -> (String, PathBuf) {
    let prefix = format!("{pid}-");
    let dir = cgroup2_mount().join("tollgate");
    let id = fs::read_dir(&dir)
        .expect("list the execution cgroups")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "no execution cgroup of supervisor {pid} in {}",
                dir.display()
            )
        });
    let path = execution_cgroup(&id);
    (id, path)
}

/// Reads an interface file of the execution `id` in the hierarchy of `controller`: its v1
/// cgroup where the host mounts one, else its v2 cgroup (`v2_name`).
fn knob(id: &str, controller: &str, v1_name: &str, v2_name: &str) -> String {
    let path = match v1_mount(controller) {
        Some(mount) => mount.join("tollgate").join(id).join(v1_name),
        None => execution_cgroup(id).join(v2_name),
    };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Prints `ready`, then waits for stdin to close before it does `then`.
fn ready_then(then: &str) -> String {
    format!("import os, sys, time\nprint('ready', flush=True)\nsys.stdin.read()\n{then}\n")
}

#[test]
fn the_execution_cgroups_carry_the_limits() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-knobs");
    let policy = policy(&scratch, "  memory: 256MiB\n  cpu: 1.5\n  processes: 64\n");
    let summary_path = scratch.output("summary.json");
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .policy(&policy)
            .summary(&summary_path)
            .arg("--memory")
            .arg("128MiB")
            .command([PYTHON, "-c", &ready_then("print('done')")]),
    );
    running.wait_line("ready", HANG_LIMIT);
    let (id, v2) = running_execution(running.pid());
    let memory = knob(&id, "memory", "memory.limit_in_bytes", "memory.max");
    let processes = knob(&id, "pids", "pids.max", "pids.max");
    let cpu = match v1_mount("cpu") {
        Some(_) => format!(
            "{} {}",
            knob(&id, "cpu", "cpu.cfs_quota_us", ""),
            knob(&id, "cpu", "cpu.cfs_period_us", "")
        ),
        None => knob(&id, "cpu", "", "cpu.max"),
    };
    // Every process of the execution is in each of its cgroups.
    let members = fs::read_to_string(v2.join("cgroup.procs")).expect("cgroup.procs");
    let v1_members: Vec<String> = v1_limit_mounts()
        .iter()
        .map(|mount| {
            fs::read_to_string(mount.join("tollgate").join(&id).join("cgroup.procs"))
                .expect("v1 cgroup.procs")
        })
        .collect();
    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(
        memory,
        (128 * MIB).to_string(),
        "--memory lowers limits.memory"
    );
    if let Some(mount) = v1_mount("memory") {
        let memsw = mount.join("tollgate").join(&id);
        assert!(!memsw.exists(), "the v1 cgroup is removed after the run");
    }
    assert_eq!(cpu, "150000 100000");
    assert_eq!(processes, "64");
    assert!(!members.trim().is_empty());
    for v1 in &v1_members {
        assert_eq!(v1, &members, "the v1 cgroups hold the same processes as v2");
    }
    let summary = read_json(&summary_path);
    assert_eq!(summary["limits"]["memory_bytes"], 128 * MIB, "{summary}");
    assert_eq!(summary["limits"]["cpu"], "1.5", "{summary}");
    assert_eq!(summary["limits"]["processes"], 64, "{summary}");
    let expected = if v1_mount("memory").is_some() {
        "cgroup v1"
    } else {
        "cgroup v2"
    };
    assert_eq!(
        summary["limits"]["enforced_by"]["memory"], expected,
        "{summary}"
    );
    assert_eq!(summary["oom_killed"], false, "{summary}");
}

/// Eight processes that each spin until they used 0.1 s of CPU: 0.8 s of work, wanting
/// every core of the host; then `done`, and it waits for stdin to close.
const EIGHT_BUSY_LOOPS: &str = r#"
import os, sys, time
children = []
for _ in range(8):
    pid = os.fork()
    if pid == 0:
        while time.process_time() < 0.1:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.read()
"#;

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn a_busy_loop_is_held_to_its_cpu_share() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-cpu");
    let policy = policy(&scratch, "  cpu: 0.5\n");
    let summary_path = scratch.output("summary.json");
    let mut running = Running::spawn(
        &mut Sandbox::new()
            .policy(&policy)
            .summary(&summary_path)
            .command([PYTHON, "-c", EIGHT_BUSY_LOOPS]),
    );
    running.wait_line("done", HANG_LIMIT);
    let (id, v2) = running_execution(running.pid());
    let (setting, bandwidth) = match v1_mount("cpu") {
        Some(_) => (
            format!(
                "{} {}",
                knob(&id, "cpu", "cpu.cfs_quota_us", ""),
                knob(&id, "cpu", "cpu.cfs_period_us", "")
            ),
            knob(&id, "cpu", "cpu.stat", ""),
        ),
        None => (
            knob(&id, "cpu", "", "cpu.max"),
            knob(&id, "cpu", "", "cpu.stat"),
        ),
    };
    let used_usec = keyed(
        &fs::read_to_string(v2.join("cpu.stat")).expect("cpu.stat"),
        "usage_usec",
    );
    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(
        setting, "50000 100000",
        "half a core: 50 ms of every 100 ms"
    );
    // The kernel's own accounts, not the clock: the quota was in force for `nr_periods`
    // periods (none at all without a limit), and in each the execution used at most its
    // 50 ms (plus a scheduler slice per core left over at the edges; two periods of slack).
    let periods = keyed(&bandwidth, "nr_periods");
    assert!(periods > 0, "no CPU bandwidth period ever ran: {bandwidth}");
    assert!(used_usec >= 800_000, "eight loops of 0.1 s: {used_usec} us");
    assert!(
        used_usec <= 50_000 * (periods + 2),
        "{used_usec} us of CPU in {periods} periods of 50 ms: {bandwidth}"
    );
    let summary = read_json(&summary_path);
    assert!(
        summary["cpu_time_ms"].as_u64().unwrap_or(0) >= 800,
        "{summary}"
    );
    assert!(summary["cpu_throttled_periods"].is_u64(), "{summary}");
    assert_eq!(summary["limits"]["cpu"], "0.5", "{summary}");
}

#[test]
fn a_fork_loop_stops_at_limits_processes() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-pids");
    let policy = policy(&scratch, "  processes: 16\n");
    let summary_path = scratch.output("summary.json");
    let finished = Sandbox::new().policy(&policy).summary(&summary_path).run([
        PYTHON,
        "-c",
        FORK_UNTIL_REFUSED,
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let words: Vec<&str> = finished.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{}", finished.describe());
    assert_eq!(words[2], "EAGAIN", "fork was refused: {}", finished.stdout);
    let made: u64 = words[1].parse().expect("count");
    assert!(made < 16, "at most 16 tasks with the parent: {made}");
    let summary = read_json(&summary_path);
    let peak = summary["tasks_peak"].as_u64().expect("tasks_peak");
    assert!(
        peak <= 16 && peak > made,
        "peak {peak}, made {made}: {summary}"
    );
    assert_eq!(summary["limits"]["processes"], 16, "{summary}");
    assert_ne!(
        summary["limits"]["enforced_by"]["processes"], "none",
        "{summary}"
    );
}

#[test]
fn flags_can_only_lower_the_policy_limits() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-flags");
    let policy = policy(&scratch, "  memory: 256MiB\n  cpu: 1\n  processes: 64\n");
    for (flag, value, message) in [
        (
            "--memory",
            "512MiB",
            "--memory 512MiB is more than the policy allows (limits.memory: 256MiB)",
        ),
        (
            "--cpus",
            "2",
            "--cpus 2 is more than the policy allows (limits.cpu: 1)",
        ),
        (
            "--max-processes",
            "65",
            "--max-processes 65 is more than the policy allows (limits.processes: 64)",
        ),
    ] {
        let refused = Sandbox::new()
            .policy(&policy)
            .arg(flag)
            .arg(value)
            .run(["/bin/true"]);
        assert_eq!(
            refused.code(),
            125,
            "{flag} {value}: {}",
            refused.describe()
        );
        assert_eq!(refused.stderr_lines().len(), 1, "{}", refused.describe());
        assert!(refused.stderr.contains(message), "{}", refused.describe());
    }
    // Without a policy the defaults are the policy: 1GiB.
    let refused = Sandbox::new()
        .arg("--memory")
        .arg("2GiB")
        .run(["/bin/true"]);
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    assert!(
        refused.stderr.contains("(limits.memory: 1GiB)"),
        "{}",
        refused.describe()
    );
    for (flag, value, needle) in [
        ("--memory", "1MiB", "at least 4MiB"),
        ("--memory", "lots", "unknown size unit"),
        ("--cpus", "0", "between 0.01 and 4096"),
        ("--cpus", "half", "not a number of cores"),
        ("--max-processes", "1", "not in 2.."),
    ] {
        let refused = Sandbox::new().arg(flag).arg(value).run(["/bin/true"]);
        assert_eq!(
            refused.code(),
            125,
            "{flag} {value}: {}",
            refused.describe()
        );
        assert!(refused.stderr.contains(needle), "{}", refused.describe());
    }
    // Lower is fine, and is what the execution gets.
    let summary_path = scratch.output("summary.json");
    let lowered = Sandbox::new()
        .policy(&policy)
        .summary(&summary_path)
        .arg("--memory")
        .arg("128MiB")
        .arg("--cpus")
        .arg("0.5")
        .arg("--max-processes")
        .arg("32")
        .run(["/bin/true"]);
    assert_eq!(lowered.code(), 0, "{}", lowered.describe());
    let summary = read_json(&summary_path);
    assert_eq!(summary["limits"]["memory_bytes"], 128 * MIB, "{summary}");
    assert_eq!(summary["limits"]["cpu"], "0.5", "{summary}");
    assert_eq!(summary["limits"]["processes"], 32, "{summary}");
}

/// `tollgate ARGS` in a mount namespace of its own where the v1 hierarchies of the limits'
/// controllers are unmounted: a hybrid host that has lost them.
fn tollgate_without_v1_hierarchies(args: &[&str]) -> Finished {
    let mut script = String::from("set -e\n");
    for mount in v1_limit_mounts() {
        script.push_str(&format!("umount {:?}\n", mount));
    }
    script.push_str("exec \"$@\"\n");
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(tollgate_tests::tollgate_path())
        .args(args);
    output(&mut command, Some(b""), HANG_LIMIT)
}

/// `tollgate run ARGS` without the v1 hierarchies.
fn without_v1_hierarchies(args: &[&str]) -> Finished {
    let mut run = vec!["run"];
    run.extend_from_slice(args);
    tollgate_without_v1_hierarchies(&run)
}

#[test]
fn a_limit_the_host_cannot_enforce_stops_the_run_unless_allowed() {
    let _lock = SuiteLock::shared();
    if v1_mount("memory").is_none() {
        // A pure v2 host: its controllers cannot be taken away from one process.
        eprintln!("the memory controller is not a v1 hierarchy here: nothing to unmount");
        return;
    }
    let refused = without_v1_hierarchies(&["--", "/bin/true"]);
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    assert!(
        refused
            .stderr
            .contains("limits.memory (1GiB) cannot be enforced on this host")
            && refused.stderr.contains("--allow-unenforced-limits"),
        "{}",
        refused.describe()
    );
    let allowed = without_v1_hierarchies(&[
        "--allow-unenforced-limits",
        "--",
        "/bin/sh",
        "-c",
        "echo ran",
    ]);
    assert_eq!(allowed.code(), 0, "{}", allowed.describe());
    assert_eq!(allowed.stdout, "ran\n");
    assert!(
        allowed
            .stderr
            .contains("warning: limits.memory (1GiB) is not enforced"),
        "{}",
        allowed.describe()
    );
}

/// The mechanism `doctor` names for `controller` on this host.
fn mechanism(controller: &str) -> String {
    match v1_mount(controller) {
        Some(mount) => format!("the cgroup v1 hierarchy at {}", mount.display()),
        None => "the cgroup v2 controller".to_owned(),
    }
}

#[test]
fn doctor_says_what_enforces_each_limit() {
    let _lock = SuiteLock::shared();
    let finished = output(tollgate().arg("doctor"), None, HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let expected = format!(
        "ok    limits: memory: {}; cpu: {}; processes: {}, and RLIMIT_NPROC of the sandbox user",
        mechanism("memory"),
        mechanism("cpu"),
        mechanism("pids")
    );
    assert!(
        finished.stdout.lines().any(|line| line == expected),
        "expected {expected:?} in:\n{}",
        finished.stdout
    );
    if v1_mount("memory").is_none() {
        return;
    }
    let without = tollgate_without_v1_hierarchies(&["doctor"]);
    assert_eq!(without.code(), 1, "{}", without.describe());
    assert!(
        without.stdout.lines().any(|line| line
            .starts_with("FAIL  limits: limits.memory (1GiB) cannot be enforced on this host")),
        "{}",
        without.describe()
    );
}

/// Asserts that execution `id` has no cgroup left, in v2 or in any v1 hierarchy.
fn assert_no_cgroup_left(id: &str, after: &str) {
    let mut left: Vec<PathBuf> = v1_limit_mounts()
        .iter()
        .map(|mount| mount.join("tollgate").join(id))
        .collect();
    left.push(execution_cgroup(id));
    left.retain(|path| path.exists());
    assert!(
        left.is_empty(),
        "after {after}, execution {id} left {left:?}"
    );
}

fn summary_id(path: &Path) -> String {
    read_json(path)["execution"]
        .as_str()
        .expect("execution id")
        .to_owned()
}

#[test]
fn every_cgroup_is_removed_after_exit_timeout_and_a_killed_supervisor() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("limits-cleanup");
    let policy = policy(&scratch, "  cpu: 1\n");

    let summary_path = scratch.output("exit.json");
    let exited = Sandbox::new()
        .policy(&policy)
        .summary(&summary_path)
        .run(["/bin/true"]);
    assert_eq!(exited.code(), 0, "{}", exited.describe());
    assert_no_cgroup_left(&summary_id(&summary_path), "a normal exit");

    let summary_path = scratch.output("timeout.json");
    let timed_out = Sandbox::new()
        .policy(&policy)
        .summary(&summary_path)
        .timeout("500ms")
        .run(["/bin/sleep", "60"]);
    assert_eq!(timed_out.code(), 124, "{}", timed_out.describe());
    assert_no_cgroup_left(&summary_id(&summary_path), "a timeout");

    let mut running = Running::spawn(&mut Sandbox::new().policy(&policy).command([
        PYTHON,
        "-c",
        &ready_then(""),
    ]));
    running.wait_line("ready", HANG_LIMIT);
    let (id, _) = running_execution(running.pid());
    for mount in v1_limit_mounts() {
        assert!(
            mount.join("tollgate").join(&id).is_dir(),
            "the running execution has its cgroup in {}",
            mount.display()
        );
    }
    let (_, start) = process_stat(running.pid()).expect("the supervisor runs");
    signal(running.pid(), libc::SIGKILL);
    running.wait_exit(HANG_LIMIT);
    assert!(wait_dead(running.pid(), start, HANG_LIMIT));
    let gc = output(tollgate().arg("gc"), None, HANG_LIMIT);
    assert_eq!(gc.code(), 0, "{}", gc.describe());
    assert_no_cgroup_left(&id, "SIGKILL of the supervisor and `tollgate gc`");
}

/// A pid that is certainly not running now (a child we started and reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("/bin/true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

#[test]
fn gc_kills_and_removes_stale_v1_cgroups() {
    // Exclusive: the gc of any concurrent `tollgate run` could remove the stale cgroup
    // between its mkdir and the move of the sleeper into it.
    let _lock = SuiteLock::exclusive();
    let Some(memory) = v1_mount("memory") else {
        eprintln!("no cgroup v1 memory hierarchy here: nothing for gc to find");
        return;
    };
    let id = format!(
        "{}-1-{:016x}",
        dead_pid(),
        u64::from(std::process::id()) << 20
    );
    let stale = memory.join("tollgate").join(&id);
    fs::create_dir_all(&stale).expect("create a stale v1 cgroup");
    let mut sleeper = Command::new("/bin/sleep")
        .arg("100")
        .spawn()
        .expect("spawn sleep");
    fs::write(stale.join("cgroup.procs"), sleeper.id().to_string())
        .expect("move the sleeper into the stale cgroup");
    let gc = output(tollgate().arg("gc"), None, HANG_LIMIT);
    let status = sleeper.try_wait().expect("try_wait");
    let reaped = match status {
        Some(status) => Some(status),
        None => {
            let (_, start) = process_stat(sleeper.id()).expect("sleep runs");
            wait_dead(sleeper.id(), start, Duration::from_secs(5))
                .then(|| sleeper.wait().expect("wait"))
        }
    };
    if reaped.is_none() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    let left = stale.exists();
    if left {
        let _ = fs::write(memory.join("cgroup.procs"), sleeper.id().to_string());
        let _ = fs::remove_dir(&stale);
    }
    assert_eq!(gc.code(), 0, "{}", gc.describe());
    assert!(
        reaped.is_some(),
        "the process in the stale v1 cgroup survived gc"
    );
    assert!(!left, "gc left the stale v1 cgroup {}", stale.display());
    assert!(
        gc.stdout.contains(&format!(
            "removed stale execution cgroup {}",
            stale.display()
        )),
        "{}",
        gc.describe()
    );
}
