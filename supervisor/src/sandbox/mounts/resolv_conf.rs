//! The sandbox's `/etc/resolv.conf` pointed at the execution's stub resolver (transparent
//! mode): where to bind the runtime directory's `resolv.conf`.
//!
//! Which file the sandbox's resolver library reads is what `/etc/resolv.conf` names *in the
//! sandbox's root*, links followed there: the host's own file (system root), the image's
//! (`--rootfs`), or a link whose target the sandbox does not have. systemd-resolved hosts
//! link it to `../run/systemd/resolve/stub-resolv.conf`, and the sandbox's `/run` is a fresh
//! tmpfs: that target is created in it and covered. A root with no `/etc/resolv.conf` is left
//! alone (glibc and musl then ask 127.0.0.1, where the stub resolver listens).
//!
//! The supervisor works the plan out before the clone ([`Plan::for_root`]), resolving each
//! link itself inside the root with no component of the host path followed outside it
//! ([`host_path`]); the child only executes it ([`Plan::apply`]: system calls, no allocation).

use super::child::{bind_file_onto, fstat, make_dir, open_in_view};
use super::{host_path, Root, HIDDEN_IN_ETC, SYSTEM_DIRS};
use nix::fcntl::OFlag;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Component, Path, PathBuf};

/// The file the sandbox's resolver library reads.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How many links a resolution may pass through before it is given up (the kernel's
/// `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What the child does to `/etc/resolv.conf`'s file in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: the root has no `/etc/resolv.conf`, or it names nothing a file can be bound
    /// over (a directory, a target outside `/run` the sandbox lacks, a loop).
    Leave,
    /// Bind over this regular file (a path in the sandbox with no link in it).
    Over(CString),
    /// Create these directories (outermost first) and then the file in the sandbox's fresh
    /// `/run`, and bind over the file.
    Create { dirs: Vec<CString>, file: CString },
}

/// What a path of the sandbox is made of, seen from the supervisor.
#[derive(Debug, PartialEq, Eq)]
enum Backing {
    /// The root's tree: the host's (system root, host tree) or the image's.
    Tree,
    /// A directory the sandbox gets a fresh one of (`/run`, `/tmp`, the system root's `/`
    /// and `/var`…): nothing of the tree is there.
    Fresh,
}

/// Where `path` (absolute, normal, no link in it) of the sandbox comes from under `root`.
fn backing(root: &Root, path: &Path) -> Backing {
    const OWN: [&str; 6] = ["/tmp", "/var/tmp", "/run", "/dev", "/proc", "/sys"];
    if OWN.iter().any(|dir| path.starts_with(dir)) {
        return Backing::Fresh;
    }
    match root {
        Root::Host | Root::Image(_) => Backing::Tree,
        Root::System => {
            let bound = SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir));
            if bound && !path.starts_with(HIDDEN_IN_ETC) {
                Backing::Tree
            } else {
                Backing::Fresh
            }
        }
    }
}

impl Plan {
    /// The plan for the sandbox of `root`, from its `/etc/resolv.conf`.
    pub fn for_root(root: &Root) -> io::Result<Plan> {
        let tree = match root {
            Root::Image(dir) => dir.as_path(),
            Root::System | Root::Host => Path::new("/"),
        };
        let tree = host_path::open_dir(tree)?;
        resolve(root, &tree)
    }

    /// Carries the plan out in the child, binding `source` (the runtime directory's
    /// `resolv.conf`, its path in the sandbox) over the file. Runs after the sandbox's `/run`
    /// is mounted: system calls only.
    pub(super) fn apply(&self, source: &CStr) -> io::Result<()> {
        let target = match self {
            Plan::Leave => return Ok(()),
            Plan::Over(file) => file,
            Plan::Create { dirs, file } => {
                // In the tmpfs the child has just mounted: nothing else is in it.
                for dir in dirs {
                    // SAFETY: a NUL-terminated path prepared before the clone.
                    unsafe { make_dir(dir, 0o755)? };
                }
                create_empty(file)?;
                file
            }
        };
        let target = open_in_view(target, false)?;
        if fstat(&target)?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        bind_file_onto(source, target.as_fd())
    }
}

