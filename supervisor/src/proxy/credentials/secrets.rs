//! Reading one team's secret values, once per execution, in the supervisor only.
//!
//! A team's policy names its secrets, but the operator decides where they may come from
//! ([`SecretRules`]: a directory per team under the secrets root, a variable prefix per
//! team). Every read goes through [`TeamSecrets`], which applies those rules first, so no
//! caller can read a secret the team's policy may not name.
//!
//! `{env: NAME}` comes from the supervisor's own environment (the child's is built clean, so
//! it never sees it). `{file: PATH}` is read as root, so it is opened as if someone had
//! planted a symlink on the way: one component at a time from `/` (`openat2` with
//! `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`), each directory owned by root (or tollgate's user)
//! and writable by no one else, since whoever can rename a directory on the way can swap one
//! team's secrets for another's. Only a regular file is ever opened for reading (a FIFO would
//! hang the run, a device could answer anything), and it must belong to tollgate's user and
//! be closed to group and others. A [`Secret`] never prints its value: not in `Debug`, not in
//! an error, not in a log line.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, FileStat, Mode};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use tollgate_policy::schema::SecretRef;
use tollgate_policy::secrets::{SecretRules, SecretSource};

/// Secret files are small; a larger one is a mistake (a key bundle, a log).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret value held by the supervisor. Its `Debug` is `Secret(<N bytes>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for building the header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_test(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Why a secret could not be loaded: the policy rule that names it (e.g.
/// `auth_providers[2].secret.file`), what uses it, and the problem. Never the value.
#[derive(Debug, thiserror::Error)]
#[error("{rule} ({what}): {problem}")]
pub struct SecretError {
    pub rule: String,
    pub what: String,
    pub problem: SecretProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    /// The operator's rules do not let this team name it.
    #[error("{0}")]
    NotTheTeams(String),
    #[error("the environment variable {name} is not set in tollgate's environment")]
    MissingEnv { name: String },
    /// A directory on the way to the team's secrets is missing, a symlink, or open to others.
    #[error("{0}")]
    Directory(String),
    #[error("{path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is accessible to its group or to others (mode {mode:03o}); make it private: chmod 600 {path}")]
    FileTooOpen { path: String, mode: u32 },
    #[error("{path} belongs to uid {owner}, not to tollgate's user (uid {expected}); chown it")]
    FileOwner {
        path: String,
        owner: u32,
        expected: u32,
    },
    #[error("the secret from {source_name} is empty")]
    Empty { source_name: String },
    #[error("the secret from {source_name} contains characters that cannot be sent in an HTTP header (control characters, line breaks or non-ASCII)")]
    NotHeaderSafe { source_name: String },
}

/// `$NAME` or the file path: how a reference is named in messages.
pub fn describe(reference: &SecretRef) -> String {
    match reference {
        SecretRef::Env(name) => format!("${name}"),
        SecretRef::File(path) => path.clone(),
    }
}

/// One team's secrets under the operator's rules. The team's directory is opened (and
/// checked) on the first `{file:}` secret, then every file is opened beneath that descriptor.
pub struct TeamSecrets<'a> {
    team: &'a str,
    rules: &'a SecretRules,
    dir: Option<OwnedFd>,
}

