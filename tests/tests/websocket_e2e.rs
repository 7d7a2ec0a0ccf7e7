//! WebSocket through TLS interception end to end: `tollgate run` with two real clients inside
//! the sandbox (the `websockets` library from the test venv, and a raw Node 20 client that
//! does the CONNECT, the TLS and the upgrade by hand), against a `wss://` echo server
//! (`websockets`, the test CA's leaf) in a network namespace the test builds, reached over a
//! veth through a `hosts` pin and `allowed_ips`.
//!
//! Each test runs one execution whose Python script prints what its clients saw as one JSON
//! object; the test checks it against what the server logged (every handshake it saw, each
//! message, each close), the `--audit` file and the `--summary`. What is checked: the opt-in
//! (`websocket: true`) and the refusal without it, malformed upgrades refused before the
//! upstream, one counted request (against `max_requests`) and one record per session, the
//! session limits, credentials in the handshake (and an echoed secret redacted in a
//! message), subprotocols passed and extensions not offered.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs `tollgate_tests::upstream` makes (10.201.0.0/16, /30 per upstream).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::{json, Value};
use tollgate_tests::{
    certs::{make_certificates, Certificates},
    leaks::SuiteLock,
    sandbox::{shared_dir, Sandbox, VENV_PYTHON},
    script_run::{assert_ran, files_in, Outcome, ScriptRun},
    upstream::UpstreamHost,
    Scratch,
};

const SERVER_PY: &str = include_str!("websocket_e2e_server.py");
const CLIENT_PY: &str = include_str!("websocket_e2e_client.py");
const CLIENT_JS: &str = include_str!("websocket_e2e_client.js");
const PORT: u16 = 443;

/// What tollgate puts where it removed an echoed secret.
const REDACTED: &str = "[redacted by tollgate]";

// ---------------------------------------------------------------------------------------
// A wss:// upstream in its own network namespace
// ---------------------------------------------------------------------------------------

/// The names the upstream's leaf is valid for.
const NAMES: [&str; 2] = ["api.example.com", "other.example.com"];

