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
    assert_eq!(proxy.records()[0]["retry_wait_ms"], 1000);
    assert!(took >= Duration::from_millis(1000), "{took:?}");
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
    // The date has one-second resolution: between one and two seconds from when it was made.
    let waited = proxy.records()[0]["retry_wait_ms"].as_u64().unwrap();
    assert!((1000..=2000).contains(&waited), "{waited}");
    assert!(took >= Duration::from_millis(waited), "{took:?}");
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
    assert_eq!(proxy.records()[0]["retry_wait_ms"], 300);
    assert!(took >= Duration::from_millis(300), "{took:?}");
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

/// An upstream that answers the first request on its first connection with keep-alive, then
/// reads the second request on that connection and closes without answering; every later
/// connection answers normally. Returns its address and the number of requests it read.
async fn drops_the_second_request_on_a_kept_alive_connection() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        let mut first_connection = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let drop_second = std::mem::replace(&mut first_connection, false);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut answered = 0;
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if drop_second && answered == 1 {
                        return; // read it, close without an answer
                    }
                    let reply =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                    answered += 1;
                }
            });
        }
    });
    (address, requests)
}

/// A request that reached the upstream on a reused connection and got no answer is an
/// attempt: counted against the budget, audited, and retried like any reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_a_reused_connection_is_a_counted_and_audited_attempt() {
    let (address, requests) = drops_the_second_request_on_a_kept_alive_connection().await;
    let pinned: std::net::IpAddr = PINNED.parse().unwrap();
    let proxy = start(
        Proxy::builder(policy_with(&format!(
            "limits:\n  max_requests: 100\n{FAST_RETRY}"
        )))
        .transport(tollgate::proxy::testing::RemapTransport::new([(
            pinned, address,
        )])),
    );
    assert_eq!(
        curl(proxy.addr, &["http://api.test/warm"]).await.status,
        200
    );
    assert_eq!(
        curl(proxy.addr, &["http://api.test/pooled"]).await.status,
        200
    );
    let upstream_saw = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(upstream_saw, 3, "warm, pooled (dropped), pooled (retried)");
    let records = proxy.records();
    let pooled: Vec<_> = records.iter().filter(|r| r["path"] == "/pooled").collect();
    assert_eq!(pooled.len(), 2, "one record per attempt: {records:#?}");
    let stats = proxy.handle.shutdown().await;
    assert_eq!(
        stats.requests as usize, upstream_saw,
        "every attempt counted"
    );
}
