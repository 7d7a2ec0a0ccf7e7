//! The audit log and summary an operator acts on, end to end (issue #10, section 5): one
//! record shape for every type (`http`, `connect`, `bypass_attempt`), refusals that say why in
//! the same words the sandbox got, records valid against the JSON Schema shipped in
//! `docs/audit.schema.json`, the same events as OCSF 1.x with `--audit-format ocsf`, and the
//! summary's list of what was refused.
//!
//! One script exercises every record type: allowed and refused requests over HTTP and inside
//! an intercepted tunnel, refused tunnels, SSRF, an unknown `Tollgate-Auth` provider, a
//! placeholder sent outside its provider's scope, a flood of identical refusals (aggregated),
//! and a direct socket the eBPF wall refuses. Each refusal goes to a host of its own, so its
//! record is found by host.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair.

mod refusals_support;

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use refusals_support::{assert_ran, entry, events, is_rfc3339_ms, Bench, Outcome, DENY_ADMIN};
use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    repo_root,
    sandbox::{read_json_lines, Sandbox, PYTHON},
    Scratch,
};

/// The team's secret, which must never appear in an audit record.
const SECRET: &str = "tok-secret-value-7f3a";

/// Identical refusals the script sends in a row, to be aggregated.
const FLOOD: u64 = 30;

/// Fields every `http` and `connect` record carries (null where they do not apply).
const PROXY_FIELDS: [&str; 16] = [
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "address",
    "decision",
    "reason",
    "rule",
    "error",
    "status",
    "attempt",
    "outcome",
    "duration_ms",
    "bytes_up",
    "bytes_down",
];

/// Refusals of the script: (result name, record type, host, scheme, error code, reason).
/// A reason the contract does not name is "" (the record must still carry one).
const REFUSALS: [(&str, &str, &str, &str, &str, &str); 9] = [
    (
        "not allowed",
        "http",
        "evil.test",
        "http",
        "policy_denied",
        "host_not_allowed",
    ),
    (
        "deny rule",
        "http",
        "rule.up.test",
        "http",
        "policy_denied",
        "l7_denied",
    ),
    (
        "deny rule inside a tunnel",
        "http",
        "tunnel.up.test",
        "https",
        "policy_denied",
        "l7_denied",
    ),
    (
        "ssrf",
        "http",
        "uncovered.up.test",
        "http",
        "ssrf_denied",
        "private_address",
    ),
    (
        "lower case",
        "http",
        "lower.up.test",
        "http",
        "invalid_request",
        "method_not_uppercase",
    ),
    (
        "unknown provider",
        "http",
        "auth.up.test",
        "http",
        "auth_provider_error",
        "",
    ),
    (
        "placeholder outside scope",
        "http",
        "outside.up.test",
        "http",
        "credential_placeholder_mismatch",
        "",
    ),
    (
        "tunnel refused",
        "connect",
        "evil2.test",
        "",
        "policy_denied",
        "host_not_allowed",
    ),
    (
        "tunnel ssrf",
        "connect",
        "uncovered.up.test",
        "",
        "ssrf_denied",
        "private_address",
    ),
];

const SCRIPT: &str = r#"
import os
PH = os.environ["TOK_PH"]
results["allowed"] = brief(hc("h", "GET", "http://ok.up.test:8080/ok/x"))
results["allowed inside a tunnel"] = brief(hc("h", "GET", "https://ok.up.test/ok/x"))
results["in scope"] = brief(hc("h", "GET", "http://cred.up.test:8080/ok/x", headers=[("Authorization", "Bearer " + PH)]))
results["not allowed"] = brief(hc("h", "GET", "http://evil.test/x"))
results["deny rule"] = brief(hc("h", "GET", "http://rule.up.test:8080/admin/x"))
results["deny rule inside a tunnel"] = brief(hc("h", "GET", "https://tunnel.up.test/admin/x"))
results["ssrf"] = brief(hc("h", "GET", "http://uncovered.up.test:8080/x"))
results["lower case"] = brief(hc("h", "delete", "http://lower.up.test:8080/x"))
results["unknown provider"] = brief(hc("h", "GET", "http://auth.up.test:8080/x", headers=[("Tollgate-Auth", "Nope")]))
results["placeholder outside scope"] = brief(hc("h", "GET", "http://outside.up.test:8080/x", headers=[("Authorization", "Bearer " + PH)]))
results["tunnel refused"] = brief(connect("r", "evil2.test", 443))
results["tunnel ssrf"] = brief(connect("r", "uncovered.up.test", 443))
results["flood"] = [brief(hc("h", "GET", "http://flood.up.test:8080/admin/flood"))["status"] for _ in range(FLOOD)]
results["bypass"] = bypass(1)
results["placeholder"] = PH
"#;

