//! The files an execution's supervisor writes as root: the `--audit` log, the `--summary`
//! and tollgate's own `--log`.
//!
//! All are opened before the child exists and written through those descriptors only, with
//! no link followed in any component of their paths (see `sandbox::host_path`): a sandbox
//! that could plant `summary.json -> /etc/shadow` would otherwise have root write into any
//! file of the host. A path in a directory the sandbox can write is refused outright, since
//! from there it could also delete the audit log mid-run and leave a forged one:
//! - inside a shared directory (`--share` or `--share-ro`: a read-only share may be another
//!   execution's read-write one), found by the identity of the directories above the file,
//!   so a second path to the same directory does not slip past;
//! - in a directory the sandbox sees and whose mode lets its user write.
//!
//! The audit log and the log are appended to (`O_APPEND`: runs sharing one file keep every
//! record and line, each written whole); the log may not be the file another output names,
//! which would mix its lines into JSON. The summary is written to a fresh file in the same
//! directory and renamed over the name, so a reader never sees half of it.
//!
//! Through the node service (`run --connect`) the caller opens its `--audit` and `--log`
//! files itself, as itself, and sends the descriptors ([`adopt_audit`], [`adopt_log`]): the
//! paths get the same refusals, and each descriptor must be the very file its path names, so
//! the root worker writes nowhere its caller could not write and nowhere a local run would
//! refuse. The caller writes its `--summary` itself (the worker only sends the document).

use crate::audit::{self, AuditLog};
use crate::sandbox::host_path::{self, FileId};
use crate::sandbox::mounts::{self, Share};
use nix::fcntl::OFlag;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

/// Who the sandbox runs as and what it shares: what decides where outputs may go.
pub struct SandboxView<'a> {
    /// What the sandbox's root is: a writable directory it cannot see is no danger.
    pub root: &'a mounts::Root,
    pub uid: u32,
    pub gid: u32,
    pub shares: &'a [Share],
    /// Identities of the shared directories (see `mounts::share_ids`).
    pub share_ids: &'a [FileId],
}

/// A directory opened for one output, and the output's name in it.
struct Placed {
    dir: OwnedFd,
    name: OsString,
    shown: PathBuf,
}

impl Placed {
    /// Whether `other` names the same file: the same directory (by identity, whatever the
    /// path) and the same name. No link is followed and a file with a second hard link is
    /// refused, so there is no other way for two outputs to be one file.
    fn is_same_place(&self, other: &Placed) -> Result<bool, String> {
        let id = |placed: &Placed| {
            host_path::file_id(placed.dir.as_fd())
                .map_err(|e| format!("cannot inspect {}: {e}", placed.shown.display()))
        };
        Ok(self.name == other.name && id(self)? == id(other)?)
    }
}

/// Opens the directory `path` lies in after checking the sandbox cannot write there. `what`
/// names the flag, for messages.
fn place(what: &str, path: &Path, view: &SandboxView<'_>) -> Result<Placed, String> {
    let absolute =
        host_path::absolute(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(format!("{what} {}: give a file name", path.display()));
    };
    let dir = host_path::open_dir(parent)
        .map_err(|e| format!("{what}: {}", host_path::describe_error(parent, &e)))?;
    let ancestry = host_path::ancestry(dir.as_fd())
        .map_err(|e| format!("{what}: cannot inspect {}: {e}", parent.display()))?;
    if let Some(share) = view
        .shares
        .iter()
        .zip(view.share_ids)
        .find(|(_, id)| ancestry.contains(id))
        .map(|(share, _)| share)
    {
        return Err(format!(
            "{what} {}: it is inside {}, which the sandbox shares; tollgate writes this file \
             as root and will not write where the sandbox can plant a link or a forgery: put \
             it outside every shared directory",
            absolute.display(),
            share.path.display()
        ));
    }
    if let Some(open_to) = writable_ancestor(parent, view)? {
        return Err(format!(
            "{what} {}: the sandbox user (uid {}) can write {}, and so replace what lies \
             below it; tollgate writes this file as root and will not write where the sandbox \
             can plant a link or a forgery: put it in a directory only root can write",
            absolute.display(),
            view.uid,
            open_to.display()
        ));
    }
    Ok(Placed {
        dir,
        name: name.to_owned(),
        shown: absolute,
    })
}

