//! Every client, unmodified, through a real sandbox (#11): Node 20 (`fetch`, `http.get`,
//! `https.get`), Python `aiohttp` with its default settings, Go 1.19 (`http.DefaultClient` and a
//! bare `http.Transport`), wget with and without the proxy variables, `openssl s_client`, and
//! the clients that honour the proxy variables (curl, urllib), over plain HTTP and intercepted
//! HTTPS, to the default ports and to others.
//!
//! None of them is given a proxy flag or a CA flag. Clients that ignore the proxy variables
//! get through in transparent mode (the sandbox's stub resolver answers `up.test` with a
//! synthetic address, nftables redirects the connection to the proxy's transparent listener);
//! the execution's CA is trusted because it sits in the system trust store (wget's GnuTLS,
//! openssl with `SSL_CERT_FILE` removed) or in the variables tollgate sets
//! (`NODE_EXTRA_CA_CERTS`). Each client prints what it received; the test checks that against
//! what the upstream logged and against the audit, whose records of transparent traffic carry
//! `"transparent": true` and those of proxied traffic do not. With `--no-transparent` (or
//! `network.transparent: false`) Node's `fetch` fails at once and nothing reaches the upstream,
//! while curl still goes through the proxy variables. The upstream is the transparent suites'
//! test host (`transparent_upstream.py`, `transparent_support`), serving HTTP and HTTPS on
//! the default ports and one other port each.
//!
//! One sandbox per client family: a driver script (`transparent_clients_driver.py`) runs each
//! client command in turn and prints all their results as one JSON object. Every request has a
//! path of its own (`/w1/<case>`), so its upstream log entry and audit record are found by
//! path. A failing run lists every failing case with what it saw, not only the first.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`), and the Debian packages nodejs,
//! golang-go, python3-aiohttp, wget and openssl (`scripts/bootstrap.sh`). No packet goes anywhere
//! but loopback and the veth pair of the upstream host made here (10.201.0.0/16).

mod transparent_support;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, Sandbox, PYTHON},
    Scratch,
};
use transparent_support::{host, Bench, Outcome};

const DRIVER_PY: &str = include_str!("transparent_clients_driver.py");
const NODE_JS: &str = include_str!("transparent_clients.js");
const AIOHTTP_PY: &str = include_str!("transparent_clients_aiohttp.py");
const GO_CLIENT: &str = include_str!("transparent_clients.go");

const NODE: &str = "/usr/bin/node";
const GO: &str = "/usr/bin/go";
const WGET: &str = "/usr/bin/wget";
const OPENSSL: &str = "/usr/bin/openssl";
const CURL: &str = "/usr/bin/curl";
const ENV: &str = "/usr/bin/env";

/// The name every client asks for; pinned to the upstream in `network.hosts`.
const HOST: &str = "up.test";
/// What the upstream serves: the default ports and one other port per scheme.
const SERVICES: [&str; 4] = ["http:80", "http:8080", "https:443", "https:8443"];
/// The policy's only entry, which must decide every request here.
const RULE: &str = "network.allow[0]";
/// How long the driver lets one client run before killing it: a guard against a hang (a hung
/// client is reported as such), not a performance assertion.
const CLIENT_LIMIT: u64 = 20;

/// Python's urllib, which honours the proxy variables: `python3 -c URLLIB URL`.
const URLLIB: &str = "import sys, urllib.request
r = urllib.request.urlopen(sys.argv[1], timeout=15)
sys.stdout.write('status=%d\\n' % r.status + r.read().decode())";

/// requests, which honours the proxy variables and REQUESTS_CA_BUNDLE: `python3 -c REQUESTS URL`.
const REQUESTS: &str = "import sys, requests
r = requests.get(sys.argv[1], timeout=15)
sys.stdout.write('status=%d\\n' % r.status_code + r.text)";

