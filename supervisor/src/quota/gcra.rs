//! The arithmetic of the quota store: GCRA rate buckets and UTC day counters, in integer
//! microseconds, with no clock and no I/O of its own.
//!
//! Both stores count with these formulas: the node store calls them directly, and the Redis
//! script (`quota.lua`) repeats them line for line, so a quota means the same thing on every
//! node whichever store answers. Change one, change the other (the store's integration test,
//! `tests/tests/quota_store.rs`, runs the same sequences through both).
//!
//! # Rate buckets (GCRA)
//! A rate of `limit` per `period` with `burst` is kept as one number per bucket, its
//! theoretical arrival time `TAT` (absent: `TAT <= now`), with
//!
//! - `T = ceil(period / limit)`: the emission interval (rounded up, so the bucket is never
//!   more generous than the rate),
//! - `τ = T · (burst − 1)`: the tolerance, so an idle bucket admits `burst` at once.
//!
//! An attempt at `now`, with `tat = max(TAT, now)`:
//! - is admitted iff `tat − now ≤ τ`; then `TAT := tat + T`, and the key expires when that
//!   time has passed (an expired key and one whose `TAT <= now` mean the same: idle);
//! - is refused otherwise, with `retry_after = tat − τ − now` (when it would be admitted).
//!
//! `remaining = floor((now + τ − tat) / T) + 1` when `tat − now ≤ τ`, else 0: the attempts
//! the bucket would admit at once now (`burst` when idle, 0 when empty).
//!
//! Over any window of length `W`, a bucket admits at most `burst + floor(W / T)` attempts
//! (the property test below checks this against a brute-force replay).
//!
//! # Day counters
//! The day is the UTC day of the store's clock, `day = floor(now / 86 400 s)`, written
//! `YYYYMMDD` in key names. A take of `cost` against `limit` with `count` so far is refused
//! iff `count ≥ limit` or `count + cost > limit` (so a cost of 0 checks that something is
//! left); `retry_after` is the time until the next UTC midnight, `(day + 1) · 86 400 s − now`.
//! A charge adds bytes that already flowed and never refuses; so does a take's `carry`
//! bucket, before the take decides (the bytes of an execution's finished exchanges).
//! `remaining = limit − count`, at least 0. A day's key expires at the end of the
//! following day.

use std::time::Duration;

/// Microseconds in one UTC day.
pub const DAY_US: u64 = 86_400 * 1_000_000;

/// A GCRA bucket's two constants, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// `T`: one attempt's share of the period.
    pub interval_us: u64,
    /// `τ = T · (burst − 1)`.
    pub tolerance_us: u64,
}

impl Gcra {
    /// `limit` attempts a `period`, `burst` at once (a limit or burst of 0 is treated as 1:
    /// the policy refuses 0, and the store must not divide by it).
    pub fn new(limit: u64, period: Duration, burst: u64) -> Gcra {
        let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        let interval_us = period_us.div_ceil(limit.max(1)).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst.max(1) - 1),
        }
    }

    /// An attempt at `now` against a bucket whose arrival time is `tat` (`None`: idle):
    /// `Ok(new TAT)` when admitted, `Err(retry_after_us)` when refused.
    pub fn take(&self, tat: Option<u64>, now: u64) -> Result<u64, u64> {
        let tat = tat.unwrap_or(now).max(now);
        if tat - now <= self.tolerance_us {
            Ok(tat.saturating_add(self.interval_us))
        } else {
            Err(tat - self.tolerance_us - now)
        }
    }

    /// The attempts the bucket would admit at once at `now`.
    pub fn remaining(&self, tat: Option<u64>, now: u64) -> u64 {
        let tat = tat.unwrap_or(now).max(now);
        if tat - now <= self.tolerance_us {
            (now + self.tolerance_us - tat) / self.interval_us + 1
        } else {
            0
        }
    }
}

/// A day counter's take: `Ok(new count)`, or `Err(())` when `cost` does not fit.
pub fn daily_take(count: u64, limit: u64, cost: u64) -> Result<u64, ()> {
    match count.checked_add(cost) {
        Some(total) if count < limit && total <= limit => Ok(total),
        _ => Err(()),
    }
}

/// What remains of a day budget.
pub fn daily_remaining(count: u64, limit: u64) -> u64 {
    limit.saturating_sub(count)
}

/// The UTC day number (days since 1970-01-01) of `now_us`.
pub fn day_number(now_us: u64) -> u64 {
    now_us / DAY_US
}

/// Microseconds from `now_us` to the next UTC midnight (a whole day at midnight itself).
pub fn until_next_day(now_us: u64) -> u64 {
    (day_number(now_us) + 1) * DAY_US - now_us
}

