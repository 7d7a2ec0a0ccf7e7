//! The nftables wall: an `inet tollgate` table inside the sandbox namespace whose output chain
//! accepts loopback only and rejects everything else.
//!
//! It is installed over netlink (`rustables`), from the thread that created the namespace, so
//! no `nft` process is spawned on the execution path. Rejecting (TCP reset, ICMP
//! admin-prohibited) rather than dropping makes clients fail at once instead of waiting for a
//! timeout. It is the second of three walls: the namespace already has no route but loopback.

use rustables::expr::{IcmpCode, Reject, RejectType};
use rustables::{Batch, Chain, ChainPolicy, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table};

pub const TABLE: &str = "tollgate";
const OUTPUT_CHAIN: &str = "output";

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
