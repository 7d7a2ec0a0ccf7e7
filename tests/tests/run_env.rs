//! What the command sees inside `tollgate run`: its stdio, a clean environment (with the
//! proxy settings only when the network is on), an unprivileged identity with no
//! capabilities, loopback only when the network is off, and the `--summary` it leaves.
//!
//! Needs root.

use std::{collections::BTreeMap, fs};

use tollgate_tests::{
    leaks::SuiteLock,
    probes::{write_escape_script, Outcome, ProbeReport},
    sandbox::FORK_UNTIL_REFUSED,
    sandbox::{
        assert_execution_gone, is_execution_id, output, read_json, Sandbox, HANG_LIMIT,
        NETWORK_POLICY, OFFLINE_POLICY, PYTHON,
    },
    unique, Scratch,
};

const EPERM: i32 = 1;
const ECONNREFUSED: i32 = 111;

/// The child's environment, from `/usr/bin/env` run directly (no shell adding PWD/SHLVL).
fn child_env(sandbox: Sandbox) -> BTreeMap<String, String> {
    let finished = sandbox.run(["/usr/bin/env"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    finished
        .stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn stdin_stdout_and_stderr_pass_straight_through() {
    let _lock = SuiteLock::shared();
    // 1 MiB that is not all one byte, through `cat`.
    let input: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let finished = output(
        &mut Sandbox::new().command(["/bin/cat"]),
        Some(&input),
        HANG_LIMIT,
    );
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
    assert!(
        finished.stdout_bytes == input,
        "cat returned {} bytes of {}",
        finished.stdout_bytes.len(),
        input.len()
    );

    let finished = Sandbox::new().run([
        "/bin/sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 5",
    ]);
    assert_eq!(finished.code(), 5);
    assert_eq!(finished.stdout, "to-stdout\n");
    assert!(finished.stderr.contains("to-stderr"), "{}", finished.stderr);
}

#[test]
fn the_environment_is_clean_without_network() {
    let _lock = SuiteLock::shared();
    let planted = unique("planted");
    let passed = unique("passed");
    let env = child_env(
        Sandbox::new()
            .supervisor_env("HOME", "/root")
            .supervisor_env("TOLLGATE_E2E_PLANTED", &planted)
            .supervisor_env("TOLLGATE_E2E_PASSED", &passed)
            .arg("--env")
            .arg("TOLLGATE_E2E_SET=set-value")
            .arg("--pass-env")
            .arg("TOLLGATE_E2E_PASSED"),
    );
    assert_eq!(env.get("HOME").map(String::as_str), Some("/tmp"), "{env:?}");
    assert!(env.contains_key("PATH"), "{env:?}");
    assert!(
        !env["PATH"].contains("/root"),
        "PATH leads into /root: {env:?}"
    );
    assert!(env.contains_key("LANG"), "{env:?}");
    assert_eq!(
        env.get("TOLLGATE_E2E_SET").map(String::as_str),
        Some("set-value")
    );
    assert_eq!(
        env.get("TOLLGATE_E2E_PASSED").map(String::as_str),
        Some(passed.as_str())
    );
    assert!(!env.contains_key("TOLLGATE_E2E_PLANTED"), "{env:?}");
    assert!(env.values().all(|v| !v.contains(&planted)), "{env:?}");
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "TERM",
        "TOLLGATE_E2E_SET",
        "TOLLGATE_E2E_PASSED",
        // The Python helper, in every sandbox, switched off without network.
        "PYTHONPATH",
        "TOLLGATE_HTTP",
    ];
    for name in env.keys() {
        assert!(
            allowed.contains(&name.as_str()),
            "unexpected variable {name} in a clean environment: {env:?}"
        );
    }
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ] {
        assert!(!env.contains_key(name), "no network, no {name}: {env:?}");
    }
}

#[test]
fn the_environment_carries_the_proxy_when_the_network_is_on() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("envnet");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let planted = unique("planted");
    let env = child_env(
        Sandbox::new()
            .policy(&policy)
            .supervisor_env("HOME", "/root")
            .supervisor_env("TOLLGATE_E2E_PLANTED", &planted),
    );
    let proxy = env.get("HTTP_PROXY").cloned().unwrap_or_default();
    let port = proxy
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    assert!(port.is_some(), "HTTP_PROXY=http://127.0.0.1:P: {env:?}");
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        assert_eq!(env.get(name), Some(&proxy), "{name}: {env:?}");
    }
    for name in ["NO_PROXY", "no_proxy"] {
        assert_eq!(
            env.get(name).map(String::as_str),
            Some("localhost,127.0.0.1,::1"),
            "{name}: {env:?}"
        );
    }
    assert_eq!(env.get("HOME").map(String::as_str), Some("/tmp"));
    assert!(!env.contains_key("TOLLGATE_E2E_PLANTED"), "{env:?}");
    assert!(env.values().all(|v| !v.contains(&planted)), "{env:?}");
}

