//! Team credentials, attached on the way out so sandboxed code never holds a secret.
//!
//! Three ways a request gets one, all bound to the provider's `scope`:
//! - `Tollgate-Auth: <provider>` names a provider of the execution's team; a name the team
//!   does not have is `auth_provider_error`, a destination outside the scope is
//!   `credential_scope_denied`.
//! - `credentials: [{pattern, provider}]` attach a provider to every request whose URL
//!   matches, in list order (the first to set a header wins; `Tollgate-Auth` wins over all).
//! - `placeholders: [{env, provider}]` give the sandbox `tollgate_ph_<32 hex>` in an
//!   environment variable; where that value appears in a header the provider owns, inside
//!   the scope, the secret replaces it. Anywhere in a request outside the scope (URL, any
//!   header, the body) it is refused with `credential_placeholder_mismatch` and an audit
//!   finding.
//!
//! Injected headers replace the sandbox's same-named headers (names are case-insensitive,
//! so exactly one `Authorization` leaves). Secrets are read once per execution
//! ([`Credentials::load`]); every secret and every header value built from one is also a
//! needle for [`redact`], which keeps upstream echoes away from the sandbox.

pub(crate) mod bot_auth;
mod needles;
pub(crate) mod redact;
pub mod secrets;

use crate::proxy::errors::{ErrorCode, ProxyError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bot_auth::{BotAuthError, BotSigner};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use redact::Needles;
use secrets::{Secret, SecretError, TeamSecrets};
use std::collections::HashSet;
use tollgate_policy::model::AuthProvider;
use tollgate_policy::schema::ProviderKind;
use tollgate_policy::secrets::{rule_path, SecretRules};
use tollgate_policy::url::{NormalizedUrl, UrlPrefix};
use tollgate_policy::Policy;

/// Every placeholder starts with this; 32 lowercase hex digits follow.
pub const PLACEHOLDER_PREFIX: &str = "tollgate_ph_";

/// A provider whose secrets are loaded.
struct Provider {
    name: String,
    scope: Vec<UrlPrefix>,
    /// The headers it sets (values marked sensitive).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Where a placeholder of this provider is swapped for a secret.
    owned: Vec<Owned>,
}

/// A header a provider owns, and the secret its placeholder stands for there.
struct Owned {
    header: HeaderName,
    secret: Secret,
    /// `Authorization: Basic base64(user:placeholder)` is decoded, swapped, re-encoded.
    basic: bool,
}

/// One placeholder of this execution.
pub struct PlaceholderValue {
    pub env: String,
    pub value: String,
    provider: usize,
}

/// Everything secret about one execution's team, loaded once, held by the proxy only.
#[derive(Default)]
pub struct Credentials {
    providers: Vec<Provider>,
    placeholders: Vec<PlaceholderValue>,
    bot: Option<BotSigner>,
    /// What [`redact`] looks for: secrets, the header values built from them, the bare
    /// tokens of Basic credentials.
    needles: Needles,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "providers",
                &self.providers.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field(
                "placeholders",
                &self.placeholders.iter().map(|p| &p.env).collect::<Vec<_>>(),
            )
            .field("bot_auth", &self.bot.is_some())
            .finish()
    }
}

/// Why an execution's credentials could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// References the operator's rules do not let this team make, every one of them.
    #[error("{}", .0.join("; "))]
    NotTheTeams(Vec<String>),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    BotAuth(#[from] BotAuthError),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("auth provider '{0}' builds a header value that cannot be sent")]
    Header(String),
}

impl Credentials {
    /// No providers, placeholders or signing key: what a policy without them gets.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// Reads every secret the policy references (provider secrets, the bot-auth key) under
    /// the operator's `rules`, and draws a fresh placeholder for each `placeholders` entry
    /// from the OS CSPRNG. A reference the rules refuse stops everything before any secret
    /// is read, with every such reference named.
    pub fn load(policy: &Policy, rules: &SecretRules) -> Result<Credentials, CredentialError> {
        let refused: Vec<String> = rules
            .check(policy)
            .into_iter()
            .map(|(_, message)| message)
            .collect();
        if !refused.is_empty() {
            return Err(CredentialError::NotTheTeams(refused));
        }
        let mut secrets = TeamSecrets::new(&policy.team, rules);
        let mut providers = Vec::with_capacity(policy.providers.len());
        for provider in &policy.providers {
            providers.push(load_provider(provider, &mut secrets)?);
        }
        let mut placeholders = Vec::with_capacity(policy.placeholders.len());
        for placeholder in &policy.placeholders {
            let Some(provider) = providers
                .iter()
                .position(|p| p.name == placeholder.provider)
            else {
                continue; // validation refuses unknown providers
            };
            placeholders.push(PlaceholderValue {
                env: placeholder.env.clone(),
                value: new_placeholder()?,
                provider,
            });
        }
        let bot = match &policy.bot_auth {
            Some(bot) => Some(BotSigner::load(bot, &mut secrets)?),
            None => None,
        };
        let needles = Needles::new(providers.iter().flat_map(needles_of).collect());
        Ok(Credentials {
            providers,
            placeholders,
            bot,
            needles,
        })
    }

