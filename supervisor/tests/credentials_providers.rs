//! Team credentials in-process, inside intercepted TLS: each provider type's exact header,
//! `Tollgate-Auth` refusals (unknown name, no providers, outside the scope), case-insensitive
//! replacement, URL credentials, placeholders (swapped in scope, refused out of it, in the
//! URL, a header or the body), echoed secrets redacted, and the secrets never in an error
//! body or the audit log.

mod proxy_support;
mod tls_support;

use base64::Engine;
use tls_support::*;
use tollgate::proxy::{Credentials, Proxy};
use tollgate_policy::secrets::SecretRules;

const SECRET_BASIC: &str = "basic-pw-5f1c0e";
const SECRET_KEY: &str = "apikey-9a7d33";
const SECRET_BEARER: &str = "bearer-tok-42ab";
const SECRET_CC: &str = "commcare-key-77e1";
const SECRET_H1: &str = "hdr-one-c0ffee";
const SECRET_H2: &str = "hdr-two-decade";
const ALL_SECRETS: [&str; 6] = [
    SECRET_BASIC,
    SECRET_KEY,
    SECRET_BEARER,
    SECRET_CC,
    SECRET_H1,
    SECRET_H2,
];

/// The secrets root of a test (`--secrets-dir`): `<dir>/secrets`, with team acme's files.
fn secret_rules(dir: &Dir) -> SecretRules {
    SecretRules::new(dir.0.join("secrets"), []).expect("secret rules")
}

/// A 0600 secret file of team acme, named by its path relative to the team's directory.
fn team_secret(dir: &Dir, name: &str, value: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let team = dir.0.join("secrets/acme");
    std::fs::create_dir_all(&team).expect("team secrets dir");
    let path = team.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    name.to_owned()
}

