//! The child's private view of the host: its own mount and IPC namespaces.
//!
//! The network walls see sockets, not files, and a Unix socket is reached by its path: host
//! daemons listen under `/run` (D-Bus, nscd, systemd-resolved — which would resolve, and so
//! send, any name the sandbox asks for), and processes are visible and addressable through
//! `/proc`. So the child gets, in a mount namespace of its own:
//!
//! - a fresh `/run` (root-owned tmpfs) holding only the execution's runtime directory, bound
//!   back in from the host (the CA bundle and the Python helper live there);
//! - a fresh `/dev/shm`, freed with the namespace;
//! - a fresh `/proc` mounted `hidepid=invisible`: the sandbox sees only processes of its own
//!   user, which is the execution's own user (see `users`);
//! - a fresh, read-only `/sys` of the sandbox's network namespace: only its `lo` under
//!   `class/net`, and nothing mounted below it — no cgroup tree (whose directory names are
//!   other executions' ids and whose `cgroup.procs` list their pids), no bpffs, no tracefs;
//! - and a private IPC namespace (System V IPC and POSIX message queues).
//!
//! Everything else is the host's tree, unchanged (mount propagation is cut first, so nothing
//! done here reaches the host). All paths are prepared before fork; [`PrivateMounts::apply`]
//! runs between fork and exec and only makes system calls.

use super::SandboxError;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Where the execution's runtime directories live on the host and in the sandbox.
const RUNTIME_ROOT: &str = "/run/tollgate";

/// What the child mounts, prepared before fork.
#[derive(Debug)]
pub struct PrivateMounts {
    /// The runtime directory: its host path (bound from) and the same path in the new `/run`.
    runtime_dir: Option<CString>,
    dev_shm: bool,
}

/// Directories a sandboxed command cannot see the host's contents of.
pub const PRIVATE_DIRS: [&str; 4] = ["/run", "/dev/shm", "/proc", "/sys"];

impl PrivateMounts {
    /// Mounts for an execution whose runtime directory (if any) is `runtime_dir`, which must
    /// be a directory directly under `/run/tollgate`.
    pub fn prepare(runtime_dir: Option<&Path>) -> Result<PrivateMounts, SandboxError> {
        let runtime_dir = runtime_dir
            .map(|dir| {
                if dir.parent() != Some(Path::new(RUNTIME_ROOT)) {
                    return Err(SandboxError::Mounts {
                        step: "runtime directory",
                        source: io::Error::other(format!(
                            "{} is not directly under {RUNTIME_ROOT}",
                            dir.display()
                        )),
                    });
                }
                CString::new(dir.as_os_str().as_bytes()).map_err(|e| SandboxError::Mounts {
                    step: "runtime directory",
                    source: io::Error::other(e),
                })
            })
            .transpose()?;
        Ok(PrivateMounts {
            runtime_dir,
            dev_shm: Path::new("/dev/shm").is_dir(),
        })
    }

    /// Enters new mount and IPC namespaces and mounts the private directories. Runs in the
    /// child after fork, as root: system calls only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: system calls on NUL-terminated literals and on strings prepared before fork.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // Taken before /run is covered; moved into the new /run below.
            let runtime_tree = match &self.runtime_dir {
                Some(dir) => Some(check_fd(libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    dir.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
                ))?),
                None => None,
            };
            mount_tmpfs(c"/run", c"mode=0755,size=1m")?;
            if let (Some(dir), Some(tree)) = (&self.runtime_dir, runtime_tree) {
                check(libc::mkdir(c"/run/tollgate".as_ptr(), 0o755))?;
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
                let moved = libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dir.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                );
                libc::close(tree);
                check(moved as libc::c_int)?;
            }
            if self.dev_shm {
                mount_tmpfs(c"/dev/shm", c"mode=1777")?;
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

/// Mounts a fresh tmpfs (no devices, no set-uid) on `target`.
unsafe fn mount_tmpfs(target: &std::ffi::CStr, options: &std::ffi::CStr) -> io::Result<()> {
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

fn check_fd(result: libc::c_long) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as libc::c_int)
    }
}

/// The private directory `path` lies in, if any (a command there cannot be run: the sandbox
/// does not see it).
pub fn private_dir_of(path: &Path) -> Option<&'static str> {
    PRIVATE_DIRS.into_iter().find(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_directory_must_sit_directly_under_run_tollgate() {
        assert!(PrivateMounts::prepare(Some(Path::new("/run/tollgate/abc"))).is_ok());
        assert!(PrivateMounts::prepare(None).is_ok());
        for wrong in [
            "/run/tollgate",
            "/tmp/abc",
            "/run/tollgate/a/b",
            "/run/other/abc",
        ] {
            assert!(
                PrivateMounts::prepare(Some(Path::new(wrong))).is_err(),
                "{wrong}"
            );
        }
    }

    #[test]
    fn paths_under_the_private_directories_are_recognised() {
        assert_eq!(private_dir_of(Path::new("/run/x/tool")), Some("/run"));
        assert_eq!(private_dir_of(Path::new("/dev/shm/tool")), Some("/dev/shm"));
        assert_eq!(private_dir_of(Path::new("/proc/self/exe")), Some("/proc"));
        assert_eq!(private_dir_of(Path::new("/runner/tool")), None);
        assert_eq!(private_dir_of(Path::new("/usr/bin/python3")), None);
    }
}
