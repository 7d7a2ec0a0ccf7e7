//! One decision: may this request leave, and to which addresses?
//!
//! The pipeline reads top to bottom: [`Policy::match_request`] finds the allow entry, the
//! addresses are classified, the native verdict (`verdict.rs`, specified by
//! `rego/tollgate.rego`) decides, the team module (if the policy has one, and only on an allow)
//! may add denials or header edits, on the input document [`facts`] builds for it, and
//! [`explain`] writes the one sentence the sandboxed code sees.

use crate::host_addresses::HostAddresses;
use crate::ip::{self, AddressClass};
use crate::model::{AllowEntry, NearMiss};
use crate::quotas::QuotaStanding;
use crate::rego::TeamOutcome;
use crate::request::check_method;
use crate::url::{NormalizedUrl, PathHazards};
use crate::verdict::{verdict, Grounds};
use crate::Policy;
use regorus::Value;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The request being decided, after URL normalisation.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The method as sent; `CONNECT` for a tunnel. Never upper-cased here: one that is not
    /// upper case is refused ([`crate::request::check_method`]).
    pub method: &'a str,
    pub url: &'a NormalizedUrl,
    /// A CONNECT tunnel is decided on host and port only.
    pub connect: bool,
    /// Lowercase header names, for team rules.
    pub header_names: &'a [String],
    /// The provider named in `Tollgate-Auth`, if any.
    pub credential: Option<&'a str>,
    /// The team quotas that apply to the request's host, with what remained at this
    /// execution's last check (`input.quotas`); empty when none apply.
    pub quotas: &'a [QuotaStanding],
}

/// Where the request would be dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Not looked up yet: the decision stops before the address checks (`not_resolved`), so
    /// no DNS query is ever made for a request the policy refuses anyway.
    Unresolved,
    /// Every address the name resolved to (empty: it did not resolve).
    Resolved(Vec<IpAddr>),
}

/// Why a request was allowed or refused: the machine word of the audit record, of
/// `policy eval`'s output and of the proxy's choice of error code.
///
/// The verdict names the reason; when the built-in Rego module is asked instead
/// ([`Policy::decide_by_rego`]), [`Reason::parse`] reads its word, and a word this enum does
/// not know is a [`Reason::PolicyError`], never an allow. Callers match on it
/// exhaustively, so a new reason cannot slip past the code that maps reasons to answers.
/// It serializes as its snake_case word ([`Reason::as_str`]). In the order docs/policy.md
/// lists them (the order in which they decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The method is not an upper-case HTTP token ([`crate::request::check_method`]).
    MethodNotUppercase,
    /// The policy has no `network` section.
    NetworkDisabled,
    /// No allow entry's host matches (and no `allow_all`).
    HostNotAllowed,
    /// An entry's host matched, its schemes did not.
    SchemeNotAllowed,
    /// An entry's host matched, its ports did not.
    PortNotAllowed,
    /// An entry's host matched, its path prefix did not.
    PathNotAllowed,
    /// The entry's `access` does not admit the method.
    MethodNotAllowed,
    /// `%2F` in the path without `allow_encoded_slash`.
    EncodedSlash,
    /// `;` in a path segment without `allow_path_parameters`.
    PathParameter,
    /// `%25` in the path without `allow_encoded_percent`.
    EncodedPercent,
    /// A segment ending in `.` without `allow_trailing_dot`.
    TrailingDot,
    /// A `deny_rules` entry matches.
    L7Denied,
    /// The entry has `rules` and none matches.
    L7NotMatched,
    /// Every check that needs no address passed: resolve, then decide again.
    NotResolved,
    /// The name does not resolve.
    CannotResolve,
    /// An address is one of the node's own.
    HostAddress,
    /// An address is always blocked.
    AddressBlocked,
    /// An internal address is not covered by `allowed_ips`.
    PrivateAddress,
    /// The team's Rego module denied.
    TeamRule,
    /// The team's Rego module failed to evaluate (fail closed).
    TeamRuleError,
    /// The built-in rules failed or answered something tollgate does not know (fail closed).
    PolicyError,
    /// None of the above.
    Allowed,
}

