//! The nftables wall: an `inet tollgate` table inside the sandbox namespace whose output chain
//! accepts loopback only and rejects everything else.
//!
//! It is installed over netlink (`rustables`), from the thread that created the namespace, so
//! no `nft` process is spawned on the execution path. Rejecting (TCP reset, ICMP
//! admin-prohibited) rather than dropping makes clients fail at once instead of waiting for a
//! timeout. It is the second of three walls: the namespace already has no route but loopback.
//!
//! Transparent egress adds a second table, `ip tollgate_nat`, which is plumbing, not a wall: its
//! one rule rewrites connections to the synthetic addresses (loopback, [`SYNTHETIC_RANGE`]) to
//! the proxy's transparent listener on 127.0.0.1, which reads the original address back with
//! `SO_ORIGINAL_DST`. Every destination it touches is loopback, which the walls admit anyway;
//! without it such a connection reaches nothing.

use rustables::expr::{
    Bitwise, Cmp, CmpOp, HighLevelPayload, IPv4HeaderField, IcmpCode, Immediate, Nat, NatType,
    NetworkHeaderField, Register, Reject, RejectType,
};
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};
use std::net::Ipv4Addr;

pub const TABLE: &str = "tollgate";
const OUTPUT_CHAIN: &str = "output";
/// The table of the transparent redirect.
pub const NAT_TABLE: &str = "tollgate_nat";
/// The synthetic addresses the stub resolver hands out: 127.77.0.0/16, loopback.
pub const SYNTHETIC_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(127, 77, 0, 0), 16);
/// Destination NAT runs at this priority (`dstnat`), before the filter chains.
const DSTNAT_PRIORITY: i32 = -100;

/// Installs the table in the calling thread's network namespace.
pub fn install_loopback_only() -> Result<(), String> {
    let mut batch = Batch::new();
    let table = Table::new(ProtocolFamily::Inet).with_name(TABLE);
    batch.add(&table, MsgType::Add);
    // Policy drop: anything no rule matches is dropped, even if a rule below failed to build.
    let output = Chain::new(&table)
        .with_name(OUTPUT_CHAIN)
        .with_hook(Hook::new(HookClass::Out, 0))
        .with_policy(ChainPolicy::Drop)
        .add_to_batch(&mut batch);
    Rule::new(&output)
        .map_err(|e| e.to_string())?
        .oiface("lo")
        .map_err(|e| e.to_string())?
        .accept()
        .add_to_batch(&mut batch);
    let mut tcp_reset = Rule::new(&output)
        .map_err(|e| e.to_string())?
        .protocol(rustables::Protocol::TCP);
    tcp_reset.add_expr(Reject::default().with_type(RejectType::TcpRst));
    tcp_reset.add_to_batch(&mut batch);
    let mut prohibited = Rule::new(&output).map_err(|e| e.to_string())?;
    prohibited.add_expr(
        Reject::default()
            .with_type(RejectType::IcmpxUnreach)
            .with_icmp_code(IcmpCode::AdminProhibited),
    );
    prohibited.add_to_batch(&mut batch);
    batch.send().map_err(|e| e.to_string())
}

/// Installs, in the calling thread's network namespace, the rule that sends every TCP
/// connection to [`SYNTHETIC_RANGE`] to `127.0.0.1:port` (the transparent listener):
/// `ip daddr 127.77.0.0/16 meta l4proto tcp dnat to 127.0.0.1:port`.
pub fn install_transparent_redirect(port: u16) -> Result<(), String> {
    let (network, prefix) = SYNTHETIC_RANGE;
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)));
    let mut batch = Batch::new();
    let table = Table::new(ProtocolFamily::Ipv4).with_name(NAT_TABLE);
    batch.add(&table, MsgType::Add);
    let output = Chain::new(&table)
        .with_name(OUTPUT_CHAIN)
        .with_type(ChainType::Nat)
        .with_hook(Hook::new(HookClass::Out, DSTNAT_PRIORITY))
        .with_policy(ChainPolicy::Accept)
        .add_to_batch(&mut batch);
    let mut redirect = Rule::new(&output).map_err(|e| e.to_string())?;
    redirect.add_expr(
        HighLevelPayload::Network(NetworkHeaderField::IPv4(IPv4HeaderField::Daddr)).build(),
    );
    redirect.add_expr(Bitwise::new(mask.octets(), [0u8; 4]).map_err(|e| e.to_string())?);
    redirect.add_expr(Cmp::new(CmpOp::Eq, network.octets()));
    let mut redirect = redirect.protocol(rustables::Protocol::TCP);
    redirect.add_expr(Immediate::new_data(
        Ipv4Addr::LOCALHOST.octets().to_vec(),
        Register::Reg1,
    ));
    redirect.add_expr(Immediate::new_data(
        port.to_be_bytes().to_vec(),
        Register::Reg2,
    ));
    redirect.add_expr(
        Nat::default()
            .with_nat_type(NatType::DNat)
            .with_family(ProtocolFamily::Ipv4)
            .with_ip_register(Register::Reg1)
            .with_port_register(Register::Reg2),
    );
    redirect.add_to_batch(&mut batch);
    batch.send().map_err(|e| e.to_string())
}
