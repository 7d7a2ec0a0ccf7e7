//! Streams the eBPF wall's bypass reports into the audit log while the command runs, and
//! rings the circuit breaker ([`Violations`]) when the wall has refused enough of them.
//!
//! Reading as they come keeps the ring from filling (a full ring drops reports, never
//! refusals) and puts each attempt in the audit log at the time it happened. A command that
//! hammers `connect` cannot flood the log: the audit writer sums identical attempts, and
//! distinct ones past a bound, once a second (`audit::aggregate`), so every attempt is
//! written or counted and none is left out.

use super::violation::Violations;
use crate::audit::{AuditLog, Record};
use crate::sandbox::bpf::{AttachedWall, WallReport};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

struct Writer {
    audit: AuditLog,
    execution: String,
    team: Option<String>,
    violations: Violations,
}

impl Writer {
    fn write(&mut self, attempts: &[crate::sandbox::bpf::BypassAttempt]) {
        for attempt in attempts {
            self.audit.write(Record::bypass(
                &self.execution,
                self.team.as_deref(),
                attempt,
            ));
        }
    }
}

/// The thread draining one wall; [`EventPump::finish`] detaches the wall and returns its report.
pub struct EventPump {
    /// Dropping it wakes the thread (the read end sees POLLHUP): no polling interval, so
    /// stopping costs nothing at teardown.
    stop: OwnedFd,
    thread: JoinHandle<(AttachedWall, Writer)>,
}

impl EventPump {
    pub fn start(
        mut wall: AttachedWall,
        audit: AuditLog,
        execution: String,
        team: Option<String>,
        violations: Violations,
    ) -> std::io::Result<EventPump> {
        let (stopped, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut writer = Writer {
            audit,
            execution,
            team,
            violations,
        };
        let thread = std::thread::spawn(move || {
            while wait(&wall, &stopped) {
                let attempts = wall.drain_events();
                writer.write(&attempts);
                // The wall's own count: it has the attempts whose reports the ring dropped.
                writer.violations.bypass_attempts(wall.counters().denied);
            }
            (wall, writer)
        });
        Ok(EventPump { stop, thread })
    }

    /// Stops the thread, detaches the wall (killing what is left in the cgroup first) and
    /// writes the last reports.
    pub fn finish(self) -> Option<WallReport> {
        drop(self.stop);
        let (wall, mut writer) = self.thread.join().ok()?;
        let report = wall.detach();
        writer.write(&report.events);
        Some(report)
    }
}

/// Blocks until the ring has events (true) or the pump is stopped (false).
fn wait(wall: &AttachedWall, stopped: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: wall.events_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stopped.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds on descriptors this thread owns or borrows.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Reports are read again at detach; nothing is lost by stopping early.
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}
