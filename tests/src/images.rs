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
//!
//! The node service's OCI image (`images/worker/build.sh`) is cached the same way, in the
//! local podman store: [`worker_image`] builds the dist binary ([`dist_binary`]), then the
//! image tagged with a hash of the build scripts and that binary, once.

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
    sha256_prefix(&files_input(&build_dir()))
}

/// The names and contents of the files directly in `dir` but its README, in name order,
/// each followed by a NUL: what a hash of a build directory covers.
fn files_input(dir: &Path) -> Vec<u8> {
    let mut names: Vec<String> = fs::read_dir(dir)
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
    input
}

/// First 16 hex digits of the SHA-256 of `input`.
fn sha256_prefix(input: &[u8]) -> String {
    let mut child = Command::new("/usr/bin/sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = {
        let input = input.to_vec();
        thread::spawn(move || stdin.write_all(&input))
    };
    let out = child.wait_with_output().expect("sha256sum output");
    feeder.join().expect("feeder").expect("feed sha256sum");
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
    let mut command = Command::new("/bin/bash");
    command
        .arg(build_dir().join("build.sh"))
        .arg(variant)
        .arg(path);
    let status = run_logged(&mut command, &log_path, &format!("the {variant} image"));
    assert!(
        status.success() && path.join("etc/tollgate-image").is_file(),
        "building the {variant} image failed ({status}); {}:\n{}",
        log_path.display(),
        log_tail(&log_path)
    );
}

/// Runs `command` in a process group of its own with its output in `log_path`; kills the
/// group and panics (naming `what`) if it outlives [`BUILD_LIMIT`].
fn run_logged(command: &mut Command, log_path: &Path, what: &str) -> std::process::ExitStatus {
    run_logged_within(command, log_path, what, BUILD_LIMIT)
}

