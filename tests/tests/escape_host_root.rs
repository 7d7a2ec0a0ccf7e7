//! Paths from the sandbox to host root through the command line: outputs written through a
//! planted link, input pushed into the caller's terminal, ids the kernel reads as
//! "unchanged", shares and working directories reached through links, and the other hostile
//! flags of `tollgate run`. Each test performs the attack and asserts it fails in the
//! documented way.
//!
//! Needs root.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Stdio,
};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, read_json_lines, Sandbox, HANG_LIMIT, PYTHON},
    Scratch,
};

/// A root-only file outside every share, standing for `/etc/shadow`.
struct Victim {
    dir: PathBuf,
}

impl Victim {
    fn new(scratch: &Scratch) -> Victim {
        let dir = scratch.output("victim-dir");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("precious"), "root's data\n").unwrap();
        fs::set_permissions(dir.join("precious"), fs::Permissions::from_mode(0o600)).unwrap();
        Victim { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("precious")
    }

    fn assert_untouched(&self) {
        assert_eq!(
            fs::read_to_string(self.file()).unwrap(),
            "root's data\n",
            "the root-only file was written through the link"
        );
        let names: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["precious"], "a file was created next to the victim");
    }
}

fn shared(scratch: &Scratch, name: &str) -> PathBuf {
    tollgate_tests::sandbox::shared_dir(scratch, name)
}

#[test]
fn outputs_inside_a_share_are_refused_before_anything_runs() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("out-share");
    let victim = Victim::new(&scratch);
    let share = shared(&scratch, "job");
    // Links an earlier execution could have left there: to a root-only file, and dangling
    // into a root-only directory.
    std::os::unix::fs::symlink(victim.file(), share.join("summary.json")).unwrap();
    std::os::unix::fs::symlink(victim.dir.join("new"), share.join("audit.jsonl")).unwrap();
    let marker = share.join("ran");
    let touch = ["/usr/bin/touch".as_ref(), marker.as_os_str()];
    for flag in ["--summary", "--audit"] {
        for name in ["summary.json", "audit.jsonl", "plain.json"] {
            let finished = Sandbox::new()
                .arg("--share")
                .arg(&share)
                .arg(flag)
                .arg(share.join(name))
                .run(touch);
            assert_eq!(
                finished.code(),
                125,
                "{flag} {name}: {}",
                finished.describe()
            );
            assert!(
                finished.stderr.contains("shares") && finished.stderr.contains(flag),
                "{flag} {name}: the message says why: {}",
                finished.stderr
            );
            assert!(!marker.exists(), "{flag} {name}: the command ran");
        }
    }
    // The harness's own shared scratch root counts too: it is shared with --share.
    let finished = Sandbox::new()
        .arg("--summary")
        .arg(scratch.dir.join("s.json"))
        .run(touch);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    victim.assert_untouched();
}

#[test]
fn a_link_in_any_component_of_an_output_path_is_refused() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("out-link");
    let victim = Victim::new(&scratch);
    let outputs = scratch.output("outputs");
    fs::create_dir_all(&outputs).unwrap();
    std::os::unix::fs::symlink(&victim.dir, outputs.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(victim.file(), outputs.join("file-link")).unwrap();
    for (flag, path) in [
        ("--summary", outputs.join("dir-link/summary.json")),
        ("--audit", outputs.join("dir-link/audit.jsonl")),
        ("--audit", outputs.join("file-link")),
    ] {
        let finished = Sandbox::new().arg(flag).arg(&path).run(["/bin/true"]);
        assert_eq!(
            finished.code(),
            125,
            "{flag} {path:?}: {}",
            finished.describe()
        );
        assert!(
            finished.stderr.contains("symbolic link"),
            "{flag}: {}",
            finished.stderr
        );
    }
    victim.assert_untouched();
}

/// What a bypass attempt of one execution leaves in the audit log: its record.
const ONE_ATTEMPT: &str = "import socket\ns = socket.socket()\ntry:\n    s.connect(('192.0.2.9', 81))\nexcept OSError:\n    pass\n";

