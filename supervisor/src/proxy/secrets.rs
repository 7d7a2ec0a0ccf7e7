//! Reading the team's secret values, once per execution, in the supervisor only.
//!
//! `{env: NAME}` comes from the supervisor's own environment (the child's is built clean, so
//! it never sees it); `{file: PATH}` is read as root from a file that must belong to the
//! supervisor's user and be closed to group and others. A [`Secret`] never prints its value:
//! not in `Debug`, not in an error, not in a log line.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use tollgate_policy::schema::SecretRef;

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

/// Why a secret could not be loaded. Messages name the reference (variable or path) and
/// what uses it, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} reads its secret from the environment variable {name}, which is not set in tollgate's environment")]
    MissingEnv { what: String, name: String },
    #[error("{what} reads its secret from {path}, which cannot be read: {reason}")]
    Unreadable {
        what: String,
        path: String,
        reason: String,
    },
    #[error("{what} reads its secret from {path}, which is accessible to its group or to others (mode {mode:03o}); make it private: chmod 600 {path}")]
    FileTooOpen {
        what: String,
        path: String,
        mode: u32,
    },
    #[error("{what} reads its secret from {path}, which belongs to uid {owner}, not to tollgate's user (uid {expected}); chown it")]
    FileOwner {
        what: String,
        path: String,
        owner: u32,
        expected: u32,
    },
    #[error("{what}: the secret from {source_name} is empty")]
    Empty { what: String, source_name: String },
    #[error("{what}: the secret from {source_name} contains characters that cannot be sent in an HTTP header (control characters, line breaks or non-ASCII)")]
    NotHeaderSafe { what: String, source_name: String },
}

/// `ENV NAME` or the file path: how a reference is named in messages.
pub fn describe(reference: &SecretRef) -> String {
    match reference {
        SecretRef::Env(name) => format!("${name}"),
        SecretRef::File(path) => path.clone(),
    }
}

/// Loads one secret. `what` names its user in messages (`auth provider 'GitHub'`).
/// Surrounding whitespace (a file's trailing newline) is removed; the rest must be text
/// that can travel in an HTTP header.
pub fn load(reference: &SecretRef, what: &str) -> Result<Secret, SecretError> {
    let raw = match reference {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| SecretError::MissingEnv {
            what: what.to_owned(),
            name: name.clone(),
        })?,
        SecretRef::File(path) => read_private_file(path, what)?,
    };
    let value = raw.trim();
    let source_name = describe(reference);
    if value.is_empty() {
        return Err(SecretError::Empty {
            what: what.to_owned(),
            source_name,
        });
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(SecretError::NotHeaderSafe {
            what: what.to_owned(),
            source_name,
        });
    }
    Ok(Secret(value.to_owned()))
}

/// Opens without following a final symlink, then checks the opened file itself (no race
/// between the check and the read): a regular file of tollgate's user, mode `0?00`.
fn read_private_file(path: &str, what: &str) -> Result<String, SecretError> {
    let unreadable = |reason: String| SecretError::Unreadable {
        what: what.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("it is not a regular file".into()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::FileTooOpen {
            what: what.to_owned(),
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions.
    let expected = unsafe { libc::geteuid() };
    if meta.uid() != expected {
        return Err(SecretError::FileOwner {
            what: what.to_owned(),
            path: path.to_owned(),
            owner: meta.uid(),
            expected,
        });
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(unreadable(format!(
            "it is larger than {MAX_SECRET_BYTES} bytes"
        )));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|_| unreadable("it is not UTF-8 text".into()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-secret-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let path = scratch("ok", "s3cr3t-value\n", 0o600);
        let secret = load(&SecretRef::File(path.display().to_string()), "test").expect("load");
        assert_eq!(secret.expose(), "s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "Secret(<12 bytes>)");
        let _ = std::fs::remove_dir_all(path.parent().expect("parent"));
    }

    #[test]
    fn open_files_and_bad_values_are_refused_without_echoing_them() {
        let path = scratch("open", "s3cr3t-value\n", 0o640);
        let error = load(&SecretRef::File(path.display().to_string()), "provider 'K'")
            .expect_err("group-readable");
        let message = error.to_string();
        assert!(
            message.contains("chmod 600") && message.contains("640"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        std::fs::write(&path, "two\nlines-s3cr3t").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let message = load(&SecretRef::File(path.display().to_string()), "provider 'K'")
            .expect_err("line break")
            .to_string();
        assert!(
            message.contains("cannot be sent in an HTTP header"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        let _ = std::fs::remove_dir_all(path.parent().expect("parent"));
        let message = load(
            &SecretRef::Env("TOLLGATE_TEST_SURELY_UNSET_VARIABLE".into()),
            "provider 'K'",
        )
        .expect_err("unset")
        .to_string();
        assert!(
            message.contains("TOLLGATE_TEST_SURELY_UNSET_VARIABLE"),
            "{message}"
        );
    }
}
