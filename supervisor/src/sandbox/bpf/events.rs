//! What the eBPF wall reports: each refused operation as a [`BypassAttempt`] for the audit log.
//!
//! The kernel writes a fixed `#[repr(C)]` [`BypassEvent`] (shared with the programs through
//! `tollgate-ebpf-common`); this module decodes one into named, serialisable fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tollgate_ebpf_common::{BypassEvent, KIND_CONNECT, KIND_SENDMSG, KIND_SOCK_CREATE};

/// One operation the eBPF wall refused inside an execution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BypassAttempt {
    /// Which hook refused it (`hook` in the audit record).
    #[serde(rename = "hook")]
    pub kind: BypassKind,
    /// Process id (as seen from the host's pid namespace).
    pub pid: u32,
    /// Thread id (as seen from the host's pid namespace).
    pub tid: u32,
    /// The task's command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Address family of the socket.
    pub family: AddressFamily,
    /// Where it tried to go; `None` for a refused `socket(2)`.
    pub destination: Option<SocketAddr>,
    /// Socket type.
    pub sock_type: SocketType,
    /// Socket protocol.
    pub protocol: Protocol,
    /// The cgroup the task ran in.
    pub cgroup_id: u64,
}

/// The hook that refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BypassKind {
    /// `connect(2)` to a destination other than loopback.
    Connect,
    /// `sendto(2)`/`sendmsg(2)` with an explicit destination other than loopback.
    Sendmsg,
    /// `socket(2)` of a type or protocol other than plain TCP/UDP.
    SockCreate,
    /// A kind this supervisor does not know (object and loader out of step).
    Other(u16),
}

/// Socket address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressFamily {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// Any other `AF_*` number.
    Other(u16),
}

/// Socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Dgram,
    /// `SOCK_RAW`.
    Raw,
    /// `SOCK_SEQPACKET`.
    Seqpacket,
    /// Any other `SOCK_*` number.
    Other(u32),
}

/// Socket protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// 0: the caller left it to the kernel's default for the type.
    Unspecified,
    /// `IPPROTO_ICMP`.
    Icmp,
    /// `IPPROTO_TCP`.
    Tcp,
    /// `IPPROTO_UDP`.
    Udp,
    /// `IPPROTO_ICMPV6`.
    Icmpv6,
    /// `IPPROTO_SCTP`.
    Sctp,
    /// Any other `IPPROTO_*` number.
    Other(u32),
}

impl BypassAttempt {
    /// Decodes one ring-buffer record; `None` when it is too short to be an event.
    pub(crate) fn from_record(record: &[u8]) -> Option<Self> {
        if record.len() < size_of::<BypassEvent>() {
            return None;
        }
        // SAFETY: the record holds at least `size_of::<BypassEvent>()` bytes, and every bit
        // pattern is a valid `BypassEvent` (plain integers, no padding).
        let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<BypassEvent>()) };
        Some(Self::from_event(&event))
    }

    /// Names the fields of a kernel event.
    pub fn from_event(event: &BypassEvent) -> Self {
        let family = AddressFamily::from_raw(event.family);
        let kind = BypassKind::from_raw(event.kind);
        let ip = match family {
            AddressFamily::Inet => {
                let [a, b, c, d, ..] = event.addr;
                Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            }
            AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::from(event.addr))),
            AddressFamily::Other(_) => None,
        };
        let destination = match kind {
            BypassKind::Connect | BypassKind::Sendmsg => {
                ip.map(|ip| SocketAddr::new(ip, event.port))
            }
            BypassKind::SockCreate | BypassKind::Other(_) => None,
        };
        let comm_len = event
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.comm.len());
        Self {
            kind,
            pid: event.tgid,
            tid: event.pid,
            comm: String::from_utf8_lossy(&event.comm[..comm_len]).into_owned(),
            family,
            destination,
            sock_type: SocketType::from_raw(event.sock_type),
            protocol: Protocol::from_raw(event.protocol),
            cgroup_id: event.cgroup_id,
        }
    }
}

impl BypassKind {
    fn from_raw(kind: u16) -> Self {
        match kind {
            KIND_CONNECT => Self::Connect,
            KIND_SENDMSG => Self::Sendmsg,
            KIND_SOCK_CREATE => Self::SockCreate,
            other => Self::Other(other),
        }
    }
}

impl AddressFamily {
    fn from_raw(family: u16) -> Self {
        match i32::from(family) {
            libc::AF_INET => Self::Inet,
            libc::AF_INET6 => Self::Inet6,
            _ => Self::Other(family),
        }
    }
}

impl SocketType {
    fn from_raw(sock_type: u32) -> Self {
        match i32::try_from(sock_type) {
            Ok(libc::SOCK_STREAM) => Self::Stream,
            Ok(libc::SOCK_DGRAM) => Self::Dgram,
            Ok(libc::SOCK_RAW) => Self::Raw,
            Ok(libc::SOCK_SEQPACKET) => Self::Seqpacket,
            _ => Self::Other(sock_type),
        }
    }
}

impl Protocol {
    fn from_raw(protocol: u32) -> Self {
        match i32::try_from(protocol) {
            Ok(0) => Self::Unspecified,
            Ok(libc::IPPROTO_ICMP) => Self::Icmp,
            Ok(libc::IPPROTO_TCP) => Self::Tcp,
            Ok(libc::IPPROTO_UDP) => Self::Udp,
            Ok(libc::IPPROTO_ICMPV6) => Self::Icmpv6,
            Ok(libc::IPPROTO_SCTP) => Self::Sctp,
            _ => Self::Other(protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, family: u16, addr: [u8; 16], port: u16) -> BypassEvent {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        BypassEvent {
            cgroup_id: 7,
            tgid: 100,
            pid: 101,
            comm,
            addr,
            family,
            port,
            kind,
            _pad: 0,
            sock_type: 1,
            protocol: 6,
        }
    }

    #[test]
    fn decodes_an_ipv4_connect() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let attempt = BypassAttempt::from_event(&event(KIND_CONNECT, 2, addr, 80));
        assert_eq!(attempt.kind, BypassKind::Connect);
        assert_eq!(attempt.destination, Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!((attempt.pid, attempt.tid), (100, 101));
        assert_eq!(attempt.comm, "python3");
        assert_eq!(attempt.sock_type, SocketType::Stream);
        assert_eq!(attempt.protocol, Protocol::Tcp);
    }

    #[test]
    fn decodes_an_ipv6_sendmsg_and_a_socket_without_destination() {
        let addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let attempt = BypassAttempt::from_event(&event(KIND_SENDMSG, 10, addr, 443));
        assert_eq!(
            attempt.destination,
            Some("[2001:db8::1]:443".parse().unwrap())
        );
        let attempt = BypassAttempt::from_event(&event(KIND_SOCK_CREATE, 2, [0; 16], 0));
        assert_eq!(attempt.kind, BypassKind::SockCreate);
        assert_eq!(attempt.destination, None);
    }

    #[test]
    fn short_records_are_not_events_and_json_is_readable() {
        assert_eq!(BypassAttempt::from_record(&[0; 10]), None);
        let ev = event(KIND_SOCK_CREATE, 2, [0; 16], 0);
        // SAFETY: reading the bytes of a plain-old-data struct.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<BypassEvent>())
        };
        let attempt = BypassAttempt::from_record(bytes).unwrap();
        let json = serde_json::to_value(&attempt).unwrap();
        assert_eq!(json["hook"], "sock_create");
        assert_eq!(json["family"], "inet");
        assert_eq!(json["destination"], serde_json::Value::Null);
    }
}
