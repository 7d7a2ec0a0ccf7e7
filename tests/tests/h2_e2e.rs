//! HTTP/2 and gRPC through TLS interception end to end (#14): `tollgate run` with real HTTP/2
//! clients inside the sandbox (`/usr/bin/curl --http2`, `httpx` with `http2=True`, `grpcio`,
//! and a hand-driven `h2` connection for what no ordinary client sends) against upstreams of
//! the test venv in network namespaces of their own: hypercorn serving a small ASGI app
//! (`h2_e2e_server.py`) and a grpcio server (`h2_e2e_grpc_server.py`), both over TLS with a
//! test CA's leaf (trusted through `network.upstream_ca`), offering ALPN `h2`.
//!
//! Each test runs one execution whose script (`h2_e2e_client.py`, then the test's own lines)
//! prints its observations as one JSON object; the test checks them against what the
//! upstream logged, the `--audit` file and the `--summary`: every HTTP/2 stream is one
//! request, decided, counted, credentialed and audited like an HTTP/1.1 one.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs `tollgate_tests::upstream` makes (10.201.0.0/16, /30 per upstream).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
};

use serde_json::Value;
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    leaks::SuiteLock,
    sandbox::{shared_dir, Sandbox, VENV_PYTHON},
    script_run::{assert_ran, Outcome, ScriptRun},
    upstream::UpstreamHost,
    Scratch,
};

const HTTP_SERVER_PY: &str = include_str!("h2_e2e_server.py");
const GRPC_SERVER_PY: &str = include_str!("h2_e2e_grpc_server.py");
const CLIENT_PY: &str = include_str!("h2_e2e_client.py");
const PORT: u16 = 443;

/// The upstream's names: every one pinned to the bench's upstream and allowed on 443.
const H2_HOST: &str = "h2.example.com";
const OTHER_HOST: &str = "other.example.com";
const GRPC_HOST: &str = "grpc.example.com";
const NAMES: [&str; 3] = [H2_HOST, OTHER_HOST, GRPC_HOST];

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// One upstream (HTTP/2 or gRPC) in its own namespace, and the executions run against it.
struct Bench {
    host: UpstreamHost,
    material: Certificates,
    scratch: Scratch,
    runs: u32,
}

impl Bench {
    /// A bench whose upstream serves `server` (a script of the test venv, see its top) on
    /// :443 with a leaf for [`NAMES`].
    fn new(tag: &str, server: &str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let material = make_certificates(&scratch.dir, &NAMES);
        let (cert, key) = (material.cert.clone(), material.key.clone());
        let host = UpstreamHost::start_server_with(VENV_PYTHON, server, move |addr, log| {
            vec![
                addr.to_string().into(),
                PORT.to_string().into(),
                cert.into(),
                key.into(),
                log.into(),
            ]
        });
        Bench {
            host,
            material,
            scratch,
            runs: 0,
        }
    }

    /// A policy with every name pinned to the upstream, intercepted on 443; `more` is
    /// appended to the `h2.example.com` entry, `top` at the top level.
    fn policy(&self, more: &str, top: &str) -> String {
        let subnet = self.host.subnet();
        let addr = self.host.addr;
        format!(
            "version: 1
team: acme
network:
  hosts:
    {H2_HOST}: {addr}
    {OTHER_HOST}: {addr}
    {GRPC_HOST}: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: {H2_HOST}
      ports: [443]
      allowed_ips: [{subnet}]
{more}    - host: {OTHER_HOST}
      ports: [443]
      allowed_ips: [{subnet}]
    - host: {GRPC_HOST}
      ports: [443]
      allowed_ips: [{subnet}]
limits:
  max_requests: 100
{top}",
            ca = self.material.ca.display()
        )
    }