impl Reason {
    /// Every reason, in the order of the enum.
    pub const ALL: [Reason; 22] = [
        Reason::MethodNotUppercase,
        Reason::NetworkDisabled,
        Reason::HostNotAllowed,
        Reason::SchemeNotAllowed,
        Reason::PortNotAllowed,
        Reason::PathNotAllowed,
        Reason::MethodNotAllowed,
        Reason::EncodedSlash,
        Reason::PathParameter,
        Reason::EncodedPercent,
        Reason::TrailingDot,
        Reason::L7Denied,
        Reason::L7NotMatched,
        Reason::NotResolved,
        Reason::CannotResolve,
        Reason::HostAddress,
        Reason::AddressBlocked,
        Reason::PrivateAddress,
        Reason::TeamRule,
        Reason::TeamRuleError,
        Reason::PolicyError,
        Reason::Allowed,
    ];

    /// The word in the Rego output, the audit record and `policy eval`'s JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MethodNotUppercase => "method_not_uppercase",
            Reason::NetworkDisabled => "network_disabled",
            Reason::HostNotAllowed => "host_not_allowed",
            Reason::SchemeNotAllowed => "scheme_not_allowed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::PathNotAllowed => "path_not_allowed",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::EncodedSlash => "encoded_slash",
            Reason::PathParameter => "path_parameter",
            Reason::EncodedPercent => "encoded_percent",
            Reason::TrailingDot => "trailing_dot",
            Reason::L7Denied => "l7_denied",
            Reason::L7NotMatched => "l7_not_matched",
            Reason::NotResolved => "not_resolved",
            Reason::CannotResolve => "cannot_resolve",
            Reason::HostAddress => "host_address",
            Reason::AddressBlocked => "address_blocked",
            Reason::PrivateAddress => "private_address",
            Reason::TeamRule => "team_rule",
            Reason::TeamRuleError => "team_rule_error",
            Reason::PolicyError => "policy_error",
            Reason::Allowed => "allowed",
        }
    }

    /// The reason `word` names, or `None` for a word that is not one.
    pub fn parse(word: &str) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == word)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The verdict, with everything an audit record or an error body needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub allow: bool,
    /// Machine reason (docs/policy.md lists them).
    pub reason: Reason,
    /// The policy rule that decided, e.g. `network.allow[2]` or `network.allow[2].deny_rules[0]`.
    pub rule: Option<String>,
    /// One sentence saying what happened and what to change.
    pub message: String,
    #[serde(skip)]
    pub entry: Option<usize>,
    pub addresses: Vec<IpAddr>,
    pub classes: Vec<AddressClass>,
    /// The address that caused an address refusal.
    pub address: Option<IpAddr>,
    /// Header edits from team rules (applied only when allowed).
    #[serde(skip)]
    pub team: TeamOutcome,
}

impl Decision {
    /// The request passed every check that does not need addresses: resolve and decide again.
    pub fn needs_resolution(&self) -> bool {
        self.reason == Reason::NotResolved
    }

    /// The most severe class among the addresses.
    pub fn worst_class(&self) -> Option<AddressClass> {
        self.classes.iter().copied().max()
    }
}

/// The native half of a decision: which allow entry matched, and how.
#[derive(Debug, Clone, Default)]
pub struct Match<'p> {
    pub index: Option<usize>,
    pub entry: Option<&'p AllowEntry>,
    pub near_miss: Option<(NearMiss, &'p AllowEntry)>,
    pub l7_allow: Option<String>,
    pub l7_deny: Option<String>,
    /// The path spellings of the request that the matched entry does not opt in to.
    pub refused_hazards: PathHazards,
}

