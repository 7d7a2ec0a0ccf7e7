//! Response bodies that do not end with their last data byte, in-process through intercepted
//! TLS: trailers reach the client (scrubbed of `tollgate-*` names, echoed secrets redacted)
//! whether the body was buffered or streamed, `TE: trailers` reaches the upstream, and
//! bodies that must stream (event streams, gRPC) stream even from a credential scope, their
//! echoed secrets redacted on the way even when split across chunks.
//!
//! The client is hyper's own HTTP/1.1 (or HTTP/2) client over a CONNECT tunnel, trusting
//! only the execution's CA: it reads the body frame by frame, so the tests see what arrived
//! when, and trailers as trailers. gRPC's own path, HTTP/2 on both sides, has an upstream of
//! hyper's HTTP/2 server. Streaming is proved by a barrier, never by timing: the upstream
//! sends the rest of its body only once the client has read the first part.

mod proxy_support;
mod tls_support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_support::Seen;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tollgate::proxy::body::{BoxError, ProxyBody};
use tollgate::proxy::{Credentials, Proxy};
use tollgate_policy::secrets::SecretRules;

/// The bearer provider's secret.
const SECRET: &str = "s3cr3t-bearer-9f2e71c4";

/// How long a test waits for something that must happen before it calls it a failure (a
/// guard against a hang, never a measure of speed).
const GUARD: Duration = Duration::from_secs(20);

/// The policy: `api.test` pinned and allowed, the upstream's test CA trusted, optionally a
/// bearer provider for `https://api.test` (its secret in a 0600 file of team acme), and
/// `max_response_bytes` (bodies without a length stream above 16 MiB, are buffered below).
fn trailers_policy(
    dir: &Dir,
    ca_file: &Path,
    provider: bool,
    max_response: &str,
) -> Arc<tollgate_policy::Policy> {
    let providers = if provider {
        use std::os::unix::fs::PermissionsExt;
        let team = dir.0.join("secrets/acme");
        std::fs::create_dir_all(&team).unwrap();
        let path = team.join("bearer");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        "auth_providers:
  - name: Bearer
    type: bearer
    secret: {file: bearer}
    scope: [https://api.test]
"
    } else {
        ""
    };
    policy(&format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {API_IP}
  upstream_ca: {{file: {}}}
  allow:
{}
limits:
  max_requests: 1000
  max_response_bytes: {max_response}
{providers}",
        ca_file.display(),
        entry("api.test", ""),
    ))
}

/// A proxy in front of one HTTPS upstream answering with `handler`.
struct World {
    dir: Dir,
    api: TlsUpstream,
    proxy: Intercepting,
}

async fn world(
    provider: bool,
    max_response: &str,
    handler: impl Fn(&Seen, usize) -> Response<ProxyBody> + Send + Sync + 'static,
) -> World {
    let dir = Dir::new("trailers");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let api = tls_upstream(ca.server_config(&["api.test"]), handler).await;
    let policy = trailers_policy(&dir, &ca_file, provider, max_response);
    let mut builder = Proxy::builder(policy.clone()).transport(remap(api.addr, None));
    if provider {
        let rules = SecretRules::new(dir.0.join("secrets"), []).unwrap();
        builder = builder.credentials(Credentials::load(&policy, &rules).unwrap());
    }
    let proxy = start(builder);
    World { dir, api, proxy }
}

/// A body the upstream sends frame by frame as the test feeds it through the channel (the
/// channel closed ends it).
fn fed_body(frames: mpsc::UnboundedReceiver<Frame<Bytes>>) -> ProxyBody {
    let stream = futures_util::stream::unfold(frames, |mut frames| async move {
        let frame = frames.recv().await?;
        Some((Ok::<_, BoxError>(frame), frames))
    });
    StreamBody::new(stream).boxed()
}

fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// An upstream answer: `content_type`, a `Trailer` announcement of `announced`, then
/// `chunks` and `trailers`. hyper's server sends trailers only when the request said
/// `TE: trailers` and the response announced them, as RFC 9110 asks.
fn chunked_with_trailers(
    content_type: &str,
    announced: &str,
    chunks: Vec<Bytes>,
    trailers: HeaderMap,
) -> Response<ProxyBody> {
    let (feed, frames) = mpsc::unbounded_channel();
    for chunk in chunks {
        feed.send(Frame::data(chunk)).unwrap();
    }
    feed.send(Frame::trailers(trailers)).unwrap();
    drop(feed);
    let mut response = Response::new(fed_body(frames));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
    headers.insert("trailer", HeaderValue::from_str(announced).unwrap());
    response
}

