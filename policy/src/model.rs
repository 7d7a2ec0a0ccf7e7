//! The validated policy: what decisions are made from, after every check in `validate` passed.

use crate::path_readings::lenient_reading;
use crate::schema::{Access, OnViolation, ProviderKind, Scheme, SecretRef, TlsMode};
use crate::url::{HostPattern, NormalizedUrl, PathHazards, PathPattern, UrlHost, UrlPrefix};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Outbound access of one team. `None` in [`crate::Policy::network`] means disabled.
#[derive(Debug, Clone)]
pub struct Network {
    pub allow_all: bool,
    pub block_private_ips: bool,
    pub entries: Vec<AllowEntry>,
    pub hosts: BTreeMap<String, IpAddr>,
    pub upstream_ca: Option<PathBuf>,
    /// `network.transparent` (default true): clients that ignore the proxy settings reach
    /// the proxy anyway, through the sandbox's stub resolver and a redirect of its
    /// synthetic addresses (docs/policy.md, "Transparent egress").
    pub transparent: bool,
}

impl Network {
    /// The names an interception CA for this network may certify, as name-constraint
    /// subtrees (a domain covers its subdomains): one per allow entry, duplicates removed.
    /// `None` with `allow_all`, where any public name may be reached.
    pub fn certificate_subtrees(&self) -> Option<Vec<UrlHost>> {
        if self.allow_all {
            return None;
        }
        let mut names: Vec<UrlHost> = Vec::new();
        for entry in &self.entries {
            let name = match &entry.target {
                EntryTarget::Prefix(prefix) => prefix.host.clone(),
                EntryTarget::Host { pattern, .. } => pattern.subtree(),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Some(names)
    }

    /// Whether some request to `host` could be allowed: the host of an allow entry matches
    /// it, whatever the scheme, port or L7 rules. This is the question the sandbox's stub
    /// resolver asks before it hands out a synthetic address; the proxy still decides every
    /// request in full.
    ///
    /// Only names: an IP host is always false (a client that dials an address literally
    /// meets the eBPF wall, and an IP-literal entry is reached through the proxy settings).
    /// `host` must be in the form [`UrlHost::parse`] gives (lowercase, IDN as punycode, no
    /// trailing dot); the caller normalises, and any other spelling is false, so a name is
    /// never allowed in a spelling the proxy would not match.
    ///
    /// With `allow_all`, every syntactically valid name of two labels or more, except the
    /// names that only ever mean something on this machine or its link: `localhost` and
    /// `*.localhost` (RFC 6761), `*.local` (mDNS, RFC 6762) and `*.arpa` (reverse lookups).
    pub fn could_allow_host(&self, host: &UrlHost) -> bool {
        let UrlHost::Domain(name) = host else {
            return false;
        };
        if !matches!(UrlHost::parse(name), Ok(UrlHost::Domain(normal)) if normal == *name) {
            return false;
        }
        if self.allow_all {
            return name.contains('.') && !is_local_only_name(name);
        }
        self.entries.iter().any(|entry| entry.matches_host(host))
    }
}

/// Names that resolve on this machine or its link, never on the Internet `allow_all`
/// opens: they get no synthetic address.
fn is_local_only_name(name: &str) -> bool {
    let top = name.rsplit('.').next().unwrap_or(name);
    matches!(top, "localhost" | "local" | "arpa")
}

/// One allow-list entry, short or long form.
#[derive(Debug, Clone)]
pub struct AllowEntry {
    /// Where it came from, e.g. `network.allow[2]`: named in every decision it makes.
    pub rule: String,
    pub target: EntryTarget,
    pub access: Access,
    pub rules: Vec<L7Rule>,
    pub deny_rules: Vec<L7Rule>,
    pub tls: TlsMode,
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// The path spellings this entry lets through (`allow_encoded_slash`,
    /// `allow_path_parameters`, `allow_encoded_percent`, `allow_trailing_dot`); all refused
    /// by default. Short-form entries allow none.
    pub allowed_hazards: PathHazards,
    /// WebSocket upgrades are allowed (`websocket: true`, long form only; never with
    /// `tls: passthrough`).
    pub websocket: bool,
}

#[derive(Debug, Clone)]
pub enum EntryTarget {
    /// Short form: a URL prefix.
    Prefix(UrlPrefix),
    /// Long form: a host pattern with the schemes and ports it may be reached on.
    Host {
        pattern: HostPattern,
        schemes: Vec<Scheme>,
        ports: Vec<u16>,
    },
}

/// Why an entry whose host matched still did not match the request: the most specific
/// reason is reported, so the team learns what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearMiss {
    Scheme,
    Port,
    Path,
}

impl NearMiss {
    pub fn as_str(self) -> &'static str {
        match self {
            NearMiss::Scheme => "scheme",
            NearMiss::Port => "port",
            NearMiss::Path => "path",
        }
    }
}