/// Runs [`SCRIPT`] with `sandbox`'s extra options; (outcome, start and end in epoch ms).
fn exercise(bench: &mut Bench, sandbox: Sandbox) -> (Outcome, u128, u128) {
    let names = [
        "ok.up.test",
        "cred.up.test",
        "rule.up.test",
        "tunnel.up.test",
        "lower.up.test",
        "auth.up.test",
        "outside.up.test",
        "flood.up.test",
        "uncovered.up.test=10.0.0.7",
    ];
    let policy = bench.policy(
        &names,
        &entry("\"*.up.test\"", DENY_ADMIN),
        "limits:\n  max_requests: 100\n\
auth_providers:\n  - name: Tok\n    type: bearer\n    secret: {env: TOLLGATE_SECRET_E2E_TOK}\n    scope: [http://cred.up.test:8080/ok]\n\
placeholders:\n  - {env: TOK_PH, provider: Tok}\n",
    );
    let start = now_ms();
    let outcome = bench.run(
        sandbox.supervisor_env("TOLLGATE_SECRET_E2E_TOK", SECRET),
        &policy,
        &SCRIPT.replace("FLOOD", &FLOOD.to_string()),
    );
    let end = now_ms();
    assert_ran(&outcome);
    for name in ["allowed", "allowed inside a tunnel", "in scope"] {
        assert_eq!(
            outcome.result(name)["status"],
            200,
            "{name}\n{}",
            outcome.describe()
        );
    }
    for name in REFUSALS.map(|r| r.0) {
        let status = outcome.result(name)["status"].as_u64().unwrap_or(0);
        assert!(
            (400..500).contains(&status),
            "{name} was not refused: {}",
            outcome.result(name)
        );
    }
    (outcome, start, end)
}

/// What the audit log of `outcome` holds of the team's secret and of the placeholder the
/// sandbox was given for it (the script's result `placeholder`).
fn leaked(outcome: &Outcome) -> Vec<String> {
    let placeholder = outcome
        .result("placeholder")
        .as_str()
        .unwrap_or("?")
        .to_owned();
    [SECRET.to_owned(), placeholder]
        .into_iter()
        .filter(|needle| outcome.audit_text.contains(needle.as_str()))
        .collect()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

/// The records of `outcome` other than the one that opens the trail (`sandbox`).
fn event_records(outcome: &Outcome) -> Vec<&Value> {
    outcome
        .audit
        .iter()
        .filter(|r| r["type"] != "sandbox")
        .collect()
}

#[test]
fn every_record_has_one_shape_and_every_refusal_says_why_in_the_sandboxs_words() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("audit-shape");
    let (outcome, _, _) = exercise(&mut bench, Sandbox::new());
    let execution = outcome.execution();
    let mut wrong = Vec::new();
    let mut types = BTreeMap::new();
    for record in &outcome.audit {
        let kind = record["type"].as_str().unwrap_or_default();
        *types.entry(kind.to_owned()).or_insert(0u64) += events(record);
        if !["http", "connect", "bypass_attempt", "sandbox"].contains(&kind) {
            wrong.push(format!("a record of no known type: {record}"));
        }
        if !record["time"].as_str().is_some_and(is_rfc3339_ms) {
            wrong.push(format!("time is not RFC 3339 UTC with ms: {record}"));
        }
        if record["execution"] != execution.as_str() {
            wrong.push(format!("execution is not {execution}: {record}"));
        }
        if record["team"] != "e2e" {
            wrong.push(format!("team is not e2e: {record}"));
        }
        if record.get("kind").is_some() {
            wrong.push(format!("the old field `kind` is still there: {record}"));
        }
        if kind == "http" || kind == "connect" {
            for field in PROXY_FIELDS {
                if record.get(field).is_none() {
                    wrong.push(format!("no `{field}`: {record}"));
                }
            }
        }
        if (kind == "http" || kind == "connect") && record["decision"] == "deny" {
            if record["message"]
                .as_str()
                .is_none_or(|m| m.trim().is_empty())
            {
                wrong.push(format!("a refusal without a message: {record}"));
            }
            if record["reason"].as_str().is_none_or(str::is_empty) {
                wrong.push(format!("a refusal without a reason: {record}"));
            }
        }
        if let Some(count) = record.get("count") {
            let first = record["first_time"].as_str().unwrap_or_default();
            if count.as_u64().is_none_or(|n| n < 1)
                || !is_rfc3339_ms(first)
                || first > record["time"].as_str().unwrap_or_default()
            {
                wrong.push(format!(
                    "an aggregated record needs count ≥ 1 and first_time ≤ time: {record}"
                ));
            }
        }
    }
    for kind in ["http", "connect", "bypass_attempt"] {
        if !types.contains_key(kind) {
            wrong.push(format!("no `{kind}` record at all"));
        }
    }

    // Each refusal's record carries its reason and the very sentence the sandbox was given.
    for (name, kind, host, scheme, code, reason) in REFUSALS {
        let told = outcome.result(name)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let records: Vec<&Value> = outcome
            .records(kind)
            .into_iter()
            .filter(|r| r["host"] == host && (scheme.is_empty() || r["scheme"] == scheme))
            .filter(|r| r["decision"] == "deny")
            .collect();
        if records.is_empty() {
            wrong.push(format!("{name}: no {kind} refusal record for {host}"));
        }
        for record in records {
            if !reason.is_empty() && record["reason"] != reason {
                wrong.push(format!("{name}: want reason {reason}: {record}"));
            }
            if record["error"] != code || outcome.result(name)["error"] != code {
                wrong.push(format!("{name}: want error {code}: {record}"));
            }
            if told.is_empty() || record["message"] != told.as_str() {
                wrong.push(format!(
                    "{name}: the sandbox was told {told:?}, the record says {}",
                    record["message"]
                ));
            }
        }
    }
    let outside: Vec<&Value> = outcome.http_records("outside.up.test");
    if !outside
        .iter()
        .any(|r| r["finding"] == "placeholder_outside_scope")
    {
        wrong.push(format!("no placeholder_outside_scope finding: {outside:?}"));
    }

    // The flood is there in full, in fewer records than requests.
    let flood: Vec<&Value> = outcome.http_records("flood.up.test");
    let flooded: u64 = flood.iter().map(|r| events(r)).sum();
    if flooded != FLOOD || flood.len() as u64 >= FLOOD {
        wrong.push(format!(
            "{FLOOD} identical refusals came to {} records standing for {flooded}",
            flood.len()
        ));
    }

    // Nothing secret reaches the audit log: not the secret, not the placeholder.
    for needle in leaked(&outcome) {
        wrong.push(format!("the audit log contains {needle:?}"));
    }
    assert!(
        wrong.is_empty(),
        "{}\n--- audit ---\n{}",
        wrong.join("\n"),
        outcome.audit_text
    );
}

