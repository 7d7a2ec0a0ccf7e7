//! Team quotas end to end (#13): separate `tollgate run` processes of one team, as on
//! separate nodes, share its quotas through one real `redis-server` (or, without Redis,
//! through the node store), and every attempt a quota refuses is answered, recorded and
//! counted as docs/policy.md ("Quotas") says.
//!
//! Each execution runs one Python script (the helpers in `quota_e2e_client.py` plus the
//! test's own lines) with Debian's `/usr/bin/python3` against a real upstream in a network
//! namespace of its own (`tollgate_tests::upstream`). The tests assert counts, headers, audit
//! records and summaries, never how long anything took: the rate test bounds what the
//! upstream saw by the GCRA limit over the window the upstream itself observed. Every team
//! name is unique to its test run, so reruns and parallel tests never share counters; the
//! Redis server is the test's own, and the node store's files are removed afterwards.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs of the upstream hosts made here.

use std::{collections::BTreeMap, fs, os::unix::fs::PermissionsExt as _, process::Command};

use serde_json::Value;
use tollgate_tests::{
    certs::make_certificates,
    leaks::SuiteLock,
    redis::RedisServer,
    sandbox::{output, Running, HANG_LIMIT, PYTHON},
    script_run::{assert_ran, events, Outcome, ScriptRun},
    unique,
    upstream::UpstreamHost,
    Scratch,
};

const CLIENT_PY: &str = include_str!("quota_e2e_client.py");

/// Where the node store keeps one file per team when no Redis is configured
/// (`QuotaStoreConfig::default().node_dir`).
const NODE_DIR: &str = "/run/tollgate/quotas";

/// The `limits` of every test policy: `max_requests` far above what any test sends, so only
/// the quotas refuse.
const LIMITS: &str = "limits:\n  max_requests: 100000\n";

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// One test's upstream host, scratch space and (unless per node) Redis server.
struct Fleet {
    up: UpstreamHost,
    scratch: Scratch,
    redis: Option<RedisServer>,
    runs: u32,
}

impl Fleet {
    /// Executions given `--redis-url` of a server of their own.
    fn with_redis(tag: &str) -> Self {
        Fleet {
            up: UpstreamHost::start(),
            scratch: Scratch::new(tag),
            redis: Some(RedisServer::start()),
            runs: 0,
        }
    }

    /// Executions with no Redis at all: the node store.
    fn per_node(tag: &str) -> Self {
        Fleet {
            up: UpstreamHost::start(),
            scratch: Scratch::new(tag),
            redis: None,
            runs: 0,
        }
    }

    fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("this fleet has a Redis server")
    }

    /// A policy of `team` allowing `up.test` and `other.test` (both names of the upstream,
    /// through `allowed_ips`), with [`LIMITS`], `extra` (other top-level sections) and
    /// `quotas` (a whole `quotas:` section).
    fn policy(&self, team: &str, quotas: &str, extra: &str) -> String {
        format!(
            "version: 1
team: {team}
network:
  hosts:
    up.test: {addr}
    other.test: {addr}
  allow:
    - host: up.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [{subnet}]
    - host: other.test
      ports: [8080]
      schemes: [http]
      allowed_ips: [{subnet}]
{LIMITS}{extra}
{quotas}",
            addr = self.up.addr,
            subnet = self.up.subnet(),
        )
    }

    /// Writes the next run's files.
    fn script(&mut self, policy: &str, script: &str) -> ScriptRun {
        self.runs += 1;
        ScriptRun::write(
            &self.scratch,
            self.runs,
            "client",
            policy,
            CLIENT_PY,
            script,
        )
    }

    /// `tollgate run` of `run`'s script: with this fleet's `--redis-url`, or with no Redis
    /// whatever the environment says.
    fn command(&self, run: &ScriptRun) -> Command {
        let mut sandbox = run.sandbox(Default::default()).timeout("120s");
        if let Some(redis) = &self.redis {
            sandbox = sandbox.arg("--redis-url").arg(redis.url());
        }
        let mut command = sandbox.command([PYTHON, run.script_arg()]);
        command.env_remove("TOLLGATE_REDIS_URL");
        command
    }

    /// Runs one execution to its end.
    fn run(&mut self, policy: &str, script: &str) -> Outcome {
        let run = self.script(policy, script);
        let finished = output(&mut self.command(&run), Some(b""), HANG_LIMIT);
        let outcome = run.outcome(finished);
        assert!(self.up.alive(), "the upstream died\n{}", outcome.describe());
        assert_ran(&outcome);
        outcome
    }

    /// Starts one execution per `(policy, script)` at once; each script calls
    /// `wait_for_go()`, and once every one of them is ready (its sandbox built, its proxy
    /// up) they are all let go together. Returns their outcomes in order.
    fn run_together(&mut self, executions: &[(&str, &str)]) -> Vec<Outcome> {
        let runs: Vec<ScriptRun> = executions
            .iter()
            .map(|(policy, script)| self.script(policy, script))
            .collect();
        let mut running: Vec<Running> = runs
            .iter()
            .map(|run| Running::spawn(&mut self.command(run)))
            .collect();
        for execution in &mut running {
            execution.wait_line("ready", HANG_LIMIT);
        }
        for execution in &mut running {
            execution.close_stdin();
        }
        let outcomes: Vec<Outcome> = runs
            .iter()
            .zip(running)
            .map(|(run, execution)| run.outcome(execution.finish(HANG_LIMIT)))
            .collect();
        assert!(self.up.alive(), "the upstream died");
        for outcome in &outcomes {
            assert_ran(outcome);
        }
        outcomes
    }
}