/// Creates an empty file (0644) at `file`, which must not exist.
fn create_empty(file: &CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed right away.
    unsafe {
        let fd = libc::open(
            file.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(OwnedFd::from_raw_fd(fd));
    }
    Ok(())
}

/// Follows `/etc/resolv.conf` inside the sandbox's root, component by component: each one
/// is opened in the directory reached so far with no link followed (a link is read and its
/// target resolved here, an absolute one from the sandbox's `/`), so no step leaves `tree`.
fn resolve(root: &Root, tree: &OwnedFd) -> io::Result<Plan> {
    // The resolved path so far (real directories of the sandbox), and what is left to walk.
    let mut at: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = parts(Path::new(RESOLV_CONF)).rev().collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        let candidate = sandbox_path(&at, Some(&part));
        if backing(root, &candidate) == Backing::Fresh {
            return Ok(missing(&candidate, &pending));
        }
        let relative: PathBuf = at.iter().chain([&part]).collect();
        let opened = match host_path::open_in(
            tree.as_fd(),
            relative.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            0,
        ) {
            Ok(opened) => opened,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(missing(&candidate, &pending))
            }
            Err(error) => return Err(error),
        };
        let kind = host_path::stat(opened.as_fd())?.st_mode & libc::S_IFMT;
        match kind {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Ok(Plan::Leave);
                }
                let target = read_link(&opened)?;
                if target.is_absolute() {
                    at.clear();
                }
                pending.extend(parts(&target).rev());
            }
            libc::S_IFDIR if !pending.is_empty() => at.push(part),
            libc::S_IFREG if pending.is_empty() => return c_string(&candidate).map(Plan::Over),
            _ => return Ok(Plan::Leave),
        }
    }
    Ok(Plan::Leave)
}

/// The plan when `candidate` does not exist in the sandbox and `pending` (reversed) is left
/// of the path: create it if it is a plain path below `/run` (not in tollgate's own
/// `/run/tollgate`); leave it otherwise.
fn missing(candidate: &Path, pending: &[OsString]) -> Plan {
    if pending.iter().any(|part| part == "..") {
        return Plan::Leave;
    }
    let mut file = candidate.to_path_buf();
    file.extend(pending.iter().rev());
    let under_run = file.starts_with("/run") && file != Path::new("/run");
    if !under_run || file.starts_with("/run/tollgate") {
        return Plan::Leave;
    }
    let mut dirs = Vec::new();
    let mut dir = PathBuf::from("/run");
    let inner: Vec<_> = file.iter().skip(2).collect();
    for part in &inner[..inner.len() - 1] {
        dir.push(part);
        match c_string(&dir) {
            Ok(dir) => dirs.push(dir),
            Err(_) => return Plan::Leave,
        }
    }
    match c_string(&file) {
        Ok(file) => Plan::Create { dirs, file },
        Err(_) => Plan::Leave,
    }
}

