//! The launch socket: bound so that no one but root can reach it before its owner, group and
//! mode are set, and never through a link an unprivileged user planted.
//!
//! A path socket cannot be given its mode with `fchmod` on the socket (that changes the
//! socket inode in sockfs, not the file `bind` created), so the file is handled by its
//! name. Two things make that safe:
//! - the directory is opened once and must be root's and writable by root alone; every
//!   later step (the stale-socket check, the unlink, `bind`, `chown`, `chmod`, the unlink at
//!   shutdown) goes through that descriptor (`/proc/self/fd/N/NAME` for `bind` and
//!   `connect`, the `*at` calls for the rest), so no one else can swap the name, or a
//!   directory above it, between the steps;
//! - `bind` runs under a umask of 0o177, so the socket is born `0600 root`: until the
//!   `chown`/`chmod` that follow, only root can connect. (The umask is the process's: the
//!   socket is bound before the service runs anything else that creates files, and before
//!   any worker is spawned.)
//!
//! One visible consequence: the kernel records the address bound, so `ss -xl` shows the
//! socket as `/proc/self/fd/N/NAME`; callers connect to the configured path as usual.

use super::node_config::SocketSettings;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmodat, fstatat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The bound socket's file and the directory it lives in (held open for the unlink at
/// shutdown).
pub struct LaunchSocket {
    path: PathBuf,
    dir: OwnedFd,
    name: OsString,
}

impl LaunchSocket {
    /// Binds `settings.path`, replacing a stale socket (one no service answers on), and gives
    /// it the configured owner, group and mode; returns it with its listener. Any failure is
    /// one sentence for the operator, and leaves no socket file behind.
    pub fn bind(settings: &SocketSettings) -> Result<(LaunchSocket, UnixListener), String> {
        let path = &settings.path;
        let shown = path.display();
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if path.is_absolute() => (parent, name.to_owned()),
            _ => {
                return Err(format!(
                    "the socket path {shown} is not an absolute file path"
                ))
            }
        };
        let dir = open_own_dir(parent)?;
        let via_dir = dir_path(&dir).join(&name);
        remove_stale(&dir, &name, &via_dir, path)?;
        let listener = {
            let previous = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
            let bound = UnixListener::bind(&via_dir);
            nix::sys::stat::umask(previous);
            bound.map_err(|e| format!("cannot listen on {shown}: {e}"))?
        };
        let socket = LaunchSocket {
            path: path.clone(),
            dir,
            name,
        };
        if let Err(error) = socket.set_owner_and_mode(settings) {
            socket.remove();
            return Err(error);
        }
        Ok((socket, listener))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn set_owner_and_mode(&self, settings: &SocketSettings) -> Result<(), String> {
        let shown = self.path.display();
        if settings.uid.is_some() || settings.gid.is_some() {
            fchownat(
                &self.dir,
                self.name.as_os_str(),
                settings.uid.map(Uid::from_raw),
                settings.gid.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("cannot set the owner of {shown}: {e}"))?;
        }
        // The name is the socket bound a moment ago: only root can write the directory.
        fchmodat(
            &self.dir,
            self.name.as_os_str(),
            Mode::from_bits_truncate(settings.mode & 0o777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("cannot set the mode of {shown}: {e}"))
    }

    /// Removes the socket file (at shutdown: a caller then learns at once that no service
    /// is there). Only a socket is removed.
    pub fn remove(&self) {
        if is_socket(&self.dir, &self.name) == Ok(true) {
            if let Err(error) =
                unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir)
            {
                tracing::warn!("cannot remove {}: {error}", self.path.display());
            }
        }
    }
}

/// Opens `dir` (creating it `0755 root` when missing) and checks that only root can change
/// what is in it.
fn open_own_dir(dir: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::DirBuilderExt as _;
    let shown = dir.display();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create the socket's directory {shown}: {e}"))?;
    }
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the socket's directory {shown}: {e}"))?;
    let stat = nix::sys::stat::fstat(&fd)
        .map_err(|e| format!("cannot read the socket's directory {shown}: {e}"))?;
    if stat.st_uid != 0 || stat.st_mode & 0o022 != 0 {
        return Err(format!(
            "the socket's directory {shown} must belong to root and be writable by root alone \
             (it is owned by uid {} with mode {:o}): another user could replace the socket; \
             give a directory such as /run/tollgate",
            stat.st_uid,
            stat.st_mode & 0o7777
        ));
    }
    Ok(fd)
}

/// `/proc/self/fd/N`: the open directory by a name that no rename can redirect.
fn dir_path(dir: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Whether `name` in `dir` is a socket (not following a link); `Err` when it is absent or
/// cannot be read.
fn is_socket(dir: &OwnedFd, name: &OsString) -> nix::Result<bool> {
    let stat = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
}

/// Removes a socket left by a service that is gone; refuses when a service still answers
/// on it or when the name is something else than a socket.
fn remove_stale(dir: &OwnedFd, name: &OsString, via_dir: &Path, path: &Path) -> Result<(), String> {
    let shown = path.display();
    match is_socket(dir, name) {
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("cannot look at {shown}: {e}")),
        Ok(false) => {
            return Err(format!(
                "{shown} exists and is not a socket: remove it or give another --socket"
            ))
        }
        Ok(true) => {}
    }
    match UnixStream::connect(via_dir) {
        Ok(_) => Err(format!(
            "another node service is listening on {shown}: stop it first, or give another \
             --socket"
        )),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!("removing the stale socket {shown}");
            unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))
        }
        Err(e) => Err(format!(
            "cannot tell whether a service answers on {shown}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn settings(path: PathBuf, mode: u32) -> SocketSettings {
        SocketSettings {
            path,
            uid: None,
            gid: Some(12345),
            mode,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-listener-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn the_socket_gets_its_group_and_mode_and_a_stale_one_is_replaced() {
        if !nix::unistd::geteuid().is_root() {
            return eprintln!("skipped: chown needs root");
        }
        let dir = scratch("mode");
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).unwrap()); // a stale socket: no one listens
        let (bound, _listener) = LaunchSocket::bind(&settings(path.clone(), 0o660)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), 12345);
        assert!(UnixStream::connect(&path).is_ok());
        let again = LaunchSocket::bind(&settings(path.clone(), 0o660))
            .err()
            .unwrap();
        assert!(
            again.contains("another node service is listening"),
            "{again}"
        );
        bound.remove();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_or_a_file_at_the_path_and_a_shared_directory_are_refused() {
        let dir = scratch("refusals");
        let target = dir.join("target");
        std::fs::write(&target, "mine").unwrap();
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = LaunchSocket::bind(&settings(link, 0o666)).err().unwrap();
        assert!(error.contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");
        let error = LaunchSocket::bind(&settings(target.clone(), 0o666))
            .err()
            .unwrap();
        assert!(error.contains("is not a socket"), "{error}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let error = LaunchSocket::bind(&settings(dir.join("s.sock"), 0o666))
            .err()
            .unwrap();
        assert!(error.contains("writable by root alone"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
