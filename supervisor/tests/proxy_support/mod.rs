//! Shared pieces of the proxy tests: loopback upstream servers, a started in-process proxy,
//! a captured audit log, and real clients (`/usr/bin/curl`, `/usr/bin/python3`).
//!
//! Every upstream is on 127.0.0.1 behind a `RemapTransport` (the policy decides on a pinned
//! documentation address) or inside a `MockTransport`: no test sends a packet off the host.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tollgate::proxy::body::{self, ProxyBody};
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::{Proxy, ProxyBuilder, ProxyHandle};
use tollgate_policy::Policy;

/// The documentation address `api.test` is pinned to; the remap sends it to the upstream.
pub const PINNED: &str = "198.51.100.10";

/// A policy allowing `api.test` (pinned to [`PINNED`], covered by `allowed_ips`), with fast
/// retries. `extra` is appended at the top level (e.g. a `limits:` section).
pub fn policy_with(extra: &str) -> Arc<Policy> {
    let yaml = format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {PINNED}
  allow:
    - host: api.test
      ports: [80, 443, 8080]
      tls: passthrough
      allowed_ips: [198.51.100.0/24]
{extra}"
    );
    policy(&yaml)
}

/// A test policy from YAML; a test whose policy does not load fails, showing the YAML.
pub fn policy(yaml: &str) -> Arc<Policy> {
    match Policy::from_yaml("test.yaml", yaml) {
        Ok(policy) => Arc::new(policy),
        Err(errors) => panic!("test policy does not load: {errors}\n{yaml}"),
    }
}

pub const FAST_RETRY: &str = "retry:
  attempts: 3
  initial_wait: 10ms
  max_wait: 50ms
";

/// Fast retries and a budget no test reaches by accident.
pub fn roomy() -> Arc<Policy> {
    policy_with(&format!("{FAST_RETRY}limits:\n  max_requests: 1000\n"))
}

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    /// What an upstream's request was: its head, and its whole body (empty if it broke).
    pub async fn read(request: Request<Incoming>) -> Seen {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body: body.to_vec(),
        }
    }
}

/// A loopback HTTP/1.1 server.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// A transport deciding on [`PINNED`] and dialing this server.
    pub fn remap(&self) -> RemapTransport {
        let pinned: IpAddr = PINNED.parse().unwrap();
        RemapTransport::new([(pinned, self.addr)])
    }
}

pub type Handler = dyn Fn(&Seen, usize) -> Response<ProxyBody> + Send + Sync;

/// Starts an upstream whose `handler(request, n)` answers the n-th (0-based) request.
pub async fn upstream(
    handler: impl Fn(&Seen, usize) -> Response<ProxyBody> + Send + Sync + 'static,
) -> Upstream {
    upstream_async(move |seen, n| {
        let response = handler(&seen, n);
        async move { response }
    })
    .await
}

/// Like [`upstream`] with an async handler (for delays).
pub async fn upstream_async<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Seen, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, |stream| async move { Some(stream) }, handler)
}

/// Serves HTTP/1.1 on `listener`, the loop behind every loopback upstream: each accepted
/// connection is counted, passed through `wrap` (a TLS handshake, say; `None` drops the
/// connection) and then answered request by request with `handler(request, n)`, every request
/// recorded in [`Upstream::seen`] first.
pub fn serve<W, WFut, S, F, Fut>(listener: tokio::net::TcpListener, wrap: W, handler: F) -> Upstream
where
    W: Fn(tokio::net::TcpStream) -> WFut + Send + Sync + 'static,
    WFut: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Seen, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handler = Arc::new(handler);
    let counter = Arc::new(AtomicUsize::new(0));
    let record = seen.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let record = record.clone();
            let counter = counter.clone();
            let wrapped = wrap(stream);
            tokio::spawn(async move {
                let Some(stream) = wrapped.await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    let record = record.clone();
                    let counter = counter.clone();
                    async move {
                        let seen = Seen::read(request).await;
                        record.lock().unwrap().push(seen.clone());
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(handler(seen, n).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        connections,
    }
}

pub fn ok(text: &str) -> Response<ProxyBody> {
    Response::new(body::full(Bytes::copy_from_slice(text.as_bytes())))
}

pub fn status(code: u16, text: &str) -> Response<ProxyBody> {
    let mut response = ok(text);
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
    response
}

/// An in-memory log writer the test can read back.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
            .collect()
    }
}

