//! DNS inside the sandbox in transparent mode (issue #11, part 2), end to end: the stub
//! resolver on 127.0.0.1:53 answers the names the policy could allow with synthetic addresses
//! in 127.77.0.0/16 and every other name with nothing, it forwards nothing (label data and
//! TXT queries get nothing out), no other resolver is reachable, `/etc/resolv.conf` names it
//! read-only, `--no-transparent` (or `network.transparent: false`) sets none of it up, and a
//! sandbox throwing malformed messages at it cannot break it.
//!
//! Real clients inside `tollgate run`: glibc's resolver (`/usr/bin/getent`, Python's
//! `socket`), `/usr/bin/dig` over UDP and TCP, and raw sockets. The stub has no upstream at
//! all, so the summary's `dns` counters (contract: queries, answered, refused) are what shows
//! that it answered every query itself; a test DNS server in a namespace of its own writes
//! down every message it receives, so the wall test asserts what never reached it.
//!
//! Needs root. No packet goes anywhere but loopback and the test host's veth pair.

mod transparent_support;

use std::{fs, os::unix::fs::PermissionsExt as _, process::Command};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{
        bypass_records, record_destination, wait_host_pid, Running, Sandbox, HANG_LIMIT, PYTHON,
    },
    Scratch,
};
use transparent_support::{assert_ran, host, is_synthetic, write_run, Outcome, ENTRIES, PINNED};

/// The names of the DNS policy: one exact host with a port, one https prefix, a one-label
/// wildcard (`*.`) and a many-label one (`**.`).
const DNS_POLICY: &str = "\
version: 1
team: e2e
network:
  allow:
    - http://allowed.test:8080
    - https://second.test
    - host: \"*.wild.test\"
    - host: \"**.deep.test\"
";

/// Label data as an exfiltrating program would put it: 3 labels of 63 hex digits.
const DATA_LABELS: &str = concat!(
    "73656372657420746f6b656e3a206162636465663031323334353637383961",
    ".62636465663031323334353637383961626364656630313233343536373839",
    ".616263646566303132333435363738396162636465663031323334353637"
);

/// DNS response codes as dig prints them.
const NOERROR: &str = "NOERROR";
const NXDOMAIN: &str = "NXDOMAIN";

fn scratch(tag: &str) -> Scratch {
    let scratch = Scratch::new(tag);
    fs::set_permissions(&scratch.dir, fs::Permissions::from_mode(0o755)).unwrap();
    scratch
}

/// Runs `script` under `policy` in a plain sandbox (no test host needed: nothing here
/// leaves the sandbox).
fn run(scratch: &Scratch, n: u32, policy: &str, script: &str) -> Outcome {
    let run = write_run(scratch, n, policy, script);
    run.outcome(run.sandbox(Sandbox::new()).run([PYTHON, run.script_arg()]))
}