fn start_upstream(material: &Certificates) -> UpstreamHost {
    let (cert, key) = (material.cert.clone(), material.key.clone());
    UpstreamHost::start_server_with(VENV_PYTHON, SERVER_PY, move |addr, log| {
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

struct Bench {
    host: UpstreamHost,
    material: Certificates,
    scratch: Scratch,
    /// The Node client, readable by the sandbox user.
    node_client: PathBuf,
    runs: u32,
}

/// One execution: what tollgate left and every file the script wrote.
struct Run {
    outcome: Outcome,
    files: Vec<(PathBuf, Vec<u8>)>,
}

/// Lines added to the policy [`Bench::policy`] writes.
#[derive(Default)]
struct Extra<'a> {
    /// Appended to the `api.example.com` entry (`network.allow[0]`).
    api: &'a str,
    /// Appended to the `other.example.com` entry (`network.allow[1]`).
    other: &'a str,
    /// `limits.max_requests` (100 when `None`).
    max_requests: Option<u32>,
    /// Appended to `limits`.
    limits: &'a str,
    /// Appended at the top level.
    top: &'a str,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let scratch = Scratch::new(tag);
        fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
        let material = make_certificates(&scratch.dir, &NAMES);
        let host = start_upstream(&material);
        let node_client = scratch.file("client.js", CLIENT_JS);
        fs::set_permissions(&node_client, fs::Permissions::from_mode(0o644)).unwrap();
        Bench {
            host,
            material,
            scratch,
            node_client,
            runs: 0,
        }
    }

    /// Both test names pinned to the upstream and reachable on 443, with `extra`'s lines.
    fn policy(&self, extra: Extra) -> String {
        let subnet = self.host.subnet();
        let addr = self.host.addr;
        format!(
            "version: 1
team: acme
network:
  hosts:
    api.example.com: {addr}
    other.example.com: {addr}
  upstream_ca: {{file: {ca}}}
  allow:
    - host: api.example.com
      ports: [443]
      allowed_ips: [{subnet}]
{api}    - host: other.example.com
      ports: [443]
      allowed_ips: [{subnet}]
{other}limits:
  max_requests: {max_requests}
{limits}{top}",
            ca = self.material.ca.display(),
            api = extra.api,
            other = extra.other,
            max_requests = extra.max_requests.unwrap_or(100),
            limits = extra.limits,
            top = extra.top,
        )
    }

    /// Runs `script` (after the client prelude) under the venv's Python in a sandbox.
    fn run(&mut self, policy: &str, script: &str) -> Run {
        self.runs += 1;
        let n = self.runs;
        let run = ScriptRun::write(&self.scratch, n, "client", policy, CLIENT_PY, script);
        let out = shared_dir(&self.scratch, &format!("out{n}"));
        let finished = run
            .sandbox(Sandbox::new())
            .arg("--secrets-dir")
            .arg(self.scratch.secrets_root())
            .timeout("60s")
            .run([
                VENV_PYTHON,
                run.script_arg(),
                out.to_str().unwrap(),
                self.node_client.to_str().unwrap(),
            ]);
        let outcome = run.outcome(finished);
        assert_ran(&outcome);
        Run {
            outcome,
            files: files_in(&out),
        }
    }

    /// The server's log entries of `event` whose path starts with `prefix`.
    fn logged(&self, event: &str, prefix: &str) -> Vec<Value> {
        self.host
            .requests_to(prefix)
            .into_iter()
            .filter(|entry| entry["event"] == event)
            .collect()
    }

    /// The one handshake the server saw on `path`.
    fn handshake(&self, path: &str) -> Value {
        let found = self.logged("handshake", path);
        assert_eq!(found.len(), 1, "handshakes on {path}: {found:?}");
        found.into_iter().next().unwrap()
    }

    /// The close code of the one session the server saw end on `path`.
    fn server_close_code(&self, path: &str) -> Value {
        let found = self.logged("close", path);
        assert_eq!(
            found.len(),
            1,
            "closes on {path}: {:?}",
            self.host.requests()
        );
        found[0]["code"].clone()
    }
}

impl Run {
    /// The one `http` record of `path`.
    fn record(&self, path: &str) -> &Value {
        let found: Vec<&Value> = self
            .outcome
            .records("http")
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "http records of {path}\n{}",
            self.outcome.describe()
        );
        found[0]
    }

    fn requests(&self) -> u64 {
        self.outcome.summary["proxy"]["requests"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }
}

/// Asserts `record` is a WebSocket session's record that ended `outcome` with `websocket`.
fn assert_session(record: &Value, outcome: &str, websocket: Value) {
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["status"], 101, "{record}");
    assert_eq!(record["protocol"], "http/1.1", "{record}");
    assert_eq!(record["outcome"], outcome, "{record}");
    assert_eq!(record["websocket"], websocket, "{record}");
}

/// The `websocket` object a record must have.
fn websocket(up: u64, down: u64, close_code: u16, closed_by: &str) -> Value {
    json!({
        "messages_up": up,
        "messages_down": down,
        "close_code": close_code,
        "closed_by": closed_by,
    })
}

/// sha256 hex of `text`, by coreutils (what the server logs instead of a credential).
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("/usr/bin/sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

/// The Node client's result `name`, which must have met nothing unexpected (a masked frame
/// from the server, RSV bits of an extension, a connection error).
fn node_result<'a>(run: &'a Run, name: &str) -> &'a Value {
    let node = run.outcome.result(name);
    assert!(node.get("error").is_none(), "{name}: {node}");
    node
}

fn header<'a>(result: &'a Value, key: &str, name: &str) -> &'a Value {
    &result[key][name]
}

