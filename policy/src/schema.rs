//! The team policy file as it is written: the serde/JSON-Schema shape of the YAML.
//!
//! These types only describe syntax. Every cross-field rule (unknown providers, wildcard
//! hosts, `allowed_ips` ranges, Rego that compiles) is checked by `validate`, which turns a
//! [`PolicyFile`] into the [`crate::Policy`] the decisions use. Unknown keys are errors
//! everywhere, so a misspelt safety setting can never be silently ignored.

use crate::units::{ByteSize, Span};
use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// One team's policy file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Schema version; must be 1.
    pub version: u32,
    /// The team this policy belongs to: `[a-z0-9][a-z0-9-]*`.
    pub team: String,
    /// Outbound HTTP access. Omitted: the network is disabled and nothing is reachable.
    #[serde(default)]
    pub network: Option<NetworkSection>,
    /// Per-execution limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Host directories bound into the sandbox, its root filesystem, and whether the
    /// Landlock layer is required.
    #[serde(default)]
    pub filesystem: crate::filesystem::FilesystemSection,
    /// Retries of failed upstream attempts.
    #[serde(default)]
    pub retry: RetrySection,
    /// Rate limits and day budgets that every execution of the team shares, on every node
    /// (fleet-wide where the node has a Redis URL). Omitted or `{}`: none.
    #[serde(default)]
    pub quotas: Option<QuotasSection>,
    /// Named credentials. Their secrets stay in the supervisor.
    #[serde(default)]
    pub auth_providers: Vec<AuthProviderSection>,
    /// Automatic credential injection by URL prefix, in list order.
    #[serde(default)]
    pub credentials: Vec<CredentialSection>,
    /// Environment variables that the sandbox sees as random stand-ins for a provider's secret.
    #[serde(default)]
    pub placeholders: Vec<PlaceholderSection>,
    /// Web Bot Auth signing of every outgoing request.
    #[serde(default)]
    pub bot_auth: Option<BotAuthSection>,
    /// Team Rego module (package `tollgate.team`), evaluated after the built-in rules. It can
    /// add denials and header edits, never widen access.
    #[serde(default)]
    pub rego: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Any public destination is allowed (private ranges stay blocked). Exclusive with `allow`.
    #[serde(default)]
    pub allow_all: bool,
    /// Internal-class addresses need an `allowed_ips` entry. Default true.
    #[serde(default = "yes")]
    pub block_private_ips: bool,
    /// Allowed destinations. An empty list blocks everything.
    #[serde(default)]
    pub allow: Vec<AllowItem>,
    /// Static name -> address pins, used before DNS (like curl --resolve).
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// Extra CA certificates (PEM) trusted for upstream TLS, e.g. an internal CA.
    #[serde(default)]
    pub upstream_ca: Option<FileRef>,
    /// Transparent egress: a stub resolver in the sandbox answers the names the policy
    /// could allow with synthetic loopback addresses, and connections to them are
    /// redirected to the proxy, so clients that ignore the proxy settings go through it
    /// too. Default true; false leaves only the proxy settings (and `/etc/resolv.conf`
    /// as it is).
    #[serde(default = "yes")]
    pub transparent: bool,
}