/// The `dig` result `name` of `outcome`: its status and answers.
fn dig_of<'a>(outcome: &'a Outcome, name: &str) -> (&'a str, &'a Vec<Value>) {
    let got = outcome.result(name);
    let status = got["status"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: dig got no response: {got}\n{}", outcome.describe()));
    (status, got["answers"].as_array().expect("answers"))
}

/// Asserts `name` got `status` and no answer record at all.
fn assert_no_answer(outcome: &Outcome, name: &str, status: &str) {
    let (got, answers) = dig_of(outcome, name);
    assert_eq!(got, status, "{name}: {}", outcome.result(name));
    assert!(answers.is_empty(), "{name}: no answer record: {answers:?}");
}

/// The one A record of dig result `name`: (ttl, address).
fn a_record(outcome: &Outcome, name: &str) -> (u64, String) {
    let (status, answers) = dig_of(outcome, name);
    assert_eq!(status, NOERROR, "{name}: {}", outcome.result(name));
    assert_eq!(answers.len(), 1, "{name}: one answer: {answers:?}");
    let record = &answers[0];
    assert_eq!(record[3], "A", "{name}: {record}");
    (
        record[1].as_str().unwrap().parse().unwrap(),
        record[4].as_str().unwrap().to_owned(),
    )
}

/// The addresses `getent` printed for result `name` (asserting it found some).
fn getent_addresses(outcome: &Outcome, name: &str) -> Vec<String> {
    let got = outcome.result(name);
    assert_eq!(got["rc"], 0, "{name}: getent found it: {got}");
    got["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The summary's dns counters as (queries, answered, refused).
fn counters(outcome: &Outcome) -> (u64, u64, u64) {
    let dns = outcome.dns();
    let get = |key: &str| {
        dns[key].as_u64().unwrap_or_else(|| {
            panic!(
                "summary.dns.{key} is a count (contract): {dns}\n{}",
                outcome.describe()
            )
        })
    };
    (get("queries"), get("answered"), get("refused"))
}

#[test]
fn names_the_policy_could_allow_get_stable_synthetic_addresses_and_no_others() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-names");
    let outcome = run(
        &scratch,
        1,
        DNS_POLICY,
        r#"
results["allowed"] = getent("hosts", "allowed.test")
results["second"] = getent("hosts", "second.test")
results["wild"] = getent("hosts", "a.wild.test")
results["deep"] = getent("hosts", "a.b.deep.test")
results["allowed again"] = getent("hosts", "allowed.test")
results["allowed spelled otherwise"] = getent("hosts", "ALLOWED.Test.")
results["denied"] = getent("hosts", "denied.test")
results["denied sibling of a wildcard"] = getent("hosts", "wild.test.evil")
results["denied two labels under *."] = getent("hosts", "a.b.wild.test")
results["python allowed"] = resolve("allowed.test")
results["python denied"] = resolve("denied.test")
try:
    results["python v6"] = socket.getaddrinfo("allowed.test", 80, socket.AF_INET6)
    results["python v6"] = [str(a) for a in results["python v6"]]
except OSError as e:
    results["python v6"] = {"error": _error(e)}
results["ahostsv6"] = getent("ahostsv6", "allowed.test")
results["dig A"] = dig("allowed.test")
results["dig A tcp"] = dig("allowed.test", tcp=True)
results["dig AAAA"] = dig("allowed.test", "AAAA")
results["dig AAAA tcp"] = dig("allowed.test", "AAAA", tcp=True)
results["dig MX"] = dig("allowed.test", "MX")
results["dig denied A"] = dig("denied.test")
results["dig denied AAAA"] = dig("denied.test", "AAAA")
"#,
    );
    assert_ran(&outcome);

    // First asked, first served, from 127.77.0.1 upward; one address per name, stable.
    let allowed = getent_addresses(&outcome, "allowed");
    assert_eq!(allowed, ["127.77.0.1"], "{}", outcome.describe());
    assert_eq!(getent_addresses(&outcome, "second"), ["127.77.0.2"]);
    assert_eq!(getent_addresses(&outcome, "wild"), ["127.77.0.3"]);
    assert_eq!(getent_addresses(&outcome, "deep"), ["127.77.0.4"]);
    assert_eq!(getent_addresses(&outcome, "allowed again"), allowed);
    assert_eq!(
        getent_addresses(&outcome, "allowed spelled otherwise"),
        allowed,
        "case and a trailing dot name the same host"
    );
    assert_eq!(outcome.result("python allowed"), "127.77.0.1");
    // As in the policy: `*.` is one label, so two labels under it are not allowed.
    for name in [
        "denied",
        "denied sibling of a wildcard",
        "denied two labels under *.",
    ] {
        let got = outcome.result(name);
        assert_eq!(got["rc"], 2, "{name}: getent finds nothing: {got}");
        assert_eq!(got["addresses"], serde_json::json!([]), "{name}: {got}");
    }
    assert!(
        outcome.result("python denied")["error"]
            .as_str()
            .is_some_and(|e| e.contains("gaierror")),
        "{}",
        outcome.result("python denied")
    );

    // The A record over UDP and TCP, TTL 300 (contract); no AAAA, no other type.
    for name in ["dig A", "dig A tcp"] {
        assert_eq!(a_record(&outcome, name), (300, "127.77.0.1".to_owned()));
    }
    for name in ["dig AAAA", "dig AAAA tcp", "dig MX"] {
        assert_no_answer(&outcome, name, NOERROR);
    }
    for name in ["dig denied A", "dig denied AAAA"] {
        assert_no_answer(&outcome, name, NXDOMAIN);
    }
    // No IPv6 address for a synthetic name: a program asking for AF_INET6 only gets none.
    // (`getent ahostsv6` asks with AI_V4MAPPED, so glibc maps the A record: ::ffff:127.77.0.1
    // is the IPv4 address again, never an IPv6 one.)
    assert!(
        outcome.result("python v6")["error"].is_string(),
        "AF_INET6 gets no address: {}",
        outcome.result("python v6")
    );
    let mapped = outcome.result("ahostsv6")["addresses"].clone();
    let mapped: Vec<&str> = mapped
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        mapped.iter().all(|a| *a == "::ffff:127.77.0.1"),
        "only the mapped A record: {mapped:?}"
    );

    let (queries, answered, refused) = counters(&outcome);
    assert!(
        answered >= 2 && refused >= 2 && queries >= answered + refused + 3,
        "every query counted: {}",
        outcome.dns()
    );
}

#[test]
fn label_data_gets_no_answer_and_every_query_is_answered_by_the_stub_itself() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-labels");
    let script = format!(
        r#"
DATA = "{DATA_LABELS}"
for proto, tcp in [("udp", False), ("tcp", True)]:
    results["TXT denied " + proto] = dig(DATA + ".denied.test", "TXT", tcp=tcp)
    results["TXT deep " + proto] = dig(DATA + ".deep.test", "TXT", tcp=tcp)
    results["A denied " + proto] = dig(DATA + ".denied.test", "A", tcp=tcp)
    results["A allowed " + proto] = dig("allowed.test", "A", tcp=tcp)
    results["AAAA allowed " + proto] = dig("allowed.test", "AAAA", tcp=tcp)
"#
    );
    let outcome = run(&scratch, 1, DNS_POLICY, &script);
    assert_ran(&outcome);
    for proto in ["udp", "tcp"] {
        assert_no_answer(&outcome, &format!("TXT denied {proto}"), NXDOMAIN);
        assert_no_answer(&outcome, &format!("A denied {proto}"), NXDOMAIN);
        // A name under an allowed wildcard gets an address for A only: TXT gets NODATA.
        assert_no_answer(&outcome, &format!("TXT deep {proto}"), NOERROR);
        assert_no_answer(&outcome, &format!("AAAA allowed {proto}"), NOERROR);
        assert!(is_synthetic(
            &a_record(&outcome, &format!("A allowed {proto}")).1
        ));
    }
    // Ten queries, each answered by the stub: 2 with an A record, 4 NXDOMAIN, 4 NODATA
    // (counted in neither). There is no upstream to have answered them instead.
    assert_eq!(
        counters(&outcome),
        (10, 2, 4),
        "summary.dns {{queries, answered, refused}}\n{}",
        outcome.describe()
    );
    // The label data is nowhere in what tollgate wrote about the run.
    for part in DATA_LABELS.split('.') {
        assert!(
            !outcome.audit_text.contains(part)
                && !outcome.summary_text.contains(part)
                && !outcome.finished.stderr.contains(part),
            "label data in tollgate's output\n{}",
            outcome.describe()
        );
    }
}

