//! Per-execution limits, each at exactly the limit and one over, plus timeouts (clamping
//! both ends, a slow-drip upstream) and the slow-client protections.

mod proxy_support;

use bytes::Bytes;
use proxy_support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::proxy::{Proxy, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_at_the_limit_and_one_over() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy =
        start(Proxy::builder(policy_with("limits:\n  max_requests: 3\n")).transport(up.remap()));
    for _ in 0..3 {
        assert_eq!(curl(proxy.addr, &["http://api.test/"]).await.status, 200);
    }
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(got.status, 429);
    assert!(got
        .headers
        .contains("tollgate-error: request_limit_exceeded"));
    assert!(got.body_text().contains("max_requests"));
    assert_eq!(up.count(), 3);
    let stats = proxy.handle.shutdown().await;
    assert_eq!((stats.requests, stats.denied), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_bytes_at_the_limit_and_one_over_with_both_framings() {
    let up = upstream(|seen, _| ok(&seen.body.len().to_string())).await;
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_requests: 100\n  max_request_bytes: 1000\n",
        ))
        .transport(up.remap()),
    );
    for chunked in [false, true] {
        for (size, want) in [(1000, 200), (1001, 413)] {
            let payload = "b".repeat(size);
            let mut args = vec!["--data-binary", payload.as_str()];
            if chunked {
                args.extend(["-H", "Transfer-Encoding: chunked"]);
            }
            args.push("http://api.test/upload");
            let got = curl(proxy.addr, &args).await;
            assert_eq!(got.status, want, "{size} chunked={chunked}: {got:?}");
            if want == 413 {
                assert!(got.headers.contains("tollgate-error: request_too_large"));
            } else {
                assert_eq!(got.body_text(), "1000");
            }
        }
    }
    assert_eq!(up.count(), 2, "refused bodies never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_response_bytes_declared_and_streamed() {
    let up = upstream(|seen, _| match seen.uri.as_str() {
        "/declared/1000" => ok(&"r".repeat(1000)),
        "/declared/1001" => ok(&"r".repeat(1001)),
        "/streamed/1000" => Drip::sized(1000, 100).response(),
        _ => Drip::sized(1001, 100).response(),
    })
    .await;
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_requests: 100\n  max_response_bytes: 1000\n",
        ))
        .transport(up.remap()),
    );
    let got = curl(proxy.addr, &["http://api.test/declared/1000"]).await;
    assert_eq!((got.status, got.body.len()), (200, 1000));
    let got = curl(proxy.addr, &["http://api.test/declared/1001"]).await;
    assert_eq!(got.status, 502);
    assert!(got.headers.contains("tollgate-error: response_too_large"));
    let got = curl(proxy.addr, &["http://api.test/streamed/1000"]).await;
    assert_eq!((got.code, got.status, got.body.len()), (0, 200, 1000));
    // No length and over the limit: buffered up to the limit (it is small), so the client
    // gets the refusal instead of a body cut short. (Limits too big to buffer stream and
    // abort: see proxy_framing.rs.)
    let got = curl(proxy.addr, &["http://api.test/streamed/1001"]).await;
    assert_eq!((got.code, got.status), (0, 502), "{got:?}");
    assert!(got.headers.contains("tollgate-error: response_too_large"));
    let records = proxy.records();
    assert_eq!(records[1]["error"], "response_too_large");
    assert_eq!(records[2]["bytes_down"], 1000);
    assert_eq!(records[3]["error"], "response_too_large");
}

fn slow_policy() -> std::sync::Arc<tollgate_policy::Policy> {
    policy_with("limits:\n  max_requests: 100\n  default_timeout: 1s\n  max_timeout: 2s\nretry:\n  attempts: 1\n")
}

