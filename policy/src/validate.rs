//! Turns a parsed [`PolicyFile`] into a [`Policy`], or into every error it contains.
//!
//! Each check says what is wrong and what to write instead, and names the YAML path so the
//! caller can point at `FILE:LINE:COL`. Nothing here widens access by default: an entry that
//! cannot be understood is an error, never ignored.

use crate::ip;
use crate::model::*;
use crate::quotas::{self, DestinationQuota, QuotaLimits, Quotas, RateLimit};
use crate::schema::*;
use crate::units::{ByteSize, Cores};
use crate::url::{HostPattern, PathHazards, PathPattern, UrlPrefix};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

/// Headers a policy may never configure a credential or header edit for: they frame the
/// request, address the proxy, or carry tollgate's own controls.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "via",
];

/// Collects errors by YAML path; the loader turns paths into locations.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<(String, String)>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }
}

pub(crate) struct Validated {
    pub team: String,
    pub network: Option<Network>,
    pub limits: Limits,
    pub filesystem: crate::filesystem::Filesystem,
    pub retry: Retry,
    pub providers: Vec<AuthProvider>,
    pub credentials: Vec<UrlCredential>,
    pub placeholders: Vec<Placeholder>,
    pub bot_auth: Option<BotAuth>,
    pub quotas: Quotas,
}

pub(crate) fn validate(file: &PolicyFile) -> Result<Validated, Problems> {
    let mut problems = Problems::default();
    if file.version != 1 {
        problems.add(
            "version",
            format!(
                "unsupported policy version {}: this tollgate reads version 1",
                file.version
            ),
        );
    }
    if !is_team_name(&file.team) {
        problems.add(
            "team",
            "team names are lowercase letters, digits and '-', starting with a letter or digit (e.g. acme or team-42)",
        );
    }
    let network = file
        .network
        .as_ref()
        .map(|section| validate_network(section, &mut problems));
    let limits = validate_limits(&file.limits, &mut problems);
    let filesystem = crate::filesystem::validate(&file.filesystem, &mut problems);
    let retry = validate_retry(&file.retry, &mut problems);
    let providers = validate_providers(&file.auth_providers, network.as_ref(), &mut problems);
    let names: HashSet<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let credentials =
        validate_credentials(&file.credentials, &names, network.as_ref(), &mut problems);
    check_credentials_in_scope(&credentials, &providers, &mut problems);
    let placeholders = validate_placeholders(&file.placeholders, &names, &mut problems);
    let bot_auth = file
        .bot_auth
        .as_ref()
        .map(|section| validate_bot_auth(section, &mut problems));
    let quotas = file
        .quotas
        .as_ref()
        .map(|section| validate_quotas(section, &mut problems))
        .unwrap_or_default();
    if problems.0.is_empty() {
        Ok(Validated {
            team: file.team.clone(),
            network,
            limits,
            filesystem,
            retry,
            providers,
            credentials,
            placeholders,
            bot_auth,
            quotas,
        })
    } else {
        Err(problems)
    }
}

fn is_team_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63
}

fn validate_network(section: &NetworkSection, problems: &mut Problems) -> Network {
    if section.allow_all && !section.allow.is_empty() {
        problems.add(
            "network.allow_all",
            "`allow_all: true` cannot be combined with an `allow` list: remove one of them",
        );
    }
    let entries = section
        .allow
        .iter()
        .enumerate()
        .filter_map(|(i, item)| validate_entry(i, item, problems))
        .collect();
    for (name, address) in &section.hosts {
        let path = format!("network.hosts.{name}");
        if HostPattern::parse(name).map_or(true, |p| p.is_wildcard()) {
            problems.add(
                &path,
                format!("`{name}` is not a host name that can be pinned"),
            );
        }
        if ip::classify(*address) == ip::AddressClass::AlwaysBlocked {
            problems.add(
                &path,
                format!(
                    "{name} is pinned to {address}, a {} address tollgate never dials",
                    ip::reason(*address).unwrap_or("blocked")
                ),
            );
        }
    }
    // Opened from `/` with no link followed when a run starts; a relative path would depend
    // on the operator's working directory.
    if let Some(Err(problem)) = section
        .upstream_ca
        .as_ref()
        .map(|r| crate::filesystem::check_absolute(&r.file))
    {
        problems.add("network.upstream_ca.file", problem);
    }
    Network {
        allow_all: section.allow_all,
        block_private_ips: section.block_private_ips,
        entries,
        hosts: section
            .hosts
            .iter()
            .map(|(name, ip)| (normalise_pin_name(name), *ip))
            .collect(),
        upstream_ca: section.upstream_ca.as_ref().map(|r| PathBuf::from(&r.file)),
        transparent: section.transparent,
    }
}