#[test]
fn the_sandbox_cannot_ask_any_other_resolver() {
    let _lock = SuiteLock::shared();
    let mut bench = host("dns-wall", &["dns:53"]);
    let server = bench.up.addr;
    // The test server answers and writes down what reaches it: ask it once from the host.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let query = b"\x77\x77\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0ahost-probe\x04test\x00\x00\x01\x00\x01";
    probe.send_to(query, (server, 53)).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = probe
        .recv_from(&mut buf)
        .expect("the test DNS server answers");
    assert!(n > 12 && buf[..2] == [0x77, 0x77]);
    assert_eq!(bench.events_of("dns").len(), 1, "{:?}", bench.events());

    let policy = bench.policy(&PINNED, ENTRIES, "");
    let script = format!(
        r#"
results["dig udp"] = dig("allowed.test", server="{server}")
results["dig tcp"] = dig("allowed.test", server="{server}", tcp=True)
results["sendto"] = direct_errno("{server}", 53, socket.SOCK_DGRAM)
results["connect"] = direct_errno("{server}", 53)
results["stub"] = dig("allowed.test")
"#
    );
    let outcome = bench.run(Sandbox::new(), &policy, &script);
    assert_ran(&outcome);
    assert_eq!(outcome.result("sendto"), "EPERM", "{}", outcome.describe());
    assert_eq!(outcome.result("connect"), "EPERM", "{}", outcome.describe());
    for name in ["dig udp", "dig tcp"] {
        let got = outcome.result(name);
        assert!(
            got["status"].is_null() && got["rc"] != 0,
            "{name}: dig got no response from {server}: {got}"
        );
    }
    assert!(is_synthetic(&a_record(&outcome, "stub").1));
    // Every attempt is a bypass_attempt naming the server; nothing reached it.
    let to_server: Vec<&Value> = bypass_records(&outcome.audit)
        .into_iter()
        .filter(|r| record_destination(r).is_some_and(|d| d.ip() == server && d.port() == 53))
        .collect();
    for hook in ["connect", "sendmsg"] {
        assert!(
            to_server.iter().any(|r| r["hook"] == hook),
            "a `{hook}` bypass_attempt to {server}:53\n{}",
            outcome.describe()
        );
    }
    assert_eq!(
        bench.events().len(),
        1,
        "the test DNS server received only the host's probe: {:#?}",
        bench.events()
    );
}