    /// `(variable, placeholder)` for the child's environment.
    pub fn placeholder_environment(&self) -> Vec<(String, String)> {
        self.placeholders
            .iter()
            .map(|p| (p.env.clone(), p.value.clone()))
            .collect()
    }

    /// The Web Bot Auth signer, when the policy has `bot_auth`.
    pub fn bot(&self) -> Option<&BotSigner> {
        self.bot.as_ref()
    }

    /// What redaction looks for in responses.
    pub(crate) fn needles(&self) -> &Needles {
        &self.needles
    }

    /// Whether `url` lies in some provider's scope: its responses may echo a secret.
    pub(crate) fn in_any_scope(&self, url: &NormalizedUrl) -> bool {
        self.providers.iter().any(|p| in_scope(&p.scope, url))
    }
}

/// What an echo of `provider`'s credentials may look like: each secret, each header value
/// built from one, and for Basic the `user:secret` pair and its base64 token without the
/// `Basic ` before it (standard and URL-safe alphabets, with and without padding). Their
/// JSON and URL spellings are found by [`Needles`] itself.
fn needles_of(provider: &Provider) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut needles = Vec::new();
    for owned in &provider.owned {
        needles.push(owned.secret.expose().as_bytes().to_vec());
    }
    for (name, value) in &provider.headers {
        needles.push(value.as_bytes().to_vec());
        let basic = provider.owned.iter().any(|o| o.basic && o.header == name);
        let token = basic_token(value).filter(|_| basic);
        if let Some(pair) = token.and_then(|t| STANDARD.decode(t).ok()) {
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                needles.push(engine.encode(&pair).into_bytes());
            }
            needles.push(pair);
        }
    }
    needles
}

/// The token of a `Basic <token>` value.
fn basic_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then(|| token.trim())
}

/// What [`attach`] did, for the audit record and the response side.
#[derive(Debug, Default)]
pub(crate) struct Attached {
    /// Providers whose credentials went out (injected or swapped in), in order.
    pub providers: Vec<String>,
    /// The response must be checked for echoed secrets.
    pub redact: bool,
}

/// A refusal that also deserves an audit finding.
pub(crate) struct Refused {
    pub error: ProxyError,
    pub finding: Option<crate::audit::Finding>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Self {
        Refused {
            error,
            finding: None,
        }
    }
}

/// Attaches the credentials `url` gets: placeholders first (swapped or refused), then the
/// provider named in `Tollgate-Auth`, then matching URL credentials. `headers` are the
/// outgoing headers (`Tollgate-*` already removed); `body` is the buffered request body.
pub(crate) fn attach(
    credentials: &Credentials,
    policy: &Policy,
    url: &NormalizedUrl,
    requested: Option<&str>,
    headers: &mut HeaderMap,
    body: &[u8],
) -> Result<Attached, Refused> {
    let mut attached = Attached::default();
    swap_placeholders(credentials, url, headers, body, &mut attached)?;
    let mut set_by_us: HashSet<HeaderName> = HashSet::new();
    if let Some(name) = requested {
        let wanted = check_requested(policy, name, url)?;
        let provider = credentials
            .providers
            .iter()
            .find(|loaded| loaded.name == wanted.name)
            .ok_or_else(|| unknown_provider(policy, name))?;
        inject(provider, headers, &mut set_by_us, true);
        push_once(&mut attached.providers, &provider.name);
    }
    for credential in policy.credentials_for(url) {
        let Some(provider) = credentials
            .providers
            .iter()
            .find(|p| p.name == credential.provider)
        else {
            continue;
        };
        if !in_scope(&provider.scope, url) {
            // Validation keeps patterns inside scopes; refuse rather than trust that.
            return Err(scope_denied(&provider.name, &provider.scope, url).into());
        }
        inject(provider, headers, &mut set_by_us, false);
        push_once(&mut attached.providers, &provider.name);
    }
    attached.redact = !attached.providers.is_empty() || credentials.in_any_scope(url);
    Ok(attached)
}

