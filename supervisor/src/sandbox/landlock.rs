//! Landlock, the second layer under the mount view: before exec, the command restricts itself
//! to what its view holds, with the rights the view gives.
//!
//! The mount view (see `mounts`) decides what exists in the sandbox. Landlock is checked by
//! the kernel on every access by path, whatever the mounts are, so a mistake in the view (a
//! bind too wide, a host tree left reachable) does not open the host by itself. The rules:
//!
//! - read and execute where the view binds read-only (the host's system directories, or the
//!   image root); read, write and create (no device nodes) on the scratch directories
//!   (`/tmp`, `/var/tmp`, `/dev/shm`) and the read-write shares — the [`ViewEntry`] list;
//! - read, no execute, on `/proc`, `/sys` and `/run` (which holds only the runtime directory);
//! - directory listings everywhere, so that `ls /` and `ls /dev` work in the box's own root
//!   (names only: no file outside the view can be opened);
//! - read and write on `/dev/null`, `/dev/zero` and `/dev/full`, terminal ioctls as well on
//!   `/dev/tty`, `/dev/ptmx` and `/dev/pts`, read on `/dev/random` and `/dev/urandom`;
//! - the command's stdin, stdout and stderr in the modes they are open in, so that reopening
//!   them (`/dev/stdin` is `/proc/self/fd/0`) works wherever they are;
//! - from ABI 6, abstract Unix sockets and signals scoped to the sandbox's own domain: it can
//!   neither connect to an abstract socket bound outside it nor signal a process outside it
//!   (tollgate's init included), whatever their uid.
//!
//! Every filesystem right the running ABI knows is handled, and so denied unless a rule grants
//! it: `REFER` from ABI 2, `TRUNCATE` from 3, `IOCTL_DEV` from 5. ABI 1 is not used: it refuses
//! every rename and link across directories, which breaks ordinary tools. The TCP rights
//! (ABI 4) are not handled: the network walls decide where the sandbox may connect, and its
//! own loopback servers must keep working.
//!
//! What Landlock cannot say, and the view alone does: rules add up down a tree, so a
//! read-only share inside a writable tree (`/tmp`) and `/etc/tollgate` inside the readable
//! `/etc` are kept by the mounts only; and ABI 7 has no right for connecting to a named Unix
//! socket, so only the view keeps host daemons' sockets out of reach.
//!
//! The plan is prepared in the supervisor ([`LandlockPlan::prepare`]); in the command's
//! process, after no_new_privs and before the seccomp filters, [`LandlockPlan::restrict_self`]
//! only makes system calls (the process is a copy of a multi-threaded one: no allocation),
//! opening each path `O_PATH` in the sandbox's own view.

use super::layers::Layers;
use super::mounts::{Root, Share, SYSTEM_DIRS};
use linux_raw_sys::landlock::{
    landlock_path_beneath_attr, landlock_rule_type, landlock_ruleset_attr,
    LANDLOCK_ACCESS_FS_EXECUTE as EXECUTE, LANDLOCK_ACCESS_FS_IOCTL_DEV as IOCTL_DEV,
    LANDLOCK_ACCESS_FS_MAKE_BLOCK as MAKE_BLOCK, LANDLOCK_ACCESS_FS_MAKE_CHAR as MAKE_CHAR,
    LANDLOCK_ACCESS_FS_MAKE_DIR as MAKE_DIR, LANDLOCK_ACCESS_FS_MAKE_FIFO as MAKE_FIFO,
    LANDLOCK_ACCESS_FS_MAKE_REG as MAKE_REG, LANDLOCK_ACCESS_FS_MAKE_SOCK as MAKE_SOCK,
    LANDLOCK_ACCESS_FS_MAKE_SYM as MAKE_SYM, LANDLOCK_ACCESS_FS_READ_DIR as READ_DIR,
    LANDLOCK_ACCESS_FS_READ_FILE as READ_FILE, LANDLOCK_ACCESS_FS_REFER as REFER,
    LANDLOCK_ACCESS_FS_REMOVE_DIR as REMOVE_DIR, LANDLOCK_ACCESS_FS_REMOVE_FILE as REMOVE_FILE,
    LANDLOCK_ACCESS_FS_TRUNCATE as TRUNCATE, LANDLOCK_ACCESS_FS_WRITE_FILE as WRITE_FILE,
    LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL,
};
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

pub use tollgate_policy::filesystem::LandlockRequirement as Requirement;

