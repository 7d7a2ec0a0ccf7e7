//! Cost of one decision whose team module runs in a team-rules worker process (what the
//! supervisor does, `team_rules`), beside the same decision with the module in this process
//! (what the policy crate's `decision` benchmark measures): the 50-entry allow list and the
//! small team module of `policy/benches/decision.rs`, allowed by the last entry.
//!
//! Run (release, with the release `tollgate` binary as the worker):
//!   cargo build --release -p tollgate --bin tollgate --example team_rules_bench
//!   target/release/examples/team_rules_bench target/release/tollgate

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Destination, HostAddresses, Policy, Request};

fn fifty_entries_and_a_team_module() -> String {
    let mut yaml = String::from("version: 1\nteam: bench\nnetwork:\n  allow:\n");
    for i in 0..25 {
        yaml.push_str(&format!("    - https://api{i}.example.com/v1\n"));
        yaml.push_str(&format!(
            "    - host: \"*.svc{i}.example.net\"\n      ports: [443]\n      access: read-write\n      rules:\n        - {{method: GET, path: \"/items/**\"}}\n        - {{method: POST, path: \"/items/*\"}}\n      deny_rules:\n        - {{method: \"*\", path: \"/admin/**\"}}\n"
        ));
    }
    yaml.push_str("rego: |\n  package tollgate.team\n  import rego.v1\n  deny contains \"no deletes\" if input.request.method == \"DELETE\"\n  deny contains \"no debug\" if \"debug\" in input.request.query_keys\n  set_headers[\"X-Team\"] := input.team\n");
    yaml
}

/// Median over `batches` of the mean time of one decision in a batch of `per_batch`, in µs.
fn measure(policy: &Policy, batches: usize, per_batch: usize) -> f64 {
    let url = NormalizedUrl::parse("https://a.svc24.example.net/items/42?page=2").expect("URL");
    let addresses: Vec<IpAddr> = vec!["93.184.216.34".parse().expect("address")];
    let node = HostAddresses::none();
    let decide = || {
        let request = Request {
            method: "GET",
            url: &url,
            connect: false,
            header_names: &[],
            credential: None,
            quotas: &[],
        };
        let decision = policy.decide(&request, &Destination::Resolved(addresses.clone()), &node);
        assert!(decision.allow, "{}", decision.message);
    };
    for _ in 0..per_batch {
        decide();
    }
    let mut means: Vec<f64> = (0..batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                decide();
            }
            started.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

fn main() {
    let worker: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/tollgate"));
    let text = fifty_entries_and_a_team_module();
    let path = std::env::temp_dir().join(format!("team-rules-bench-{}.yaml", std::process::id()));
    std::fs::write(&path, &text).expect("write the bench policy");
    // Loading: the module compiled here, or by a worker process started for it.
    let median_ms = |load: &dyn Fn() -> Policy| {
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                let started = Instant::now();
                drop(load());
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let load_local = median_ms(&|| Policy::from_yaml("bench.yaml", &text).expect("loads"));
    let load_worker =
        median_ms(&|| tollgate::team_rules::load_with_worker(&path, &worker).expect("loads"));
    println!("| load, module compiled in this process | {load_local:.2} ms |");
    println!("| load, module compiled by a worker process | {load_worker:.2} ms |");
    let in_process = Policy::from_yaml("bench.yaml", &text).expect("the bench policy loads");
    let isolated =
        tollgate::team_rules::load_with_worker(&path, &worker).expect("the bench policy loads");
    let _ = std::fs::remove_file(&path);
    let (batches, per_batch) = (30, 2000);
    let local = measure(&in_process, batches, per_batch);
    let worker_us = measure(&isolated, batches, per_batch);
    println!("| 50 entries + team module, in this process | {local:.1} µs |");
    println!("| 50 entries + team module, in a worker process | {worker_us:.1} µs |");
    println!("ratio: {:.2}x", worker_us / local);
}
