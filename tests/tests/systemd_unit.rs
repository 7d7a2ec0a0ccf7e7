//! The systemd unit for real: `images/systemd/tollgate.service`, unchanged, enabled in a
//! container whose PID 1 is systemd (podman `--systemd=always`), with the host's cgroup
//! hierarchy and bpffs as a node has them. Every sandbox the service builds starts from the
//! unit's mount namespace, seccomp filters and capability bounding set, so the test runs
//! executions through it: the service comes up at boot (its doctor checks pass under the
//! unit's hardening), an unprivileged user of the host launches through the socket and gets
//! the command's output and status, and `systemctl stop` ends a running execution within
//! `TimeoutStopSec` and leaves the unit stopped cleanly, with nothing behind.
//!
//! systemd must be PID 1 of its own PID namespace, so this service cannot see the host's
//! supervisors; and every tollgate reaps the cgroups (and eBPF registrations) of
//! supervisors it cannot find alive. So the container gets a cgroup namespace and a bpffs
//! of its own (as a systemd host has its own): the executions it runs live under its cgroup,
//! where the host's tollgates do not look, and it sees none of the host's. Its uid leases
//! are the host's (one pool per node).
//!
//! Skipped, with the reason printed, only when podman cannot run at all.

use std::{
    fs,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{
    images::{self, podman},
    leaks::SuiteLock,
    sandbox::{output, read_json_lines, Running, HANG_LIMIT},
    serve::{TestGroup, TestUser},
    tollgate_path, Scratch,
};

/// How long systemd may take to boot and start the service: a guard against a hang.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The service's shutdown grace in this test's node.yaml (the unit's TimeoutStopSec is 60 s).
const SHUTDOWN_GRACE: &str = "3s";

const TEAM: &str = "data-eng";

/// A share root outside `/tmp` and `/var/tmp` (the unit's `PrivateTmp=` gives the service
/// its own), at the same path on the host (for the caller) and in the container (for the
/// service): `/srv/tollgate-tests/systemd-<pid>`, writable by any leased uid, removed on
/// drop.
struct ShareDir(PathBuf);

impl ShareDir {
    const PARENT: &str = "/srv/tollgate-tests";

    fn new() -> ShareDir {
        let dir = Path::new(Self::PARENT).join(format!("systemd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the share");
        fs::set_permissions(Self::PARENT, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
        ShareDir(dir)
    }
}

impl Drop for ShareDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_dir(Self::PARENT);
    }
}

/// A container, removed on drop.
struct Container(String);

impl Container {
    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec!["exec", self.0.as_str()];
        argv.extend(args);
        podman(&argv)
    }

    /// `systemctl show tollgate -p PROPERTY --value`.
    fn unit_property(&self, property: &str) -> String {
        let shown = self.exec(&["systemctl", "show", "tollgate", "-p", property, "--value"]);
        String::from_utf8_lossy(&shown.stdout).trim().to_owned()
    }

    fn journal(&self) -> String {
        let journal = self.exec(&["journalctl", "-u", "tollgate", "--no-pager", "-o", "cat"]);
        String::from_utf8_lossy(&journal.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time=10", &self.0]);
    }
}

#[test]
fn the_unit_serves_launches_under_systemd_and_stops_cleanly() {
    if let Err(why) = images::podman_usable() {
        eprintln!("skipping: podman cannot run containers here: {why}");
        return;
    }
    let image = images::systemd_image();
    let _suite = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);

    let scratch = Scratch::new("systemd-unit");
    let run = scratch.dir.join("run");
    let logs = scratch.dir.join("logs");
    let teams = scratch.dir.join("teams");
    for dir in [&run, &logs, &teams] {
        fs::create_dir_all(dir).expect("create a directory");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let share = ShareDir::new();
    fs::write(
        teams.join(format!("{TEAM}.yaml")),
        "version: 1\nteam: data-eng\n",
    )
    .expect("write a team");
    let node_yaml = scratch.dir.join("node.yaml");
    fs::write(
        &node_yaml,
        format!(
            "version: 1\n\
             socket: {{path: /run/tollgate/tollgate.sock, group: {gid}, mode: \"0660\"}}\n\
             audit: /var/log/tollgate/launches.jsonl\n\
             shutdown_grace: {SHUTDOWN_GRACE}\n\
             callers:\n  - uid: {uid}\n    teams: [{TEAM}]\n    shares: [{share}]\n",
            gid = group.gid,
            uid = user.uid,
            share = share.0.display(),
        ),
    )
    .expect("write node.yaml");
    fs::set_permissions(&node_yaml, fs::Permissions::from_mode(0o644)).expect("chmod");

    // As tollgate makes it when it is missing: root's alone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/tollgate-users")
        .expect("create /run/tollgate-users");
    let name = format!("tollgate-test-systemd-{}", std::process::id());
    let volumes = [
        "/run/tollgate-users:/run/tollgate-users".to_owned(),
        format!("{}:/run/tollgate", run.display()),
        format!("{}:/var/log/tollgate", logs.display()),
        format!("{}:/etc/tollgate/node.yaml:ro", node_yaml.display()),
        format!("{}:/etc/tollgate/teams:ro", teams.display()),
        format!("{0}:{0}", share.0.display()),
    ];
    let mut argv = vec![
        "run".to_owned(),
        "--detach".into(),
        format!("--name={name}"),
        "--runtime=runc".into(),
        "--privileged".into(),
        "--systemd=always".into(),
        "--cgroupns=private".into(),
        "--network=none".into(),
        "--ulimit=nofile=1024:4096".into(),
        "--ulimit=nproc=1024:4096".into(),
    ];
    argv.extend(volumes.iter().map(|volume| format!("--volume={volume}")));
    argv.push(image);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let started = podman(&argv);
    assert!(
        started.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let container = Container(name);

    // The unit is enabled: systemd starts it at boot, and it listens once doctor passed.
    let socket = run.join("tollgate.sock");
    let deadline = Instant::now() + BOOT_LIMIT;
    while UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the unit did not listen within {BOOT_LIMIT:?}; state {}, journal:\n{}",
            container.unit_property("ActiveState"),
            container.journal()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(container.unit_property("ActiveState"), "active");
    assert_eq!(
        container.unit_property("NRestarts"),
        "0",
        "{}",
        container.journal()
    );

    let launch = |options: &[&str], cmd: &[&str]| {
        let mut command = user.command(tollgate_path());
        command
            .arg("run")
            .arg("--connect")
            .arg(&socket)
            .args(["--team", TEAM])
            .args(options)
            .arg("--")
            .args(cmd);
        command
    };
    let ran = output(
        &mut launch(&[], &["/bin/sh", "-c", "echo from the unit; exit 5"]),
        None,
        HANG_LIMIT,
    );
    assert_eq!(
        ran.code(),
        5,
        "{}\njournal:\n{}",
        ran.describe(),
        container.journal()
    );
    assert_eq!(ran.stdout, "from the unit\n");

    // A read-write share stays read-write under the unit's ProtectSystem= (`strict` would
    // hand the sandbox a read-only clone of the service's read-only mount).
    let shared = share.0.display().to_string();
    let wrote = output(
        &mut launch(
            &["--share", &shared],
            &["/bin/sh", "-c", &format!("echo written > {shared}/out")],
        ),
        None,
        HANG_LIMIT,
    );
    assert_eq!(wrote.code(), 0, "{}", wrote.describe());
    assert_eq!(
        fs::read_to_string(share.0.join("out")).expect("the sandbox's file in the share"),
        "written\n"
    );

    // A running execution, then `systemctl stop`: SIGTERM to the service alone
    // (KillMode=mixed), which ends the execution after its grace, never passing SIGTERM on
    // to the command (with KillMode=control-group every worker would get it, and pass it to
    // its command); the stop returns well within TimeoutStopSec and the unit ends cleanly.
    let mut running = Running::spawn(&mut launch(
        &[],
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    ));
    running.wait_line("ready", HANG_LIMIT);
    let stopped = output(
        Command::new("podman").args(["exec", &container.0, "systemctl", "stop", "tollgate"]),
        None,
        HANG_LIMIT,
    );
    assert_eq!(stopped.code(), 0, "systemctl stop:\n{}", stopped.describe());
    let ended = running.finish(HANG_LIMIT);
    assert_eq!(
        ended.code(),
        125,
        "the execution's caller: {}",
        ended.describe()
    );
    assert!(
        !ended.stdout.contains("got TERM"),
        "systemd signalled the execution itself: {}",
        ended.describe()
    );
    assert_eq!(
        container.unit_property("ActiveState"),
        "inactive",
        "{}",
        container.journal()
    );
    assert_eq!(
        container.unit_property("Result"),
        "success",
        "{}",
        container.journal()
    );
    assert_eq!(
        container.unit_property("ExecMainStatus"),
        "0",
        "{}",
        container.journal()
    );

    let executions: Vec<String> = read_json_lines(&logs.join("launches.jsonl"))
        .iter()
        .filter_map(|record| record["execution"].as_str().map(str::to_owned))
        .collect();
    assert!(executions.len() >= 3, "the service audited {executions:?}");
    // Nothing of them in the container's cgroup hierarchies (v2 and v1), as it sees them.
    let left = container.exec(&[
        "/bin/sh",
        "-c",
        "for d in /sys/fs/cgroup/*/tollgate/*/; do [ -d \"$d\" ] && echo \"$d\"; done; true",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout),
        "",
        "executions' cgroups left behind"
    );
}
