//! The BPF filesystem where the wall's loaded programs are pinned: mounting it and keeping
//! its pin directories tidy.
//!
//! A pin keeps a program loaded after the process that loaded it exits, so the next
//! supervisor skips loading and verification. Directories are published by `rename(2)` of a
//! fully pinned `loading-<pid>-<random>` directory, so a reader never sees half a set (bpffs
//! refuses names with a dot, hence no hidden names).

use std::{
    ffi::CString,
    fs::{self, DirBuilder, File},
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use crate::sandbox::SandboxError;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Prefix of a pin directory still being filled (`loading-<pid>-<random>`).
pub(super) const LOADING_PREFIX: &str = "loading-";
/// Prefix of a broken pin directory moved aside before removal.
pub(super) const STALE_PREFIX: &str = "stale-";

/// Whether `path` is on a BPF filesystem.
fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain old data; the kernel fills it on success.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but a narrower integer on other targets"
    )]
    let f_type = i64::from(stat.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

/// Mounts bpffs at [`BPFFS`] unless it is mounted already.
///
/// Concurrent supervisors serialise on an `flock` of the mount point so only one mounts.
pub(super) fn ensure_mounted() -> Result<(), SandboxError> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    let mount_error = |source| SandboxError::BpffsMount {
        path: path.to_path_buf(),
        source,
    };
    let dir = File::open(path).map_err(mount_error)?;
    // SAFETY: flock on a descriptor we own; released when `dir` closes.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(mount_error(io::Error::last_os_error()));
    }
    if is_bpffs(path) {
        return Ok(());
    }
    let (Ok(source), Ok(target), Ok(fstype), Ok(options)) = (
        CString::new("bpf"),
        CString::new(path.as_os_str().as_bytes()),
        CString::new("bpf"),
        CString::new("mode=0700"),
    ) else {
        return Err(mount_error(io::ErrorKind::InvalidInput.into()));
    };
    // SAFETY: valid NUL-terminated strings; `options` is a string as bpffs expects.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(mount_error(io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates a directory (and its parents) readable by root only; an existing one is fine.
pub(super) fn create_private_dir(path: &Path) -> Result<(), SandboxError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| SandboxError::BpfPinDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Unpins everything in a pin directory (and its slot directories) and removes it. Objects
/// stay loaded while anything (an open descriptor, a cgroup link) still uses them.
pub(super) fn remove_pin_dir(path: &Path) -> io::Result<()> {
    match fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    remove_pin_dir(&entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    }
    match fs::remove_dir(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Moves a pin directory out of the way (so no new reader opens it), then removes it.
pub(super) fn discard_pin_dir(path: &Path, unique: &str) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return remove_pin_dir(path);
    };
    let aside = parent.join(format!("{STALE_PREFIX}{unique}"));
    match fs::rename(path, &aside) {
        Ok(()) => remove_pin_dir(&aside),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// Removes `loading-*` directories of dead supervisors and `stale-*` leftovers under
/// `pin_root`; returns the directories removed.
pub(super) fn gc_pin_root(pin_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(pin_root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let abandoned = if let Some(rest) = name.strip_prefix(LOADING_PREFIX) {
            rest.split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        } else {
            name.starts_with(STALE_PREFIX)
        };
        if abandoned && remove_pin_dir(&entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}
