//! The execution's circuit breaker: under `limits.on_violation: kill`, an execution that
//! keeps knocking is ended once `limits.max_denied` of its requests were refused (the proxy
//! rings) or the eBPF wall refused as many of its direct sockets (the event pump rings).
//!
//! Both ring from their own threads (the proxy's runtime, the pump's thread); `supervise`
//! waits for the first ring beside the command, kills the whole cgroup, and the run ends
//! with exit status 125 and the sentence (`tollgate: ended: …`, the summary's `violation`).

use std::sync::Arc;
use tokio::sync::watch;
use tollgate_policy::model::Limits;
use tollgate_policy::schema::OnViolation;

/// The alarm of one execution; clones ring the same one.
#[derive(Clone)]
pub(super) struct Violations {
    /// The first reason rung, once there is one.
    reason: Arc<watch::Sender<Option<String>>>,
    limit: u64,
    kill: bool,
}

impl Violations {
    /// The alarm for the policy's limits (the defaults, `continue`, without a policy).
    pub(super) fn new(limits: Option<&Limits>) -> Violations {
        let defaults = Limits::default();
        let limits = limits.unwrap_or(&defaults);
        Violations {
            reason: Arc::new(watch::channel(None).0),
            limit: limits.max_denied,
            kill: limits.on_violation == OnViolation::Kill,
        }
    }

    /// Rings with `sentence`, unless it has rung already (the first reason is the one told).
    pub(super) fn ring(&self, sentence: String) {
        self.reason.send_if_modified(|reason| {
            if reason.is_some() {
                return false;
            }
            *reason = Some(sentence);
            true
        });
    }

    /// The eBPF wall has refused `refused` direct sockets so far.
    pub(super) fn bypass_attempts(&self, refused: u64) {
        if self.kill && refused >= self.limit {
            self.ring(format!(
                "the eBPF wall refused {refused} direct sockets that tried to bypass the proxy \
                 (limits.max_denied: {}, on_violation: kill)",
                self.limit
            ));
        }
    }

    /// Resolves with the reason once the alarm has rung.
    pub(super) async fn rung(&self) -> String {
        let mut receiver = self.reason.subscribe();
        let reason = match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // Never: `self` holds the sender.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> Limits {
        tollgate_policy::Policy::from_yaml(
            "test.yaml",
            &format!("version: 1\nteam: t\nlimits:\n{yaml}"),
        )
        .expect("policy")
        .limits
        .clone()
    }

    #[tokio::test]
    async fn the_first_reason_is_the_one_told() {
        let violations = Violations::new(None);
        let clone = violations.clone();
        clone.ring("first".into());
        violations.ring("second".into());
        assert_eq!(violations.rung().await, "first");
    }

    #[tokio::test]
    async fn bypass_attempts_ring_at_max_denied_under_kill_only() {
        let kill = Violations::new(Some(&limits("  max_denied: 3\n  on_violation: kill\n")));
        kill.bypass_attempts(2);
        assert!(kill.reason.borrow().is_none());
        kill.bypass_attempts(3);
        assert!(kill.rung().await.contains("limits.max_denied: 3"));

        let keep_going = Violations::new(Some(&limits("  max_denied: 3\n")));
        keep_going.bypass_attempts(100);
        assert!(keep_going.reason.borrow().is_none());
        assert!(Violations::new(None).reason.borrow().is_none());
    }
}