/// `CONNECT api.test:443` through the proxy, TLS trusting the execution's CA (ALPN
/// `http/1.1`), and hyper's HTTP/1.1 client on top.
async fn client(proxy: &Intercepting) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tls = tunnel(proxy, b"http/1.1").await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// The same tunnel with ALPN `h2`, and hyper's HTTP/2 client on top.
async fn h2_client(proxy: &Intercepting) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tls = tunnel(proxy, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn tunnel(proxy: &Intercepting, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "CONNECT answer");
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&proxy.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// `GET https://api.test{path}` with `headers`.
fn get(path: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut request = Request::get(path);
    request = request.header("host", "api.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Empty::new()).unwrap()
}

/// What the client read: the body's bytes and its trailers.
#[derive(Debug)]
struct Read {
    head: http::response::Parts,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// Sends `request` and reads the whole answer.
async fn fetch(proxy: &Intercepting, request: Request<Empty<Bytes>>) -> Read {
    let mut sender = client(proxy).await;
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    let (head, mut body) = response.into_parts();
    let mut read = Read {
        head,
        body: Vec::new(),
        trailers: None,
    };
    while let Some(frame) = tokio::time::timeout(GUARD, body.frame())
        .await
        .expect("the body in time")
    {
        collect(&mut read, frame.unwrap());
    }
    read
}

fn collect(read: &mut Read, frame: Frame<Bytes>) {
    match frame.into_data() {
        Ok(data) => read.body.extend_from_slice(&data),
        Err(frame) => {
            if let Ok(trailers) = frame.into_trailers() {
                read.trailers
                    .get_or_insert_with(HeaderMap::new)
                    .extend(trailers);
            }
        }
    }
}

fn trailer<'a>(read: &'a Read, name: &str) -> Option<&'a str> {
    read.trailers.as_ref()?.get(name)?.to_str().ok()
}

/// The upstream's trailers, announced and sent: gRPC's status, an echo of the request's
/// credential when it had one, and a forged `tollgate-error`.
fn echo_in_trailers(content_type: &'static str) -> impl Fn(&Seen, usize) -> Response<ProxyBody> {
    move |seen, _| {
        let echoed = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        chunked_with_trailers(
            content_type,
            "grpc-status, grpc-message, x-echo, tollgate-error",
            vec![Bytes::from_static(b"first "), Bytes::from_static(b"second")],
            trailers(&[
                ("grpc-status", "0"),
                ("grpc-message", "ok"),
                ("x-echo", &echoed),
                ("tollgate-error", "policy_denied"),
            ]),
        )
    }
}

/// Trailers reach the client with the body, whichever way the body travelled: buffered
/// (no length, under the 16 MiB the proxy holds) or streamed (above it); `TE: trailers`
/// reached the upstream, and nothing the upstream calls `tollgate-*` reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_the_client_buffered_and_streamed() {
    for max_response in ["1MiB", "64MiB"] {
        let w = world(false, max_response, echo_in_trailers("text/plain")).await;
        let read = fetch(&w.proxy, get("/t", &[("te", "trailers")])).await;
        assert_eq!(read.head.status, 200, "{max_response}: {read:?}");
        assert_eq!(read.body, b"first second", "{max_response}: {read:?}");
        assert_eq!(
            trailer(&read, "grpc-status"),
            Some("0"),
            "{max_response}: {read:?}"
        );
        assert_eq!(
            trailer(&read, "grpc-message"),
            Some("ok"),
            "{max_response}: {read:?}"
        );
        assert_eq!(
            trailer(&read, "x-echo"),
            Some("none"),
            "{max_response}: {read:?}"
        );
        assert_eq!(
            trailer(&read, "tollgate-error"),
            None,
            "{max_response}: {read:?}"
        );
        let announced = read
            .head
            .headers
            .get("trailer")
            .and_then(|v| v.to_str().ok());
        assert!(
            announced.is_some_and(|a| a.contains("grpc-status") && !a.contains("tollgate")),
            "{max_response}: {read:?}"
        );
        let seen = w.api.seen();
        assert_eq!(values(&seen[0], "te"), vec!["trailers"], "{max_response}");
        let records = w.proxy.records();
        let http: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
        assert_eq!(http.len(), 1, "{records:?}");
        assert_eq!(http[0]["outcome"], "complete", "{records:?}");
        assert_eq!(http[0]["bytes_down"], 12, "{records:?}");
        drop(w.dir);
    }
}

