//! The network namespace wall: a fresh namespace with loopback only, and the proxy's listening
//! socket bound inside it.
//!
//! A dedicated thread enters the new namespace (`unshare(CLONE_NEWNET)` affects only the
//! calling thread), brings `lo` up over rtnetlink, installs the nftables wall, binds the
//! listener on 127.0.0.1 and returns a descriptor of the namespace. The supervisor's other
//! threads stay in the host namespace, so the proxy accepts inside the sandbox and dials out
//! from the host. There is no veth, no address, no route but loopback, and nothing is
//! bind-mounted: the namespace dies with the last process or descriptor holding it.
//!
//! With transparent egress the thread also binds, inside the namespace, the stub resolver's
//! sockets (UDP and TCP on 127.0.0.1:53) and the proxy's transparent listener, and installs the
//! rule that sends connections to the synthetic addresses to that listener (see `nft`).

use super::SandboxError;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

/// Which walls to build inside the namespace.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceWalls {
    pub nftables: bool,
    /// Bind the proxy listener (network enabled).
    pub listener: bool,
    /// Also set up transparent egress (with `listener` only).
    pub transparent: bool,
}

/// The port of the stub resolver inside the namespace (on 127.0.0.1).
pub const DNS_PORT: u16 = 53;

/// Transparent egress's sockets, bound inside the namespace.
#[derive(Debug)]
pub struct TransparentSockets {
    /// Where the redirect rule sends connections to the synthetic addresses.
    pub listener: TcpListener,
    /// The stub resolver, on 127.0.0.1:53.
    pub dns_udp: UdpSocket,
    pub dns_tcp: TcpListener,
}

/// A sandbox network namespace.
#[derive(Debug)]
pub struct SandboxNet {
    /// Keeps the namespace alive until the child has entered it.
    pub netns: OwnedFd,
    /// The proxy's listener on 127.0.0.1 inside the namespace (network enabled only).
    pub listener: Option<TcpListener>,
    /// Transparent egress's sockets (when asked for).
    pub transparent: Option<TransparentSockets>,
}

impl SandboxNet {
    pub fn proxy_address(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Builds the namespace on a short-lived thread and hands back its descriptor.
pub fn create(walls: NamespaceWalls) -> Result<SandboxNet, SandboxError> {
    start(walls)?.finish()
}

/// A namespace being built on its thread, while the caller builds the other walls.
#[derive(Debug)]
pub struct PendingNet {
    thread: Option<std::thread::JoinHandle<Result<SandboxNet, SandboxError>>>,
}

/// Starts building the namespace on a short-lived thread; [`PendingNet::finish`] waits for it.
pub fn start(walls: NamespaceWalls) -> Result<PendingNet, SandboxError> {
    let thread = std::thread::Builder::new()
        .name("tollgate-netns".into())
        .spawn(move || build_in_new_namespace(walls))
        .map_err(|e| SandboxError::Netns {
            step: "start the namespace thread",
            detail: e.to_string(),
        })?;
    Ok(PendingNet {
        thread: Some(thread),
    })
}

impl PendingNet {
    /// Waits for the namespace thread and hands back what it built.
    pub fn finish(mut self) -> Result<SandboxNet, SandboxError> {
        self.thread
            .take()
            .expect("joined only here or on drop")
            .join()
            .map_err(|_| SandboxError::Netns {
                step: "build the namespace",
                detail: "the setup thread panicked".into(),
            })?
    }
}

impl Drop for PendingNet {
    fn drop(&mut self) {
        // Abandoned (another wall failed): wait, so the namespace is gone when this returns.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn build_in_new_namespace(walls: NamespaceWalls) -> Result<SandboxNet, SandboxError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| SandboxError::Netns {
        step: "unshare(CLONE_NEWNET)",
        detail: e.to_string(),
    })?;
    let netns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| SandboxError::Netns {
            step: "open /proc/thread-self/ns/net",
            detail: e.to_string(),
        })?
        .into();
    loopback_up()?;
    if walls.nftables {
        super::nft::install_loopback_only().map_err(|detail| SandboxError::Nftables { detail })?;
    }
    let listener = if walls.listener {
        Some(bind_proxy_listener()?)
    } else {
        None
    };
    let transparent = if walls.listener && walls.transparent {
        Some(transparent_sockets()?)
    } else {
        None
    };
    Ok(SandboxNet {
        netns,
        listener,
        transparent,
    })
}

/// Binds the transparent listener and the stub resolver's sockets, and installs the redirect.
fn transparent_sockets() -> Result<TransparentSockets, SandboxError> {
    let failed = |step: &'static str| {
        move |e: std::io::Error| SandboxError::Netns {
            step,
            detail: e.to_string(),
        }
    };
    let listener = bind_proxy_listener()?;
    let port = listener
        .local_addr()
        .map_err(failed("read the transparent listener's port"))?
        .port();
    let resolver = (Ipv4Addr::LOCALHOST, DNS_PORT);
    let dns_udp =
        UdpSocket::bind(resolver).map_err(failed("bind the stub resolver (UDP 127.0.0.1:53)"))?;
    let dns_tcp =
        TcpListener::bind(resolver).map_err(failed("bind the stub resolver (TCP 127.0.0.1:53)"))?;
    for nonblocking in [dns_udp.set_nonblocking(true), dns_tcp.set_nonblocking(true)] {
        nonblocking.map_err(failed("configure the stub resolver's sockets"))?;
    }
    super::nft::install_transparent_redirect(port).map_err(|detail| SandboxError::Netns {
        step: "install the transparent redirect (nftables nat)",
        detail,
    })?;
    Ok(TransparentSockets {
        listener,
        dns_udp,
        dns_tcp,
    })
}

/// Binds the proxy's listener on 127.0.0.1 in the calling thread's network namespace.
pub fn bind_proxy_listener() -> Result<TcpListener, SandboxError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| SandboxError::Netns {
            step: "bind the proxy listener on 127.0.0.1",
            detail: e.to_string(),
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| SandboxError::Netns {
            step: "configure the proxy listener",
            detail: e.to_string(),
        })?;
    Ok(listener)
}

/// `lo` is index 1 in every new namespace; it starts down.
const LOOPBACK_INDEX: u32 = 1;

fn loopback_up() -> Result<(), SandboxError> {
    let failed = |detail: String| SandboxError::Netns {
        step: "bring lo up over rtnetlink",
        detail,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    runtime.block_on(async {
        // The netlink socket is created here, on this thread, so it talks to the new namespace.
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| failed(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let result = handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(LOOPBACK_INDEX)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| failed(e.to_string()));
        driver.abort();
        result
    })
}

/// The address a sandboxed client uses to reach the proxy.
pub fn proxy_url(address: SocketAddr) -> String {
    format!("http://{address}")
}