/// Removes the node store's files of a team (`<team>.json`, and any other its name is in)
/// when the test ends, whatever it reached.
struct NodeFiles {
    team: String,
}

impl Drop for NodeFiles {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(NODE_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(&self.team) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// `(method, path, host)` requests as the Python literal `each()` takes.
fn python_requests(requests: &[(&str, String, &str)]) -> String {
    let items: Vec<String> = requests
        .iter()
        .map(|(method, path, host)| format!("({method:?}, {path:?}, {host:?})"))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The client's answers to `each()`, stored as `results[name]`.
fn answers<'a>(outcome: &'a Outcome, name: &str) -> &'a Vec<Value> {
    outcome
        .result(name)
        .as_array()
        .unwrap_or_else(|| panic!("{name} is not a list\n{}", outcome.describe()))
}

fn count(value: &Value, name: &str) -> u64 {
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {name:?} in {value}"))
}

/// The proxy's `http` records whose path starts with `prefix`.
fn records<'a>(outcome: &'a Outcome, prefix: &str) -> Vec<&'a Value> {
    outcome
        .records("http")
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .collect()
}

/// The one `http` record whose path is `path`.
fn record<'a>(outcome: &'a Outcome, path: &str) -> &'a Value {
    let found: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one record of {path}\n{}",
        outcome.describe()
    );
    found[0]
}

/// The summary's `quotas` object.
fn quota_report(outcome: &Outcome) -> &Value {
    let report = &outcome.summary["quotas"];
    assert!(
        report.is_object(),
        "the summary has no quotas object\n{}",
        outcome.describe()
    );
    report
}

/// The line of the summary's `quotas.quotas` for one quota.
fn quota_line<'a>(outcome: &'a Outcome, quota: &str, scope: &str) -> &'a Value {
    let lines = quota_report(outcome)["quotas"]
        .as_array()
        .unwrap_or_else(|| panic!("quotas.quotas is not a list\n{}", outcome.describe()));
    lines
        .iter()
        .find(|line| line["quota"] == quota && line["scope"] == scope)
        .unwrap_or_else(|| {
            panic!(
                "no summary line for {quota} of {scope}\n{}",
                outcome.describe()
            )
        })
}

/// Asserts one answer was admitted and relayed whole.
fn assert_admitted(answer: &Value, what: &str) {
    assert!(
        answer["status"] == 200 && answer["error"].is_null() && answer["cut"] == false,
        "{what} should have gone through: {answer}"
    );
}