/// Only `TE: trailers` goes upstream: another transfer coding the sandbox accepts is not
/// tollgate's to offer, and neither is `TE` in a request that did not ask for trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_te_trailers_is_forwarded() {
    let w = world(false, "1MiB", echo_in_trailers("text/plain")).await;
    for (sent, forwarded) in [
        ("trailers, deflate;q=0.5", vec!["trailers"]),
        ("gzip", vec![]),
        ("Trailers", vec!["trailers"]),
    ] {
        let read = fetch(&w.proxy, get("/te", &[("te", sent)])).await;
        assert_eq!(read.head.status, 200, "{read:?}");
        let seen = w.api.seen();
        let last = seen.last().unwrap();
        assert_eq!(values(last, "te"), forwarded, "TE: {sent}");
    }
}

/// A secret the upstream echoes in a trailer is redacted like one in a header, in a buffered
/// body and in a streamed gRPC one, and the record says a secret was echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_echoed_in_a_trailer_is_redacted() {
    for content_type in ["text/plain", "application/grpc"] {
        let w = world(true, "1MiB", echo_in_trailers(content_type)).await;
        let request = get("/echo", &[("te", "trailers"), ("tollgate-auth", "Bearer")]);
        let read = fetch(&w.proxy, request).await;
        assert_eq!(read.head.status, 200, "{content_type}: {read:?}");
        // The whole header value built from the secret is one needle.
        assert_eq!(
            trailer(&read, "x-echo"),
            Some("[redacted by tollgate]"),
            "{content_type}: {read:?}"
        );
        assert_eq!(
            trailer(&read, "grpc-status"),
            Some("0"),
            "{content_type}: {read:?}"
        );
        assert!(
            !format!("{read:?}").contains(SECRET),
            "{content_type}: {read:?}"
        );
        let seen = w.api.seen();
        assert_eq!(
            values(&seen[0], "authorization"),
            vec![format!("Bearer {SECRET}")]
        );
        let records = w.proxy.records();
        let http: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
        assert_eq!(
            http[0]["finding"], "secret_echoed",
            "{content_type}: {records:?}"
        );
        assert_eq!(
            http[0]["outcome"], "complete",
            "{content_type}: {records:?}"
        );
    }
}

/// What a streaming upstream does between the two halves of its body.
struct Streaming {
    /// Fired by the test once the client has the first part.
    go_on: Arc<Notify>,
}

/// An upstream that sends `first`, waits for the test's signal, then `rest` (a chunk each),
/// then `trailers` if any; `content_type` on the answer.
fn two_halves(
    content_type: &'static str,
    first: Vec<u8>,
    rest: Vec<Vec<u8>>,
    trailers: Option<HeaderMap>,
) -> (Streaming, impl Fn(&Seen, usize) -> Response<ProxyBody>) {
    let go_on = Arc::new(Notify::new());
    let signal = go_on.clone();
    let handler = move |_: &Seen, _| {
        let (feed, frames) = mpsc::unbounded_channel();
        feed.send(Frame::data(Bytes::from(first.clone()))).unwrap();
        let signal = signal.clone();
        let rest = rest.clone();
        let trailers = trailers.clone();
        tokio::spawn(async move {
            signal.notified().await;
            for chunk in rest {
                if feed.send(Frame::data(Bytes::from(chunk))).is_err() {
                    return;
                }
            }
            if let Some(trailers) = trailers {
                let _ = feed.send(Frame::trailers(trailers));
            }
        });
        let mut response = Response::new(fed_body(frames));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
        if content_type.starts_with("application/grpc") {
            response
                .headers_mut()
                .insert("trailer", HeaderValue::from_static("grpc-status"));
        }
        response
    };
    (Streaming { go_on }, handler)
}

