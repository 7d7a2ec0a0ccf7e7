//! Serving `/metrics`: the node service's exposition over HTTP/1.1, on TCP or a Unix socket.
//!
//! It is the service's one HTTP listener, and whoever can reach it can open connections to
//! a root process, so every connection is bounded: its request head must arrive within the
//! header read timeout, it is closed after one answer (a scrape is one request), it lives
//! no longer than [`Limits::connection_lifetime`] whatever the client does, and at most
//! [`Limits::max_connections`] are open at once (one more is closed at once, unanswered).
//! Shutdown does not wait for clients: answers being written get a short grace, then every
//! connection is closed.
//!
//! A Unix socket is made mode 0660 (owner root, the group the directory gives new files:
//! make the directory set-group-ID to choose who may scrape); a stale socket at the path is
//! replaced, a live one (something answers) or any other file is not.

use super::metrics::{Metrics, OPENMETRICS_TEXT, PROMETHEUS_TEXT};
use super::wire::MetricsListen;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The path the exposition is served at.
pub const PATH: &str = "/metrics";

/// The mode of a Unix metrics socket.
const SOCKET_MODE: u32 = 0o660;

/// How long to wait before accepting again after `accept` failed (out of descriptors, say),
/// so that a persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one client may cost the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request head must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection is closed this long after it was accepted, answered or not (a client
    /// that reads its answer slowly).
    pub connection_lifetime: Duration,
    /// Connections open at once; one more is closed unanswered.
    pub max_connections: usize,
    /// At shutdown, how long answers being written may take before every connection is
    /// closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// A bound metrics listener, ready to [`run`](MetricsServer::run).
pub struct MetricsServer {
    listener: Listener,
    limits: Limits,
}

enum Listener {
    Tcp(TcpListener),
    /// The socket file and its identity (device, inode), so that only our own socket is
    /// removed at the end.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        identity: (u64, u64),
    },
}

impl MetricsServer {
    /// Binds `listen` now, so that an address in use or a bad path is reported when the
    /// service starts.
    pub async fn bind(listen: &MetricsListen) -> io::Result<MetricsServer> {
        let listener = match listen {
            MetricsListen::Tcp(address) => Listener::Tcp(TcpListener::bind(address).await?),
            MetricsListen::Unix(path) => bind_unix(path)?,
        };
        Ok(MetricsServer {
            listener,
            limits: Limits::default(),
        })
    }

    /// The same server with other limits.
    pub fn with_limits(self, limits: Limits) -> MetricsServer {
        MetricsServer { limits, ..self }
    }

    /// The TCP address it listens on (`None` on a Unix socket).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.listener {
            Listener::Tcp(listener) => listener.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// Serves `GET /metrics` until `shutdown` turns true (or its sender is gone), then
    /// closes every connection and removes its Unix socket.
    pub async fn run(self, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
        let limits = self.limits;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::warn!("metrics: cannot accept a connection: {error}");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    // Over the limit: closed at once, so that the kernel's backlog does not
                    // hide the overload (a scraper tries again at its next interval).
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        let open = limits.max_connections;
                        tracing::debug!("metrics: {open} connections open, one more closed");
                        continue;
                    };
                    let (metrics, stop) = (metrics.clone(), shutdown.clone());
                    match stream {
                        Accepted::Tcp(stream) => {
                            connections.spawn(serve(stream, metrics, limits, permit, stop))
                        }
                        Accepted::Unix(stream) => {
                            connections.spawn(serve(stream, metrics, limits, permit, stop))
                        }
                    };
                }
            }
        }
        let drained = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(limits.shutdown_grace, drained).await;
        connections.shutdown().await;
        self.listener.remove_socket();
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => Ok(Accepted::Tcp(listener.accept().await?.0)),
            Listener::Unix { listener, .. } => Ok(Accepted::Unix(listener.accept().await?.0)),
        }
    }

    /// Removes the Unix socket file, if it is still the one this listener made.
    fn remove_socket(&self) {
        let Listener::Unix { path, identity, .. } = self else {
            return;
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *identity) {
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!("metrics: cannot remove {}: {error}", path.display());
            }
        }
    }
}

/// Binds a Unix socket at `path`, replacing a stale one, and makes it mode 0660.
fn bind_unix(path: &Path) -> io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on that socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Until the chmod the socket has the umask's mode, which never lets more processes
    // connect than 0660 does under the usual umasks (connecting needs write permission).
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(Listener::Unix {
        listener,
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
    })
}

