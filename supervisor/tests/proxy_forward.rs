//! Forward-proxy protocol behaviour with real clients: methods and body framings,
//! keep-alive, hop-by-hop headers and `Via`, smuggling refusals, absolute-form rules,
//! header size, redirects, private endpoints, IP literals, DNS rebinding.

mod proxy_support;

use http::Response;
use proxy_support::*;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tollgate::proxy::body;
use tollgate::proxy::testing::{MockTransport, RemapTransport};
use tollgate::proxy::{BoxFuture, Proxy, Resolver};

fn echo() -> impl Fn(&Seen, usize) -> Response<tollgate::proxy::body::ProxyBody> + Send + Sync {
    |seen: &Seen, _| ok(&format!("{} {} {}", seen.method, seen.uri, seen.body.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_with_both_body_framings() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let payload = "x".repeat(3000);
    for method in ["GET", "DELETE", "POST", "PUT", "PATCH"] {
        let got = curl(proxy.addr, &["-X", method, "http://api.test/items/1?q=1"]).await;
        assert_eq!(got.status, 200, "{method}: {got:?}");
        assert_eq!(got.body_text(), format!("{method} /items/1?q=1 0"));
        for chunked in [false, true] {
            let mut args = vec!["-X", method, "--data-binary", &payload];
            if chunked {
                args.extend(["-H", "Transfer-Encoding: chunked"]);
            }
            args.push("http://api.test/items/1");
            let got = curl(proxy.addr, &args).await;
            assert_eq!(got.status, 200, "{method} chunked={chunked}: {got:?}");
            assert_eq!(got.body_text(), format!("{method} /items/1 3000"));
        }
    }
    for seen in up.seen() {
        assert_eq!(seen.headers["host"], "api.test");
        assert_eq!(seen.headers["via"], "1.1 tollgate");
        assert!(
            !seen.headers.contains_key("transfer-encoding"),
            "re-framed: {seen:?}"
        );
        if !seen.body.is_empty() {
            assert_eq!(seen.headers["content-length"], "3000");
        }
    }
    assert_eq!(up.count(), 15);
    assert_eq!(proxy.handle.stats().requests, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_and_not_forwarded() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let payload = "y".repeat(2048);
    let got = curl(
        proxy.addr,
        &[
            "-v",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &payload,
            "http://api.test/upload",
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.stderr.contains("100 Continue"), "{}", got.stderr);
    assert_eq!(got.body_text(), "POST /upload 2048");
    assert!(!up.seen()[0].headers.contains_key("expect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_each_decided_and_counted() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let got = curl(
        proxy.addr,
        &[
            "-v",
            "http://api.test/a",
            "http://api.test/b",
            "http://other.test/c",
            "http://api.test/d",
        ],
    )
    .await;
    assert_eq!(
        got.stderr.matches("Connected to").count(),
        1,
        "{}",
        got.stderr
    );
    let records = proxy.records();
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
    assert_eq!(records[2]["decision"], "deny");
    assert_eq!(records[2]["reason"], "host_not_allowed");
    let stats = proxy.handle.stats();
    assert_eq!((stats.requests, stats.denied), (3, 1));
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_via_added() {
    let up = upstream(|_, _| {
        let mut response = ok("fine");
        let h = response.headers_mut();
        h.insert("connection", "X-Resp-Hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        response
    })
    .await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let answer = raw(
        proxy.addr,
        b"GET http://api.test/h HTTP/1.1\r\nHost: api.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
Keep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\n\
TE: trailers\r\nUpgrade: websocket\r\nTollgate-Timeout: 5\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let head = answer.to_ascii_lowercase();
    assert!(head.contains("via: 1.1 tollgate"), "{answer}");
    assert!(head.contains("x-end-to-end: kept"));
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!head.contains(gone), "{gone} relayed: {answer}");
    }
    let seen = &up.seen()[0];
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
        "tollgate-timeout",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} forwarded: {seen:?}"
        );
    }
    // `TE: trailers` alone is put back (headers::sanitise_request): gRPC servers need it.
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-kept"], "yes");
    assert_eq!(seen.headers["via"], "1.1 tollgate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_as_smuggling() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let cases: [&[u8]; 3] = [
        b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n",
        b"GET http://api.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        b"GET http://api.test/ HTTP/1.1\r\nHost: api.test:8080\r\n\r\n",
    ];
    for case in cases {
        let answer = raw(proxy.addr, case).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(
            answer.contains("tollgate-error: invalid_request"),
            "{answer}"
        );
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    // Content-Length with Transfer-Encoding, in either order: refused, the connection closed,
    // and the bytes after the chunked body never read as a second request.
    for (first, second) in [
        ("Content-Length: 4", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 4"),
    ] {
        let request = format!(
            "POST http://api.test/cl-te HTTP/1.1\r\nHost: api.test\r\n{first}\r\n{second}\r\n\r\n\
             0\r\n\r\nGET http://api.test/smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n"
        );
        let answer = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(
            answer.contains("tollgate-error: invalid_request"),
            "{answer}"
        );
        assert!(
            answer.contains("Content-Length and Transfer-Encoding"),
            "{answer}"
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    // A chunked request after a well-framed one on the same connection is not misread.
    let answer = raw(
        proxy.addr,
        b"POST http://api.test/one HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc\
POST http://api.test/two HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
3\r\nxyz\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let uris: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/one", "/two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_in_absolute_form_and_other_targets_are_refused() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let answer = raw(
        proxy.addr,
        b"GET https://api.test/ HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        answer.contains("invalid_url") && answer.contains("CONNECT"),
        "{answer}"
    );
    let answer = raw(
        proxy.addr,
        b"GET /relative HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("absolute http:// URL"), "{answer}");
    let answer = raw(
        proxy.addr,
        b"GET ftp://api.test/ HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_over_16_kib_get_431() {
    let up = upstream(echo()).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let request = |filler: usize| {
        format!(
            "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nX-Fill: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    let answer = raw(proxy.addr, request(15 * 1024).as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw(proxy.addr, request(16 * 1024).as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_go_back_to_the_client_unfollowed() {
    let up = upstream(|_, _| {
        let mut response = status(302, "moved");
        response
            .headers_mut()
            .insert("location", "http://api.test/elsewhere".parse().unwrap());
        response
    })
    .await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let got = curl(proxy.addr, &["http://api.test/old"]).await;
    assert_eq!(got.status, 302);
    assert!(got
        .headers
        .to_ascii_lowercase()
        .contains("location: http://api.test/elsewhere"));
    assert_eq!(up.count(), 1);
}

/// OpenShell #155: plain-HTTP forwarding to a private endpoint listed with `allowed_ips`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_endpoint_needs_allowed_ips() {
    let up = upstream(echo()).await;
    let private: IpAddr = "10.1.2.3".parse().unwrap();
    let with = policy(
        "version: 1\nteam: acme\nnetwork:\n  hosts:\n    internal.test: 10.1.2.3\n  allow:\n    - host: internal.test\n      allowed_ips: [10.1.0.0/16]\n",
    );
    let proxy = start(Proxy::builder(with).transport(RemapTransport::new([(private, up.addr)])));
    let got = curl(proxy.addr, &["http://internal.test/status"]).await;
    assert_eq!(
        (got.status, got.body_text().as_str()),
        (200, "GET /status 0")
    );
    let got = curl(proxy.addr, &["http://unlisted.test/status"]).await;
    assert_eq!(got.status, 403);
    assert!(got.headers.contains("policy_denied"), "{got:?}");
    let answer = raw(
        proxy.addr,
        b"GET https://internal.test/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400);

    let without = policy(
        "version: 1\nteam: acme\nnetwork:\n  hosts:\n    internal.test: 10.1.2.3\n  allow:\n    - host: internal.test\n",
    );
    let remap = Arc::new(RemapTransport::new([(private, up.addr)]));
    let proxy = start(Proxy::builder(without).shared_transport(remap.clone()));
    let got = curl(proxy.addr, &["http://internal.test/status"]).await;
    assert_eq!(got.status, 403);
    assert!(got.headers.contains("ssrf_denied"), "{got:?}");
    assert!(
        got.body_text().contains("allowed_ips"),
        "{}",
        got.body_text()
    );
    assert!(remap.dials().is_empty());
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_in_every_encoding_are_classified_after_normalisation() {
    let mock = Arc::new(MockTransport::http(|_| async {
        Response::new(body::full("no"))
    }));
    let proxy = start(
        Proxy::builder(policy(
            "version: 1\nteam: acme\nnetwork:\n  allow_all: true\n",
        ))
        .shared_transport(mock.clone()),
    );
    for target in [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
    ] {
        let got = curl(proxy.addr, &["--path-as-is", target]).await;
        assert_eq!(got.status, 403, "{target}: {got:?}");
        assert!(got.headers.contains("ssrf_denied"), "{target}: {got:?}");
    }
    assert!(mock.dials().is_empty(), "{:?}", mock.dials());
}

/// Answers public first, then private: the rebinding attack.
struct Rebinding {
    lookups: AtomicUsize,
    names: Mutex<Vec<String>>,
}

impl Resolver for Rebinding {
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        self.names.lock().unwrap().push(name.to_owned());
        let answer = if n == 0 { "93.184.216.34" } else { "10.0.0.1" };
        Box::pin(async move { Ok(vec![answer.parse().unwrap()]) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_cannot_move_the_dial() {
    let resolver = Arc::new(Rebinding {
        lookups: AtomicUsize::new(0),
        names: Mutex::default(),
    });
    let mock = Arc::new(MockTransport::http(|_| async {
        Response::new(body::full("public"))
    }));
    let proxy = start(
        Proxy::builder(policy(
            "version: 1\nteam: acme\nnetwork:\n  allow:\n    - http://rebind.test\n",
        ))
        .shared_resolver(resolver.clone())
        .shared_transport(mock.clone()),
    );
    let got = curl(proxy.addr, &["http://rebind.test/"]).await;
    assert_eq!((got.status, got.body_text().as_str()), (200, "public"));
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1, "resolved once");
    assert_eq!(mock.dials(), ["93.184.216.34:80".parse().unwrap()]);
    // The next request resolves again and is refused on the private answer.
    let got = curl(proxy.addr, &["http://rebind.test/"]).await;
    assert_eq!(got.status, 403);
    assert!(got.headers.contains("ssrf_denied"));
    assert_eq!(mock.dials().len(), 1, "the private answer was never dialed");
    // A name the policy refuses is never looked up.
    let got = curl(proxy.addr, &["http://refused.test/"]).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        *resolver.names.lock().unwrap(),
        ["rebind.test", "rebind.test"]
    );
    let audit = proxy.records();
    assert_eq!(audit[0]["address"], "93.184.216.34:80");
}

struct NoAnswer;

impl Resolver for NoAnswer {
    fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async { Err(std::io::Error::other("NXDOMAIN")) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_a_connect_error() {
    let proxy = start(
        Proxy::builder(policy(
            "version: 1\nteam: acme\nnetwork:\n  allow:\n    - http://gone.test\n",
        ))
        .resolver(NoAnswer),
    );
    let got = curl(proxy.addr, &["http://gone.test/"]).await;
    assert_eq!(got.status, 502);
    assert!(got.headers.contains("connect_error"));
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["error"], "connect_error");
    assert_eq!(body["execution"], "exec-test");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not resolve"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_only_for_the_same_origin_and_address() {
    let up = upstream(echo()).await;
    let other: IpAddr = "198.51.100.20".parse().unwrap();
    let remap = RemapTransport::new([(PINNED.parse().unwrap(), up.addr), (other, up.addr)]);
    let proxy = start(
        Proxy::builder(policy(&format!(
            "version: 1\nteam: acme\nnetwork:\n  hosts:\n    api.test: {PINNED}\n    other.test: 198.51.100.20\n  allow:\n    - host: api.test\n      allowed_ips: [198.51.100.0/24]\n    - host: other.test\n      allowed_ips: [198.51.100.0/24]\n"
        )))
        .transport(remap),
    );
    for _ in 0..4 {
        assert_eq!(curl(proxy.addr, &["http://api.test/"]).await.status, 200);
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "kept alive across clients"
    );
    assert_eq!(curl(proxy.addr, &["http://other.test/"]).await.status, 200);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        2,
        "never shared across origins"
    );
    // A retried 503 is not read to its end, so its connection is not reused.
    let stats = proxy.handle.shutdown().await;
    assert_eq!(stats.requests, 5);
}
