//! The service's chores: `doctor`'s checks before it serves, `gc` at start, on an interval
//! and at the end, and the team directory rescanned on an interval.
//!
//! The blocking work (gc's cgroup walk, a rescan's validation) runs on tokio's blocking
//! threads, so launches are never held up by it.

use super::metrics::Metrics;
use super::teams::Reload;
use super::Node;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Every failed check of `tollgate doctor`, as `name: how to fix it`.
pub fn doctor_failures() -> Vec<String> {
    crate::cli::maintenance::doctor_checks()
        .into_iter()
        .filter_map(|check| {
            check
                .result
                .err()
                .map(|fix| format!("{}: {fix}", check.name))
        })
        .collect()
}

/// `tollgate gc`, with what it did in the log.
pub fn collect_garbage() {
    let collected = match crate::sandbox::gc::everything() {
        Ok(collected) => collected,
        Err(error) => return tracing::warn!("gc: {error}"),
    };
    let removed = collected.cgroups.removed.len()
        + collected.leases
        + collected.runtime_dirs
        + collected.pins.len()
        + match &collected.registrations {
            Some(Ok(n)) => *n,
            _ => 0,
        };
    if removed > 0 {
        tracing::info!(
            "gc: removed {} stale execution cgroups, {} user leases, {} runtime directories, \
             {} pin directories, {} eBPF registrations",
            collected.cgroups.removed.len(),
            collected.leases,
            collected.runtime_dirs,
            collected.pins.len(),
            match &collected.registrations {
                Some(Ok(n)) => *n,
                _ => 0,
            }
        );
    }
    for (path, why) in &collected.cgroups.failed {
        tracing::warn!("gc: cannot remove {}: {why}", path.display());
    }
    if let Some(Err(error)) = &collected.registrations {
        tracing::warn!("gc: {error}");
    }
}

/// Logs and counts what a load or rescan of the team directory did.
pub fn report_reloads(reloads: &[Reload], metrics: &Metrics) {
    for reload in reloads {
        match reload {
            Reload::Loaded { team } => {
                tracing::info!("team {team}: policy loaded");
                metrics.policy_reload(team, true);
            }
            Reload::Failed { team, message } => {
                let first = message.lines().next().unwrap_or_default();
                tracing::warn!(
                    "team {team}: the policy file is invalid, so the last good version (if \
                     any) stays in force: {first}"
                );
                metrics.policy_reload(team, false);
            }
            Reload::Removed { team } => {
                tracing::info!("team {team}: policy file removed: no more launches for it");
            }
        }
    }
}

/// Rescans the team directory every `reload_interval` and collects garbage every
/// `gc_interval`, until `stop` turns true.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    // (A zero interval would make tokio panic; the configuration refuses one anyway.)
    let at_least = |period: Duration| period.max(Duration::from_millis(100));
    let mut reload = tokio::time::interval(at_least(node.config.reload_interval));
    let mut gc = tokio::time::interval(at_least(node.config.gc_interval));
    // SIGHUP, the usual "reload" of a service (`systemctl reload`), rescans at once.
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(
                "cannot listen for SIGHUP (team policies reload on their interval only): {error}"
            );
            None
        }
    };
    for interval in [&mut reload, &mut gc] {
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    // Both ran at start; the first ticks are immediate.
    reload.tick().await;
    gc.tick().await;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                tracing::info!("SIGHUP: rescanning the team policies now");
                reload.reset_immediately();
            }
            _ = reload.tick() => {
                let teams = node.teams.clone();
                match tokio::task::spawn_blocking(move || teams.rescan()).await {
                    Ok(reloads) => report_reloads(&reloads, &node.metrics),
                    Err(error) => tracing::error!("the team directory rescan failed: {error}"),
                }
            }
            _ = gc.tick() => {
                if let Err(error) = tokio::task::spawn_blocking(collect_garbage).await {
                    tracing::error!("gc failed: {error}");
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
