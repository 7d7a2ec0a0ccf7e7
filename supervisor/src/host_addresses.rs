//! The node's own addresses, read from its interfaces and kept current, for every decision:
//! the proxy never dials them (reason `host_address`, see `tollgate_policy::host_addresses`).
//!
//! Reading the interfaces (`getifaddrs`, a netlink dump) costs about 110 µs on the reference
//! machine, four times a whole decision, so it is not done per request. The first caller
//! subscribes a netlink socket to the kernel's address events (IPv4 and IPv6 addresses added
//! or removed) *before* reading the set; every later caller polls that socket (one `poll`
//! with a zero timeout) and re-reads the set only when an event is queued. The kernel queues
//! the event before `ip addr add` (or DHCP, or Docker) returns, so a decision made after an
//! address appeared always sees it: there is no window in which a new address is dialable.
//! If the subscription cannot be made, every call reads the interfaces: slower, never stale.
//!
//! The set is the addresses of the network namespace the first caller runs in, which must be
//! the one the proxy dials from: the proxy's runtime threads and the CLI's main thread, never
//! the setup thread that enters the sandbox's namespace.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use nix::ifaddrs::getifaddrs;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tollgate_policy::HostAddresses;

/// Every address assigned to an interface of this network namespace, read now.
pub fn read() -> io::Result<HostAddresses> {
    let interfaces = getifaddrs().map_err(io::Error::from)?;
    Ok(interfaces
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

/// The node's addresses now. An error means they cannot be read: the caller must not dial.
pub fn current() -> Result<Arc<HostAddresses>, String> {
    static WATCH: OnceLock<Option<Watch>> = OnceLock::new();
    let watch = WATCH.get_or_init(|| match Watch::start() {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(
                "cannot subscribe to the node's address events ({error}); reading the \
                 addresses for every decision"
            );
            None
        }
    });
    let result = match watch {
        Some(watch) => watch.current(),
        None => read().map(Arc::new),
    };
    result.map_err(|e| format!("cannot read the node's own addresses: {e}"))
}

/// The subscription and the set as of the last event it delivered.
pub struct Watch {
    events: OwnedFd,
    /// `None` after a failed re-read: read again on the next call.
    set: Mutex<Option<Arc<HostAddresses>>>,
}

impl Watch {
    /// Subscribes to this namespace's address events, then reads the addresses.
    pub fn start() -> io::Result<Watch> {
        // Subscribe first, read second: a change between the two is an event still queued.
        let events = subscribe()?;
        let set = Mutex::new(Some(Arc::new(read()?)));
        Ok(Watch { events, set })
    }

    /// The set, re-read first if an address event is queued. Callers are serialised, so
    /// none can use the old set while another is re-reading after an event it drained.
    pub fn current(&self) -> io::Result<Arc<HostAddresses>> {
        let mut set = self
            .set
            .lock()
            .map_err(|_| io::Error::other("the address set lock is poisoned"))?;
        if self.pending()? || set.is_none() {
            self.drain();
            *set = None;
            *set = Some(Arc::new(read()?));
        }
        set.clone()
            .ok_or_else(|| io::Error::other("the address set is missing"))
    }

    /// Whether the kernel queued an event (or an overflow error, which means the same).
    fn pending(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
        Ok(ready > 0)
    }

    /// Discards every queued event: one re-read answers them all.
    fn drain(&self) {
        let mut buffer = [0u8; 8192];
        loop {
            match recv(self.events.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => return,
                // ENOBUFS: events overflowed the socket; the re-read covers them.
                Ok(_) | Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// A netlink socket that receives the kernel's IPv4 and IPv6 address events.
fn subscribe() -> io::Result<OwnedFd> {
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn loopback_is_among_the_nodes_addresses() {
        let set = read().expect("getifaddrs");
        assert!(set.contains("127.0.0.1".parse().unwrap()), "{set:?}");
        let current = current().expect("current");
        assert!(current.contains("127.0.0.1".parse().unwrap()));
    }

    /// An address added after the first read is in the very next answer, and one removed is
    /// gone: in a network namespace of the test's own, so the host is not touched.
    #[test]
    fn an_address_added_or_removed_is_seen_by_the_next_call() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare -n");
            let ns = format!(
                "/proc/{}/task/{}/ns/net",
                std::process::id(),
                nix::unistd::gettid()
            );
            let ip = |args: &[&str]| {
                let status = Command::new("/usr/bin/nsenter")
                    .arg(format!("--net={ns}"))
                    .args(["--", "/usr/sbin/ip"])
                    .args(args)
                    .status()
                    .expect("run ip");
                assert!(status.success(), "ip {args:?}");
            };
            ip(&["link", "set", "lo", "up"]);
            let watch = Watch::start().expect("subscribe");
            let new: IpAddr = "10.203.0.7".parse().unwrap();
            assert!(!watch.current().unwrap().contains(new));
            ip(&["addr", "add", "10.203.0.7/32", "dev", "lo"]);
            assert!(watch.current().unwrap().contains(new), "added");
            ip(&["addr", "del", "10.203.0.7/32", "dev", "lo"]);
            assert!(!watch.current().unwrap().contains(new), "removed");
        })
        .join()
        .expect("the namespace thread");
    }
}
