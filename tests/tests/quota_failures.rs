//! Team quotas when Redis fails (issue #13, section 3, items 4–5): Redis stopped in the middle
//! of an execution (`deny` refuses with `quota_unavailable`, `local` enforces each node's
//! share alone), restarted (the shared quota applies again in the same execution, nothing
//! restarted), `requirepass` (the right password from the URL or a file; a wrong one stops
//! the execution at start without printing it), `rediss://` with and without its CA, and what
//! `tollgate doctor` says about the quota store.
//!
//! Real `redis-server` processes on loopback ports (`tollgate_tests::redis`), real
//! `tollgate run` executions with Debian's `/usr/bin/python3` inside
//! (`quota_failures_client.py`), a real upstream in a network namespace of its own. The test
//! and the sandboxed client take turns through the client's stdin and stdout, so "Redis is
//! down now" is an order of events, not a guess about time. Every limit here is a day budget:
//! counts, not rates, so nothing depends on how fast the machine is.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use tollgate_tests::{
    leaks::SuiteLock,
    redis::RedisServer,
    sandbox::{
        output, read_json, read_json_lines, shared_dir, Finished, Running, Sandbox, HANG_LIMIT,
        PYTHON,
    },
    tollgate, unique,
    upstream::{UpstreamHost, HTTP_PORT},
    Scratch,
};

/// The sandboxed client, see its header.
const CLIENT: &str = include_str!("quota_failures_client.py");

/// Where the node store keeps its per-team files (`QuotaStoreConfig::default().node_dir`).
const NODE_DIR: &str = "/run/tollgate/quotas";

/// Most requests a phase waits out the store's reconnect backoff with (≤ 1 s by contract;
/// 400 × 50 ms is 20 s): a bound against a store that never comes back, not a timing.
const RECOVERY_TRIES: u64 = 400;

// ---------------------------------------------------------------------------------------
// The bench: an upstream, a team of its own, its policy, and executions driven by phase
// ---------------------------------------------------------------------------------------

/// One test's upstream, team and files; removes the team's node-store files on drop.
struct Bench {
    up: UpstreamHost,
    scratch: Scratch,
    team: String,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        Bench {
            up: UpstreamHost::start(),
            scratch: Scratch::new(tag),
            team: unique(tag),
        }
    }

    /// A policy of this bench's team that reaches the upstream over plain HTTP, without
    /// retries (so every request is one attempt), with `quotas` (YAML lines, indented).
    fn policy(&self, quotas: &str) -> PathBuf {
        let text = format!(
            "version: 1
team: {team}
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{HTTP_PORT}]
      schemes: [http]
      allowed_ips: [{subnet}]
limits:
  max_requests: 1000
retry: {{attempts: 1}}
quotas:
{quotas}",
            team = self.team,
            addr = self.up.addr,
            subnet = self.up.subnet(),
        );
        self.scratch.file(&format!("{}.yaml", self.team), &text)
    }

    /// How many requests of `phase` reached the upstream.
    fn upstream_saw(&self, phase: &str) -> usize {
        self.up.requests_to(&format!("/echo/{phase}/")).len()
    }

    /// The keys this team has in `redis`.
    fn redis_keys(&self, redis: &RedisServer) -> Vec<String> {
        let pattern = format!("tollgate:{{{}}}:*", self.team);
        let keys = redis.cli(&["--scan", "--pattern", &pattern]);
        keys.lines().map(str::to_owned).collect()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        remove_team_files(Path::new(NODE_DIR), &self.team, 2);
    }
}

/// Removes whatever the node store keeps for `team` below `dir` (its own file, and the one
/// of the local fallback's namespace, wherever that is), `depth` levels down.
fn remove_team_files(dir: &Path, team: &str, depth: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named = entry.file_name().to_string_lossy().contains(team);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match (named, is_dir) {
            (true, true) => {
                let _ = fs::remove_dir_all(&path);
            }
            (true, false) => {
                let _ = fs::remove_file(&path);
            }
            (false, true) if depth > 1 => remove_team_files(&path, team, depth - 1),
            _ => {}
        }
    }
}

