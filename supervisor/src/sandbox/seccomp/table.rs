//! The table: which system calls the sandbox may make, and what every other one answers.
//! x86-64 numbers; `docs/architecture.md` shows the same table with the reasons.
//!
//! An allowlist, the shape of Docker's default profile: the calls that profile gives a
//! process without capabilities, less what tollgate refuses on top of it, plus the newer
//! forms of allowed calls. A deny list on top of no capabilities and `no_new_privs` would
//! have to name every dangerous call, including those of kernels not written yet; here a call
//! the table does not name is refused until someone decides it is safe, and nothing depends
//! on the host's sysctls (bpf, perf_event_open and userfaultfd are otherwise closed only by
//! them, and another worker node may set them differently).
//!
//! The errnos follow Docker's: EPERM for a refused call (what a process without the
//! capability would get), EAFNOSUPPORT for a socket family (what a kernel without it says),
//! ENOSYS where callers need to fall back (`clone3` to `clone`, io_uring to ordinary calls)
//! and for every number the table does not name — obsolete calls and calls newer than it —
//! which is what a kernel without them answers, so programs take their fallback.

use super::program::{Arch, Rule, Test, Verdict};

pub const ARCH: Arch = Arch {
    audit: AUDIT_ARCH_X86_64,
    numbers_below: Some(X32_SYSCALL_BIT),
};
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// What a number the table does not name gets.
pub const DEFAULT: Verdict = Verdict::Errno(libc::ENOSYS);

const EPERM: Verdict = Verdict::Errno(libc::EPERM);
const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS);

/// Address families the sandbox may create sockets in: Unix, IPv4 and IPv6 (which the eBPF
/// wall sees), and netlink (glibc's resolver and `getifaddrs` use it; it sees only the
/// sandbox's namespace). The cgroup `sock_create` hook sees only IPv4 and IPv6 sockets, so
/// `AF_VSOCK` (the hypervisor host, on VMs), `AF_PACKET` or `AF_XDP` would pass every wall.
const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

/// Personas the sandbox may take: the default (`PER_LINUX`), the query (`0xffffffff`), and
/// the ones Docker allows (`PER_LINUX32`, `UNAME26` and both), which change only what
/// `uname` reports. The others change how memory is laid out and mapped: `ADDR_NO_RANDOMIZE`
/// turns address randomisation off, `READ_IMPLIES_EXEC` makes every readable mapping
/// executable, `MMAP_PAGE_ZERO` maps page zero.
const PERSONAS: [u32; 5] = [0, 0x0008, 0x0020000, 0x0020008, 0xffff_ffff];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: a new namespace. An unprivileged user namespace hands the
/// sandbox every capability over its own objects, the door most kernel exploits go through.
const NEW_NAMESPACES: u32 = 0x7e02_0000;
/// `CLONE_NEWTIME`, valid for `unshare` only (in `clone`'s flags this bit is the exit signal).
const CLONE_NEWTIME: u32 = 0x80;

/// `TIOCSTI` pushes bytes into a terminal's input as if typed: into the caller's shell, when
/// the terminal is the caller's (`dev.tty.legacy_tiocsti = 1` allows it to any process on
/// its controlling terminal). `TIOCLINUX` does the same through the console's selection.
const TERMINAL_INJECTION: [u32; 2] = [0x5412, 0x541c];

/// The calls whose verdict reads an argument; checked first (`ioctl`, the frequent one,
/// first of all), since they are the ones that run the filter (see `program`).
fn argument_rules() -> [(i64, Rule); 6] {
    let refuse_when = |arg, test| Rule::Argument {
        arg,
        test,
        then: EPERM,
        otherwise: Verdict::Allow,
    };
    let allow_only = |arg, values, errno| Rule::Argument {
        arg,
        test: Test::OneOf(values),
        then: Verdict::Allow,
        otherwise: Verdict::Errno(errno),
    };
    [
        (
            libc::SYS_ioctl,
            refuse_when(1, Test::OneOf(&TERMINAL_INJECTION)),
        ),
        (
            libc::SYS_clone,
            refuse_when(0, Test::AnyBit(NEW_NAMESPACES)),
        ),
        (
            libc::SYS_socket,
            allow_only(0, &SOCKET_FAMILIES, libc::EAFNOSUPPORT),
        ),
        // A socketpair of another family is created in the kernel before it fails.
        (
            libc::SYS_socketpair,
            allow_only(0, &[libc::AF_UNIX as u32], libc::EAFNOSUPPORT),
        ),
        (libc::SYS_personality, allow_only(0, &PERSONAS, libc::EPERM)),
        // unshare(CLONE_FS | CLONE_FILES | CLONE_SYSVSEM) only unshares the caller's own state.
        (
            libc::SYS_unshare,
            refuse_when(0, Test::AnyBit(NEW_NAMESPACES | CLONE_NEWTIME)),
        ),
    ]
}

