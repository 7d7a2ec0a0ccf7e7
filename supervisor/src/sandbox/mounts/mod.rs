//! The box's filesystem: a root of its own, holding only the host's system directories
//! (read-only), the execution's private scratch and runtime directories, a minimal `/dev`,
//! its own `/proc` and `/sys`, and what the caller shares.
//!
//! The network walls see sockets, not files. Everything world-readable on a worker is
//! readable by a process that sees the host's tree: other teams' checkouts and policies under
//! `/home`, `/opt`, `/var/lib`; and a Unix socket is reached by its path (daemons listen under
//! `/run` and `/var/lib`; systemd-resolved would resolve, and so send, any name). So the
//! child, in mount and IPC namespaces of its own, mounts a fresh tmpfs and makes it its root
//! (`pivot_root`, then the old root is detached), holding:
//!
//! - read-only, no-set-uid binds of the host's system directories that exist ([`SYSTEM_DIRS`]:
//!   `/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`; links such as merged-/usr's `/bin -> usr/bin`
//!   are recreated as links), with `/etc/tollgate` (policies, secrets) covered by an empty
//!   directory — or, with `--rootfs DIR`, DIR itself, read-only, as the root;
//! - fresh `/tmp` and `/var/tmp` (tmpfs, mode 1777, each at most `--tmp-size`) and `/dev/shm`
//!   (at most [`DEV_SHM_SIZE`]), freed with the namespace (tmpfs pages are memory);
//! - a fresh `/run` holding only the execution's runtime directory (the CA bundle, the
//!   Python helper and, with the network on, the stub resolver's `resolv.conf`);
//! - with the network on, the CA bundle bound read-only over every system trust store of the
//!   root ([`trust_stores`]), and in transparent mode `resolv.conf` over the file the root's
//!   `/etc/resolv.conf` names ([`resolv_conf`]), so clients that read neither the CA
//!   variables nor a resolver setting of tollgate's trust the interception and ask the stub
//!   resolver;
//! - a minimal `/dev` (a tmpfs with `null`, `zero`, `full`, `random`, `urandom`, `tty`, a
//!   devpts instance of its own of at most [`DEV_PTS_MAX`] terminals with `ptmx`, and the
//!   `fd`, `stdin`, `stdout`, `stderr` links);
//! - a fresh `/proc` of the execution's PID namespace, mounted `hidepid=invisible`, and a
//!   fresh read-only `/sys` of its network namespace (no cgroup tree, no bpffs, no host
//!   interfaces);
//! - the directories shared with `--share` / `--share-ro` (and the policy's
//!   `filesystem.read_write` / `read_only`), bound at the same paths.
//!
//! Everything else of the host does not exist in the sandbox. Every host directory bound in
//! is opened by the supervisor with no link followed in any component
//! ([`super::host_path`]), and its mount cloned from that descriptor before the child exists
//! (`open_tree`, with `mount_setattr`: no set-uid, no devices, private, read-only down to every
//! submount where asked), so what is bound is what was checked. The child only attaches the
//! prepared mounts and makes fresh ones: [`PrivateMounts::apply`] runs between clone and
//! exec and only makes system calls. Mount propagation is cut first, so nothing done here
//! reaches the host.
//!
//! A test build can switch the new root off (the `root` layer, see `layers`): the child then
//! keeps the host's tree with the private mounts on top, which is how the Landlock suite shows
//! that layer holds alone.

mod child;
pub mod resolv_conf;
pub mod trust_stores;
mod view;

pub use view::{arrange_shares, check_share, max_tmp_size, View};

use super::host_path::{self, FileId};
use super::SandboxError;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// Where the execution's runtime directories live on the host and in the sandbox.
const RUNTIME_ROOT: &str = "/run/tollgate";
/// The CA bundle's name in the runtime directory.
pub const CA_BUNDLE_NAME: &str = "ca-bundle.pem";
/// The stub resolver's `resolv.conf` in the runtime directory.
pub const RESOLV_CONF_NAME: &str = "resolv.conf";

