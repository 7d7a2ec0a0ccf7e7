//! Classic BPF for seccomp, assembled from a table of rules: one program, one verdict per
//! system call.
//!
//! seccompiler (which installs the program) builds filters with a single match action, so a
//! table with several errnos would take one filter per errno, and every call whose verdict
//! reads an argument would run all of them. This assembler emits the one shape tollgate
//! needs: check the architecture, refuse the x32 numbers, then one `JEQ` per listed call
//! followed by its verdict, and a default. A verdict may read one argument's low 32 bits —
//! the kernel truncates `int` and `unsigned int` arguments (`ioctl`'s `cmd`, `personality`,
//! socket families, `clone` flags) to those, so the high half must not count.
//!
//! Calls whose verdict reads no argument are answered by the kernel's seccomp action cache
//! (since Linux 5.11): it runs the program once per number at install time and lets the
//! calls it always allows through without running the filter, so the linear list of numbers
//! costs nothing for them; the argument-reading rules go first, where the few calls that run
//! the filter find them.

use seccompiler::sock_filter;

/// What a system call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Fails with this errno, without reaching the kernel's implementation.
    Errno(i32),
}

impl Verdict {
    fn ret(self) -> u32 {
        match self {
            Verdict::Allow => libc::SECCOMP_RET_ALLOW,
            Verdict::Errno(errno) => libc::SECCOMP_RET_ERRNO | (errno as u32 & 0xffff),
        }
    }
}

/// How the low 32 bits of an argument are tested.
#[derive(Debug, Clone, Copy)]
pub enum Test {
    /// Equal to one of these values.
    OneOf(&'static [u32]),
    /// Sharing a bit with this mask.
    AnyBit(u32),
}

/// The verdict for one system call.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    Always(Verdict),
    /// `then` when argument `arg` passes `test`, `otherwise` when it does not.
    Argument {
        arg: u32,
        test: Test,
        then: Verdict,
        otherwise: Verdict,
    },
}

/// The architecture the table's numbers belong to.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// `AUDIT_ARCH_*`: a call made through another entry (x86-64's `int 0x80`, the i386
    /// numbers) kills the process, as seccompiler's filters do.
    pub audit: u32,
    /// Numbers at or above this one fail with ENOSYS (x86-64's x32 ABI, which shares the
    /// x86-64 token and would otherwise reach every call under another number).
    pub numbers_below: Option<u32>,
}

// Opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K,
// BPF_JMP|BPF_JSET|BPF_K, BPF_RET|BPF_K.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`: nr, arch, then six 64-bit arguments.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;
/// Where an argument's low 32 bits start within its 64.
const LOW_HALF: u32 = if cfg!(target_endian = "little") { 0 } else { 4 };
/// The kernel's limit on a classic BPF program.
const MAX_INSTRUCTIONS: usize = 4096;