/// Pins are looked up by normalised host, so `API.Example.com.` pins `api.example.com`.
fn normalise_pin_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn validate_entry(index: usize, item: &AllowItem, problems: &mut Problems) -> Option<AllowEntry> {
    let rule = format!("network.allow[{index}]");
    match item {
        AllowItem::Prefix(text) => match UrlPrefix::parse(text) {
            Ok(prefix) => Some(AllowEntry {
                rule,
                target: EntryTarget::Prefix(prefix),
                access: Access::Full,
                rules: vec![],
                deny_rules: vec![],
                tls: TlsMode::Intercept,
                allowed_ips: vec![],
                allowed_hazards: PathHazards::default(),
                websocket: false,
            }),
            Err(error) => {
                problems.add(&rule, format!("invalid allow entry: {error}"));
                None
            }
        },
        AllowItem::Entry(entry) => {
            let pattern = match HostPattern::parse(&entry.host) {
                Ok(pattern) => Some(pattern),
                Err(error) => {
                    problems.add(format!("{rule}.host"), error.to_string());
                    None
                }
            };
            let ports = entry.ports.clone().unwrap_or_else(|| vec![80, 443]);
            if ports.is_empty() || ports.contains(&0) {
                problems.add(
                    format!("{rule}.ports"),
                    "ports must list at least one port between 1 and 65535 (omit `ports` for 80 and 443)",
                );
            }
            let schemes = entry
                .schemes
                .clone()
                .unwrap_or_else(|| vec![Scheme::Http, Scheme::Https]);
            if schemes.is_empty() {
                problems.add(
                    format!("{rule}.schemes"),
                    "schemes must not be empty (omit it for http and https)",
                );
            }
            let rules = validate_l7_rules(&format!("{rule}.rules"), &entry.rules, problems);
            let deny_rules =
                validate_l7_rules(&format!("{rule}.deny_rules"), &entry.deny_rules, problems);
            if entry.tls == TlsMode::Passthrough && !(rules.is_empty() && deny_rules.is_empty()) {
                problems.add(
                    format!("{rule}.tls"),
                    "L7 rules need to see requests, which a `tls: passthrough` entry cannot: use `tls: intercept` or remove the rules",
                );
            }
            if entry.tls == TlsMode::Passthrough && entry.access != Access::Full {
                problems.add(
                    format!("{rule}.access"),
                    "`access` limits methods, which a `tls: passthrough` entry cannot see: use `tls: intercept` or remove `access`",
                );
            }
            if entry.tls == TlsMode::Passthrough && entry.websocket {
                problems.add(
                    format!("{rule}.websocket"),
                    "a `tls: passthrough` tunnel already carries anything, WebSocket included, byte for byte: remove `websocket: true`, or use `tls: intercept` to have each WebSocket handshake decided and its messages relayed",
                );
            }
            for (i, net) in entry.allowed_ips.iter().enumerate() {
                if let Some(range) = ip::overlaps_always_blocked(net) {
                    problems.add(
                        format!("{rule}.allowed_ips[{i}]"),
                        format!("allowed_ips entry {net} overlaps {range}, which is never reachable: list only private ranges such as 10.0.0.0/8"),
                    );
                }
            }
            Some(AllowEntry {
                rule,
                target: EntryTarget::Host {
                    pattern: pattern?,
                    schemes,
                    ports,
                },
                access: entry.access,
                rules,
                deny_rules,
                tls: entry.tls,
                allowed_ips: entry.allowed_ips.clone(),
                allowed_hazards: PathHazards {
                    encoded_slash: entry.allow_encoded_slash,
                    path_parameter: entry.allow_path_parameters,
                    encoded_percent: entry.allow_encoded_percent,
                    trailing_dot: entry.allow_trailing_dot,
                },
                websocket: entry.websocket,
            })
        }
    }
}