// ---------------------------------------------------------------------------------------
// Cases: one client request each
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// How a case's request must reach the proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// The client ignores the proxy variables: stub resolver, synthetic address, redirect.
    Transparent,
    /// The client honours HTTP_PROXY / HTTPS_PROXY.
    ProxyVariables,
}

/// One client command and what its request must look like on the way.
struct Case {
    name: String,
    argv: Vec<String>,
    stdin: String,
    scheme: Scheme,
    port: u16,
    route: Route,
    /// Lines the client must print besides the upstream's answer.
    also_prints: Vec<String>,
}

impl Case {
    /// A case named `name` whose command `argv(url)` fetches `/w1/<name>` from `up.test`.
    fn new(
        name: &str,
        route: Route,
        scheme: Scheme,
        port: u16,
        argv: impl FnOnce(&str) -> Vec<String>,
    ) -> Case {
        let path = format!("/w1/{name}");
        let authority = if port == scheme.default_port() {
            HOST.to_owned()
        } else {
            format!("{HOST}:{port}")
        };
        let url = format!("{}://{authority}{path}", scheme.name());
        Case {
            name: name.to_owned(),
            argv: argv(&url),
            stdin: String::new(),
            scheme,
            port,
            route,
            also_prints: Vec::new(),
        }
    }

    fn path(&self) -> String {
        format!("/w1/{}", self.name)
    }

