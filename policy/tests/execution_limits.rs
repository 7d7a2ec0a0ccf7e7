//! `limits.memory`, `limits.cpu` and `limits.processes`: the defaults, the spellings, and
//! every refusal with the line it points at.

use tollgate_policy::units::Cores;
use tollgate_policy::Policy;

const HEAD: &str = "version: 1\nteam: acme\n";

fn load(limits: &str) -> Result<Policy, tollgate_policy::PolicyErrors> {
    Policy::from_yaml("team.yaml", &format!("{HEAD}limits:\n{limits}"))
}

/// Asserts the policy is refused with an error at `line` whose message contains `needle`.
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
fn the_schema_describes_the_new_limits() {
    let schema = serde_json::to_value(schemars::schema_for!(tollgate_policy::schema::PolicyFile))
        .expect("schema");
    let limits = &schema["$defs"]["LimitsSection"]["properties"];
    assert_eq!(limits["memory"]["$ref"], "#/$defs/ByteSize", "{limits}");
    assert_eq!(limits["cpu"]["minimum"], 0.01, "{limits}");
    assert_eq!(limits["processes"]["minimum"], 2, "{limits}");
    assert_eq!(limits["processes"]["default"], 1024, "{limits}");
}
