//! Per-execution counters for the `--summary` object: requests used, denied and retried,
//! bytes each way, the destinations reached, and what was refused where and why.
//!
//! The list of refusals is bounded whatever the sandbox tries: at most [`REFUSED_TRACKED`]
//! destination-and-reason pairs are counted apart (later ones count as `other`), and the
//! summary names the [`REFUSED_LISTED`] most refused.

use crate::audit::Traffic;
use crate::quota::QuotaReport;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Destination-and-reason pairs of refusals counted apart; later pairs count as `other`.
pub const REFUSED_TRACKED: usize = 1000;
/// Destination-and-reason pairs the summary names; the rest are summed per reason as
/// `other`.
pub const REFUSED_LISTED: usize = 100;

/// The destination of refusals past the bounds.
const OTHER: &str = "other";

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Upstream attempts, retries and CONNECT tunnels included (what `max_requests` counts).
    pub requests: u64,
    /// Requests tollgate refused (policy, SSRF, limits, malformed requests).
    pub denied: u64,
    /// Attempts that were retries of an earlier attempt.
    pub retried: u64,
    /// Request body bytes sent upstream (tunnel bytes included).
    pub bytes_up: u64,
    /// Response body bytes sent to the sandbox (tunnel bytes included).
    pub bytes_down: u64,
    /// Every destination an attempt was made to, in order of name.
    pub destinations: Vec<DestinationStats>,
    /// What was refused, where and why, most refused first (bounded; see the module).
    pub refused: Vec<RefusedStats>,
    /// The team's quotas as this execution used them (`None`: the policy has none). The
    /// summary shows them beside `proxy`, not in it.
    #[serde(skip)]
    pub quotas: Option<QuotaReport>,
}

/// Refusals of one reason at one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedStats {
    /// `scheme://host:port` (`connect://host:port` for tunnels, `<invalid target>` for a
    /// request whose target could not be read, `other` for what is past the bounds).
    pub destination: String,
    /// The refusal's reason (`host_not_allowed`, `max_denied`, …), as in its audit record.
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    /// `scheme://host[:port]` (`connect://host:port` for tunnels).
    pub destination: String,
    pub requests: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    denied: AtomicU64,
    retried: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    destinations: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<HashMap<(String, String), u64>>,
}

impl Stats {
    pub fn attempt(&self, destination: &str, retry: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
        let mut map = match self.destinations.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get_mut(destination) {
            Some(count) => *count += 1,
            None => {
                map.insert(destination.to_owned(), 1);
            }
        }
    }

    /// Counts one refusal the sandbox caused; returns how many there were so far.
    pub fn refused(&self, traffic: &Traffic) -> u64 {
        self.count_refusal(destination(traffic), &traffic.reason)
    }

    /// Counts one connection refused over `max_connections`; returns the refusals so far.
    pub fn refused_connection(&self) -> u64 {
        self.count_refusal("<connection>".to_owned(), "max_connections")
    }

    fn count_refusal(&self, destination: String, reason: &str) -> u64 {
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (destination, reason.to_owned());
        if map.len() >= REFUSED_TRACKED && !map.contains_key(&key) {
            key.0 = OTHER.to_owned();
        }
        *map.entry(key).or_insert(0) += 1;
        drop(map);
        self.denied.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Refusals so far.
    pub fn denied_so_far(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProxyStats {
        let map = match self.destinations.lock() {
            Ok(map) => map.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let refused = match self.refused.lock() {
            Ok(map) => map.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        ProxyStats {
            requests: self.requests.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            destinations: map
                .into_iter()
                .map(|(destination, requests)| DestinationStats {
                    destination,
                    requests,
                })
                .collect(),
            refused: most_refused(refused),
            quotas: None,
        }
    }
}

/// Where a refused request or tunnel was headed: `scheme://host:port`.
fn destination(traffic: &Traffic) -> String {
    if traffic.host.is_empty() {
        "<invalid target>".to_owned()
    } else {
        format!("{}://{}:{}", traffic.scheme, traffic.host, traffic.port)
    }
}

/// The [`REFUSED_LISTED`] most refused pairs, then the rest summed per reason as `other`;
/// most refused first (then by name).
fn most_refused(counts: HashMap<(String, String), u64>) -> Vec<RefusedStats> {
    let mut named: Vec<RefusedStats> = Vec::new();
    let mut other: BTreeMap<String, u64> = BTreeMap::new();
    for ((destination, reason), count) in counts {
        if destination == OTHER {
            *other.entry(reason).or_insert(0) += count;
        } else {
            named.push(RefusedStats {
                destination,
                reason,
                count,
            });
        }
    }
    let by_count = |a: &RefusedStats, b: &RefusedStats| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.destination.cmp(&b.destination))
            .then_with(|| a.reason.cmp(&b.reason))
    };
    named.sort_by(by_count);
    for rest in named.split_off(REFUSED_LISTED.min(named.len())) {
        *other.entry(rest.reason).or_insert(0) += rest.count;
    }
    named.extend(other.into_iter().map(|(reason, count)| RefusedStats {
        destination: OTHER.to_owned(),
        reason,
        count,
    }));
    named.sort_by(by_count);
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Kind, Traffic};

    fn refusal(host: &str, reason: &str) -> Traffic {
        let mut traffic = Traffic::new(Kind::Http, "GET");
        traffic.scheme = "http".into();
        traffic.host = host.into();
        traffic.port = 80;
        traffic.reason = reason.into();
        traffic
    }

    #[test]
    fn refusals_are_listed_most_first_and_bounded_with_the_rest_as_other() {
        let stats = Stats::default();
        for _ in 0..5 {
            stats.refused(&refusal("top.test", "host_not_allowed"));
        }
        let hosts = REFUSED_TRACKED as u64 + 200;
        let mut total = 0;
        for i in 0..hosts {
            total = stats.refused(&refusal(&format!("h{i}.test"), "host_not_allowed"));
        }
        assert_eq!(total, hosts + 5);
        let snapshot = stats.snapshot();
        let refused = snapshot.refused;
        assert_eq!(refused.len(), REFUSED_LISTED + 1);
        assert_eq!(
            refused[0],
            RefusedStats {
                destination: "other".into(),
                reason: "host_not_allowed".into(),
                count: hosts - (REFUSED_LISTED as u64 - 1),
            }
        );
        assert_eq!(refused[1].destination, "http://top.test:80");
        assert_eq!(refused[1].count, 5);
        assert_eq!(
            refused.iter().map(|r| r.count).sum::<u64>(),
            snapshot.denied
        );
        assert!(refused.windows(2).all(|w| w[0].count >= w[1].count));
    }
}