/// Asserts one answer is tollgate's quota refusal `code` (429) and returns its
/// `Retry-After` in seconds (a whole number, at least 1).
fn assert_quota_refusal(answer: &Value, code: &str, what: &str) -> u64 {
    assert!(
        answer["status"] == 429 && answer["error"] == code,
        "{what} should have been refused with 429 {code}: {answer}"
    );
    let retry_after = answer["retry_after"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After is not whole seconds: {answer}"));
    assert!(retry_after >= 1, "{what}: Retry-After {retry_after}");
    retry_after
}

/// Asserts the audit record of a quota refusal names the quota that refused.
fn assert_refusal_record(record: &Value, code: &str, rule: &str, quota: &Value) {
    assert_eq!(record["error"], code, "{record}");
    assert_eq!(record["reason"], rule, "{record}");
    assert!(record["address"].is_null(), "not dialed: {record}");
    let found = &record["quota"];
    for (key, want) in quota.as_object().expect("an object") {
        assert_eq!(&found[key], want, "quota.{key} of {record}");
    }
    assert!(found["retry_after_ms"].as_u64().is_some(), "{record}");
}

/// Today's UTC date as the store's daily keys spell it (YYYYMMDD), and the seconds left
/// until the next UTC midnight.
fn utc_day() -> (String, u64) {
    let out = Command::new("/usr/bin/date")
        .args(["-u", "+%Y%m%d %s"])
        .output()
        .expect("run date");
    let text = String::from_utf8(out.stdout).expect("date prints ASCII");
    let (day, secs) = text.trim().split_once(' ').expect("two fields");
    let secs: u64 = secs.parse().expect("epoch seconds");
    (day.to_owned(), 86_400 - secs % 86_400)
}

// ---------------------------------------------------------------------------------------
// 1. One team, three executions at once, one rate
// ---------------------------------------------------------------------------------------

const RATE_PER_MINUTE: u64 = 60;
const RATE_BURST: u64 = 10;
/// How long each execution keeps sending: the workload, not an assertion.
const FLOOD_SECONDS: u64 = 4;

#[test]
fn three_executions_of_one_team_share_its_rate_through_redis() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-rate");
    let team = unique("rate");
    let prefix = format!("/echo/{team}");
    // No retries (so every refusal reaches the client), and `max_denied: 5`: quota
    // refusals are not the sandbox's fault, so hundreds of them never turn into
    // `denial_limit`.
    let policy = fleet
        .policy(
            &team,
            &format!("quotas:\n  requests_per_minute: {RATE_PER_MINUTE}\n  burst: {RATE_BURST}\n"),
            "retry: {attempts: 1}\n",
        )
        .replace(LIMITS, &format!("{LIMITS}  max_denied: 5\n"));
    let script = format!("wait_for_go()\nresults['flood'] = flood({prefix:?}, {FLOOD_SECONDS})\n");
    let outcomes =
        fleet.run_together(&[(&policy, &script), (&policy, &script), (&policy, &script)]);

    // What the upstream saw is within the GCRA bound over the window it saw it in: the
    // burst at once, then one per emission interval, plus one for the clocks' rounding.
    let seen = fleet.up.requests_to(&format!("{prefix}/"));
    let times: Vec<f64> = seen
        .iter()
        .map(|r| r["t"].as_f64().expect("logged time"))
        .collect();
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let window = (last - first).max(0.0);
    let interval = 60.0 / RATE_PER_MINUTE as f64;
    let bound = (RATE_BURST as f64 + window / interval).floor() as u64 + 1;
    let seen = seen.len() as u64;
    assert!(
        seen <= bound,
        "the upstream saw {seen} requests in {window:.3}s; GCRA allows at most {bound}"
    );
    assert!(
        seen >= RATE_BURST,
        "a fresh team has its whole burst: the upstream saw only {seen}"
    );

    let url = fleet.redis().url();
    let mut admitted_total = 0;
    for (n, outcome) in outcomes.iter().enumerate() {
        let what = format!("execution {}", n + 1);
        let flood = outcome.result("flood");
        let attempts = count(flood, "attempts");
        let ok = count(flood, "ok");
        let refused = count(flood, "rate_limited");
        assert_eq!(
            count(flood, "other"),
            0,
            "{what}: every answer is a 200 or a proper team_rate_limited 429: {flood}\n{}",
            outcome.finished.stderr
        );
        assert_eq!(ok + refused, attempts, "{what}: {flood}");
        assert!(
            refused > 5,
            "{what} got only {refused} refusals: the test did not reach the quota ({flood})"
        );
        // A rate bucket admits one again within one emission interval: a second.
        assert_eq!(flood["retry_after_min"], 1, "{what}: {flood}");
        assert_eq!(flood["retry_after_max"], 1, "{what}: {flood}");

        // The audit records stand for every attempt: each admitted or refused by the quota.
        let records = records(outcome, &prefix);
        let admitted_events: u64 = records
            .iter()
            .filter(|r| r["error"].is_null() && r["status"] == 200)
            .map(|r| events(r))
            .sum();
        let refusals: Vec<&&Value> = records
            .iter()
            .filter(|r| r["error"] == "team_rate_limited")
            .collect();
        let refused_events: u64 = refusals.iter().map(|r| events(r)).sum();
        assert_eq!(admitted_events, ok, "{what}\n{}", outcome.audit_text);
        assert_eq!(refused_events, refused, "{what}\n{}", outcome.audit_text);
        assert_eq!(
            records.iter().map(|r| events(r)).sum::<u64>(),
            attempts,
            "{what}: records of other kinds\n{}",
            outcome.audit_text
        );
        for record in refusals {
            assert_eq!(record["status"], 429, "{record}");
            assert_refusal_record(
                record,
                "team_rate_limited",
                "quotas.requests_per_minute",
                &serde_json::json!({
                    "quota": "requests_per_minute", "scope": "team",
                    "limit": RATE_PER_MINUTE, "remaining": 0, "store": "redis"
                }),
            );
            assert!(
                record["quota"]["retry_after_ms"].as_u64() <= Some(1000),
                "{record}"
            );
        }

        // The summary counts the same attempts.
        let report = quota_report(outcome);
        assert_eq!(report["store"], url, "{report}");
        assert_eq!(report["fleet_wide"], true, "{report}");
        assert_eq!(report["on_failure"], "deny", "{report}");
        assert_eq!(report["admitted"], ok, "{what}: {report}");
        assert_eq!(
            report["refused"],
            serde_json::json!({"team_rate_limited": refused, "team_budget_exhausted": 0,
                "quota_unavailable": 0}),
            "{what}: {report}"
        );
        assert!(
            report["round_trips"].as_u64() >= Some(attempts),
            "one round trip per check at least: {report}"
        );
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["local_fallback_checks"], 0, "{report}");
        let line = quota_line(outcome, "requests_per_minute", "team");
        assert_eq!(line["rule"], "quotas.requests_per_minute", "{line}");
        assert_eq!(line["limit"], RATE_PER_MINUTE, "{line}");
        assert_eq!(line["admitted"], ok, "{line}");
        assert_eq!(line["refused"], refused, "{line}");
        admitted_total += ok;
    }
    assert_eq!(
        admitted_total, seen,
        "the executions' admitted attempts are what the upstream saw"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Teams and destinations
// ---------------------------------------------------------------------------------------

/// A destination quota on `up.test` only (one a minute, two at once), and a team day
/// budget far from reached.
const DESTINATION_QUOTAS: &str = "quotas:
  requests_per_day: 1000
  destinations:
    - host: up.test
      requests_per_minute: 1
      burst: 2
";

#[test]
fn a_destination_quota_holds_only_its_host_and_only_its_team() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-teams");
    let first = unique("first");
    let second = unique("second");

    // The first team spends its burst on up.test; other.test is not that quota's.
    let prefix = format!("/echo/{first}");
    let mut requests: Vec<(&str, String, &str)> = (1..=3)
        .map(|i| ("GET", format!("{prefix}/up/{i}"), "up.test"))
        .collect();
    requests.extend((1..=4).map(|i| ("GET", format!("{prefix}/other/{i}"), "other.test")));
    let script = format!(
        "results['answers'] = each({})\n",
        python_requests(&requests)
    );
    let policy = fleet.policy(&first, DESTINATION_QUOTAS, "");
    let outcome = fleet.run(&policy, &script);
    let got = answers(&outcome, "answers");
    assert_admitted(&got[0], "the first to up.test");
    assert_admitted(&got[1], "the second to up.test");
    let retry_after = assert_quota_refusal(&got[2], "team_rate_limited", "the third to up.test");
    assert!(
        retry_after <= 60,
        "one a minute: it admits again within a minute, not {retry_after}s"
    );
    for (i, answer) in got[3..].iter().enumerate() {
        assert_admitted(answer, &format!("request {} to other.test", i + 1));
    }
    assert_refusal_record(
        record(&outcome, &format!("{prefix}/up/3")),
        "team_rate_limited",
        "quotas.destinations[0].requests_per_minute",
        &serde_json::json!({
            "quota": "requests_per_minute", "scope": "up.test", "limit": 1, "remaining": 0,
            "store": "redis"
        }),
    );
    assert_eq!(
        fleet.up.requests_to(&format!("{prefix}/up/")).len(),
        2,
        "the refused attempt was not dialed"
    );
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/other/")).len(), 4);

    // The refused attempt took nothing from the team's day budget (all or nothing).
    let destination = quota_line(&outcome, "requests_per_minute", "up.test");
    assert_eq!(
        destination["rule"],
        "quotas.destinations[0].requests_per_minute"
    );
    assert_eq!(destination["admitted"], 2, "{destination}");
    assert_eq!(destination["refused"], 1, "{destination}");
    let day = quota_line(&outcome, "requests_per_day", "team");
    assert_eq!(day["admitted"], 6, "{day}");
    assert_eq!(day["remaining"], 994, "{day}");
    let (today, _) = utc_day();
    assert_eq!(
        fleet
            .redis()
            .cli(&["GET", &format!("tollgate:{{{first}}}:rpd:team:{today}")]),
        "6",
        "the team's day counter in Redis"
    );

    // The second team, same policy, same Redis: its own burst, untouched by the first's.
    let prefix = format!("/echo/{second}");
    let requests: Vec<(&str, String, &str)> = (1..=3)
        .map(|i| ("GET", format!("{prefix}/up/{i}"), "up.test"))
        .collect();
    let script = format!(
        "results['answers'] = each({})\n",
        python_requests(&requests)
    );
    let policy = fleet.policy(&second, DESTINATION_QUOTAS, "");
    let outcome = fleet.run(&policy, &script);
    let got = answers(&outcome, "answers");
    assert_admitted(&got[0], "the second team's first to up.test");
    assert_admitted(&got[1], "the second team's second to up.test");
    assert_quota_refusal(
        &got[2],
        "team_rate_limited",
        "the second team's third to up.test",
    );
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/up/")).len(), 2);
    let keys = fleet.redis().cli(&["KEYS", "tollgate:*"]);
    assert!(
        keys.lines()
            .all(|key| key.starts_with(&format!("tollgate:{{{first}}}:"))
                || key.starts_with(&format!("tollgate:{{{second}}}:"))),
        "every key is namespaced by its team, hash-tagged: {keys}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Day budgets
// ---------------------------------------------------------------------------------------

#[test]
fn a_day_budget_is_spent_across_executions_then_refused_until_midnight() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-day");
    let team = unique("day");
    let prefix = format!("/echo/{team}");
    let policy = fleet.policy(&team, "quotas:\n  requests_per_day: 5\n", "");
    let batch = |run: &str| {
        let requests: Vec<(&str, String, &str)> = (1..=3)
            .map(|i| ("GET", format!("{prefix}/{run}/{i}"), "up.test"))
            .collect();
        format!(
            "results['answers'] = each({})\n",
            python_requests(&requests)
        )
    };

    let outcome = fleet.run(&policy, &batch("a"));
    for (i, answer) in answers(&outcome, "answers").iter().enumerate() {
        assert_admitted(answer, &format!("request {} of the first execution", i + 1));
    }

    // A later execution of the team has what is left of the day: two.
    let (day_before, midnight_before) = utc_day();
    let outcome = fleet.run(&policy, &batch("b"));
    let (day_after, midnight_after) = utc_day();
    let got = answers(&outcome, "answers");
    assert_admitted(&got[0], "the 4th of the day");
    assert_admitted(&got[1], "the 5th of the day");
    let retry_after = assert_quota_refusal(&got[2], "team_budget_exhausted", "the 6th of the day");
    if day_before == day_after {
        assert!(
            (midnight_after..=midnight_before + 1).contains(&retry_after),
            "Retry-After {retry_after}s is not the time to the next UTC midnight \
             ({midnight_after}..={midnight_before}s)"
        );
    }
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/")).len(), 5);
    let refused = record(&outcome, &format!("{prefix}/b/3"));
    assert_eq!(refused["status"], 429, "{refused}");
    assert_refusal_record(
        refused,
        "team_budget_exhausted",
        "quotas.requests_per_day",
        &serde_json::json!({
            "quota": "requests_per_day", "scope": "team", "limit": 5, "remaining": 0,
            "store": "redis"
        }),
    );
    let report = quota_report(&outcome);
    assert_eq!(report["admitted"], 2, "{report}");
    assert_eq!(report["refused"]["team_budget_exhausted"], 1, "{report}");
    let line = quota_line(&outcome, "requests_per_day", "team");
    assert_eq!(line["limit"], 5, "{line}");
    assert_eq!(line["remaining"], 0, "{line}");

    // The day's counter is the team's, for the UTC day, and expires on its own.
    let key = format!("tollgate:{{{team}}}:rpd:team:{day_after}");
    assert_eq!(fleet.redis().cli(&["GET", &key]), "5", "{key}");
    let ttl: i64 = fleet
        .redis()
        .cli(&["TTL", &key])
        .parse()
        .expect("TTL is a number");
    assert!(
        (1..=2 * 86_400).contains(&ttl),
        "{key} expires on its own within two days, TTL {ttl}"
    );
}

/// Under a byte budget each attempt is one round trip: the bytes of an exchange that ended
/// go with the next take, and the last ones when the execution ends; every byte is charged.
#[test]
fn a_byte_budget_costs_one_round_trip_per_attempt_and_charges_every_byte() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-bytes-trips");
    let team = unique("trips");
    let prefix = format!("/echo/{team}");
    let policy = fleet.policy(&team, "quotas:\n  bytes_per_day: 1GiB\n", "");
    const REQUESTS: u64 = 8;
    let requests: Vec<(&str, String, &str)> = (1..=REQUESTS)
        .map(|i| ("GET", format!("{prefix}/{i}"), "up.test"))
        .collect();
    let outcome = fleet.run(
        &policy,
        &format!(
            "results['answers'] = each({})\n",
            python_requests(&requests)
        ),
    );
    for (i, answer) in answers(&outcome, "answers").iter().enumerate() {
        assert_admitted(answer, &format!("request {}", i + 1));
    }
    let report = quota_report(&outcome);
    assert_eq!(report["admitted"], REQUESTS, "{report}");
    // One read at the start, one take per attempt, one charge of the last exchange's bytes
    // at the end, and at most one more of bytes that waited a second for a take. A charge
    // of its own after every exchange would make it 2 × REQUESTS + 2.
    let trips = report["round_trips"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (REQUESTS + 2..=REQUESTS + 3).contains(&trips),
        "{trips} round trips for {REQUESTS} attempts: {report}"
    );
    // Every byte that went up or came down is in the team's counter.
    let moved: u64 = records(&outcome, &prefix)
        .iter()
        .map(|r| r["bytes_up"].as_u64().unwrap_or(0) + r["bytes_down"].as_u64().unwrap_or(0))
        .sum();
    let (day, _) = utc_day();
    let key = format!("tollgate:{{{team}}}:bpd:team:{day}");
    let charged: u64 = fleet.redis().cli(&["GET", &key]).parse().unwrap_or(0);
    assert!(
        charged > 0 && charged <= moved,
        "the counter holds {charged} bytes, the records {moved}"
    );
}