/// [`run_logged`] with a limit of `limit`.
fn run_logged_within(
    command: &mut Command,
    log_path: &Path,
    what: &str,
    limit: Duration,
) -> std::process::ExitStatus {
    let log = File::create(log_path).expect("create the build log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start building {what}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the build") {
            return status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the build's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "building {what} took more than {limit:?}:\n{}",
                log_tail(log_path)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
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

// --- the node service's image ------------------------------------------------------------

/// The image name the tests build the worker image under; the tag is a hash of what built it.
pub const WORKER_REPOSITORY: &str = "localhost/tollgate-worker";

/// Longest the dist build may take: a guard against a hang, not a performance assertion (a
/// build from nothing takes about a quarter of an hour on a loaded two-core machine; an
/// up-to-date one, a second).
pub const DIST_BUILD_LIMIT: Duration = Duration::from_secs(3600);

/// `target/dist/tollgate`, built (`cargo build --profile dist -p tollgate`, without the
/// test-only features) the first time a test of this process asks, if it is not up to date.
/// Panics with the end of cargo's output if the build fails.
pub fn dist_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    built.get_or_insert_with(build_dist_binary).clone()
}

fn build_dist_binary() -> PathBuf {
    let log_path = Path::new(CACHE_ROOT).join("dist-build.log");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(CACHE_ROOT)
        .expect("create the image cache");
    // The environment of a build by hand: none of the CARGO_* variables `cargo test` gives
    // this process (build scripts that watch them would rebuild every dependency).
    let cargo = Path::new(env!("CARGO"));
    let mut command = Command::new(cargo);
    command
        .args(["build", "--profile", "dist", "-p", "tollgate"])
        .current_dir(repo_root())
        .env_clear();
    for name in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    // The compiler of this test run, not whatever `rustc` on PATH resolves to: with the
    // rustup proxy and no toolchain pinned, a build here once made rustup update the host's
    // toolchain in place while the rest of the suite was compiling with it. Rustup may never
    // install or update anything from here.
    let rustc = cargo.with_file_name("rustc");
    if rustc.is_file() {
        command.env("RUSTC", rustc);
    }
    command.env("RUSTUP_AUTO_INSTALL", "0");
    let status = run_logged_within(&mut command, &log_path, "the dist binary", DIST_BUILD_LIMIT);
    assert!(
        status.success(),
        "cargo build --profile dist -p tollgate failed ({status}):\n{}",
        log_tail(&log_path)
    );
    repo_root().join("target/dist/tollgate")
}

/// The worker image's directory in this checkout.
pub fn worker_build_dir() -> PathBuf {
    repo_root().join("images/worker")
}

/// Whether podman can run containers here (with runc: crun refuses hybrid cgroup hosts);
/// the reason when it cannot.
pub fn podman_usable() -> Result<(), String> {
    let info = Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
        .map_err(|e| format!("podman cannot be run ({e}): install it with scripts/bootstrap.sh"))?;
    if !info.status.success() {
        return Err(format!(
            "`podman info` failed: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    if !Path::new("/usr/sbin/runc").exists() && !Path::new("/usr/bin/runc").exists() {
        return Err("runc is missing: install it with scripts/bootstrap.sh".into());
    }
    Ok(())
}

/// The worker image of this checkout's dist binary (`localhost/tollgate-worker:test-<hash>`,
/// the hash over `images/worker/` and the binary), built by `images/worker/build.sh` if the
/// local store lacks it. Older `test-` tags, and bases other than the current one, are
/// removed first; the image returned is kept for the next run.
pub fn worker_image() -> String {
    let binary = dist_binary();
    let cache = Path::new(CACHE_ROOT);
    let _lock = VariantLock::take(cache, "worker");
    let mut input = files_input(&worker_build_dir());
    input.extend(fs::read(&binary).expect("read the dist binary"));
    let tag = format!("{WORKER_REPOSITORY}:test-{}", sha256_prefix(&input));
    if podman(&["image", "exists", &tag]).status.success() {
        return tag;
    }
    remove_stale_worker_images(&tag);
    let log_path = cache.join("worker.log");
    let mut command = Command::new("/bin/bash");
    command
        .arg(worker_build_dir().join("build.sh"))
        .arg(&tag)
        .arg(&binary);
    let status = run_logged(&mut command, &log_path, "the worker image");
    assert!(
        status.success() && podman(&["image", "exists", &tag]).status.success(),
        "building the worker image failed ({status}); {}:\n{}",
        log_path.display(),
        log_tail(&log_path)
    );
    tag
}

/// Removes the `test-` tags of [`WORKER_REPOSITORY`] but `keep`, and the bases that the
/// current `root.sh` would not reuse.
fn remove_stale_worker_images(keep: &str) {
    let root_hash = worker_base_hash("");
    let current_base = format!("{WORKER_REPOSITORY}-base:{root_hash}");
    let listed = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        let stale_test = name.starts_with(&format!("{WORKER_REPOSITORY}:test-")) && name != keep;
        let stale_base =
            name.starts_with(&format!("{WORKER_REPOSITORY}-base:")) && name != current_base;
        if stale_test || stale_base {
            let _ = podman(&["rmi", "--force", name]);
        }
    }
}

/// The tag `build.sh` gives the base built with `extra_packages`: a hash of `root.sh`, a
/// NUL and the packages (its `base_hash`).
fn worker_base_hash(extra_packages: &str) -> String {
    let mut input = fs::read(worker_build_dir().join("root.sh")).expect("read root.sh");
    input.push(0);
    input.extend_from_slice(extra_packages.as_bytes());
    sha256_prefix(&input)
}

/// The packages the systemd test image adds to the worker root.
const SYSTEMD_PACKAGES: &str = "systemd,systemd-sysv";

/// A test image of the systemd unit: the worker root with systemd (PID 1, `/sbin/init`),
/// the dist binary at the unit's path and `images/systemd/tollgate.service` enabled, so the
/// service starts at boot as on a node. Cached like [`worker_image`]:
/// `localhost/tollgate-systemd-test:<hash of the unit, the binary and the base>`, on a base
/// `localhost/tollgate-systemd-test-base:<hash of root.sh, the packages and this file>`.
pub fn systemd_image() -> String {
    let binary = dist_binary();
    let cache = Path::new(CACHE_ROOT);
    let _lock = VariantLock::take(cache, "systemd");
    // This file holds the build steps below: a change to it builds afresh.
    let mut base_input = worker_base_hash(SYSTEMD_PACKAGES).into_bytes();
    base_input.extend_from_slice(include_str!("images.rs").as_bytes());
    let base = format!(
        "localhost/tollgate-systemd-test-base:{}",
        sha256_prefix(&base_input)
    );
    let mut input = base.clone().into_bytes();
    input.extend(fs::read(systemd_unit()).expect("read the unit"));
    input.extend(fs::read(&binary).expect("read the dist binary"));
    let tag = format!("localhost/tollgate-systemd-test:{}", sha256_prefix(&input));
    if podman(&["image", "exists", &tag]).status.success() {
        return tag;
    }
    let listed = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        let ours = name.starts_with("localhost/tollgate-systemd-test:")
            || name.starts_with("localhost/tollgate-systemd-test-base:");
        if ours && name != base {
            let _ = podman(&["rmi", "--force", name]);
        }
    }
    let work = cache.join(format!(".systemd-work-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("create the build directory");
    fs::copy(&binary, work.join("tollgate")).expect("copy the binary");
    fs::copy(systemd_unit(), work.join("tollgate.service")).expect("copy the unit");
    // The base: root.sh's tree with systemd, the unit enabled (its file comes with the binary,
    // in the second layer). The image: the binary and the unit.
    let script = format!(
        r#"set -euo pipefail
cd {work}
if ! podman image exists {base}; then
  TOLLGATE_IMAGE_EXTRA_PACKAGES={SYSTEMD_PACKAGES} bash {root_sh} "$PWD/root"
  mkdir -p root/etc/systemd/system/multi-user.target.wants
  ln -s /etc/systemd/system/tollgate.service root/etc/systemd/system/multi-user.target.wants/tollgate.service
  tar --sort=name --numeric-owner --one-file-system -C root -cf root.tar .
  rm -rf --one-file-system root
  printf 'FROM scratch
ADD root.tar /
' > Containerfile
  podman build --quiet --pull=never --network=none --layers=false --tag {base} .
  rm -f root.tar
fi
printf 'FROM %s
COPY tollgate /usr/local/bin/tollgate
COPY tollgate.service /etc/systemd/system/tollgate.service
CMD ["/sbin/init"]
' {base} > Containerfile
podman build --quiet --pull=never --network=none --layers=false --tag {tag} .
"#,
        work = work.display(),
        root_sh = worker_build_dir().join("root.sh").display(),
    );
    let log_path = cache.join("systemd.log");
    let status = run_logged(
        Command::new("/bin/bash").arg("-c").arg(&script),
        &log_path,
        "the systemd test image",
    );
    let _ = Command::new("/bin/rm")
        .args(["-rf", "--one-file-system"])
        .arg(&work)
        .status();
    assert!(
        status.success() && podman(&["image", "exists", &tag]).status.success(),
        "building the systemd test image failed ({status}); {}:\n{}",
        log_path.display(),
        log_tail(&log_path)
    );
    tag
}

/// `podman ARGS`, its output captured.
pub fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
}

// --- the deployment manifests ------------------------------------------------------------

/// `images/kubernetes/` in this checkout.
pub fn kubernetes_dir() -> PathBuf {
    repo_root().join("images/kubernetes")
}

/// `images/systemd/tollgate.service` in this checkout.
pub fn systemd_unit() -> PathBuf {
    repo_root().join("images/systemd/tollgate.service")
}

/// Every YAML document of every `.yaml` file in `images/kubernetes/`, with its file, in
/// file-name order. Panics, naming the file, on a document that does not parse.
pub fn kubernetes_documents() -> Vec<(PathBuf, serde_yaml::Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(kubernetes_dir())
        .expect("read images/kubernetes")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read a manifest");
        for document in split_documents(&text) {
            let value: serde_yaml::Value = serde_yaml::from_str(&document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                documents.push((file.clone(), value));
            }
        }
    }
    documents
}

/// The documents of a YAML stream: the text between lines that are `---` (a document of
/// comments only is null, and left out by the caller, as kubectl leaves it out).
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else {
            let current = documents.last_mut().expect("one document at least");
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
}

/// The one document of `kind` named `name` in `images/kubernetes/`.
pub fn kubernetes_object(kind: &str, name: &str) -> serde_yaml::Value {
    let found: Vec<serde_yaml::Value> = kubernetes_documents()
        .into_iter()
        .map(|(_, document)| document)
        .filter(|document| {
            document["kind"].as_str() == Some(kind)
                && document["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "images/kubernetes/ should hold exactly one {kind} {name}"
    );
    found.into_iter().next().expect("one")
}

/// The `node.yaml` key of the `tollgate-node` ConfigMap: the node configuration the
/// DaemonSet runs with.
pub fn kubernetes_node_yaml() -> String {
    kubernetes_object("ConfigMap", "tollgate-node")["data"]["node.yaml"]
        .as_str()
        .expect("tollgate-node has a node.yaml key")
        .to_owned()
}
