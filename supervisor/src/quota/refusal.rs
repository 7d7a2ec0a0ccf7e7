//! What a sandbox is told when a team quota refuses an attempt: which quota, its limit, and
//! when to try again, in one sentence (and as the fields of the audit record's `quota`).

use super::store::Answered;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_policy::quotas::{AppliedQuota, QuotaKind, QuotaScope};

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

/// An attempt a quota refused (or an exchange a byte budget cut).
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
    /// What remained of the quota when it refused (0 for an empty bucket).
    pub remaining: Option<u64>,
    /// When the quota admits again, as the store computed it (`None` for
    /// [`RefusalKind::Unavailable`]); [`QuotaRefusal::retry_after_secs`] is the header's.
    pub retry_after: Option<Duration>,
    /// Which store answered (or failed to).
    pub store: Answered,
    /// The sentence the sandbox gets: names the quota, its limit and when to retry.
    pub message: String,
}

impl QuotaRefusal {
    /// `quota` had no room for this attempt; it admits again after `retry_after`.
    pub(super) fn refused(
        applied: &AppliedQuota,
        remaining: Option<u64>,
        cost: u64,
        retry_after: Duration,
        store: Answered,
    ) -> QuotaRefusal {
        let kind = match applied.kind {
            QuotaKind::RequestsPerMinute => RefusalKind::RateLimited,
            QuotaKind::RequestsPerDay | QuotaKind::BytesPerDay => RefusalKind::BudgetExhausted,
        };
        let room = match applied.kind {
            QuotaKind::BytesPerDay if cost > 0 => {
                format!("has no room left for this request's {cost}-byte body")
            }
            _ => "is used up".to_owned(),
        };
        let message = format!(
            "{} ({}) {room}; retry after {}",
            quota_name(applied.kind, &applied.scope),
            rate_words(applied.kind, applied.limit),
            wait_words(retry_after, applied.kind != QuotaKind::RequestsPerMinute),
        );
        QuotaRefusal {
            kind,
            quota: Some(applied.kind),
            scope: Some(applied.scope.label().to_owned()),
            rule: Some(applied.scope.rule(applied.kind)),
            limit: Some(applied.limit),
            remaining,
            retry_after: Some(retry_after),
            store,
            message,
        }
    }

    /// A byte budget has no room for the rest of an admitted exchange (a response whose
    /// `Content-Length` is over what remains, or bytes flowing past it): it is refused or cut.
    /// `remaining`: what the budget still had for this exchange (0 once bytes passed it).
    pub(super) fn cut(applied: &AppliedQuota, remaining: u64, store: Answered) -> QuotaRefusal {
        let retry_after = until_next_utc_day(SystemTime::now());
        let message = format!(
            "{} ({}) has no room left for this exchange's bytes; retry after {}",
            quota_name(applied.kind, &applied.scope),
            rate_words(applied.kind, applied.limit),
            wait_words(retry_after, true),
        );
        QuotaRefusal {
            kind: RefusalKind::BudgetExhausted,
            quota: Some(applied.kind),
            scope: Some(applied.scope.label().to_owned()),
            rule: Some(applied.scope.rule(applied.kind)),
            limit: Some(applied.limit),
            remaining: Some(remaining),
            retry_after: Some(retry_after),
            store,
            message,
        }
    }

    /// The store could not be asked; `cause` names it (never with a password) and why.
    pub(super) fn unavailable(cause: &str, store: Answered) -> QuotaRefusal {
        QuotaRefusal {
            kind: RefusalKind::Unavailable,
            quota: None,
            scope: None,
            rule: None,
            limit: None,
            remaining: None,
            retry_after: None,
            store,
            message: format!(
                "the team's quotas could not be checked ({cause}), and a quota that cannot be \
                 checked is not granted{}; try again shortly",
                // Only a node that chose it gets here with Redis down; the node's own store
                // failing has no fallback to choose.
                if store == Answered::Redis {
                    " (quota_store_failure: deny)"
                } else {
                    ""
                }
            ),
        }
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1 (`None`: send none).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(whole_seconds)
    }
}

/// `the team's requests_per_minute quota` or `... quota for api.openai.com`.
fn quota_name(kind: QuotaKind, scope: &QuotaScope) -> String {
    match scope {
        QuotaScope::Team => format!("the team's {} quota", kind.as_str()),
        QuotaScope::Destination { host, .. } => {
            format!("the team's {} quota for {host}", kind.as_str())
        }
    }
}