fn validate_l7_rules(path: &str, rules: &[L7RuleSection], problems: &mut Problems) -> Vec<L7Rule> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            let method = match rule.method.as_str() {
                "*" => None,
                m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    Some(m.to_ascii_uppercase())
                }
                _ => {
                    problems.add(
                        format!("{path}[{i}].method"),
                        format!(
                            "`{}` is not an HTTP method: write GET, POST, … or `*`",
                            rule.method
                        ),
                    );
                    return None;
                }
            };
            match PathPattern::parse(&rule.path) {
                Ok(pattern) => Some(L7Rule {
                    method,
                    path: pattern,
                }),
                Err(error) => {
                    problems.add(format!("{path}[{i}].path"), error.to_string());
                    None
                }
            }
        })
        .collect()
}

pub(crate) fn validate_limits(section: &LimitsSection, problems: &mut Problems) -> Limits {
    let limits = Limits {
        max_requests: section.max_requests,
        default_timeout: section.default_timeout.as_duration(),
        max_timeout: section.max_timeout.as_duration(),
        max_request_bytes: section.max_request_bytes.0,
        max_response_bytes: section.max_response_bytes.0,
        max_connections: section.max_connections,
        memory: section.memory.0,
        cpu: section.cpu.and_then(|cores| match Cores::from_f64(cores) {
            Ok(cores) => Some(cores),
            Err(message) => {
                problems.add("limits.cpu", message);
                None
            }
        }),
        processes: section.processes,
        max_tunnel_bytes: section.max_tunnel_bytes.0,
        max_tunnel_duration: section.max_tunnel_duration.as_duration(),
        max_denied: section.max_denied,
        on_violation: section.on_violation,
    };
    let second = std::time::Duration::from_secs(1);
    if limits.default_timeout < second {
        problems.add(
            "limits.default_timeout",
            "default_timeout must be at least 1s",
        );
    }
    if limits.max_timeout < limits.default_timeout {
        problems.add(
            "limits.max_timeout",
            format!(
                "max_timeout ({}) is below default_timeout ({}): raise max_timeout",
                section.max_timeout, section.default_timeout
            ),
        );
    }
    if limits.max_connections == 0 {
        problems.add(
            "limits.max_connections",
            "max_connections must be at least 1",
        );
    }
    if limits.memory < MIN_MEMORY {
        problems.add(
            "limits.memory",
            format!(
                "memory must be at least {} (a command needs some to start at all)",
                ByteSize(MIN_MEMORY)
            ),
        );
    }
    if limits.processes < 2 {
        problems.add(
            "limits.processes",
            "processes must be at least 2 (tollgate's init and the command)",
        );
    }
    if limits.max_tunnel_bytes == 0 {
        problems.add(
            "limits.max_tunnel_bytes",
            "max_tunnel_bytes must be at least 1 byte (a passthrough tunnel that may carry nothing is no tunnel: remove the entry instead)",
        );
    }
    if limits.max_tunnel_duration < second {
        problems.add(
            "limits.max_tunnel_duration",
            "max_tunnel_duration must be at least 1s",
        );
    }
    if limits.max_denied == 0 {
        problems.add(
            "limits.max_denied",
            "max_denied must be at least 1 (it counts refused requests; the first refusal is answered either way)",
        );
    }
    limits
}

