//! The policy's `filesystem` section: what of the host a team's code always sees, the root it
//! runs on, and whether the Landlock layer must be there.
//!
//! The sandbox's own root holds only the host's system directories and its private scratch
//! directories. A team whose code always needs more (an interpreter under `/opt`, a model
//! cache) names those host directories here rather than on every command line; the operator
//! can also give the team a prepared root filesystem (`rootfs`) instead of the host's system
//! directories. The schema type, its checks and the validated value live together in this
//! module; `validate` calls [`validate`], the supervisor reads [`Filesystem`].

use crate::validate::Problems;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The most directories the section may bind (the supervisor binds at most 16 shares per
/// execution, the policy's and the command line's together).
pub const MAX_DIRECTORIES: usize = 16;

/// Trees of the kernel and of the runtime that the sandbox always gets its own of: none of
/// them can be bound from the host, nor hold the root filesystem.
pub const KERNEL_DIRS: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

/// The `filesystem:` section as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSection {
    /// Host directories bound read-only into the sandbox at the same path: absolute,
    /// normalised, not `/`, not under /proc, /sys, /dev or /run.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Host directories bound read-write at the same path (same rules as `read_only`).
    #[serde(default)]
    pub read_write: Vec<String>,
    /// A prepared root filesystem (see images/sandbox/), bound read-only as `/` instead of
    /// the host's system directories.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// Whether the Landlock layer must be applied: `required` fails a run (exit 125) on a
    /// host without it; `best_effort` (the default) runs without it there.
    #[serde(default)]
    pub landlock: LandlockRequirement,
}

/// Whether a run may go on without Landlock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LandlockRequirement {
    /// A host without Landlock fails the run with exit status 125.
    Required,
    /// Landlock where the kernel has it; the summary says whether it was applied.
    #[default]
    BestEffort,
}

impl LandlockRequirement {
    pub fn as_str(self) -> &'static str {
        match self {
            LandlockRequirement::Required => "required",
            LandlockRequirement::BestEffort => "best_effort",
        }
    }
}

/// The validated section: every path absolute and normalised, none twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filesystem {
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub landlock: LandlockRequirement,
}

pub(crate) fn validate(section: &FilesystemSection, problems: &mut Problems) -> Filesystem {
    let (mut read_only, mut read_write) = (Vec::new(), Vec::new());
    let mut seen: Vec<&str> = Vec::new();
    let listed = (section.read_only.iter().enumerate())
        .map(|(i, text)| ("read_only", i, text))
        .chain((section.read_write.iter().enumerate()).map(|(i, text)| ("read_write", i, text)));
    for (key, i, text) in listed {
        let at = format!("filesystem.{key}[{i}]");
        if let Err(why) = check_directory(text) {
            problems.add(at, why);
        } else if seen.contains(&text.as_str()) {
            problems.add(
                at,
                format!("{text} is listed twice: give it once, in read_only or read_write"),
            );
        } else {
            seen.push(text);
            let list = if key == "read_only" {
                &mut read_only
            } else {
                &mut read_write
            };
            list.push(PathBuf::from(text));
        }
    }
    if read_only.len() + read_write.len() > MAX_DIRECTORIES {
        problems.add(
            "filesystem",
            format!(
                "{} directories listed: at most {MAX_DIRECTORIES} can be bound; list a common \
                 parent instead",
                read_only.len() + read_write.len()
            ),
        );
    }
    let rootfs = section.rootfs.as_deref().and_then(|text| {
        match check_absolute(text).and_then(|()| check_outside_kernel_dirs(text)) {
            Ok(()) if text == "/" => {
                problems.add(
                    "filesystem.rootfs",
                    "rootfs: / would be the host's whole tree; omit rootfs for the host's \
                     system directories, or name a root built with images/sandbox/",
                );
                None
            }
            Ok(()) => Some(PathBuf::from(text)),
            Err(why) => {
                problems.add("filesystem.rootfs", why);
                None
            }
        }
    });
    Filesystem {
        read_only,
        read_write,
        rootfs,
        landlock: section.landlock,
    }
}

/// A directory to bind: absolute and normalised, neither `/` nor in a kernel tree.
fn check_directory(text: &str) -> Result<(), String> {
    check_absolute(text)?;
    if text == "/" {
        return Err(
            "/ is the host's whole tree and cannot be bound: list the directories the team's \
             code needs"
                .into(),
        );
    }
    check_outside_kernel_dirs(text)
}

