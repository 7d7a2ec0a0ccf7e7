//! Callers that do not follow the protocol: bytes that are not frames, a frame header that
//! announces 2 GiB, launches with no descriptors or fifty, descriptors that are not files,
//! pipes or terminals, frames that lie about what they carry or name paths only root could
//! write, signals the protocol does not list, half a frame and a stall, and 200 connections
//! that send nothing. Through all of it the service keeps serving a well-behaved caller,
//! does not crash, and holds no more descriptors afterwards than before. And the socket
//! itself: its owner, group and mode are node.yaml's, so a user outside the group cannot
//! even connect.
//!
//! The hostile callers are `serve_hostile.py` (Debian's Python, `socket.send_fds`) run as an
//! unprivileged test user. Needs root.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    time::Instant,
};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, Running, HANG_LIMIT, PYTHON},
    serve::{Caller, Node, Service, ShareTree, TestGroup, TestUser, SETTLE_LIMIT},
};

/// The script, after the framing helpers it uses (run as `python3 -c`).
const HOSTILE_PY: &str = concat!(
    include_str!("serve_frames.py"),
    include_str!("serve_hostile.py")
);

const TEAM: &str = "a";

fn hostile(
    service: &Service,
    user: &TestUser,
    mode: &str,
    arg: Option<&str>,
) -> std::process::Command {
    let mut command = user.command(PYTHON);
    command
        .arg("-c")
        .arg(HOSTILE_PY)
        .arg(&service.paths.socket)
        .arg(mode)
        .args(arg);
    command
}

/// Runs one hostile mode to its end; returns what it printed (one JSON object).
fn run_hostile(service: &Service, user: &TestUser, mode: &str, arg: Option<&str>) -> Value {
    let finished = output(
        &mut hostile(service, user, mode, arg),
        Some(b""),
        HANG_LIMIT * 2,
    );
    assert_eq!(
        finished.code(),
        0,
        "hostile mode {mode}\n{}",
        finished.describe()
    );
    let last = finished.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("mode {mode} printed no JSON ({e})\n{}", finished.describe()))
}

/// The service ended the conversation on its own (no hang), with nothing but, at most, one
/// refusal of status 125.
fn assert_turned_away(case: &str, seen: &Value) {
    assert_eq!(seen["end"], "closed", "{case}: {seen}");
    let frames = seen["frames"].as_array().expect("frames");
    assert!(
        frames.is_empty()
            || (frames.len() == 1 && frames[0]["type"] == "refused" && frames[0]["status"] == 125),
        "{case}: expected no answer or one refusal (125): {seen}"
    );
}

/// The service refused the launch with status 125 and a message, then closed.
fn assert_refused(case: &str, seen: &Value) -> String {
    assert_eq!(seen["end"], "closed", "{case}: {seen}");
    let frames = seen["frames"].as_array().expect("frames");
    assert!(
        frames.len() == 1 && frames[0]["type"] == "refused" && frames[0]["status"] == 125,
        "{case}: expected one refusal (125): {seen}"
    );
    frames[0]["message"].as_str().unwrap_or_default().to_owned()
}

/// A well-behaved caller gets its output.
fn assert_serves(service: &Service, user: &TestUser, when: &str) {
    let finished = service.client(user).team(TEAM).run(["/bin/echo", "served"]);
    assert_eq!(
        (finished.code(), finished.stdout.as_str()),
        (0, "served\n"),
        "{when}\n{}\n{}",
        finished.describe(),
        service.describe()
    );
}