fn executions_in(audit: &Path) -> std::collections::BTreeSet<String> {
    read_json_lines(audit)
        .iter()
        .filter_map(|r| r["execution"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_audit_log_is_appended_to_by_every_run_that_shares_it() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("out-append");
    let audit = scratch.output("audit.jsonl");
    fs::write(&audit, "{\"earlier\":true}\n").unwrap();
    let first = Sandbox::new()
        .audit(&audit)
        .run([PYTHON, "-c", ONE_ATTEMPT]);
    assert_eq!(first.code(), 0, "{}", first.describe());
    // Three at once: none may lose a record to another's open.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let mut command = Sandbox::new()
                .audit(&audit)
                .command([PYTHON, "-c", ONE_ATTEMPT]);
            std::thread::spawn(move || output(&mut command, Some(b""), HANG_LIMIT))
        })
        .collect();
    for run in runs {
        let finished = run.join().unwrap();
        assert_eq!(finished.code(), 0, "{}", finished.describe());
    }
    let text = fs::read_to_string(&audit).unwrap();
    assert!(
        text.starts_with("{\"earlier\":true}\n"),
        "truncated: {text}"
    );
    assert_eq!(
        executions_in(&audit).len(),
        4,
        "one execution's records are missing: {text}"
    );
    // A log tollgate creates is root's alone: records name destinations.
    let fresh = scratch.output("fresh.jsonl");
    let run = Sandbox::new().audit(&fresh).run(["/bin/true"]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn outputs_in_the_hosts_tmp_are_fine_but_not_where_the_sandbox_user_can_write() {
    let _lock = SuiteLock::shared();
    // The host's /tmp is not the sandbox's: the usual place for a summary.
    let summary = PathBuf::from(format!("/tmp/tollgate-summary-{}.json", std::process::id()));
    let finished = Sandbox::new().summary(&summary).run(["/bin/true"]);
    let written = fs::read_to_string(&summary);
    let _ = fs::remove_file(&summary);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(written.is_ok_and(|text| text.contains("\"exit_status\": 0")));
    // A directory the sandbox sees (under /etc) and whose mode lets its user (here --user
    // 1000) write: refused. The bind is read-only today; the refusal does not lean on that.
    let dir = PathBuf::from(format!("/etc/tollgate-out-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).unwrap();
    let finished = Sandbox::new()
        .arg("--user")
        .arg("1000:1000")
        .summary(dir.join("s.json"))
        .run(["/bin/true"]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(finished.stderr.contains("can write"), "{}", finished.stderr);
}

#[test]
fn the_summary_reaches_its_path_whole_and_only_there() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("out-summary");
    let summary = scratch.output("summary.json");
    fs::write(&summary, "stale").unwrap();
    let finished = Sandbox::new().summary(&summary).run(["/bin/true"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let written: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&summary).unwrap()).expect("whole JSON");
    assert_eq!(written["exit_status"], 0);
    let names: Vec<_> = fs::read_dir(summary.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["summary.json"], "a temporary file was left behind");
}

/// A pseudo-terminal pair (see `tollgate_tests::sandbox::open_pty`).
struct Pty {
    master: fs::File,
    slave: fs::File,
}

fn open_pty() -> Pty {
    let (master, slave) = tollgate_tests::sandbox::open_pty();
    Pty {
        master: fs::File::from(master),
        slave: fs::File::from(slave),
    }
}

/// Pushes `id > /proof` into the terminal on stdin with TIOCSTI and reports what happened, and
/// whether the process has a controlling terminal.
const PUSH_INPUT: &str = r#"
import fcntl, os, termios
try:
    for c in b"id > /proof\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
    print("pushed")
except OSError as e:
    print("refused", e.errno)
try:
    os.open("/dev/tty", os.O_RDWR)
    print("ctty yes")
except OSError as e:
    print("ctty none", e.errno)
print("isatty", os.isatty(0))
"#;

#[test]
fn the_sandbox_cannot_push_input_into_the_callers_terminal() {
    let _lock = SuiteLock::shared();
    let pty = open_pty();
    let mut command = Sandbox::new().command([PYTHON, "-c", PUSH_INPUT]);
    // The caller's terminal is tollgate's stdin (and controlling terminal, as in a shell).
    let slave_fd = {
        use std::os::fd::AsRawFd as _;
        pty.slave.as_raw_fd()
    };
    command
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setsid and TIOCSCTTY between fork and exec, on an inherited descriptor.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() == -1 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().expect("spawn tollgate");
    let status = tollgate_tests::sandbox::wait_within(&mut child, HANG_LIMIT);
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let finished = tollgate_tests::sandbox::Finished {
        status,
        stdout_bytes: stdout.clone().into_bytes(),
        stdout,
        stderr,
    };
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.contains("refused"),
        "TIOCSTI was not refused: {}",
        finished.describe()
    );
    assert!(
        finished.stdout.contains("ctty none"),
        "the sandbox has the caller's terminal as its controlling terminal: {}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("isatty True"),
        "{}",
        finished.stdout
    );
    // Nothing is waiting in the terminal's input for the caller's shell.
    let mut pending = 0i32;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(slave_fd, libc::FIONREAD, &mut pending) };
    assert_eq!(pending, 0, "input was pushed into the caller's terminal");
    drop(pty.master);
}

#[test]
fn tty_gives_the_command_a_terminal_of_its_own() {
    let _lock = SuiteLock::shared();
    let mut command = Sandbox::new().arg("--tty").command([
        PYTHON,
        "-c",
        "import os; os.open('/dev/tty', os.O_RDWR); print('own tty', os.isatty(0), os.isatty(1))",
    ]);
    let finished = output(&mut command, Some(b""), HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.contains("own tty True True"),
        "{}",
        finished.describe()
    );
}

#[test]
fn ids_the_kernel_reads_as_unchanged_or_root_or_leased_are_refused() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("user-ids");
    let share = shared(&scratch, "ids");
    let marker = share.join("ran");
    for user in [
        "4294967295",
        "4294967295:1000",
        "1000:4294967295",
        "0",
        "0:1000",
        "1000:0",
        "1879048192",
        "1000:1879048200",
    ] {
        let finished = Sandbox::new()
            .arg("--user")
            .arg(user)
            .run(["/usr/bin/touch".as_ref(), marker.as_os_str()]);
        assert_eq!(
            finished.code(),
            125,
            "--user {user}: {}",
            finished.describe()
        );
        assert!(!marker.exists(), "--user {user}: the command ran");
        assert!(finished.stderr.contains("--user"), "{}", finished.stderr);
    }
    // An ordinary user still runs, as exactly that user with no groups.
    let finished = Sandbox::new().arg("--user").arg("1000:1000").run([
        PYTHON,
        "-c",
        "import os; print(os.getresuid(), os.getresgid(), os.getgroups())",
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(
        finished.stdout.trim(),
        "(1000, 1000, 1000) (1000, 1000, 1000) []",
        "{}",
        finished.stdout
    );
}

#[test]
fn a_share_through_a_linked_parent_is_refused() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("share-link");
    let link = scratch.dir.join("link");
    std::os::unix::fs::symlink("/run", &link).unwrap();
    for flag in ["--share", "--share-ro"] {
        let finished = Sandbox::new()
            .arg(flag)
            .arg(link.join("tollgate"))
            .run(["/bin/ls", "/tmp"]);
        assert_eq!(finished.code(), 125, "{flag}: {}", finished.describe());
        assert!(
            finished.stderr.contains("symbolic link"),
            "{flag}: {}",
            finished.stderr
        );
    }
}

#[test]
fn the_working_directory_is_entered_with_the_sandbox_users_permissions() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("cwd-perm");
    let share = shared(&scratch, "job");
    // A tree only root may enter, inside the share; and a link to it an earlier execution
    // could have planted.
    let private = share.join("private");
    fs::create_dir_all(private.join("inner")).unwrap();
    fs::write(private.join("inner/data"), "root only").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(private.join("inner"), share.join("planted")).unwrap();
    for cwd in [private.join("inner"), share.join("planted")] {
        let finished = Sandbox::new()
            .arg("--cwd")
            .arg(&cwd)
            .run(["/bin/cat", "data"]);
        assert_eq!(
            finished.code(),
            125,
            "--cwd {cwd:?}: {}",
            finished.describe()
        );
        assert!(
            !finished.stdout.contains("root only"),
            "{}",
            finished.stdout
        );
        assert!(
            finished.stderr.contains("cannot enter --cwd"),
            "{}",
            finished.stderr
        );
    }
}

#[test]
fn the_sandbox_has_a_devpts_of_its_own_with_few_terminals() {
    let _lock = SuiteLock::shared();
    let script = r#"
import os
print("listed", sorted(os.listdir("/dev/pts")))
held = []
try:
    for i in range(300):
        held.append(os.openpty())
except OSError as e:
    print("stopped", e.errno)
print("opened", len(held))
"#;
    let finished = Sandbox::new().run([PYTHON, "-c", script]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.contains("listed ['ptmx']"),
        "the host's terminals are listed: {}",
        finished.stdout
    );
    let opened: u32 = finished
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("opened "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a count");
    assert!(opened > 0 && opened <= 64, "opened {opened} terminals");
}

#[test]
fn hostile_flags_are_refused_with_the_fix() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("hostile-flags");
    let cases: [(&[&str], &str); 7] = [
        (&["--tmp-size", "17179869183GiB"], "memory"),
        (&["--env", "LD_PRELOAD=/tmp/x.so"], "LD_PRELOAD"),
        (&["--env", "HTTP_PROXY=http://10.1.2.3:8080"], "HTTP_PROXY"),
        (
            &["--env", "https_proxy=http://10.1.2.3:8080"],
            "https_proxy",
        ),
        (&["--env", "SSL_CERT_FILE=/tmp/mine.pem"], "SSL_CERT_FILE"),
        (&["--pass-env", "NO_PROXY"], "NO_PROXY"),
        (&["--env", "=x"], "not a valid environment assignment"),
    ];
    for (flags, says) in cases {
        let mut sandbox = Sandbox::new();
        for flag in flags {
            sandbox = sandbox.arg(flag);
        }
        let finished = sandbox.run(["/bin/true"]);
        assert_eq!(finished.code(), 125, "{flags:?}: {}", finished.describe());
        assert!(
            finished.stderr.contains(says),
            "{flags:?}: {}",
            finished.stderr
        );
    }
    // --team must match the team the file names.
    let dir = scratch.output("policies");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("other.yaml"), "version: 1\nteam: clients\n").unwrap();
    let finished = Sandbox::new()
        .arg("--team")
        .arg("other")
        .arg("--policy-dir")
        .arg(&dir)
        .run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(finished.stderr.contains("clients"), "{}", finished.stderr);
}

#[test]
fn tty_relays_the_callers_keystrokes_and_the_commands_output() {
    use std::io::Write as _;
    let _lock = SuiteLock::shared();
    let pty = open_pty();
    let mut command = Sandbox::new().arg("--tty").command([
        PYTHON,
        "-c",
        "import os; line = input(); print('got', line.upper(), os.isatty(0))",
    ]);
    command
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn tollgate");
    drop(pty.slave);
    let mut master_in = pty.master.try_clone().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let mut master_out = pty.master;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = master_out.read(&mut buffer) {
            if lines.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Typed as at a keyboard: a carriage return ends the line.
    master_in.write_all(b"hello\r").unwrap();
    let mut screen = Vec::new();
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    while !String::from_utf8_lossy(&screen).contains("got HELLO True") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(bytes) => screen.extend(bytes),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no answer on the terminal: {:?}",
                    String::from_utf8_lossy(&screen)
                );
            }
        }
    }
    let status = tollgate_tests::sandbox::wait_within(&mut child, HANG_LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&screen)
    );
}
