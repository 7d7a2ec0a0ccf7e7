//! TLS interception and team credentials end to end: `tollgate run` with real clients inside
//! the sandbox (`/usr/bin/curl` without `-k`, `/usr/bin/python3` urllib, the `tollgate_http`
//! helper), an HTTPS upstream with its own test CA (trusted through `network.upstream_ca`) in
//! a network namespace the test builds, reached over a veth through a `hosts` pin and
//! `allowed_ips`.
//!
//! Each test runs one or a few executions whose Python script prints its observations as one
//! JSON object; the test checks them against what the upstream logged, the `--audit` file and
//! the `--summary`, and greps every place a secret could leak to.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs `tollgate_tests::upstream` makes (10.201.0.0/16, /30 per upstream).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::Value;
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    leaks::SuiteLock,
    sandbox::{read_json, read_json_lines, shared_dir, Finished, Sandbox, PYTHON},
    script_run::{files_in, ScriptRun},
    tollgate,
    upstream::UpstreamHost,
    Scratch,
};
use web_bot_auth::{
    components::{CoveredComponent, DerivedComponent, HTTPField},
    keyring::{JSONWebKeySet, KeyRing},
    message_signatures::SignedMessage,
    WebBotAuthVerifier,
};

const SERVER_PY: &str = include_str!("tls_e2e_server.py");
const PORT: u16 = 443;

// ---------------------------------------------------------------------------------------
// An HTTPS upstream in its own network namespace
// ---------------------------------------------------------------------------------------

/// The names the upstream's leaf is valid for.
const NAMES: [&str; 3] = [
    "api.example.com",
    "other.example.com",
    "passthrough.example.com",
];

