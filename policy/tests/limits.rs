//! The execution's limits: `limits.memory`, `limits.cpu` and `limits.processes`, passthrough
//! tunnels (`max_tunnel_bytes`, `max_tunnel_duration`) and refusals (`max_denied`,
//! `on_violation`): the defaults, the spellings, and every refusal with the line it points at.

use std::time::Duration;
use tollgate_policy::model::Limits;
use tollgate_policy::schema::OnViolation;
use tollgate_policy::units::Cores;
use tollgate_policy::Policy;

const HEAD: &str = "version: 1\nteam: acme\n";

fn load(limits: &str) -> Result<Policy, tollgate_policy::PolicyErrors> {
    Policy::from_yaml("team.yaml", &format!("{HEAD}limits:\n{limits}"))
}

/// Asserts the policy is refused with an error at `line` whose message contains `needle`.
#[track_caller]
fn assert_refused(limits: &str, line: usize, needle: &str) {
    let errors = match load(limits) {
        Ok(_) => panic!("limits should be refused:\n{limits}"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .errors
            .iter()
            .any(|e| e.line == Some(line) && e.message.contains(needle)),
        "expected {needle:?} at line {line}, got:\n{errors}"
    );
}

#[test]
fn defaults_are_one_gib_unlimited_cpu_and_1024_processes() {
    let policy = Policy::from_yaml("team.yaml", HEAD).expect("minimal policy");
    assert_eq!(policy.limits.memory, 1 << 30);
    assert_eq!(policy.limits.cpu, None);
    assert_eq!(policy.limits.processes, 1024);
    // Setting one network limit keeps the execution defaults.
    let policy = load("  max_requests: 3\n").expect("policy");
    assert_eq!(policy.limits.memory, 1 << 30);
    assert_eq!(policy.limits.processes, 1024);
}

#[test]
fn sizes_cores_and_counts_are_read_as_written() {
    let policy = load("  memory: 256MiB\n  cpu: 1.5\n  processes: 64\n").expect("policy");
    assert_eq!(policy.limits.memory, 256 << 20);
    assert_eq!(policy.limits.cpu, Some(Cores::parse("1.5").unwrap()));
    assert_eq!(policy.limits.processes, 64);
    let policy = load("  memory: 536870912\n  cpu: 2\n").expect("policy");
    assert_eq!(policy.limits.memory, 512 << 20);
    assert_eq!(policy.limits.cpu.map(Cores::millicores), Some(2000));
    let policy = load("  cpu: 0.01\n").expect("the smallest quota");
    assert_eq!(policy.limits.cpu.map(Cores::millicores), Some(10));
}

#[test]
fn limits_out_of_range_are_refused_with_their_line() {
    assert_refused("  memory: 1MiB\n", 4, "at least 4MiB");
    assert_refused("  memory: lots\n", 4, "unknown size unit");
    assert_refused("  memory: -1\n", 4, "negative");
    assert_refused("  cpu: 0\n", 4, "share of CPU time");
    assert_refused("  cpu: -1\n", 4, "share of CPU time");
    assert_refused("  cpu: 0.001\n", 4, "between 0.01 and 4096");
    assert_refused("  cpu: 100000\n", 4, "between 0.01 and 4096");
    assert_refused("  cpu: .nan\n", 4, "share of CPU time");
    assert_refused("  cpu: two\n", 4, "expected f64");
    assert_refused("  processes: 0\n", 4, "at least 2");
    assert_refused("  processes: 1\n", 4, "tollgate's init and the command");
    assert_refused("  processes: -5\n", 4, "");
    assert_refused("  memroy: 1GiB\n", 4, "unknown field `memroy`");
}

#[test]
fn the_schema_describes_the_execution_limits() {
    let schema = serde_json::to_value(schemars::schema_for!(tollgate_policy::schema::PolicyFile))
        .expect("schema");
    let limits = &schema["$defs"]["LimitsSection"]["properties"];
    assert_eq!(limits["memory"]["$ref"], "#/$defs/ByteSize", "{limits}");
    assert_eq!(limits["cpu"]["minimum"], 0.01, "{limits}");
    assert_eq!(limits["processes"]["minimum"], 2, "{limits}");
    assert_eq!(limits["processes"]["default"], 1024, "{limits}");
}

#[test]
fn defaults_bound_tunnels_and_refusals_and_keep_running() {
    let policy = Policy::from_yaml("team.yaml", HEAD).expect("minimal policy");
    assert_eq!(policy.limits.max_tunnel_bytes, 1 << 30);
    assert_eq!(policy.limits.max_tunnel_duration, Duration::from_secs(600));
    assert_eq!(policy.limits.max_denied, 100);
    assert_eq!(policy.limits.on_violation, OnViolation::Continue);
    // `Limits::default()` is a policy that sets none.
    assert_eq!(Limits::default(), policy.limits);
    let policy = load("  max_requests: 3\n").expect("policy");
    assert_eq!(policy.limits.max_denied, 100);
    assert_eq!(policy.limits.max_tunnel_bytes, 1 << 30);
}

#[test]
fn the_new_limits_are_read_as_written() {
    let policy = load(
        "  max_tunnel_bytes: 64KiB\n  max_tunnel_duration: 90s\n  max_denied: 1\n  on_violation: kill\n",
    )
    .expect("policy");
    assert_eq!(policy.limits.max_tunnel_bytes, 64 << 10);
    assert_eq!(policy.limits.max_tunnel_duration, Duration::from_secs(90));
    assert_eq!(policy.limits.max_denied, 1);
    assert_eq!(policy.limits.on_violation, OnViolation::Kill);
    assert_eq!(policy.limits.on_violation.as_str(), "kill");
    let policy =
        load("  max_tunnel_bytes: 1\n  max_tunnel_duration: 1s\n  on_violation: continue\n")
            .expect("the smallest values");
    assert_eq!(policy.limits.max_tunnel_bytes, 1);
    assert_eq!(policy.limits.on_violation, OnViolation::Continue);
}

#[test]
fn bad_values_are_refused_with_their_line() {
    assert_refused("  max_denied: 0\n", 4, "max_denied must be at least 1");
    assert_refused("  max_denied: -1\n", 4, "");
    assert_refused("  max_denied: lots\n", 4, "");
    assert_refused(
        "  max_tunnel_bytes: 0\n",
        4,
        "max_tunnel_bytes must be at least 1 byte",
    );
    assert_refused("  max_tunnel_bytes: 1 parsec\n", 4, "unknown size unit");
    assert_refused("  max_tunnel_duration: 0s\n", 4, "at least 1s");
    assert_refused("  max_tunnel_duration: 500ms\n", 4, "at least 1s");
    assert_refused("  max_tunnel_duration: 10\n", 4, "10s");
    assert_refused("  on_violation: stop\n", 4, "`continue`");
    assert_refused("  on_violation: stop\n", 4, "`kill`");
    assert_refused("  on_violation: Kill\n", 4, "unknown variant");
    assert_refused("  on_violaton: kill\n", 4, "unknown field `on_violaton`");
}

#[test]
fn the_schema_describes_the_tunnel_and_refusal_limits() {
    let schema = serde_json::to_value(schemars::schema_for!(tollgate_policy::schema::PolicyFile))
        .expect("schema");
    let limits = &schema["$defs"]["LimitsSection"]["properties"];
    assert_eq!(
        limits["max_tunnel_bytes"]["$ref"], "#/$defs/ByteSize",
        "{limits}"
    );
    assert_eq!(limits["max_tunnel_bytes"]["default"], "1GiB", "{limits}");
    assert_eq!(
        limits["max_tunnel_duration"]["$ref"], "#/$defs/Duration",
        "{limits}"
    );
    assert_eq!(limits["max_tunnel_duration"]["default"], "10m", "{limits}");
    assert_eq!(limits["max_denied"]["minimum"], 1, "{limits}");
    assert_eq!(limits["max_denied"]["default"], 100, "{limits}");
    assert_eq!(limits["on_violation"]["default"], "continue", "{limits}");
    let on_violation = &schema["$defs"]["OnViolation"];
    assert!(
        on_violation.to_string().contains("\"kill\""),
        "{on_violation}"
    );
    let entry = &schema["$defs"]["AllowEntrySection"]["properties"];
    for opt_in in [
        "allow_encoded_slash",
        "allow_path_parameters",
        "allow_encoded_percent",
        "allow_trailing_dot",
        "websocket",
    ] {
        assert_eq!(entry[opt_in]["type"], "boolean", "{opt_in}: {entry}");
        assert_eq!(entry[opt_in]["default"], false, "{opt_in}: {entry}");
    }
}
