//! The child's private view of the host: its own mount and IPC namespaces.
//!
//! The network walls see sockets, not files, and a Unix socket is reached by its path: host
//! daemons listen under `/run` (D-Bus, nscd, systemd-resolved — which would resolve, and so
//! send, any name the sandbox asks for), and processes are visible and addressable through
//! `/proc`. Shared scratch directories let one execution read what another left behind. So
//! the child gets, in a mount namespace of its own:
//!
//! - a fresh `/run` (root-owned tmpfs) holding only the execution's runtime directory, bound
//!   back in from the host (the CA bundle and the Python helper live there);
//! - fresh `/tmp` and `/var/tmp` (tmpfs, mode 1777, each at most `--tmp-size`), freed with
//!   the namespace, holding only the directories the caller shares with `--share` /
//!   `--share-ro`, bound in at the same paths;
//! - a fresh `/dev/shm` of at most [`DEV_SHM_SIZE`], freed with the namespace (tmpfs pages
//!   are memory, and the host's cgroups may have no memory controller to bound them);
//! - a fresh `/proc` mounted `hidepid=invisible`: the sandbox sees only processes of its own
//!   user, which is the execution's own user (see `users`);
//! - a fresh, read-only `/sys` of the sandbox's network namespace: only its `lo` under
//!   `class/net`, and nothing mounted below it — no cgroup tree (whose directory names are
//!   other executions' ids and whose `cgroup.procs` list their pids), no bpffs, no tracefs;
//! - and a private IPC namespace (System V IPC and POSIX message queues).
//!
//! Everything else is the host's tree, unchanged (mount propagation is cut first, so nothing
//! done here reaches the host). All paths are prepared before the clone;
//! [`PrivateMounts::apply`] runs between clone and exec and only makes system calls.

use super::SandboxError;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

/// Where the execution's runtime directories live on the host and in the sandbox.
const RUNTIME_ROOT: &str = "/run/tollgate";

/// Directories whose host contents the sandbox does not see at all.
pub const HIDDEN_DIRS: [&str; 4] = ["/run", "/dev/shm", "/proc", "/sys"];
/// Scratch directories the sandbox gets empty ones of, into which directories can be shared.
pub const SCRATCH_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

/// The size of the sandbox's `/dev/shm` (Docker's default).
pub const DEV_SHM_SIZE: u64 = 64 << 20;
/// The smallest `--tmp-size` (tmpfs reads a size of 0 as "no limit").
pub const MIN_TMP_SIZE: u64 = 1 << 20;

/// The most directories one execution may share (the child keeps their mounts in a fixed
/// array, since it cannot allocate).
pub const MAX_SHARES: usize = 16;

/// A host directory bound into a scratch directory at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub path: PathBuf,
    pub read_only: bool,
}

/// What a share becomes in the child: where it comes from and the directories to create for
/// its mount point, outermost first (the last one is the mount point).
#[derive(Debug)]
struct PreparedShare {
    source: CString,
    mount_point_dirs: Vec<CString>,
    read_only: bool,
}

/// What the child mounts, prepared before the clone.
#[derive(Debug)]
pub struct PrivateMounts {
    /// The runtime directory: its host path (bound from) and the same path in the new `/run`.
    runtime_dir: Option<CString>,
    shares: Vec<PreparedShare>,
    dev_shm: bool,
    var_tmp: bool,
    /// tmpfs options of `/tmp` and `/var/tmp`, and of `/dev/shm`.
    tmp_options: CString,
    shm_options: CString,
}

fn mount_error(step: &'static str, message: String) -> SandboxError {
    SandboxError::Mounts {
        step,
        source: io::Error::other(message),
    }
}

fn c_path(step: &'static str, path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| SandboxError::Mounts {
        step,
        source: io::Error::other(e),
    })
}

