//! Upstream hosts for the end-to-end proxy tests: each one a network namespace of its own,
//! joined to the host namespace by a veth pair, with a real HTTP server inside.
//!
//! ```text
//!  host namespace                          upstream namespace (unnamed, held by the server)
//!  tgh<N>  10.201.x.(4k+1)/30  <── veth ──> tgp<N>  10.201.x.(4k+2)/30
//!                                           /usr/bin/python3 upstream_server.py
//!                                             HTTP on :8080, TCP echo on :7000, :9 closed
//! ```
//!
//! tollgate's proxy dials from the host namespace, so a policy reaches the server through a
//! `hosts` pin (`up.test: 10.201.x.y`) and an allow entry with `allowed_ips` covering the /30
//! (the shape of OpenShell issue #155). The only addresses any packet goes to are loopback
//! and the two ends of these veth pairs.
//!
//! Subnets are /30s of 10.201.0.0/16, one per host, allocated with a non-blocking `flock` on
//! `/tmp/tollgate-e2e-upstreams/<N>.lock` (held for the host's lifetime), so parallel tests
//! and parallel test processes never share one. The namespace is unnamed: it belongs to the
//! server process (started under `unshare --net`) and disappears with it; [`UpstreamHost`]'s
//! `Drop` kills the server and deletes the veth, whatever state setup reached.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{sandbox::PYTHON, Scratch};

/// The behaviour server, see the comment at its top.
pub const SERVER_PY: &str = include_str!("upstream_server.py");

/// The HTTP port of every upstream host.
pub const HTTP_PORT: u16 = 8080;
/// The raw TCP echo port of every upstream host (for CONNECT tunnels).
pub const ECHO_PORT: u16 = 7000;
/// A port nothing listens on: connecting gets a reset (connection refused).
pub const CLOSED_PORT: u16 = 9;

/// /30 subnets in 10.201.0.0/16.
const SLOTS: u32 = 1 << 14;
const LOCK_DIR: &str = "/tmp/tollgate-e2e-upstreams";
const READY_LIMIT: Duration = Duration::from_secs(15);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One upstream host; everything it made is removed on drop.
pub struct UpstreamHost {
    /// The slot number N: the subnet is 10.201.0.0 + 4N, /30.
    pub slot: u32,
    /// The host-namespace end (10.201.x.4N+1).
    pub gateway: Ipv4Addr,
    /// The server's address inside its namespace (10.201.x.4N+2).
    pub addr: Ipv4Addr,
    veth: String,
    server: Option<Child>,
    log: PathBuf,
    _scratch: Scratch,
    _lock: File,
}

impl UpstreamHost {
    /// Builds the namespace, the veth pair and starts the behaviour server; panics (after
    /// cleaning up) if any step fails.
    pub fn start() -> Self {
        Self::start_server(SERVER_PY, |addr, log| {
            vec![
                addr.to_string().into(),
                HTTP_PORT.to_string().into(),
                ECHO_PORT.to_string().into(),
                log.into(),
            ]
        })
    }

    /// Like [`UpstreamHost::start`] with another Python server: `script` runs under
    /// `/usr/bin/python3 -c` with the arguments `args(address, request_log)` returns, must
    /// bind the address, log each request as a JSON line to the log, and print `ready`.
    pub fn start_server(script: &str, args: impl FnOnce(Ipv4Addr, &Path) -> Vec<OsString>) -> Self {
        Self::start_server_with(PYTHON, script, args)
    }

    /// Like [`UpstreamHost::start_server`] under another interpreter: `python` is
    /// [`crate::sandbox::VENV_PYTHON`] for servers built on the test venv's packages (an
    /// HTTP/2 server, gRPC, WebSocket).
    pub fn start_server_with(
        python: &str,
        script: &str,
        args: impl FnOnce(Ipv4Addr, &Path) -> Vec<OsString>,
    ) -> Self {
        let (slot, lock) = take_slot();
        let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + slot * 4;
        let scratch = Scratch::new(&format!("upstream{slot}"));
        let log = scratch.dir.join("requests.jsonl");
        let mut host = UpstreamHost {
            slot,
            gateway: Ipv4Addr::from(base + 1),
            addr: Ipv4Addr::from(base + 2),
            veth: format!("tgh{slot}"),
            server: None,
            log,
            _scratch: scratch,
            _lock: lock,
        };
        let args = args(host.addr, &host.log);
        host.build(python, script, args);
        host
    }