fn push_once(names: &mut Vec<String>, name: &str) {
    if !names.iter().any(|n| n == name) {
        names.push(name.to_owned());
    }
}

/// The provider `Tollgate-Auth: name` asks for, when the team has it and `url` lies in its
/// scope; otherwise the refusal (`auth_provider_error`, `credential_scope_denied`). Reads
/// the policy only, so `policy eval` asks exactly what the proxy asks (`gate::evaluate`).
pub(crate) fn check_requested<'p>(
    policy: &'p Policy,
    name: &str,
    url: &NormalizedUrl,
) -> Result<&'p AuthProvider, ProxyError> {
    if policy.providers.is_empty() {
        return Err(ProxyError::new(
            ErrorCode::AuthProviderError,
            "Auth providers are not available in this context",
        )
        .with_reason("no_auth_providers"));
    }
    let provider = policy
        .provider_named(name)
        .ok_or_else(|| unknown_provider(policy, name))?;
    if !provider.in_scope(url) {
        return Err(scope_denied(&provider.name, &provider.scope, url));
    }
    Ok(provider)
}

/// The refusal of a provider name the team does not have, as the issue words it.
fn unknown_provider(policy: &Policy, name: &str) -> ProxyError {
    let available: Vec<&str> = policy.providers.iter().map(|p| p.name.as_str()).collect();
    ProxyError::new(
        ErrorCode::AuthProviderError,
        format!(
            "Auth provider '{}' not found. Available providers: {}",
            printable(name),
            available.join(", ")
        ),
    )
    .with_reason("unknown_auth_provider")
}