/// An allow-list entry: a URL prefix string, or the long form.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AllowItem {
    /// `https://api.openai.com/v1`: scheme, host and port equal; path prefix on a segment boundary.
    Prefix(String),
    Entry(AllowEntrySection),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowEntrySection {
    /// Exact host, `*.example.com` (one extra label) or `**.example.com` (any depth).
    pub host: String,
    /// Allowed ports. Default: 80 and 443.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// Allowed schemes. Default: http and https.
    #[serde(default)]
    pub schemes: Option<Vec<Scheme>>,
    /// Which methods are allowed. Default: full.
    #[serde(default)]
    pub access: Access,
    /// L7 rules: when present, a request must match one of them.
    #[serde(default)]
    pub rules: Vec<L7RuleSection>,
    /// L7 denials: a matching request is refused even if a rule allows it.
    #[serde(default)]
    pub deny_rules: Vec<L7RuleSection>,
    /// Intercept TLS (default) so each request is decided, or pass the tunnel through.
    #[serde(default)]
    pub tls: TlsMode,
    /// Private (internal-class) networks this entry may reach.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Allow `%2F` (an encoded slash) inside a path segment. Default false.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Allow `;` (or `%3B`) inside a path segment, which Tomcat and Spring read as path
    /// parameters (`/x/..;/admin` is `/admin` to them). Default false.
    #[serde(default)]
    pub allow_path_parameters: bool,
    /// Allow `%25` (an encoded `%`) in the path, which a server that decodes twice reads as
    /// another escape (`%252F` as `/`). Default false.
    #[serde(default)]
    pub allow_encoded_percent: bool,
    /// Allow a path segment ending in `.` (`/admin./x`), which IIS and Windows read without
    /// the dot. Default false.
    #[serde(default)]
    pub allow_trailing_dot: bool,
    /// Allow WebSocket upgrades (`Upgrade: websocket`) to this entry: the handshake is
    /// decided, counted and credentialed like any request, then its messages are relayed
    /// under the tunnel limits. Default false; refused with `tls: passthrough`, whose tunnel
    /// already carries anything.
    #[serde(default)]
    pub websocket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET, HEAD, OPTIONS.
    ReadOnly,
    /// read-only plus POST, PUT, PATCH.
    ReadWrite,
    /// Every method.
    #[default]
    Full,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
            Access::Full => "full",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Intercept,
    Passthrough,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Intercept => "intercept",
            TlsMode::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct L7RuleSection {
    /// An HTTP method or `*`.
    pub method: String,
    /// A path pattern: `*` is one segment, `**` any number of segments.
    pub path: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Upstream attempts per execution, retries included.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    #[serde(default = "default_timeout")]
    pub default_timeout: Span,
    /// A request may ask for another timeout, clamped to [1s, max_timeout].
    #[serde(default = "default_max_timeout")]
    pub max_timeout: Span,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: ByteSize,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: ByteSize,
    /// Concurrent client connections to the proxy per execution.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Memory of the whole execution: anonymous memory, memfd, tmpfs pages (`/tmp`,
    /// `/dev/shm`) and the page cache it causes; no swap. Past it the kernel kills the
    /// command (exit status 137). Default 1GiB, at least 4MiB.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// CPU time of the whole execution, in cores (e.g. 0.5, 1.5; at least 0.01). Default:
    /// unlimited.
    #[serde(default)]
    #[schemars(range(min = 0.01, max = 4096))]
    pub cpu: Option<f64>,
    /// Processes and threads the execution may run at once, tollgate's init included.
    /// Default 1024, at least 2.
    #[serde(default = "default_processes")]
    #[schemars(range(min = 2))]
    pub processes: u64,
    /// Bytes up and down of one `tls: passthrough` tunnel, or the data of one WebSocket
    /// session (its messages both ways); past it the tunnel is cut, the session closed.
    /// Default 1GiB, at least 1 byte.
    #[serde(default = "default_max_tunnel_bytes")]
    pub max_tunnel_bytes: ByteSize,
    /// Lifetime of one `tls: passthrough` tunnel or WebSocket session; past it the tunnel is
    /// cut, the session closed. Default 10m, at least 1s.
    #[serde(default = "default_max_tunnel_duration")]
    pub max_tunnel_duration: Span,
    /// Requests refused per execution (by the policy, the address checks, invalid requests,
    /// limits, credential misuse; not upstream failures). Past it every request of the
    /// execution gets `429 denial_limit`. Default 100, at least 1.
    #[serde(default = "default_max_denied")]
    #[schemars(range(min = 1))]
    pub max_denied: u64,
    /// What happens once `max_denied` refusals (or as many blocked direct sockets) have
    /// happened: `continue` (default) or `kill`, which ends the execution (exit status 125).
    #[serde(default)]
    pub on_violation: OnViolation,
}

/// `limits.on_violation`: whether an execution that keeps knocking is ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Keep running: refusals past `max_denied` get `429 denial_limit`.
    #[default]
    Continue,
    /// End the execution (exit status 125) once `max_denied` refusals or as many
    /// `bypass_attempt`s have happened.
    Kill,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Continue => "continue",
            OnViolation::Kill => "kill",
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_requests: default_max_requests(),
            default_timeout: default_timeout(),
            max_timeout: default_max_timeout(),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            max_connections: default_max_connections(),
            memory: default_memory(),
            cpu: None,
            processes: default_processes(),
            max_tunnel_bytes: default_max_tunnel_bytes(),
            max_tunnel_duration: default_max_tunnel_duration(),
            max_denied: default_max_denied(),
            on_violation: OnViolation::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Total attempts, the first included. 1 disables retries.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_initial_wait")]
    pub initial_wait: Span,
    #[serde(default = "default_max_wait")]
    pub max_wait: Span,
    /// Upstream statuses that are retried.
    #[serde(default = "default_retry_statuses")]
    pub on_status: Vec<u16>,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            attempts: default_attempts(),
            initial_wait: default_initial_wait(),
            max_wait: default_max_wait(),
            on_status: default_retry_statuses(),
        }
    }
}

