//! The sandbox's own `/tmp`: empty but for the directories shared with `--share` (read-write)
//! and `--share-ro`, a share inside another mounted on top of it, and clear refusals for a
//! command or working directory the sandbox would not see.
//!
//! Needs root.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{Sandbox, PYTHON},
    Scratch,
};

/// A directory in the host's /tmp outside the harness's shared scratch root, removed on drop.
struct Unshared(PathBuf);

impl Unshared {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/tollgate-unshared-{tag}-{}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("secret.txt"), "host file").unwrap();
        Unshared(dir)
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `path verdict` for each path: whether it exists, and whether a file can be created in it.
const PROBE: &str = r#"
import os, sys
for path in sys.argv[1:]:
    if not os.path.isdir(path):
        print(path, "missing")
        continue
    try:
        with open(os.path.join(path, "written"), "w") as f:
            f.write("x")
        print(path, "writable")
    except OSError as e:
        print(path, "read-only" if e.errno == 30 else e.strerror)
"#;

#[test]
fn shared_directories_appear_writable_or_read_only_and_nothing_else_of_tmp_does() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("shares");
    let dir = |name: &str| {
        let path = scratch.dir.join(name);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        path
    };
    let writable = dir("rw");
    let read_only = dir("ro");
    let inner = dir("ro/inner");
    let unshared = Unshared::new("probe");
    let finished = Sandbox::new()
        .arg("--share-ro")
        .arg(&read_only)
        .arg("--share")
        .arg(&inner)
        .run([
            PYTHON.as_ref(),
            "-c".as_ref(),
            PROBE.as_ref(),
            writable.as_os_str(),
            read_only.as_os_str(),
            inner.as_os_str(),
            unshared.0.as_os_str(),
        ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let expected = [
        format!("{} writable", writable.display()),
        format!("{} read-only", read_only.display()),
        format!("{} writable", inner.display()),
        format!("{} missing", unshared.0.display()),
    ];
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines, expected, "{}", finished.describe());
    assert!(
        finished.stderr.contains("will not see an argument"),
        "the unshared path argument gets a warning: {}",
        finished.stderr
    );
    assert!(writable.join("written").exists() && inner.join("written").exists());
    assert!(!read_only.join("written").exists());
    assert!(!unshared.0.join("written").exists());
}

#[test]
fn a_command_or_cwd_the_sandbox_would_not_see_is_refused_with_the_fix() {
    let _lock = SuiteLock::shared();
    let unshared = Unshared::new("refusals");
    let tool = unshared.0.join("tool.sh");
    fs::write(&tool, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();

    let finished = Sandbox::new().run([&tool]);
    assert_eq!(finished.code(), 127, "{}", finished.describe());
    assert!(!finished.stdout.contains("ran"));
    assert!(finished.stderr.contains("--share"), "{}", finished.stderr);

    let finished = Sandbox::new().arg("--share").arg(&unshared.0).run([&tool]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(finished.stdout.trim(), "ran");

    let finished = Sandbox::new()
        .arg("--cwd")
        .arg(&unshared.0)
        .run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(finished.stderr.contains("--cwd"), "{}", finished.stderr);

    for bad in [
        "/",
        "/dev/shm",
        "/sys/fs/cgroup",
        "/proc/self",
        "/run/x",
        "relative",
    ] {
        let finished = Sandbox::new().arg("--share").arg(bad).run(["/bin/true"]);
        assert_eq!(finished.code(), 125, "{bad}: {}", finished.describe());
        assert!(finished.stderr.contains("--share"), "{}", finished.stderr);
    }
    let finished = Sandbox::new()
        .arg("--share")
        .arg(&unshared.0)
        .arg("--share-ro")
        .arg(&unshared.0)
        .run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(
        finished.stderr.contains("shared twice"),
        "{}",
        finished.stderr
    );
}