async fn delayed(delay_ms: u64) -> Upstream {
    upstream_async(move |seen, _| async move {
        let wait = seen.uri.trim_start_matches('/').parse().unwrap_or(delay_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        ok("late")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_timeout_gives_504() {
    let up = delayed(0).await;
    let proxy = start(Proxy::builder(slow_policy()).transport(up.remap()));
    let started = Instant::now();
    let got = curl(proxy.addr, &["http://api.test/1500"]).await;
    assert_eq!(got.status, 504, "{got:?}");
    assert!(got.headers.contains("tollgate-error: timeout"));
    let took = started.elapsed();
    // A 504 at all means it fired before the 1.5 s answer.
    assert!(took >= Duration::from_millis(950), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_timeout_is_clamped_at_max_timeout() {
    let up = delayed(0).await;
    let proxy = start(Proxy::builder(slow_policy()).transport(up.remap()));
    // Asked for 3 s, allowed 2 s: a 1.5 s answer arrives.
    let got = curl(
        proxy.addr,
        &["-H", "Tollgate-Timeout: 3", "http://api.test/1500"],
    )
    .await;
    assert_eq!((got.status, got.body_text().as_str()), (200, "late"));
    // Asked for 10 s, clamped to 2 s: a 2.6 s answer does not.
    let started = Instant::now();
    let got = curl(
        proxy.addr,
        &["-H", "Tollgate-Timeout: 10", "http://api.test/2600"],
    )
    .await;
    assert_eq!(got.status, 504);
    let took = started.elapsed();
    // A 504 at all means it fired before the 2.6 s answer, far under the 10 s asked for.
    assert!(took >= Duration::from_millis(1950), "{took:?}");
    assert!(up
        .seen()
        .iter()
        .all(|s| !s.headers.contains_key("tollgate-timeout")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_timeout_is_clamped_at_one_second() {
    let up = delayed(0).await;
    let proxy = start(Proxy::builder(slow_policy()).transport(up.remap()));
    // Asked for 0.1 s, raised to 1 s: a 0.5 s answer arrives.
    let got = curl(
        proxy.addr,
        &["-H", "Tollgate-Timeout: 0.1", "http://api.test/500"],
    )
    .await;
    assert_eq!((got.status, got.body_text().as_str()), (200, "late"));
    let got = curl(
        proxy.addr,
        &["-H", "Tollgate-Timeout: soon", "http://api.test/0"],
    )
    .await;
    assert_eq!(got.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_upstream_is_cut_at_the_deadline() {
    let up = upstream(|_, _| {
        let chunks = (0..20).map(|_| Bytes::from_static(b"d")).collect();
        Drip::new(chunks, Duration::from_millis(200)).response()
    })
    .await;
    let proxy = start(Proxy::builder(slow_policy()).transport(up.remap()));
    // A body without a length under a small limit is read whole before the head is sent,
    // so the deadline is a 504 rather than a body cut short.
    let got = curl(proxy.addr, &["http://api.test/drip"]).await;
    assert_eq!((got.code, got.status), (0, 504), "{got:?}");
    assert!(got.headers.contains("tollgate-error: timeout"));
    let records = proxy.records();
    assert_eq!(records.last().unwrap()["error"], "timeout");
}

fn quick_settings() -> Settings {
    Settings {
        header_read_timeout: Duration::from_millis(400),
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_headers_is_disconnected() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy = start(
        Proxy::builder(roomy())
            .transport(up.remap())
            .settings(quick_settings()),
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the connection must be closed");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy = start(
        Proxy::builder(roomy())
            .transport(up.remap())
            .settings(quick_settings()),
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let rest = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await;
    assert!(
        matches!(rest, Ok(Ok(0)) | Ok(Err(_))),
        "closed while idle: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_body_gets_408() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy = start(Proxy::builder(slow_policy()).transport(up.remap()));
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST http://api.test/ HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\nonly ten!!")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("client_timeout"));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_with_503() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_requests: 100\n  max_connections: 2\n",
        ))
        .transport(up.remap()),
    );
    let first = TcpStream::connect(proxy.addr).await.unwrap();
    let second = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(
        proxy.addr,
        b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("too_many_connections") && answer.contains("max_connections"));
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(got.status, 200);
}

/// A HEAD answer has no body, whatever Content-Length it announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_not_refused_for_the_size_it_announces() {
    let up = upstream(|_, _| ok(&"r".repeat(5000))).await;
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_requests: 100\n  max_response_bytes: 2000\n",
        ))
        .transport(up.remap()),
    );
    let got = curl(proxy.addr, &["-I", "http://api.test/big"]).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.headers.contains("content-length: 5000"), "{got:?}");
    let got = curl(proxy.addr, &["http://api.test/big"]).await;
    assert_eq!(
        got.status, 502,
        "a GET of the same resource is over the limit"
    );
}
