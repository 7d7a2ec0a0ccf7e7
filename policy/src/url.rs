//! URL normalisation and matching: the single parser behind every egress decision.
//!
//! Every policy decision about a request (short-form URL prefixes, host patterns, path
//! rules) and the request the proxy finally sends upstream are derived from the same
//! [`NormalizedUrl`]. There is deliberately no second parser anywhere: SSRF and allowlist
//! bypasses usually come from a *parser differential*, where the check reads one host or
//! path and the HTTP client reaches another. Here the proxy forwards
//! [`NormalizedUrl::origin_form`] to the address it resolved for [`NormalizedUrl::host`],
//! so what was checked is what is sent.
//!
//! Parsing is WHATWG (the `url` crate) plus a few stricter rules, each of which only ever
//! rejects input or makes two spellings of the same resource compare equal:
//!
//! * the input must literally start with `scheme://` and have a non-empty authority right
//!   after it (WHATWG would also accept `http:evil.com` or `http:///evil.com`);
//! * whitespace and control characters anywhere are rejected (WHATWG silently drops tabs
//!   and newlines, which is a classic way to smuggle a different host past a reviewer);
//! * domain hosts are lowercase ASCII (IDN → punycode), lose one trailing dot, and may only
//!   contain DNS characters (`a-z 0-9 - _`) in non-empty labels of at most 63 bytes;
//! * IPv4 hosts in any WHATWG spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`)
//!   become an [`IpAddr`], bracketed IPv6 stays IPv6 (IPv4-mapped addresses are *not*
//!   unwrapped here, IP classification deals with embedded IPv4; matching does treat a
//!   mapped address as equal to its IPv4 address, since it is the same destination);
//! * the path has dot segments resolved (also `%2e` spellings), `\` read as `/`,
//!   percent-escapes of unreserved characters decoded and the rest upper-cased, and a `%`
//!   not followed by two hex digits rejected, because upstream servers disagree on it;
//! * `%2F` / `%5C` inside a segment stay encoded but set [`PathHazards::encoded_slash`],
//!   since many servers decode them into a separator *after* our prefix check;
//! * three more spellings are forwarded as they are but flagged, because common servers read
//!   them as another path than the one matched (see [`PathHazards`]): a `;` (or `%3B`) in a
//!   segment (Tomcat's path parameters, `/x/..;/admin`), an encoded `%` (`%25`: a server
//!   that decodes twice), and a segment ending in `.` (IIS and Windows drop trailing dots);
//! * userinfo is dropped and only remembered as a flag; it never appears in any output or
//!   error, and neither does the query string.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use url::Url;

/// Longest URL (in bytes) accepted anywhere; longer input is refused before parsing.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Longest host or path pattern (in bytes) accepted from a policy.
pub const MAX_PATTERN_LEN: usize = 2048;
/// Most segments a path pattern may have; keeps matching cost bounded.
pub const MAX_PATTERN_SEGMENTS: usize = 128;

const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// Unsupported schemes are echoed in errors; cap them so an error stays one short line.
const MAX_SCHEME_ECHO: usize = 32;

/// The effective port of `scheme` when none is written, for the schemes tollgate speaks.
pub fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

/// Why a URL (or URL prefix, or host) was refused.
///
/// Messages may name the scheme but never contain userinfo, the query, or any other part
/// of the input, so they are safe to log and to return to the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is empty")]
    Empty,
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("the URL is not valid: {0}")]
    Invalid(&'static str),
    #[error("the URL scheme `{0}` is not supported: only http and https are allowed")]
    UnsupportedScheme(String),
    #[error("the URL has no host")]
    MissingHost,
    #[error("the URL host is not valid: {0}")]
    InvalidHost(&'static str),
    #[error("the URL port is not valid: it must be a number from 1 to 65535")]
    InvalidPort,
    #[error("a URL prefix must not contain {0}; write it as scheme://host[:port][/path]")]
    NotAllowedInPrefix(&'static str),
}

impl UrlError {
    /// The reason as a static string, for wrapping into other error types without
    /// carrying any input along.
    fn host_reason(&self) -> &'static str {
        match self {
            UrlError::Empty | UrlError::MissingHost => "it is empty",
            UrlError::TooLong => "it is too long",
            UrlError::InvalidHost(r) | UrlError::Invalid(r) => r,
            UrlError::InvalidPort => "it must not contain a port",
            UrlError::UnsupportedScheme(_) | UrlError::NotAllowedInPrefix(_) => {
                "it is not a host name"
            }
        }
    }
}

fn map_parse_error(e: url::ParseError) -> UrlError {
    use url::ParseError as P;
    match e {
        P::EmptyHost => UrlError::MissingHost,
        P::InvalidPort => UrlError::InvalidPort,
        P::IdnaError => UrlError::InvalidHost("it is not a valid international domain name"),
        P::InvalidDomainCharacter => {
            UrlError::InvalidHost("it contains a character that is not allowed in a host name")
        }
        P::InvalidIpv4Address => {
            UrlError::InvalidHost("it looks like an IPv4 address but is not a valid one")
        }
        P::InvalidIpv6Address => UrlError::InvalidHost("it is not a valid IPv6 address"),
        _ => UrlError::Invalid("it is not a well-formed URL"),
    }
}

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c == ' ' || c.is_control())
}

// ---------------------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------------------

/// A normalised host: a lowercase ASCII domain without trailing dot, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UrlHost {
    Domain(String),
    Ip(IpAddr),
}

impl UrlHost {
    /// Parses and normalises a bare host (`api.example.com`, `bücher.example`, `127.1`,
    /// `[2001:db8::1]`) exactly as the host of a URL would be.
    pub fn parse(s: &str) -> Result<UrlHost, UrlError> {
        if s.is_empty() {
            return Err(UrlError::MissingHost);
        }
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        if has_space_or_control(s) {
            return Err(UrlError::InvalidHost(
                "it contains whitespace or control characters",
            ));
        }
        let host = url::Host::parse(s).map_err(map_parse_error)?;
        Self::from_url_host(host)
    }

    fn from_url_host<S: AsRef<str>>(host: url::Host<S>) -> Result<UrlHost, UrlError> {
        match host {
            url::Host::Domain(d) => normalise_domain(d.as_ref()).map(UrlHost::Domain),
            url::Host::Ipv4(a) => Ok(UrlHost::Ip(IpAddr::V4(a))),
            url::Host::Ipv6(a) => Ok(UrlHost::Ip(IpAddr::V6(a))),
        }
    }

    /// The host as it appears in a URL authority: IPv6 in brackets.
    pub fn as_str_for_display(&self) -> String {
        match self {
            UrlHost::Domain(d) => d.clone(),
            UrlHost::Ip(IpAddr::V4(a)) => a.to_string(),
            UrlHost::Ip(IpAddr::V6(a)) => format!("[{a}]"),
        }
    }

    /// The host without brackets, as a resolver or an IP classifier wants it.
    pub fn host_str(&self) -> String {
        match self {
            UrlHost::Domain(d) => d.clone(),
            UrlHost::Ip(a) => a.to_string(),
        }
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, UrlHost::Ip(_))
    }
}

impl fmt::Display for UrlHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str_for_display())
    }
}

/// `d` comes out of WHATWG host parsing (lowercase, punycode); this adds the DNS rules.
fn normalise_domain(d: &str) -> Result<String, UrlError> {
    // Exactly one trailing dot is the root label and names the same host; more than one
    // is an empty label and refused below.
    let d = d.strip_suffix('.').unwrap_or(d);
    validate_domain(d)?;
    Ok(d.to_owned())
}

fn validate_domain(d: &str) -> Result<(), UrlError> {
    if d.is_empty() {
        return Err(UrlError::InvalidHost("it has no name, only dots"));
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err(UrlError::InvalidHost("it is longer than 253 characters"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(UrlError::InvalidHost(
                "it has an empty label (a leading dot or two dots in a row)",
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(UrlError::InvalidHost(
                "a label is longer than 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(UrlError::InvalidHost(
                "a DNS name may only contain letters, digits, '-', '_' and '.'",
            ));
        }
    }
    Ok(())
}

/// The form hosts are compared in. Hosts built by hand (the fields are public) may not be
/// normalised; matching must not be fooled by `API.Example.com.` or a `Domain("127.0.0.1")`,
/// or a deny rule would miss. An IPv4-mapped IPv6 address is the same socket destination
/// as its IPv4 address, so it compares equal to it (parsing still keeps it as IPv6, for
/// the IP classifier to see what was written).
fn canonical_host(h: &UrlHost) -> Option<Cow<'_, UrlHost>> {
    match h {
        UrlHost::Ip(a) => {
            let c = a.to_canonical();
            if c == *a {
                Some(Cow::Borrowed(h))
            } else {
                Some(Cow::Owned(UrlHost::Ip(c)))
            }
        }
        UrlHost::Domain(d) if is_canonical_domain(d) => Some(Cow::Borrowed(h)),
        UrlHost::Domain(d) => UrlHost::parse(d).ok().map(Cow::Owned),
    }
}

fn is_canonical_domain(d: &str) -> bool {
    // A last label starting with a digit might be an IPv4 spelling; let the parser decide.
    let last_label_numeric = d
        .rsplit('.')
        .next()
        .and_then(|l| l.bytes().next())
        .is_some_and(|b| b.is_ascii_digit());
    !last_label_numeric && validate_domain(d).is_ok()
}

fn authority_string(scheme: &str, host: &UrlHost, port: u16) -> String {
    if default_port(scheme) == Some(port) {
        host.as_str_for_display()
    } else {
        format!("{}:{port}", host.as_str_for_display())
    }
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: decoding these never changes what a URI identifies.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

struct BadEscape;

/// Appends the normalised form of one path segment to `out`: unreserved escapes decoded,
/// the others with upper-case hex, so every `%` in the result starts a valid escape.
fn normalise_segment(seg: &str, out: &mut String) -> Result<(), BadEscape> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(BadEscape);
            };
            let v = (hi << 4) | lo;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            i += 3;
        } else {
            // `i` is always on a char boundary: escapes are ASCII and we step whole chars.
            let Some(c) = seg.get(i..).and_then(|rest| rest.chars().next()) else {
                break;
            };
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(())
}

/// Spellings in a normalised path that common servers read as another path than the one
/// tollgate matched. The path is forwarded as it is; the policy refuses a request with any
/// of these unless the matching allow entry opts in. All are computed on the normalised
/// path, which is exactly what is sent upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PathHazards {
    /// A segment holds `%2F` or `%5C`: a server that decodes it sees a separator.
    pub encoded_slash: bool,
    /// A segment holds `;` or `%3B`: Tomcat (and Spring, Jetty) cut `;...` off each segment
    /// before mapping, so `/admin;x/y` is `/admin/y` and `/x/..;/admin` climbs to `/admin`;
    /// a server (or a proxy in front of it) that decodes `%3B` sees the same `;`.
    pub path_parameter: bool,
    /// The path holds `%25`, an encoded `%`: a server that decodes twice reads
    /// `%252F` as `/` and `%252e%252e` as `..`.
    pub encoded_percent: bool,
    /// A segment other than `.`/`..` (which are resolved away) ends in `.` (also written
    /// `%2E`): IIS and Windows file systems drop trailing dots, so `/admin./x` is `/admin/x`.
    pub trailing_dot: bool,
}

impl PathHazards {
    /// The hazards of one segment as [`normalise_segment`] wrote it. Every `%` there starts
    /// an escape with upper-case hex (a literal `%` is `%25`), so looking for `%3B` as text
    /// finds exactly the encoded `;`s, never the tail of another escape.
    fn of_segment(seg: &str) -> PathHazards {
        PathHazards {
            encoded_slash: seg.contains("%2F") || seg.contains("%5C"),
            path_parameter: seg.contains(';') || seg.contains("%3B"),
            encoded_percent: seg.contains("%25"),
            trailing_dot: seg.ends_with('.'),
        }
    }

    fn add(&mut self, other: PathHazards) {
        self.encoded_slash |= other.encoded_slash;
        self.path_parameter |= other.path_parameter;
        self.encoded_percent |= other.encoded_percent;
        self.trailing_dot |= other.trailing_dot;
    }

    /// The hazards present here that `allowed` (an allow entry's opt-ins) does not permit.
    pub fn refused_by(self, allowed: PathHazards) -> PathHazards {
        PathHazards {
            encoded_slash: self.encoded_slash && !allowed.encoded_slash,
            path_parameter: self.path_parameter && !allowed.path_parameter,
            encoded_percent: self.encoded_percent && !allowed.encoded_percent,
            trailing_dot: self.trailing_dot && !allowed.trailing_dot,
        }
    }
}

/// Normalises a WHATWG-serialised path; returns it with its hazards.
fn normalise_path(raw: &str) -> Result<(String, PathHazards), UrlError> {
    let body = raw.strip_prefix('/').unwrap_or(raw);
    let mut hazards = PathHazards::default();
    let mut out: Vec<String> = Vec::new();
    let mut segments = body.split('/').peekable();
    while let Some(seg) = segments.next() {
        let is_last = segments.peek().is_none();
        let mut norm = String::with_capacity(seg.len());
        normalise_segment(seg, &mut norm).map_err(|BadEscape| {
            UrlError::Invalid("the path has a `%` that is not followed by two hex digits")
        })?;
        // WHATWG already resolved dot segments, but decoding may in principle have made
        // new ones; resolving again keeps "no dot segments" an invariant of this module.
        match norm.as_str() {
            "." => {
                if is_last {
                    out.push(String::new());
                }
            }
            ".." => {
                out.pop();
                if is_last {
                    out.push(String::new());
                }
            }
            _ => {
                hazards.add(PathHazards::of_segment(&norm));
                out.push(norm);
            }
        }
    }
    Ok((format!("/{}", out.join("/")), hazards))
}

