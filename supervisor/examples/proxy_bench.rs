//! The in-process egress proxy in front of one loopback upstream, for `scripts/bench-proxy.sh`.
//!
//! `proxy_bench LISTEN UPSTREAM [AUDIT]` serves `LISTEN` with a policy that allows
//! `http://bench.test` (pinned to a documentation address covered by `allowed_ips`) and a
//! transport that dials `UPSTREAM` for that address, the same shape as a sandboxed run whose
//! upstream sits in a test namespace. It writes the audit log to `AUDIT` (default: none) and
//! stops on SIGTERM or SIGINT, printing the proxy's counters.

use std::net::SocketAddr;
use std::sync::Arc;
use tollgate::proxy::testing::RemapTransport;
use tollgate::proxy::Proxy;
use tollgate_policy::Policy;

const POLICY: &str = "version: 1
team: bench
network:
  hosts:
    bench.test: 198.51.100.10
  allow:
    - host: bench.test
      ports: [80]
      allowed_ips: [198.51.100.0/24]
limits:
  max_requests: 1000000000
  max_response_bytes: 16MiB
  max_connections: 1024
";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        return Err("usage: proxy_bench LISTEN_ADDR UPSTREAM_ADDR [AUDIT_FILE]".into());
    };
    let upstream: SocketAddr = upstream.parse()?;
    let policy = Arc::new(Policy::from_yaml("bench.yaml", POLICY)?);
    let mut builder = Proxy::builder(policy)
        .execution_id("bench")
        .transport(RemapTransport::new([("198.51.100.10".parse()?, upstream)]));
    if let Some(path) = args.get(3) {
        builder = builder.audit(std::fs::File::create(path)?);
    }
    let listener = std::net::TcpListener::bind(listen)?;
    // PROXY_BENCH_WORKERS: tokio worker threads (default: one per core).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("PROXY_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build()?;
    let stats = runtime.block_on(async move {
        let handle = builder
            .build()
            .start(&tokio::runtime::Handle::current(), listener)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, std::io::Error>(handle.shutdown().await)
    })?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