/// The first directory from `parent` up that the sandbox sees and may change in a way that
/// matters: `parent` itself if its user may write it; a directory above if its user may write
/// it and could rename the directory below (no sticky bit, or one that user owns), which
/// would let it put a forged tree where the operator will look.
fn writable_ancestor(parent: &Path, view: &SandboxView<'_>) -> Result<Option<PathBuf>, String> {
    let mut below: Option<libc::stat> = None;
    for dir in parent.ancestors() {
        let stat = host_path::open_dir(dir)
            .and_then(|fd| host_path::stat(fd.as_fd()))
            .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
        let visible = mounts::View {
            root: view.root,
            shares: view.shares,
        }
        .reaches_host_dir(dir);
        let writable = host_path::writable_by(&stat, view.uid, view.gid);
        let can_replace = match &below {
            None => writable,
            Some(child) => {
                writable && (stat.st_mode & libc::S_ISVTX == 0 || child.st_uid == view.uid)
            }
        };
        if visible && can_replace {
            return Ok(Some(dir.to_path_buf()));
        }
        below = Some(stat);
    }
    Ok(None)
}

/// Opens the `--audit` log at `path` for appending (creating it, mode 0600: records name
/// destinations).
pub fn open_audit(
    path: &Path,
    view: &SandboxView<'_>,
    format: audit::Format,
) -> Result<AuditLog, String> {
    let placed = place("--audit", path, view)?;
    open_appended("--audit", &placed).map(|file| AuditLog::from_file(file, format))
}

/// Opens tollgate's `--log` at `path` for appending (creating it, mode 0600: its lines name
/// destinations), refusing the file one of `others` (`(flag, path)` of the other outputs)
/// names too.
pub fn open_log(
    path: &Path,
    view: &SandboxView<'_>,
    others: &[(&str, Option<&Path>)],
) -> Result<File, String> {
    let placed = place("--log", path, view)?;
    check_apart(&placed, view, others)?;
    open_appended("--log", &placed)
}

/// Refuses a `--log` that is the file one of `others` names.
fn check_apart(
    placed: &Placed,
    view: &SandboxView<'_>,
    others: &[(&str, Option<&Path>)],
) -> Result<(), String> {
    for (flag, other) in others {
        let Some(other) = other else { continue };
        if placed.is_same_place(&place(flag, other, view)?)? {
            return Err(format!(
                "--log {}: it is the {flag} file too; give tollgate's log a file of its own",
                placed.shown.display()
            ));
        }
    }
    Ok(())
}

/// Through the node service: the `--audit` file at `path` that the caller opened and sent
/// as `passed`, once `path` passed a local run's checks and `passed` is that file.
pub fn adopt_audit(path: &Path, view: &SandboxView<'_>, passed: File) -> Result<File, String> {
    let placed = place("--audit", path, view)?;
    adopt("--audit", &placed, passed)
}

/// Through the node service: the `--log` file at `path` that the caller opened and sent as
/// `passed`, checked as [`adopt_audit`] checks and refused where [`open_log`] refuses.
pub fn adopt_log(
    path: &Path,
    view: &SandboxView<'_>,
    others: &[(&str, Option<&Path>)],
    passed: File,
) -> Result<File, String> {
    let placed = place("--log", path, view)?;
    check_apart(&placed, view, others)?;
    adopt("--log", &placed, passed)
}

/// `passed`, once it is the file `placed` names now (same device and inode; the name
/// opened with no link followed), a regular file with one name, and open for writing; set
/// to append. Whatever the caller sends, the worker then writes only a file the caller
/// opened for writing itself, at a path a local run would write.
fn adopt(what: &str, placed: &Placed, passed: File) -> Result<File, String> {
    let shown = placed.shown.display();
    let named = host_path::open_in(
        placed.dir.as_fd(),
        &placed.name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW,
        0,
    )
    .map_err(|e| format!("{what}: {}", host_path::describe_error(&placed.shown, &e)))?;
    let passed = OwnedFd::from(passed);
    let id = |fd: std::os::fd::BorrowedFd<'_>| {
        host_path::file_id(fd).map_err(|e| format!("{what} {shown}: {e}"))
    };
    if id(named.as_fd())? != id(passed.as_fd())? {
        return Err(format!(
            "{what} {shown}: the file sent with the launch is not the one this path names; \
             send the file the path names"
        ));
    }
    check_regular(what, &placed.shown, &passed)?;
    let flags = nix::fcntl::fcntl(&passed, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("{what} {shown}: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags);
    if flags & OFlag::O_ACCMODE == OFlag::O_RDONLY {
        return Err(format!(
            "{what} {shown}: the file sent with the launch is not open for writing"
        ));
    }
    let appending = (flags | OFlag::O_APPEND) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&passed, nix::fcntl::FcntlArg::F_SETFL(appending))
        .map_err(|e| format!("{what} {shown}: {e}"))?;
    Ok(File::from(passed))
}

