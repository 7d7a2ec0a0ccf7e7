//! WebSocket through the proxy: the opt-in, the handshake decided and credentialed, the
//! session relayed message by message, ended by each limit with its Close code, and its
//! one record.
//!
//! The client is tokio-tungstenite's codec over a raw connection to the proxy (the
//! handshake is written by hand: an absolute-form request, as a client using the proxy for
//! `ws://` sends it); the upstream is tokio-tungstenite's server on 127.0.0.1 behind a
//! `RemapTransport`. No test sends a packet off the host.

mod proxy_support;
mod tls_support;

use futures_util::{SinkExt, StreamExt};
use proxy_support::{policy, start, Harness, PINNED};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::{Credentials, Proxy, ProxyBuilder, Settings};

type Ws = WebSocketStream<TcpStream>;

/// The RFC 6455 example key and the accept value made from it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const SECRET: &str = "ws-bearer-s3cret-7d1f";

/// `api.test:8080` allows WebSocket; `plain.test:8080` (pinned beside it) does not.
/// `extra` is appended at the top level.
fn ws_policy(extra: &str) -> Arc<tollgate_policy::Policy> {
    policy(&format!(
        "version: 1
team: acme
network:
  hosts:
    api.test: {PINNED}
    plain.test: 198.51.100.11
  allow:
    - host: api.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [198.51.100.0/24]
      websocket: true
    - host: plain.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [198.51.100.0/24]
{extra}"
    ))
}

/// A loopback WebSocket upstream: echoes every data message; `say-auth` is answered with
/// the `Authorization` it got in the handshake (an upstream echoing a secret), `big` with a
/// binary message one byte over tollgate's limit. The handshakes' headers are kept.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        EchoServer::start_with(None).await
    }

    /// The same behind TLS (`wss://`) with `config`.
    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let seen = handshakes.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                match acceptor.clone() {
                    None => {
                        tokio::spawn(echo(stream, seen));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                echo(stream, seen).await;
                            }
                        });
                    }
                }
            }
        });
        EchoServer { addr, handshakes }
    }

    fn remap(&self) -> RemapTransport {
        let pinned: IpAddr = PINNED.parse().unwrap();
        RemapTransport::new([(pinned, self.addr)])
    }
}

/// One upstream session of [`EchoServer`].
async fn echo<S>(stream: S, seen: Arc<Mutex<Vec<http::HeaderMap>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let auth: Arc<Mutex<String>> = Arc::default();
    let keep = auth.clone();
    #[allow(clippy::result_large_err)]
    let callback = move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         response| {
        seen.lock().unwrap().push(request.headers().clone());
        if let Some(value) = request.headers().get("authorization") {
            *keep.lock().unwrap() = value.to_str().unwrap_or_default().to_owned();
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let answer = match message {
            Message::Text(text) if text.as_str() == "say-auth" => {
                let auth = auth.lock().unwrap().clone();
                Message::text(format!("you sent: {auth}"))
            }
            Message::Text(text) if text.as_str() == "big" => {
                Message::binary(vec![7u8; 16 * 1024 * 1024 + 1])
            }
            Message::Text(_) | Message::Binary(_) => message,
            _ => continue,
        };
        if ws.send(answer).await.is_err() {
            return;
        }
    }
}

/// What the proxy answered a handshake with, when it was not `101`.
#[derive(Debug)]
struct Refused {
    status: u16,
    head: String,
    body: String,
}

/// Opens `url` (`http://…`) through the proxy as a WebSocket client would, offering
/// permessage-deflate (which tollgate must not pass on); `extra` are more header lines.
async fn open(proxy: SocketAddr, method: &str, url: &str, extra: &str) -> Result<Ws, Refused> {
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "{method} {url} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The head byte by byte: the session's frames come right after it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            panic!("the proxy closed before a response head: {head:?}");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 101 {
        let length: usize = header_of(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        return Err(Refused { status, head, body });
    }
    assert_eq!(
        header_of(&head, "sec-websocket-accept").as_deref(),
        Some(ACCEPT),
        "{head}"
    );
    assert!(
        header_of(&head, "sec-websocket-extensions").is_none(),
        "{head}"
    );
    Ok(WebSocketStream::from_raw_socket(stream, Role::Client, None).await)
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

/// The next data or close message the client gets (pings and pongs skipped).
async fn next(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return message,
            other => panic!("the session ended without a message: {other:?}"),
        }
    }
}

/// The Close frame the client got.
async fn closed_with(ws: &mut Ws) -> CloseFrame {
    match next(ws).await {
        Message::Close(Some(frame)) => frame,
        other => panic!("expected a Close frame, got {other:?}"),
    }
}