/// What `/etc/resolv.conf` looks like inside, and whether it can be changed.
const RESOLV_CONF_PROBE: &str = r#"
with open("/etc/resolv.conf") as f:
    results["resolv.conf"] = f.read()
results["read-only mount"] = bool(os.statvfs("/etc/resolv.conf").f_flag & os.ST_RDONLY)
try:
    with open("/etc/resolv.conf", "a") as f:
        f.write("nameserver 10.0.0.53\n")
    results["write"] = "ok"
except OSError as e:
    results["write"] = errno.errorcode[e.errno]
results["stub"] = dig("allowed.test")
# The stub's and the listener's sockets live in the sandbox's namespace: none may be inherited.
results["fds"] = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        results["fds"][fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass  # the descriptor listdir itself used, closed by now
print("pid", os.getpid(), flush=True)
import sys
sys.stdin.read()
"#;

/// What a paused sandbox's network namespace holds, seen from outside with `nsenter`.
struct Namespace {
    /// `nft list ruleset`.
    ruleset: String,
    /// `ss -Hlnu` and `ss -Hlnt` lines.
    listening_udp: String,
    listening_tcp: String,
}

fn nsenter(pid: u32, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs [`RESOLV_CONF_PROBE`] and looks at the sandbox's namespace while it waits.
fn probe_resolv_conf(
    scratch: &Scratch,
    n: u32,
    sandbox: Sandbox,
    policy: &str,
) -> (Outcome, Namespace) {
    let run = write_run(scratch, n, policy, RESOLV_CONF_PROBE);
    let mut running = Running::spawn(&mut run.sandbox(sandbox).command([PYTHON, run.script_arg()]));
    let ns_pid: u32 = running
        .wait_line("pid ", HANG_LIMIT)
        .trim_start_matches("pid ")
        .parse()
        .expect("the probe prints its pid");
    let pid = wait_host_pid(running.pid(), ns_pid);
    let namespace = Namespace {
        ruleset: nsenter(pid, &["/usr/sbin/nft", "list", "ruleset"]),
        listening_udp: nsenter(pid, &["/usr/bin/ss", "-Hlnu"]),
        listening_tcp: nsenter(pid, &["/usr/bin/ss", "-Hlnt"]),
    };
    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    (run.outcome(finished), namespace)
}

/// Asserts the probe held no descriptor but stdin, stdout and stderr.
fn assert_no_inherited_descriptors(outcome: &Outcome, what: &str) {
    let fds = outcome.result("fds").as_object().expect("fds");
    let extra: Vec<(&String, &Value)> = fds
        .iter()
        .filter(|(fd, _)| fd.parse::<u32>().map_or(true, |n| n > 2))
        .collect();
    assert!(extra.is_empty(), "{what}: the sandbox inherited {extra:?}");
}

/// Whether `ss` output lists a socket bound to exactly 127.0.0.1:53.
fn listens_on_53(ss: &str) -> bool {
    ss.lines()
        .any(|line| line.split_whitespace().any(|field| field == "127.0.0.1:53"))
}

#[test]
fn resolv_conf_names_the_stub_read_only_and_the_redirect_is_in_place() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-resolv");
    let (outcome, namespace) = probe_resolv_conf(&scratch, 1, Sandbox::new(), DNS_POLICY);
    assert_ran(&outcome);
    let text = outcome.result("resolv.conf").as_str().unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("# tollgate")),
        "a `# tollgate` comment: {text:?}"
    );
    let settings: Vec<&&str> = lines.iter().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(settings, [&"nameserver 127.0.0.1"], "{text:?}");
    assert_eq!(outcome.result("read-only mount"), true, "{text:?}");
    assert_ne!(outcome.result("write"), "ok");
    assert!(is_synthetic(&a_record(&outcome, "stub").1));
    assert_no_inherited_descriptors(&outcome, "transparent");

    // Inside the namespace: the stub on 127.0.0.1:53 (UDP and TCP), the contract's DNAT rule,
    // and the filter wall as before.
    assert!(
        listens_on_53(&namespace.listening_udp),
        "{}",
        namespace.listening_udp
    );
    assert!(
        listens_on_53(&namespace.listening_tcp),
        "{}",
        namespace.listening_tcp
    );
    let ruleset = &namespace.ruleset;
    assert!(ruleset.contains("table ip tollgate_nat"), "{ruleset}");
    assert!(ruleset.contains("table inet tollgate"), "{ruleset}");
    let nat = &ruleset[ruleset.find("table ip tollgate_nat").unwrap()..];
    assert!(
        nat.contains("type nat hook output priority")
            && nat.contains("ip daddr 127.77.0.0/16")
            && nat.contains("dnat to 127.0.0.1:"),
        "{nat}"
    );
}