/// Reads `request`'s answer until its body holds `until`, then lets the upstream go on and
/// reads the rest: a proxy that held the body back until its end never gets there.
async fn fetch_in_two_halves(
    proxy: &Intercepting,
    streaming: &Streaming,
    request: Request<Empty<Bytes>>,
    until: &[u8],
) -> Read {
    let mut sender = client(proxy).await;
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("the head before the upstream's body ended")
        .unwrap();
    let (head, mut body) = response.into_parts();
    let mut read = Read {
        head,
        body: Vec::new(),
        trailers: None,
    };
    while !read.body.windows(until.len()).any(|w| w == until) {
        let frame = tokio::time::timeout(GUARD, body.frame())
            .await
            .expect("the first part before the upstream's body ended")
            .expect("more body")
            .unwrap();
        collect(&mut read, frame);
    }
    // The barrier: the upstream's `notified()` may not be waiting yet; `notify_one` keeps
    // the permit for it.
    streaming.go_on.notify_one();
    while let Some(frame) = tokio::time::timeout(GUARD, body.frame())
        .await
        .expect("the rest in time")
    {
        collect(&mut read, frame.unwrap());
    }
    read
}

/// An event stream from a credential scope streams: the first event reaches the client
/// before the upstream has sent the next, and an echoed secret split across two chunks is
/// still redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_with_credentials_streams_and_a_split_secret_is_redacted() {
    let (cut_at, echo) = (7, format!("data: {{\"token\": \"{SECRET}\"}}\n\n"));
    let split = echo.find(SECRET).unwrap() + cut_at;
    let (streaming, handler) = two_halves(
        "text/event-stream",
        b"data: one\n\n".to_vec(),
        vec![
            echo.as_bytes()[..split].to_vec(),
            echo.as_bytes()[split..].to_vec(),
        ],
        None,
    );
    let w = world(true, "1MiB", handler).await;
    let request = get("/events", &[("tollgate-auth", "Bearer")]);
    let read = fetch_in_two_halves(&w.proxy, &streaming, request, b"data: one\n\n").await;
    let text = String::from_utf8_lossy(&read.body);
    assert_eq!(
        text, "data: one\n\ndata: {\"token\": \"[redacted by tollgate]\"}\n\n",
        "{read:?}"
    );
    let records = w.proxy.records();
    let http: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(http[0]["finding"], "secret_echoed", "{records:?}");
    assert_eq!(http[0]["outcome"], "complete", "{records:?}");
    assert!(!w.proxy.audit.text().contains(SECRET));
}

/// A gRPC response streams (a server-streaming call's messages arrive as they are sent),
/// from a credential scope too; an echoed secret is replaced by as many bytes, so every
/// length-prefixed message keeps its length, and `grpc-status` arrives in the trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_and_keeps_message_lengths_when_redacted() {
    fn message(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }
    let first = message(b"hello");
    let echoed = message(format!("you sent {SECRET}!").as_bytes());
    let split = echoed.len() - 6;
    let (streaming, handler) = two_halves(
        "application/grpc+proto",
        first.clone(),
        vec![echoed[..split].to_vec(), echoed[split..].to_vec()],
        Some(trailers(&[("grpc-status", "0")])),
    );
    let w = world(true, "1MiB", handler).await;
    let request = get(
        "/pkg.Svc/Stream",
        &[("te", "trailers"), ("tollgate-auth", "Bearer")],
    );
    let read = fetch_in_two_halves(&w.proxy, &streaming, request, &first).await;
    let mut expected = first.clone();
    expected.extend(message(
        format!("you sent {}!", "*".repeat(SECRET.len())).as_bytes(),
    ));
    assert_eq!(read.body, expected, "{read:?}");
    assert_eq!(trailer(&read, "grpc-status"), Some("0"), "{read:?}");
    let records = w.proxy.records();
    let http: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(http[0]["finding"], "secret_echoed", "{records:?}");
    assert_eq!(http[0]["outcome"], "complete", "{records:?}");
}