/// The JSON body of a refused upgrade.
fn body(result: &Value) -> Value {
    let text = result["body"].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {result}"))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn websocket_echo_works_from_python_and_node_with_the_opt_in_and_each_session_is_one_request() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-echo");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        ..Extra::default()
    });
    let run = bench.run(
        &policy,
        r#"
ws("python", "wss://api.example.com/echo/python",
   messages=["hello from python", b"\x00\x01binary"])
node("node", {"url": "wss://api.example.com/echo/node", "messages": ["hello from node"]})
"#,
    );
    let python = run.outcome.result("python");
    assert_eq!(python["status"], 101, "{python}");
    assert_eq!(
        python["replies"],
        json!(["hello from python", "bytes:000162696e617279"]),
        "{python}"
    );
    assert_eq!(python["subprotocol"], Value::Null, "none was offered");
    assert_eq!(
        python["close"],
        json!({"received": 1000, "reason": "", "sent": 1000}),
        "{python}"
    );
    assert!(python.get("ended_early").is_none(), "{python}");

    let node = node_result(&run, "node");
    assert_eq!(node["connect_status"], 200, "{node}");
    assert_eq!(node["alpn"], "http/1.1", "{node}");
    assert_eq!(node["status"], 101, "{node}");
    assert_eq!(node["accept_ok"], true, "Sec-WebSocket-Accept: {node}");
    assert_eq!(header(node, "headers", "upgrade"), "websocket", "{node}");
    assert!(
        header(node, "headers", "connection")
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{node}"
    );
    assert_eq!(node["replies"], json!(["hello from node"]), "{node}");
    assert_eq!(
        node["close"],
        json!({"code": 1000, "reason": "", "by": "client"})
    );

    // The server: one handshake per session, every message, a normal close each.
    for path in ["/echo/python", "/echo/node"] {
        assert_eq!(bench.handshake(path)["upgrade"], "websocket");
        assert_eq!(bench.server_close_code(path), 1000, "{path}");
    }
    let lengths = |path| -> Vec<Value> {
        bench
            .logged("message", path)
            .iter()
            .map(|m| json!([m["kind"], m["length"]]))
            .collect()
    };
    assert_eq!(
        lengths("/echo/python"),
        vec![json!(["text", 17]), json!(["binary", 8])]
    );
    assert_eq!(lengths("/echo/node"), vec![json!(["text", 15])]);

    // One record per session, written at its end; its bytes are the messages' bytes.
    assert_eq!(
        run.outcome.records("http").len(),
        2,
        "{}",
        run.outcome.describe()
    );
    let python = run.record("/echo/python");
    assert_session(python, "closed", websocket(2, 2, 1000, "client"));
    assert_eq!(
        (&python["bytes_up"], &python["bytes_down"]),
        (&json!(25), &json!(25))
    );
    let node = run.record("/echo/node");
    assert_session(node, "closed", websocket(1, 1, 1000, "client"));
    assert_eq!(
        (&node["bytes_up"], &node["bytes_down"]),
        (&json!(15), &json!(15))
    );
    // Two tunnels, each intercepted.
    let tunnels = run.outcome.records("connect");
    assert_eq!(tunnels.len(), 2, "{}", run.outcome.audit_text);
    assert!(tunnels.iter().all(|t| t["tls"] == "intercept"));
    // Each session is one counted request.
    assert_eq!(run.requests(), 2, "{}", run.outcome.summary_text);
}

#[test]
fn an_upgrade_on_an_entry_without_websocket_true_is_refused_with_a_403_naming_the_option() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-refused");
    // The opt-in is on the other entry: it is the deciding entry's flag that counts.
    let policy = bench.policy(Extra {
        other: "      websocket: true\n",
        ..Extra::default()
    });
    let run = bench.run(
        &policy,
        r#"
ws("python", "wss://api.example.com/echo/refused-python", messages=["never sent"])
node("node", {"url": "wss://api.example.com/echo/refused-node", "messages": ["never sent"]})
ws("opted in", "wss://other.example.com/echo/opted-in", messages=["still works"])
"#,
    );
    for name in ["python", "node"] {
        let result = run.outcome.result(name);
        assert_eq!(result["status"], 403, "{name}: {result}");
        assert_eq!(
            header(result, "headers", "tollgate-error"),
            "policy_denied",
            "{name}: {result}"
        );
        let refusal = body(result);
        assert_eq!(refusal["error"], "policy_denied", "{name}: {refusal}");
        let message = refusal["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("websocket: true") && message.contains("network.allow[0]"),
            "{name}: the message names the option and the entry: {message}"
        );
    }
    assert_eq!(node_result(&run, "node")["connect_status"], 200);
    let opted_in = run.outcome.result("opted in");
    assert_eq!(opted_in["status"], 101, "{opted_in}");
    assert_eq!(opted_in["replies"], json!(["still works"]));

    // Nothing of a refused upgrade reached the server.
    assert!(
        bench.logged("handshake", "/echo/refused").is_empty(),
        "{:?}",
        bench.host.requests()
    );
    assert_eq!(bench.handshake("/echo/opted-in")["upgrade"], "websocket");

    for path in ["/echo/refused-python", "/echo/refused-node"] {
        let record = run.record(path);
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["reason"], "websocket_not_enabled", "{record}");
        assert_eq!(record["rule"], "network.allow[0]", "{record}");
        assert_eq!(record["error"], "policy_denied", "{record}");
        assert_eq!(record["status"], 403, "{record}");
        assert!(record.get("websocket").is_none(), "{record}");
    }
    assert_session(
        run.record("/echo/opted-in"),
        "closed",
        websocket(1, 1, 1000, "client"),
    );
}