/// The oldest ABI tollgate applies (Linux 5.19): ABI 1 cannot allow a rename across
/// directories.
pub const MIN_ABI: u32 = 2;

/// One tree of the sandbox's view: a path in the sandbox, and whether the command may write
/// there. Each entry grants its whole tree, so the list names what is bound in (the system
/// directories, not the root holding them; `/` only when the root itself is a bound image),
/// the scratch directories and the shares. `/proc`, `/sys`, `/run` and `/dev` have fixed
/// rules of their own here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    pub path: PathBuf,
    pub writable: bool,
}

/// The view the sandbox's root gives, as Landlock must match it. A test build's host root
/// (the `root` layer off) gets the rules of the system root, so that Landlock alone keeps
/// the rest of the host out.
pub fn view_of(root: &Root, shares: &[Share]) -> Vec<ViewEntry> {
    let entry = |path: &Path, writable| ViewEntry {
        path: path.to_path_buf(),
        writable,
    };
    let mut view: Vec<ViewEntry> = match root {
        Root::Image(_) => vec![entry(Path::new("/"), false)],
        Root::System | Root::Host => SYSTEM_DIRS
            .iter()
            .map(|dir| entry(Path::new(dir), false))
            .collect(),
    };
    for scratch in ["/tmp", "/var/tmp", "/dev/shm"] {
        view.push(entry(Path::new(scratch), true));
    }
    view.extend(
        shares
            .iter()
            .map(|share| entry(&share.path, !share.read_only)),
    );
    view
}

/// The Landlock ABI of the running kernel, or why it has none (for `doctor` and the runs).
pub fn kernel_abi() -> Result<u32, String> {
    // SAFETY: the documented version query: no attributes, size 0.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<landlock_ruleset_attr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi > 0 {
        return Ok(abi as u32);
    }
    let error = io::Error::last_os_error();
    Err(match error.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no Landlock (it needs Linux 5.13 or newer built \
                               with CONFIG_SECURITY_LANDLOCK; or a seccomp filter around \
                               tollgate refuses the call)"
            .into(),
        Some(libc::EOPNOTSUPP) => "Landlock is built into this kernel but not enabled: add \
                                   `landlock` to the `lsm=` boot parameter"
            .into(),
        _ => format!("the Landlock version query failed: {error}"),
    })
}

/// The ABI an execution can apply: the kernel's, unless it is too old for tollgate or a test
/// build switched the layer off.
pub fn usable_abi(layers: Layers) -> Result<u32, String> {
    if !layers.landlock {
        return Err("the Landlock layer is switched off in this test build".into());
    }
    let abi = kernel_abi()?;
    if abi < MIN_ABI {
        return Err(format!(
            "this kernel's Landlock is ABI {abi}, which refuses every rename across \
             directories; tollgate applies ABI {MIN_ABI} (Linux 5.19) or newer"
        ));
    }
    Ok(abi)
}

/// What ABI 1 handles: everything but the rights added later.
const ABI_1_RIGHTS: u64 = (EXECUTE
    | WRITE_FILE
    | READ_FILE
    | READ_DIR
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
    | MAKE_SYM) as u64;

/// The filesystem rights `abi` knows: all of them are handled.
fn handled_rights(abi: u32) -> u64 {
    let mut rights = ABI_1_RIGHTS;
    for (since, right) in [(2, REFER), (3, TRUNCATE), (5, IOCTL_DEV)] {
        if abi >= since {
            rights |= right as u64;
        }
    }
    rights
}

/// What `abi` scopes to the sandbox's domain.
fn scopes(abi: u32) -> u64 {
    if abi >= 6 {
        (LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL) as u64
    } else {
        0
    }
}

const READ: u64 = (READ_FILE | READ_DIR) as u64;
const READ_EXECUTE: u64 = READ | EXECUTE as u64;
/// Everything but device nodes (`MAKE_CHAR`, `MAKE_BLOCK`) and device ioctls.
const READ_WRITE: u64 = READ_EXECUTE
    | (WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_SYM
        | REFER
        | TRUNCATE) as u64;
const DEVICE: u64 = (READ_FILE | WRITE_FILE) as u64;
const TERMINAL: u64 = DEVICE | (IOCTL_DEV | READ_DIR) as u64;
/// The rights a rule on a file (not a directory) may carry.
const FILE_RIGHTS: u64 = (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV) as u64;