#[test]
fn without_transparent_mode_there_is_no_stub_and_resolv_conf_is_the_hosts() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-off");
    let host_file = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let switched_off = DNS_POLICY.replace("network:\n", "network:\n  transparent: false\n");
    for (n, what, sandbox, policy) in [
        (
            1,
            "--no-transparent",
            Sandbox::new().arg("--no-transparent"),
            DNS_POLICY,
        ),
        (
            2,
            "transparent: false",
            Sandbox::new(),
            switched_off.as_str(),
        ),
    ] {
        let (outcome, namespace) = probe_resolv_conf(&scratch, n, sandbox, policy);
        assert_ran(&outcome);
        assert_eq!(
            outcome.result("resolv.conf"),
            host_file.as_str(),
            "{what}: the sandbox sees the host's file"
        );
        // Nothing on 127.0.0.1:53: dig is told at once (port unreachable), not left waiting.
        let stub = outcome.result("stub");
        assert!(
            stub["status"].is_null() && stub["tail"].to_string().contains("connection refused"),
            "{what}: {stub}"
        );
        assert!(
            outcome.dns().is_null(),
            "{what}: no dns counters: {}",
            outcome.summary
        );
        assert_no_inherited_descriptors(&outcome, what);
        assert!(
            !listens_on_53(&namespace.listening_udp),
            "{what}: {}",
            namespace.listening_udp
        );
        assert!(
            !listens_on_53(&namespace.listening_tcp),
            "{what}: {}",
            namespace.listening_tcp
        );
        assert!(
            !namespace.ruleset.contains("tollgate_nat")
                && namespace.ruleset.contains("table inet tollgate"),
            "{what}: the wall, no redirect: {}",
            namespace.ruleset
        );
    }
}