/// An absolute path written in its normal form: no `.` or `..`, no empty component, no
/// trailing `/`, no NUL. (What it names is opened, with no link followed, when a run starts.)
/// Also for `network.upstream_ca`.
pub(crate) fn check_absolute(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("`{text}` is not an absolute path: start it with /"));
    }
    if text == "/" {
        return Ok(());
    }
    let normal = !text.contains('\0')
        && !text.ends_with('/')
        && text[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if normal {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a normalised path: write it without `.`, `..`, `//` or a trailing /",
            text.escape_debug()
        ))
    }
}

fn check_outside_kernel_dirs(text: &str) -> Result<(), String> {
    match KERNEL_DIRS
        .into_iter()
        .find(|dir| Path::new(text).starts_with(dir))
    {
        Some(dir) => Err(format!(
            "{text} is under {dir}, a kernel or runtime tree the sandbox always gets its own of"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn load(section: &str) -> Result<Policy, crate::PolicyErrors> {
        Policy::from_yaml("t.yaml", &format!("version: 1\nteam: acme\n{section}"))
    }

    /// Every error as `LINE:COL: message`.
    fn problems(section: &str) -> Vec<String> {
        let errors = load(section).expect_err("refused");
        errors
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{}:{}: {}",
                    e.line.unwrap_or(0),
                    e.column.unwrap_or(0),
                    e.message
                )
            })
            .collect()
    }

    #[test]
    fn an_omitted_section_binds_nothing_and_wants_landlock_where_the_kernel_has_it() {
        let policy = load("").expect("valid");
        assert_eq!(policy.filesystem, Filesystem::default());
        assert_eq!(policy.filesystem.landlock, LandlockRequirement::BestEffort);
    }

    #[test]
    fn a_full_section_is_read_as_written() {
        let policy = load(
            "filesystem:\n  read_only: [/opt/python3.12, /srv/models]\n  read_write: [/var/cache/acme]\n  rootfs: /var/lib/tollgate/roots/python\n  landlock: required\n",
        )
        .expect("valid");
        assert_eq!(
            policy.filesystem,
            Filesystem {
                read_only: vec!["/opt/python3.12".into(), "/srv/models".into()],
                read_write: vec!["/var/cache/acme".into()],
                rootfs: Some("/var/lib/tollgate/roots/python".into()),
                landlock: LandlockRequirement::Required,
            }
        );
    }

    #[test]
    fn paths_must_be_absolute_and_normalised_at_their_line_and_column() {
        let errors = problems(
            "filesystem:\n  read_only:\n    - opt/tool\n    - /opt/../etc\n    - /opt//x\n    - /opt/x/\n    - /opt/./x\n",
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("5:7: ") && errors[0].contains("not an absolute path"));
        for (error, line) in errors[1..].iter().zip(6..) {
            assert!(
                error.starts_with(&format!("{line}:7: ")) && error.contains("normalised"),
                "{error}"
            );
        }
    }

    #[test]
    fn kernel_trees_the_whole_host_and_repeats_are_refused() {
        let errors = problems(
            "filesystem:\n  read_write: [/proc/1, /sys, /dev/shm, /run/user/0, /, /opt/a]\n  read_only: [/opt/a, /procs]\n",
        );
        let expected = [
            ("4:16: ", "under /proc"),
            ("4:25: ", "under /sys"),
            ("4:31: ", "under /dev"),
            ("4:41: ", "under /run"),
            ("4:54: ", "whole tree"),
            ("4:57: ", "listed twice"),
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:?}");
        for (error, (at, needle)) in errors.iter().zip(expected) {
            assert!(error.starts_with(at) && error.contains(needle), "{error}");
        }
    }

    #[test]
    fn at_most_sixteen_directories_can_be_bound() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("/opt/d{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert!(load(&format!("filesystem:\n  read_only: [{}]\n", list(16))).is_ok());
        let errors = problems(&format!("filesystem:\n  read_only: [{}]\n", list(17)));
        assert!(errors[0].contains("at most 16"), "{errors:?}");
    }

    #[test]
    fn rootfs_must_be_a_directory_other_than_the_host_root() {
        for (value, needle) in [
            ("/", "whole tree"),
            ("images/python", "not an absolute path"),
            ("/proc/1/root", "under /proc"),
        ] {
            let errors = problems(&format!("filesystem:\n  rootfs: {value}\n"));
            assert!(
                errors.len() == 1 && errors[0].starts_with("4:11: ") && errors[0].contains(needle),
                "{value}: {errors:?}"
            );
        }
    }

    #[test]
    fn landlock_is_required_or_best_effort_and_nothing_else() {
        let errors = problems("filesystem:\n  landlock: maybe\n");
        assert!(
            errors[0].contains("required") && errors[0].contains("best_effort"),
            "{errors:?}"
        );
        let errors = problems("filesystem:\n  read_only: []\n  mounts: []\n");
        assert!(errors[0].contains("unknown field `mounts`"), "{errors:?}");
    }
}
