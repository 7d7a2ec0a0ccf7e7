//! Reading a team's `network.upstream_ca`: the extra roots the proxy trusts upstream and the
//! sandbox's bundle carries, from a file the team's policy names and tollgate reads as root.
//!
//! A policy is untrusted input (one team must never read the node's files or another team's),
//! and what comes out of this file is written, world-readable, into the sandbox. So:
//!
//! - **Only certificates come out.** The text is parsed as PEM and each `CERTIFICATE` section
//!   is kept as DER, to be re-encoded by whoever writes it out; a private key beside the
//!   certificate, comments and every other section are dropped here.
//! - **Only what every user of the node may read.** The file must be readable by others and
//!   every directory on the way searchable by others. A CA is public; the rule keeps root's
//!   read from reaching a file the policy's author could not open themselves (no operator
//!   root per team is needed, as it is for secrets: nothing here is secret).
//! - **Only root may change what a team trusts.** The file and every directory on the way
//!   belong to root (or tollgate's user) and are writable by no one else (a sticky directory
//!   such as `/tmp` may be on the way), so no sandbox can swap in a CA of its own through a
//!   shared directory.
//! - **No link, no FIFO, no device** (design invariant 7). The path is opened from `/` one
//!   component at a time with no symbolic link followed (`openat2`, `RESOLVE_NO_SYMLINKS |
//!   RESOLVE_BENEATH`); the file is looked at through `O_PATH` first and opened for reading
//!   only if it is a regular file of at most [`MAX_BYTES`], then with `O_NONBLOCK`, and must
//!   still be the file looked at. A FIFO never stalls the run; a device is never opened.
//!
//! No message carries the file's content.

use crate::sandbox::host_path;
use nix::fcntl::OFlag;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::CertificateDer;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use tollgate_policy::Policy;

/// A CA file larger than this is a mistake (a whole system bundle is about 220 KB).
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The certificates of the `upstream_ca` file at `path`, each usable as a trust anchor. The
/// error says what is wrong and what to do; it calls the file "it" (the caller names it) and
/// names any directory on the way.
pub fn read(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_public_file(path)?;
    let (certificates, dropped) = certificates(&text)?;
    if dropped > 0 {
        tracing::warn!(
            "network.upstream_ca {}: {dropped} PEM section(s) other than certificates (a private \
             key?) ignored; the file is readable by every user of the node, so move them out",
            path.display()
        );
    }
    Ok(certificates)
}

/// For `tollgate policy check`: what `run` would refuse in `policy`'s `upstream_ca`, as
/// `(rule, message)`, when the file is on this host. Elsewhere (a CI runner) nothing is said;
/// the path's form is checked by validation.
pub fn check_on_this_host(policy: &Policy) -> Option<(String, String)> {
    let path = policy.network.as_ref()?.upstream_ca.as_deref()?;
    path.symlink_metadata().ok()?;
    let problem = read(path).err()?;
    let rule = "network.upstream_ca.file";
    Some((rule.into(), format!("{rule} {}: {problem}", path.display())))
}

/// The `CERTIFICATE` sections of `text`, and how many other known sections were dropped
/// (sections of unknown kinds are skipped without being counted). Each certificate must be
/// usable as a root.
pub fn certificates(text: &[u8]) -> Result<(Vec<CertificateDer<'static>>, usize), String> {
    let mut certificates = Vec::new();
    let mut dropped = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        match section.map_err(pem_problem)? {
            (SectionKind::Certificate, der) => certificates.push(CertificateDer::from(der)),
            _ => dropped += 1,
        }
    }
    if certificates.is_empty() {
        return Err("it holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` section)".into());
    }
    let mut store = RootCertStore::empty();
    for (index, certificate) in certificates.iter().enumerate() {
        store.add(certificate.clone()).map_err(|e| {
            format!(
                "certificate {} of {} is not usable as a root: {e}",
                index + 1,
                certificates.len()
            )
        })?;
    }
    Ok((certificates, dropped))
}

/// What is wrong with the PEM, without a byte of it (the parser's errors quote lines).
fn pem_problem(error: pem::Error) -> String {
    let what = match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section's body is not base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it cannot be parsed",
    };
    format!("it is not valid PEM: {what}")
}

/// The bytes of `path`, if every directory on the way and the file itself pass the rules in
/// the module's documentation.
fn read_public_file(path: &Path) -> Result<Vec<u8>, String> {
    let (parent, name) = open_parent(path)?;
    let looked_at = look_at(parent.as_fd(), name, path)?;
    let file = host_path::open_in(parent.as_fd(), name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
        .map_err(|e| open_problem(path, &e))?;
    let opened = host_path::stat(file.as_fd()).map_err(|e| format!("it cannot be read: {e}"))?;
    if (opened.st_dev, opened.st_ino) != (looked_at.st_dev, looked_at.st_ino) {
        return Err("it was replaced while tollgate opened it".into());
    }
    check_file(&opened)?;
    let mut text = Vec::new();
    std::fs::File::from(file)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("it cannot be read: {e}"))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

/// The directory holding `path` (opened from `/`, each directory checked) and the file's name.
fn open_parent(path: &Path) -> Result<(OwnedFd, &OsStr), String> {
    if !path.is_absolute() {
        return Err("it is not an absolute path".into());
    }
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => names.push(name),
            _ => return Err("it is not a normalised path (write it without `.` or `..`)".into()),
        }
    }
    let Some(file_name) = names.pop() else {
        return Err("it names no file".into());
    };
    let mut at = PathBuf::from("/");
    let mut dir = host_path::open_dir(&at).map_err(|e| open_problem(&at, &e))?;
    check_dir(dir.as_fd(), &at)?;
    for name in names {
        at.push(name);
        let next = host_path::open_in(dir.as_fd(), name, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
            .map_err(|e| open_problem(&at, &e))?;
        check_dir(next.as_fd(), &at)?;
        dir = next;
    }
    Ok((dir, file_name))
}

