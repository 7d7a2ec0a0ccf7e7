//! The eBPF egress wall: tollgate's cgroup programs, loaded once per boot and attached to each
//! execution's cgroup, refuse every destination but loopback and report each refusal.
//!
//! # Programs
//! `connect4`/`connect6` and `sendmsg4`/`sendmsg6` (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`) refuse
//! with `EPERM` a `connect(2)` or an unconnected `sendto(2)` to anything outside 127.0.0.0/8,
//! `::1` and `::ffff:127.0.0.0/104`; `sock_create` (`BPF_PROG_TYPE_CGROUP_SOCK`) refuses every
//! `AF_INET`/`AF_INET6` socket but plain TCP and UDP (no `SOCK_RAW`, no ICMP ping sockets).
//! The kernel runs them before routing, for every task in the cgroup and its descendants.
//! They do not see `AF_PACKET` sockets (dropping `CAP_NET_RAW` stops those) nor sockets
//! created before the task joined the cgroup (so the child joins before it execs).
//!
//! # Loading once
//! Loading and verifying costs tens of milliseconds, so [`EgressPrograms::load_or_reuse`]
//! pins the programs and their maps under `/sys/fs/bpf/tollgate/<digest of the object>/` the
//! first time and opens the pins afterwards. A new build gets a new directory. The first
//! loader pins into `loading-<pid>-<random>` and renames it into place, so concurrent
//! supervisors never see half a set; one that loses the race keeps the programs it loaded.
//!
//! Links are *not* pinned: [`AttachedWall`] owns them, so they close with the supervisor, even
//! on SIGKILL. A dead supervisor never leaves a cgroup half walled, and its cgroup is removed
//! by `gc` anyway.
//!
//! # Event delivery
//! Pinned programs share their maps with every supervisor, so one ring buffer would hand
//! each event to whichever supervisor read it first. Each execution reads its own ring
//! instead: `EVENT_RINGS` is a `BPF_MAP_TYPE_ARRAY_OF_MAPS` of `BPF_MAP_TYPE_RINGBUF` maps,
//! one per *slot*; a supervisor claims a free slot ([`slots`], an `flock` the kernel drops if
//! the supervisor dies) and registers `cgroup id -> slot` in the plain hash `EVENT_SLOTS`.
//! The program looks up the slot of the calling task's cgroup and writes into that ring,
//! which only the slot holder reads; it is pollable ([`AttachedWall::events_fd`]).
//!
//! A hash of maps keyed by cgroup id (a fresh ring per execution) was the first design and
//! worked, but every map-of-maps update from userspace waits for an RCU grace period: 6-20 ms
//! on insert and again on delete, on every execution. Slots pay that once per slot per boot,
//! when a ring is first put in; per execution only plain hash entries change (microseconds).
//! Events a previous holder left in a reused ring are discarded at claim, and records carry
//! their cgroup id, so late writes are filtered out.
//!
//! A per-CPU `COUNTERS` map, keyed by cgroup id, counts refusals and events lost to a full
//! ring. Entries are removed at detach; a SIGKILLed supervisor leaves its two hash entries
//! until [`EgressPrograms::gc_stale_registrations`] (cgroup ids are never reused, so a key
//! without a cgroup directory is dead), while its slot frees itself.

mod bpffs;
pub mod events;
mod slots;
mod wall;

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use aya::{
    maps::{ArrayOfMaps, HashMap, Map, MapData, PerCpuHashMap, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType,
        CgroupSockAttachType, ProgramError,
    },
    Ebpf,
};
use sha2::{Digest as _, Sha256};
use tollgate_ebpf_common::BypassCounters;

pub use self::bpffs::BPFFS;
pub use self::events::{AddressFamily, BypassAttempt, BypassKind, Protocol, SocketType};
pub use self::wall::{AttachedWall, WallReport};
use self::wall::{Registration, WallLink};
use super::{cgroup::ExecutionCgroup, SandboxError};