#[test]
fn hostile_callers_neither_stop_nor_crash_the_service_nor_leak_its_descriptors() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let mut service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &[TEAM])])
            .team(TEAM, &format!("version: 1\nteam: {TEAM}\n")),
    );
    let pid = service.pid();
    // Where only root could write: the frames that name paths here must not make it.
    let forbidden = service.paths.dir.join("forbidden");
    fs::create_dir(&forbidden).unwrap();
    fs::set_permissions(&forbidden, fs::Permissions::from_mode(0o755)).unwrap();

    assert_serves(&service, &user, "before any hostile caller");
    let before = service.scrape();
    let baseline = service.fd_count();

    // Half a frame, a stall, and 200 silent connections, held through everything else.
    let mut stalling = Running::spawn(&mut hostile(&service, &user, "stall", Some("200")));
    let held = stalling.wait_line("{", HANG_LIMIT);
    assert_eq!(held, r#"{"held": 202}"#);
    assert_serves(&service, &user, "while 202 connections stall");

    let garbage = run_hostile(&service, &user, "garbage", None);
    for case in [
        "random",
        "not_json",
        "wrong_shape",
        "signal_first",
        "huge",
        "largest",
    ] {
        assert_turned_away(case, &garbage[case]);
    }
    assert_serves(&service, &user, "after garbage");

    // Three are announced: none, far too many (more than any launch carries, so the kernel
    // truncates them), and one too many.
    for count in ["0", "50", "4"] {
        let seen = run_hostile(&service, &user, "descriptors", Some(count));
        assert_refused(&format!("a launch with {count} descriptors"), &seen);
    }
    assert_serves(
        &service,
        &user,
        "after launches with too few and too many descriptors",
    );

    let odd = run_hostile(&service, &user, "odd_descriptors", None);
    for case in [
        "directory_stdin",
        "eventfd_stdout",
        "o_path_stdin",
        "epoll_stdout",
        "own_socket_stdout",
    ] {
        assert_ne!(odd[case]["end"], "timeout", "{case}: {}", odd[case]);
    }
    assert_serves(&service, &user, "after odd descriptors");

    let lies = run_hostile(&service, &user, "lies", forbidden.to_str());
    for case in [
        "audit_without_fd",
        "audit_path_only",
        "log_path_only",
        "connect_again",
        "bad_args",
        "no_command",
    ] {
        assert_refused(case, &lies[case]);
    }
    let version = assert_refused("version", &lies["version"]);
    assert!(
        version.contains("999") && version.contains('1'),
        "{version}"
    );
    // --summary is the caller's to write: the service returns it and writes nothing.
    let summary = &lies["summary_path"];
    assert_eq!(summary["end"], "closed", "{summary}");
    let exited = summary["frames"]
        .as_array()
        .and_then(|f| f.iter().find(|m| m["type"] == "exited"))
        .unwrap_or_else(|| panic!("no exit: {summary}"));
    assert_eq!(exited["status"], 0, "{summary}");
    assert!(exited["summary"].is_object(), "{summary}");
    let written: Vec<_> = fs::read_dir(&forbidden)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        written.is_empty(),
        "the service wrote for the caller: {written:?}"
    );
    assert_serves(&service, &user, "after lying frames");

    // The execution outlives every signal a caller may not pass on (a SIGKILL reaching
    // the worker would skip its teardown and report no status), and SIGTERM then ends it
    // as it would a local run.
    let signals = run_hostile(&service, &user, "signals", None);
    assert_eq!(signals["sandbox"], "ready", "{signals}");
    assert_eq!(signals["end"], "closed", "{signals}");
    let exited = signals["frames"]
        .as_array()
        .and_then(|f| f.iter().find(|m| m["type"] == "exited"))
        .unwrap_or_else(|| panic!("no exit after SIGTERM: {signals}"));
    assert_eq!(exited["status"], 143, "{signals}");
    // Ended with its teardown, whoever ended it.
    service.assert_clean(&[]);
    assert_serves(&service, &user, "after bogus signals");

    stalling.close_stdin();
    let stalled = stalling.finish(HANG_LIMIT);
    assert_eq!(stalled.code(), 0, "{}", stalled.describe());

    // Every connection is closed: the service holds what it held before them.
    let deadline = Instant::now() + SETTLE_LIMIT;
    while service.fd_count() > baseline {
        assert!(
            Instant::now() < deadline,
            "the service holds {} descriptors, {baseline} before the hostile callers: {:?}",
            service.fd_count(),
            fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d
                    .flatten()
                    .filter_map(|e| fs::read_link(e.path()).ok())
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(service.alive(), "the service died\n{}", service.describe());
    assert_eq!(service.pid(), pid);
    let after = service.scrape();
    assert!(
        after.sum(
            "tollgate_launches_refused_total",
            &[("reason", "bad_request")]
        ) > before.sum(
            "tollgate_launches_refused_total",
            &[("reason", "bad_request")]
        ),
        "no bad request counted:\n{}",
        after.text
    );
    service.assert_clean(&[&user]);
}

#[test]
fn the_socket_has_node_yamls_owner_group_and_mode_and_keeps_others_out() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let member = TestUser::create(&[&group]);
    let outsider = TestUser::create(&[]);
    let listed_nowhere = TestUser::create(&[&group]);
    let service = Service::start(
        Node::new(
            &group,
            vec![
                Caller::new(member.uid, &[TEAM]),
                Caller::new(outsider.uid, &[TEAM]),
            ],
        )
        .team(TEAM, &format!("version: 1\nteam: {TEAM}\n")),
    );

    let socket = fs::symlink_metadata(&service.paths.socket).expect("the socket");
    assert_eq!(
        (socket.uid(), socket.gid(), socket.mode() & 0o7777),
        (0, group.gid, 0o660),
        "the socket's owner, group and mode"
    );

    // Allowed by `callers`, but not in the socket's group: cannot even connect.
    let outside = service
        .client(&outsider)
        .team(TEAM)
        .run(["/bin/echo", "no"]);
    assert_eq!(outside.code(), 125, "{}", outside.describe());
    let expected = format!(
        "tollgate: cannot reach the node service at {}: ",
        service.paths.socket.display()
    );
    let lines = outside.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with(&expected),
        "expected one line starting {expected:?}\n{}",
        outside.describe()
    );

    // In the group but in no `callers` entry: connects, and is refused.
    let unlisted = service
        .client(&listed_nowhere)
        .team(TEAM)
        .run(["/bin/echo", "no"]);
    assert_eq!(unlisted.code(), 125, "{}", unlisted.describe());
    assert!(
        unlisted.stderr.starts_with("tollgate: ") && unlisted.stdout.is_empty(),
        "{}",
        unlisted.describe()
    );

    let inside = service.client(&member).team(TEAM).run(["/bin/echo", "yes"]);
    assert_eq!(
        (inside.code(), inside.stdout.as_str()),
        (0, "yes\n"),
        "{}",
        inside.describe()
    );
    service.assert_clean(&[&member, &outsider, &listed_nowhere]);
}