#[test]
fn with_allow_all_every_public_looking_name_gets_an_address_and_local_ones_do_not() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-allow-all");
    let outcome = run(
        &scratch,
        1,
        "version: 1\nteam: e2e\nnetwork:\n  allow_all: true\n",
        r#"
results["anything"] = getent("hosts", "anything.example")
results["deep"] = getent("hosts", "a.deep.name.example.org")
results["localhost"] = getent("hosts", "localhost")
for name in ["anything.example", "a.deep.name.example.org"]:
    results["dig " + name] = dig(name)
for name in ["localhost", "db.localhost", "printer.local", "x.printer.local",
             "1.0.0.127.in-addr.arpa", "1.0.77.127.in-addr.arpa", "intranet",
             "8.b.d.0.1.0.0.2.ip6.arpa"]:
    results["dig " + name] = dig(name)
    results["dig PTR " + name] = dig(name, "PTR")
"#,
    );
    assert_ran(&outcome);
    let anything = getent_addresses(&outcome, "anything");
    let deep = getent_addresses(&outcome, "deep");
    assert!(
        anything.len() == 1 && is_synthetic(&anything[0]),
        "{anything:?}"
    );
    assert!(
        deep.len() == 1 && is_synthetic(&deep[0]) && deep != anything,
        "{deep:?}"
    );
    assert_eq!(a_record(&outcome, "dig anything.example").1, anything[0]);
    assert_eq!(a_record(&outcome, "dig a.deep.name.example.org").1, deep[0]);
    // localhost comes from /etc/hosts, as on the host; the stub gives it nothing.
    let local = getent_addresses(&outcome, "localhost");
    assert!(local.iter().all(|a| !is_synthetic(a)), "{local:?}");
    for name in [
        "localhost",
        "db.localhost",
        "printer.local",
        "x.printer.local",
        "1.0.0.127.in-addr.arpa",
        "1.0.77.127.in-addr.arpa",
        "intranet",
        "8.b.d.0.1.0.0.2.ip6.arpa",
    ] {
        assert_no_answer(&outcome, &format!("dig {name}"), NXDOMAIN);
        assert_no_answer(&outcome, &format!("dig PTR {name}"), NXDOMAIN);
    }
}