    /// Runs `script` (after `h2_e2e_client.py`) under the venv's python3 in a sandbox with
    /// `policy`; asserts the run itself went through.
    fn run(&mut self, policy: &str, script: &str) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "client", policy, CLIENT_PY, script);
        let out = shared_dir(&self.scratch, &format!("out{n}"));
        let finished = run
            .sandbox(Sandbox::new())
            .arg("--secrets-dir")
            .arg(self.scratch.secrets_root())
            .timeout("40s")
            .run([VENV_PYTHON, run.script_arg(), out.to_str().unwrap()]);
        let outcome = run.outcome(finished);
        assert_ran(&outcome);
        outcome
    }
}

/// What curl saw of the transfer of `path` in result `name`.
fn transfer<'a>(outcome: &'a Outcome, name: &str, path: &str) -> &'a Value {
    let seen = &outcome.result(name)["transfers"][path];
    assert!(
        !seen.is_null(),
        "curl reported no transfer of {path}: {}\n{}",
        outcome.result(name),
        outcome.describe()
    );
    seen
}

/// The JSON body of a reply (a transfer, a raw stream).
fn body(reply: &Value) -> Value {
    let text = reply["body"].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON body ({e}): {reply}"))
}

/// The `http` records about `path`.
fn records_for<'a>(outcome: &'a Outcome, host: &str, path: &str) -> Vec<&'a Value> {
    outcome
        .http_records(host)
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// The one `http` record about `path` on `host`.
fn record<'a>(outcome: &'a Outcome, host: &str, path: &str) -> &'a Value {
    let found = records_for(outcome, host, path);
    assert_eq!(
        found.len(),
        1,
        "records of {host}{path}\n{}",
        outcome.describe()
    );
    found[0]
}

/// The summary's count of upstream requests.
fn requests(outcome: &Outcome) -> u64 {
    outcome.summary["proxy"]["requests"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Asserts the run's intercepted tunnels: exactly `count` to `host`, each chose `h2` inside.
fn assert_h2_tunnels(outcome: &Outcome, host: &str, count: usize) {
    let tunnels: Vec<&Value> = outcome
        .records("connect")
        .into_iter()
        .filter(|r| r["host"] == host)
        .collect();
    assert_eq!(
        tunnels.len(),
        count,
        "tunnels to {host}\n{}",
        outcome.describe()
    );
    for tunnel in tunnels {
        assert_eq!(tunnel["tls"], "intercept", "{tunnel}");
        assert_eq!(tunnel["protocol"], "h2", "{tunnel}");
    }
}

/// Asserts an `http` record of a request served over HTTP/2 both ways, whole.
fn assert_complete_h2(record: &Value) {
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["outcome"], "complete", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["protocol"], "h2", "{record}");
    assert_eq!(record["upstream_protocol"], "h2", "{record}");
}

/// Lowercase hex sha256 of `text` (Debian's `sha256sum`: the suite has no hash crate).
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("/usr/bin/sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn curl_http2_two_requests_on_one_connection_are_two_records_and_count_twice() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("h2-curl", HTTP_SERVER_PY);
    let policy = bench.policy("", "");
    let outcome = bench.run(
        &policy,
        r#"
curl("two", "--http2", urls=["https://h2.example.com/curl/one", "https://h2.example.com/curl/two"])
"#,
    );
    let curl = outcome.result("two");
    assert_eq!(curl["rc"], 0, "{curl}");
    let (one, two) = (
        transfer(&outcome, "two", "/curl/one"),
        transfer(&outcome, "two", "/curl/two"),
    );
    for seen in [one, two] {
        assert_eq!(seen["status"], 200, "{seen}");
        assert_eq!(
            seen["version"], "2",
            "curl spoke HTTP/2 to tollgate: {seen}"
        );
    }
    // curl made one connection (to the proxy, tunnelled) and reused it for the second.
    assert_eq!(one["connects"], 1, "{one}");
    assert_eq!(two["connects"], 0, "{two}");
    assert_h2_tunnels(&outcome, H2_HOST, 1);

    // Two streams are two requests: two records, two counted, two at the upstream.
    for path in ["/curl/one", "/curl/two"] {
        assert_complete_h2(record(&outcome, H2_HOST, path));
    }
    assert_eq!(
        outcome.http_records(H2_HOST).len(),
        2,
        "{}",
        outcome.describe()
    );
    assert_eq!(requests(&outcome), 2, "{}", outcome.summary_text);
    let seen = bench.host.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert_eq!(
            request["http_version"], "2",
            "the upstream saw HTTP/2: {request}"
        );
        assert!(
            request["host"]
                .as_str()
                .is_some_and(|h| h.starts_with(H2_HOST)),
            "{request}"
        );
    }
}

