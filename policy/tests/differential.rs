//! The native verdict against its specification, the built-in Rego module, on a generated
//! corpus: random policies × random requests × destinations, every decision made both ways
//! (`Policy::decide` and `Policy::decide_by_rego`) and required to be identical, reason,
//! rule, address and message included.
//!
//! The crate's other decision tests go through the same check (tests/common), so every case
//! they write by hand is a differential case too; this one adds what nobody wrote down. The
//! corpus is generated from a fixed seed, so the reasons it reaches are the same on every
//! run, and the test requires it to reach every reason the module can answer.

mod common;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use tollgate_policy::rego::BUILTIN_MODULE;
use tollgate_policy::url::{NormalizedUrl, UrlHost};
use tollgate_policy::{Destination, HostAddresses, Policy, Reason, Request};

/// Names that overlap: exact names, and the names `*.` and `**.` patterns of the same
/// domains do and do not match.
const NAMES: [&str; 5] = [
    "a.example.com",
    "b.example.com",
    "x.a.example.com",
    "y.x.a.example.com",
    "other.example.org",
];
const PATTERNS: [&str; 8] = [
    "a.example.com",
    "b.example.com",
    "x.a.example.com",
    "*.example.com",
    "**.example.com",
    "*.a.example.com",
    "**.a.example.com",
    "10.1.2.3",
];
const PORTS: [u16; 3] = [80, 443, 8080];
const METHODS: [&str; 12] = [
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "PROPFIND", "get", "Post",
    "CONNECT", "GET",
];
/// Ordinary paths, prefixes' boundaries, each hazard of URL normalisation, and hazards
/// together (which one is named depends on the order of the checks).
const PATHS: [&str; 21] = [
    "/",
    "/v1",
    "/v1/items/1",
    "/v10",
    "/admin/x",
    "/ADMIN/x",
    "/v1/../admin/x",
    "/v1/a%2Fb",
    "/v1/a;b",
    "/admin;x/y",
    "/v1/%2541",
    "/v1/a./b",
    "/admin./x",
    "/items/42",
    "/items/a/b",
    "/V1/Items",
    "/v1/a%2Fb;c",
    "/v1/%2541./x",
    "/admin;x/a%2Fb.",
    "/v1/a;b/%2541",
    "/items/a%2F%25.;",
];
const RULE_PATHS: [&str; 5] = ["/v1/**", "/v1/*", "/admin/**", "/items/*", "/**"];
const RULE_METHODS: [&str; 4] = ["GET", "POST", "DELETE", "*"];
const ALLOWED_IPS: [&str; 3] = [
    "[10.1.0.0/16]",
    "[10.1.2.3/32, fd00::/8]",
    "[192.168.0.0/16]",
];
/// Public, internal (covered by some `allowed_ips` and not), always blocked, the node's own
/// (see [`node`]), IPv6 of each kind.
const ADDRESSES: [&str; 10] = [
    "93.184.216.34",
    "10.1.2.3",
    "10.9.9.9",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",
    "93.184.216.35",
    "2606:4700::1",
    "fd00::1",
    "::ffff:127.0.0.1",
];

