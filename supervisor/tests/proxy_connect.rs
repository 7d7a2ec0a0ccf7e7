//! CONNECT tunnels: passthrough to a loopback echo server (behind the address remap),
//! refusals on port, host and address, and byte accounting.

mod proxy_support;

use proxy_support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::{Proxy, Settings};

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

fn remap_to(addr: SocketAddr) -> RemapTransport {
    RemapTransport::new([(PINNED.parse().unwrap(), addr)])
}

async fn open(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_connect_is_a_byte_for_byte_tunnel() {
    let echo = echo_server().await;
    let proxy = start(Proxy::builder(roomy()).transport(remap_to(echo)));
    let (mut stream, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"hello through the tunnel").await.unwrap();
    let mut answer = [0u8; 24];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"hello through the tunnel");
    drop(stream);
    let stats = proxy.handle.shutdown().await;
    assert_eq!(stats.requests, 1);
    assert_eq!((stats.bytes_up, stats.bytes_down), (24, 24));
    assert_eq!(stats.destinations[0].destination, "connect://api.test:443");
    let records = proxy.audit.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["type"], "connect");
    assert_eq!(record["address"], format!("{PINNED}:443"));
    assert_eq!(
        (record["bytes_up"].as_u64(), record["bytes_down"].as_u64()),
        (Some(24), Some(24))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_tunnels_plain_http_through_connect() {
    let up = upstream(|seen, _| ok(&format!("tunnelled {}", seen.uri))).await;
    let proxy = start(Proxy::builder(roomy()).transport(remap_to(up.addr)));
    let got = curl(proxy.addr, &["-p", "http://api.test:443/inner"]).await;
    assert_eq!(
        (got.status, got.body_text().as_str()),
        (200, "tunnelled /inner"),
        "{got:?}"
    );
    // A `tls: intercept` entry (the default) carries TLS only: plain bytes in its tunnel get
    // a 400 naming the reason, and nothing is dialed.
    let intercepting = policy(&format!(
        "version: 1\nteam: acme\nnetwork:\n  hosts:\n    api.test: {PINNED}\n  allow:\n    - host: api.test\n      allowed_ips: [198.51.100.0/24]\n"
    ));
    let remap = std::sync::Arc::new(remap_to(up.addr));
    let proxy = start(Proxy::builder(intercepting).shared_transport(remap.clone()));
    let got = curl(proxy.addr, &["-p", "http://api.test:443/inner"]).await;
    assert_eq!(got.status, 400, "{got:?}");
    assert!(got.body_text().contains("only TLS"), "{got:?}");
    assert!(remap.dials().is_empty());
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "not_tls");
    assert_eq!(records[0]["tls"], "intercept");
    assert_eq!(proxy.handle.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_get_403_and_dial_nothing() {
    let echo = echo_server().await;
    let remap = std::sync::Arc::new(remap_to(echo));
    let proxy = start(
        Proxy::builder(policy(&format!(
            "version: 1\nteam: acme\nnetwork:\n  hosts:\n    api.test: {PINNED}\n    private.test: 10.9.9.9\n  allow:\n    - host: api.test\n      ports: [443]\n      allowed_ips: [198.51.100.0/24]\n    - host: private.test\n"
        )))
        .shared_transport(remap.clone()),
    );
    for (target, code, status) in [
        ("api.test:8443", "policy_denied", 403),
        ("other.test:443", "policy_denied", 403),
        ("private.test:443", "ssrf_denied", 403),
        ("127.0.0.1:443", "policy_denied", 403),
    ] {
        let (_, head) = open(proxy.addr, target).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{target}: {head}"
        );
        assert!(
            head.contains(&format!("tollgate-error: {code}")),
            "{target}: {head}"
        );
    }
    let (_, head) = open(proxy.addr, "api.test").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(remap.dials().is_empty());
    assert_eq!(proxy.handle.stats().denied, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed() {
    let echo = echo_server().await;
    let settings = Settings {
        idle_timeout: Duration::from_millis(300),
        ..Settings::default()
    };
    let proxy = start(
        Proxy::builder(roomy())
            .transport(remap_to(echo))
            .settings(settings),
    );
    let (mut stream, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut sink)).await;
    assert!(closed.is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.records()[0]["outcome"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_count_against_max_connections() {
    let echo = echo_server().await;
    let proxy = start(
        Proxy::builder(policy_with(
            "limits:\n  max_requests: 100\n  max_connections: 2\n",
        ))
        .transport(remap_to(echo)),
    );
    let (first, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (second, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, head) = open(proxy.addr, "api.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
