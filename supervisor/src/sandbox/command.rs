//! Resolving the sandboxed command the way the sandbox user will see it.
//!
//! The supervisor runs as root, but the command runs as an unprivileged user, so "found" is
//! not enough: every directory on the way must be searchable by that user and the file
//! executable by it. Root's `python3`, for example, is often a shim under /root (mode 700);
//! this module says so plainly instead of letting the exec fail with a bare EACCES.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a command cannot run; maps to exit status 127 (not found) or 126 (not executable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandProblem {
    NotFound(String),
    NotExecutable(String),
}

impl CommandProblem {
    pub fn exit_status(&self) -> i32 {
        match self {
            CommandProblem::NotFound(_) => 127,
            CommandProblem::NotExecutable(_) => 126,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CommandProblem::NotFound(m) | CommandProblem::NotExecutable(m) => m,
        }
    }
}

/// Finds `command` (a path, or a name looked up in `path_var`) and checks that `uid:gid`
/// can execute it.
pub fn resolve(
    command: &OsStr,
    path_var: &str,
    uid: u32,
    gid: u32,
) -> Result<PathBuf, CommandProblem> {
    let shown = command.to_string_lossy();
    let candidate = if shown.contains('/') {
        let path = PathBuf::from(command);
        if !path.exists() {
            return Err(CommandProblem::NotFound(format!(
                "command not found: {shown}"
            )));
        }
        path
    } else {
        let found = path_var
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| Path::new(dir).join(command))
            .find(|path| path.is_file());
        match found {
            Some(path) => path,
            None => {
                return Err(CommandProblem::NotFound(format!(
                    "command not found: {shown} (searched the sandbox PATH {path_var})"
                )))
            }
        }
    };
    check_executable(&candidate, uid, gid).map_err(|why| {
        CommandProblem::NotExecutable(format!(
            "{shown} resolves to {}, which the sandbox user {uid}:{gid} cannot execute: {why}; \
             use a command outside root-only directories (e.g. /usr/bin/python3)",
            candidate.display()
        ))
    })?;
    Ok(candidate)
}

/// Finds `command` inside the root filesystem `root` (`--rootfs`): a path is taken as it is
/// (the image's own links make sense only inside it), a name is looked up in `path_var` there.
/// Whether it can be executed is the exec's to say (126/127).
pub fn resolve_in_image(
    command: &OsStr,
    path_var: &str,
    root: &Path,
) -> Result<PathBuf, CommandProblem> {
    let shown = command.to_string_lossy();
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    if shown.contains('/') {
        let path = PathBuf::from(command);
        if !path.is_absolute() {
            return Err(CommandProblem::NotFound(format!(
                "{shown}: give the command's absolute path in the root filesystem, or a name on \
                 its PATH ({path_var})"
            )));
        }
        return match std::fs::symlink_metadata(inside(&path)) {
            Ok(_) => Ok(path),
            Err(_) => Err(CommandProblem::NotFound(format!(
                "command not found in the root filesystem {}: {shown}",
                root.display()
            ))),
        };
    }
    path_var
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(command))
        .find(|path| std::fs::symlink_metadata(inside(path)).is_ok())
        .ok_or_else(|| {
            CommandProblem::NotFound(format!(
                "command not found in the root filesystem {}: {shown} (searched {path_var})",
                root.display()
            ))
        })
}

/// Whether `uid:gid` (no supplementary groups: the child has none) may execute `path`:
/// every directory on the way (as written, and where symlinks lead) must be searchable.
fn check_executable(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path)
    };
    searchable_ancestors(&absolute, uid, gid)?;
    let target = std::fs::canonicalize(&absolute).map_err(|e| e.to_string())?;
    searchable_ancestors(&target, uid, gid)?;
    let meta = std::fs::metadata(&target).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err(format!("{} is a directory", target.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} has no execute permission", target.display()));
    }
    if !allowed(&meta, uid, gid, 0o1) {
        return Err(format!("{} is not executable by it", target.display()));
    }
    Ok(())
}

fn searchable_ancestors(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let mut walked = PathBuf::from("/");
    for component in path.parent().into_iter().flat_map(Path::components).skip(1) {
        walked.push(component);
        let meta = std::fs::metadata(&walked).map_err(|e| format!("{}: {e}", walked.display()))?;
        if meta.is_dir() && !allowed(&meta, uid, gid, 0o1) {
            return Err(format!("{} is not searchable by it", walked.display()));
        }
    }
    Ok(())
}

/// Classic owner/group/other permission check for one bit (1 = x, 2 = w, 4 = r).
fn allowed(meta: &std::fs::Metadata, uid: u32, gid: u32, bit: u32) -> bool {
    if uid == 0 {
        // Root needs one x bit somewhere to execute; directories are always searchable.
        return meta.is_dir() || meta.mode() & 0o111 != 0;
    }
    let mode = meta.mode();
    let shift = if meta.uid() == uid {
        6
    } else if meta.gid() == gid {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: u32 = 65534;

    #[test]
    fn finds_system_commands_on_path() {
        let path = resolve(OsStr::new("sh"), "/usr/bin:/bin", NOBODY, NOBODY).unwrap();
        assert!(path.ends_with("sh"));
    }

    #[test]
    fn a_missing_command_is_not_found() {
        let err = resolve(
            OsStr::new("no-such-command-xyz"),
            "/usr/bin:/bin",
            NOBODY,
            NOBODY,
        )
        .unwrap_err();
        assert_eq!(err.exit_status(), 127);
        assert!(err.message().contains("no-such-command-xyz"));
        let err = resolve(OsStr::new("/nonexistent/x"), "/usr/bin", NOBODY, NOBODY).unwrap_err();
        assert_eq!(err.exit_status(), 127);
    }

    #[test]
    fn root_only_directories_are_not_executable_for_the_sandbox_user() {
        let dir = std::env::temp_dir().join(format!("tollgate-cmd-{}", std::process::id()));
        let inner = dir.join("bin");
        std::fs::create_dir_all(&inner).unwrap();
        let tool = inner.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = resolve(tool.as_os_str(), "", NOBODY, NOBODY).unwrap_err();
        assert_eq!(err.exit_status(), 126, "{err:?}");
        assert!(
            err.message().contains("not searchable"),
            "{}",
            err.message()
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(resolve(tool.as_os_str(), "", NOBODY, NOBODY).is_ok());
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(tool.as_os_str(), "", NOBODY, NOBODY).unwrap_err();
        assert!(
            err.message().contains("no execute permission"),
            "{}",
            err.message()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
