//! Hostile HTTP/2 from inside the sandbox: rapid reset, CONTINUATION floods, oversized header
//! lists, too many concurrent streams, PING and SETTINGS floods, connection-specific headers
//! and h2c prior knowledge, each sent by a real client inside `tollgate run`.
//!
//! Tollgate's HTTP/2 server faces code it does not trust, so every limit it takes from hyper
//! (and its own rapid-reset guard) must hold against the attacks that broke other servers
//! (CVE-2023-44487, CVE-2024-27316). The attack client (`h2_hostile_client.py`, under the test
//! venv's interpreter: hyperframe and hpack build frames h2's state machine would refuse to
//! send) tunnels to an HTTPS upstream in a network namespace (`tls_e2e_server.py`, trusted
//! through `network.upstream_ca`) and reports what the server sent back. Each test then
//! checks that the supervisor stayed healthy: its peak resident memory (VmHWM of the
//! `tollgate run` process, which runs the proxy) is under [`MEMORY_BOUND_KIB`], a fresh
//! connection from a well-behaved client (httpx with HTTP/2) still gets a 200, and the
//! audit log says why the attacked connection ended.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pair `tollgate_tests::upstream` makes.

use std::{fs, os::unix::fs::PermissionsExt as _};

use serde_json::{json, Value};
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    leaks::SuiteLock,
    sandbox::{Running, Sandbox, HANG_LIMIT, VENV_PYTHON},
    script_run::{assert_ran, events, Outcome, ScriptRun},
    upstream::UpstreamHost,
    Scratch,
};

const CLIENT_PY: &str = include_str!("h2_hostile_client.py");
/// The HTTPS/1.1 upstream of the TLS suite: it logs every request it gets as a JSON line.
const UPSTREAM_PY: &str = include_str!("tls_e2e_server.py");
const HOST: &str = "api.example.com";
const PORT: u16 = 443;

/// A generous bound on the supervisor's peak resident memory (it idles well under a tenth of
/// it): an attack that makes it buffer per frame or per stream goes far past this.
const MEMORY_BOUND_KIB: u64 = 200 * 1024;

/// How many upstream requests an attack of thousands of cancelled streams may cause at most:
/// a bound well below what was sent, whatever the exact thresholds.
const UPSTREAM_BOUND: usize = 250;

// HTTP/2 error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u64 = 0x1;
const COMPRESSION_ERROR: u64 = 0x9;
const ENHANCE_YOUR_CALM: u64 = 0xb;
const HTTP_1_1_REQUIRED: u64 = 0xd;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// One upstream host and the certificates it serves; each test makes its own.
struct Bench {
    host: UpstreamHost,
    material: Certificates,
    scratch: Scratch,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let material = make_certificates(&scratch.dir, &[HOST]);
        let (cert, key) = (material.cert.clone(), material.key.clone());
        let host = UpstreamHost::start_server(UPSTREAM_PY, move |addr, log| {
            vec![
                addr.to_string().into(),
                PORT.to_string().into(),
                cert.into(),
                key.into(),
                log.into(),
            ]
        });
        Bench {
            host,
            material,
            scratch,
        }
    }

    /// `api.example.com` pinned to the upstream and intercepted; `max_requests` high enough
    /// that no attack is stopped by it rather than by the protocol limits under test.
    fn policy(&self) -> String {
        format!(
            "version: 1
team: acme
network:
  hosts:
    {HOST}: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: {HOST}
      ports: [{PORT}, 80]
      allowed_ips: [{subnet}]
limits:
  max_requests: 100000
",
            addr = self.host.addr,
            ca = self.material.ca.display(),
            subnet = self.host.subnet(),
        )
    }

    /// Starts the attack client inside `tollgate run`; it waits for commands.
    fn start(&self) -> Session {
        let files = ScriptRun::write(&self.scratch, 1, "client", &self.policy(), "", CLIENT_PY);
        let sandbox = files
            .sandbox(Sandbox::new().supervisor_env("TOLLGATE_LOG", "info"))
            .timeout("120s");
        let run = Running::spawn(&mut sandbox.command([VENV_PYTHON, files.script_arg(), HOST]));
        Session { run, files }
    }

    /// The upstream's logged requests whose path starts with `prefix`.
    fn reached(&self, prefix: &str) -> usize {
        self.host.requests_to(prefix).len()
    }
}