#[test]
fn a_refused_stream_gets_its_own_403_and_its_concurrent_siblings_complete() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("h2-parallel", HTTP_SERVER_PY);
    let policy = bench.policy(
        "      deny_rules:\n        - {method: \"*\", path: \"/denied/**\"}\n",
        "",
    );
    // The upstream holds each /hold/par/2/… request until both are in flight at once (504
    // otherwise), so a 200 for both proves the three streams ran concurrently on the one
    // connection, the denied one among them.
    let outcome = bench.run(
        &policy,
        r#"
curl("par", "--http2", "--parallel", urls=[
    "https://h2.example.com/hold/par/2/first",
    "https://h2.example.com/denied/middle",
    "https://h2.example.com/hold/par/2/last",
])
"#,
    );
    let curl = outcome.result("par");
    assert_eq!(curl["rc"], 0, "{curl}");
    let denied = transfer(&outcome, "par", "/denied/middle");
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["error"], "policy_denied", "{denied}");
    assert_eq!(denied["version"], "2", "{denied}");
    assert_eq!(body(denied)["error"], "policy_denied");
    let mut connects = denied["connects"].as_u64().unwrap_or(99);
    for path in ["/hold/par/2/first", "/hold/par/2/last"] {
        let seen = transfer(&outcome, "par", path);
        assert_eq!(seen["status"], 200, "{path}: {seen}");
        assert_eq!(seen["error"], "", "{path}: {seen}");
        assert_eq!(seen["version"], "2", "{seen}");
        connects += seen["connects"].as_u64().unwrap_or(99);
    }
    assert_eq!(connects, 1, "one connection for the three: {curl}");
    assert_h2_tunnels(&outcome, H2_HOST, 1);

    let refusal = record(&outcome, H2_HOST, "/denied/middle");
    assert_eq!(refusal["decision"], "deny", "{refusal}");
    assert_eq!(refusal["reason"], "l7_denied", "{refusal}");
    assert_eq!(refusal["outcome"], "refused", "{refusal}");
    assert_eq!(refusal["status"], 403, "{refusal}");
    assert_eq!(refusal["protocol"], "h2", "{refusal}");
    for path in ["/hold/par/2/first", "/hold/par/2/last"] {
        assert_complete_h2(record(&outcome, H2_HOST, path));
    }
    assert_eq!(requests(&outcome), 2, "{}", outcome.summary_text);
    assert!(
        bench.host.requests_to("/denied").is_empty(),
        "the refused stream never reached the upstream"
    );
    assert_eq!(bench.host.requests_to("/hold/par/").len(), 2);
}