/// The status a launch ended with (its refusal's or its exit's).
fn launch_status(outcome: &Value) -> Option<Value> {
    outcome["frames"]
        .as_array()?
        .iter()
        .find(|f| f["type"] == "refused" || f["type"] == "exited")
        .map(|f| f["status"].clone())
}

#[test]
fn shares_the_client_would_refuse_are_refused_by_the_service_too() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    let service = Service::start(
        Node::new(
            &group,
            vec![Caller::new(user.uid, &[TEAM]).shares(&[&tree.work()])],
        )
        .team(TEAM, &format!("version: 1\nteam: {TEAM}\n")),
    );
    let seen = run_hostile(&service, &user, "shares", tree.dir.to_str());
    let mut cases: Vec<String> = ["climbing", "dot", "link", "prefix", "relative", "swapped"]
        .iter()
        .flat_map(|name| [format!("{name}--share"), format!("{name}--share-ro")])
        .collect();
    cases.extend(["no_descriptor".into(), "extra_descriptor".into()]);
    let mut wrong = Vec::new();
    for case in &cases {
        let outcome = &seen[case.as_str()];
        let saw_beside = outcome["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("secret.txt");
        // Refused before a worker starts, or by the worker: 125 either way.
        if saw_beside || launch_status(outcome) != Some(Value::from(125)) {
            wrong.push(format!("{case}: {outcome}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "shares beside the allowed root were not refused:\n{}",
        wrong.join("\n")
    );
    let allowed = &seen["allowed"];
    assert!(
        allowed["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("data.txt"),
        "the allowed root was not shared: {allowed}"
    );
    service.assert_clean(&[&user]);
}