/// The session's record, once it is written (when both legs have closed, which may be a
/// moment after the client saw its Close).
async fn session_record(harness: &Harness) -> serde_json::Value {
    for _ in 0..1000 {
        harness.handle.sync_audit();
        if let Some(record) = harness
            .audit
            .records()
            .into_iter()
            .find(|r| r["websocket"].is_object())
        {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no WebSocket record: {}", harness.audit.text());
}

fn proxy(builder: ProxyBuilder) -> Harness {
    start(builder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_entry_relays_messages_and_the_record_says_how_it_closed() {
    let server = EchoServer::start().await;
    let harness = proxy(Proxy::builder(ws_policy("")).transport(server.remap()));
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let handshake = server.handshakes.lock().unwrap()[0].clone();
    assert_eq!(handshake["upgrade"], "websocket");
    assert_eq!(handshake["sec-websocket-key"], KEY);
    assert!(
        !handshake.contains_key("sec-websocket-extensions"),
        "no extension is offered through tollgate: {handshake:?}"
    );
    let record = session_record(&harness).await;
    assert_eq!(record["status"], 101, "{record}");
    assert_eq!(record["outcome"], "closed", "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["rule"], "network.allow[0]", "{record}");
    assert_eq!(record["bytes_up"], 8, "{record}");
    assert_eq!(record["bytes_down"], 8, "{record}");
    let session = &record["websocket"];
    assert_eq!(session["messages_up"], 2, "{record}");
    assert_eq!(session["messages_down"], 2, "{record}");
    assert_eq!(session["close_code"], 1000, "{record}");
    assert_eq!(session["closed_by"], "client", "{record}");
    // One request against the budget: the handshake.
    assert_eq!(harness.handle.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_opt_in_the_upgrade_is_refused_naming_the_option() {
    let server = EchoServer::start().await;
    let harness = proxy(Proxy::builder(ws_policy("")).transport(server.remap()));
    let refused = open(harness.addr, "GET", "http://plain.test:8080/chat", "")
        .await
        .expect_err("refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(
        header_of(&refused.head, "tollgate-error").as_deref(),
        Some("policy_denied"),
        "{refused:?}"
    );
    assert!(refused.body.contains("websocket: true"), "{refused:?}");
    assert!(refused.body.contains("network.allow[1]"), "{refused:?}");
    let records = harness.records();
    let record = records.last().expect("a record");
    assert_eq!(record["reason"], "websocket_not_enabled", "{record}");
    assert_eq!(record["outcome"], "refused", "{record}");
    assert!(server.handshakes.lock().unwrap().is_empty());

    let refused = open(harness.addr, "POST", "http://api.test:8080/chat", "")
        .await
        .expect_err("refused");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("must be a GET"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tunnel_bytes_closes_the_session_with_1008() {
    let server = EchoServer::start().await;
    let limits = "limits:\n  max_tunnel_bytes: 100\n";
    let harness = proxy(Proxy::builder(ws_policy(limits)).transport(server.remap()));
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    // 60 bytes up fit; their 60-byte echo would make 120 of the 100: it is not relayed.
    ws.send(Message::text("x".repeat(60))).await.unwrap();
    let frame = closed_with(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    assert!(frame.reason.contains("max_tunnel_bytes"), "{frame:?}");
    let record = session_record(&harness).await;
    assert_eq!(record["outcome"], "tunnel_bytes_exceeded", "{record}");
    assert_eq!(record["bytes_up"], 60, "{record}");
    assert_eq!(record["bytes_down"], 0, "{record}");
    assert_eq!(record["websocket"]["close_code"], 1008, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "tollgate", "{record}");
    assert!(
        record["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_tunnel_bytes"),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tunnel_duration_closes_a_busy_session_with_1008() {
    let server = EchoServer::start().await;
    let limits = "limits:\n  max_tunnel_duration: 1s\n";
    let harness = proxy(Proxy::builder(ws_policy(limits)).transport(server.remap()));
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    // Busy until it is ended: the idle timeout (60 s) plays no part. (The bound only turns
    // a session that is never ended into a failure instead of a hang.)
    let ticking = async {
        loop {
            ws.send(Message::text("tick")).await.unwrap();
            match next(&mut ws).await {
                Message::Text(_) => continue,
                Message::Close(Some(frame)) => break frame,
                other => panic!("{other:?}"),
            }
        }
    };
    let frame = tokio::time::timeout(Duration::from_secs(30), ticking)
        .await
        .expect("the session was never ended");
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    assert!(frame.reason.contains("max_tunnel_duration"), "{frame:?}");
    let record = session_record(&harness).await;
    assert_eq!(record["outcome"], "tunnel_duration_exceeded", "{record}");
    assert_eq!(record["websocket"]["close_code"], 1008, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "tollgate", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_closes_the_session_with_1009() {
    let server = EchoServer::start().await;
    let harness = proxy(Proxy::builder(ws_policy("")).transport(server.remap()));
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    ws.send(Message::text("big")).await.unwrap();
    let frame = closed_with(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
    let record = session_record(&harness).await;
    assert_eq!(record["outcome"], "message_too_large", "{record}");
    assert_eq!(record["websocket"]["close_code"], 1009, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "tollgate", "{record}");
    assert_eq!(record["bytes_down"], 0, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_quiet_session() {
    let server = EchoServer::start().await;
    let settings = Settings {
        idle_timeout: Duration::from_millis(300),
        ..Settings::default()
    };
    let harness = proxy(
        Proxy::builder(ws_policy(""))
            .settings(settings)
            .transport(server.remap()),
    );
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("one"));
    let frame = closed_with(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    let record = session_record(&harness).await;
    assert_eq!(record["outcome"], "idle_timeout", "{record}");
    assert_eq!(record["websocket"]["messages_up"], 1, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_live_session_with_1001() {
    let server = EchoServer::start().await;
    let harness = proxy(Proxy::builder(ws_policy("")).transport(server.remap()));
    let mut ws = open(harness.addr, "GET", "http://api.test:8080/chat", "")
        .await
        .expect("switched");
    ws.send(Message::text("live")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("live"));
    let audit = harness.audit.clone();
    let stopping = tokio::spawn(harness.handle.shutdown());
    let frame = closed_with(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    while let Some(Ok(_)) = ws.next().await {}
    stopping.await.unwrap();
    // Shutdown waited for the session: its record is in the log it synced.
    let record = audit
        .records()
        .into_iter()
        .find(|r| r["websocket"].is_object())
        .unwrap_or_else(|| panic!("no session record: {}", audit.text()));
    assert_eq!(record["outcome"], "shutdown", "{record}");
    assert_eq!(record["websocket"]["close_code"], 1001, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "tollgate", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_is_credentialed_and_an_echoed_secret_is_redacted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tollgate-ws-test-{}", std::process::id()));
    let team = dir.join("secrets/acme");
    std::fs::create_dir_all(&team).unwrap();
    let secret = team.join("bearer");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let providers = "auth_providers:
  - name: Chat
    type: bearer
    secret: {file: bearer}
    scope: [http://api.test:8080]
";
    let policy = ws_policy(providers);
    let rules = tollgate_policy::secrets::SecretRules::new(dir.join("secrets"), []).unwrap();
    let credentials = Credentials::load(&policy, &rules).expect("credentials load");
    let server = EchoServer::start().await;
    let harness = proxy(
        Proxy::builder(policy)
            .credentials(credentials)
            .transport(server.remap()),
    );
    let mut ws = open(
        harness.addr,
        "GET",
        "http://api.test:8080/chat",
        "Tollgate-Auth: Chat\r\n",
    )
    .await
    .expect("switched");
    ws.send(Message::text("say-auth")).await.unwrap();
    let Message::Text(echo) = next(&mut ws).await else {
        panic!("a text answer")
    };
    assert!(!echo.as_str().contains(SECRET), "{echo}");
    assert!(echo.as_str().contains("[redacted by tollgate]"), "{echo}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let handshake = server.handshakes.lock().unwrap()[0].clone();
    assert_eq!(
        handshake["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    assert!(!handshake.contains_key("tollgate-auth"));
    let record = session_record(&harness).await;
    assert_eq!(
        record["credentials"],
        serde_json::json!(["Chat"]),
        "{record}"
    );
    assert_eq!(record["finding"], "secret_echoed", "{record}");
    assert!(!harness.audit.text().contains(SECRET));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_an_intercepted_tunnel_is_relayed() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let dir = tls_support::Dir::new("ws");
    let ca = tls_support::TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let server = EchoServer::start_with(Some(ca.server_config(&["api.test"]))).await;
    let allow = tls_support::entry("api.test", "      websocket: true\n");
    let policy = tls_support::tls_policy(&ca_file, &allow, "");
    let proxy =
        tls_support::start(Proxy::builder(policy).transport(tls_support::remap(server.addr, None)));

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
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
    // What browsers and WebSocket libraries offer for wss://.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, answer) = tokio_tungstenite::client_async("wss://api.test/chat", tls)
        .await
        .expect("switched");
    assert_eq!(answer.status(), 101);
    ws.send(Message::text("through the tunnel")).await.unwrap();
    let echoed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(echoed.as_str(), "through the tunnel");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let record = session_record(&proxy.harness).await;
    assert_eq!(record["scheme"], "https", "{record}");
    assert_eq!(record["outcome"], "closed", "{record}");
    assert_eq!(record["upstream_protocol"], "http/1.1", "{record}");
    assert_eq!(record["websocket"]["messages_up"], 1, "{record}");
    assert_eq!(record["websocket"]["messages_down"], 1, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "client", "{record}");
}