/// `quotas`: the team's own limits, taken from by every upstream attempt of the team.
/// Validated by `validate` (every number positive and bounded, `burst` only with
/// `requests_per_minute`, destination hosts unique).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotasSection {
    /// Upstream attempts a minute, of every execution of the team together (GCRA: evenly
    /// spaced, up to `burst` at once).
    #[serde(default, deserialize_with = "present")]
    pub requests_per_minute: Option<QuotaCount>,
    /// Attempts `requests_per_minute` admits at once. Default: a tenth of it, at least 1.
    #[serde(default, deserialize_with = "present")]
    pub burst: Option<QuotaCount>,
    /// Upstream attempts per UTC day.
    #[serde(default, deserialize_with = "present")]
    pub requests_per_day: Option<QuotaCount>,
    /// Request plus response bytes per UTC day (e.g. 5GiB).
    #[serde(default, deserialize_with = "present")]
    pub bytes_per_day: Option<ByteSize>,
    /// Quotas of one destination each, taken from in addition to the team's.
    #[serde(default)]
    pub destinations: Vec<DestinationQuotaSection>,
}

/// `quotas.destinations[i]`: the same limits, for the attempts to one host pattern.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationQuotaSection {
    /// Exact host, `*.example.com` (one extra label) or `**.example.com` (any depth), as in a
    /// long-form allow entry.
    pub host: String,
    /// Upstream attempts a minute to this host, of every execution of the team together.
    #[serde(default, deserialize_with = "present")]
    pub requests_per_minute: Option<QuotaCount>,
    /// Attempts `requests_per_minute` admits at once. Default: a tenth of it, at least 1.
    #[serde(default, deserialize_with = "present")]
    pub burst: Option<QuotaCount>,
    /// Upstream attempts to this host per UTC day.
    #[serde(default, deserialize_with = "present")]
    pub requests_per_day: Option<QuotaCount>,
    /// Request plus response bytes to and from this host per UTC day.
    #[serde(default, deserialize_with = "present")]
    pub bytes_per_day: Option<ByteSize>,
}

/// A number of requests in a quota, as written: a whole number (its range is checked by
/// `validate`, which can point at the line). Anything else is refused here with what to
/// write instead, rather than serde's "expected u64".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QuotaCount(pub u64);

/// A key that is present must have a value: `requests_per_minute:` with nothing after it is
/// refused rather than read as "no limit" (remove the key for that).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthProviderSection {
    /// The name sandboxed code uses in `Tollgate-Auth: <name>`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// The header an `api_key` provider sets.
    #[serde(default)]
    pub header: Option<String>,
    /// The user name of `basic` and `commcare` providers (not a secret).
    #[serde(default)]
    pub username: Option<String>,
    /// The secret: password, key or token.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// The headers a `headers` provider sets, each with its own secret value.
    #[serde(default)]
    pub headers: Vec<HeaderSecretSection>,
    /// URL prefixes this credential may be sent to. Required.
    pub scope: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// `Authorization: Basic base64(username:secret)`
    Basic,
    /// `<header>: <secret>`
    ApiKey,
    /// `Authorization: Bearer <secret>`
    Bearer,
    /// `Authorization: ApiKey <username>:<secret>`
    Commcare,
    /// A list of `name: secret` headers.
    Headers,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Basic => "basic",
            ProviderKind::ApiKey => "api_key",
            ProviderKind::Bearer => "bearer",
            ProviderKind::Commcare => "commcare",
            ProviderKind::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderSecretSection {
    pub name: String,
    pub secret: SecretRef,
}

/// Where a secret comes from. Inline secret strings are refused on purpose: a policy file is
/// code that gets reviewed, copied and logged. A team reaches only its own secrets: the
/// rules are in [`crate::secrets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    /// A variable of the supervisor's environment (never the sandbox's), named
    /// `TOLLGATE_SECRET_<TEAM>_<NAME>`: the team upper-cased with `-` as `_`, and a NAME of
    /// letters and digits only. Other names only if the operator allows them
    /// (`--allow-secret-env NAME`).
    Env(String),
    /// A file in the team's secrets directory, `<secrets root>/<team>/` (the root is
    /// `/etc/tollgate/secrets` unless the operator sets `--secrets-dir`): a path relative to
    /// it (recommended, e.g. `api-key`), or an absolute path inside it. No `..`; no symbolic
    /// link is followed. A regular file of tollgate's user, mode 0600 or stricter.
    File(String),
}

