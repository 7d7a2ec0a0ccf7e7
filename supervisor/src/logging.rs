//! tollgate's own log: the `tracing` lines (the proxy's operator lines, warnings, debug
//! lines), filtered by `TOLLGATE_LOG`, written to stderr or to `tollgate run --log FILE`.
//!
//! Why a sink of its own: `--log` keeps tollgate's lines apart from the command's stderr, but
//! the file can only be opened once the run knows who the sandbox is and what it shares (see
//! `run::outputs`), long after the first line may have been logged. So with `--log` the
//! lines are held in memory until the file is open, then written to it first; a run that
//! stops before that (a refusal) hands them to stderr instead, so nothing is lost.
//!
//! Why a filter of its own: `TOLLGATE_LOG=debug` is asked for to see what tollgate does, not
//! netlink attribute dumps and BPF feature probes of the libraries below it. A bare level
//! applies to tollgate's own crates; the dependencies stay at `warn` (or quieter, when the
//! level is); a directive naming a target (`hyper=debug`) is passed on as it is.

use std::fs::File;
use std::io::{IsTerminal as _, Write};
use std::sync::{Mutex, MutexGuard};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// The crates a bare level in `TOLLGATE_LOG` is about (targets are module paths).
const OWN_CRATES: [&str; 2] = ["tollgate", "tollgate_policy"];

/// The most verbose level a dependency logs at unless a directive names it.
const DEPENDENCY_LEVEL: LevelFilter = LevelFilter::WARN;

/// The level of tollgate's own lines when `TOLLGATE_LOG` gives none.
const DEFAULT_LEVEL: LevelFilter = LevelFilter::INFO;

/// Most bytes held while waiting for the `--log` file; later lines are counted and dropped.
const HELD_LIMIT: usize = 1 << 20;

/// Where the lines go.
pub enum Destination {
    Stderr,
    /// The `--log` file, opened later by the run ([`write_to`]).
    LogFile,
}

enum Sink {
    Stderr,
    Held { lines: Vec<u8>, dropped: u64 },
    File(File),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

fn sink() -> MutexGuard<'static, Sink> {
    // A thread that panicked while writing a line leaves the sink usable.
    SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs the subscriber for the whole process: the filter from `TOLLGATE_LOG` (or
/// `RUST_LOG`), lines to `destination`, colour only for a person at a terminal.
pub fn init(destination: Destination) {
    let asked = std::env::var("TOLLGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let (filter, problem) = match asked.as_deref().map(parse_filter) {
        None => (default_filter(), None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(problem)) => (default_filter(), Some(problem)),
    };
    let to_terminal = match destination {
        Destination::Stderr => std::io::stderr().is_terminal(),
        Destination::LogFile => {
            *sink() = Sink::Held {
                lines: Vec::new(),
                dropped: 0,
            };
            false
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SinkWriter)
        .with_ansi(to_terminal)
        // Someone who set a filter is looking for where lines come from, and which directive
        // names them; the operator's default lines stay short.
        .with_target(asked.is_some())
        .init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}; logging at the default level (info) instead");
    }
    if let Some(asked) = &asked {
        tracing::debug!("log filter `{asked}`: {}", directives(asked).join(","));
    }
}

/// From now on lines go to `file` (the `--log` file, opened for appending), the lines held
/// until now first.
pub fn write_to(mut file: File) {
    let mut sink = sink();
    if let Sink::Held { lines, dropped } = &*sink {
        let _ = file.write_all(lines);
        if *dropped > 0 {
            let _ = writeln!(
                file,
                "tollgate: {dropped} log lines were dropped while the log file was not open yet"
            );
        }
    }
    *sink = Sink::File(file);
}

/// Hands lines still held for a `--log` file that was never opened (the run stopped first)
/// to stderr. Called before the process exits.
pub fn release() {
    let mut sink = sink();
    if let Sink::Held { lines, .. } = &*sink {
        let _ = std::io::stderr().write_all(lines);
        *sink = Sink::Stderr;
    }
}

/// What the subscriber writes each formatted line through (one `write` per line).
struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match &mut *sink() {
            Sink::Stderr => std::io::stderr().write_all(line)?,
            Sink::Held { lines, dropped } => {
                if lines.len() + line.len() <= HELD_LIMIT {
                    lines.extend_from_slice(line);
                } else {
                    *dropped += 1;
                }
            }
            Sink::File(file) => file.write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn default_filter() -> EnvFilter {
    EnvFilter::new(directives("").join(","))
}

/// The filter `TOLLGATE_LOG=asked` means, or why it means nothing.
fn parse_filter(asked: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directives(asked).join(","))
        .map_err(|error| format!("TOLLGATE_LOG={asked} is not a log filter ({error})"))
}

/// `asked` as `EnvFilter` directives: the dependencies' default first, then tollgate's own
/// crates at the last bare level given (info if none), then every directive that names a
/// target, as written. A crate of tollgate's that `asked` names keeps the level it was given.
fn directives(asked: &str) -> Vec<String> {
    let mut own = DEFAULT_LEVEL;
    let mut dependencies = DEPENDENCY_LEVEL;
    let mut named = Vec::new();
    for directive in asked.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.parse::<LevelFilter>() {
            Ok(level) => {
                own = level;
                // Quieter levels (error, off) quieten everything; louder ones only tollgate.
                dependencies = level.min(DEPENDENCY_LEVEL);
            }
            Err(_) => named.push(directive.to_owned()),
        }
    }
    let target_of = |directive: &str| {
        directive
            .split(['=', '['])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let mut out = vec![dependencies.to_string()];
    for krate in OWN_CRATES {
        if !named.iter().any(|directive| target_of(directive) == krate) {
            out.push(format!("{krate}={own}"));
        }
    }
    out.extend(named);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_tollgates_and_dependencies_stay_at_warn() {
        assert_eq!(
            directives("debug"),
            ["warn", "tollgate=debug", "tollgate_policy=debug"]
        );
        assert_eq!(
            directives(""),
            ["warn", "tollgate=info", "tollgate_policy=info"]
        );
        assert_eq!(
            directives("trace"),
            ["warn", "tollgate=trace", "tollgate_policy=trace"]
        );
    }

    #[test]
    fn quieter_levels_quieten_the_dependencies_too() {
        assert_eq!(
            directives("error"),
            ["error", "tollgate=error", "tollgate_policy=error"]
        );
        assert_eq!(
            directives("off"),
            ["off", "tollgate=off", "tollgate_policy=off"]
        );
    }

    #[test]
    fn named_targets_are_passed_on_and_win_over_the_bare_level() {
        assert_eq!(
            directives("debug,hyper=trace"),
            [
                "warn",
                "tollgate=debug",
                "tollgate_policy=debug",
                "hyper=trace"
            ]
        );
        assert_eq!(
            directives(" debug , tollgate=trace ,"),
            ["warn", "tollgate_policy=debug", "tollgate=trace"]
        );
        assert_eq!(
            directives("tollgate::proxy=trace"),
            [
                "warn",
                "tollgate=info",
                "tollgate_policy=info",
                "tollgate::proxy=trace"
            ]
        );
    }

    #[test]
    fn every_shape_parses_and_nonsense_is_refused() {
        for asked in [
            "debug",
            "debug,hyper=trace",
            "tollgate[span]=debug",
            "warn",
            "",
        ] {
            assert!(parse_filter(asked).is_ok(), "{asked}");
        }
        let refused = parse_filter("debug,hyper=loud").expect_err("refused");
        assert!(
            refused.contains("TOLLGATE_LOG=debug,hyper=loud"),
            "{refused}"
        );
    }
}
