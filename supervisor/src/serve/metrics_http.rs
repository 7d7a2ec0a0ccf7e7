//! STUB (owner E): serving /metrics over TCP or a Unix socket.
use super::metrics::Metrics;
use super::wire::MetricsListen;
use std::sync::Arc;

pub struct MetricsServer {}

impl MetricsServer {
    pub async fn bind(listen: &MetricsListen) -> std::io::Result<MetricsServer> {
        let _ = listen;
        Ok(MetricsServer {})
    }
    pub async fn run(
        self,
        metrics: Arc<Metrics>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = metrics;
        let _ = shutdown.changed().await;
    }
}
