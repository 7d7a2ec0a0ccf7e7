//! Floods end to end (issue #10, section 4): a sandbox that keeps knocking cannot grow the
//! audit log, tollgate's own log or the summary without bound, and every knock is still
//! accounted for: single records plus the `count` of aggregated ones add up to exactly the
//! number of refusals, also for what was still pending when the execution ended.
//!
//! Floods here vary what the contract's identity of a refusal includes (path, host, port),
//! the way a hostile command would once it sees identical refusals summed.
//! `proxy_refusals.rs` has the identical flood, the denial limit and the circuit breaker.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair: the direct
//! sockets the eBPF wall refuses never leave the sandbox.

mod refusals_support;

use refusals_support::{entry, events, refused_events, Bench, Outcome, DENY_ADMIN};
use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, read_json_lines, Sandbox, PYTHON},
    Scratch,
};

fn assert_ran(outcome: &Outcome) {
    assert_eq!(
        outcome.finished.code(),
        0,
        "the run failed\n{}",
        outcome.describe()
    );
    assert!(outcome.results.is_object(), "{}", outcome.describe());
    assert_execution_gone(&outcome.execution());
}

/// The events the records of `kind` stand for, and how many records there are.
fn tally(audit: &[Value], kind: &str) -> (u64, usize) {
    let records: Vec<&Value> = audit.iter().filter(|r| r["type"] == kind).collect();
    (records.iter().map(|r| events(r)).sum(), records.len())
}

/// Every aggregated record has a `count` of at least one and a `first_time` no later than
/// its `time`.
fn assert_aggregates_are_well_formed(audit: &[Value]) {
    for record in audit.iter().filter(|r| r.get("count").is_some()) {
        assert!(record["count"].as_u64().is_some_and(|n| n >= 1), "{record}");
        let first = record["first_time"].as_str().unwrap_or_default();
        let time = record["time"].as_str().unwrap_or_default();
        assert!(
            refusals_support::is_rfc3339_ms(first) && first <= time,
            "{record}"
        );
    }
}

/// Requests refused in the flood below: far more than any bound on records.
const FLOOD: u64 = 1200;

#[test]
fn a_flood_of_distinct_refusals_stays_bounded_and_every_one_is_accounted_for() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("violation-flood");
    let policy = bench.policy(
        &["flood.up.test"],
        &entry("flood.up.test", DENY_ADMIN),
        "limits:\n  max_denied: 40\n",
    );
    // One connection, keep-alive: each request has a path of its own, then a run of hosts
    // and ports of their own; the last ones are still pending when the command exits.
    let script = r#"