#[test]
fn max_tunnel_duration_ends_a_silent_session_with_close_1008_on_both_sides() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-duration");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        limits: "  max_tunnel_duration: 2s\n",
        ..Extra::default()
    });
    // Both clients wait for the session to end: the server says `hello` and nothing more.
    let run = bench.run(
        &policy,
        r#"
ws("python", "wss://api.example.com/silent/python", until_closed=True)
node("node", {"url": "wss://api.example.com/silent/node", "until_closed": True})
"#,
    );
    let python = run.outcome.result("python");
    assert_eq!(python["status"], 101, "{python}");
    assert_eq!(python["replies"], json!(["hello"]), "{python}");
    assert_eq!(python["ended_early"], true, "{python}");
    assert_eq!(python["close"]["received"], 1008, "{python}");
    let node = node_result(&run, "node");
    assert_eq!(node["replies"], json!(["hello"]), "{node}");
    assert_eq!(node["close"]["code"], 1008, "{node}");
    assert_eq!(node["close"]["by"], "server", "{node}");

    for path in ["/silent/python", "/silent/node"] {
        let record = run.record(path);
        assert_session(
            record,
            "tunnel_duration_exceeded",
            websocket(0, 1, 1008, "tollgate"),
        );
        assert!(
            record["duration_ms"].as_u64().unwrap_or(0) >= 2000,
            "the limit counts from the request: {record}"
        );
        // The upstream was told too.
        assert_eq!(bench.server_close_code(path), 1008, "{path}");
    }
    assert_eq!(run.requests(), 2, "{}", run.outcome.summary_text);
}

#[test]
fn max_tunnel_bytes_ends_a_session_with_close_1008_on_both_sides() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-bytes");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        limits: "  max_tunnel_bytes: 1KiB\n",
        ..Extra::default()
    });
    // 50 echoes of 100 bytes would be 10000 bytes up and down: far past 1 KiB.
    let run = bench.run(
        &policy,
        r#"
ws("python", "wss://api.example.com/echo/bytes", messages=["x" * 100] * 50)
"#,
    );
    let python = run.outcome.result("python");
    assert_eq!(python["status"], 101, "{python}");
    assert_eq!(python["ended_early"], true, "{python}");
    assert_eq!(python["close"]["received"], 1008, "{python}");
    let echoed = python["replies"].as_array().map_or(0, Vec::len);
    assert!(
        (1..=10).contains(&echoed),
        "about 1 KiB of echoes got through: {echoed}"
    );

    let record = run.record("/echo/bytes");
    assert_eq!(record["outcome"], "tunnel_bytes_exceeded", "{record}");
    assert_eq!(record["websocket"]["close_code"], 1008, "{record}");
    assert_eq!(record["websocket"]["closed_by"], "tollgate", "{record}");
    assert_eq!(
        record["websocket"]["messages_down"],
        json!(echoed),
        "{record}"
    );
    let total = record["bytes_up"].as_u64().unwrap() + record["bytes_down"].as_u64().unwrap();
    assert!(
        total <= 1024,
        "the session stayed within the limit: {record}"
    );
    let received = bench.logged("message", "/echo/bytes").len();
    assert!(
        received < 50 && received >= echoed,
        "{received} messages reached the server"
    );
    assert_eq!(bench.server_close_code("/echo/bytes"), 1008);
}

/// The bearer secret of the credentials test; it may appear nowhere the sandbox or the logs
/// see.
const SECRET: &str = "e2e-ws-bearer-4b1d9e37c05a";