/// The normal components of `path` (`/` and `.` dropped, `..` kept).
fn parts(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(part) => Some(part.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// `/` followed by `at` and `last`.
fn sandbox_path(at: &[OsString], last: Option<&OsString>) -> PathBuf {
    let mut path = PathBuf::from("/");
    path.extend(at.iter().chain(last));
    path
}

/// The target of the link `link` (an `O_PATH` descriptor of the link itself).
fn read_link(link: &OwnedFd) -> io::Result<PathBuf> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat on an O_PATH descriptor of a link with an empty path reads that link
    // into the buffer, at most its length.
    let length = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if length < 0 {
        return Err(io::Error::last_os_error());
    }
    buffer.truncate(length as usize);
    Ok(PathBuf::from(OsString::from_vec(buffer)))
}

fn c_string(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    /// A scratch tree standing in for an image root.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!(
                "tollgate-resolv-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            Tree(dir)
        }

        /// The plan for this tree as an image root; a file to bind over must be the one the
        /// kernel reaches when it resolves `/etc/resolv.conf` inside the tree itself.
        fn plan(&self) -> Plan {
            let plan = Plan::for_root(&Root::Image(self.0.clone())).expect("plan");
            if let Plan::Over(file) = &plan {
                let root = host_path::open_dir(&self.0).unwrap();
                let how = nix::fcntl::OpenHow::new()
                    .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
                    .resolve(nix::fcntl::ResolveFlag::RESOLVE_IN_ROOT);
                let kernel = nix::fcntl::openat2(root.as_fd(), "etc/resolv.conf", how).unwrap();
                let ours = self.0.join(file.to_str().unwrap().trim_start_matches('/'));
                let ours = std::fs::metadata(ours).unwrap();
                let kernel = host_path::stat(kernel.as_fd()).unwrap();
                assert_eq!((kernel.st_dev, kernel.st_ino), (ours.dev(), ours.ino()));
            }
            plan
        }

        fn link(&self, at: &str, target: &str) {
            let path = self.0.join(at);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        }

        fn file(&self, at: &str) {
            let path = self.0.join(at);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "nameserver 10.0.0.1\n").unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn c(path: &str) -> CString {
        CString::new(path).unwrap()
    }

    #[test]
    fn a_regular_file_is_covered_where_it_is() {
        let tree = Tree::new("file");
        tree.file("etc/resolv.conf");
        assert_eq!(tree.plan(), Plan::Over(c("/etc/resolv.conf")));
    }

    #[test]
    fn no_resolv_conf_is_left_alone() {
        assert_eq!(Tree::new("none").plan(), Plan::Leave);
    }

    #[test]
    fn links_are_followed_inside_the_root_relative_and_absolute() {
        let tree = Tree::new("links");
        tree.file("usr/share/dns/resolv.conf");
        tree.link("etc/resolv.conf", "../usr/lib/../dns/resolv.conf");
        tree.link("usr/lib", "/usr/share/dns");
        // `../usr/lib` is a link to /usr/share/dns, whose `..` is /usr/share.
        assert_eq!(tree.plan(), Plan::Over(c("/usr/share/dns/resolv.conf")));
        let absolute = Tree::new("absolute");
        absolute.file("etc/real.conf");
        absolute.link("etc/resolv.conf", "/etc/real.conf");
        assert_eq!(absolute.plan(), Plan::Over(c("/etc/real.conf")));
    }

    #[test]
    fn a_link_out_of_the_root_stays_in_it() {
        // On the host, /../../etc/hostname is the host's; inside the root, `..` of `/` is `/`.
        let tree = Tree::new("escape");
        tree.link("etc/resolv.conf", "../../../../../../etc/hostname");
        assert_eq!(tree.plan(), Plan::Leave);
        tree.file("etc/hostname");
        assert_eq!(tree.plan(), Plan::Over(c("/etc/hostname")));
    }

    #[test]
    fn a_systemd_resolved_link_into_run_is_created_in_the_fresh_run() {
        let tree = Tree::new("resolved");
        tree.link("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf");
        assert_eq!(
            tree.plan(),
            Plan::Create {
                dirs: vec![c("/run/systemd"), c("/run/systemd/resolve")],
                file: c("/run/systemd/resolve/stub-resolv.conf"),
            }
        );
        // Debian's /var/run -> /run leads there too.
        let var_run = Tree::new("var-run");
        var_run.link("var/run", "/run");
        var_run.link("etc/resolv.conf", "/var/run/resolvconf/resolv.conf");
        assert_eq!(
            var_run.plan(),
            Plan::Create {
                dirs: vec![c("/run/resolvconf")],
                file: c("/run/resolvconf/resolv.conf"),
            }
        );
    }

    #[test]
    fn targets_the_sandbox_lacks_outside_run_and_odd_shapes_are_left_alone() {
        for target in [
            "/tmp/resolv.conf",
            "/run",
            "/run/tollgate/x/resolv.conf",
            "/run/a/../b",
            "/nowhere/resolv.conf",
            "/etc",
        ] {
            let tree = Tree::new("odd");
            tree.link("etc/resolv.conf", target);
            assert_eq!(tree.plan(), Plan::Leave, "{target}");
        }
        let looped = Tree::new("loop");
        looped.link("etc/resolv.conf", "/etc/resolv.conf");
        assert_eq!(looped.plan(), Plan::Leave);
    }

    #[test]
    fn in_the_system_root_only_the_system_directories_are_the_hosts() {
        assert_eq!(
            backing(&Root::System, Path::new("/etc/resolv.conf")),
            Backing::Tree
        );
        for fresh in [
            "/var/run/x",
            "/home/x",
            "/etc/tollgate/x",
            "/run/x",
            "/tmp/x",
        ] {
            assert_eq!(
                backing(&Root::System, Path::new(fresh)),
                Backing::Fresh,
                "{fresh}"
            );
        }
        assert_eq!(backing(&Root::Host, Path::new("/var/run/x")), Backing::Tree);
        assert_eq!(backing(&Root::Host, Path::new("/run/x")), Backing::Fresh);
        // The host's own file, as the system root sees it: whatever this machine has, the
        // plan is made without error.
        Plan::for_root(&Root::System).expect("the host's /etc/resolv.conf");
    }
}
