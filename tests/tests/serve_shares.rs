//! Shares through the node service are only what the caller can reach itself.
//!
//! The worker that binds a `--share` directory is root: opened as root, a directory below a
//! parent the caller cannot search (another user's 0700 home) or one it may not write would
//! be bound all the same, and the sandbox would read (or write) what the caller never could.
//! So the client opens each directory as the caller and sends the descriptor, and the worker
//! binds a share only when it is that directory and the caller's own uid and groups may read
//! and search it (and write it, for `--share`). These tests attack that as an unprivileged
//! test user, with the real client and with launch frames built by hand
//! (`serve_shares.py`): no descriptor at all (the protocol before the fix), a descriptor of
//! another directory, and a directory swapped in under the path after the caller opened it.
//!
//! Needs root.

use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, Finished, HANG_LIMIT, PYTHON},
    serve::{Caller, Node, Service, ShareTree, TestGroup, TestUser},
};

/// The script, after the framing helpers it uses (run as `python3 -c`).
const SHARES_PY: &str = concat!(
    include_str!("serve_frames.py"),
    include_str!("serve_shares.py")
);

const TEAM: &str = "a";

/// A service for `user`, allowed `root` as its share root.
fn service_for(group: &TestGroup, user: &TestUser, root: &Path) -> Service {
    Service::start(
        Node::new(group, vec![Caller::new(user.uid, &[TEAM]).shares(&[root])])
            .team(TEAM, &format!("version: 1\nteam: {TEAM}\n")),
    )
}

/// A directory `path` with `mode`, owned by `owner` (root when `None`), holding `file.txt`
/// (`text`, mode 0644).
fn dir(path: &Path, mode: u32, owner: Option<&TestUser>, text: &str) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    let file = path.join("file.txt");
    fs::write(&file, text).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    if let Some(user) = owner {
        chown(path, Some(user.uid), Some(user.gid)).unwrap();
        chown(&file, Some(user.uid), Some(user.gid)).unwrap();
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `cat DIR/file.txt` in the sandbox, through the real client, with `flag DIR`.
fn cat_shared(service: &Service, user: &TestUser, flag: &str, dir: &Path) -> Finished {
    service
        .client(user)
        .team(TEAM)
        .arg(flag)
        .arg(dir)
        .run(["/bin/cat", &format!("{}/file.txt", text(dir))])
}

/// A launch frame built by `serve_shares.py` as `user` (see there for `spec`); what it saw.
fn raw_launch(service: &Service, user: &TestUser, spec: Value) -> Value {
    let mut command = user.command(PYTHON);
    command
        .arg("-c")
        .arg(SHARES_PY)
        .arg(&service.paths.socket)
        .arg(spec.to_string());
    let finished = output(&mut command, Some(b""), HANG_LIMIT * 2);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let last = finished.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("printed no JSON ({e})\n{}", finished.describe()))
}

/// The launch ended with status 125, and `what` was said (in the refusal the service sent,
/// or on the command's stderr, where the worker says it); the command printed nothing.
fn assert_raw_refused(case: &str, seen: &Value, what: &str) {
    let frames = seen["frames"].as_array().expect("frames");
    let status = frames
        .iter()
        .find(|f| f["type"] == "refused" || f["type"] == "exited")
        .map(|f| f["status"].clone());
    assert_eq!(status, Some(Value::from(125)), "{case}: {seen}");
    let said = frames
        .iter()
        .filter_map(|f| f["message"].as_str())
        .chain(seen["stderr"].as_str())
        .any(|message| message.contains(what));
    assert!(said, "{case}: expected {what:?} to be said: {seen}");
    assert_eq!(seen["stdout"], "", "{case}: the command ran: {seen}");
}

/// The one line of a refusal by the worker, `tollgate: FLAG DIR: the caller (uid N) cannot
/// reach it itself`, status 125, and nothing of the directory printed.
fn assert_unreachable(finished: &Finished, flag: &str, dir: &Path, uid: u32) {
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert_eq!(
        finished.stderr_lines(),
        [format!(
            "tollgate: {flag} {}: the caller (uid {uid}) cannot reach it itself",
            dir.display()
        )],
        "{}",
        finished.describe()
    );
    assert_eq!(finished.stdout, "", "{}", finished.describe());
}

