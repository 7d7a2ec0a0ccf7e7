//! Seccomp filters on the child's `socket()` families, io_uring and namespaces.
//!
//! The cgroup `sock_create` hook sees only IPv4/IPv6 sockets, so address families such as
//! `AF_VSOCK` (a path to the hypervisor host on VMs) would otherwise pass every wall. The
//! child may create Unix, IPv4, IPv6 and netlink sockets (glibc's resolver and `getifaddrs`
//! use netlink; it can only see the sandbox namespace); any other family fails with
//! EAFNOSUPPORT, which programs already handle as "not available here". io_uring is refused
//! with ENOSYS because its socket operations bypass the `socket()` system call (programs fall
//! back to ordinary system calls).
//!
//! The child may not make namespaces or enter them: `unshare` and `clone` with any
//! `CLONE_NEW*` flag, and `setns`, fail with EPERM. An unprivileged user namespace would hand
//! the sandbox every capability over its own objects — the door most kernel exploits go
//! through — and a namespace of its own is nothing the sandbox needs. `clone3` passes its
//! flags in memory a filter cannot read, so it fails with ENOSYS, on which glibc (and every
//! runtime that tries clone3) falls back to `clone`.
//!
//! On x86-64, system calls of the x32 ABI (numbers with bit 30 set) fail with ENOSYS: they
//! share the x86-64 architecture token, so the rules above, written for x86-64 numbers, would
//! not see an x32 `socket` or `unshare` on a kernel that has x32 enabled. Filters are
//! compiled in the supervisor before the clone; the child only installs them, after
//! `no_new_privs`.

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Address families the sandbox may create sockets in.
pub const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// The compiled filters, ready to install in the child.
pub struct ChildFilters {
    programs: Vec<BpfProgram>,
}

impl ChildFilters {
    pub fn compile() -> Result<ChildFilters, String> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
        Ok(ChildFilters {
            programs: vec![
                socket_families(arch)?,
                io_uring(arch)?,
                namespaces(arch)?,
                clone3(arch)?,
                no_x32_abi(),
            ],
        })
    }

    /// Installs the filters on the calling thread. Runs after fork: no allocation on success.
    pub fn apply(&self) -> std::io::Result<()> {
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|_| std::io::Error::last_os_error())?;
        }
        Ok(())
    }
}

/// `socket(domain, …)` with a domain outside [`ALLOWED_FAMILIES`] → EAFNOSUPPORT.
fn socket_families(arch: TargetArch) -> Result<BpfProgram, String> {
    let conditions = ALLOWED_FAMILIES
        .iter()
        .map(|family| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *family as u64)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let rule = SeccompRule::new(conditions).map_err(|e| e.to_string())?;
    let rules = BTreeMap::from([(libc::SYS_socket, vec![rule])]);
    compile(rules, libc::EAFNOSUPPORT, arch)
}

/// Every io_uring system call → ENOSYS.
fn io_uring(arch: TargetArch) -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([
        (libc::SYS_io_uring_setup, vec![]),
        (libc::SYS_io_uring_enter, vec![]),
        (libc::SYS_io_uring_register, vec![]),
    ]);
    compile(rules, libc::ENOSYS, arch)
}

/// Namespace-creating flags of `unshare(2)` and `clone(2)` (CLONE_NEWTIME, 0x80, is valid
/// only for `unshare`: in `clone` the low byte is the exit signal).
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

/// `unshare` or `clone` with a namespace flag, and every `setns` → EPERM.
fn namespaces(arch: TargetArch) -> Result<BpfProgram, String> {
    let with_flag = |flag: u64| -> Result<SeccompRule, String> {
        SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(|e| e.to_string())?])
        .map_err(|e| e.to_string())
    };
    let clone_rules = CLONE_NAMESPACES
        .iter()
        .map(|flag| with_flag(*flag))
        .collect::<Result<Vec<_>, _>>()?;
    let mut unshare_rules = clone_rules.clone();
    unshare_rules.push(with_flag(CLONE_NEWTIME)?);
    let rules = BTreeMap::from([
        (libc::SYS_unshare, unshare_rules),
        (libc::SYS_clone, clone_rules),
        (libc::SYS_setns, vec![]),
    ]);
    compile(rules, libc::EPERM, arch)
}

/// Every `clone3` → ENOSYS (callers fall back to `clone`, which the namespace filter reads).
fn clone3(arch: TargetArch) -> Result<BpfProgram, String> {
    compile(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        libc::ENOSYS,
        arch,
    )
}

/// Every x32 system call (x86-64 token, number with bit 30 set) → ENOSYS; others pass on to
/// the other filters. seccompiler matches numbers exactly, so this one is written by hand.
fn no_x32_abi() -> BpfProgram {
    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, ARCH_OFFSET, 0, 0),
        op(JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        op(LD_W_ABS, NR_OFFSET, 0, 0),
        op(JGE_K, X32_SYSCALL_BIT, 0, 1),
        op(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0),
        op(RET_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| e.to_string())
}