#[test]
fn a_credential_reaches_the_server_in_the_handshake_and_an_echoed_secret_comes_back_redacted() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-credentials");
    let secret = bench.scratch.secret("acme", "bearer.secret", SECRET);
    let top = format!(
        "auth_providers:
  - name: Bearer
    type: bearer
    secret: {{file: {}}}
    scope: [https://api.example.com]
placeholders:
  - {{env: OPENAI_API_KEY, provider: Bearer}}
",
        secret.display()
    );
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        top: &top,
        ..Extra::default()
    });
    // The Python client puts the placeholder in its handshake (and in a message, where it is
    // not swapped); the Node client names the provider with Tollgate-Auth. The server answers
    // each message with the Authorization header it received.
    let run = bench.run(
        &policy,
        r#"
ph = os.environ["OPENAI_API_KEY"]
results["placeholder"] = ph
ws("python", "wss://api.example.com/echo-auth/placeholder", messages=["ping " + ph],
   headers={"Authorization": "Bearer " + ph})
node("node", {"url": "wss://api.example.com/echo-auth/tollgate-auth",
              "headers": {"Tollgate-Auth": "Bearer"}, "messages": ["pong"]})
save("environ", open("/proc/self/environ", "rb").read())
"#,
    );
    let placeholder = run
        .outcome
        .result("placeholder")
        .as_str()
        .unwrap()
        .to_owned();
    assert!(placeholder.starts_with("tollgate_ph_"), "{placeholder}");

    // The server got the real credential in each handshake (by hash), and no Tollgate-Auth.
    let expected = sha256_hex(&format!("Bearer {SECRET}"));
    for path in ["/echo-auth/placeholder", "/echo-auth/tollgate-auth"] {
        let handshake = bench.handshake(path);
        assert_eq!(
            handshake["authorization_sha256"],
            expected.as_str(),
            "{path}"
        );
        assert!(
            !handshake["header_names"]
                .as_array()
                .unwrap()
                .contains(&json!("tollgate-auth")),
            "{handshake}"
        );
    }
    // Placeholders inside messages are not swapped: the server got it as the sandbox sent it.
    let messages = bench.logged("message", "/echo-auth/placeholder");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["text"], format!("ping {placeholder}"));

    // The server's echo of the injected header value reached the sandbox redacted (whole:
    // the longest needle, `Bearer <secret>`, is replaced, not the secret inside it).
    let python = run.outcome.result("python");
    assert_eq!(python["status"], 101, "{python}");
    assert_eq!(
        python["replies"],
        json!([format!("ping {placeholder}|{REDACTED}")]),
        "{python}"
    );
    let node = node_result(&run, "node");
    assert_eq!(node["status"], 101, "{node}");
    assert_eq!(
        node["replies"],
        json!([format!("pong|{REDACTED}")]),
        "{node}"
    );
    for path in ["/echo-auth/placeholder", "/echo-auth/tollgate-auth"] {
        let record = run.record(path);
        assert_session(record, "closed", websocket(1, 1, 1000, "client"));
        assert_eq!(record["credentials"], json!(["Bearer"]), "{record}");
        assert_eq!(record["finding"], "secret_echoed", "{record}");
    }

    // The secret is nowhere the sandbox or the operator's logs see.
    let mut places: Vec<(String, Vec<u8>)> = run
        .files
        .iter()
        .map(|(path, data)| (path.display().to_string(), data.clone()))
        .collect();
    assert!(
        places.iter().any(|(path, _)| path.ends_with("environ")),
        "the environ dump exists"
    );
    let finished = &run.outcome.finished;
    places.push(("stdout".into(), finished.stdout_bytes.clone()));
    places.push(("stderr".into(), finished.stderr.clone().into_bytes()));
    places.push(("audit".into(), run.outcome.audit_text.clone().into_bytes()));
    places.push((
        "summary".into(),
        run.outcome.summary_text.clone().into_bytes(),
    ));
    for (place, data) in &places {
        assert!(
            !data.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{place} contains the secret"
        );
    }
}