impl Policy {
    /// Finds the first allow entry admitting the request, matching in Rust (the parser every
    /// decision shares), and the L7 rules of that entry that apply. Only the entries whose
    /// host can match are tried ([`crate::matcher`]), in list order.
    pub fn match_request(&self, request: &Request) -> Match<'_> {
        match self.entry_index.candidates(&request.url.host) {
            Some(candidates) => self.match_among(request, candidates),
            None => self.match_request_linear(request),
        }
    }

    /// [`Policy::match_request`] trying every entry: the reference the host index is
    /// checked against (tests/common), and its fallback.
    #[doc(hidden)]
    pub fn match_request_linear(&self, request: &Request) -> Match<'_> {
        let every = self.network.as_ref().map_or(0, |n| n.entries.len());
        self.match_among(request, 0..every)
    }

    /// The first of `candidates` (ascending indices) admitting the request, the first near
    /// miss among them, and the L7 rules of the entry found.
    fn match_among(
        &self,
        request: &Request,
        candidates: impl IntoIterator<Item = usize>,
    ) -> Match<'_> {
        let mut found = Match::default();
        let Some(network) = &self.network else {
            return found;
        };
        for index in candidates {
            let Some(entry) = network.entries.get(index) else {
                continue;
            };
            match entry.matches(request.url, request.connect) {
                Ok(()) => {
                    found.index = Some(index);
                    found.entry = Some(entry);
                    break;
                }
                Err(Some(miss)) if found.near_miss.is_none() => {
                    found.near_miss = Some((miss, entry))
                }
                Err(_) => {}
            }
        }
        let Some(entry) = found.entry else {
            return found;
        };
        if request.connect {
            return found;
        }
        let path = request.url.path.as_str();
        found.l7_deny = entry
            .deny_rules
            .iter()
            .position(|rule| rule.denies(request.method, path))
            .map(|i| format!("{}.deny_rules[{i}]", entry.rule));
        found.l7_allow = entry
            .rules
            .iter()
            .position(|rule| rule.allows(request.method, path))
            .map(|i| format!("{}.rules[{i}]", entry.rule));
        found.refused_hazards = request.url.hazards.refused_by(entry.allowed_hazards);
        found
    }

    /// Decides `request` going to `destination`, from a dialer on a node whose own
    /// addresses are `node` (never dialed: reason `host_address`).
    pub fn decide(
        &self,
        request: &Request,
        destination: &Destination,
        node: &HostAddresses,
    ) -> Decision {
        self.decide_by(Verdicts::Native, request, destination, node)
    }

    /// [`Policy::decide`] with the verdict of the built-in Rego module (`rego/tollgate.rego`)
    /// instead of its native equal: the specification, run by the differential test and the
    /// benchmarks, never by the proxy. Everything else (matching, team rules, messages) is
    /// the same code.
    #[doc(hidden)]
    pub fn decide_by_rego(
        &self,
        request: &Request,
        destination: &Destination,
        node: &HostAddresses,
    ) -> Decision {
        self.decide_by(Verdicts::Rego, request, destination, node)
    }

    fn decide_by(
        &self,
        verdicts: Verdicts,
        request: &Request,
        destination: &Destination,
        node: &HostAddresses,
    ) -> Decision {
        // Before any matching: a method in another case must never be compared with the
        // rules' upper-case ones, where `delete` would miss a `DELETE` deny rule.
        if let Err(error) = check_method(request.method) {
            return refusal(Reason::MethodNotUppercase, error.to_string());
        }
        let matched = self.match_request(request);
        let addresses = match destination {
            Destination::Resolved(addresses) => addresses.clone(),
            Destination::Unresolved => vec![],
        };
        // The node's own addresses are always blocked; one the tables already block keeps
        // the tables' reason (127.0.0.1 is `loopback` before it is this node's).
        let node_owned: Vec<bool> = addresses
            .iter()
            .map(|a| ip::classify(*a) != AddressClass::AlwaysBlocked && node.contains(*a))
            .collect();
        let classes: Vec<AddressClass> = addresses
            .iter()
            .zip(&node_owned)
            .map(|(a, own)| {
                if *own {
                    AddressClass::AlwaysBlocked
                } else {
                    ip::classify(*a)
                }
            })
            .collect();
        let covered: Vec<bool> = addresses
            .iter()
            .map(|a| {
                matched
                    .entry
                    .is_some_and(|e| ip::covered_by(*a, &e.allowed_ips))
            })
            .collect();
        let grounds = Grounds {
            method: request.method,
            connect: request.connect,
            matched: &matched,
            destination,
            addresses: &addresses,
            classes: &classes,
            covered: &covered,
            node_owned: &node_owned,
        };
        let mut decision = match verdicts {
            Verdicts::Native => verdict(self, &grounds),
            Verdicts::Rego => self.rego_verdict(request, &grounds),
        };
        // The team module runs only on an allow, and only then is its input built.
        let team = (decision.allow && self.rules.has_team_rules())
            .then(|| self.rules.team(facts(self, request, &grounds)));
        decision.entry = matched.index;
        decision.addresses = addresses;
        decision.classes = classes;
        match team {
            Some(Ok(outcome)) if !outcome.denials.is_empty() => {
                decision.allow = false;
                decision.reason = Reason::TeamRule;
                decision.rule = Some("rego".into());
                decision.message = outcome.denials.join("; ");
                return decision;
            }
            Some(Ok(outcome)) => decision.team = outcome,
            Some(Err(error)) => {
                decision.allow = false;
                decision.reason = Reason::TeamRuleError;
                decision.rule = Some("rego".into());
                decision.message = format!(
                    "team {}'s Rego rules failed to evaluate ({}), so the request is refused",
                    self.team,
                    short(&error)
                );
                return decision;
            }
            None => {}
        }
        decision.message = explain(self, request, &decision, &matched);
        decision
    }

    /// The built-in Rego module's verdict on `grounds`.
    fn rego_verdict(&self, request: &Request, grounds: &Grounds) -> Decision {
        match self.rules.builtin(facts(self, request, grounds)) {
            Ok(output) => from_output(&output),
            Err(error) => refusal(
                Reason::PolicyError,
                format!("its built-in rules failed: {}", short(&error.to_string())),
            ),
        }
    }
}

