//! What the proxy relays is whole or visibly broken, in-process: an upstream that writes its
//! answers byte by byte (close-delimited bodies, HTTP/1.0, TLS closed without
//! `close_notify`, a `Content-Length` it does not reach, chunked bodies without the last
//! chunk, bodies over `max_response_bytes` in every framing, non-standard reason phrases,
//! echoes of the injected credentials in every spelling) and real clients (`/usr/bin/curl`,
//! a raw socket, rustls) over HTTP and inside intercepted TLS. Request bodies over
//! `max_request_bytes` must be answered `413`, readable by the client.
//!
//! The upstream listens on 127.0.0.1 behind a `RemapTransport` (the policy decides on a
//! pinned documentation address); it speaks TLS when the first byte is a TLS handshake. No
//! test sends a packet off the host.

mod proxy_support;
mod tls_support;

use base64::Engine;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls_support::{Dir, TestCa};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::{Credentials, Proxy};
use tollgate_policy::secrets::SecretRules;
use tollgate_tests::spellings::{spell, SPELLINGS};

const API_IP: &str = "198.51.100.10";

// ---------------------------------------------------------------------------------------
// The upstream: answers written by hand, one per connection, closed without close_notify
// ---------------------------------------------------------------------------------------

/// The server's body of `n` bytes: a block whose length is prime, so no cut or repeat of
/// whole pieces looks right.
fn pattern(n: usize) -> Vec<u8> {
    (0..65521u32)
        .map(|i| ((i * 131 + 7) % 256) as u8)
        .cycle()
        .take(n)
        .collect()
}

