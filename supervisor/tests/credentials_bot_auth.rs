//! Web Bot Auth, checked by an implementation nobody here wrote: Cloudflare's `web-bot-auth`
//! crate verifies the signatures an HTTPS upstream (through interception) and an HTTP upstream
//! (forward proxy) received, with the key directory `tollgate bot-auth jwks` prints; a
//! tampered request fails verification.

mod proxy_support;
mod tls_support;

use base64::Engine;
use std::collections::HashMap;
use tls_support::*;
use tollgate::proxy::{Credentials, Proxy};
use web_bot_auth::components::{CoveredComponent, DerivedComponent, HTTPField};
use web_bot_auth::keyring::{JSONWebKeySet, KeyRing};
use web_bot_auth::message_signatures::SignedMessage;
use web_bot_auth::WebBotAuthVerifier;

/// A received request as the verifier sees it: its headers and its authority.
#[derive(Clone)]
struct Received {
    headers: HashMap<String, Vec<String>>,
    authority: String,
}

impl Received {
    fn from_seen(seen: &proxy_support::Seen) -> Received {
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in &seen.headers {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(value.to_str().unwrap().to_owned());
        }
        let authority = headers["host"][0].clone();
        Received { headers, authority }
    }
}

impl SignedMessage for Received {
    fn lookup_component(&self, name: &CoveredComponent) -> Vec<String> {
        match name {
            CoveredComponent::HTTP(HTTPField { name, .. }) => {
                self.headers.get(name).cloned().unwrap_or_default()
            }
            CoveredComponent::Derived(DerivedComponent::Authority { .. }) => {
                vec![self.authority.clone()]
            }
            _ => vec![],
        }
    }
}

fn verify(received: &Received, keyring: &KeyRing) -> Result<(), String> {
    let verifier = WebBotAuthVerifier::parse(received).map_err(|e| format!("parse: {e:?}"))?;
    let advisory = verifier
        .get_parsed_label()
        .base
        .parameters
        .details
        .possibly_insecure(|nonce| nonce.len() < 32);
    if advisory.is_expired != Some(false) || advisory.nonce_is_invalid != Some(false) {
        return Err(format!(
            "insecure: expired {:?}, nonce invalid {:?}",
            advisory.is_expired, advisory.nonce_is_invalid
        ));
    }
    verifier
        .verify(keyring, None)
        .map(|_| ())
        .map_err(|e| format!("verify: {e:?}"))
}