/// The operator log (tracing at `level`, without colours), captured for the whole test
/// binary: a process has one subscriber, so the first call installs it and every later call
/// gets the same capture, whatever `level` it names.
pub fn operator_log(level: tracing::Level) -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    })
}

/// A running in-process proxy on 127.0.0.1.
pub struct Harness {
    pub handle: ProxyHandle,
    pub addr: SocketAddr,
    pub audit: Captured,
}

impl Harness {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The audit records so far (after the last response body's record is queued).
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(20));
        self.handle.sync_audit();
        self.audit.records()
    }
}

/// Builds and starts the proxy on 127.0.0.1, its audit log captured.
pub fn start(builder: ProxyBuilder) -> Harness {
    let (proxy, audit) = build(builder);
    listen(proxy, audit)
}

/// The proxy as every test runs it (execution `exec-test`), with its audit log captured; not
/// started yet, for a caller that reads something from it first (see [`listen`]).
pub fn build(builder: ProxyBuilder) -> (Proxy, Captured) {
    let audit = Captured::default();
    let proxy: Proxy = builder
        .execution_id("exec-test")
        .audit(audit.clone())
        .build();
    (proxy, audit)
}

/// Starts a proxy from [`build`] on an ephemeral port of 127.0.0.1.
pub fn listen(proxy: Proxy, audit: Captured) -> Harness {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = proxy
        .start(&tokio::runtime::Handle::current(), listener)
        .unwrap();
    Harness {
        handle,
        addr,
        audit,
    }
}

/// Sends raw bytes to the proxy and reads until the server closes (or 10 s pass).
pub async fn raw(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// What curl saw.
#[derive(Debug)]
pub struct Curl {
    pub code: i32,
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Curl {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn scratch() -> std::path::PathBuf {
    let n = CALLS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tollgate-proxy-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `/usr/bin/curl -x http://proxy args…` (blocking, on the blocking pool).
pub async fn curl(proxy: SocketAddr, args: &[&str]) -> Curl {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = scratch();
        let headers = dir.join("headers");
        let body = dir.join("body");
        let output = std::process::Command::new("/usr/bin/curl")
            .env_clear()
            .arg("-sS")
            .arg("-x")
            .arg(format!("http://{proxy}"))
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .arg("-w")
            .arg("%{http_code}")
            .args(&args)
            .output()
            .unwrap();
        let result = Curl {
            code: output.status.code().unwrap_or(-1),
            status: String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        result
    })
    .await
    .unwrap()
}

/// Runs a Python script with `/usr/bin/python3` (never a PATH shim); `PROXY` is set to the
/// proxy URL in its environment.
pub async fn python(proxy: SocketAddr, script: &str) -> (i32, String, String) {
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("/usr/bin/python3")
            .env_clear()
            .env("PROXY", format!("http://{proxy}"))
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A body sent as `chunks`, with `interval` before each one (no Content-Length: chunked).
pub struct Drip {
    chunks: std::collections::VecDeque<Bytes>,
    interval: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Drip {
    pub fn new(chunks: Vec<Bytes>, interval: Duration) -> Drip {
        Drip {
            chunks: chunks.into(),
            interval,
            sleep: None,
        }
    }

    /// `total` bytes in chunks of `chunk`, sent as fast as possible.
    pub fn sized(total: usize, chunk: usize) -> Drip {
        let chunks = (0..total)
            .step_by(chunk)
            .map(|start| Bytes::from(vec![b'r'; (total - start).min(chunk)]))
            .collect();
        Drip::new(chunks, Duration::ZERO)
    }

    pub fn response(self) -> Response<ProxyBody> {
        Response::new(BodyExt::boxed(self))
    }
}

impl hyper::body::Body for Drip {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, body::BoxError>>> {
        use std::task::Poll;
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        if !self.interval.is_zero() {
            let interval = self.interval;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let chunk = self.chunks.pop_front().unwrap();
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}