/// Which verdict a decision uses: the native one at runtime, the Rego specification in the
/// differential test and the benchmarks.
#[derive(Clone, Copy)]
enum Verdicts {
    Native,
    Rego,
}

/// The first line of an evaluation error, at most 200 characters: enough to say what went
/// wrong, never a dump of the values the rule was working on.
fn short(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

pub(crate) fn refusal(reason: Reason, message: String) -> Decision {
    Decision {
        allow: false,
        reason,
        rule: None,
        message,
        entry: None,
        addresses: vec![],
        classes: vec![],
        address: None,
        team: TeamOutcome::default(),
    }
}

fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<Value, Value>>(),
    )
}

fn optional(value: Option<String>) -> Value {
    value.map(Value::from).unwrap_or(Value::Null)
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::from(items.into_iter().map(Value::from).collect::<Vec<_>>())
}

fn booleans(flags: &[bool]) -> Value {
    Value::from(flags.iter().map(|f| Value::from(*f)).collect::<Vec<_>>())
}

fn optional_index(index: Option<usize>) -> Value {
    index.map(Value::from).unwrap_or(Value::Null)
}

/// The Rego input document (schema in docs/policy.md): for the team module, and for the
/// built-in module when it is asked ([`Policy::decide_by_rego`]).
fn facts(policy: &Policy, request: &Request, grounds: &Grounds) -> Value {
    let matched = grounds.matched;
    let url = request.url;
    let request_doc = object([
        ("method", Value::from(request.method)),
        ("scheme", Value::from(url.scheme.as_str())),
        ("host", Value::from(url.host_str())),
        ("port", Value::from(u32::from(url.port))),
        ("path", Value::from(url.path.as_str())),
        (
            "query_keys",
            Value::from(
                url.query_keys()
                    .into_iter()
                    .map(Value::from)
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "header_names",
            strings(request.header_names.iter().map(String::as_str)),
        ),
        ("connect", Value::from(request.connect)),
    ]);
    let resolved = matches!(grounds.destination, Destination::Resolved(_));
    let addresses: Vec<Value> = grounds
        .addresses
        .iter()
        .map(|a| Value::from(a.to_string()))
        .collect();
    let destination_doc = object([
        ("resolved", Value::from(resolved)),
        ("addresses", Value::from(addresses)),
        (
            "classes",
            strings(grounds.classes.iter().map(|c| c.as_str())),
        ),
        ("covered", booleans(grounds.covered)),
        ("host_address", booleans(grounds.node_owned)),
        ("first_blocked", optional_index(grounds.first_blocked())),
        (
            "first_uncovered_internal",
            optional_index(grounds.first_uncovered_internal()),
        ),
    ]);
    let match_doc = object([
        ("entry", optional_index(matched.index)),
        ("rule", optional(matched.entry.map(|e| e.rule.clone()))),
        (
            "near_miss",
            optional(matched.near_miss.map(|(m, _)| m.as_str().to_owned())),
        ),
        (
            "near_miss_rule",
            optional(matched.near_miss.map(|(_, e)| e.rule.clone())),
        ),
        ("l7_allow", optional(matched.l7_allow.clone())),
        ("l7_deny", optional(matched.l7_deny.clone())),
        (
            "encoded_slash_refused",
            Value::from(matched.refused_hazards.encoded_slash),
        ),
        (
            "path_parameter_refused",
            Value::from(matched.refused_hazards.path_parameter),
        ),
        (
            "encoded_percent_refused",
            Value::from(matched.refused_hazards.encoded_percent),
        ),
        (
            "trailing_dot_refused",
            Value::from(matched.refused_hazards.trailing_dot),
        ),
    ]);
    object([
        ("team", Value::from(policy.team.as_str())),
        ("request", request_doc),
        ("destination", destination_doc),
        (
            "credential",
            object([("provider", optional(request.credential.map(str::to_owned)))]),
        ),
        ("match", match_doc),
        ("quotas", quotas_document(request.quotas)),
    ])
}

/// `input.quotas`: one object per quota that applies, `remaining` null before this
/// execution's first check of it.
fn quotas_document(standings: &[QuotaStanding]) -> Value {
    Value::from(
        standings
            .iter()
            .map(|standing| {
                object([
                    ("quota", Value::from(standing.quota.as_str())),
                    ("scope", Value::from(standing.scope.as_str())),
                    ("limit", Value::from(standing.limit)),
                    (
                        "remaining",
                        standing.remaining.map(Value::from).unwrap_or(Value::Null),
                    ),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// Reads the built-in module's `{allow, reason, rule, address}`. Fails closed: a reason
/// tollgate does not know, or an allow without the reason `allowed`, is a `policy_error`
/// whose message (kept by [`explain`]) says what the module answered.
fn from_output(output: &Value) -> Decision {
    let field = |name: &str| output[name].clone();
    let allow = field("allow").as_bool().copied().unwrap_or(false);
    let word = field("reason").as_string().map(|s| s.to_string());
    let (reason, problem) = match word.as_deref().map(|w| (w, Reason::parse(w))) {
        Ok((_, Some(Reason::Allowed))) if !allow => (
            Reason::PolicyError,
            "its built-in rules gave the reason `allowed` without allowing".to_owned(),
        ),
        Ok((_, Some(reason))) => (reason, String::new()),
        Ok((word, None)) => (
            Reason::PolicyError,
            format!(
                "its built-in rules gave the reason `{}`, which tollgate does not know",
                short(word)
            ),
        ),
        Err(_) => (
            Reason::PolicyError,
            "its built-in rules gave no reason".to_owned(),
        ),
    };
    let mut decision = refusal(reason, problem);
    decision.allow = allow && reason == Reason::Allowed;
    decision.rule = field("rule").as_string().ok().map(|s| s.to_string());
    decision.address = field("address")
        .as_string()
        .ok()
        .and_then(|s| s.parse().ok());
    decision
}

/// The sentence the sandboxed code and the operator read: what was refused and what to change.
fn explain(policy: &Policy, request: &Request, decision: &Decision, matched: &Match) -> String {
    let team = &policy.team;
    let host = request.url.host_str();
    let rule = decision.rule.as_deref().unwrap_or("the policy");
    let address = decision.address.map(|a| a.to_string()).unwrap_or_default();
    match decision.reason {
        Reason::Allowed => format!("allowed by {rule}"),
        Reason::MethodNotUppercase => format!("the method {} is not upper case", request.method),
        Reason::NetworkDisabled => format!("network access is disabled for team {team} (its policy has no `network` section)"),
        Reason::HostNotAllowed => format!("host {host} is not in team {team}'s allow list"),
        Reason::PortNotAllowed => {
            let ports = matched.near_miss.map(|(_, e)| e.ports()).unwrap_or_default();
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("port {} of {host} is not allowed for team {team} ({rule} allows port {})", request.url.port, ports.join(", "))
        }
        Reason::SchemeNotAllowed => format!("{} to {host} is not allowed for team {team} ({rule} lists another scheme)", request.url.scheme),
        Reason::PathNotAllowed => format!("path {} on {host} is outside team {team}'s allowed URL prefixes", request.url.path),
        Reason::MethodNotAllowed => {
            let access = matched.entry.map(|e| e.access.as_str()).unwrap_or("restricted");
            format!("method {} is not allowed on {host}: {rule} is {access}", request.method)
        }
        Reason::EncodedSlash => format!("the path to {host} contains an encoded slash (%2F), which {rule} does not allow (set allow_encoded_slash: true to permit it)"),
        Reason::PathParameter => format!("the path to {host} has a `;` (or `%3B`) in a segment, which servers such as Tomcat read as a path parameter (`/x/..;/admin` is `/admin` to them); {rule} does not allow it (set allow_path_parameters: true to permit it)"),
        Reason::EncodedPercent => format!("the path to {host} contains an encoded percent sign (%25), which a server that decodes twice reads as another character (`%252F` as `/`); {rule} does not allow it (set allow_encoded_percent: true to permit it)"),
        Reason::TrailingDot => format!("the path to {host} has a segment ending in `.`, which servers such as IIS read without the dot (`/admin./x` as `/admin/x`); {rule} does not allow it (set allow_trailing_dot: true to permit it)"),
        Reason::L7Denied => format!("{} {} on {host} is refused by {rule}", request.method, request.url.path),
        Reason::L7NotMatched => format!("{} {} on {host} matches none of the rules of {rule}", request.method, request.url.path),
        Reason::NotResolved => format!("{host} has not been resolved yet"),
        Reason::CannotResolve => format!("host {host} does not resolve"),
        Reason::HostAddress => format!(
            "{host} resolves to {address}, an address of this node itself, which tollgate never dials"
        ),
        Reason::AddressBlocked => {
            let why = decision.address.and_then(ip::reason).unwrap_or("blocked");
            format!("{host} resolves to {address}, a {why} address that tollgate never dials")
        }
        Reason::PrivateAddress => format!(
            "{host} resolves to {address}, a private address: list it in `allowed_ips` of the allow entry for {host} to reach it"
        ),
        Reason::TeamRule => format!("refused by team {team}'s Rego rules"),
        Reason::TeamRuleError => format!("team {team}'s Rego rules failed to evaluate, so the request is refused"),
        Reason::PolicyError if decision.message.is_empty() => {
            format!("team {team}'s policy could not decide the request, so it is refused")
        }
        Reason::PolicyError => format!(
            "team {team}'s policy could not decide the request ({}), so it is refused",
            decision.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rego::BUILTIN_MODULE;

    #[test]
    fn every_reason_round_trips_through_its_word() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
        let words: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), Reason::ALL.len(), "two reasons share a word");
        assert_eq!(Reason::parse("Allowed"), None);
        assert_eq!(Reason::parse(""), None);
    }

    /// The words the built-in module can answer with: each `refuse("…")` and
    /// `refuse_address("…")`, `allowed`, and `<near_miss>_not_allowed`.
    fn builtin_words() -> Vec<String> {
        let mut words = vec!["allowed".to_owned()];
        for call in ["refuse(\"", "refuse_address(\""] {
            for (at, _) in BUILTIN_MODULE.match_indices(call) {
                let rest = &BUILTIN_MODULE[at + call.len()..];
                words.push(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
        assert!(BUILTIN_MODULE.contains("sprintf(\"%s_not_allowed\", [input.match.near_miss])"));
        for miss in [NearMiss::Scheme, NearMiss::Port, NearMiss::Path] {
            words.push(format!("{}_not_allowed", miss.as_str()));
        }
        words
    }

    #[test]
    fn every_reason_the_builtin_module_names_is_known() {
        let words = builtin_words();
        assert!(words.len() > 15, "{words:?}");
        for word in &words {
            assert!(Reason::parse(word).is_some(), "the module answers `{word}`");
        }
    }

    fn output(allow: bool, reason: Option<&str>) -> Value {
        let mut pairs = vec![(Value::from("allow"), Value::from(allow))];
        if let Some(reason) = reason {
            pairs.push((Value::from("reason"), Value::from(reason)));
        }
        Value::from(pairs.into_iter().collect::<BTreeMap<Value, Value>>())
    }

    #[test]
    fn an_answer_tollgate_does_not_know_is_a_policy_error_that_says_so() {
        for (allow, word) in [(true, "allowd"), (true, "ALLOWED"), (false, "nope")] {
            let decision = from_output(&output(allow, Some(word)));
            assert!(!decision.allow, "{word}");
            assert_eq!(decision.reason, Reason::PolicyError, "{word}");
            assert!(
                decision.message.contains(&format!("`{word}`")),
                "{}",
                decision.message
            );
        }
        let decision = from_output(&output(true, None));
        assert_eq!(
            (decision.allow, decision.reason),
            (false, Reason::PolicyError)
        );
        // An allow needs the reason `allowed`, and `allowed` needs an allow.
        let decision = from_output(&output(true, Some("l7_denied")));
        assert_eq!((decision.allow, decision.reason), (false, Reason::L7Denied));
        let decision = from_output(&output(false, Some("allowed")));
        assert_eq!(
            (decision.allow, decision.reason),
            (false, Reason::PolicyError)
        );
        let decision = from_output(&output(true, Some("allowed")));
        assert_eq!((decision.allow, decision.reason), (true, Reason::Allowed));
    }

    #[test]
    fn a_long_unknown_word_is_not_echoed_in_full() {
        let word = "x".repeat(5000);
        let decision = from_output(&output(true, Some(&word)));
        assert_eq!(decision.reason, Reason::PolicyError);
        assert!(decision.message.len() < 400, "{}", decision.message.len());
    }
}