    /// `10.201.x.y/30`, for `allowed_ips`.
    pub fn subnet(&self) -> String {
        format!("{}/30", Ipv4Addr::from(u32::from(self.addr) - 2))
    }

    /// `http://ADDR:8080` as seen from the host namespace.
    pub fn direct_url(&self, path: &str) -> String {
        format!("http://{}:{HTTP_PORT}{path}", self.addr)
    }

    /// Every request the server has logged so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        crate::sandbox::read_json_lines(&self.log)
    }

    /// The logged requests whose path (query included) starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect()
    }

    /// Whether the server is still alive (a dead server fails the test that needed it).
    pub fn alive(&mut self) -> bool {
        self.server
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(None)))
    }

    fn build(&mut self, python: &str, script: &str, args: Vec<OsString>) {
        let peer = format!("tgp{}", self.slot);
        // A veth left by a test process that was killed while it held this slot.
        let _ = Command::new("/usr/sbin/ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
        let stderr = File::create(self._scratch.dir.join("server.stderr")).expect("server log");
        let mut server = Command::new("/usr/bin/unshare")
            .args(["--net", "--", python, "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the upstream server under unshare --net");
        let stdout = server.stdout.take().expect("server stdout");
        let pid = server.id();
        self.server = Some(server);
        // `unshare` execs the server: its pid is the namespace holder. Wait until the new
        // namespace is in place (the exec happened) before moving the peer into it.
        let own = fs::read_link("/proc/self/ns/net").ok();
        for _ in 0..500 {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if theirs.is_some() && theirs != own {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let gateway = format!("{}/30", self.gateway);
        let address = format!("{}/30", self.addr);
        let pid = pid.to_string();
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", &peer, "netns", &pid,
        ]);
        ip(&["link", "set", "dev", &self.veth, "addrgenmode", "none"]);
        ip(&["addr", "add", &gateway, "dev", &self.veth]);
        ip(&["link", "set", "dev", &self.veth, "up"]);
        let ns = format!("--net=/proc/{pid}/ns/net");
        for args in [
            vec!["link", "set", "dev", "lo", "up"],
            vec!["link", "set", "dev", &peer, "addrgenmode", "none"],
            vec!["addr", "add", &address, "dev", &peer],
            vec!["link", "set", "dev", &peer, "up"],
        ] {
            run(Command::new("/usr/bin/nsenter")
                .arg(&ns)
                .arg("--")
                .arg("/usr/sbin/ip")
                .args(&args));
        }
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(READY_LIMIT) {
            Ok(line) if line.trim() == "ready" => {}
            other => panic!(
                "the upstream server on {} did not start ({other:?}): {}",
                self.addr,
                fs::read_to_string(self._scratch.dir.join("server.stderr")).unwrap_or_default()
            ),
        }
    }
}

impl Drop for UpstreamHost {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        // The namespace went with the server, taking the peer and so the pair; deleting the
        // host end makes that certain even if the namespace outlives the process briefly.
        let _ = Command::new("/usr/sbin/ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    run(Command::new("/usr/sbin/ip").args(args));
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free slot, locked for as long as the returned file is open.
fn take_slot() -> (u32, File) {
    fs::create_dir_all(LOCK_DIR).expect("create the upstream lock dir");
    let start = std::process::id().wrapping_mul(97) % SLOTS;
    for _ in 0..SLOTS {
        let slot = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SLOTS;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(LOCK_DIR).join(format!("{slot}.lock")))
            .expect("open an upstream slot lock");
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 && !address_in_use(slot) {
            return (slot, file);
        }
    }
    panic!("no free /30 in 10.201.0.0/16 for an upstream host");
}

/// Whether some interface of the host namespace already has an address of this slot's /30
/// (then the slot is not ours to use, whoever made it).
fn address_in_use(slot: u32) -> bool {
    let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + slot * 4;
    let Ok(out) = Command::new("/usr/sbin/ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
    else {
        return true;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    (0..4).any(|i| {
        let needle = format!(" {}/", Ipv4Addr::from(base + i));
        text.contains(&needle)
    })
}