/// EPERM, whatever the arguments.
#[rustfmt::skip]
const REFUSED: &[i64] = &[
    // Kernel keyrings: a uid's keyrings outlive the execution, a channel to the next one that
    // gets the uid (and `/proc/key-users` shows them to everyone).
    libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key,
    // Kernel attack surface that only sysctls close otherwise.
    libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_userfaultfd,
    // Another process's insides (Docker: CAP_SYS_PTRACE).
    libc::SYS_kcmp, libc::SYS_pidfd_getfd, libc::SYS_process_madvise,
    // NUMA memory policy and page migration (Docker: CAP_SYS_NICE).
    libc::SYS_mbind, libc::SYS_set_mempolicy, libc::SYS_get_mempolicy,
    libc::SYS_set_mempolicy_home_node, libc::SYS_migrate_pages, libc::SYS_move_pages,
    // Mounts and the root directory.
    libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root, libc::SYS_chroot,
    libc::SYS_open_tree, libc::SYS_move_mount, libc::SYS_fsopen, libc::SYS_fsconfig,
    libc::SYS_fsmount, libc::SYS_fspick, libc::SYS_mount_setattr, OPEN_TREE_ATTR,
    // Namespaces: entering one (making one: `clone`, `unshare` above).
    libc::SYS_setns,
    // The running kernel and the machine.
    libc::SYS_kexec_load, libc::SYS_kexec_file_load, libc::SYS_init_module,
    libc::SYS_finit_module, libc::SYS_delete_module, libc::SYS_acct, libc::SYS_swapon,
    libc::SYS_swapoff, libc::SYS_reboot, libc::SYS_syslog, libc::SYS_quotactl,
    libc::SYS_quotactl_fd, libc::SYS_sethostname, libc::SYS_setdomainname, libc::SYS_vhangup,
    // Files by handle, past the permission checks of a path walk.
    libc::SYS_open_by_handle_at,
    // Watching a whole filesystem (tollgate: fanotify_mark too, useless without init).
    libc::SYS_fanotify_init, libc::SYS_fanotify_mark,
    // I/O ports, the local descriptor table (tollgate: only 16-bit code and Wine need it,
    // and it has been a kernel bug's way in), the clock (tollgate: adjtimex and
    // clock_adjtime, whose reads nothing in a sandbox needs).
    libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_modify_ldt, libc::SYS_settimeofday,
    libc::SYS_clock_settime, libc::SYS_clock_adjtime, libc::SYS_adjtimex,
];