fn head(status_line: &str, fields: &[(&str, String)]) -> Vec<u8> {
    let mut text = format!("{status_line}\r\n");
    for (name, value) in fields {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn chunked(data: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(10_000) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

/// The answer to `GET <path>` (the request's head is `request`):
///
/// - `/close10/N` HTTP/1.0, N bytes, no length (ends at the close)
/// - `/close/N` HTTP/1.1 with `Connection: close`, N bytes, no length
/// - `/cl/N`, `/chunked/N` N bytes with their length / in chunks and the last chunk
/// - `/short-cl/N/M` `Content-Length: N`, then M < N bytes
/// - `/short-chunked/M` M bytes in chunks, no last chunk
/// - `/status/CODE` CODE with no body, `Content-Length: 5000000`
/// - `/reason/CODE/TEXT` CODE with the reason phrase TEXT (`_` for spaces)
/// - `/events` a `text/event-stream` that sends one event and never ends
/// - `/echo/WHERE/WHAT/HOW` the request's `Authorization` (WHAT: `header`, `secret` (the
///   bearer token or the Basic password), `token` (the base64 of Basic)), spelled HOW (see
///   `tollgate_tests::spellings::spell`), in WHERE: `reason`, `body`, `location`, `cookie`, `xecho`
fn answer(path: &str, request: &str) -> Vec<u8> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let number = |i: usize| {
        parts
            .get(i)
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let octets = || ("Content-Type", "application/octet-stream".to_owned());
    let close = || ("Connection", "close".to_owned());
    match parts[0] {
        // One event, then the stream stays open (see `serve_one`).
        "events" => [
            head(
                "HTTP/1.1 200 OK",
                &[
                    ("Content-Type", "text/event-stream".to_owned()),
                    ("Transfer-Encoding", "chunked".to_owned()),
                ],
            ),
            chunked(b"data: first\n\n", false),
        ]
        .concat(),
        "close10" => [head("HTTP/1.0 200 OK", &[octets()]), pattern(number(1))].concat(),
        "close" => [
            head("HTTP/1.1 200 OK", &[octets(), close()]),
            pattern(number(1)),
        ]
        .concat(),
        "cl" => {
            let n = number(1);
            let length = ("Content-Length", n.to_string());
            [
                head("HTTP/1.1 200 OK", &[octets(), length, close()]),
                pattern(n),
            ]
            .concat()
        }
        "chunked" => {
            let chunked_header = ("Transfer-Encoding", "chunked".to_owned());
            let body = chunked(&pattern(number(1)), true);
            [
                head("HTTP/1.1 200 OK", &[octets(), chunked_header, close()]),
                body,
            ]
            .concat()
        }
        "short-cl" => {
            let length = ("Content-Length", number(1).to_string());
            [
                head("HTTP/1.1 200 OK", &[octets(), length]),
                pattern(number(2)),
            ]
            .concat()
        }
        "short-chunked" => {
            let chunked_header = ("Transfer-Encoding", "chunked".to_owned());
            let body = chunked(&pattern(number(1)), false);
            [head("HTTP/1.1 200 OK", &[octets(), chunked_header]), body].concat()
        }
        "status" => {
            let code = number(1);
            let length = ("Content-Length", "5000000".to_owned());
            head(&format!("HTTP/1.1 {code} Whatever"), &[length, close()])
        }
        "reason" => {
            let text = parts[2].replace('_', " ");
            let body = b"{\"reason\": \"custom\"}".to_vec();
            let length = ("Content-Length", body.len().to_string());
            let line = format!("HTTP/1.1 {} {text}", number(1));
            [head(&line, &[length, close()]), body].concat()
        }
        "echo" => echo(parts[1], parts[2], parts[3], request),
        _ => head(
            "HTTP/1.1 404 Not Found",
            &[("Content-Length", "0".into()), close()],
        ),
    }
}

/// The `Authorization` the upstream received, as `what` asks for it.
fn authorization(request: &str, what: &str) -> String {
    let value = request
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let (kind, credential) = value.split_once(' ').unwrap_or(("", ""));
    let basic = kind.eq_ignore_ascii_case("basic");
    match what {
        "header" => value.clone(),
        "token" => credential.to_owned(),
        _ if basic => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            text.split_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or(text)
        }
        _ => credential.to_owned(),
    }
}

fn echo(place: &str, what: &str, how: &str, request: &str) -> Vec<u8> {
    let value = spell(&authorization(request, what), how);
    let mut status = "200 OK".to_owned();
    let mut body = b"{\"ok\": true}".to_vec();
    let mut fields = vec![("Content-Type", "application/json".to_owned())];
    match place {
        "reason" => status = format!("200 {value}"),
        "body" => body = format!("{{\"echo\": \"{value}\"}}").into_bytes(),
        "location" => {
            status = "302 Found".into();
            fields.push((
                "Location",
                format!("https://elsewhere.example/cb?t={value}"),
            ));
        }
        "cookie" => fields.push(("Set-Cookie", format!("sid={value}; Path=/"))),
        _ => fields.push(("X-Echo", value)),
    }
    fields.push(("Content-Length", body.len().to_string()));
    fields.push(("Connection", "close".into()));
    [head(&format!("HTTP/1.1 {status}"), &fields), body].concat()
}

/// A loopback upstream writing [`answer`]s; TLS (presenting `config`) when the client's
/// first byte starts a handshake.
struct Wire {
    addr: SocketAddr,
    /// Every request head that arrived.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Wire {
    async fn start(config: Arc<rustls::ServerConfig>) -> Wire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if stream.peek(&mut first).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if first[0] == 0x16 {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve_one(tls, seen).await;
                        }
                    } else {
                        serve_one(stream, seen).await;
                    }
                });
            }
        });
        Wire { addr, heads }
    }

    fn remap(&self) -> RemapTransport {
        RemapTransport::new([(API_IP.parse().unwrap(), self.addr)])
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Reads one request head, writes its answer, and drops the connection: a TLS stream is
/// flushed but never shut down, so the client sees the TCP close with no `close_notify`.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    seen.lock().unwrap().push(request.clone());
    let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut data = answer(&path, &request);
    if request.starts_with("HEAD ") {
        let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        data.truncate(end + 4);
    }
    for piece in data.chunks(16 * 1024) {
        if stream.write_all(piece).await.is_err() {
            return;
        }
    }
    let _ = stream.flush().await;
    if path.starts_with("/events") {
        // An event stream has no end: held open until the proxy lets go of it.
        while matches!(stream.read(&mut byte).await, Ok(n) if n > 0) {}
    }
}

// ---------------------------------------------------------------------------------------
// The proxy and the clients
// ---------------------------------------------------------------------------------------

