//! The `quotas` section: what loads, every refusal with its line and column, which quotas an
//! attempt takes from, and what team Rego rules see of them (`input.quotas`).

mod common;

use proptest::prelude::*;
use std::net::IpAddr;
use tollgate_policy::quotas::{
    QuotaKind, QuotaLimits, QuotaScope, QuotaStanding, Quotas, RateLimit, MAX_BYTES,
    MAX_DESTINATIONS, MAX_REQUESTS,
};
use tollgate_policy::url::{NormalizedUrl, UrlHost};
use tollgate_policy::{
    Decision, Destination, HostAddresses, Policy, PolicyErrors, Reason, Request,
};

const HEAD: &str = "version: 1\nteam: acme\n";

fn load(yaml: &str) -> Policy {
    Policy::from_yaml("team.yaml", yaml).unwrap_or_else(|e| panic!("policy should load:\n{e}"))
}

fn quotas(section: &str) -> Quotas {
    load(&format!("{HEAD}{section}")).quotas
}

fn errors(yaml: &str) -> PolicyErrors {
    match Policy::from_yaml("team.yaml", yaml) {
        Ok(_) => panic!("policy should be refused:\n{yaml}"),
        Err(errors) => errors,
    }
}

/// Asserts that the policy `HEAD + section` is refused with an error containing `needle` at
/// `line:column`, and returns the rendered errors.
fn refused_at(section: &str, line: usize, column: usize, needle: &str) -> String {
    let yaml = format!("{HEAD}{section}");
    let errors = errors(&yaml);
    let rendered = errors.to_string();
    assert!(
        errors.errors.iter().any(|e| e.line == Some(line)
            && e.column == Some(column)
            && e.message.contains(needle)),
        "expected {needle:?} at {line}:{column}, got:\n{rendered}"
    );
    rendered
}

fn host(name: &str) -> UrlHost {
    UrlHost::parse(name).unwrap()
}

#[test]
fn the_contract_example_loads_with_every_limit() {
    let quotas = quotas(
        "quotas:
  requests_per_minute: 600
  burst: 60
  requests_per_day: 50000
  bytes_per_day: 5GiB
  destinations:
    - host: api.openai.com
      requests_per_minute: 60
      burst: 10
      requests_per_day: 1000
      bytes_per_day: 1GiB
",
    );
    assert_eq!(
        quotas.team,
        QuotaLimits {
            requests_per_minute: Some(RateLimit {
                per_minute: 600,
                burst: 60
            }),
            requests_per_day: Some(50_000),
            bytes_per_day: Some(5 << 30),
        }
    );
    assert_eq!(quotas.destinations.len(), 1);
    let destination = &quotas.destinations[0];
    assert_eq!(destination.rule, "quotas.destinations[0]");
    assert_eq!(destination.host.to_string(), "api.openai.com");
    assert_eq!(
        destination.limits,
        QuotaLimits {
            requests_per_minute: Some(RateLimit {
                per_minute: 60,
                burst: 10
            }),
            requests_per_day: Some(1000),
            bytes_per_day: Some(1 << 30),
        }
    );
}

#[test]
fn no_section_and_an_empty_section_mean_no_quota() {
    assert!(load(HEAD).quotas.is_empty());
    assert!(quotas("quotas: {}\n").is_empty());
    assert!(quotas("quotas:\n").is_empty());
    assert!(quotas("quotas: {destinations: []}\n").is_empty());
    assert!(quotas("quotas: {}\n")
        .applicable(&host("api.openai.com"))
        .is_empty());
}

