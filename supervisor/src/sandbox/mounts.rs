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
//!   `--share-ro`, bound in at the same paths. A share is opened once by the supervisor with
//!   no link followed in any component ([`open_shares`]), and its mount is cloned from that
//!   descriptor before the child exists (no set-uid, no devices, private, read-only for
//!   `--share-ro` down to every mount below it), so what is bound is what was checked;
//! - a fresh `/dev/shm` of at most [`DEV_SHM_SIZE`], freed with the namespace (tmpfs pages
//!   are memory, and the host's cgroups may have no memory controller to bound them);
//! - a devpts instance of its own on `/dev/pts` (with `/dev/ptmx` bound to its `ptmx`), of at
//!   most [`DEV_PTS_MAX`] terminals: the host's ptys are not listed, and the sandbox cannot
//!   take from the pool the host and every other execution draw from;
//! - a fresh `/proc` mounted `hidepid=invisible`: the sandbox sees only processes of its own
//!   user, which is the execution's own user (see `users`);
//! - a fresh, read-only `/sys` of the sandbox's network namespace: only its `lo` under
//!   `class/net`, and nothing mounted below it — no cgroup tree (whose directory names are
//!   other executions' ids and whose `cgroup.procs` list their pids), no bpffs, no tracefs;
//! - and a private IPC namespace (System V IPC and POSIX message queues).
//!
//! Everything else is the host's tree, unchanged (mount propagation is cut first, so nothing
//! done here reaches the host). All paths and the cloned mounts are prepared before the clone;
//! [`PrivateMounts::apply`] runs between clone and exec and only makes system calls.

use super::host_path::{self, FileId};
use super::SandboxError;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
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
/// The most pseudo-terminals a sandbox may hold at once (its own devpts instance).
pub const DEV_PTS_MAX: u32 = 64;
const DEV_PTS_OPTIONS: &CStr = c"newinstance,ptmxmode=0666,mode=0620,max=64";
const _: () = assert!(DEV_PTS_MAX == 64, "DEV_PTS_OPTIONS says max=64");

/// The smallest `--tmp-size` (tmpfs reads a size of 0 as "no limit").
pub const MIN_TMP_SIZE: u64 = 1 << 20;

/// The largest `--tmp-size`: the host's memory and swap (tmpfs pages live in them).
pub fn max_tmp_size() -> io::Result<u64> {
    let info = nix::sys::sysinfo::sysinfo()?;
    Ok(info.ram_total().saturating_add(info.swap_total()))
}

/// The most directories one execution may share (the child keeps their mounts in a fixed
/// array, since it cannot allocate).
pub const MAX_SHARES: usize = 16;

/// A host directory bound into a scratch directory at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A shared directory opened once, with no link followed in any component: the descriptor
/// its mount is cloned from, and its identity (for `run::outputs`, which refuses to write
/// inside a share).
#[derive(Debug)]
pub struct OpenShare {
    pub share: Share,
    dir: OwnedFd,
    pub id: FileId,
}

/// Opens every share (see [`OpenShare`]); the message names the share and what to fix.
pub fn open_shares(shares: &[Share]) -> Result<Vec<OpenShare>, String> {
    shares
        .iter()
        .map(|share| {
            let dir = open_share_dir(&share.path)?;
            let id = host_path::file_id(dir.as_fd())
                .map_err(|e| format!("--share {}: {e}", share.path.display()))?;
            Ok(OpenShare {
                share: share.clone(),
                dir,
                id,
            })
        })
        .collect()
}

fn open_share_dir(path: &Path) -> Result<OwnedFd, String> {
    host_path::open_dir(path).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOTDIR) => format!("--share {}: not a directory", path.display()),
        _ => format!("--share: {}", host_path::describe_error(path, &error)),
    })
}

/// What a share becomes in the child: its mount, already cloned (detached) from the opened
/// directory, and the directories to create for its mount point, outermost first (the last
/// one is the mount point).
#[derive(Debug)]
struct PreparedShare {
    tree: OwnedFd,
    mount_point_dirs: Vec<CString>,
}