const BEARER: &str = "fr4m/Bear+tok:77a1-c3==";
const PASSWORD: &str = "pw/Fr:ame+x 9e2d?q>z";
const USER: &str = "robot";

struct World {
    dir: Dir,
    wire: Wire,
    proxy: tls_support::Intercepting,
}

/// The policy: `api.test` on 80 and 443 (intercepted), pinned to [`API_IP`], the upstream's
/// CA trusted, `limits` under `limits:`; two providers scoped to `/echo` on both schemes.
async fn world(limits: &str) -> World {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("framing");
    let ca = TestCa::new("framing upstream CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let team = dir.0.join("secrets/acme");
    std::fs::create_dir_all(&team).unwrap();
    for (name, value) in [("bearer", BEARER), ("basic", PASSWORD)] {
        let path = team.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let scope = "[https://api.test/echo, http://api.test/echo]";
    let policy = tls_support::policy(&format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {API_IP}
  upstream_ca: {{file: {}}}
  allow:
    - host: api.test
      ports: [80, 443]
      allowed_ips: [198.51.100.0/24]
limits:
  max_requests: 1000
  default_timeout: 60s
  max_timeout: 60s
{limits}
auth_providers:
  - name: Bearer
    type: bearer
    secret: {{file: bearer}}
    scope: {scope}
  - name: Basic One
    type: basic
    username: {USER}
    secret: {{file: basic}}
    scope: {scope}
",
        ca_file.display()
    ));
    let rules = SecretRules::new(dir.0.join("secrets"), []).expect("secret rules");
    let credentials = Credentials::load(&policy, &rules).expect("credentials load");
    let wire = Wire::start(ca.server_config(&["api.test"])).await;
    let proxy = tls_support::start(
        Proxy::builder(policy)
            .credentials(credentials)
            .transport(wire.remap()),
    );
    World { dir, wire, proxy }
}

impl World {
    fn base(&self, scheme: &str) -> &'static str {
        if scheme == "https" {
            "https://api.test"
        } else {
            "http://api.test"
        }
    }

    /// `/usr/bin/curl` through the proxy, trusting the execution's CA.
    async fn curl(&self, args: &[&str]) -> proxy_support::Curl {
        let ca = self.proxy.ca_file.display().to_string();
        let mut all = vec!["--max-time", "60", "--cacert", ca.as_str()];
        all.extend_from_slice(args);
        proxy_support::curl(self.proxy.addr, &all).await
    }

    /// The last `http` record for `path`, waiting (up to 10 s) for it to be written.
    async fn record(&self, path: &str) -> serde_json::Value {
        for _ in 0..500 {
            let found = self
                .proxy
                .records()
                .into_iter()
                .rev()
                .find(|r| r["type"] == "http" && r["path"] == path);
            if let Some(record) = found {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no audit record for {path}: {}", self.proxy.audit.text());
    }

    /// One request through the proxy on a socket of our own (after a CONNECT and a TLS
    /// handshake trusting the execution's CA for https), `ready` awaited before a byte of the
    /// answer is read; every byte that arrives until the proxy closes.
    async fn raw<F: std::future::Future<Output = ()>>(
        &self,
        scheme: &str,
        request: &str,
        ready: F,
    ) -> Raw {
        // A small receive buffer: what the client has not read stays in the proxy.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(self.proxy.addr).await.unwrap();
        if scheme == "http" {
            tcp.write_all(request.as_bytes()).await.unwrap();
            ready.await;
            return read_all(tcp).await;
        }
        let mut tls = intercepted(&self.proxy.ca_file, tcp).await;
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        ready.await;
        read_all(tls).await
    }
}

/// `CONNECT api.test:443` on `tcp`, its `200` read byte by byte (nothing past its head), then
/// TLS through the tunnel, trusting the execution's CA.
async fn intercepted(
    ca_file: &Path,
    mut tcp: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
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
    tls_client(ca_file, tcp).await
}

async fn tls_client(ca_file: &Path, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// What a raw client read: every byte, and how the stream ended.
struct Raw {
    bytes: Vec<u8>,
    /// The stream ended cleanly (for TLS: with a `close_notify`), not with an error.
    clean_end: bool,
}

async fn read_all<S: AsyncRead + Unpin>(mut stream: S) -> Raw {
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let clean_end = loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buffer)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buffer[..n]),
            Ok(Err(_)) => break false,
            Err(_) => panic!("the proxy neither answered nor closed within 60 s"),
        }
    };
    Raw { bytes, clean_end }
}

