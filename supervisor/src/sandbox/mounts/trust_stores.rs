//! The execution's CA bundle bound over the system trust stores of the sandbox's root.
//!
//! The CA variables (`SSL_CERT_FILE` and friends, see `tollgate_policy::sandbox_env`) reach
//! the clients that read them; GnuTLS (wget), OpenSSL without the variables, Go and Rust's
//! native-roots clients read the distribution's trust store instead, and would refuse the
//! proxy's interception as an unknown issuer. So the child binds the runtime directory's
//! bundle (the system roots plus the execution CA), read-only, over every file of
//! [`TRUST_STORES`] that exists in the sandbox's root, whichever root that is (the system
//! one, a `--rootfs` image, the host tree in test builds): the bind is in the child's own
//! mount namespace, so the host's files never change.
//!
//! Runs in the child after the root, the system directories, the runtime directory and the
//! shares are in place, and before `/proc` is mounted: system calls only, no allocation.
//! Each path is opened with its links followed inside the sandbox's root (Debian's
//! `/usr/lib/ssl/cert.pem -> /etc/ssl/certs/ca-certificates.crt`) but no magic link; only
//! regular files are covered, each once (by device and inode, the bundle's own counted as
//! seen, so a second name of a file already covered is not covered again).

use super::child::{bind_file_onto, fstat, open_in_view};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd as _, OwnedFd};

/// The trust-store files of the distributions tollgate knows: Debian and Ubuntu, Fedora and
/// RHEL (old and new layouts), openSUSE, Alpine and the BSD-style `cert.pem`, OpenSSL's own
/// default, FreeBSD's.
pub const TRUST_STORES: [&CStr; 8] = [
    c"/etc/ssl/certs/ca-certificates.crt",
    c"/etc/pki/tls/certs/ca-bundle.crt",
    c"/etc/ssl/ca-bundle.pem",
    c"/etc/pki/tls/cacert.pem",
    c"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    c"/etc/ssl/cert.pem",
    c"/usr/lib/ssl/cert.pem",
    c"/usr/local/share/certs/ca-root-nss.crt",
];

/// Binds `bundle` (its path in the sandbox) over every trust store that exists.
pub(super) fn cover(bundle: &CStr) -> io::Result<()> {
    // The bundle, then at most one file per trust store.
    let mut seen = [(0u64, 0u64); TRUST_STORES.len() + 1];
    seen[0] = file_id(&open_in_view(bundle, false)?)?;
    let mut count = 1;
    for store in TRUST_STORES {
        let target = match open_in_view(store, true) {
            Ok(target) => target,
            // Not there (or not reachable as a file inside the root): nothing to cover.
            Err(error) if is_absent(&error) => continue,
            Err(error) => return Err(error),
        };
        let stat = fstat(&target)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let id = (stat.st_dev, stat.st_ino);
        if seen[..count].contains(&id) {
            continue;
        }
        seen[count] = id;
        count += 1;
        bind_file_onto(bundle, target.as_fd())?;
    }
    Ok(())
}

fn file_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let stat = fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Errors that mean "no such file in the sandbox's root": missing, a file where a directory
/// was needed, a link loop or a magic link.
fn is_absent(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}