/// A variable an auth provider reads its secret from can never be handed to the sandbox.
#[test]
fn a_provider_secret_cannot_be_passed_into_the_sandbox() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("secretenv");
    let policy = scratch.file(
        "policy.yaml",
        "version: 1
team: acme
network:
  allow:
    - https://api.example.com
auth_providers:
  - name: Example Key
    type: api_key
    header: X-Api-Key
    secret: {env: TOLLGATE_SECRET_ACME_E2EPROVIDERKEY}
    scope: [https://api.example.com]
",
    );
    let secret = unique("provider-secret");
    for option in [
        vec!["--pass-env", "TOLLGATE_SECRET_ACME_E2EPROVIDERKEY"],
        vec!["--env", "TOLLGATE_SECRET_ACME_E2EPROVIDERKEY=x"],
    ] {
        let mut sandbox = Sandbox::new()
            .policy(&policy)
            .supervisor_env("TOLLGATE_SECRET_ACME_E2EPROVIDERKEY", &secret);
        for arg in &option {
            sandbox = sandbox.arg(arg);
        }
        let finished = sandbox.run(["/usr/bin/env"]);
        assert_eq!(finished.code(), 125, "{option:?}: {}", finished.describe());
        assert!(!finished.stdout.contains(&secret));
        assert!(
            !finished.stderr.contains(&secret),
            "errors never show secrets"
        );
    }
    // Without asking for it, the secret is not there either.
    let finished = Sandbox::new()
        .policy(&policy)
        .supervisor_env("TOLLGATE_SECRET_ACME_E2EPROVIDERKEY", &secret)
        .run(["/usr/bin/env"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(!finished.stdout.contains(&secret), "{}", finished.stdout);
}

/// `/proc/self/status` fields of the sandboxed process.
fn status_fields(sandbox: Sandbox) -> BTreeMap<String, String> {
    let finished = sandbox.run(["/bin/cat", "/proc/self/status"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    finished
        .stdout
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The first uid of the pool executions lease their users from (`sandbox::users`).
const POOL_BASE: u32 = 0x7000_0000;

/// The uid of a `/proc/<pid>/status` `Uid:`/`Gid:` line whose four ids all agree.
fn single_id(line: &str) -> u32 {
    let ids: Vec<u32> = line.split('\t').map(|id| id.parse().expect("id")).collect();
    assert!(
        ids.len() == 4 && ids.iter().all(|id| *id == ids[0]),
        "{line}"
    );
    ids[0]
}

#[test]
fn the_command_runs_as_a_leased_user_without_capabilities_and_with_no_new_privs() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("identity");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    for sandbox in [Sandbox::new(), Sandbox::new().policy(&policy)] {
        let status = status_fields(sandbox);
        let uid = single_id(&status["Uid"]);
        assert!(
            (POOL_BASE..POOL_BASE + 65_536).contains(&uid),
            "a uid of the pool: {status:?}"
        );
        assert_eq!(single_id(&status["Gid"]), uid, "{status:?}");
        assert!(
            status["Groups"].is_empty(),
            "supplementary groups are cleared: {:?}",
            status["Groups"]
        );
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status[cap], "0000000000000000", "{cap}: {status:?}");
        }
        assert_eq!(status["NoNewPrivs"], "1", "{status:?}");
    }

    let status = status_fields(Sandbox::new().arg("--user").arg("65534"));
    assert_eq!(status["Uid"], "65534\t65534\t65534\t65534", "{status:?}");
    assert_eq!(status["Gid"], "65534\t65534\t65534\t65534", "{status:?}");
    let status = status_fields(Sandbox::new().arg("--user").arg("1000:1001"));
    assert_eq!(status["Uid"], "1000\t1000\t1000\t1000", "{status:?}");
    assert_eq!(status["Gid"], "1001\t1001\t1001\t1001", "{status:?}");
    assert_eq!(status["CapBnd"], "0000000000000000", "{status:?}");
}

#[test]
fn the_summary_names_the_leased_user() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("summary-uid");
    let summary = scratch.output("summary.json");
    let finished = Sandbox::new().summary(&summary).run(["/usr/bin/id", "-u"]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let recorded = read_json(&summary)["uid"]
        .as_u64()
        .expect("uid in the summary");
    assert_eq!(finished.stdout.trim(), recorded.to_string());
}

#[test]
fn the_command_leads_its_own_process_group() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new().run([
        PYTHON,
        "-c",
        "import os; print(os.getpgrp() == os.getpid(), os.getpgrp() != os.getpgid(os.getppid()))",
    ]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert_eq!(
        finished.stdout.trim(),
        "True True",
        "{}",
        finished.describe()
    );
}

#[test]
fn the_working_directory_defaults_to_tmp_and_follows_cwd() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new().run(["/bin/pwd"]);
    assert_eq!(finished.stdout.trim(), "/tmp", "{}", finished.describe());
    let finished = Sandbox::new().arg("--cwd").arg("/usr").run(["/bin/pwd"]);
    assert_eq!(finished.stdout.trim(), "/usr", "{}", finished.describe());
}

/// Without a policy, and with a policy that has no `network`: loopback only, no proxy, and
/// nothing else reachable.
#[test]
fn network_disabled_means_loopback_only() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("offline");
    let script = write_escape_script(&scratch);
    let offline = scratch.file("offline.yaml", OFFLINE_POLICY);
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_spec = format!("tcp:127.0.0.1:{}", host.local_addr().unwrap().port());
    for (tag, sandbox) in [
        ("no policy", Sandbox::new()),
        ("offline policy", Sandbox::new().policy(&offline)),
    ] {
        let finished = sandbox.run([
            PYTHON,
            &script.display().to_string(),
            "loopback:",
            "tcp:10.0.0.1:80",
            "tcp:8.8.8.8:443",
            "tcp:[2001:db8::1]:443",
            "udp:8.8.8.8:53",
            &host_spec,
            "proxy:",
        ]);
        assert_eq!(finished.code(), 0, "[{tag}] {}", finished.describe());
        let report = ProbeReport::parse(&finished.stdout);
        assert_eq!(report.info("ifaces"), "lo", "[{tag}] only lo exists");
        assert_eq!(report.info("proxy"), "-", "[{tag}] no proxy settings");
        assert_eq!(
            report.outcome("loopback:"),
            &Outcome::Ok,
            "[{tag}] lo is up"
        );
        for spec in [
            "tcp:10.0.0.1:80",
            "tcp:8.8.8.8:443",
            "tcp:[2001:db8::1]:443",
            "udp:8.8.8.8:53",
        ] {
            assert_eq!(
                report.outcome(spec).errno(),
                Some(EPERM),
                "[{tag}] {spec} is refused by the eBPF wall: {:#?}",
                report.probes
            );
        }
        assert_eq!(
            report.outcome(&host_spec).errno(),
            Some(ECONNREFUSED),
            "[{tag}] the host's loopback is not the sandbox's"
        );
        assert!(
            !report.outcome("proxy:").is_ok(),
            "[{tag}] no proxy to reach"
        );
        assert!(
            matches!(host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "[{tag}] the host listener was reached"
        );
    }
}

#[test]
fn the_summary_describes_the_execution() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("summary");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let summary_path = scratch.output("summary.json");
    let finished = Sandbox::new().policy(&policy).summary(&summary_path).run([
        PYTHON,
        "-c",
        "import socket, sys\n\
             s = socket.socket()\n\
             s.settimeout(2)\n\
             try:\n    s.connect(('10.9.8.7', 4321))\n\
             except OSError as e:\n    print(e.errno)\n\
             sys.exit(3)",
    ]);
    assert_eq!(finished.code(), 3, "{}", finished.describe());
    assert_eq!(finished.stdout.trim(), "1", "the attempt got EPERM");
    let summary = read_json(&summary_path);
    let execution = summary["execution"].as_str().unwrap_or_default();
    assert!(is_execution_id(execution), "execution id: {summary}");
    assert_execution_gone(execution);
    assert_eq!(summary["team"], "acme", "{summary}");
    assert_eq!(summary["exit_status"], 3, "{summary}");
    assert!(summary["duration_ms"].is_u64(), "{summary}");
    assert_eq!(summary["bypass_attempts"], 1, "{summary}");
    assert!(
        summary["proxy"].is_object(),
        "with the network on, the summary carries the proxy counters: {summary}"
    );

    // Without a policy: no team, no proxy, and the command's status.
    let summary_path = scratch.output("summary-offline.json");
    let finished = Sandbox::new()
        .summary(&summary_path)
        .run(["/bin/sh", "-c", "kill -KILL $$"]);
    assert_eq!(finished.code(), 137);
    let summary = read_json(&summary_path);
    assert_eq!(summary["exit_status"], 137, "{summary}");
    assert!(summary["team"].is_null(), "{summary}");
    assert_eq!(summary["bypass_attempts"], 0, "{summary}");
    assert_execution_gone(summary["execution"].as_str().unwrap_or_default());
    let _ = fs::remove_file(&summary_path);
}