/// One HTTPS upstream host in its own namespace (see `tollgate_tests::upstream`), serving
/// `tls_e2e_server.py` with the test CA's leaf on :443.
fn start_upstream(material: &Certificates) -> UpstreamHost {
    let (cert, key) = (material.cert.clone(), material.key.clone());
    UpstreamHost::start_server(SERVER_PY, move |addr, log| {
        vec![
            addr.to_string().into(),
            PORT.to_string().into(),
            cert.into(),
            key.into(),
            log.into(),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Python run at the start of every sandboxed script: `curl(...)`, `urlopen(...)` and the
/// helper, each recording what it saw in `results`, printed as JSON at exit.
const PRELUDE: &str = r#"
import atexit, json, os, subprocess, sys, urllib.request, urllib.error
OUT = sys.argv[1]
results = {}
atexit.register(lambda: print(json.dumps(results)))

def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def curl(name, *args):
    p = subprocess.run(["/usr/bin/curl", "-sS", "-w", "\n%{http_code}", *args],
                       capture_output=True)
    body, _, status = p.stdout.rpartition(b"\n")
    save(name + ".body", body + p.stderr)
    results[name] = {"rc": p.returncode, "status": int(status or 0),
                     "body": body.decode("utf-8", "replace"), "stderr": p.stderr.decode()}
    return results[name]

def urlopen(name, url, data=None, headers={}):
    try:
        req = urllib.request.Request(url, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=20) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    save(name + ".body", body)
    results[name] = {"status": status, "body": body.decode("utf-8", "replace")}
    return results[name]
"#;

struct Bench {
    host: UpstreamHost,
    material: Certificates,
    scratch: Scratch,
    runs: u32,
}

struct Outcome {
    finished: Finished,
    results: Value,
    audit: Vec<Value>,
    audit_text: String,
    summary: Value,
    summary_text: String,
    /// Every file the sandboxed script wrote.
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let material = make_certificates(&scratch.dir, &NAMES);
        let host = start_upstream(&material);
        Bench {
            host,
            material,
            scratch,
            runs: 0,
        }
    }

    /// A policy with every test name pinned to the upstream and reachable on 443; `more`
    /// is appended to the `api.example.com` entry, `top` at the top level.
    fn policy(&self, more: &str, top: &str) -> String {
        let subnet = self.host.subnet();
        let addr = self.host.addr;
        format!(
            "version: 1
team: acme
network:
  hosts:
    api.example.com: {addr}
    other.example.com: {addr}
    passthrough.example.com: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: api.example.com
      ports: [443]
      allowed_ips: [{subnet}]
{more}    - host: other.example.com
      ports: [443]
      allowed_ips: [{subnet}]
    - host: passthrough.example.com
      ports: [443]
      tls: passthrough
      allowed_ips: [{subnet}]
limits:
  max_requests: 100
{top}",
            ca = self.material.ca.display()
        )
    }

    fn run(&mut self, sandbox: Sandbox, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "script", policy, PRELUDE, script);
        let out = shared_dir(&self.scratch, &format!("out{n}"));
        let finished = run
            .sandbox(sandbox)
            .arg("--secrets-dir")
            .arg(self.scratch.secrets_root())
            .timeout("60s")
            .run([PYTHON, run.script_arg(), out.to_str().unwrap()]);
        let last = finished
            .stdout
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let results = serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("no results ({e}):\n{}", finished.describe()));
        Outcome {
            results,
            audit: read_json_lines(&run.audit),
            audit_text: run.audit_text(),
            summary: read_json(&run.summary),
            summary_text: run.summary_text(),
            files: files_in(&out),
            finished,
        }
    }
}

impl Outcome {
    fn result(&self, name: &str) -> &Value {
        let value = &self.results[name];
        assert!(
            !value.is_null(),
            "no result {name}: {}",
            self.finished.describe()
        );
        value
    }

    fn status(&self, name: &str) -> u64 {
        self.result(name)["status"].as_u64().unwrap_or(0)
    }

    /// The JSON body of a result.
    fn body(&self, name: &str) -> Value {
        let text = self.result(name)["body"].as_str().unwrap_or_default();
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{name} body is not JSON ({e}): {text}"))
    }

    fn requests(&self) -> u64 {
        self.summary["proxy"]["requests"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    fn execution(&self) -> String {
        self.summary["execution"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn records(&self, kind: &str) -> Vec<&Value> {
        self.audit.iter().filter(|r| r["type"] == kind).collect()
    }
}

/// The upstream's logged request whose path starts with `prefix` (exactly one).
fn logged<'a>(requests: &'a [Value], prefix: &str) -> &'a Value {
    let found: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .collect();
    assert_eq!(found.len(), 1, "requests to {prefix}: {requests:?}");
    found[0]
}

fn header_values(request: &Value, name: &str) -> Vec<String> {
    request["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter(|h| h[0] == name)
                .map(|h| h[1].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn real_clients_get_intercepted_https_without_insecure_and_each_request_counts() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-clients");
    let policy = bench.policy("", "");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
curl("curl", "https://api.example.com/echo/curl")
urlopen("urllib", "https://api.example.com/echo/urllib")
from tollgate_http import http
r = http.get("https://api.example.com/echo/helper", params={"q": "1"})
results["helper"] = {"status": r["status_code"], "path": r["json"]["path"]}
names = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
         "GIT_SSL_CAINFO", "PIP_CERT", "DENO_CERT", "CARGO_HTTP_CAINFO"]
results["ca_vars"] = {n: os.environ.get(n) for n in names}
bundle = open(os.environ["SSL_CERT_FILE"]).read()
results["bundle"] = {"certs": bundle.count("BEGIN CERTIFICATE"),
                     "first_is_execution_ca": "BEGIN CERTIFICATE" in bundle.split("END CERTIFICATE")[0]}
results["pythonpath"] = os.environ.get("PYTHONPATH")
"#,
    );
    assert_eq!(
        outcome.finished.code(),
        0,
        "{}",
        outcome.finished.describe()
    );
    assert_eq!(outcome.result("curl")["rc"], 0, "curl without -k");
    assert_eq!(outcome.status("curl"), 200);
    assert_eq!(outcome.body("curl")["path"], "/echo/curl");
    assert_eq!(outcome.status("urllib"), 200);
    assert_eq!(outcome.result("helper")["status"], 200);
    assert_eq!(outcome.result("helper")["path"], "/echo/helper?q=1");
    let requests = bench.host.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for request in &requests {
        assert_eq!(header_values(request, "host"), vec!["api.example.com"]);
    }
    // One counted request per inner request; tunnels are not counted.
    assert_eq!(outcome.requests(), 3, "{}", outcome.summary_text);
    let inner = outcome.records("http");
    assert_eq!(inner.len(), 3, "{}", outcome.audit_text);
    assert!(inner
        .iter()
        .all(|r| r["scheme"] == "https" && r["status"] == 200));
    let tunnels = outcome.records("connect");
    assert_eq!(tunnels.len(), 3, "{}", outcome.audit_text);
    assert!(tunnels.iter().all(|r| r["tls"] == "intercept"));
    // Every CA variable names the bundle in this execution's runtime directory, which is
    // gone after the run.
    let execution = outcome.execution();
    let bundle = format!("/run/tollgate/{execution}/ca-bundle.pem");
    for (name, value) in outcome.result("ca_vars").as_object().unwrap() {
        assert_eq!(value.as_str(), Some(bundle.as_str()), "{name}");
    }
    assert!(
        outcome.result("bundle")["certs"].as_u64().unwrap() > 10,
        "CA + system roots"
    );
    assert_eq!(
        outcome.result("pythonpath").as_str(),
        Some(format!("/run/tollgate/{execution}/python").as_str())
    );
    assert!(!Path::new(&format!("/run/tollgate/{execution}")).exists());
}

#[test]
fn read_only_allows_get_and_refuses_post_inside_tls() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-readonly");
    let policy = bench.policy("      access: read-only\n", "");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
curl("get", "https://api.example.com/ro/get")
curl("post", "-X", "POST", "-d", "x=1", "https://api.example.com/ro/post")
"#,
    );
    assert_eq!(outcome.status("get"), 200);
    assert_eq!(outcome.status("post"), 403);
    let refusal = outcome.body("post");
    assert_eq!(refusal["error"], "policy_denied");
    assert_eq!(refusal["execution"], outcome.execution());
    let requests = bench.host.requests();
    assert_eq!(requests.len(), 1, "only the GET arrived: {requests:?}");
    assert_eq!(requests[0]["method"], "GET");
    let denied: Vec<_> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "method_not_allowed");
    assert_eq!(outcome.requests(), 1);
}