impl AllowEntry {
    /// Whether the entry admits this URL; `connect` requests are matched on host and port
    /// only, since neither scheme nor path is known before the tunnel opens.
    pub fn matches(&self, url: &NormalizedUrl, connect: bool) -> Result<(), Option<NearMiss>> {
        match &self.target {
            EntryTarget::Prefix(prefix) => {
                if prefix.host != url.host {
                    return Err(None);
                }
                if connect {
                    return if prefix.port == url.port {
                        Ok(())
                    } else {
                        Err(Some(NearMiss::Port))
                    };
                }
                if prefix.scheme != url.scheme {
                    Err(Some(NearMiss::Scheme))
                } else if prefix.port != url.port {
                    Err(Some(NearMiss::Port))
                } else if !prefix.matches(url) {
                    Err(Some(NearMiss::Path))
                } else {
                    Ok(())
                }
            }
            EntryTarget::Host {
                pattern,
                schemes,
                ports,
            } => {
                if !pattern.matches(&url.host) {
                    return Err(None);
                }
                if !connect && !schemes.iter().any(|s| s.as_str() == url.scheme) {
                    Err(Some(NearMiss::Scheme))
                } else if !ports.contains(&url.port) {
                    Err(Some(NearMiss::Port))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether the entry's host is `host` (or its pattern matches it), whatever the
    /// scheme, port and path. `host` is normalised (see [`Network::could_allow_host`]).
    pub fn matches_host(&self, host: &UrlHost) -> bool {
        match &self.target {
            EntryTarget::Prefix(prefix) => prefix.host == *host,
            EntryTarget::Host { pattern, .. } => pattern.matches(host),
        }
    }

    /// The ports this entry allows, for messages.
    pub fn ports(&self) -> Vec<u16> {
        match &self.target {
            EntryTarget::Prefix(prefix) => vec![prefix.port],
            EntryTarget::Host { ports, .. } => ports.clone(),
        }
    }

    /// The host part of the entry, for messages.
    pub fn host_display(&self) -> String {
        match &self.target {
            EntryTarget::Prefix(prefix) => prefix.host.to_string(),
            EntryTarget::Host { pattern, .. } => pattern.to_string(),
        }
    }

    /// Whether a URL prefix (a provider scope or credential pattern) lies inside this entry.
    pub fn covers_prefix(&self, prefix: &UrlPrefix) -> bool {
        let probe = NormalizedUrl {
            scheme: prefix.scheme.clone(),
            host: prefix.host.clone(),
            port: prefix.port,
            path: prefix.path.clone(),
            query: None,
            had_userinfo: false,
            hazards: PathHazards::default(),
        };
        self.matches(&probe, false).is_ok()
    }
}

/// An L7 rule: a method (or any) and a path pattern.
#[derive(Debug, Clone)]
pub struct L7Rule {
    pub method: Option<String>,
    pub path: PathPattern,
}

impl L7Rule {
    /// As an entry of `rules`: the method and the path exactly, so an allow rule never
    /// admits more than it spells.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        self.method_matches(method) && self.path.matches(path)
    }

    /// As an entry of `deny_rules`: the path ignoring ASCII case, so a refusal cannot be
    /// dodged by asking a case-insensitive server (IIS, a Windows or macOS file system)
    /// for `/ADMIN` instead of `/admin`; and the path as a lenient server reads it
    /// ([`lenient_reading`]), so an entry's opt-ins never open a way around its deny rules.
    pub fn denies(&self, method: &str, path: &str) -> bool {
        self.method_matches(method)
            && (self.path.matches_ignoring_ascii_case(path)
                || self
                    .path
                    .matches_ignoring_ascii_case(&lenient_reading(path)))
    }

    /// Methods are case-sensitive (RFC 9110): the rule's is stored upper case, and a request
    /// whose method is not was refused before matching (`method_not_uppercase`).
    fn method_matches(&self, method: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: u64,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub max_connections: u32,
    /// Memory of the execution in bytes (`limits.memory`), enforced by its cgroup.
    pub memory: u64,
    /// CPU time of the execution (`limits.cpu`); `None`: unlimited.
    pub cpu: Option<crate::units::Cores>,
    /// Processes and threads at once (`limits.processes`).
    pub processes: u64,
    /// Bytes up plus down of one `tls: passthrough` tunnel, or the message data of one
    /// WebSocket session (`limits.max_tunnel_bytes`, default 1 GiB); past it the tunnel is
    /// cut, the session closed.
    pub max_tunnel_bytes: u64,
    /// Lifetime of one `tls: passthrough` tunnel or WebSocket session
    /// (`limits.max_tunnel_duration`, default 10 minutes); past it the tunnel is cut, the
    /// session closed.
    pub max_tunnel_duration: Duration,
    /// Refused requests per execution (`limits.max_denied`, default 100, at least 1); past
    /// it every request gets `429 denial_limit`.
    pub max_denied: u64,
    /// Whether the execution is ended once `max_denied` is reached
    /// (`limits.on_violation`, default `continue`).
    pub on_violation: OnViolation,
}

/// The limits of a policy that sets none: the defaults documented in docs/policy.md.
impl Default for Limits {
    fn default() -> Self {
        let mut problems = crate::validate::Problems::default();
        let limits = crate::validate::validate_limits(
            &crate::schema::LimitsSection::default(),
            &mut problems,
        );
        debug_assert!(problems.0.is_empty(), "the default limits are valid");
        limits
    }
}

impl Limits {
    /// The timeout for a request that asked for `requested` (the `Tollgate-Timeout` header):
    /// clamped to [1s, max_timeout] so sandboxed code can neither hang the proxy nor ask for
    /// a zero timeout.
    pub fn clamp_timeout(&self, requested: Option<Duration>) -> Duration {
        match requested {
            None => self.default_timeout,
            Some(asked) => asked.clamp(
                Duration::from_secs(1),
                self.max_timeout.max(Duration::from_secs(1)),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub initial_wait: Duration,
    pub max_wait: Duration,
    pub on_status: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct AuthProvider {
    /// Where it came from, e.g. `auth_providers[2]`: named in messages about its secrets.
    pub rule: String,
    pub name: String,
    pub kind: ProviderKind,
    pub header: Option<String>,
    pub username: Option<String>,
    pub secret: Option<SecretRef>,
    pub headers: Vec<(String, SecretRef)>,
    pub scope: Vec<UrlPrefix>,
}

impl AuthProvider {
    pub fn in_scope(&self, url: &NormalizedUrl) -> bool {
        self.scope.iter().any(|prefix| prefix.matches(url))
    }
}

#[derive(Debug, Clone)]
pub struct UrlCredential {
    pub pattern: UrlPrefix,
    pub provider: String,
}

#[derive(Debug, Clone)]
pub struct Placeholder {
    pub env: String,
    pub provider: String,
}

#[derive(Debug, Clone)]
pub struct BotAuth {
    pub key: SecretRef,
    pub signature_agent: String,
    pub validity: Duration,
}

/// Static pins are looked up by the normalised host name.
pub fn pinned_address(network: &Network, host: &UrlHost) -> Option<IpAddr> {
    match host {
        UrlHost::Domain(name) => network.hosts.get(name).copied(),
        UrlHost::Ip(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::url::UrlHost;
    use crate::Policy;

    fn subtrees(allow: &str) -> Option<Vec<String>> {
        let yaml = format!("version: 1\nteam: acme\nnetwork:\n{allow}");
        let policy = Policy::from_yaml("t.yaml", &yaml).expect("policy");
        policy
            .network
            .expect("network")
            .certificate_subtrees()
            .map(|names| names.iter().map(UrlHost::to_string).collect())
    }

    #[test]
    fn certificate_subtrees_cover_every_entry_host() {
        assert_eq!(
            subtrees(
                "  allow:\n    - https://API.example.com/v1\n    - host: '*.svc.example.org'\n    - host: '**.deep.example.net'\n    - https://api.example.com/v2\n    - host: 10.1.2.3\n      allowed_ips: [10.1.2.0/24]\n"
            ),
            Some(vec![
                "api.example.com".to_owned(),
                "svc.example.org".to_owned(),
                "deep.example.net".to_owned(),
                "10.1.2.3".to_owned(),
            ])
        );
        assert_eq!(subtrees("  allow_all: true\n"), None);
        assert_eq!(subtrees("  allow: []\n"), Some(vec![]));
    }

    fn network(section: &str) -> super::Network {
        let yaml = format!("version: 1\nteam: acme\nnetwork:\n{section}");
        Policy::from_yaml("t.yaml", &yaml)
            .expect("policy")
            .network
            .expect("network")
    }

    /// `could_allow_host` of a name as the resolver passes it: through `UrlHost::parse`.
    fn could_allow(network: &super::Network, name: &str) -> bool {
        network.could_allow_host(&UrlHost::parse(name).expect("a host"))
    }

    #[test]
    fn exact_hosts_and_prefixes_allow_their_name_on_any_port_and_scheme() {
        let net = network(
            "  allow:\n    - https://api.example.com/v1\n    - http://plain.example.org:8080/x\n    - host: files.example.net\n      ports: [8443]\n      schemes: [https]\n      rules: [{method: GET, path: /only/this}]\n",
        );
        for allowed in ["api.example.com", "plain.example.org", "files.example.net"] {
            assert!(could_allow(&net, allowed), "{allowed}");
        }
        for refused in [
            "example.com",
            "www.api.example.com",
            "api.example.co",
            "apiexample.com",
            "other.test",
        ] {
            assert!(!could_allow(&net, refused), "{refused}");
        }
    }

    #[test]
    fn wildcards_allow_what_they_match() {
        let net = network(
            "  allow:\n    - host: '*.svc.example.org'\n    - host: '**.deep.example.net'\n",
        );
        assert!(could_allow(&net, "a.svc.example.org"));
        assert!(!could_allow(&net, "svc.example.org"));
        assert!(!could_allow(&net, "a.b.svc.example.org"));
        assert!(could_allow(&net, "a.deep.example.net"));
        assert!(could_allow(&net, "a.b.c.deep.example.net"));
        assert!(!could_allow(&net, "deep.example.net"));
        assert!(!could_allow(&net, "xdeep.example.net"));
    }

    #[test]
    fn ip_hosts_never_get_a_name() {
        let net = network(
            "  allow:\n    - host: 10.1.2.3\n      allowed_ips: [10.1.2.0/24]\n    - http://192.0.2.7/\n",
        );
        for ip in ["10.1.2.3", "192.0.2.7", "0x0a.1.2.3", "167838211", "[::1]"] {
            assert!(!could_allow(&net, ip), "{ip}");
        }
        // Built by hand, an address spelt as a domain is not a name either.
        assert!(!net.could_allow_host(&UrlHost::Domain("10.1.2.3".into())));
        let all = network("  allow_all: true\n");
        assert!(!could_allow(&all, "10.1.2.3"));
        assert!(!all.could_allow_host(&UrlHost::Domain("10.1.2.3".into())));
        assert!(!all.could_allow_host(&UrlHost::Domain("1.2.3.4".into())));
    }

    #[test]
    fn allow_all_allows_names_of_two_labels_except_local_ones() {
        let all = network("  allow_all: true\n");
        for allowed in [
            "example.com",
            "a.b.c.example.org",
            "xn--bcher-kva.example",
            "under_score.example",
            "localhost.example.com",
            "local.example",
        ] {
            assert!(could_allow(&all, allowed), "{allowed}");
        }
        for refused in [
            "localhost",
            "printer",
            "a.localhost",
            "printer.local",
            "x.y.local",
            "1.0.0.127.in-addr.arpa",
            "arpa",
        ] {
            assert!(!could_allow(&all, refused), "{refused}");
        }
    }

    #[test]
    fn the_caller_normalises_case_trailing_dots_and_idn() {
        let net = network("  allow:\n    - https://api.example.com\n    - host: bücher.example\n");
        // Through UrlHost::parse, the spellings of one name are that name.
        for spelling in [
            "API.Example.COM",
            "api.example.com.",
            "bücher.example",
            "BÜCHER.example.",
            "xn--bcher-kva.example",
        ] {
            assert!(could_allow(&net, spelling), "{spelling}");
        }
        // Not normalised, a host is refused rather than guessed at, for entries and
        // allow_all alike.
        let all = network("  allow_all: true\n");
        for raw in ["API.example.com", "api.example.com.", "bücher.example"] {
            let host = UrlHost::Domain(raw.to_owned());
            assert!(!net.could_allow_host(&host), "{raw}");
            assert!(!all.could_allow_host(&host), "{raw}");
        }
    }

    #[test]
    fn an_empty_allow_list_allows_no_name() {
        let net = network("  allow: []\n");
        assert!(!could_allow(&net, "example.com"));
    }
}