/// The node the decisions are made on: one public and one internal address of its own.
fn node() -> HostAddresses {
    let mut node = HostAddresses::none();
    node.insert("93.184.216.35".parse().unwrap());
    node.insert("10.9.9.9".parse().unwrap());
    node
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn list(items: Vec<String>) -> String {
    format!("[{}]", items.join(", "))
}

fn rules(key: &'static str) -> impl Strategy<Value = String> {
    proptest::option::of(proptest::collection::vec(
        (pick(&RULE_METHODS), pick(&RULE_PATHS)),
        0..3,
    ))
    .prop_map(move |rules| match rules {
        None => String::new(),
        Some(rules) => {
            let rules: Vec<String> = rules
                .into_iter()
                .map(|(method, path)| format!("{{method: \"{method}\", path: \"{path}\"}}"))
                .collect();
            format!("      {key}: {}\n", list(rules))
        }
    })
}

/// One `network.allow` entry, short or long form, as YAML list items.
fn entry() -> impl Strategy<Value = String> {
    let short = (
        pick(&["http", "https"]),
        pick(&NAMES[..4]),
        proptest::option::of(pick(&PORTS)),
        pick(&["", "/v1", "/v1/items", "/admin"]),
    )
        .prop_map(|(scheme, host, port, path)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("    - {scheme}://{host}{port}{path}\n")
        });
    let long = (
        (
            pick(&PATTERNS),
            proptest::option::of(proptest::sample::subsequence(PORTS.to_vec(), 1..=3)),
            proptest::option::of(proptest::sample::subsequence(vec!["http", "https"], 1..=2)),
            proptest::option::of(pick(&["read-only", "read-write", "full"])),
        ),
        (rules("rules"), rules("deny_rules")),
        proptest::option::of(pick(&ALLOWED_IPS)),
        proptest::array::uniform4(any::<bool>()),
    )
        .prop_map(
            |((host, ports, schemes, access), (rules, deny_rules), ips, hazards)| {
                let mut yaml = format!("    - host: \"{host}\"\n");
                if let Some(ports) = ports {
                    let ports = ports.iter().map(u16::to_string).collect();
                    yaml += &format!("      ports: {}\n", list(ports));
                }
                if let Some(schemes) = schemes {
                    let schemes = schemes.iter().map(|s| s.to_string()).collect();
                    yaml += &format!("      schemes: {}\n", list(schemes));
                }
                if let Some(access) = access {
                    yaml += &format!("      access: {access}\n");
                }
                yaml += &rules;
                yaml += &deny_rules;
                if let Some(ips) = ips {
                    yaml += &format!("      allowed_ips: {ips}\n");
                }
                let switches = [
                    "allow_encoded_slash",
                    "allow_path_parameters",
                    "allow_encoded_percent",
                    "allow_trailing_dot",
                ];
                for (switch, on) in switches.iter().zip(hazards) {
                    if on {
                        yaml += &format!("      {switch}: true\n");
                    }
                }
                yaml
            },
        );
    prop_oneof![short, long]
}

/// A whole policy: no network section, `allow_all`, or an allow list (possibly empty), with
/// `block_private_ips` on or off.
fn policy() -> impl Strategy<Value = String> {
    let head = "version: 1\nteam: diff\n";
    prop_oneof![
        1 => Just(head.to_owned()),
        2 => any::<bool>().prop_map(move |block| format!(
            "{head}network:\n  allow_all: true\n  block_private_ips: {block}\n"
        )),
        8 => (any::<bool>(), proptest::collection::vec(entry(), 0..6)).prop_map(
            move |(block, entries)| {
                let allow = if entries.is_empty() {
                    "  allow: []\n".to_owned()
                } else {
                    format!("  allow:\n{}", entries.concat())
                };
                format!("{head}network:\n  block_private_ips: {block}\n{allow}")
            }
        ),
    ]
}

/// A request as the proxy hands it over: method, scheme, host, port, path; and sometimes its
/// host replaced by a spelling that is not in normal form (the fields are public, so a
/// caller can build one), which matching must see through the same way.
#[derive(Debug, Clone)]
struct Asked {
    method: &'static str,
    scheme: &'static str,
    host: &'static str,
    port: Option<u16>,
    path: &'static str,
    respelt: Option<UrlHost>,
}

/// Hosts in other spellings than the parser gives.
fn respelt() -> impl Strategy<Value = Option<UrlHost>> {
    let domain = |name: &str| UrlHost::Domain(name.to_owned());
    proptest::option::weighted(
        0.1,
        pick(&[0, 1, 2, 3, 4]).prop_map(move |i| match i {
            0 => domain("A.Example.COM."),
            1 => domain("x.a.example.com."),
            2 => domain("10.1.2.3"),
            3 => domain("0x0a.1.2.3"),
            _ => UrlHost::Ip("::ffff:10.1.2.3".parse().unwrap()),
        }),
    )
}

