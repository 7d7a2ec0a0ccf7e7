//! The child's side of the mounts: between clone and exec, as root, system calls only.

use super::{trust_stores, Attach, PrivateMounts, DEV_PTS_MAX};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

/// Where the new root is assembled before `pivot_root` (any directory of the old root; it is
/// detached with the rest of the old root).
const STAGING: &CStr = c"/tmp";

const DEV_PTS_OPTIONS: &CStr = c"newinstance,ptmxmode=0666,mode=0620,max=64";
const _: () = assert!(DEV_PTS_MAX == 64, "DEV_PTS_OPTIONS says max=64");

/// The device nodes of the sandbox's `/dev`: path, major, minor (Documentation/admin-guide/
/// devices.txt).
const DEV_NODES: [(&CStr, u32, u32); 6] = [
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
    (c"/dev/tty", 5, 0),
];

/// Everything the sandbox's `/dev` holds, by path.
pub const DEV_ENTRIES: [&str; 13] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts",
    "/dev/ptmx",
    "/dev/shm",
    "/dev/fd",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
];

/// The links of `/dev`: name, target.
const DEV_LINKS: [(&CStr, &CStr); 5] = [
    (c"/dev/fd", c"/proc/self/fd"),
    (c"/dev/stdin", c"/proc/self/fd/0"),
    (c"/dev/stdout", c"/proc/self/fd/1"),
    (c"/dev/stderr", c"/proc/self/fd/2"),
    (c"/dev/ptmx", c"pts/ptmx"),
];

impl PrivateMounts {
    /// Enters new mount and IPC namespaces and builds the sandbox's view. Runs in the child
    /// after the clone, as root, in the execution's PID namespace (its `/proc` is mounted
    /// here): system calls only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: system calls on NUL-terminated literals, on strings and descriptors prepared
        // before the clone.
        unsafe {
            // Modes below are exact; the caller's umask is given back at the end.
            let umask = libc::umask(0);
            let applied = self.apply_unmasked();
            libc::umask(umask);
            applied
        }
    }

    unsafe fn apply_unmasked(&self) -> io::Result<()> {
        // SAFETY: as in `apply`.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            if let Some(image) = &self.new_root {
                match image {
                    Some(tree) => attach_tree(tree.as_raw_fd(), STAGING)?,
                    None => mount_fs(
                        c"tmpfs",
                        STAGING,
                        libc::MS_NOSUID | libc::MS_NODEV,
                        c"mode=0755,size=1m",
                    )?,
                }
                enter_new_root()?;
                for link in &self.links {
                    check(libc::symlink(link.target.as_ptr(), link.path.as_ptr()))?;
                }
                for attach in &self.system {
                    attach_at(attach)?;
                }
                if self.hide_etc_tollgate {
                    mount_fs(
                        c"tmpfs",
                        c"/etc/tollgate",
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                        c"mode=0755,size=4k",
                    )?;
                }
                for dir in [
                    c"/tmp",
                    c"/var",
                    c"/var/tmp",
                    c"/run",
                    c"/dev",
                    c"/proc",
                    c"/sys",
                ] {
                    make_dir(dir, 0o755)?;
                }
            }

            mount_fs(
                c"tmpfs",
                c"/run",
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=1m",
            )?;
            if let Some((dir, tree)) = &self.runtime_dir {
                check(libc::mkdir(c"/run/tollgate".as_ptr(), 0o755))?;
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
                attach_tree(tree.as_raw_fd(), dir)?;
            }
            mount_fs(
                c"tmpfs",
                c"/tmp",
                libc::MS_NOSUID | libc::MS_NODEV,
                &self.tmp_options,
            )?;
            if self.var_tmp {
                mount_fs(
                    c"tmpfs",
                    c"/var/tmp",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &self.tmp_options,
                )?;
            }
            if self.new_root.is_some() {
                self.minimal_dev()?;
            } else if self.dev_pts {
                mount_devpts()?;
                bind(c"/dev/pts/ptmx", c"/dev/ptmx")?;
            }
            if self.dev_shm {
                mount_fs(
                    c"tmpfs",
                    c"/dev/shm",
                    libc::MS_NOSUID | libc::MS_NODEV,
                    &self.shm_options,
                )?;
            }
            for share in &self.shares {
                attach_at(share)?;
            }
            // Over files of the root and the shares, before /proc and /sys exist: no link of
            // the root can lead into them.
            if let Some(bundle) = &self.trust_store {
                trust_stores::cover(bundle)?;
            }
            if let Some((source, plan)) = &self.resolv_conf {
                plan.apply(source)?;
            }
            mount_fs(
                c"proc",
                c"/proc",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"hidepid=invisible",
            )?;
            check(libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            if self.new_root.is_some() {
                // Nothing may be added to the root itself once the view is built.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    std::ptr::null(),
                ))?;
            }
        }
        Ok(())
    }

    /// A tmpfs `/dev` with the usual nodes, a devpts instance of its own, and the links.
    unsafe fn minimal_dev(&self) -> io::Result<()> {
        // SAFETY: system calls on literals, in the child's own mount namespace.
        unsafe {
            // Not `nodev`: its nodes must work. Nothing else can be created in it.
            mount_fs(
                c"tmpfs",
                c"/dev",
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=0755,size=64k",
            )?;
            for (path, major, minor) in DEV_NODES {
                check(libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                ))?;
            }
            make_dir(c"/dev/pts", 0o755)?;
            make_dir(c"/dev/shm", 0o1777)?;
            mount_devpts()?;
            for (path, target) in DEV_LINKS {
                check(libc::symlink(target.as_ptr(), path.as_ptr()))?;
            }
        }
        Ok(())
    }
}

