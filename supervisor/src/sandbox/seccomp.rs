//! The child's seccomp filter: the system calls a sandbox may make, and the errno every other
//! one gets.
//!
//! The walls see sockets; the kernel has many other doors — keyrings that outlive the
//! execution, bpf, perf_event_open and userfaultfd (closed otherwise only by sysctls another
//! node may set differently), mounts, modules, `TIOCSTI` into the caller's terminal, socket
//! families the eBPF wall cannot see. The filter is an allowlist at least as strict as
//! Docker's default profile for a process without capabilities; the table, with the reason
//! for each entry, is in `table` and in `docs/architecture.md`, and `program` assembles it
//! into one classic BPF program (one filter for the kernel to run, not one per errno).
//!
//! Compiled in the supervisor before the clone: the child only installs it, last, after
//! `no_new_privs`, with no allocation. Written for x86-64 system call numbers; on another
//! architecture compiling it fails, and so does `tollgate run`, rather than run with a
//! filter whose numbers mean other calls.

mod program;
#[cfg(target_arch = "x86_64")]
mod table;

use seccompiler::BpfProgram;

/// The compiled filter, ready to install in the child.
pub struct ChildFilters {
    program: BpfProgram,
}

impl ChildFilters {
    pub fn compile() -> Result<ChildFilters, String> {
        #[cfg(target_arch = "x86_64")]
        {
            let program = program::assemble(table::ARCH, &table::rules(), table::DEFAULT)?;
            Ok(ChildFilters { program })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Err(format!(
                "the sandbox's system call table is written for x86-64; this build is for {}",
                std::env::consts::ARCH
            ))
        }
    }

    /// Installs the filter on the calling thread. Runs after fork: no allocation on success.
    pub fn apply(&self) -> std::io::Result<()> {
        seccompiler::apply_filter(&self.program).map_err(|_| std::io::Error::last_os_error())
    }
}