/// `tollgate run` of the client under `policy`, with `flags` (the node's quota-store flags),
/// audit and summary files of the bench's.
fn client_run(bench: &Bench, policy: &Path, name: &str, flags: &[String]) -> Sandbox {
    let mut sandbox = Sandbox::new()
        .policy(policy)
        .audit(bench.scratch.output(&format!("{name}.audit.jsonl")))
        .summary(bench.scratch.output(&format!("{name}.summary.json")));
    for flag in flags {
        sandbox = sandbox.arg(flag);
    }
    sandbox
}

/// `--redis-url URL` and more flags, as owned strings.
fn flags(url: &str, more: &[&str]) -> Vec<String> {
    let mut flags = vec!["--redis-url".to_string(), url.to_string()];
    flags.extend(more.iter().map(|flag| flag.to_string()));
    flags
}

/// A running execution of the client that the test drives one phase at a time.
struct Session {
    run: Running,
}

impl Session {
    fn start(sandbox: &Sandbox) -> Session {
        Session {
            run: Running::spawn(&mut sandbox.command([PYTHON, "-c", CLIENT])),
        }
    }

    /// Sends one command to the client and returns its answers, once it has made them.
    fn phase(&mut self, command: Value) -> Vec<Value> {
        let phase = command["phase"].as_str().expect("a phase name").to_owned();
        if let Err(e) = self.run.send_line(&command.to_string()) {
            self.fail(&format!("the client no longer reads its stdin ({e})"));
        }
        loop {
            let Some(line) = self.run.next_line(HANG_LIMIT) else {
                self.fail(&format!("no answer to phase {phase} within {HANG_LIMIT:?}"))
            };
            let Ok(reply) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if reply["phase"] == phase.as_str() {
                return reply["answers"].as_array().cloned().unwrap_or_default();
            }
        }
    }

    /// `count` requests of phase `phase`.
    fn requests(&mut self, phase: &str, count: u64) -> Vec<Value> {
        self.phase(json!({"phase": phase, "count": count}))
    }

    /// Requests of phase `phase` until one is answered 200 (bounded by [`RECOVERY_TRIES`]).
    fn until_admitted(&mut self, phase: &str) -> Vec<Value> {
        self.phase(json!({"phase": phase, "until": 200, "max": RECOVERY_TRIES, "gap": 0.05}))
    }

    /// Asserts `answers` had `expected` outcomes; else fails with the whole log so far.
    fn assert_outcomes(
        &mut self,
        what: &str,
        answers: &[Value],
        expected: Vec<(u64, Option<&str>)>,
    ) {
        let got = outcomes(answers);
        if got != expected {
            self.fail(&format!(
                "{what}: expected {expected:?}\n got {got:?}\n{answers:#?}"
            ));
        }
    }

    /// Kills the execution and fails the test with what it printed.
    fn fail(&mut self, what: &str) -> ! {
        self.run.fail(what)
    }

    /// Closes the client's stdin (it exits) and waits for the execution to end.
    fn finish(self) -> Finished {
        self.run.finish(HANG_LIMIT)
    }
}

/// One whole execution of the client making `count` requests of phase `phase`: another
/// node of the same team. Returns its answers and how it ended.
fn one_shot(sandbox: &Sandbox, phase: &str, count: u64) -> (Vec<Value>, Finished) {
    let input = format!("{}\n", json!({"phase": phase, "count": count}));
    let finished = output(
        &mut sandbox.command([PYTHON, "-c", CLIENT]),
        Some(input.as_bytes()),
        HANG_LIMIT,
    );
    let answers = finished
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|reply| reply["phase"] == phase)
        .and_then(|reply| reply["answers"].as_array().cloned())
        .unwrap_or_else(|| panic!("no answer to phase {phase}:\n{}", finished.describe()));
    (answers, finished)
}

// ---------------------------------------------------------------------------------------
// Reading answers, records and summaries
// ---------------------------------------------------------------------------------------

/// `(status, Tollgate-Error)` of each answer.
fn outcomes(answers: &[Value]) -> Vec<(u64, Option<&str>)> {
    answers
        .iter()
        .map(|a| (a["status"].as_u64().unwrap_or(0), a["error"].as_str()))
        .collect()
}

const ADMITTED: (u64, Option<&str>) = (200, None);
const UNAVAILABLE: (u64, Option<&str>) = (503, Some("quota_unavailable"));
const EXHAUSTED: (u64, Option<&str>) = (429, Some("team_budget_exhausted"));

