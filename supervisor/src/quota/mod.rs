//! Team quotas: every upstream attempt of a team takes from the quotas of its policy that
//! apply to the destination, atomically, before it is dialed (docs/policy.md, "Quotas").
//!
//! [`QuotaEnforcer`] is one execution's view: it turns the policy's quotas into store
//! buckets, asks the [`store`] once per attempt, meters bytes as they flow ([`ByteMeter`]),
//! and keeps what remained for the Rego input, the audit records and the summary.

mod charges;
pub mod config;
mod gcra;
mod meter;
mod node_store;
mod redis_store;
mod refusal;
pub mod store;

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Answered, Bucket, BucketRule, TakeOutcome};
use tollgate_policy::quotas::{AppliedQuota, QuotaKind, QuotaScope, QuotaStanding, Quotas};
use tollgate_policy::url::UrlHost;

pub use config::{QuotaStoreConfig, RedisConfig, StoreFailure};
pub use meter::{ByteMeter, CHARGE_EVERY};
pub use refusal::{QuotaRefusal, RefusalKind};
pub use store::{QuotaStore, StoreError};

/// How long a `requests_per_minute` bucket's limit is counted over.
const MINUTE: Duration = Duration::from_secs(60);

/// The longest an admission under a byte budget waits for this execution's earlier charges
/// (each is bounded by the store's own timeouts; this only keeps a stuck one from holding
/// every request).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// The longest a finished exchange's bytes wait for the execution's next take before they
/// are charged on their own.
const CARRY_LIMIT: Duration = Duration::from_secs(1);

/// An admitted attempt: the byte budgets it must stay within as its bytes flow.
pub struct Admission {
    /// `None` when no `bytes_per_day` applies.
    pub meter: Option<ByteMeter>,
}

/// One quota of the policy as this execution saw it.
struct Line {
    applied: AppliedQuota,
    bucket: String,
    /// What remained at the last check (`None` before any).
    remaining: Option<u64>,
    admitted: u64,
    refused: u64,
}

/// One execution's quotas. `None` in the proxy when the policy has no quotas.
pub struct QuotaEnforcer {
    team: String,
    quotas: Quotas,
    store: QuotaStore,
    on_failure: StoreFailure,
    /// Every quota of the policy, in policy order (the team's first).
    lines: Mutex<Vec<Line>>,
    admitted: AtomicU64,
    refused: Mutex<RefusedCounts>,
    /// Exchanges admitted and then refused or cut at a byte budget.
    cut: AtomicU64,
    /// Byte charges the store has not answered yet.
    charges: charges::Charges,
    /// Bytes of finished exchanges not charged yet, by bucket name: (limit, bytes).
    carried: Mutex<BTreeMap<String, (u64, u64)>>,
    /// A [`QuotaEnforcer::flush`] of the carried bytes is scheduled.
    flush_scheduled: AtomicBool,
}

impl QuotaEnforcer {
    /// For `team`'s `quotas` (not empty), counted in `store`, which the node opened with
    /// `on_failure` (reported in the summary).
    pub fn new(
        team: &str,
        quotas: &Quotas,
        store: QuotaStore,
        on_failure: StoreFailure,
    ) -> Arc<QuotaEnforcer> {
        let lines = quotas
            .all()
            .into_iter()
            .map(|applied| Line {
                bucket: bucket_name(&applied.scope, applied.kind),
                applied,
                remaining: None,
                admitted: 0,
                refused: 0,
            })
            .collect();
        Arc::new(QuotaEnforcer {
            team: team.to_owned(),
            quotas: quotas.clone(),
            store,
            on_failure,
            lines: Mutex::new(lines),
            admitted: AtomicU64::new(0),
            refused: Mutex::new(RefusedCounts::default()),
            cut: AtomicU64::new(0),
            charges: charges::Charges::default(),
            carried: Mutex::new(BTreeMap::new()),
            flush_scheduled: AtomicBool::new(false),
        })
    }

