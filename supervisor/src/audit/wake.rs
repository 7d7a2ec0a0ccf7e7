//! When the audit writer thread wakes: not once per record.
//!
//! Each record used to wake the writer (a futex call by the sending worker, and on a small
//! virtual machine a context switch or an inter-processor interrupt), which cost the proxy
//! more CPU per request than encoding the record (docs/benchmarks.md, "Proxy hot path").
//! Now:
//! - a record queued on one of the proxy's worker threads ([`defer_on_this_thread`]) wakes
//!   the writer only when that worker runs out of work ([`wake_deferred`], the runtime's park
//!   hook), after its answer went out, or once [`WAKE_AT`] records wait;
//! - a record queued anywhere else wakes the writer at once;
//! - a woken writer lingers ([`LINGER`]) so that records arriving together are written
//!   together, unless a sync or the close is waiting ([`Wake::urgent`]);
//! - an already awake writer is not woken again (`awake`), so a busy proxy makes no futex
//!   call per record at all.
//!
//! Nothing is lost if a wake is missed: the writer also looks every [`SAFETY_NET`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a woken writer lets records gather before it takes them.
const LINGER: Duration = Duration::from_millis(1);

/// Records waiting unseen past which a proxy worker wakes the writer without waiting to run
/// out of work.
const WAKE_AT: u64 = 128;

/// The longest the writer sleeps without being woken.
const SAFETY_NET: Duration = Duration::from_secs(1);

/// What the senders and the writer of one audit log share.
#[derive(Default)]
pub(super) struct Wake {
    /// The writer thread; set as soon as it is spawned.
    pub(super) writer: OnceLock<Thread>,
    /// The writer is awake, or has been woken: nobody needs to unpark it.
    awake: AtomicBool,
    /// A sync or the close is waiting: the writer must not linger.
    urgent: AtomicBool,
    /// Records queued so far, and taken by the writer so far.
    queued: AtomicU64,
    taken: AtomicU64,
}

thread_local! {
    /// On a proxy worker thread: the logs it queued records to since it last ran out of work.
    /// `None` on every other thread (their records wake the writer at once).
    static DEFERRED: RefCell<Option<Vec<Arc<Wake>>>> = const { RefCell::new(None) };
}

/// Marks the calling thread as a proxy worker whose records wake the writer when it calls
/// [`wake_deferred`] (the runtime's thread-start hook).
pub fn defer_on_this_thread() {
    DEFERRED.with(|deferred| *deferred.borrow_mut() = Some(Vec::new()));
}

/// Wakes the writers this thread queued records to (the runtime's park and stop hooks).
pub fn wake_deferred() {
    let woken = DEFERRED.with(|deferred| {
        deferred
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    });
    for wake in woken {
        wake.nudge();
    }
}

impl Wake {
    /// A record was queued: wake the writer now, or when this worker runs out of work.
    pub(super) fn queued(self: &Arc<Self>) {
        // The writer may have taken it already: `taken` can run ahead of `queued` for a moment.
        let waiting =
            (self.queued.fetch_add(1, SeqCst) + 1).saturating_sub(self.taken.load(SeqCst));
        let deferred = waiting < WAKE_AT
            && DEFERRED.with(|deferred| match &mut *deferred.borrow_mut() {
                Some(list) => {
                    if !list.iter().any(|wake| Arc::ptr_eq(wake, self)) {
                        list.push(self.clone());
                    }
                    true
                }
                None => false,
            });
        if !deferred {
            self.nudge();
        }
    }

    /// Wakes the writer unless it is awake already.
    fn nudge(&self) {
        if !self.awake.swap(true, SeqCst) {
            self.unpark();
        }
    }

    /// Wakes the writer for a sync or the close, with no lingering.
    pub(super) fn urgent(&self) {
        self.urgent.store(true, SeqCst);
        self.awake.store(true, SeqCst);
        self.unpark();
    }

