//! HTTP/2 towards the upstream, in-process: requests through an intercepted tunnel (the
//! client speaks HTTP/1.1 to tollgate) reach an HTTPS upstream over HTTP/2 when its ALPN
//! offers it, over HTTP/1.1 when it does not; concurrent requests share one HTTP/2
//! connection; a connection the upstream closes (`GOAWAY`) or a stream it refuses
//! (`REFUSED_STREAM`) is replaced without failing the request; a WebSocket handshake gets a
//! connection of its own, offered `http/1.1` only.
//!
//! The HTTP/2 upstream is the `h2` crate's server (the codec hyper itself uses) behind
//! rustls, so a test controls its frames: refusing a stream, a graceful `GOAWAY`.

mod proxy_support;
mod tls_support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tls_support::*;
use tokio::sync::Notify;
use tollgate::proxy::body;
use tollgate::proxy::Proxy;

/// What the upstream saw of one request, with the connection (0-based accept order) and
/// the protocol ALPN chose on it.
#[derive(Debug, Clone)]
struct Received {
    connection: usize,
    alpn: Option<String>,
    version: Version,
    uri: String,
    headers: HeaderMap,
}

/// How the HTTP/2 side answers, per connection and stream (both 0-based).
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// `200` with the request's path.
    Answer,
    /// The first connection answers its first stream, then shuts down gracefully (`GOAWAY`).
    GoAwayAfterFirst,
    /// The first connection answers its first stream and refuses every later one.
    RefuseLaterStreams,
    /// Every stream waits until `n` streams are open together, then all are answered.
    AnswerTogether(usize),
}

struct H2Upstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    /// Told when a connection's server side has ended.
    ended: Arc<Notify>,
}

impl H2Upstream {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An HTTPS upstream for `api.test` offering `alpn`: HTTP/2 (the `h2` server) when the
/// client picks `h2`, else HTTP/1.1 (hyper), answering `200` with the path either way.
async fn h2_upstream(ca: &TestCa, alpn: &[&str], behaviour: Behaviour) -> H2Upstream {
    let mut config = ca.server_config(&["api.test"]).as_ref().clone();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = H2Upstream {
        addr: listener.local_addr().unwrap(),
        received: Arc::default(),
        connections: Arc::default(),
        ended: Arc::default(),
    };
    let received = upstream.received.clone();
    let connections = upstream.connections.clone();
    let ended = upstream.ended.clone();
    let together = Arc::new(tokio::sync::Barrier::new(match behaviour {
        Behaviour::AnswerTogether(n) => n,
        _ => 1,
    }));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let connection = connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let received = received.clone();
            let ended = ended.clone();
            let together = together.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let seen = Seen {
                    connection,
                    alpn: alpn.clone(),
                    received,
                };
                if alpn.as_deref() == Some("h2") {
                    serve_h2(tls, seen, behaviour, together).await;
                } else {
                    serve_http1(tls, seen).await;
                }
                ended.notify_one();
            });
        }
    });
    upstream
}

/// Where one connection records what it receives.
#[derive(Clone)]
struct Seen {
    connection: usize,
    alpn: Option<String>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Seen {
    fn record<B>(&self, request: &Request<B>) {
        self.received.lock().unwrap().push(Received {
            connection: self.connection,
            alpn: self.alpn.clone(),
            version: request.version(),
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
        });
    }
}

async fn serve_h2<S>(tls: S, seen: Seen, behaviour: Behaviour, together: Arc<tokio::sync::Barrier>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::Builder::new()
        .max_concurrent_streams(100)
        .handshake::<_, Bytes>(tls)
        .await
    else {
        return;
    };
    let first_connection = seen.connection == 0;
    let mut stream = 0usize;
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        seen.record(&request);
        let n = stream;
        stream += 1;
        if first_connection && n > 0 && behaviour == Behaviour::RefuseLaterStreams {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let path = request.uri().path().to_owned();
        let together = together.clone();
        let answered = async move {
            let mut answer = format!("path={path}");
            let mut body = request.into_body();
            let mut received = Vec::new();
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                received.extend_from_slice(&data);
            }
            if !received.is_empty() {
                answer += &format!(" body={}", String::from_utf8_lossy(&received));
            }
            if let Behaviour::AnswerTogether(_) = behaviour {
                together.wait().await;
            }
            let response = Response::builder().status(200).body(()).unwrap();
            if let Ok(mut body) = respond.send_response(response, false) {
                let _ = body.send_data(Bytes::from(answer), true);
            }
        };
        if first_connection && n == 0 && behaviour == Behaviour::GoAwayAfterFirst {
            answered.await;
            connection.graceful_shutdown();
        } else {
            tokio::spawn(answered);
        }
    }
}