    /// Takes one attempt to `host` carrying `request_bytes` of body from every quota that
    /// applies, or refuses it and takes nothing.
    pub async fn admit(
        self: &Arc<Self>,
        host: &UrlHost,
        request_bytes: u64,
    ) -> Result<Admission, Box<QuotaRefusal>> {
        let applied = self.quotas.applicable(host);
        if applied.is_empty() {
            return Ok(Admission { meter: None });
        }
        if applied.iter().any(|a| a.kind == QuotaKind::BytesPerDay) {
            // A long body's bytes may be on their way to the store (one charge every
            // `CHARGE_EVERY`); without them the budget would look larger than it is.
            self.charges.settled(SETTLE_LIMIT).await;
        }
        let mut buckets: Vec<Bucket> = applied.iter().map(|a| bucket(a, request_bytes)).collect();
        // The bytes of this execution's finished exchanges go in the same round trip, after
        // the buckets (whose indices are the applied quotas').
        let carried = self.take_carried(&buckets);
        buckets.extend(carried.iter().cloned());
        let (outcome, answered) = match self.store.take(&buckets).await {
            Ok(answer) => answer,
            Err(error) => {
                self.put_back(carried);
                return Err(Box::new(self.unavailable(&error.to_string())));
            }
        };
        let asked = applied.len();
        match outcome {
            TakeOutcome::Granted { remaining } => {
                self.admitted.fetch_add(1, Ordering::Relaxed);
                self.granted(&buckets[..asked], &remaining[..asked.min(remaining.len())]);
                Ok(Admission {
                    meter: self.meter(&applied, &remaining, answered),
                })
            }
            TakeOutcome::Refused { index, retry_after } => {
                let (Some(refused), Some(bucket)) = (applied.get(index), buckets.get(index)) else {
                    let cause = "the store named a quota it was not asked about";
                    return Err(Box::new(self.unavailable(cause)));
                };
                let cost = match bucket.rule {
                    BucketRule::Daily { cost, .. } => cost,
                    BucketRule::Rate { .. } | BucketRule::Carry { .. } => 1,
                };
                let remaining = self.refused_by(&bucket.name, cost);
                let refusal =
                    QuotaRefusal::refused(refused, remaining, cost, retry_after, answered);
                self.count_refusal(refusal.kind);
                Err(Box::new(refusal))
            }
        }
    }

    /// The refusal when the store could not answer (`cause`, which never holds a password).
    fn unavailable(&self, cause: &str) -> QuotaRefusal {
        self.count_refusal(RefusalKind::Unavailable);
        let store = if self.store.fleet_wide() {
            Answered::Redis
        } else {
            Answered::Node
        };
        QuotaRefusal::unavailable(cause, store)
    }

    /// The quotas that apply to `host`, with what remained at this execution's last check
    /// of each: `input.quotas` of the Rego input.
    pub fn standings(&self, host: &UrlHost) -> Vec<QuotaStanding> {
        let lines = self.lines();
        self.quotas
            .applicable(host)
            .into_iter()
            .map(|applied| {
                let name = bucket_name(&applied.scope, applied.kind);
                QuotaStanding {
                    quota: applied.kind,
                    scope: applied.scope.label().to_owned(),
                    limit: applied.limit,
                    remaining: lines
                        .iter()
                        .find(|line| line.bucket == name)
                        .and_then(|line| line.remaining),
                }
            })
            .collect()
    }

    /// Reads what remains of every quota once (at start, for the Rego input); a store that
    /// does not answer leaves them unknown.
    pub async fn refresh(&self) {
        let buckets: Vec<Bucket> = self
            .lines()
            .iter()
            .map(|line| bucket(&line.applied, 0))
            .collect();
        match self.store.peek(&buckets).await {
            Ok(remaining) => self.note(&buckets, &remaining),
            Err(error) => {
                tracing::debug!("the quotas of team {} were not read: {error}", self.team)
            }
        }
    }

    /// The summary's `quotas` object.
    pub fn report(&self) -> QuotaReport {
        let quotas = self
            .lines()
            .iter()
            .map(|line| QuotaLine {
                quota: line.applied.kind,
                scope: line.applied.scope.label().to_owned(),
                rule: line.applied.scope.rule(line.applied.kind),
                limit: line.applied.limit,
                remaining: line.remaining,
                admitted: line.admitted,
                refused: line.refused,
            })
            .collect();
        QuotaReport {
            store: self.store.describe(),
            fleet_wide: self.store.fleet_wide(),
            on_failure: self.on_failure,
            admitted: self.admitted.load(Ordering::Relaxed),
            cut: self.cut.load(Ordering::Relaxed),
            refused: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            store_stats: self.store.stats(),
            quotas,
        }
    }

    pub(crate) fn team(&self) -> &str {
        &self.team
    }

    pub(crate) fn store(&self) -> &QuotaStore {
        &self.store
    }

    fn charges(&self) -> &charges::Charges {
        &self.charges
    }

