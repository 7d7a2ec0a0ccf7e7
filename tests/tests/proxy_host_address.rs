//! The proxy never dials the node itself: a service listening on an address of the host (the
//! host side of a veth, here) is refused with reason `host_address` whatever the policy
//! opens (`block_private_ips: false`, `allowed_ips` covering it, `allow_all`), while the
//! address at the other end of the veth, inside the upstream's own namespace, stays
//! reachable. Real `tollgate run`, real `/usr/bin/curl` inside it, a real server on the host.
//!
//! Needs root (namespaces, veth pairs, `tollgate run`). No packet goes anywhere but loopback
//! and the veth pairs made here.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{output, read_json_lines, Finished, Sandbox, HANG_LIMIT, PYTHON},
    upstream::{UpstreamHost, ECHO_PORT, HTTP_PORT, SERVER_PY},
    Scratch,
};

/// The behaviour server of the upstream harness, run in the *host* namespace on one of the
/// host's own addresses: the "root service on the host side of a veth".
struct HostService {
    server: Child,
    log: PathBuf,
}

impl HostService {
    fn start(address: Ipv4Addr, scratch: &Scratch, name: &str) -> Self {
        let log = scratch.dir.join(format!("{name}.jsonl"));
        let mut server = Command::new(PYTHON)
            .args(["-c", SERVER_PY])
            .arg(address.to_string())
            .arg(HTTP_PORT.to_string())
            .arg(ECHO_PORT.to_string())
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the host service");
        let stdout = server.stdout.take().expect("service stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(15));
        let service = HostService { server, log };
        assert!(
            matches!(&ready, Ok(line) if line.trim() == "ready"),
            "the host service on {address} did not start: {ready:?}"
        );
        service
    }

    /// Requests the service received (none, if the proxy held).
    fn requests(&self) -> Vec<Value> {
        read_json_lines(&self.log)
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// One curl per URL inside the sandbox; each answer framed as `=== URL` … `=== rc N`.
const CURL_EACH: &str = r#"for url in "$@"; do
  printf '=== %s\n' "$url"
  /usr/bin/curl -sS -i --max-time 20 "$url" 2>&1
  printf '\n=== rc %s\n' "$?"
done"#;

/// What curl printed for `url`.
fn answer<'a>(finished: &'a Finished, url: &str) -> &'a str {
    let start = format!("=== {url}\n");
    let at = finished
        .stdout
        .find(&start)
        .unwrap_or_else(|| panic!("no answer for {url}\n{}", finished.describe()));
    let rest = &finished.stdout[at + start.len()..];
    &rest[..rest.find("\n=== rc").unwrap_or(rest.len())]
}

fn assert_refused_as_host_address(finished: &Finished, url: &str) {
    let text = answer(finished, url);
    assert!(
        text.starts_with("HTTP/1.1 403"),
        "{url} was not refused:\n{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("tollgate-error: ssrf_denied"),
        "{url}: {text}"
    );
    assert!(text.contains("this node"), "{url}: {text}");
}

fn audit_reasons(audit: &Path, host: &str) -> Vec<String> {
    read_json_lines(audit)
        .iter()
        .filter(|r| r["host"] == host)
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

struct Bench {
    up: UpstreamHost,
    scratch: Scratch,
}

impl Bench {
    fn new(tag: &str) -> Self {
        Bench {
            up: UpstreamHost::start(),
            scratch: Scratch::new(tag),
        }
    }

    /// Runs curl on each URL under `policy` (`GATEWAY`, `ADDR` and `SUBNET` replaced).
    fn run(&self, name: &str, policy: &str, urls: &[String]) -> (Finished, PathBuf) {
        let policy = policy
            .replace("GATEWAY", &self.up.gateway.to_string())
            .replace("ADDR", &self.up.addr.to_string())
            .replace("SUBNET", &self.up.subnet());
        let policy = self.scratch.file(&format!("{name}.yaml"), &policy);
        let audit = self.scratch.output(&format!("{name}.audit.jsonl"));
        let mut command = vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            CURL_EACH.into(),
            "sh".into(),
        ];
        command.extend(urls.iter().cloned());
        let finished = Sandbox::new()
            .policy(&policy)
            .audit(&audit)
            .timeout("50s")
            .run(&command);
        assert_eq!(finished.code(), 0, "{}", finished.describe());
        (finished, audit)
    }
}

#[test]
fn a_service_on_the_hosts_own_address_is_never_reached() {
    let _suite = SuiteLock::shared();
    let bench = Bench::new("host-address");
    let service = HostService::start(bench.up.gateway, &bench.scratch, "host-service");
    let gateway = bench.up.gateway;
    let gw = format!("http://gw.test:{HTTP_PORT}/echo/by-name");
    let literal = format!("http://{gateway}:{HTTP_PORT}/echo/by-literal");
    let mapped = format!("http://[::ffff:{gateway}]:{HTTP_PORT}/echo/mapped");
    let up = format!("http://up.test:{HTTP_PORT}/echo/reachable");
    let urls = [gw.clone(), literal.clone(), mapped.clone(), up.clone()];
    for (name, policy) in [
        (
            "private-open",
            "version: 1
team: e2e
network:
  block_private_ips: false
  hosts:
    up.test: ADDR
    gw.test: GATEWAY
  allow:
    - {host: up.test, ports: [8080], schemes: [http]}
    - {host: gw.test, ports: [8080], schemes: [http]}
    - {host: GATEWAY, ports: [8080], schemes: [http]}
    - {host: '::ffff:GATEWAY', ports: [8080], schemes: [http]}
",
        ),
        (
            "allowed-ips",
            "version: 1
team: e2e
network:
  hosts:
    up.test: ADDR
    gw.test: GATEWAY
  allow:
    - {host: up.test, ports: [8080], schemes: [http], allowed_ips: [SUBNET]}
    - {host: gw.test, ports: [8080], schemes: [http], allowed_ips: [10.0.0.0/8]}
    - {host: GATEWAY, ports: [8080], schemes: [http], allowed_ips: [SUBNET]}
    - {host: '::ffff:GATEWAY', ports: [8080], schemes: [http], allowed_ips: ['::ffff:10.0.0.0/104']}
",
        ),
        (
            "allow-all",
            "version: 1
team: e2e
network:
  allow_all: true
  block_private_ips: false
  hosts:
    up.test: ADDR
    gw.test: GATEWAY
",
        ),
    ] {
        let (finished, audit) = bench.run(name, policy, &urls);
        for url in [&gw, &literal, &mapped] {
            assert_refused_as_host_address(&finished, url);
        }
        let reached = answer(&finished, &up);
        assert!(
            reached.starts_with("HTTP/1.1 200"),
            "{name}: the upstream inside its namespace was not reached:\n{reached}"
        );
        assert_eq!(audit_reasons(&audit, "gw.test"), ["host_address"], "{name}");
        assert_eq!(
            audit_reasons(&audit, &gateway.to_string()),
            ["host_address"],
            "{name}"
        );
        assert_eq!(audit_reasons(&audit, "up.test"), ["allowed"], "{name}");
    }
    assert_eq!(
        service.requests(),
        Vec::<Value>::new(),
        "the host's own service was reached"
    );
    assert!(!bench.up.requests_to("/echo/reachable").is_empty());
}

#[test]
fn a_tunnel_to_the_hosts_own_address_is_refused() {
    let _suite = SuiteLock::shared();
    let bench = Bench::new("host-address-connect");
    let service = HostService::start(bench.up.gateway, &bench.scratch, "host-service");
    let policy = bench.scratch.file(
        "policy.yaml",
        &"version: 1
team: e2e
network:
  block_private_ips: false
  hosts:
    gw.test: GATEWAY
  allow:
    - {host: gw.test, ports: [7000], tls: passthrough}
"
        .replace("GATEWAY", &bench.up.gateway.to_string()),
    );
    let audit = bench.scratch.output("audit.jsonl");
    // CONNECT gw.test:7000 (the echo port), decided like any request before a byte moves.
    let finished = Sandbox::new().policy(&policy).audit(&audit).run([
        "/usr/bin/curl",
        "-sS",
        "-p",
        "--max-time",
        "20",
        &format!("http://gw.test:{ECHO_PORT}/"),
    ]);
    assert_ne!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stderr.contains("403"),
        "the tunnel was not refused: {}",
        finished.describe()
    );
    assert_eq!(audit_reasons(&audit, "gw.test"), ["host_address"]);
    assert!(service.requests().is_empty());
}