/// ENOSYS, whatever the arguments: callers fall back. `clone3` passes its flags in memory a
/// filter cannot read (glibc falls back to `clone`, whose flags it reads); io_uring's
/// operations bypass the socket calls the filter and the eBPF wall see (programs fall back to
/// ordinary system calls).
const FALL_BACK: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Allowed whatever the arguments (the kernel still checks permissions): Docker's allowlist
/// for a process without capabilities on x86-64, in number order, less `ioctl`, `socket`,
/// `socketpair` and `personality` (argument rules above), `adjtimex`, `clock_adjtime`,
/// `fanotify_mark` and `modify_ldt` (refused above), io_uring (ENOSYS above), and
/// `epoll_ctl_old`/`epoll_wait_old` (never implemented); with `ptrace`,
/// `process_vm_readv`/`writev` (Docker allows them on kernels since 4.8, where a tracer can
/// no longer get around seccomp, and the sandbox can reach only its own processes: a uid of
/// its own) — followed by newer forms of allowed calls.
#[rustfmt::skip]
const ALLOWED: &[i64] = &[
    libc::SYS_read, libc::SYS_write, libc::SYS_open, libc::SYS_close, libc::SYS_stat,
    libc::SYS_fstat, libc::SYS_lstat, libc::SYS_poll, libc::SYS_lseek, libc::SYS_mmap,
    libc::SYS_mprotect, libc::SYS_munmap, libc::SYS_brk, libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_pread64, libc::SYS_pwrite64,
    libc::SYS_readv, libc::SYS_writev, libc::SYS_access, libc::SYS_pipe, libc::SYS_select,
    libc::SYS_sched_yield, libc::SYS_mremap, libc::SYS_msync, libc::SYS_mincore, libc::SYS_madvise,
    libc::SYS_shmget, libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_dup, libc::SYS_dup2,
    libc::SYS_pause, libc::SYS_nanosleep, libc::SYS_getitimer, libc::SYS_alarm, libc::SYS_setitimer,
    libc::SYS_getpid, libc::SYS_sendfile, libc::SYS_connect, libc::SYS_accept, libc::SYS_sendto,
    libc::SYS_recvfrom, libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_shutdown, libc::SYS_bind,
    libc::SYS_listen, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_setsockopt,
    libc::SYS_getsockopt, libc::SYS_fork, libc::SYS_vfork, libc::SYS_execve, libc::SYS_exit,
    libc::SYS_wait4, libc::SYS_kill, libc::SYS_uname, libc::SYS_semget, libc::SYS_semop,
    libc::SYS_semctl, libc::SYS_shmdt, libc::SYS_msgget, libc::SYS_msgsnd, libc::SYS_msgrcv,
    libc::SYS_msgctl, libc::SYS_fcntl, libc::SYS_flock, libc::SYS_fsync, libc::SYS_fdatasync,
    libc::SYS_truncate, libc::SYS_ftruncate, libc::SYS_getdents, libc::SYS_getcwd, libc::SYS_chdir,
    libc::SYS_fchdir, libc::SYS_rename, libc::SYS_mkdir, libc::SYS_rmdir, libc::SYS_creat,
    libc::SYS_link, libc::SYS_unlink, libc::SYS_symlink, libc::SYS_readlink, libc::SYS_chmod,
    libc::SYS_fchmod, libc::SYS_chown, libc::SYS_fchown, libc::SYS_lchown, libc::SYS_umask,
    libc::SYS_gettimeofday, libc::SYS_getrlimit, libc::SYS_getrusage, libc::SYS_sysinfo,
    libc::SYS_times, libc::SYS_ptrace, libc::SYS_getuid, libc::SYS_getgid, libc::SYS_setuid,
    libc::SYS_setgid, libc::SYS_geteuid, libc::SYS_getegid, libc::SYS_setpgid, libc::SYS_getppid,
    libc::SYS_getpgrp, libc::SYS_setsid, libc::SYS_setreuid, libc::SYS_setregid,
    libc::SYS_getgroups, libc::SYS_setgroups, libc::SYS_setresuid, libc::SYS_getresuid,
    libc::SYS_setresgid, libc::SYS_getresgid, libc::SYS_getpgid, libc::SYS_setfsuid,
    libc::SYS_setfsgid, libc::SYS_getsid, libc::SYS_capget, libc::SYS_capset,
    libc::SYS_rt_sigpending, libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigsuspend, libc::SYS_sigaltstack, libc::SYS_utime, libc::SYS_mknod,
    libc::SYS_statfs, libc::SYS_fstatfs, libc::SYS_getpriority, libc::SYS_setpriority,
    libc::SYS_sched_setparam, libc::SYS_sched_getparam, libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler, libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min, libc::SYS_sched_rr_get_interval, libc::SYS_mlock,
    libc::SYS_munlock, libc::SYS_mlockall, libc::SYS_munlockall, libc::SYS_prctl,
    libc::SYS_arch_prctl, libc::SYS_setrlimit, libc::SYS_sync, libc::SYS_gettid,
    libc::SYS_readahead, libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr,
    libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr, libc::SYS_listxattr,
    libc::SYS_llistxattr, libc::SYS_flistxattr, libc::SYS_removexattr, libc::SYS_lremovexattr,
    libc::SYS_fremovexattr, libc::SYS_tkill, libc::SYS_time, libc::SYS_futex,
    libc::SYS_sched_setaffinity, libc::SYS_sched_getaffinity, libc::SYS_set_thread_area,
    libc::SYS_io_setup, libc::SYS_io_destroy, libc::SYS_io_getevents, libc::SYS_io_submit,
    libc::SYS_io_cancel, libc::SYS_get_thread_area, libc::SYS_epoll_create,
    libc::SYS_remap_file_pages, libc::SYS_getdents64, libc::SYS_set_tid_address,
    libc::SYS_restart_syscall, libc::SYS_semtimedop, libc::SYS_fadvise64, libc::SYS_timer_create,
    libc::SYS_timer_settime, libc::SYS_timer_gettime, libc::SYS_timer_getoverrun,
    libc::SYS_timer_delete, libc::SYS_clock_gettime, libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep, libc::SYS_exit_group, libc::SYS_epoll_wait, libc::SYS_epoll_ctl,
    libc::SYS_tgkill, libc::SYS_utimes, libc::SYS_mq_open, libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend, libc::SYS_mq_timedreceive, libc::SYS_mq_notify, libc::SYS_mq_getsetattr,
    libc::SYS_waitid, libc::SYS_ioprio_set, libc::SYS_ioprio_get, libc::SYS_inotify_init,
    libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch, libc::SYS_openat, libc::SYS_mkdirat,
    libc::SYS_mknodat, libc::SYS_fchownat, libc::SYS_futimesat, libc::SYS_newfstatat,
    libc::SYS_unlinkat, libc::SYS_renameat, libc::SYS_linkat, libc::SYS_symlinkat,
    libc::SYS_readlinkat, libc::SYS_fchmodat, libc::SYS_faccessat, libc::SYS_pselect6,
    libc::SYS_ppoll, libc::SYS_set_robust_list, libc::SYS_get_robust_list, libc::SYS_splice,
    libc::SYS_tee, libc::SYS_sync_file_range, libc::SYS_vmsplice, libc::SYS_utimensat,
    libc::SYS_epoll_pwait, libc::SYS_signalfd, libc::SYS_timerfd_create, libc::SYS_eventfd,
    libc::SYS_fallocate, libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime, libc::SYS_accept4,
    libc::SYS_signalfd4, libc::SYS_eventfd2, libc::SYS_epoll_create1, libc::SYS_dup3,
    libc::SYS_pipe2, libc::SYS_inotify_init1, libc::SYS_preadv, libc::SYS_pwritev,
    libc::SYS_rt_tgsigqueueinfo, libc::SYS_recvmmsg, libc::SYS_prlimit64,
    libc::SYS_name_to_handle_at, libc::SYS_syncfs, libc::SYS_sendmmsg, libc::SYS_getcpu,
    libc::SYS_process_vm_readv, libc::SYS_process_vm_writev, libc::SYS_sched_setattr,
    libc::SYS_sched_getattr, libc::SYS_renameat2, libc::SYS_seccomp, libc::SYS_getrandom,
    libc::SYS_memfd_create, libc::SYS_execveat, libc::SYS_membarrier, libc::SYS_mlock2,
    libc::SYS_copy_file_range, libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_statx, IO_PGETEVENTS, libc::SYS_rseq,
    libc::SYS_pidfd_send_signal, libc::SYS_pidfd_open, libc::SYS_close_range, libc::SYS_openat2,
    libc::SYS_faccessat2, libc::SYS_epoll_pwait2, libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule, libc::SYS_landlock_restrict_self, libc::SYS_memfd_secret,
    libc::SYS_process_mrelease, libc::SYS_futex_waitv,
    // Newer forms of calls above: fchmodat with flags (glibc 2.39 uses it), the shadow stack
    // (glibc's CET support), futex2, sealing one's own mappings, the *xattr calls relative
    // to a directory, FS_IOC_FSGETXATTR/FSSETXATTR as calls.
    libc::SYS_fchmodat2, MAP_SHADOW_STACK, FUTEX_WAKE, FUTEX_WAIT, FUTEX_REQUEUE,
    libc::SYS_mseal, SETXATTRAT, GETXATTRAT, LISTXATTRAT, REMOVEXATTRAT, FILE_GETATTR,
    FILE_SETATTR,
];