#[test]
fn burst_defaults_to_a_tenth_of_the_rate_and_at_least_one() {
    for (per_minute, burst) in [(600, 60), (60, 6), (15, 1), (9, 1), (1, 1), (605, 60)] {
        let quotas = quotas(&format!("quotas: {{requests_per_minute: {per_minute}}}\n"));
        assert_eq!(
            quotas.team.requests_per_minute,
            Some(RateLimit { per_minute, burst }),
            "{per_minute}"
        );
    }
    // A burst larger than the rate is a bucket size, and allowed.
    let quotas = quotas("quotas: {requests_per_minute: 10, burst: 100}\n");
    assert_eq!(
        quotas.team.requests_per_minute,
        Some(RateLimit {
            per_minute: 10,
            burst: 100
        })
    );
}

#[test]
fn byte_budgets_take_the_units_of_the_limits() {
    for (text, bytes) in [
        ("5GiB", 5u64 << 30),
        ("512KiB", 512 << 10),
        ("1MB", 1_000_000),
        ("4096", 4096),
        ("\"1024\"", 1024),
    ] {
        let quotas = quotas(&format!("quotas: {{bytes_per_day: {text}}}\n"));
        assert_eq!(quotas.team.bytes_per_day, Some(bytes), "{text}");
    }
    let most = quotas(&format!("quotas: {{bytes_per_day: {MAX_BYTES}}}\n"));
    assert_eq!(most.team.bytes_per_day, Some(MAX_BYTES));
}

#[test]
fn the_largest_counts_load() {
    let quotas = quotas(&format!(
        "quotas: {{requests_per_minute: {MAX_REQUESTS}, burst: {MAX_REQUESTS}, requests_per_day: {MAX_REQUESTS}}}\n"
    ));
    assert_eq!(
        quotas.team.requests_per_minute,
        Some(RateLimit {
            per_minute: MAX_REQUESTS,
            burst: MAX_REQUESTS
        })
    );
    assert_eq!(quotas.team.requests_per_day, Some(MAX_REQUESTS));
}

#[test]
fn zero_is_refused_at_its_key_with_what_to_do_instead() {
    for key in ["requests_per_minute", "requests_per_day"] {
        refused_at(
            &format!("quotas:\n  {key}: 0\n"),
            4,
            key.len() + 5,
            "remove the key to have no limit",
        );
    }
    refused_at(
        "quotas:\n  requests_per_minute: 5\n  burst: 0\n",
        5,
        10,
        "burst must be at least 1",
    );
    refused_at(
        "quotas:\n  bytes_per_day: 0GiB\n",
        4,
        18,
        "remove the key to have no limit",
    );
    refused_at(
        "quotas:\n  destinations:\n    - host: a.example.com\n      requests_per_day: 0\n",
        6,
        25,
        "requests_per_day must be at least 1",
    );
}

#[test]
fn numbers_that_are_not_positive_whole_numbers_are_refused_with_a_hint() {
    for (value, needle) in [
        ("-5", "-5 is negative"),
        ("1.5", "1.5 is not a whole number"),
        ("1e3", "not a whole number"),
        (".inf", "not a whole number"),
        ("\"600\"", "write a whole number without quotes"),
        ("six hundred", "write a whole number without quotes"),
        ("true", "a positive whole number"),
        ("[600]", "a positive whole number"),
        ("{per: 1}", "a positive whole number"),
        ("~", "remove the key to have no limit"),
        ("99999999999999999999", "too large"),
        ("-99999999999999999999", "negative"),
    ] {
        let section = format!("quotas:\n  requests_per_minute: {value}\n");
        let errors = errors(&format!("{HEAD}{section}"));
        let rendered = errors.to_string();
        assert!(rendered.contains(needle), "{value}: {rendered}");
        assert_eq!(errors.errors[0].line, Some(4), "{value}: {rendered}");
    }
    // An empty key is refused too, not read as "no limit".
    let errors = errors(&format!("{HEAD}quotas:\n  requests_per_day:\n  burst: 3\n"));
    assert!(
        errors
            .to_string()
            .contains("remove the key to have no limit"),
        "{errors}"
    );
}