    /// What the upstream's answer to this case's request says it saw (its `saw`).
    fn answer(&self) -> String {
        format!(
            "upstream saw GET {} over {} port {}",
            self.path(),
            self.scheme.name(),
            self.port
        )
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// The bench: the test host with its CA, the client files, one sandbox per run
// ---------------------------------------------------------------------------------------

/// A host serving `up.test` on the default ports and one other port per scheme, with the
/// client files every run may use (`client.js`, `aiohttp_client.py`) in its scratch dir.
fn start(tag: &str) -> Bench {
    let bench = host(tag, &SERVICES);
    file(&bench, "client.js", NODE_JS);
    file(&bench, "aiohttp_client.py", AIOHTTP_PY);
    bench
}

/// A policy allowing `up.test` on every port the upstream serves, over http and https,
/// pinned to the upstream and trusted through its CA; `network_extra` adds lines (indented
/// two spaces) to the `network` section.
fn policy(bench: &Bench, network_extra: &str) -> String {
    let entry = format!(
        "    - host: {HOST}\n      ports: [80, 443, 8080, 8443]\n      allowed_ips: [SUBNET]\n"
    );
    bench
        .policy(&[HOST], &entry, "limits:\n  max_requests: 100\n")
        .replacen("network:\n", &format!("network:\n{network_extra}"), 1)
}

/// Writes `text` to `name` in the scratch dir, readable by the sandbox; its path.
fn file(bench: &Bench, name: &str, text: &str) -> String {
    let path = bench.scratch.file(name, text);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    path.display().to_string()
}

fn path_of(bench: &Bench, name: &str) -> String {
    bench.scratch.dir.join(name).display().to_string()
}

/// Runs every case in one `tollgate run` (`sandbox` plus the policy, audit and summary): the
/// driver is the run's script, the cases its argument.
fn run(bench: &mut Bench, sandbox: Sandbox, policy: &str, cases: &[Case]) -> Outcome {
    let run = bench.write_run(policy, "", DRIVER_PY);
    let list: Vec<Value> = cases
        .iter()
        .map(|case| {
            json!({"name": case.name, "argv": case.argv, "stdin": case.stdin,
                   "limit": CLIENT_LIMIT})
        })
        .collect();
    let cases_file = bench.scratch.dir.join(format!("cases{}.json", run.n));
    fs::write(&cases_file, Value::from(list).to_string()).unwrap();
    fs::set_permissions(&cases_file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = run.sandbox(sandbox).timeout("600s").command([
        PYTHON,
        run.script_arg(),
        cases_file.to_str().unwrap(),
    ]);
    let limit = Duration::from_secs(CLIENT_LIMIT * cases.len() as u64 + 60);
    let finished = output(&mut command, Some(b""), limit);
    bench.outcome(&run, finished)
}

/// The upstream's log entries for `path`.
fn received(bench: &Bench, path: &str) -> Vec<Value> {
    bench
        .events_of("request")
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// Compiles `transparent_clients.go` with Debian's Go 1.19 on the host, into `dir` (root's,
/// 0755: the sandbox may run it, not change it). Build cache and GOPATH go in a root-only
/// directory of `scratch`, removed with it; GO111MODULE=off and GOPROXY=off, so nothing is
/// fetched; CGO_ENABLED=0, so the program resolves names with Go's own resolver.
fn build_go_client(scratch: &Scratch, dir: &Path) -> PathBuf {
    let work = scratch.output("go");
    fs::create_dir_all(&work).unwrap();
    let source = work.join("client.go");
    fs::write(&source, GO_CLIENT).unwrap();
    let binary = dir.join("go-client");
    let out = Command::new(GO)
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .current_dir(&work)
        .env("GOCACHE", work.join("cache"))
        .env("GOPATH", work.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOENV", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run /usr/bin/go (scripts/bootstrap.sh installs golang-go)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Problems of one run, by case ("" for the run as a whole).
#[derive(Default)]
struct Problems(BTreeMap<String, Vec<String>>);

impl Problems {
    fn add(&mut self, case: &str, problem: String) {
        self.0.entry(case.to_owned()).or_default().push(problem);
    }

    /// Panics listing every failing case (and the run's output) if there is any.
    fn assert_none(self, what: &str, cases: &[Case], outcome: &Outcome) {
        if self.0.is_empty() {
            return;
        }
        let passed: Vec<&str> = cases
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| !self.0.contains_key(*name))
            .collect();
        let mut text = format!("{what}: {} case(s) failed\n", self.0.len());
        for (case, problems) in &self.0 {
            let case = if case.is_empty() { "(the run)" } else { case };
            text.push_str(&format!("--- {case}\n"));
            for problem in problems {
                text.push_str(&format!("    {problem}\n"));
            }
        }
        text.push_str(&format!(
            "passed: {passed:?}\n--- audit ---\n{}\n--- tollgate ---\n{}",
            outcome.audit_text,
            outcome.finished.describe()
        ));
        panic!("{text}");
    }
}

/// Runs `cases` in one plain sandbox under the usual policy and checks every one of them
/// ([`check_cases`]).
fn assert_all_succeed(bench: &mut Bench, what: &str, cases: &[Case]) {
    let policy = policy(bench, "");
    let outcome = run(bench, Sandbox::new(), &policy, cases);
    check_cases(bench, &outcome, cases).assert_none(what, cases, &outcome);
}

/// The driver's result for `case`, or why there is none.
fn result_of<'a>(outcome: &'a Outcome, case: &Case) -> Result<&'a Value, String> {
    let result = &outcome.results[&case.name];
    if result.is_null() {
        return Err("the driver printed no result for it (did the run start?)".to_owned());
    }
    Ok(result)
}

/// What a client printed, for problem lines.
fn printed(result: &Value) -> String {
    format!(
        "stdout: {:?}; stderr: {:?}",
        result["stdout"].as_str().unwrap_or_default(),
        tail(result["stderr"].as_str().unwrap_or_default())
    )
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(600);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}

/// Checks that every case succeeded: the client exited 0 and printed the upstream's answer,
/// the upstream got exactly its one request on the right listener with `Host: up.test`, and
/// the audit has exactly one `http` record for it, allowed by [`RULE`], with `transparent`
/// set for transparent cases and absent otherwise. Then the `connect` records: one per
/// HTTPS case, per port and route. Transparent runs must show their DNS answers in the
/// summary's `dns` counters.
fn check_cases(bench: &Bench, outcome: &Outcome, cases: &[Case]) -> Problems {
    let mut problems = Problems::default();
    if outcome.results.is_null() {
        problems.add("", "the driver printed no results line".to_owned());
    }
    for case in cases {
        check_case(bench, outcome, case, &mut problems);
    }
    check_connect_records(outcome, cases, &mut problems);
    let transparent = cases
        .iter()
        .filter(|c| c.route == Route::Transparent)
        .count() as u64;
    if transparent > 0 {
        let answered = outcome.summary["dns"]["answered"].as_u64();
        if answered.is_none_or(|n| n < transparent) {
            problems.add(
                "",
                format!(
                    "the summary's dns.answered is {answered:?}, expected at least {transparent} \
                     (one A answer per transparent client); summary: {}",
                    outcome.summary
                ),
            );
        }
    }
    problems
}

fn check_case(bench: &Bench, outcome: &Outcome, case: &Case, problems: &mut Problems) {
    let name = &case.name;
    match result_of(outcome, case) {
        Err(why) => problems.add(name, why),
        Ok(result) => {
            let stdout = result["stdout"].as_str().unwrap_or_default();
            if result["hung"] == true {
                problems.add(
                    name,
                    format!("hung: killed after {CLIENT_LIMIT}s; {}", printed(result)),
                );
            } else if result["rc"] != 0 {
                problems.add(
                    name,
                    format!("exited {}; {}", result["rc"], printed(result)),
                );
            }
            if !stdout.contains(&case.answer()) {
                problems.add(
                    name,
                    format!(
                        "the upstream's answer {:?} is not in its output",
                        case.answer()
                    ),
                );
            }
            for line in &case.also_prints {
                if !stdout.contains(line.as_str()) {
                    problems.add(name, format!("it did not print {line:?}"));
                }
            }
        }
    }
    let received = received(bench, &case.path());
    match received.as_slice() {
        [request] => {
            if request["scheme"] != case.scheme.name() || request["port"] != case.port {
                problems.add(
                    name,
                    format!(
                        "the upstream got it on {}:{}, not {}:{}",
                        request["scheme"],
                        request["port"],
                        case.scheme.name(),
                        case.port
                    ),
                );
            }
            let hosts: Vec<&str> = request["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h[0] == "host")
                .filter_map(|h| h[1].as_str())
                .collect();
            let bare: Vec<&str> = hosts
                .iter()
                .map(|h| h.split(':').next().unwrap_or_default())
                .collect();
            if bare != [HOST] {
                problems.add(name, format!("the upstream got Host {hosts:?}"));
            }
        }
        other => problems.add(
            name,
            format!(
                "the upstream got {} request(s) for {}, expected 1: {other:?}",
                other.len(),
                case.path()
            ),
        ),
    }
    let records: Vec<&Value> = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" && r["path"] == case.path())
        .collect();
    let [record] = records.as_slice() else {
        problems.add(
            name,
            format!(
                "the audit has {} http record(s) for {}, expected 1",
                records.len(),
                case.path()
            ),
        );
        return;
    };
    let expected = [
        ("decision", json!("allow")),
        ("rule", json!(RULE)),
        ("host", json!(HOST)),
        ("port", json!(case.port)),
        ("scheme", json!(case.scheme.name())),
        ("status", json!(200)),
    ];
    for (field, value) in expected {
        if record[field] != value {
            problems.add(
                name,
                format!(
                    "its http record has {field} {}, expected {value}",
                    record[field]
                ),
            );
        }
    }
    check_transparent_field(name, record, case.route, problems);
}

/// `"transparent": true` on records of transparent traffic, no such field otherwise.
fn check_transparent_field(name: &str, record: &Value, route: Route, problems: &mut Problems) {
    let field = record.get("transparent");
    match route {
        Route::Transparent if field != Some(&json!(true)) => problems.add(
            name,
            format!(
                "its {} record has transparent {field:?}, expected true: {record}",
                record["type"]
            ),
        ),
        Route::ProxyVariables if field.is_some() => problems.add(
            name,
            format!(
                "its {} record has transparent {field:?}, expected no such field: {record}",
                record["type"]
            ),
        ),
        _ => {}
    }
}

/// Each HTTPS client opens one connection: one `connect` record per HTTPS case, allowed by
/// [`RULE`], counted per port and route (transparent or not).
fn check_connect_records(outcome: &Outcome, cases: &[Case], problems: &mut Problems) {
    let route_of = |record: &Value| {
        if record.get("transparent") == Some(&json!(true)) {
            Route::Transparent
        } else {
            Route::ProxyVariables
        }
    };
    let mut expected: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    for case in cases.iter().filter(|c| c.scheme == Scheme::Https) {
        *expected
            .entry((case.port, route_name(case.route)))
            .or_default() += 1;
    }
    let mut seen: BTreeMap<(u16, &str), usize> = BTreeMap::new();
    for record in outcome.audit.iter().filter(|r| r["type"] == "connect") {
        let port = record["port"].as_u64().unwrap_or(0) as u16;
        *seen
            .entry((port, route_name(route_of(record))))
            .or_default() += 1;
        for (field, value) in [
            ("decision", json!("allow")),
            ("rule", json!(RULE)),
            ("host", json!(HOST)),
            ("method", json!("CONNECT")),
        ] {
            if record[field] != value {
                problems.add(
                    "",
                    format!(
                        "a connect record has {field} {}, expected {value}: {record}",
                        record[field]
                    ),
                );
            }
        }
    }
    if seen != expected {
        problems.add(
            "",
            format!(
                "connect records by (port, route): {seen:?}, expected one per HTTPS case: \
                 {expected:?}"
            ),
        );
    }
}

fn route_name(route: Route) -> &'static str {
    match route {
        Route::Transparent => "transparent",
        Route::ProxyVariables => "proxy variables",
    }
}

// ---------------------------------------------------------------------------------------
// Tests: each client family, unmodified
// ---------------------------------------------------------------------------------------

fn node(bench: &Bench, name: &str, mode: &str, scheme: Scheme, port: u16) -> Case {
    let script = path_of(bench, "client.js");
    Case::new(name, Route::Transparent, scheme, port, |url| {
        strings(&[NODE, &script, mode, url])
    })
}

#[test]
fn node_fetch_http_get_and_https_get_reach_the_upstream_without_any_setting() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-node");
    let cases = [
        node(&bench, "node-fetch-http", "fetch", Scheme::Http, 80),
        node(&bench, "node-fetch-https", "fetch", Scheme::Https, 443),
        node(&bench, "node-http-get", "http", Scheme::Http, 80),
        node(&bench, "node-https-get", "https", Scheme::Https, 443),
        node(&bench, "node-fetch-http-8080", "fetch", Scheme::Http, 8080),
        node(&bench, "node-https-get-8443", "https", Scheme::Https, 8443),
    ];
    assert_all_succeed(&mut bench, "node", &cases);
}

#[test]
fn aiohttp_with_default_settings_reaches_the_upstream() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-aiohttp");
    let script = path_of(&bench, "aiohttp_client.py");
    let aiohttp = |name: &str, scheme, port| {
        Case::new(name, Route::Transparent, scheme, port, |url| {
            strings(&[PYTHON, &script, url])
        })
    };
    let cases = [
        aiohttp("aiohttp-http", Scheme::Http, 80),
        aiohttp("aiohttp-https", Scheme::Https, 443),
        aiohttp("aiohttp-https-8443", Scheme::Https, 8443),
    ];
    assert_all_succeed(&mut bench, "aiohttp", &cases);
}

#[test]
fn go_default_client_uses_the_proxy_variables_and_a_bare_transport_goes_transparently() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-go");
    let binary = build_go_client(&bench.scratch, &bench.scratch.dir);
    let binary = binary.display().to_string();
    let go = |name: &str, client: &str, route, scheme, port| {
        Case::new(name, route, scheme, port, |url| {
            strings(&[&binary, client, url])
        })
    };
    let cases = [
        go(
            "go-default-http",
            "default",
            Route::ProxyVariables,
            Scheme::Http,
            80,
        ),
        go(
            "go-default-https",
            "default",
            Route::ProxyVariables,
            Scheme::Https,
            443,
        ),
        go("go-bare-http", "bare", Route::Transparent, Scheme::Http, 80),
        go(
            "go-bare-https",
            "bare",
            Route::Transparent,
            Scheme::Https,
            443,
        ),
        go(
            "go-bare-http-8080",
            "bare",
            Route::Transparent,
            Scheme::Http,
            8080,
        ),
    ];
    assert_all_succeed(&mut bench, "go", &cases);
}