/// The host's system directories the sandbox's own root holds (those that exist).
pub const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Below `/etc`, what the sandbox must not see: tollgate's own configuration (every team's
/// policy, the secrets roots).
pub const HIDDEN_IN_ETC: &str = "/etc/tollgate";
/// Kernel and runtime trees the sandbox gets its own of, and which cannot be shared.
pub const KERNEL_DIRS: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];
/// Scratch directories the sandbox gets empty ones of.
pub const SCRATCH_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

/// The size of the sandbox's `/dev/shm` (Docker's default).
pub const DEV_SHM_SIZE: u64 = 64 << 20;
/// The smallest `--tmp-size` (tmpfs reads a size of 0 as "no limit").
pub const MIN_TMP_SIZE: u64 = 1 << 20;
/// The most pseudo-terminals a sandbox may hold at once (its own devpts instance).
pub const DEV_PTS_MAX: u32 = 64;

/// The most directories one execution may share (the child keeps their mounts in a fixed
/// array, since it cannot allocate).
pub const MAX_SHARES: usize = 16;

/// A host directory bound into the sandbox at the same path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A shared directory opened once, with no link followed in any component: the descriptor
/// its mount is cloned from, and its identity (for `run::outputs`, which refuses to write
/// inside a share).
#[derive(Debug)]
pub struct OpenShare {
    pub share: Share,
    dir: OwnedFd,
    pub id: FileId,
}

/// Opens every share (see [`OpenShare`]); the message names the share and what to fix.
pub fn open_shares(shares: &[Share]) -> Result<Vec<OpenShare>, String> {
    shares
        .iter()
        .map(|share| {
            let dir = view::open_share_dir(&share.path)?;
            let id = host_path::file_id(dir.as_fd())
                .map_err(|e| format!("--share {}: {e}", share.path.display()))?;
            Ok(OpenShare {
                share: share.clone(),
                dir,
                id,
            })
        })
        .collect()
}

/// What the sandbox's root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A fresh tmpfs with the host's system directories bound in.
    System,
    /// A prepared root filesystem (`--rootfs`), bound read-only as `/`.
    Image(PathBuf),
    /// The host's own tree, with the private mounts on top (test builds only).
    Host,
}

/// Everything the child's mounts are made of.
pub struct MountRequest<'a> {
    pub root: Root,
    /// The runtime directory, directly under `/run/tollgate`.
    pub runtime_dir: Option<&'a Path>,
    pub shares: &'a [OpenShare],
    /// Size of `/tmp` and of `/var/tmp`, each.
    pub tmp_size: u64,
    /// Bind the runtime directory's CA bundle over the root's system trust stores (the
    /// directory holds one: the network is on).
    pub trust_store: bool,
    /// Bind the runtime directory's `resolv.conf` over what the root's `/etc/resolv.conf`
    /// names (transparent mode).
    pub resolv_conf: bool,
}

/// A mount prepared in the supervisor: a detached tree, and the directories to create for its
/// mount point, outermost first (the last one is the mount point).
#[derive(Debug)]
struct Attach {
    tree: OwnedFd,
    mount_point_dirs: Vec<CString>,
}

/// A link of the host's root recreated in the sandbox's (merged-/usr's `/bin -> usr/bin`).
#[derive(Debug)]
struct Link {
    path: CString,
    target: CString,
}

/// What the child mounts, prepared before the clone.
#[derive(Debug)]
pub struct PrivateMounts {
    /// The new root: `None` keeps the host's tree (test builds); an image tree to pivot into;
    /// or an empty tmpfs (then `system` and `links` fill it).
    new_root: Option<Option<OwnedFd>>,
    system: Vec<Attach>,
    links: Vec<Link>,
    /// Cover `/etc/tollgate` with an empty directory.
    hide_etc_tollgate: bool,
    /// The runtime directory: its path (the same in the new `/run`) and its mount.
    runtime_dir: Option<(CString, OwnedFd)>,
    shares: Vec<Attach>,
    /// The CA bundle's path in the sandbox, to bind over the trust stores.
    trust_store: Option<CString>,
    /// The runtime directory's `resolv.conf` (its path in the sandbox), and where it goes.
    resolv_conf: Option<(CString, resolv_conf::Plan)>,
    /// In the host's tree: whether these exist to mount over.
    var_tmp: bool,
    dev_shm: bool,
    dev_pts: bool,
    /// tmpfs options of `/tmp` and `/var/tmp`, and of `/dev/shm`.
    tmp_options: CString,
    shm_options: CString,
}

