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
    })
    .unwrap();
    assert!(net.proxy_address().is_none());
    let ruleset = inside(net.netns.as_raw_fd(), "/usr/sbin/nft", &["list", "ruleset"]);
    assert!(String::from_utf8_lossy(&ruleset.stdout).trim().is_empty());
}