#[test]
fn wget_works_with_and_without_the_proxy_variables() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-wget");
    // --tries=1: wget retries most failures 20 times by default.
    let wget = |name: &str, route, scheme, port| {
        Case::new(name, route, scheme, port, |url| {
            let mut argv = strings(&[WGET, "--tries=1", "-O", "-"]);
            if route == Route::Transparent {
                argv.push("--no-proxy".to_owned());
            }
            argv.push(url.to_owned());
            argv
        })
    };
    let cases = [
        wget("wget-http-no-proxy", Route::Transparent, Scheme::Http, 80),
        wget(
            "wget-https-no-proxy",
            Route::Transparent,
            Scheme::Https,
            443,
        ),
        wget("wget-http", Route::ProxyVariables, Scheme::Http, 80),
        wget("wget-https", Route::ProxyVariables, Scheme::Https, 443),
    ];
    assert_all_succeed(&mut bench, "wget", &cases);
}

#[test]
fn openssl_s_client_verifies_the_interception_certificate_with_the_system_store() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-openssl");
    // -ign_eof: keep reading after stdin ends, until the server closes (Connection: close).
    let s_client = |name: &str, env_prefix: &[&str]| {
        let mut case = Case::new(name, Route::Transparent, Scheme::Https, 443, |_| {
            let mut argv = strings(env_prefix);
            argv.extend(strings(&[
                OPENSSL,
                "s_client",
                "-connect",
                "up.test:443",
                "-servername",
                HOST,
                "-verify_return_error",
                "-ign_eof",
            ]));
            argv
        });
        case.stdin = format!(
            "GET {} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
            case.path()
        );
        case.also_prints = vec!["Verify return code: 0 (ok)".to_owned()];
        case
    };
    let cases = [
        s_client("openssl-s-client", &[]),
        // Without the variables OpenSSL reads only its default file and directory: the
        // system trust store.
        s_client(
            "openssl-s-client-store-only",
            &[ENV, "-u", "SSL_CERT_FILE", "-u", "SSL_CERT_DIR"],
        ),
    ];
    assert_all_succeed(&mut bench, "openssl", &cases);
}