/// The smallest `limits.memory`.
pub const MIN_MEMORY: u64 = 4 << 20;

fn validate_retry(section: &RetrySection, problems: &mut Problems) -> Retry {
    if !(1..=10).contains(&section.attempts) {
        problems.add(
            "retry.attempts",
            "attempts must be between 1 (no retries) and 10",
        );
    }
    if section.max_wait < section.initial_wait {
        problems.add("retry.max_wait", "max_wait must not be below initial_wait");
    }
    for (i, status) in section.on_status.iter().enumerate() {
        if !(400..=599).contains(status) {
            problems.add(
                format!("retry.on_status[{i}]"),
                format!("{status} is not an error status: retries apply to 4xx/5xx answers such as 429 or 503"),
            );
        }
    }
    Retry {
        attempts: section.attempts,
        initial_wait: section.initial_wait.as_duration(),
        max_wait: section.max_wait.as_duration(),
        on_status: section.on_status.clone(),
    }
}

/// A prefix must lie inside some allow entry, so a credential can only ever travel to a
/// destination the policy reaches anyway.
fn inside_allow_list(
    prefix: &UrlPrefix,
    network: Option<&Network>,
) -> Result<&'static str, String> {
    let Some(network) = network else {
        return Err("the policy has no `network` section, so it can never be sent".into());
    };
    if network.allow_all {
        return Ok("allow_all");
    }
    match network.entries.iter().find(|entry| entry.covers_prefix(prefix)) {
        Some(entry) if entry.tls == TlsMode::Passthrough => Err(format!(
            "it falls in {}, a `tls: passthrough` entry whose requests tollgate cannot see: use `tls: intercept`",
            entry.rule
        )),
        Some(_) => Ok("allow"),
        None => Err(format!("{prefix} is outside every `network.allow` entry")),
    }
}

fn validate_providers(
    sections: &[AuthProviderSection],
    network: Option<&Network>,
    problems: &mut Problems,
) -> Vec<AuthProvider> {
    let mut seen = BTreeSet::new();
    let mut providers = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("auth_providers[{i}]");
        let name = section.name.trim();
        if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control() || c == ',') {
            problems.add(
                format!("{path}.name"),
                "provider names are 1-100 printable characters without commas",
            );
        } else if !seen.insert(name.to_ascii_lowercase()) {
            problems.add(
                format!("{path}.name"),
                format!("provider `{name}` is defined twice"),
            );
        }
        check_provider_fields(&path, section, problems);
        if section.scope.is_empty() {
            problems.add(
                format!("{path}.scope"),
                "scope is required: list the URL prefixes this credential may be sent to",
            );
        }
        let mut scope = Vec::new();
        for (j, text) in section.scope.iter().enumerate() {
            match UrlPrefix::parse(text) {
                Ok(prefix) => {
                    if let Err(why) = inside_allow_list(&prefix, network) {
                        problems.add(
                            format!("{path}.scope[{j}]"),
                            format!("provider `{name}` may not be scoped to {prefix}: {why}"),
                        );
                    }
                    scope.push(prefix);
                }
                Err(error) => problems.add(
                    format!("{path}.scope[{j}]"),
                    format!("invalid scope: {error}"),
                ),
            }
        }
        providers.push(AuthProvider {
            rule: path,
            name: name.to_owned(),
            kind: section.kind,
            header: section.header.clone(),
            username: section.username.clone(),
            secret: section.secret.clone(),
            headers: section
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.secret.clone()))
                .collect(),
            scope,
        });
    }
    providers
}

