//! A secrets root for one test: what `--secrets-dir` names, one directory per team.
//!
//! It lives below `/tmp/tollgate-test-out` (root-only), not in a scratch directory: every
//! sandbox shares the scratch root read-write, and secrets must be where no sandbox can plant
//! a link or read a file. Directories are 0700 and files 0600, root's, as
//! tollgate wants them; everything is removed on drop.

#![allow(dead_code)] // each suite uses the part it needs

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Root-only, outside the scratch root the sandboxes share.
const BASE: &str = "/tmp/tollgate-test-out";

pub struct SecretsRoot {
    pub root: PathBuf,
}

impl SecretsRoot {
    pub fn new(tag: &str) -> SecretsRoot {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = Path::new(BASE).join(format!(
            "secrets-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .expect("create the secrets root");
        SecretsRoot { root }
    }

    /// `<root>/<team>`, created 0700.
    pub fn team(&self, team: &str) -> PathBuf {
        let dir = self.root.join(team);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .expect("create a team's secrets directory");
        dir
    }

    /// A secret file `<root>/<team>/<name>` holding `value` and a newline, 0600.
    pub fn secret(&self, team: &str, name: &str, value: &str) -> PathBuf {
        let path = self.team(team).join(name);
        std::fs::write(&path, format!("{value}\n")).expect("write a secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    /// `--secrets-dir <root>`.
    pub fn flag(&self) -> [std::ffi::OsString; 2] {
        ["--secrets-dir".into(), self.root.clone().into()]
    }
}

impl Drop for SecretsRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
