//! Byte budgets as bytes flow: one exchange's (or passthrough tunnel's) bytes counted against
//! the `bytes_per_day` quotas that applied when it was admitted, and cut where they run out.
//!
//! Counting is synchronous and lock-free (it runs in body polling); the store hears of the
//! bytes in the background, every [`CHARGE_EVERY`] bytes and when the meter is dropped, so
//! no byte waits on a round trip. What the store answers narrows the allowance: bytes other
//! executions moved meanwhile count against this one too.

use super::refusal::QuotaRefusal;
use super::store::{Answered, Bucket};
use super::QuotaEnforcer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tollgate_policy::quotas::AppliedQuota;

/// The store is charged whenever this many bytes were counted since its last charge.
pub const CHARGE_EVERY: u64 = 256 * 1024;

/// Counts one exchange's bytes against the byte budgets that applied when it was
/// admitted. Synchronous to call from body polling; it sends what it counted to the store
/// in the background (every [`CHARGE_EVERY`] bytes, and when dropped).
pub struct ByteMeter {
    shared: Arc<Shared>,
}

struct Shared {
    enforcer: Arc<QuotaEnforcer>,
    /// The `bytes_per_day` quotas, and their buckets (cost 0: charges say how much).
    quotas: Vec<AppliedQuota>,
    buckets: Vec<Bucket>,
    answered: Answered,
    /// The most bytes this exchange may count; only ever lowered.
    allowance: AtomicU64,
    /// Bytes counted (past the allowance only by the bytes that crossed it).
    counted: AtomicU64,
    /// Bytes the store was charged with (or a charge for them is on its way).
    charged: AtomicU64,
    /// The exchange was refused or cut here (counted once in the summary).
    cut: AtomicBool,
}

impl ByteMeter {
    /// A meter for `quotas` (with their `buckets`), of which the least `remaining` after
    /// admission is `allowance`.
    pub(super) fn new(
        enforcer: Arc<QuotaEnforcer>,
        quotas: Vec<AppliedQuota>,
        buckets: Vec<Bucket>,
        allowance: u64,
        answered: Answered,
    ) -> ByteMeter {
        ByteMeter {
            shared: Arc::new(Shared {
                enforcer,
                quotas,
                buckets,
                answered,
                allowance: AtomicU64::new(allowance),
                counted: AtomicU64::new(0),
                charged: AtomicU64::new(0),
                cut: AtomicBool::new(false),
            }),
        }
    }

    /// The most bytes this exchange may move (request and response together, the request
    /// body already counted at admission) before it is cut: what remained at admission,
    /// less what the store reported others used since.
    pub fn allowance(&self) -> u64 {
        self.shared.allowance.load(Ordering::Acquire)
    }

    /// Counts `bytes` more; false when they pass the allowance: the caller cuts the exchange
    /// as `max_response_bytes` would, with `team_budget_exhausted` (the bytes are charged).
    pub fn add(&self, bytes: u64) -> bool {
        let shared = &self.shared;
        let counted = shared
            .counted
            .try_update(Ordering::AcqRel, Ordering::Acquire, |counted| {
                counted
                    .checked_add(bytes)
                    .filter(|sum| *sum <= shared.allowance.load(Ordering::Acquire))
            });
        let Ok(before) = counted else {
            // They came from the upstream, and are charged though never handed on: the
            // budget is spent, and the next attempt is refused up front.
            let now = shared.counted.fetch_add(bytes, Ordering::AcqRel) + bytes;
            shared.enforcer.spent(&shared.buckets);
            charge(shared, now);
            return false;
        };
        let now = before + bytes;
        if now - shared.charged.load(Ordering::Acquire) >= CHARGE_EVERY {
            charge(shared, now);
        }
        true
    }

    /// The refusal to report when [`ByteMeter::add`] returned false, or when a response's
    /// `Content-Length` is over [`ByteMeter::allowance`]: the tightest budget, with what it
    /// still had for this exchange. The first call counts the exchange as cut.
    pub fn exhausted(&self) -> QuotaRefusal {
        let shared = &self.shared;
        if !shared.cut.swap(true, Ordering::AcqRel) {
            shared.enforcer.count_cut();
        }
        let tightest = shared.enforcer.tightest(&shared.buckets).unwrap_or(0);
        let left = self
            .allowance()
            .saturating_sub(shared.counted.load(Ordering::Acquire));
        QuotaRefusal::cut(&shared.quotas[tightest], left, shared.answered)
    }
}

impl std::fmt::Debug for ByteMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteMeter")
            .field("allowance", &self.allowance())
            .field("counted", &self.shared.counted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for ByteMeter {
    fn drop(&mut self) {
        let shared = &self.shared;
        let counted = shared.counted.load(Ordering::Acquire);
        let before = shared.charged.fetch_max(counted, Ordering::AcqRel);
        if counted > before {
            // Carried into the execution's next take, which charges them in the same
            // round trip (or charged on their own shortly, if no take comes).
            shared.enforcer.carry(&shared.buckets, counted - before);
        }
    }
}

/// Charges the store, in the background, with what was counted up to `counted` and not yet
/// charged; its answer lowers the allowance.
fn charge(shared: &Arc<Shared>, counted: u64) {
    let before = shared.charged.fetch_max(counted, Ordering::AcqRel);
    if counted <= before {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "{} bytes of team {} could not be charged to its byte budget (no runtime)",
            counted - before,
            shared.enforcer.team()
        );
        return;
    };
    let shared = shared.clone();
    // Held until the store answered: the next admission under these budgets waits for it.
    let pending = shared.enforcer.charges().begin();
    runtime.spawn(async move {
        let _pending = pending;
        let bytes = counted - before;
        match shared.enforcer.store().charge(&shared.buckets, bytes).await {
            Ok(remaining) => {
                shared.enforcer.note(&shared.buckets, &remaining);
                if let Some(least) = remaining.iter().min() {
                    // Others' bytes count too: what is left for everyone, past what this
                    // meter had charged.
                    shared
                        .allowance
                        .fetch_min(counted.saturating_add(*least), Ordering::AcqRel);
                }
            }
            Err(error) => tracing::debug!(
                "{bytes} bytes of team {} were not charged to its byte budget: {error}",
                shared.enforcer.team()
            ),
        }
    });
}