#[test]
fn a_share_below_a_parent_the_caller_cannot_search_is_refused() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    // Someone else's private directory under the caller's allowed root, and in it a
    // directory anyone could read, were its parent searchable.
    let private = dir(&tree.work().join("bob-private"), 0o700, None, "private\n");
    let public = dir(&private.join("public"), 0o755, None, "bob's secret\n");
    let service = service_for(&group, &user, &tree.work());

    // The real client cannot open it as the caller, so it does not even connect.
    for flag in ["--share", "--share-ro"] {
        let finished = cat_shared(&service, &user, flag, &public);
        assert_eq!(finished.code(), 125, "{flag}\n{}", finished.describe());
        assert!(
            !finished.stdout.contains("secret") && !finished.stderr.contains("secret"),
            "{flag}\n{}",
            finished.describe()
        );
    }

    // A hand-made frame: the path without a descriptor (what every caller sent before the
    // fix, and what root then bound), or with a descriptor of a directory the caller can
    // reach (its allowed root itself).
    let args = |flag: &str| {
        json!([
            "--team",
            TEAM,
            flag,
            text(&public),
            "--",
            "/bin/cat",
            format!("{}/file.txt", text(&public))
        ])
    };
    for flag in ["--share", "--share-ro"] {
        let without = raw_launch(&service, &user, json!({"args": args(flag), "open": []}));
        assert_raw_refused(
            &format!("{flag} without a descriptor"),
            &without,
            "descriptor",
        );
        let other = raw_launch(
            &service,
            &user,
            json!({"args": args(flag), "open": [text(&tree.work())]}),
        );
        assert_raw_refused(
            &format!("{flag} with its root's descriptor"),
            &other,
            "cannot reach it itself",
        );
    }
    service.assert_clean(&[&user]);
}

#[test]
fn directories_the_caller_owns_are_shared_and_readable_in_the_sandbox() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    let mine = dir(&tree.work().join("mine"), 0o755, Some(&user), "mine\n");
    let inner = dir(&mine.join("inner"), 0o755, Some(&user), "inner\n");
    let service = service_for(&group, &user, &tree.work());

    for flag in ["--share", "--share-ro"] {
        let finished = cat_shared(&service, &user, flag, &mine);
        assert_eq!(
            (finished.code(), finished.stdout.as_str()),
            (0, "mine\n"),
            "{flag}\n{}",
            finished.describe()
        );
    }
    // The descriptors travel as the flags come (--share first), the worker mounts the
    // outer directory first: each share still gets its own directory's descriptor.
    let both = service
        .client(&user)
        .team(TEAM)
        .arg("--share")
        .arg(&inner)
        .arg("--share-ro")
        .arg(&mine)
        .run([
            "/bin/cat",
            &format!("{}/file.txt", text(&mine)),
            &format!("{}/file.txt", text(&inner)),
        ]);
    assert_eq!(
        (both.code(), both.stdout.as_str()),
        (0, "mine\ninner\n"),
        "{}",
        both.describe()
    );
    service.assert_clean(&[&user]);
}

#[test]
fn a_directory_the_caller_cannot_write_is_shared_read_only_but_not_read_write() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    // Root's, readable by everyone; and one the caller may search but not list.
    let readable = dir(&tree.work().join("readable"), 0o755, None, "readable\n");
    let unlisted = dir(&tree.work().join("unlisted"), 0o711, None, "unlisted\n");
    let service = service_for(&group, &user, &tree.work());

    let read_only = cat_shared(&service, &user, "--share-ro", &readable);
    assert_eq!(
        (read_only.code(), read_only.stdout.as_str()),
        (0, "readable\n"),
        "{}",
        read_only.describe()
    );
    let read_write = cat_shared(&service, &user, "--share", &readable);
    assert_unreachable(&read_write, "--share", &readable, user.uid);
    let unlisted_ro = cat_shared(&service, &user, "--share-ro", &unlisted);
    assert_unreachable(&unlisted_ro, "--share-ro", &unlisted, user.uid);
    service.assert_clean(&[&user]);
}

#[test]
fn a_directory_swapped_in_after_the_caller_opened_the_path_is_refused() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    let own = dir(&tree.work().join("own"), 0o755, Some(&user), "own\n");
    let opened = dir(&own.join("opened"), 0o755, Some(&user), "opened\n");
    let swapped = dir(&own.join("swapped"), 0o755, Some(&user), "swapped in\n");
    let service = service_for(&group, &user, &tree.work());

    // The caller opens `opened`, then puts `swapped` under its name: the descriptor it sends
    // is not the directory the path names when the worker opens it.
    let moved_away = own.join("moved-away");
    let spec = json!({
        "args": ["--team", TEAM, "--share-ro", text(&opened), "--", "/bin/cat",
                 format!("{}/file.txt", text(&opened))],
        "open": [text(&opened)],
        "renames": [[text(&opened), text(&moved_away)], [text(&swapped), text(&opened)]],
    });
    let seen = raw_launch(&service, &user, spec);
    assert_raw_refused("a swapped directory", &seen, "cannot reach it itself");
    service.assert_clean(&[&user]);
}