// Numbers the libc crate does not name (yet).
const IO_PGETEVENTS: i64 = 333;
const MAP_SHADOW_STACK: i64 = 453;
const FUTEX_WAKE: i64 = 454;
const FUTEX_WAIT: i64 = 455;
const FUTEX_REQUEUE: i64 = 456;
const SETXATTRAT: i64 = 463;
const GETXATTRAT: i64 = 464;
const LISTXATTRAT: i64 = 465;
const REMOVEXATTRAT: i64 = 466;
const OPEN_TREE_ATTR: i64 = 467;
const FILE_GETATTR: i64 = 468;
const FILE_SETATTR: i64 = 469;

/// Every rule, in the order the filter checks them.
pub fn rules() -> Vec<(i64, Rule)> {
    let always = |numbers: &[i64], verdict| {
        numbers
            .iter()
            .map(move |n| (*n, Rule::Always(verdict)))
            .collect::<Vec<_>>()
    };
    let mut rules = argument_rules().to_vec();
    rules.extend(always(REFUSED, EPERM));
    rules.extend(always(FALL_BACK, ENOSYS));
    rules.extend(always(ALLOWED, Verdict::Allow));
    rules
}

#[cfg(test)]
mod tests {
    use super::super::program::{assemble, emulator::run};
    use super::*;
    use std::collections::BTreeSet;