#[test]
fn max_processes_stops_a_fork_bomb_and_defaults_to_1024() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("nproc");
    let summary = scratch.output("summary.json");
    let finished = Sandbox::new()
        .summary(&summary)
        .arg("--max-processes")
        .arg("16")
        .run([PYTHON, "-c", FORK_UNTIL_REFUSED]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let words: Vec<&str> = finished.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{}", finished.describe());
    let made: u32 = words[1].parse().expect("count");
    assert_eq!(words[2], "EAGAIN", "fork was refused: {}", finished.stdout);
    assert!(made < 16, "at most 16 processes with the parent: {made}");
    // The children still paused died with the execution.
    assert_execution_gone(
        read_json(&summary)["execution"]
            .as_str()
            .unwrap_or_default(),
    );
    let default = Sandbox::new().run(["/bin/sh", "-c", "grep 'Max processes' /proc/self/limits"]);
    let limits: Vec<&str> = default.stdout.split_whitespace().collect();
    assert_eq!(
        limits,
        ["Max", "processes", "1024", "1024", "processes"],
        "{}",
        default.describe()
    );

    let refused = Sandbox::new()
        .arg("--max-processes")
        .arg("0")
        .run(["/bin/true"]);
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    assert!(
        refused.stderr.contains("--max-processes"),
        "{}",
        refused.stderr
    );
}