#[test]
fn a_passthrough_endpoint_is_one_raw_tunnel_verified_by_the_sandbox() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-passthrough");
    let policy = bench.policy("", "");
    // The sandbox's bundle includes the team's upstream_ca, so curl verifies the upstream's
    // own certificate with no option at all; two requests on one tunnel count once.
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"
curl("raw", "https://passthrough.example.com/pt/one", "https://passthrough.example.com/pt/two")
"#,
    );
    let raw = outcome.result("raw");
    assert_eq!(raw["rc"], 0, "{raw}");
    assert_eq!(outcome.status("raw"), 200);
    let requests = bench.host.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        header_values(&requests[0], "via").is_empty(),
        "tollgate saw no HTTP in a passthrough tunnel"
    );
    assert_eq!(outcome.requests(), 1, "{}", outcome.summary_text);
    let tunnels = outcome.records("connect");
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0]["tls"], "passthrough");
}

/// Secrets used by the credentials test; none may appear anywhere the sandbox or the logs see.
const S_BASIC: &str = "e2e-basic-pw-31f7a9c2";
const S_KEY: &str = "e2e-apikey-8c1d0b6e";
const S_BEARER: &str = "e2e-bearer-tok-5ea0912f";
const S_CC: &str = "e2e-commcare-77aa10bd";
const S_H1: &str = "e2e-hdr-one-c0ffee11";
const S_H2: &str = "e2e-hdr-two-decade22";

/// Provider, request path, and the headers the upstream must receive.
type Expected<'a> = (&'a str, &'a str, Vec<(&'a str, String)>);