/// 20 KiB bodies against a 64 KiB day: three fit, the fourth passes the budget.
const BODY: u64 = 20 * 1024;
const BYTE_QUOTAS: &str = "quotas:\n  bytes_per_day: 64KiB\n";

#[test]
fn a_byte_budget_cuts_the_response_that_passes_it() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-bytes");
    // Once with a Content-Length (refused before a byte is relayed), once chunked (cut as it
    // passes the budget), each for a team of its own.
    for (kind, team) in [("bytes", unique("bytes")), ("chunked", unique("chunked"))] {
        let prefix = format!("/{kind}/{BODY}/{team}");
        let requests: Vec<(&str, String, &str)> = (1..=5)
            .map(|i| ("GET", format!("{prefix}/{i}"), "up.test"))
            .collect();
        let script = format!(
            "results['answers'] = each({})\n",
            python_requests(&requests)
        );
        let policy = fleet.policy(&team, BYTE_QUOTAS, "");
        let outcome = fleet.run(&policy, &script);
        let got = answers(&outcome, "answers");
        for (i, answer) in got[..3].iter().enumerate() {
            assert_admitted(answer, &format!("{kind} response {}", i + 1));
            assert_eq!(answer["length"], BODY, "{answer}");
        }
        // The fourth crosses 64 KiB: the client never gets it whole.
        let fourth = &got[3];
        assert!(
            fourth["status"] != 200 || fourth["cut"] == true,
            "the {kind} response that passes the budget arrived whole: {fourth}"
        );
        if kind == "bytes" {
            assert_eq!(
                fourth["error"], "team_budget_exhausted",
                "a Content-Length over what is left is refused before relaying: {fourth}"
            );
        }
        let cut = record(&outcome, &format!("{prefix}/4"));
        assert_eq!(cut["error"], "team_budget_exhausted", "{cut}");
        assert_eq!(cut["quota"]["quota"], "bytes_per_day", "{cut}");
        assert_eq!(cut["quota"]["limit"], 64 * 1024, "{cut}");
        assert!(
            cut["bytes_down"].as_u64() < Some(BODY),
            "the sandbox got less than the body: {cut}"
        );
        let fifth = &got[4];
        assert_eq!(
            fifth["error"], "team_budget_exhausted",
            "the {kind} request after the budget passed: {fifth}"
        );
        if kind == "chunked" {
            // The cut body was charged as it flowed: nothing is left of the day, so the
            // next request is refused at admission and never dialed.
            assert_quota_refusal(fifth, "team_budget_exhausted", "the request after the cut");
            assert_refusal_record(
                record(&outcome, &format!("{prefix}/5")),
                "team_budget_exhausted",
                "quotas.bytes_per_day",
                &serde_json::json!({
                    "quota": "bytes_per_day", "scope": "team", "limit": 64 * 1024,
                    "remaining": 0, "store": "redis"
                }),
            );
            assert_eq!(
                fleet.up.requests_to(&format!("{prefix}/")).len(),
                4,
                "the request after the cut was not dialed"
            );
            let line = quota_line(&outcome, "bytes_per_day", "team");
            assert_eq!(line["remaining"], 0, "{line}");
        }
        // Each attempt is counted once: admitted by the store (whatever its body met), or
        // refused by it.
        let report = quota_report(&outcome);
        assert_eq!(
            report["admitted"].as_u64().unwrap_or(0)
                + report["refused"]["team_budget_exhausted"]
                    .as_u64()
                    .unwrap_or(0),
            5,
            "{report}"
        );
        // Three responses were delivered whole; every other admitted exchange was refused
        // for its length or cut part-way, and counted as such.
        assert_eq!(
            report["cut"].as_u64().unwrap_or(0) + 3,
            report["admitted"].as_u64().unwrap_or(0),
            "{report}"
        );
        let line = quota_line(&outcome, "bytes_per_day", "team");
        assert_eq!(line["rule"], "quotas.bytes_per_day", "{line}");
        assert_eq!(line["limit"], 64 * 1024, "{line}");
    }
}

