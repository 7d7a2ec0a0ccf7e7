//! Memory, CPU and process limits of one execution, enforced by its cgroups.
//!
//! (Being built for issue #9: see the module's owner. The child side is final.)

use std::io;
use std::os::fd::RawFd;

/// The most cgroup v1 hierarchies an execution joins (memory, cpu, pids).
pub const MAX_V1_HIERARCHIES: usize = 3;

/// What the child does for the limits between clone and exec, as root: join the execution's
/// cgroup v1 directories (on hybrid hosts), by writing `0` (itself) to their `cgroup.procs`,
/// opened by the supervisor before the clone. System calls only.
#[derive(Debug, Default)]
pub struct ChildLimits {
    pub v1_procs: [Option<RawFd>; MAX_V1_HIERARCHIES],
}

impl ChildLimits {
    pub fn join(&self) -> io::Result<()> {
        for fd in self.v1_procs.iter().flatten() {
            // SAFETY: writes a static buffer to a descriptor the supervisor keeps open.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