#[test]
fn credentials_reach_upstreams_and_never_the_sandbox_or_the_logs() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-credentials");
    let file = |name: &str, value: &str| {
        bench
            .scratch
            .secret("acme", name, value)
            .display()
            .to_string()
    };
    let (basic, key, cc, h1, h2) = (
        file("basic.secret", S_BASIC),
        file("key.secret", S_KEY),
        file("cc.secret", S_CC),
        file("h1.secret", S_H1),
        file("h2.secret", S_H2),
    );
    let top = format!(
        "auth_providers:
  - name: Basic One
    type: basic
    username: robot
    secret: {{file: {basic}}}
    scope: [https://api.example.com]
  - name: My API Key
    type: api_key
    header: X-Api-Key
    secret: {{file: {key}}}
    scope: [https://api.example.com]
  - name: Bearer
    type: bearer
    secret: {{env: TOLLGATE_SECRET_ACME_E2EBEARER}}
    scope: [https://api.example.com/v1]
  - name: CommCare
    type: commcare
    username: bot@example.org
    secret: {{file: {cc}}}
    scope: [https://api.example.com]
  - name: Pair
    type: headers
    headers:
      - {{name: X-First, secret: {{file: {h1}}}}}
      - {{name: X-Second, secret: {{file: {h2}}}}}
    scope: [https://api.example.com]
placeholders:
  - {{env: OPENAI_API_KEY, provider: Bearer}}
"
    );
    let policy = bench.policy("", &top);
    let outcome = bench.run(
        Sandbox::new()
            .supervisor_env("TOLLGATE_SECRET_ACME_E2EBEARER", S_BEARER)
            .supervisor_env("TOLLGATE_LOG", "debug"),
        &policy,
        &format!(
            r#"
from tollgate_http import http, HttpAuthProviderError, HttpPolicyDenied
for name in ["Basic One", "My API Key", "Bearer", "CommCare", "Pair"]:
    curl("type " + name, "-H", "Tollgate-Auth: " + name,
         "https://api.example.com/v1/type/" + name.replace(" ", "-"))
curl("unknown", "-H", "Tollgate-Auth: Nope", "https://api.example.com/v1/unknown")
curl("scope", "-H", "Tollgate-Auth: Bearer", "https://api.example.com/v2/scope")
curl("case", "-H", "Tollgate-Auth: Bearer", "-H", "authorization: Bearer mine",
     "-H", "AUTHORIZATION: Basic b3RoZXI=", "https://api.example.com/v1/case")
ph = os.environ["OPENAI_API_KEY"]
results["placeholder"] = ph[:12] + str(len(ph))
curl("swap", "-H", "Authorization: Bearer " + ph, "https://api.example.com/v1/swap")
curl("other host", "-H", "Authorization: Bearer " + ph, "https://other.example.com/leak")
curl("in body", "-d", json.dumps({{"key": ph}}), "https://other.example.com/leak-body")
curl("echo", "-i", "-H", "Tollgate-Auth: Bearer", "https://api.example.com/v1/echo-auth")
try:
    http.get("https://api.example.com/v1/x", auth="Nope")
except HttpAuthProviderError as e:
    results["helper unknown"] = {{"error": e.error, "message": e.message, "status": e.status_code}}

# The seed's example, unchanged.
def seed():
    resp = http.post("https://api.example.com/data", auth="My API Key", json={{"query": 1}}, timeout=10)
    if resp["is_error"]:
        return f"Error: {{resp['status_code']}}"
    return resp["json"]["result"]
results["seed"] = seed()

# Everything the sandbox can see of itself.
save("environ", open("/proc/self/environ", "rb").read())
save("cmdline", open("/proc/self/cmdline", "rb").read())
runtime = os.path.dirname(os.environ["SSL_CERT_FILE"])
for root, _, names in os.walk(runtime):
    for name in names:
        save("runtime-" + name, open(os.path.join(root, name), "rb").read())
try:
    open("{basic}").read()
    results["secret file"] = "readable"
except (PermissionError, FileNotFoundError):  # the secrets root is not in the sandbox's view
    results["secret file"] = "denied"
"#
        ),
    );
    assert_eq!(
        outcome.finished.code(),
        0,
        "{}",
        outcome.finished.describe()
    );
    let requests = bench.host.requests();
    let b64 = |s: &str| STANDARD.encode(s);
    let expected: [Expected; 5] = [
        (
            "Basic One",
            "/v1/type/Basic-One",
            vec![(
                "authorization",
                format!("Basic {}", b64(&format!("robot:{S_BASIC}"))),
            )],
        ),
        (
            "My API Key",
            "/v1/type/My-API-Key",
            vec![("x-api-key", S_KEY.into())],
        ),
        (
            "Bearer",
            "/v1/type/Bearer",
            vec![("authorization", format!("Bearer {S_BEARER}"))],
        ),
        (
            "CommCare",
            "/v1/type/CommCare",
            vec![("authorization", format!("ApiKey bot@example.org:{S_CC}"))],
        ),
        (
            "Pair",
            "/v1/type/Pair",
            vec![("x-first", S_H1.into()), ("x-second", S_H2.into())],
        ),
    ];
    for (provider, path, headers) in &expected {
        assert_eq!(
            outcome.status(&format!("type {provider}")),
            200,
            "{provider}"
        );
        let request = logged(&requests, path);
        for (name, value) in headers {
            assert_eq!(
                header_values(request, name),
                vec![value.clone()],
                "{provider} {name}"
            );
        }
        assert!(header_values(request, "tollgate-auth").is_empty());
    }
    // Refusals, with the issue's exact wording.
    assert_eq!(outcome.status("unknown"), 403);
    assert_eq!(outcome.body("unknown")["error"], "auth_provider_error");
    assert_eq!(
        outcome.body("unknown")["message"],
        "Auth provider 'Nope' not found. Available providers: Basic One, My API Key, Bearer, CommCare, Pair"
    );
    assert_eq!(
        outcome.result("helper unknown")["error"],
        "auth_provider_error"
    );
    assert_eq!(outcome.result("helper unknown")["status"], 403);
    assert_eq!(outcome.status("scope"), 403);
    assert_eq!(outcome.body("scope")["error"], "credential_scope_denied");
    // Exactly one Authorization, the injected one.
    assert_eq!(
        header_values(logged(&requests, "/v1/case"), "authorization"),
        vec![format!("Bearer {S_BEARER}")]
    );
    // Placeholders: swapped in scope, refused elsewhere (header and body), with a finding.
    assert_eq!(outcome.result("placeholder"), "tollgate_ph_44");
    assert_eq!(outcome.status("swap"), 200);
    assert_eq!(
        header_values(logged(&requests, "/v1/swap"), "authorization"),
        vec![format!("Bearer {S_BEARER}")]
    );
    for name in ["other host", "in body"] {
        assert_eq!(outcome.status(name), 403, "{name}");
        assert_eq!(
            outcome.body(name)["error"],
            "credential_placeholder_mismatch"
        );
    }
    assert!(requests
        .iter()
        .all(|r| !r["path"].as_str().unwrap_or("").starts_with("/leak")));
    let findings = outcome
        .audit
        .iter()
        .filter(|r| r["finding"] == "placeholder_outside_scope")
        .count();
    assert_eq!(findings, 2, "{}", outcome.audit_text);
    // The echoed secret was redacted in the header and the body.
    let echo = outcome.result("echo")["body"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(echo.contains("x-echo: [redacted by tollgate]"), "{echo}");
    // The seed example, and the secret file closed to the sandbox user.
    assert_eq!(outcome.result("seed"), "received {\"query\": 1}");
    assert_eq!(
        header_values(logged(&requests, "/data"), "x-api-key"),
        vec![S_KEY]
    );
    assert_eq!(outcome.result("secret file"), "denied");
    assert!(
        outcome.files.iter().any(|(p, _)| p.ends_with("environ")),
        "the environ dump exists"
    );

    // No secret anywhere: the child's environment, argv and files, its output, the error
    // bodies it got, tollgate's tracing output (debug), the audit log and the summary.
    let secrets = [S_BASIC, S_KEY, S_BEARER, S_CC, S_H1, S_H2];
    let mut places: Vec<(String, Vec<u8>)> = outcome
        .files
        .iter()
        .map(|(path, data)| (path.display().to_string(), data.clone()))
        .collect();
    places.push((
        "stdout".into(),
        outcome.finished.stdout.clone().into_bytes(),
    ));
    places.push((
        "stderr (tracing)".into(),
        outcome.finished.stderr.clone().into_bytes(),
    ));
    places.push(("audit".into(), outcome.audit_text.clone().into_bytes()));
    places.push(("summary".into(), outcome.summary_text.clone().into_bytes()));
    for (place, data) in &places {
        for secret in secrets {
            let encoded = b64(&format!("robot:{secret}"));
            for needle in [secret, encoded.as_str()] {
                assert!(
                    !data.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{place} contains a secret"
                );
            }
        }
    }
    assert!(
        outcome.finished.stderr.contains("DEBUG") || outcome.finished.stderr.contains("INFO"),
        "tracing output was captured: {}",
        outcome.finished.stderr
    );
}

#[test]
fn a_team_without_providers_gets_the_no_providers_message() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-noproviders");
    let policy = bench.policy("", "");
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"curl("any", "-H", "Tollgate-Auth: GitHub", "https://api.example.com/x")"#,
    );
    assert_eq!(outcome.status("any"), 403);
    assert_eq!(
        outcome.body("any")["message"],
        "Auth providers are not available in this context"
    );
    assert!(bench.host.requests().is_empty());
}

/// A logged request as Cloudflare's verifier sees it.
struct Logged {
    headers: Vec<(String, String)>,
    authority: String,
}

impl SignedMessage for Logged {
    fn lookup_component(&self, name: &CoveredComponent) -> Vec<String> {
        match name {
            CoveredComponent::HTTP(HTTPField { name, .. }) => self
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect(),
            CoveredComponent::Derived(DerivedComponent::Authority { .. }) => {
                vec![self.authority.clone()]
            }
            _ => vec![],
        }
    }
}

fn verifies(message: &Logged, keyring: &KeyRing) -> bool {
    WebBotAuthVerifier::parse(message)
        .ok()
        .is_some_and(|v| v.verify(keyring, None).is_ok())
}

#[test]
fn bot_auth_signatures_verify_with_an_independent_verifier_and_tampering_fails() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("tls-botauth");
    // A fixed seed (base64url of 32 bytes), in a root-only file.
    let seed = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    let seed_file = bench.scratch.secret("acme", "bot.seed", seed);
    let top = format!(
        "bot_auth:\n  key: {{file: {}}}\n  signature_agent: https://bot.acme.example\n",
        seed_file.display()
    );
    let policy = bench.policy("", &top);
    let outcome = bench.run(
        Sandbox::new(),
        &policy,
        r#"curl("signed", "-H", "Signature: sig1=:Zm9yZ2Vk:", "https://api.example.com/signed")"#,
    );
    assert_eq!(outcome.status("signed"), 200);
    let policy_file = bench.scratch.file("bot-policy.yaml", &policy);
    let jwks = tollgate()
        .args(["bot-auth", "jwks", "--policy"])
        .arg(&policy_file)
        .arg("--secrets-dir")
        .arg(bench.scratch.secrets_root())
        .output()
        .unwrap();
    assert!(jwks.status.success(), "{jwks:?}");
    let jwks: JSONWebKeySet = serde_json::from_slice(&jwks.stdout).unwrap();
    let key_id = jwks.keys[0].b64_thumbprint();
    let mut keyring = KeyRing::default();
    assert!(keyring.import_jwks(jwks).iter().all(Option::is_none));

    let requests = bench.host.requests();
    let request = logged(&requests, "/signed");
    let headers: Vec<(String, String)> = request["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_owned(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let message = Logged {
        authority: header_values(request, "host")[0].clone(),
        headers: headers.clone(),
    };
    assert_eq!(
        header_values(request, "signature").len(),
        1,
        "the forged one was replaced"
    );
    assert!(header_values(request, "signature-input")[0].contains(&format!("keyid=\"{key_id}\"")));
    assert_eq!(
        header_values(request, "signature-agent"),
        vec!["\"https://bot.acme.example\""]
    );
    assert!(verifies(&message, &keyring), "{headers:?}");
    let tampered = Logged {
        authority: "evil.example".into(),
        headers,
    };
    assert!(!verifies(&tampered, &keyring));
    assert!(!outcome.audit_text.contains(seed));
    assert!(!outcome.finished.stderr.contains(seed));
}
