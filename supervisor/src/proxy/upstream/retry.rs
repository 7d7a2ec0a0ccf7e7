//! When and how long to wait before another upstream attempt: exponential backoff with full
//! jitter, or the upstream's `Retry-After` (seconds or HTTP-date), clamped to
//! `[1s, retry.max_wait]`.

use http::{header, HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};
use tollgate_policy::model::Retry;

/// Whether a response status asks for another attempt under this policy.
pub(crate) fn retryable_status(retry: &Retry, status: StatusCode) -> bool {
    retry.on_status.contains(&status.as_u16())
}

/// The wait before attempt `next` (2 for the first retry): `Retry-After` when the upstream
/// sent one, else a uniformly random wait in `[0, min(max_wait, initial_wait · 2^(next-2))]`.
pub(crate) fn wait_before(retry: &Retry, next: u32, headers: Option<&HeaderMap>) -> Duration {
    if let Some(asked) = headers.and_then(retry_after) {
        return clamp_retry_after(retry, asked);
    }
    let exponent = next.saturating_sub(2).min(30);
    let ceiling = retry
        .initial_wait
        .saturating_mul(1u32 << exponent)
        .min(retry.max_wait);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ceiling_ms))
}

/// `Retry-After` clamped to at least one second and at most `max_wait` (the upper bound wins
/// when a policy sets `max_wait` under one second).
pub(crate) fn clamp_retry_after(retry: &Retry, asked: Duration) -> Duration {
    asked.max(Duration::from_secs(1)).min(retry.max_wait)
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (a date in the past is zero).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> Retry {
        Retry {
            attempts: 3,
            initial_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(10),
            on_status: vec![429, 502, 503, 504],
        }
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let retry = policy();
        for _ in 0..200 {
            assert!(wait_before(&retry, 2, None) <= Duration::from_millis(100));
            assert!(wait_before(&retry, 4, None) <= Duration::from_millis(400));
            assert!(wait_before(&retry, 30, None) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn retry_after_both_forms_are_clamped() {
        let retry = policy();
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(
            wait_before(&retry, 2, Some(&headers)),
            Duration::from_secs(1)
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            wait_before(&retry, 2, Some(&headers)),
            Duration::from_secs(3)
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(
            wait_before(&retry, 2, Some(&headers)),
            Duration::from_secs(10)
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&later).expect("date"),
        );
        let wait = wait_before(&retry, 2, Some(&headers));
        assert!(wait >= Duration::from_secs(3) && wait <= Duration::from_secs(5));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(50));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&past).expect("date"),
        );
        assert_eq!(
            wait_before(&retry, 2, Some(&headers)),
            Duration::from_secs(1)
        );
    }
}