    fn unpark(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// The writer took one record off the queue.
    pub(super) fn took(&self) {
        self.taken.fetch_add(1, SeqCst);
    }

    /// On the writer: sleeps until woken or `deadline`, then lingers unless urgent. Returns
    /// at once when records are waiting that no one will wake it for.
    pub(super) fn wait(&self, deadline: Option<Instant>) {
        // Announce being idle, then look once more: a record queued before the
        // announcement was sent by a sender that saw the writer awake and did not wake it.
        self.awake.store(false, SeqCst);
        let waiting = self.queued.load(SeqCst) != self.taken.load(SeqCst);
        if !waiting && !self.urgent.load(SeqCst) {
            let now = Instant::now();
            let sleep = deadline
                .map(|deadline| deadline.saturating_duration_since(now))
                .unwrap_or(SAFETY_NET)
                .min(SAFETY_NET);
            std::thread::park_timeout(sleep);
        }
        self.awake.store(true, SeqCst);
        let until = Instant::now() + LINGER;
        while !self.urgent.load(SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        // Cleared before the queue is read: a sync that comes after this is either read
        // now or wakes the next wait.
        self.urgent.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Kind, Record, Traffic};
    use std::io::Write;
    use std::sync::Mutex;

    fn fresh() -> Arc<Wake> {
        let wake = Arc::new(Wake::default());
        // A writer that never runs: these tests look at who would be woken, and when.
        let _ = wake.writer.set(std::thread::current());
        wake
    }

    #[test]
    fn a_record_from_a_thread_that_is_not_a_proxy_worker_wakes_the_writer_at_once() {
        let wake = fresh();
        std::thread::scope(|scope| {
            scope.spawn(|| wake.queued());
        });
        assert!(wake.awake.load(SeqCst));
    }

    #[test]
    fn a_proxy_workers_records_wake_the_writer_once_when_it_runs_out_of_work() {
        let wake = fresh();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                defer_on_this_thread();
                for _ in 0..3 {
                    wake.queued();
                }
                assert!(!wake.awake.load(SeqCst), "woken before the worker was idle");
                DEFERRED.with(|d| assert_eq!(d.borrow().as_ref().unwrap().len(), 1));
                wake_deferred();
                assert!(wake.awake.load(SeqCst));
                DEFERRED.with(|d| assert!(d.borrow().as_ref().unwrap().is_empty()));
            });
        });
    }

    #[test]
    fn a_busy_worker_wakes_the_writer_once_enough_records_wait() {
        let wake = fresh();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                defer_on_this_thread();
                for _ in 1..WAKE_AT {
                    wake.queued();
                }
                assert!(!wake.awake.load(SeqCst));
                wake.queued();
                assert!(wake.awake.load(SeqCst), "{WAKE_AT} records waited unseen");
            });
        });
    }

    #[test]
    fn an_idle_writer_does_not_sleep_on_records_queued_while_it_was_awake() {
        let wake = fresh();
        // Queued while the writer was awake: nobody woke it, so `wait` must not sleep.
        wake.awake.store(true, SeqCst);
        wake.queued();
        wake.urgent.store(true, SeqCst); // no lingering either
        let started = Instant::now();
        wake.wait(None);
        assert!(
            started.elapsed() < SAFETY_NET,
            "slept with a record waiting"
        );
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_proxy_workers_record_reaches_the_file_once_the_worker_is_idle_without_a_sync() {
        let out = Shared::default();
        let log = AuditLog::new(Box::new(out.clone()));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                defer_on_this_thread();
                let traffic = Traffic::new(Kind::Http, "GET");
                log.write(Record::traffic("exec-1", "team", traffic));
                wake_deferred();
            });
        });
        // Waits for the line, not for a fixed time; the safety net would take a second.
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.0.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the record never reached the file"
            );
            std::thread::yield_now();
        }
        log.close();
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.contains("\"exec-1\""), "{written}");
    }
}