/// A response as a client reads it off the wire.
#[derive(Debug)]
struct Parsed {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body's own framing said it was complete (the last chunk, the whole
    /// `Content-Length`); for a close-delimited body, the stream ended cleanly.
    complete: bool,
    framing: &'static str,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &Raw, bodiless: bool) -> Parsed {
    let text = &raw.bytes;
    let end = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(text)));
    let head = String::from_utf8_lossy(&text[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &text[end + 4..];
    let mut parsed = Parsed {
        status_line,
        headers,
        body: Vec::new(),
        complete: false,
        framing: "none",
    };
    if bodiless {
        parsed.complete = rest.is_empty();
        return parsed;
    }
    if parsed
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        parsed.framing = "chunked";
        let mut at = 0;
        while let Some(line_end) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[at..at + line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            else {
                break;
            };
            at += line_end + 2;
            if size == 0 {
                parsed.complete = rest[at..].starts_with(b"\r\n");
                break;
            }
            let take = size.min(rest.len() - at);
            parsed.body.extend_from_slice(&rest[at..at + take]);
            at += take;
            if take < size || !rest[at..].starts_with(b"\r\n") {
                break;
            }
            at += 2;
        }
    } else if let Some(length) = parsed.header("content-length") {
        let length: usize = length.parse().unwrap();
        parsed.framing = "content-length";
        parsed.body = rest[..rest.len().min(length)].to_vec();
        parsed.complete = rest.len() >= length;
    } else {
        parsed.framing = "close";
        parsed.body = rest.to_vec();
        parsed.complete = raw.clean_end;
    }
    parsed
}

/// What curl saw, without its body.
fn show(curl: &proxy_support::Curl) -> String {
    format!(
        "curl exit {} status {}, {} bytes: {}\n{}",
        curl.code,
        curl.status,
        curl.body.len(),
        curl.stderr.trim(),
        curl.headers
    )
}

