//! A team policy's `quotas` through the built binary: `policy check` validates them with
//! their line and column and says once that they are fleet-wide only where the node has a
//! Redis URL; `policy schema` describes them; team rules see `input.quotas` in `policy eval`.

use serde_json::Value;
use std::path::Path;
use tollgate_tests::{policy_check as check, tollgate, Scratch};

const NOTE: &str = "tollgate: note: team quotas are fleet-wide only on nodes with a Redis URL";

fn with_quotas(team: &str) -> String {
    format!(
        "version: 1\nteam: {team}\nquotas:\n  requests_per_minute: 600\n  destinations:\n    - host: api.openai.com\n      requests_per_day: 1000\n"
    )
}

fn notes(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with(NOTE)).count()
}

#[test]
fn a_policy_with_quotas_is_ok_with_one_note_about_redis() {
    let scratch = Scratch::new("quota-check");
    let file = scratch.file("acme.yaml", &with_quotas("acme"));
    let (code, stdout, stderr) = check(&[&file]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, format!("{}: ok\n", file.display()));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(notes(&stderr), 1, "{stderr}");
    for needle in [
        "--redis-url",
        "TOLLGATE_REDIS_URL",
        "quotas.redis_url",
        "enforces each quota alone",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn a_policy_without_quotas_gets_no_note() {
    let scratch = Scratch::new("quota-check-none");
    let plain = scratch.file("plain.yaml", "version: 1\nteam: acme\n");
    let empty = scratch.file("empty.yaml", "version: 1\nteam: acme\nquotas: {}\n");
    let (code, stdout, stderr) = check(&[&plain, &empty]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "", "{stdout}");
}

#[test]
fn the_note_is_said_once_for_files_and_directories_together() {
    let scratch = Scratch::new("quota-check-many");
    let teams = scratch.dir.join("teams");
    std::fs::create_dir(&teams).unwrap();
    for team in ["data-eng", "web"] {
        std::fs::write(teams.join(format!("{team}.yaml")), with_quotas(team)).unwrap();
    }
    let file = scratch.file("acme.yaml", &with_quotas("acme"));
    let (code, stdout, stderr) = check(&[&file, &teams]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert_eq!(notes(&stderr), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn quota_errors_point_at_their_line_and_the_exit_status_is_unchanged() {
    let scratch = Scratch::new("quota-check-bad");
    let bad = scratch.file(
        "bad.yaml",
        "version: 1\nteam: acme\nquotas:\n  requests_per_day: 0\n  burst: 5\n  destinations:\n    - host: \"*\"\n      requests_per_minute: 6\n",
    );
    let (code, stdout, stderr) = check(&[&bad]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let bad = bad.display();
    for line in [
        format!("{bad}:4:21: requests_per_day must be at least 1: remove the key to have no limit"),
        format!("{bad}:5:10: burst is the size of the requests_per_minute bucket"),
        format!("{bad}:7:13: a host pattern of only `*` or `**` would match every host"),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&line)),
            "{line}\n{stdout}"
        );
    }
    // A policy that does not load says nothing about its quotas.
    assert_eq!(notes(&stderr), 0, "{stderr}");
    // One that does, beside it, does; the status is still the invalid file's.
    let good = scratch.file("good.yaml", &with_quotas("acme"));
    let (code, _, stderr) = check(&[Path::new(&bad.to_string()), &good]);
    assert_eq!(code, Some(2));
    assert_eq!(notes(&stderr), 1, "{stderr}");
}

#[test]
fn a_type_error_in_a_quota_is_one_clear_line() {
    let scratch = Scratch::new("quota-check-type");
    let file = scratch.file(
        "acme.yaml",
        "version: 1\nteam: acme\nquotas:\n  requests_per_minute: \"600\"\n",
    );
    let (code, stdout, stderr) = check(&[&file]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("{}:4:24: ", file.display()))
            && stdout.contains("write a whole number without quotes"),
        "{stdout}"
    );
}

#[test]
fn the_schema_has_the_quotas_section() {
    let output = tollgate().args(["policy", "schema"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    let quotas = &schema["$defs"]["QuotasSection"]["properties"];
    for key in [
        "requests_per_minute",
        "burst",
        "requests_per_day",
        "bytes_per_day",
        "destinations",
    ] {
        assert!(quotas[key].is_object(), "{key}: {quotas}");
    }
    assert_eq!(schema["$defs"]["QuotaCount"]["minimum"], 1);
}

/// `policy eval` runs the team module in its worker, as the proxy does: `input.quotas` is
/// there (an array; empty outside an execution, which has no store to ask).
#[test]
fn team_rules_see_input_quotas_in_policy_eval() {
    let scratch = Scratch::new("quota-eval");
    let policy = scratch.file(
        "acme.yaml",
        "version: 1
team: acme
network:
  allow: [https://api.example.com]
quotas:
  requests_per_minute: 600
rego: |
  package tollgate.team
  import rego.v1
  deny contains \"input.quotas is missing\" if { not is_array(input.quotas) }
  deny contains \"low\" if { some q in input.quotas; q.remaining != null; q.remaining < 10 }
",
    );
    let output = tollgate()
        .args(["policy", "eval"])
        .arg(&policy)
        .args([
            "GET",
            "https://api.example.com/v1",
            "--resolve",
            "api.example.com=140.82.112.5",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(
        (output.status.code(), json["reason"].as_str()),
        (Some(0), Some("allowed")),
        "{json}"
    );
}
