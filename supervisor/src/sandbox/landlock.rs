//! Landlock, a second layer under the mount view (issue #9: being built by its owner).

use std::io;

/// The rules the command restricts itself with before exec, prepared before the clone.
#[derive(Debug)]
pub struct LandlockPlan {
    _private: (),
}

impl LandlockPlan {
    /// Runs in the command's process after no_new_privs: system calls only.
    pub fn restrict_self(&self) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}
