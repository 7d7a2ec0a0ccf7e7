//! What the sandbox sees of the host: which paths exist in its view, and which host
//! directories may be shared into it.

use super::{
    host_path, OpenShare, Root, Share, HIDDEN_IN_ETC, KERNEL_DIRS, MAX_SHARES, SCRATCH_DIRS,
    SYSTEM_DIRS,
};
use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The sandbox's view of the host's tree, for telling the user before the start that a path
/// they gave will not exist inside.
pub struct View<'a> {
    pub root: &'a Root,
    pub shares: &'a [Share],
}

impl View<'_> {
    /// Whether `path` (absolute) exists in the sandbox's view. `None` when it does; otherwise
    /// the reason it does not, to show the user.
    pub fn invisible_because(&self, path: &Path) -> Option<String> {
        if self
            .shares
            .iter()
            .any(|share| path.starts_with(&share.path))
        {
            return None;
        }
        // The directories the sandbox always has (its own, empty or fresh), and its /dev.
        if path == Path::new("/")
            || path == Path::new("/var")
            || OWN_DIRS.iter().any(|dir| path == Path::new(dir))
            || super::child::DEV_ENTRIES
                .iter()
                .any(|entry| path == Path::new(entry))
        {
            return None;
        }
        if let Some(dir) = KERNEL_DIRS.into_iter().find(|dir| path.starts_with(dir)) {
            return Some(format!(
                "{} is under {dir}, which the sandbox gets its own of",
                path.display()
            ));
        }
        if let Some(scratch) = scratch_dir_of(path) {
            return Some(format!(
                "{} is under {scratch}, which the sandbox gets an empty one of; share its \
                 directory with --share DIR (or --share-ro DIR)",
                path.display()
            ));
        }
        match self.root {
            Root::Host => None,
            Root::System => {
                let in_system = SYSTEM_DIRS.into_iter().any(|dir| path.starts_with(dir));
                if in_system && !path.starts_with(HIDDEN_IN_ETC) {
                    None
                } else {
                    Some(format!(
                        "{} is outside the sandbox's view (the host's {} and what is shared); \
                         share its directory with --share DIR (or --share-ro DIR)",
                        path.display(),
                        SYSTEM_DIRS.join(", ")
                    ))
                }
            }
            Root::Image(dir) => {
                let inside = dir.join(path.strip_prefix("/").unwrap_or(path));
                if std::fs::symlink_metadata(&inside).is_ok() || path == Path::new("/") {
                    None
                } else {
                    Some(format!(
                        "{} does not exist in the root filesystem {}; share its directory with \
                         --share DIR (or --share-ro DIR)",
                        path.display(),
                        dir.display()
                    ))
                }
            }
        }
    }
}

impl View<'_> {
    /// Whether the host's directory `path` (absolute, normal) is reachable from inside the
    /// sandbox as that same directory: through a share, or through a bind of the host's tree.
    /// The sandbox's own `/tmp`, `/run` and the like are other directories that merely share
    /// a name, so a host directory there is out of its reach.
    pub fn reaches_host_dir(&self, path: &Path) -> bool {
        if self
            .shares
            .iter()
            .any(|share| path.starts_with(&share.path))
        {
            return true;
        }
        if OWN_DIRS.iter().any(|dir| path.starts_with(dir)) {
            return false;
        }
        match self.root {
            Root::Host => true,
            Root::System => {
                SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir))
                    && !path.starts_with(HIDDEN_IN_ETC)
            }
            // The image is bound read-only; nothing else of the host is inside.
            Root::Image(_) => false,
        }
    }
}

/// The directories the sandbox gets fresh ones of, whatever its root: the host's directories
/// of these names are out of its reach, and an image must have them to mount on.
const OWN_DIRS: [&str; 6] = ["/tmp", "/var/tmp", "/run", "/dev", "/proc", "/sys"];

/// The scratch directory `path` lies strictly below, if any.
fn scratch_dir_of(path: &Path) -> Option<&'static str> {
    SCRATCH_DIRS
        .into_iter()
        .find(|dir| path.starts_with(dir) && path != Path::new(dir))
}

/// The largest `--tmp-size`: the host's memory and swap (tmpfs pages live in them).
pub fn max_tmp_size() -> io::Result<u64> {
    let info = nix::sys::sysinfo::sysinfo()?;
    Ok(info.ram_total().saturating_add(info.swap_total()))
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
/// directory reached with no link in any component, neither `/` nor in a kernel or runtime
/// tree (`/proc`, `/sys`, `/dev`, `/run`, any cgroup, bpf, debug or trace filesystem).
pub fn check_share(path: &Path) -> Result<(), String> {
    // The authoritative check is on the descriptor `open_shares` takes; this one gives the
    // message early.
    open_share_dir(path).map(drop)
}

/// Filesystems whose trees are the kernel's, never a sandbox's to see.
const KERNEL_FILESYSTEMS: [(i64, &str); 9] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x1cd1, "devpts"),
];

pub(super) fn open_share_dir(path: &Path) -> Result<OwnedFd, String> {
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
    if path == Path::new("/") {
        return Err(
            "--share /: the whole host cannot be shared; share the directories the job needs"
                .into(),
        );
    }
    if let Some(dir) = KERNEL_DIRS.into_iter().find(|dir| path.starts_with(dir)) {
        return Err(format!(
            "--share {shown}: {dir} is a kernel or runtime tree the sandbox gets its own of; it \
             cannot be shared"
        ));
    }
    let dir = host_path::open_dir(path).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOTDIR) => format!("--share {shown}: not a directory"),
        _ => format!("--share: {}", host_path::describe_error(path, &error)),
    })?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills one statfs for an open descriptor.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!("--share {shown}: {}", io::Error::last_os_error()));
    }
    if let Some((_, name)) = KERNEL_FILESYSTEMS
        .iter()
        .find(|(magic, _)| *magic == stat.f_type as i64)
    {
        return Err(format!(
            "--share {shown}: it is on a {name} filesystem, a kernel tree that cannot be shared"
        ));
    }
    Ok(dir)
}

/// Checks that the root filesystem `dir` has every directory the sandbox mounts on (it is
/// bound read-only, so none can be created in it).
pub(super) fn check_image(dir: &Path, shares: &[OpenShare]) -> Result<(), String> {
    // Shares below /tmp and /var/tmp get their mount points in those fresh tmpfs.
    let needed = OWN_DIRS.into_iter().map(PathBuf::from).chain(
        shares
            .iter()
            .map(|open| open.share.path.clone())
            .filter(|path| scratch_dir_of(path).is_none()),
    );
    let missing: Vec<String> = needed
        .filter(|path| !dir.join(path.strip_prefix("/").unwrap_or(path)).is_dir())
        .map(|path| path.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the root filesystem {} lacks directories the sandbox mounts on: {}; create them \
             in the image (see images/sandbox/)",
            dir.display(),
            missing.join(", ")
        ))
    }
}
