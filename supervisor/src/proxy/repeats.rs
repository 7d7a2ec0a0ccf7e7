//! The operator log's summing: a refusal's line is logged as it happens, its identical
//! repeats of the next second become one `… repeated N times` line.
//!
//! The same identity and bounds as the audit log's records (`audit::aggregate`), so the log
//! and the audit tell one story. The summed line is logged when its interval ends (a task on
//! the proxy's runtime wakes for it) and, for whatever is still pending, when the proxy
//! stops ([`LogRepeats::flush`]).

use crate::audit::aggregate::{Key, Repeats, Windows};
use crate::logging::REQUEST_LINES;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Level;

/// One operator log line.
#[derive(Debug, Clone)]
struct Line {
    level: Level,
    text: String,
}

#[derive(Default)]
struct State {
    windows: Windows<Line>,
    /// A task is waiting for the next interval to end.
    waking: bool,
}

/// The proxy's operator log lines of refusals, summed.
#[derive(Default, Clone)]
pub(crate) struct LogRepeats {
    state: Arc<Mutex<State>>,
}

impl LogRepeats {
    /// Logs `text` at `level` now, or counts it as a repeat when `key` (the refusal's
    /// identity; `None`: never summed) was logged less than an interval ago.
    pub(crate) fn log(&self, key: Option<Key>, level: Level, text: String) {
        let Some(key) = key else {
            emit(level, &text);
            return;
        };
        let offered = {
            let mut state = self.lock();
            let offered = state
                .windows
                .offer(key, Line { level, text }, Instant::now());
            if state.windows.pending() && !state.waking {
                state.waking = self.wake_at_interval_end();
            }
            offered
        };
        for repeats in offered.ended {
            emit_repeats(&repeats);
        }
        if let Some(line) = offered.now {
            emit(line.level, &line.text);
        }
    }

    /// Logs every pending repeat now (the proxy stops).
    pub(crate) fn flush(&self) {
        let pending = self.lock().windows.drain();
        for repeats in pending {
            emit_repeats(&repeats);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that logs summed lines as their intervals end, until none is
    /// pending; false outside a runtime (then they wait for the next line or the flush).
    fn wake_at_interval_end(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let this = self.clone();
        runtime.spawn(async move {
            loop {
                let next = this.lock().windows.next_close();
                if let Some(at) = next {
                    tokio::time::sleep_until(at.into()).await;
                }
                let ended = {
                    let mut state = this.lock();
                    let ended = state.windows.due(Instant::now());
                    if !state.windows.pending() {
                        state.waking = false;
                        drop(state);
                        for repeats in &ended {
                            emit_repeats(repeats);
                        }
                        return;
                    }
                    ended
                };
                for repeats in &ended {
                    emit_repeats(repeats);
                }
            }
        });
        true
    }
}

fn emit_repeats(repeats: &Repeats<Line>) {
    let text = format!("{} ... repeated {} times", repeats.last.text, repeats.count);
    emit(repeats.last.level, &text);
}

fn emit(level: Level, text: &str) {
    // Written in batches (see `logging`): these are the lines a busy proxy writes most.
    if level == Level::WARN {
        tracing::warn!(target: REQUEST_LINES, "{text}");
    } else {
        tracing::info!(target: REQUEST_LINES, "{text}");
    }
}