/// Resolves when `shutdown` turns true or its sender is dropped.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Answers one request on `stream`, within the limits, holding `permit` until it closes.
async fn serve<S>(
    stream: S,
    metrics: Arc<Metrics>,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&metrics, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let lifetime = tokio::time::sleep(limits.connection_lifetime);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!("metrics: connection ended: {error}");
            }
        }
        _ = lifetime => tracing::debug!("metrics: connection closed at the end of its lifetime"),
        _ = stopped(&mut shutdown) => {
            // An answer being written may finish; the caller closes us after its grace.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
    drop(permit);
}

/// The answer to `request`: the exposition at `GET /metrics` (OpenMetrics when the client
/// asks for it, the Prometheus text format otherwise), 405 for another method there, 404
/// anywhere else.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET /metrics\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let openmetrics = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (OPENMETRICS_TEXT, metrics.render_openmetrics())
    } else {
        (PROMETHEUS_TEXT, metrics.render())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::super::metrics::tests::parse_exposition;
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpStream, UnixStream};

    /// Long enough that nothing in these tests ends by a timeout unless it hangs.
    const HANG: Duration = Duration::from_secs(60);

    struct Running {
        address: std::net::SocketAddr,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        metrics: Arc<Metrics>,
    }

    async fn start(limits: Limits) -> Running {
        let listen = MetricsListen::parse("127.0.0.1:0").unwrap();
        let server = MetricsServer::bind(&listen)
            .await
            .unwrap()
            .with_limits(limits);
        let address = server.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server.run(metrics.clone(), stopped));
        Running {
            address,
            stop,
            task,
            metrics,
        }
    }

    impl Running {
        async fn shut_down(self) {
            self.stop.send(true).unwrap();
            tokio::time::timeout(HANG, self.task)
                .await
                .expect("the server stopped")
                .unwrap();
        }
    }

    /// Sends `request` on a fresh connection and reads the answer to the end (the server
    /// closes the connection after it): status, headers (lower-case names), body.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        request: &str,
    ) -> (u16, BTreeMap<String, String>, String) {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(HANG, stream.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect(&answer);
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        (status, headers, body.to_owned())
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    }

    #[tokio::test]
    async fn get_metrics_serves_an_exposition_that_reflects_the_calls() {
        let running = start(Limits::default()).await;
        running.metrics.execution_started("payments");
        running.metrics.execution_started("payments");
        running.metrics.launch_refused("not_allowed");
        let stream = TcpStream::connect(running.address).await.unwrap();
        let (status, headers, body) = exchange(stream, &get("/metrics")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], PROMETHEUS_TEXT);
        let samples = parse_exposition(&body);
        let started = (
            "tollgate_executions_started_total".to_owned(),
            BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
        );
        assert_eq!(samples[&started], 2.0);
        let refused = (
            "tollgate_launches_refused_total".to_owned(),
            BTreeMap::from([("reason".to_owned(), "not_allowed".to_owned())]),
        );
        assert_eq!(samples[&refused], 1.0);

        // A scraper that asks for OpenMetrics gets it.
        let stream = TcpStream::connect(running.address).await.unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: \
                       application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.1\r\n\r\n";
        let (status, headers, body) = exchange(stream, request).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], OPENMETRICS_TEXT);
        assert!(body.ends_with("# EOF\n"), "{body}");
        running.shut_down().await;
    }

    #[tokio::test]
    async fn anything_but_get_metrics_is_refused() {
        let running = start(Limits::default()).await;
        for path in ["/", "/metrics/", "/metricsx", "/../metrics"] {
            let stream = TcpStream::connect(running.address).await.unwrap();
            let (status, _, body) = exchange(stream, &get(path)).await;
            assert_eq!(status, 404, "{path}");
            assert!(!body.contains("tollgate_"), "{path}: {body}");
        }
        let stream = TcpStream::connect(running.address).await.unwrap();
        let post = "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
        let (status, headers, _) = exchange(stream, post).await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "GET, HEAD");
        // Not HTTP at all: the connection is closed with an error status or nothing.
        let mut stream = TcpStream::connect(running.address).await.unwrap();
        stream
            .write_all(b"\x16\x03\x01 not http\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(HANG, stream.read_to_end(&mut answer))
            .await
            .expect("closed")
            .unwrap();
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
            "{answer:?}"
        );
        running.shut_down().await;
    }

    /// Clients that send half a request head, or nothing, and never read: shutdown closes
    /// them and returns, although their header read timeout is an hour away.
    #[tokio::test]
    async fn a_slow_loris_client_does_not_hang_shutdown() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3600),
            connection_lifetime: Duration::from_secs(3600),
            ..Limits::default()
        };
        let running = start(limits).await;
        let mut loris = TcpStream::connect(running.address).await.unwrap();
        loris
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: local")
            .await
            .unwrap();
        let mut silent = TcpStream::connect(running.address).await.unwrap();
        // Connections are accepted in order: once a later one is answered, both slow ones
        // were accepted and are being served.
        let stream = TcpStream::connect(running.address).await.unwrap();
        assert_eq!(exchange(stream, &get("/metrics")).await.0, 200);
        running.shut_down().await;
        for stream in [&mut loris, &mut silent] {
            let mut rest = Vec::new();
            // Closed (an end of stream, or a reset): either way the read ends.
            let _ = tokio::time::timeout(HANG, stream.read_to_end(&mut rest))
                .await
                .expect("the server closed the connection");
            assert!(!String::from_utf8_lossy(&rest).contains("tollgate_"));
        }
    }

    /// A client that never finishes its request head is closed by the header read timeout,
    /// or by the connection's lifetime, each on its own.
    #[tokio::test]
    async fn an_unfinished_request_head_is_closed_by_either_deadline() {
        let long = Duration::from_secs(3600);
        let short = Duration::from_millis(200);
        for (header_read_timeout, connection_lifetime) in [(short, long), (long, short)] {
            let running = start(Limits {
                header_read_timeout,
                connection_lifetime,
                ..Limits::default()
            })
            .await;
            let mut loris = TcpStream::connect(running.address).await.unwrap();
            loris.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(HANG, loris.read_to_end(&mut answer))
                .await
                .expect("closed by a deadline");
            assert!(!String::from_utf8_lossy(&answer).contains("tollgate_"));
            running.shut_down().await;
        }
    }

    /// Past the connection limit a new connection is closed unanswered, and the open ones
    /// are still served.
    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once() {
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(3600),
            connection_lifetime: Duration::from_secs(3600),
            ..Limits::default()
        };
        let running = start(limits).await;
        let first = TcpStream::connect(running.address).await.unwrap();
        let mut second = TcpStream::connect(running.address).await.unwrap();
        let mut third = TcpStream::connect(running.address).await.unwrap();
        third.write_all(get("/metrics").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(HANG, third.read_to_end(&mut answer))
            .await
            .expect("the third connection was closed");
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        // The two held connections are served (accepted before the third was refused).
        drop(first);
        second.write_all(get("/metrics").as_bytes()).await.unwrap();
        let (status, _, _) = exchange(second, "").await;
        assert_eq!(status, 200);
        running.shut_down().await;
    }

    /// Over a Unix socket, with a real client (curl): mode 0660, a stale socket is
    /// replaced, a live one or a plain file is not, and the socket is removed at the end.
    #[tokio::test]
    async fn a_unix_socket_is_served_and_removed() {
        let dir = std::env::temp_dir().join(format!("tollgate-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.sock");
        // A stale socket from an earlier service.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listen = MetricsListen::Unix(path.clone());
        let server = MetricsServer::bind(&listen).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let refused = MetricsServer::bind(&listen).await.err().expect("in use");
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        let file = dir.join("plain");
        std::fs::write(&file, "keep me").unwrap();
        let refused = MetricsServer::bind(&MetricsListen::Unix(file.clone()))
            .await
            .err()
            .expect("not a socket");
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let metrics = Arc::new(Metrics::new());
        metrics.policy_reload("payments", false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server.run(metrics, stopped));
        let stream = UnixStream::connect(&path).await.unwrap();
        assert_eq!(exchange(stream, &get("/metrics")).await.0, 200);
        let socket = path.clone();
        let curl = tokio::task::spawn_blocking(move || {
            std::process::Command::new("/usr/bin/curl")
                .args(["--silent", "--show-error", "--fail", "--unix-socket"])
                .arg(socket)
                .arg("http://localhost/metrics")
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(curl.status.success(), "{curl:?}");
        let samples = parse_exposition(&String::from_utf8(curl.stdout).unwrap());
        let failing = (
            "tollgate_policy_reload_failing".to_owned(),
            BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
        );
        assert_eq!(samples[&failing], 1.0);
        stop.send(true).unwrap();
        tokio::time::timeout(HANG, task).await.unwrap().unwrap();
        assert!(!path.exists(), "the socket is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
