//! Network namespaces the harness itself creates, and how to tell namespaces apart.
//!
//! The route-less wrapper is `unshare -n` (util-linux) followed by `ip link set lo up`: a
//! fresh namespace whose only interface is loopback. `ip netns exec` is deliberately not used:
//! it remounts `/sys`, which hides the cgroup2 mount tollgate needs.

use std::{fs, path::Path, process::Command};

/// A command that runs `program` (plus whatever arguments the caller adds) inside a fresh
/// network namespace with only `lo`, up. Nothing in it has a route off the machine.
pub fn route_less_command(program: &Path) -> Command {
    let mut command = Command::new("/usr/bin/unshare");
    command
        .arg("--net")
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        // `exec` keeps the pid: the wrapper's pid is tollgate's pid.
        .arg("/usr/sbin/ip link set lo up && exec \"$0\" \"$@\"")
        .arg(program);
    command
}

/// The network namespace of a process (`net:[4026531840]`), if it is still there.
pub fn netns_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|link| link.to_string_lossy().into_owned())
}

/// Names listed by `ip netns list` (the bind mounts under /run/netns).
pub fn named_netns() -> Vec<String> {
    let mut names = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.sort();
    names
}

/// Whether `nft` shows an `inet tollgate` table in the network namespace of `pid`
/// (`nsenter --net`, which mounts nothing).
pub fn has_tollgate_table(pid: u32) -> bool {
    let out = Command::new("/usr/bin/nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["--", "/usr/sbin/nft", "list", "tables"])
        .output()
        .expect("run nsenter nft");
    assert!(
        out.status.success(),
        "nft list tables in the netns of {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.trim() == "table inet tollgate")
}