/// The file's status through an `O_PATH` descriptor (nothing opened for reading), if it is
/// one tollgate may read.
fn look_at(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<libc::stat, String> {
    let fd =
        host_path::open_in(parent, name, OFlag::O_PATH, 0).map_err(|e| open_problem(path, &e))?;
    let stat = host_path::stat(fd.as_fd()).map_err(|e| format!("it cannot be inspected: {e}"))?;
    check_file(&stat)?;
    Ok(stat)
}

/// A failed `openat2` of `at` (the file, or a directory on the way), and what to do.
fn open_problem(at: &Path, error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "{} is a symbolic link, which tollgate never follows on the way to upstream_ca \
             (whoever planted it could point root's read anywhere): name the real file",
            at.display()
        ),
        Some(libc::ENOENT) => format!("{} does not exist", at.display()),
        Some(libc::ENOTDIR) => format!("{} is not a directory", at.display()),
        _ => host_path::describe_error(at, error),
    }
}

/// A directory on the way: root's, writable by no one else unless sticky, searchable by all.
fn check_dir(dir: BorrowedFd<'_>, at: &Path) -> Result<(), String> {
    let stat = host_path::stat(dir).map_err(|e| format!("cannot inspect {}: {e}", at.display()))?;
    let mode = stat.st_mode & 0o7777;
    if !owned_by_root(&stat) {
        return Err(format!(
            "{} belongs to uid {}: every directory on the way to upstream_ca must belong to \
             root, since its owner could swap the CA the team trusts",
            at.display(),
            stat.st_uid
        ));
    }
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(format!(
            "{} is writable by its group or others (mode {mode:03o}), who could swap the CA \
             the team trusts (a shared directory is writable by sandboxes): keep the CA where \
             only root can write",
            at.display()
        ));
    }
    if mode & 0o001 == 0 {
        return Err(format!(
            "{} is closed to other users (mode {mode:03o}): tollgate reads upstream_ca for a \
             team only where every user of the node could read it (a CA is public); keep it \
             in a directory anyone may enter",
            at.display()
        ));
    }
    Ok(())
}

/// The file: regular, root's, writable by no one else, readable by all, at most
/// [`MAX_BYTES`].
fn check_file(stat: &libc::stat) -> Result<(), String> {
    let kind = match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFSOCK => Some("a socket"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(format!(
            "it is {kind}, and tollgate reads upstream_ca only from a regular file of PEM \
             certificates"
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if !owned_by_root(stat) {
        return Err(format!(
            "it belongs to uid {}: upstream_ca must belong to root, since its owner could \
             change the CA the team trusts (chown root it)",
            stat.st_uid
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by its group or others (mode {mode:03o}), who could change the CA \
             the team trusts: chmod go-w it"
        ));
    }
    if mode & 0o004 == 0 {
        return Err(format!(
            "it is not readable by everyone (mode {mode:03o}), and tollgate reads upstream_ca \
             for a team only from a file every user of the node could read: keep the CA \
             certificates (which are public) in a file of their own, mode 644"
        ));
    }
    if stat.st_size as u64 > MAX_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn owned_by_root(stat: &libc::stat) -> bool {
    stat.st_uid == 0 || stat.st_uid == nix::unistd::geteuid().as_raw()
}

fn too_large() -> String {
    format!("it is larger than {MAX_BYTES} bytes (1 MiB), too large for a file of CA certificates")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("certificate").pem()
    }

    #[test]
    fn only_certificate_sections_are_kept() {
        let cert = certificate_pem();
        let text = format!(
            "comment line\n{cert}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n\
             -----BEGIN SOMETHING ELSE-----\nAAAA\n-----END SOMETHING ELSE-----\n{cert}"
        );
        let (certificates, dropped) = certificates(text.as_bytes()).expect("parsed");
        assert_eq!(certificates.len(), 2);
        assert_eq!(dropped, 1, "the key is counted, the unknown kind is not");
        let expected = CertificateDer::from_pem_slice(cert.as_bytes()).expect("der");
        assert_eq!(certificates[0], expected);
    }

    #[test]
    fn bad_pem_is_described_without_its_bytes() {
        let cases: [&[u8]; 4] = [
            b"no sections at all: hunter2\n",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            b"-----BEGIN CERTIFICATE-----\nhunter2\n",
            b"-----BEGIN CERTIFICATE-----\n!!hunter2!!\n-----END CERTIFICATE-----\n",
        ];
        for text in cases {
            let error = certificates(text).expect_err("refused");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(certificates(garbage)
            .expect_err("not a certificate")
            .contains("not usable as a root"));
    }

    #[test]
    fn paths_must_be_absolute_and_normal() {
        for bad in ["relative/ca.pem", "/etc/../etc/ca.pem", "/"] {
            assert!(read(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