/// What the child mounts, prepared before the clone.
#[derive(Debug)]
pub struct PrivateMounts {
    /// The runtime directory: its path (the same in the new `/run`) and its mount, cloned.
    runtime_dir: Option<(CString, OwnedFd)>,
    shares: Vec<PreparedShare>,
    dev_shm: bool,
    dev_pts: bool,
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
        shares: &[OpenShare],
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
                let opened = host_path::open_dir(dir).map_err(|e| {
                    mount_error("runtime directory", host_path::describe_error(dir, &e))
                })?;
                let tree = detached_copy(&opened, true).map_err(|source| SandboxError::Mounts {
                    step: "runtime directory",
                    source,
                })?;
                Ok((c_path("runtime directory", dir)?, tree))
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
            .filter_map(|open| {
                let scratch = scratch_dir_of(&open.share.path)?;
                Some((open, scratch))
            })
            .map(|(open, scratch)| {
                let mut dirs = Vec::new();
                let mut at = PathBuf::from(scratch);
                for part in open
                    .share
                    .path
                    .strip_prefix(scratch)
                    .unwrap_or(Path::new(""))
                {
                    at.push(part);
                    dirs.push(c_path("shared directory", &at)?);
                }
                let tree = detached_copy(&open.dir, open.share.read_only).map_err(|source| {
                    SandboxError::Mounts {
                        step: "shared directory",
                        source,
                    }
                })?;
                Ok(PreparedShare {
                    tree,
                    mount_point_dirs: dirs,
                })
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        Ok(PrivateMounts {
            runtime_dir,
            shares,
            dev_shm: Path::new("/dev/shm").is_dir(),
            dev_pts: Path::new("/dev/pts").is_dir() && Path::new("/dev/ptmx").exists(),
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
            mount_tmpfs(c"/run", c"mode=0755,size=1m")?;
            if let Some((dir, tree)) = &self.runtime_dir {
                check(libc::mkdir(c"/run/tollgate".as_ptr(), 0o755))?;
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
                attach_tree(tree.as_raw_fd(), dir)?;
            }
            mount_tmpfs(c"/tmp", &self.tmp_options)?;
            if self.var_tmp {
                mount_tmpfs(c"/var/tmp", &self.tmp_options)?;
            }
            for share in &self.shares {
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
                attach_tree(share.tree.as_raw_fd(), target)?;
            }
            if self.dev_shm {
                mount_tmpfs(c"/dev/shm", &self.shm_options)?;
            }
            if self.dev_pts {
                // A devpts instance of the sandbox's own: its ptys are not the host's (nor
                // listed with them), and at most DEV_PTS_MAX of them.
                check(libc::mount(
                    c"devpts".as_ptr(),
                    c"/dev/pts".as_ptr(),
                    c"devpts".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NOEXEC,
                    DEV_PTS_OPTIONS.as_ptr().cast(),
                ))?;
                check(libc::mount(
                    c"/dev/pts/ptmx".as_ptr(),
                    c"/dev/ptmx".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
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

/// A detached copy of the mount tree at the opened directory `dir` (`open_tree(2)` with
/// `OPEN_TREE_CLONE`, Linux 5.2), made in the supervisor before the clone, so what is bound is
/// the directory that was checked, whatever its path names by then. Every mount of the copy
/// gets no set-uid and no devices (and is read-only when `read_only`), and is private: nothing
/// mounted on the host side later propagates into the sandbox (`mount_setattr(2)`, Linux 5.12).
fn detached_copy(dir: &OwnedFd, read_only: bool) -> io::Result<OwnedFd> {
    // SAFETY: an open descriptor and an empty path; the descriptor returned is owned here.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE
                | libc::OPEN_TREE_CLOEXEC
                | (libc::AT_RECURSIVE | libc::AT_EMPTY_PATH) as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let mut attributes: libc::mount_attr = unsafe { std::mem::zeroed() };
    attributes.attr_set = libc::MOUNT_ATTR_NOSUID
        | libc::MOUNT_ATTR_NODEV
        | if read_only {
            libc::MOUNT_ATTR_RDONLY
        } else {
            0
        };
    attributes.propagation = libc::MS_PRIVATE;
    // SAFETY: the detached tree, an empty path and a mount_attr of the size passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attributes as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Mounts the detached tree `tree` on `target`.
unsafe fn attach_tree(tree: libc::c_int, target: &CStr) -> io::Result<()> {
    // SAFETY: `tree` came from `detached_copy`; `target` is NUL-terminated.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(moved as libc::c_int)
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
    // The authoritative check is on the descriptor `open_shares` takes; this one gives the
    // message early.
    open_share_dir(path).map(drop)
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
        let root = std::env::temp_dir().join(format!("tollgate-mp-{}", std::process::id()));
        let code = root.join("code");
        std::fs::create_dir_all(&code).expect("dir");
        let shares = open_shares(&[share(code.to_str().unwrap())]).expect("open");
        let mounts = PrivateMounts::prepare(None, &shares, GIB).expect("prepare");
        let _ = std::fs::remove_dir_all(&root);
        let leaf = root.file_name().unwrap().to_str().unwrap();
        let dirs: Vec<_> = mounts.shares[0]
            .mount_point_dirs
            .iter()
            .map(|d| d.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(dirs, [format!("/tmp/{leaf}"), format!("/tmp/{leaf}/code")]);
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

    #[test]
    fn a_share_through_a_linked_parent_is_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-share-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/run", &link).expect("link");
        let error = check_share(&link.join("user")).expect_err("refused");
        assert!(error.contains("symbolic link"), "{error}");
        assert!(open_shares(&[share(link.join("user").to_str().unwrap())]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
