//! HTTP/2 towards the sandbox, in-process: clients that pick `h2` by ALPN inside an
//! intercepted tunnel get hyper's HTTP/2 server, each stream one request through the
//! pipeline (decided, counted, audited with `protocol: h2`), a refused stream refused alone;
//! hostile clients (rapid reset, a CONTINUATION flood) have their connection closed and the
//! tunnel's record says why; HTTP/2 in clear text (h2c) is refused with a GOAWAY.
//!
//! Two kinds of client: the `h2` crate (a real HTTP/2 client) where the test is about
//! requests, and frames written by hand ([`frames`]) where it is about what a well-behaved
//! client would never send.

mod proxy_support;
mod tls_support;

use bytes::Bytes;
use http::{Request, StatusCode};
use proxy_support::ok;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tls_support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tollgate::proxy::Proxy;

/// A policy allowing `api.test` (intercepted) with `more` on its entry.
fn policy_for(ca_file: &std::path::Path, more: &str) -> Arc<tollgate_policy::Policy> {
    tls_policy(ca_file, &entry("api.test", more), "")
}

/// An intercepting proxy in front of an HTTPS echo upstream for `api.test`.
struct Setup {
    proxy: Intercepting,
    up: TlsUpstream,
    _dir: Dir,
}

async fn setup(tag: &str, more: &str) -> Setup {
    let dir = Dir::new(tag);
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = tls_upstream(ca.server_config(&["api.test"]), echo).await;
    let proxy = start(Proxy::builder(policy_for(&ca_file, more)).transport(remap(up.addr, None)));
    Setup {
        proxy,
        up,
        _dir: dir,
    }
}