/// The attack client running inside one `tollgate run`.
struct Session {
    run: Running,
    files: ScriptRun,
}

/// The supervisor's resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl Session {
    /// Sends one command to the client and returns its report.
    fn phase(&mut self, command: Value) -> Value {
        let phase = command["phase"].as_str().expect("a phase name").to_owned();
        if let Err(e) = self.run.send_line(&command.to_string()) {
            self.run
                .fail(&format!("the client no longer reads its stdin ({e})"));
        }
        loop {
            let Some(line) = self.run.next_line(HANG_LIMIT) else {
                self.run
                    .fail(&format!("no report of phase {phase} within {HANG_LIMIT:?}"))
            };
            let Ok(report) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if report["phase"] == phase.as_str() {
                if let Some(exception) = report["exception"].as_str() {
                    self.run.fail(&format!("phase {phase} raised {exception}"));
                }
                return report;
            }
        }
    }

    /// Runs an attack phase and checks that the connection spoke HTTP/2 at all.
    fn attack(&mut self, command: Value) -> Value {
        let report = self.phase(command);
        if report["alpn"] != "h2" {
            self.run.fail(&format!(
                "the intercepted tunnel did not offer h2 by ALPN (the handshake chose {}), so \
                 the attack could not be made: {report}",
                report["alpn"]
            ));
        }
        report
    }

    fn memory(&self) -> Memory {
        let pid = self.run.pid();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// The supervisor after an attack: its memory stayed bounded (printed, so a run's output
    /// records it) and a fresh, well-behaved HTTP/2 connection still gets a 200.
    fn assert_healthy(&mut self, after: &str) -> Memory {
        let fresh = self.phase(json!({"phase": "fresh", "tag": after.replace(' ', "-")}));
        if fresh["status"] != 200 || fresh["http_version"] != "HTTP/2" {
            self.run.fail(&format!(
                "after {after} a fresh HTTP/2 connection did not get its 200: {fresh}"
            ));
        }
        let memory = self.memory();
        eprintln!(
            "after {after}: supervisor VmRSS {} KiB, peak (VmHWM) {} KiB",
            memory.rss_kib, memory.peak_kib
        );
        if memory.peak_kib >= MEMORY_BOUND_KIB {
            self.run.fail(&format!(
                "after {after} the supervisor's peak resident memory was {} KiB (bound \
                 {MEMORY_BOUND_KIB} KiB)",
                memory.peak_kib
            ));
        }
        memory
    }

    /// Ends the client (stdin closed) and reads what the execution left; the run itself
    /// must have gone through and left nothing behind.
    fn finish(self) -> Outcome {
        let outcome = self.files.outcome(self.run.finish(HANG_LIMIT));
        assert_ran(&outcome);
        outcome
    }
}

/// The one `connect` record that ended `protocol_error` (the attacked tunnel); checks it
/// says `protocol: h2` and that its message contains `words` (case-insensitive).
fn protocol_error_record<'a>(outcome: &'a Outcome, words: &str) -> &'a Value {
    let records = outcome.connects_with("protocol_error");
    assert_eq!(
        records.len(),
        1,
        "one tunnel ended protocol_error\n{}",
        outcome.describe()
    );
    let record = records[0];
    assert_eq!(record["protocol"], "h2", "{record}");
    assert_eq!(record["tls"], "intercept", "{record}");
    let message = record["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains(&words.to_lowercase()),
        "the record's message names {words:?}: {record}"
    );
    record
}

/// The `http` records (events) whose path starts with `prefix`.
fn recorded(outcome: &Outcome, prefix: &str) -> u64 {
    outcome
        .records("http")
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .map(events)
        .sum()
}