impl<'a> TeamSecrets<'a> {
    pub fn new(team: &'a str, rules: &'a SecretRules) -> TeamSecrets<'a> {
        TeamSecrets {
            team,
            rules,
            dir: None,
        }
    }

    /// Loads the secret `reference`, named at `rule` in the policy and used by `what`
    /// (`auth provider 'GitHub'`). Surrounding whitespace (a file's trailing newline) is
    /// removed; the rest must be text that can travel in an HTTP header.
    pub fn load(
        &mut self,
        rule: &str,
        what: &str,
        reference: &SecretRef,
    ) -> Result<Secret, SecretError> {
        let fail = |problem| SecretError {
            rule: rule.to_owned(),
            what: what.to_owned(),
            problem,
        };
        let source = self
            .rules
            .source(self.team, reference)
            .map_err(|why| fail(SecretProblem::NotTheTeams(why)))?;
        let raw = match source {
            SecretSource::Env(name) => match std::env::var_os(&name) {
                None => return Err(fail(SecretProblem::MissingEnv { name })),
                Some(value) => value.into_string().map_err(|_| {
                    fail(SecretProblem::NotHeaderSafe {
                        source_name: describe(reference),
                    })
                })?,
            },
            SecretSource::File(relative) => self.read_file(&relative).map_err(fail)?,
        };
        let value = raw.trim();
        let source_name = describe(reference);
        if value.is_empty() {
            return Err(fail(SecretProblem::Empty { source_name }));
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(fail(SecretProblem::NotHeaderSafe { source_name }));
        }
        Ok(Secret(value.to_owned()))
    }

    /// Checks the secret `reference` the way [`TeamSecrets::load`] would, without reading a
    /// value: the rules, and for a file everything on disk (the way to it, its type, owner
    /// and mode). For `policy check` on a host that has the secrets.
    pub fn inspect(
        &mut self,
        rule: &str,
        what: &str,
        reference: &SecretRef,
    ) -> Result<(), SecretError> {
        let fail = |problem| SecretError {
            rule: rule.to_owned(),
            what: what.to_owned(),
            problem,
        };
        match self.rules.source(self.team, reference) {
            Err(why) => Err(fail(SecretProblem::NotTheTeams(why))),
            Ok(SecretSource::Env(_)) => Ok(()),
            Ok(SecretSource::File(relative)) => {
                let (parent, name, shown) = self.parent_of(&relative).map_err(fail)?;
                look_at(parent.as_fd(), &name, &shown)
                    .map(drop)
                    .map_err(fail)
            }
        }
    }

    /// Reads `relative` (normal components only, checked by the rules) beneath the team's
    /// directory.
    fn read_file(&mut self, relative: &Path) -> Result<String, SecretProblem> {
        let (parent, name, shown) = self.parent_of(relative)?;
        read_private_file(parent.as_fd(), &name, &shown)
    }

    /// The directory holding `relative` (opened beneath the team's directory, each
    /// subdirectory held to the same rules), the file's name in it, and its full path for
    /// messages.
    fn parent_of(
        &mut self,
        relative: &Path,
    ) -> Result<(OwnedFd, OsString, PathBuf), SecretProblem> {
        let team_dir = self.rules.team_dir(self.team);
        let dir = match &self.dir {
            Some(dir) => dir,
            None => self
                .dir
                .insert(open_team_dir(self.rules.root(), self.team)?),
        };
        let shown = team_dir.join(relative);
        let mut names: Vec<&OsStr> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some(file_name) = names.pop() else {
            return Err(unreadable(&shown, "it names no file".into()));
        };
        let mut parent = dir
            .try_clone()
            .map_err(|e| unreadable(&shown, e.to_string()))?;
        let mut at = team_dir;
        for name in names {
            at.push(name);
            let next = open_dir(parent.as_fd(), name, &at)?;
            check_dir(&next, &at, false)?;
            parent = next;
        }
        Ok((parent, file_name.to_owned(), shown))
    }
}

/// Opens `<root>/<team>` one component at a time from `/`. Directories above the root may be
/// sticky and world-writable (`/tmp`): nobody can rename another user's entry there.
fn open_team_dir(root: &Path, team: &str) -> Result<OwnedFd, SecretProblem> {
    let path = root.join(team);
    let mut fd = openat2(
        nix::fcntl::AT_FDCWD,
        "/",
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )
    .map_err(|e| SecretProblem::Directory(format!("cannot open /: {e}")))?;
    check_dir(&fd, Path::new("/"), true)?;
    let components: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let root_depth = root.components().count() - 1;
    let mut at = PathBuf::from("/");
    for (depth, name) in components.iter().enumerate() {
        at.push(name);
        let next = open_dir_at(fd.as_fd(), name).map_err(|errno| match errno {
            Errno::ENOENT if at == path => SecretProblem::Directory(format!(
                "team {team} has no secrets directory: {} does not exist (create it, mode 0700, or point --secrets-dir at the directory that holds one directory per team)",
                at.display()
            )),
            other => dir_problem(other, &at),
        })?;
        // Up to the secrets root's parent a sticky directory may pass; the root and the
        // team's directory hold secrets, so no one else may write them.
        check_dir(&next, &at, depth + 1 < root_depth)?;
        fd = next;
    }
    Ok(fd)
}

