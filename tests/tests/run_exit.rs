//! `tollgate run` exit statuses: the command's own, 128+N for a signal, 124 on timeout,
//! 125 for tollgate's own errors (one clear stderr line), 126 not executable, 127 not found,
//! and 130/143 when tollgate itself is interrupted. Every path leaves nothing behind.
//!
//! Needs root.

use std::{fs, os::unix::fs::PermissionsExt as _, time::Duration};

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{
        assert_execution_gone, execution_id_of, process_stat, read_json, shared_dir, signal,
        wait_dead, Finished, Running, Sandbox, HANG_LIMIT, NETWORK_POLICY,
    },
    Scratch,
};

/// `sh -c SCRIPT` in a default sandbox.
fn sh(script: &str) -> Finished {
    Sandbox::new().run(["/bin/sh", "-c", script])
}

/// Asserts tollgate failed on its own with 125 and exactly one non-empty stderr line that
/// contains each of `words`.
fn assert_tollgate_error(finished: &Finished, words: &[&str]) {
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    let lines = finished.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "a tollgate error is one clear stderr line\n{}",
        finished.describe()
    );
    for word in words {
        assert!(
            lines[0].contains(word),
            "the error line mentions {word:?}: {}",
            lines[0]
        );
    }
}

#[test]
fn the_commands_own_exit_status_passes_through() {
    let _lock = SuiteLock::shared();
    for code in [0, 3, 42] {
        let finished = sh(&format!("exit {code}"));
        assert_eq!(finished.code(), code, "{}", finished.describe());
    }
    assert_eq!(Sandbox::new().run(["/bin/true"]).code(), 0);
    assert_eq!(Sandbox::new().run(["/bin/false"]).code(), 1);
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_n() {
    let _lock = SuiteLock::shared();
    for (signal_name, number) in [("KILL", 9), ("TERM", 15), ("SEGV", 11), ("INT", 2)] {
        let finished = sh(&format!("kill -{signal_name} $$"));
        assert_eq!(
            finished.code(),
            128 + number,
            "SIG{signal_name}: {}",
            finished.describe()
        );
    }
}

#[test]
fn a_missing_command_gives_127() {
    let _lock = SuiteLock::shared();
    for command in [
        "/nonexistent/tollgate-e2e-command",
        "tollgate-e2e-no-such-command",
    ] {
        let finished = Sandbox::new().run([command]);
        assert_eq!(finished.code(), 127, "{command}: {}", finished.describe());
        assert!(
            finished.stderr.contains(command),
            "the message names {command}: {}",
            finished.stderr
        );
    }
}

#[test]
fn a_file_without_execute_permission_gives_126() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("noexec");
    let script = scratch.file("script.sh", "#!/bin/sh\necho should-not-run\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let finished = Sandbox::new().run([&script]);
    assert_eq!(finished.code(), 126, "{}", finished.describe());
    assert!(!finished.stdout.contains("should-not-run"));
    assert!(
        finished.stderr.contains(&script.display().to_string()),
        "the message names the file: {}",
        finished.stderr
    );
}

/// Root's files are a common trap (a pyenv shim under /root): the sandbox user cannot even
/// traverse /root, and the message must say so rather than a bare EACCES.
#[test]
fn a_command_under_a_root_only_directory_gives_126_with_a_clear_message() {
    let _lock = SuiteLock::shared();
    let dir = std::path::PathBuf::from(format!("/root/tollgate-e2e-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let tool = dir.join("tool.sh");
    fs::write(&tool, "#!/bin/sh\necho should-not-run\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let finished = Sandbox::new().run([&tool]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(finished.code(), 126, "{}", finished.describe());
    assert!(!finished.stdout.contains("should-not-run"));
    let stderr = finished.stderr.to_lowercase();
    assert!(
        finished.stderr.contains(&tool.display().to_string()),
        "the message names the path: {}",
        finished.stderr
    );
    assert!(
        stderr.contains("65534") || stderr.contains("sandbox user"),
        "the message says the sandbox user cannot execute it: {}",
        finished.stderr
    );
}

/// `--timeout` kills the whole sandbox, including processes that ignore SIGTERM and run in
/// the background: 124, and nothing survives.
#[test]
fn timeout_kills_a_process_tree_that_ignores_sigterm() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("timeout");
    let shared = shared_dir(&scratch, "pids");
    let pids_file = shared.join("pids");
    let script = format!(
        "trap '' TERM; sleep 100 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; sleep 100",
        p = pids_file.display()
    );
    let summary = scratch.output("summary.json");
    let running = Running::spawn(
        &mut Sandbox::new()
            .timeout("2s")
            .summary(&summary)
            .command(["/bin/sh", "-c", &script]),
    );
    // Note the processes (pid and start time) while they run.
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    let pids: Vec<u32> = loop {
        if let Ok(text) = fs::read_to_string(&pids_file) {
            break text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tree never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pids.len(), 2, "two processes: {pids:?}");
    // The shell knows its pids in the sandbox's PID namespace; the host's are found here.
    let pids: Vec<u32> = pids
        .iter()
        .map(|&pid| tollgate_tests::sandbox::wait_host_pid(running.pid(), pid))
        .collect();
    let stats: Vec<(u32, u64)> = pids
        .iter()
        .filter_map(|&pid| process_stat(pid).map(|(_, start)| (pid, start)))
        .collect();
    let id = execution_id_of(pids[1]).expect("the shell runs in an execution cgroup");
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 124, "{}", finished.describe());
    for (pid, start) in stats {
        assert!(
            wait_dead(pid, start, Duration::from_secs(10)),
            "process {pid} survived the timeout"
        );
    }
    assert_execution_gone(&id);
    let summary = read_json(&summary);
    assert_eq!(summary["exit_status"], 124, "{summary}");
}

#[test]
fn an_invalid_policy_is_a_tollgate_error() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("badpolicy");
    // Exactly one mistake: an upper-case team name.
    let bad = scratch.file("bad.yaml", "version: 1\nteam: ACME\n");
    let finished = Sandbox::new().policy(&bad).run(["/bin/true"]);
    assert_tollgate_error(&finished, &["bad.yaml"]);

    let missing = scratch.dir.join("missing.yaml");
    let finished = Sandbox::new().policy(&missing).run(["/bin/true"]);
    assert_tollgate_error(&finished, &["missing.yaml"]);
}

#[test]
fn running_as_root_needs_allow_root() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new().arg("--user").arg("0").run(["/bin/true"]);
    assert_tollgate_error(&finished, &["--allow-root"]);
    let finished = Sandbox::new().arg("--user").arg("0:0").run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());

    let finished = Sandbox::new()
        .arg("--user")
        .arg("0")
        .arg("--allow-root")
        .run(["/usr/bin/id", "-u"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(finished.stdout.trim(), "0");
}

#[test]
fn other_tollgate_errors_are_125_with_one_line() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new()
        .arg("--cwd")
        .arg("/nonexistent/tollgate-e2e")
        .run(["/bin/true"]);
    assert_tollgate_error(&finished, &["/nonexistent/tollgate-e2e"]);
}

/// A malformed option of `tollgate run` is tollgate's error, not the command's: with the
/// usual usage status 2 a caller could not tell it from a command that exited 2 (GNU
/// `timeout`, `env` and `nice` use 125 for the same reason).
#[test]
fn a_malformed_run_option_is_125_not_a_possible_command_status() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new().timeout("bogus").run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(finished.stderr.contains("bogus"), "{}", finished.stderr);
}

