//! Through the node service: a shared directory is bound only when its caller can reach it
//! itself.
//!
//! The worker is root: opening a `--share` path as root skips every permission the caller
//! would meet on the way (a parent of mode 0700 that is someone else's), and a bind mount
//! skips them from then on, so the sandbox would read what the caller never could. The
//! caller therefore opens each directory itself (`run --connect`, `O_PATH`), which proves
//! it may search every directory above it, and sends the descriptor; the worker binds its
//! own descriptor of the path (no link followed) only when it is that same directory (device
//! and inode), and only when the caller's identity may read and search it (`--share-ro`)
//! or also write it (`--share`), by its owner, group and mode, as the kernel decides for a
//! process without capabilities. A root caller may share anything, as a local root run.
//! Shares the team's policy adds are the operator's and need no caller's descriptor.

use crate::sandbox::mounts::{OpenShare, Share};
use crate::serve::wire::CallerIdentity;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;

/// A directory the caller shared, and the caller's own descriptor of it.
#[derive(Debug)]
pub struct CallerShare {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// Refuses the first of `caller_shares` that is not one of `opened` (the worker's
/// descriptors, which the sandbox gets) the caller can reach itself, in the words
/// `tollgate: --share DIR: the caller (uid N) cannot reach it itself`.
pub fn check(
    caller: &CallerIdentity,
    caller_shares: &[CallerShare],
    opened: &[OpenShare],
) -> Result<(), String> {
    for given in caller_shares {
        // The command line's share wins over the policy's for a path both name, so the
        // caller's is among the opened ones, with the caller's read-only choice.
        let open = opened.iter().find(|open| open.share.path == given.path);
        if !open.is_some_and(|open| reaches(caller, given, &open.share, open.id)) {
            let flag = match open {
                Some(open) if open.share.read_only => "--share-ro",
                _ => "--share",
            };
            return Err(format!(
                "{flag} {}: the caller (uid {}) cannot reach it itself",
                given.path.display(),
                caller.uid
            ));
        }
    }
    Ok(())
}

/// Whether the caller's descriptor `given` is the directory the worker opened (`id`), and
/// the caller may use it as `share` asks.
fn reaches(
    caller: &CallerIdentity,
    given: &CallerShare,
    share: &Share,
    id: crate::sandbox::host_path::FileId,
) -> bool {
    let Ok(stat) = crate::sandbox::host_path::stat(given.fd.as_fd()) else {
        return false;
    };
    if (stat.st_dev, stat.st_ino) != id || stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return false;
    }
    let needed = if share.read_only { 0o5 } else { 0o7 };
    caller.uid == 0 || permitted(caller, &stat) & needed == needed
}

/// The permission bits (`rwx` as 0o7) the caller gets on a file of `stat`'s owner, group
/// and mode: the owner's class if it owns it, else the group's if the file's group is one of
/// its groups, else the others'; as the kernel picks one class, never their union.
fn permitted(caller: &CallerIdentity, stat: &libc::stat) -> u32 {
    let mode = stat.st_mode;
    if stat.st_uid == caller.uid {
        (mode >> 6) & 0o7
    } else if stat.st_gid == caller.gid || caller.groups.contains(&stat.st_gid) {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(uid: u32, gid: u32, mode: u32) -> libc::stat {
        // SAFETY: stat is plain data.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        stat.st_uid = uid;
        stat.st_gid = gid;
        stat.st_mode = libc::S_IFDIR | mode;
        stat
    }

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> CallerIdentity {
        CallerIdentity {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn one_class_decides_as_the_kernel_decides() {
        let bob = caller(1000, 1000, &[50]);
        // The owner's bits, even when others get more.
        assert_eq!(permitted(&bob, &stat(1000, 7, 0o507)), 0o5);
        // A supplementary group counts as the primary one.
        assert_eq!(permitted(&bob, &stat(0, 50, 0o070)), 0o7);
        assert_eq!(permitted(&bob, &stat(0, 1000, 0o750)), 0o5);
        // Neither: the others' bits.
        assert_eq!(permitted(&bob, &stat(0, 0, 0o755)), 0o5);
        assert_eq!(permitted(&bob, &stat(0, 0, 0o700)), 0);
    }

    #[test]
    fn a_descriptor_of_another_directory_or_without_the_rights_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("tollgate-caller-shares-{}", std::process::id()));
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let open = |path: &std::path::Path| crate::sandbox::host_path::open_dir(path).unwrap();
        let opened = crate::sandbox::mounts::open_shares(&[Share {
            path: dir.clone(),
            read_only: false,
        }])
        .unwrap();
        let given = |fd| {
            [CallerShare {
                path: dir.clone(),
                fd,
            }]
        };
        let owner = crate::sandbox::host_path::stat(open(&dir).as_fd()).unwrap();
        let me = caller(owner.st_uid, owner.st_gid, &[]);
        let stranger = caller(owner.st_uid + 4242, owner.st_gid + 4242, &[]);
        let root = caller(0, 0, &[]);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        if owner.st_uid != 0 {
            assert!(check(&me, &given(open(&dir)), &opened).is_ok());
        }
        assert!(check(&root, &given(open(&dir)), &opened).is_ok());
        // Writable only by its owner: refused as a read-write share to anyone else.
        assert_eq!(
            check(&stranger, &given(open(&dir)), &opened).unwrap_err(),
            format!(
                "--share {}: the caller (uid {}) cannot reach it itself",
                dir.display(),
                stranger.uid
            )
        );
        // Another directory's descriptor is refused even to root.
        assert!(check(&root, &given(open(&other)), &opened).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