/// The shipped schema, compiled; panics with what to do when it is missing or broken.
fn audit_schema() -> jsonschema::Validator {
    let path = repo_root().join("docs/audit.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must ship with the docs: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
}

/// Every reason `validator` refuses `records`, one line each.
fn invalid(validator: &jsonschema::Validator, records: &[&Value]) -> Vec<String> {
    records
        .iter()
        .flat_map(|record| {
            validator
                .iter_errors(record)
                .map(move |e| format!("{e} at {}: {record}", e.instance_path()))
        })
        .collect()
}

#[test]
fn every_record_of_every_type_validates_against_the_shipped_json_schema() {
    let _lock = SuiteLock::shared();
    let validator = audit_schema();
    let mut bench = Bench::new("audit-schema");
    let (outcome, _, _) = exercise(&mut bench, Sandbox::new());
    let records: Vec<&Value> = outcome.audit.iter().collect();
    let errors = invalid(&validator, &records);
    assert!(
        errors.is_empty(),
        "records the schema refuses:\n{}",
        errors.join("\n")
    );
    assert!(
        records.iter().any(|r| r.get("count").is_some()),
        "the run had aggregated records to validate:\n{}",
        outcome.audit_text
    );

    // A run without a policy: no team (null), no network, bypass records only.
    let scratch = Scratch::new("audit-schema-offline");
    let audit = scratch.output("audit.jsonl");
    let finished = Sandbox::new().audit(&audit).run([
        PYTHON,
        "-c",
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('10.0.0.1', 80))\nexcept OSError:\n    pass\n",
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let offline = read_json_lines(&audit);
    let offline_refs: Vec<&Value> = offline.iter().collect();
    assert!(
        offline.iter().any(|r| r["type"] == "bypass_attempt"),
        "{offline:?}"
    );
    for record in &offline {
        assert!(
            record.get("team").is_some_and(Value::is_null),
            "team is null without a policy: {record}"
        );
    }
    let errors = invalid(&validator, &offline_refs);
    assert!(
        errors.is_empty(),
        "records the schema refuses:\n{}",
        errors.join("\n")
    );

    // The schema holds every record to the common fields: take one away and it refuses.
    for record in event_records(&outcome)
        .into_iter()
        .chain(offline_refs.iter().copied())
    {
        for field in ["type", "time", "execution", "team"] {
            let mut without = record.clone();
            without
                .as_object_mut()
                .expect("a record is an object")
                .remove(field);
            assert!(
                !validator.is_valid(&without),
                "the schema accepts a record without `{field}`: {without}"
            );
        }
    }
}

#[test]
fn audit_format_ocsf_writes_the_same_events_as_ocsf_1_objects() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("audit-ocsf");
    let (json, _, _) = exercise(&mut bench, Sandbox::new());
    let (ocsf, start, end) = exercise(&mut bench, Sandbox::new().arg("--audit-format").arg("ocsf"));
    let mut wrong = Vec::new();
    let mut classes: BTreeMap<u64, u64> = BTreeMap::new();
    for record in &ocsf.audit {
        let class = record["class_uid"].as_u64().unwrap_or(0);
        *classes.entry(class).or_default() +=
            record.get("count").and_then(Value::as_u64).unwrap_or(1);
        let time = record["time"].as_u64().map(u128::from).unwrap_or(0);
        if !(start <= time && time <= end) {
            wrong.push(format!(
                "time is not epoch ms of the run ({start}..{end}): {record}"
            ));
        }
        if !record["metadata"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1."))
        {
            wrong.push(format!("metadata.version is not 1.x: {record}"));
        }
        if !record["metadata"]["product"].is_object() {
            wrong.push(format!("no metadata.product: {record}"));
        }
        let activity = record["activity_id"].as_u64();
        if record["category_uid"].as_u64() != Some(class / 1000)
            || activity.is_none()
            || record["type_uid"].as_u64() != activity.map(|a| class * 100 + a)
            || !record["severity_id"].is_u64()
        {
            wrong.push(format!(
                "category_uid, activity_id, type_uid (class_uid × 100 + activity_id) and \
                 severity_id are required: {record}"
            ));
        }
    }
    // The same events: as many requests and tunnels as the JSON log has, and a finding for
    // the bypass attempt and for the placeholder sent outside its scope.
    let json_events = |kind: &str| -> u64 { json.records(kind).into_iter().map(events).sum() };
    let findings = json.records("bypass_attempt").len() as u64
        + json
            .audit
            .iter()
            .filter(|r| r["finding"] == "placeholder_outside_scope")
            .count() as u64;
    for (class, want, name) in [
        (
            4002,
            json_events("http").saturating_sub(1),
            "HTTP Activity (4002)",
        ),
        (4001, json_events("connect"), "Network Activity (4001)"),
        (2004, findings, "Detection Finding (2004)"),
    ] {
        let got = classes.get(&class).copied().unwrap_or(0);
        if got < want || want == 0 {
            wrong.push(format!("{name}: {got} events, the JSON log has {want}"));
        }
    }
    for needle in leaked(&ocsf) {
        wrong.push(format!("the OCSF log contains {needle:?}"));
    }
    assert!(
        wrong.is_empty() && !ocsf.audit.is_empty(),
        "{}\n--- ocsf ---\n{}",
        wrong.join("\n"),
        ocsf.audit_text
    );
}

#[test]
fn the_summary_lists_each_refused_destination_with_its_reason_and_count() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("audit-summary");
    let policy = bench.policy(&["sum.up.test"], &entry("sum.up.test", DENY_ADMIN), "");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
for i in range(3):
    results["evil %d" % i] = brief(hc("h", "GET", "http://evil.test/a%d" % i))
for i in range(2):
    results["admin %d" % i] = brief(hc("h", "GET", "http://sum.up.test:8080/admin/%d" % i))
results["tunnel"] = brief(connect("r", "evil.test", 443))
results["allowed"] = brief(hc("h", "GET", "http://sum.up.test:8080/ok/x"))
"#,
    );
    assert_eq!(outcome.finished.code(), 0, "{}", outcome.describe());
    assert_eq!(outcome.result("allowed")["status"], 200);
    let refused = outcome.summary["proxy"]["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("no proxy.refused list: {}", outcome.summary_text));
    assert_eq!(refused.len(), 3, "{}", outcome.summary_text);
    let want = [
        ("http://evil.test:80", "host_not_allowed", 3),
        ("http://sum.up.test:8080", "l7_denied", 2),
        ("evil.test:443", "host_not_allowed", 1),
    ];
    for (entry, (destination, reason, count)) in refused.iter().zip(want) {
        assert!(
            entry["destination"]
                .as_str()
                .is_some_and(|d| d == destination || d.ends_with(&format!("://{destination}"))),
            "want {destination}: {entry}\n{}",
            outcome.summary_text
        );
        assert_eq!(entry["reason"], reason, "{entry}");
        assert_eq!(entry["count"], count, "{entry}");
    }
    assert!(
        outcome.summary.get("violation").is_some_and(Value::is_null),
        "violation is present and null when nothing was ended: {}",
        outcome.summary_text
    );
}
