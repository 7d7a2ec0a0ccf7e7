//! IP address classification for dialing: public, internal, or always blocked.
//!
//! The proxy resolves each destination once and dials only addresses this module has
//! classified (invariant 3), so the tables below *are* tollgate's SSRF model: a range missing
//! from them is a range sandboxed code can reach. The rules that shape them:
//!
//! * **Always blocked** ranges reach the worker itself, its link or its cloud control plane
//!   (loopback; `0.0.0.0`, which Linux dials as the local host; link-local, home of the
//!   `169.254.169.254` metadata service; multicast; reserved space). No policy opens them.
//! * **Internal** ranges are private or special-purpose networks. A team's `allowed_ips` may open
//!   them one CIDR at a time ([`covered_by`]); [`overlaps_always_blocked`] keeps `allowed_ips`
//!   from reaching into the always-blocked ranges.
//! * An IPv6 address that *carries* an IPv4 address (mapped, compatible, translated, NAT64,
//!   6to4, Teredo, ISATAP; see [`embedded_ipv4`]) is at least as severe as what it carries,
//!   because some layer between the proxy and the wire (dual-stack sockets, a NAT64 gateway, a
//!   tunnel interface) may turn it into that IPv4 address. `::ffff:127.0.0.1` is loopback.
//! * Anything not listed is public. IPv6 outside `2000::/3` is not listed in the tables but is
//!   unassigned by IANA, so it is internal ("reserved"): nothing on the Internet answers there,
//!   and a route to it on the worker can only be local.
//!
//! Pure functions over `std::net` types: no sockets, no DNS, no allocation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// How dangerous it is to dial an address. Ordered by severity, so `max` combines classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressClass {
    /// Globally routed: dialable without any `allowed_ips` entry.
    Public,
    /// A private or special-purpose network: dialable only if an `allowed_ips` entry covers it.
    Internal,
    /// The worker itself, its link, its cloud control plane, or nothing dialable: never dialed.
    AlwaysBlocked,
}

impl AddressClass {
    /// The class as it appears in audit records and errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Internal => "internal",
            AddressClass::AlwaysBlocked => "always_blocked",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// The tables. Within a table the longest matching prefix gives the reason, so row order only
// matters for which name `overlaps_always_blocked` reports first.
// ---------------------------------------------------------------------------------------------

/// One row of a classification table.
#[derive(Debug, Clone, Copy)]
struct Range<N> {
    net: N,
    /// Machine reason reported by [`reason`].
    reason: &'static str,
    /// Name used in policy validation errors; always ends with the CIDR (a test checks it).
    label: &'static str,
}

const fn v4(o: [u8; 4], len: u8, reason: &'static str, label: &'static str) -> Range<Ipv4Net> {
    Range {
        net: Ipv4Net::new_assert(Ipv4Addr::new(o[0], o[1], o[2], o[3]), len),
        reason,
        label,
    }
}

const fn v6(s: [u16; 8], len: u8, reason: &'static str, label: &'static str) -> Range<Ipv6Net> {
    Range {
        net: Ipv6Net::new_assert(
            Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
            len,
        ),
        reason,
        label,
    }
}

/// IPv4 ranges no policy can open.
#[rustfmt::skip]
static V4_ALWAYS_BLOCKED: [Range<Ipv4Net>; 6] = [
    // RFC 1122 §3.2.1.3, RFC 6890: "this network". Linux connects to 0.0.0.0 as the local host.
    v4([0, 0, 0, 0], 8, "unspecified", "unspecified 0.0.0.0/8"),
    // RFC 1122 §3.2.1.3: the worker itself.
    v4([127, 0, 0, 0], 8, "loopback", "loopback 127.0.0.0/8"),
    // RFC 3927: the link; cloud metadata services (169.254.169.254) live here.
    v4([169, 254, 0, 0], 16, "link_local", "link-local 169.254.0.0/16"),
    // RFC 5771: multicast is never an HTTP destination.
    v4([224, 0, 0, 0], 4, "multicast", "multicast 224.0.0.0/4"),
    // RFC 1112 §4 (former class E): unusable as a destination. Contains the broadcast row.
    v4([240, 0, 0, 0], 4, "reserved", "reserved 240.0.0.0/4"),
    // RFC 919, RFC 8190: limited broadcast. Longer prefix than 240/4, so it names the reason.
    v4([255, 255, 255, 255], 32, "broadcast", "broadcast 255.255.255.255/32"),
];

/// IPv4 cloud control-plane endpoints outside link-local, always blocked. They sit inside
/// ranges a team may legitimately open (100.64/10 is also Tailscale's range) or inside public
/// space, so they are carved out here, at dial time, instead of forbidding the whole range in
/// `allowed_ips`.
#[rustfmt::skip]
static V4_METADATA: [Range<Ipv4Net>; 2] = [
    // Alibaba Cloud ECS instance metadata service (inside CGNAT 100.64.0.0/10).
    v4([100, 100, 100, 200], 32, "metadata", "Alibaba Cloud metadata 100.100.100.200/32"),
    // Azure WireServer: VM agent, extension and health endpoint; public-looking but host-local.
    v4([168, 63, 129, 16], 32, "metadata", "Azure WireServer 168.63.129.16/32"),
];

/// IPv4 ranges blocked unless an `allowed_ips` entry covers the address.
#[rustfmt::skip]
static V4_INTERNAL: [Range<Ipv4Net>; 10] = [
    // RFC 1918 private networks.
    v4([10, 0, 0, 0], 8, "private", "private 10.0.0.0/8"),
    v4([172, 16, 0, 0], 12, "private", "private 172.16.0.0/12"),
    v4([192, 168, 0, 0], 16, "private", "private 192.168.0.0/16"),
    // RFC 6598 shared address space (carrier-grade NAT; also Tailscale).
    v4([100, 64, 0, 0], 10, "cgnat", "cgnat 100.64.0.0/10"),
    // RFC 6890 §2.2.2 IETF protocol assignments (DS-Lite RFC 7335, NAT64 discovery RFC 7050, ...).
    v4([192, 0, 0, 0], 24, "ietf_protocol", "ietf-protocol 192.0.0.0/24"),
    // RFC 5737 TEST-NET-1, -2, -3: documentation, never routed.
    v4([192, 0, 2, 0], 24, "documentation", "documentation 192.0.2.0/24"),
    v4([198, 51, 100, 0], 24, "documentation", "documentation 198.51.100.0/24"),
    v4([203, 0, 113, 0], 24, "documentation", "documentation 203.0.113.0/24"),
    // RFC 3068 6to4 relay anycast, deprecated by RFC 7526: whatever still answers is a tunnel
    // endpoint, not a web server, so it needs an explicit allowed_ips entry.
    v4([192, 88, 99, 0], 24, "6to4_relay", "6to4-relay 192.88.99.0/24"),
    // RFC 2544 benchmarking: lab networks.
    v4([198, 18, 0, 0], 15, "benchmarking", "benchmarking 198.18.0.0/15"),
];

/// IPv6 ranges no policy can open.
#[rustfmt::skip]
static V6_ALWAYS_BLOCKED: [Range<Ipv6Net>; 4] = [
    // RFC 4291 §2.5.2: Linux connects to :: as the local host.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified", "unspecified ::/128"),
    // RFC 4291 §2.5.3.
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", "loopback ::1/128"),
    // RFC 4291 §2.5.6: the link (OpenStack serves metadata at fe80::a9fe:a9fe).
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link_local", "link-local fe80::/10"),
    // RFC 4291 §2.7.
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", "multicast ff00::/8"),
];

/// IPv6 cloud control-plane endpoints, always blocked (see [`V4_METADATA`] for why they are
/// carved out at dial time rather than forbidden in `allowed_ips`).
#[rustfmt::skip]
static V6_METADATA: [Range<Ipv6Net>; 1] = [
    // AWS EC2 instance metadata service, IPv6 endpoint (inside unique-local fc00::/7).
    v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254], 128, "metadata",
       "AWS instance metadata fd00:ec2::254/128"),
];

/// IPv6 ranges blocked unless an `allowed_ips` entry covers the address. Everything outside
/// [`V6_GLOBAL_UNICAST`] is internal too, as "reserved", unless a row here names it better.
#[rustfmt::skip]
static V6_INTERNAL: [Range<Ipv6Net>; 11] = [
    // RFC 4193 unique local addresses: the IPv6 private networks.
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique_local", "unique-local fc00::/7"),
    // RFC 3879 deprecated site-local; old stacks still route it locally.
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site_local", "site-local fec0::/10"),
    // RFC 3849 and RFC 9637 documentation prefixes, never routed.
    v6([0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32, "documentation", "documentation 2001:db8::/32"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation", "documentation 3fff::/20"),
    // RFC 6666 discard-only prefix: a blackhole by design; internal (not always blocked)
    // because it is harmless, and there is no reason to dial it either.
    v6([0x0100, 0, 0, 0, 0, 0, 0, 0], 64, "discard", "discard 100::/64"),
    // RFC 8215 local-use NAT64 prefix: an operator's own translator, i.e. an internal network.
    // Its embedded IPv4 is read from the last 32 bits (the /96 layout); see `EMBEDDINGS`.
    v6([0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0], 48, "nat64_local",
       "local-use NAT64 64:ff9b:1::/48"),
    // RFC 2928 / RFC 6890 IETF protocol assignments 2001::/23, not globally reachable. This is
    // stricter than IANA for a few anycast blocks inside (PCP, TURN, DNS-SD 2001:1::1..3, AMT
    // 2001:3::/32, AS112 2001:4:112::/48, DRIP 2001:30::/28): none is an HTTP destination.
    // Teredo 2001::/32 is inside too, but is a transparent embedding: classified by the IPv4
    // addresses it carries (see `EMBEDDINGS`).
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "ietf_protocol", "ietf-protocol 2001::/23"),
    // RFC 5180 benchmarking.
    v6([0x2001, 0x0002, 0, 0, 0, 0, 0, 0], 48, "benchmarking", "benchmarking 2001:2::/48"),
    // RFC 4843 ORCHID (deprecated) and RFC 7343 ORCHIDv2: cryptographic identifiers, not
    // locators; nothing legitimately answers HTTP there.
    v6([0x2001, 0x0010, 0, 0, 0, 0, 0, 0], 28, "orchid", "orchid 2001:10::/28"),
    v6([0x2001, 0x0020, 0, 0, 0, 0, 0, 0], 28, "orchid", "orchid-v2 2001:20::/28"),
    // RFC 9602 SRv6 segment identifiers: an operator's own routing fabric. (Outside 2000::/3
    // so already "reserved"; listed to give it a precise reason.)
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "srv6_sid", "srv6-sid 5f00::/16"),
];