/// `n` times `outcome`.
fn times(outcome: (u64, Option<&'static str>), n: usize) -> Vec<(u64, Option<&'static str>)> {
    vec![outcome; n]
}

/// Asserts a `quota_unavailable` answer carries no wait longer than a second (the store may
/// be back at once), and a day budget's refusal a whole number of seconds ≥ 1.
fn assert_retry_after(answers: &[Value]) {
    for answer in answers {
        let retry_after = answer["retry_after"].as_str();
        match answer["error"].as_str() {
            Some("quota_unavailable") => assert!(
                retry_after.is_none() || retry_after == Some("1"),
                "quota_unavailable with Retry-After {retry_after:?}: {answer}"
            ),
            Some("team_budget_exhausted") => assert!(
                retry_after
                    .and_then(|r| r.parse::<u64>().ok())
                    .is_some_and(|r| r >= 1),
                "a budget refusal needs Retry-After in whole seconds >= 1: {answer}"
            ),
            _ => {}
        }
    }
}

/// The `http` records of an audit log for requests of `phase`.
fn records_of<'a>(audit: &'a [Value], phase: &str) -> Vec<&'a Value> {
    let prefix = format!("/echo/{phase}/");
    audit
        .iter()
        .filter(|r| r["type"] == "http")
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .collect()
}