/// A CONNECT tunnel to `api.test:443` through the proxy, TLS inside it trusting only the
/// execution's CA, offering `alpn`.
async fn tunnel(proxy: &Intercepting, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let stream = connect(proxy).await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&proxy.ca_file).unwrap();
    roots
        .add(CertificateDer::from_pem_slice(&pem).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("api.test").unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// A CONNECT tunnel to `api.test:443`, its `200` read.
async fn connect(proxy: &Intercepting) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// An HTTP/2 client (the `h2` crate) on a tunnel that negotiated `h2`.
async fn h2_client(proxy: &Intercepting) -> h2::client::SendRequest<Bytes> {
    let tls = tunnel(proxy, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends a bodiless GET for `uri` on `send`; the status and body.
async fn get(send: &h2::client::SendRequest<Bytes>, uri: &str) -> (StatusCode, String) {
    let mut send = send.clone().ready().await.unwrap();
    let request = Request::get(uri).body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// The records so far that satisfy `found`, waiting up to 20 s for at least one (a tunnel's
/// record is written when its connection has closed).
fn wait_for(
    proxy: &Intercepting,
    found: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    for _ in 0..1000 {
        let records: Vec<_> = proxy.records().into_iter().filter(&found).collect();
        if !records.is_empty() {
            return records;
        }
    }
    panic!("no such record: {:?}", proxy.records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_on_one_connection_are_two_counted_h2_requests() {
    let s = setup("two", "").await;
    let send = h2_client(&s.proxy).await;
    let (first, second) = tokio::join!(
        get(&send, "https://api.test/one"),
        get(&send, "https://api.test/two?x=1")
    );
    assert_eq!(first.0, StatusCode::OK, "{first:?}");
    assert!(first.1.contains("\"uri\":\"/one\""), "{first:?}");
    assert_eq!(second.0, StatusCode::OK, "{second:?}");
    assert!(second.1.contains("\"uri\":\"/two?x=1\""), "{second:?}");
    // Upstream, the request names the decided host, whatever HTTP/2 carried it.
    assert!(s
        .up
        .seen()
        .iter()
        .all(|seen| values(seen, "host") == ["api.test"]));
    assert_eq!(s.proxy.handle.stats().requests, 2);
    let records = s.proxy.records();
    let inner: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(inner.len(), 2, "{records:?}");
    for record in &inner {
        assert_eq!(record["protocol"], "h2", "{record}");
        assert_eq!(record["outcome"], "complete", "{record}");
        assert_eq!(record["scheme"], "https", "{record}");
    }
    drop(send);
    let tunnel = wait_for(&s.proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["protocol"], "h2", "{tunnel:?}");
    assert_eq!(tunnel[0]["outcome"], "closed", "{tunnel:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_speaks_h2_inside_the_tunnel() {
    let s = setup("curl", "").await;
    let ran = curl(
        &s.proxy,
        &[
            "--http2",
            "https://api.test/a",
            "https://api.test/b",
            "-w",
            " %{http_version}",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.ends_with(" 2"), "{ran:?}");
    let records = s.proxy.records();
    let inner: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(inner.len(), 2, "{records:?}");
    assert!(inner.iter().all(|r| r["protocol"] == "h2"), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_h2_still_gets_http1() {
    let s = setup("h1", "").await;
    let tls = tunnel(&s.proxy, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (mut send, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<Bytes>,
    >(hyper_util::rt::TokioIo::new(tls))
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/plain")
        .header("host", "api.test")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let records = s.proxy.records();
    let inner: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(inner[0]["protocol"], "http/1.1", "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_refused_alone() {
    let s = setup(
        "refused",
        "      deny_rules: [{method: '*', path: /admin/**}]\n",
    )
    .await;
    let send = h2_client(&s.proxy).await;
    let (admin, fine) = tokio::join!(
        get(&send, "https://api.test/admin/users"),
        get(&send, "https://api.test/items")
    );
    assert_eq!(admin.0, StatusCode::FORBIDDEN, "{admin:?}");
    assert!(admin.1.contains("\"error\":\"policy_denied\""), "{admin:?}");
    assert_eq!(fine.0, StatusCode::OK, "{fine:?}");
    // The connection goes on after the refusal.
    let after = get(&send, "https://api.test/after").await;
    assert_eq!(after.0, StatusCode::OK, "{after:?}");
    assert_eq!(s.up.count(), 2);
    let records = s.proxy.records();
    let denied: Vec<_> = records.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1, "{records:?}");
    assert_eq!(denied[0]["protocol"], "h2");
    assert_eq!(denied[0]["path"], "/admin/users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_naming_another_host_is_refused_on_its_stream_only() {
    let s = setup("authority", "").await;
    let send = h2_client(&s.proxy).await;
    let (other, fine) = tokio::join!(
        get(&send, "https://other.test/steal"),
        get(&send, "https://api.test/fine")
    );
    assert_eq!(other.0, StatusCode::BAD_REQUEST, "{other:?}");
    assert!(
        other.1.contains("must be for https://api.test"),
        "{other:?}"
    );
    assert_eq!(fine.0, StatusCode::OK, "{fine:?}");
    assert_eq!(s.up.count(), 1);
    assert!(s.up.seen().iter().all(|seen| seen.uri == "/fine"));
    let mut stream = send.ready().await.unwrap();
    let (response, _) = stream
        .send_request(
            Request::get("https://api.test/host")
                .header("host", "other.test")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a Host must agree"
    );
    assert_eq!(s.up.count(), 1);
}

/// HTTP/2 frames written by hand, and read back.
mod frames {
    use super::*;

    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const CANCEL: u32 = 0x8;
    pub const HTTP_1_1_REQUIRED: u32 = 0xd;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A literal header field without indexing, its name given (HPACK, RFC 7541 §6.2.2).
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00, name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
        out
    }

    /// `GET https://api.test<path>`: `:method GET`, `:scheme https` (static table), `:path`
    /// and `:authority` as literals (RFC 7541 Appendix A).
    pub fn get_block(path: &str) -> Vec<u8> {
        let mut out = vec![0x82, 0x87];
        out.extend_from_slice(&[0x04, path.len() as u8]);
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&[0x01, 8]);
        out.extend_from_slice(b"api.test");
        out
    }

    /// The client preface and an empty SETTINGS.
    pub fn preface() -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// One frame read: type, flags, stream, payload.
    pub type Frame = (u8, u8, u32, Vec<u8>);

    /// Frames until the server closes the connection (or 20 s pass, or `enough` says so).
    pub async fn read_until<S: AsyncRead + Unpin>(
        stream: &mut S,
        enough: impl Fn(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let mut frames = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let mut head = [0u8; 9];
                if stream.read_exact(&mut head).await.is_err() {
                    return;
                }
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; length];
                if stream.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                frames.push((head[3], head[4], id, payload));
                if enough(&frames) {
                    return;
                }
            }
        })
        .await;
        frames
    }

    /// The GOAWAY's error code and debug data.
    pub fn goaway(frames: &[Frame]) -> Option<(u32, String)> {
        frames.iter().find(|f| f.0 == GOAWAY).map(|f| {
            let code = u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]);
            (code, String::from_utf8_lossy(&f.3[8..]).into_owned())
        })
    }

    /// Writes `bytes`, ignoring a connection the server already closed.
    pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
        let _ = stream.write_all(bytes).await;
        let _ = stream.flush().await;
    }
}

use frames::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_specific_header_ends_its_stream_not_the_connection() {
    let s = setup("conn-header", "").await;
    let mut tls = tunnel(&s.proxy, &[b"h2"]).await;
    let mut bad = get_block("/bad");
    bad.extend(literal("connection", "keep-alive"));
    let mut out = preface();
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &bad));
    out.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get_block("/good"),
    ));
    send(&mut tls, &out).await;
    let frames = read_until(&mut tls, |frames| {
        frames.iter().any(|f| f.0 == HEADERS && f.2 == 3)
    })
    .await;
    let reset = frames.iter().find(|f| f.0 == RST_STREAM && f.2 == 1);
    let code = reset.map(|f| u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]));
    assert_eq!(code, Some(PROTOCOL_ERROR), "{frames:?}");
    // Stream 3's response begins with `:status 200` (HPACK static index 8).
    let answer = frames.iter().find(|f| f.0 == HEADERS && f.2 == 3);
    assert_eq!(answer.map(|f| f.3[0]), Some(0x88), "{frames:?}");
    assert!(goaway(&frames).is_none(), "{frames:?}");
    assert_eq!(s.up.count(), 1);
    assert_eq!(s.up.seen()[0].uri, "/good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_connection_with_a_protocol_error_record() {
    let s = setup("rapid", "").await;
    let mut tls = tunnel(&s.proxy, &[b"h2"]).await;
    let mut out = preface();
    for n in 0..1000u32 {
        let stream = 2 * n + 1;
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &get_block("/burst"),
        ));
        out.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    send(&mut tls, &out).await;
    let frames = read_until(&mut tls, |_| false).await;
    let (code, _) = goaway(&frames).expect("a GOAWAY");
    assert_ne!(code, 0, "not NO_ERROR: {frames:?}");
    drop(tls);
    let tunnel = wait_for(&s.proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["outcome"], "protocol_error", "{tunnel:?}");
    assert_eq!(tunnel[0]["protocol"], "h2", "{tunnel:?}");
    let message = tunnel[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("rapid reset"), "{tunnel:?}");
    assert!(s.up.count() < 1000, "{}", s.up.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cancelled_after_acceptance_trip_tollgates_own_guard() {
    // Each stream is reset only once the upstream has its request: h2's pending-accept
    // limit never sees these, tollgate's guard must.
    let dir = Dir::new("guard");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["api.test"]));
    let up = proxy_support::serve(
        listener,
        move |stream| {
            let accept = acceptor.accept(stream);
            async move { accept.await.ok() }
        },
        move |_, _| {
            let _ = arrived.send(());
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                ok("late")
            }
        },
    );
    let proxy = start(Proxy::builder(policy_for(&ca_file, "")).transport(remap(up.addr, None)));
    let send = h2_client(&proxy).await;
    let mut closed = false;
    for _ in 0..200 {
        let Ok(ready) = send.clone().ready().await else {
            closed = true;
            break;
        };
        let mut ready = ready;
        let Ok((response, mut stream)) = ready.send_request(
            Request::get("https://api.test/slow").body(()).unwrap(),
            true,
        ) else {
            closed = true;
            break;
        };
        tokio::pin!(response);
        tokio::select! {
            _ = arrivals.recv() => stream.send_reset(h2::Reason::CANCEL),
            // Closed under it before it reached the upstream.
            _ = &mut response => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the connection outlived 200 cancelled streams");
    let tunnel = wait_for(&proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["outcome"], "protocol_error", "{tunnel:?}");
    let message = tunnel[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cancelled 100 streams"), "{tunnel:?}");
    let _ = up;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_closes_the_connection_with_a_protocol_error_record() {
    let s = setup("flood", "").await;
    let mut tls = tunnel(&s.proxy, &[b"h2"]).await;
    let mut out = preface();
    out.extend(frame(HEADERS, 0, 1, &get_block("/flood")));
    let filler = literal("x-flood", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    for _ in 0..5000 {
        out.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    send(&mut tls, &out).await;
    let frames = read_until(&mut tls, |_| false).await;
    assert!(goaway(&frames).is_some(), "{frames:?}");
    drop(tls);
    let tunnel = wait_for(&s.proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["outcome"], "protocol_error", "{tunnel:?}");
    let message = tunnel[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("CONTINUATION"), "{tunnel:?}");
    assert_eq!(s.up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_before_its_response_is_recorded_cancelled() {
    let dir = Dir::new("cancel");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["api.test"]));
    let up = proxy_support::serve(
        listener,
        move |stream| {
            let accept = acceptor.accept(stream);
            async move { accept.await.ok() }
        },
        move |_, _| {
            let _ = arrived.send(());
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                ok("late")
            }
        },
    );
    let proxy = start(Proxy::builder(policy_for(&ca_file, "")).transport(remap(up.addr, None)));
    let send = h2_client(&proxy).await;
    let mut ready = send.clone().ready().await.unwrap();
    let (response, mut stream) = ready
        .send_request(
            Request::get("https://api.test/slow").body(()).unwrap(),
            true,
        )
        .unwrap();
    arrivals.recv().await.unwrap();
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);
    let cancelled = wait_for(&proxy, |r| r["type"] == "http");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["outcome"], "cancelled", "{cancelled:?}");
    assert_eq!(cancelled[0]["decision"], "allow", "{cancelled:?}");
    assert_eq!(cancelled[0]["path"], "/slow", "{cancelled:?}");
    assert_eq!(cancelled[0]["protocol"], "h2", "{cancelled:?}");
    // Not a refusal.
    assert_eq!(proxy.handle.stats().denied, 0);
    let _ = up;
}

/// The refusal an h2c client gets: SETTINGS, then GOAWAY HTTP_1_1_REQUIRED saying what to do.
async fn assert_h2c_refused<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> String {
    let mut out = preface();
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block("/")));
    send(stream, &out).await;
    let frames = read_until(stream, |_| false).await;
    assert_eq!(frames.first().map(|f| f.0), Some(SETTINGS), "{frames:?}");
    let (code, debug) = goaway(&frames).expect("a GOAWAY");
    assert_eq!(code, HTTP_1_1_REQUIRED, "{frames:?}");
    debug
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_the_proxy_port_is_refused_with_goaway() {
    let s = setup("h2c-port", "").await;
    let mut stream = TcpStream::connect(s.proxy.addr).await.unwrap();
    let debug = assert_h2c_refused(&mut stream).await;
    assert!(debug.contains("HTTP/1.1"), "{debug}");
    let refused = wait_for(&s.proxy, |r| r["reason"] == "h2c_unsupported");
    assert_eq!(refused[0]["type"], "http", "{refused:?}");
    assert_eq!(refused[0]["error"], "invalid_request", "{refused:?}");
    assert_eq!(refused[0]["message"], debug.as_str(), "{refused:?}");
    // Ordinary HTTP/1.1 requests starting with `P` still reach the HTTP/1.1 server.
    let put = proxy_support::raw(
        s.proxy.addr,
        b"PUT http://api.test:443/x HTTP/1.1\r\nHost: api.test:443\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(put.starts_with("HTTP/1.1 "), "{put}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_inside_an_intercepted_tunnel_is_refused_with_goaway() {
    let s = setup("h2c-tunnel", "").await;
    let mut stream = connect(&s.proxy).await;
    let debug = assert_h2c_refused(&mut stream).await;
    assert!(debug.contains("ALPN"), "{debug}");
    drop(stream);
    let tunnel = wait_for(&s.proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["reason"], "h2c_unsupported", "{tunnel:?}");
    assert_eq!(tunnel[0]["error"], "invalid_request", "{tunnel:?}");
    assert_eq!(tunnel[0]["outcome"], "not_tls", "{tunnel:?}");
    assert_eq!(tunnel[0]["status"], serde_json::Value::Null, "{tunnel:?}");
    assert_eq!(s.up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_gone_before_its_response_is_recorded_cancelled() {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let up = proxy_support::upstream_async(move |_, _| {
        let _ = arrived.send(());
        async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            ok("late")
        }
    })
    .await;
    let proxy = proxy_support::start(Proxy::builder(proxy_support::roomy()).transport(up.remap()));
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET http://api.test/slow HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    arrivals.recv().await.unwrap();
    drop(stream);
    let mut cancelled = Vec::new();
    for _ in 0..1000 {
        cancelled = proxy.records();
        if !cancelled.is_empty() {
            break;
        }
    }
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["outcome"], "cancelled", "{cancelled:?}");
    assert_eq!(cancelled[0]["protocol"], "http/1.1", "{cancelled:?}");
    assert_eq!(cancelled[0]["path"], "/slow", "{cancelled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_open_streams_is_closed_after_the_header_read_timeout() {
    let dir = Dir::new("idle");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let up = tls_upstream(ca.server_config(&["api.test"]), echo).await;
    let settings = tollgate::proxy::Settings {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let proxy = start(
        Proxy::builder(policy_for(&ca_file, ""))
            .transport(remap(up.addr, None))
            .settings(settings),
    );
    let tls = tunnel(&proxy, &[b"h2"]).await;
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    let (ended, mut closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = ended.send(connection.await);
    });
    let (status, _) = get(&send, "https://api.test/once").await;
    assert_eq!(status, StatusCode::OK);
    // The client keeps its side open; tollgate ends the idle connection (GOAWAY, close).
    let ended = tokio::time::timeout(Duration::from_secs(20), &mut closed).await;
    assert!(ended.is_ok(), "the idle connection was not closed");
    let tunnel = wait_for(&proxy, |r| r["type"] == "connect");
    assert_eq!(tunnel[0]["outcome"], "closed", "{tunnel:?}");
    assert!(
        send.clone().ready().await.is_err(),
        "no new stream after GOAWAY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stream_past_the_grace_and_records_it_cancelled() {
    let dir = Dir::new("shutdown");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["api.test"]));
    let up = proxy_support::serve(
        listener,
        move |stream| {
            let accept = acceptor.accept(stream);
            async move { accept.await.ok() }
        },
        move |_, _| {
            let _ = arrived.send(());
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                ok("late")
            }
        },
    );
    let settings = tollgate::proxy::Settings {
        shutdown_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let proxy = start(
        Proxy::builder(policy_for(&ca_file, ""))
            .transport(remap(up.addr, None))
            .settings(settings),
    );
    let send = h2_client(&proxy).await;
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _) = ready
        .send_request(
            Request::get("https://api.test/long").body(()).unwrap(),
            true,
        )
        .unwrap();
    arrivals.recv().await.unwrap();
    let Intercepting { harness, .. } = proxy;
    harness.handle.shutdown().await;
    // The stream did not finish within the grace: the client sees it fail.
    assert!(response.await.is_err());
    let mut records = Vec::new();
    for _ in 0..1000 {
        records = harness.audit.records();
        if records.iter().any(|r| r["type"] == "http")
            && records.iter().any(|r| r["type"] == "connect")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inner: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(inner.len(), 1, "{records:?}");
    assert_eq!(inner[0]["outcome"], "cancelled", "{records:?}");
    let tunnel: Vec<_> = records.iter().filter(|r| r["type"] == "connect").collect();
    assert_eq!(tunnel[0]["protocol"], "h2", "{records:?}");
    let _ = up;
}