/// RFC 4291 §2.4 / IANA: the only IPv6 space allocated for global unicast. Anything outside it
/// and not named in a table is internal, with reason "reserved".
const V6_GLOBAL_UNICAST: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Where an IPv6 form keeps its IPv4 address(es): `(first bit, counted from the most significant
/// bit; whether the 32 bits are stored inverted)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The last 32 bits.
    Low32,
    /// The last 32 bits, except that `::` and `::1` are themselves (RFC 4291 §2.5.5.1).
    Compatible,
    /// Bits 16..48 (RFC 3056 §2).
    SixToFour,
    /// Server in bits 32..64, client in the last 32 bits inverted (RFC 4380 §4).
    Teredo,
}

impl Layout {
    fn fields(self) -> &'static [(u8, bool)] {
        match self {
            Layout::Low32 | Layout::Compatible => &[(96, false)],
            Layout::SixToFour => &[(16, false)],
            Layout::Teredo => &[(32, false), (96, true)],
        }
    }
}

/// An IPv6 prefix whose addresses carry IPv4 addresses.
#[derive(Debug, Clone, Copy)]
struct Embedding {
    net: Ipv6Net,
    layout: Layout,
    /// The IPv6 address is only a wrapper: its own class is public and the carried IPv4
    /// decides. Otherwise the prefix's own class applies too, and the more severe one wins.
    transparent: bool,
    label: &'static str,
}

const fn embedding(
    s: [u16; 8],
    len: u8,
    layout: Layout,
    transparent: bool,
    label: &'static str,
) -> Embedding {
    Embedding {
        net: Ipv6Net::new_assert(
            Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
            len,
        ),
        layout,
        transparent,
        label,
    }
}

/// Every IPv6 prefix that carries an IPv4 address. ISATAP is not here: it is an interface
/// identifier pattern valid under any prefix (see [`is_isatap`]).
#[rustfmt::skip]
static EMBEDDINGS: [Embedding; 7] = [
    // RFC 4291 §2.5.5.2 IPv4-mapped: a dual-stack socket dials the IPv4 address itself.
    embedding([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, Layout::Low32, true, "IPv4-mapped ::ffff:0:0/96"),
    // RFC 2765 §2.1 IPv4-translated (SIIT): a translator turns it into the IPv4 address.
    embedding([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, Layout::Low32, true,
              "IPv4-translated ::ffff:0:0:0/96"),
    // RFC 4291 §2.5.5.1 IPv4-compatible, deprecated: an automatic tunnel (sit) sends it to the
    // IPv4 address. Not transparent: the prefix is reserved space of its own (::/8), so even
    // ::8.8.8.8 is internal; nothing legitimate is published that way.
    embedding([0, 0, 0, 0, 0, 0, 0, 0], 96, Layout::Compatible, false, "IPv4-compatible ::/96"),
    // RFC 6052 §2.1 NAT64 well-known prefix: the gateway dials the IPv4 address for us.
    embedding([0x0064, 0xff9b, 0, 0, 0, 0, 0, 0], 96, Layout::Low32, true, "NAT64 64:ff9b::/96"),
    // RFC 8215 local-use NAT64. RFC 6052 also allows /48../64 layouts that put the IPv4 in the
    // middle; reading those would turn ordinary /96-layout addresses into 0.0.0.0 and block
    // them, so only the /96 layout is read. The prefix's own class is internal, so any other
    // layout still needs an explicit allowed_ips entry.
    embedding([0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0], 48, Layout::Low32, false,
              "local-use NAT64 64:ff9b:1::/48"),
    // RFC 3056 6to4: a 6to4 tunnel sends it to the IPv4 address.
    embedding([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, Layout::SixToFour, true, "6to4 2002::/16"),
    // RFC 4380 Teredo: a Teredo interface talks to the server and the client IPv4 addresses.
    embedding([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, Layout::Teredo, true, "Teredo 2001::/32"),
];

/// `VIA_LABELS[e][r]` names "always-blocked IPv4 row `r`, written inside embedding `e`" for
/// [`overlaps_always_blocked`]. Generated as the cross product of the two label lists, which a
/// test checks against the tables.
macro_rules! via_labels {
    (@row $via:literal, [$($v4:literal),* $(,)?]) => { [$(concat!($v4, " via ", $via)),*] };
    ([$($via:literal),* $(,)?], $v4:tt) => { [$(via_labels!(@row $via, $v4)),*] };
}

#[rustfmt::skip]
static VIA_LABELS: [[&str; 6]; 7] = via_labels!(
    [
        "IPv4-mapped ::ffff:0:0/96",
        "IPv4-translated ::ffff:0:0:0/96",
        "IPv4-compatible ::/96",
        "NAT64 64:ff9b::/96",
        "local-use NAT64 64:ff9b:1::/48",
        "6to4 2002::/16",
        "Teredo 2001::/32",
    ],
    [
        "unspecified 0.0.0.0/8",
        "loopback 127.0.0.0/8",
        "link-local 169.254.0.0/16",
        "multicast 224.0.0.0/4",
        "reserved 240.0.0.0/4",
        "broadcast 255.255.255.255/32",
    ]
);

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// Class of one address, looking through every IPv6 form that embeds an IPv4 address.
pub fn classify(ip: IpAddr) -> AddressClass {
    classify_with_reason(ip).0
}

/// Short machine reason for a non-public class: "unspecified", "loopback", "link_local",
/// "multicast", "reserved", "broadcast", "metadata" (always blocked); "private", "cgnat",
/// "ietf_protocol", "documentation", "6to4_relay", "benchmarking", "unique_local",
/// "site_local", "discard", "nat64_local", "orchid", "srv6_sid", "reserved" (internal).
/// `None` for public. For an IPv6 address carrying a more severe IPv4 address, the IPv4
/// address's reason (`::ffff:127.0.0.1` is "loopback").
pub fn reason(ip: IpAddr) -> Option<&'static str> {
    classify_with_reason(ip).1
}

/// [`classify`] and [`reason`] in one pass. The reason is `None` exactly when the class is
/// public.
pub fn classify_with_reason(ip: IpAddr) -> (AddressClass, Option<&'static str>) {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(ip: Ipv4Addr) -> (AddressClass, Option<&'static str>) {
    if let Some(r) = lookup_v4(&V4_ALWAYS_BLOCKED, ip).or_else(|| lookup_v4(&V4_METADATA, ip)) {
        return (AddressClass::AlwaysBlocked, Some(r.reason));
    }
    if let Some(r) = lookup_v4(&V4_INTERNAL, ip) {
        return (AddressClass::Internal, Some(r.reason));
    }
    (AddressClass::Public, None)
}

fn classify_v6(ip: Ipv6Addr) -> (AddressClass, Option<&'static str>) {
    if let Some(r) = lookup_v6(&V6_ALWAYS_BLOCKED, ip).or_else(|| lookup_v6(&V6_METADATA, ip)) {
        return (AddressClass::AlwaysBlocked, Some(r.reason));
    }
    // The most severe of the address's own range and everything it carries. On a tie the own
    // range's reason is kept, so the reason says where the severity first came from.
    let mut verdict = own_class_v6(ip);
    for &carried in embedded_ipv4(ip).iter() {
        let inner = classify_v4(carried);
        if inner.0 > verdict.0 {
            verdict = inner;
        }
    }
    verdict
}

/// The class of an IPv6 address's own range, ignoring what it carries.
fn own_class_v6(ip: Ipv6Addr) -> (AddressClass, Option<&'static str>) {
    if EMBEDDINGS
        .iter()
        .any(|e| e.transparent && e.net.contains(&ip))
    {
        return (AddressClass::Public, None);
    }
    if let Some(r) = lookup_v6(&V6_INTERNAL, ip) {
        return (AddressClass::Internal, Some(r.reason));
    }
    if !V6_GLOBAL_UNICAST.contains(&ip) {
        return (AddressClass::Internal, Some("reserved"));
    }
    (AddressClass::Public, None)
}

/// Longest-prefix match, so a specific row (broadcast, ORCHID) beats the range containing it.
fn lookup_v4(table: &'static [Range<Ipv4Net>], ip: Ipv4Addr) -> Option<&'static Range<Ipv4Net>> {
    table
        .iter()
        .filter(|r| r.net.contains(&ip))
        .max_by_key(|r| r.net.prefix_len())
}

fn lookup_v6(table: &'static [Range<Ipv6Net>], ip: Ipv6Addr) -> Option<&'static Range<Ipv6Net>> {
    table
        .iter()
        .filter(|r| r.net.contains(&ip))
        .max_by_key(|r| r.net.prefix_len())
}

// ---------------------------------------------------------------------------------------------
// Embedded IPv4
// ---------------------------------------------------------------------------------------------

/// The IPv4 addresses one IPv6 address carries, without allocating. Derefs to a slice.
///
/// At most three: the embedding prefixes are disjoint, the richest (Teredo) carries two, and an
/// ISATAP interface identifier can add one more under any prefix.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedIpv4 {
    addrs: [Ipv4Addr; EmbeddedIpv4::CAPACITY],
    len: usize,
}

impl EmbeddedIpv4 {
    const CAPACITY: usize = 3;

    const EMPTY: EmbeddedIpv4 = EmbeddedIpv4 {
        addrs: [Ipv4Addr::UNSPECIFIED; EmbeddedIpv4::CAPACITY],
        len: 0,
    };

    fn push(&mut self, addr: Ipv4Addr) {
        if self.contains(&addr) {
            return;
        }
        // Cannot be full (see the type's doc; a test drives the maximum case). Dropping an
        // address here would under-classify, hence the debug assertion.
        debug_assert!(self.len < Self::CAPACITY, "EmbeddedIpv4 overflow");
        if let Some(slot) = self.addrs.get_mut(self.len) {
            *slot = addr;
            self.len += 1;
        }
    }
}

impl Deref for EmbeddedIpv4 {
    type Target = [Ipv4Addr];

    fn deref(&self) -> &[Ipv4Addr] {
        self.addrs.get(..self.len).unwrap_or_default()
    }
}

impl PartialEq for EmbeddedIpv4 {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for EmbeddedIpv4 {}

impl<'a> IntoIterator for &'a EmbeddedIpv4 {
    type Item = &'a Ipv4Addr;
    type IntoIter = std::slice::Iter<'a, Ipv4Addr>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The IPv4 addresses an IPv6 address carries:
/// IPv4-mapped `::ffff:a.b.c.d`; IPv4-translated `::ffff:0:a.b.c.d`; IPv4-compatible
/// `::a.b.c.d` (not `::` and `::1` themselves); NAT64 `64:ff9b::/96` and local-use
/// `64:ff9b:1::/48` (last 32 bits); 6to4 `2002:AABB:CCDD::/48` (bits 16..48); Teredo
/// `2001:0::/32` (server in bits 32..64, client in the last 32 bits inverted: two addresses);
/// ISATAP interface identifiers `…:0:5efe:a.b.c.d` / `…:200:5efe:a.b.c.d` under any prefix
/// (RFC 5214 §6.1). Duplicates are removed; empty for anything else.
pub fn embedded_ipv4(v6: Ipv6Addr) -> EmbeddedIpv4 {
    let bits = u128::from(v6);
    let mut out = EmbeddedIpv4::EMPTY;
    for e in &EMBEDDINGS {
        if !e.net.contains(&v6) || (e.layout == Layout::Compatible && bits <= 1) {
            continue;
        }
        for &(start, inverted) in e.layout.fields() {
            out.push(carried_at(bits, start, inverted));
        }
    }
    if is_isatap(v6) {
        out.push(carried_at(bits, 96, false));
    }
    out
}

/// RFC 5214 §6.1 ISATAP interface identifier: `0000:5efe` or `0200:5efe` (universal/local bit),
/// followed by the IPv4 address. Same test as Linux's `ipv6_addr_is_isatap`: a host with an
/// ISATAP tunnel sends such an address to the IPv4 address in the identifier.
fn is_isatap(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    (s[4] | 0x0200) == 0x0200 && s[5] == 0x5efe
}

/// The 32 bits at `start` (counted from the most significant bit), un-inverted if needed.
fn carried_at(bits: u128, start: u8, inverted: bool) -> Ipv4Addr {
    // Truncating to the low 32 bits after the shift is the point.
    let raw = (bits >> (96 - u32::from(start))) as u32;
    Ipv4Addr::from(if inverted { !raw } else { raw })
}

// ---------------------------------------------------------------------------------------------
// Policy validation and allowed_ips matching
// ---------------------------------------------------------------------------------------------

/// For policy validation of `allowed_ips`: `Some(name of an always-blocked range)` if `net`
/// overlaps one (partly, fully, or by containing it: `0.0.0.0/0`, `::/0` and `10.0.0.0/4` all
/// overlap), counting IPv4 ranges written in IPv6 (mapped, translated, compatible, NAT64, local
/// NAT64, 6to4, Teredo). E.g. "loopback 127.0.0.0/8" or
/// "loopback 127.0.0.0/8 via IPv4-mapped ::ffff:0:0/96".
///
/// This is the error message, not the guard: [`classify`] never lets an `allowed_ips` entry
/// open an always-blocked address. Two things are deliberately left to dial time so that broad
/// internal ranges stay expressible: cloud metadata hosts inside internal ranges
/// (`100.64.0.0/10` and `fd00::/8` are accepted; an entry *within* a metadata host is refused),
/// and ISATAP identifiers, which exist under every IPv6 /64.
pub fn overlaps_always_blocked(net: &IpNet) -> Option<&'static str> {
    match net.trunc() {
        IpNet::V4(n) => blocked_v4_row(n).map(|r| r.label).or_else(|| {
            V4_METADATA
                .iter()
                .find(|r| r.net.contains(&n))
                .map(|r| r.label)
        }),
        IpNet::V6(n) => overlaps_always_blocked_v6(n),
    }
}

fn overlaps_always_blocked_v6(n: Ipv6Net) -> Option<&'static str> {
    if let Some(r) = pick_overlapping(
        &V6_ALWAYS_BLOCKED,
        |r| r.net.contains(&n),
        |r| n.contains(&r.net),
    ) {
        return Some(r.label);
    }
    if let Some(r) = V6_METADATA.iter().find(|r| r.net.contains(&n)) {
        return Some(r.label);
    }
    for (e, labels) in EMBEDDINGS.iter().zip(&VIA_LABELS) {
        if !(e.net.contains(&n) || n.contains(&e.net)) {
            continue;
        }
        for &(start, inverted) in e.layout.fields() {
            let carried = carried_net(n, start, inverted);
            if let Some(i) = blocked_v4_index(carried) {
                // The lookup cannot miss (the arrays have matching sizes); should it, still
                // refuse, naming the embedding.
                return Some(labels.get(i).copied().unwrap_or(e.label));
            }
        }
    }
    None
}

/// The IPv4 addresses the field at `start` can hold across `n` (which overlaps the embedding
/// prefix): its fixed bits are those of `n`'s prefix that fall inside the field.
fn carried_net(n: Ipv6Net, start: u8, inverted: bool) -> Ipv4Net {
    let addr = carried_at(u128::from(n.network()), start, inverted);
    let len = n.prefix_len().saturating_sub(start).min(32);
    // `len <= 32` always; should `new` fail anyway, claim every address (fail closed).
    Ipv4Net::new(addr, len).map_or(Ipv4Net::default(), |c| c.trunc())
}

fn blocked_v4_index(n: Ipv4Net) -> Option<usize> {
    let row = blocked_v4_row(n)?;
    V4_ALWAYS_BLOCKED.iter().position(|r| std::ptr::eq(r, row))
}

fn blocked_v4_row(n: Ipv4Net) -> Option<&'static Range<Ipv4Net>> {
    pick_overlapping(
        &V4_ALWAYS_BLOCKED,
        |r| r.net.contains(&n),
        |r| n.contains(&r.net),
    )
}

/// The row to name for a net overlapping a table: the most specific row containing the net
/// (so `255.255.255.255/32` is "broadcast", not "reserved"), else the first row the net
/// contains. Two CIDRs overlap exactly when one contains the other.
fn pick_overlapping<N>(
    table: &'static [Range<N>],
    row_contains_net: impl Fn(&Range<N>) -> bool,
    net_contains_row: impl Fn(&Range<N>) -> bool,
) -> Option<&'static Range<N>>
where
    N: PrefixLen,
{
    table
        .iter()
        .filter(|r| row_contains_net(r))
        .max_by_key(|r| r.net.prefix_len_of())
        .or_else(|| table.iter().find(|r| net_contains_row(r)))
}

/// Lets [`pick_overlapping`] serve both families.
trait PrefixLen {
    fn prefix_len_of(&self) -> u8;
}

impl PrefixLen for Ipv4Net {
    fn prefix_len_of(&self) -> u8 {
        self.prefix_len()
    }
}

impl PrefixLen for Ipv6Net {
    fn prefix_len_of(&self) -> u8 {
        self.prefix_len()
    }
}

/// Whether `ip` is covered by any of `nets`. An IPv4-mapped address (`::ffff:a.b.c.d`) is the
/// same host as `a.b.c.d`, so it is also compared against IPv4 nets, and an IPv4 address is
/// compared against IPv6 nets written in mapped form (inside `::ffff:0:0/96`). Nothing else is
/// translated: `64:ff9b::a00:1` goes through a NAT64 gateway and is not "the same host" as
/// `10.0.0.1`, and `::/0` does not cover IPv4.
///
/// Knows nothing about classes: the caller refuses always-blocked addresses first.
pub fn covered_by(ip: IpAddr, nets: &[IpNet]) -> bool {
    const MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    nets.iter().any(|net| {
        net.contains(&ip)
            || match (ip, net) {
                (IpAddr::V6(a), IpNet::V4(n)) => a.to_ipv4_mapped().is_some_and(|m| n.contains(&m)),
                (IpAddr::V4(a), IpNet::V6(n)) => {
                    MAPPED.contains(n) && n.contains(&a.to_ipv6_mapped())
                }
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use AddressClass::{AlwaysBlocked as B, Internal as I, Public as P};

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test net {s}: {e}"))
    }

    fn v6a(s: &str) -> Ipv6Addr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    /// Checks every case and reports all failures at once.
    fn check(cases: &[(&str, AddressClass, Option<&str>)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(addr, class, why)| {
                let got = classify_with_reason(ip(addr));
                (got != (class, why))
                    .then(|| format!("{addr}: want {class:?} {why:?}, got {got:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    // ---- AddressClass ------------------------------------------------------------------------

    #[test]
    fn class_order_is_severity() {
        assert!(P < I && I < B);
        assert_eq!(P.max(B), B);
        assert_eq!([I, B, P].iter().max(), Some(&B));
    }

    #[test]
    fn class_names() {
        assert_eq!(P.as_str(), "public");
        assert_eq!(I.as_str(), "internal");
        assert_eq!(B.as_str(), "always_blocked");
        assert_eq!(B.to_string(), "always_blocked");
        for c in [P, I, B] {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }

    // ---- IPv4, always blocked ----------------------------------------------------------------

    #[test]
    fn v4_unspecified() {
        check(&[
            ("0.0.0.0", B, Some("unspecified")),
            ("0.0.0.1", B, Some("unspecified")),
            ("0.255.255.255", B, Some("unspecified")),
            ("1.0.0.0", P, None),
        ]);
    }

    #[test]
    fn v4_loopback() {
        check(&[
            ("126.255.255.255", P, None),
            ("127.0.0.0", B, Some("loopback")),
            ("127.0.0.1", B, Some("loopback")),
            ("127.1.2.3", B, Some("loopback")),
            ("127.255.255.255", B, Some("loopback")),
            ("128.0.0.0", P, None),
        ]);
    }

    #[test]
    fn v4_link_local() {
        check(&[
            ("169.253.255.255", P, None),
            ("169.254.0.0", B, Some("link_local")),
            ("169.254.169.254", B, Some("link_local")),
            ("169.254.255.255", B, Some("link_local")),
            ("169.255.0.0", P, None),
        ]);
    }

    #[test]
    fn v4_multicast_reserved_broadcast() {
        check(&[
            ("223.255.255.255", P, None),
            ("224.0.0.0", B, Some("multicast")),
            ("224.0.0.251", B, Some("multicast")),
            ("239.255.255.255", B, Some("multicast")),
            ("240.0.0.0", B, Some("reserved")),
            ("250.1.2.3", B, Some("reserved")),
            ("255.255.255.254", B, Some("reserved")),
            ("255.255.255.255", B, Some("broadcast")),
        ]);
    }

    #[test]
    fn v4_cloud_metadata() {
        check(&[
            ("100.100.100.199", I, Some("cgnat")),
            ("100.100.100.200", B, Some("metadata")),
            ("100.100.100.201", I, Some("cgnat")),
            ("168.63.129.15", P, None),
            ("168.63.129.16", B, Some("metadata")),
            ("168.63.129.17", P, None),
        ]);
    }

    // ---- IPv4, internal ----------------------------------------------------------------------

    #[test]
    fn v4_private() {
        check(&[
            ("9.255.255.255", P, None),
            ("10.0.0.0", I, Some("private")),
            ("10.255.255.255", I, Some("private")),
            ("11.0.0.0", P, None),
            ("172.15.255.255", P, None),
            ("172.16.0.0", I, Some("private")),
            ("172.31.255.255", I, Some("private")),
            ("172.32.0.0", P, None),
            ("192.167.255.255", P, None),
            ("192.168.0.0", I, Some("private")),
            ("192.168.255.255", I, Some("private")),
            ("192.169.0.0", P, None),
        ]);
    }

    #[test]
    fn v4_cgnat() {
        check(&[
            ("100.63.255.255", P, None),
            ("100.64.0.0", I, Some("cgnat")),
            ("100.127.255.255", I, Some("cgnat")),
            ("100.128.0.0", P, None),
        ]);
    }

    #[test]
    fn v4_ietf_protocol_and_documentation() {
        check(&[
            ("191.255.255.255", P, None),
            ("192.0.0.0", I, Some("ietf_protocol")),
            ("192.0.0.170", I, Some("ietf_protocol")),
            ("192.0.0.255", I, Some("ietf_protocol")),
            ("192.0.1.0", P, None),
            ("192.0.1.255", P, None),
            ("192.0.2.0", I, Some("documentation")),
            ("192.0.2.255", I, Some("documentation")),
            ("192.0.3.0", P, None),
            ("198.51.99.255", P, None),
            ("198.51.100.0", I, Some("documentation")),
            ("198.51.100.255", I, Some("documentation")),
            ("198.51.101.0", P, None),
            ("203.0.112.255", P, None),
            ("203.0.113.0", I, Some("documentation")),
            ("203.0.113.255", I, Some("documentation")),
            ("203.0.114.0", P, None),
        ]);
    }

    #[test]
    fn v4_benchmarking_and_6to4_relay() {
        check(&[
            ("198.17.255.255", P, None),
            ("198.18.0.0", I, Some("benchmarking")),
            ("198.19.255.255", I, Some("benchmarking")),
            ("198.20.0.0", P, None),
            ("192.88.98.255", P, None),
            ("192.88.99.0", I, Some("6to4_relay")),
            ("192.88.99.1", I, Some("6to4_relay")),
            ("192.88.99.255", I, Some("6to4_relay")),
            ("192.88.100.0", P, None),
        ]);
    }

    #[test]
    fn v4_public() {
        check(&[
            ("1.1.1.1", P, None),
            ("8.8.8.8", P, None),
            ("93.184.216.34", P, None),
            ("100.63.0.1", P, None),
            ("172.217.0.1", P, None),
            ("192.31.196.1", P, None), // AS112, globally reachable
            ("223.255.255.255", P, None),
        ]);
    }

    /// Independent restatement of the IPv4 spec as octet patterns.
    fn reference_v4(a: Ipv4Addr) -> AddressClass {
        match a.octets() {
            [0, ..] | [127, ..] | [169, 254, ..] | [224..=255, ..] => B,
            [100, 100, 100, 200] | [168, 63, 129, 16] => B,
            [10, ..] | [172, 16..=31, ..] | [192, 168, ..] | [100, 64..=127, ..] => I,
            [192, 0, 0, _] | [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => I,
            [192, 88, 99, _] | [198, 18..=19, ..] => I,
            _ => P,
        }
    }

    /// Every /16 at its first and last addresses (every row of /16 or wider starts and ends
    /// there), and every address of the /16s holding the narrower rows.
    #[test]
    fn v4_matches_reference_across_the_space() {
        let check = |addr: Ipv4Addr| {
            assert_eq!(classify(addr.into()), reference_v4(addr), "{addr}");
        };
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                check(Ipv4Addr::new(a, b, 0, 0));
                check(Ipv4Addr::new(a, b, 255, 255));
            }
        }
        let narrow_rows = [
            [192, 0],
            [192, 88],
            [198, 51],
            [203, 0],
            [100, 100],
            [168, 63],
        ];
        for [a, b] in narrow_rows.into_iter().chain([[255, 255]]) {
            for c in 0..=255u8 {
                for d in 0..=255u8 {
                    check(Ipv4Addr::new(a, b, c, d));
                }
            }
        }
    }

    // ---- IPv6, native ranges -----------------------------------------------------------------

    #[test]
    fn v6_unspecified_and_loopback() {
        check(&[
            ("::", B, Some("unspecified")),
            ("::1", B, Some("loopback")),
            // ::2 is IPv4-compatible 0.0.0.2: "this network".
            ("::2", B, Some("unspecified")),
        ]);
    }

    #[test]
    fn v6_link_local() {
        check(&[
            (
                "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("reserved"),
            ),
            ("fe80::", B, Some("link_local")),
            ("fe80::a9fe:a9fe", B, Some("link_local")),
            (
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                B,
                Some("link_local"),
            ),
            ("fec0::", I, Some("site_local")),
        ]);
    }

    #[test]
    fn v6_site_local() {
        check(&[
            ("fec0::", I, Some("site_local")),
            ("fec0::1", I, Some("site_local")),
            (
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("site_local"),
            ),
            ("ff00::", B, Some("multicast")),
        ]);
    }

    #[test]
    fn v6_multicast() {
        check(&[
            ("ff00::", B, Some("multicast")),
            ("ff02::1", B, Some("multicast")),
            ("ff05::1:3", B, Some("multicast")),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                B,
                Some("multicast"),
            ),
        ]);
    }

    #[test]
    fn v6_unique_local_and_metadata() {
        check(&[
            (
                "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("reserved"),
            ),
            ("fc00::", I, Some("unique_local")),
            ("fd12:3456:789a::1", I, Some("unique_local")),
            (
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("unique_local"),
            ),
            ("fe00::", I, Some("reserved")),
            ("fd00:ec2::253", I, Some("unique_local")),
            ("fd00:ec2::254", B, Some("metadata")),
            ("fd00:ec2::255", I, Some("unique_local")),
        ]);
    }

    #[test]
    fn v6_documentation() {
        check(&[
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("2001:db8::", I, Some("documentation")),
            ("2001:db8::1", I, Some("documentation")),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("documentation"),
            ),
            ("2001:db9::", P, None),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("3fff::", I, Some("documentation")),
            (
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("documentation"),
            ),
            ("3fff:1000::", P, None),
        ]);
    }

    /// 100::/64 (RFC 6666) is internal: a blackhole, harmless but never a destination.
    #[test]
    fn v6_discard_only() {
        check(&[
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", I, Some("reserved")),
            ("100::", I, Some("discard")),
            ("100::ffff:ffff:ffff:ffff", I, Some("discard")),
            ("100:0:0:1::", I, Some("reserved")),
        ]);
    }

    /// 2001::/23 IETF protocol assignments: internal, with benchmarking and ORCHID named.
    /// Teredo 2001::/32 inside it is handled by `v6_teredo`.
    #[test]
    fn v6_ietf_protocol_block() {
        check(&[
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("2001:1::", I, Some("ietf_protocol")),
            ("2001:1::1", I, Some("ietf_protocol")),
            (
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("ietf_protocol"),
            ),
            ("2001:200::", P, None),
            (
                "2001:1:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("ietf_protocol"),
            ),
            ("2001:2::", I, Some("benchmarking")),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", I, Some("benchmarking")),
            ("2001:2:1::", I, Some("ietf_protocol")),
            (
                "2001:f:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("ietf_protocol"),
            ),
            ("2001:10::", I, Some("orchid")),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", I, Some("orchid")),
            ("2001:20::", I, Some("orchid")),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", I, Some("orchid")),
            ("2001:30::", I, Some("ietf_protocol")),
        ]);
    }

    #[test]
    fn v6_reserved_outside_global_unicast() {
        check(&[
            (
                "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                I,
                Some("reserved"),
            ),
            ("2000::", P, None),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("4000::", I, Some("reserved")),
            ("5f00::1", I, Some("srv6_sid")),
            ("8000::1", I, Some("reserved")),
            ("::1:0:0:0", I, Some("reserved")),
            ("::fffe:ffff:ffff", I, Some("reserved")),
        ]);
    }

    #[test]
    fn v6_public() {
        check(&[
            ("2606:4700:4700::1111", P, None),
            ("2001:4860:4860::8888", P, None),
            ("2a00:1450:4001:80b::200e", P, None),
            ("2620:4f:8000::1", P, None), // AS112 direct delegation, globally reachable
        ]);
    }

    // ---- IPv6 forms that carry IPv4 ----------------------------------------------------------

    #[test]
    fn v4_mapped() {
        check(&[
            ("::ffff:0.0.0.0", B, Some("unspecified")),
            ("::ffff:127.0.0.1", B, Some("loopback")),
            ("::ffff:169.254.169.254", B, Some("link_local")),
            ("::ffff:224.0.0.1", B, Some("multicast")),
            ("::ffff:240.0.0.1", B, Some("reserved")),
            ("::ffff:255.255.255.255", B, Some("broadcast")),
            ("::ffff:100.100.100.200", B, Some("metadata")),
            ("::ffff:10.0.0.1", I, Some("private")),
            ("::ffff:172.16.0.1", I, Some("private")),
            ("::ffff:192.168.1.1", I, Some("private")),
            ("::ffff:100.64.0.1", I, Some("cgnat")),
            ("::ffff:192.0.2.1", I, Some("documentation")),
            ("::ffff:8.8.8.8", P, None),
            // Just outside ::ffff:0:0/96 on both sides.
            ("::fffe:ffff:ffff", I, Some("reserved")),
            ("::1:0:0:0", I, Some("reserved")),
        ]);
    }

    /// ::ffff:0:0:0/96 (RFC 2765 SIIT) is classified by the IPv4 address it carries.
    #[test]
    fn v4_translated() {
        check(&[
            ("::ffff:0:0:0", B, Some("unspecified")),
            ("::ffff:0:7f00:1", B, Some("loopback")),
            ("::ffff:0:a00:1", I, Some("private")),
            ("::ffff:0:808:808", P, None),
            ("::ffff:0:ffff:ffff", B, Some("broadcast")),
            ("::ffff:1:0:0", I, Some("reserved")),
        ]);
    }

    /// ::a.b.c.d is deprecated and lives in reserved ::/8: internal at least.
    #[test]
    fn v4_compatible() {
        check(&[
            ("::0.0.0.2", B, Some("unspecified")),
            ("::127.0.0.1", B, Some("loopback")),
            ("::169.254.169.254", B, Some("link_local")),
            ("::224.0.0.1", B, Some("multicast")),
            ("::255.255.255.255", B, Some("broadcast")),
            ("::10.0.0.1", I, Some("reserved")),
            ("::8.8.8.8", I, Some("reserved")),
        ]);
    }

    #[test]
    fn v6_nat64() {
        check(&[
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", I, Some("reserved")),
            ("64:ff9b::", B, Some("unspecified")),
            ("64:ff9b::7f00:1", B, Some("loopback")),
            ("64:ff9b::a9fe:a9fe", B, Some("link_local")),
            ("64:ff9b::a00:1", I, Some("private")),
            ("64:ff9b::c0a8:101", I, Some("private")),
            ("64:ff9b::808:808", P, None),
            ("64:ff9b::ffff:ffff", B, Some("broadcast")),
            ("64:ff9b::1:0:0", I, Some("reserved")),
        ]);
    }

    #[test]
    fn v6_nat64_local_use() {
        check(&[
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", I, Some("reserved")),
            ("64:ff9b:1::", B, Some("unspecified")),
            ("64:ff9b:1::7f00:1", B, Some("loopback")),
            ("64:ff9b:1::808:808", I, Some("nat64_local")),
            ("64:ff9b:1::a00:1", I, Some("nat64_local")),
            ("64:ff9b:1:ffff:ffff:ffff:808:808", I, Some("nat64_local")),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", B, Some("broadcast")),
            ("64:ff9b:2::", I, Some("reserved")),
        ]);
    }

    #[test]
    fn v6_6to4() {
        check(&[
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("2002::", B, Some("unspecified")),
            ("2002:7f00:1::1", B, Some("loopback")),
            ("2002:a9fe:a9fe::1", B, Some("link_local")),
            ("2002:e000:1::1", B, Some("multicast")),
            ("2002:a00:1::1", I, Some("private")),
            ("2002:c0a8:101::1", I, Some("private")),
            ("2002:c000:204::1", I, Some("documentation")),
            ("2002:c058:6301::1", I, Some("6to4_relay")),
            ("2002:808:808::1", P, None),
            ("2002:808:808:ffff:ffff:ffff:ffff:ffff", P, None),
            (
                "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                B,
                Some("broadcast"),
            ),
            ("2003::", P, None),
        ]);
    }

    #[test]
    fn v6_teredo() {
        check(&[
            // RFC 4380 §4 example: server 65.54.227.120, client 192.0.2.45 (documentation).
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                I,
                Some("documentation"),
            ),
            // Public server, client 8.8.8.8 (stored inverted as f7f7:f7f7).
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", P, None),
            // Client 127.0.0.1, stored inverted as 80ff:fffe.
            ("2001:0:4136:e378::80ff:fffe", B, Some("loopback")),
            // Client 10.0.0.1 (f5ff:fffe).
            ("2001:0:4136:e378::f5ff:fffe", I, Some("private")),
            // Server 10.0.0.1, public client.
            ("2001:0:a00:1::f7f7:f7f7", I, Some("private")),
            // Server 169.254.169.254, public client.
            ("2001:0:a9fe:a9fe::f7f7:f7f7", B, Some("link_local")),
            // First and last addresses: server 0.0.0.0 / 255.255.255.255.
            ("2001::", B, Some("unspecified")),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", B, Some("broadcast")),
            // Just outside, on either side.
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", P, None),
            ("2001:1::", I, Some("ietf_protocol")),
        ]);
    }

    #[test]
    fn v6_isatap() {
        check(&[
            ("2001:4860::5efe:7f00:1", B, Some("loopback")),
            ("2001:4860::200:5efe:a9fe:a9fe", B, Some("link_local")),
            ("2001:4860::200:5efe:a00:1", I, Some("private")),
            ("2001:4860::5efe:808:808", P, None),
            // Not ISATAP: group bit set, or a different identifier.
            ("2001:4860::100:5efe:7f00:1", P, None),
            ("2001:4860::5eff:7f00:1", P, None),
            // Own class still counts: ULA with an ISATAP identifier carrying a public address.
            ("fd00::5efe:808:808", I, Some("unique_local")),
        ]);
    }

    #[test]
    fn documentation_and_teredo_are_different_prefixes() {
        assert_eq!(reason(ip("2001:db8::1")), Some("documentation"));
        assert!(embedded_ipv4(v6a("2001:db8::1")).is_empty());
        assert_eq!(embedded_ipv4(v6a("2001:0:808:808::f7f7:f6f6")).len(), 2);
    }

    // ---- embedded_ipv4 -----------------------------------------------------------------------

    fn embedded(s: &str) -> Vec<Ipv4Addr> {
        embedded_ipv4(v6a(s)).to_vec()
    }

    fn v4a(s: &str) -> Ipv4Addr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    #[test]
    fn embedded_each_form() {
        let cases: &[(&str, &[&str])] = &[
            ("::ffff:10.1.2.3", &["10.1.2.3"]),
            ("::ffff:0:10.1.2.3", &["10.1.2.3"]),
            ("::10.1.2.3", &["10.1.2.3"]),
            ("::2", &["0.0.0.2"]),
            ("64:ff9b::a01:203", &["10.1.2.3"]),
            ("64:ff9b:1:2:3:4:a01:203", &["10.1.2.3"]),
            ("2002:a01:203:4:5:6:7:8", &["10.1.2.3"]),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                &["65.54.227.120", "192.0.2.45"],
            ),
            ("2001:db8::200:5efe:a01:203", &["10.1.2.3"]),
            ("fe80::5efe:a01:203", &["10.1.2.3"]),
        ];
        for &(addr, want) in cases {
            let want: Vec<Ipv4Addr> = want.iter().map(|s| v4a(s)).collect();
            assert_eq!(embedded(addr), want, "{addr}");
        }
    }

    #[test]
    fn embedded_none() {
        for addr in [
            "::",
            "::1",
            "2001:db8::1",
            "2606:4700:4700::1111",
            "fe80::1",
            "64:ff9b::1:0:0",
            "64:ff9a::a00:1",
            "2003:a01:203::",
            "::1:0:0:0",
            "::fffe:a01:203",
        ] {
            assert_eq!(embedded(addr), Vec::<Ipv4Addr>::new(), "{addr}");
        }
    }

    /// The richest case: Teredo whose client field is also an ISATAP identifier (flags
    /// 0x0200, port 0x5efe). Three addresses, the capacity.
    #[test]
    fn embedded_maximum_is_three() {
        let addr = v6a("2001:0:808:808:200:5efe:f5ff:fffe");
        let got = embedded_ipv4(addr);
        assert_eq!(got.len(), EmbeddedIpv4::CAPACITY);
        assert_eq!(
            &*got,
            &[v4a("8.8.8.8"), v4a("10.0.0.1"), v4a("245.255.255.254")]
        );
        assert_eq!(classify(addr.into()), B); // 245.255.255.254 is in 240/4.
    }

    #[test]
    fn embedded_deduplicates() {
        // Local-use NAT64 with an ISATAP-looking identifier reads the same 32 bits twice.
        assert_eq!(embedded("64:ff9b:1::5efe:a01:203"), vec![v4a("10.1.2.3")]);
        // Teredo whose server equals its client.
        assert_eq!(embedded("2001:0:808:808::f7f7:f7f7"), vec![v4a("8.8.8.8")]);
    }

    #[test]
    fn embedded_ipv4_type_traits() {
        let e = embedded_ipv4(v6a("::ffff:1.2.3.4"));
        assert_eq!(e, embedded_ipv4(v6a("64:ff9b::102:304")));
        assert_ne!(e, embedded_ipv4(v6a("::")));
        assert_eq!((&e).into_iter().count(), 1);
        assert_eq!(e.first(), Some(&v4a("1.2.3.4")));
    }

    // ---- overlaps_always_blocked -------------------------------------------------------------

    fn check_overlaps(cases: &[(&str, Option<&str>)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|&(n, want)| {
                let got = overlaps_always_blocked(&net(n));
                (got != want).then(|| format!("{n}: want {want:?}, got {got:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn overlaps_v4() {
        check_overlaps(&[
            ("0.0.0.0/0", Some("unspecified 0.0.0.0/8")),
            ("0.0.0.0/32", Some("unspecified 0.0.0.0/8")),
            ("10.0.0.0/4", Some("unspecified 0.0.0.0/8")),
            ("10.1.2.3/8", None),
            ("10.0.0.0/8", None),
            ("172.16.0.0/12", None),
            ("192.168.0.0/16", None),
            ("100.64.0.0/10", None),
            ("192.0.2.0/24", None),
            ("8.8.8.8/32", None),
            ("1.0.0.0/8", None),
            ("126.0.0.0/8", None),
            ("126.0.0.0/7", Some("loopback 127.0.0.0/8")),
            ("127.0.0.1/32", Some("loopback 127.0.0.0/8")),
            ("127.1.2.3/8", Some("loopback 127.0.0.0/8")),
            ("128.0.0.0/8", None),
            ("169.254.169.254/32", Some("link-local 169.254.0.0/16")),
            ("169.0.0.0/8", Some("link-local 169.254.0.0/16")),
            ("169.255.0.0/16", None),
            ("128.0.0.0/1", Some("link-local 169.254.0.0/16")),
            ("224.0.0.1/32", Some("multicast 224.0.0.0/4")),
            ("192.0.0.0/2", Some("multicast 224.0.0.0/4")),
            ("223.0.0.0/8", None),
            ("240.0.0.0/4", Some("reserved 240.0.0.0/4")),
            ("255.255.255.0/24", Some("reserved 240.0.0.0/4")),
            ("255.255.255.255/32", Some("broadcast 255.255.255.255/32")),
        ]);
    }

    #[test]
    fn overlaps_metadata_only_when_targeted() {
        check_overlaps(&[
            (
                "100.100.100.200/32",
                Some("Alibaba Cloud metadata 100.100.100.200/32"),
            ),
            ("100.100.100.0/24", None),
            (
                "168.63.129.16/32",
                Some("Azure WireServer 168.63.129.16/32"),
            ),
            ("168.63.0.0/16", None),
            (
                "fd00:ec2::254/128",
                Some("AWS instance metadata fd00:ec2::254/128"),
            ),
            ("fd00:ec2::/64", None),
            ("fd00::/8", None),
            ("fc00::/7", None),
        ]);
    }

    #[test]
    fn overlaps_v6_native() {
        check_overlaps(&[
            ("::/0", Some("unspecified ::/128")),
            ("::1/0", Some("unspecified ::/128")),
            ("::/128", Some("unspecified ::/128")),
            ("::1/128", Some("loopback ::1/128")),
            ("::/127", Some("unspecified ::/128")),
            ("fe80::/10", Some("link-local fe80::/10")),
            ("fe80::1/128", Some("link-local fe80::/10")),
            ("fe80::/64", Some("link-local fe80::/10")),
            ("fe00::/7", Some("link-local fe80::/10")),
            ("ff00::/8", Some("multicast ff00::/8")),
            ("ff02::1/128", Some("multicast ff00::/8")),
            ("8000::/1", Some("link-local fe80::/10")),
            ("fec0::/10", None),
            ("2001:db8::/32", None),
            ("2001:db8::/64", None), // contains ISATAP identifiers: left to classify()
            ("2606:4700::/32", None),
            ("100::/64", None),
        ]);
    }

    #[test]
    fn overlaps_v6_embedded() {
        check_overlaps(&[
            (
                "::ffff:0:0/96",
                Some("unspecified 0.0.0.0/8 via IPv4-mapped ::ffff:0:0/96"),
            ),
            ("::ffff:10.0.0.0/104", None),
            (
                "::ffff:127.0.0.0/104",
                Some("loopback 127.0.0.0/8 via IPv4-mapped ::ffff:0:0/96"),
            ),
            (
                "::ffff:127.0.0.1/128",
                Some("loopback 127.0.0.0/8 via IPv4-mapped ::ffff:0:0/96"),
            ),
            (
                "::ffff:126.0.0.0/103",
                Some("loopback 127.0.0.0/8 via IPv4-mapped ::ffff:0:0/96"),
            ),
            (
                "::ffff:169.254.0.0/112",
                Some("link-local 169.254.0.0/16 via IPv4-mapped ::ffff:0:0/96"),
            ),
            (
                "::ffff:255.255.255.255/128",
                Some("broadcast 255.255.255.255/32 via IPv4-mapped ::ffff:0:0/96"),
            ),
            (
                "::ffff:0:0:0/96",
                Some("unspecified 0.0.0.0/8 via IPv4-translated ::ffff:0:0:0/96"),
            ),
            ("::ffff:0:a00:0/104", None),
            (
                "::ffff:0:7f00:0/104",
                Some("loopback 127.0.0.0/8 via IPv4-translated ::ffff:0:0:0/96"),
            ),
            ("::/96", Some("unspecified ::/128")),
            ("::a00:0/104", None),
            (
                "::7f00:0/104",
                Some("loopback 127.0.0.0/8 via IPv4-compatible ::/96"),
            ),
            (
                "64:ff9b::/96",
                Some("unspecified 0.0.0.0/8 via NAT64 64:ff9b::/96"),
            ),
            ("64:ff9b::a00:0/104", None),
            (
                "64:ff9b::7f00:0/104",
                Some("loopback 127.0.0.0/8 via NAT64 64:ff9b::/96"),
            ),
            (
                "64:ff9b::e000:0/100",
                Some("multicast 224.0.0.0/4 via NAT64 64:ff9b::/96"),
            ),
            (
                "64:ff9b::/32",
                Some("unspecified 0.0.0.0/8 via NAT64 64:ff9b::/96"),
            ),
            (
                "64:ff9b:1::/48",
                Some("unspecified 0.0.0.0/8 via local-use NAT64 64:ff9b:1::/48"),
            ),
            ("64:ff9b:1::a00:0/104", None),
            (
                "64:ff9b:1::a9fe:0/112",
                Some("link-local 169.254.0.0/16 via local-use NAT64 64:ff9b:1::/48"),
            ),
            (
                "2002::/16",
                Some("unspecified 0.0.0.0/8 via 6to4 2002::/16"),
            ),
            (
                "2002::/15",
                Some("unspecified 0.0.0.0/8 via 6to4 2002::/16"),
            ),
            ("2002:a00::/24", None),
            ("2002:a00:1::/48", None),
            ("2002:808:808::/48", None),
            (
                "2002:7f00::/24",
                Some("loopback 127.0.0.0/8 via 6to4 2002::/16"),
            ),
            (
                "2002:a9fe::/32",
                Some("link-local 169.254.0.0/16 via 6to4 2002::/16"),
            ),
            (
                "2002:e000::/20",
                Some("multicast 224.0.0.0/4 via 6to4 2002::/16"),
            ),
            (
                "2001::/32",
                Some("unspecified 0.0.0.0/8 via Teredo 2001::/32"),
            ),
            (
                "2001::/23",
                Some("unspecified 0.0.0.0/8 via Teredo 2001::/32"),
            ),
            (
                "2001:0:808:808::/64",
                Some("unspecified 0.0.0.0/8 via Teredo 2001::/32"),
            ),
            (
                "2001:0:808:808::/96",
                Some("unspecified 0.0.0.0/8 via Teredo 2001::/32"),
            ),
            ("2001:0:808:808::f7f7:f7f7/128", None),
            ("2001:0:808:808::f7f7:0/112", None),
            (
                "2001:0:808:808::80ff:fffe/128",
                Some("loopback 127.0.0.0/8 via Teredo 2001::/32"),
            ),
            (
                "2001:0:7f00:1::f7f7:f7f7/128",
                Some("loopback 127.0.0.0/8 via Teredo 2001::/32"),
            ),
            ("2001:1::/32", None),
        ]);
    }

    #[test]
    fn overlaps_whole_space_through_embeddings() {
        // 2000::/3 contains no native always-blocked range, only the 6to4 and Teredo prefixes.
        assert!(overlaps_always_blocked(&net("2000::/3")).is_some_and(|s| s.contains(" via ")));
    }

    // ---- covered_by --------------------------------------------------------------------------

    #[test]
    fn covered_by_v4_and_mapped() {
        let nets = [net("10.86.8.0/24")];
        assert!(covered_by(ip("10.86.8.5"), &nets));
        assert!(covered_by(ip("10.86.8.0"), &nets));
        assert!(covered_by(ip("10.86.8.255"), &nets));
        assert!(!covered_by(ip("10.86.7.255"), &nets));
        assert!(!covered_by(ip("10.86.9.0"), &nets));
        assert!(covered_by(ip("::ffff:10.86.8.5"), &nets));
        assert!(!covered_by(ip("::ffff:10.86.9.5"), &nets));
        // Other carriers are different hosts (a gateway, a tunnel), not 10.86.8.5 itself.
        assert!(!covered_by(ip("::10.86.8.5"), &nets));
        assert!(!covered_by(ip("::ffff:0:10.86.8.5"), &nets));
        assert!(!covered_by(ip("64:ff9b::a56:805"), &nets));
        assert!(!covered_by(ip("2002:a56:805::1"), &nets));
        assert!(!covered_by(ip("2001:0:a56:805::f7f7:f7f7"), &nets));
    }

    #[test]
    fn covered_by_v6_nets() {
        let nets = [net("fd00:1::/32"), net("::ffff:10.86.8.0/120")];
        assert!(covered_by(ip("fd00:1::5"), &nets));
        assert!(covered_by(ip("fd00:1:ffff::5"), &nets));
        assert!(!covered_by(ip("fd00:2::5"), &nets));
        assert!(covered_by(ip("::ffff:10.86.8.5"), &nets));
        assert!(covered_by(ip("10.86.8.5"), &nets));
        assert!(!covered_by(ip("10.86.9.5"), &nets));
        // A non-mapped IPv6 net never covers IPv4, even ::/0.
        assert!(!covered_by(ip("10.86.8.5"), &[net("::/0")]));
        assert!(!covered_by(ip("10.86.8.5"), &[net("::/96")]));
        // And an IPv4 net never covers native IPv6.
        assert!(!covered_by(ip("fd00:1::5"), &[net("0.0.0.0/0")]));
    }

    #[test]
    fn covered_by_edge_cases() {
        assert!(!covered_by(ip("10.0.0.1"), &[]));
        assert!(covered_by(
            ip("10.0.0.1"),
            &[net("192.168.0.0/16"), net("10.0.0.1/32")]
        ));
        // A non-truncated entry means its network.
        assert!(covered_by(ip("10.0.0.200"), &[net("10.0.0.77/24")]));
        assert!(covered_by(ip("::ffff:10.0.0.200"), &[net("10.0.0.77/24")]));
    }

    // ---- The tables themselves ---------------------------------------------------------------

    fn all_v4_rows() -> impl Iterator<Item = &'static Range<Ipv4Net>> {
        V4_ALWAYS_BLOCKED
            .iter()
            .chain(&V4_METADATA)
            .chain(&V4_INTERNAL)
    }

    fn all_v6_rows() -> impl Iterator<Item = &'static Range<Ipv6Net>> {
        V6_ALWAYS_BLOCKED
            .iter()
            .chain(&V6_METADATA)
            .chain(&V6_INTERNAL)
    }

    fn label_cidr(label: &str) -> IpNet {
        net(label.rsplit(' ').next().unwrap_or_default())
    }

    /// A typo like `172.16.0.0/8` would silently widen or narrow a range; host bits set in a
    /// row, or a label that disagrees with its row, fail here.
    #[test]
    fn tables_are_well_formed() {
        for r in all_v4_rows() {
            assert_eq!(r.net, r.net.trunc(), "{} has host bits", r.label);
            assert_eq!(label_cidr(r.label), IpNet::V4(r.net), "{}", r.label);
        }
        for r in all_v6_rows() {
            assert_eq!(r.net, r.net.trunc(), "{} has host bits", r.label);
            assert_eq!(label_cidr(r.label), IpNet::V6(r.net), "{}", r.label);
        }
        for e in &EMBEDDINGS {
            assert_eq!(e.net, e.net.trunc(), "{} has host bits", e.label);
            assert_eq!(label_cidr(e.label), IpNet::V6(e.net), "{}", e.label);
        }
        let v4: Vec<_> = all_v4_rows().map(|r| r.net).collect();
        let v6: Vec<_> = all_v6_rows().map(|r| r.net).collect();
        for (i, a) in v4.iter().enumerate() {
            assert!(!v4[i + 1..].contains(a), "duplicate row {a}");
        }
        for (i, a) in v6.iter().enumerate() {
            assert!(!v6[i + 1..].contains(a), "duplicate row {a}");
        }
    }

    #[test]
    fn metadata_rows_are_single_hosts() {
        assert!(V4_METADATA.iter().all(|r| r.net.prefix_len() == 32));
        assert!(V6_METADATA.iter().all(|r| r.net.prefix_len() == 128));
    }

    #[test]
    fn embeddings_are_disjoint_and_layouts_fit() {
        for (i, a) in EMBEDDINGS.iter().enumerate() {
            for b in &EMBEDDINGS[i + 1..] {
                assert!(
                    !a.net.contains(&b.net) && !b.net.contains(&a.net),
                    "{} / {}",
                    a.label,
                    b.label
                );
            }
            // Every field lies after the prefix, so the prefix never fixes carried bits.
            for &(start, _) in a.layout.fields() {
                assert!(start >= a.net.prefix_len() && start <= 96, "{}", a.label);
            }
        }
    }

    #[test]
    fn via_labels_match_the_tables() {
        for (e, row) in EMBEDDINGS.iter().zip(&VIA_LABELS) {
            for (r, label) in V4_ALWAYS_BLOCKED.iter().zip(row) {
                assert_eq!(*label, format!("{} via {}", r.label, e.label));
            }
        }
    }

    /// The IPv4 always-blocked table must agree with std's own predicates.
    #[test]
    fn agrees_with_std_predicates() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
        ] {
            let v: Ipv4Addr = v4a(a);
            let class = classify(v.into());
            if v.is_unspecified()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_multicast()
                || v.is_broadcast()
            {
                assert_eq!(class, B, "{a}");
            }
            if v.is_private() || v.is_documentation() {
                assert!(class >= I, "{a}");
            }
        }
    }

    // ---- Properties --------------------------------------------------------------------------

    fn mapped(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(a.to_ipv6_mapped())
    }

    fn nat64(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            (0x0064_ff9b_u128 << 96) | u128::from(u32::from(a)),
        ))
    }

    fn six_to_four(a: Ipv4Addr, rest: u128) -> IpAddr {
        let bits =
            (0x2002_u128 << 112) | (u128::from(u32::from(a)) << 80) | (rest & ((1 << 80) - 1));
        IpAddr::V6(Ipv6Addr::from(bits))
    }

    fn teredo(server: Ipv4Addr, flags_port: u32, client: Ipv4Addr) -> IpAddr {
        let bits = (0x2001_0000_u128 << 96)
            | (u128::from(u32::from(server)) << 64)
            | (u128::from(flags_port) << 32)
            | u128::from(!u32::from(client));
        IpAddr::V6(Ipv6Addr::from(bits))
    }

    /// IPv6 addresses biased toward the prefixes that matter, with random low bits.
    fn interesting_v6() -> impl Strategy<Value = Ipv6Addr> {
        let bases: Vec<(u128, u32)> = EMBEDDINGS
            .iter()
            .map(|e| (u128::from(e.net.network()), u32::from(e.net.prefix_len())))
            .chain(
                all_v6_rows().map(|r| (u128::from(r.net.network()), u32::from(r.net.prefix_len()))),
            )
            .chain([(0, 0), (0, 64), (0x2001_0db8_u128 << 96, 64)])
            .collect();
        prop_oneof![
            any::<u128>().prop_map(Ipv6Addr::from),
            (proptest::sample::select(bases), any::<u128>(), 0u32..=128).prop_map(
                |((base, len), rnd, extra)| {
                    // Keep the base's prefix, randomise the rest (sometimes only the low bits).
                    let keep = len.max(extra);
                    let mask = if keep == 0 {
                        0
                    } else {
                        u128::MAX << (128 - keep)
                    };
                    Ipv6Addr::from((base & mask) | (rnd & !mask))
                }
            ),
        ]
    }

    /// Always-blocked IPv4 addresses: 0/8, 127/8, 169.254/16, and 224/3 (multicast, reserved,
    /// broadcast).
    fn blocked_v4() -> impl Strategy<Value = Ipv4Addr> {
        let rows: [(u32, u32); 4] = [
            (0, 8),
            (0x7f00_0000, 8),
            (0xa9fe_0000, 16),
            (0xe000_0000, 3),
        ];
        (proptest::sample::select(rows.to_vec()), any::<u32>())
            .prop_map(|((base, len), rnd)| Ipv4Addr::from(base | (rnd >> len)))
    }

    /// Always-blocked IPv6 addresses in every form, built without relying on ISATAP.
    fn blocked_v6() -> impl Strategy<Value = Ipv6Addr> {
        let v6 = |a: IpAddr| match a {
            IpAddr::V6(a) => a,
            IpAddr::V4(a) => a.to_ipv6_mapped(),
        };
        let low = |prefix: u128, a: Ipv4Addr| Ipv6Addr::from(prefix | u128::from(u32::from(a)));
        prop_oneof![
            blocked_v4().prop_map(move |a| v6(mapped(a))),
            blocked_v4().prop_map(move |a| v6(nat64(a))),
            blocked_v4().prop_map(move |a| low(0xffff_u128 << 48, a)),
            // IPv4-compatible; 0.0.0.0 and 0.0.0.1 give :: and ::1, blocked natively.
            blocked_v4().prop_map(move |a| low(0, a)),
            (blocked_v4(), any::<u128>()).prop_map(move |(a, rnd)| {
                low(
                    (0x0064_ff9b_0001_u128 << 80) | (rnd & (((1 << 48) - 1) << 32)),
                    a,
                )
            }),
            (blocked_v4(), any::<u128>()).prop_map(move |(a, rnd)| v6(six_to_four(a, rnd))),
            (blocked_v4(), any::<u32>(), any::<u32>()).prop_map(move |(a, fp, c)| v6(teredo(
                a,
                fp,
                Ipv4Addr::from(c)
            ))),
            (any::<u32>(), any::<u32>(), blocked_v4()).prop_map(move |(s, fp, a)| v6(teredo(
                Ipv4Addr::from(s),
                fp,
                a
            ))),
            any::<u128>().prop_map(|r| Ipv6Addr::from((0xfe80_u128 << 112) | (r >> 10))),
            any::<u128>().prop_map(|r| Ipv6Addr::from((0xff00_u128 << 112) | (r >> 8))),
            Just(Ipv6Addr::UNSPECIFIED),
            Just(Ipv6Addr::LOCALHOST),
        ]
    }

    fn any_net(addr: IpAddr, len: u8) -> IpNet {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        IpNet::new(addr, len % (max + 1)).unwrap().trunc()
    }

    /// An address inside `n`: its network with the host bits taken from `rnd`.
    fn host_in(n: IpNet, rnd: u128) -> IpAddr {
        match n {
            IpNet::V4(n) => {
                let host = u32::from(n.hostmask()) & (rnd as u32);
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = u128::from(n.hostmask()) & rnd;
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn prop_v4_matches_reference(bits in any::<u32>()) {
            let a = Ipv4Addr::from(bits);
            prop_assert_eq!(classify(a.into()), reference_v4(a));
        }

        #[test]
        fn prop_never_panics_and_reason_iff_not_public(bits in any::<u128>(), v4 in any::<u32>()) {
            for addr in [IpAddr::V6(Ipv6Addr::from(bits)), IpAddr::V4(Ipv4Addr::from(v4))] {
                let (class, why) = classify_with_reason(addr);
                prop_assert_eq!(why.is_none(), class == P, "{}", addr);
                prop_assert_eq!(classify(addr), class);
                prop_assert_eq!(reason(addr), why);
            }
        }

        #[test]
        fn prop_reason_iff_not_public_interesting(addr in interesting_v6()) {
            let (class, why) = classify_with_reason(addr.into());
            prop_assert_eq!(why.is_none(), class == P, "{}", addr);
        }

        #[test]
        fn prop_mapped_and_nat64_equal_v4(bits in any::<u32>()) {
            let a = Ipv4Addr::from(bits);
            let want = classify_with_reason(a.into());
            prop_assert_eq!(classify_with_reason(mapped(a)), want, "mapped {}", a);
            prop_assert_eq!(classify_with_reason(nat64(a)), want, "nat64 {}", a);
            let translated = IpAddr::V6(Ipv6Addr::from((0xffff_u128 << 48) | u128::from(bits)));
            prop_assert_eq!(classify_with_reason(translated), want, "translated {}", a);
        }

        #[test]
        fn prop_carriers_at_least_as_severe(
            bits in any::<u32>(), other in any::<u32>(), rest in any::<u128>(), fp in any::<u32>()
        ) {
            let a = Ipv4Addr::from(bits);
            let b = Ipv4Addr::from(other);
            let ca = classify(a.into());
            let cb = classify(b.into());
            prop_assert!(classify(six_to_four(a, rest)) >= ca, "6to4 {}", a);
            let t = teredo(a, fp, b);
            prop_assert!(classify(t) >= ca.max(cb), "teredo {} {}", a, b);
            prop_assert!(classify(teredo(b, fp, a)) >= ca.max(cb), "teredo {} {}", b, a);
            if bits > 1 {
                let compat = IpAddr::V6(Ipv6Addr::from(u128::from(bits)));
                prop_assert!(classify(compat) >= ca.max(I), "compat {}", a);
            }
            // 64:ff9b:1::/48 with random bits 48..96 and the IPv4 address in the last 32.
            let middle = rest & (((1_u128 << 48) - 1) << 32);
            let local = (0x0064_ff9b_0001_u128 << 80) | middle | u128::from(bits);
            let local = IpAddr::V6(Ipv6Addr::from(local));
            prop_assert!(classify(local) >= ca.max(I), "local nat64 {}", local);
            // ISATAP under a public prefix.
            let isatap = (0x2001_4860_u128 << 96) | (0x5efe_u128 << 32) | u128::from(bits);
            let isatap = IpAddr::V6(Ipv6Addr::from(isatap));
            prop_assert!(classify(isatap) >= ca, "isatap {}", isatap);
        }

        #[test]
        fn prop_embedded_round_trip(
            bits in any::<u32>(), other in any::<u32>(), rest in any::<u128>(), fp in any::<u32>()
        ) {
            let a = Ipv4Addr::from(bits);
            let b = Ipv4Addr::from(other);
            let IpAddr::V6(m) = mapped(a) else { unreachable!() };
            prop_assert_eq!(&*embedded_ipv4(m), &[a]);
            let IpAddr::V6(n) = nat64(a) else { unreachable!() };
            prop_assert_eq!(&*embedded_ipv4(n), &[a]);
            let IpAddr::V6(s) = six_to_four(a, rest) else { unreachable!() };
            prop_assert!(embedded_ipv4(s).contains(&a));
            let IpAddr::V6(t) = teredo(a, fp, b) else { unreachable!() };
            let e = embedded_ipv4(t);
            prop_assert!(e.contains(&a) && e.contains(&b));
        }

        #[test]
        fn prop_embedded_never_overflows(addr in interesting_v6()) {
            prop_assert!(embedded_ipv4(addr).len() <= EmbeddedIpv4::CAPACITY);
        }

        /// If validation accepts an allowed_ips entry, no address in it is always blocked,
        /// apart from the two things left to dial time on purpose (metadata hosts, ISATAP).
        #[test]
        fn prop_accepted_v6_nets_hold_no_blocked_address(
            base in interesting_v6(), len in any::<u8>(), rnd in any::<u128>()
        ) {
            let n = any_net(IpAddr::V6(base), len);
            let host = host_in(n, rnd);
            let IpAddr::V6(h) = host else { unreachable!() };
            let (class, why) = classify_with_reason(host);
            if class == B && why != Some("metadata") && !is_isatap(h) {
                prop_assert!(
                    overlaps_always_blocked(&n).is_some(),
                    "{} accepted but holds {} ({:?})", n, host, why
                );
            }
        }

        #[test]
        fn prop_accepted_v4_nets_hold_no_blocked_address(
            base in any::<u32>(), len in any::<u8>(), rnd in any::<u32>()
        ) {
            let n = any_net(IpAddr::V4(Ipv4Addr::from(base)), len);
            let host = host_in(n, u128::from(rnd));
            let (class, why) = classify_with_reason(host);
            if class == B && why != Some("metadata") {
                prop_assert!(
                    overlaps_always_blocked(&n).is_some(),
                    "{} accepted but holds {}", n, host
                );
            }
        }

        /// The converse for single hosts: a /32 or /128 is refused exactly when the host is
        /// always blocked (ISATAP aside, which only classify() sees).
        #[test]
        fn prop_single_host_nets_refused_iff_blocked(addr in interesting_v6(), v4 in any::<u32>()) {
            let v4 = IpAddr::V4(Ipv4Addr::from(v4));
            let refused = overlaps_always_blocked(&IpNet::from(v4)).is_some();
            prop_assert_eq!(refused, classify(v4) == B, "{}", v4);
            if !is_isatap(addr) {
                let v6 = IpAddr::V6(addr);
                let refused = overlaps_always_blocked(&IpNet::from(v6)).is_some();
                prop_assert_eq!(refused, classify(v6) == B, "{}", v6);
            }
        }

        #[test]
        fn prop_covered_by_v4_nets(base in any::<u32>(), len in 0u8..=32, probe in any::<u32>()) {
            let n = any_net(IpAddr::V4(Ipv4Addr::from(base)), len);
            let IpNet::V4(n4) = n else { unreachable!() };
            let a = Ipv4Addr::from(probe);
            let inside = n4.contains(&a);
            prop_assert_eq!(covered_by(a.into(), &[n]), inside);
            prop_assert_eq!(covered_by(mapped(a), &[n]), inside);
            prop_assert!(!covered_by(nat64(a), &[n]));
            let mapped_net = Ipv6Net::new(n4.network().to_ipv6_mapped(), n4.prefix_len() + 96);
            let mapped_net = IpNet::V6(mapped_net.unwrap());
            prop_assert_eq!(covered_by(a.into(), &[mapped_net]), inside);
        }

        #[test]
        fn prop_std_predicates_v6(addr in interesting_v6()) {
            let class = classify(addr.into());
            if addr.is_unspecified()
                || addr.is_loopback()
                || addr.is_multicast()
                || addr.is_unicast_link_local()
            {
                prop_assert_eq!(class, B, "{}", addr);
            }
            if addr.is_unique_local() {
                prop_assert!(class >= I, "{}", addr);
            }
        }
    }

    proptest! {
        // Each case checks every prefix length, so fewer cases.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Soundness of validation, from the other end: every net around an always-blocked
        /// address, at every prefix length, is refused.
        #[test]
        fn prop_every_net_around_a_blocked_v6_is_refused(h in blocked_v6()) {
            prop_assert_eq!(classify(h.into()), B, "{}", h);
            for len in 0..=128u8 {
                let n = IpNet::V6(Ipv6Net::new(h, len).unwrap().trunc());
                prop_assert!(overlaps_always_blocked(&n).is_some(), "{} holds {}", n, h);
            }
        }

        #[test]
        fn prop_every_net_around_a_blocked_v4_is_refused(h in blocked_v4()) {
            prop_assert_eq!(classify(h.into()), B, "{}", h);
            for len in 0..=32u8 {
                let n = IpNet::V4(Ipv4Net::new(h, len).unwrap().trunc());
                prop_assert!(overlaps_always_blocked(&n).is_some(), "{} holds {}", n, h);
            }
        }
    }
}