/// `60 a minute`, `1000 a day`, `1073741824 bytes a day`.
fn rate_words(kind: QuotaKind, limit: u64) -> String {
    match kind {
        QuotaKind::RequestsPerMinute => format!("{limit} a minute"),
        QuotaKind::RequestsPerDay => format!("{limit} a day"),
        QuotaKind::BytesPerDay => format!("{limit} bytes a day"),
    }
}

/// `2 s`, `14 min`, `5 h 3 min`; a day budget adds when its day ends.
fn wait_words(wait: Duration, daily: bool) -> String {
    let seconds = whole_seconds(wait);
    let words = if seconds < 120 {
        format!("{seconds} s")
    } else if seconds < 7200 {
        format!("{} min", seconds.div_ceil(60))
    } else {
        format!("{} h {} min", seconds / 3600, (seconds % 3600).div_ceil(60))
    };
    if daily {
        format!("{words} (the budget is renewed at 00:00 UTC)")
    } else {
        words
    }
}

/// Whole seconds, rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// How long until the next UTC midnight after `now`.
pub(super) fn until_next_utc_day(now: SystemTime) -> Duration {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let day = Duration::from_secs(86_400);
    let into_day = Duration::from_nanos((since_epoch.as_nanos() % day.as_nanos()) as u64);
    day - into_day
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(kind: QuotaKind, scope: QuotaScope, limit: u64) -> AppliedQuota {
        AppliedQuota {
            scope,
            kind,
            limit,
            burst: None,
        }
    }

    #[test]
    fn a_refusal_names_the_quota_its_limit_and_when_to_retry() {
        let destination = QuotaScope::Destination {
            index: 0,
            host: "api.openai.com".into(),
        };
        let rate = applied(QuotaKind::RequestsPerMinute, destination, 60);
        let refusal = QuotaRefusal::refused(
            &rate,
            Some(0),
            1,
            Duration::from_millis(1500),
            Answered::Redis,
        );
        assert_eq!(
            refusal.message,
            "the team's requests_per_minute quota for api.openai.com (60 a minute) is used up; \
             retry after 2 s"
        );
        assert_eq!(refusal.kind, RefusalKind::RateLimited);
        assert_eq!(
            refusal.rule.as_deref(),
            Some("quotas.destinations[0].requests_per_minute")
        );
        assert_eq!(refusal.retry_after_secs(), Some(2));

        let day = applied(QuotaKind::RequestsPerDay, QuotaScope::Team, 1000);
        let refusal = QuotaRefusal::refused(
            &day,
            Some(0),
            1,
            Duration::from_secs(5 * 3600 + 61),
            Answered::Node,
        );
        assert_eq!(
            refusal.message,
            "the team's requests_per_day quota (1000 a day) is used up; retry after 5 h 2 min \
             (the budget is renewed at 00:00 UTC)"
        );
        assert_eq!(refusal.kind, RefusalKind::BudgetExhausted);

        let bytes = applied(QuotaKind::BytesPerDay, QuotaScope::Team, 4096);
        let refusal = QuotaRefusal::refused(
            &bytes,
            Some(10),
            100,
            Duration::from_secs(90),
            Answered::Node,
        );
        assert!(
            refusal
                .message
                .contains("(4096 bytes a day) has no room left for this request's 100-byte body"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        for (wait, secs) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_999, 60)] {
            assert_eq!(
                whole_seconds(Duration::from_millis(wait)),
                secs,
                "{wait} ms"
            );
        }
        let unavailable = QuotaRefusal::unavailable("redis://127.0.0.1:1 refused", Answered::Redis);
        assert_eq!(unavailable.retry_after_secs(), None);
        assert!(unavailable.message.contains("redis://127.0.0.1:1 refused"));
    }

    #[test]
    fn the_next_utc_day_starts_at_midnight() {
        let midnight = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        assert_eq!(until_next_utc_day(midnight), Duration::from_secs(86_400));
        assert_eq!(
            until_next_utc_day(midnight + Duration::from_secs(86_399)),
            Duration::from_secs(1)
        );
        assert_eq!(
            until_next_utc_day(midnight + Duration::from_millis(1500)),
            Duration::from_millis(86_400_000 - 1500)
        );
    }
}