/// A file reference: `{file: /path}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    /// URL prefix (short allow-entry form).
    pub pattern: String,
    pub provider: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceholderSection {
    /// The child environment variable that receives the placeholder.
    pub env: String,
    pub provider: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BotAuthSection {
    /// The Ed25519 seed (32 bytes, base64url).
    pub key: SecretRef,
    /// The https URL published in `Signature-Agent`.
    pub signature_agent: String,
    /// Lifetime of each signature. Default 300s.
    #[serde(default = "default_validity")]
    pub validity: Span,
}

fn yes() -> bool {
    true
}
fn default_max_requests() -> u64 {
    10
}
fn default_timeout() -> Span {
    Span(Duration::from_secs(5))
}
fn default_max_timeout() -> Span {
    Span(Duration::from_secs(30))
}
fn default_max_request_bytes() -> ByteSize {
    ByteSize(512 * 1024)
}
fn default_max_response_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_max_connections() -> u32 {
    64
}
fn default_memory() -> ByteSize {
    ByteSize(1 << 30)
}
/// Room for thread pools and build tools, far below the host's pid space.
fn default_processes() -> u64 {
    1024
}
/// A large download or a long-lived stream, not an unbounded one.
fn default_max_tunnel_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_max_tunnel_duration() -> Span {
    Span(Duration::from_secs(600))
}
/// Far more than a client that was refused by mistake retries, far fewer than a scan.
fn default_max_denied() -> u64 {
    100
}
fn default_attempts() -> u32 {
    3
}
fn default_initial_wait() -> Span {
    Span(Duration::from_secs(1))
}
fn default_max_wait() -> Span {
    Span(Duration::from_secs(10))
}
fn default_retry_statuses() -> Vec<u16> {
    vec![429, 502, 503, 504]
}
fn default_validity() -> Span {
    Span(Duration::from_secs(300))
}

/// A string is the short form; a mapping is the long form. Written by hand rather than
/// `#[serde(untagged)]` so that an error inside a long-form entry keeps its own message and
/// location instead of "did not match any variant".
impl<'de> Deserialize<'de> for AllowItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = AllowItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL prefix string or a mapping with `host`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowItem, E> {
                Ok(AllowItem::Prefix(v.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AllowItem, A::Error> {
                AllowEntrySection::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(AllowItem::Entry)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for QuotaCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = QuotaCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive whole number, e.g. 600")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuotaCount, E> {
                Ok(QuotaCount(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuotaCount, E> {
                u64::try_from(v).map(QuotaCount).map_err(|_| {
                    E::custom(format!(
                        "{v} is negative: a quota is a positive whole number (remove the key to have no limit)"
                    ))
                })
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<QuotaCount, E> {
                u64::try_from(v)
                    .map(QuotaCount)
                    .map_err(|_| E::custom(format!("{v} is too large for a quota")))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<QuotaCount, E> {
                match u128::try_from(v) {
                    Ok(v) => self.visit_u128(v),
                    Err(_) => Err(E::custom(format!(
                        "{v} is negative: a quota is a positive whole number (remove the key to have no limit)"
                    ))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<QuotaCount, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number: a quota counts requests, e.g. 600"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuotaCount, E> {
                let shown: String = v.chars().take(40).collect();
                Err(E::custom(format!(
                    "`{shown}` is text, not a number: write a whole number without quotes, e.g. 600"
                )))
            }
            fn visit_unit<E: de::Error>(self) -> Result<QuotaCount, E> {
                Err(E::custom(
                    "the key has no value: give a whole number, or remove the key to have no limit",
                ))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for QuotaCount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuotaCount".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A whole number of requests, from 1",
            "type": "integer",
            "minimum": 1,
            "maximum": crate::quotas::MAX_REQUESTS
        })
    }
}

/// `{env: NAME}` or `{file: PATH}`; a bare string is an inline secret and is refused with a
/// message that says what to write instead.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret reference: {env: NAME} or {file: PATH}")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                // The value itself is never echoed: it may be the secret.
                Err(E::custom(
                    "inline secrets are not allowed: reference the secret with {env: NAME} or {file: PATH}",
                ))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretRef, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretRef, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("a secret reference needs `env` or `file`"))?;
                let value: String = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(
                        "a secret reference has exactly one key: `env` or `file`",
                    ));
                }
                match key.as_str() {
                    "env" => Ok(SecretRef::Env(value)),
                    "file" => Ok(SecretRef::File(value)),
                    other => Err(de::Error::custom(format!(
                        "unknown secret source `{other}`: use `env` or `file`"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