// ---------------------------------------------------------------------------------------
// Every kind of attempt
// ---------------------------------------------------------------------------------------

/// The names the HTTPS upstream's leaf is valid for.
const TLS_NAMES: [&str; 2] = ["api.example.com", "passthrough.example.com"];
const TLS_SERVER_PY: &str = include_str!("tls_e2e_server.py");

#[test]
fn plain_intercepted_and_passthrough_attempts_take_from_one_budget() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-kinds");
    // An HTTPS upstream beside the plain one, with a CA of the test's own that the policy
    // trusts (so the sandbox's bundle does too: curl verifies the passthrough upstream).
    let certs_dir = Scratch::new("quota-kinds-certs");
    fs::set_permissions(&certs_dir.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let material = make_certificates(&certs_dir.dir, &TLS_NAMES);
    let (cert, key) = (material.cert.clone(), material.key.clone());
    let tls = UpstreamHost::start_server(TLS_SERVER_PY, move |addr, log| {
        vec![
            addr.to_string().into(),
            "443".into(),
            cert.into(),
            key.into(),
            log.into(),
        ]
    });
    let team = unique("kinds");
    let https = format!(
        "  upstream_ca: {{file: {ca}}}
  allow:
    - host: api.example.com
      ports: [443]
      allowed_ips: [{subnet}]
    - host: passthrough.example.com
      ports: [443]
      tls: passthrough
      allowed_ips: [{subnet}]
",
        ca = material.ca.display(),
        subnet = tls.subnet(),
    );
    let pins = format!(
        "  hosts:\n    api.example.com: {addr}\n    passthrough.example.com: {addr}\n",
        addr = tls.addr
    );
    let policy = fleet
        .policy(&team, "quotas:\n  requests_per_day: 4\n", "")
        .replacen("  allow:\n", &https, 1)
        .replacen("  hosts:\n", &pins, 1);
    let p = format!("/{team}");
    let script = format!(
        "results['plain'] = request('/echo{p}/plain')
results['intercepted'] = curl('https://api.example.com{p}/intercepted')
results['passthrough'] = curl('https://passthrough.example.com{p}/passthrough')
results['intercepted2'] = curl('https://api.example.com{p}/intercepted2')
results['plain_refused'] = request('/echo{p}/plain-refused')
results['intercepted_refused'] = curl('https://api.example.com{p}/intercepted-refused')
results['passthrough_refused'] = curl('https://passthrough.example.com{p}/passthrough-refused')
"
    );
    let outcome = fleet.run(&policy, &script);
    assert_admitted(outcome.result("plain"), "the plain request");
    for name in ["intercepted", "passthrough", "intercepted2"] {
        let answer = outcome.result(name);
        assert!(
            answer["rc"] == 0 && answer["status"] == 200,
            "{name} should have gone through: {answer}"
        );
    }
    assert_quota_refusal(
        outcome.result("plain_refused"),
        "team_budget_exhausted",
        "the plain request past the day",
    );
    let intercepted = outcome.result("intercepted_refused");
    assert_eq!(
        intercepted["status"], 429,
        "refused inside the intercepted tunnel: {intercepted}"
    );
    let passthrough = outcome.result("passthrough_refused");
    assert_eq!(
        passthrough["connect"], 429,
        "the passthrough tunnel is refused at CONNECT: {passthrough}"
    );
    assert_ne!(passthrough["rc"], 0, "{passthrough}");

    // The upstreams saw the four admitted attempts and nothing else.
    assert_eq!(fleet.up.requests_to(&format!("/echo{p}/")).len(), 1);
    let tls_paths: Vec<String> = tls
        .requests()
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        tls_paths,
        [
            format!("{p}/intercepted"),
            format!("{p}/passthrough"),
            format!("{p}/intercepted2")
        ],
        "what the HTTPS upstream saw"
    );
    let refused_http = record(&outcome, &format!("{p}/intercepted-refused"));
    assert_eq!(refused_http["scheme"], "https", "{refused_http}");
    assert_eq!(
        refused_http["error"], "team_budget_exhausted",
        "{refused_http}"
    );
    let tunnels: Vec<&Value> = outcome
        .records("connect")
        .into_iter()
        .filter(|r| r["host"] == "passthrough.example.com")
        .collect();
    assert!(
        tunnels
            .iter()
            .any(|r| r["error"] == "team_budget_exhausted"
                && r["reason"] == "quotas.requests_per_day"),
        "the refused tunnel's record\n{}",
        outcome.audit_text
    );
    let report = quota_report(&outcome);
    assert_eq!(report["admitted"], 4, "{report}");
    assert_eq!(report["refused"]["team_budget_exhausted"], 3, "{report}");
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