#[test]
fn byte_budgets_that_are_not_sizes_are_refused() {
    for (value, needle) in [
        ("-1", "cannot be negative"),
        ("1.5GiB", "unknown size unit"),
        ("5TiB", "unknown size unit"),
        ("18446744073709551615GiB", "too large"),
        ("1.5", "expected a size"),
        ("~", "expected a size"),
    ] {
        let errors = errors(&format!("{HEAD}quotas:\n  bytes_per_day: {value}\n"));
        let rendered = errors.to_string();
        assert!(rendered.contains(needle), "{value}: {rendered}");
        assert_eq!(errors.errors[0].line, Some(4), "{value}: {rendered}");
    }
}

#[test]
fn counts_past_the_maximum_are_refused_and_say_the_maximum() {
    let over = MAX_REQUESTS + 1;
    for key in ["requests_per_minute", "requests_per_day"] {
        refused_at(
            &format!("quotas:\n  {key}: {over}\n"),
            4,
            key.len() + 5,
            &format!("{key} {over} is more than the most a quota counts ({MAX_REQUESTS}"),
        );
    }
    refused_at(
        &format!(
            "quotas:\n  requests_per_minute: {MAX_REQUESTS}\n  burst: {}\n",
            u64::MAX
        ),
        5,
        10,
        "is more than the most a quota counts",
    );
    refused_at(
        &format!("quotas:\n  bytes_per_day: {}\n", MAX_BYTES + 1),
        4,
        18,
        "1 PiB",
    );
    refused_at(
        "quotas:\n  bytes_per_day: 2000000GiB\n",
        4,
        18,
        "more than the most a quota counts (1048576GiB, 1 PiB)",
    );
}

#[test]
fn a_burst_needs_a_rate_in_the_same_scope() {
    refused_at(
        "quotas:\n  requests_per_day: 5\n  burst: 3\n",
        5,
        10,
        "set requests_per_minute in the same place",
    );
    // The team's rate does not make a destination's burst meaningful.
    let rendered = refused_at(
        "quotas:\n  requests_per_minute: 60\n  destinations:\n    - host: a.example.com\n      burst: 3\n",
        7,
        14,
        "set requests_per_minute in the same place",
    );
    assert!(
        rendered.starts_with("team.yaml:7:14: burst is"),
        "{rendered}"
    );
    // A lone burst gets that one error, not also "sets no limit".
    assert_eq!(rendered.lines().count(), 1, "{rendered}");
}

#[test]
fn a_burst_holds_at_most_a_day_of_its_rate() {
    let quotas = quotas("quotas: {requests_per_minute: 2, burst: 2880}\n");
    assert_eq!(quotas.team.requests_per_minute.unwrap().burst, 2880);
    refused_at(
        "quotas:\n  requests_per_minute: 2\n  burst: 2881\n",
        5,
        10,
        "burst 2881 holds more than a day of requests_per_minute (2 × 1440 = 2880)",
    );
}

#[test]
fn unknown_keys_are_refused_at_their_line() {
    refused_at(
        "quotas:\n  request_per_minute: 60\n",
        4,
        3,
        "unknown field `request_per_minute`",
    );
    refused_at(
        "quotas:\n  destinations:\n    - host: a.example.com\n      requests_per_minute: 6\n      ports: [443]\n",
        7,
        7,
        "unknown field `ports`",
    );
    refused_at(
        "quotas:\n  destinations:\n    - requests_per_minute: 6\n",
        5,
        7,
        "missing field `host`",
    );
    refused_at("quotas: [60]\n", 3, 9, "expected struct QuotasSection");
}

#[test]
fn a_destination_with_no_limit_is_refused() {
    let errors = errors(&format!(
        "{HEAD}quotas:\n  destinations:\n    - host: a.example.com\n"
    ));
    let error = &errors.errors[0];
    assert_eq!(
        (error.path.as_str(), error.line),
        ("quotas.destinations[0]", Some(5)),
        "{errors}"
    );
    assert!(
        error
            .message
            .starts_with("the quota for a.example.com sets no limit: give requests_per_minute"),
        "{errors}"
    );
}