/// An address the node gains while an execution runs is refused from then on: the proxy
/// read its addresses before the new one existed.
#[test]
fn an_address_added_during_the_run_is_refused_too() {
    let _suite = SuiteLock::shared();
    let bench = Bench::new("host-address-new");
    // An address of this slot's own that no other test uses: 10.202.<slot>/30 + 1.
    let base = u32::from(Ipv4Addr::new(10, 202, 0, 0)) + bench.up.slot * 4;
    let added = Ipv4Addr::from(base + 1);
    let veth = format!("tgh{}", bench.up.slot);
    let ready = bench.scratch.dir.join("ready.fifo");
    let go = bench.scratch.dir.join("go.fifo");
    for fifo in [&ready, &go] {
        let status = Command::new("/usr/bin/mkfifo")
            .args(["-m", "666"])
            .arg(fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
    }
    let policy = bench.scratch.file(
        "policy.yaml",
        &"version: 1
team: e2e
network:
  block_private_ips: false
  hosts:
    up.test: ADDR
    new.test: ADDED
  allow:
    - {host: up.test, ports: [8080], schemes: [http]}
    - {host: new.test, ports: [8080], schemes: [http]}
"
        .replace("ADDR", &bench.up.addr.to_string())
        .replace("ADDED", &added.to_string()),
    );
    let audit = bench.scratch.output("audit.jsonl");
    // The first request makes the proxy read the node's addresses; then the sandbox tells
    // the test, waits for the new address and its service, and asks for it.
    let script = format!(
        "/usr/bin/curl -sS -o /dev/null -w '%{{http_code}}\\n' http://up.test:{HTTP_PORT}/echo/first
echo ready > {ready}
read line < {go}
/usr/bin/curl -sS -i --max-time 20 http://new.test:{HTTP_PORT}/echo/new",
        ready = ready.display(),
        go = go.display()
    );
    let mut command = Sandbox::new()
        .policy(&policy)
        .audit(&audit)
        .timeout("50s")
        .command(["/bin/sh", "-c", &script]);
    // Everything the test waits for arrives on one channel, so a run that ends early (and
    // never writes the FIFO) fails the test instead of hanging it.
    enum Event {
        Ready(String),
        Finished(Finished),
    }
    let (tx, rx) = mpsc::channel();
    let finished_tx = tx.clone();
    thread::spawn(move || {
        let _ = finished_tx.send(Event::Finished(output(&mut command, Some(b""), HANG_LIMIT)));
    });
    let ready_path = ready.clone();
    thread::spawn(move || {
        let _ = tx.send(Event::Ready(
            fs::read_to_string(ready_path).unwrap_or_default(),
        ));
    });
    match rx
        .recv_timeout(HANG_LIMIT)
        .expect("the sandbox's ready line")
    {
        Event::Ready(line) => assert_eq!(line.trim(), "ready"),
        Event::Finished(finished) => panic!("the run ended early\n{}", finished.describe()),
    }
    let added_cidr = format!("{added}/32");
    let ip = |args: &[&str]| {
        let status = Command::new("/usr/sbin/ip")
            .args(args)
            .status()
            .expect("run ip");
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["addr", "add", &added_cidr, "dev", &veth]);
    let service = HostService::start(added, &bench.scratch, "new-service");
    // O_RDWR: opening never blocks, and the line stays in the FIFO (held open until the run
    // ends) however late the sandbox gets to read it.
    let mut go_fifo = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&go)
        .expect("open the go FIFO");
    std::io::Write::write_all(&mut go_fifo, b"go\n").expect("tell the sandbox to go on");
    let finished = match rx.recv_timeout(HANG_LIMIT).expect("the run's end") {
        Event::Finished(finished) => finished,
        Event::Ready(_) => unreachable!("one ready line"),
    };
    drop(go_fifo);
    ip(&["addr", "del", &added_cidr, "dev", &veth]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.starts_with("200\n"),
        "{}",
        finished.describe()
    );
    assert!(
        finished.stdout.contains("HTTP/1.1 403") && finished.stdout.contains("this node"),
        "the new address was not refused:\n{}",
        finished.describe()
    );
    assert_eq!(audit_reasons(&audit, "new.test"), ["host_address"]);
    assert!(service.requests().is_empty(), "the new service was reached");
}