/// At most 100 characters of what the sandbox sent, control characters dropped.
fn printable(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

fn scope_denied(provider: &str, scope: &[UrlPrefix], url: &NormalizedUrl) -> ProxyError {
    let scope: Vec<String> = scope.iter().map(ToString::to_string).collect();
    ProxyError::new(
        ErrorCode::CredentialScopeDenied,
        format!(
            "auth provider '{}' may not be sent to {}: its scope is {}",
            provider,
            url.redacted(),
            scope.join(", ")
        ),
    )
    .with_reason("credential_scope_denied")
}

fn in_scope(scope: &[UrlPrefix], url: &NormalizedUrl) -> bool {
    scope.iter().any(|prefix| prefix.matches(url))
}

/// Sets the provider's headers, replacing the sandbox's. A header an earlier credential of
/// this request set is kept unless `overrule` (the provider named in `Tollgate-Auth`).
fn inject(
    provider: &Provider,
    headers: &mut HeaderMap,
    set_by_us: &mut HashSet<HeaderName>,
    overrule: bool,
) {
    for (name, value) in &provider.headers {
        if overrule || set_by_us.insert(name.clone()) {
            set_by_us.insert(name.clone());
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Placeholders: outside their provider's scope anywhere in the request → refused; inside,
/// in a header the provider owns → replaced by the secret.
fn swap_placeholders(
    credentials: &Credentials,
    url: &NormalizedUrl,
    headers: &mut HeaderMap,
    body: &[u8],
    attached: &mut Attached,
) -> Result<(), Refused> {
    if credentials.placeholders.is_empty() {
        return Ok(());
    }
    for placeholder in &credentials.placeholders {
        let provider = &credentials.providers[placeholder.provider];
        let needle = placeholder.value.as_str();
        if !in_scope(&provider.scope, url) {
            if let Some(place) = find_placeholder(needle, url, headers, body) {
                let scope: Vec<String> = provider.scope.iter().map(ToString::to_string).collect();
                return Err(Refused {
                    error: ProxyError::new(
                        ErrorCode::CredentialPlaceholderMismatch,
                        format!(
                            "the request to {} carries the placeholder from ${} in its {place}; that placeholder stands for auth provider '{}' and may only be sent to {}",
                            url.redacted(),
                            placeholder.env,
                            provider.name,
                            scope.join(", ")
                        ),
                    )
                    .with_reason("placeholder_outside_scope"),
                    finding: Some(crate::audit::Finding::PlaceholderOutsideScope),
                });
            }
            continue;
        }
        for owned in &provider.owned {
            let Some(value) = headers.get(&owned.header) else {
                continue;
            };
            match swap_in_value(value, needle, &owned.secret, owned.basic) {
                Swap::Absent => {}
                Swap::Swapped(new) => {
                    headers.insert(owned.header.clone(), new);
                    push_once(&mut attached.providers, &provider.name);
                }
                Swap::Repeated => {
                    return Err(ProxyError::new(
                        ErrorCode::CredentialPlaceholderMismatch,
                        format!(
                            "the {} header carries the placeholder from ${} more than once; send it once",
                            owned.header, placeholder.env
                        ),
                    )
                    .with_reason("placeholder_repeated")
                    .into());
                }
            }
        }
    }
    Ok(())
}

enum Swap {
    Absent,
    Swapped(HeaderValue),
    Repeated,
}

fn swap_in_value(value: &HeaderValue, needle: &str, secret: &Secret, basic: bool) -> Swap {
    let Ok(text) = value.to_str() else {
        return Swap::Absent;
    };
    let sensitive = |s: &str| {
        HeaderValue::from_str(s).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        })
    };
    match text.matches(needle).count() {
        0 => {}
        1 => {
            return sensitive(&text.replacen(needle, secret.expose(), 1))
                .map_or(Swap::Absent, Swap::Swapped)
        }
        _ => return Swap::Repeated,
    }
    if !basic {
        return Swap::Absent;
    }
    let Some(decoded) = basic_credentials(text) else {
        return Swap::Absent;
    };
    match decoded.matches(needle).count() {
        0 => Swap::Absent,
        1 => {
            let swapped = decoded.replacen(needle, secret.expose(), 1);
            sensitive(&format!("Basic {}", STANDARD.encode(swapped)))
                .map_or(Swap::Absent, Swap::Swapped)
        }
        _ => Swap::Repeated,
    }
}

/// `Basic <base64>` decoded to text, if it is that.
fn basic_credentials(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = STANDARD.decode(rest.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// Where `needle` appears in the request, if anywhere: the URL (path and query, also
/// percent-decoded), a header value (also inside `Basic` credentials), or the body.
fn find_placeholder(
    needle: &str,
    url: &NormalizedUrl,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    let target = url.origin_form();
    let decoded = percent_decode(target.as_bytes());
    if target.contains(needle) || contains(&decoded, needle.as_bytes()) {
        return Some("URL".into());
    }
    if url.host_str().contains(needle) {
        return Some("URL".into());
    }
    for (name, value) in headers {
        let bytes = value.as_bytes();
        let in_basic = || {
            value
                .to_str()
                .ok()
                .and_then(basic_credentials)
                .is_some_and(|d| d.contains(needle))
        };
        if contains(bytes, needle.as_bytes()) || in_basic() {
            return Some(format!("{name} header"));
        }
    }
    if contains(body, needle.as_bytes()) || contains(&percent_decode(body), needle.as_bytes()) {
        return Some("body".into());
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `%XX` decoded (invalid escapes kept as they are); `+` is left alone.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn new_placeholder() -> Result<String, CredentialError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
    let mut text = String::with_capacity(PLACEHOLDER_PREFIX.len() + 32);
    text.push_str(PLACEHOLDER_PREFIX);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    Ok(text)
}

fn load_provider(
    provider: &AuthProvider,
    secrets: &mut TeamSecrets<'_>,
) -> Result<Provider, CredentialError> {
    let what = format!("auth provider '{}'", provider.name);
    let bad = || CredentialError::Header(provider.name.clone());
    let value = |text: String| {
        HeaderValue::from_str(&text)
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .map_err(|_| bad())
    };
    let name = |text: &str| HeaderName::from_bytes(text.as_bytes()).map_err(|_| bad());
    let mut secret = || -> Result<Secret, CredentialError> {
        let reference = provider.secret.as_ref().ok_or_else(bad)?;
        let rule = rule_path(&format!("{}.secret", provider.rule), reference);
        Ok(secrets.load(&rule, &what, reference)?)
    };
    let username = provider.username.clone().unwrap_or_default();
    let mut headers = Vec::new();
    let mut owned = Vec::new();
    match provider.kind {
        ProviderKind::Basic => {
            let secret = secret()?;
            let encoded = STANDARD.encode(format!("{username}:{}", secret.expose()));
            headers.push((header::AUTHORIZATION, value(format!("Basic {encoded}"))?));
            owned.push(Owned {
                header: header::AUTHORIZATION,
                secret,
                basic: true,
            });
        }
        ProviderKind::Bearer => {
            let secret = secret()?;
            headers.push((
                header::AUTHORIZATION,
                value(format!("Bearer {}", secret.expose()))?,
            ));
            owned.push(Owned {
                header: header::AUTHORIZATION,
                secret,
                basic: false,
            });
        }
        ProviderKind::Commcare => {
            let secret = secret()?;
            headers.push((
                header::AUTHORIZATION,
                value(format!("ApiKey {username}:{}", secret.expose()))?,
            ));
            owned.push(Owned {
                header: header::AUTHORIZATION,
                secret,
                basic: false,
            });
        }
        ProviderKind::ApiKey => {
            let secret = secret()?;
            let header = name(provider.header.as_deref().unwrap_or_default())?;
            headers.push((header.clone(), value(secret.expose().to_owned())?));
            owned.push(Owned {
                header,
                secret,
                basic: false,
            });
        }
        ProviderKind::Headers => {
            for (i, (header, reference)) in provider.headers.iter().enumerate() {
                let rule = rule_path(&format!("{}.headers[{i}].secret", provider.rule), reference);
                let secret = secrets.load(&rule, &format!("{what} header {header}"), reference)?;
                let header = name(header)?;
                headers.push((header.clone(), value(secret.expose().to_owned())?));
                owned.push(Owned {
                    header,
                    secret,
                    basic: false,
                });
            }
        }
    }
    Ok(Provider {
        name: provider.name.clone(),
        scope: provider.scope.clone(),
        headers,
        owned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_fresh_lowercase_hex() {
        let a = new_placeholder().expect("random");
        let b = new_placeholder().expect("random");
        assert_ne!(a, b);
        let hex = a.strip_prefix(PLACEHOLDER_PREFIX).expect("prefix");
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn a_placeholder_is_swapped_once_in_plain_and_basic_values() {
        let secret = Secret::for_test("real-secret");
        let ph = "tollgate_ph_00112233445566778899aabbccddeeff";
        let plain = HeaderValue::from_str(&format!("Bearer {ph}")).expect("value");
        match swap_in_value(&plain, ph, &secret, false) {
            Swap::Swapped(v) => assert_eq!(v, "Bearer real-secret"),
            _ => panic!("not swapped"),
        }
        let basic = format!("Basic {}", STANDARD.encode(format!("me:{ph}")));
        let basic = HeaderValue::from_str(&basic).expect("value");
        match swap_in_value(&basic, ph, &secret, true) {
            Swap::Swapped(v) => assert_eq!(
                v.to_str().expect("ascii"),
                format!("Basic {}", STANDARD.encode("me:real-secret"))
            ),
            _ => panic!("not swapped"),
        }
        let twice = HeaderValue::from_str(&format!("{ph}{ph}")).expect("value");
        assert!(matches!(
            swap_in_value(&twice, ph, &secret, false),
            Swap::Repeated
        ));
    }

    #[test]
    fn the_needles_of_basic_credentials_include_their_bare_token() {
        let pair = "robot:pw?/x+y?>z";
        let token = STANDARD.encode(pair);
        let value = HeaderValue::from_str(&format!("Basic {token}")).expect("value");
        let provider = Provider {
            name: "Basic One".into(),
            scope: Vec::new(),
            headers: vec![(header::AUTHORIZATION, value)],
            owned: vec![Owned {
                header: header::AUTHORIZATION,
                secret: Secret::for_test("pw?/x+y?>z"),
                basic: true,
            }],
        };
        let needles: Vec<String> = needles_of(&provider)
            .into_iter()
            .map(|n| String::from_utf8(n).expect("utf8"))
            .collect();
        assert!(token.contains('+') && token.contains('/'), "{token}");
        for want in [
            "pw?/x+y?>z".to_owned(),
            format!("Basic {token}"),
            token.clone(),
            token.trim_end_matches('=').to_owned(),
            token.replace('+', "-").replace('/', "_"),
            pair.to_owned(),
        ] {
            assert!(needles.contains(&want), "{want} not in {needles:?}");
        }
    }

    #[test]
    fn percent_decoding_finds_escaped_placeholders() {
        assert_eq!(percent_decode(b"a%74b%2"), b"atb%2".to_vec());
        assert_eq!(percent_decode(b"%7"), b"%7".to_vec());
        assert_eq!(percent_decode(b"%"), b"%".to_vec());
    }
}