/// The eBPF object built from `ebpf/` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-egress"));

/// Where the wall's programs are pinned, one directory per build.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/tollgate";

/// Event rings by slot (`BPF_MAP_TYPE_ARRAY_OF_MAPS`).
const RINGS_MAP: &str = "EVENT_RINGS";
/// Slot of each execution's cgroup id.
const SLOTS_MAP: &str = "EVENT_SLOTS";
/// Per-CPU counters of each execution's cgroup id.
const COUNTERS_MAP: &str = "COUNTERS";
const MAPS: [&str; 3] = [RINGS_MAP, SLOTS_MAP, COUNTERS_MAP];

/// One program of the wall, named as in the object and the kernel.
#[derive(Clone, Copy, Debug)]
enum WallProgram {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    SockCreate,
}

impl WallProgram {
    const ALL: [Self; 5] = [
        Self::Connect4,
        Self::Connect6,
        Self::Sendmsg4,
        Self::Sendmsg6,
        Self::SockCreate,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
        }
    }

    /// The `cgroup_sock_addr` attach point, or `None` for the `cgroup_sock` program.
    const fn sock_addr_attach_type(self) -> Option<CgroupSockAddrAttachType> {
        match self {
            Self::Connect4 => Some(CgroupSockAddrAttachType::Connect4),
            Self::Connect6 => Some(CgroupSockAddrAttachType::Connect6),
            Self::Sendmsg4 => Some(CgroupSockAddrAttachType::UDPSendMsg4),
            Self::Sendmsg6 => Some(CgroupSockAddrAttachType::UDPSendMsg6),
            Self::SockCreate => None,
        }
    }
}

/// How [`EgressPrograms::load_or_reuse`] got the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramsOrigin {
    /// Loaded and verified by this call (and pinned, unless a concurrent caller pinned first).
    Loaded,
    /// Opened from the pins of an earlier load: no verification.
    Reused,
}

/// The wall's programs and maps, loaded (or reopened from their pins) and ready to attach.
///
/// Cheap to share: attaching to one execution's cgroup only creates links and map entries.
/// `Send + Sync`; concurrent [`EgressPrograms::attach`] calls serialise on a short lock.
#[derive(Debug)]
pub struct EgressPrograms {
    shared: Arc<Mutex<Loaded>>,
    origin: ProgramsOrigin,
    pin_dir: PathBuf,
    program_ids: [u32; WallProgram::ALL.len()],
}

/// The kernel objects behind [`EgressPrograms`].
struct Loaded {
    sock_addr: Vec<(WallProgram, CgroupSockAddr)>,
    sock_create: CgroupSock,
    rings: ArrayOfMaps<MapData, RingBuf<MapData>>,
    slots: HashMap<MapData, u64, u32>,
    counters: PerCpuHashMap<MapData, u64, BypassCounters>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("sock_addr", &self.sock_addr)
            .field("sock_create", &self.sock_create)
            .finish_non_exhaustive()
    }
}

impl EgressPrograms {
    /// Opens the pinned programs of this build, loading and pinning them first if needed.
    pub fn load_or_reuse() -> Result<Self, SandboxError> {
        Self::load_or_reuse_in(Path::new(DEFAULT_PIN_ROOT))
    }

    /// [`EgressPrograms::load_or_reuse`] with pins under `pin_root` (a directory on bpffs).
    pub fn load_or_reuse_in(pin_root: &Path) -> Result<Self, SandboxError> {
        if OBJECT.is_empty() {
            return Err(SandboxError::BpfObjectMissing);
        }
        bpffs::ensure_mounted()?;
        bpffs::create_private_dir(pin_root)?;
        let pin_dir = pin_root.join(object_digest());
        if pin_dir.exists() {
            match open_pinned(&pin_dir) {
                Ok(loaded) => return Self::new(loaded, ProgramsOrigin::Reused, pin_dir),
                Err(err) => {
                    tracing::warn!(
                        "discarding unusable eBPF pins in {}: {err}",
                        pin_dir.display()
                    );
                    let _ = bpffs::discard_pin_dir(&pin_dir, &unique_suffix());
                }
            }
        }
        let (loaded, pin_dir) = load_and_pin(pin_root, pin_dir)?;
        Self::new(loaded, ProgramsOrigin::Loaded, pin_dir)
    }

