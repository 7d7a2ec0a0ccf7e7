//! Per-execution users: without `--user`, every execution runs as a uid (and gid) of its own,
//! leased from a pool no account uses.
//!
//! Executions that shared one user (nobody) could signal, trace and read the memory of each
//! other's processes — and so use another execution's proxy, policy and credentials. The
//! kernel keeps processes of different uids apart; the lease makes the uid unique among the
//! executions alive on this host, whichever tollgate binary started them.
//!
//! A lease is a file `/run/tollgate-users/<n>` held under an exclusive `flock`. The kernel
//! drops the lock when its holder exits, however it exits. Leases start at a random index so
//! a uid is rarely reused soon after (files a previous holder left in shared directories stay
//! out of reach of the next execution). The holder unlinks the file before unlocking; a
//! claimant that locked a file the holder had just unlinked notices (the path no longer names
//! its file) and moves on, so one uid never has two holders.

use super::SandboxError;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// First uid of the pool: 0x70000000, in the range systemd documents as unused
/// (1879048192…2147483647), far above any account or container range.
pub const POOL_BASE: u32 = 0x7000_0000;
/// Number of uids in the pool (and of executions that can be alive at once without `--user`).
pub const POOL_SIZE: u32 = 65_536;
// The pool stays clear of nobody and of (uid_t)-1, which set*uid reads as "unchanged".
const _: () = assert!(POOL_BASE > 65_534 && POOL_SIZE < u32::MAX - 1 - POOL_BASE);

/// Where leases live.
pub const LEASE_DIR: &str = "/run/tollgate-users";

/// A uid held for one execution; dropping it gives the uid back.
#[derive(Debug)]
pub struct UserLease {
    uid: u32,
    path: PathBuf,
    lock: Option<File>,
}

impl UserLease {
    /// The leased uid (also used as the gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Whether `id` is one of the pool's (a uid or gid no `--user` may take).
    pub fn pool_holds(id: u32) -> bool {
        (POOL_BASE..POOL_BASE + POOL_SIZE).contains(&id)
    }

    /// The pool's range, for messages.
    pub fn pool_description() -> String {
        format!("{POOL_BASE}–{}", POOL_BASE + POOL_SIZE - 1)
    }

    /// Leases a free uid of the pool.
    pub fn claim() -> Result<UserLease, SandboxError> {
        Self::claim_in(Path::new(LEASE_DIR), random_index()?)
    }

    /// Leases a free uid, probing the lease directory `dir` from pool index `start`.
    pub fn claim_in(dir: &Path, start: u32) -> Result<UserLease, SandboxError> {
        let lease_error = |path: &Path, source| SandboxError::UserLease {
            path: path.to_path_buf(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| lease_error(dir, source))?;
        for step in 0..POOL_SIZE {
            let index = (start.wrapping_add(step)) % POOL_SIZE;
            let path = dir.join(index.to_string());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| lease_error(&path, source))?;
            // SAFETY: flock on a descriptor we own; the lock lives as long as `file`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(lease_error(&path, err));
            }
            if !still_named_by(&file, &path) {
                // Its previous holder unlinked it between our open and our lock.
                continue;
            }
            return Ok(UserLease {
                uid: POOL_BASE + index,
                path,
                lock: Some(file),
            });
        }
        Err(SandboxError::UsersExhausted { limit: POOL_SIZE })
    }
}

/// Removes the lease files of supervisors that died without releasing them (a SIGKILL skips
/// the unlink; the lock itself went with the process). Each file is locked before it is
/// unlinked, so a held lease is never touched. Returns how many were removed.
pub fn gc_leases(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; released when `file` is dropped.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && still_named_by(&file, &path)
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

impl Drop for UserLease {
    fn drop(&mut self) {
        // Unlink while still locked (see the module comment), then unlock by closing.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// Whether `path` still names the file `file` is open on.
fn still_named_by(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

fn random_index() -> Result<u32, SandboxError> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| SandboxError::Random {
        source: io::Error::other(e.to_string()),
    })?;
    Ok(u32::from_ne_bytes(bytes) % POOL_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-uid-leases-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn held_uids_are_never_handed_out_twice() {
        let dir = scratch("twice");
        let first = UserLease::claim_in(&dir, 7).expect("first");
        let second = UserLease::claim_in(&dir, 7).expect("second");
        assert_eq!(first.uid(), POOL_BASE + 7);
        assert_eq!(second.uid(), POOL_BASE + 8);
        drop(first);
        assert!(!dir.join("7").exists(), "a released lease is unlinked");
        let third = UserLease::claim_in(&dir, 7).expect("third");
        assert_eq!(third.uid(), POOL_BASE + 7);
        drop((second, third));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn probing_wraps_around_the_end_of_the_pool() {
        let dir = scratch("wrap");
        let last = UserLease::claim_in(&dir, POOL_SIZE - 1).expect("last");
        let next = UserLease::claim_in(&dir, POOL_SIZE - 1).expect("next");
        assert_eq!(last.uid(), POOL_BASE + POOL_SIZE - 1);
        assert_eq!(next.uid(), POOL_BASE);
        drop((last, next));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gc_removes_abandoned_lease_files_and_leaves_held_ones() {
        let dir = scratch("gc");
        let held = UserLease::claim_in(&dir, 1).expect("held");
        std::fs::write(dir.join("5"), b"").expect("abandoned lease file");
        assert_eq!(gc_leases(&dir), 1);
        assert!(!dir.join("5").exists());
        assert!(dir.join("1").exists(), "a held lease stays");
        assert_eq!(
            UserLease::claim_in(&dir, 1).expect("next").uid(),
            POOL_BASE + 2
        );
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_on_an_unlinked_lease_file_is_not_a_lease() {
        let dir = scratch("unlinked");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("3");
        let stale = File::create(&path).expect("file");
        std::fs::remove_file(&path).expect("unlink");
        std::fs::write(&path, b"").expect("recreate");
        assert!(!still_named_by(&stale, &path));
        let fresh = File::open(&path).expect("open");
        assert!(still_named_by(&fresh, &path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
