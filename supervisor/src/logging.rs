//! tollgate's own log: the `tracing` lines (the proxy's operator lines, warnings, debug
//! lines), filtered by `TOLLGATE_LOG`, written to stderr or to `tollgate run --log FILE`.
//!
//! Why a sink of its own: `--log` keeps tollgate's lines apart from the command's stderr, but
//! the file can only be opened once the run knows who the sandbox is and what it shares (see
//! `run::outputs`), long after the first line may have been logged. So with `--log` the
//! lines are held in memory until the file is open, then written to it first; a run that
//! stops before that (a refusal) hands them to stderr instead, so nothing is lost.
//!
//! Why batches for the proxy's request lines: a busy proxy logs a line per request, and one
//! `write` per line, with its formatting, was 6 % of its profile (docs/benchmarks.md, "Proxy
//! hot path"). Lines of the
//! [`REQUEST_LINES`] target are gathered and written a batch at a time: by the proxy's worker
//! thread when it runs out of work (`run` installs [`flush`] as the runtime's park hook), or
//! at once when the batch is [`BATCH_LIMIT`] bytes or [`BATCH_AGE`] old. No thread is woken
//! for a line (on a small virtual machine a wake-up costs more than the write), and a line
//! waits only while the proxy is busy with other requests. Every other line is written at
//! once, after whatever request lines are gathered, so the log keeps its order; [`flush`]
//! and [`release`] write what is gathered.
//!
//! Why a filter of its own: `TOLLGATE_LOG=debug` is asked for to see what tollgate does, not
//! netlink attribute dumps and BPF feature probes of the libraries below it. A bare level
//! applies to tollgate's own crates; the dependencies stay at `warn` (or quieter, when the
//! level is); a directive naming a target (`hyper=debug`) is passed on as it is.

use std::fs::File;
use std::io::{IsTerminal as _, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;

/// The target of the proxy's line per request and tunnel: written in batches.
pub const REQUEST_LINES: &str = "tollgate::proxy::requests";

/// Gathered request lines are written at once past this size…
const BATCH_LIMIT: usize = 64 * 1024;

/// …or once the first of them is this old.
const BATCH_AGE: Duration = Duration::from_millis(5);

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

/// The sink, and the request lines gathered for it (empty while lines are held).
struct Log {
    sink: Sink,
    gathered: Vec<u8>,
    /// When the first gathered line was.
    since: Option<Instant>,
}

static LOG: Mutex<Log> = Mutex::new(Log {
    sink: Sink::Stderr,
    gathered: Vec::new(),
    since: None,
});

fn log() -> MutexGuard<'static, Log> {
    // A thread that panicked while writing a line leaves the sink usable.
    LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Log {
    /// Writes `line` (whole lines) to the sink, or holds it for the `--log` file.
    fn write_now(&mut self, line: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stderr => std::io::stderr().write_all(line),
            Sink::Held { lines, dropped } => {
                if lines.len() + line.len() <= HELD_LIMIT {
                    lines.extend_from_slice(line);
                } else {
                    *dropped += 1;
                }
                Ok(())
            }
            Sink::File(file) => file.write_all(line),
        }
    }

    /// Writes the gathered request lines, in one write.
    fn write_gathered(&mut self) -> std::io::Result<()> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        self.since = None;
        let gathered = std::mem::take(&mut self.gathered);
        let written = self.write_now(&gathered);
        self.gathered = gathered;
        self.gathered.clear();
        written
    }

    /// Gathers a request line, writing the batch when it is full or old enough.
    fn gather(&mut self, line: &[u8]) -> std::io::Result<()> {
        if matches!(self.sink, Sink::Held { .. }) {
            // Held lines are written in one go once the file is open anyway.
            return self.write_now(line);
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        self.gathered.extend_from_slice(line);
        if self.gathered.len() >= BATCH_LIMIT || since.elapsed() >= BATCH_AGE {
            self.write_gathered()?;
        }
        Ok(())
    }
}

/// Writes the request lines gathered so far (see the module's doc). Cheap when there are
/// none: the proxy's worker threads call it each time they run out of work.
pub fn flush() {
    let _ = log().write_gathered();
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
            log().sink = Sink::Held {
                lines: Vec::new(),
                dropped: 0,
            };
            false
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Writers)
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
    let mut log = log();
    let _ = log.write_gathered();
    if let Sink::Held { lines, dropped } = &log.sink {
        let _ = file.write_all(lines);
        if *dropped > 0 {
            let _ = writeln!(
                file,
                "tollgate: {dropped} log lines were dropped while the log file was not open yet"
            );
        }
    }
    log.sink = Sink::File(file);
}

/// Hands lines still held for a `--log` file that was never opened (the run stopped first)
/// to stderr. Called before the process exits.
pub fn release() {
    let mut log = log();
    let _ = log.write_gathered();
    if let Sink::Held { lines, .. } = &log.sink {
        let _ = std::io::stderr().write_all(lines);
        log.sink = Sink::Stderr;
    }
}

/// What the subscriber writes each formatted line through: request lines are gathered, every
/// other line is written at once (one `write` per line, after the gathered ones).
struct SinkWriter {
    gathered: bool,
}

struct Writers;

impl<'a> MakeWriter<'a> for Writers {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter { gathered: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SinkWriter {
        SinkWriter {
            gathered: meta.target() == REQUEST_LINES,
        }
    }
}

impl Write for SinkWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.gathered {
            log().gather(line)?;
        } else {
            let mut log = log();
            log.write_gathered()?;
            log.write_now(line)?;
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

    fn file_log(name: &str) -> (Log, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("tollgate-log-{}-{name}", std::process::id()));
        let file = File::create(&path).unwrap();
        let log = Log {
            sink: Sink::File(file),
            gathered: Vec::new(),
            since: None,
        };
        (log, path)
    }

    #[test]
    fn gathered_request_lines_go_out_before_the_next_direct_line_in_order() {
        let (mut log, path) = file_log("order");
        log.gather(b"GET one\n").unwrap();
        log.gather(b"GET two\n").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "gathered, not written yet"
        );
        // What a warning does: the gathered lines first, then its own.
        log.write_gathered().unwrap();
        log.write_now(b"WARN three\n").unwrap();
        log.gather(b"GET four\n").unwrap();
        log.write_gathered().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "GET one\nGET two\nWARN three\nGET four\n"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_full_or_old_batch_is_written_at_once_and_held_lines_are_not_gathered() {
        let (mut log, path) = file_log("full");
        let line = vec![b'x'; 1000];
        for _ in 0..BATCH_LIMIT / 1000 + 1 {
            log.gather(&line).unwrap();
        }
        assert!(log.gathered.len() < BATCH_LIMIT);
        assert!(std::fs::metadata(&path).unwrap().len() >= BATCH_LIMIT as u64);
        std::fs::remove_file(path).unwrap();
        // An old batch goes out with the next line.
        let (mut log, path) = file_log("old");
        log.gather(b"GET old\n").unwrap();
        log.since = Some(Instant::now() - BATCH_AGE);
        log.gather(b"GET new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"GET old\nGET new\n");
        std::fs::remove_file(path).unwrap();
        let mut held = Log {
            sink: Sink::Held {
                lines: Vec::new(),
                dropped: 0,
            },
            gathered: Vec::new(),
            since: None,
        };
        held.gather(b"GET early\n").unwrap();
        assert!(held.gathered.is_empty());
        assert!(matches!(&held.sink, Sink::Held { lines, .. } if lines == b"GET early\n"));
    }

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