impl PrivateMounts {
    /// Mounts for an execution whose runtime directory (if any) is `runtime_dir`, which must
    /// be a directory directly under `/run/tollgate`, sharing `shares` (checked with
    /// [`check_share`]), with scratch directories of `tmp_size` bytes each.
    pub fn prepare(
        runtime_dir: Option<&Path>,
        shares: &[Share],
        tmp_size: u64,
    ) -> Result<PrivateMounts, SandboxError> {
        if tmp_size < MIN_TMP_SIZE {
            return Err(mount_error(
                "scratch size",
                format!("the scratch size must be at least {MIN_TMP_SIZE} bytes"),
            ));
        }
        let tmpfs = |size: u64| {
            CString::new(format!("mode=1777,size={size}")).map_err(|e| SandboxError::Mounts {
                step: "scratch size",
                source: io::Error::other(e),
            })
        };
        let runtime_dir = runtime_dir
            .map(|dir| {
                if dir.parent() != Some(Path::new(RUNTIME_ROOT)) {
                    return Err(mount_error(
                        "runtime directory",
                        format!("{} is not directly under {RUNTIME_ROOT}", dir.display()),
                    ));
                }
                c_path("runtime directory", dir)
            })
            .transpose()?;
        if shares.len() > MAX_SHARES {
            return Err(mount_error(
                "shared directories",
                format!("at most {MAX_SHARES} directories can be shared"),
            ));
        }
        let shares = shares
            .iter()
            .filter_map(|share| {
                let scratch = scratch_dir_of(&share.path)?;
                Some((share, scratch))
            })
            .map(|(share, scratch)| {
                let mut dirs = Vec::new();
                let mut at = PathBuf::from(scratch);
                for part in share.path.strip_prefix(scratch).unwrap_or(Path::new("")) {
                    at.push(part);
                    dirs.push(c_path("shared directory", &at)?);
                }
                Ok(PreparedShare {
                    source: c_path("shared directory", &share.path)?,
                    mount_point_dirs: dirs,
                    read_only: share.read_only,
                })
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        Ok(PrivateMounts {
            runtime_dir,
            shares,
            dev_shm: Path::new("/dev/shm").is_dir(),
            var_tmp: Path::new("/var/tmp").is_dir(),
            tmp_options: tmpfs(tmp_size)?,
            shm_options: tmpfs(DEV_SHM_SIZE)?,
        })
    }

    /// Enters new mount and IPC namespaces and mounts the private directories. Runs in the
    /// child after the clone, as root: system calls only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: system calls on NUL-terminated literals and on strings prepared before the
        // clone; every descriptor opened here is closed here.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // Taken before the directories they live in are covered; moved back in below.
            let runtime_tree = match &self.runtime_dir {
                Some(dir) => Some(clone_tree(dir)?),
                None => None,
            };
            let mut share_trees = [-1; MAX_SHARES];
            for (tree, share) in share_trees.iter_mut().zip(&self.shares) {
                *tree = clone_tree(&share.source)?;
            }

            mount_tmpfs(c"/run", c"mode=0755,size=1m")?;
            if let (Some(dir), Some(tree)) = (&self.runtime_dir, runtime_tree) {
                check(libc::mkdir(c"/run/tollgate".as_ptr(), 0o755))?;
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
                attach_tree(tree, dir)?;
            }
            mount_tmpfs(c"/tmp", &self.tmp_options)?;
            if self.var_tmp {
                mount_tmpfs(c"/var/tmp", &self.tmp_options)?;
            }
            for (tree, share) in share_trees.iter().zip(&self.shares) {
                for dir in &share.mount_point_dirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                let Some(target) = share.mount_point_dirs.last() else {
                    continue;
                };
                attach_tree(*tree, target)?;
                if share.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if self.dev_shm {
                mount_tmpfs(c"/dev/shm", &self.shm_options)?;
            }
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"hidepid=invisible".as_ptr().cast(),
            ))?;
            check(libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
        }
        Ok(())
    }
}

/// A detached copy of the mount tree at `path` (open_tree with OPEN_TREE_CLONE).
unsafe fn clone_tree(path: &CStr) -> io::Result<libc::c_int> {
    // SAFETY: a NUL-terminated path; the descriptor returned is owned by the caller.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd as libc::c_int)
    }
}

