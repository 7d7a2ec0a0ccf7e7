//! Web Bot Auth: every outgoing HTTP request signed with the team's Ed25519 key (RFC 9421
//! HTTP Message Signatures, `tag="web-bot-auth"`), so sites can tell the team's automated
//! traffic from anyone else's.
//!
//! Each attempt gets its own signature (fresh `created`, `expires` and nonce, so a verifier
//! that remembers nonces accepts a retry). The signature covers `@authority` and
//! `Signature-Agent`; headers the sandbox sent under these three names are replaced. The
//! public key is published as a JWKS directory (`tollgate bot-auth jwks`) whose key id is the
//! RFC 7638 thumbprint that `keyid` names.

use super::secrets::{self, SecretError, TeamSecrets};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_policy::model::BotAuth;

/// The signature label; verifiers look for the `web-bot-auth` tag, not the label.
const LABEL: &str = "sig1";
const SIGNATURE: HeaderName = HeaderName::from_static("signature");
const SIGNATURE_INPUT: HeaderName = HeaderName::from_static("signature-input");
const SIGNATURE_AGENT: HeaderName = HeaderName::from_static("signature-agent");

/// base64url with or without padding: seeds are written by hand.
const SEED_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum BotAuthError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("the bot_auth key from {0} is not a base64url-encoded 32-byte Ed25519 seed")]
    BadSeed(String),
    #[error("bot_auth.signature_agent cannot be sent as a structured-field string: {0}")]
    BadAgent(String),
}

/// The team's signing key and what every signature says about it.
pub struct BotSigner {
    key: SigningKey,
    key_id: String,
    /// `Signature-Agent`, serialised: `"https://…"` with the quotes.
    agent: HeaderValue,
    validity: Duration,
}

impl std::fmt::Debug for BotSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotSigner")
            .field("key_id", &self.key_id)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl BotSigner {
    /// Loads the seed the policy references (from the team's own secrets) and prepares the
    /// signer.
    pub fn load(bot: &BotAuth, team: &mut TeamSecrets<'_>) -> Result<BotSigner, BotAuthError> {
        let rule = tollgate_policy::secrets::rule_path("bot_auth.key", &bot.key);
        let seed = team.load(&rule, "the Web Bot Auth key", &bot.key)?;
        let bytes = SEED_BASE64
            .decode(seed.expose())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| BotAuthError::BadSeed(secrets::describe(&bot.key)))?;
        BotSigner::from_seed(&bytes, &bot.signature_agent, bot.validity)
    }

    pub fn from_seed(
        seed: &[u8; 32],
        signature_agent: &str,
        validity: Duration,
    ) -> Result<BotSigner, BotAuthError> {
        let key = SigningKey::from_bytes(seed);
        let key_id = thumbprint(key.verifying_key().as_bytes());
        let string = sfv::StringRef::from_str(signature_agent)
            .map_err(|e| BotAuthError::BadAgent(e.to_string()))?;
        let agent = sfv::ItemSerializer::new().bare_item(string).finish();
        let agent =
            HeaderValue::from_str(&agent).map_err(|e| BotAuthError::BadAgent(e.to_string()))?;
        Ok(BotSigner {
            key,
            key_id,
            agent,
            validity,
        })
    }

    /// The RFC 7638 JWK thumbprint of the public key: the `keyid` of every signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key directory to publish at
    /// `/.well-known/http-message-signatures-directory`.
    pub fn directory(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
                "kid": self.key_id,
                "alg": "Ed25519",
                "use": "sig",
            }]
        })
    }

    /// Signs a request to `authority` (`host[:port]`, the port only when not the scheme's
    /// default, exactly as sent in `Host`), replacing any signature headers it carried.
    pub fn sign(&self, headers: &mut HeaderMap, authority: &str) {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expires = created.saturating_add(self.validity.as_secs().max(1));
        let mut nonce = [0u8; 64];
        if getrandom::fill(&mut nonce).is_err() {
            // The OS CSPRNG does not fail on Linux once booted; never sign with a weak nonce.
            tracing::error!("no randomness for a Web Bot Auth nonce; the request is sent unsigned");
            return;
        }
        let nonce = STANDARD.encode(nonce);
        let agent = self.agent.to_str().unwrap_or_default();
        let params = self.signature_params(created, expires, &nonce);
        let base = format!(
            "\"@authority\": {}\n\"signature-agent\": {agent}\n\"@signature-params\": {params}",
            authority.to_ascii_lowercase()
        );
        let signature = self.key.sign(base.as_bytes());
        let input = format!("{LABEL}={params}");
        let value = format!("{LABEL}=:{}:", STANDARD.encode(signature.to_bytes()));
        headers.remove(&SIGNATURE);
        headers.remove(&SIGNATURE_INPUT);
        headers.insert(SIGNATURE_AGENT, self.agent.clone());
        if let (Ok(input), Ok(value)) =
            (HeaderValue::from_str(&input), HeaderValue::from_str(&value))
        {
            headers.insert(SIGNATURE_INPUT, input);
            headers.insert(SIGNATURE, value);
        }
    }

    /// `("@authority" "signature-agent");created=…;expires=…;keyid="…";alg="ed25519";
    /// nonce="…";tag="web-bot-auth"`, serialised as an RFC 8941 inner list.
    fn signature_params(&self, created: u64, expires: u64, nonce: &str) -> String {
        let mut out = String::new();
        let mut dict = sfv::DictSerializer::with_buffer(&mut out);
        let key = |k: &'static str| sfv::KeyRef::constant(k);
        let string = |s: &str| sfv::StringRef::from_str(s).map(|s| s.to_owned()).ok();
        {
            let mut list = dict.inner_list(key("x"));
            let _ = list.bare_item(sfv::StringRef::constant("@authority"));
            let _ = list.bare_item(sfv::StringRef::constant("signature-agent"));
            let mut params = list
                .finish()
                .parameter(key("created"), integer(created))
                .parameter(key("expires"), integer(expires));
            for (name, value) in [
                ("keyid", self.key_id.as_str()),
                ("alg", "ed25519"),
                ("nonce", nonce),
                ("tag", "web-bot-auth"),
            ] {
                if let Some(value) = string(value) {
                    params = params.parameter(key(name), &value);
                }
            }
        }
        let _ = dict.finish();
        out.strip_prefix("x=").map(str::to_owned).unwrap_or(out)
    }
}

