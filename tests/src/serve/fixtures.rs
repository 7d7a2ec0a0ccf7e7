//! What the service suites launch against: a team policy reaching a test upstream, the
//! `curl` that asks it, and a directory tree of share roots.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_TREE: AtomicU32 = AtomicU32::new(0);

/// A team policy that lets `team` reach the upstream host `up` as `up.test` (port 8080,
/// http), through a `hosts` pin and `allowed_ips` covering its /30.
pub fn upstream_policy(team: &str, up: &crate::upstream::UpstreamHost) -> String {
    format!(
        "version: 1
team: {team}
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{port}]
      schemes: [http]
      allowed_ips: [{subnet}]
",
        addr = up.addr,
        port = crate::upstream::HTTP_PORT,
        subnet = up.subnet(),
    )
}

/// `curl` in the sandbox asking `url` through the proxy; prints the HTTP status it got.
pub fn curl(url: &str) -> Vec<String> {
    [
        "/usr/bin/curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A directory tree for `--share` roots, root-owned (0755) and outside every service's
/// directory (as `/srv/work` would be), removed on drop.
pub struct ShareTree {
    pub dir: PathBuf,
}

impl ShareTree {
    /// `work/` (the root a caller is allowed, holding `data.txt`), `workshop/` beside it
    /// (a name `work` is a prefix of, holding `secret.txt`), and `work/escape`, a symbolic
    /// link to `workshop`.
    pub fn new() -> ShareTree {
        let dir = Path::new("/tmp/tollgate-serve-shares").join(format!(
            "{}-{}",
            std::process::id(),
            NEXT_TREE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let tree = ShareTree { dir };
        for sub in ["work", "workshop"] {
            fs::create_dir_all(tree.dir.join(sub)).expect("create a share directory");
        }
        fs::write(tree.work().join("data.txt"), "shared\n").expect("write data.txt");
        fs::write(tree.workshop().join("secret.txt"), "secret\n").expect("write secret.txt");
        std::os::unix::fs::symlink(tree.workshop(), tree.work().join("escape"))
            .expect("link work/escape");
        tree
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn workshop(&self) -> PathBuf {
        self.dir.join("workshop")
    }
}

impl Default for ShareTree {
    fn default() -> Self {
        ShareTree::new()
    }
}

impl Drop for ShareTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
