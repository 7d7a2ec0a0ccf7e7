//! Team quotas in the proxy, counted in a node store of the test's own (a temporary
//! directory): a refused attempt's 429 with `Retry-After` and its audit record, the
//! execution's budget given back and no `max_denied` count, a retry that waits the quota
//! out, byte budgets cut like `max_response_bytes`, passthrough tunnels counted, the
//! summary's `quotas`, and the standings team Rego rules read.
//!
//! Every upstream is on 127.0.0.1 behind a `RemapTransport`; Redis is the end-to-end
//! suites' (tests/tests/quota_*.rs).

mod proxy_support;

use proxy_support::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::proxy::body;
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::Proxy;
use tollgate::quota::{QuotaEnforcer, QuotaStore, QuotaStoreConfig, StoreFailure};
use tollgate_policy::Policy;

/// A node store directory of its own, removed when the test ends.
struct NodeDir(PathBuf);

impl NodeDir {
    fn new() -> NodeDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        NodeDir(
            std::env::temp_dir().join(format!("tollgate-quota-test-{}-{n}", std::process::id())),
        )
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `api.test` and `other.test`, both pinned to [`PINNED`] (so both reach the test's one
/// upstream), with `extra` at the top level (a `quotas:` section, limits, retries).
fn quota_policy(extra: &str) -> Arc<Policy> {
    policy(&format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {PINNED}
    other.test: {PINNED}
  allow:
    - host: api.test
      ports: [80, 443, 8080]
      tls: passthrough
      allowed_ips: [198.51.100.0/24]
    - host: other.test
      allowed_ips: [198.51.100.0/24]
{extra}"
    ))
}

/// The policy's quotas, counted in a node store under `dir`.
async fn enforcer(policy: &Policy, dir: &NodeDir) -> Arc<QuotaEnforcer> {
    let config = QuotaStoreConfig {
        node_dir: dir.0.clone(),
        ..QuotaStoreConfig::default()
    };
    let store = QuotaStore::open(&config, &policy.team)
        .await
        .expect("the node store opens");
    QuotaEnforcer::new(&policy.team, &policy.quotas, store, StoreFailure::Deny)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_rate_is_a_429_with_retry_after_and_gives_the_budget_back() {
    let dir = NodeDir::new();
    // Three attempts for the execution, one refusal before `denial_limit`: a quota refusal
    // must cost neither. No retries: the default ones would wait the quota out.
    let policy = quota_policy(
        "retry:
  attempts: 1
limits:
  max_requests: 3
  max_denied: 1
quotas:
  destinations:
    - host: api.test
      requests_per_minute: 60
      burst: 2
",
    );
    let quotas = enforcer(&policy, &dir).await;
    let up = upstream(|_, n| ok(&format!("reply {n}"))).await;
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(up.remap())
            .quotas(quotas.clone()),
    );
    for n in 0..2 {
        let got = curl(proxy.addr, &["http://api.test/r"]).await;
        assert_eq!(got.status, 200, "attempt {n}: {}", got.headers);
    }
    let refused = curl(proxy.addr, &["http://api.test/r"]).await;
    assert_eq!(refused.status, 429, "{}", refused.headers);
    assert_eq!(
        header(&refused.headers, "tollgate-error"),
        Some("team_rate_limited")
    );
    let retry_after: u64 = header(&refused.headers, "retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).expect("a JSON body");
    assert_eq!(body["error"], "team_rate_limited");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "the team's requests_per_minute quota for api.test (60 a minute) is used up; retry after"
        ),
        "{message}"
    );
    assert_eq!(up.count(), 2, "the refused attempt was never dialed");
    // The third attempt of the budget is still there, and the refusal did not count
    // against max_denied (which would answer `denial_limit` now).
    let other = curl(proxy.addr, &["http://other.test/r"]).await;
    assert_eq!((other.status, other.body_text()), (200, "reply 2".into()));
    assert_eq!(up.count(), 3);