/// Fails (with the report and the run's audit) unless the server sent a GOAWAY carrying one
/// of `codes` and then closed the connection.
fn assert_goaway(report: &Value, codes: &[u64], outcome: &Outcome) {
    let goaway = &report["goaway"];
    let code = goaway["code"].as_u64();
    assert!(
        code.is_some_and(|code| codes.contains(&code)),
        "expected a GOAWAY with one of {codes:x?}: {report}\n{}",
        outcome.describe()
    );
    assert_eq!(
        report["closed"], true,
        "the server closed the connection after its GOAWAY: {report}"
    );
}

/// An attack's report, printed so a run's output records what went out and what came back.
fn show(what: &str, report: &Value) {
    eprintln!("{what}: {report}");
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn rapid_reset_is_answered_with_goaway_and_recorded_as_a_protocol_error() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-rapid-reset");
    let mut session = bench.start();
    let streams = 5000;
    let report = session.attack(json!({"phase": "rapid_reset", "streams": streams}));
    show("rapid reset", &report);
    session.assert_healthy("rapid reset");
    let outcome = session.finish();
    assert_goaway(&report, &[ENHANCE_YOUR_CALM], &outcome);
    protocol_error_record(&outcome, "rapid reset");
    let reached = bench.reached("/rr/");
    let sent = &report["sent"];
    eprintln!("rapid reset: {reached} of {sent} cancelled requests reached the upstream");
    assert!(
        reached <= UPSTREAM_BOUND,
        "{reached} of {sent} cancelled requests reached the upstream"
    );
    // A request that got as far as the upstream is in the audit, cancelled or answered.
    assert!(
        recorded(&outcome, "/rr/") >= reached as u64,
        "every request that reached the upstream has a record\n{}",
        outcome.audit_text
    );
}

#[test]
fn rapid_reset_of_streams_already_accepted_is_stopped_by_tollgates_guard() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-paced-reset");
    let mut session = bench.start();
    // Six times tollgate's floor (100 cancelled streams): enough to prove the guard, few
    // enough that a server without it still answers within the hang limit.
    let streams = 600;
    let report = session.attack(json!({"phase": "paced_reset", "streams": streams}));
    show("paced rapid reset", &report);
    session.assert_healthy("paced rapid reset");
    let outcome = session.finish();
    // h2's own guard counts only streams reset before hyper took them; these were taken, so
    // tollgate's cancel guard must end the connection (it drops it: hyper has no way to send
    // a GOAWAY with an error code, so none is required here).
    assert_eq!(
        report["closed"], true,
        "the connection was closed: {report}"
    );
    let cancelled = report["sent"].as_u64().unwrap_or(0);
    assert!(
        cancelled < streams,
        "the server ended the connection before the attack did: {report}"
    );
    protocol_error_record(&outcome, "rapid reset");
    let reached = bench.reached("/pr/");
    eprintln!(
        "paced rapid reset: {reached} of {cancelled} cancelled requests reached the upstream"
    );
    assert!(
        reached <= UPSTREAM_BOUND,
        "{reached} of {cancelled} cancelled requests reached the upstream"
    );
    let recorded_cancelled: u64 = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["outcome"] == "cancelled")
        .map(events)
        .sum();
    assert!(
        recorded_cancelled > 0 && recorded(&outcome, "/pr/") >= reached as u64,
        "cancelled streams are recorded `cancelled` ({recorded_cancelled}), and every request \
         that reached the upstream has a record\n{}",
        outcome.audit_text
    );
}

#[test]
fn continuation_floods_close_the_connection_with_a_protocol_error_record() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-continuation");
    let mut session = bench.start();
    // Zero-length frames: nothing to buffer, only a count can stop them (200 000 offered).
    let empty =
        session.attack(json!({"phase": "continuation_flood", "shape": "empty", "frames": 200_000}));
    show("empty CONTINUATION flood", &empty);
    session.assert_healthy("an empty CONTINUATION flood");
    // Full 16 KiB frames of a header value that never ends (2 GiB offered).
    let full =
        session.attack(json!({"phase": "continuation_flood", "shape": "full", "frames": 131_072}));
    show("full CONTINUATION flood", &full);
    session.assert_healthy("a full CONTINUATION flood");
    let outcome = session.finish();
    assert_goaway(&empty, &[ENHANCE_YOUR_CALM], &outcome);
    assert_goaway(&full, &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR], &outcome);
    let records = outcome.connects_with("protocol_error");
    assert_eq!(records.len(), 2, "{}", outcome.describe());
    for record in records {
        assert_eq!(record["protocol"], "h2", "{record}");
        let message = record["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("CONTINUATION"),
            "the message names the flood: {record}"
        );
    }
    assert_eq!(bench.reached("/cont"), 0);
}