/// Each provider type needs exactly the fields that build its header.
fn check_provider_fields(path: &str, section: &AuthProviderSection, problems: &mut Problems) {
    let kind = section.kind.as_str();
    let needs_secret = section.kind != ProviderKind::Headers;
    if needs_secret && section.secret.is_none() {
        problems.add(
            format!("{path}.secret"),
            format!(
                "a `{kind}` provider needs `secret: {{env: NAME}}` or `secret: {{file: PATH}}`"
            ),
        );
    }
    if !needs_secret && section.secret.is_some() {
        problems.add(
            format!("{path}.secret"),
            "a `headers` provider takes a secret per header under `headers`, not `secret`",
        );
    }
    let needs_username = matches!(section.kind, ProviderKind::Basic | ProviderKind::Commcare);
    match (&section.username, needs_username) {
        (None, true) => problems.add(
            format!("{path}.username"),
            format!("a `{kind}` provider needs `username`"),
        ),
        (Some(_), false) => problems.add(
            format!("{path}.username"),
            format!("a `{kind}` provider takes no `username`"),
        ),
        _ => {}
    }
    match (&section.header, section.kind == ProviderKind::ApiKey) {
        (None, true) => problems.add(
            format!("{path}.header"),
            "an `api_key` provider needs `header`, e.g. X-Api-Key",
        ),
        (Some(_), false) => problems.add(
            format!("{path}.header"),
            format!("a `{kind}` provider takes no `header`"),
        ),
        (Some(header), true) => check_header_name(&format!("{path}.header"), header, problems),
        (None, false) => {}
    }
    match (
        section.headers.is_empty(),
        section.kind == ProviderKind::Headers,
    ) {
        (true, true) => problems.add(
            format!("{path}.headers"),
            "a `headers` provider needs at least one `{name, secret}` entry",
        ),
        (false, false) => problems.add(
            format!("{path}.headers"),
            format!("a `{kind}` provider takes no `headers` list"),
        ),
        _ => {}
    }
    for (i, header) in section.headers.iter().enumerate() {
        check_header_name(&format!("{path}.headers[{i}].name"), &header.name, problems);
    }
}

fn check_header_name(path: &str, name: &str, problems: &mut Problems) {
    let lower = name.to_ascii_lowercase();
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        problems.add(path, format!("`{name}` is not a valid header name"));
    } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("tollgate-") {
        problems.add(
            path,
            format!("header `{name}` is reserved and cannot carry a credential"),
        );
    }
}

fn validate_credentials(
    sections: &[CredentialSection],
    providers: &HashSet<&str>,
    network: Option<&Network>,
    problems: &mut Problems,
) -> Vec<UrlCredential> {
    let mut credentials = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("credentials[{i}]");
        check_provider_reference(
            &format!("{path}.provider"),
            &section.provider,
            providers,
            problems,
        );
        match UrlPrefix::parse(&section.pattern) {
            Ok(pattern) => {
                if let Err(why) = inside_allow_list(&pattern, network) {
                    problems.add(
                        format!("{path}.pattern"),
                        format!("credential pattern {pattern} is unusable: {why}"),
                    );
                }
                credentials.push(UrlCredential {
                    pattern,
                    provider: section.provider.trim().to_owned(),
                });
            }
            Err(error) => problems.add(
                format!("{path}.pattern"),
                format!("invalid pattern: {error}"),
            ),
        }
    }
    credentials
}

/// A URL credential injects its provider only where the provider may go: its pattern
/// must lie inside one of the provider's scope prefixes (else every request it matched
/// would be refused with `credential_scope_denied`).
fn check_credentials_in_scope(
    credentials: &[UrlCredential],
    providers: &[AuthProvider],
    problems: &mut Problems,
) {
    for (i, credential) in credentials.iter().enumerate() {
        let Some(provider) = providers.iter().find(|p| p.name == credential.provider) else {
            continue; // reported as an unknown provider
        };
        if !provider
            .scope
            .iter()
            .any(|scope| scope.contains(&credential.pattern))
        {
            let scope: Vec<String> = provider.scope.iter().map(ToString::to_string).collect();
            problems.add(
                format!("credentials[{i}].pattern"),
                format!(
                    "credential pattern {} is outside the scope of provider `{}` ({}): narrow the pattern or widen the scope",
                    credential.pattern,
                    provider.name,
                    scope.join(", ")
                ),
            );
        }
    }
}

