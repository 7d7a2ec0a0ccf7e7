//! TLS interception benchmark pieces, for `scripts/bench-tls.sh`.
//!
//! ```text
//! tls_bench proxy LISTEN UPSTREAM UPSTREAM_CA OUT_CA   serve an intercepting proxy for
//!     https://bench.test (pinned to a documentation address, dialed at UPSTREAM, verified
//!     against UPSTREAM_CA); write the execution CA to OUT_CA; stop on SIGTERM/SIGINT
//! tls_bench client direct|PROXY ADDR CA N keepalive|new   N sequential GETs of
//!     https://bench.test/small, straight to ADDR or through the proxy at ADDR (CONNECT),
//!     trusting CA; one connection for all (keepalive) or a new TCP+TLS connection each
//!     (new, no session resumption); prints one JSON line of latency statistics
//! tls_bench mint N                                      CA generation, leaf minting and
//!     cached lookup costs
//! ```

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::ExecutionCa;
use tollgate::proxy::{Interception, Proxy};
use tollgate_policy::url::UrlHost;
use tollgate_policy::Policy;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("TLS_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("proxy") if args.len() == 5 => runtime.block_on(proxy(&args[1..])),
        Some("client") if args.len() == 6 => runtime.block_on(client(&args[1..])),
        Some("mint") if args.len() == 2 => mint(args[1].parse()?),
        _ => Err("usage: see the module documentation of examples/tls_bench.rs".into()),
    }
}

async fn proxy(args: &[String]) -> Result<(), Error> {
    let upstream: SocketAddr = args[1].parse()?;
    let policy = Policy::from_yaml(
        "bench.yaml",
        &format!(
            "version: 1
team: bench
network:
  hosts:
    bench.test: 198.51.100.10
  upstream_ca: {{file: {}}}
  allow:
    - host: bench.test
      ports: [443]
      allowed_ips: [198.51.100.0/24]
limits:
  max_requests: 1000000000
  max_connections: 1024
",
            args[2]
        ),
    )?;
    let interception = Arc::new(Interception::for_policy(
        &policy,
        "bench",
        Duration::from_secs(3600),
    )?);
    std::fs::write(&args[3], interception.ca().certificate_pem())?;
    let listener = std::net::TcpListener::bind(&args[0])?;
    let handle = Proxy::builder(Arc::new(policy))
        .execution_id("bench")
        .interception(interception)
        .transport(RemapTransport::new([("198.51.100.10".parse()?, upstream)]))
        .build()
        .start(&tokio::runtime::Handle::current(), listener)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let stats = handle.shutdown().await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

fn client_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A new connection pays a full handshake, like a new client process does.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn connect(
    via_proxy: bool,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Sender, Error> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if via_proxy {
        tcp.write_all(b"CONNECT bench.test:443 HTTP/1.1\r\nHost: bench.test:443\r\n\r\n")
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 {
                return Err("the proxy closed the tunnel".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
        }
    }
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("bench.test")?, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn get(sender: &mut Sender) -> Result<(), Error> {
    let request = http::Request::get("/small")
        .header("host", "bench.test")
        .body(Empty::new())?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()).into());
    }
    response.into_body().collect().await?;
    Ok(())
}

async fn client(args: &[String]) -> Result<(), Error> {
    let via_proxy = args[0] != "direct";
    let addr: SocketAddr = args[1].parse()?;
    let config = client_config(&args[2])?;
    let n: usize = args[3].parse()?;
    let keepalive = args[4] == "keepalive";
    // Warm up: the proxy's leaf and upstream connection, the upstream's caches.
    let mut sender = connect(via_proxy, addr, config.clone()).await?;
    for _ in 0..20 {
        get(&mut sender).await?;
    }
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        if !keepalive {
            sender = connect(via_proxy, addr, config.clone()).await?;
        }
        get(&mut sender).await?;
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / n as f64;
    println!(
        "{}",
        serde_json::json!({
            "path": if via_proxy { "tollgate" } else { "direct" },
            "mode": args[4],
            "requests": n,
            "mean_us": mean.round(),
            "p50_us": micros(samples[n / 2]).round(),
            "p99_us": micros(samples[(n * 99 / 100).min(n - 1)]).round(),
            "req_per_s": (n as f64 / total.as_secs_f64()).round(),
        })
    );
    Ok(())
}

fn mint(n: u32) -> Result<(), Error> {
    let started = Instant::now();
    let rounds = 20;
    for i in 0..rounds {
        ExecutionCa::generate(&format!("bench-{i}"), Duration::from_secs(3600), None)?;
    }
    let generate = started.elapsed() / rounds;
    let ca = ExecutionCa::generate("bench", Duration::from_secs(3600), None)?;
    let started = Instant::now();
    for i in 0..n {
        ca.mint(&UrlHost::Domain(format!("host{i}.bench.test")))?;
    }
    let minted = started.elapsed() / n;
    let host = UrlHost::Domain("cached.bench.test".into());
    ca.server_config(&host)?;
    let started = Instant::now();
    for _ in 0..n {
        ca.server_config(&host)?;
    }
    let cached = started.elapsed() / n;
    println!(
        "{}",
        serde_json::json!({
            "ca_generate_us": generate.as_micros(),
            "leaf_mint_us": minted.as_micros(),
            "leaf_cached_us": cached.as_secs_f64() * 1e6,
        })
    );
    Ok(())
}