/// The rules every sandbox gets besides its view.
const FIXED_RULES: [(&CStr, u64); 12] = [
    (c"/", READ_DIR as u64),
    (c"/proc", READ),
    (c"/sys", READ),
    (c"/run", READ),
    (c"/dev/null", DEVICE),
    (c"/dev/zero", DEVICE),
    (c"/dev/full", DEVICE),
    (c"/dev/random", READ_FILE as u64),
    (c"/dev/urandom", READ_FILE as u64),
    (c"/dev/tty", TERMINAL),
    (c"/dev/ptmx", TERMINAL),
    (c"/dev/pts", TERMINAL),
];

/// Trees whose rules are fixed here, which a view entry may not widen.
const FIXED_TREES: [&str; 4] = ["/proc", "/sys", "/run", "/dev"];

/// One path and what the command may do beneath it.
#[derive(Debug)]
struct Rule {
    path: CString,
    access: u64,
}

/// The rules the command restricts itself with before exec, prepared before the clone.
#[derive(Debug)]
pub struct LandlockPlan {
    abi: u32,
    ruleset: landlock_ruleset_attr,
    rules: Vec<Rule>,
}

impl LandlockPlan {
    /// The plan for a sandbox whose view is `view`, on a host whose usable ABI is `abi` (see
    /// [`usable_abi`]). `None` when there is no Landlock and the policy can do without it;
    /// an error, for the run to fail with, when the policy requires it.
    pub fn prepare(
        view: &[ViewEntry],
        requirement: Requirement,
        abi: Result<u32, String>,
    ) -> Result<Option<LandlockPlan>, String> {
        let abi = match (abi, requirement) {
            (Ok(abi), _) => abi,
            (Err(_), Requirement::BestEffort) => return Ok(None),
            (Err(why), Requirement::Required) => {
                return Err(format!(
                    "the policy requires Landlock (filesystem.landlock: required), but {why}; \
                     `tollgate doctor` checks this host"
                ))
            }
        };
        let handled = handled_rights(abi);
        let mut rules = Vec::with_capacity(FIXED_RULES.len() + view.len());
        for entry in view {
            check_entry(&entry.path)?;
            let access = if entry.writable {
                READ_WRITE
            } else {
                READ_EXECUTE
            };
            rules.push(Rule {
                path: CString::new(entry.path.as_os_str().as_bytes())
                    .map_err(|_| format!("{} contains a NUL byte", entry.path.display()))?,
                access: access & handled,
            });
        }
        rules.extend(FIXED_RULES.iter().map(|(path, access)| Rule {
            path: (*path).to_owned(),
            access: access & handled,
        }));
        Ok(Some(LandlockPlan {
            abi,
            ruleset: landlock_ruleset_attr {
                handled_access_fs: handled,
                handled_access_net: 0,
                scoped: scopes(abi),
            },
            rules,
        }))
    }

    /// The ABI the plan applies (for the summary and the audit log).
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// Restricts the calling process (and what it execs) to the plan. Runs in the command's
    /// process after no_new_privs: system calls only, no allocation.
    pub fn restrict_self(&self) -> io::Result<()> {
        // SAFETY: a ruleset attribute of the size passed; the descriptor returned is closed
        // below.
        let ruleset = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &self.ruleset as *const landlock_ruleset_attr,
                std::mem::size_of::<landlock_ruleset_attr>(),
                0u32,
            )
        };
        if ruleset < 0 {
            return Err(io::Error::last_os_error());
        }
        let ruleset = ruleset as libc::c_int;
        let result = self.add_rules(ruleset).and_then(|()| {
            // SAFETY: a ruleset descriptor of this process; no flags.
            check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) })
        });
        // SAFETY: the ruleset descriptor opened above.
        unsafe { libc::close(ruleset) };
        result
    }

    fn add_rules(&self, ruleset: libc::c_int) -> io::Result<()> {
        for rule in &self.rules {
            // SAFETY: a NUL-terminated path prepared before the clone.
            let fd = unsafe { libc::open(rule.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    // Not in this sandbox's view (a system directory this host lacks), or not
                    // reachable by its user: a rule would grant nothing.
                    Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES) => continue,
                    _ => return Err(error),
                }
            }
            let added = add_rule(ruleset, fd, rule.access);
            // SAFETY: the descriptor opened above.
            unsafe { libc::close(fd) };
            added?;
        }
        for fd in 0..=2 {
            if let Some(access) = stdio_access(fd) {
                // Best effort: a pipe or a socket takes no rule (nor needs one: reopening them
                // is always allowed), and no rule only means less is allowed.
                let _ = add_rule(ruleset, fd, access & self.ruleset.handled_access_fs);
            }
        }
        Ok(())
    }
}