    fn program() -> Vec<seccompiler::sock_filter> {
        assemble(ARCH, &rules(), DEFAULT).expect("the table assembles")
    }

    fn verdict(nr: i64, args: [u64; 6]) -> u32 {
        run(&program(), AUDIT_ARCH_X86_64, nr as u32, args).ret
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    #[test]
    fn no_call_is_named_twice() {
        let mut seen = BTreeSet::new();
        for (number, _) in rules() {
            assert!(seen.insert(number), "system call {number} has two rules");
        }
    }

    #[test]
    fn calls_allowed_whatever_their_arguments_are_answered_by_the_kernels_cache() {
        // The kernel's action cache takes a number whose path to ALLOW reads no argument.
        let program = program();
        for number in ALLOWED {
            let outcome = run(&program, AUDIT_ARCH_X86_64, *number as u32, [0; 6]);
            assert_eq!(outcome.ret, ALLOW, "system call {number}");
            assert!(
                !outcome.read_arguments,
                "system call {number} reads arguments"
            );
        }
    }

    #[test]
    fn the_refusals_and_the_default() {
        assert_eq!(verdict(libc::SYS_keyctl, [0; 6]), errno(libc::EPERM));
        assert_eq!(verdict(libc::SYS_bpf, [0; 6]), errno(libc::EPERM));
        assert_eq!(verdict(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(
            verdict(libc::SYS_io_uring_setup, [0; 6]),
            errno(libc::ENOSYS)
        );
        // statmount, listmount, lsm_list_modules, a number no kernel has yet.
        for number in [457, 458, 461, 1000] {
            assert_eq!(verdict(number, [0; 6]), errno(libc::ENOSYS), "{number}");
        }
    }

    #[test]
    fn argument_rules() {
        let high = 0xffff_ffff_0000_0000;
        let ioctl = |cmd| verdict(libc::SYS_ioctl, [0, cmd, 0, 0, 0, 0]);
        assert_eq!(ioctl(0x5412), errno(libc::EPERM));
        assert_eq!(ioctl(high | 0x541c), errno(libc::EPERM));
        assert_eq!(ioctl(libc::FIONREAD), ALLOW);
        let personality = |p| verdict(libc::SYS_personality, [p, 0, 0, 0, 0, 0]);
        for allowed in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(personality(allowed), ALLOW, "persona {allowed:#x}");
        }
        for refused in [0x0040000, 0x0400000, 0x0100000, high | 0x0400000] {
            assert_eq!(
                personality(refused),
                errno(libc::EPERM),
                "persona {refused:#x}"
            );
        }
        let socketpair = |family| verdict(libc::SYS_socketpair, [family, 1, 0, 0, 0, 0]);
        assert_eq!(socketpair(libc::AF_UNIX as u64), ALLOW);
        for family in [libc::AF_INET, libc::AF_VSOCK, libc::AF_PACKET, libc::AF_XDP] {
            assert_eq!(
                socketpair(family as u64),
                errno(libc::EAFNOSUPPORT),
                "{family}"
            );
        }
        assert_eq!(
            socketpair(high | libc::AF_VSOCK as u64),
            errno(libc::EAFNOSUPPORT)
        );
        let socket = |family| verdict(libc::SYS_socket, [family, 1, 0, 0, 0, 0]);
        assert_eq!(socket(libc::AF_NETLINK as u64), ALLOW);
        assert_eq!(socket(high | libc::AF_INET6 as u64), ALLOW);
        assert_eq!(socket(libc::AF_VSOCK as u64), errno(libc::EAFNOSUPPORT));
        let clone = |flags| verdict(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(0x0111_0000 | 17), ALLOW); // what fork() passes, roughly
        assert_eq!(clone(libc::CLONE_NEWUSER as u64 | 17), errno(libc::EPERM));
        let unshare = |flags| verdict(libc::SYS_unshare, [flags, 0, 0, 0, 0, 0]);
        assert_eq!(unshare(libc::CLONE_FILES as u64), ALLOW);
        assert_eq!(unshare(0x80), errno(libc::EPERM));
        assert_eq!(unshare(libc::CLONE_NEWNET as u64), errno(libc::EPERM));
    }
}
