//! Byte charges on their way to the store: an admission under a byte budget waits for this
//! execution's earlier charges to be answered, so the remaining it reads includes them.
//!
//! A response's last bytes are charged in the background when it ends
//! ([`super::ByteMeter`]); a client that sends its next request at once would otherwise be
//! admitted against the budget as it was before that response.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct Charges {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    in_flight: AtomicUsize,
    answered: Notify,
}

/// One charge not answered yet; dropping it (when the store answered, or failed) lets
/// waiting admissions go on.
pub(super) struct Pending {
    state: Arc<State>,
}

impl Charges {
    /// Marks one charge as on its way.
    pub fn begin(&self) -> Pending {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Pending {
            state: self.state.clone(),
        }
    }

    /// Waits until no charge is on its way, at most `limit`.
    pub async fn settled(&self, limit: Duration) {
        let wait = async {
            loop {
                let answered = self.state.answered.notified();
                tokio::pin!(answered);
                // Registered before the check, so an answer in between is not missed.
                answered.as_mut().enable();
                if self.state.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                answered.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.answered.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settled_returns_at_once_with_nothing_on_its_way() {
        let charges = Charges::default();
        // A limit of an hour: the test would hang, not pass, if this waited.
        charges.settled(Duration::from_secs(3600)).await;
    }

    #[tokio::test]
    async fn settled_waits_for_every_pending_charge() {
        let charges = Charges::default();
        let first = charges.begin();
        let second = charges.begin();
        let (sent, mut done) = tokio::sync::oneshot::channel();
        let waiter = {
            let state = charges.state.clone();
            tokio::spawn(async move {
                Charges { state }.settled(Duration::from_secs(3600)).await;
                let _ = sent.send(());
            })
        };
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(done.try_recv().is_err(), "one charge is still on its way");
        drop(second);
        waiter.await.unwrap();
        assert!(done.try_recv().is_ok());
    }
}