fn mount_error(step: &'static str, message: String) -> SandboxError {
    SandboxError::Mounts {
        step,
        source: io::Error::other(message),
    }
}

fn c_path(step: &'static str, path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| SandboxError::Mounts {
        step,
        source: io::Error::other(e),
    })
}

/// Every prefix of `path` below `/`, outermost first: the directories to create for a mount
/// point at `path`.
fn mount_point_dirs(step: &'static str, path: &Path) -> Result<Vec<CString>, SandboxError> {
    let mut dirs = Vec::new();
    let mut at = PathBuf::from("/");
    for part in path.iter().skip(1) {
        at.push(part);
        dirs.push(c_path(step, &at)?);
    }
    Ok(dirs)
}

impl PrivateMounts {
    /// Prepares the mounts of `request`: opens and clones every host directory bound in.
    pub fn prepare(request: &MountRequest<'_>) -> Result<PrivateMounts, SandboxError> {
        if request.tmp_size < MIN_TMP_SIZE {
            return Err(mount_error(
                "scratch size",
                format!("the scratch size must be at least {MIN_TMP_SIZE} bytes"),
            ));
        }
        if request.shares.len() > MAX_SHARES {
            return Err(mount_error(
                "shared directories",
                format!("at most {MAX_SHARES} directories can be shared"),
            ));
        }
        let tmpfs = |size: u64| {
            CString::new(format!("mode=1777,size={size}")).map_err(|e| SandboxError::Mounts {
                step: "scratch size",
                source: io::Error::other(e),
            })
        };
        let runtime_dir = request
            .runtime_dir
            .map(|dir| {
                if dir.parent() != Some(Path::new(RUNTIME_ROOT)) {
                    return Err(mount_error(
                        "runtime directory",
                        format!("{} is not directly under {RUNTIME_ROOT}", dir.display()),
                    ));
                }
                Ok((
                    c_path("runtime directory", dir)?,
                    clone_dir("runtime directory", dir, true)?,
                ))
            })
            .transpose()?;
        let shares = request
            .shares
            .iter()
            .map(|open| {
                Ok(Attach {
                    tree: detached_copy(&open.dir, open.share.read_only).map_err(|source| {
                        SandboxError::Mounts {
                            step: "shared directory",
                            source,
                        }
                    })?,
                    mount_point_dirs: mount_point_dirs("shared directory", &open.share.path)?,
                })
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        let (new_root, system, links) = match &request.root {
            Root::Host => (None, Vec::new(), Vec::new()),
            Root::Image(dir) => {
                view::check_image(dir, request.shares)
                    .map_err(|message| mount_error("root filesystem", message))?;
                (
                    Some(Some(clone_dir("root filesystem", dir, true)?)),
                    Vec::new(),
                    Vec::new(),
                )
            }
            Root::System => {
                let (system, links) = system_dirs()?;
                (Some(None), system, links)
            }
        };
        // The files bound over the root's come from the runtime directory.
        let in_runtime_dir =
            |wanted: bool, name: &str, step: &'static str| match (wanted, request.runtime_dir) {
                (false, _) => Ok(None),
                (true, Some(dir)) => c_path(step, &dir.join(name)).map(Some),
                (true, None) => Err(mount_error(
                    step,
                    format!("{name} comes from the runtime directory, and there is none"),
                )),
            };
        let trust_store = in_runtime_dir(request.trust_store, CA_BUNDLE_NAME, "trust stores")?;
        let source = in_runtime_dir(request.resolv_conf, RESOLV_CONF_NAME, "resolv.conf")?;
        let resolv_conf = match source {
            None => None,
            Some(source) => match resolv_conf::Plan::for_root(&request.root) {
                Ok(resolv_conf::Plan::Leave) => None,
                Ok(plan) => Some((source, plan)),
                Err(source) => {
                    return Err(SandboxError::Mounts {
                        step: "reading the root's /etc/resolv.conf",
                        source,
                    })
                }
            },
        };
        let in_host_tree = new_root.is_none();
        Ok(PrivateMounts {
            trust_store,
            resolv_conf,
            hide_etc_tollgate: matches!(request.root, Root::System)
                && Path::new(HIDDEN_IN_ETC).is_dir(),
            new_root,
            system,
            links,
            runtime_dir,
            shares,
            var_tmp: !in_host_tree || Path::new("/var/tmp").is_dir(),
            dev_shm: !in_host_tree || Path::new("/dev/shm").is_dir(),
            dev_pts: !in_host_tree
                || (Path::new("/dev/pts").is_dir() && Path::new("/dev/ptmx").exists()),
            tmp_options: tmpfs(request.tmp_size)?,
            shm_options: tmpfs(DEV_SHM_SIZE)?,
        })
    }
}

/// The system directories of the host's root that exist, cloned read-only, and the links
/// among them (merged /usr).
fn system_dirs() -> Result<(Vec<Attach>, Vec<Link>), SandboxError> {
    let mut attaches = Vec::new();
    let mut links = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(|source| SandboxError::Mounts {
                step: "system directories",
                source,
            })?;
            links.push(Link {
                path: c_path("system directories", path)?,
                target: c_path("system directories", &target)?,
            });
        } else if meta.is_dir() {
            attaches.push(Attach {
                tree: clone_dir("system directories", path, true)?,
                mount_point_dirs: mount_point_dirs("system directories", path)?,
            });
        }
    }
    Ok((attaches, links))
}