#[test]
fn destination_hosts_use_the_allow_entry_syntax_and_its_errors() {
    for (host, needle) in [
        ("\"*\"", "would match every host"),
        ("\"**\"", "would match every host"),
        ("\"*.com\"", "top-level domain"),
        (
            "\"a.*.example.com\"",
            "wildcard must be the whole first label",
        ),
        ("https://api.openai.com", "remove the scheme and path"),
        ("api.openai.com:443", "`:port`"),
        ("user@api.openai.com", "userinfo"),
        ("\"\"", "the host pattern is empty"),
        (
            "\"*.10.0.0.1\"",
            "wildcards cannot be combined with IP addresses",
        ),
    ] {
        refused_at(
            &format!("quotas:\n  destinations:\n    - host: {host}\n      requests_per_day: 5\n"),
            5,
            13,
            needle,
        );
    }
}

#[test]
fn a_host_listed_twice_is_refused_however_it_is_spelt() {
    for second in [
        "api.openai.com",
        "API.OpenAI.com",
        "api.openai.com.",
        "\"Api.OpenAI.COM.\"",
    ] {
        refused_at(
            &format!(
                "quotas:\n  destinations:\n    - host: api.openai.com\n      requests_per_day: 5\n    - host: {second}\n      requests_per_minute: 6\n"
            ),
            7,
            13,
            "api.openai.com already has a quota (quotas.destinations[0])",
        );
    }
    // An internationalised name and its punycode are one host.
    refused_at(
        "quotas:\n  destinations:\n    - host: bücher.example\n      requests_per_day: 5\n    - host: xn--bcher-kva.example\n      requests_per_day: 6\n",
        7,
        13,
        "xn--bcher-kva.example already has a quota",
    );
    // So are an IPv4 address and its shorthand.
    refused_at(
        "quotas:\n  destinations:\n    - host: 10.0.0.1\n      requests_per_day: 5\n    - host: 10.1\n      requests_per_day: 6\n",
        7,
        13,
        "10.0.0.1 already has a quota",
    );
    // A wildcard and the exact names it covers are different quotas, and all apply.
    let quotas = quotas(
        "quotas:\n  destinations:\n    - {host: \"*.example.com\", requests_per_day: 5}\n    - {host: \"**.example.com\", requests_per_day: 6}\n    - {host: a.example.com, requests_per_day: 7}\n",
    );
    assert_eq!(quotas.destinations.len(), 3);
}

#[test]
fn too_many_destinations_are_refused() {
    let mut section = String::from("quotas:\n  destinations:\n");
    for i in 0..=MAX_DESTINATIONS {
        section.push_str(&format!(
            "    - {{host: h{i}.example.com, requests_per_day: 1}}\n"
        ));
    }
    refused_at(
        &section,
        5,
        5,
        "257 destination quotas is too many: at most 256",
    );
    let mut section = String::from("quotas:\n  destinations:\n");
    for i in 0..MAX_DESTINATIONS {
        section.push_str(&format!(
            "    - {{host: h{i}.example.com, requests_per_day: 1}}\n"
        ));
    }
    assert_eq!(quotas(&section).destinations.len(), MAX_DESTINATIONS);
}

#[test]
fn every_problem_of_the_section_is_reported_at_once() {
    let errors = errors(&format!(
        "{HEAD}quotas:\n  requests_per_minute: 0\n  burst: 0\n  destinations:\n    - host: \"*\"\n      requests_per_day: 0\n    - host: b.example.com\n"
    ));
    let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "quotas.requests_per_minute",
            "quotas.burst",
            "quotas.destinations[0].requests_per_day",
            "quotas.destinations[0].host",
            "quotas.destinations[1]",
        ],
        "{errors}"
    );
}

