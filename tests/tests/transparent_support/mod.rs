//! The bench of the transparent-egress suites (`transparent_clients.rs`, `transparent_dns.rs`,
//! `transparent_refusals.rs`) and `trust_store.rs`: the shared bench of `tollgate_tests::bench`
//! (its test host, `transparent_upstream.py`, serves the `http:PORT`, `https:PORT` and
//! `dns:PORT` services a test asks for and writes down every connection, request line and DNS
//! message it receives), the names and ports the suites use, and the client helpers of
//! `transparent_refusals_client.py` for the scripts of `transparent_dns.rs` and
//! `transparent_refusals.rs`.
//!
//! Each suite includes this directory as `mod transparent_support;`. The host's HTTPS
//! services present one leaf for every name the suites pin (see [`NAMES`]), signed by the
//! test's own CA (`network.upstream_ca`); every policy pins the names it uses to the host in
//! `network.hosts`, and `allowed_ips` covers its /30: the proxy dials only the test namespace.

#![allow(dead_code)] // each suite uses its own part of the bench

use serde_json::Value;
#[allow(unused_imports)] // each suite uses its own part of these
pub use tollgate_tests::{
    bench::Bench,
    script_run::{events, refused_events, Outcome},
};
use tollgate_tests::{script_run::ScriptRun, Scratch};

pub const CLIENT_PY: &str = include_str!("../transparent_refusals_client.py");

/// Every name the suites pin to the host, for its one leaf: the refusals and DNS suites'
/// (`allowed.test`, `other.test`, `*.allowed.test`), the clients' (`up.test`) and the trust
/// store's (`api.example.com`).
pub const NAMES: [&str; 5] = [
    "allowed.test",
    "other.test",
    "*.allowed.test",
    "up.test",
    "api.example.com",
];

/// The names the refusals and DNS suites pin, for [`bench::Bench::policy`].
pub const PINNED: [&str; 2] = ["allowed.test", "other.test"];

/// The plain HTTP port the policies allow.
pub const HTTP_PORT: u16 = 8080;
/// The HTTPS port the policies allow (the scheme's default).
pub const HTTPS_PORT: u16 = 443;
/// A plain HTTP port the host serves and no policy allows.
pub const HTTP_DENIED_PORT: u16 = 8081;
/// An HTTPS port the host serves and no policy allows.
pub const HTTPS_DENIED_PORT: u16 = 8443;

/// The services of the usual host: both allowed ports and both refused ones.
pub const WEB_SERVICES: [&str; 4] = ["http:8080", "https:443", "http:8081", "https:8443"];

/// The usual allow entries: `allowed.test` and `other.test`, each on 8080 (http) and 443
/// (https) only.
pub const ENTRIES: &str = "    - host: allowed.test
      ports: [8080, 443]
      schemes: [http, https]
      allowed_ips: [SUBNET]
    - host: other.test
      ports: [8080, 443]
      schemes: [http, https]
      allowed_ips: [SUBNET]
";

/// A host serving `services` (`http:PORT`, `https:PORT`, `dns:PORT`) with one leaf for
/// [`NAMES`]; [`Bench::run`] puts the client helpers before every script.
pub fn host(tag: &str, services: &[&str]) -> Bench {
    Bench::start(tag, &NAMES, services, CLIENT_PY)
}

/// Writes run `n`'s policy and script (the client helpers, then `script`) into `scratch`,
/// for runs that need no host.
pub fn write_run(scratch: &Scratch, n: u32, policy: &str, script: &str) -> ScriptRun {
    ScriptRun::write(scratch, n, "client", policy, CLIENT_PY, script)
}

/// Asserts the run itself went through (`tollgate_tests::script_run::assert_ran`: exit 0,
/// the client's results, nothing of the execution left behind) and nothing panicked.
pub fn assert_ran(outcome: &Outcome) {
    tollgate_tests::script_run::assert_ran(outcome);
    assert!(
        !outcome.finished.stderr.contains("panicked"),
        "something panicked\n{}",
        outcome.describe()
    );
}

/// Whether `text` is an address in the synthetic range 127.77.0.0/16.
pub fn is_synthetic(text: &str) -> bool {
    text.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.octets()[0] == 127 && a.octets()[1] == 77)
}

/// The `Tollgate-Error` header of a client result (`brief()` puts it in `error`).
pub fn tollgate_error(response: &Value) -> Option<&str> {
    response["error"].as_str()
}
