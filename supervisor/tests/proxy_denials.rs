//! The denial limit and the violation alarm of the in-process proxy (issue #10, section 4):
//! past `limits.max_denied` refusals every request and tunnel gets `429 denial_limit` before
//! any policy work; with `on_violation: kill` the alarm rings once, at the limit; the
//! counters list what was refused; identical refusals are summed in the audit log and the
//! operator log, and nothing pending is lost when the proxy stops.

mod proxy_support;

use proxy_support::*;
use std::sync::{Arc, Mutex};
use tollgate::proxy::Proxy;

/// The operator log at INFO, captured for the whole test binary.
fn operator_log() -> &'static Captured {
    proxy_support::operator_log(tracing::Level::INFO)
}

fn events(record: &serde_json::Value) -> u64 {
    record
        .get("count")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_denied_everything_gets_denial_limit_before_any_policy_work() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy =
        start(Proxy::builder(policy_with("limits:\n  max_denied: 3\n")).transport(up.remap()));
    for _ in 0..3 {
        let got = curl(proxy.addr, &["http://evil.test/x"]).await;
        assert_eq!(got.status, 403, "{got:?}");
    }
    let allowed = curl(proxy.addr, &["http://api.test/ok"]).await;
    assert_eq!(allowed.status, 429, "{allowed:?}");
    assert!(
        allowed.headers.contains("tollgate-error: denial_limit"),
        "{}",
        allowed.headers
    );
    assert!(
        allowed.body_text().contains("max_denied"),
        "{}",
        allowed.body_text()
    );
    let tunnel = raw(
        proxy.addr,
        b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&tunnel), 429, "{tunnel}");
    assert!(tunnel.contains("denial_limit"), "{tunnel}");
    let invalid = raw(
        proxy.addr,
        b"GET /relative HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&invalid), 429, "{invalid}");
    assert_eq!(up.count(), 0, "the upstream was reached");

    let stats = proxy.handle.stats();
    assert_eq!(stats.denied, 6);
    let refused: Vec<(String, String, u64)> = stats
        .refused
        .iter()
        .map(|r| (r.destination.clone(), r.reason.clone(), r.count))
        .collect();
    assert_eq!(
        refused,
        [
            ("http://evil.test:80".into(), "host_not_allowed".into(), 3),
            ("<invalid target>".into(), "denial_limit".into(), 1),
            ("connect://api.test:443".into(), "denial_limit".into(), 1),
            ("http://api.test:80".into(), "denial_limit".into(), 1),
        ],
        "{:?}",
        stats.refused
    );
    let records = proxy.records();
    let refusals: u64 = records
        .iter()
        .filter(|r| r["decision"] == "deny")
        .map(events)
        .sum();
    assert_eq!(refusals, 6, "{records:#?}");
    let limit: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["error"] == "denial_limit")
        .collect();
    assert_eq!(limit.len(), 3, "{records:#?}");
    for record in limit {
        assert_eq!(record["status"], 429);
        assert_eq!(record["reason"], "denial_limit");
        assert!(record["message"].as_str().unwrap().contains("max_denied"));
    }
    proxy.handle.shutdown().await;
}

/// An alarm the test can read: every sentence it was rung with.
fn alarm() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(String) + Send + Sync + 'static,
) {
    let rung = Arc::new(Mutex::new(Vec::new()));
    let sink = rung.clone();
    (rung, move |sentence: String| {
        sink.lock().unwrap().push(sentence)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_violation_kill_rings_the_alarm_once_at_max_denied() {
    let (rung, ring) = alarm();
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_denied: 2\n  on_violation: kill\n",
        ))
        .violation_alarm(ring),
    );
    let first = curl(proxy.addr, &["http://evil.test/1"]).await;
    assert_eq!(first.status, 403);
    assert!(rung.lock().unwrap().is_empty(), "rung after one refusal");
    let tunnel = raw(
        proxy.addr,
        b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&tunnel), 403, "{tunnel}");
    for _ in 0..3 {
        curl(proxy.addr, &["http://evil.test/more"]).await;
    }
    let rung = rung.lock().unwrap().clone();
    assert_eq!(rung.len(), 1, "{rung:?}");
    assert!(
        rung[0].contains("refused 2 requests") && rung[0].contains("limits.max_denied"),
        "{}",
        rung[0]
    );
    proxy.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_violation_continue_never_rings_the_alarm() {
    let (rung, ring) = alarm();
    let proxy =
        start(Proxy::builder(policy_with("limits:\n  max_denied: 2\n")).violation_alarm(ring));
    for _ in 0..5 {
        curl(proxy.addr, &["http://evil.test/x"]).await;
    }
    assert!(rung.lock().unwrap().is_empty());
    proxy.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_refusals_are_summed_in_the_audit_and_the_operator_log() {
    let log = operator_log();
    let proxy = start(Proxy::builder(policy_with("limits:\n  max_denied: 1000\n")));
    let (code, out, err) = python(
        proxy.addr,
        r#"
import http.client, os
host, port = os.environ["PROXY"][7:].split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=10)
for i in range(40):
    conn.request("GET", "http://summed.evil.test/same")
    conn.getresponse().read()
print("done")
"#,
    )
    .await;
    assert_eq!((code, out.trim()), (0, "done"), "{err}");
    let stats = proxy.handle.shutdown().await;
    assert_eq!(stats.denied, 40);
    // Stopped: whatever was pending is written.
    let records: Vec<serde_json::Value> = proxy
        .audit
        .records()
        .into_iter()
        .filter(|r| r["host"] == "summed.evil.test")
        .collect();
    assert_eq!(records.iter().map(events).sum::<u64>(), 40, "{records:#?}");
    assert!(records.len() < 10, "{records:#?}");
    assert!(records.iter().any(|r| r.get("count").is_some()));
    let text = log.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("summed.evil.test"))
        .collect();
    assert!(lines.len() < 10, "{lines:#?}");
    let repeated: u64 = lines
        .iter()
        .filter_map(|l| {
            let (_, tail) = l.rsplit_once("repeated ")?;
            tail.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    let singles = lines.iter().filter(|l| !l.contains("repeated ")).count() as u64;
    assert_eq!(singles + repeated, 40, "{lines:#?}");
}