fn scopes(applied: &[tollgate_policy::quotas::AppliedQuota]) -> Vec<(String, QuotaKind, u64)> {
    applied
        .iter()
        .map(|q| (q.scope.label().to_owned(), q.kind, q.limit))
        .collect()
}

#[test]
fn an_attempt_takes_from_the_team_and_every_matching_destination_in_policy_order() {
    let quotas = quotas(
        "quotas:
  requests_per_minute: 600
  bytes_per_day: 5GiB
  destinations:
    - {host: \"**.example.com\", requests_per_day: 100}
    - {host: other.org, requests_per_minute: 5}
    - {host: api.example.com, requests_per_minute: 60, burst: 10, bytes_per_day: 1MiB}
    - {host: \"*.example.com\", requests_per_day: 50}
",
    );
    use QuotaKind::*;
    let team = |kind, limit| ("team".to_owned(), kind, limit);
    assert_eq!(
        scopes(&quotas.applicable(&host("API.Example.com"))),
        [
            team(RequestsPerMinute, 600),
            team(BytesPerDay, 5 << 30),
            ("**.example.com".into(), RequestsPerDay, 100),
            ("api.example.com".into(), RequestsPerMinute, 60),
            ("api.example.com".into(), BytesPerDay, 1 << 20),
            ("*.example.com".into(), RequestsPerDay, 50),
        ]
    );
    // `*.` is one label, `**.` any depth; neither matches the bare suffix.
    assert_eq!(
        scopes(&quotas.applicable(&host("a.b.example.com"))),
        [
            team(RequestsPerMinute, 600),
            team(BytesPerDay, 5 << 30),
            ("**.example.com".into(), RequestsPerDay, 100),
        ]
    );
    assert_eq!(
        scopes(&quotas.applicable(&host("example.com"))),
        [team(RequestsPerMinute, 600), team(BytesPerDay, 5 << 30)]
    );
    // An IP host matches no wildcard; the team's quotas apply to every host.
    assert_eq!(
        scopes(&quotas.applicable(&host("10.0.0.1"))),
        [team(RequestsPerMinute, 600), team(BytesPerDay, 5 << 30)]
    );
    let applied = quotas.applicable(&host("api.example.com"));
    assert_eq!(applied[0].burst, Some(60));
    assert_eq!(applied[1].burst, None);
    assert_eq!(
        applied[3].scope,
        QuotaScope::Destination {
            index: 2,
            host: "api.example.com".into()
        }
    );
    assert_eq!(
        applied[3].scope.rule(applied[3].kind),
        "quotas.destinations[2].requests_per_minute"
    );
    assert_eq!(
        applied[0].scope.rule(applied[0].kind),
        "quotas.requests_per_minute"
    );
}

#[test]
fn destinations_alone_apply_only_to_their_hosts() {
    let quotas =
        quotas("quotas:\n  destinations:\n    - {host: api.openai.com, requests_per_minute: 60}\n");
    assert!(quotas.applicable(&host("api.anthropic.com")).is_empty());
    assert_eq!(quotas.applicable(&host("api.openai.com")).len(), 1);
}

// --- input.quotas in Rego --------------------------------------------------------------

/// A team that refuses a request when a quota that applies has fewer than 10 left.
const THRIFTY: &str = "version: 1
team: acme
network:
  allow: [https://api.example.com]
quotas:
  requests_per_minute: 600
rego: |
  package tollgate.team
  import rego.v1
  deny contains msg if {
    some q in input.quotas
    q.remaining != null
    q.remaining < 10
    msg := sprintf(\"only %d of %s (%s) left: saving them\", [q.remaining, q.quota, q.scope])
  }
  deny contains \"no quota input\" if { not input.quotas }
";

fn decide_with_quotas(policy: &Policy, standings: &[QuotaStanding]) -> Decision {
    let url = NormalizedUrl::parse("https://api.example.com/v1").unwrap();
    let request = Request {
        method: "GET",
        url: &url,
        connect: false,
        header_names: &[],
        credential: None,
        quotas: standings,
    };
    let addresses: Vec<IpAddr> = vec!["140.82.112.5".parse().unwrap()];
    common::decide(
        policy,
        &request,
        &Destination::Resolved(addresses),
        &HostAddresses::none(),
    )
}

fn standing(remaining: Option<u64>) -> QuotaStanding {
    QuotaStanding {
        quota: QuotaKind::RequestsPerMinute,
        scope: "team".into(),
        limit: 600,
        remaining,
    }
}

#[test]
fn a_team_rule_can_refuse_when_little_of_a_quota_remains() {
    let policy = load(THRIFTY);
    let low = decide_with_quotas(&policy, &[standing(Some(9))]);
    assert!(!low.allow);
    assert_eq!(low.reason, Reason::TeamRule);
    assert_eq!(
        low.message,
        "only 9 of requests_per_minute (team) left: saving them"
    );
    for standings in [
        vec![standing(Some(10))],
        vec![standing(None)],
        // The array is present, and empty, when no quota applies.
        vec![],
    ] {
        let decision = decide_with_quotas(&policy, &standings);
        assert!(decision.allow, "{standings:?}: {}", decision.message);
    }
}

#[test]
fn a_team_rule_reads_every_field_of_a_standing() {
    let policy = load(
        "version: 1
team: acme
network:
  allow: [https://api.example.com]
rego: |
  package tollgate.team
  import rego.v1
  deny contains \"bytes of api.example.com\" if {
    some q in input.quotas
    q == {\"quota\": \"bytes_per_day\", \"scope\": \"api.example.com\", \"limit\": 1125899906842624, \"remaining\": 0}
  }
",
    );
    let bytes = QuotaStanding {
        quota: QuotaKind::BytesPerDay,
        scope: "api.example.com".into(),
        limit: MAX_BYTES,
        remaining: Some(0),
    };
    let decision = decide_with_quotas(&policy, &[standing(Some(5)), bytes]);
    assert_eq!(
        (decision.reason, decision.message.as_str()),
        (Reason::TeamRule, "bytes of api.example.com")
    );
}

#[test]
fn the_built_in_rules_ignore_the_quotas() {
    let policy = load(
        "version: 1\nteam: acme\nnetwork:\n  allow: [https://api.example.com]\nquotas: {requests_per_minute: 1}\n",
    );
    for standings in [vec![], vec![standing(Some(0))], vec![standing(None)]] {
        let decision = decide_with_quotas(&policy, &standings);
        assert!(decision.allow, "{standings:?}: {}", decision.message);
        assert_eq!(decision.rule.as_deref(), Some("network.allow[0]"));
    }
}

// --- properties ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Limits {
    per_minute: Option<u64>,
    burst: Option<u64>,
    per_day: Option<u64>,
    bytes: Option<u64>,
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        proptest::option::of(1..=MAX_REQUESTS),
        proptest::option::of(1..=MAX_REQUESTS),
        proptest::option::of(1..=MAX_REQUESTS),
        proptest::option::of(1..=MAX_BYTES),
    )
        .prop_map(|(per_minute, burst, per_day, bytes)| Limits {
            per_minute,
            // A burst only with a rate, and within a day of it.
            burst: per_minute
                .zip(burst)
                .map(|(rate, burst)| burst.min(rate * tollgate_policy::quotas::MAX_BURST_MINUTES)),
            per_day,
            bytes,
        })
}

fn yaml_keys(limits: &Limits, indent: &str) -> String {
    let mut text = String::new();
    for (key, value) in [
        ("requests_per_minute", limits.per_minute),
        ("burst", limits.burst),
        ("requests_per_day", limits.per_day),
        ("bytes_per_day", limits.bytes),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("{indent}{key}: {value}\n"));
        }
    }
    text
}

fn expected(limits: &Limits) -> QuotaLimits {
    QuotaLimits {
        requests_per_minute: limits.per_minute.map(|per_minute| match limits.burst {
            Some(burst) => RateLimit { per_minute, burst },
            None => RateLimit::with_default_burst(per_minute),
        }),
        requests_per_day: limits.per_day,
        bytes_per_day: limits.bytes,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_valid_section_round_trips_its_limits(
        team in limits(),
        destinations in proptest::collection::vec(
            (limits().prop_filter("a destination sets a limit", |l| {
                l.per_minute.is_some() || l.per_day.is_some() || l.bytes.is_some()
            }), proptest::bool::ANY),
            0..6,
        ),
    ) {
        let mut yaml = format!("{HEAD}quotas:\n{}  destinations:\n", yaml_keys(&team, "  "));
        for (i, (limits, wildcard)) in destinations.iter().enumerate() {
            let host = if *wildcard { format!("\"*.d{i}.example.com\"") } else { format!("d{i}.example.com") };
            yaml.push_str(&format!("    - host: {host}\n{}", yaml_keys(limits, "      ")));
        }
        let policy = Policy::from_yaml("team.yaml", &yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&policy.quotas.team, &expected(&team));
        prop_assert_eq!(policy.quotas.destinations.len(), destinations.len());
        for (i, (got, (limits, _))) in policy.quotas.destinations.iter().zip(&destinations).enumerate() {
            prop_assert_eq!(&got.limits, &expected(limits));
            prop_assert_eq!(&got.rule, &format!("quotas.destinations[{i}]"));
        }
    }

    /// Whatever is written as a quota's value, loading answers (a policy or errors with a
    /// line), and never panics.
    #[test]
    fn hostile_values_never_panic(
        key in prop::sample::select(vec!["requests_per_minute", "burst", "requests_per_day", "bytes_per_day", "host", "destinations"]),
        value in prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            "[0-9]{15,40}",
            "-[0-9]{15,40}",
            "[0-9]{1,20}(KiB|MiB|GiB|TiB|KB|B| GiB)",
            "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
            Just("~".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("\"*\"".to_owned()),
            Just("\"xn--\"".to_owned()),
        ],
        in_destination in proptest::bool::ANY,
    ) {
        let yaml = if in_destination {
            format!("{HEAD}quotas:\n  destinations:\n    - host: a.example.com\n      requests_per_day: 5\n    - host: b.example.com\n      {key}: {value}\n")
        } else {
            format!("{HEAD}quotas:\n  {key}: {value}\n")
        };
        if let Err(errors) = Policy::from_yaml("team.yaml", &yaml) {
            prop_assert!(!errors.errors.is_empty());
            prop_assert!(errors.errors.iter().all(|e| e.line.is_some()), "{}", errors);
        }
    }
}

#[test]
fn the_schema_describes_the_quotas_section() {
    let schema = serde_json::to_value(schemars::schema_for!(tollgate_policy::schema::PolicyFile))
        .expect("schema");
    let defs = &schema["$defs"];
    let section = &defs["QuotasSection"];
    assert_eq!(section["additionalProperties"], false, "{section}");
    let properties = &section["properties"];
    for key in [
        "requests_per_minute",
        "burst",
        "requests_per_day",
        "bytes_per_day",
        "destinations",
    ] {
        assert!(
            properties[key]["description"].is_string(),
            "{key}: {properties}"
        );
    }
    let count = &defs["QuotaCount"];
    assert_eq!(
        (&count["type"], &count["minimum"], &count["maximum"]),
        (
            &serde_json::json!("integer"),
            &serde_json::json!(1),
            &serde_json::json!(MAX_REQUESTS)
        ),
        "{count}"
    );
    let destination = &defs["DestinationQuotaSection"];
    assert_eq!(destination["additionalProperties"], false, "{destination}");
    assert_eq!(destination["required"], serde_json::json!(["host"]));
    assert!(
        schema["properties"]["quotas"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Redis")),
        "{}",
        schema["properties"]["quotas"]
    );
}
