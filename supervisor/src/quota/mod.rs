//! Team quotas: every upstream attempt of a team takes from the quotas of its policy that
//! apply to the destination, atomically, before it is dialed (docs/policy.md, "Quotas").
//!
//! [`QuotaEnforcer`] is one execution's view: it turns the policy's quotas into store
//! buckets, asks the [`store`] once per attempt, meters bytes as they flow, and keeps what
//! remained for the Rego input, the audit records and the summary.

pub mod config;
pub mod store;

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::quotas::{QuotaKind, QuotaStanding, Quotas};
use tollgate_policy::url::UrlHost;

pub use config::{QuotaStoreConfig, RedisConfig, StoreFailure};
pub use store::{QuotaStore, StoreError};

/// Why an attempt was refused: its `Tollgate-Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// A `requests_per_minute` bucket is empty: 429 `team_rate_limited`.
    RateLimited,
    /// A day budget is spent: 429 `team_budget_exhausted`.
    BudgetExhausted,
    /// The store could not be asked (`on_failure: deny`): 503 `quota_unavailable`.
    Unavailable,
}

/// An attempt a quota refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub kind: RefusalKind,
    /// The quota that refused (`None` for [`RefusalKind::Unavailable`]).
    pub quota: Option<QuotaKind>,
    /// [`tollgate_policy::quotas::QuotaScope::label`].
    pub scope: Option<String>,
    /// The policy path, e.g. `quotas.destinations[0].requests_per_minute`: the audit
    /// record's `reason`.
    pub rule: Option<String>,
    pub limit: Option<u64>,
    /// When to try again (`Retry-After`, rounded up to whole seconds, at least 1).
    pub retry_after: Option<Duration>,
    /// The sentence the sandbox gets: names the quota, its limit and when to retry.
    pub message: String,
}

/// An admitted attempt: the byte budgets it must stay within as its bytes flow.
pub struct Admission {
    /// `None` when no `bytes_per_day` applies.
    pub meter: Option<ByteMeter>,
}

/// Counts one exchange's bytes against the byte budgets that applied when it was
/// admitted. Synchronous to call from body polling; it sends what it counted to the store
/// in the background (every so many bytes, and when dropped).
pub struct ByteMeter {
    _private: (),
}

impl ByteMeter {
    /// The most bytes this exchange may move (request and response together, the request
    /// body already counted at admission) before it is cut: what remained at admission.
    pub fn allowance(&self) -> u64 {
        todo!("quota owner")
    }

    /// Counts `bytes` more; false once the allowance is passed (the caller cuts the
    /// exchange as `max_response_bytes` would, with `team_budget_exhausted`).
    pub fn add(&self, bytes: u64) -> bool {
        let _ = bytes;
        todo!("quota owner")
    }

    /// The refusal to report when [`ByteMeter::add`] returned false.
    pub fn exhausted(&self) -> QuotaRefusal {
        todo!("quota owner")
    }
}

/// One execution's quotas. `None` in the proxy when the policy has no quotas.
pub struct QuotaEnforcer {
    _private: (),
}

impl QuotaEnforcer {
    /// For `team`'s `quotas` (not empty), counted in `store`.
    pub fn new(team: &str, quotas: &Quotas, store: QuotaStore) -> Arc<QuotaEnforcer> {
        let _ = (team, quotas, store);
        todo!("quota owner")
    }

    /// Takes one attempt to `host` carrying `request_bytes` of body from every quota that
    /// applies, or refuses it and takes nothing.
    pub async fn admit(
        self: &Arc<Self>,
        host: &UrlHost,
        request_bytes: u64,
    ) -> Result<Admission, QuotaRefusal> {
        let _ = (host, request_bytes);
        todo!("quota owner")
    }

    /// The quotas that apply to `host`, with what remained at this execution's last check
    /// of each: `input.quotas` of the Rego input.
    pub fn standings(&self, host: &UrlHost) -> Vec<QuotaStanding> {
        let _ = host;
        todo!("quota owner")
    }

    /// Reads what remains of every quota once (at start, for the Rego input); a store that
    /// does not answer leaves them unknown.
    pub async fn refresh(&self) {
        todo!("quota owner")
    }

    /// The summary's `quotas` object.
    pub fn report(&self) -> QuotaReport {
        todo!("quota owner")
    }
}

/// The summary's `quotas` object (docs/policy.md, "Quotas"; docs/audit.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaReport {
    /// `redis://host:port` (never a password) or `node`.
    pub store: String,
    pub fleet_wide: bool,
    pub on_failure: StoreFailure,
    /// Attempts admitted and refused, by `Tollgate-Error`.
    pub admitted: u64,
    pub refused: RefusedCounts,
    #[serde(flatten)]
    pub store_stats: store::StoreStats,
    /// Every quota this execution checked, with what remained at its last check.
    pub quotas: Vec<QuotaLine>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RefusedCounts {
    pub team_rate_limited: u64,
    pub team_budget_exhausted: u64,
    pub quota_unavailable: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuotaLine {
    pub quota: QuotaKind,
    pub scope: String,
    pub rule: String,
    pub limit: u64,
    pub remaining: Option<u64>,
    pub admitted: u64,
    pub refused: u64,
}
