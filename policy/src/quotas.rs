//! The team's `quotas` section, validated: rate limits and day budgets that every execution
//! of the team shares, on every node (docs/policy.md, "Quotas").
//!
//! Per-execution limits (`limits.max_requests`, …) bound one run; these bound the team. This
//! module only says which quotas an attempt takes from; counting them is the supervisor's
//! (`tollgate::quota`), in Redis or on the node.

use crate::url::{HostPattern, UrlHost};
use serde::Serialize;

/// The most requests any quota counts (a minute's, a day's, a burst): a million a second
/// for eleven days is a typo, not a limit. Far below 2^53, so every count is exact in the
/// store's Lua numbers (doubles) and in JSON.
pub const MAX_REQUESTS: u64 = 1_000_000_000_000;

/// The most bytes a day any quota counts: 1 PiB (2^50), exact in doubles like the counts.
pub const MAX_BYTES: u64 = 1 << 50;

/// The most `quotas.destinations`: every attempt scans them for its host.
pub const MAX_DESTINATIONS: usize = 256;

/// A burst holds at most this many minutes of its rate (a day's worth), so a bucket's
/// delay tolerance (burst × 60 s / per_minute) is at most a day: a rate key never lives
/// longer than that, and its times stay exact in microseconds as doubles.
pub const MAX_BURST_MINUTES: u64 = 24 * 60;

/// The `quotas` section; [`Quotas::default`] (no quota at all) when the policy has none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas {
    /// Team-wide limits: every upstream attempt of the team takes from them.
    pub team: QuotaLimits,
    /// Per-destination limits, in policy order: an attempt takes from every one whose host
    /// matches, as well as from the team's.
    pub destinations: Vec<DestinationQuota>,
}

/// The limits of one scope (the team, or one destination); each is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaLimits {
    pub requests_per_minute: Option<RateLimit>,
    /// Upstream attempts per UTC day.
    pub requests_per_day: Option<u64>,
    /// Request plus response bytes per UTC day.
    pub bytes_per_day: Option<u64>,
}

/// A GCRA rate: `per_minute` attempts a minute, evenly spaced, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u64,
    /// Attempts that may arrive at once (at least 1). Defaults to a tenth of `per_minute`
    /// (six seconds' worth), at least 1.
    pub burst: u64,
}

impl RateLimit {
    /// `per_minute` with the default burst: a tenth of it (six seconds' worth), at least 1.
    pub fn with_default_burst(per_minute: u64) -> RateLimit {
        RateLimit {
            per_minute,
            burst: (per_minute / 10).max(1),
        }
    }
}

/// `quotas.destinations[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationQuota {
    /// Where it came from, e.g. `quotas.destinations[0]`: named in refusals.
    pub rule: String,
    /// Same syntax as a long-form allow entry's `host`.
    pub host: HostPattern,
    pub limits: QuotaLimits,
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKind {
    RequestsPerMinute,
    RequestsPerDay,
    BytesPerDay,
}

impl QuotaKind {
    /// The policy key: `requests_per_minute`, `requests_per_day`, `bytes_per_day`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::RequestsPerMinute => "requests_per_minute",
            QuotaKind::RequestsPerDay => "requests_per_day",
            QuotaKind::BytesPerDay => "bytes_per_day",
        }
    }
}

/// Whose quota: the team's, or one destination's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaScope {
    Team,
    /// `quotas.destinations[index]`, whose host pattern is `host` (as [`HostPattern`]
    /// displays it).
    Destination {
        index: usize,
        host: String,
    },
}

impl QuotaScope {
    /// `team`, or the destination's host pattern (`api.openai.com`): the `scope` of audit
    /// records, the summary, metrics and the Rego input.
    pub fn label(&self) -> &str {
        match self {
            QuotaScope::Team => "team",
            QuotaScope::Destination { host, .. } => host,
        }
    }

    /// The policy path of a quota of this scope: `quotas.requests_per_minute`,
    /// `quotas.destinations[0].bytes_per_day`.
    pub fn rule(&self, kind: QuotaKind) -> String {
        match self {
            QuotaScope::Team => format!("quotas.{}", kind.as_str()),
            QuotaScope::Destination { index, .. } => {
                format!("quotas.destinations[{index}].{}", kind.as_str())
            }
        }
    }
}

/// One quota an attempt takes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedQuota {
    pub scope: QuotaScope,
    pub kind: QuotaKind,
    /// Attempts a minute, attempts a day, or bytes a day.
    pub limit: u64,
    /// For `requests_per_minute` only.
    pub burst: Option<u64>,
}

/// What team Rego rules read for one quota that applies to the request (`input.quotas[_]`):
/// its limit and what remained at this execution's last check (`None` before any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaStanding {
    pub quota: QuotaKind,
    /// [`QuotaScope::label`].
    pub scope: String,
    pub limit: u64,
    pub remaining: Option<u64>,
}

impl Quotas {
    /// Whether the section sets no quota at all.
    pub fn is_empty(&self) -> bool {
        self.team == QuotaLimits::default() && self.destinations.is_empty()
    }

    /// Every quota an attempt to `host` takes from: the team's first, then each matching
    /// destination's, in policy order; within a scope, per minute, per day, bytes.
    pub fn applicable(&self, host: &UrlHost) -> Vec<AppliedQuota> {
        self.matching(|destination| destination.host.matches(host))
    }

    /// Every quota of the section, the team's first, then each destination's, in the order
    /// of [`Quotas::applicable`].
    pub fn all(&self) -> Vec<AppliedQuota> {
        self.matching(|_| true)
    }

    fn matching(&self, applies: impl Fn(&DestinationQuota) -> bool) -> Vec<AppliedQuota> {
        let mut applied = Vec::new();
        push_limits(&mut applied, &QuotaScope::Team, &self.team);
        for (index, destination) in self.destinations.iter().enumerate() {
            if applies(destination) {
                let scope = QuotaScope::Destination {
                    index,
                    host: destination.host.to_string(),
                };
                push_limits(&mut applied, &scope, &destination.limits);
            }
        }
        applied
    }
}

fn push_limits(applied: &mut Vec<AppliedQuota>, scope: &QuotaScope, limits: &QuotaLimits) {
    if let Some(rate) = limits.requests_per_minute {
        applied.push(AppliedQuota {
            scope: scope.clone(),
            kind: QuotaKind::RequestsPerMinute,
            limit: rate.per_minute,
            burst: Some(rate.burst),
        });
    }
    for (kind, limit) in [
        (QuotaKind::RequestsPerDay, limits.requests_per_day),
        (QuotaKind::BytesPerDay, limits.bytes_per_day),
    ] {
        if let Some(limit) = limit {
            applied.push(AppliedQuota {
                scope: scope.clone(),
                kind,
                limit,
                burst: None,
            });
        }
    }
}