/// SIGTERM / SIGINT to tollgate: the sandbox is killed, cleaned up, and tollgate exits
/// 143 / 130.
#[test]
fn sigterm_and_sigint_to_tollgate_kill_the_sandbox_and_clean_up() {
    let _lock = SuiteLock::shared();
    for (sig, expected) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let scratch = Scratch::new("interrupt");
        let shared = shared_dir(&scratch, "pid");
        let pid_file = shared.join("pid");
        // The tree ignores SIGTERM and SIGINT itself: only a cgroup kill gets rid of it.
        let script = format!(
            "trap '' TERM INT; sleep 100 & echo $$ > {p}.tmp; mv {p}.tmp {p}; sleep 100",
            p = pid_file.display()
        );
        let policy = scratch.file("policy.yaml", NETWORK_POLICY);
        let running = Running::spawn(
            &mut Sandbox::new()
                .policy(&policy)
                .timeout("60s")
                .command(["/bin/sh", "-c", &script]),
        );
        let deadline = std::time::Instant::now() + HANG_LIMIT;
        let ns_pid: u32 = loop {
            if let Ok(text) = fs::read_to_string(&pid_file) {
                break text.trim().parse().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sandbox never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let pid = tollgate_tests::sandbox::wait_host_pid(running.pid(), ns_pid);
        let (_, start) = process_stat(pid).expect("the shell runs");
        let id = execution_id_of(pid).expect("the shell runs in an execution cgroup");
        signal(running.pid(), sig);
        let finished = running.finish(HANG_LIMIT);
        assert_eq!(
            finished.code(),
            expected,
            "signal {sig}: {}",
            finished.describe()
        );
        assert!(
            wait_dead(pid, start, Duration::from_secs(10)),
            "signal {sig}: the sandboxed shell survived"
        );
        assert_execution_gone(&id);
    }
}