/// Sizes of the sandbox's scratch filesystems, and what a write past the end of /tmp gets.
const SCRATCH_SIZES: &str = r#"
import os
for path in ["/tmp", "/var/tmp", "/dev/shm"]:
    s = os.statvfs(path)
    print(path, s.f_blocks * s.f_frsize)
try:
    with open("/tmp/fill", "wb") as f:
        f.write(b"x" * (3 << 20))
    print("fill written")
except OSError as e:
    print("fill", e.strerror)
"#;

#[test]
fn scratch_filesystems_are_bounded_by_tmp_size_and_dev_shm_by_64_mib() {
    let _lock = SuiteLock::shared();
    let finished = Sandbox::new()
        .arg("--tmp-size")
        .arg("2MiB")
        .run([PYTHON, "-c", SCRATCH_SIZES]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "/tmp 2097152",
            "/var/tmp 2097152",
            "/dev/shm 67108864",
            "fill No space left on device"
        ],
        "{}",
        finished.describe()
    );
    let default = Sandbox::new().run([PYTHON, "-c", SCRATCH_SIZES]);
    assert!(
        default.stdout.lines().next() == Some("/tmp 1073741824"),
        "1 GiB by default: {}",
        default.describe()
    );
    for wrong in ["0", "512KiB", "lots"] {
        let refused = Sandbox::new()
            .arg("--tmp-size")
            .arg(wrong)
            .run(["/bin/true"]);
        assert_eq!(refused.code(), 125, "{wrong}: {}", refused.describe());
        assert!(refused.stderr.contains("--tmp-size"), "{}", refused.stderr);
    }
}