    /// Keeps `bytes` of a finished exchange for `buckets` (its byte budgets) until the
    /// execution's next take carries them, or until [`QuotaEnforcer::flush`] (scheduled
    /// [`CARRY_LIMIT`] from now if none is, so other executions hear of them soon).
    fn carry(self: &Arc<Self>, buckets: &[Bucket], bytes: u64) {
        {
            let mut carried = self.carried();
            for bucket in buckets {
                let limit = match bucket.rule {
                    BucketRule::Daily { limit, .. } | BucketRule::Carry { limit, .. } => limit,
                    BucketRule::Rate { .. } => continue,
                };
                let entry = carried.entry(bucket.name.clone()).or_insert((limit, 0));
                entry.1 = entry.1.saturating_add(bytes);
            }
        }
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flush_scheduled.store(false, Ordering::Release);
            return;
        };
        let enforcer = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(CARRY_LIMIT).await;
            enforcer.flush().await;
        });
    }

    /// The carried bytes of `buckets`' byte budgets, as `Carry` buckets, taken out.
    fn take_carried(&self, buckets: &[Bucket]) -> Vec<Bucket> {
        let mut carried = self.carried();
        buckets
            .iter()
            .filter_map(|bucket| {
                let (limit, bytes) = carried.remove(&bucket.name)?;
                Some(Bucket {
                    name: bucket.name.clone(),
                    rule: BucketRule::Carry { limit, bytes },
                })
            })
            .collect()
    }

    /// Carried bytes a take could not deliver, kept for the next.
    fn put_back(&self, buckets: Vec<Bucket>) {
        let mut carried = self.carried();
        for bucket in buckets {
            if let BucketRule::Carry { limit, bytes } = bucket.rule {
                let entry = carried.entry(bucket.name).or_insert((limit, 0));
                entry.1 = entry.1.saturating_add(bytes);
            }
        }
    }

    /// Charges every carried byte and waits for the charges on their way: at the end of
    /// the execution (the proxy's shutdown), and shortly after an exchange that no take
    /// followed.
    pub async fn flush(&self) {
        self.flush_scheduled.store(false, Ordering::Release);
        let buckets: Vec<Bucket> = std::mem::take(&mut *self.carried())
            .into_iter()
            .map(|(name, (limit, bytes))| Bucket {
                name,
                rule: BucketRule::Carry { limit, bytes },
            })
            .collect();
        if !buckets.is_empty() {
            match self.store.take(&buckets).await {
                Ok((TakeOutcome::Granted { remaining }, _)) => self.note(&buckets, &remaining),
                Ok((TakeOutcome::Refused { .. }, _)) => {}
                Err(error) => tracing::debug!(
                    "the bytes of team {}'s last exchanges were not charged: {error}",
                    self.team
                ),
            }
        }
        self.charges.settled(SETTLE_LIMIT).await;
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, u64)>> {
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_cut(&self) {
        self.cut.fetch_add(1, Ordering::Relaxed);
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<Line>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the store said remains of each of `buckets`.
    fn note(&self, buckets: &[Bucket], remaining: &[u64]) {
        let mut lines = self.lines();
        for (bucket, left) in buckets.iter().zip(remaining) {
            if let Some(line) = lines.iter_mut().find(|line| line.bucket == bucket.name) {
                line.remaining = Some(*left);
            }
        }
    }

    /// An attempt was admitted by every one of `buckets`.
    fn granted(&self, buckets: &[Bucket], remaining: &[u64]) {
        self.note(buckets, remaining);
        let mut lines = self.lines();
        for bucket in buckets {
            if let Some(line) = lines.iter_mut().find(|line| line.bucket == bucket.name) {
                line.admitted += 1;
            }
        }
    }

    /// Bucket `name` refused an attempt costing `cost`; returns what it is known to have
    /// left: nothing, unless a byte budget refused a body bigger than what it had.
    fn refused_by(&self, name: &str, cost: u64) -> Option<u64> {
        let mut lines = self.lines();
        let line = lines.iter_mut().find(|line| line.bucket == name)?;
        line.refused += 1;
        line.remaining = match line.applied.kind {
            QuotaKind::BytesPerDay if cost > 0 => line.remaining.filter(|left| *left < cost),
            _ => Some(0),
        };
        line.remaining
    }

    /// A byte budget among `buckets` ran out while bytes flowed.
    fn spent(&self, buckets: &[Bucket]) {
        if let Some(index) = self.tightest(buckets) {
            let mut lines = self.lines();
            if let Some(line) = lines
                .iter_mut()
                .find(|line| line.bucket == buckets[index].name)
            {
                line.remaining = Some(0);
            }
        }
    }

    /// Which of `buckets` had the least left at the last check.
    fn tightest(&self, buckets: &[Bucket]) -> Option<usize> {
        let lines = self.lines();
        let left = |bucket: &Bucket| {
            lines
                .iter()
                .find(|line| line.bucket == bucket.name)
                .and_then(|line| line.remaining)
                .unwrap_or(u64::MAX)
        };
        (0..buckets.len()).min_by_key(|&i| left(&buckets[i]))
    }

    /// The byte meter of an admitted attempt, when a byte budget applies.
    fn meter(
        self: &Arc<Self>,
        applied: &[AppliedQuota],
        remaining: &[u64],
        answered: Answered,
    ) -> Option<ByteMeter> {
        let bytes: Vec<usize> = (0..applied.len())
            .filter(|&i| applied[i].kind == QuotaKind::BytesPerDay)
            .collect();
        let allowance = bytes
            .iter()
            .map(|&i| remaining.get(i).copied().unwrap_or(0))
            .min()?;
        let quotas = bytes.iter().map(|&i| applied[i].clone()).collect();
        let buckets = bytes.iter().map(|&i| bucket(&applied[i], 0)).collect();
        Some(ByteMeter::new(
            self.clone(),
            quotas,
            buckets,
            allowance,
            answered,
        ))
    }

    fn count_refusal(&self, kind: RefusalKind) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match kind {
            RefusalKind::RateLimited => refused.team_rate_limited += 1,
            RefusalKind::BudgetExhausted => refused.team_budget_exhausted += 1,
            RefusalKind::Unavailable => refused.quota_unavailable += 1,
        }
    }
}

