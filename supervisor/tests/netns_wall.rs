//! The namespace wall on its own: loopback only, the nftables table, the listener inside.
//! (Root: these build real namespaces; nothing here can route anywhere.)

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use tollgate::sandbox::netns::{self, NamespaceWalls};

/// Runs `program args` as root inside the namespace `fd`.
fn inside(fd: i32, program: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: setns is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("run inside the namespace")
}

#[test]
fn the_namespace_has_loopback_only_and_the_nftables_wall() {
    let net = netns::create(NamespaceWalls {
        nftables: true,
        listener: true,
        transparent: false,
    })
    .unwrap();
    let fd = net.netns.as_raw_fd();
    let links = inside(fd, "/usr/sbin/ip", &["-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let routes = inside(fd, "/usr/sbin/ip", &["route", "show", "table", "all"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.lines().all(|r| r.contains("dev lo")),
        "routes: {routes}"
    );
    let ruleset = inside(fd, "/usr/sbin/nft", &["list", "table", "inet", "tollgate"]);
    assert!(
        ruleset.status.success(),
        "{}",
        String::from_utf8_lossy(&ruleset.stderr)
    );
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    assert!(ruleset.contains("hook output"), "{ruleset}");
    assert!(ruleset.contains("policy drop"), "{ruleset}");
    assert!(ruleset.contains("oifname \"lo\" accept"), "{ruleset}");
    assert!(ruleset.contains("reject with tcp reset"), "{ruleset}");
    assert!(ruleset.contains("admin-prohibited"), "{ruleset}");
}

#[test]
fn the_listener_lives_inside_the_namespace() {
    let net = netns::create(NamespaceWalls {
        nftables: true,
        listener: true,
        transparent: false,
    })
    .unwrap();
    let address = net.proxy_address().unwrap();
    assert!(address.ip().is_loopback());
    // The host namespace has no listener on that port: the socket is in the sandbox's.
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "the listener must not be reachable from the host"
    );
    let sockets = inside(net.netns.as_raw_fd(), "/usr/bin/ss", &["-ltnH"]);
    let sockets = String::from_utf8_lossy(&sockets.stdout);
    assert!(
        sockets.contains(&format!("127.0.0.1:{}", address.port())),
        "{sockets}"
    );
}

#[test]
fn without_nftables_only_the_table_is_missing() {
    let net = netns::create(NamespaceWalls {
        nftables: false,
        listener: false,
        transparent: false,
    })
    .unwrap();
    assert!(net.proxy_address().is_none());
    let ruleset = inside(net.netns.as_raw_fd(), "/usr/sbin/nft", &["list", "ruleset"]);
    assert!(String::from_utf8_lossy(&ruleset.stdout).trim().is_empty());
}

#[test]
fn without_transparent_egress_there_is_no_redirect_and_no_resolver() {
    let net = netns::create(NamespaceWalls {
        nftables: true,
        listener: true,
        transparent: false,
    })
    .unwrap();
    assert!(net.transparent.is_none());
    let fd = net.netns.as_raw_fd();
    let nat = inside(
        fd,
        "/usr/sbin/nft",
        &["list", "table", "ip", "tollgate_nat"],
    );
    assert!(
        !nat.status.success(),
        "no nat table without transparent egress"
    );
    let sockets = inside(fd, "/usr/bin/ss", &["-lntuH"]);
    let sockets = String::from_utf8_lossy(&sockets.stdout);
    assert!(!sockets.contains("127.0.0.1:53 "), "{sockets}");
}

/// A connection to a synthetic address, made inside the namespace, reaches the transparent
/// listener with its original destination; the resolver's sockets are bound on 127.0.0.1:53.
#[test]
fn connections_to_synthetic_addresses_reach_the_transparent_listener() {
    let mut net = netns::create(NamespaceWalls {
        nftables: true,
        listener: true,
        transparent: true,
    })
    .unwrap();
    let sockets = net.transparent.take().expect("transparent sockets");
    let fd = net.netns.as_raw_fd();
    let nat = inside(
        fd,
        "/usr/sbin/nft",
        &["list", "table", "ip", "tollgate_nat"],
    );
    let nat = String::from_utf8_lossy(&nat.stdout);
    let port = sockets.listener.local_addr().unwrap().port();
    assert!(
        nat.contains(&format!(
            "ip daddr 127.77.0.0/16 meta l4proto tcp dnat to 127.0.0.1:{port}"
        )),
        "{nat}"
    );
    assert_eq!(
        sockets.dns_udp.local_addr().unwrap(),
        "127.0.0.1:53".parse().unwrap()
    );
    assert_eq!(
        sockets.dns_tcp.local_addr().unwrap(),
        "127.0.0.1:53".parse().unwrap()
    );
    // A client inside dials a synthetic address; the listener sees where it meant to go.
    let client = std::thread::spawn(move || {
        inside(
            fd,
            "/usr/bin/python3",
            &[
                "-c",
                "import socket; s = socket.create_connection(('127.77.3.4', 443), timeout=10); s.sendall(b'x'); s.recv(1)",
            ],
        )
    });
    sockets.listener.set_nonblocking(false).unwrap();
    let (accepted, _) = sockets.listener.accept().unwrap();
    let original =
        nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::OriginalDst).unwrap();
    assert_eq!(
        std::net::Ipv4Addr::from(u32::from_be(original.sin_addr.s_addr)),
        std::net::Ipv4Addr::new(127, 77, 3, 4)
    );
    assert_eq!(u16::from_be(original.sin_port), 443);
    // Read what the client sent, so closing is an orderly end of stream, not a reset.
    let mut sent = [0u8; 1];
    std::io::Read::read_exact(&mut &accepted, &mut sent).unwrap();
    assert_eq!(&sent, b"x");
    drop(accepted);
    let output = client.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