import http.client
conn = http.client.HTTPConnection(*PROXY, timeout=20)
statuses = {}
def ask(url):
    conn.putrequest("GET", url, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", url.split("/")[2])
    conn.endheaders()
    r = conn.getresponse()
    r.read()
    statuses[r.status] = statuses.get(r.status, 0) + 1
for i in range(FLOOD // 2):
    ask("http://flood.up.test:8080/admin/%d" % i)
for i in range(FLOOD // 4):
    ask("http://host%d.evil.test/x" % i)
for i in range(FLOOD // 4):
    ask("http://flood.up.test:%d/x" % (10000 + i))
results["statuses"] = statuses
"#
    .replace("FLOOD", &FLOOD.to_string());
    let outcome = bench.run(Sandbox::new().timeout("120s"), &policy, &script);
    assert_ran(&outcome);
    assert_eq!(
        outcome.result("statuses"),
        &serde_json::json!({"403": 40, "429": FLOOD - 40}),
        "{}",
        outcome.describe()
    );
    assert!(bench.seen().is_empty(), "{:?}", bench.seen());

    let (refused, records) = tally(&outcome.audit, "http");
    assert_eq!(
        refused_events(outcome.records("http")),
        FLOOD,
        "{}",
        outcome.audit_text
    );
    assert_eq!(refused, FLOOD);
    assert!(
        records < (FLOOD / 4) as usize,
        "{records} audit records for {FLOOD} refusals:\n{}",
        outcome.audit_text
    );
    assert_aggregates_are_well_formed(&outcome.audit);

    let stderr = outcome.finished.stderr_lines();
    assert!(
        stderr.len() < (FLOOD / 4) as usize,
        "{} lines of stderr for {FLOOD} refusals:\n{}",
        stderr.len(),
        outcome.finished.stderr
    );
    // The operator log says how many it left out.
    let repeated: u64 = stderr
        .iter()
        .filter_map(|line| {
            let (_, tail) = line.rsplit_once("repeated ")?;
            tail.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    let refusal_lines = stderr.iter().filter(|l| l.contains(" refused")).count() as u64;
    assert!(
        repeated > 0 && refusal_lines + repeated >= FLOOD,
        "{refusal_lines} refusal lines and {repeated} repeats for {FLOOD} refusals:\n{}",
        outcome.finished.stderr
    );

    // The summary names what was refused, most first, in a bounded list adding up.
    let list = outcome.summary["proxy"]["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("no proxy.refused: {}", outcome.summary_text));
    let counts: Vec<u64> = list.iter().map(|e| e["count"].as_u64().unwrap()).collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        FLOOD,
        "{}",
        outcome.summary_text
    );
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "{}",
        outcome.summary_text
    );
    assert!(list.len() <= 120, "{} entries", list.len());
    assert_eq!(
        list[0],
        serde_json::json!({
            "destination": "http://flood.up.test:8080",
            "reason": "denial_limit",
            "count": FLOOD / 2 - 40,
        }),
        "{}",
        outcome.summary_text
    );
    assert!(
        list.iter()
            .any(|e| e["destination"] == "http://flood.up.test:8080"
                && e["reason"] == "l7_denied"
                && e["count"] == 40),
        "{}",
        outcome.summary_text
    );
    assert!(
        list.iter().any(|e| e["destination"] == "other"),
        "{}",
        outcome.summary_text
    );
    assert_eq!(outcome.summary["proxy"]["denied"], FLOOD);
}

/// Direct sockets in the flood below: identical ones, then a scan of distinct ports.
const SAME: u64 = 600;
const SCAN: u64 = 2400;

#[test]
fn a_flood_of_direct_sockets_is_aggregated_and_every_attempt_is_accounted_for() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("violation-bypass");
    let policy = scratch.file("policy.yaml", "version: 1\nteam: e2e\n");
    let script = scratch.file(
        "bypass.py",
        &format!(
            r#"
import socket
failed = 0
def attempt(address):
    global failed
    s = socket.socket()
    try:
        s.connect(address)
    except OSError:
        failed += 1
    finally:
        s.close()
for _ in range({SAME}):
    attempt(("10.0.0.1", 80))
for port in range({SCAN}):
    attempt(("10.0.0.2", 1000 + port))
print("failed", failed)
"#
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        &scratch.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let audit = scratch.output("audit.jsonl");
    let summary = scratch.output("summary.json");
    let finished = Sandbox::new()
        .policy(&policy)
        .audit(&audit)
        .summary(&summary)
        .timeout("120s")
        .run([PYTHON, script.to_str().unwrap()]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.contains(&format!("failed {}", SAME + SCAN)),
        "{}",
        finished.describe()
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let records = read_json_lines(&audit);
    assert_eq!(summary["bypass_attempts"], SAME + SCAN, "{summary}");
    let (attempts, lines) = tally(&records, "bypass_attempt");
    // A full event ring drops reports, never refusals: under load the reader can fall
    // behind a tight connect loop, and what it missed is counted in the summary instead.
    let unreported = summary["bypass_reports_dropped"].as_u64().unwrap();
    assert_eq!(
        attempts + unreported,
        SAME + SCAN,
        "the records ({lines}, standing for {attempts} attempts) and the dropped reports \
         ({unreported}) stand for every attempt"
    );
    assert!(
        lines < ((SAME + SCAN) / 4) as usize,
        "{lines} bypass_attempt records for {} attempts",
        SAME + SCAN
    );
    assert_aggregates_are_well_formed(&records);
    // The identical ones were summed with their destination.
    let same: u64 = records
        .iter()
        .filter(|r| r["type"] == "bypass_attempt" && r["destination"] == "10.0.0.1:80")
        .map(events)
        .sum();
    assert_eq!(same, SAME);
    assert!(
        finished.stderr_lines().len() < 20,
        "{}",
        finished.describe()
    );
}
