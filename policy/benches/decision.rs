//! Cost of one decision: URL normalisation, native matching, address classification and the
//! built-in Rego verdict, with a 50-entry allow list, without and with a small team module.
//!
//! Run: `cargo bench -p tollgate-policy --bench decision`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::net::IpAddr;
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Destination, HostAddresses, Policy, Request};

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

fn decide_once(policy: &Policy, url: &str, addresses: &[IpAddr]) -> bool {
    let url = NormalizedUrl::parse(url).expect("valid URL");
    let request = Request {
        method: "GET",
        url: &url,
        connect: false,
        header_names: &[],
        credential: None,
        quotas: &[],
    };
    policy
        .decide(
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
    assert!(decide_once(&plain, late_url, &public));
    assert!(decide_once(&team, late_url, &public));
    let mut group = c.benchmark_group("decision");
    group.bench_function("50 entries, allowed (last entry)", |b| {
        b.iter(|| decide_once(&plain, black_box(late_url), &public))
    });
    group.bench_function("50 entries, denied (no entry)", |b| {
        b.iter(|| decide_once(&plain, black_box("https://unknown.example.org/x"), &public))
    });
    group.bench_function("50 entries + team module, allowed", |b| {
        b.iter(|| decide_once(&team, black_box(late_url), &public))
    });
    group.bench_function("URL normalisation only", |b| {
        b.iter(|| NormalizedUrl::parse(black_box(late_url)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