/// The stderr lines about the Redis server at `port` itself: those that name it, less the
/// per-request lines (which name the request's path, and may quote the store's failure).
fn lines_about(stderr: &str, port: u16) -> Vec<&str> {
    let needle = format!("127.0.0.1:{port}");
    stderr
        .lines()
        .filter(|l| l.contains(&needle) && !l.contains("/echo/"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Redis stopped in the middle, then restarted
// ---------------------------------------------------------------------------------------

#[test]
fn redis_stopped_mid_execution_denies_with_quota_unavailable_and_recovers_without_a_restart() {
    let _suite = SuiteLock::shared();
    let mut redis = RedisServer::start();
    let bench = Bench::new("qf-deny");
    let policy = bench.policy("  requests_per_day: 5\n");
    // No --quota-store-failure: `deny` is the default.
    let node = flags(&redis.url(), &[]);
    let mut first = Session::start(&client_run(&bench, &policy, "first", &node));

    let before = first.requests("a", 1);
    first.assert_outcomes("Redis up", &before, vec![ADMITTED]);

    redis.stop();
    let down = first.requests("b", 10);
    first.assert_outcomes("Redis down, deny", &down, times(UNAVAILABLE, 10));
    assert_retry_after(&down);
    assert_eq!(
        bench.upstream_saw("b"),
        0,
        "a quota that cannot be checked is not granted"
    );

    // Back on the same port, empty: the same execution finds it again by itself.
    redis.restart();
    let back = first.until_admitted("c");
    let (last, waiting) = back.split_last().expect("at least one answer");
    first.assert_outcomes("Redis back", std::slice::from_ref(last), vec![ADMITTED]);
    let expected = times(UNAVAILABLE, waiting.len());
    first.assert_outcomes("until Redis is tried again", waiting, expected);
    assert!(
        !bench.redis_keys(&redis).is_empty(),
        "the admitted request was counted in Redis again"
    );

    // Another node of the team takes the rest of the day budget (5, one taken since the
    // restart) through the same Redis: the count is shared again.
    let (other, other_run) = one_shot(&client_run(&bench, &policy, "other", &node), "n2", 6);
    assert_eq!(other_run.code(), 0, "{}", other_run.describe());
    let mut expected = times(ADMITTED, 4);
    expected.extend(times(EXHAUSTED, 2));
    assert_eq!(outcomes(&other), expected, "{other:#?}");
    assert_retry_after(&other);

    // … and the first execution sees that exhaustion.
    let after = first.requests("d", 1);
    first.assert_outcomes("after the other node", &after, vec![EXHAUSTED]);
    let finished = first.finish();
    assert_eq!(finished.code(), 0, "{}", finished.describe());

    for (phase, reached) in [("a", 1), ("b", 0), ("c", 1), ("n2", 4), ("d", 0)] {
        assert_eq!(
            bench.upstream_saw(phase),
            reached,
            "requests of phase {phase} upstream"
        );
    }

    // The audit: each refusal says which quota (or the store) and what was left.
    let audit = read_json_lines(&bench.scratch.output("first.audit.jsonl"));
    let unavailable = records_of(&audit, "b");
    assert_eq!(unavailable.len(), 10, "{unavailable:#?}");
    for record in unavailable {
        assert_eq!(record["error"], "quota_unavailable", "{record}");
        assert_eq!(record["reason"], "quota_unavailable", "{record}");
        assert_eq!(record["status"], 503, "{record}");
        assert_eq!(record["address"], Value::Null, "never dialed: {record}");
    }
    let exhausted = records_of(&audit, "d");
    assert_eq!(exhausted.len(), 1, "{exhausted:#?}");
    let record = exhausted[0];
    assert_eq!(record["error"], "team_budget_exhausted", "{record}");
    assert_eq!(record["reason"], "quotas.requests_per_day", "{record}");
    assert_eq!(record["status"], 429, "{record}");
    let quota = &record["quota"];
    assert_eq!(quota["quota"], "requests_per_day", "{record}");
    assert_eq!(quota["scope"], "team", "{record}");
    assert_eq!(quota["limit"], 5, "{record}");
    assert_eq!(quota["remaining"], 0, "{record}");
    assert_eq!(quota["store"], "redis", "{record}");
    assert!(
        quota["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1000),
        "{record}"
    );

    // The summary: which store, how it was configured, and every refusal by kind.
    let summary = read_json(&bench.scratch.output("first.summary.json"));
    let quotas = &summary["quotas"];
    let refused_unavailable = 10 + waiting.len() as u64;
    assert_eq!(
        quotas["store"],
        format!("redis://127.0.0.1:{}", redis.port()),
        "{quotas:#}"
    );
    assert_eq!(quotas["fleet_wide"], true, "{quotas:#}");
    assert_eq!(quotas["on_failure"], "deny", "{quotas:#}");
    assert_eq!(quotas["admitted"], 2, "{quotas:#}");
    assert_eq!(
        quotas["refused"]["quota_unavailable"], refused_unavailable,
        "{quotas:#}"
    );
    assert_eq!(quotas["refused"]["team_budget_exhausted"], 1, "{quotas:#}");
    assert_eq!(quotas["refused"]["team_rate_limited"], 0, "{quotas:#}");
    assert!(
        quotas["errors"].as_u64().is_some_and(|e| e >= 1),
        "{quotas:#}"
    );
    assert_eq!(quotas["local_fallback_checks"], 0, "{quotas:#}");

    // The operator heard that the store failed and that it came back, once each, not once
    // per refused request.
    let said = lines_about(&finished.stderr, redis.port());
    assert!(
        !said.is_empty() && (said.len() as u64) < refused_unavailable.min(10),
        "one line per change of the store's state, not per request:\n{}",
        finished.stderr
    );
}

#[test]
fn redis_stopped_mid_execution_in_local_mode_enforces_this_nodes_share_then_the_shared_quota() {
    let _suite = SuiteLock::shared();
    let mut redis = RedisServer::start();
    let bench = Bench::new("qf-local");
    let policy = bench.policy("  requests_per_day: 10\n");
    let node = flags(
        &redis.url(),
        &["--quota-store-failure", "local", "--quota-nodes", "2"],
    );
    let mut first = Session::start(&client_run(&bench, &policy, "first", &node));

    let before = first.requests("a", 2);
    first.assert_outcomes("Redis up", &before, times(ADMITTED, 2));

    // Redis gone: this node alone grants its share, 10 / 2 nodes = 5 (the two taken through
    // Redis are in Redis, not in the node's own count).
    redis.stop();
    let down = first.requests("b", 3);
    first.assert_outcomes("Redis down, local share", &down, times(ADMITTED, 3));

    // The share is the node's, not the execution's: another execution of the team on this
    // node, started while Redis is down, gets what is left of it (2 of 5).
    let (same_node, same_node_run) =
        one_shot(&client_run(&bench, &policy, "same-node", &node), "n1", 4);
    assert_eq!(same_node_run.code(), 0, "{}", same_node_run.describe());
    let mut expected = times(ADMITTED, 2);
    expected.extend(times(EXHAUSTED, 2));
    assert_eq!(outcomes(&same_node), expected, "{same_node:#?}");
    assert_retry_after(&same_node);

    let spent = first.requests("b2", 1);
    first.assert_outcomes("the node's share spent", &spent, vec![EXHAUSTED]);
    assert_retry_after(&spent);

    // Redis back (empty): requests are counted there again, without restarting anything.
    // Until the store tries Redis again the local share (spent) refuses.
    redis.restart();
    let back = first.until_admitted("c");
    let (last, waiting) = back.split_last().expect("at least one answer");
    first.assert_outcomes("Redis back", std::slice::from_ref(last), vec![ADMITTED]);
    let expected = times(EXHAUSTED, waiting.len());
    first.assert_outcomes("until Redis is tried again", waiting, expected);

    // Another node takes the rest of the shared budget (10, one taken since the restart):
    // the whole limit, not a share, since Redis answers.
    let (other, other_run) = one_shot(&client_run(&bench, &policy, "other", &node), "n2", 10);
    assert_eq!(other_run.code(), 0, "{}", other_run.describe());
    let mut expected = times(ADMITTED, 9);
    expected.push(EXHAUSTED);
    assert_eq!(outcomes(&other), expected, "{other:#?}");

    let after = first.requests("d", 1);
    first.assert_outcomes("after the other node", &after, vec![EXHAUSTED]);
    let finished = first.finish();
    assert_eq!(finished.code(), 0, "{}", finished.describe());

    let reached = [
        ("a", 2),
        ("b", 3),
        ("n1", 2),
        ("b2", 0),
        ("c", 1),
        ("n2", 9),
        ("d", 0),
    ];
    for (phase, reached) in reached {
        assert_eq!(
            bench.upstream_saw(phase),
            reached,
            "requests of phase {phase} upstream"
        );
    }

    // The audit says which store refused: the local fallback while Redis was down, Redis
    // after it came back.
    let audit = read_json_lines(&bench.scratch.output("first.audit.jsonl"));
    let local = records_of(&audit, "b2");
    assert_eq!(local.len(), 1, "{local:#?}");
    assert_eq!(local[0]["error"], "team_budget_exhausted", "{}", local[0]);
    assert_eq!(
        local[0]["reason"], "quotas.requests_per_day",
        "{}",
        local[0]
    );
    assert_eq!(local[0]["quota"]["store"], "local_fallback", "{}", local[0]);
    assert_eq!(local[0]["quota"]["remaining"], 0, "{}", local[0]);
    let shared = records_of(&audit, "d");
    assert_eq!(shared.len(), 1, "{shared:#?}");
    assert_eq!(shared[0]["quota"]["store"], "redis", "{}", shared[0]);
    assert_eq!(shared[0]["quota"]["limit"], 10, "{}", shared[0]);

    let summary = read_json(&bench.scratch.output("first.summary.json"));
    let quotas = &summary["quotas"];
    assert_eq!(quotas["on_failure"], "local", "{quotas:#}");
    assert_eq!(quotas["fleet_wide"], true, "{quotas:#}");
    assert_eq!(quotas["admitted"], 2 + 3 + 1, "{quotas:#}");
    assert_eq!(quotas["refused"]["quota_unavailable"], 0, "{quotas:#}");
    assert_eq!(
        quotas["refused"]["team_budget_exhausted"],
        1 + waiting.len() as u64 + 1,
        "{quotas:#}"
    );
    assert!(
        quotas["local_fallback_checks"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "every check while Redis was down was answered locally: {quotas:#}"
    );
    assert!(
        quotas["errors"].as_u64().is_some_and(|e| e >= 1),
        "{quotas:#}"
    );

    let said = lines_about(&finished.stderr, redis.port());
    assert!(
        !said.is_empty() && said.len() < 8,
        "one line per change of the store's state, not per request:\n{}",
        finished.stderr
    );
    assert!(
        said.iter()
            .any(|line| line.contains("alone") || line.contains("local")),
        "the log says this node enforces quotas alone:\n{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 2. requirepass
// ---------------------------------------------------------------------------------------

const RIGHT_PASSWORD: &str = "quota-right-4d1f9";
const WRONG_PASSWORD: &str = "quota-wrong-8c2e7";

/// A 0600 file holding `password` (and a newline, as editors leave one), in the bench's
/// root-only output directory.
fn password_file(bench: &Bench, name: &str, password: &str) -> PathBuf {
    let path = bench.scratch.output(name);
    fs::write(&path, format!("{password}\n")).expect("write the password file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

#[test]
fn the_right_password_from_the_url_or_a_file_opens_the_store() {
    let _suite = SuiteLock::shared();
    let redis = RedisServer::with_password(RIGHT_PASSWORD);
    let bench = Bench::new("qf-auth");
    // Three a day for both executions together: the second one's refusal shows both
    // counted in the same Redis.
    let policy = bench.policy("  requests_per_day: 3\n");
    let file = password_file(&bench, "redis.password", RIGHT_PASSWORD);
    let without_password = format!("redis://127.0.0.1:{}", redis.port());
    let mut from_file = flags(&without_password, &["--redis-password-file"]);
    from_file.push(file.display().to_string());
    let cases = [
        ("in-url", flags(&redis.url(), &[]), vec![ADMITTED, ADMITTED]),
        ("in-file", from_file, vec![ADMITTED, EXHAUSTED]),
    ];
    for (name, node, expected) in cases {
        let (answers, finished) = one_shot(&client_run(&bench, &policy, name, &node), name, 2);
        assert_eq!(finished.code(), 0, "{name}: {}", finished.describe());
        assert_eq!(outcomes(&answers), expected, "{name}: {answers:#?}");
        assert!(
            !finished.stderr.contains(RIGHT_PASSWORD),
            "{name}: the password in the log:\n{}",
            finished.stderr
        );
        let summary = read_json(&bench.scratch.output(&format!("{name}.summary.json")));
        let quotas = &summary["quotas"];
        assert_eq!(quotas["fleet_wide"], true, "{name}: {quotas:#}");
        assert_eq!(quotas["errors"], 0, "{name}: {quotas:#}");
        assert!(
            !summary.to_string().contains(RIGHT_PASSWORD),
            "{name}: the password in the summary: {summary}"
        );
    }
    assert!(
        !bench.redis_keys(&redis).is_empty(),
        "the team's counters are in Redis"
    );
}

#[test]
fn a_wrong_or_missing_password_stops_the_execution_at_start_without_printing_it() {
    let _suite = SuiteLock::shared();
    let redis = RedisServer::with_password(RIGHT_PASSWORD);
    let bench = Bench::new("qf-wrongpass");
    let policy = bench.policy("  requests_per_day: 100\n");
    let marks = shared_dir(&bench.scratch, "marks");
    let file = password_file(&bench, "wrong.password", WRONG_PASSWORD);
    let without_password = format!("redis://127.0.0.1:{}", redis.port());
    let mut from_file = flags(&without_password, &["--redis-password-file"]);
    from_file.push(file.display().to_string());
    let cases = [
        (
            "in-url",
            flags(&redis.url_with_password(WRONG_PASSWORD), &[]),
        ),
        ("in-file", from_file),
        ("none", flags(&without_password, &[])),
    ];
    for (name, node) in cases {
        let mark = marks.join(name);
        let finished = client_run(&bench, &policy, name, &node).run([
            "/bin/sh",
            "-c",
            &format!("touch {}", mark.display()),
        ]);
        assert_eq!(finished.code(), 125, "{name}: {}", finished.describe());
        assert!(!mark.exists(), "{name}: the command ran");
        let said = format!("{}{}", finished.stdout, finished.stderr);
        assert!(
            said.contains("refused the password"),
            "{name}: the message says the password was refused: {}",
            finished.describe()
        );
        assert!(
            said.contains(&format!("127.0.0.1:{}", redis.port())),
            "{name}: the message names the server: {}",
            finished.describe()
        );
        for secret in [WRONG_PASSWORD, RIGHT_PASSWORD] {
            assert!(
                !said.contains(secret),
                "{name}: a password in the output: {}",
                finished.describe()
            );
        }
        assert!(
            finished.stderr_lines().len() <= 3,
            "{name}: one clear message, not a trace: {}",
            finished.describe()
        );
    }
    assert_eq!(bench.up.requests().len(), 0, "nothing reached the upstream");
    assert!(bench.redis_keys(&redis).is_empty(), "nothing was counted");
}

// ---------------------------------------------------------------------------------------
// 3. rediss://
// ---------------------------------------------------------------------------------------

#[test]
fn rediss_is_verified_against_the_given_ca_and_refused_without_it() {
    let _suite = SuiteLock::shared();
    let redis = RedisServer::with_tls();
    let ca = redis.ca_file().expect("a TLS server has a CA");
    let bench = Bench::new("qf-tls");
    let policy = bench.policy("  requests_per_day: 100\n");

    let verified = flags(&redis.url(), &["--redis-ca", &ca.display().to_string()]);
    let (answers, finished) = one_shot(&client_run(&bench, &policy, "with-ca", &verified), "ca", 2);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(outcomes(&answers), times(ADMITTED, 2), "{answers:#?}");
    assert!(
        !bench.redis_keys(&redis).is_empty(),
        "counted in Redis over TLS"
    );
    let summary = read_json(&bench.scratch.output("with-ca.summary.json"));
    assert_eq!(
        summary["quotas"]["store"],
        format!("rediss://127.0.0.1:{}", redis.port()),
        "{summary:#}"
    );
    assert_eq!(summary["quotas"]["errors"], 0, "{summary:#}");

    // The system roots do not know the test CA: the store cannot be reached, and with
    // `deny` nothing is granted; the log says why.
    let unverified = flags(&redis.url(), &[]);
    let (answers, finished) = one_shot(
        &client_run(&bench, &policy, "without-ca", &unverified),
        "noca",
        2,
    );
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(outcomes(&answers), times(UNAVAILABLE, 2), "{answers:#?}");
    assert_eq!(bench.upstream_saw("noca"), 0);
    let said = lines_about(&finished.stderr, redis.port());
    assert!(
        said.iter()
            .any(|line| line.to_lowercase().contains("certificate")),
        "the log says the server's certificate was not trusted:\n{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 4. doctor
// ---------------------------------------------------------------------------------------

/// `tollgate doctor`'s lines about the quota store, with `TOLLGATE_REDIS_URL` set to `url`.
fn doctor_store_lines(url: Option<&str>) -> (Vec<String>, Finished) {
    let mut command = tollgate();
    command.arg("doctor").env_remove("TOLLGATE_REDIS_URL");
    if let Some(url) = url {
        command.env("TOLLGATE_REDIS_URL", url);
    }
    let finished = output(&mut command, None, HANG_LIMIT);
    let lines = format!("{}\n{}", finished.stdout, finished.stderr)
        .lines()
        .filter(|line| line.to_lowercase().contains("quota"))
        .map(str::to_owned)
        .collect();
    (lines, finished)
}

#[test]
fn doctor_says_whether_quotas_are_fleet_wide() {
    let _suite = SuiteLock::shared();
    let (lines, finished) = doctor_store_lines(None);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        lines.iter().any(|line| {
            [
                "per node",
                "no Redis configured",
                "--redis-url",
                "TOLLGATE_REDIS_URL",
            ]
            .iter()
            .all(|part| line.contains(part))
        }),
        "without Redis, quotas are per node: {lines:?}\n{}",
        finished.describe()
    );

    let mut redis = RedisServer::with_password(RIGHT_PASSWORD);
    let shown = format!("127.0.0.1:{}", redis.port());
    let (lines, finished) = doctor_store_lines(Some(&redis.url()));
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let line = lines
        .iter()
        .find(|line| line.contains("fleet-wide through") && line.contains(&shown))
        .unwrap_or_else(|| panic!("a fleet-wide line naming {shown}: {}", finished.describe()));
    assert!(
        line.contains("reachable")
            && !line.contains("not reachable")
            && !line.contains("unreachable"),
        "{line}"
    );
    assert!(
        !finished.stdout.contains(RIGHT_PASSWORD),
        "{}",
        finished.describe()
    );
    assert!(
        !finished.stderr.contains(RIGHT_PASSWORD),
        "{}",
        finished.describe()
    );

    redis.stop();
    let (lines, finished) = doctor_store_lines(Some(&redis.url()));
    let line = lines
        .iter()
        .find(|line| line.contains("fleet-wide through") && line.contains(&shown))
        .unwrap_or_else(|| panic!("a fleet-wide line naming {shown}: {}", finished.describe()));
    assert!(
        line.contains("not reachable") || line.contains("unreachable"),
        "a stopped Redis is reported unreachable: {line}"
    );
    assert!(
        !finished.stdout.contains(RIGHT_PASSWORD),
        "{}",
        finished.describe()
    );
}
