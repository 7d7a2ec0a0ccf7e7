//! The wall's decisions as pure functions: which destinations are loopback, which sockets are plain.
//!
//! They take plain integers (as the kernel hands them to the programs) so they compile and are
//! unit-tested on the host as well as in the eBPF object.

/// `SOCK_STREAM` from `<linux/net.h>`.
pub const SOCK_STREAM: u32 = 1;
/// `SOCK_DGRAM` from `<linux/net.h>`.
pub const SOCK_DGRAM: u32 = 2;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u32 = 17;

/// Whether an IPv4 address (its four bytes in network order) is in 127.0.0.0/8.
#[inline(always)]
pub fn ipv4_is_loopback(addr: [u8; 4]) -> bool {
    addr[0] == 127
}

/// Whether an IPv6 address (its sixteen bytes in network order) is loopback: `::1`, or an
/// IPv4-mapped address (`::ffff:0:0/96`) whose IPv4 part is loopback (`::ffff:127.0.0.0/104`).
///
/// Every other IPv4-mapped address is not loopback: a dual-stack socket connecting to
/// `::ffff:10.0.0.1` reaches 10.0.0.1.
#[inline(always)]
pub fn ipv6_is_loopback(addr: [u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    let is_v6_loopback = addr[10] == 0
        && addr[11] == 0
        && addr[12] == 0
        && addr[13] == 0
        && addr[14] == 0
        && addr[15] == 1;
    let is_mapped_v4_loopback = addr[10] == 0xff && addr[11] == 0xff && addr[12] == 127;
    is_v6_loopback || is_mapped_v4_loopback
}

/// Whether an `AF_INET`/`AF_INET6` socket of this type and protocol may be created: plain TCP
/// (`SOCK_STREAM` with protocol 0 or `IPPROTO_TCP`) and plain UDP (`SOCK_DGRAM` with protocol 0
/// or `IPPROTO_UDP`) only.
///
/// Refused: `SOCK_RAW`, ICMP "ping sockets" (`SOCK_DGRAM` + `IPPROTO_ICMP`/`IPPROTO_ICMPV6`),
/// SCTP, MPTCP, UDP-Lite, `SOCK_SEQPACKET`, and anything added to the kernel later.
#[inline(always)]
pub fn socket_is_allowed(sock_type: u32, protocol: u32) -> bool {
    match sock_type {
        SOCK_STREAM => protocol == 0 || protocol == IPPROTO_TCP,
        SOCK_DGRAM => protocol == 0 || protocol == IPPROTO_UDP,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_RAW: u32 = 3;
    const SOCK_SEQPACKET: u32 = 5;
    const IPPROTO_ICMP: u32 = 1;
    const IPPROTO_ICMPV6: u32 = 58;
    const IPPROTO_SCTP: u32 = 132;
    const IPPROTO_UDPLITE: u32 = 136;
    const IPPROTO_MPTCP: u32 = 262;

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn ipv4_loopback_is_all_of_127_slash_8() {
        assert!(ipv4_is_loopback([127, 0, 0, 1]));
        assert!(ipv4_is_loopback([127, 255, 255, 254]));
        for addr in [
            [10, 0, 0, 1],
            [0, 0, 0, 0],
            [128, 0, 0, 1],
            [126, 255, 255, 255],
        ] {
            assert!(!ipv4_is_loopback(addr), "{addr:?}");
        }
    }

    #[test]
    fn ipv6_loopback_is_only_one_and_mapped_127() {
        assert!(ipv6_is_loopback(v6("::1")));
        assert!(ipv6_is_loopback(v6("::ffff:127.0.0.1")));
        assert!(ipv6_is_loopback(v6("::ffff:127.255.0.9")));
        for addr in [
            "::",
            "::2",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:128.0.0.1",
            "::ffff:0.0.0.0",
            "::fffe:127.0.0.1",
            "0:0:0:0:1:ffff:127.0.0.1",
            "1::1",
            "2001:db8::1",
            "fe80::1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!ipv6_is_loopback(v6(addr)), "{addr}");
        }
    }

    #[test]
    fn only_plain_tcp_and_udp_sockets_are_allowed() {
        assert!(socket_is_allowed(SOCK_STREAM, 0));
        assert!(socket_is_allowed(SOCK_STREAM, IPPROTO_TCP));
        assert!(socket_is_allowed(SOCK_DGRAM, 0));
        assert!(socket_is_allowed(SOCK_DGRAM, IPPROTO_UDP));
        for (ty, proto) in [
            (SOCK_RAW, 0),
            (SOCK_RAW, IPPROTO_ICMP),
            (SOCK_RAW, IPPROTO_TCP),
            (SOCK_DGRAM, IPPROTO_ICMP),
            (SOCK_DGRAM, IPPROTO_ICMPV6),
            (SOCK_DGRAM, IPPROTO_UDPLITE),
            (SOCK_DGRAM, IPPROTO_TCP),
            (SOCK_STREAM, IPPROTO_UDP),
            (SOCK_STREAM, IPPROTO_SCTP),
            (SOCK_STREAM, IPPROTO_MPTCP),
            (SOCK_SEQPACKET, 0),
            (SOCK_SEQPACKET, IPPROTO_SCTP),
            (0, 0),
            (10, 0),
        ] {
            assert!(!socket_is_allowed(ty, proto), "type {ty} protocol {proto}");
        }
    }
}