/// `pivot_root` into the staging directory's mount and detaches the old root.
unsafe fn enter_new_root() -> io::Result<()> {
    // SAFETY: system calls on literals; the old root is stacked under the new one by
    // pivot_root(".", ".") and detached right after.
    unsafe {
        check(libc::chdir(STAGING.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))
    }
}

/// Creates every directory of `attach`'s mount point (those that exist are fine: in a
/// read-only bind, an existing directory can still be mounted on) and attaches its tree.
unsafe fn attach_at(attach: &Attach) -> io::Result<()> {
    // SAFETY: prepared NUL-terminated paths and a descriptor the supervisor keeps open.
    unsafe {
        for dir in &attach.mount_point_dirs {
            make_dir(dir, 0o755)?;
        }
        match attach.mount_point_dirs.last() {
            Some(target) => attach_tree(attach.tree.as_raw_fd(), target),
            None => Ok(()),
        }
    }
}

pub(super) unsafe fn make_dir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkdir(path.as_ptr(), mode) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EEXIST) {
            return Err(error);
        }
    }
    Ok(())
}

unsafe fn mount_devpts() -> io::Result<()> {
    // SAFETY: literals; a devpts instance of the sandbox's own.
    unsafe {
        mount_fs(
            c"devpts",
            c"/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            DEV_PTS_OPTIONS,
        )
    }
}

unsafe fn bind(source: &CStr, target: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated paths.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
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

/// Mounts a fresh filesystem of type `fs` (also its source name) on `target`.
unsafe fn mount_fs(
    fs: &CStr,
    target: &CStr,
    flags: libc::c_ulong,
    options: &CStr,
) -> io::Result<()> {
    // SAFETY: NUL-terminated strings; the caller is in its own mount namespace.
    check(unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    })
}

/// Opens `path` in the sandbox's view as an `O_PATH` descriptor (`openat2(2)`, Linux 5.6),
/// never through a magic link (`/proc/<pid>/root` and the like). With `follow`, its links are
/// followed, inside the sandbox's root (the child has made it its own); without, no link is.
pub(super) fn open_in_view(path: &CStr, follow: bool) -> io::Result<OwnedFd> {
    let (flags, resolve) = if follow {
        (0, libc::RESOLVE_NO_MAGICLINKS)
    } else {
        (
            libc::O_NOFOLLOW,
            libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
        )
    };
    // SAFETY: open_how is plain data (zero: no flag, no mode).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | flags) as u64;
    how.resolve = resolve;
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// What `fstat` says of an open descriptor.
pub(super) fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled by fstat for an open descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) })?;
    Ok(stat)
}

/// Binds the file `source` (a path of the sandbox with no link in it) over the file `target`,
/// read-only, with no set-uid, no devices and no execution: a clone of its mount
/// (`open_tree`), set (`mount_setattr`), then moved onto the descriptor (`move_mount`).
pub(super) fn bind_file_onto(source: &CStr, target: BorrowedFd<'_>) -> io::Result<()> {
    let tree = super::cloned_mount(
        libc::AT_FDCWD,
        source,
        libc::AT_SYMLINK_NOFOLLOW,
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
    )?;
    // SAFETY: two open descriptors and empty paths.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(moved as libc::c_int)
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