fn check_provider_reference(
    path: &str,
    name: &str,
    providers: &HashSet<&str>,
    problems: &mut Problems,
) {
    if !providers.contains(name.trim()) {
        let mut known: Vec<&str> = providers.iter().copied().collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "none are defined in `auth_providers`".to_owned()
        } else {
            format!("defined providers: {}", known.join(", "))
        };
        problems.add(path, format!("unknown provider `{name}` ({known})"));
    }
}

fn validate_placeholders(
    sections: &[PlaceholderSection],
    providers: &HashSet<&str>,
    problems: &mut Problems,
) -> Vec<Placeholder> {
    let mut seen = HashSet::new();
    sections
        .iter()
        .enumerate()
        .map(|(i, section)| {
            let path = format!("placeholders[{i}]");
            check_provider_reference(
                &format!("{path}.provider"),
                &section.provider,
                providers,
                problems,
            );
            let valid_env = section
                .env
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && section
                    .env
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid_env {
                problems.add(
                    format!("{path}.env"),
                    format!(
                        "`{}` is not an environment variable name: use A-Z, 0-9 and _",
                        section.env
                    ),
                );
            } else if crate::sandbox_env::is_reserved(&section.env) {
                problems.add(
                    format!("{path}.env"),
                    format!(
                        "`{}` is set by tollgate itself in the sandbox; choose another variable for the placeholder",
                        section.env
                    ),
                );
            } else if !seen.insert(section.env.clone()) {
                problems.add(
                    format!("{path}.env"),
                    format!("`{}` is given two placeholders", section.env),
                );
            }
            Placeholder {
                env: section.env.clone(),
                provider: section.provider.trim().to_owned(),
            }
        })
        .collect()
}

fn validate_bot_auth(section: &BotAuthSection, problems: &mut Problems) -> BotAuth {
    match UrlPrefix::parse(&section.signature_agent) {
        Ok(agent) if agent.scheme == "https" => {}
        _ => problems.add(
            "bot_auth.signature_agent",
            "signature_agent must be an https URL, e.g. https://bot.example.com",
        ),
    }
    let validity = section.validity.as_duration();
    if validity.as_secs() < 1 || validity.as_secs() > 86_400 {
        problems.add("bot_auth.validity", "validity must be between 1s and 24h");
    }
    BotAuth {
        key: section.key.clone(),
        signature_agent: section.signature_agent.clone(),
        validity,
    }
}

fn validate_quotas(section: &QuotasSection, problems: &mut Problems) -> Quotas {
    let team = validate_quota_limits(
        "quotas",
        QuotaLimitsFields {
            requests_per_minute: section.requests_per_minute,
            burst: section.burst,
            requests_per_day: section.requests_per_day,
            bytes_per_day: section.bytes_per_day,
        },
        problems,
    );
    if section.destinations.len() > quotas::MAX_DESTINATIONS {
        problems.add(
            "quotas.destinations",
            format!(
                "{} destination quotas is too many: at most {} (a wildcard host such as *.example.com covers several hosts with one)",
                section.destinations.len(),
                quotas::MAX_DESTINATIONS
            ),
        );
    }
    let mut destinations: Vec<DestinationQuota> = Vec::new();
    for (i, destination) in section.destinations.iter().enumerate() {
        let rule = format!("quotas.destinations[{i}]");
        let limits = validate_quota_limits(
            &rule,
            QuotaLimitsFields {
                requests_per_minute: destination.requests_per_minute,
                burst: destination.burst,
                requests_per_day: destination.requests_per_day,
                bytes_per_day: destination.bytes_per_day,
            },
            problems,
        );
        let sets_a_limit = destination.requests_per_minute.is_some()
            || destination.requests_per_day.is_some()
            || destination.bytes_per_day.is_some();
        // A lone `burst` has its own error, which says what to add.
        if !sets_a_limit && destination.burst.is_none() {
            problems.add(
                &rule,
                format!(
                    "the quota for {} sets no limit: give requests_per_minute, requests_per_day or bytes_per_day, or remove the entry",
                    destination.host
                ),
            );
        }
        let host = match HostPattern::parse(&destination.host) {
            Ok(host) => host,
            Err(error) => {
                problems.add(format!("{rule}.host"), error.to_string());
                continue;
            }
        };
        // Compared normalised, so `API.example.com.` is a second `api.example.com`: two
        // quotas on one host would each count it under another name.
        if let Some(first) = destinations.iter().find(|d| d.host == host) {
            problems.add(
                format!("{rule}.host"),
                format!(
                    "{host} already has a quota ({}): put its limits in one entry",
                    first.rule
                ),
            );
            continue;
        }
        destinations.push(DestinationQuota { rule, host, limits });
    }
    Quotas { team, destinations }
}

