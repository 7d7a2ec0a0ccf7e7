//! Streams the eBPF wall's bypass reports into the audit log while the command runs.
//!
//! Reading as they come keeps the ring from filling (a full ring drops reports, never
//! refusals) and puts each attempt in the audit log at the time it happened. A command that
//! hammers `connect` must not be able to flood the log either: past [`MAX_RECORDS`] the
//! attempts are only counted (the summary still has the total).

use super::bypass_record;
use crate::audit::AuditLog;
use crate::sandbox::bpf::{AttachedWall, WallReport};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Individual `bypass_attempt` records written per execution at most.
pub const MAX_RECORDS: usize = 1000;

/// How long one wait for events lasts before the stop flag is checked again.
const POLL: Duration = Duration::from_millis(100);

struct Writer {
    audit: AuditLog,
    execution: String,
    team: Option<String>,
    written: usize,
}

impl Writer {
    fn write(&mut self, attempts: &[crate::sandbox::bpf::BypassAttempt]) {
        for attempt in attempts {
            if self.written >= MAX_RECORDS {
                return;
            }
            self.audit.record(&bypass_record(
                &self.execution,
                self.team.as_deref(),
                attempt,
            ));
            self.written += 1;
        }
    }
}

/// The thread draining one wall; [`EventPump::finish`] detaches the wall and returns its report.
pub struct EventPump {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(AttachedWall, Writer)>,
}

impl EventPump {
    pub fn start(
        mut wall: AttachedWall,
        audit: AuditLog,
        execution: String,
        team: Option<String>,
    ) -> EventPump {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let mut writer = Writer {
            audit,
            execution,
            team,
            written: 0,
        };
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                // A poll error only delays reports: they are read again at detach.
                if wall.wait_for_events(POLL).unwrap_or(false) {
                    let attempts = wall.drain_events();
                    writer.write(&attempts);
                }
            }
            (wall, writer)
        });
        EventPump { stop, thread }
    }

    /// Stops the thread, detaches the wall (killing what is left in the cgroup first) and
    /// writes the last reports.
    pub fn finish(self) -> Option<WallReport> {
        self.stop.store(true, Ordering::Relaxed);
        let (wall, mut writer) = self.thread.join().ok()?;
        let report = wall.detach();
        writer.write(&report.events);
        Some(report)
    }
}
