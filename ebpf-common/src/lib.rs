//! The records tollgate's eBPF egress wall hands to the supervisor, shared by both sides.
//!
//! The kernel programs in `tollgate-ebpf` write these `#[repr(C)]` structs into per-execution
//! maps; the loader in `tollgate::sandbox::bpf` reads them back. Keeping the layout in one
//! place (and asserting its size) is what keeps the two sides from drifting apart.
#![no_std]

/// A `connect(2)` to an address other than loopback was refused.
pub const KIND_CONNECT: u16 = 1;
/// A `sendto(2)`/`sendmsg(2)` with an explicit non-loopback destination was refused.
pub const KIND_SENDMSG: u16 = 2;
/// A `socket(2)` of a type or protocol other than plain TCP/UDP was refused.
pub const KIND_SOCK_CREATE: u16 = 3;

/// Bytes in a task's `comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Bytes in each per-execution ring buffer (a power of two and a multiple of the page size).
///
/// One [`BypassEvent`] takes 72 bytes in the ring (64 + the 8-byte record header), so this holds
/// about 900 events between two drains.
pub const EVENT_RING_BYTES: u32 = 64 * 1024;

/// Concurrent executions (cgroups) one host can wall in: the size of the per-execution maps.
pub const MAX_EXECUTIONS: u32 = 4096;

/// One refused operation, as the kernel saw it.
///
/// Every field is explicit (no implicit padding), so the struct is plain old data on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BypassEvent {
    /// `bpf_get_current_cgroup_id()`: the execution's cgroup (its inode number).
    pub cgroup_id: u64,
    /// Process id (the kernel's tgid), in the initial pid namespace.
    pub tgid: u32,
    /// Thread id (the kernel's pid), in the initial pid namespace.
    pub pid: u32,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Destination address in network byte order: 4 bytes for `AF_INET` (the rest zero),
    /// 16 for `AF_INET6`; all zero for [`KIND_SOCK_CREATE`].
    pub addr: [u8; 16],
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Destination port in host byte order; zero for [`KIND_SOCK_CREATE`].
    pub port: u16,
    /// One of the `KIND_*` constants.
    pub kind: u16,
    /// Always zero; keeps the layout explicit.
    pub _pad: u16,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_RAW` (3), ...
    pub sock_type: u32,
    /// `IPPROTO_*` of the socket (0 when the caller left it to the kernel's default).
    pub protocol: u32,
}

/// Per-execution counters, kept next to the ring buffer so a full ring is visible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BypassCounters {
    /// Operations the wall refused for this cgroup.
    pub denied: u64,
    /// Refusals whose event did not fit in the ring buffer (the refusal itself still happened).
    pub dropped: u64,
}

const _: () = assert!(core::mem::size_of::<BypassEvent>() == 64);
const _: () = assert!(core::mem::size_of::<BypassCounters>() == 16);

#[cfg(feature = "user")]
// SAFETY: `BypassEvent` is `repr(C)`, `Copy`, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for BypassEvent {}
#[cfg(feature = "user")]
// SAFETY: `BypassCounters` is `repr(C)`, `Copy`, two `u64`s, every bit pattern is valid.
unsafe impl aya::Pod for BypassCounters {}
