//! The cgroup program entry points, their maps, and how a refusal reaches its execution.
//!
//! Pinned programs share their maps with every supervisor on the host, so one ring buffer would
//! hand each event to whichever supervisor read it first. Instead each execution owns a ring:
//! [`EVENT_RINGS`] is a `BPF_MAP_TYPE_ARRAY_OF_MAPS` of `BPF_MAP_TYPE_RINGBUF` maps, one per
//! *slot*, and [`EVENT_SLOTS`] maps a cgroup id to the slot its supervisor claimed. A program
//! reports a refusal into the ring of the calling task's cgroup. No slot (a task outside a
//! registered cgroup) means nothing to report; the refusal happens all the same.
//!
//! Why slots and not a hash of maps keyed by cgroup id: every update of a map-of-maps from
//! userspace waits for an RCU grace period (6-20 ms here), twice per execution. Rings are put
//! into slots once and reused; per execution only the plain hash [`EVENT_SLOTS`] changes.

use aya_ebpf::{
    btf_maps::{ArrayOfMaps, HashMap, PerCpuHashMap, RingBuf},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_map, cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use tollgate_ebpf_common::{
    BypassCounters, BypassEvent, COMM_LEN, EVENT_RING_BYTES, KIND_CONNECT, KIND_SENDMSG,
    KIND_SOCK_CREATE, MAX_EXECUTIONS,
};

use crate::rules::{ipv4_is_loopback, ipv6_is_loopback, socket_is_allowed};

/// Return value that lets the operation proceed.
const ALLOW: i32 = 1;
/// Return value that makes the syscall fail with `EPERM`.
const DENY: i32 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Event rings by slot. The supervisor fills a slot once and reuses it afterwards.
#[btf_map]
static EVENT_RINGS: ArrayOfMaps<
    RingBuf<BypassEvent, { EVENT_RING_BYTES as usize }>,
    { MAX_EXECUTIONS as usize },
> = ArrayOfMaps::new();

/// The slot of each execution's cgroup id. The supervisor owns the entries.
#[btf_map]
static EVENT_SLOTS: HashMap<u64, u32, { MAX_EXECUTIONS as usize }> = HashMap::new();

/// Per-execution refusal counters, keyed by cgroup id. The supervisor owns the entries.
///
/// Per-CPU because the BPF target has no atomic read-modify-write in Rust; the supervisor sums
/// the CPUs' values.
#[btf_map]
static COUNTERS: PerCpuHashMap<u64, BypassCounters, { MAX_EXECUTIONS as usize }> =
    PerCpuHashMap::new();

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    check_ipv4_destination(&ctx, KIND_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    check_ipv6_destination(&ctx, KIND_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    check_ipv4_destination(&ctx, KIND_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    check_ipv6_destination(&ctx, KIND_SENDMSG)
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the kernel hands a valid `bpf_sock`; each field is read with one 4-byte load,
    // the access size the verifier accepts for these context fields.
    let (family, sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).family),
            core::ptr::read_volatile(&raw const (*sk).type_),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    if socket_is_allowed(sock_type, protocol) {
        return ALLOW;
    }
    report(Refusal {
        kind: KIND_SOCK_CREATE,
        family: family as u16,
        addr: [0; 16],
        port: 0,
        sock_type,
        protocol,
    });
    DENY
}

fn check_ipv4_destination(ctx: &SockAddrContext, kind: u16) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid `bpf_sock_addr`; one 4-byte load per field.
    let (ip, port, sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).type_),
            core::ptr::read_volatile(&raw const (*sa).protocol),
        )
    };
    // `user_ip4` holds the address in network order: its in-memory bytes are the octets.
    let octets = ip.to_ne_bytes();
    if ipv4_is_loopback(octets) {
        return ALLOW;
    }
    let mut addr = [0u8; 16];
    addr[0] = octets[0];
    addr[1] = octets[1];
    addr[2] = octets[2];
    addr[3] = octets[3];
    report(Refusal {
        kind,
        family: AF_INET,
        addr,
        port: port_to_host(port),
        sock_type,
        protocol,
    });
    DENY
}

fn check_ipv6_destination(ctx: &SockAddrContext, kind: u16) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as above; `user_ip6` is read one 4-byte word at a time.
    let (words, port, sock_type, protocol) = unsafe {
        (
            [
                core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).type_),
            core::ptr::read_volatile(&raw const (*sa).protocol),
        )
    };
    let mut addr = [0u8; 16];
    let mut w = 0;
    while w < 4 {
        let bytes = words[w].to_ne_bytes();
        addr[w * 4] = bytes[0];
        addr[w * 4 + 1] = bytes[1];
        addr[w * 4 + 2] = bytes[2];
        addr[w * 4 + 3] = bytes[3];
        w += 1;
    }
    if ipv6_is_loopback(addr) {
        return ALLOW;
    }
    report(Refusal {
        kind,
        family: AF_INET6,
        addr,
        port: port_to_host(port),
        sock_type,
        protocol,
    });
    DENY
}

/// `user_port` carries the port in network order in its low 16 bits.
#[inline(always)]
fn port_to_host(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// What was refused; [`report`] adds who asked.
struct Refusal {
    kind: u16,
    family: u16,
    addr: [u8; 16],
    port: u16,
    sock_type: u32,
    protocol: u32,
}

/// Counts the refusal and writes it into the ring of the calling task's cgroup, if it has one.
#[inline(always)]
fn report(refusal: Refusal) {
    // SAFETY: helper without arguments, available to cgroup programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let counters = COUNTERS.get_ptr_mut(cgroup_id);
    if let Some(counters) = counters {
        // SAFETY: this CPU's slot of a map value the verifier checked for null; programs do
        // not migrate CPUs mid-run, so nothing else writes it meanwhile.
        unsafe { (*counters).denied += 1 };
    }
    // SAFETY: the value is copied out at once; an entry the supervisor removes concurrently
    // stays readable until this program returns (RCU).
    let Some(slot) = (unsafe { EVENT_SLOTS.get(cgroup_id) }).copied() else {
        return;
    };
    let Some(ring) = EVENT_RINGS.get(slot) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let event = BypassEvent {
        cgroup_id,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm,
        addr: refusal.addr,
        family: refusal.family,
        port: refusal.port,
        kind: refusal.kind,
        _pad: 0,
        sock_type: refusal.sock_type,
        protocol: refusal.protocol,
    };
    if ring.output(&event, 0).is_err() {
        if let Some(counters) = counters {
            // SAFETY: as above.
            unsafe { (*counters).dropped += 1 };
        }
    }
}
