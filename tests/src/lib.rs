//! Shared harness for the end-to-end tests: the built `tollgate` binary, scratch files, and
//! (for the sandbox and proxy suites) upstream hosts in network namespaces the tests create.
//!
//! The tests drive the binary that `cargo test` builds at the workspace root
//! (`target/<profile>/tollgate`), so they exercise exactly what ships.

pub mod bench;
pub mod certs;
pub mod checks;
pub mod images;
pub mod leaks;
pub mod netns;
pub mod probes;
pub mod redis;
pub mod sandbox;
pub mod script_run;
pub mod serve;
pub mod spellings;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the `tollgate` binary built next to this test executable.
pub fn tollgate_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/tollgate
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir.join("tollgate");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test` from the workspace root so the binary is built",
        binary.display()
    );
    binary
}

/// A `tollgate` command with a clean, predictable environment.
pub fn tollgate() -> Command {
    let mut command = Command::new(tollgate_path());
    command.env_remove("TOLLGATE_LOG").env_remove("RUST_LOG");
    command
}

/// `tollgate policy check ARGS...` → (exit code, stdout, stderr).
pub fn policy_check(args: &[&Path]) -> (Option<i32>, String, String) {
    let output = tollgate()
        .args(["policy", "check"])
        .args(args)
        .output()
        .expect("run tollgate policy check");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Repository root, for shipped files such as `examples/policies`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where scratch directories live: below /tmp, which each sandbox gets its own of, so
/// `Sandbox` shares this directory with every sandbox it starts.
pub const SCRATCH_ROOT: &str = "/tmp/tollgate-tests";

/// Where the files tollgate writes as root (`--audit`, `--summary`) go: outside
/// [`SCRATCH_ROOT`], which every sandbox shares read-write, since tollgate refuses to write
/// its outputs into a directory the sandbox can write (it could plant a symlink there).
pub const OUTPUT_ROOT: &str = "/tmp/tollgate-test-out";

/// A scratch directory (below [`SCRATCH_ROOT`]) removed on drop, with a root-only directory
/// for tollgate's outputs beside it (below [`OUTPUT_ROOT`]).
pub struct Scratch {
    pub dir: PathBuf,
    outputs: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = Path::new(SCRATCH_ROOT).join(format!(
            "tollgate-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let outputs = Path::new(OUTPUT_ROOT).join(dir.file_name().expect("a leaf name"));
        Scratch { dir, outputs }
    }

    /// A path for a file tollgate writes (`--audit`, `--summary`), in a root-only directory
    /// the sandbox cannot see or write.
    pub fn output(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.outputs)
            .expect("create the output dir");
        self.outputs.join(name)
    }

    /// `--secrets-dir` for a run: root-only, among the outputs (outside what the sandbox
    /// shares).
    pub fn secrets_root(&self) -> PathBuf {
        self.output("secrets")
    }

    /// A secret file as tollgate wants it (root's, 0600): `name` of `team` under
    /// [`Scratch::secrets_root`], holding `value` and a newline; its absolute path.
    pub fn secret(&self, team: &str, name: &str, value: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.secrets_root().join(team);
        std::fs::create_dir_all(&dir).expect("create the team's secrets dir");
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).expect("write a secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    /// Writes `text` to `name` inside the scratch dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.outputs);
    }
}

/// A name no other run of the suite (or other test) uses: `tollgate-test-<tag>-<pid>-<ns>`.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tollgate-test-{tag}-{}-{nanos}", std::process::id())
}

/// Runs Debian's `openssl` with `args` in `dir` (test certificates); panics with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("/usr/bin/openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (scripts/bootstrap.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