fn get(scheme: &str, path: &str) -> String {
    let target = if scheme == "https" {
        path.to_owned()
    } else {
        format!("http://api.test{path}")
    };
    format!("GET {target} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
}

fn describe(parsed: &Parsed) -> String {
    format!(
        "{} ({} body, {} bytes, complete: {}) {:?}",
        parsed.status_line,
        parsed.framing,
        parsed.body.len(),
        parsed.complete,
        parsed.headers
    )
}

// ---------------------------------------------------------------------------------------
// 1. Bodies delimited by the close, and bodies the upstream cut short
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_http10_answer_reaches_an_http11_client_framed_as_http11() {
    let w = world("  max_response_bytes: 64MiB\n").await;
    for scheme in ["http", "https"] {
        for route in ["close10", "close"] {
            let path = format!("/{route}/100000/{scheme}");
            let raw = w.raw(scheme, &get(scheme, &path), async {}).await;
            let parsed = parse(&raw, false);
            assert_eq!(
                parsed.status_line,
                "HTTP/1.1 200 OK",
                "{}",
                describe(&parsed)
            );
            assert_ne!(parsed.framing, "close", "{path}: {}", describe(&parsed));
            assert!(parsed.complete, "{path}: {}", describe(&parsed));
            assert!(
                parsed.body == pattern(100_000),
                "{path}: {}",
                describe(&parsed)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_without_close_notify_arrives_whole_and_is_complete() {
    // Streamed (a limit too big to buffer) and buffered (a small limit) alike.
    for limit in ["64MiB", "4MiB"] {
        let w = world(&format!("  max_response_bytes: {limit}\n")).await;
        for (i, route) in ["close10", "close", "close10", "close"].iter().enumerate() {
            for scheme in ["https", "http"] {
                let path = format!("/{route}/500000/{scheme}-{i}");
                let url = format!("{}{path}", w.base(scheme));
                let curl = w.curl(&[&url]).await;
                assert_eq!(curl.code, 0, "{limit} {url}: {}", show(&curl));
                assert_eq!(curl.status, 200, "{limit} {url}");
                assert_eq!(curl.body.len(), 500_000, "{limit} {url}");
                assert!(curl.body == pattern(500_000), "{limit} {url}: corrupted");
                let record = w.record(&path).await;
                assert_eq!(record["outcome"], "complete", "{limit} {url}: {record}");
                assert_eq!(record["bytes_down"], 500_000, "{limit} {url}: {record}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_upstream_cut_short_reaches_the_client_incomplete_with_every_byte() {
    let w = world("  max_response_bytes: 64MiB\n").await;
    // The client reads nothing until the proxy has seen the upstream break off, so the
    // bytes before the cut are still in the proxy's buffers then (its small receive buffer
    // takes little); several rounds, as how much is buffered where varies.
    for round in 0..3 {
        for scheme in ["http", "https"] {
            for route in ["short-cl/3000000/1500000", "short-chunked/1500000"] {
                let path = format!("/{route}/{scheme}-{round}");
                let request = get(scheme, &path);
                let raw = w.raw(scheme, &request, async {
                    let record = w.record(&path).await;
                    assert_eq!(record["outcome"], "upstream_error", "{path}: {record}");
                    assert_eq!(record["bytes_down"], 1_500_000, "{path}: {record}");
                });
                let parsed = parse(&raw.await, false);
                assert!(
                    !parsed.complete,
                    "{path} ended cleanly: {}",
                    describe(&parsed)
                );
                assert_eq!(
                    parsed.body.len(),
                    1_500_000,
                    "{path}: {}",
                    describe(&parsed)
                );
                assert!(parsed.body == pattern(1_500_000), "{path}: corrupted");
            }
        }
    }
    for scheme in ["http", "https"] {
        for route in ["short-cl/900000/600000", "short-chunked/600000"] {
            let url = format!("{}/{route}/curl-{scheme}", w.base(scheme));
            let curl = w.curl(&[&url]).await;
            assert_ne!(
                curl.code,
                0,
                "{url}: curl took a cut body for whole: {}",
                show(&curl)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. max_response_bytes whatever the framing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_over_max_response_bytes_is_a_502_response_too_large() {
    let w = world("  max_response_bytes: 64KiB\n").await;
    for scheme in ["https", "http"] {
        for framing in ["chunked", "close", "close10", "cl"] {
            let at = format!("/{framing}/65536/{scheme}");
            let curl = w.curl(&[&format!("{}{at}", w.base(scheme))]).await;
            assert_eq!((curl.code, curl.status), (0, 200), "{at}: {}", show(&curl));
            assert!(
                curl.body == pattern(65536),
                "{at}: {} bytes",
                curl.body.len()
            );
            assert_eq!(w.record(&at).await["bytes_down"], 65536);

            let over = format!("/{framing}/65537/{scheme}");
            let curl = w.curl(&[&format!("{}{over}", w.base(scheme))]).await;
            assert_eq!(
                (curl.code, curl.status),
                (0, 502),
                "{over}: {}",
                show(&curl)
            );
            assert!(
                curl.headers
                    .to_ascii_lowercase()
                    .contains("tollgate-error: response_too_large"),
                "{over}: {}",
                curl.headers
            );
            let json: serde_json::Value = serde_json::from_slice(&curl.body).unwrap();
            assert_eq!(json["error"], "response_too_large", "{over}: {json}");
            let record = w.record(&over).await;
            assert_eq!(record["error"], "response_too_large", "{over}: {record}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_relayed_as_it_comes_not_held_until_it_ends() {
    // The limit is small enough to buffer and the stream has no length; were it held until
    // it ended, the client would get the deadline's 504 (after 60 s) instead of the event.
    let w = world("  max_response_bytes: 64KiB\n").await;
    for scheme in ["http", "https"] {
        let path = format!("/events/{scheme}");
        let request = get(scheme, &path);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let mut tcp = socket.connect(w.proxy.addr).await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        if scheme == "http" {
            tcp.write_all(request.as_bytes()).await.unwrap();
            while !String::from_utf8_lossy(&seen).contains("data: first") {
                let n = tcp.read(&mut buffer).await.unwrap();
                assert!(n > 0, "{path}: closed: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buffer[..n]);
            }
        } else {
            let mut tls = intercepted(&w.proxy.ca_file, tcp).await;
            tls.write_all(request.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            while !String::from_utf8_lossy(&seen).contains("data: first") {
                let n = tls.read(&mut buffer).await.unwrap();
                assert!(n > 0, "{path}: closed: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buffer[..n]);
            }
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_pass_whatever_their_length_says() {
    let w = world("  max_response_bytes: 64KiB\n").await;
    for scheme in ["https", "http"] {
        // HEAD: the length of the body a GET would get, no body.
        let path = format!("/cl/5000000/head-{scheme}");
        let curl = w.curl(&["-I", &format!("{}{path}", w.base(scheme))]).await;
        assert_eq!(
            (curl.code, curl.status),
            (0, 200),
            "{path}: {}",
            show(&curl)
        );
        assert!(curl.headers.contains("5000000"), "{}", curl.headers);
        for code in [204, 304] {
            let path = format!("/status/{code}/{scheme}");
            let curl = w.curl(&[&format!("{}{path}", w.base(scheme))]).await;
            assert_eq!(
                (curl.code, curl.status),
                (0, code),
                "{path}: {}",
                show(&curl)
            );
            assert!(curl.body.is_empty(), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_limit_too_big_to_buffer_the_body_is_aborted_never_ended_cleanly() {
    let limit = 20usize << 20;
    let w = world("  max_response_bytes: 20MiB\n").await;
    for scheme in ["http", "https"] {
        for framing in ["close10", "close", "chunked"] {
            let path = format!("/{framing}/{}/{scheme}", limit + 1);
            let raw = w.raw(scheme, &get(scheme, &path), async {}).await;
            let parsed = parse(&raw, false);
            assert_eq!(
                parsed.status_line,
                "HTTP/1.1 200 OK",
                "{}",
                describe(&parsed)
            );
            assert!(
                !parsed.complete,
                "{path} ended cleanly: {}",
                describe(&parsed)
            );
            assert!(parsed.body.len() <= limit, "{path}: {}", describe(&parsed));
            let record = w.record(&path).await;
            assert_eq!(record["outcome"], "response_too_large", "{path}: {record}");
            assert_eq!(record["error"], "response_too_large", "{path}: {record}");
        }
        // Exactly at the limit: whole.
        let path = format!("/close10/{limit}/{scheme}");
        let curl = w.curl(&[&format!("{}{path}", w.base(scheme))]).await;
        assert_eq!(
            (curl.code, curl.status),
            (0, 200),
            "{path}: {}",
            curl.stderr
        );
        assert!(
            curl.body == pattern(limit),
            "{path}: {} bytes",
            curl.body.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. max_request_bytes: the client reads its 413
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_max_request_bytes_is_answered_413_the_client_can_read() {
    let w = world("  max_request_bytes: 100KiB\n").await;
    for n in [110_000usize, 1 << 20, 64 << 20] {
        let file = w.dir.file(&format!("body-{n}"), &vec![b'u'; n]);
        let data = format!("@{}", file.display());
        for scheme in ["http", "https"] {
            for (framing, extra) in [
                ("cl", vec!["-H", "Expect:"]),
                (
                    "chunked",
                    vec!["-H", "Expect:", "-H", "Transfer-Encoding: chunked"],
                ),
                ("expect", vec![]),
            ] {
                let url = format!("{}/upload/{scheme}-{framing}-{n}", w.base(scheme));
                let mut args = vec!["--data-binary", data.as_str()];
                args.extend(extra);
                args.push(&url);
                let curl = w.curl(&args).await;
                assert_eq!(
                    (curl.code, curl.status),
                    (0, 413),
                    "{url}: curl exit {} status {}: {}",
                    curl.code,
                    curl.status,
                    curl.stderr
                );
                assert!(
                    curl.headers
                        .to_ascii_lowercase()
                        .contains("tollgate-error: request_too_large"),
                    "{url}: {}",
                    curl.headers
                );
            }
        }
    }
    assert!(w.wire.heads().is_empty(), "uploads reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_expect_100_continue_the_413_comes_before_the_body_is_sent() {
    let w = world("  max_request_bytes: 100KiB\n").await;
    for scheme in ["http", "https"] {
        let target = if scheme == "https" {
            "/upload/expect".to_owned()
        } else {
            "http://api.test/upload/expect".to_owned()
        };
        // The body never comes: the answer must not wait for it.
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
        );
        let raw = w.raw(scheme, &request, async {}).await;
        let parsed = parse(&raw, false);
        assert!(
            parsed.status_line.starts_with("HTTP/1.1 413"),
            "{}",
            describe(&parsed)
        );
        assert_eq!(
            parsed.header("connection"),
            Some("close"),
            "{}",
            describe(&parsed)
        );
        assert_eq!(parsed.header("tollgate-error"), Some("request_too_large"));
    }
    assert!(w.wire.heads().is_empty(), "uploads reached the upstream");
}

// ---------------------------------------------------------------------------------------
// 4. The reason phrase, and 5. echoed secrets
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_the_standard_reason_phrase_never_the_upstreams() {
    let w = world("").await;
    for scheme in ["http", "https"] {
        for (code, theirs, standard) in [
            (200, "Totally_Fine", "OK"),
            (201, "Made_It", "Created"),
            (404, "Gone_Fishing", "Not Found"),
            (451, "Ask_Legal", "Unavailable For Legal Reasons"),
        ] {
            let path = format!("/reason/{code}/{theirs}/{scheme}");
            let parsed = parse(&w.raw(scheme, &get(scheme, &path), async {}).await, false);
            assert_eq!(parsed.status_line, format!("HTTP/1.1 {code} {standard}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_credential_never_reaches_the_client_in_any_place_or_spelling() {
    let w = world("").await;
    let userpass = format!("{USER}:{PASSWORD}");
    let token = base64::engine::general_purpose::STANDARD.encode(&userpass);
    let mut needles: Vec<(String, String)> = Vec::new();
    for (what, value) in [
        ("bearer token", BEARER),
        ("password", PASSWORD),
        ("basic token", token.as_str()),
    ] {
        for how in SPELLINGS {
            needles.push((format!("{what} ({how})"), spell(value, how)));
        }
    }
    let mut leaks = Vec::new();
    let mut answers = 0;
    for scheme in ["http", "https"] {
        for (provider, whats) in [
            ("Bearer", &["header", "secret"][..]),
            ("Basic One", &["header", "secret", "token"][..]),
        ] {
            for place in ["reason", "body", "location", "cookie", "xecho"] {
                for what in whats {
                    for how in SPELLINGS {
                        let path = format!("/echo/{place}/{what}/{how}");
                        let target = if scheme == "https" {
                            path.clone()
                        } else {
                            format!("http://api.test{path}")
                        };
                        let request = format!(
                            "GET {target} HTTP/1.1\r\nHost: api.test\r\nTollgate-Auth: {provider}\r\nConnection: close\r\n\r\n"
                        );
                        let raw = w.raw(scheme, &request, async {}).await;
                        answers += 1;
                        let parsed = parse(&raw, false);
                        let want = if place == "location" {
                            "302 Found"
                        } else {
                            "200 OK"
                        };
                        if parsed.status_line != format!("HTTP/1.1 {want}") {
                            leaks.push(format!(
                                "{scheme} {provider} {path}: {}",
                                parsed.status_line
                            ));
                        }
                        for (name, needle) in &needles {
                            if raw
                                .bytes
                                .windows(needle.len())
                                .any(|s| s == needle.as_bytes())
                            {
                                leaks.push(format!("{scheme} {provider} {path}: {name}"));
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(answers, 2 * 5 * 5 * SPELLINGS.len());
    // The upstream really got both credentials.
    let heads = w.wire.heads().join("\n");
    assert!(heads.contains(&format!("Bearer {BEARER}")), "{heads}");
    assert!(heads.contains(&format!("Basic {token}")), "{heads}");
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