    fn new(loaded: Loaded, origin: ProgramsOrigin, pin_dir: PathBuf) -> Result<Self, SandboxError> {
        let mut program_ids = [0; WallProgram::ALL.len()];
        for (slot, (_, id)) in program_ids.iter_mut().zip(loaded.program_ids()?) {
            *slot = id;
        }
        Ok(Self {
            shared: Arc::new(Mutex::new(loaded)),
            origin,
            pin_dir,
            program_ids,
        })
    }

    /// Whether this call loaded the programs or reused pinned ones.
    pub fn origin(&self) -> ProgramsOrigin {
        self.origin
    }

    /// The pin directory these programs' event slots live in: this build's, or (for a caller
    /// that lost the race to publish) its own unpublished one.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Kernel ids of the programs (`connect4`, `connect6`, `sendmsg4`, `sendmsg6`,
    /// `sock_create`): equal ids mean the very same loaded programs.
    pub fn program_ids(&self) -> [u32; 5] {
        self.program_ids
    }

    /// Walls `cgroup` in: claims an event slot and registers it for the cgroup, then
    /// attaches every program. On error nothing stays attached or registered.
    pub fn attach(&self, cgroup: &ExecutionCgroup) -> Result<AttachedWall, SandboxError> {
        let slot = slots::claim(&self.pin_dir)?;
        let registration = Registration::new(Arc::clone(&self.shared), slot, cgroup)?;
        let links = lock(&self.shared).attach_all(cgroup)?;
        Ok(AttachedWall {
            killer: cgroup.killer(),
            links,
            registration,
        })
    }

    /// Cgroup ids that currently have an event slot registered.
    pub fn registered_cgroup_ids(&self) -> HashSet<u64> {
        lock(&self.shared)
            .slots
            .keys()
            .filter_map(Result::ok)
            .collect()
    }

    /// Removes map entries left by supervisors that died without detaching: keys whose cgroup
    /// no longer exists under `<cgroup2 mount>/tollgate`. Returns how many were removed.
    pub fn gc_stale_registrations(&self) -> Result<usize, SandboxError> {
        let mount = super::cgroup::cgroup2_mount()?;
        // Keys first, directories second: a directory exists before its key is registered,
        // so a listed key without a directory belongs to a removed cgroup.
        let (slot_keys, counter_keys) = {
            let loaded = lock(&self.shared);
            let slots: Vec<u64> = loaded.slots.keys().filter_map(Result::ok).collect();
            let counters: Vec<u64> = loaded.counters.keys().filter_map(Result::ok).collect();
            (slots, counters)
        };
        let live = super::cgroup::execution_cgroup_ids(&mount)?;
        let mut loaded = lock(&self.shared);
        let mut removed = 0;
        for key in slot_keys.iter().filter(|key| !live.contains(key)) {
            if loaded.slots.remove(key).is_ok() {
                removed += 1;
            }
        }
        for key in counter_keys.iter().filter(|key| !live.contains(key)) {
            let _ = loaded.counters.remove(key);
        }
        Ok(removed)
    }

    /// Removes abandoned pin directories under `pin_root`: `loading-*` of dead supervisors
    /// and `stale-*`. Returns the directories removed.
    pub fn gc_stale_pins(pin_root: &Path) -> Vec<PathBuf> {
        bpffs::gc_pin_root(pin_root)
    }

    /// Unpins this build's programs (they stay loaded while links or descriptors use them);
    /// the next [`EgressPrograms::load_or_reuse`] loads afresh. For tests and `tollgate gc`.
    pub fn unpin(&self) -> Result<(), SandboxError> {
        bpffs::discard_pin_dir(&self.pin_dir, &unique_suffix()).map_err(|source| {
            SandboxError::BpfPinDir {
                path: self.pin_dir.clone(),
                source,
            }
        })
    }
}

