//! Identical refusals summed per interval: the first is written as it happens, the repeats of
//! the next [`INTERVAL`] become one later record (or log line) with their `count`.
//!
//! A sandbox that keeps knocking would otherwise grow the audit log and the operator log by
//! one line per knock (650,000 refusals in 20 s made 241 MB). What is identical is the
//! contract's identity of a refusal ([`Key`]): for `http`/`connect` the type, method,
//! scheme, host, port, path, reason and error; for `bypass_attempt` the hook, destination and
//! command. Varying one of those (a path per request, a port scan) would make every knock new
//! again, so an interval keeps at most [`MAX_DISTINCT`] identities apart; past that, new
//! ones are summed by their type and error (`Key::Overflow`), and the summed record shows
//! the last of them. Either way the single records plus the counts are exactly the events.
//!
//! [`Windows`] is the bookkeeping, for any item; [`Held`] applies it to audit records for the
//! writer thread, the proxy's operator log applies it to its lines.

use super::record::{Kind, Record, Verdict};
use super::Traffic;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the repeats of a refusal are summed before their record is written.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Distinct refusals one interval keeps apart; more are summed by type and error alone.
pub const MAX_DISTINCT: usize = 32;

/// What makes two events the same for summing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Traffic {
        kind: Kind,
        method: String,
        scheme: String,
        host: String,
        port: u16,
        path: String,
        reason: String,
        error: Option<&'static str>,
    },
    Bypass {
        hook: String,
        destination: Option<SocketAddr>,
        comm: String,
    },
    /// Events past [`MAX_DISTINCT`] identities in one interval.
    Overflow {
        kind: Kind,
        error: Option<&'static str>,
    },
}

impl Key {
    /// The identity of a refusal; `None` for what is never summed (allowed traffic, upstream
    /// failures, the sandbox record).
    pub fn of_traffic(traffic: &Traffic) -> Option<Key> {
        (traffic.decision == Verdict::Deny).then(|| Key::Traffic {
            kind: traffic.kind,
            method: traffic.method.clone(),
            scheme: traffic.scheme.clone(),
            host: traffic.host.clone(),
            port: traffic.port,
            path: traffic.path.clone(),
            reason: traffic.reason.clone(),
            error: traffic.error,
        })
    }

    pub fn of_record(record: &Record) -> Option<Key> {
        if let Some(traffic) = &record.traffic {
            return Key::of_traffic(traffic);
        }
        let bypass = record.bypass.as_ref()?;
        Some(Key::Bypass {
            hook: format!("{:?}", bypass.attempt.kind),
            destination: bypass.attempt.destination,
            comm: bypass.attempt.comm.clone(),
        })
    }

    /// Where this key's events go once an interval holds [`MAX_DISTINCT`] others.
    fn overflow(&self) -> Key {
        match self {
            Key::Traffic { kind, error, .. } => Key::Overflow {
                kind: *kind,
                error: *error,
            },
            Key::Bypass { .. } => Key::Overflow {
                kind: Kind::BypassAttempt,
                error: None,
            },
            Key::Overflow { .. } => self.clone(),
        }
    }
}

/// The repeats of one key in one interval: how many, the first and the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeats<T> {
    pub count: u64,
    pub first: T,
    pub last: T,
}

struct Window<T> {
    closes: Instant,
    repeats: Option<Repeats<T>>,
}

/// The open intervals, one per key seen in the last [`INTERVAL`].
pub struct Windows<T> {
    open: HashMap<Key, Window<T>>,
}

impl<T> Default for Windows<T> {
    fn default() -> Self {
        Windows {
            open: HashMap::new(),
        }
    }
}

/// What to do with an offered event.
#[derive(Debug, PartialEq)]
pub struct Offered<T> {
    /// The event itself, when it is to be written now (the first of its interval).
    pub now: Option<T>,
    /// The repeats of the intervals that had ended by then, to be written first.
    pub ended: Vec<Repeats<T>>,
}

impl<T: Clone> Windows<T> {
    /// Takes one event of `key` at `now` (closing every interval ended by then first).
    pub fn offer(&mut self, key: Key, item: T, now: Instant) -> Offered<T> {
        let ended = self.due(now);
        let key = if self.open.contains_key(&key) || self.open.len() < MAX_DISTINCT {
            key
        } else {
            key.overflow()
        };
        let Some(window) = self.open.get_mut(&key) else {
            let closes = now + INTERVAL;
            self.open.insert(
                key,
                Window {
                    closes,
                    repeats: None,
                },
            );
            return Offered {
                now: Some(item),
                ended,
            };
        };
        match &mut window.repeats {
            Some(repeats) => {
                repeats.count += 1;
                repeats.last = item;
            }
            None => {
                window.repeats = Some(Repeats {
                    count: 1,
                    first: item.clone(),
                    last: item,
                })
            }
        }
        Offered { now: None, ended }
    }

