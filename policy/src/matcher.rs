//! The allow list indexed by host, built at policy load: which entries can match a host.
//!
//! Matching walked every entry and compared its host with the request's, and each comparison
//! re-checked that both hosts are in normal form: about 100 ns an entry, most of a decision
//! with a 50-entry list (docs/benchmarks.md, "Policy decision"). The index answers with the
//! few entries whose host can match, from hash lookups of the request's host and of each of
//! its parent domains (for `*.` and `**.` patterns); [`crate::Policy::match_request`] then
//! runs the full per-entry match on those, in list order, so first-match order and the first
//! near miss are exactly what the walk over every entry gives.
//!
//! The index only ever narrows by host, and only over-approximates: every entry whose host
//! matches is a candidate. A request host that is not in normal form (a hand-built
//! [`crate::url::NormalizedUrl`] spelling `API.Example.com.` or `0x7f.1`) is matched against
//! every entry, as is an entry whose host the index cannot key exactly.

use crate::model::{AllowEntry, EntryTarget};
use crate::url::UrlHost;
use std::borrow::Cow;
use std::collections::HashMap;

/// Entry indices (into `network.entries`) by the host they can match.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryIndex {
    /// Short-form entries by their host, as written (they match that host exactly).
    prefixes: HashMap<UrlHost, Vec<usize>>,
    /// Exact long-form patterns by their host in normal form.
    exact: HashMap<UrlHost, Vec<usize>>,
    /// `*.suffix` patterns by suffix: they match one more label.
    one_label: HashMap<String, Vec<usize>>,
    /// `**.suffix` patterns by suffix: they match one or more labels.
    any_depth: HashMap<String, Vec<usize>>,
    /// Entries every request is tried against.
    always: Vec<usize>,
    /// How many entries there are.
    len: usize,
}

impl EntryIndex {
    pub(crate) fn build(entries: &[AllowEntry]) -> EntryIndex {
        let mut index = EntryIndex {
            len: entries.len(),
            ..EntryIndex::default()
        };
        for (i, entry) in entries.iter().enumerate() {
            match &entry.target {
                EntryTarget::Prefix(prefix) => index
                    .prefixes
                    .entry(prefix.host.clone())
                    .or_default()
                    .push(i),
                EntryTarget::Host { pattern, .. } => {
                    let host = pattern.subtree();
                    let shown = pattern.to_string();
                    let bucket = match (pattern.is_wildcard(), host) {
                        (false, host) => match normal_form(&host) {
                            Some(host) => index.exact.entry(host.into_owned()).or_default(),
                            None => &mut index.always,
                        },
                        (true, UrlHost::Domain(suffix)) if shown.starts_with("**.") => {
                            index.any_depth.entry(suffix).or_default()
                        }
                        (true, UrlHost::Domain(suffix)) if shown.starts_with("*.") => {
                            index.one_label.entry(suffix).or_default()
                        }
                        (true, _) => &mut index.always,
                    };
                    bucket.push(i);
                }
            }
        }
        index
    }

    /// The entries whose host can match `host`, ascending; `None`: try every entry.
    pub(crate) fn candidates(&self, host: &UrlHost) -> Option<Vec<usize>> {
        let normal = normal_form(host)?;
        let mut found = self.always.clone();
        let mut add = |bucket: Option<&Vec<usize>>| found.extend(bucket.into_iter().flatten());
        add(self.prefixes.get(host));
        add(self.exact.get(normal.as_ref()));
        if let UrlHost::Domain(name) = normal.as_ref() {
            // Every parent domain: `x.a.example.com` is `*.a.example.com` (one label) and
            // `**.a.example.com`, `**.example.com`, `**.com` (any depth).
            let parents = name.match_indices('.').map(|(dot, _)| &name[dot + 1..]);
            for (depth, parent) in parents.enumerate() {
                if depth == 0 {
                    add(self.one_label.get(parent));
                }
                add(self.any_depth.get(parent));
            }
        }
        found.sort_unstable();
        found.dedup();
        debug_assert!(found.iter().all(|&i| i < self.len));
        Some(found)
    }
}

/// `host` as host matching compares it (`url.rs`'s `canonical_host`), when that is known
/// without a parse that could change it: an IP as its canonical address (an IPv4-mapped IPv6
/// address is the IPv4 one), a domain only if parsing gives it back unchanged.
fn normal_form(host: &UrlHost) -> Option<Cow<'_, UrlHost>> {
    match host {
        UrlHost::Ip(address) if address.to_canonical() == *address => Some(Cow::Borrowed(host)),
        UrlHost::Ip(address) => Some(Cow::Owned(UrlHost::Ip(address.to_canonical()))),
        UrlHost::Domain(name) if plainly_normal(name) => Some(Cow::Borrowed(host)),
        UrlHost::Domain(name) => match UrlHost::parse(name) {
            Ok(UrlHost::Domain(parsed)) if parsed == *name => Some(Cow::Borrowed(host)),
            _ => None,
        },
    }
}

/// A domain the parser gives back unchanged, known without running it (it maps to ASCII,
/// lowercase and drops a trailing dot, ~200 ns): non-empty labels of lowercase letters,
/// digits and `-`, none of them punycode (`xn--`, which it decodes and checks), the last
/// not starting with a digit (which it may read as an IPv4 address). A name it would refuse
/// instead is harmless here: no entry's host is then equal to it or matches it.
fn plainly_normal(name: &str) -> bool {
    let plain_label = |label: &str| {
        !label.is_empty()
            && !label.starts_with("xn--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let last_numeric = name
        .rsplit('.')
        .next()
        .and_then(|label| label.bytes().next())
        .is_some_and(|b| b.is_ascii_digit());
    !last_numeric && name.split('.').all(plain_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What `plainly_normal` claims without parsing: the parser gives the name back
        /// unchanged, or refuses it.
        #[test]
        fn a_plainly_normal_name_is_what_the_parser_gives(
            name in "([a-z0-9-]{0,6}|xn--[a-z0-9]{1,4}|[0-9]{1,3}|0x[0-9a-f]{1,2})(\\.([a-z0-9-]{0,6}|xn--[a-z0-9]{1,4}|[0-9]{1,3}|0x[0-9a-f]{1,2})){0,3}\\.?"
        ) {
            if let (true, Ok(parsed)) = (plainly_normal(&name), UrlHost::parse(&name)) {
                prop_assert_eq!(parsed, UrlHost::Domain(name.clone()));
            }
        }
    }

    #[test]
    fn names_the_parser_would_change_are_not_plainly_normal() {
        for name in [
            "A.example.com",
            "a.example.com.",
            "a..example.com",
            "10.1.2.3",
            "0x7f.1",
            "a.0x7f",
            "xn--bcher-kva.example",
            "bücher.example",
            "",
        ] {
            assert!(!plainly_normal(name), "{name}");
        }
        assert!(plainly_normal("a-1.example.com"));
    }
}