impl Loaded {
    fn program_ids(&self) -> Result<Vec<(WallProgram, u32)>, SandboxError> {
        let info_error = |program: WallProgram| {
            move |source: ProgramError| SandboxError::BpfProgram {
                program: program.name(),
                action: "inspect",
                source: Box::new(source),
            }
        };
        let mut ids = Vec::with_capacity(WallProgram::ALL.len());
        for (program, prog) in &self.sock_addr {
            ids.push((*program, prog.info().map_err(info_error(*program))?.id()));
        }
        let sock_create = WallProgram::SockCreate;
        let info = self.sock_create.info().map_err(info_error(sock_create))?;
        ids.push((sock_create, info.id()));
        Ok(ids)
    }

    /// Attaches every program to `cgroup` and takes ownership of the links.
    fn attach_all(&mut self, cgroup: &ExecutionCgroup) -> Result<Vec<WallLink>, SandboxError> {
        let attach_error = |program: WallProgram| {
            move |source: ProgramError| SandboxError::BpfAttach {
                program: program.name(),
                path: cgroup.path().to_path_buf(),
                source: Box::new(source),
            }
        };
        // BPF links on a cgroup always attach in multi mode (programs on ancestors keep
        // running and all must allow); `BPF_LINK_CREATE` takes no flags, so `Single` (0).
        let mode = CgroupAttachMode::Single;
        let mut links = Vec::with_capacity(WallProgram::ALL.len());
        for (program, prog) in &mut self.sock_addr {
            let id = prog.attach(cgroup, mode).map_err(attach_error(*program))?;
            let link = prog.take_link(id).map_err(attach_error(*program))?;
            links.push(WallLink::SockAddr(link));
        }
        let program = WallProgram::SockCreate;
        let id = self
            .sock_create
            .attach(cgroup, mode)
            .map_err(attach_error(program))?;
        let link = self
            .sock_create
            .take_link(id)
            .map_err(attach_error(program))?;
        links.push(WallLink::Sock(link));
        Ok(links)
    }
}

/// Locks the loaded objects; a panic elsewhere while holding the lock leaves them usable.
fn lock(shared: &Mutex<Loaded>) -> MutexGuard<'_, Loaded> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads the object, pins it into a fresh `loading-*` directory and publishes that as
/// `pin_dir`. Returns the objects and the directory their slots live in: `pin_dir` normally;
/// if a concurrent loader published first we use its set, and only if that cannot be opened
/// do we keep ours in the unpublished staging directory (`gc_stale_pins` removes it once this
/// process is gone).
fn load_and_pin(pin_root: &Path, pin_dir: PathBuf) -> Result<(Loaded, PathBuf), SandboxError> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(|source| SandboxError::BpfLoad {
        source: Box::new(source),
    })?;
    let staging = pin_root.join(format!("{}{}", bpffs::LOADING_PREFIX, unique_suffix()));
    bpffs::create_private_dir(&staging.join(slots::SLOTS_DIR))?;
    let pinned = load_programs(&mut ebpf)
        .and_then(|()| pin_all(&mut ebpf, &staging))
        .and_then(|()| open_pinned(&staging));
    let loaded = match pinned {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = bpffs::remove_pin_dir(&staging);
            return Err(err);
        }
    };
    let Err(err) = fs::rename(&staging, &pin_dir) else {
        return Ok((loaded, pin_dir));
    };
    // Another supervisor published first (ENOTEMPTY/EEXIST): share its set, drop ours.
    tracing::debug!("eBPF pins not published to {}: {err}", pin_dir.display());
    match open_pinned(&pin_dir) {
        Ok(theirs) => {
            drop(loaded);
            let _ = bpffs::remove_pin_dir(&staging);
            Ok((theirs, pin_dir))
        }
        Err(_) => Ok((loaded, staging)),
    }
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), SandboxError> {
    for program in WallProgram::ALL {
        let load_error = |source| SandboxError::BpfProgram {
            program: program.name(),
            action: "load",
            source: Box::new(source),
        };
        let prog = ebpf
            .program_mut(program.name())
            .ok_or(SandboxError::BpfObjectIncomplete {
                what: "program",
                name: program.name(),
            })?;
        if program.sock_addr_attach_type().is_some() {
            let prog: &mut CgroupSockAddr = prog.try_into().map_err(load_error)?;
            prog.load().map_err(load_error)?;
        } else {
            let prog: &mut CgroupSock = prog.try_into().map_err(load_error)?;
            prog.load().map_err(load_error)?;
        }
    }
    Ok(())
}