#[test]
fn hostile_messages_do_not_break_the_resolver() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-hostile");
    let outcome = run(
        &scratch,
        1,
        DNS_POLICY,
        include_str!("transparent_dns_hostile.py"),
    );
    assert_ran(&outcome);
    assert_eq!(outcome.result("stub"), "answered", "{}", outcome.describe());
    let rcode = |case: &str| outcome.result(&format!("rcode {case}")).as_u64();
    let tcp_rcode = |case: &str| outcome.result(&format!("tcp rcode {case}")).as_u64();
    // The contract's answers to readable but wrong messages, over UDP and TCP alike.
    const FORMERR: u64 = 1;
    const NOTIMP: u64 = 4;
    const REFUSED: u64 = 5;
    let mut wrong = Vec::new();
    for (case, allowed) in [
        ("zero questions", &[REFUSED][..]),
        ("two questions", &[REFUSED]),
        ("class CH", &[REFUSED]),
        ("opcode STATUS", &[NOTIMP]),
        ("pointer to itself", &[FORMERR]),
        ("pointer loop", &[FORMERR]),
        ("pointer past the end", &[FORMERR]),
        ("label type 0x40", &[FORMERR]),
        ("name over 255 bytes", &[FORMERR]),
        ("question cut short", &[FORMERR]),
        ("qdcount 65535", &[FORMERR, REFUSED]),
    ] {
        for (proto, got) in [("udp", rcode(case)), ("tcp", tcp_rcode(case))] {
            if !got.is_some_and(|g| allowed.contains(&g)) {
                wrong.push(format!(
                    "{case} ({proto}): rcode {got:?}, expected {allowed:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        wrong.join("\n"),
        outcome.describe()
    );

    // Unreadable datagrams get no response; the normal query after each batch is answered.
    for batch in ["truncated", "random", "oversized"] {
        let got = outcome.result(&format!("sentinel {batch}"));
        assert_eq!(got["answered"], true, "{batch}: {got}");
        assert!(
            is_synthetic(got["address"].as_str().unwrap_or_default()),
            "{got}"
        );
    }
    assert_eq!(
        outcome.result("sentinel truncated")["before"],
        0,
        "a datagram shorter than a header is dropped, not answered"
    );
    // While 100 TCP connections are held, UDP still answers; after, TCP does too.
    for name in ["during flood", "after flood tcp", "after flood udp"] {
        let got = outcome.result(name);
        assert_eq!(got["rcode"], 0, "{name}: {got}\n{}", outcome.describe());
        assert!(
            is_synthetic(got["address"].as_str().unwrap_or_default()),
            "{name}: {got}"
        );
    }
    for name in ["dig udp", "dig tcp"] {
        assert!(is_synthetic(&a_record(&outcome, name).1), "{name}");
    }
    let (queries, answered, _) = counters(&outcome);
    assert!(queries >= answered && answered >= 6, "{}", outcome.dns());
}

/// Fills the execution's table of synthetic names (16384, contract) by hand over UDP, one
/// query at a time, then asks for more.
const FILL_THE_TABLE: &str = r#"
import struct
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)

def ask(name, qid):
    """(rcode, address) of an A query for `name` (asked again once if it is lost)."""
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0\0\1\0\1"
    for attempt in range(2):
        results["resent"] = results.get("resent", 0) + (attempt > 0)
        sock.sendto(query, ("127.0.0.1", 53))
        try:
            while True:
                data = sock.recv(4096)
                if data[:2] == query[:2]:
                    answers = struct.unpack(">H", data[6:8])[0]
                    address = ".".join(str(b) for b in data[-4:]) if answers else None
                    return data[3] & 0xF, address
        except socket.timeout:
            continue
    return None, None

for i in range(16384):
    got = ask("n%d.example" % i, i & 0xFFFF)
    if got[0] != 0:
        results["failed at"] = [i, got]
        break
    results["last"] = got
results["first again"] = ask("n0.example", 1)
results["one more"] = ask("one-more.example", 2)
results["one more again"] = ask("one-more.example", 3)
results["last again"] = ask("n16383.example", 4)
"#;

#[test]
fn the_table_of_names_is_bounded_and_what_it_holds_stays() {
    let _lock = SuiteLock::shared();
    let scratch = scratch("dns-table");
    let outcome = run(
        &scratch,
        1,
        "version: 1\nteam: e2e\nnetwork:\n  allow_all: true\n",
        FILL_THE_TABLE,
    );
    assert_ran(&outcome);
    assert!(
        outcome.results.get("failed at").is_none(),
        "every name up to 16384 gets an address: {}",
        outcome.results
    );
    const SERVFAIL: u64 = 2;
    let pair = |name: &str| -> (Option<u64>, Option<String>) {
        let got = outcome.result(name);
        (got[0].as_u64(), got[1].as_str().map(str::to_owned))
    };
    // 127.77.0.1 upward, one each: the 16384th name has 127.77.0.1 + 16383.
    let last = Some("127.77.64.0".to_owned());
    assert_eq!(pair("last"), (Some(0), last.clone()));
    assert_eq!(
        pair("first again"),
        (Some(0), Some("127.77.0.1".to_owned()))
    );
    assert_eq!(pair("last again"), (Some(0), last));
    assert_eq!(pair("one more"), (Some(SERVFAIL), None));
    assert_eq!(pair("one more again"), (Some(SERVFAIL), None));
    // Every query counted (a lost datagram asked again counts twice, so those are added).
    let resent = outcome.result("resent").as_u64().unwrap();
    let (queries, answered, refused) = counters(&outcome);
    assert_eq!(
        (queries, answered, refused),
        (16384 + 4 + resent, 16384 + 2, 2),
        "SERVFAIL counts as refused: {}",
        outcome.dns()
    );
}