/// Opens (creating it, 0600) the file `placed` names for appending; `what` names the flag.
fn open_appended(what: &str, placed: &Placed) -> Result<File, String> {
    // O_NONBLOCK: opening a FIFO planted under the name must not hang the supervisor; a FIFO
    // or device is refused just below.
    let fd = host_path::open_in(
        placed.dir.as_fd(),
        &placed.name,
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK,
        0o600,
    )
    .map_err(|e| match e.raw_os_error() {
        // What opening a FIFO without a reader (or a device without a driver) says.
        Some(libc::ENXIO) => format!("{what} {}: not a regular file", placed.shown.display()),
        _ => format!("{what}: {}", host_path::describe_error(&placed.shown, &e)),
    })?;
    check_regular(what, &placed.shown, &fd)?;
    let file = File::from(fd);
    set_blocking(&file).map_err(|e| format!("{what} {}: {e}", placed.shown.display()))?;
    Ok(file)
}

/// Refuses anything but a regular file with one name: a device or FIFO would take writes
/// somewhere else, a second hard link would let a write reach another name.
fn check_regular(what: &str, shown: &Path, fd: &OwnedFd) -> Result<(), String> {
    let stat =
        host_path::stat(fd.as_fd()).map_err(|e| format!("{what} {}: {e}", shown.display()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("{what} {}: not a regular file", shown.display()));
    }
    if stat.st_nlink > 1 {
        return Err(format!(
            "{what} {}: the file has {} hard links; give a file with one name",
            shown.display(),
            stat.st_nlink
        ));
    }
    Ok(())
}

fn set_blocking(file: &File) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Where the `--summary` goes: its directory, opened before the child exists.
pub struct SummaryTarget {
    placed: Placed,
}