#[test]
fn httpx_with_http2_speaks_h2_through_the_proxy_settings() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("h2-httpx", HTTP_SERVER_PY);
    let policy = bench.policy("", "");
    // httpx (trust_env, the default) takes HTTPS_PROXY and SSL_CERT_FILE from the sandbox's
    // environment, as any unmodified program would.
    let outcome = bench.run(
        &policy,
        r#"
import httpx
with httpx.Client(http2=True, timeout=20) as client:
    got = client.get("https://h2.example.com/httpx/get")
    posted = client.post("https://h2.example.com/httpx/post", content=b'{"n": [1, 2, 3]}',
                         headers={"content-type": "application/json"})
for name, r in [("get", got), ("post", posted)]:
    results[name] = {"version": r.http_version, "status": r.status_code, "body": r.json()}
results["proxy"] = os.environ.get("HTTPS_PROXY")
"#,
    );
    for name in ["get", "post"] {
        let seen = outcome.result(name);
        assert_eq!(seen["version"], "HTTP/2", "{name}: {seen}");
        assert_eq!(seen["status"], 200, "{name}: {seen}");
    }
    assert!(
        outcome.result("proxy").as_str().is_some(),
        "the sandbox has HTTPS_PROXY"
    );
    let sent = r#"{"n": [1, 2, 3]}"#.len() as u64;
    assert_eq!(outcome.result("post")["body"]["body_bytes"], sent);
    assert_eq!(outcome.result("post")["body"]["method"], "POST");
    assert_h2_tunnels(&outcome, H2_HOST, 1);
    assert_complete_h2(record(&outcome, H2_HOST, "/httpx/get"));
    let post = record(&outcome, H2_HOST, "/httpx/post");
    assert_complete_h2(post);
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_up"], sent, "{post}");
    assert_eq!(requests(&outcome), 2, "{}", outcome.summary_text);
    let seen = bench.host.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|r| r["http_version"] == "2"), "{seen:?}");
}

/// The gRPC test's secret: it must reach the server and appear nowhere else.
const S_GRPC: &str = "e2e-grpc-bearer-4b1f07c3d9";