#[test]
fn a_header_list_over_16_kib_is_refused_and_a_huge_one_ends_the_connection() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-big-headers");
    let mut session = bench.start();
    // 20 KiB: over the 16 KiB limit but not an abuse: that stream is refused (431, or a
    // reset), the connection goes on.
    let over = session.attack(json!({"phase": "big_headers", "kib": 20}));
    show("a 20 KiB header list", &over);
    // 100 KiB: far past it; the server ends the connection.
    let huge = session.attack(json!({"phase": "big_headers", "kib": 100}));
    show("a 100 KiB header list", &huge);
    session.assert_healthy("oversized header lists");
    let outcome = session.finish();
    let big = over["big"].to_string();
    assert!(
        over["status"][&big] == 431 || over["reset"][&big].is_u64(),
        "the oversized request was refused: {over}"
    );
    assert!(over["goaway"].is_null(), "{over}");
    let after = over["after"].to_string();
    assert_eq!(
        over["status"][&after], 200,
        "the connection's next request: {over}"
    );
    assert_goaway(&huge, &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR], &outcome);
    protocol_error_record(&outcome, "header block");
    assert_eq!(
        bench.reached("/big"),
        0,
        "no oversized request went upstream"
    );
    assert_eq!(bench.reached("/after-big"), 1);
}

#[test]
fn streams_beyond_max_concurrent_streams_are_refused_and_the_rest_complete() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-concurrency");
    let mut session = bench.start();
    let excess = 50;
    let report = session.attack(json!({
        "phase": "concurrency", "excess": excess, "most": 1000
    }));
    show("too many concurrent streams", &report);
    session.assert_healthy("too many concurrent streams");
    session.finish();
    let limit = report["limit"].as_u64().unwrap_or_else(|| {
        panic!("the server advertised no SETTINGS_MAX_CONCURRENT_STREAMS: {report}")
    });
    assert!(limit <= 1000, "a bounded limit: {report}");
    let taken = report["taken"].as_u64().unwrap();
    assert!(
        taken <= limit,
        "no more streams taken than the limit: {report}"
    );
    if report["goaway"].is_null() {
        assert!(
            report["refused"].as_u64().unwrap() >= excess,
            "every stream past the limit was refused (REFUSED_STREAM): {report}"
        );
        assert_eq!(
            report["taken_ok"], taken,
            "the streams within the limit completed: {report}"
        );
    } else {
        assert_eq!(report["closed"], true, "{report}");
    }
    let reached = bench.reached("/cc/") as u64;
    eprintln!("concurrency: limit {limit}, {taken} taken, {reached} reached the upstream");
    assert!(
        reached <= limit,
        "{reached} upstream requests, limit {limit}"
    );
}

#[test]
fn ping_and_settings_floods_leave_the_supervisor_healthy() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-control-flood");
    let mut session = bench.start();
    let mut reports = Vec::new();
    for (kind, frames) in [("ping", 100_000), ("settings", 20_000)] {
        let report =
            session.attack(json!({"phase": "control_flood", "kind": kind, "frames": frames}));
        show(&format!("{kind} flood of {frames} frames"), &report);
        session.assert_healthy(&format!("a {kind} flood"));
        reports.push(report);
    }
    let outcome = session.finish();
    let mut ended = 0;
    for report in &reports {
        if report["goaway"].is_null() && report["closed"] == false {
            // It survived: then it must still serve.
            let after = report["after"].to_string();
            assert_eq!(
                report["status"][&after], 200,
                "the flooded connection still serves: {report}"
            );
        } else {
            assert_goaway(report, &[ENHANCE_YOUR_CALM, PROTOCOL_ERROR], &outcome);
            ended += 1;
        }
    }
    assert_eq!(
        outcome.connects_with("protocol_error").len(),
        ended,
        "every flooded connection the server ended is recorded protocol_error\n{}",
        outcome.describe()
    );
}

