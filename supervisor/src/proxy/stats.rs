//! Per-execution counters for the `--summary` object: requests used, denied and retried,
//! bytes each way, and the destinations reached.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

    pub fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}
