//! Sandbox root filesystems for the `--rootfs` tests, built by `images/sandbox/build.sh` once
//! per machine and cached.
//!
//! A build downloads Debian packages and takes tens of seconds, so the suite pays it once:
//! each image lives at `/var/cache/tollgate-tests/images/<variant>-<hash>`, where the hash
//! covers the build script (and anything else in `images/sandbox/` but the README), so a
//! changed script builds afresh and a cached image is never stale. An exclusive `flock` per
//! variant makes concurrent tests, threads or processes alike, wait for one build instead of
//! starting two. The script itself builds beside the final path and renames into place, so
//! a path that exists is a whole image; what a killed build left is removed under the lock.
//!
//! The cache is outside `/tmp` (which sandboxes get their own of) and is root's, 0755, like
//! every directory above it: tollgate refuses a root that others could change.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::repo_root;

/// Where built images are kept between test runs.
pub const CACHE_ROOT: &str = "/var/cache/tollgate-tests/images";

/// Longest one image build may take before it is killed and the test fails: a guard against
/// a hung download, not a performance assertion (a build takes about a minute on a loaded
/// two-core machine).
pub const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// The image of `variant` (`python`, `minimal`), built now if this machine has no current
/// one. Panics, with the end of the build log, if the build fails.
pub fn image(variant: &str) -> PathBuf {
    let cache = Path::new(CACHE_ROOT);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cache)
        .expect("create the image cache");
    let path = cache.join(format!("{variant}-{}", script_hash()));
    let _lock = VariantLock::take(cache, variant);
    if path.join("etc/tollgate-image").is_file() {
        return path;
    }
    remove_leftovers(cache, variant, &path);
    build(variant, &path);
    path
}

/// The build script's directory in this checkout.
pub fn build_dir() -> PathBuf {
    repo_root().join("images/sandbox")
}

/// First 16 hex digits of a SHA-256 over the names and contents of the files in
/// `images/sandbox/` (the README excepted: it does not change what is built).
fn script_hash() -> String {
    let dir = build_dir();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    names.sort();
    let mut input = Vec::new();
    for name in &names {
        input.extend_from_slice(name.as_bytes());
        input.push(0);
        input.extend(fs::read(dir.join(name)).expect("read a build file"));
        input.push(0);
    }
    let mut child = Command::new("/usr/bin/sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)[..16].to_owned()
}

/// An exclusive `flock` on `<cache>/<variant>.lock`, released on drop.
struct VariantLock {
    _file: File,
}

impl VariantLock {
    fn take(cache: &Path, variant: &str) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.join(format!("{variant}.lock")))
            .expect("open the image lock");
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        VariantLock { _file: file }
    }
}

/// Removes, under the variant's lock, the images (and logs) of `variant` built by other
/// versions of the script and what killed builds left (`.<variant>-<hash>.partial.*`),
/// unmounting first anything a killed mmdebstrap left mounted inside.
fn remove_leftovers(cache: &Path, variant: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let ours = [format!("{variant}-"), format!(".{variant}-")];
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if ours.iter().any(|prefix| name.starts_with(prefix.as_str())) && path != keep {
            unmount_below(&path);
            let status = Command::new("/bin/rm")
                .args(["-rf", "--one-file-system"])
                .arg(&path)
                .status()
                .expect("run rm");
            assert!(status.success(), "could not remove {}", path.display());
        }
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let c_path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())
            .expect("a mount point without NUL");
        // SAFETY: umount2 on a path we own the string of.
        unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs `build.sh VARIANT PATH`, its output in `PATH.log`, killed (with everything it
/// started) if it outlives [`BUILD_LIMIT`].
fn build(variant: &str, path: &Path) {
    let log_path = log_path(path);
    let log = File::create(&log_path).expect("create the build log");
    let mut child = Command::new("/bin/bash")
        .arg(build_dir().join("build.sh"))
        .arg(variant)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("run images/sandbox/build.sh");
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for build.sh") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the build's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "building the {variant} image took more than {BUILD_LIMIT:?}:\n{}",
                log_tail(&log_path)
            );
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success() && path.join("etc/tollgate-image").is_file(),
        "building the {variant} image failed ({status}); {}:\n{}",
        log_path.display(),
        log_tail(&log_path)
    );
}

/// `<image>.log`, beside the image.
fn log_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().expect("an image name").to_owned();
    name.push(".log");
    image.with_file_name(name)
}

/// The last lines of a build log, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
