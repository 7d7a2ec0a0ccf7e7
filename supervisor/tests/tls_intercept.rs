//! TLS interception in-process: real clients trusting only the execution's CA, an HTTPS
//! upstream with its own test CA (trusted through `upstream_ca`), each inner request decided,
//! counted, retried and audited like a forward-proxied one.

mod proxy_support;
mod tls_support;

use std::sync::Arc;
use tls_support::*;
use tollgate::proxy::Proxy;

async fn api_upstream(ca: &TestCa) -> TlsUpstream {
    tls_upstream(ca.server_config(&["api.test"]), echo).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_an_https_upstream_through_interception_without_insecure() {
    let dir = Dir::new("intercept");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let proxy = start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
            .transport(remap(up.addr, None)),
    );
    // Two requests on one tunnel (curl reuses the connection for the same origin).
    let ran = curl(
        &proxy,
        &[
            "https://api.test/hello?x=1",
            "https://api.test/again",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    assert!(ran.stdout.contains("\"uri\":\"/hello?x=1\""), "{ran:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(values(&seen[0], "host"), vec!["api.test"]);
    assert!(values(&seen[0], "via")
        .iter()
        .any(|v| v.contains("1.1 tollgate")));
    // One counted request per inner request; the tunnel itself is not counted.
    let stats = proxy.handle.stats();
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(stats.destinations[0].destination, "https://api.test");
    let records = proxy.records();
    let inner: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(inner.len(), 2, "{records:?}");
    assert_eq!(inner[0]["scheme"], "https");
    assert_eq!(inner[0]["path"], "/hello");
    assert_eq!(inner[0]["status"], 200);
    assert_eq!(inner[0]["address"], format!("{API_IP}:443"));
    drop(proxy.handle.stats());
    let Intercepting { harness, .. } = proxy;
    harness.handle.shutdown().await;
    let records = harness.audit.records();
    let tunnel: Vec<_> = records.iter().filter(|r| r["type"] == "connect").collect();
    assert_eq!(tunnel.len(), 1, "{records:?}");
    assert_eq!(tunnel[0]["tls"], "intercept");
    assert_eq!(tunnel[0]["outcome"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_trusts_the_execution_ca_through_ssl_cert_file() {
    let dir = Dir::new("urllib");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let proxy = start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
            .transport(remap(up.addr, None)),
    );
    let script = "import urllib.request, json
body = urllib.request.urlopen('https://api.test/py', timeout=20).read()
print(json.loads(body)['uri'])";
    let ran = python(&proxy, script, &[]).await;
    assert_eq!((ran.code, ran.stdout.trim()), (0, "/py"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_l7_rules_hold_inside_tls() {
    let dir = Dir::new("readonly");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let allow = entry(
        "api.test",
        "      access: read-only\n      deny_rules: [{method: '*', path: /admin/**}]\n",
    );
    let proxy =
        start(Proxy::builder(tls_policy(&ca_file, &allow, "")).transport(remap(up.addr, None)));
    let get = curl(&proxy, &["https://api.test/items", "-w", " %{http_code}"]).await;
    assert!(get.stdout.ends_with(" 200"), "{get:?}");
    let post = curl(
        &proxy,
        &[
            "-X",
            "POST",
            "-d",
            "x=1",
            "https://api.test/items",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(post.stdout.ends_with(" 403"), "{post:?}");
    assert!(
        post.stdout.contains("\"error\":\"policy_denied\""),
        "{post:?}"
    );
    assert!(post.stdout.contains("read-only"), "{post:?}");
    let admin = curl(
        &proxy,
        &["https://api.test/admin/users", "-w", " %{http_code}"],
    )
    .await;
    assert!(admin.stdout.ends_with(" 403"), "{admin:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the GET reached the upstream");
    assert_eq!(seen[0].method, "GET");
    let records = proxy.records();
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "http" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{records:?}");
    assert_eq!(denied[0]["reason"], "method_not_allowed");
    assert_eq!(denied[1]["reason"], "l7_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_the_budget_count_inner_requests() {
    let dir = Dir::new("retry");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = tls_upstream(ca.server_config(&["api.test"]), |seen, n| {
        if n == 0 {
            proxy_support::status(503, "busy")
        } else {
            echo(seen, n)
        }
    })
    .await;
    let policy = tls_policy(&ca_file, &entry("api.test", ""), "")
        .as_ref()
        .clone();
    let mut policy = policy;
    policy.limits.max_requests = 3;
    let proxy = start(Proxy::builder(Arc::new(policy)).transport(remap(up.addr, None)));
    let first = curl(&proxy, &["https://api.test/a", "-w", " %{http_code}"]).await;
    assert!(first.stdout.ends_with(" 200"), "{first:?}");
    let stats = proxy.handle.stats();
    assert_eq!((stats.requests, stats.retried), (2, 1), "{stats:?}");
    let second = curl(&proxy, &["https://api.test/b", "-w", " %{http_code}"]).await;
    assert!(second.stdout.ends_with(" 200"), "{second:?}");
    let third = curl(&proxy, &["https://api.test/c", "-w", " %{http_code}"]).await;
    assert!(third.stdout.ends_with(" 429"), "{third:?}");
    assert!(third.stdout.contains("request_limit_exceeded"), "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_that_does_not_verify_is_a_502_with_the_reason() {
    let dir = Dir::new("badcert");
    let trusted = TestCa::new("trusted test CA");
    let ca_file = dir.file("upstream-ca.pem", trusted.pem.as_bytes());
    let rogue = TestCa::new("rogue CA");
    // Signed by a CA nobody trusts, then one for the wrong name.
    for config in [
        rogue.server_config(&["api.test"]),
        trusted.server_config(&["not-api.test"]),
    ] {
        let up = tls_upstream(config, echo).await;
        let proxy = start(
            Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
                .transport(remap(up.addr, None)),
        );
        let ran = curl(&proxy, &["https://api.test/x", "-w", " %{http_code}"]).await;
        assert!(ran.stdout.ends_with(" 502"), "{ran:?}");
        assert!(ran.stdout.contains("upstream_tls_error"), "{ran:?}");
        assert!(
            ran.stdout.contains("invalid peer certificate"),
            "the reason is given: {ran:?}"
        );
        assert_eq!(up.count(), 0);
        let stats = proxy.handle.stats();
        assert_eq!(
            stats.requests, 1,
            "a certificate error is not retried: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_its_handshake_and_it_is_audited() {
    let dir = Dir::new("distrust");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let proxy = start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
            .transport(remap(up.addr, None)),
    );
    // Trusting the upstream's CA is not enough: the sandbox talks to tollgate's leaf.
    let ran = run_curl_with_ca(&proxy, &ca_file, "https://api.test/x").await;
    assert_eq!(
        ran.code, 60,
        "curl: peer certificate cannot be verified: {ran:?}"
    );
    assert_eq!(up.count(), 0);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["type"], "connect");
    assert_eq!(records[0]["outcome"], "tls_handshake_failed");
    assert_eq!(proxy.handle.stats().requests, 0);
}

async fn run_curl_with_ca(proxy: &Intercepting, ca: &std::path::Path, url: &str) -> Ran {
    let args = vec![
        "-sS".to_owned(),
        "-x".to_owned(),
        proxy.url(),
        "--cacert".to_owned(),
        ca.display().to_string(),
        url.to_owned(),
    ];
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("/usr/bin/curl")
            .env_clear()
            .args(args)
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_naming_another_host_and_plain_bytes_are_refused() {
    let dir = Dir::new("sni");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let proxy = start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
            .transport(remap(up.addr, None)),
    );
    let script = "import os, socket, ssl
proxy = os.environ['HTTPS_PROXY'].rsplit(':', 1)
s = socket.create_connection((proxy[0].split('//')[1], int(proxy[1])))
s.sendall(b'CONNECT api.test:443 HTTP/1.1\\r\\nHost: api.test:443\\r\\n\\r\\n')
head = b''
while not head.endswith(b'\\r\\n\\r\\n'):
    head += s.recv(1)
print(head.split(b' ')[1].decode())
ctx = ssl.create_default_context()
ctx.check_hostname = False
try:
    ctx.wrap_socket(s, server_hostname='evil.test')
    print('handshake ok')
except (ssl.SSLError, OSError) as e:
    print('refused')
s = socket.create_connection((proxy[0].split('//')[1], int(proxy[1])))
s.sendall(b'CONNECT api.test:443 HTTP/1.1\\r\\nHost: api.test:443\\r\\n\\r\\n')
head = b''
while not head.endswith(b'\\r\\n\\r\\n'):
    head += s.recv(1)
s.sendall(b'GET /plain HTTP/1.1\\r\\nHost: api.test\\r\\n\\r\\n')
answer = b''
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.split(b' ')[1].decode(), b'only TLS' in answer)
";
    let ran = python(&proxy, script, &[]).await;
    assert_eq!(ran.stdout, "200\nrefused\n400 True\n", "{ran:?}");
    let records = proxy.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["outcome"], "sni_mismatch");
    assert_eq!(records[0]["decision"], "deny");
    assert_eq!(records[1]["outcome"], "not_tls");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_entry_is_one_raw_tunnel_verified_by_the_client() {
    let dir = Dir::new("passthrough");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = api_upstream(&ca).await;
    let proxy = start(
        Proxy::builder(tls_policy(
            &ca_file,
            &entry("api.test", "      tls: passthrough\n"),
            "",
        ))
        .transport(remap(up.addr, None)),
    );
    // The client verifies the upstream's own certificate: no tollgate leaf in between.
    let ran = run_curl_with_ca(&proxy, &ca_file, "https://api.test/raw").await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("\"uri\":\"/raw\""), "{ran:?}");
    assert!(
        !ran.stdout.contains("tollgate"),
        "no Via: tollgate saw no HTTP: {ran:?}"
    );
    assert_eq!(proxy.handle.stats().requests, 1);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["tls"], "passthrough");
}