/// Refuses a view entry that is not absolute or lies in a tree whose rules are fixed here
/// (`/dev/shm`, a scratch directory, is the one exception).
fn check_entry(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "Landlock view entry {} is not absolute",
            path.display()
        ));
    }
    if path.starts_with("/dev/shm") {
        return Ok(());
    }
    match FIXED_TREES.into_iter().find(|tree| path.starts_with(tree)) {
        Some(tree) => Err(format!(
            "Landlock view entry {} is under {tree}, whose rules are fixed (sandbox::landlock)",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Adds a rule for what `fd` names: `access` on its tree, or only the file rights when it is
/// not a directory (the kernel refuses directory rights on a file).
fn add_rule(ruleset: libc::c_int, fd: libc::c_int, access: u64) -> io::Result<()> {
    // SAFETY: fstat fills one stat for an open descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut stat) } as libc::c_long)?;
    let access = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        access
    } else {
        access & FILE_RIGHTS
    };
    if access == 0 {
        return Ok(());
    }
    let beneath = landlock_path_beneath_attr {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: a path-beneath attribute for an open descriptor; no flags.
    check(unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            landlock_rule_type::LANDLOCK_RULE_PATH_BENEATH as libc::c_uint,
            &beneath as *const landlock_path_beneath_attr,
            0u32,
        )
    })
}

/// What reopening standard descriptor `fd` may do: what it is open for (with truncation when
/// it is writable, which the descriptor itself allows), or `None` for a directory.
fn stdio_access(fd: libc::c_int) -> Option<u64> {
    // SAFETY: fcntl and fstat on a descriptor number; failures are answered with `None`.
    let (flags, stat) = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let mut stat: libc::stat = std::mem::zeroed();
        if flags < 0 || libc::fstat(fd, &mut stat) != 0 {
            return None;
        }
        (flags, stat)
    };
    if flags & libc::O_PATH != 0 || stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return None;
    }
    let write = (WRITE_FILE | TRUNCATE) as u64;
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => Some(READ_FILE as u64),
        libc::O_WRONLY => Some(write),
        libc::O_RDWR => Some(READ_FILE as u64 | write),
        _ => None,
    }
}