/// One attempt every five seconds, one at once: the second of two requests in a row finds
/// the bucket empty for up to five seconds.
const SLOW_RATE: &str = "quotas:\n  requests_per_minute: 12\n  burst: 1\n";

#[test]
fn tollgate_retries_a_rate_refusal_only_within_its_retry_policy() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-retry");

    // The wait fits `max_wait`: tollgate waits it out and the second request goes through.
    // `max_requests: 2` holds because the refused attempt gave its request back.
    let team = unique("retry");
    let prefix = format!("/echo/{team}");
    let requests: Vec<(&str, String, &str)> = (1..=3)
        .map(|i| ("GET", format!("{prefix}/{i}"), "up.test"))
        .collect();
    let script = format!(
        "results['answers'] = each({})\n",
        python_requests(&requests)
    );
    let policy = fleet
        .policy(
            &team,
            SLOW_RATE,
            "retry: {attempts: 3, max_wait: 10s, on_status: [429]}\n",
        )
        .replace(LIMITS, "limits:\n  max_requests: 2\n");
    let outcome = fleet.run(&policy, &script);
    let got = answers(&outcome, "answers");
    assert_admitted(&got[0], "the first request");
    assert_admitted(
        &got[1],
        "the second request, after tollgate waited for the bucket",
    );
    assert!(
        got[2]["status"] == 429 && got[2]["error"] == "request_limit_exceeded",
        "the third passes max_requests: 2: {}",
        got[2]
    );
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/")).len(), 2);
    let second: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["path"] == format!("{prefix}/2"))
        .collect();
    assert_eq!(
        second.len(),
        2,
        "a retrying record, then the final one\n{}",
        outcome.audit_text
    );
    let (retrying, last) = (second[0], second[1]);
    assert_eq!(retrying["outcome"], "retrying", "{retrying}");
    assert_eq!(retrying["error"], "team_rate_limited", "{retrying}");
    assert_eq!(
        retrying["quota"]["quota"], "requests_per_minute",
        "{retrying}"
    );
    assert!(
        (1..=5000).contains(&retrying["retry_wait_ms"].as_u64().unwrap_or(0)),
        "the wait is the bucket's, at most one emission interval: {retrying}"
    );
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(last["attempt"], 2, "{last}");
    let report = quota_report(&outcome);
    assert_eq!(report["admitted"], 2, "{report}");
    assert_eq!(report["refused"]["team_rate_limited"], 1, "{report}");

    // The wait is longer than `max_wait`: the refusal is answered at once.
    let team = unique("noretry");
    let prefix = format!("/echo/{team}");
    let requests: Vec<(&str, String, &str)> = (1..=2)
        .map(|i| ("GET", format!("{prefix}/{i}"), "up.test"))
        .collect();
    let script = format!(
        "results['answers'] = each({})\n",
        python_requests(&requests)
    );
    let policy = fleet.policy(
        &team,
        SLOW_RATE,
        "retry: {attempts: 3, initial_wait: 1s, max_wait: 1s, on_status: [429]}\n",
    );
    let outcome = fleet.run(&policy, &script);
    let got = answers(&outcome, "answers");
    assert_admitted(&got[0], "the first request");
    let retry_after = assert_quota_refusal(&got[1], "team_rate_limited", "the second request");
    assert!(
        retry_after <= 5,
        "one emission interval at most: {retry_after}"
    );
    let second = record(&outcome, &format!("{prefix}/2"));
    assert_eq!(second["status"], 429, "not retried: {second}");
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/")).len(), 1);
}

