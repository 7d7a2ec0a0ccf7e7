//! Host paths the supervisor opens as root, resolved as if the sandbox had planted a symbolic
//! link in any of their components (design invariant 7).
//!
//! A path the operator names (`--audit`, `--summary`, `--share`) may pass through directories
//! an execution could write, now or earlier: a shared directory, a world-writable one. A link
//! planted there would send a root write, or a bind mount, anywhere on the host. So every such
//! path is made absolute and normal by its text, then opened once with `openat2(2)` and
//! `RESOLVE_NO_SYMLINKS` (Linux 5.6), which fails with `ELOOP` if any component is a link; the
//! descriptor is what is checked and used afterwards, so the path cannot change in between.

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// `path` made absolute (against the working directory, which the kernel reports without
/// links) and normal by its text: no `.`, no `..`, no repeated `/`. Since every component is
/// then opened without following links, the text names the directory actually opened.
pub fn absolute(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut normal = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                normal.pop();
            }
            Component::Normal(part) => normal.push(part),
        }
    }
    Ok(normal)
}

/// `flags` plus close-on-exec, and no controlling terminal (which `O_PATH` may not be given:
/// openat2 refuses flags it would ignore).
fn with_defaults(flags: OFlag) -> OFlag {
    if flags.contains(OFlag::O_PATH) {
        flags | OFlag::O_CLOEXEC
    } else {
        flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    }
}

/// Opens `path` (absolute) with `flags`, following no link in any component.
pub fn open(path: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(with_defaults(flags))
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how).map_err(io::Error::from)
}

/// Opens the directory `path` (absolute) as an `O_PATH` descriptor, following no link.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
}

/// Opens `name` (one component) inside the directory `dir`, following no link and never
/// leaving `dir`.
pub fn open_in(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(with_defaults(flags))
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_BENEATH,
        );
    nix::fcntl::openat2(dir, name, how).map_err(io::Error::from)
}

/// Writes `text` to a fresh file beside `name` in `dir` and renames it over `name`, so a
/// reader sees the old file or the whole new one, never half of it (a `--summary`, written
/// by a local run and by `run --connect`'s client alike). The fresh file is removed if any
/// step fails.
pub fn replace_in(dir: BorrowedFd<'_>, name: &OsStr, text: &[u8]) -> io::Result<()> {
    let temporary = temporary_name(name)?;
    let fd = open_in(
        dir,
        &temporary,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        0o644,
    )?;
    let mut file = std::fs::File::from(fd);
    let written = file
        .write_all(text)
        .and_then(|()| file.sync_data())
        .and_then(|()| {
            nix::fcntl::renameat(dir, temporary.as_os_str(), dir, name).map_err(io::Error::from)
        });
    if written.is_err() {
        let _ = nix::unistd::unlinkat(
            dir,
            temporary.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    written
}

/// `.NAME.tollgate-<16 hex>`: beside `name`, never an existing name (`O_EXCL`).
fn temporary_name(name: &OsStr) -> io::Result<OsString> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(io::Error::other)?;
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".tollgate-{:016x}", u64::from_ne_bytes(random)));
    Ok(temporary)
}

/// What `fstat` says of a descriptor.
pub fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    nix::sys::stat::fstat(fd).map_err(io::Error::from)
}

/// Identity of a file: device and inode.
pub type FileId = (u64, u64);

pub fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let stat = stat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// The identities of `dir` and of every directory above it, up to `/` (walked through `..`
/// from the descriptor, so they are the directories actually above it, whatever path led
/// there).
pub fn ancestry(dir: BorrowedFd<'_>) -> io::Result<Vec<FileId>> {
    let mut ids = vec![file_id(dir)?];
    let mut at = open_parent(dir)?;
    loop {
        let id = file_id(at.as_fd())?;
        if ids.last() == Some(&id) {
            return Ok(ids);
        }
        ids.push(id);
        at = open_parent(at.as_fd())?;
    }
}

fn open_parent(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // `..` of `/` is `/` itself; RESOLVE_BENEATH would refuse `..`, so it is not set here.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(dir, "..", how).map_err(io::Error::from)
}

/// Whether a process running as `uid:gid` (no supplementary groups) may create or remove
/// entries in the directory `stat` describes, by its mode bits.
pub fn writable_by(stat: &libc::stat, uid: u32, gid: u32) -> bool {
    let mode = stat.st_mode;
    (stat.st_uid == uid && mode & 0o200 != 0)
        || (stat.st_gid == gid && mode & 0o020 != 0)
        || mode & 0o002 != 0
}

/// A message for an `openat2` failure on `path`: the link case says what to do.
pub fn describe_error(path: &Path, error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "{} has a symbolic link in it, which tollgate does not follow (a sandbox could \
             have planted it); give the real path",
            path.display()
        ),
        Some(libc::ENOSYS) => format!(
            "{}: openat2 is not available (tollgate needs Linux 5.6 or newer)",
            path.display()
        ),
        _ => format!("{}: {error}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_and_normal_by_their_text() {
        let cases = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b//c/", "/a/b/c"),
            ("/../..", "/"),
            ("/", "/"),
        ];
        for (given, expected) in cases {
            assert_eq!(absolute(Path::new(given)).unwrap(), Path::new(expected));
        }
        let here = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new("x/y")).unwrap(), here.join("x/y"));
    }

    #[test]
    fn a_link_in_any_component_is_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-host-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        assert!(open_dir(&dir.join("real/inner")).is_ok());
        for through_link in [dir.join("link"), dir.join("link/inner")] {
            let error = open_dir(&through_link).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{through_link:?}");
            assert!(describe_error(&through_link, &error).contains("symbolic link"));
        }
        let real = open_dir(&dir).unwrap();
        assert!(open_in(real.as_fd(), OsStr::new("link"), OFlag::O_PATH, 0).is_err());
        assert!(open_in(real.as_fd(), OsStr::new("../x"), OFlag::O_PATH, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ancestry_of_a_directory_ends_at_the_root() {
        let tmp = open_dir(Path::new("/tmp")).unwrap();
        let ids = ancestry(tmp.as_fd()).unwrap();
        let root = file_id(open_dir(Path::new("/")).unwrap().as_fd()).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.last(), Some(&root));
    }

    #[test]
    fn writability_follows_the_mode_bits() {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        stat.st_uid = 10;
        stat.st_gid = 20;
        stat.st_mode = libc::S_IFDIR | 0o755;
        assert!(writable_by(&stat, 10, 99));
        assert!(!writable_by(&stat, 11, 20));
        stat.st_mode = libc::S_IFDIR | 0o775;
        assert!(writable_by(&stat, 11, 20));
        stat.st_mode = libc::S_IFDIR | 0o1777;
        assert!(writable_by(&stat, 11, 21));
    }
}