/// Mounts the detached tree `tree` on `target` and closes it.
unsafe fn attach_tree(tree: libc::c_int, target: &CStr) -> io::Result<()> {
    // SAFETY: `tree` came from `clone_tree`; `target` is NUL-terminated.
    unsafe {
        let moved = libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        );
        libc::close(tree);
        check(moved as libc::c_int)
    }
}

/// Mounts a fresh tmpfs (no devices, no set-uid) on `target`.
unsafe fn mount_tmpfs(target: &CStr, options: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings; the caller is in its own mount namespace.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    })
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The hidden directory `path` lies in, if any: nothing of the host's is visible there.
pub fn hidden_dir_of(path: &Path) -> Option<&'static str> {
    HIDDEN_DIRS.into_iter().find(|dir| path.starts_with(dir))
}

/// The scratch directory `path` lies strictly below, if any.
pub fn scratch_dir_of(path: &Path) -> Option<&'static str> {
    SCRATCH_DIRS
        .into_iter()
        .find(|dir| path.starts_with(dir) && path != Path::new(dir))
}

/// Whether `path` is visible in a sandbox sharing `shares`: it is not under a hidden
/// directory, and if it is under a scratch directory, a share holds it. `None` when it is;
/// otherwise the reason it is not, to show the user.
pub fn invisible_because(path: &Path, shares: &[Share]) -> Option<String> {
    if let Some(dir) = hidden_dir_of(path) {
        return Some(format!(
            "{} is under {dir}, which the sandbox gets its own of",
            path.display()
        ));
    }
    let scratch = scratch_dir_of(path)?;
    if shares.iter().any(|share| path.starts_with(&share.path)) {
        return None;
    }
    Some(format!(
        "{} is under {scratch}, which the sandbox gets an empty one of; share its directory \
         with --share DIR (or --share-ro DIR)",
        path.display()
    ))
}

/// The shares of `--share` (read-write) and `--share-ro` paths, in mount order: a directory
/// before the directories inside it, so a share inside another is mounted on top of it (the
/// more specific one decides whether it is writable). A path given twice is refused.
pub fn arrange_shares(read_write: &[PathBuf], read_only: &[PathBuf]) -> Result<Vec<Share>, String> {
    let mut shares: Vec<Share> = read_write
        .iter()
        .map(|path| (path, false))
        .chain(read_only.iter().map(|path| (path, true)))
        .map(|(path, read_only)| Share {
            path: path.clone(),
            read_only,
        })
        .collect();
    if shares.len() > MAX_SHARES {
        return Err(format!(
            "{} directories shared: at most {MAX_SHARES} can be; share a common parent instead",
            shares.len()
        ));
    }
    shares.sort_by_key(|share| share.path.components().count());
    for (i, share) in shares.iter().enumerate() {
        if shares[..i].iter().any(|other| other.path == share.path) {
            return Err(format!(
                "{} is shared twice: give it once, with --share or --share-ro",
                share.path.display()
            ));
        }
    }
    Ok(shares)
}