fn asked() -> impl Strategy<Value = Asked> {
    (
        pick(&METHODS),
        pick(&["http", "https"]),
        pick(&[
            "a.example.com",
            "b.example.com",
            "x.a.example.com",
            "y.x.a.example.com",
            "other.example.org",
            "10.1.2.3",
            "A.Example.COM.",
        ]),
        proptest::option::of(pick(&PORTS)),
        pick(&PATHS),
        respelt(),
    )
        .prop_map(|(method, scheme, host, port, path, respelt)| Asked {
            method,
            scheme,
            host,
            port,
            path,
            respelt,
        })
}

fn destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        1 => Just(Destination::Unresolved),
        1 => Just(Destination::Resolved(vec![])),
        6 => proptest::collection::vec(pick(&ADDRESSES), 1..4).prop_map(|addresses| {
            Destination::Resolved(addresses.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect())
        }),
    ]
}

/// Decides `asked` both ways (the check is in [`common::decide`]) and returns the reason.
fn decide(policy: &Policy, asked: &Asked, destination: &Destination) -> Option<Reason> {
    let connect = asked.method == "CONNECT";
    let authority = match asked.port {
        Some(port) => format!("{}:{port}", asked.host),
        None => asked.host.to_owned(),
    };
    let scheme = if connect { "https" } else { asked.scheme };
    let path = if connect { "/" } else { asked.path };
    let mut url = NormalizedUrl::from_parts(scheme, &authority, path).ok()?;
    if let Some(host) = &asked.respelt {
        url.host = host.clone();
    }
    let request = Request {
        method: asked.method,
        url: &url,
        connect,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    Some(common::decide(policy, &request, destination, &node()).reason)
}

/// The reasons the built-in module can answer: each `refuse("…")` and `refuse_address("…")`
/// it spells, the three near misses, and `allowed`, except `policy_error`, its last resort,
/// which no well-formed input reaches (the unit tests of rego.rs feed it ill-formed ones).
fn builtin_reasons() -> BTreeSet<&'static str> {
    let mut words = BTreeSet::from([
        "allowed",
        "scheme_not_allowed",
        "port_not_allowed",
        "path_not_allowed",
    ]);
    for call in ["refuse(\"", "refuse_address(\""] {
        for (at, _) in BUILTIN_MODULE.match_indices(call) {
            let rest = &BUILTIN_MODULE[at + call.len()..];
            words.insert(&rest[..rest.find('"').unwrap()]);
        }
    }
    words.remove("policy_error");
    words
}

#[test]
fn the_native_verdict_is_the_rego_modules_on_a_generated_corpus() {
    let seen = Mutex::new(BTreeSet::new());
    let decided = std::sync::atomic::AtomicUsize::new(0);
    let config = Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    };
    let cases = (
        policy(),
        proptest::collection::vec((asked(), destination()), 1..40),
    );
    TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    )
    .run(&cases, |(yaml, requests)| {
        // Generated combinations the validator refuses (a rule on an entry it does not
        // allow, say) are simply not cases.
        let Ok(policy) = Policy::from_yaml("diff.yaml", &yaml) else {
            return Ok(());
        };
        for (asked, destination) in &requests {
            if let Some(reason) = decide(&policy, asked, destination) {
                seen.lock().unwrap().insert(reason.as_str());
                decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    })
    .unwrap();
    let seen: BTreeSet<&str> = seen.into_inner().unwrap();
    let decided = decided.into_inner();
    assert!(decided >= 5000, "only {decided} decisions were made");
    let missing: Vec<&str> = builtin_reasons()
        .into_iter()
        .filter(|r| !seen.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "the corpus never reached {missing:?} (reached {seen:?})"
    );
    // Outside the module, but decided on the way: a lower-case method.
    assert!(seen.contains("method_not_uppercase"), "{seen:?}");
}

/// Policies that do not load are skipped above; the corpus must still be mostly policies.
#[test]
fn most_generated_policies_load() {
    let mut runner = TestRunner::deterministic();
    let (mut loaded, total) = (0, 200);
    for _ in 0..total {
        let yaml = policy().new_tree(&mut runner).unwrap().current();
        loaded += usize::from(Policy::from_yaml("diff.yaml", &yaml).is_ok());
    }
    assert!(
        loaded * 10 >= total * 7,
        "only {loaded} of {total} policies load"
    );
}