fn check(result: libc::c_long) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&str, bool)]) -> Vec<ViewEntry> {
        entries
            .iter()
            .map(|(path, writable)| ViewEntry {
                path: PathBuf::from(path),
                writable: *writable,
            })
            .collect()
    }

    fn rule<'a>(plan: &'a LandlockPlan, path: &str) -> Option<&'a Rule> {
        plan.rules.iter().find(|r| r.path.to_str() == Ok(path))
    }

    #[test]
    fn every_right_of_the_running_abi_is_handled() {
        assert_eq!(handled_rights(2), ABI_1_RIGHTS | REFER as u64);
        assert_eq!(handled_rights(3), handled_rights(2) | TRUNCATE as u64);
        assert_eq!(handled_rights(4), handled_rights(3));
        assert_eq!(handled_rights(5), handled_rights(3) | IOCTL_DEV as u64);
        assert_eq!(handled_rights(7), (1 << 16) - 1, "all 16 rights of ABI 7");
        assert_eq!(scopes(5), 0);
        assert_eq!(scopes(6), 3);
        assert_eq!(scopes(7), 3);
    }

    #[test]
    fn without_landlock_a_best_effort_run_goes_on_and_a_required_one_is_refused() {
        let none = || Err("this kernel has no Landlock".to_owned());
        assert!(matches!(
            LandlockPlan::prepare(&[], Requirement::BestEffort, none()),
            Ok(None)
        ));
        let refused = LandlockPlan::prepare(&[], Requirement::Required, none()).unwrap_err();
        assert!(
            refused.contains("filesystem.landlock: required") && refused.contains("no Landlock"),
            "{refused}"
        );
    }

    #[test]
    fn the_view_is_read_only_or_writable_and_the_kernel_trees_are_fixed() {
        let plan = LandlockPlan::prepare(
            &view(&[("/usr", false), ("/tmp", true), ("/dev/shm", true)]),
            Requirement::Required,
            Ok(7),
        )
        .expect("prepared")
        .expect("a plan");
        assert_eq!(plan.abi(), 7);
        assert_eq!(rule(&plan, "/usr").unwrap().access, READ_EXECUTE);
        let tmp = rule(&plan, "/tmp").unwrap().access;
        assert_eq!(
            tmp & (MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV) as u64,
            0,
            "no devices"
        );
        assert_eq!(
            tmp & (REFER | TRUNCATE | MAKE_REG) as u64,
            (REFER | TRUNCATE | MAKE_REG) as u64
        );
        assert_eq!(rule(&plan, "/proc").unwrap().access & EXECUTE as u64, 0);
        assert_eq!(
            rule(&plan, "/").unwrap().access,
            READ_DIR as u64,
            "names only"
        );
        assert_eq!(
            rule(&plan, "/dev/tty").unwrap().access & IOCTL_DEV as u64,
            IOCTL_DEV as u64
        );
        assert_eq!(
            rule(&plan, "/dev/null").unwrap().access & IOCTL_DEV as u64,
            0
        );
        assert_eq!(plan.ruleset.scoped, 3);
        for widened in [
            "/dev",
            "/dev/sda",
            "/proc/1/root",
            "/sys",
            "/run/user",
            "relative",
        ] {
            assert!(
                LandlockPlan::prepare(&view(&[(widened, false)]), Requirement::Required, Ok(7))
                    .is_err(),
                "{widened}"
            );
        }
    }

    #[test]
    fn an_older_abi_gets_only_the_rights_it_knows() {
        let plan = LandlockPlan::prepare(&view(&[("/tmp", true)]), Requirement::Required, Ok(2))
            .expect("prepared")
            .expect("a plan");
        assert_eq!(plan.ruleset.handled_access_fs, handled_rights(2));
        assert_eq!(plan.ruleset.scoped, 0);
        for rule in &plan.rules {
            assert_eq!(rule.access & !handled_rights(2), 0, "{:?}", rule.path);
        }
    }

    /// In a forked child (system calls only, as in the sandbox): with only `/usr` in the
    /// view, a file under `/tmp` can be neither read nor written, while `/usr` stays readable.
    #[test]
    fn the_restricted_process_reaches_only_its_view() {
        let Ok(abi) = usable_abi(Layers::ALL) else {
            panic!("this host has Landlock (ABI 7)");
        };
        let outside =
            std::env::temp_dir().join(format!("tollgate-landlock-{}", std::process::id()));
        std::fs::write(&outside, "outside").expect("write");
        let outside_c = CString::new(outside.as_os_str().as_bytes()).unwrap();
        let plan = LandlockPlan::prepare(&view(&[("/usr", false)]), Requirement::Required, Ok(abi))
            .expect("prepared")
            .expect("a plan");
        // SAFETY: the child makes system calls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: system calls on NUL-terminated paths; _exit never returns.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if plan.restrict_self().is_err() {
                    libc::_exit(10);
                }
                let code = if libc::open(outside_c.as_ptr(), libc::O_RDONLY) >= 0
                    || errno() != libc::EACCES
                {
                    11
                } else if libc::open(outside_c.as_ptr(), libc::O_WRONLY) >= 0
                    || errno() != libc::EACCES
                {
                    12
                } else if libc::open(c"/usr/bin/true".as_ptr(), libc::O_RDONLY) < 0 {
                    13
                } else {
                    0
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let _ = std::fs::remove_file(&outside);
        assert!(libc::WIFEXITED(status), "status {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "10 restrict, 11 read, 12 write, 13 /usr"
        );
    }

    #[test]
    fn the_view_of_a_system_root_names_the_system_directories_and_an_image_its_root() {
        let shares = [
            Share {
                path: "/opt/models".into(),
                read_only: true,
            },
            Share {
                path: "/srv/job".into(),
                read_only: false,
            },
        ];
        for root in [Root::System, Root::Host] {
            let entries = view_of(&root, &shares);
            assert!(
                !entries.iter().any(|e| e.path == Path::new("/")),
                "{root:?}"
            );
            assert!(entries.contains(&ViewEntry {
                path: "/usr".into(),
                writable: false
            }));
            assert!(entries.contains(&ViewEntry {
                path: "/opt/models".into(),
                writable: false
            }));
            assert!(entries.contains(&ViewEntry {
                path: "/srv/job".into(),
                writable: true
            }));
        }
        let image = view_of(&Root::Image("/images/py".into()), &[]);
        assert_eq!(image[0].path, Path::new("/"));
        assert!(!image.iter().any(|e| e.path == Path::new("/usr")));
    }
}