/// Opens `dir` with no link followed and clones its mount tree (see [`detached_copy`]).
fn clone_dir(step: &'static str, dir: &Path, read_only: bool) -> Result<OwnedFd, SandboxError> {
    let opened = host_path::open_dir(dir)
        .map_err(|e| mount_error(step, host_path::describe_error(dir, &e)))?;
    detached_copy(&opened, read_only).map_err(|source| SandboxError::Mounts { step, source })
}

/// A detached copy of the mount tree at the opened directory `dir` (`open_tree(2)` with
/// `OPEN_TREE_CLONE`, Linux 5.2), made in the supervisor before the clone, so what is bound is
/// the directory that was checked, whatever its path names by then. Every mount of the copy
/// gets no set-uid and no devices (and is read-only when `read_only`), and is private: nothing
/// mounted on the host side later propagates into the sandbox (`mount_setattr(2)`, Linux 5.12).
fn detached_copy(dir: &OwnedFd, read_only: bool) -> io::Result<OwnedFd> {
    let read_only = if read_only {
        libc::MOUNT_ATTR_RDONLY
    } else {
        0
    };
    cloned_mount(
        dir.as_raw_fd(),
        c"",
        libc::AT_RECURSIVE | libc::AT_EMPTY_PATH,
        libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | read_only,
    )
}

/// A detached clone of the mount at `path` relative to `dirfd` (`open_tree(2)` with
/// `OPEN_TREE_CLONE` and `at_flags`), with `attr_set` set on it (and on every submount when
/// `at_flags` has `AT_RECURSIVE`) and private propagation (`mount_setattr(2)`). System calls
/// only: the child uses it too, between clone and exec.
fn cloned_mount(
    dirfd: libc::c_int,
    path: &CStr,
    at_flags: libc::c_int,
    attr_set: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: a descriptor or AT_FDCWD and a NUL-terminated path; the descriptor returned is
    // owned right below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | at_flags as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    // SAFETY: mount_attr is plain data; zero is "change nothing".
    let mut attributes: libc::mount_attr = unsafe { std::mem::zeroed() };
    attributes.attr_set = attr_set;
    attributes.propagation = libc::MS_PRIVATE;
    let recursive = at_flags & libc::AT_RECURSIVE;
    // SAFETY: the detached tree, an empty path and a mount_attr of the size passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | recursive) as libc::c_uint,
            &attributes as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

#[cfg(test)]
mod tests;