/// The store's name for a quota: stable across executions and nodes, by host rather than
/// position (reordering the policy keeps the counters): `rpm:team`, `bpd:d:api.openai.com`.
pub fn bucket_name(scope: &QuotaScope, kind: QuotaKind) -> String {
    let prefix = match kind {
        QuotaKind::RequestsPerMinute => "rpm",
        QuotaKind::RequestsPerDay => "rpd",
        QuotaKind::BytesPerDay => "bpd",
    };
    match scope {
        QuotaScope::Team => format!("{prefix}:team"),
        QuotaScope::Destination { host, .. } => format!("{prefix}:d:{host}"),
    }
}

/// The bucket an attempt carrying `request_bytes` of body takes from for `applied`.
fn bucket(applied: &AppliedQuota, request_bytes: u64) -> Bucket {
    let rule = match applied.kind {
        QuotaKind::RequestsPerMinute => BucketRule::Rate {
            limit: applied.limit,
            period: MINUTE,
            burst: applied.burst.unwrap_or(1).max(1),
        },
        QuotaKind::RequestsPerDay => BucketRule::Daily {
            limit: applied.limit,
            cost: 1,
        },
        QuotaKind::BytesPerDay => BucketRule::Daily {
            limit: applied.limit,
            cost: request_bytes,
        },
    };
    Bucket {
        name: bucket_name(&applied.scope, applied.kind),
        rule,
    }
}

/// The summary's `quotas` object (docs/policy.md, "Quotas"; docs/audit.md).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuotaReport {
    /// `redis://host:port` (never a password) or `node`.
    pub store: String,
    pub fleet_wide: bool,
    pub on_failure: StoreFailure,
    /// Attempts admitted and refused, by `Tollgate-Error`.
    pub admitted: u64,
    pub refused: RefusedCounts,
    /// Exchanges admitted and then refused (a `Content-Length` over what a byte budget had
    /// left) or cut part-way at a byte budget: not in `refused`, which counts attempts.
    pub cut: u64,
    #[serde(flatten)]
    pub store_stats: store::StoreStats,
    /// Every quota of the policy, in policy order, with what remained at this execution's
    /// last check of it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_named_by_scope_and_host_never_by_position() {
        let destination = QuotaScope::Destination {
            index: 3,
            host: "*.openai.com".into(),
        };
        assert_eq!(
            bucket_name(&QuotaScope::Team, QuotaKind::RequestsPerMinute),
            "rpm:team"
        );
        assert_eq!(
            bucket_name(&QuotaScope::Team, QuotaKind::RequestsPerDay),
            "rpd:team"
        );
        assert_eq!(
            bucket_name(&destination, QuotaKind::BytesPerDay),
            "bpd:d:*.openai.com"
        );
        let rate = AppliedQuota {
            scope: QuotaScope::Team,
            kind: QuotaKind::RequestsPerMinute,
            limit: 600,
            burst: Some(60),
        };
        assert_eq!(
            bucket(&rate, 5000).rule,
            BucketRule::Rate {
                limit: 600,
                period: MINUTE,
                burst: 60
            }
        );
        let bytes = AppliedQuota {
            kind: QuotaKind::BytesPerDay,
            burst: None,
            ..rate
        };
        // Bytes cost the request body at admission; requests cost one.
        assert_eq!(
            bucket(&bytes, 5000).rule,
            BucketRule::Daily {
                limit: 600,
                cost: 5000
            }
        );
    }
}
