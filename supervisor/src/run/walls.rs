//! The walls of one execution: the network namespace (with nftables and the proxy's
//! listener), the cgroup with its limits, and the eBPF wall; built together, torn down
//! together, on every path.

use super::{events, Refusal};
use crate::audit::{AuditLog, Record};
use crate::sandbox::bpf::{AttachedWall, EgressPrograms};
use crate::sandbox::cgroup::ExecutionCgroup;
use crate::sandbox::layers::Layers;
use crate::sandbox::limits::{self, ExecutionLimits, LimitFlags, ResourceLimits};
use crate::sandbox::netns::{self, NamespaceWalls, SandboxNet, TransparentSockets};

/// The walls of one execution, torn down in `tear_down` (and, for what the drop guards own,
/// on any early return).
pub(super) struct Walls {
    pub(super) cgroup: ExecutionCgroup,
    /// Memory, CPU and process limits: in the cgroup, or in v1 cgroups of the execution
    /// (dropped after `cgroup`, whose kill empties them).
    pub(super) limits: ExecutionLimits,
    pub(super) wall: Option<AttachedWall>,
    /// The wall, once its reports stream to the audit log (see `events`).
    pub(super) pump: Option<events::EventPump>,
    pub(super) net: Option<SandboxNet>,
    /// The proxy's listener: bound inside the sandbox namespace (in test builds without the
    /// namespace wall, on the supervisor's own loopback).
    pub(super) listener: Option<std::net::TcpListener>,
    /// Transparent egress's sockets, inside the namespace (when it is on).
    pub(super) transparent: Option<TransparentSockets>,
}

/// What the eBPF wall saw, for the summary.
#[derive(Default)]
pub(super) struct WallTotals {
    pub(super) denied: u64,
    pub(super) dropped: u64,
    /// What the execution used, from its cgroups.
    pub(super) usage: limits::Usage,
    pub(super) limits: Option<limits::LimitsReport>,
}

impl Walls {
    pub(super) fn build(
        execution: &str,
        layers: Layers,
        network: bool,
        transparent: bool,
        limits: ResourceLimits,
        flags: &LimitFlags,
    ) -> Result<Walls, Refusal> {
        // The namespace is built on its own thread while this one builds the cgroup and the
        // eBPF wall.
        let pending = layers
            .netns
            .then(|| {
                netns::start(NamespaceWalls {
                    nftables: layers.nftables,
                    listener: network,
                    transparent,
                })
            })
            .transpose()?;
        let cgroup = ExecutionCgroup::create(execution)?;
        let limits = ExecutionLimits::apply(&cgroup, execution, limits, flags.allow_unenforced)
            .map_err(|e| Refusal::tollgate(e.to_string()))?;
        let wall = if layers.bpf {
            Some(EgressPrograms::load_or_reuse()?.attach(&cgroup)?)
        } else {
            None
        };
        let (net, listener, transparent) = if let Some(pending) = pending {
            let mut net = pending.finish()?;
            let listener = net.listener.take();
            let transparent = net.transparent.take();
            (Some(net), listener, transparent)
        } else if network {
            // Without a namespace of its own (test builds) there is nothing to redirect in.
            (None, Some(netns::bind_proxy_listener()?), None)
        } else {
            (None, None, None)
        };
        Ok(Walls {
            cgroup,
            limits,
            wall,
            pump: None,
            net,
            listener,
            transparent,
        })
    }

    /// Kills what is left, detaches the programs, records what they saw.
    pub(super) fn tear_down(
        self,
        audit: &AuditLog,
        execution: &str,
        team: Option<&str>,
    ) -> WallTotals {
        let Walls {
            cgroup,
            limits,
            wall,
            pump,
            net,
            listener,
            transparent,
        } = self;
        // Killed first, so the counters are final when read; removed after.
        if let Err(error) = cgroup.kill() {
            eprintln!("tollgate: {error}");
        }
        let mut totals = WallTotals {
            usage: limits.usage(&cgroup),
            limits: Some(limits.report()),
            ..WallTotals::default()
        };
        if let Err(error) = limits.remove() {
            eprintln!("tollgate: {error}");
        }
        if let Err(error) = cgroup.kill_and_remove() {
            eprintln!("tollgate: {error}");
        }
        // The pump detaches the wall and writes the last reports; a wall never handed to a
        // pump (an early error) is detached here.
        let report = match (pump, wall) {
            (Some(pump), _) => pump.finish(),
            (None, Some(wall)) => {
                let report = wall.detach();
                for attempt in &report.events {
                    audit.write(Record::bypass(execution, team, attempt));
                }
                Some(report)
            }
            (None, None) => None,
        };
        if let Some(report) = report {
            totals.denied = report.denied;
            totals.dropped = report.dropped;
        }
        drop(listener);
        drop(transparent);
        drop(net);
        totals
    }
}

/// Kills every process of the execution at once (the whole tree, whatever it ignores).
pub(super) fn kill_sandbox(walls: &Walls) {
    if let Err(error) = walls.cgroup.kill_now() {
        eprintln!("tollgate: cannot kill the sandbox: {error}");
    }
}