fn op(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn ret(verdict: Verdict) -> sock_filter {
    op(RET_K, verdict.ret(), 0, 0)
}

fn jump(distance: usize) -> Result<u8, String> {
    u8::try_from(distance).map_err(|_| format!("a jump of {distance} instructions is too long"))
}

/// The instructions of one rule, entered with the number matched; each path ends in a return.
fn body(rule: &Rule) -> Result<Vec<sock_filter>, String> {
    let (arg, test, then, otherwise) = match *rule {
        Rule::Always(verdict) => return Ok(vec![ret(verdict)]),
        Rule::Argument {
            arg,
            test,
            then,
            otherwise,
        } => (arg, test, then, otherwise),
    };
    if arg > 5 {
        return Err(format!("system calls have six arguments, not {}", arg + 1));
    }
    let mut code = vec![op(LD_W_ABS, ARGS + 8 * arg + LOW_HALF, 0, 0)];
    match test {
        Test::OneOf(values) => {
            // Each JEQ jumps over the JEQs after it and the `otherwise` return.
            for (i, value) in values.iter().enumerate() {
                code.push(op(JEQ_K, *value, jump(values.len() - i)?, 0));
            }
        }
        Test::AnyBit(mask) => code.push(op(JSET_K, mask, 1, 0)),
    }
    code.push(ret(otherwise));
    code.push(ret(then));
    Ok(code)
}

/// Assembles `rules` (checked in this order) with `default` for every other number.
pub fn assemble(
    arch: Arch,
    rules: &[(i64, Rule)],
    default: Verdict,
) -> Result<Vec<sock_filter>, String> {
    let mut program = vec![
        op(LD_W_ABS, ARCH, 0, 0),
        op(JEQ_K, arch.audit, 1, 0),
        op(RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        op(LD_W_ABS, NR, 0, 0),
    ];
    if let Some(limit) = arch.numbers_below {
        program.push(op(JGE_K, limit, 0, 1));
        program.push(ret(Verdict::Errno(libc::ENOSYS)));
    }
    for (number, rule) in rules {
        let number =
            u32::try_from(*number).map_err(|_| format!("{number} is not a system call number"))?;
        let body = body(rule)?;
        program.push(op(JEQ_K, number, 0, jump(body.len())?));
        program.extend(body);
    }
    program.push(ret(default));
    if program.len() > MAX_INSTRUCTIONS {
        return Err(format!(
            "the filter has {} instructions; the kernel takes at most {MAX_INSTRUCTIONS}",
            program.len()
        ));
    }
    Ok(program)
}

#[cfg(test)]
pub mod emulator {
    //! Runs an assembled program the way the kernel would, for the tests.

    use super::*;

    /// What running the program on one call gave.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Outcome {
        /// The `SECCOMP_RET_*` value.
        pub ret: u32,
        /// Whether an argument was read on the way: if not, the kernel's action cache
        /// answers the call without running the filter.
        pub read_arguments: bool,
    }

    pub fn run(program: &[sock_filter], audit_arch: u32, nr: u32, args: [u64; 6]) -> Outcome {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&audit_arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            let at = ARGS as usize + 8 * i;
            data[at..at + 8].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut pc, mut acc, mut read_arguments) = (0usize, 0u32, false);
        loop {
            let insn = &program[pc];
            pc += 1;
            match insn.code {
                LD_W_ABS => {
                    let at = insn.k as usize;
                    read_arguments |= at >= ARGS as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                JEQ_K | JGE_K | JSET_K => {
                    let taken = match insn.code {
                        JEQ_K => acc == insn.k,
                        JGE_K => acc >= insn.k,
                        _ => acc & insn.k != 0,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                RET_K => {
                    return Outcome {
                        ret: insn.k,
                        read_arguments,
                    }
                }
                other => panic!("the assembler emitted opcode {other:#x}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emulator::run;
    use super::*;

    const AUDIT: u32 = 0xc000_003e;
    const ARCH_X86: Arch = Arch {
        audit: AUDIT,
        numbers_below: Some(0x4000_0000),
    };

    fn program() -> Vec<sock_filter> {
        assemble(
            ARCH_X86,
            &[
                (
                    16,
                    Rule::Argument {
                        arg: 1,
                        test: Test::OneOf(&[0x5412, 0x541c]),
                        then: Verdict::Errno(libc::EPERM),
                        otherwise: Verdict::Allow,
                    },
                ),
                (
                    56,
                    Rule::Argument {
                        arg: 0,
                        test: Test::AnyBit(0x1000_0000),
                        then: Verdict::Errno(libc::EPERM),
                        otherwise: Verdict::Allow,
                    },
                ),
                (39, Rule::Always(Verdict::Allow)),
                (250, Rule::Always(Verdict::Errno(libc::EPERM))),
            ],
            Verdict::Errno(libc::ENOSYS),
        )
        .unwrap()
    }

    fn errno(e: i32) -> u32 {
        Verdict::Errno(e).ret()
    }

    #[test]
    fn each_number_gets_its_verdict_and_others_the_default() {
        let p = program();
        assert_eq!(run(&p, AUDIT, 39, [0; 6]).ret, libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&p, AUDIT, 250, [0; 6]).ret, errno(libc::EPERM));
        assert_eq!(run(&p, AUDIT, 999, [0; 6]).ret, errno(libc::ENOSYS));
    }

    #[test]
    fn arguments_are_read_in_their_low_32_bits_only() {
        let p = program();
        let ioctl = |cmd| run(&p, AUDIT, 16, [0, cmd, 0, 0, 0, 0]).ret;
        assert_eq!(ioctl(0x5412), errno(libc::EPERM));
        assert_eq!(ioctl(0x541c), errno(libc::EPERM));
        assert_eq!(ioctl(0xffff_ffff_0000_5412), errno(libc::EPERM));
        assert_eq!(ioctl(0x541b), libc::SECCOMP_RET_ALLOW);
        assert_eq!(ioctl(0x5412_0000_0000), libc::SECCOMP_RET_ALLOW);
        let clone = |flags| run(&p, AUDIT, 56, [flags, 0, 0, 0, 0, 0]).ret;
        assert_eq!(clone(0x1000_0011), errno(libc::EPERM));
        assert_eq!(clone(0x0100_0000_0000_0011), libc::SECCOMP_RET_ALLOW);
        assert_eq!(clone(0x11), libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn foreign_architectures_are_killed_and_x32_numbers_refused() {
        let p = program();
        let i386 = 0x4000_0003;
        assert_eq!(
            run(&p, i386, 39, [0; 6]).ret,
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            run(&p, AUDIT, 0x4000_0000 | 39, [0; 6]).ret,
            errno(libc::ENOSYS)
        );
    }

    #[test]
    fn only_argument_rules_read_arguments() {
        let p = program();
        assert!(!run(&p, AUDIT, 39, [0; 6]).read_arguments);
        assert!(!run(&p, AUDIT, 999, [0; 6]).read_arguments);
        assert!(run(&p, AUDIT, 16, [0; 6]).read_arguments);
    }

    #[test]
    fn bad_tables_are_refused() {
        let seventh = Rule::Argument {
            arg: 6,
            test: Test::AnyBit(1),
            then: Verdict::Allow,
            otherwise: Verdict::Allow,
        };
        assert!(assemble(ARCH_X86, &[(1, seventh)], Verdict::Allow).is_err());
        assert!(assemble(
            ARCH_X86,
            &[(-1, Rule::Always(Verdict::Allow))],
            Verdict::Allow
        )
        .is_err());
    }
}