    /// Closes every interval that has ended by `now`; their repeats, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Repeats<T>> {
        let mut ended: Vec<(Instant, Repeats<T>)> = Vec::new();
        self.open.retain(|_, window| {
            if window.closes > now {
                return true;
            }
            if let Some(repeats) = window.repeats.take() {
                ended.push((window.closes, repeats));
            }
            false
        });
        ended.sort_by_key(|(closes, _)| *closes);
        ended.into_iter().map(|(_, repeats)| repeats).collect()
    }

    /// Closes every interval now (the log is synced or closed); their repeats, oldest first.
    pub fn drain(&mut self) -> Vec<Repeats<T>> {
        let mut ended: Vec<(Instant, Repeats<T>)> = self
            .open
            .drain()
            .filter_map(|(_, window)| Some((window.closes, window.repeats?)))
            .collect();
        ended.sort_by_key(|(closes, _)| *closes);
        ended.into_iter().map(|(_, repeats)| repeats).collect()
    }

    /// When the next interval ends, if one is open.
    pub fn next_close(&self) -> Option<Instant> {
        self.open.values().map(|w| w.closes).min()
    }

    /// Whether an open interval holds repeats not written yet.
    pub fn pending(&self) -> bool {
        self.open.values().any(|w| w.repeats.is_some())
    }
}

/// The audit writer's summing: records in, records to write out.
#[derive(Default)]
pub(super) struct Held {
    windows: Windows<Record>,
}

impl Held {
    /// The records to write for `record`, arriving now: none while it repeats, itself when
    /// it is new, preceded by the summed records of the intervals that had ended.
    pub(super) fn offer(&mut self, record: Record, out: &mut Vec<Record>) {
        let Some(key) = Key::of_record(&record) else {
            out.push(record);
            return;
        };
        let offered = self.windows.offer(key, record, Instant::now());
        out.extend(offered.ended.into_iter().map(summed));
        out.extend(offered.now);
    }

    /// The summed records of every interval ended by now.
    pub(super) fn due(&mut self, out: &mut Vec<Record>) {
        out.extend(self.windows.due(Instant::now()).into_iter().map(summed));
    }

    /// The summed records of every interval, ended or not.
    pub(super) fn drain(&mut self, out: &mut Vec<Record>) {
        out.extend(self.windows.drain().into_iter().map(summed));
    }

    pub(super) fn next_close(&self) -> Option<Instant> {
        self.windows.next_close()
    }
}

/// The record standing for `repeats`: the last of them, with their count and first time.
fn summed(repeats: Repeats<Record>) -> Record {
    let Repeats { count, first, last } = repeats;
    Record {
        count: Some(count),
        first_time: Some(first.time),
        ..last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        Key::Traffic {
            kind: Kind::Http,
            method: "GET".into(),
            scheme: "http".into(),
            host: "evil.test".into(),
            port: 80,
            path: path.into(),
            reason: "host_not_allowed".into(),
            error: Some("policy_denied"),
        }
    }

    #[test]
    fn the_first_is_written_and_the_repeats_are_summed_when_the_interval_ends() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        let first = windows.offer(key("/a"), 0, t0);
        assert_eq!(first.now, Some(0));
        for i in 1..=5 {
            let later = windows.offer(key("/a"), i, t0 + Duration::from_millis(i * 10));
            assert_eq!(
                later,
                Offered {
                    now: None,
                    ended: vec![]
                }
            );
        }
        assert!(windows.pending());
        assert!(windows.due(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(
            windows.due(t0 + INTERVAL),
            [Repeats {
                count: 5,
                first: 1,
                last: 5
            }]
        );
        assert!(windows.next_close().is_none());
        // A new interval starts with a written event again.
        assert_eq!(windows.offer(key("/a"), 6, t0 + INTERVAL).now, Some(6));
    }

    #[test]
    fn an_event_after_its_interval_ended_flushes_the_repeats_first() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        windows.offer(key("/a"), 0, t0);
        windows.offer(key("/a"), 1, t0);
        let offered = windows.offer(key("/a"), 2, t0 + INTERVAL * 2);
        assert_eq!(offered.now, Some(2));
        assert_eq!(
            offered.ended,
            [Repeats {
                count: 1,
                first: 1,
                last: 1
            }]
        );
    }

    #[test]
    fn distinct_keys_past_the_bound_are_summed_together_and_nothing_is_lost() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        let total = 1000u64;
        let mut written = 0u64;
        for i in 0..total {
            let offered = windows.offer(key(&format!("/{i}")), i, t0);
            written += u64::from(offered.now.is_some());
            assert!(offered.ended.is_empty());
        }
        // MAX_DISTINCT written apart, one more opens the overflow interval.
        assert_eq!(written, MAX_DISTINCT as u64 + 1);
        let summed = windows.drain();
        assert_eq!(summed.len(), 1);
        assert_eq!(summed[0].count + written, total);
        assert_eq!(summed[0].last, total - 1);
    }

    #[test]
    fn ended_intervals_make_room_for_new_refusals() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        for i in 0..MAX_DISTINCT {
            windows.offer(key(&format!("/{i}")), 0, t0);
        }
        // Later, a new refusal is kept apart again (not summed with strangers).
        let later = windows.offer(key("/new"), 1, t0 + INTERVAL);
        assert_eq!(later.now, Some(1));
        assert_eq!(windows.offer(key("/new"), 2, t0 + INTERVAL).now, None);
        assert_eq!(windows.drain()[0].last, 2);
    }

    #[test]
    fn drain_closes_every_interval() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        for path in ["/a", "/b"] {
            windows.offer(key(path), 0, t0);
            windows.offer(key(path), 1, t0);
        }
        windows.offer(key("/c"), 0, t0);
        assert_eq!(windows.drain().len(), 2);
        assert!(!windows.pending());
        assert!(windows.next_close().is_none());
    }
}