/// A policy with one provider of each type (secrets in 0600 files of team acme) on
/// api.test, plus `extra` top-level sections; other.test is allowed without any credential.
fn providers_policy(
    dir: &Dir,
    ca_file: &std::path::Path,
    extra: &str,
) -> std::sync::Arc<tollgate_policy::Policy> {
    let file = |name: &str, value: &str| team_secret(dir, name, value);
    let providers = format!(
        "auth_providers:
  - name: Basic One
    type: basic
    username: robot
    secret: {{file: {}}}
    scope: [https://api.test]
  - name: Key
    type: api_key
    header: X-Api-Key
    secret: {{file: {}}}
    scope: [https://api.test/v1]
  - name: Bearer
    type: bearer
    secret: {{file: {}}}
    scope: [https://api.test]
  - name: CommCare
    type: commcare
    username: bot@example.org
    secret: {{file: {}}}
    scope: [https://api.test]
  - name: Pair
    type: headers
    headers:
      - {{name: X-First, secret: {{file: {}}}}}
      - {{name: X-Second, secret: {{file: {}}}}}
    scope: [https://api.test]
{extra}",
        file("basic", SECRET_BASIC),
        file("key", SECRET_KEY),
        file("bearer", SECRET_BEARER),
        file("cc", SECRET_CC),
        file("h1", SECRET_H1),
        file("h2", SECRET_H2),
    );
    let allow = format!("{}{}", entry("api.test", ""), entry("other.test", ""));
    tls_policy(ca_file, &allow, &providers)
}

struct World {
    _dir: Dir,
    api: TlsUpstream,
    other: TlsUpstream,
    proxy: Intercepting,
    /// What `tollgate run` would put in the child's environment.
    placeholders: std::collections::HashMap<String, String>,
}

async fn world(
    extra: &str,
    handler: fn(&proxy_support::Seen, usize) -> http::Response<tollgate::proxy::body::ProxyBody>,
) -> World {
    let dir = Dir::new("creds");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let api = tls_upstream(ca.server_config(&["api.test"]), handler).await;
    let other = tls_upstream(ca.server_config(&["other.test"]), handler).await;
    let policy = providers_policy(&dir, &ca_file, extra);
    let credentials = Credentials::load(&policy, &secret_rules(&dir)).expect("credentials load");
    let placeholders = credentials.placeholder_environment().into_iter().collect();
    let proxy = start(
        Proxy::builder(policy)
            .credentials(credentials)
            .transport(remap(api.addr, Some(other.addr))),
    );
    World {
        _dir: dir,
        api,
        other,
        proxy,
        placeholders,
    }
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in ALL_SECRETS {
        assert!(!text.contains(secret), "{what} contains a secret: {text}");
    }
}

/// Provider, path, and the headers the upstream must receive.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, String)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_type_sends_exactly_its_header() {
    let w = world("", echo).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let cases: [Case; 5] = [
        (
            "Basic One",
            "/v1/basic",
            &[(
                "authorization",
                format!("Basic {}", b64.encode(format!("robot:{SECRET_BASIC}"))),
            )],
        ),
        ("Key", "/v1/key", &[("x-api-key", SECRET_KEY.to_owned())]),
        (
            "Bearer",
            "/v1/bearer",
            &[("authorization", format!("Bearer {SECRET_BEARER}"))],
        ),
        (
            "CommCare",
            "/v1/cc",
            &[(
                "authorization",
                format!("ApiKey bot@example.org:{SECRET_CC}"),
            )],
        ),
        (
            "Pair",
            "/v1/pair",
            &[
                ("x-first", SECRET_H1.to_owned()),
                ("x-second", SECRET_H2.to_owned()),
            ],
        ),
    ];
    for (n, (provider, path, expected)) in cases.iter().enumerate() {
        let auth = format!("Tollgate-Auth: {provider}");
        let url = format!("https://api.test{path}");
        let ran = curl(&w.proxy, &["-H", &auth, &url, "-w", " %{http_code}"]).await;
        assert!(ran.stdout.ends_with(" 200"), "{provider}: {ran:?}");
        let seen = &w.api.seen()[n];
        for (name, value) in expected.iter() {
            assert_eq!(
                values(seen, name),
                vec![value.clone()],
                "{provider}: {name}"
            );
        }
        assert!(
            values(seen, "tollgate-auth").is_empty(),
            "Tollgate-Auth is never forwarded"
        );
        // Nothing else credential-like went out.
        for name in ["authorization", "x-api-key", "x-first", "x-second"] {
            if !expected.iter().any(|(n, _)| n == &name) {
                assert!(values(seen, name).is_empty(), "{provider} also sent {name}");
            }
        }
        // The echoed request came back with the secret redacted.
        assert_no_secret(&ran.stdout, "the response body");
        assert!(ran.stdout.contains("[redacted by tollgate]"), "{ran:?}");
    }
    let records = w.proxy.records();
    let text = w.proxy.audit.text();
    assert_no_secret(&text, "the audit log");
    let credentials: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "http")
        .map(|r| r["credentials"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        credentials,
        ["Basic One", "Key", "Bearer", "CommCare", "Pair"]
    );
    assert!(records
        .iter()
        .filter(|r| r["type"] == "http")
        .all(|r| r["finding"] == "secret_echoed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_providers_and_other_scopes_are_refused_with_the_exact_messages() {
    let w = world("", echo).await;
    let ran = curl(
        &w.proxy,
        &[
            "-H",
            "Tollgate-Auth: Nope",
            "https://api.test/v1/x",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 403"), "{ran:?}");
    let body: serde_json::Value =
        serde_json::from_str(ran.stdout.trim_end_matches(" 403")).expect("json");
    assert_eq!(body["error"], "auth_provider_error");
    assert_eq!(
        body["message"],
        "Auth provider 'Nope' not found. Available providers: Basic One, Key, Bearer, CommCare, Pair"
    );
    // Key is scoped to https://api.test/v1; /v2 on the same host and other.test are outside.
    for url in ["https://api.test/v2/x", "https://other.test/v1/x"] {
        let ran = curl(
            &w.proxy,
            &["-H", "Tollgate-Auth: Key", url, "-w", " %{http_code}"],
        )
        .await;
        assert!(ran.stdout.ends_with(" 403"), "{url}: {ran:?}");
        assert!(
            ran.stdout.contains("\"error\":\"credential_scope_denied\""),
            "{ran:?}"
        );
        assert!(
            ran.stdout.contains("https://api.test/v1"),
            "names the scope: {ran:?}"
        );
        assert_no_secret(&ran.stdout, "an error body");
    }
    assert_eq!(w.api.count() + w.other.count(), 0, "nothing was sent");
    assert_no_secret(&w.proxy.audit.text(), "the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_without_providers_is_told_so() {
    let dir = Dir::new("noproviders");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let api = tls_upstream(ca.server_config(&["api.test"]), echo).await;
    let proxy = start(
        Proxy::builder(tls_policy(&ca_file, &entry("api.test", ""), ""))
            .transport(remap(api.addr, None)),
    );
    let ran = curl(
        &proxy,
        &[
            "-H",
            "Tollgate-Auth: Anything",
            "https://api.test/x",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 403"), "{ran:?}");
    assert!(ran.stdout.contains("\"error\":\"auth_provider_error\""));
    assert!(
        ran.stdout
            .contains("\"message\":\"Auth providers are not available in this context\""),
        "{ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_headers_replace_the_sandboxes_whatever_their_case() {
    let w = world("", echo).await;
    let ran = curl(
        &w.proxy,
        &[
            "-H",
            "Tollgate-Auth: Bearer",
            "-H",
            "authorization: Bearer mine",
            "-H",
            "AUTHORIZATION: Basic b3RoZXI=",
            "https://api.test/v1/x",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    let seen = &w.api.seen()[0];
    assert_eq!(
        values(seen, "authorization"),
        vec![format!("Bearer {SECRET_BEARER}")],
        "exactly one Authorization"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_attach_by_pattern_and_tollgate_auth_wins() {
    let w = world(
        "credentials:\n  - {pattern: https://api.test/v1, provider: Key}\n  - {pattern: https://api.test/v1/b, provider: Bearer}\n  - {pattern: https://api.test/v1/b, provider: CommCare}\n",
        echo,
    )
    .await;
    for path in ["/v1/a", "/v1/b", "/v2/c"] {
        let url = format!("https://api.test{path}");
        let ran = curl(&w.proxy, &[url.as_str(), "-w", " %{http_code}"]).await;
        assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    }
    let ran = curl(
        &w.proxy,
        &[
            "-H",
            "Tollgate-Auth: CommCare",
            "https://api.test/v1/b",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    let seen = w.api.seen();
    assert_eq!(values(&seen[0], "x-api-key"), vec![SECRET_KEY]);
    assert!(values(&seen[0], "authorization").is_empty());
    // Both Key and Bearer match /v1/b; CommCare too, but Bearer came first for Authorization.
    assert_eq!(values(&seen[1], "x-api-key"), vec![SECRET_KEY]);
    assert_eq!(
        values(&seen[1], "authorization"),
        vec![format!("Bearer {SECRET_BEARER}")]
    );
    assert!(
        values(&seen[2], "x-api-key").is_empty(),
        "/v2 matches no pattern"
    );
    assert!(values(&seen[2], "authorization").is_empty());
    assert_eq!(
        values(&seen[3], "authorization"),
        vec![format!("ApiKey bot@example.org:{SECRET_CC}")],
        "the provider named in Tollgate-Auth wins over URL credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_swapped_in_scope_and_refused_anywhere_outside_it() {
    let w = world(
        "placeholders:\n  - {env: BEARER_TOKEN, provider: Bearer}\n  - {env: BASIC_PASSWORD, provider: Basic One}\n",
        echo,
    )
    .await;
    let bearer = &w.placeholders["BEARER_TOKEN"];
    let basic = &w.placeholders["BASIC_PASSWORD"];
    assert!(bearer.starts_with("tollgate_ph_") && bearer.len() == 12 + 32);

    // In scope, in the header the provider owns: the secret goes out instead.
    let header = format!("Authorization: Bearer {bearer}");
    let ran = curl(
        &w.proxy,
        &["-H", &header, "https://api.test/in", "-w", " %{http_code}"],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    assert_eq!(
        values(&w.api.seen()[0], "authorization"),
        vec![format!("Bearer {SECRET_BEARER}")]
    );
    // Basic credentials built by the client around the placeholder are swapped too.
    let user = format!("robot:{basic}");
    let ran = curl(
        &w.proxy,
        &["-u", &user, "https://api.test/basic", "-w", " %{http_code}"],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        values(&w.api.seen()[1], "authorization"),
        vec![format!(
            "Basic {}",
            b64.encode(format!("robot:{SECRET_BASIC}"))
        )]
    );

    // Outside the scope: refused wherever it appears, nothing sent.
    let in_header = format!("Authorization: Bearer {bearer}");
    let in_other_header = format!("X-Anything: {bearer}");
    let in_query = format!("https://other.test/q?token={bearer}");
    let in_body = format!("{{\"token\": \"{bearer}\"}}");
    let attempts: Vec<Vec<&str>> = vec![
        vec!["-H", &in_header, "https://other.test/h"],
        vec!["-H", &in_other_header, "https://other.test/h2"],
        vec![&in_query],
        vec!["-d", &in_body, "https://other.test/b"],
    ];
    for args in &attempts {
        let mut all = args.clone();
        all.extend(["-w", " %{http_code}"]);
        let ran = curl(&w.proxy, &all).await;
        assert!(ran.stdout.ends_with(" 403"), "{args:?}: {ran:?}");
        assert!(
            ran.stdout
                .contains("\"error\":\"credential_placeholder_mismatch\""),
            "{ran:?}"
        );
        assert!(
            ran.stdout.contains("$BEARER_TOKEN"),
            "names the variable: {ran:?}"
        );
        assert_no_secret(&ran.stdout, "an error body");
    }
    assert_eq!(w.other.count(), 0, "no placeholder left for another host");
    let records = w.proxy.records();
    let findings = records
        .iter()
        .filter(|r| r["finding"] == "placeholder_outside_scope")
        .count();
    assert_eq!(findings, 4, "{records:?}");
    // In scope but not in an owned header: sent as it is (it is no secret), not swapped.
    let ran = curl(
        &w.proxy,
        &[
            "-d",
            &in_body,
            "https://api.test/body",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&w.api.seen()[2].body), in_body);
    assert_no_secret(&w.proxy.audit.text(), "the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_secret_is_redacted_in_headers_and_bodies() {
    fn echo_back(
        seen: &proxy_support::Seen,
        n: usize,
    ) -> http::Response<tollgate::proxy::body::ProxyBody> {
        let mut response = echo(seen, n);
        if let Some(auth) = seen.headers.get("authorization") {
            response.headers_mut().insert("x-echo", auth.clone());
        }
        // An upstream cannot pass for tollgate.
        response
            .headers_mut()
            .insert("tollgate-error", "policy_denied".parse().unwrap());
        response
    }
    let w = world("", echo_back).await;
    let ran = curl(
        &w.proxy,
        &[
            "-i",
            "-H",
            "Tollgate-Auth: Bearer",
            "https://api.test/v1/echo",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_no_secret(&ran.stdout, "the response the sandbox saw");
    assert!(
        ran.stdout
            .to_ascii_lowercase()
            .contains("x-echo: [redacted by tollgate]"),
        "{ran:?}"
    );
    assert!(
        !ran.stdout.to_ascii_lowercase().contains("tollgate-error"),
        "{ran:?}"
    );
    // The upstream did get the secret, compression was not offered.
    let seen = &w.api.seen()[0];
    assert_eq!(
        values(seen, "authorization"),
        vec![format!("Bearer {SECRET_BEARER}")]
    );
    assert_eq!(values(seen, "accept-encoding"), vec!["identity"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_helper_runs_the_seed_example_and_raises_typed_errors() {
    let w = world("", |seen, n| {
        if seen.uri.starts_with("/data") {
            let mut response = echo(seen, n);
            *response.body_mut() = tollgate::proxy::body::full(
                serde_json::json!({"result": format!("got {}", String::from_utf8_lossy(&seen.body))})
                    .to_string(),
            );
            response
        } else {
            proxy_support::status(404, "missing")
        }
    })
    .await;
    let script = r#"
from tollgate_http import http, HttpAuthProviderError, HttpPolicyDenied, HttpInvalidURL

def main():
    resp = http.post("https://api.test/data", auth="Bearer", json={"query": 1}, timeout=10)
    if resp["is_error"]:
        return f"Error: {resp['status_code']}"
    return resp["json"]["result"]

print(main())
missing = http.get("https://api.test/v1/nothing")
print(missing["status_code"], missing["is_error"], missing["json"])
try:
    http.get("https://api.test/v1/x", auth="Nope")
except HttpAuthProviderError as e:
    print("auth:", e.status_code, e.error, e.message)
try:
    http.get("https://denied.test/")
except HttpInvalidURL as e:
    print("denied:", type(e).__name__, e.error)
try:
    http.post("https://api.test/v1/x", json={}, data="x")
except ValueError:
    print("json and data: ValueError")
"#;
    let ran = python(&w.proxy, script, &[]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], "got {\"query\": 1}", "{ran:?}");
    assert_eq!(lines[1], "404 True None");
    assert_eq!(
        lines[2],
        "auth: 403 auth_provider_error Auth provider 'Nope' not found. Available providers: Basic One, Key, Bearer, CommCare, Pair"
    );
    assert_eq!(lines[3], "denied: HttpPolicyDenied policy_denied");
    assert_eq!(lines[4], "json and data: ValueError");
    let seen = &w.api.seen()[0];
    assert_eq!(
        values(seen, "authorization"),
        vec![format!("Bearer {SECRET_BEARER}")],
        "auth= became Tollgate-Auth"
    );
    assert_eq!(values(seen, "content-type"), vec!["application/json"]);
    assert_eq!(values(seen, "tollgate-timeout"), Vec::<String>::new());
    let records = w.proxy.records();
    assert!(records.iter().any(|r| r["credentials"][0] == "Bearer"));
}
