//! One execution's wall: the program links on its cgroup and the event ring it reads.
//!
//! Setting up takes a slot ([`super::slots`]), makes sure the slot has a ring, registers
//! `cgroup id -> slot` and zeroed counters, and only then attaches the programs, so the very
//! first refusal is reported. Tearing down first kills whatever still runs in the cgroup,
//! then runs the other way round; dropping the wall does the same as [`AttachedWall::detach`]
//! without returning what was left.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    maps::{Map, MapData, MapError, PerCpuValues, RingBuf},
    programs::{cgroup_sock::CgroupSockLink, cgroup_sock_addr::CgroupSockAddrLink},
};
use tollgate_ebpf_common::{BypassCounters, EVENT_RING_BYTES};

use super::{events::BypassAttempt, lock, slots::SlotLock, Loaded};
use crate::sandbox::{
    cgroup::{CgroupKiller, ExecutionCgroup},
    SandboxError,
};

/// `BPF_ANY`: insert or replace.
const BPF_ANY: u64 = 0;

/// The wall around one execution's cgroup: the program links and the execution's event ring.
///
/// Coming down (by [`AttachedWall::detach`] or by drop) it first SIGKILLs whatever still
/// runs in the cgroup and waits for it to go, so the wall never opens around a live process,
/// whatever order the caller tears things down in. The cgroup directory stays (new processes
/// may join it, unwalled); [`ExecutionCgroup::kill_and_remove`] removes it.
#[derive(Debug)]
pub struct AttachedWall {
    // Field order is drop order: kill the processes, close the links, then unregister.
    pub(super) killer: CgroupKiller,
    pub(super) links: Vec<WallLink>,
    pub(super) registration: Registration,
}

/// What was left to read when a wall came down.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WallReport {
    /// Refusals still in the ring at detach.
    pub events: Vec<BypassAttempt>,
    /// Refusals the wall counted over the whole execution.
    pub denied: u64,
    /// Refusals whose event did not fit in the ring (the refusal itself happened).
    pub dropped: u64,
}

/// A link attaching one program to one cgroup; dropping it detaches the program.
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "held only for its Drop: closing a link detaches the program"
)]
pub(super) enum WallLink {
    SockAddr(CgroupSockAddrLink),
    Sock(CgroupSockLink),
}

impl AttachedWall {
    /// The cgroup id this wall reports for.
    pub fn cgroup_id(&self) -> u64 {
        self.registration.cgroup_id
    }

    /// The event slot (ring index) this execution holds; for diagnostics.
    pub fn event_slot(&self) -> u32 {
        self.registration.slot.index()
    }

    /// Reads every refusal reported so far; never blocks.
    pub fn drain_events(&mut self) -> Vec<BypassAttempt> {
        self.registration.drain()
    }

    /// The ring buffer's descriptor: readable when events wait. Register it with epoll or
    /// `tokio::io::unix::AsyncFd`, then call [`AttachedWall::drain_events`].
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.registration.ring.as_fd()
    }

    /// Blocks up to `timeout` until events wait; `Ok(false)` on timeout.
    pub fn wait_for_events(&self, timeout: Duration) -> Result<bool, SandboxError> {
        let mut pollfd = libc::pollfd {
            fd: self.registration.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(SandboxError::EventPoll { source });
            }
        }
    }

    /// Refusals counted and events dropped so far, summed over CPUs.
    pub fn counters(&self) -> BypassCounters {
        self.registration.counters()
    }

    /// Kills what still runs in the cgroup, detaches the programs, then reads what is left:
    /// the last events and the counters.
    pub fn detach(self) -> WallReport {
        let Self {
            killer,
            links,
            mut registration,
        } = self;
        drop(killer);
        drop(links);
        let events = registration.drain();
        let BypassCounters { denied, dropped } = registration.counters();
        drop(registration);
        WallReport {
            events,
            denied,
            dropped,
        }
    }
}

/// One execution's entries in the wall's maps, its ring and its slot. Dropping it removes
/// the entries, unmaps the ring and frees the slot (in that order).
pub(super) struct Registration {
    shared: Arc<Mutex<Loaded>>,
    cgroup_id: u64,
    ring: RingBuf<MapData>,
    slot: SlotLock,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("cgroup_id", &self.cgroup_id)
            .field("slot", &self.slot.index())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Gives `cgroup` the ring of `slot` (creating the ring on the slot's first use) and
    /// registers it. Events a previous holder of the slot left behind are discarded.
    pub(super) fn new(
        shared: Arc<Mutex<Loaded>>,
        slot: SlotLock,
        cgroup: &ExecutionCgroup,
    ) -> Result<Self, SandboxError> {
        let ring_error = |source| SandboxError::EventRing {
            path: cgroup.path().to_path_buf(),
            source: Box::new(source),
        };
        let zeros = aya::util::nr_cpus()
            .map_err(|(_, error)| MapError::IoError(error))
            .and_then(|cpus| {
                PerCpuValues::try_from(vec![BypassCounters::default(); cpus])
                    .map_err(MapError::IoError)
            })
            .map_err(ring_error)?;
        let ring = {
            let mut loaded = lock(&shared);
            match loaded.rings.get(&slot.index(), 0) {
                Ok(ring) => ring,
                Err(MapError::KeyNotFound) => {
                    // First use of this slot on this boot: the one map-of-maps update, which
                    // waits for an RCU grace period.
                    let ring = new_event_ring().map_err(ring_error)?;
                    loaded
                        .rings
                        .set(slot.index(), &ring, BPF_ANY)
                        .map_err(ring_error)?;
                    ring
                }
                Err(err) => return Err(ring_error(err)),
            }
        };
        let mut registration = Self {
            cgroup_id: cgroup.id(),
            shared,
            ring,
            slot,
        };
        // Discard what earlier holders of the slot left unread.
        while registration.ring.next().is_some() {}
        {
            let mut loaded = lock(&registration.shared);
            let cgroup_id = registration.cgroup_id;
            loaded
                .counters
                .insert(cgroup_id, zeros, BPF_ANY)
                .map_err(ring_error)?;
            loaded
                .slots
                .insert(cgroup_id, registration.slot.index(), BPF_ANY)
                .map_err(ring_error)?;
        }
        Ok(registration)
    }

    /// This execution's events; records of other cgroups (late writes from a previous holder
    /// of the slot) are skipped.
    fn drain(&mut self) -> Vec<BypassAttempt> {
        let mut attempts = Vec::new();
        while let Some(record) = self.ring.next() {
            if let Some(attempt) = BypassAttempt::from_record(&record) {
                if attempt.cgroup_id == self.cgroup_id {
                    attempts.push(attempt);
                }
            }
        }
        attempts
    }

    fn counters(&self) -> BypassCounters {
        lock(&self.shared)
            .counters
            .get(&self.cgroup_id, 0)
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .fold(BypassCounters::default(), |sum, cpu| BypassCounters {
                        denied: sum.denied + cpu.denied,
                        dropped: sum.dropped + cpu.dropped,
                    })
            })
            .unwrap_or_default()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut loaded = lock(&self.shared);
        let _ = loaded.slots.remove(&self.cgroup_id);
        let _ = loaded.counters.remove(&self.cgroup_id);
    }
}

/// Creates one slot's ring buffer, shaped like the inner map the object declares.
fn new_event_ring() -> Result<RingBuf<MapData>, MapError> {
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
        0,
        0,
        EVENT_RING_BYTES,
        0,
    );
    let data = MapData::create(def, "tollgate_events", None)?;
    RingBuf::try_from(Map::RingBuf(data))
}