impl SummaryTarget {
    pub fn open(path: &Path, view: &SandboxView<'_>) -> Result<SummaryTarget, String> {
        let placed = place("--summary", path, view)?;
        // Something already under the name must be a file a rename may replace.
        match host_path::open_in(
            placed.dir.as_fd(),
            &placed.name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            0,
        ) {
            Ok(existing) => {
                let stat = host_path::stat(existing.as_fd())
                    .map_err(|e| format!("--summary {}: {e}", placed.shown.display()))?;
                if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(format!(
                        "--summary {}: something other than a regular file is there",
                        placed.shown.display()
                    ));
                }
            }
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => {
                return Err(format!(
                    "--summary: {}",
                    host_path::describe_error(&placed.shown, &error)
                ))
            }
        }
        Ok(SummaryTarget { placed })
    }

    pub fn path(&self) -> &Path {
        &self.placed.shown
    }

    /// Writes `text` to a fresh file in the directory and renames it over the name.
    pub fn write(&self, text: &[u8]) -> std::io::Result<()> {
        host_path::replace_in(self.placed.dir.as_fd(), &self.placed.name, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(tag: &str) -> Dir {
        let dir = PathBuf::from(format!(
            "/run/tollgate-outputs-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Dir(dir)
    }
    const VIEW: SandboxView<'static> = SandboxView {
        root: &mounts::Root::Host,
        uid: 4242,
        gid: 4242,
        shares: &[],
        share_ids: &[],
    };

    #[test]
    fn the_audit_log_is_appended_to_not_truncated() {
        let dir = scratch("append");
        let path = dir.0.join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let log = open_audit(&path, &VIEW, audit::Format::Json).expect("open");
        log.write(crate::audit::Record::sandbox("exec-later", None, None));
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let (earlier, later) = text.split_once('\n').expect("two lines");
        assert_eq!(earlier, "{\"earlier\":1}");
        assert!(later.starts_with("{\"type\":\"sandbox\""), "{later}");
    }

    #[test]
    fn links_fifos_and_hard_links_are_refused() {
        let dir = scratch("links");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.0.join("link")).unwrap();
        std::os::unix::fs::symlink(&dir.0, dir.0.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&dir.0.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::hard_link(&victim, dir.0.join("hard")).unwrap();
        for name in ["link", "dirlink/audit", "fifo", "hard"] {
            assert!(
                open_audit(&dir.0.join(name), &VIEW, audit::Format::Json).is_err(),
                "{name}"
            );
        }
        for name in ["link", "dirlink/summary", "fifo"] {
            assert!(
                SummaryTarget::open(&dir.0.join(name), &VIEW).is_err(),
                "{name}"
            );
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_directory_the_sandbox_user_can_write_is_refused_when_it_can_see_it() {
        // /run is hidden from the sandbox (it gets its own), so a writable directory there is
        // fine; the same directory shared is not.
        let dir = scratch("writable");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(open_audit(&dir.0.join("a"), &VIEW, audit::Format::Json).is_ok());
        let shares = [Share {
            path: dir.0.clone(),
            read_only: true,
        }];
        let id = host_path::file_id(host_path::open_dir(&dir.0).unwrap().as_fd()).unwrap();
        let view = SandboxView {
            shares: &shares,
            share_ids: &[id],
            ..VIEW
        };
        let error = open_audit(&dir.0.join("b"), &view, audit::Format::Json)
            .err()
            .expect("refused");
        assert!(error.contains("shares"), "{error}");
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        assert!(SummaryTarget::open(&dir.0.join("sub/s.json"), &view).is_err());
    }

    #[test]
    fn a_directory_above_that_the_sandbox_could_rename_from_under_the_output_is_refused() {
        // /var/lib is visible to the sandbox: a world-writable directory there lets it rename
        // a root-owned directory below away and put a forgery in its place, unless sticky.
        let top = PathBuf::from(format!(
            "/var/lib/tollgate-outputs-test-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("out")).unwrap();
        let _cleanup = Dir(top.clone());
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = open_audit(&top.join("out/a"), &VIEW, audit::Format::Json)
            .err()
            .expect("refused");
        assert!(error.contains(top.to_str().unwrap()), "{error}");
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open_audit(&top.join("out/a"), &VIEW, audit::Format::Json).is_ok());
        assert!(
            open_audit(&top.join("b"), &VIEW, audit::Format::Json).is_err(),
            "the directory itself"
        );
    }

    #[test]
    fn the_log_is_appended_to_and_may_not_be_another_outputs_file() {
        let dir = scratch("log");
        let path = dir.0.join("tollgate.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let mut log = open_log(&path, &VIEW, &[]).expect("open");
        log.write_all(b"later\n").unwrap();
        drop(log);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\nlater\n");
        // The same file, written another way.
        let other = dir.0.join("sub/../tollgate.log");
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        for flag in ["--audit", "--summary"] {
            let error = open_log(&path, &VIEW, &[(flag, Some(&other))]).expect_err("refused");
            assert!(error.contains(flag), "{error}");
        }
        let beside = dir.0.join("audit.jsonl");
        let others = [("--audit", Some(beside.as_path())), ("--summary", None)];
        assert!(open_log(&path, &VIEW, &others).is_ok());
    }

    #[test]
    fn a_passed_descriptor_is_adopted_only_when_it_is_the_named_file_and_writable() {
        let dir = scratch("adopt");
        let path = dir.0.join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let open = |path: &Path, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(path)
                .unwrap()
        };
        // The caller's own descriptor of the named file, opened without O_APPEND: adopted,
        // and appended to.
        let mut adopted = adopt_audit(&path, &VIEW, open(&path, true)).expect("adopted");
        adopted.write_all(b"later\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"earlier\":1}\nlater\n"
        );
        // Another file than the one named.
        let other = dir.0.join("other");
        std::fs::write(&other, "").unwrap();
        let error = adopt_audit(&path, &VIEW, open(&other, true)).expect_err("refused");
        assert!(error.contains("not the one this path names"), "{error}");
        // The named file, but read-only.
        let error = adopt_audit(&path, &VIEW, open(&path, false)).expect_err("refused");
        assert!(error.contains("not open for writing"), "{error}");
        // A link to the file sent: the name is the link, not the file.
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(adopt_audit(&link, &VIEW, open(&path, true)).is_err());
        // A second name of the file sent.
        let hard = dir.0.join("hard");
        std::fs::hard_link(&other, &hard).unwrap();
        let error = adopt_audit(&hard, &VIEW, open(&hard, true)).expect_err("refused");
        assert!(error.contains("hard links"), "{error}");
        // The very file, in a directory the sandbox shares: refused as a local run refuses.
        let shares = [Share {
            path: dir.0.clone(),
            read_only: true,
        }];
        let id = host_path::file_id(host_path::open_dir(&dir.0).unwrap().as_fd()).unwrap();
        let view = SandboxView {
            shares: &shares,
            share_ids: &[id],
            ..VIEW
        };
        let error = adopt_audit(&path, &view, open(&path, true)).expect_err("refused");
        assert!(error.contains("shares"), "{error}");
        // The log may not be the audit file, whichever descriptor comes with it.
        let others = [("--audit", Some(path.as_path()))];
        let error = adopt_log(&path, &VIEW, &others, open(&path, true)).expect_err("refused");
        assert!(error.contains("--audit file too"), "{error}");
    }

    #[test]
    fn the_summary_is_renamed_into_place_whole() {
        let dir = scratch("summary");
        let path = dir.0.join("summary.json");
        std::fs::write(&path, "old").unwrap();
        let target = SummaryTarget::open(&path, &VIEW).expect("open");
        target.write(b"{\"new\":true}\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"new\":true}\n");
        let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }
}