// ---------------------------------------------------------------------------------------
// 4. The Rego input
// ---------------------------------------------------------------------------------------

/// A team rule that keeps the last two requests of the day for GETs.
const SPARING_RULE: &str = r#"rego: |
  package tollgate.team
  import rego.v1
  deny contains "POST needs 3 requests of the day left" if {
    input.request.method == "POST"
    some quota in input.quotas
    quota.quota == "requests_per_day"
    quota.scope == "team"
    quota.remaining != null
    quota.remaining < 3
  }
"#;

#[test]
fn team_rules_read_what_remains_of_a_quota() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::with_redis("quota-rego");
    let team = unique("rego");
    let prefix = format!("/echo/{team}");
    // Ten a day. Whatever the last check saw, 3 left after seven requests, 1 after nine:
    // the POST after seven goes through, the POST after nine is refused by the rule and
    // takes nothing, so two GETs still fit and the one after them is the quota's refusal.
    let mut plan: Vec<&str> = vec!["POST"];
    plan.extend(["GET"; 6]);
    plan.extend(["POST", "GET", "POST", "GET", "GET"]);
    let requests: Vec<(&str, String, &str)> = plan
        .iter()
        .enumerate()
        .map(|(i, method)| (*method, format!("{prefix}/{}", i + 1), "up.test"))
        .collect();
    let script = format!(
        "results['answers'] = each({})\n",
        python_requests(&requests)
    );
    let policy = fleet.policy(&team, "quotas:\n  requests_per_day: 10\n", SPARING_RULE);
    let outcome = fleet.run(&policy, &script);
    let got = answers(&outcome, "answers");
    for (i, answer) in got[..9].iter().enumerate() {
        assert_admitted(answer, &format!("{} {}", plan[i], i + 1));
    }
    let spared = &got[9];
    assert!(
        spared["status"] == 403
            && spared["error"] == "policy_denied"
            && spared["body"]
                .as_str()
                .is_some_and(|b| b.contains("POST needs 3 requests of the day left")),
        "the team rule refuses a POST with 1 left: {spared}"
    );
    assert_admitted(&got[10], "the GET after the refused POST");
    assert_quota_refusal(&got[11], "team_budget_exhausted", "the 11th of the day");
    let posts: Vec<Value> = fleet
        .up
        .requests_to(&format!("{prefix}/"))
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/")).len(), 10);
    let refused = record(&outcome, &format!("{prefix}/10"));
    assert_eq!(refused["reason"], "team_rule", "{refused}");
}