fn pin_all(ebpf: &mut Ebpf, dir: &Path) -> Result<(), SandboxError> {
    let pin_error = |path: PathBuf| {
        move |source| SandboxError::BpfPin {
            path,
            source: Box::new(source),
        }
    };
    for program in WallProgram::ALL {
        let path = dir.join(program.name());
        let prog = ebpf
            .program_mut(program.name())
            .ok_or(SandboxError::BpfObjectIncomplete {
                what: "program",
                name: program.name(),
            })?;
        prog.pin(&path).map_err(pin_error(path.clone()))?;
    }
    for name in MAPS {
        let path = dir.join(name);
        let map = ebpf
            .map(name)
            .ok_or(SandboxError::BpfObjectIncomplete { what: "map", name })?;
        map.pin(&path).map_err(pin_error(path.clone()))?;
    }
    Ok(())
}

/// Opens every program and map pinned in `dir`.
fn open_pinned(dir: &Path) -> Result<Loaded, SandboxError> {
    let open_error = |program: WallProgram| {
        move |source| SandboxError::BpfProgram {
            program: program.name(),
            action: "open the pinned",
            source: Box::new(source),
        }
    };
    let mut sock_addr = Vec::with_capacity(4);
    for program in WallProgram::ALL {
        if let Some(attach_type) = program.sock_addr_attach_type() {
            let prog = CgroupSockAddr::from_pin(dir.join(program.name()), attach_type)
                .map_err(open_error(program))?;
            sock_addr.push((program, prog));
        }
    }
    let sock_create = CgroupSock::from_pin(
        dir.join(WallProgram::SockCreate.name()),
        CgroupSockAttachType::SockCreate,
    )
    .map_err(open_error(WallProgram::SockCreate))?;
    let map_error = |map: &'static str| {
        move |source| SandboxError::BpfMap {
            map,
            action: "open the pinned",
            source: Box::new(source),
        }
    };
    let rings = MapData::from_pin(dir.join(RINGS_MAP))
        .and_then(|data| ArrayOfMaps::try_from(Map::ArrayOfMaps(data)))
        .map_err(map_error(RINGS_MAP))?;
    let slots = MapData::from_pin(dir.join(SLOTS_MAP))
        .and_then(|data| HashMap::try_from(Map::HashMap(data)))
        .map_err(map_error(SLOTS_MAP))?;
    let counters = MapData::from_pin(dir.join(COUNTERS_MAP))
        .and_then(|data| PerCpuHashMap::try_from(Map::PerCpuHashMap(data)))
        .map_err(map_error(COUNTERS_MAP))?;
    if !dir.join(slots::SLOTS_DIR).is_dir() {
        return Err(SandboxError::BpfPinDir {
            path: dir.join(slots::SLOTS_DIR),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    Ok(Loaded {
        sock_addr,
        sock_create,
        rings,
        slots,
        counters,
    })
}

/// First 128 bits of the SHA-256 of the object, in hex: one pin directory per build.
fn object_digest() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        Sha256::digest(OBJECT)
            .iter()
            .take(16)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    })
}

/// `<pid>-<nanoseconds>-<counter>`: unique among concurrent supervisors and threads.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
