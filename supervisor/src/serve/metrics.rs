//! STUB (owner E): the node service's Prometheus metrics.
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {}
    }
    pub fn launch_refused(&self, reason: &str) {
        let _ = reason;
    }
    pub fn execution_started(&self, team: &str) {
        let _ = team;
    }
    pub fn execution_finished(
        &self,
        team: &str,
        status: i32,
        duration: Duration,
        summary: Option<&serde_json::Value>,
    ) {
        let _ = (team, status, duration, summary);
    }
    pub fn record(&self, team: &str, record: &serde_json::Value) {
        let _ = (team, record);
    }
    pub fn policy_reload(&self, team: &str, ok: bool) {
        let _ = (team, ok);
    }
    pub fn render(&self) -> String {
        String::new()
    }
}