/// The key directory as the CLI prints it, imported into a verifier's key ring.
fn keyring_from_cli(policy_file: &std::path::Path, key_env: &str, seed: &str) -> (KeyRing, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["bot-auth", "jwks", "--policy"])
        .arg(policy_file)
        .env(key_env, seed)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.contains(seed),
        "the directory holds the public key only"
    );
    let jwks: JSONWebKeySet = serde_json::from_str(&text).unwrap();
    let key_id = jwks.keys[0].b64_thumbprint();
    let mut keyring = KeyRing::default();
    assert!(keyring.import_jwks(jwks).iter().all(Option::is_none));
    (keyring, key_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_signed_verifiably_and_tampering_is_detected() {
    let dir = Dir::new("botauth");
    let ca = TestCa::new("upstream test CA");
    let ca_file = dir.file("upstream-ca.pem", ca.pem.as_bytes());
    let https = tls_upstream(ca.server_config(&["api.test"]), echo).await;
    let http = proxy_support::upstream(|_, _| proxy_support::ok("plain")).await;
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed);
    // Team acme's own variable: TOLLGATE_SECRET_ACME_ and letters and digits.
    let key_env = format!("TOLLGATE_SECRET_ACME_BOTSEED{}", std::process::id());
    // SAFETY (edition 2021: safe): a variable only this test reads.
    std::env::set_var(&key_env, &seed);
    let extra = format!(
        "bot_auth:\n  key: {{env: {key_env}}}\n  signature_agent: https://bot.acme.example/agent\n  validity: 60s\n"
    );
    let allow = format!(
        "{}    - host: plain.test\n      ports: [80]\n      allowed_ips: [198.51.100.0/24]\n",
        entry("api.test", "")
    );
    let policy = tls_policy(&ca_file, &allow, &extra);
    let policy_file = dir.file(
        "policy.yaml",
        format!("version: 1\nteam: acme\nnetwork:\n  allow: [https://api.test]\n{extra}")
            .as_bytes(),
    );
    let (keyring, key_id) = keyring_from_cli(&policy_file, &key_env, &seed);
    let credentials = Credentials::load(&policy, &Default::default()).expect("credentials");
    assert_eq!(credentials.bot().expect("signer").key_id(), key_id);
    let mut policy = policy.as_ref().clone();
    policy
        .network
        .as_mut()
        .unwrap()
        .hosts
        .insert("plain.test".into(), OTHER_IP.parse().unwrap());
    let proxy = start(
        Proxy::builder(std::sync::Arc::new(policy))
            .credentials(credentials)
            .transport(remap(https.addr, Some(http.addr))),
    );
    // A forged signature from the sandbox is replaced, not forwarded.
    let ran = curl(
        &proxy,
        &[
            "-H",
            "Signature: sig1=:Zm9yZ2Vk:",
            "-H",
            "Signature-Agent: \"https://evil.example\"",
            "https://api.test/signed",
            "-w",
            " %{http_code}",
        ],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");
    let ran = curl(
        &proxy,
        &["http://plain.test/forwarded", "-w", " %{http_code}"],
    )
    .await;
    assert!(ran.stdout.ends_with(" 200"), "{ran:?}");

    let received = [
        Received::from_seen(&https.seen()[0]),
        Received::from_seen(&http.seen()[0]),
    ];
    for message in &received {
        assert_eq!(message.headers["signature"].len(), 1);
        assert_eq!(
            message.headers["signature-agent"],
            vec!["\"https://bot.acme.example/agent\""]
        );
        let input = &message.headers["signature-input"][0];
        assert!(
            input.starts_with("sig1=(\"@authority\" \"signature-agent\");created="),
            "{input}"
        );
        assert!(input.contains(&format!(";keyid=\"{key_id}\";alg=\"ed25519\";nonce=\"")));
        assert!(input.ends_with(";tag=\"web-bot-auth\""), "{input}");
        verify(message, &keyring).unwrap_or_else(|e| panic!("{}: {e}", message.authority));
    }
    assert_eq!(received[0].authority, "api.test");
    assert_eq!(received[1].authority, "plain.test");
    let nonce = |m: &Received| {
        m.headers["signature-input"][0]
            .split("nonce=")
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_ne!(
        nonce(&received[0]),
        nonce(&received[1]),
        "a fresh nonce per request"
    );

    // Tampering: another authority, another agent, a flipped signature byte.
    let mut other_host = received[0].clone();
    other_host.authority = "evil.test".into();
    assert!(verify(&other_host, &keyring).is_err());
    let mut other_agent = received[0].clone();
    other_agent.headers.insert(
        "signature-agent".into(),
        vec!["\"https://evil.example\"".into()],
    );
    assert!(verify(&other_agent, &keyring).is_err());
    let mut flipped = received[0].clone();
    let signature = flipped.headers["signature"][0].clone();
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = signature.trim_start_matches("sig1=:").trim_end_matches(':');
    let mut bytes = b64.decode(raw).unwrap();
    bytes[10] ^= 1;
    flipped.headers.insert(
        "signature".into(),
        vec![format!("sig1=:{}:", b64.encode(bytes))],
    );
    assert!(verify(&flipped, &keyring).is_err());
    let records = proxy.records();
    assert!(!records.is_empty());
    assert!(!proxy.audit.text().contains(&seed));
}