#[test]
fn a_stream_with_a_connection_specific_header_is_refused_and_its_neighbour_completes() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-conn-headers");
    let mut session = bench.start();
    let report = session.attack(json!({"phase": "connection_headers"}));
    show("connection-specific headers", &report);
    session.assert_healthy("connection-specific headers");
    session.finish();
    let good = report["good"].to_string();
    assert_eq!(report["status"][&good], 200, "the clean stream: {report}");
    assert!(
        report["goaway"].is_null(),
        "the connection went on: {report}"
    );
    for (name, sid) in report["bad"].as_object().unwrap() {
        let sid = sid.as_str().unwrap();
        let status = &report["status"][sid];
        let reset = report["reset"][sid].as_u64();
        assert!(
            reset == Some(PROTOCOL_ERROR) || *status == 400,
            "the stream with {name} was refused (RST_STREAM PROTOCOL_ERROR or 400): {report}"
        );
        assert_ne!(*status, 200, "{name}: {report}");
    }
    assert_eq!(
        bench.reached("/ch/bad-"),
        0,
        "no malformed request went upstream"
    );
    assert_eq!(bench.reached("/ch/good"), 1);
}

/// Checks a report of an h2c attempt: an HTTP/2 GOAWAY with HTTP_1_1_REQUIRED whose debug
/// data names h2c and says what to speak instead, then the connection closed.
fn assert_h2c_refused(report: &Value) {
    let goaway = &report["goaway"];
    assert_eq!(
        goaway["code"], HTTP_1_1_REQUIRED,
        "h2c got a GOAWAY with HTTP_1_1_REQUIRED (an HTTP/1.1 answer: {}): {report}",
        report["http1"]
    );
    let debug = goaway["debug"].as_str().unwrap_or_default();
    assert!(
        debug.contains("h2c") && (debug.contains("TLS") || debug.contains("HTTP/1.1")),
        "the GOAWAY's debug data names h2c and says what to speak instead: {report}"
    );
    assert_eq!(report["closed"], true, "{report}");
}

#[test]
fn h2c_prior_knowledge_is_refused_with_http_1_1_required_on_the_proxy_port_in_a_tunnel_and_transparently(
) {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-h2c");
    let mut session = bench.start();
    let proxy = session.phase(json!({"phase": "h2c", "where": "proxy"}));
    show("h2c to the proxy port", &proxy);
    let tunnel = session.phase(json!({"phase": "h2c", "where": "tunnel"}));
    show("h2c inside a CONNECT tunnel", &tunnel);
    let transparent = session.phase(json!({"phase": "h2c", "where": "transparent"}));
    show("h2c to port 80, ignoring the proxy", &transparent);
    session.assert_healthy("h2c prior knowledge");
    let outcome = session.finish();
    assert_h2c_refused(&proxy);
    assert_h2c_refused(&tunnel);
    assert_h2c_refused(&transparent);
    let refusals: Vec<&Value> = outcome
        .audit
        .iter()
        .filter(|r| r["reason"] == "h2c_unsupported")
        .collect();
    assert_eq!(refusals.len(), 3, "{}", outcome.describe());
    for record in &refusals {
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["error"], "invalid_request", "{record}");
    }
    assert!(
        refusals
            .iter()
            .any(|r| r["type"] == "connect" && r["host"] == HOST),
        "the tunnel's own record says h2c: {refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r["transparent"] == true),
        "the transparent connection's record says h2c: {refusals:?}"
    );
    assert_eq!(bench.reached("/h2c"), 0);
}

/// Keeps [`MEMORY_BOUND_KIB`] meaningful: an idle supervisor that has served one request
/// peaks well under half of it.
#[test]
fn the_memory_bound_is_far_above_an_idle_supervisor() {
    let _lock = SuiteLock::shared();
    let bench = Bench::new("h2-idle");
    let mut session = bench.start();
    let memory = session.assert_healthy("nothing");
    session.finish();
    assert!(memory.peak_kib * 2 < MEMORY_BOUND_KIB, "{memory:?}");
}