#[test]
fn grpc_unary_and_server_streaming_calls_carry_the_injected_credential_and_their_trailers() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("h2-grpc", GRPC_SERVER_PY);
    let secret = bench.scratch.secret("acme", "grpc.secret", S_GRPC);
    let top = format!(
        "auth_providers:
  - name: Grpc
    type: bearer
    secret: {{file: {}}}
    scope: [https://{GRPC_HOST}]
credentials:
  - {{pattern: https://{GRPC_HOST}, provider: Grpc}}
",
        secret.display()
    );
    let policy = bench.policy("", &top);
    // grpc-core reads https_proxy (tollgate sets it) and tunnels with CONNECT; the execution's
    // CA bundle is the one SSL_CERT_FILE names.
    let outcome = bench.run(
        &policy,
        r#"
import grpc
roots = open(os.environ["SSL_CERT_FILE"], "rb").read()
channel = grpc.secure_channel("grpc.example.com:443",
                              grpc.ssl_channel_credentials(root_certificates=roots))
try:
    reply, call = channel.unary_unary("/tollgate.test.Echo/Unary").with_call(b"ping", timeout=20)
    results["unary"] = {"reply": reply.decode(), "code": call.code().name}
except grpc.RpcError as e:
    results["unary"] = {"code": e.code().name, "details": e.details()}
call = channel.unary_stream("/tollgate.test.Echo/Stream")(b"m", timeout=20)
messages = []
try:
    for message in call:
        messages.append(message.decode())
except grpc.RpcError as e:
    pass
results["stream"] = {"messages": messages, "code": call.code().name, "details": call.details(),
                     "trailers": {k: v for k, v in (call.trailing_metadata() or ())}}
channel.close()
"#,
    );
    let unary = outcome.result("unary");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["reply"], "pong:ping", "{unary}");
    let stream = outcome.result("stream");
    assert_eq!(
        stream["code"], "OK",
        "grpc-status came in the trailers: {stream}"
    );
    let expected: Vec<String> = (0..5).map(|i| format!("m:{i}")).collect();
    assert_eq!(stream["messages"], serde_json::json!(expected), "{stream}");
    assert_eq!(stream["trailers"]["x-sent"], "5", "{stream}");

    // The server received the injected credential (checked by hash) on both calls.
    let calls = bench.host.requests();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let digest = sha256_hex(&format!("Bearer {S_GRPC}"));
    for call in &calls {
        assert_eq!(call["authorization_sha256"], digest.as_str(), "{call}");
    }
    // Each call is one request, over HTTP/2 both ways, credentialed.
    for method in ["Unary", "Stream"] {
        let path = format!("/tollgate.test.Echo/{method}");
        let call = record(&outcome, GRPC_HOST, &path);
        assert_complete_h2(call);
        assert_eq!(call["method"], "POST", "{call}");
        assert_eq!(call["credentials"], serde_json::json!(["Grpc"]), "{call}");
    }
    assert_eq!(
        outcome.http_records(GRPC_HOST).len(),
        2,
        "{}",
        outcome.describe()
    );
    assert_eq!(requests(&outcome), 2, "{}", outcome.summary_text);
    assert_h2_tunnels(&outcome, GRPC_HOST, 1);
    for (place, text) in [
        ("stdout", &outcome.finished.stdout),
        ("stderr", &outcome.finished.stderr),
        ("audit", &outcome.audit_text),
        ("summary", &outcome.summary_text),
    ] {
        assert!(!text.contains(S_GRPC), "the secret is in the {place}");
    }
}

#[test]
fn a_stream_naming_another_authority_than_its_tunnel_is_refused_and_the_connection_goes_on() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("h2-authority", HTTP_SERVER_PY);
    let policy = bench.policy("", "");
    // other.example.com is allowed on its own, so only the tunnel's origin can refuse these:
    // a stream's :authority (or a Host beside it) must name the host the tunnel was opened
    // to. Both are sent at once; then, on the same connection, an honest request.
    let outcome = bench.run(
        &policy,
        r#"
conn = RawH2("h2.example.com")
results["alpn"] = conn.alpn
results["smuggled"] = conn.exchange([
    get("other.example.com", "/authority/other"),
    get("h2.example.com", "/authority/host", ("host", "other.example.com")),
])
results["honest"] = conn.exchange([get("h2.example.com", "/authority/same")])[0]
results["terminated"] = conn.terminated
"#,
    );
    assert_eq!(outcome.result("alpn"), "h2");
    let smuggled = outcome.result("smuggled");
    let (other, host) = (&smuggled[0], &smuggled[1]);
    for reply in [other, host] {
        assert_eq!(reply["status"], 400, "{reply}");
        assert!(reply["reset"].is_null(), "an answer, not a reset: {reply}");
        assert_eq!(body(reply)["error"], reply["error"], "{reply}");
    }
    assert_eq!(other["error"], "invalid_url", "{other}");
    assert_eq!(host["error"], "invalid_request", "{host}");
    let honest = outcome.result("honest");
    assert_eq!(honest["status"], 200, "{honest}");
    assert_eq!(body(honest)["path"], "/authority/same");
    assert!(
        outcome.results["terminated"].is_null(),
        "the connection outlived the refusals: {}",
        outcome.results["terminated"]
    );

    // Only the honest request reached the upstream; each refused stream has its record.
    let seen = bench.host.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/authority/same");
    let refused: Vec<&Value> = outcome
        .records("http")
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{}", outcome.describe());
    for record in &refused {
        assert_eq!(record["outcome"], "refused", "{record}");
        assert_eq!(record["status"], 400, "{record}");
        assert_eq!(record["protocol"], "h2", "{record}");
    }
    let errors: Vec<&Value> = refused.iter().map(|r| &r["error"]).collect();
    assert!(errors.contains(&&Value::from("invalid_url")), "{errors:?}");
    assert!(
        errors.contains(&&Value::from("invalid_request")),
        "{errors:?}"
    );
    assert_complete_h2(record(&outcome, H2_HOST, "/authority/same"));
    assert_eq!(requests(&outcome), 1, "{}", outcome.summary_text);
    assert_h2_tunnels(&outcome, H2_HOST, 1);
}