/// `name` beneath `parent`, as an `O_PATH` directory descriptor, with no symlink followed.
fn open_dir(parent: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd, SecretProblem> {
    open_dir_at(parent, name).map_err(|errno| dir_problem(errno, shown))
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat2(
        parent,
        name,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
}

/// What a failed [`open_dir_at`] of `shown` means, and what to do about it.
fn dir_problem(errno: Errno, shown: &Path) -> SecretProblem {
    SecretProblem::Directory(match errno {
        Errno::ELOOP => format!(
            "{} is a symbolic link, and tollgate follows none on the way to a secret: give the real path, or replace the link by the directory",
            shown.display()
        ),
        Errno::ENOENT => format!("{} does not exist", shown.display()),
        Errno::ENOTDIR => format!("{} is not a directory", shown.display()),
        other => format!("{} cannot be opened: {}", shown.display(), other.desc()),
    })
}

/// A directory on the way to a secret must belong to root or tollgate's user and be writable
/// by no one else (or, where `sticky_ok`, be sticky like `/tmp`).
fn check_dir(fd: &OwnedFd, shown: &Path, sticky_ok: bool) -> Result<(), SecretProblem> {
    let stat = fstat(fd).map_err(|e| {
        SecretProblem::Directory(format!("cannot inspect {}: {}", shown.display(), e.desc()))
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    if stat.st_uid != 0 && stat.st_uid != euid {
        return Err(SecretProblem::Directory(format!(
            "{} belongs to uid {}: every directory on the way to a secret must belong to root",
            shown.display(),
            stat.st_uid
        )));
    }
    let open_to_others = stat.st_mode & 0o022 != 0;
    let sticky = stat.st_mode & libc::S_ISVTX != 0;
    if open_to_others && !(sticky_ok && sticky) {
        return Err(SecretProblem::Directory(format!(
            "{} is writable by its group or others (mode {:03o}), who could swap the secrets in it: chmod go-w {}",
            shown.display(),
            stat.st_mode & 0o7777,
            shown.display()
        )));
    }
    Ok(())
}

fn unreadable(path: &Path, reason: String) -> SecretProblem {
    SecretProblem::Unreadable {
        path: path.display().to_string(),
        reason,
    }
}

/// Looks at `name` first without opening it for reading (`O_PATH`): only a regular file of
/// tollgate's user, mode `0?00`, is then opened, and the opened file must be the one looked
/// at (a swap in between is refused).
fn read_private_file(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
) -> Result<String, SecretProblem> {
    let looked_at = look_at(parent, name, shown)?;
    // O_NONBLOCK and O_NOCTTY: should the file have become a FIFO or a terminal since, the
    // open neither waits for a writer nor takes a controlling terminal; it is refused below.
    let file = open_beneath(
        parent,
        name,
        shown,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )?;
    let opened = fstat(&file).map_err(|e| unreadable(shown, e.desc().into()))?;
    if (opened.st_dev, opened.st_ino) != (looked_at.st_dev, looked_at.st_ino) {
        return Err(unreadable(
            shown,
            "it was replaced while tollgate opened it".into(),
        ));
    }
    check_private_file(&opened, shown)?;
    let mut text = String::new();
    std::fs::File::from(file)
        .take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|_| unreadable(shown, "it is not UTF-8 text".into()))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(unreadable(
            shown,
            format!("it is larger than {MAX_SECRET_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// `name` beneath `parent` with `flags`, no symlink followed.
fn open_beneath(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    flags: OFlag,
) -> Result<OwnedFd, SecretProblem> {
    openat2(
        parent,
        name,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
    .map_err(|errno| {
        unreadable(
            shown,
            match errno {
                Errno::ELOOP => "it is a symbolic link, which tollgate never follows for a secret: replace the link by the file".into(),
                Errno::ENOENT => "it does not exist".into(),
                other => other.desc().into(),
            },
        )
    })
}

/// The file's status, looked at through an `O_PATH` descriptor (nothing is opened for
/// reading), if it is a file tollgate may read a secret from.
fn look_at(parent: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<FileStat, SecretProblem> {
    let fd = open_beneath(parent, name, shown, OFlag::O_PATH)?;
    let stat = fstat(&fd).map_err(|e| unreadable(shown, e.desc().into()))?;
    check_private_file(&stat, shown)?;
    Ok(stat)
}

fn check_private_file(stat: &FileStat, shown: &Path) -> Result<(), SecretProblem> {
    let path = shown.display().to_string();
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(SecretProblem::Unreadable {
            path,
            reason: "it is not a regular file (tollgate reads secrets only from regular files, never from a FIFO, a device or a directory)".into(),
        });
    }
    let mode = stat.st_mode & 0o777;
    if Mode::from_bits_truncate(mode).intersects(Mode::S_IRWXG | Mode::S_IRWXO) {
        return Err(SecretProblem::FileTooOpen { path, mode });
    }
    let expected = nix::unistd::geteuid().as_raw();
    if stat.st_uid != expected {
        return Err(SecretProblem::FileOwner {
            path,
            owner: stat.st_uid,
            expected,
        });
    }
    if stat.st_size as u64 > MAX_SECRET_BYTES {
        return Err(SecretProblem::Unreadable {
            path,
            reason: format!("it is larger than {MAX_SECRET_BYTES} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    /// A secrets root with a directory for team `acme`, both 0700, removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let path = std::env::temp_dir().join(format!(
                "tollgate-secret-test-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path.join("acme"))
                .expect("dir");
            Root(path)
        }

        fn rules(&self) -> SecretRules {
            SecretRules::new(&self.0, []).expect("rules")
        }

        fn secret(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join("acme").join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(path: &str) -> SecretRef {
        SecretRef::File(path.to_owned())
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let root = Root::new("ok");
        let absolute = root.secret("key", "s3cr3t-value\n", 0o600);
        let rules = root.rules();
        let mut secrets = TeamSecrets::new("acme", &rules);
        for reference in [file("key"), file(&absolute.display().to_string())] {
            let secret = secrets.load("r", "test", &reference).expect("load");
            assert_eq!(secret.expose(), "s3cr3t-value");
            assert_eq!(format!("{secret:?}"), "Secret(<12 bytes>)");
        }
    }

    #[test]
    fn open_files_and_bad_values_are_refused_without_echoing_them() {
        let root = Root::new("open");
        root.secret("key", "s3cr3t-value\n", 0o640);
        let rules = root.rules();
        let mut secrets = TeamSecrets::new("acme", &rules);
        let message = secrets
            .load(
                "auth_providers[0].secret.file",
                "provider 'K'",
                &file("key"),
            )
            .expect_err("group-readable")
            .to_string();
        assert!(
            message.starts_with("auth_providers[0].secret.file (provider 'K'): ")
                && message.contains("chmod 600")
                && message.contains("640"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        root.secret("key", "two\nlines-s3cr3t", 0o600);
        let message = secrets
            .load("r", "provider 'K'", &file("key"))
            .expect_err("line break")
            .to_string();
        assert!(
            message.contains("cannot be sent in an HTTP header"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        let message = secrets
            .load(
                "r",
                "provider 'K'",
                &SecretRef::Env("TOLLGATE_SECRET_ACME_SURELYUNSET".into()),
            )
            .expect_err("unset")
            .to_string();
        assert!(
            message.contains("TOLLGATE_SECRET_ACME_SURELYUNSET"),
            "{message}"
        );
    }

    #[test]
    fn fifos_are_refused_without_waiting_for_a_writer() {
        let root = Root::new("fifo");
        let fifo = root.0.join("acme/fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let rules = root.rules();
        let message = TeamSecrets::new("acme", &rules)
            .load("r", "provider 'K'", &file("fifo"))
            .expect_err("a fifo")
            .to_string();
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn directories_open_to_others_are_refused() {
        let root = Root::new("open-dir");
        root.secret("key", "v", 0o600);
        std::fs::set_permissions(root.0.join("acme"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let rules = root.rules();
        let message = TeamSecrets::new("acme", &rules)
            .load("r", "provider 'K'", &file("key"))
            .expect_err("a world-writable team dir")
            .to_string();
        assert!(message.contains("chmod go-w"), "{message}");
    }

    #[test]
    fn a_missing_team_directory_says_what_to_create() {
        let root = Root::new("missing");
        let rules = root.rules();
        let message = TeamSecrets::new("other", &rules)
            .load("r", "provider 'K'", &file("key"))
            .expect_err("no dir")
            .to_string();
        assert!(
            message.contains("team other has no secrets directory")
                && message.contains("does not exist")
                && message.contains("--secrets-dir"),
            "{message}"
        );
    }
}