#[test]
fn subprotocols_pass_and_no_extension_is_negotiated_through_tollgate() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-negotiation");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        ..Extra::default()
    });
    // `websockets` offers permessage-deflate by default; the Node client offers it by hand.
    let run = bench.run(
        &policy,
        r#"
ws("python", "wss://api.example.com/echo/sub-python", messages=["sub"],
   subprotocols=["chat.v2", "chat.v1"])
node("node", {"url": "wss://api.example.com/echo/sub-node", "messages": ["sub"],
              "headers": {"Sec-WebSocket-Protocol": "chat.v1, chat.v2",
                          "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}})
"#,
    );
    let python = run.outcome.result("python");
    assert_eq!(python["status"], 101, "{python}");
    assert_eq!(python["subprotocol"], "chat.v2", "{python}");
    assert_eq!(python["extensions"], json!([]), "{python}");
    assert_eq!(
        header(python, "response_headers", "sec-websocket-protocol"),
        "chat.v2"
    );
    assert_eq!(python["replies"], json!(["sub"]));
    let node = node_result(&run, "node");
    assert_eq!(node["status"], 101, "{node}");
    assert_eq!(header(node, "headers", "sec-websocket-protocol"), "chat.v2");
    assert!(
        node["headers"].get("sec-websocket-extensions").is_none(),
        "{node}"
    );
    assert_eq!(node["replies"], json!(["sub"]), "{node}");

    // What the server was offered: the subprotocols as sent, no extension at all.
    let python_offer = bench.handshake("/echo/sub-python");
    assert_eq!(python_offer["subprotocols"], json!(["chat.v2, chat.v1"]));
    let node_offer = bench.handshake("/echo/sub-node");
    assert_eq!(node_offer["subprotocols"], json!(["chat.v1, chat.v2"]));
    for offer in [&python_offer, &node_offer] {
        assert_eq!(offer["extensions"], json!([]), "{offer}");
    }
    for path in ["/echo/sub-python", "/echo/sub-node"] {
        assert_session(run.record(path), "closed", websocket(1, 1, 1000, "client"));
    }
}

#[test]
fn a_malformed_upgrade_is_an_invalid_request_that_never_reaches_the_server() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-malformed");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        ..Extra::default()
    });
    // The raw client breaks one rule of RFC 6455 §4.1 each time.
    let run = bench.run(
        &policy,
        r#"
node("post", {"url": "wss://api.example.com/echo/malformed-post", "method": "POST"})
node("no key", {"url": "wss://api.example.com/echo/malformed-nokey", "omit_key": True})
node("version", {"url": "wss://api.example.com/echo/malformed-version", "version": "8"})
"#,
    );
    for (name, path, names) in [
        ("post", "/echo/malformed-post", "GET"),
        ("no key", "/echo/malformed-nokey", "Sec-WebSocket-Key"),
        (
            "version",
            "/echo/malformed-version",
            "Sec-WebSocket-Version",
        ),
    ] {
        let result = node_result(&run, name);
        assert_eq!(result["status"], 400, "{name}: {result}");
        assert_eq!(
            header(result, "headers", "tollgate-error"),
            "invalid_request",
            "{name}: {result}"
        );
        let refusal = body(result);
        let message = refusal["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(names),
            "{name}: says what is wrong: {message}"
        );
        let record = run.record(path);
        assert_eq!(record["decision"], "deny", "{record}");
        assert_eq!(record["error"], "invalid_request", "{record}");
        assert!(record.get("websocket").is_none(), "{record}");
    }
    assert!(
        bench.logged("handshake", "/echo/malformed").is_empty(),
        "{:?}",
        bench.host.requests()
    );
}

#[test]
fn each_session_counts_against_max_requests() {
    let _lock = SuiteLock::shared();
    let mut bench = Bench::new("ws-max-requests");
    let policy = bench.policy(Extra {
        api: "      websocket: true\n",
        max_requests: Some(1),
        ..Extra::default()
    });
    // Many messages in the first session; the second session is a second request.
    let run = bench.run(
        &policy,
        r#"
ws("first", "wss://api.example.com/echo/first", messages=["one", "two", "three"])
ws("second", "wss://api.example.com/echo/second", messages=["never sent"])
"#,
    );
    let first = run.outcome.result("first");
    assert_eq!(first["status"], 101, "{first}");
    assert_eq!(first["replies"], json!(["one", "two", "three"]), "{first}");
    let second = run.outcome.result("second");
    assert_eq!(second["status"], 429, "{second}");
    assert_eq!(
        header(second, "headers", "tollgate-error"),
        "request_limit_exceeded",
        "{second}"
    );
    assert_eq!(bench.handshake("/echo/first")["upgrade"], "websocket");
    assert!(
        bench.logged("handshake", "/echo/second").is_empty(),
        "{:?}",
        bench.host.requests()
    );
    assert_session(
        run.record("/echo/first"),
        "closed",
        websocket(3, 3, 1000, "client"),
    );
    assert_eq!(run.record("/echo/second")["decision"], "deny");
    assert_eq!(run.requests(), 1, "{}", run.outcome.summary_text);
}