/// `YYYYMMDD` of UTC day `day` (days since 1970-01-01), by Howard Hinnant's
/// `civil_from_days`; the script computes the same.
pub fn day_label(day: u64) -> String {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// `Duration` of a count of microseconds.
pub fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000;

    fn per_minute(limit: u64, burst: u64) -> Gcra {
        Gcra::new(limit, Duration::from_secs(60), burst)
    }

    #[test]
    fn an_idle_bucket_admits_its_burst_at_once_then_one_per_interval() {
        let bucket = per_minute(60, 10);
        assert_eq!(bucket.interval_us, SECOND);
        assert_eq!(bucket.tolerance_us, 9 * SECOND);
        let now = 1_000 * SECOND;
        assert_eq!(bucket.remaining(None, now), 10);
        let mut tat = None;
        for left in (0..10).rev() {
            tat = Some(bucket.take(tat, now).expect("within the burst"));
            assert_eq!(bucket.remaining(tat, now), left);
        }
        // The eleventh waits exactly one interval, and is admitted then.
        assert_eq!(bucket.take(tat, now), Err(SECOND));
        assert_eq!(bucket.take(tat, now + SECOND - 1), Err(1));
        assert!(bucket.take(tat, now + SECOND).is_ok());
        // After the whole tolerance has passed, the bucket is full again.
        assert_eq!(bucket.remaining(tat, now + 10 * SECOND), 10);
        assert_eq!(bucket.remaining(tat, now + 100 * SECOND), 10);
    }

    #[test]
    fn a_burst_of_one_spaces_every_attempt() {
        let bucket = per_minute(2, 1);
        assert_eq!((bucket.interval_us, bucket.tolerance_us), (30 * SECOND, 0));
        let tat = bucket.take(None, 0).unwrap();
        assert_eq!(bucket.remaining(Some(tat), 0), 0);
        assert_eq!(bucket.take(Some(tat), 10 * SECOND), Err(20 * SECOND));
    }

    #[test]
    fn an_interval_that_does_not_divide_is_rounded_towards_less() {
        let bucket = per_minute(7, 1);
        assert_eq!(bucket.interval_us, 8_571_429);
        assert!(bucket.interval_us * 7 >= 60 * SECOND);
        // Zero limits and bursts (refused by the policy) do not divide by zero.
        let degenerate = Gcra::new(0, Duration::ZERO, 0);
        assert_eq!(degenerate.interval_us, 1);
        assert_eq!(degenerate.tolerance_us, 0);
    }

    #[test]
    fn a_day_budget_refuses_what_does_not_fit_and_zero_when_spent() {
        assert_eq!(daily_take(0, 10, 10), Ok(10));
        assert_eq!(daily_take(5, 10, 6), Err(()));
        assert_eq!(daily_take(9, 10, 0), Ok(9));
        assert_eq!(daily_take(10, 10, 0), Err(()));
        assert_eq!(daily_take(u64::MAX, 10, 1), Err(()));
        assert_eq!(daily_remaining(12, 10), 0);
        assert_eq!(daily_remaining(3, 10), 7);
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_label(0), "19700101");
        assert_eq!(day_label(59), "19700301");
        // 2000-02-29 (a leap day of a century divisible by 400), 2026-12-01, 2100-03-01.
        assert_eq!(day_label(11_016), "20000229");
        assert_eq!(day_label(20_788), "20261201");
        assert_eq!(day_label(47_541), "21000301");
        let noon = 20_788 * DAY_US + DAY_US / 2;
        assert_eq!(day_number(noon), 20_788);
        assert_eq!(until_next_day(noon), DAY_US / 2);
        assert_eq!(until_next_day(20_789 * DAY_US), DAY_US);
        assert_eq!(until_next_day(20_789 * DAY_US - 1), 1);
    }

    /// Replays `gaps` (microseconds between arrivals) through `bucket`; the admitted times.
    fn admitted_times(bucket: Gcra, start: u64, gaps: &[u64]) -> Vec<u64> {
        let mut tat = None;
        let mut now = start;
        let mut admitted = Vec::new();
        for gap in gaps {
            now += gap;
            if let Ok(next) = bucket.take(tat, now) {
                tat = Some(next);
                admitted.push(now);
            }
        }
        admitted
    }

    proptest! {
        /// Over any arrival sequence, no window of length W holds more than
        /// burst + W / T admitted attempts: checked by brute force over every window that
        /// starts at an admitted attempt (the windows that hold the most).
        #[test]
        fn no_window_admits_more_than_burst_plus_its_share(
            limit in 1u64..200,
            burst in 1u64..30,
            gaps in prop::collection::vec(0u64..3 * SECOND, 1..400),
            window_s in 1u64..120,
        ) {
            let bucket = per_minute(limit, burst);
            let admitted = admitted_times(bucket, 5 * SECOND, &gaps);
            let window = window_s * SECOND;
            let bound = burst + window / bucket.interval_us;
            for (i, start) in admitted.iter().enumerate() {
                let inside = admitted[i..].iter().take_while(|t| **t < start + window).count();
                prop_assert!(inside as u64 <= bound,
                    "{inside} admitted in {window_s}s from {start} (bound {bound})");
            }
        }

        /// `remaining` says exactly how many attempts at the same instant are admitted, and a
        /// refusal's wait is exactly when the next one is.
        #[test]
        fn remaining_and_retry_after_agree_with_take(
            limit in 1u64..200,
            burst in 1u64..30,
            gaps in prop::collection::vec(0u64..2 * SECOND, 0..60),
        ) {
            let bucket = per_minute(limit, burst);
            let mut tat = None;
            let mut now = 0;
            for gap in gaps {
                now += gap;
                if let Ok(next) = bucket.take(tat, now) { tat = Some(next); }
            }
            let remaining = bucket.remaining(tat, now);
            let mut probe = tat;
            for _ in 0..remaining {
                probe = Some(bucket.take(probe, now).expect("remaining said so"));
            }
            let wait = bucket.take(probe, now).expect_err("remaining said no more");
            prop_assert!(wait > 0);
            prop_assert!(bucket.take(probe, now + wait - 1).is_err());
            prop_assert!(bucket.take(probe, now + wait).is_ok());
        }
    }
}