/// Structured-field integers stop at 15 digits; Unix times are far below.
fn integer(seconds: u64) -> sfv::Integer {
    sfv::Integer::try_from(seconds).unwrap_or(sfv::Integer::MAX)
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the canonical JWK (members
/// `crv`, `kty`, `x` in that order, no whitespace), base64url without padding.
pub fn thumbprint(public_key: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key pair of RFC 9421 §B.1.4 / the web-bot-auth draft's examples.
    const SEED: [u8; 32] = [
        0x9f, 0x83, 0x62, 0xf8, 0x7a, 0x48, 0x4a, 0x95, 0x4e, 0x6e, 0x74, 0x0c, 0x5b, 0x4c, 0x0e,
        0x84, 0x22, 0x91, 0x39, 0xa2, 0x0a, 0xa8, 0xab, 0x56, 0xff, 0x66, 0x58, 0x6f, 0x6a, 0x7d,
        0x29, 0xc5,
    ];

    #[test]
    fn the_key_id_is_the_published_thumbprint() {
        let signer = BotSigner::from_seed(&SEED, "https://bot.example", Duration::from_secs(300))
            .expect("signer");
        // The thumbprint the web-bot-auth draft publishes for this key.
        assert_eq!(
            signer.key_id(),
            "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"
        );
    }

    #[test]
    fn signing_sets_the_three_headers_and_replaces_the_sandboxes() {
        let signer = BotSigner::from_seed(&SEED, "https://bot.example", Duration::from_secs(300))
            .expect("signer");
        let mut headers = HeaderMap::new();
        headers.insert("Signature", HeaderValue::from_static("forged=:AAAA:"));
        headers.append("signature-input", HeaderValue::from_static("forged=()"));
        signer.sign(&mut headers, "api.example.com");
        assert_eq!(headers.get_all("signature").iter().count(), 1);
        assert_eq!(headers["signature-agent"], "\"https://bot.example\"");
        let input = headers["signature-input"].to_str().expect("ascii");
        assert!(
            input.starts_with("sig1=(\"@authority\" \"signature-agent\");created="),
            "{input}"
        );
        assert!(input.contains(";alg=\"ed25519\";nonce=\""), "{input}");
        assert!(input.ends_with(";tag=\"web-bot-auth\""), "{input}");
        let signature = headers["signature"].to_str().expect("ascii");
        assert!(signature.starts_with("sig1=:") && signature.ends_with(':'));
    }

    #[test]
    fn an_agent_that_is_not_a_structured_string_is_refused() {
        assert!(
            BotSigner::from_seed(&SEED, "https://bot.example/\u{e9}", Duration::from_secs(1))
                .is_err()
        );
    }
}
