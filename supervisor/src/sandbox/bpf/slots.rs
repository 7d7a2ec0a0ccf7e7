//! Event slots: which supervisor reads which of the wall's event rings.
//!
//! A slot is a directory `<pin dir>/slots/<n>` on bpffs; holding an exclusive `flock` on it
//! owns ring `n` of `EVENT_RINGS`. The kernel drops the lock when the holder closes it or
//! dies, so a SIGKILLed supervisor frees its slot with nothing left to collect.

use std::{
    fs::{DirBuilder, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::Path,
};

use tollgate_ebpf_common::MAX_EXECUTIONS;

use crate::sandbox::SandboxError;

/// Name of the directory holding one directory per slot, inside a pin directory.
pub(super) const SLOTS_DIR: &str = "slots";

/// An owned slot; dropping it frees the slot.
#[derive(Debug)]
pub(super) struct SlotLock {
    index: u32,
    _dir: File,
}

impl SlotLock {
    pub(super) fn index(&self) -> u32 {
        self.index
    }
}

/// Claims the lowest free slot under `pin_dir`.
pub(super) fn claim(pin_dir: &Path) -> Result<SlotLock, SandboxError> {
    let slots = pin_dir.join(SLOTS_DIR);
    let slot_error = |path: &Path, source| SandboxError::BpfPinDir {
        path: path.to_path_buf(),
        source,
    };
    for index in 0..MAX_EXECUTIONS {
        let path = slots.join(index.to_string());
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(slot_error(&path, source)),
        }
        let dir = File::open(&path).map_err(|source| slot_error(&path, source))?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as `dir`.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(SlotLock { index, _dir: dir });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(slot_error(&path, err));
        }
    }
    Err(SandboxError::EventSlotsExhausted {
        limit: MAX_EXECUTIONS,
    })
}
