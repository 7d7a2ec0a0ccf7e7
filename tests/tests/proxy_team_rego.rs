//! A team's Rego cannot take the supervisor down: rules written to exhaust memory, the
//! stack or time make each request they run on a `team_rule_error` refusal, promptly, while
//! the execution goes on and ordinary requests are decided as before. The rules run in
//! worker processes (`team_rules`) that die with the supervisor. Real `tollgate run`, real
//! `/usr/bin/curl` inside it, a real upstream in a namespace of its own.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pair made here.

use std::{fs, time::Duration};

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{process_stat, read_json_lines, signal, wait_dead, Running, Sandbox, HANG_LIMIT},
    tollgate,
    upstream::{UpstreamHost, HTTP_PORT},
    Scratch,
};

/// One rule per hostile path; each asks for far more than an evaluation may use.
const HOSTILE_RULES: &str = r#"
  # 10^8 numbers: 2.4 GB of values in one built-in call.
  deny contains "range" if {
    input.request.path == "/echo/range"
    count(numbers.range(1, 1e8)) > 0
  }
  # 10^12 numbers: one allocation of 24 TB, which aborts the process that asks.
  deny contains "huge range" if {
    input.request.path == "/echo/huge-range"
    count(numbers.range(1, 1e12)) > 0
  }
  # 10^10 pairs.
  deny contains "cross" if {
    input.request.path == "/echo/cross"
    count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0
  }
  # Unbounded recursion.
  loop(x) := y if { y := loop(x) }
  deny contains "recursion" if {
    input.request.path == "/echo/recursion"
    loop(1)
  }
  # A gigabyte string from three concats.
  kilo := concat("", ["x" | some _ in numbers.range(1, 1000)])
  mega := concat("", [kilo | some _ in numbers.range(1, 1000)])
  giga := concat("", [mega | some _ in numbers.range(1, 1000)])
  deny contains "concat" if {
    input.request.path == "/echo/concat"
    count(giga) > 0
  }
  # Doubling sprintf: 64 bytes × 2^24.
  s0 := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  s1 := sprintf("%s%s%s%s%s%s%s%s", [s0, s0, s0, s0, s0, s0, s0, s0])
  s2 := sprintf("%s%s%s%s%s%s%s%s", [s1, s1, s1, s1, s1, s1, s1, s1])
  s3 := sprintf("%s%s%s%s%s%s%s%s", [s2, s2, s2, s2, s2, s2, s2, s2])
  s4 := sprintf("%s%s%s%s%s%s%s%s", [s3, s3, s3, s3, s3, s3, s3, s3])
  s5 := sprintf("%s%s%s%s%s%s%s%s", [s4, s4, s4, s4, s4, s4, s4, s4])
  s6 := sprintf("%s%s%s%s%s%s%s%s", [s5, s5, s5, s5, s5, s5, s5, s5])
  s7 := sprintf("%s%s%s%s%s%s%s%s", [s6, s6, s6, s6, s6, s6, s6, s6])
  s8 := sprintf("%s%s%s%s%s%s%s%s", [s7, s7, s7, s7, s7, s7, s7, s7])
  deny contains "sprintf" if {
    input.request.path == "/echo/sprintf"
    count(s8) > 0
  }
  # An ordinary rule, to show the module still works after all of that.
  deny contains "no deletes" if input.request.method == "DELETE"
  # The request's header names reach the module (curl always sends User-Agent).
  deny contains "no user agents here" if {
    input.request.path == "/echo/agent"
    "user-agent" in input.request.header_names
  }
"#;

const HOSTILE_PATHS: [&str; 6] = [
    "/echo/range",
    "/echo/huge-range",
    "/echo/cross",
    "/echo/recursion",
    "/echo/concat",
    "/echo/sprintf",
];

fn policy(up: &UpstreamHost) -> String {
    format!(
        "version: 1
team: e2e
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{HTTP_PORT}]
      schemes: [http]
      allowed_ips: [{subnet}]
rego: |
  package tollgate.team
  import rego.v1
{HOSTILE_RULES}",
        addr = up.addr,
        subnet = up.subnet(),
    )
}

/// One curl per `METHOD PATH` argument; each answer framed as `=== PATH` … `=== rc N`.
const CURL_EACH: &str = r#"for request in "$@"; do
  method=${request%% *}; path=${request#* }
  printf '=== %s %s\n' "$method" "$path"
  /usr/bin/curl -sS -i --max-time 20 -X "$method" "http://up.test:8080$path" 2>&1
  printf '\n=== rc %s\n' "$?"
done"#;

fn answer<'a>(stdout: &'a str, request: &str) -> &'a str {
    let start = format!("=== {request}\n");
    let at = stdout
        .find(&start)
        .unwrap_or_else(|| panic!("no answer for {request}:\n{stdout}"));
    let rest = &stdout[at + start.len()..];
    &rest[..rest.find("\n=== rc").unwrap_or(rest.len())]
}