#[test]
fn clients_that_honour_the_proxy_variables_keep_using_them() {
    let _lock = SuiteLock::shared();
    let mut bench = start("clients-proxy");
    let proxied = |name: &str, scheme, argv: &dyn Fn(&str) -> Vec<String>| {
        Case::new(
            name,
            Route::ProxyVariables,
            scheme,
            scheme.default_port(),
            argv,
        )
    };
    let curl = |url: &str| strings(&[CURL, "-sS", "--max-time", "15", url]);
    let urllib = |url: &str| strings(&[PYTHON, "-c", URLLIB, url]);
    let requests = |url: &str| strings(&[PYTHON, "-c", REQUESTS, url]);
    let mut cases = vec![
        proxied("curl-http", Scheme::Http, &curl),
        proxied("curl-https", Scheme::Https, &curl),
        proxied("urllib-http", Scheme::Http, &urllib),
        proxied("urllib-https", Scheme::Https, &urllib),
    ];
    if has_requests() {
        cases.push(proxied("requests-http", Scheme::Http, &requests));
        cases.push(proxied("requests-https", Scheme::Https, &requests));
    } else {
        eprintln!("requests is not installed for /usr/bin/python3: its cases are skipped");
    }
    assert_all_succeed(&mut bench, "proxy variables", &cases);
}

