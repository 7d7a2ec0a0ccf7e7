//! tollgate's eBPF egress wall: cgroup programs that refuse every destination but loopback.
//!
//! Attached to an execution's cgroup, `connect4`/`connect6` and `sendmsg4`/`sendmsg6` refuse
//! (`EPERM`) any destination outside loopback, and `sock_create` refuses any socket but plain
//! TCP/UDP (no `SOCK_RAW`, no ICMP "ping sockets"). Each refusal is reported to the execution
//! that owns the cgroup through its own ring buffer (see [`programs`]). The decisions themselves
//! are the pure functions in [`rules`], unit-tested on the host.
//!
//! Built for `bpfel-unknown-none` by `supervisor/build.rs`; on the host this is an empty binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;
#[cfg_attr(not(target_arch = "bpf"), allow(dead_code))]
mod rules;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never reached.
    loop {}
}

/// Host stub: the programs exist only in the eBPF object.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