/// Without credentials too, a gRPC response without a length streams at once instead of
/// being held whole under the buffering limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_without_credentials() {
    for content_type in ["application/grpc", "application/grpc-web+proto"] {
        let (streaming, handler) = two_halves(
            content_type,
            b"\0\0\0\0\x02hi".to_vec(),
            vec![b"\0\0\0\0\x03bye".to_vec()],
            Some(trailers(&[("grpc-status", "0")])),
        );
        let w = world(false, "1MiB", handler).await;
        let request = get("/pkg.Svc/Stream", &[("te", "trailers")]);
        let read = fetch_in_two_halves(&w.proxy, &streaming, request, b"hi").await;
        assert_eq!(
            read.body, b"\0\0\0\0\x02hi\0\0\0\0\x03bye",
            "{content_type}: {read:?}"
        );
    }
}

/// An HTTPS upstream for `api.test` speaking HTTP/2 only (hyper's server), answering every
/// request with `handler`, recording what it received.
async fn h2_upstream(
    ca: &TestCa,
    handler: impl Fn(&Seen) -> Response<ProxyBody> + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Seen>>>) {
    let mut config = ca.server_config(&["api.test"]).as_ref().clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        let handler = handler.clone();
                        async move {
                            let seen = Seen::read(request).await;
                            record.lock().unwrap().push(seen.clone());
                            Ok::<_, std::convert::Infallible>(handler(&seen))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// gRPC's own path: HTTP/2 from the client, HTTP/2 to the upstream. The upstream's trailers
/// (no `Trailer` announcement, as gRPC servers send none) reach the client with
/// `grpc-status`, without the forged `tollgate-error`, the secret it echoed in a message and
/// a trailer redacted, the message's length kept; `te: trailers` reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_http2_on_both_sides_gets_its_trailers() {
    fn message(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }
    let dir = Dir::new("trailers-h2");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let (addr, seen) = h2_upstream(&ca, |seen| {
        let echoed = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let (feed, frames) = mpsc::unbounded_channel();
        feed.send(Frame::data(Bytes::from(message(echoed.as_bytes()))))
            .unwrap();
        feed.send(Frame::trailers(trailers(&[
            ("grpc-status", "0"),
            ("x-echo", &echoed),
            ("tollgate-error", "policy_denied"),
        ])))
        .unwrap();
        let mut response = Response::new(fed_body(frames));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        response
    })
    .await;
    let policy = trailers_policy(&dir, &ca_file, true, "1MiB");
    let rules = SecretRules::new(dir.0.join("secrets"), []).unwrap();
    let proxy = start(
        Proxy::builder(policy.clone())
            .credentials(Credentials::load(&policy, &rules).unwrap())
            .transport(remap(addr, None)),
    );
    let mut sender = h2_client(&proxy).await;
    let request = Request::post("https://api.test/pkg.Svc/Unary")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .header("tollgate-auth", "Bearer")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    let (head, mut body) = response.into_parts();
    let mut read = Read {
        head,
        body: Vec::new(),
        trailers: None,
    };
    while let Some(frame) = tokio::time::timeout(GUARD, body.frame())
        .await
        .expect("the body in time")
    {
        collect(&mut read, frame.unwrap());
    }
    assert_eq!(read.head.status, 200, "{read:?}");
    let bearer = format!("Bearer {SECRET}");
    assert_eq!(
        read.body,
        message("*".repeat(bearer.len()).as_bytes()),
        "{read:?}"
    );
    assert_eq!(trailer(&read, "grpc-status"), Some("0"), "{read:?}");
    assert_eq!(
        trailer(&read, "x-echo"),
        Some("[redacted by tollgate]"),
        "{read:?}"
    );
    assert_eq!(trailer(&read, "tollgate-error"), None, "{read:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(values(&seen[0], "te"), vec!["trailers"]);
    assert_eq!(values(&seen[0], "authorization"), vec![bearer]);
    let records = proxy.records();
    let http: Vec<_> = records.iter().filter(|r| r["type"] == "http").collect();
    assert_eq!(http[0]["protocol"], "h2", "{records:?}");
    assert_eq!(http[0]["upstream_protocol"], "h2", "{records:?}");
    assert_eq!(http[0]["finding"], "secret_echoed", "{records:?}");
    assert_eq!(http[0]["outcome"], "complete", "{records:?}");
}