/// Whether Debian's Python has `requests` (python3-requests is not a test dependency).
fn has_requests() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import requests"])
        .output()
        .is_ok_and(|out| out.status.success())
}

// ---------------------------------------------------------------------------------------
// Tests: transparent egress switched off
// ---------------------------------------------------------------------------------------

/// Runs Node's `fetch` (which ignores the proxy variables) and curl (which honours them) with
/// transparent egress off: `fetch` must fail by itself, not hang, and reach nothing; curl must
/// still get through the proxy; the audit must hold curl's request and nothing else, and the
/// summary no `dns` counters (no stub resolver ran).
fn assert_transparent_off(tag: &str, sandbox: Sandbox, network_extra: &str) {
    let _lock = SuiteLock::shared();
    let mut bench = start(tag);
    let fetch = node(&bench, "node-fetch-off", "fetch", Scheme::Http, 80);
    let curl = Case::new("curl-off", Route::ProxyVariables, Scheme::Http, 80, |url| {
        strings(&[CURL, "-sS", "--max-time", "15", url])
    });
    let policy = policy(&bench, network_extra);
    let cases = [fetch, curl];
    let outcome = run(&mut bench, sandbox, &policy, &cases);
    let [fetch, curl] = &cases;
    let mut problems = Problems::default();
    match result_of(&outcome, fetch) {
        Err(why) => problems.add(&fetch.name, why),
        Ok(result) if result["hung"] == true => problems.add(
            &fetch.name,
            format!(
                "hung instead of failing: killed after {CLIENT_LIMIT}s; {}",
                printed(result)
            ),
        ),
        Ok(result) => {
            let stdout = result["stdout"].as_str().unwrap_or_default();
            if result["rc"] == 0 || !stdout.starts_with("error=TypeError: fetch failed") {
                problems.add(
                    &fetch.name,
                    format!(
                        "expected `fetch failed` and exit 1, it exited {}; {}",
                        result["rc"],
                        printed(result)
                    ),
                );
            }
        }
    }
    let reached = received(&bench, &fetch.path());
    if !reached.is_empty() {
        problems.add(&fetch.name, format!("the upstream got {reached:?}"));
    }
    check_case(&bench, &outcome, curl, &mut problems);
    let traffic: Vec<&Value> = outcome
        .audit
        .iter()
        .filter(|r| r["type"] == "http" || r["type"] == "connect")
        .collect();
    if traffic.len() != 1 || traffic[0]["path"] != curl.path() {
        problems.add(
            "",
            format!("expected curl's http record alone as traffic, the audit has {traffic:?}"),
        );
    }
    if let Some(record) = outcome
        .audit
        .iter()
        .find(|r| r.get("transparent").is_some())
    {
        problems.add("", format!("a record has a transparent field: {record}"));
    }
    if outcome.summary.is_null() {
        problems.add("", "no summary was written".to_owned());
    } else if outcome.summary.get("dns").is_some() {
        problems.add(
            "",
            format!(
                "the summary has dns counters, so a stub resolver ran: {}",
                outcome.summary
            ),
        );
    }
    problems.assert_none(tag, &cases, &outcome);
}

#[test]
fn no_transparent_flag_leaves_node_fetch_failing_fast_and_curl_on_the_proxy() {
    assert_transparent_off(
        "clients-no-transparent",
        Sandbox::new().arg("--no-transparent"),
        "",
    );
}

#[test]
fn policy_transparent_false_leaves_node_fetch_failing_fast_and_curl_on_the_proxy() {
    assert_transparent_off(
        "clients-transparent-false",
        Sandbox::new(),
        "  transparent: false\n",
    );
}