// ---------------------------------------------------------------------------------------
// NormalizedUrl
// ---------------------------------------------------------------------------------------

/// A request URL after normalisation; see the module documentation for the rules.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NormalizedUrl {
    /// `http` or `https`.
    pub scheme: String,
    pub host: UrlHost,
    /// Effective port: explicit, or the scheme default.
    pub port: u16,
    /// Normalised path; always starts with `/`, never has `.`/`..` segments.
    pub path: String,
    /// Raw query (as WHATWG serialises it) without `?`; `None` if there was no `?`.
    pub query: Option<String>,
    /// The input had userinfo (`user:pass@`); it is dropped and never kept.
    pub had_userinfo: bool,
    /// Spellings in the path that servers read differently (`%2F`, `;`, `%25`, `x.`); the
    /// policy refuses each unless the matching entry opts in.
    pub hazards: PathHazards,
}

// The query can carry tokens (`?api_key=`), so `{:?}` must not print it: Debug output
// ends up in logs and panic messages.
impl fmt::Debug for NormalizedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted(usize);
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "<redacted, {} bytes>", self.0)
            }
        }
        f.debug_struct("NormalizedUrl")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|q| Redacted(q.len())))
            .field("had_userinfo", &self.had_userinfo)
            .field("hazards", &self.hazards)
            .finish()
    }
}

/// Splits `scheme://rest`; `None` unless the input starts with a syntactically valid
/// scheme followed by `://`.
fn split_scheme(input: &str) -> Option<(&str, &str)> {
    let idx = input.find("://")?;
    let scheme = input.get(..idx)?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme, input.get(idx + 3..).unwrap_or("")))
}

impl NormalizedUrl {
    /// Parses and normalises an absolute `http://` or `https://` URL.
    pub fn parse(input: &str) -> Result<NormalizedUrl, UrlError> {
        if input.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        if input.trim().is_empty() {
            return Err(UrlError::Empty);
        }
        if has_space_or_control(input) {
            return Err(UrlError::Invalid(
                "it contains whitespace or control characters",
            ));
        }
        // Without a literal `scheme://`, `sk-live-1234:x@host` would parse as scheme
        // `sk-live-1234` and the secret would land in the UnsupportedScheme message.
        let Some((scheme, rest)) = split_scheme(input) else {
            return Err(UrlError::Invalid("it must start with http:// or https://"));
        };
        let scheme = scheme.to_ascii_lowercase();
        if default_port(&scheme).is_none() {
            let mut echo = scheme;
            echo.truncate(MAX_SCHEME_ECHO);
            return Err(UrlError::UnsupportedScheme(echo));
        }
        // The authority ends where WHATWG ends it for special schemes. Looking at it
        // ourselves lets us refuse `http:///evil.com` (WHATWG skips the extra slashes) and
        // notice an empty userinfo (`http://@host`), which the url crate does not report.
        let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        let authority = rest.get(..authority_end).unwrap_or("");
        let host_and_port = authority.rsplit('@').next().unwrap_or("");
        if host_and_port.is_empty() || host_and_port.starts_with(':') {
            return Err(UrlError::MissingHost);
        }

        let url = Url::parse(input).map_err(map_parse_error)?;
        if url.scheme() != scheme {
            // Cannot happen given split_scheme; refuse rather than trust a surprise.
            return Err(UrlError::Invalid("it is not a well-formed URL"));
        }
        let host = url.host().ok_or(UrlError::MissingHost)?;
        let host = UrlHost::from_url_host(host)?;
        let port = match url.port() {
            Some(0) => return Err(UrlError::InvalidPort),
            Some(p) => p,
            None => default_port(&scheme).ok_or(UrlError::InvalidPort)?,
        };
        let (path, hazards) = normalise_path(url.path())?;
        Ok(NormalizedUrl {
            scheme,
            host,
            port,
            path,
            query: url.query().map(str::to_owned),
            had_userinfo: authority.contains('@')
                || !url.username().is_empty()
                || url.password().is_some(),
            hazards,
        })
    }

    /// Builds a URL from the pieces of a CONNECT (authority-form) or origin-form request:
    /// `scheme`, `authority` as `host[:port]` / `[v6][:port]`, and `path_and_query`
    /// (`/x?y`, or empty for `/`). Userinfo in the authority is refused, not dropped:
    /// RFC 9110 does not allow it there, so its presence means a confused or hostile client.
    pub fn from_parts(
        scheme: &str,
        authority: &str,
        path_and_query: &str,
    ) -> Result<NormalizedUrl, UrlError> {
        let total = scheme
            .len()
            .saturating_add(authority.len())
            .saturating_add(path_and_query.len())
            .saturating_add(3);
        if total > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let scheme_ok = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(UrlError::Invalid("the scheme is not well-formed"));
        }
        if authority.is_empty() {
            return Err(UrlError::MissingHost);
        }
        // Any of these would make the glued string parse with a different authority.
        if authority
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '?' | '#' | '@') || c == ' ' || c.is_control())
        {
            return Err(UrlError::Invalid("the authority must be host[:port] only"));
        }
        let path_and_query = if path_and_query.is_empty() {
            "/"
        } else if path_and_query.starts_with('/') {
            path_and_query
        } else {
            return Err(UrlError::Invalid("the request target must start with `/`"));
        };
        Self::parse(&format!("{scheme}://{authority}{path_and_query}"))
    }

    /// The host without brackets (`api.github.com`, `10.0.0.1`, `2001:db8::1`).
    pub fn host_str(&self) -> String {
        self.host.host_str()
    }

    /// Host (IPv6 bracketed) plus `:port` only when the port is not the scheme default.
    pub fn authority(&self) -> String {
        authority_string(&self.scheme, &self.host, self.port)
    }

    /// `scheme://authority/path`: no userinfo, no query, no fragment. Safe for logs.
    pub fn redacted(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority(), self.path)
    }

    /// The request target the proxy sends upstream: path plus `?query` if there was one.
    pub fn origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// Decoded (`application/x-www-form-urlencoded`) query keys in order, duplicates kept,
    /// values dropped so policy input never holds them.
    pub fn query_keys(&self) -> Vec<String> {
        match &self.query {
            Some(q) => url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn is_default_port(&self) -> bool {
        default_port(&self.scheme) == Some(self.port)
    }
}

// ---------------------------------------------------------------------------------------
// UrlPrefix (short-form allow entries)
// ---------------------------------------------------------------------------------------

/// A short-form allow entry such as `https://api.openai.com/v1`.
///
/// `path` never ends in `/` unless it is exactly `/`: a trailing slash in the entry is
/// insignificant, so `https://h/v1/` and `https://h/v1` both allow `/v1`, `/v1/` and
/// `/v1/...`. Paths with empty segments (`//`) are refused, since stripping a trailing
/// slash from them would silently widen the entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlPrefix {
    pub scheme: String,
    pub host: UrlHost,
    pub port: u16,
    pub path: String,
}

impl UrlPrefix {
    pub fn parse(s: &str) -> Result<UrlPrefix, UrlError> {
        // Checked on the raw text: after parsing, a `*` could hide in a percent-escape of
        // the path, and `?`/`#` would already be split off.
        if s.contains('*') {
            return Err(UrlError::NotAllowedInPrefix(
                "a wildcard `*` (use the long form with a host pattern or path rule)",
            ));
        }
        if s.contains('?') {
            return Err(UrlError::NotAllowedInPrefix("a query (`?`)"));
        }
        if s.contains('#') {
            return Err(UrlError::NotAllowedInPrefix("a fragment (`#`)"));
        }
        let url = NormalizedUrl::parse(s)?;
        if url.had_userinfo {
            return Err(UrlError::NotAllowedInPrefix("userinfo (`user:pass@`)"));
        }
        let path = if url.path == "/" {
            url.path
        } else {
            let trimmed = url.path.strip_suffix('/').unwrap_or(&url.path);
            if trimmed.split('/').skip(1).any(str::is_empty) {
                return Err(UrlError::NotAllowedInPrefix("empty path segments (`//`)"));
            }
            trimmed.to_owned()
        };
        Ok(UrlPrefix {
            scheme: url.scheme,
            host: url.host,
            port: url.port,
            path,
        })
    }

    /// Scheme, host and port equal (ports after defaults) and the URL path lies under the
    /// prefix path on a segment boundary. The query is ignored.
    pub fn matches(&self, url: &NormalizedUrl) -> bool {
        self.matches_authority(&url.scheme, &url.host, url.port)
            && path_prefix_matches(&self.path, &url.path)
    }

    /// The authority half of [`matches`](Self::matches), for CONNECT where no path is known
    /// yet. A `true` here only means the tunnel may open; each request inside still needs
    /// [`matches`](Self::matches).
    pub fn matches_authority(&self, scheme: &str, host: &UrlHost, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) || self.port != port {
            return false;
        }
        match (canonical_host(&self.host), canonical_host(host)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

impl UrlPrefix {
    /// Whether every URL `other` matches is also matched by `self`: same scheme, host and
    /// port, and `other`'s path under `self`'s on a segment boundary. Used to check that a
    /// credential pattern lies inside its provider's scope.
    pub fn contains(&self, other: &UrlPrefix) -> bool {
        self.matches_authority(&other.scheme, &other.host, other.port)
            && path_prefix_matches(&self.path, &other.path)
    }
}

fn path_prefix_matches(prefix: &str, path: &str) -> bool {
    // Tolerate a hand-built prefix with a trailing slash; parse() never produces one.
    let prefix = match prefix.strip_suffix('/') {
        Some(p) => p,
        None => prefix,
    };
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = authority_string(&self.scheme, &self.host, self.port);
        if self.path.starts_with('/') {
            write!(f, "{}://{authority}{}", self.scheme, self.path)
        } else {
            write!(f, "{}://{authority}/{}", self.scheme, self.path)
        }
    }
}

// ---------------------------------------------------------------------------------------
// HostPattern (long-form host entries)
// ---------------------------------------------------------------------------------------

/// A host pattern in a long-form policy entry: an exact host (domain or IP), `*.suffix`
/// (exactly one extra label) or `**.suffix` (one or more extra labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    kind: HostPatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPatternKind {
    Exact(UrlHost),
    OneLabel(String),
    AnyDepth(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error(
        "the host pattern is empty; write a host such as `api.example.com` or `*.example.com`"
    )]
    Empty,
    #[error("the host pattern is longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    #[error("a host pattern of only `*` or `**` would match every host; name the domain, as in `*.example.com`")]
    MatchesEverything,
    #[error("a wildcard must be the whole first label, as in `*.example.com` or `**.example.com`; `*` anywhere else is not allowed")]
    WildcardPosition,
    #[error("a wildcard needs at least two labels after it (as in `*.example.com`); `*.com` would match a whole top-level domain")]
    WildcardTld,
    #[error("wildcards cannot be combined with IP addresses; list each address exactly")]
    WildcardIp,
    #[error("a host pattern is a bare host name; remove the {0}")]
    NotAHost(&'static str),
    #[error("the host pattern is not a valid host name or IP address: {0}")]
    InvalidHost(&'static str),
}

fn wildcard_suffix_labels(host: &UrlHost) -> Result<&str, HostPatternError> {
    match host {
        UrlHost::Ip(_) => Err(HostPatternError::WildcardIp),
        UrlHost::Domain(d) if !d.contains('.') => Err(HostPatternError::WildcardTld),
        UrlHost::Domain(d) => Ok(d),
    }
}

/// `d` minus `.suffix`, if what is left is a non-empty run of labels.
fn strip_label_suffix<'a>(d: &'a str, suffix: &str) -> Option<&'a str> {
    let rest = d.strip_suffix(suffix)?.strip_suffix('.')?;
    (!rest.is_empty()).then_some(rest)
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, HostPatternError> {
        if s.is_empty() {
            return Err(HostPatternError::Empty);
        }
        if s.len() > MAX_PATTERN_LEN {
            return Err(HostPatternError::TooLong);
        }
        if has_space_or_control(s) {
            return Err(HostPatternError::InvalidHost(
                "it contains whitespace or control characters",
            ));
        }
        if s.contains('/') || s.contains('\\') {
            return Err(HostPatternError::NotAHost("scheme and path"));
        }
        if s.contains('@') {
            return Err(HostPatternError::NotAHost("userinfo"));
        }
        if s == "*" || s == "**" {
            return Err(HostPatternError::MatchesEverything);
        }
        if let Ok(v6) = s.parse::<Ipv6Addr>() {
            return Ok(HostPattern {
                kind: HostPatternKind::Exact(UrlHost::Ip(IpAddr::V6(v6))),
            });
        }
        if s.starts_with('[') {
            return match UrlHost::parse(s) {
                Ok(h) => Ok(HostPattern {
                    kind: HostPatternKind::Exact(h),
                }),
                Err(e) => Err(HostPatternError::InvalidHost(e.host_reason())),
            };
        }
        if s.contains(':') {
            return Err(HostPatternError::NotAHost("`:port` (or scheme)"));
        }

        let (wildcard, rest) = if let Some(rest) = s.strip_prefix("**.") {
            (Some(true), rest)
        } else if let Some(rest) = s.strip_prefix("*.") {
            (Some(false), rest)
        } else {
            (None, s)
        };
        if rest.contains('*') {
            return Err(HostPatternError::WildcardPosition);
        }
        if wildcard.is_some() && rest.trim_end_matches('.').is_empty() {
            return Err(HostPatternError::WildcardTld);
        }
        // The same host parser as URLs, so a pattern and a request spelled differently
        // (case, IDN, trailing dot, IPv4 shorthand) normalise to the same thing.
        let host = UrlHost::parse(rest).map_err(|e| match e {
            UrlError::InvalidPort => HostPatternError::NotAHost("`:port`"),
            e => HostPatternError::InvalidHost(e.host_reason()),
        })?;
        let kind = match wildcard {
            None => HostPatternKind::Exact(host),
            Some(any_depth) => {
                let suffix = wildcard_suffix_labels(&host)?.to_owned();
                if any_depth {
                    HostPatternKind::AnyDepth(suffix)
                } else {
                    HostPatternKind::OneLabel(suffix)
                }
            }
        };
        Ok(HostPattern { kind })
    }