#[test]
fn hostile_team_rules_refuse_their_requests_and_the_execution_goes_on() {
    let _suite = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("team-rego");
    let policy = scratch.file("policy.yaml", &policy(&up));
    let audit = scratch.output("audit.jsonl");
    let mut requests: Vec<String> = HOSTILE_PATHS.iter().map(|p| format!("GET {p}")).collect();
    requests.push("GET /echo/ordinary".into());
    requests.push("DELETE /echo/ordinary".into());
    requests.push("GET /echo/agent".into());
    let mut command = vec![
        "/bin/sh".to_owned(),
        "-c".into(),
        CURL_EACH.into(),
        "sh".into(),
    ];
    command.extend(requests.iter().cloned());
    let finished = Sandbox::new()
        .policy(&policy)
        .audit(&audit)
        .timeout("120s")
        .run(&command);
    // The supervisor lived to the end and reports the command's own status.
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    for path in HOSTILE_PATHS {
        let text = answer(&finished.stdout, &format!("GET {path}"));
        assert!(text.starts_with("HTTP/1.1 403"), "{path}:\n{text}");
        assert!(text.contains("failed to evaluate"), "{path}:\n{text}");
    }
    let ordinary = answer(&finished.stdout, "GET /echo/ordinary");
    assert!(ordinary.starts_with("HTTP/1.1 200"), "{ordinary}");
    let delete = answer(&finished.stdout, "DELETE /echo/ordinary");
    assert!(
        delete.starts_with("HTTP/1.1 403") && delete.contains("no deletes"),
        "{delete}"
    );
    let agent = answer(&finished.stdout, "GET /echo/agent");
    assert!(
        agent.starts_with("HTTP/1.1 403") && agent.contains("no user agents here"),
        "{agent}"
    );
    assert!(up.requests_to("/echo/agent").is_empty());
    let records = read_json_lines(&audit);
    for path in HOSTILE_PATHS {
        let reasons: Vec<&str> = records
            .iter()
            .filter(|r| r["path"] == path)
            .filter_map(|r| r["reason"].as_str())
            .collect();
        assert_eq!(reasons, ["team_rule_error"], "{path}: {records:?}");
    }
    assert!(up.requests_to("/echo/range").is_empty());
    assert_eq!(up.requests_to("/echo/ordinary").len(), 1);
}

/// The team-rules workers the supervisor `pid` started, with their start times.
fn workers_of(supervisor: u32) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let parent: Option<u32> = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok());
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_worker = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"__team-rules-worker");
        if parent == Some(supervisor) && is_worker {
            if let Some((_, start)) = process_stat(pid) {
                found.push((pid, start));
            }
        }
    }
    found
}

/// The workers run as `nobody`, never as root, and end with their supervisor: when the run
/// ends, and when the supervisor is killed outright.
#[test]
fn team_rule_workers_are_unprivileged_and_die_with_their_supervisor() {
    // Alone: the killed supervisor's cgroup is left for the `gc` at the end, which another
    // run starting meanwhile would do first.
    let _suite = SuiteLock::exclusive();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("team-rego-workers");
    let policy = scratch.file("policy.yaml", &policy(&up));
    for ending in ["exit", "sigkill"] {
        let mut running = Running::spawn(&mut Sandbox::new().policy(&policy).timeout("90s").command([
            "/bin/sh",
            "-c",
            "/usr/bin/curl -sS -o /dev/null http://up.test:8080/echo/first; echo READY; read line || true",
        ]));
        running.wait_line("READY", HANG_LIMIT);
        let workers = workers_of(running.pid());
        assert!(!workers.is_empty(), "{ending}: no team-rules worker found");
        for (pid, _) in &workers {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid_line = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap_or_default();
            let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
            assert_eq!(uids, ["65534"; 4], "{ending}: worker {pid}: {uid_line}");
        }
        match ending {
            "exit" => {
                running.close_stdin();
                let status = running.wait_exit(HANG_LIMIT);
                assert!(status.success(), "{ending}: {status:?}");
            }
            _ => {
                signal(running.pid(), libc::SIGKILL);
                running.wait_exit(HANG_LIMIT);
            }
        }
        for (pid, start) in workers {
            assert!(
                wait_dead(pid, start, Duration::from_secs(10)),
                "{ending}: worker {pid} outlived its supervisor"
            );
        }
    }
    let gc = tollgate().arg("gc").output().expect("run tollgate gc");
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
}