/// Checks a directory given to `--share`: an absolute, normalised path of an existing
/// directory, below `/tmp` or `/var/tmp` (everything else but the hidden directories is
/// visible anyway, and those cannot be shared).
pub fn check_share(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "--share {shown}: give an absolute path without `.` or `..`"
        ));
    }
    if scratch_dir_of(path).is_none() {
        return Err(format!(
            "--share {shown}: only directories below {} can be shared (the rest of the \
             host's tree is visible as it is; /run, /dev/shm, /proc and /sys never are)",
            SCRATCH_DIRS.join(" or ")
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "--share {shown}: not a directory (a symbolic link is not followed)"
        )),
        Err(error) => Err(format!("--share {shown}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_scratch_size_under_a_mebibyte_is_refused_since_zero_means_unlimited() {
        assert!(PrivateMounts::prepare(None, &[], 0).is_err());
        assert!(PrivateMounts::prepare(None, &[], MIN_TMP_SIZE - 1).is_err());
        let mounts = PrivateMounts::prepare(None, &[], MIN_TMP_SIZE).expect("prepare");
        assert_eq!(mounts.tmp_options.to_str(), Ok("mode=1777,size=1048576"));
        assert_eq!(mounts.shm_options.to_str(), Ok("mode=1777,size=67108864"));
    }

    fn share(path: &str) -> Share {
        Share {
            path: PathBuf::from(path),
            read_only: false,
        }
    }

    #[test]
    fn the_runtime_directory_must_sit_directly_under_run_tollgate() {
        assert!(PrivateMounts::prepare(Some(Path::new("/run/tollgate/abc")), &[], GIB).is_ok());
        assert!(PrivateMounts::prepare(None, &[], GIB).is_ok());
        for wrong in [
            "/run/tollgate",
            "/tmp/abc",
            "/run/tollgate/a/b",
            "/run/other/abc",
        ] {
            assert!(
                PrivateMounts::prepare(Some(Path::new(wrong)), &[], GIB).is_err(),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_share_gets_every_directory_of_its_mount_point_created() {
        let mounts = PrivateMounts::prepare(None, &[share("/tmp/job/code")], GIB).expect("prepare");
        let dirs: Vec<_> = mounts.shares[0]
            .mount_point_dirs
            .iter()
            .map(|d| d.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(dirs, ["/tmp/job", "/tmp/job/code"]);
    }

    #[test]
    fn paths_are_visible_only_outside_hidden_dirs_and_inside_shares() {
        let shares = [share("/tmp/job")];
        for visible in ["/usr/bin/python3", "/tmp", "/tmp/job", "/tmp/job/main.py"] {
            assert_eq!(
                invisible_because(Path::new(visible), &shares),
                None,
                "{visible}"
            );
        }
        for invisible in [
            "/run/x/tool",
            "/dev/shm/tool",
            "/proc/self/exe",
            "/sys/x",
            "/tmp/other/main.py",
            "/tmp/jobs/main.py",
            "/var/tmp/x",
        ] {
            assert!(
                invisible_because(Path::new(invisible), &shares).is_some(),
                "{invisible}"
            );
        }
        assert!(invisible_because(Path::new("/runner/tool"), &[]).is_none());
    }

    #[test]
    fn shares_are_mounted_outermost_first_and_never_twice() {
        let p = |s: &str| PathBuf::from(s);
        let shares =
            arrange_shares(&[p("/tmp/a/b/c")], &[p("/tmp/a"), p("/tmp/x/y")]).expect("arranged");
        let order: Vec<_> = shares
            .iter()
            .map(|s| (s.path.to_str().unwrap(), s.read_only))
            .collect();
        assert_eq!(
            order,
            [("/tmp/a", true), ("/tmp/x/y", true), ("/tmp/a/b/c", false)]
        );
        assert!(arrange_shares(&[p("/tmp/a")], &[p("/tmp/a")]).is_err());
        let many: Vec<_> = (0..=MAX_SHARES).map(|i| p(&format!("/tmp/{i}"))).collect();
        assert!(arrange_shares(&many, &[]).is_err());
        assert!(arrange_shares(&many[..MAX_SHARES], &[]).is_ok());
    }

    #[test]
    fn only_existing_directories_below_the_scratch_dirs_can_be_shared() {
        let dir = std::env::temp_dir().join(format!("tollgate-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("f");
        std::fs::write(&file, b"").expect("file");
        assert_eq!(check_share(&dir), Ok(()));
        for bad in [
            file.clone(),
            dir.join("missing"),
            PathBuf::from("/tmp"),
            PathBuf::from("/usr"),
            PathBuf::from("/run/x"),
            PathBuf::from("relative/dir"),
            dir.join("../x"),
        ] {
            assert!(check_share(&bad).is_err(), "{}", bad.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