    /// Wildcards match domains only, never an IP host.
    pub fn matches(&self, host: &UrlHost) -> bool {
        let Some(host) = canonical_host(host) else {
            return false;
        };
        match (&self.kind, host.as_ref()) {
            (HostPatternKind::Exact(h), host) => canonical_host(h).is_some_and(|h| *h == *host),
            (HostPatternKind::OneLabel(suffix), UrlHost::Domain(d)) => {
                strip_label_suffix(d, suffix).is_some_and(|extra| !extra.contains('.'))
            }
            (HostPatternKind::AnyDepth(suffix), UrlHost::Domain(d)) => {
                strip_label_suffix(d, suffix).is_some()
            }
            (_, UrlHost::Ip(_)) => false,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self.kind, HostPatternKind::Exact(_))
    }

    /// The smallest X.509 name-constraint subtree holding every host this pattern matches:
    /// the domain itself for an exact name, the suffix for `*.`/`**.` (a dNSName subtree
    /// covers the domain and all its subdomains, RFC 5280 §4.2.1.10), the address for an IP.
    pub fn subtree(&self) -> UrlHost {
        match &self.kind {
            HostPatternKind::Exact(host) => host.clone(),
            HostPatternKind::OneLabel(suffix) | HostPatternKind::AnyDepth(suffix) => {
                UrlHost::Domain(suffix.clone())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            HostPatternKind::Exact(h) => write!(f, "{h}"),
            HostPatternKind::OneLabel(s) => write!(f, "*.{s}"),
            HostPatternKind::AnyDepth(s) => write!(f, "**.{s}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// PathPattern (L7 path rules)
// ---------------------------------------------------------------------------------------

/// A path rule such as `/repos/**`, `/v1/*/items` or `/v1/*.json`, matched against
/// [`NormalizedUrl::path`].
///
/// Semantics:
/// * Runs of `/` count as one separator and a trailing `/` is insignificant, on both the
///   pattern and the path. Many servers merge slashes (nginx does by default), so a deny
///   rule for `/admin` must also catch `//admin` and `/admin/`.
/// * A segment `*` matches exactly one (non-empty) segment.
/// * `*` inside a segment matches any run of characters, possibly empty, within that
///   segment only: `/v1/*.json` matches `/v1/a.json` and `/v1/.json`, not `/v1/a/b.json`.
/// * A segment `**` matches zero or more whole segments: `/repos/**` matches `/repos`,
///   `/repos/` and `/repos/a/b`. `**` is only allowed as a whole segment.
/// * Literal text is normalised like URL paths (unreserved escapes decoded, others
///   upper-cased, non-ASCII percent-encoded), so `/%61dmin` and `/admin` are the same rule.
///   A literal `*` cannot be written; `%2A` matches an encoded `*` only.
/// * Wildcards match the path as normalised, so `*` can match a segment holding `%2F`;
///   such requests are refused by the `encoded_slash` check unless an entry opts in.
/// * [`PathPattern::matches`] is exact; [`PathPattern::matches_ignoring_ascii_case`] (what
///   deny rules use) folds ASCII letters on both sides, so `/ADMIN` cannot dodge `/admin/**`
///   on a server that does not care about case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    segments: Vec<PathSegment>,
    /// `segments` with every literal in ASCII lower case, for case-insensitive matching.
    folded: Vec<PathSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PathSegment {
    Literal(String),
    /// The text between `*`s; always at least two parts.
    Glob(Vec<String>),
    AnyDepth,
}

impl PathSegment {
    fn to_ascii_lowercase(&self) -> PathSegment {
        match self {
            PathSegment::Literal(l) => PathSegment::Literal(l.to_ascii_lowercase()),
            PathSegment::Glob(parts) => {
                PathSegment::Glob(parts.iter().map(|p| p.to_ascii_lowercase()).collect())
            }
            PathSegment::AnyDepth => PathSegment::AnyDepth,
        }
    }

    fn matches_one(&self, seg: &str) -> bool {
        match self {
            PathSegment::Literal(l) => l == seg,
            PathSegment::Glob(parts) => glob_matches(parts, seg),
            PathSegment::AnyDepth => true,
        }
    }
}

fn glob_matches(parts: &[String], s: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return s == first;
    };
    if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) {
        return false;
    }
    if !s.ends_with(last.as_str()) {
        return false;
    }
    let Some(mut window) = s.get(first.len()..s.len() - last.len()) else {
        return false;
    };
    // Leftmost placement of each middle part is optimal for `*`-only globs.
    for part in middle {
        match window.find(part.as_str()) {
            Some(pos) => window = window.get(pos + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathPatternError {
    #[error(
        "the path pattern is empty; write an absolute path such as `/v1/items` or `/repos/**`"
    )]
    Empty,
    #[error("the path pattern must start with `/`")]
    NotAbsolute,
    #[error("the path pattern is longer than {MAX_PATTERN_LEN} bytes or has more than {MAX_PATTERN_SEGMENTS} segments")]
    TooLong,
    #[error("the path pattern must not contain {0}")]
    InvalidChar(&'static str),
    #[error(
        "`**` must be a whole path segment (as in `/repos/**`); use `*` to match within a segment"
    )]
    DoubleStarInSegment,
    #[error("the path pattern must not contain `.` or `..` segments; request paths are matched after those are resolved")]
    DotSegment,
    #[error("the path pattern has a `%` that is not followed by two hex digits; write a literal `%` as `%25`")]
    InvalidEscape,
}

fn is_dot_segment(raw: &str) -> bool {
    let s = raw.to_ascii_lowercase().replace("%2e", ".");
    s == "." || s == ".."
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, PathPatternError> {
        if s.is_empty() {
            return Err(PathPatternError::Empty);
        }
        if s.len() > MAX_PATTERN_LEN {
            return Err(PathPatternError::TooLong);
        }
        if !s.starts_with('/') {
            return Err(PathPatternError::NotAbsolute);
        }
        if has_space_or_control(s) {
            return Err(PathPatternError::InvalidChar(
                "whitespace or control characters",
            ));
        }
        if s.contains('?') {
            return Err(PathPatternError::InvalidChar(
                "a query (`?`); path rules match the path only",
            ));
        }
        if s.contains('#') {
            return Err(PathPatternError::InvalidChar("a fragment (`#`)"));
        }
        if s.contains('\\') {
            return Err(PathPatternError::InvalidChar("a backslash; use `/`"));
        }
        // WHATWG would silently resolve these, turning `/a/../b` into `/b`; a rule that
        // does not say what it matches is a policy mistake worth reporting.
        if s.split('/').any(is_dot_segment) {
            return Err(PathPatternError::DotSegment);
        }
        // Percent-encode exactly as request paths are encoded, by the same parser.
        let url = Url::parse(&format!("http://pattern.invalid{s}")).map_err(|_| {
            PathPatternError::InvalidChar("characters that cannot appear in a URL path")
        })?;

        let mut segments = Vec::new();
        for seg in url.path().split('/').filter(|seg| !seg.is_empty()) {
            let parsed = if seg == "**" {
                // `**/**` means the same as `**`; keeping one keeps matching linear.
                if segments.last() == Some(&PathSegment::AnyDepth) {
                    continue;
                }
                PathSegment::AnyDepth
            } else if seg.contains("**") {
                return Err(PathPatternError::DoubleStarInSegment);
            } else if seg.contains('*') {
                let mut parts = Vec::new();
                for part in seg.split('*') {
                    let mut norm = String::with_capacity(part.len());
                    normalise_segment(part, &mut norm)
                        .map_err(|BadEscape| PathPatternError::InvalidEscape)?;
                    parts.push(norm);
                }
                PathSegment::Glob(parts)
            } else {
                let mut norm = String::with_capacity(seg.len());
                normalise_segment(seg, &mut norm)
                    .map_err(|BadEscape| PathPatternError::InvalidEscape)?;
                PathSegment::Literal(norm)
            };
            segments.push(parsed);
            if segments.len() > MAX_PATTERN_SEGMENTS {
                return Err(PathPatternError::TooLong);
            }
        }
        let folded = segments
            .iter()
            .map(PathSegment::to_ascii_lowercase)
            .collect();
        Ok(PathPattern { segments, folded })
    }

    /// `normalised_path` is [`NormalizedUrl::path`] (no query); anything not starting with
    /// `/` never matches. Letter case must be equal.
    pub fn matches(&self, normalised_path: &str) -> bool {
        matches_segments(&self.segments, normalised_path)
    }

    /// [`PathPattern::matches`] with ASCII letters compared ignoring case (`/ADMIN/x`
    /// matches `/admin/**`); other characters, escapes included, compare as in `matches`.
    pub fn matches_ignoring_ascii_case(&self, normalised_path: &str) -> bool {
        matches_segments(&self.folded, &normalised_path.to_ascii_lowercase())
    }

    pub fn is_wildcard(&self) -> bool {
        self.segments
            .iter()
            .any(|s| !matches!(s, PathSegment::Literal(_)))
    }
}

/// The matching core of [`PathPattern`], on segments already folded or not.
fn matches_segments(pattern: &[PathSegment], normalised_path: &str) -> bool {
    if !normalised_path.starts_with('/') {
        return false;
    }
    let path: Vec<&str> = normalised_path
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let n = path.len();
    // next[j]: the pattern suffix after the current element matches path[j..].
    // Dynamic programming keeps `**` matching O(pattern × path) on any input.
    let mut next = vec![false; n + 1];
    next[n] = true;
    for pat in pattern.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match pat {
                PathSegment::AnyDepth => next[j] || (j < n && cur[j + 1]),
                single => j < n && next[j + 1] && single.matches_one(path[j]),
            };
        }
        next = cur;
    }
    next[0]
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for seg in &self.segments {
            f.write_str("/")?;
            match seg {
                PathSegment::Literal(l) => f.write_str(l)?,
                PathSegment::Glob(parts) => f.write_str(&parts.join("*"))?,
                PathSegment::AnyDepth => f.write_str("**")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn u(s: &str) -> NormalizedUrl {
        NormalizedUrl::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn prefix_containment_follows_matching() {
        let p = |s: &str| UrlPrefix::parse(s).expect("prefix");
        let scope = p("https://api.example.com/v1");
        assert!(scope.contains(&p("https://api.example.com/v1")));
        assert!(scope.contains(&p("https://API.example.com:443/v1/x/")));
        assert!(!scope.contains(&p("https://api.example.com/v10")));
        assert!(!scope.contains(&p("https://api.example.com/")));
        assert!(!scope.contains(&p("http://api.example.com/v1")));
        assert!(!scope.contains(&p("https://api.example.com:8443/v1")));
        assert!(!scope.contains(&p("https://other.example.com/v1")));
        assert!(p("https://api.example.com").contains(&scope));
    }

    fn err(s: &str) -> UrlError {
        match NormalizedUrl::parse(s) {
            Ok(url) => panic!("{s:?} should be refused, got {url:?}"),
            Err(e) => e,
        }
    }

    fn dom(s: &str) -> UrlHost {
        UrlHost::Domain(s.to_owned())
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> UrlHost {
        UrlHost::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    fn v6(s: &str) -> UrlHost {
        UrlHost::Ip(IpAddr::V6(s.parse().unwrap()))
    }

    fn prefix(s: &str) -> UrlPrefix {
        UrlPrefix::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse as a prefix: {e}"))
    }

    fn hp(s: &str) -> HostPattern {
        HostPattern::parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse as a host pattern: {e}"))
    }

    fn pp(s: &str) -> PathPattern {
        PathPattern::parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse as a path pattern: {e}"))
    }

    // ----- basic shape -------------------------------------------------------------------

    #[test]
    fn parses_a_plain_url() {
        let url = u("https://api.github.com/repos/x/y?per_page=10#frag");
        assert_eq!(url.scheme, "https");
        assert_eq!(url.host, dom("api.github.com"));
        assert_eq!(url.port, 443);
        assert_eq!(url.path, "/repos/x/y");
        assert_eq!(url.query.as_deref(), Some("per_page=10"));
        assert!(!url.had_userinfo);
        assert_eq!(url.hazards, PathHazards::default());
        assert!(url.is_default_port());
        assert_eq!(url.host_str(), "api.github.com");
        assert_eq!(url.authority(), "api.github.com");
        assert_eq!(url.redacted(), "https://api.github.com/repos/x/y");
        assert_eq!(url.origin_form(), "/repos/x/y?per_page=10");
    }

    #[test]
    fn scheme_is_lowercased_and_only_http_and_https_are_accepted() {
        assert_eq!(u("HTTP://h/").scheme, "http");
        assert_eq!(u("HtTpS://h/").scheme, "https");
        for (input, scheme) in [
            ("ftp://h/", "ftp"),
            ("ws://h/", "ws"),
            ("wss://h/", "wss"),
            ("file://h/etc/passwd", "file"),
            ("gopher://h/", "gopher"),
            ("FTP://h/", "ftp"),
        ] {
            let e = err(input);
            assert_eq!(e, UrlError::UnsupportedScheme(scheme.into()), "{input}");
            assert!(e.to_string().contains("only http and https"), "{e}");
        }
    }

    #[test]
    fn input_must_start_with_scheme_slash_slash() {
        for input in [
            "api.example.com/v1",
            "api.example.com:443",
            "//api.example.com/",
            "/v1/x",
            "http:api.example.com/",
            "http:/api.example.com/",
            "http:\\\\api.example.com/",
            "https:\\/api.example.com/",
            "mailto:a@b.c",
            "data:text/plain,hi",
            "javascript:alert(1)",
            "1http://h/",
            "ht_tp://h/",
            "://h/",
        ] {
            assert!(
                matches!(err(input), UrlError::Invalid(_)),
                "{input}: {:?}",
                err(input)
            );
        }
    }

    #[test]
    fn empty_and_too_long() {
        assert_eq!(err(""), UrlError::Empty);
        assert_eq!(err("   "), UrlError::Empty);
        let long = format!("http://h/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(err(&long), UrlError::TooLong);
        let exact = format!("http://h/{}", "a".repeat(MAX_URL_LEN - "http://h/".len()));
        assert_eq!(exact.len(), MAX_URL_LEN);
        assert_eq!(u(&exact).path.len(), MAX_URL_LEN - "http://h".len());
    }

    #[test]
    fn whitespace_and_control_characters_are_refused_not_stripped() {
        for input in [
            " http://h/",
            "http://h/ ",
            "http://h/a b",
            "http://ev\til.com/",
            "http://evil.com\n.api.example.com/",
            "http://h/\r\nX-Injected: 1",
            "http://h/\0",
            "http://h/\u{7f}",
            "http://h/\u{85}",
            "\thttp://h/",
        ] {
            assert!(matches!(err(input), UrlError::Invalid(_)), "{input:?}");
        }
    }

    #[test]
    fn missing_host() {
        for input in [
            "http://",
            "https://",
            "http:///",
            "http:///evil.com/",
            "http:////evil.com/",
            "http://\\evil.com/",
            "http://?x",
            "http://#x",
            "http://@/",
            "http://user:pass@/",
            "http://:80/",
            "http://user@:80/",
        ] {
            assert_eq!(err(input), UrlError::MissingHost, "{input}");
        }
    }

    // ----- ports -------------------------------------------------------------------------

    #[test]
    fn ports_default_and_explicit() {
        assert_eq!(u("http://h/").port, 80);
        assert_eq!(u("https://h/").port, 443);
        assert_eq!(u("http://h:80/").port, 80);
        assert!(u("http://h:80/").is_default_port());
        assert_eq!(u("http://h:80/").authority(), "h");
        assert_eq!(u("https://h:443/").authority(), "h");
        assert_eq!(u("https://h:0443/").port, 443);
        assert_eq!(u("http://h:/").port, 80);
        let x = u("https://h:8443/x");
        assert_eq!(x.port, 8443);
        assert!(!x.is_default_port());
        assert_eq!(x.authority(), "h:8443");
        assert_eq!(x.redacted(), "https://h:8443/x");
        // 443 is not the default for http, and 80 not for https.
        assert_eq!(u("http://h:443/").authority(), "h:443");
        assert_eq!(u("https://h:80/").authority(), "h:80");
        assert_eq!(u("http://h:65535/").port, 65535);
    }

    #[test]
    fn bad_ports() {
        for input in [
            "http://h:0/",
            "http://h:00/",
            "http://h:65536/",
            "http://h:99999999999/",
            "http://h:-1/",
            "http://h:8o/",
            "http://h:80:80/",
            "http://h: 80/",
            "http://[::1]:0/",
        ] {
            let e = NormalizedUrl::parse(input).unwrap_err();
            assert!(
                matches!(e, UrlError::InvalidPort | UrlError::Invalid(_)),
                "{input}: {e:?}"
            );
        }
        assert_eq!(err("http://h:0/"), UrlError::InvalidPort);
        assert_eq!(err("http://h:65536/"), UrlError::InvalidPort);
    }

    // ----- userinfo and authority confusion -----------------------------------------------

    #[test]
    fn userinfo_is_dropped_and_the_real_host_is_after_the_last_at() {
        let x = u("http://api.example.com@evil.com/");
        assert_eq!(x.host, dom("evil.com"));
        assert!(x.had_userinfo);
        assert_eq!(x.redacted(), "http://evil.com/");

        let x = u("https://user:pass@api.example.com/v1");
        assert_eq!(x.host, dom("api.example.com"));
        assert!(x.had_userinfo);
        assert_eq!(x.redacted(), "https://api.example.com/v1");

        let x = u("http://a@b@evil.com/");
        assert_eq!(x.host, dom("evil.com"));
        assert!(x.had_userinfo);

        let x = u("http://api.example.com:443@evil.com/");
        assert_eq!(x.host, dom("evil.com"));
        assert_eq!(x.port, 80);

        let x = u("http://api.example.com%2F@evil.com/");
        assert_eq!(x.host, dom("evil.com"));

        let x = u("http://@evil.com/");
        assert!(x.had_userinfo, "an empty userinfo is still userinfo");
        assert_eq!(x.host, dom("evil.com"));

        let x = u("http://:@evil.com/");
        assert!(x.had_userinfo);
        assert_eq!(x.host, dom("evil.com"));
    }

    #[test]
    fn delimiters_end_the_authority_before_an_at_sign() {
        for input in [
            "http://evil.com#@api.example.com/",
            "http://evil.com?@api.example.com/",
            "http://evil.com/@api.example.com/",
            "http://evil.com\\@api.example.com/",
        ] {
            let x = u(input);
            assert_eq!(x.host, dom("evil.com"), "{input}");
            assert!(!x.had_userinfo, "{input}");
        }
    }

    #[test]
    fn subdomain_and_suffix_tricks_keep_their_real_host() {
        assert_eq!(
            u("https://evil.api.example.com/").host,
            dom("evil.api.example.com")
        );
        assert_eq!(
            u("https://api.example.com.evil.com/").host,
            dom("api.example.com.evil.com")
        );
        assert_eq!(
            u("https://api.example.com-evil.com/").host,
            dom("api.example.com-evil.com")
        );
        assert_eq!(u("https://api.example.co/").host, dom("api.example.co"));
    }

    // ----- domain hosts ------------------------------------------------------------------

    #[test]
    fn host_case_and_trailing_dot() {
        assert_eq!(u("https://API.Example.COM/").host, dom("api.example.com"));
        assert_eq!(u("https://api.example.com./").host, dom("api.example.com"));
        assert_eq!(
            u("https://API.EXAMPLE.COM.:443/").redacted(),
            "https://api.example.com/"
        );
        assert!(matches!(
            err("https://api.example.com../"),
            UrlError::InvalidHost(_)
        ));
        assert!(matches!(err("http://./"), UrlError::InvalidHost(_)));
        assert!(matches!(err("http://../"), UrlError::InvalidHost(_)));
        assert!(matches!(err("http://.../"), UrlError::InvalidHost(_)));
        assert!(matches!(err("http://a..b/"), UrlError::InvalidHost(_)));
        assert!(matches!(err("http://.a.b/"), UrlError::InvalidHost(_)));
    }

    #[test]
    fn idn_becomes_punycode() {
        assert_eq!(
            u("http://bücher.example/").host,
            dom("xn--bcher-kva.example")
        );
        assert_eq!(
            u("http://BÜCHER.example/").host,
            dom("xn--bcher-kva.example")
        );
        assert_eq!(
            u("http://xn--bcher-kva.example/").host,
            dom("xn--bcher-kva.example")
        );
        // Fullwidth letters and the ideographic full stop are UTS 46 mapped.
        assert_eq!(u("http://ｅｘａｍｐｌｅ。com/").host, dom("example.com"));
        assert_eq!(
            u("http://bücher.example/").redacted(),
            "http://xn--bcher-kva.example/"
        );
    }

    #[test]
    fn percent_encoded_hosts_are_decoded_by_the_host_parser() {
        assert_eq!(u("http://%61pi.example.com/").host, dom("api.example.com"));
        assert_eq!(
            u("http://api%2eexample%2ecom/").host,
            dom("api.example.com")
        );
        assert_eq!(u("http://127.0.0.%31/").host, v4(127, 0, 0, 1));
        assert!(NormalizedUrl::parse("http://evil.com%2f.api.example.com/").is_err());
        assert!(NormalizedUrl::parse("http://evil.com%40api.example.com/").is_err());
        assert!(NormalizedUrl::parse("http://a%00b/").is_err());
    }

    #[test]
    fn non_dns_characters_in_hosts_are_refused() {
        for input in [
            "http://a*b.example.com/",
            "http://*.example.com/",
            "http://a!b/",
            "http://a$b/",
            "http://a~b/",
            "http://a'b/",
            "http://a%2ab/",
            "http://a<b/",
            "http://a|b/",
            "http://a^b/",
            "http://a[b/",
        ] {
            assert!(
                matches!(err(input), UrlError::InvalidHost(_) | UrlError::Invalid(_)),
                "{input}: {:?}",
                err(input)
            );
        }
        assert_eq!(
            u("http://_dmarc.example.com/").host,
            dom("_dmarc.example.com")
        );
        assert_eq!(u("http://a-b.example.com/").host, dom("a-b.example.com"));
    }

    #[test]
    fn label_and_name_lengths() {
        let label63 = "a".repeat(63);
        assert_eq!(
            u(&format!("http://{label63}.com/")).host,
            dom(&format!("{label63}.com"))
        );
        let label64 = "a".repeat(64);
        assert!(matches!(
            err(&format!("http://{label64}.com/")),
            UrlError::InvalidHost(_)
        ));
        let long = vec!["abcdefghi"; 26].join("."); // 259 bytes
        assert!(matches!(
            err(&format!("http://{long}/")),
            UrlError::InvalidHost(_)
        ));
    }

    // ----- IP hosts ----------------------------------------------------------------------

    #[test]
    fn ipv4_spellings_all_become_dotted_quads() {
        for input in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7F.1/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://0177.0.0.01/",
            "http://127.1/",
            "http://127.0.1/",
            "http://0x7f000001/",
            "http://0x7f.0x0.0x0.0x1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://１２７.０.０.１/",
        ] {
            let x = u(input);
            assert_eq!(x.host, v4(127, 0, 0, 1), "{input}");
            assert_eq!(x.host_str(), "127.0.0.1");
            assert_eq!(x.redacted(), "http://127.0.0.1/");
        }
        assert_eq!(u("http://0/").host, v4(0, 0, 0, 0));
        assert_eq!(u("http://10.1/").host, v4(10, 0, 0, 1));
        assert_eq!(u("http://169.254.169.254/").host, v4(169, 254, 169, 254));
        assert_eq!(u("http://2852039166/").host, v4(169, 254, 169, 254));
    }

    #[test]
    fn invalid_ipv4_spellings_are_refused() {
        for input in [
            "http://256.0.0.1/",
            "http://1.2.3.4.5/",
            "http://0x100000000/",
            "http://4294967296/",
            "http://1.2.3.09/",
            "http://example.1/",
            "http://127.0.0.1../",
        ] {
            assert!(NormalizedUrl::parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn bracketed_ipv6() {
        let x = u("http://[2001:db8::1]:8080/x");
        assert_eq!(x.host, v6("2001:db8::1"));
        assert_eq!(x.port, 8080);
        assert_eq!(x.host_str(), "2001:db8::1");
        assert_eq!(x.authority(), "[2001:db8::1]:8080");
        assert_eq!(x.redacted(), "http://[2001:db8::1]:8080/x");
        assert_eq!(x.host.to_string(), "[2001:db8::1]");
        assert_eq!(x.host.as_str_for_display(), "[2001:db8::1]");

        assert_eq!(u("http://[::1]/").host, v6("::1"));
        assert_eq!(u("http://[0:0:0:0:0:0:0:1]/").host, v6("::1"));
        assert_eq!(u("http://[2001:DB8::1]/").host, v6("2001:db8::1"));
        assert_eq!(u("https://[::1]:443/").authority(), "[::1]");

        // IPv4-mapped stays IPv6: classification looks inside, not the parser.
        let x = u("http://[::ffff:10.0.0.1]/");
        let UrlHost::Ip(IpAddr::V6(a)) = x.host else {
            panic!("expected v6, got {:?}", x.host)
        };
        assert_eq!(a.to_ipv4_mapped(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(u("http://[::ffff:a00:1]/").host, x.host);
        assert_eq!(u("http://[::ffff:127.0.0.1]/").host, v6("::ffff:127.0.0.1"));

        for input in [
            "http://[::1/",
            "http://::1/",
            "http://[fe80::1%25eth0]/",
            "http://[fe80::1%eth0]/",
            "http://[1:2:3:4:5:6:7:8:9]/",
            "http://[::1]x/",
            "http://[127.0.0.1]/",
            "http://[]/",
        ] {
            assert!(NormalizedUrl::parse(input).is_err(), "{input}");
        }
    }

    // ----- paths -------------------------------------------------------------------------

    #[test]
    fn empty_path_becomes_root() {
        assert_eq!(u("http://h").path, "/");
        assert_eq!(u("http://h?x=1").path, "/");
        assert_eq!(u("http://h?x=1").query.as_deref(), Some("x=1"));
        assert_eq!(u("http://h#f").path, "/");
        assert_eq!(u("http://h:8080").path, "/");
    }

    #[test]
    fn dot_segments_are_resolved_in_every_spelling() {
        for (input, path) in [
            ("http://h/v1/../admin", "/admin"),
            ("http://h/v1/%2e%2e/admin", "/admin"),
            ("http://h/v1/%2E%2E/admin", "/admin"),
            ("http://h/v1/.%2e/admin", "/admin"),
            ("http://h/v1/.%2E/admin", "/admin"),
            ("http://h/v1/%2e./admin", "/admin"),
            ("http://h/v1/./x", "/v1/x"),
            ("http://h/v1/%2e/x", "/v1/x"),
            ("http://h/v1/%2E/x", "/v1/x"),
            ("http://h/../../../etc/passwd", "/etc/passwd"),
            ("http://h/a/b/..", "/a/"),
            ("http://h/a/b/.", "/a/b/"),
            ("http://h/a/b/%2e%2e", "/a/"),
            ("http://h/..", "/"),
            ("http://h/.", "/"),
            ("http://h/v1/x/../../admin", "/admin"),
            ("http://h/v1/..?q=1", "/"),
            ("http://h/a//../b", "/a/b"),
            ("http://h/...", "/..."),
            ("http://h/a/.../b", "/a/.../b"),
            ("http://h/..a/b", "/..a/b"),
            ("http://h/a../b", "/a../b"),
        ] {
            assert_eq!(u(input).path, path, "{input}");
        }
    }

    #[test]
    fn backslash_is_a_path_separator() {
        for (input, path) in [
            ("http://h/v1\\..\\admin", "/admin"),
            ("http://h\\admin", "/admin"),
            ("http://h/a\\b", "/a/b"),
            ("http://h/v1\\%2e%2e\\admin", "/admin"),
        ] {
            let x = u(input);
            assert_eq!(x.path, path, "{input}");
            assert!(!x.hazards.encoded_slash, "{input}");
        }
    }

    #[test]
    fn consecutive_slashes_are_kept() {
        assert_eq!(u("http://h//a///b/").path, "//a///b/");
        assert_eq!(u("http://h//evil.com/x").host, dom("h"));
        assert_eq!(u("http://h//evil.com/x").origin_form(), "//evil.com/x");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        for (input, path) in [
            ("http://h/%61dmin", "/admin"),
            ("http://h/%41DMIN", "/ADMIN"),
            ("http://h/%7euser", "/~user"),
            ("http://h/a%2db%5fc%2ed", "/a-b_c.d"),
            ("http://h/%30%39", "/09"),
            ("http://h/a%20b", "/a%20b"),
            ("http://h/a%3fb", "/a%3Fb"),
            ("http://h/a%3Fb", "/a%3Fb"),
            ("http://h/a%25b", "/a%25b"),
            ("http://h/%e2%82%ac", "/%E2%82%AC"),
            ("http://h/€", "/%E2%82%AC"),
            ("http://h/ü", "/%C3%BC"),
            ("http://h/a%00b", "/a%00b"),
            ("http://h/%40", "/%40"),
            ("http://h/a@b", "/a@b"),
            ("http://h/{x}", "/%7Bx%7D"),
            ("http://h/a\"b", "/a%22b"),
            // Decoded once only: double encoding stays double encoded.
            ("http://h/%252e%252e/admin", "/%252e%252e/admin"),
            ("http://h/%2561dmin", "/%2561dmin"),
        ] {
            assert_eq!(u(input).path, path, "{input}");
        }
    }

    #[test]
    fn encoded_dots_that_decode_into_dot_segments_are_resolved() {
        assert_eq!(u("http://h/a/%2e%2e").path, "/");
        assert_eq!(u("http://h/a/%2E%2e/b").path, "/b");
    }

    #[test]
    fn invalid_percent_escapes_in_the_path_are_refused() {
        for input in [
            "http://h/%",
            "http://h/a%",
            "http://h/a%2",
            "http://h/a%zz",
            "http://h/a%g0",
            "http://h/%%30%30",
            "http://h/a%2/b",
        ] {
            assert!(matches!(err(input), UrlError::Invalid(_)), "{input}");
        }
        // The query is forwarded raw, so a stray `%` there is not our business.
        assert_eq!(u("http://h/?a=%zz").query.as_deref(), Some("a=%zz"));
    }

    #[test]
    fn encoded_slash_flag() {
        for (input, path) in [
            ("http://h/a%2fb", "/a%2Fb"),
            ("http://h/a%2Fb", "/a%2Fb"),
            ("http://h/a%5cb", "/a%5Cb"),
            ("http://h/a%5Cb", "/a%5Cb"),
            ("http://h/v1/..%2f..%2fadmin", "/v1/..%2F..%2Fadmin"),
            ("http://h/%2e%2e%2fadmin", "/..%2Fadmin"),
            ("http://h/%2F", "/%2F"),
        ] {
            let x = u(input);
            assert_eq!(x.path, path, "{input}");
            assert!(x.hazards.encoded_slash, "{input}");
        }
        for input in [
            "http://h/a/b",
            "http://h/a%2b",
            "http://h/a%252fb",
            "http://h/?x=%2F",
            "http://h/a#%2F",
        ] {
            assert!(!u(input).hazards.encoded_slash, "{input}");
        }
    }

    /// Each hazard, on the path as it is sent: what the upstream receives is `path`, and the
    /// flags say what a server could read into it.
    #[test]
    fn path_hazards_are_flagged_on_the_path_that_is_sent() {
        const NONE: PathHazards = PathHazards {
            encoded_slash: false,
            path_parameter: false,
            encoded_percent: false,
            trailing_dot: false,
        };
        let param = PathHazards {
            path_parameter: true,
            ..NONE
        };
        let percent = PathHazards {
            encoded_percent: true,
            ..NONE
        };
        let dot = PathHazards {
            trailing_dot: true,
            ..NONE
        };
        let slash = PathHazards {
            encoded_slash: true,
            ..NONE
        };
        for (input, path, hazards) in [
            // `;` is not percent-encoded by WHATWG, nor `..;` taken for a dot segment.
            ("http://h/admin;/x", "/admin;/x", param),
            ("http://h/x/..;/admin/x", "/x/..;/admin/x", param),
            ("http://h/x/.;/admin", "/x/.;/admin", param),
            ("http://h/x/%2e%2e;/admin", "/x/..;/admin", param),
            ("http://h/a;jsessionid=1", "/a;jsessionid=1", param),
            ("http://h/admin%3b/x", "/admin%3B/x", param),
            ("http://h/admin%3B/x", "/admin%3B/x", param),
            // Decoded once only, so `%25` reaches the upstream as it was written.
            ("http://h/admin%252fx", "/admin%252fx", percent),
            ("http://h/%252e%252e/admin", "/%252e%252e/admin", percent),
            ("http://h/a%25", "/a%25", percent),
            ("http://h/a%253Bb", "/a%253Bb", percent),
            // `%2e` is unreserved, so it is decoded; only `.` and `..` segments go away.
            ("http://h/admin./x", "/admin./x", dot),
            ("http://h/admin../x", "/admin../x", dot),
            ("http://h/admin%2e/x", "/admin./x", dot),
            ("http://h/admin%2E%2e/x", "/admin../x", dot),
            ("http://h/x.", "/x.", dot),
            ("http://h/x/y%2E", "/x/y.", dot),
            ("http://h/...", "/...", dot),
            ("http://h/admin%2Fx", "/admin%2Fx", slash),
            ("http://h/admin%5cx", "/admin%5Cx", slash),
            (
                "http://h/a;b/c%25/d./e%2F",
                "/a;b/c%25/d./e%2F",
                PathHazards {
                    encoded_slash: true,
                    path_parameter: true,
                    encoded_percent: true,
                    trailing_dot: true,
                },
            ),
            ("http://h/x/./y", "/x/y", NONE),
            ("http://h/x/.", "/x/", NONE),
            ("http://h/x/..", "/", NONE),
            ("http://h/x/%2e%2e/y", "/y", NONE),
            ("http://h/.well-known/x", "/.well-known/x", NONE),
            ("http://h/v1.2/a.json", "/v1.2/a.json", NONE),
            ("http://h/..a", "/..a", NONE),
            ("http://h/x?a=1;b=%25.", "/x", NONE),
            ("http://h/x#a;b.", "/x", NONE),
        ] {
            let url = u(input);
            assert_eq!(url.path, path, "{input}");
            assert_eq!(url.origin_form().split('?').next(), Some(path), "{input}");
            assert_eq!(url.hazards, hazards, "{input}");
        }
    }

    #[test]
    fn hazards_refused_are_those_not_allowed() {
        let all = PathHazards {
            encoded_slash: true,
            path_parameter: true,
            encoded_percent: true,
            trailing_dot: true,
        };
        assert_eq!(all.refused_by(all), PathHazards::default());
        assert_eq!(all.refused_by(PathHazards::default()), all);
        let refused = all.refused_by(PathHazards {
            path_parameter: true,
            ..PathHazards::default()
        });
        assert!(refused.encoded_slash && !refused.path_parameter);
        assert!(refused.encoded_percent && refused.trailing_dot);
        assert_eq!(
            PathHazards::default().refused_by(PathHazards::default()),
            PathHazards::default()
        );
    }

    #[test]
    fn fragment_is_dropped_everywhere() {
        let x = u("http://h/a?b=1#secret-fragment");
        assert_eq!(x.path, "/a");
        assert_eq!(x.query.as_deref(), Some("b=1"));
        assert!(!x.origin_form().contains('#'));
        assert!(!x.redacted().contains('#'));
        assert!(!format!("{x:?}").contains("secret-fragment"));
        assert_eq!(u("http://h/a#").origin_form(), "/a");
    }

    // ----- query -------------------------------------------------------------------------

    #[test]
    fn query_is_kept_raw_and_keys_are_decoded() {
        let x = u("http://h/p?b=2&a=1&a=3&c%20d=x&e+f&&=v&g=");
        assert_eq!(x.query.as_deref(), Some("b=2&a=1&a=3&c%20d=x&e+f&&=v&g="));
        assert_eq!(x.query_keys(), vec!["b", "a", "a", "c d", "e f", "", "g"]);
        let x = u("http://h/p?");
        assert_eq!(x.query.as_deref(), Some(""));
        assert_eq!(x.origin_form(), "/p?");
        assert!(x.query_keys().is_empty());
        let x = u("http://h/p");
        assert_eq!(x.query, None);
        assert!(x.query_keys().is_empty());
        assert_eq!(u("http://h/p?%E2%82%AC=1").query_keys(), vec!["€"]);
        assert_eq!(
            u("http://h/p?q=a b".replace(' ', "%20").as_str()).query_keys(),
            vec!["q"]
        );
        // A `?` inside the query is data, not a second query.
        assert_eq!(u("http://h/p?a=1?b=2").query.as_deref(), Some("a=1?b=2"));
    }

    // ----- secrets never leak ------------------------------------------------------------

    const SECRET_USER: &str = "alice-SECRETUSER";
    const SECRET_PASS: &str = "hunter2-SECRETPASS";
    const SECRET_QUERY: &str = "SECRETQUERYTOKEN";

    fn assert_no_secret(s: &str) {
        for secret in [
            SECRET_USER,
            SECRET_PASS,
            SECRET_QUERY,
            "secretuser",
            "secretpass",
        ] {
            assert!(
                !s.to_ascii_lowercase()
                    .contains(&secret.to_ascii_lowercase()),
                "{s:?} leaks {secret}"
            );
        }
    }

    #[test]
    fn redacted_and_debug_never_contain_userinfo_or_query() {
        let input = format!(
            "https://{SECRET_USER}:{SECRET_PASS}@api.example.com:8443/v1/x?token={SECRET_QUERY}#{SECRET_QUERY}"
        );
        let x = u(&input);
        assert!(x.had_userinfo);
        assert_eq!(x.redacted(), "https://api.example.com:8443/v1/x");
        assert_no_secret(&x.redacted());
        assert_no_secret(&x.authority());
        assert_no_secret(&x.host_str());
        assert_no_secret(&format!("{x:?}"));
        assert!(format!("{x:?}").contains("redacted"));
        // The query is still there for forwarding, only never printed.
        assert!(x.origin_form().contains(SECRET_QUERY));
    }

    #[test]
    fn error_messages_never_contain_userinfo_or_query() {
        let ui = format!("{SECRET_USER}:{SECRET_PASS}@");
        let q = format!("?token={SECRET_QUERY}");
        let inputs = [
            format!("ftp://{ui}h/{q}"),
            format!("https://{ui}/{q}"),
            format!("https://{ui}bad host/{q}"),
            format!("https://{ui}[::1/{q}"),
            format!("https://{ui}h:99999/{q}"),
            format!("https://{ui}h:0/{q}"),
            format!("https://{ui}h/%zz{q}"),
            format!("https://{ui}a..b/{q}"),
            format!("https://{ui}a*b/{q}"),
            format!("https://{ui}256.0.0.1/{q}"),
            format!("https://{ui}xn--/{q}"),
            format!("https://{ui}h/\n{q}"),
            format!("https://{ui}h/{q}{}", "a".repeat(MAX_URL_LEN)),
            // Without `://` the userinfo would otherwise be read as a scheme.
            format!("{SECRET_USER}:{SECRET_PASS}@api.example.com/{q}"),
            format!("{SECRET_USER}:x@api.example.com"),
            format!("https:{ui}api.example.com/{q}"),
        ];
        for input in &inputs {
            let e = NormalizedUrl::parse(input).unwrap_err();
            assert_no_secret(&e.to_string());
            assert_no_secret(&format!("{e:?}"));
        }
        for input in &inputs {
            if let Err(e) = UrlPrefix::parse(input) {
                assert_no_secret(&e.to_string());
            }
        }
        let e = UrlPrefix::parse(&format!("https://{ui}api.example.com/v1")).unwrap_err();
        assert_eq!(e, UrlError::NotAllowedInPrefix("userinfo (`user:pass@`)"));
        assert_no_secret(&e.to_string());
        let e = NormalizedUrl::from_parts("https", &format!("{ui}h:443"), &format!("/{q}"))
            .unwrap_err();
        assert_no_secret(&e.to_string());
    }

    #[test]
    fn unsupported_scheme_echo_is_bounded() {
        let scheme = "x".repeat(100);
        let UrlError::UnsupportedScheme(s) = err(&format!("{scheme}://h/")) else {
            panic!("expected UnsupportedScheme");
        };
        assert_eq!(s.len(), MAX_SCHEME_ECHO);
    }

    // ----- from_parts --------------------------------------------------------------------

    #[test]
    fn from_parts_connect_authorities() {
        let x = NormalizedUrl::from_parts("https", "api.github.com:443", "").unwrap();
        assert_eq!(
            (x.host.clone(), x.port, x.path.as_str()),
            (dom("api.github.com"), 443, "/")
        );
        assert_eq!(x, u("https://api.github.com/"));

        let x = NormalizedUrl::from_parts("https", "api.github.com", "").unwrap();
        assert_eq!(x.port, 443);
        let x = NormalizedUrl::from_parts("http", "api.github.com", "").unwrap();
        assert_eq!(x.port, 80);
        let x = NormalizedUrl::from_parts("HTTPS", "API.GitHub.com.:8443", "/").unwrap();
        assert_eq!(
            (x.scheme.as_str(), x.host.clone(), x.port),
            ("https", dom("api.github.com"), 8443)
        );

        let x = NormalizedUrl::from_parts("https", "[2001:db8::1]:443", "/x?y").unwrap();
        assert_eq!(x.host, v6("2001:db8::1"));
        assert_eq!(x.port, 443);
        assert_eq!(x.path, "/x");
        assert_eq!(x.query.as_deref(), Some("y"));
        let x = NormalizedUrl::from_parts("https", "[2001:db8::1]", "").unwrap();
        assert_eq!((x.host.clone(), x.port), (v6("2001:db8::1"), 443));

        let x = NormalizedUrl::from_parts("http", "10.0.0.1:8080", "/a/../b?c=d").unwrap();
        assert_eq!(x.host, v4(10, 0, 0, 1));
        assert_eq!(x.origin_form(), "/b?c=d");
        let x = NormalizedUrl::from_parts("http", "2130706433", "").unwrap();
        assert_eq!(x.host, v4(127, 0, 0, 1));

        let x = NormalizedUrl::from_parts("https", "h:443", "//x").unwrap();
        assert_eq!((x.host.clone(), x.path.as_str()), (dom("h"), "//x"));
    }

    #[test]
    fn from_parts_refuses_garbage() {
        let cases: &[(&str, &str, &str)] = &[
            ("https", "", "/"),
            ("https", ":443", "/"),
            ("https", "a b:443", ""),
            ("https", "u:p@h:443", ""),
            ("https", "@h", ""),
            ("https", "h:99999", ""),
            ("https", "h:0", ""),
            ("https", "h:abc", ""),
            ("https", "h/x:443", ""),
            ("https", "evil.com/api.github.com", ""),
            ("https", "evil.com#", ""),
            ("https", "evil.com?", ""),
            ("https", "evil.com\\", ""),
            ("https", "h", "x"),
            ("https", "h", "*"),
            ("https", "h", "?x"),
            ("https", "h", " /"),
            ("ftp", "h", ""),
            ("", "h", ""),
            ("ht tp", "h", ""),
            ("http://evil.com#", "h", ""),
            ("https", "2001:db8::1:443", ""),
            ("https", "[2001:db8::1", ""),
            ("https", "h\r\n", ""),
            ("https", "..", ""),
        ];
        for (scheme, authority, pq) in cases {
            assert!(
                NormalizedUrl::from_parts(scheme, authority, pq).is_err(),
                "{scheme:?} {authority:?} {pq:?}"
            );
        }
        assert_eq!(
            NormalizedUrl::from_parts("https", "", "/").unwrap_err(),
            UrlError::MissingHost
        );
        assert_eq!(
            NormalizedUrl::from_parts("ftp", "h", "").unwrap_err(),
            UrlError::UnsupportedScheme("ftp".into())
        );
        assert_eq!(
            NormalizedUrl::from_parts("https", "h", &"a".repeat(MAX_URL_LEN)).unwrap_err(),
            UrlError::TooLong
        );
    }

    #[test]
    fn from_parts_round_trips_origin_form() {
        for input in [
            "https://api.github.com/repos/x?y=1",
            "http://[::1]:8080/a%2Fb?",
            "https://h:8443//x//y/",
            "http://127.0.0.1/%7Ex",
        ] {
            let x = u(input);
            let y = NormalizedUrl::from_parts(&x.scheme, &x.authority(), &x.origin_form()).unwrap();
            assert_eq!(x, y, "{input}");
        }
    }

    // ----- UrlHost -----------------------------------------------------------------------

    #[test]
    fn url_host_parse() {
        assert_eq!(
            UrlHost::parse("API.Example.com.").unwrap(),
            dom("api.example.com")
        );
        assert_eq!(
            UrlHost::parse("bücher.example").unwrap(),
            dom("xn--bcher-kva.example")
        );
        assert_eq!(UrlHost::parse("127.1").unwrap(), v4(127, 0, 0, 1));
        assert_eq!(UrlHost::parse("[::1]").unwrap(), v6("::1"));
        assert_eq!(UrlHost::parse("[::1]").unwrap().host_str(), "::1");
        for bad in ["", "a:b", "::1", "a@b", "a b", "a/b", "..", "a..b", "[::1"] {
            assert!(UrlHost::parse(bad).is_err(), "{bad}");
        }
        assert!(v4(1, 2, 3, 4).is_ip());
        assert!(!dom("a").is_ip());
        assert_eq!(v4(1, 2, 3, 4).to_string(), "1.2.3.4");
        assert_eq!(dom("a.b").to_string(), "a.b");
    }

    // ----- UrlPrefix ---------------------------------------------------------------------

    #[test]
    fn prefix_path_boundary() {
        let p = prefix("https://api.openai.com/v1");
        assert_eq!(p.path, "/v1");
        for ok in [
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
            "https://api.openai.com/v1/chat/completions",
            "https://api.openai.com/v1?q=1",
            "https://api.openai.com/v1/?q=1",
            "https://api.openai.com/v1//x",
            "https://api.openai.com/v1#f",
            "https://api.openai.com/x/../v1/y",
            "https://api.openai.com/%761/y",
            "https://API.OPENAI.COM./v1/y",
            "https://api.openai.com:443/v1",
        ] {
            assert!(p.matches(&u(ok)), "{ok}");
        }
        for no in [
            "https://api.openai.com/v10",
            "https://api.openai.com/v1x",
            "https://api.openai.com/v1.json",
            "https://api.openai.com/v",
            "https://api.openai.com/",
            "https://api.openai.com",
            "https://api.openai.com/V1",
            "https://api.openai.com//v1",
            "https://api.openai.com/x/v1",
            "https://api.openai.com/v1/../admin",
            "https://api.openai.com/v1/%2e%2e/admin",
            "https://api.openai.com/v1\\..\\admin",
            "https://api.openai.com/v1%2F..%2Fadmin",
            "https://api.openai.com/%2Fv1",
        ] {
            assert!(!p.matches(&u(no)), "{no}");
        }
    }

    #[test]
    fn prefix_trailing_slash_is_insignificant() {
        let p = prefix("https://h/v1/");
        assert_eq!(p.path, "/v1");
        assert_eq!(p, prefix("https://h/v1"));
        assert!(p.matches(&u("https://h/v1")));
        assert!(p.matches(&u("https://h/v1/")));
        assert!(p.matches(&u("https://h/v1/x")));
        assert!(!p.matches(&u("https://h/v10")));
        assert_eq!(p.to_string(), "https://h/v1");
    }

    #[test]
    fn prefix_root_matches_the_whole_origin_only() {
        for s in ["https://h", "https://h/", "https://h:443/", "HTTPS://H./"] {
            let p = prefix(s);
            assert_eq!(p.path, "/", "{s}");
            assert_eq!(p.to_string(), "https://h/");
            for ok in [
                "https://h/",
                "https://h/anything/at/all?x",
                "https://h//x",
                "https://h",
            ] {
                assert!(p.matches(&u(ok)), "{s} {ok}");
            }
            for no in [
                "http://h/",
                "https://h:8443/",
                "https://hh/",
                "https://x.h/",
                "https://h.evil.com/",
                "https://h@evil.com/",
            ] {
                assert!(!p.matches(&u(no)), "{s} {no}");
            }
        }
        // A hand-built prefix with an empty path also means the whole origin.
        let p = UrlPrefix {
            path: String::new(),
            ..prefix("https://h")
        };
        assert!(p.matches(&u("https://h/x")));
    }

    #[test]
    fn prefix_scheme_is_never_downgraded_or_upgraded() {
        let p = prefix("https://api.example.com/");
        assert!(!p.matches(&u("http://api.example.com/")));
        assert!(!p.matches(&u("http://api.example.com:443/")));
        let p = prefix("http://api.example.com/");
        assert!(!p.matches(&u("https://api.example.com/")));
        assert!(!p.matches(&u("https://api.example.com:80/")));
    }

    #[test]
    fn prefix_port_equality_after_defaults() {
        let p = prefix("https://h:443/x");
        assert_eq!(p, prefix("https://h/x"));
        assert!(p.matches(&u("https://h/x")));
        assert!(p.matches(&u("https://h:443/x")));
        assert!(!p.matches(&u("https://h:8443/x")));
        let p = prefix("https://h:8443/x");
        assert!(p.matches(&u("https://h:8443/x")));
        assert!(!p.matches(&u("https://h/x")));
        assert_eq!(p.to_string(), "https://h:8443/x");
    }

    #[test]
    fn prefix_host_tricks() {
        let p = prefix("https://api.example.com/v1");
        for no in [
            "https://evil.api.example.com/v1",
            "https://api.example.com.evil.com/v1",
            "https://api.example.com@evil.com/v1",
            "https://user:pass@evil.com/v1",
            "https://evil.com/api.example.com/v1",
            "https://evil.com#@api.example.com/v1",
            "https://evil.com\\@api.example.com/v1",
            "https://example.com/v1",
            "https://api-example.com/v1",
        ] {
            assert!(!p.matches(&u(no)), "{no}");
        }
        // Userinfo is ignored for matching: the host decides.
        assert!(p.matches(&u("https://user:pass@api.example.com/v1")));
    }

    #[test]
    fn prefix_ip_hosts() {
        let p = prefix("http://127.0.0.1:8080/api");
        assert!(p.matches(&u("http://2130706433:8080/api/x")));
        assert!(p.matches(&u("http://127.1:8080/api")));
        // Same socket destination, so the same host for matching.
        assert!(p.matches(&u("http://[::ffff:127.0.0.1]:8080/api")));
        assert!(
            !p.matches(&u("http://[::127.0.0.1]:8080/api")),
            "IPv4-compatible is not mapped"
        );
        assert!(!p.matches(&u("http://[64:ff9b::127.0.0.1]:8080/api")));
        let p = prefix("https://[2001:db8::1]:8443/api/");
        assert_eq!(p.to_string(), "https://[2001:db8::1]:8443/api");
        assert!(p.matches(&u("https://[2001:DB8:0::1]:8443/api/v2")));
        assert_eq!(prefix(&p.to_string()), p);
    }

    #[test]
    fn prefix_refusals() {
        for (s, expect_prefix_error) in [
            ("https://*.example.com/", true),
            ("https://api.example.com/v1/*", true),
            ("https://api.example.com/v1?x=1", true),
            ("https://api.example.com/v1?", true),
            ("https://api.example.com/v1#f", true),
            ("https://u:p@api.example.com/", true),
            ("https://u@api.example.com/", true),
            ("https://@api.example.com/", true),
            ("https://api.example.com//", true),
            ("https://api.example.com//v1", true),
            ("https://api.example.com/v1//", true),
            ("https://api.example.com/v1//x", true),
            ("ftp://api.example.com/", false),
            ("api.example.com/v1", false),
            ("", false),
            ("https://", false),
            ("https://api.example.com:0/", false),
        ] {
            let e = UrlPrefix::parse(s).unwrap_err();
            assert_eq!(
                matches!(e, UrlError::NotAllowedInPrefix(_)),
                expect_prefix_error,
                "{s}: {e:?}"
            );
        }
    }

    #[test]
    fn prefix_normalises_like_urls_and_displays_canonically() {
        let p = prefix("HTTPS://API.OpenAI.com.:443/v1/");
        assert_eq!(p.scheme, "https");
        assert_eq!(p.host, dom("api.openai.com"));
        assert_eq!(p.port, 443);
        assert_eq!(p.to_string(), "https://api.openai.com/v1");
        assert_eq!(prefix("https://h/%761/a/../b").path, "/v1/b");
        assert_eq!(
            prefix("https://bücher.example/x").to_string(),
            "https://xn--bcher-kva.example/x"
        );
        for s in [
            "https://api.openai.com/v1",
            "http://h:8080/",
            "https://[::1]/x",
            "https://h/a%2Fb",
        ] {
            assert_eq!(prefix(&prefix(s).to_string()), prefix(s), "{s}");
        }
    }

    #[test]
    fn prefix_matches_authority_for_connect() {
        let p = prefix("https://api.openai.com/v1");
        assert!(p.matches_authority("https", &dom("api.openai.com"), 443));
        assert!(p.matches_authority("HTTPS", &dom("api.openai.com"), 443));
        assert!(p.matches_authority("https", &dom("API.OpenAI.com."), 443));
        assert!(!p.matches_authority("http", &dom("api.openai.com"), 443));
        assert!(!p.matches_authority("https", &dom("api.openai.com"), 8443));
        assert!(!p.matches_authority("https", &dom("evil.api.openai.com"), 443));
        assert!(!p.matches_authority("https", &dom("api.openai.com.evil.com"), 443));
        assert!(!p.matches_authority("https", &dom("api..openai.com"), 443));
        let c = NormalizedUrl::from_parts("https", "api.openai.com:443", "").unwrap();
        assert!(p.matches_authority(&c.scheme, &c.host, c.port));
        // The root of the origin does not lie under /v1: CONNECT only opens the tunnel.
        assert!(!p.matches(&c));
        let p = prefix("http://127.0.0.1/");
        assert!(p.matches_authority("http", &v4(127, 0, 0, 1), 80));
        assert!(p.matches_authority("http", &dom("127.0.0.1"), 80));
        assert!(p.matches_authority("http", &v6("::ffff:127.0.0.1"), 80));
        assert!(!p.matches_authority("http", &v6("::1"), 80));
    }

    // ----- HostPattern -------------------------------------------------------------------

    #[test]
    fn host_pattern_parse_errors() {
        use HostPatternError as E;
        for (s, e) in [
            ("", E::Empty),
            ("*", E::MatchesEverything),
            ("**", E::MatchesEverything),
            ("*.com", E::WildcardTld),
            ("**.com", E::WildcardTld),
            ("*.", E::WildcardTld),
            ("**.", E::WildcardTld),
            ("*.com.", E::WildcardTld),
            ("a.*.com", E::WildcardPosition),
            ("*a.example.com", E::WildcardPosition),
            ("a*.example.com", E::WildcardPosition),
            ("api.*", E::WildcardPosition),
            ("***.example.com", E::WildcardPosition),
            ("*.*.example.com", E::WildcardPosition),
            ("**.*.example.com", E::WildcardPosition),
            ("*example.com", E::WildcardPosition),
            ("*.1.2.3", E::WildcardIp),
            ("**.0x7f.1", E::WildcardIp),
            ("https://api.example.com", E::NotAHost("scheme and path")),
            ("api.example.com/v1", E::NotAHost("scheme and path")),
            ("user@api.example.com", E::NotAHost("userinfo")),
            ("api.example.com:443", E::NotAHost("`:port` (or scheme)")),
        ] {
            assert_eq!(HostPattern::parse(s).unwrap_err(), e, "{s:?}");
        }
        for s in [
            "a..example.com",
            ".example.com",
            "*..example.com",
            "*.example..com",
            "..",
            ".",
            "a b.com",
            "a\tb.com",
            "a!b.com",
            "exa_mple$.com",
            "256.0.0.1",
            "[::1",
            "[fe80::1%25eth0]",
            "*.xn--",
        ] {
            assert!(
                matches!(HostPattern::parse(s), Err(E::InvalidHost(_))),
                "{s:?}: {:?}",
                HostPattern::parse(s)
            );
        }
        assert_eq!(
            HostPattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)).unwrap_err(),
            E::TooLong
        );
        // Every message says what to do.
        for e in [
            E::Empty,
            E::MatchesEverything,
            E::WildcardPosition,
            E::WildcardTld,
            E::WildcardIp,
        ] {
            assert!(e.to_string().len() > 30, "{e}");
        }
    }

    #[test]
    fn host_pattern_normalises() {
        assert_eq!(hp("API.Example.COM."), hp("api.example.com"));
        assert_eq!(hp("*.Example.COM."), hp("*.example.com"));
        assert_eq!(hp("bücher.example").to_string(), "xn--bcher-kva.example");
        assert_eq!(
            hp("*.bücher.example").to_string(),
            "*.xn--bcher-kva.example"
        );
        assert_eq!(hp("**.EXAMPLE.com").to_string(), "**.example.com");
        assert_eq!(hp("127.1").to_string(), "127.0.0.1");
        assert_eq!(hp("[2001:db8::1]").to_string(), "[2001:db8::1]");
        assert_eq!(hp("2001:db8::1"), hp("[2001:db8::1]"));
        assert_eq!(hp("localhost").to_string(), "localhost");
        assert!(hp("*.co.uk").is_wildcard());
        assert!(hp("**.example.com").is_wildcard());
        assert!(!hp("example.com").is_wildcard());
        assert!(!hp("10.0.0.1").is_wildcard());
        for s in [
            "a.example.com",
            "*.example.com",
            "**.example.com",
            "[::1]",
            "10.0.0.1",
        ] {
            assert_eq!(hp(&hp(s).to_string()), hp(s), "{s}");
        }
    }

    #[test]
    fn host_pattern_exact() {
        let p = hp("api.example.com");
        assert!(p.matches(&dom("api.example.com")));
        assert!(p.matches(&u("https://API.example.com./").host));
        assert!(
            p.matches(&dom("API.EXAMPLE.COM.")),
            "hand-built hosts are normalised"
        );
        assert!(!p.matches(&dom("evil.api.example.com")));
        assert!(!p.matches(&dom("api.example.com.evil.com")));
        assert!(!p.matches(&dom("example.com")));
        assert!(!p.matches(&u("https://api.example.com@evil.com/").host));
        assert!(!p.matches(&dom("")));
        assert!(!p.matches(&dom("api..example.com")));

        let p = hp("10.0.0.1");
        assert!(p.matches(&v4(10, 0, 0, 1)));
        assert!(p.matches(&u("http://0xa.1/").host));
        assert!(
            p.matches(&dom("10.0.0.1")),
            "a hand-built Domain holding an IP"
        );
        assert!(p.matches(&dom("167772161")));
        assert!(
            p.matches(&v6("::ffff:10.0.0.1")),
            "a deny rule must catch the mapped form"
        );
        assert!(p.matches(&u("http://[::ffff:a00:1]/").host));
        assert!(!p.matches(&v6("::10.0.0.1")));
        assert!(!p.matches(&v4(10, 0, 0, 2)));
        assert!(!p.matches(&dom("10.0.0.1.nip.io")));

        let p = hp("[::ffff:10.0.0.1]");
        assert!(p.matches(&v4(10, 0, 0, 1)));
        assert!(p.matches(&v6("::ffff:10.0.0.1")));
        assert_eq!(p.to_string(), "[::ffff:10.0.0.1]");

        let p = hp("[::1]");
        assert!(p.matches(&v6("::1")));
        assert!(!p.matches(&v4(127, 0, 0, 1)));
    }

    #[test]
    fn host_pattern_one_label_wildcard() {
        let p = hp("*.example.com");
        assert!(p.matches(&dom("a.example.com")));
        assert!(p.matches(&dom("api.example.com")));
        assert!(p.matches(&dom("A.Example.Com.")));
        assert!(p.matches(&u("http://bücher.example.com/").host));
        assert!(!p.matches(&dom("example.com")));
        assert!(!p.matches(&dom("a.b.example.com")));
        assert!(!p.matches(&dom("aexample.com")));
        assert!(!p.matches(&dom("a.example.com.evil.com")));
        assert!(!p.matches(&dom("a.example.co")));
        assert!(!p.matches(&dom(".example.com")));
        assert!(!p.matches(&dom("a.notexample.com")));
    }

    #[test]
    fn host_pattern_any_depth_wildcard() {
        let p = hp("**.example.com");
        assert!(p.matches(&dom("a.example.com")));
        assert!(p.matches(&dom("a.b.example.com")));
        assert!(p.matches(&dom("a.b.c.d.example.com")));
        assert!(!p.matches(&dom("example.com")));
        assert!(!p.matches(&dom("aexample.com")));
        assert!(!p.matches(&dom("a.bexample.com")));
        assert!(!p.matches(&dom("example.com.evil.com")));
        assert!(!p.matches(&dom("a.example.com.evil.com")));
    }

    #[test]
    fn no_wildcard_ever_matches_an_ip() {
        for pat in [
            "*.example.com",
            "**.example.com",
            "*.co.uk",
            "**.in-addr.arpa",
            "*.nip.io",
        ] {
            let p = hp(pat);
            for host in [
                v4(127, 0, 0, 1),
                v4(10, 0, 0, 1),
                v6("::1"),
                v6("::ffff:10.0.0.1"),
                dom("127.0.0.1"),
                dom("2130706433"),
            ] {
                assert!(!p.matches(&host), "{pat} {host}");
            }
        }
    }

    // ----- PathPattern -------------------------------------------------------------------

    #[test]
    fn path_pattern_exact() {
        let p = pp("/exact");
        for ok in ["/exact", "/exact/", "//exact", "/exact//"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in [
            "/exact/x", "/exactly", "/", "/x/exact", "/Exact", "exact", "", "/exac",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(!p.is_wildcard());
        assert_eq!(
            pp("/exact/"),
            p,
            "a trailing slash is insignificant in patterns too"
        );
    }

    #[test]
    fn path_pattern_root() {
        let p = pp("/");
        assert!(p.matches("/"));
        assert!(p.matches("//"));
        assert!(!p.matches("/a"));
        assert_eq!(p.to_string(), "/");
    }

    #[test]
    fn path_pattern_double_star() {
        let p = pp("/repos/**");
        for ok in ["/repos", "/repos/", "/repos/a", "/repos/a/b/c", "/repos//a"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/repo", "/reposx", "/other/repos/a", "/", "/x/repos"] {
            assert!(!p.matches(no), "{no}");
        }
        let p = pp("/**");
        for ok in ["/", "/a", "/a/b/c", "//"] {
            assert!(p.matches(ok), "{ok}");
        }
        let p = pp("/**/admin");
        for ok in ["/admin", "/x/admin", "/x/y/admin", "//admin"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/x/admin/y", "/xadmin", "/"] {
            assert!(!p.matches(no), "{no}");
        }
        let p = pp("/a/**/b/**/c");
        for ok in ["/a/b/c", "/a/x/b/y/c", "/a/b/b/c", "/a/x/y/b/c"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/a/c", "/a/b/c/d", "/b/c", "/a/x/c"] {
            assert!(!p.matches(no), "{no}");
        }
        assert_eq!(pp("/a/**/**/b"), pp("/a/**/b"));
        assert!(pp("/a/**").is_wildcard());
    }

    #[test]
    fn path_pattern_single_star() {
        let p = pp("/v1/*/items");
        assert!(p.matches("/v1/a/items"));
        assert!(p.matches("/v1/a/items/"));
        assert!(
            p.matches("/v1/%2F/items"),
            "matches the normalised text; encoded_slash guards this"
        );
        for no in [
            "/v1/items",
            "/v1/a/b/items",
            "/v1//items",
            "/v1/a/items/x",
            "/v2/a/items",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        let p = pp("/*");
        assert!(p.matches("/a"));
        assert!(!p.matches("/"));
        assert!(!p.matches("/a/b"));
    }

    #[test]
    fn path_pattern_star_within_a_segment() {
        let p = pp("/v1/*.json");
        for ok in ["/v1/a.json", "/v1/.json", "/v1/a.b.json"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in [
            "/v1/a.json/x",
            "/v1/a/b.json",
            "/v1/a.jsonx",
            "/v1/json",
            "/v1/a.JSON",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        let p = pp("/f/a*b*c");
        for ok in ["/f/abc", "/f/aXbYc", "/f/abbc", "/f/abcbc", "/f/aaabbbccc"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/f/acb", "/f/ab", "/f/bc", "/f/ac", "/f/xabc"] {
            assert!(!p.matches(no), "{no}");
        }
        let p = pp("/f/ab*ba");
        assert!(p.matches("/f/abba"));
        assert!(p.matches("/f/abXba"));
        assert!(!p.matches("/f/aba"), "prefix and suffix must not overlap");
        assert_eq!(pp("/f/*x*").to_string(), "/f/*x*");
    }

    #[test]
    fn path_pattern_literals_are_normalised_like_urls() {
        assert_eq!(pp("/%61dmin"), pp("/admin"));
        assert!(pp("/%61dmin").matches(&u("http://h/admin").path));
        assert!(pp("/admin").matches(&u("http://h/%61%64min").path));
        assert!(pp("/b%c3%bccher").matches(&u("http://h/bücher").path));
        assert!(pp("/bücher").matches(&u("http://h/b%c3%bccher").path));
        assert!(pp("/a%2fb").matches(&u("http://h/a%2Fb").path));
        assert!(!pp("/a/b").matches(&u("http://h/a%2Fb").path));
        assert!(pp("/{id}").matches(&u("http://h/{id}").path));
        assert!(pp("/x/*%2Ejson").matches("/x/a.json"));
        assert!(pp("/%2A").matches(&u("http://h/%2a").path));
        assert!(!pp("/%2A").matches("/*x"));
    }

    #[test]
    fn path_pattern_case_is_exact_unless_asked_to_ignore_it() {
        let admin = pp("/admin/**");
        assert!(admin.matches("/admin/x"));
        assert!(!admin.matches("/ADMIN/x"));
        for path in ["/admin/x", "/ADMIN/x", "/Admin", "/aDmIn/X/y", "/ADMIN/"] {
            assert!(admin.matches_ignoring_ascii_case(path), "{path}");
        }
        for path in ["/administrator", "/x/ADMIN", "/adm%49n", "ADMIN/x"] {
            assert!(!admin.matches_ignoring_ascii_case(path), "{path}");
        }
        let glob = pp("/Reports/*.PDF");
        assert!(glob.matches("/Reports/a.PDF"));
        assert!(!glob.matches("/reports/a.pdf"));
        assert!(glob.matches_ignoring_ascii_case("/reports/A.pdf"));
        assert!(glob.matches_ignoring_ascii_case("/REPORTS/.Pdf"));
        assert!(!glob.matches_ignoring_ascii_case("/reports/a/b.pdf"));
        // Escapes compare by what they encode: hex case is normalised on both sides already.
        let escaped = pp("/a%2fb");
        assert!(escaped.matches_ignoring_ascii_case("/A%2FB"));
        // Only ASCII letters fold: `%C3%BC` (ü) is not `%C3%9C` (Ü).
        assert!(!pp("/%C3%BC").matches_ignoring_ascii_case("/%C3%9C"));
        assert!(pp("/").matches_ignoring_ascii_case("/"));
    }

    #[test]
    fn path_pattern_parse_errors() {
        use PathPatternError as E;
        for (s, e) in [
            ("", E::Empty),
            ("repos", E::NotAbsolute),
            ("*", E::NotAbsolute),
            ("**/x", E::NotAbsolute),
            ("/a**", E::DoubleStarInSegment),
            ("/**a", E::DoubleStarInSegment),
            ("/a/***", E::DoubleStarInSegment),
            ("/a/b**c", E::DoubleStarInSegment),
            ("/a/../b", E::DotSegment),
            ("/a/./b", E::DotSegment),
            ("/a/%2e%2e/b", E::DotSegment),
            ("/a/.%2E/b", E::DotSegment),
            ("/a/%2e", E::DotSegment),
            ("/..", E::DotSegment),
            ("/a%zz", E::InvalidEscape),
            ("/a%", E::InvalidEscape),
            ("/a%2*", E::InvalidEscape),
        ] {
            assert_eq!(PathPattern::parse(s).unwrap_err(), e, "{s:?}");
        }
        for s in ["/a?x", "/a#x", "/a\\b", "/a b", "/a\nb", "/a\0"] {
            assert!(
                matches!(PathPattern::parse(s), Err(E::InvalidChar(_))),
                "{s:?}"
            );
        }
        assert_eq!(
            PathPattern::parse(&format!("/{}", "a".repeat(MAX_PATTERN_LEN))).unwrap_err(),
            E::TooLong
        );
        let many = "/a".repeat(MAX_PATTERN_SEGMENTS + 1);
        assert_eq!(PathPattern::parse(&many).unwrap_err(), E::TooLong);
        assert!(PathPattern::parse(&"/a".repeat(MAX_PATTERN_SEGMENTS)).is_ok());
        assert!(PathPattern::parse("/...").is_ok());
        assert!(PathPattern::parse("/a..b").is_ok());
    }

    #[test]
    fn path_pattern_is_fast_on_hostile_input() {
        let p = pp(&"/**/a".repeat(60));
        let path = "/a".repeat(4000);
        assert!(p.matches(&path));
        let path = format!("{}/b", "/a".repeat(4000));
        assert!(!p.matches(&path));
        let p = pp(&format!("/{}", "*a".repeat(200)));
        assert!(!p.matches(&format!("/{}b", "a".repeat(4000))));
    }

    #[test]
    fn path_pattern_display() {
        for s in [
            "/",
            "/exact",
            "/repos/**",
            "/v1/*/items",
            "/v1/*.json",
            "/**/x/**",
        ] {
            assert_eq!(pp(s).to_string(), s);
            assert_eq!(pp(&pp(s).to_string()), pp(s));
        }
        assert_eq!(pp("//a//b/").to_string(), "/a/b");
        assert_eq!(pp("/%7euser").to_string(), "/~user");
    }

    // ----- property tests ----------------------------------------------------------------

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn s(v: &str) -> BoxedStrategy<String> {
            Just(v.to_owned()).boxed()
        }

        fn scheme() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => s("http"),
                4 => s("https"),
                1 => s("HTTP"),
                1 => s("HtTpS"),
                1 => s("ftp"),
                1 => s(""),
                1 => "[a-z][a-z0-9+.-]{0,5}".boxed(),
            ]
        }

        fn userinfo() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => s(""),
                1 => s("@"),
                1 => "[a-z]{1,5}@".boxed(),
                1 => "[a-z]{1,5}:[a-z0-9]{0,5}@".boxed(),
                1 => s("a@b@"),
                1 => s("api.example.com@"),
                1 => s("api.example.com:443@"),
                1 => s("x%40y@"),
            ]
        }

        fn label() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-zA-Z0-9-]{1,8}".boxed(),
                1 => s(""),
                1 => s("ü"),
                1 => s("BÜCHER"),
                1 => s("xn--bcher-kva"),
                1 => s("%2e"),
                1 => s("%41"),
                1 => s("%"),
                1 => s("0x7f"),
                1 => s("127"),
                1 => s("0177"),
                1 => s("4294967295"),
                1 => s("*"),
                1 => s("_x"),
                1 => s("ｅ"),
            ]
        }

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => (prop::collection::vec(label(), 1..5), any::<bool>())
                    .prop_map(|(labels, dot)| {
                        let mut h = labels.join(".");
                        if dot {
                            h.push('.');
                        }
                        h
                    }).boxed(),
                1 => s("[::1]"),
                1 => s("[::ffff:10.0.0.1]"),
                1 => s("[2001:DB8::1]"),
                1 => s("[fe80::1%25eth0]"),
                1 => s("[::1"),
                1 => s("api.example.com"),
            ]
        }

        fn port() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => s(""),
                3 => (0u32..70_000).prop_map(|p| format!(":{p}")).boxed(),
                1 => s(":"),
                1 => s(":443"),
                1 => s(":abc"),
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            let seg = prop_oneof![
                s(".."),
                s("."),
                s("%2e"),
                s("%2E%2e"),
                s(".%2E"),
                s("%2e."),
                s("a"),
                s("v1"),
                s("%2F"),
                s("%5c"),
                s("%61"),
                s("%7e"),
                s(""),
                s("ü"),
                s("%zz"),
                s("*"),
                s("@"),
                s("%252e"),
                "[a-zA-Z0-9._~%-]{1,6}".boxed(),
            ];
            let sep = prop_oneof![4 => s("/"), 1 => s("\\")];
            prop::collection::vec((sep, seg), 0..8)
                .prop_map(|parts| parts.into_iter().map(|(a, b)| a + &b).collect())
        }

        fn url_ish() -> impl Strategy<Value = String> {
            (
                scheme(),
                userinfo(),
                host(),
                port(),
                path(),
                proptest::option::of("[a-z=&%0-9+?/]{0,10}"),
                proptest::option::of("[a-z@?]{0,5}"),
            )
                .prop_map(|(sc, ui, h, p, pa, q, f)| {
                    let mut out = format!("{sc}://{ui}{h}{p}{pa}");
                    if let Some(q) = q {
                        out.push('?');
                        out.push_str(&q);
                    }
                    if let Some(f) = f {
                        out.push('#');
                        out.push_str(&f);
                    }
                    out
                })
        }

        fn check_invariants(url: &NormalizedUrl) -> Result<(), TestCaseError> {
            prop_assert!(url.scheme == "http" || url.scheme == "https");
            prop_assert!(url.port != 0);
            prop_assert!(url.path.starts_with('/'));
            prop_assert!(
                !url.path.split('/').any(|s| s == "." || s == ".."),
                "{}",
                url.path
            );
            prop_assert!(!url.path.contains('?') && !url.path.contains('#'));
            prop_assert!(!url.path.contains('\\'));
            prop_assert!(url.path.is_ascii() && !url.path.contains(' '));
            if let UrlHost::Domain(d) = &url.host {
                prop_assert!(validate_domain(d).is_ok(), "{d}");
                prop_assert!(!d.ends_with('.'));
            }

            let redacted = url.redacted();
            let after_scheme = redacted.split_once("://").map(|x| x.1).unwrap_or("");
            let authority = after_scheme.split('/').next().unwrap_or("");
            prop_assert!(!authority.contains('@'), "{redacted}");
            prop_assert!(!redacted.contains('?') && !redacted.contains('#'));
            prop_assert_eq!(authority, url.authority());

            let mut again = redacted.clone();
            if let Some(q) = &url.query {
                again.push('?');
                again.push_str(q);
            }
            let re = NormalizedUrl::parse(&again);
            prop_assert!(re.is_ok(), "{again:?} does not re-parse: {:?}", re);
            let re = re.unwrap();
            prop_assert_eq!(&re.scheme, &url.scheme);
            prop_assert_eq!(&re.host, &url.host);
            prop_assert_eq!(re.port, url.port);
            prop_assert_eq!(&re.path, &url.path);
            prop_assert_eq!(&re.query, &url.query);
            prop_assert_eq!(re.hazards, url.hazards);
            prop_assert!(!re.had_userinfo);

            let fp = NormalizedUrl::from_parts(&url.scheme, &url.authority(), &url.origin_form());
            prop_assert_eq!(fp, Ok(re));

            if let Ok(p) = UrlPrefix::parse(&redacted) {
                prop_assert!(p.matches(url), "{p} should match its own URL");
                prop_assert_eq!(UrlPrefix::parse(&p.to_string()), Ok(p.clone()));
            }
            if let Ok(p) = PathPattern::parse(&url.path) {
                prop_assert!(p.matches(&url.path), "{} should match itself", url.path);
            }
            if let UrlHost::Domain(d) = &url.host {
                let exact = HostPattern::parse(d);
                prop_assert!(exact.is_ok(), "{d}: {:?}", exact);
                prop_assert!(exact.unwrap().matches(&url.host));
                if let Ok(p) = HostPattern::parse(&format!("*.{d}")) {
                    prop_assert!(!p.matches(&url.host));
                }
                if let Ok(p) = HostPattern::parse(&format!("**.{d}")) {
                    prop_assert!(!p.matches(&url.host));
                }
            } else {
                prop_assert!(HostPattern::parse(&url.host.to_string())
                    .unwrap()
                    .matches(&url.host));
            }
            Ok(())
        }

        fn touch_everything(input: &str) {
            let _ = NormalizedUrl::parse(input);
            let _ = UrlPrefix::parse(input);
            let _ = UrlHost::parse(input);
            let _ = NormalizedUrl::from_parts("https", input, "");
            let _ = NormalizedUrl::from_parts("http", "h", input);
            let _ = NormalizedUrl::from_parts(input, "h", "/");
            if let Ok(p) = HostPattern::parse(input) {
                let _ = p.to_string();
                let _ = p.matches(&UrlHost::Domain(input.to_owned()));
            }
            if let Ok(p) = PathPattern::parse(input) {
                let _ = p.to_string();
                let _ = p.matches(input);
            }
            let any = PathPattern::parse("/a/**/*.x/*").unwrap();
            let _ = any.matches(input);
            let wild = HostPattern::parse("**.example.com").unwrap();
            let _ = wild.matches(&UrlHost::Domain(input.to_owned()));
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2048,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn arbitrary_strings_never_panic(input in any::<String>()) {
                touch_everything(&input);
            }

            #[test]
            fn arbitrary_printable_strings_never_panic(input in "[ -~]{0,64}") {
                touch_everything(&input);
            }

            #[test]
            fn url_ish_strings_never_panic_and_hold_the_invariants(input in url_ish()) {
                touch_everything(&input);
                if let Ok(url) = NormalizedUrl::parse(&input) {
                    check_invariants(&url)?;
                }
            }

            #[test]
            fn three_part_inputs_never_panic(
                scheme in prop_oneof![s("http"), s("https"), "\\PC{0,6}".boxed()],
                authority in "\\PC{0,24}",
                pq in "(/\\PC{0,24})?",
            ) {
                if let Ok(url) = NormalizedUrl::from_parts(&scheme, &authority, &pq) {
                    check_invariants(&url)?;
                }
            }
        }
    }
}
