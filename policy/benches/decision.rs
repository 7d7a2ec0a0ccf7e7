//! Cost of one decision: URL normalisation, native matching, address classification and the
//! verdict, with a 50-entry allow list, without and with a small team module. Each decision
//! is measured twice, with the native verdict (what the proxy runs) and with the built-in
//! Rego module it implements (`… (rego)`, `Policy::decide_by_rego`), side by side; and the
//! parts: matching alone, URL normalisation alone, and loading the policy.
//!
//! Run: `cargo bench -p tollgate-policy --bench decision`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::net::IpAddr;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Decision, Destination, HostAddresses, Policy, Request};

fn fifty_entries() -> String {
    let mut yaml = String::from("version: 1\nteam: bench\nnetwork:\n  allow:\n");
    for i in 0..25 {
        yaml.push_str(&format!("    - https://api{i}.example.com/v1\n"));
        yaml.push_str(&format!(
            "    - host: \"*.svc{i}.example.net\"\n      ports: [443]\n      access: read-write\n      rules:\n        - {{method: GET, path: \"/items/**\"}}\n        - {{method: POST, path: \"/items/*\"}}\n      deny_rules:\n        - {{method: \"*\", path: \"/admin/**\"}}\n"
        ));
    }
    yaml
}

const TEAM_MODULE: &str = "rego: |\n  package tollgate.team\n  import rego.v1\n  deny contains \"no deletes\" if input.request.method == \"DELETE\"\n  deny contains \"no debug\" if \"debug\" in input.request.query_keys\n  set_headers[\"X-Team\"] := input.team\n";

/// A plain GET of `url`: no headers, credential or quotas.
fn get(url: &NormalizedUrl) -> Request<'_> {
    Request {
        method: "GET",
        url,
        connect: false,
        header_names: &[],
        credential: None,
        quotas: &[],
    }
}

type Decide = fn(&Policy, &Request, &Destination, &HostAddresses) -> Decision;

fn decide_once(decide: Decide, policy: &Policy, url: &str, addresses: &[IpAddr]) -> bool {
    let url = NormalizedUrl::parse(url).expect("valid URL");
    let request = get(&url);
    decide(
        policy,
        &request,
        &Destination::Resolved(addresses.to_vec()),
        &HostAddresses::none(),
    )
    .allow
}

fn bench(c: &mut Criterion) {
    let plain = Policy::from_yaml("bench.yaml", &fifty_entries()).expect("bench policy loads");
    let team = Policy::from_yaml("bench.yaml", &(fifty_entries() + TEAM_MODULE))
        .expect("bench policy loads");
    let public: Vec<IpAddr> = vec!["93.184.216.34".parse().unwrap()];
    // The last entries, so every entry before them is tried first.
    let late_url = "https://a.svc24.example.net/items/42?page=2";
    let verdicts: [(&str, Decide); 2] = [("", Policy::decide), (" (rego)", Policy::decide_by_rego)];
    for (_, decide) in verdicts {
        assert!(decide_once(decide, &plain, late_url, &public));
        assert!(decide_once(decide, &team, late_url, &public));
    }
    let mut group = c.benchmark_group("decision");
    for (suffix, decide) in verdicts {
        group.bench_function(format!("50 entries, allowed (last entry){suffix}"), |b| {
            b.iter(|| decide_once(decide, &plain, black_box(late_url), &public))
        });
        group.bench_function(format!("50 entries, denied (no entry){suffix}"), |b| {
            b.iter(|| {
                decide_once(
                    decide,
                    &plain,
                    black_box("https://unknown.example.org/x"),
                    &public,
                )
            })
        });
        group.bench_function(format!("50 entries + team module, allowed{suffix}"), |b| {
            b.iter(|| decide_once(decide, &team, black_box(late_url), &public))
        });
    }
    group.bench_function("URL normalisation only", |b| {
        b.iter(|| NormalizedUrl::parse(black_box(late_url)).is_ok())
    });
    let url = NormalizedUrl::parse(late_url).expect("valid URL");
    let request = get(&url);
    group.bench_function("50 entries, matching only (last entry)", |b| {
        b.iter(|| plain.match_request(black_box(&request)).index)
    });
    let yaml = fifty_entries();
    group.bench_function("policy load, 50 entries", |b| {
        b.iter(|| Policy::from_yaml("bench.yaml", black_box(&yaml)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
