//! Retries: each retryable status, refused and reset connections, connect timeouts,
//! `Retry-After` in both forms, attempts running out, the budget running out mid-retries.

mod proxy_support;

use http::Response;
use proxy_support::*;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tollgate::proxy::body;
use tollgate::proxy::testing::{MockDial, MockTransport};
use tollgate::proxy::{Proxy, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retryable_status_is_retried_until_success() {
    for code in [429u16, 502, 503, 504] {
        let up = upstream(move |_, n| {
            if n < 2 {
                status(code, "again")
            } else {
                ok("done")
            }
        })
        .await;
        let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
        let got = curl(proxy.addr, &["http://api.test/r"]).await;
        assert_eq!(
            (got.status, got.body_text().as_str()),
            (200, "done"),
            "{code}"
        );
        assert_eq!(up.count(), 3);
        let records = proxy.records();
        let outcomes: Vec<_> = records
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["retrying", "retrying", "complete"], "{code}");
        let attempts: Vec<_> = records
            .iter()
            .map(|r| r["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
        assert_eq!(records[0]["status"], code);
        let stats = proxy.handle.shutdown().await;
        assert_eq!((stats.requests, stats.retried), (3, 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_attempts_run_out_the_last_response_is_returned() {
    let up = upstream(|_, n| status(503, &format!("busy {n}"))).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!((got.status, got.body_text().as_str()), (503, "busy 2"));
    assert!(!got.headers.contains("tollgate-error"));
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_statuses_are_not_retried() {
    let up = upstream(|_, _| status(500, "broken")).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    assert_eq!(curl(proxy.addr, &["http://api.test/"]).await.status, 500);
    assert_eq!(up.count(), 1);
}

fn mock(script: impl Fn(usize) -> MockDial + Send + Sync + 'static) -> Arc<MockTransport> {
    Arc::new(
        MockTransport::new(move |n, _| script(n))
            .with_http(|_| async { Response::new(body::full("reached")) }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reset_and_timed_out_connections_are_retried() {
    for (name, failing) in [
        ("refused", (|| MockDial::Refuse) as fn() -> MockDial),
        ("reset", || MockDial::Close),
        ("connect timeout", || MockDial::Hang),
    ] {
        let transport = mock(move |n| if n < 2 { failing() } else { MockDial::Http });
        let settings = Settings {
            connect_timeout: Duration::from_millis(100),
            ..Settings::default()
        };
        let proxy = start(
            Proxy::builder(roomy())
                .shared_transport(transport.clone())
                .settings(settings),
        );
        let got = curl(proxy.addr, &["http://api.test/"]).await;
        assert_eq!(
            (got.status, got.body_text().as_str()),
            (200, "reached"),
            "{name}"
        );
        assert_eq!(transport.dials().len(), 3, "{name}");
        assert!(transport
            .dials()
            .iter()
            .all(|a| a.to_string() == format!("{PINNED}:80")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_on_every_attempt_is_a_connect_error() {
    let transport = mock(|_| MockDial::Refuse);
    let proxy = start(Proxy::builder(roomy()).shared_transport(transport.clone()));
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(got.status, 502);
    assert!(got.headers.contains("tollgate-error: connect_error"));
    assert_eq!(transport.dials().len(), 3);
    let records = proxy.records();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["error"], "connect_error");
    assert_eq!(records[2]["decision"], "allow");
}

fn retry_policy(max_wait: &str) -> Arc<tollgate_policy::Policy> {
    policy_with(&format!(
        "retry:\n  attempts: 2\n  initial_wait: 10ms\n  max_wait: {max_wait}\nlimits:\n  max_requests: 100\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_is_honoured() {
    let up = upstream(|_, n| {
        if n == 0 {
            let mut response = status(503, "later");
            response
                .headers_mut()
                .insert("retry-after", "1".parse().unwrap());
            response
        } else {
            ok("now")
        }
    })
    .await;
    let proxy = start(Proxy::builder(retry_policy("3s")).transport(up.remap()));
    let started = Instant::now();
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    let took = started.elapsed();
    assert_eq!(got.body_text(), "now");
    assert!(
        took >= Duration::from_millis(980) && took < Duration::from_millis(1800),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    let up = upstream(|_, n| {
        if n == 0 {
            let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
            let mut response = status(429, "later");
            response
                .headers_mut()
                .insert("retry-after", when.parse().unwrap());
            response
        } else {
            ok("now")
        }
    })
    .await;
    let proxy = start(Proxy::builder(retry_policy("5s")).transport(up.remap()));
    let started = Instant::now();
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    let took = started.elapsed();
    assert_eq!(got.body_text(), "now");
    // The date has one-second resolution: between one and two seconds from now.
    assert!(
        took >= Duration::from_millis(980) && took < Duration::from_millis(2600),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_clamped_to_max_wait() {
    let up = upstream(|_, n| {
        if n == 0 {
            let mut response = status(503, "much later");
            response
                .headers_mut()
                .insert("retry-after", "3600".parse().unwrap());
            response
        } else {
            ok("now")
        }
    })
    .await;
    let proxy = start(Proxy::builder(retry_policy("300ms")).transport(up.remap()));
    let started = Instant::now();
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(got.body_text(), "now");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_running_out_mid_retries_stops_them() {
    let up = upstream(|_, _| status(503, "busy")).await;
    let proxy = start(
        Proxy::builder(policy_with(&format!(
            "{FAST_RETRY}limits:\n  max_requests: 2\n"
        )))
        .transport(up.remap()),
    );
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(got.status, 429);
    assert!(got
        .headers
        .contains("tollgate-error: request_limit_exceeded"));
    assert_eq!(up.count(), 2);
    let records = proxy.records();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["reason"], "max_requests");
    assert_eq!(records[2]["attempt"], 3);
}