async fn serve_http1<S>(tls: S, seen: Seen)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        seen.record(&request);
        async move {
            let path = request.uri().path().to_owned();
            let _ = request.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(Response::new(body::full(Bytes::from(format!(
                "path={path}"
            )))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await;
}

/// The proxy intercepting `api.test` (pinned, remapped to `up`), the upstream's CA trusted.
fn intercepting(dir: &Dir, ca: &TestCa, up: SocketAddr, more: &str) -> Intercepting {
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", more), ""))
            .transport(remap(up, None)),
    )
}

/// curl over HTTP/1.1 to tollgate, each URL's body and then its status printed.
async fn get(proxy: &Intercepting, urls: &[&str], more: &[&str]) -> Ran {
    let mut args = vec!["--http1.1", "-w", " %{http_code}\n"];
    args.extend_from_slice(more);
    args.extend_from_slice(urls);
    curl(proxy, &args).await
}

fn http_records(proxy: &Intercepting) -> Vec<serde_json::Value> {
    proxy
        .records()
        .into_iter()
        .filter(|r| r["type"] == "http")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_an_h2_upstream_over_h2_naming_the_decided_authority() {
    let dir = Dir::new("h2-up");
    let ca = TestCa::new("upstream test CA");
    let up = h2_upstream(&ca, &["h2", "http/1.1"], Behaviour::Answer).await;
    let proxy = intercepting(&dir, &ca, up.addr, "");
    let ran = get(
        &proxy,
        &["https://api.test/one?q=1", "https://api.test/two"],
        &[],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "path=/one 200\npath=/two 200\n", "{ran:?}");
    let received = up.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for seen in &received {
        assert_eq!(seen.alpn.as_deref(), Some("h2"));
        assert_eq!(seen.version, Version::HTTP_2);
        assert!(seen.headers.get("host").is_none(), "{seen:?}");
        assert!(seen.headers.get("connection").is_none(), "{seen:?}");
    }
    // `:scheme` and `:authority` are the decided URL's.
    assert_eq!(received[0].uri, "https://api.test/one?q=1");
    assert_eq!(received[1].uri, "https://api.test/two");
    // A body goes as DATA; `TE: trailers` (gRPC needs it) is the one TE HTTP/2 allows.
    let post = get(
        &proxy,
        &["https://api.test/post"],
        &["-d", "hello", "-H", "TE: trailers"],
    )
    .await;
    assert_eq!(post.stdout, "path=/post body=hello 200\n", "{post:?}");
    let received = up.received();
    assert_eq!(received[2].headers.get("te").unwrap(), "trailers");
    assert_eq!(received[2].headers.get("content-length").unwrap(), "5");
    // Three sequential requests, one upstream connection.
    assert_eq!(up.accepted(), 1);
    let records = http_records(&proxy);
    assert_eq!(records.len(), 3, "{records:?}");
    for record in &records {
        assert_eq!(record["upstream_protocol"], "h2", "{record}");
        assert_eq!(record["outcome"], "complete", "{record}");
        assert_eq!(record["attempt"], 1, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_share_one_h2_connection() {
    const N: usize = 20;
    let dir = Dir::new("h2-concurrent");
    let ca = TestCa::new("upstream test CA");
    let up = h2_upstream(&ca, &["h2"], Behaviour::AnswerTogether(N)).await;
    let proxy = intercepting(&dir, &ca, up.addr, "");
    // Each stream is held until all N are open on the upstream at once: the requests are
    // concurrent there, not one after the other. curl opens a tunnel per parallel transfer.
    let urls: Vec<String> = (0..N).map(|i| format!("https://api.test/c{i}")).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let ran = get(&proxy, &urls, &["-Z", "--parallel-max", "20", "-m", "60"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.matches(" 200\n").count(), N, "{ran:?}");
    assert_eq!(up.received().len(), N);
    assert_eq!(up.accepted(), 1, "every request on one upstream connection");
    let records = http_records(&proxy);
    assert_eq!(records.len(), N, "{records:?}");
    assert!(records.iter().all(|r| r["upstream_protocol"] == "h2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_h2_is_spoken_to_in_http1() {
    let dir = Dir::new("h2-none");
    let ca = TestCa::new("upstream test CA");
    // Offering http/1.1 only, and offering no ALPN at all.
    for alpn in [&["http/1.1"][..], &[]] {
        let up = h2_upstream(&ca, alpn, Behaviour::Answer).await;
        let proxy = intercepting(&dir, &ca, up.addr, "");
        let ran = get(&proxy, &["https://api.test/a", "https://api.test/b"], &[]).await;
        assert_eq!(ran.stdout, "path=/a 200\npath=/b 200\n", "{alpn:?} {ran:?}");
        let received = up.received();
        assert!(received.iter().all(|r| r.version == Version::HTTP_11));
        assert_eq!(
            received[0].headers.get("host").map(|v| v.to_str().unwrap()),
            Some("api.test")
        );
        assert_eq!(up.accepted(), 1, "kept alive and reused");
        let records = http_records(&proxy);
        assert_eq!(records.len(), 2);
        assert!(
            records.iter().all(|r| r["upstream_protocol"] == "http/1.1"),
            "{records:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_h2_connection_closed_by_goaway_is_replaced_without_failing_the_request() {
    let dir = Dir::new("h2-goaway");
    let ca = TestCa::new("upstream test CA");
    let up = h2_upstream(&ca, &["h2"], Behaviour::GoAwayAfterFirst).await;
    let proxy = intercepting(&dir, &ca, up.addr, "");
    let ended = up.ended.notified();
    let first = get(&proxy, &["https://api.test/first"], &[]).await;
    assert_eq!(first.stdout, "path=/first 200\n", "{first:?}");
    // The upstream has sent its GOAWAY and closed the connection tollgate pooled.
    ended.await;
    let second = get(&proxy, &["https://api.test/second"], &[]).await;
    assert_eq!(second.stdout, "path=/second 200\n", "{second:?}");
    assert_eq!(up.accepted(), 2);
    let records = http_records(&proxy);
    assert_eq!(records.len(), 2, "no retried attempt: {records:?}");
    assert!(records
        .iter()
        .all(|r| r["attempt"] == 1 && r["status"] == 200));
    assert_eq!(proxy.handle.stats().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_upstream_refuses_on_a_pooled_connection_goes_on_a_fresh_one() {
    let dir = Dir::new("h2-refused");
    let ca = TestCa::new("upstream test CA");
    let up = h2_upstream(&ca, &["h2"], Behaviour::RefuseLaterStreams).await;
    let proxy = intercepting(&dir, &ca, up.addr, "");
    let ran = get(&proxy, &["https://api.test/a", "https://api.test/b"], &[]).await;
    assert_eq!(ran.stdout, "path=/a 200\npath=/b 200\n", "{ran:?}");
    // /b was refused on the first connection (REFUSED_STREAM: not processed), then sent on
    // a second one, within the same attempt.
    let received = up.received();
    let paths: Vec<_> = received
        .iter()
        .map(|r| (r.connection, r.uri.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            (0, "https://api.test/a"),
            (0, "https://api.test/b"),
            (1, "https://api.test/b")
        ]
    );
    let records = http_records(&proxy);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records
        .iter()
        .all(|r| r["attempt"] == 1 && r["status"] == 200));
    assert_eq!(proxy.handle.stats().requests, 2, "one attempt each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_gets_its_own_http1_connection() {
    let dir = Dir::new("h2-upgrade");
    let ca = TestCa::new("upstream test CA");
    let up = h2_upstream(&ca, &["h2", "http/1.1"], Behaviour::Answer).await;
    let proxy = intercepting(&dir, &ca, up.addr, "      websocket: true\n");
    // A pooled HTTP/2 connection exists first: the handshake must not take it.
    let warm = get(&proxy, &["https://api.test/warm"], &[]).await;
    assert_eq!(warm.stdout, "path=/warm 200\n", "{warm:?}");
    let handshake = get(
        &proxy,
        &["https://api.test/socket"],
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    )
    .await;
    // The test upstream answers 200, not 101: the answer is relayed like any other.
    assert_eq!(handshake.stdout, "path=/socket 200\n", "{handshake:?}");
    let after = get(&proxy, &["https://api.test/after"], &[]).await;
    assert_eq!(after.stdout, "path=/after 200\n", "{after:?}");
    let received = up.received();
    let seen: Vec<_> = received
        .iter()
        .map(|r| (r.connection, r.alpn.as_deref(), r.version))
        .collect();
    assert_eq!(
        seen,
        [
            (0, Some("h2"), Version::HTTP_2),
            (1, Some("http/1.1"), Version::HTTP_11),
            // The handshake's connection is not pooled: the next request goes back on h2.
            (0, Some("h2"), Version::HTTP_2),
        ],
        "{received:?}"
    );
    let upgrade = &received[1].headers;
    assert_eq!(upgrade.get("upgrade").unwrap(), "websocket");
    let status = StatusCode::OK.as_u16();
    let records = http_records(&proxy);
    assert_eq!(records[1]["upstream_protocol"], "http/1.1", "{records:?}");
    assert_eq!(records[1]["status"], status);
}