/// The limit keys one scope (`quotas` or `quotas.destinations[i]`) sets.
struct QuotaLimitsFields {
    requests_per_minute: Option<QuotaCount>,
    burst: Option<QuotaCount>,
    requests_per_day: Option<QuotaCount>,
    bytes_per_day: Option<ByteSize>,
}

fn validate_quota_limits(
    scope: &str,
    fields: QuotaLimitsFields,
    problems: &mut Problems,
) -> QuotaLimits {
    let mut count = |key: &str, value: Option<QuotaCount>, what: &str| {
        let value = value?.0;
        let problem = if value == 0 {
            format!("{key} must be at least 1: remove the key to have no limit")
        } else if value > quotas::MAX_REQUESTS {
            format!(
                "{key} {value} is more than the most a quota counts ({} {what}): a larger number is a typo, not a limit",
                quotas::MAX_REQUESTS
            )
        } else {
            return Some(value);
        };
        problems.add(format!("{scope}.{key}"), problem);
        None
    };
    let per_minute = count(
        "requests_per_minute",
        fields.requests_per_minute,
        "requests",
    );
    let burst = count("burst", fields.burst, "requests");
    let requests_per_day = count("requests_per_day", fields.requests_per_day, "requests");
    let bytes_per_day = fields.bytes_per_day.and_then(|ByteSize(bytes)| {
        let problem = if bytes == 0 {
            "bytes_per_day must be at least 1 byte: remove the key to have no limit".to_owned()
        } else if bytes > quotas::MAX_BYTES {
            format!(
                "bytes_per_day {} is more than the most a quota counts ({}, 1 PiB)",
                ByteSize(bytes),
                ByteSize(quotas::MAX_BYTES)
            )
        } else {
            return Some(bytes);
        };
        problems.add(format!("{scope}.bytes_per_day"), problem);
        None
    });
    if fields.burst.is_some() && fields.requests_per_minute.is_none() {
        problems.add(
            format!("{scope}.burst"),
            "burst is the size of the requests_per_minute bucket: set requests_per_minute in the same place, or remove burst",
        );
    }
    let requests_per_minute = per_minute.map(|per_minute| match burst {
        None => RateLimit::with_default_burst(per_minute),
        Some(burst) => {
            let most = per_minute * quotas::MAX_BURST_MINUTES;
            if burst > most {
                problems.add(
                    format!("{scope}.burst"),
                    format!(
                        "burst {burst} holds more than a day of requests_per_minute ({per_minute} × {} = {most}): lower it, and use requests_per_day for a daily budget",
                        quotas::MAX_BURST_MINUTES
                    ),
                );
            }
            RateLimit { per_minute, burst }
        }
    });
    QuotaLimits {
        requests_per_minute,
        requests_per_day,
        bytes_per_day,
    }
}