// ---------------------------------------------------------------------------------------
// 5. Without Redis: the node store
// ---------------------------------------------------------------------------------------

#[test]
fn without_redis_two_executions_on_one_node_share_the_quota() {
    let _suite = SuiteLock::shared();
    let mut fleet = Fleet::per_node("quota-node");
    let team = unique("node");
    let _files = NodeFiles { team: team.clone() };
    let prefix = format!("/echo/{team}");
    let policy = fleet.policy(&team, "quotas:\n  requests_per_day: 8\n", "");
    let script = |run: &str| {
        let requests: Vec<(&str, String, &str)> = (1..=8)
            .map(|i| ("GET", format!("{prefix}/{run}/{i}"), "up.test"))
            .collect();
        format!(
            "wait_for_go()\nresults['answers'] = each({})\n",
            python_requests(&requests)
        )
    };
    let (a, b) = (script("a"), script("b"));
    let outcomes = fleet.run_together(&[(&policy, &a), (&policy, &b)]);

    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for outcome in &outcomes {
        for answer in answers(outcome, "answers") {
            let kind = if answer["status"] == 200 {
                "admitted".to_owned()
            } else {
                assert_quota_refusal(answer, "team_budget_exhausted", "past the node's 8");
                "refused".to_owned()
            };
            *by_kind.entry(kind).or_default() += 1;
        }
        let report = quota_report(outcome);
        assert_eq!(report["fleet_wide"], false, "{report}");
        assert_eq!(report["store"], "node", "{report}");
        assert_eq!(report["round_trips"], 0, "no Redis was asked: {report}");
        for record in records(outcome, &prefix) {
            if record["error"] == "team_budget_exhausted" {
                assert_eq!(record["quota"]["store"], "node", "{record}");
            }
        }
    }
    assert_eq!(
        by_kind,
        BTreeMap::from([("admitted".to_owned(), 8), ("refused".to_owned(), 8)]),
        "two executions of 8 against one day of 8"
    );
    assert_eq!(fleet.up.requests_to(&format!("{prefix}/")).len(), 8);
    let admitted: u64 = outcomes
        .iter()
        .map(|o| quota_report(o)["admitted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(admitted, 8);
}
