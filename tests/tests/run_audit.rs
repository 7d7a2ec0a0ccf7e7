//! The audit log of direct-socket attempts: written while the command runs, and bounded, so a
//! command hammering `connect` cannot flood it (identical attempts are summed into records
//! with a `count`); the records and the summary still account for every attempt.
//!
//! Needs root.

use std::time::{Duration, Instant};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{bypass_records, read_json, read_json_lines, Running, Sandbox, HANG_LIMIT, PYTHON},
    Scratch,
};

#[test]
fn a_flood_of_attempts_is_counted_but_the_log_stays_bounded() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("audit-flood");
    let audit = scratch.output("audit.jsonl");
    let summary = scratch.output("summary.json");
    let attempts = 1500;
    let script = format!(
        "import socket\nfor i in range({attempts}):\n    s = socket.socket()\n    try:\n        s.connect(('10.0.0.1', 80))\n    except OSError:\n        pass\n    s.close()\n"
    );
    let finished = Sandbox::new()
        .audit(&audit)
        .summary(&summary)
        .run([PYTHON, "-c", &script]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let records = read_json_lines(&audit);
    let bypasses = bypass_records(&records);
    assert!(
        bypasses.len() < attempts / 10,
        "{} records for {attempts} identical attempts",
        bypasses.len()
    );
    assert!(bypasses.iter().all(|r| r["destination"] == "10.0.0.1:80"));
    let events: u64 = bypasses
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(
        events, attempts as u64,
        "the records stand for every attempt"
    );
    let summary = read_json(&summary);
    assert_eq!(
        summary["bypass_attempts"], attempts,
        "every attempt is counted: {summary}"
    );
}

#[test]
fn attempts_reach_the_log_while_the_command_still_runs() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("audit-live");
    let audit = scratch.output("audit.jsonl");
    // The command makes one attempt, says so, then waits for its stdin to close: the record
    // must appear in the audit log before the test lets it finish.
    let script = "import socket, sys\n\
s = socket.socket()\n\
try:\n    s.connect(('192.0.2.7', 443))\nexcept OSError:\n    pass\n\
print('attempted', flush=True)\n\
sys.stdin.read()\n";
    let mut running =
        Running::spawn(&mut Sandbox::new().audit(&audit).command([PYTHON, "-c", script]));
    running.wait_line("attempted", HANG_LIMIT);
    let deadline = Instant::now() + HANG_LIMIT;
    let streamed = loop {
        let records = if audit.exists() {
            read_json_lines(&audit)
        } else {
            vec![]
        };
        if !bypass_records(&records).is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    assert!(
        streamed,
        "no bypass record while the command ran: {}",
        finished.describe()
    );
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let records = read_json_lines(&audit);
    assert_eq!(
        bypass_records(&records).len(),
        1,
        "written once, not again at teardown"
    );
}