    let records = proxy.records();
    let refusal = &records[2];
    assert_eq!(refusal["decision"], "allow", "{refusal}");
    assert_eq!(refusal["outcome"], "refused");
    assert_eq!(refusal["error"], "team_rate_limited");
    assert_eq!(
        refusal["reason"],
        "quotas.destinations[0].requests_per_minute"
    );
    assert_eq!(refusal["status"], 429);
    assert_eq!(refusal["address"], serde_json::Value::Null);
    let quota = &refusal["quota"];
    assert_eq!(quota["quota"], "requests_per_minute");
    assert_eq!(quota["scope"], "api.test");
    assert_eq!(quota["limit"], 60);
    assert_eq!(quota["remaining"], 0);
    assert_eq!(quota["store"], "node");
    let wait_ms = quota["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait_ms > 0 && wait_ms <= retry_after * 1000, "{quota}");
    assert!(records[3].get("quota").is_none(), "{}", records[3]);

    let stats = proxy.handle.shutdown().await;
    assert_eq!((stats.requests, stats.denied), (3, 0));
    let report = stats.quotas.expect("the summary's quotas");
    let summary = serde_json::to_value(&report).unwrap();
    assert_eq!(summary["store"], "node", "{summary}");
    assert_eq!(summary["fleet_wide"], false);
    assert_eq!(summary["on_failure"], "deny");
    assert_eq!(summary["admitted"], 2);
    assert_eq!(
        summary["refused"],
        serde_json::json!({"team_rate_limited": 1, "team_budget_exhausted": 0, "quota_unavailable": 0})
    );
    assert_eq!(summary["round_trips"], 0, "no Redis: {summary}");
    assert_eq!(
        summary["quotas"],
        serde_json::json!([{
            "quota": "requests_per_minute", "scope": "api.test",
            "rule": "quotas.destinations[0].requests_per_minute", "limit": 60,
            "remaining": 0, "admitted": 2, "refused": 1,
        }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_the_quota_out_when_the_policy_retries_429_within_max_wait() {
    let dir = NodeDir::new();
    // One a second, one at once: the second request waits about a second for its turn.
    let quotas_section = "quotas:
  requests_per_minute: 60
  burst: 1
";
    let policy = quota_policy(&format!(
        "retry:
  attempts: 2
  initial_wait: 10ms
  max_wait: 5s
  on_status: [429]
{quotas_section}"
    ));
    let quotas = enforcer(&policy, &dir).await;
    let up = upstream(|_, n| ok(&format!("reply {n}"))).await;
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(up.remap())
            .quotas(quotas),
    );
    assert_eq!(curl(proxy.addr, &["http://api.test/"]).await.status, 200);
    let waited = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!((waited.status, waited.body_text()), (200, "reply 1".into()));
    assert_eq!(up.count(), 2);
    let records = proxy.records();
    let outcomes: Vec<_> = records.iter().map(|r| r["outcome"].clone()).collect();
    assert_eq!(
        outcomes,
        ["complete", "retrying", "complete"],
        "{records:?}"
    );
    let retrying = &records[1];
    assert_eq!(retrying["error"], "team_rate_limited");
    assert_eq!(retrying["reason"], "quotas.requests_per_minute");
    assert_eq!(retrying["attempt"], 1);
    assert_eq!(records[2]["attempt"], 2);
    let wait = retrying["retry_wait_ms"].as_u64().expect("retry_wait_ms");
    assert_eq!(
        Some(wait),
        retrying["quota"]["retry_after_ms"].as_u64(),
        "the wait is the quota's: {retrying}"
    );
    let stats = proxy.handle.shutdown().await;
    assert_eq!(stats.requests, 2, "the refused attempt took nothing");

    // With a max_wait under the quota's wait, the refusal is the answer.
    let dir = NodeDir::new();
    let policy = quota_policy(&format!(
        "retry:
  attempts: 3
  initial_wait: 10ms
  max_wait: 50ms
  on_status: [429]
{quotas_section}"
    ));
    let quotas = enforcer(&policy, &dir).await;
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(up.remap())
            .quotas(quotas),
    );
    assert_eq!(curl(proxy.addr, &["http://api.test/"]).await.status, 200);
    let refused = curl(proxy.addr, &["http://api.test/"]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        header(&refused.headers, "tollgate-error"),
        Some("team_rate_limited")
    );
    let records = proxy.records();
    assert_eq!(records.len(), 2, "no retrying record: {records:?}");
    assert_eq!(records[1]["outcome"], "refused");
}

/// A body of `total` bytes in 1000-byte chunks, without a length (or with one).
fn chunked(total: usize, with_length: bool) -> http::Response<body::ProxyBody> {
    let mut response = Drip::sized(total, 1000).response();
    if with_length {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, total.into());
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_budget_refuses_a_long_answer_cuts_a_stream_and_is_then_spent() {
    let dir = NodeDir::new();
    // Over 16 MiB, a body without a length streams (rather than being buffered whole).
    let policy = quota_policy(
        "limits:
  max_response_bytes: 32MiB
quotas:
  bytes_per_day: 4096
",
    );
    let quotas = enforcer(&policy, &dir).await;
    let up = upstream(|seen, _| match seen.uri.as_str() {
        "/declared" => chunked(10_000, true),
        _ => chunked(10_000, false),
    })
    .await;
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(up.remap())
            .quotas(quotas.clone()),
    );
    // Its Content-Length says it does not fit: refused before a byte is relayed.
    let declared = curl(proxy.addr, &["http://api.test/declared"]).await;
    assert_eq!(declared.status, 429, "{}", declared.headers);
    assert_eq!(
        header(&declared.headers, "tollgate-error"),
        Some("team_budget_exhausted")
    );
    assert!(header(&declared.headers, "retry-after").is_some());
    // A stream is cut where the budget ends: never a complete-looking shorter body.
    let streamed = curl(proxy.addr, &["http://api.test/streamed"]).await;
    assert_eq!(streamed.status, 200);
    assert_ne!(
        streamed.code, 0,
        "curl saw the transfer fail: {}",
        streamed.stderr
    );
    assert!(streamed.body.len() <= 4096, "{} bytes", streamed.body.len());
    let records = proxy.records();
    let cut = &records[1];
    assert_eq!(cut["outcome"], "quota_exhausted", "{cut}");
    assert_eq!(cut["error"], "team_budget_exhausted");
    assert_eq!(cut["quota"]["quota"], "bytes_per_day");
    assert_eq!(cut["quota"]["limit"], 4096);
    assert!(cut["bytes_down"].as_u64().unwrap() <= 4096);
    // The bytes that crossed the budget were charged: the day's budget is spent, and the
    // next attempt is refused up front once the store has heard.
    let spent = async {
        while quotas.report().quotas[0].remaining != Some(0) {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), spent)
        .await
        .expect("the store was charged");
    let before = up.count();
    let next = curl(proxy.addr, &["http://api.test/streamed"]).await;
    assert_eq!(next.status, 429);
    assert_eq!(
        header(&next.headers, "tollgate-error"),
        Some("team_budget_exhausted")
    );
    assert_eq!(up.count(), before, "the spent budget dials nothing");
    let records = proxy.records();
    assert_eq!(records[2]["reason"], "quotas.bytes_per_day");
}

/// Sends `CONNECT target` to the proxy and returns the status and head of its answer.
async fn connect(proxy: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(read, 1, "the proxy closed before its answer ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (status_of(&head), head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_tunnel_takes_from_the_quotas_and_a_spent_one_is_refused() {
    let dir = NodeDir::new();
    let policy = quota_policy(
        "limits:
  max_requests: 5
quotas:
  requests_per_day: 1
",
    );
    let quotas = enforcer(&policy, &dir).await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pinned = PINNED.parse().unwrap();
    let transport = RemapTransport::new([(pinned, server.local_addr().unwrap())]);
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(transport)
            .quotas(quotas),
    );
    let (status, _) = connect(proxy.addr, "api.test:443").await;
    assert_eq!(status, 200);
    let (status, head) = connect(proxy.addr, "api.test:443").await;
    assert_eq!(status, 429, "{head}");
    assert_eq!(
        header(&head, "tollgate-error"),
        Some("team_budget_exhausted")
    );
    let retry_after: u64 = header(&head, "retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let stats = proxy.handle.shutdown().await;
    assert_eq!(stats.requests, 1, "the refused tunnel was not dialed");
    let records = proxy.audit.records();
    let refused = records
        .iter()
        .find(|r| r["outcome"] == "refused")
        .expect("the refused tunnel's record");
    assert_eq!(refused["type"], "connect");
    assert_eq!(refused["reason"], "quotas.requests_per_day");
    assert_eq!(refused["quota"]["quota"], "requests_per_day");
    assert_eq!(refused["quota"]["remaining"], 0);
    let report = stats.quotas.unwrap();
    assert_eq!(
        (report.admitted, report.refused.team_budget_exhausted),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_tunnels_bytes_count_against_a_byte_budget() {
    let dir = NodeDir::new();
    let policy = quota_policy(
        "quotas:
  bytes_per_day: 3000
",
    );
    let quotas = enforcer(&policy, &dir).await;
    // The upstream sends far more than the budget as soon as the tunnel is up.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.unwrap();
        let _ = stream.write_all(&[b'x'; 100_000]).await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let transport = RemapTransport::new([(PINNED.parse().unwrap(), address)]);
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(transport)
            .quotas(quotas),
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the tunnel ends")
        .ok();
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the CONNECT answer")
        + 4;
    assert_eq!(status_of(&String::from_utf8_lossy(&received)), 200);
    let relayed = received.len() - head_end;
    assert!(relayed <= 3000, "{relayed} bytes relayed past the budget");
    proxy.handle.shutdown().await;
    let records = proxy.audit.records();
    let tunnel = records.last().expect("the tunnel's record");
    assert_eq!(tunnel["outcome"], "quota_exhausted", "{tunnel}");
    assert_eq!(tunnel["error"], "team_budget_exhausted");
    assert_eq!(tunnel["quota"]["quota"], "bytes_per_day");
    assert!(tunnel["bytes_down"].as_u64().unwrap() <= 3000, "{tunnel}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rules_read_what_remains_of_the_quotas() {
    let dir = NodeDir::new();
    // The team keeps the last request of the day for other.test: its rule reads input.quotas.
    let policy = quota_policy(
        r#"quotas:
  requests_per_day: 3
rego: |
  package tollgate.team
  import rego.v1
  deny contains msg if {
    input.request.host == "api.test"
    some q in input.quotas
    q.quota == "requests_per_day"
    q.scope == "team"
    is_number(q.remaining)
    q.remaining < 2
    msg := sprintf("only %d requests left today: kept for other.test", [q.remaining])
  }
"#,
    );
    let quotas = enforcer(&policy, &dir).await;
    quotas.refresh().await;
    let standing = quotas.standings(&tollgate_policy::url::UrlHost::Domain("api.test".into()));
    assert_eq!(standing.len(), 1);
    assert_eq!((standing[0].limit, standing[0].remaining), (3, Some(3)));
    let up = upstream(|_, n| ok(&format!("reply {n}"))).await;
    let proxy = start(
        Proxy::builder(policy.clone())
            .transport(up.remap())
            .quotas(quotas),
    );
    for expected in [200, 200, 403] {
        let got = curl(proxy.addr, &["http://api.test/"]).await;
        assert_eq!(got.status, expected, "{}", got.body_text());
    }
    let refused = proxy.records().pop().unwrap();
    assert_eq!(refused["reason"], "team_rule", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("only 1 requests left today"),
        "{refused}"
    );
    assert_eq!(curl(proxy.addr, &["http://other.test/"]).await.status, 200);
    assert_eq!(up.count(), 3);
}
