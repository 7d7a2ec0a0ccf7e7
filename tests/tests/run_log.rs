//! tollgate's own log end to end: `tollgate run --log FILE` keeps tollgate's lines (the
//! proxy's operator lines, warnings, debug lines) apart from the command's stderr, the file is
//! opened under the rules of `--audit`, and `TOLLGATE_LOG=debug` shows tollgate's debug lines
//! without the libraries' (hyper, rustls, h2).
//!
//! The command is `/usr/bin/curl` through the proxy to an upstream in a network namespace the
//! test builds (`tollgate_tests::upstream`), and `/bin/sh` writing to its own stderr.
//!
//! Needs root. No packet goes anywhere but loopback and the upstream's veth pair.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{Finished, Sandbox},
    upstream::{UpstreamHost, CLOSED_PORT, HTTP_PORT},
    Scratch,
};

/// Allows `up.test` (pinned to the upstream) over http and https on the HTTP port and the
/// closed one.
fn policy(scratch: &Scratch, up: &UpstreamHost) -> std::path::PathBuf {
    let text = format!(
        "version: 1\nteam: logs\nnetwork:\n  hosts:\n    up.test: {}\n  allow:\n    - host: up.test\n      ports: [{HTTP_PORT}, {CLOSED_PORT}]\n      schemes: [http, https]\n      allowed_ips: [{}]\n",
        up.addr,
        up.subnet()
    );
    scratch.file("policy.yaml", &text)
}

/// One allowed request, one refused one (another host), one HTTPS request intercepted and
/// failing upstream, then a line of the command's own on its stderr.
const COMMAND: &str = "\
/usr/bin/curl -sS -o /dev/null http://up.test:8080/echo/allowed
/usr/bin/curl -sS -o /dev/null http://refused.test:8080/echo/refused
/usr/bin/curl -sS -o /dev/null --cacert \"$SSL_CERT_FILE\" https://up.test:8080/echo/tls
echo the-commands-own-stderr >&2
exit 0
";

fn run(sandbox: Sandbox) -> Finished {
    let finished = sandbox.run(["/bin/sh", "-c", COMMAND]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    finished
}

/// The lines of `text` that are not curl's own complaints (which it prints on the command's
/// stderr: `curl: (22) ...`) nor the command's marker.
fn foreign_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("curl: "))
        .filter(|l| *l != "the-commands-own-stderr")
        .collect()
}

#[test]
fn tollgate_lines_go_to_the_log_file_and_the_commands_stderr_stays_its_own() {
    let _lock = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("log-file");
    let policy = policy(&scratch, &up);
    let log = scratch.output("tollgate.log");
    // Without --log, the operator lines are on stderr: the baseline the file must take over.
    let plain = run(Sandbox::new().policy(&policy));
    assert!(
        plain.stderr.contains("/echo/allowed"),
        "the operator line of the allowed request is on stderr without --log: {}",
        plain.describe()
    );
    for debug in [false, true] {
        let mut sandbox = Sandbox::new().policy(&policy).arg("--log").arg(&log);
        if debug {
            // Debug lines written before the file is open (reading the policy, starting the
            // proxy) must reach the file too.
            sandbox = sandbox.supervisor_env("TOLLGATE_LOG", "debug");
        }
        let finished = run(sandbox);
        assert!(
            finished.stderr.contains("the-commands-own-stderr"),
            "the command's stderr is intact: {}",
            finished.describe()
        );
        assert_eq!(
            foreign_lines(&finished.stderr),
            Vec::<&str>::new(),
            "nothing of tollgate's on stderr with --log (debug: {debug}): {}",
            finished.describe()
        );
    }
    let text = fs::read_to_string(&log).expect("the log file exists");
    for needle in ["/echo/allowed", "refused.test", "up.test:8080"] {
        assert!(text.contains(needle), "the log names {needle}:\n{text}");
    }
    assert!(
        text.contains("DEBUG"),
        "the debug run's lines went to the file too:\n{text}"
    );
    assert_eq!(
        text.matches("/echo/allowed").count(),
        2,
        "both runs appended their lines (O_APPEND, never truncated):\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no terminal colour codes in a file:\n{text}"
    );
    let mode = fs::metadata(&log).expect("stat").permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the log is root's alone (it names destinations)"
    );
}

#[test]
fn the_log_file_is_refused_where_the_sandbox_could_reach_it() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("log-refused");
    let outputs = scratch.output("x").parent().expect("outputs").to_owned();
    let victim = outputs.join("victim");
    fs::write(&victim, "precious").expect("victim");
    std::os::unix::fs::symlink(&victim, outputs.join("link")).expect("symlink");
    let fifo = outputs.join("fifo");
    let status = std::process::Command::new("/usr/bin/mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // The scratch dir is shared with every sandbox the harness starts.
    let in_share = scratch.dir.join("tollgate.log");
    let cases: [(&Path, &str); 3] = [
        (&in_share, "shares"),
        (&outputs.join("link"), "link"),
        (&fifo, "not a regular file"),
    ];
    for (path, why) in cases {
        let finished = Sandbox::new().arg("--log").arg(path).run(["/bin/true"]);
        assert_eq!(
            finished.code(),
            125,
            "--log {}: {}",
            path.display(),
            finished.describe()
        );
        assert!(
            finished.stderr.contains("--log") && finished.stderr.contains(why),
            "--log {}: says which flag and why ({why}): {}",
            path.display(),
            finished.describe()
        );
    }
    assert!(!in_share.exists(), "nothing written inside the share");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    // The audit log and the log cannot be one file: records would be mixed with lines.
    let same = scratch.output("both.log");
    let finished = Sandbox::new()
        .arg("--log")
        .arg(&same)
        .audit(&same)
        .run(["/bin/true"]);
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    assert!(
        finished.stderr.contains("--log") && finished.stderr.contains("--audit"),
        "{}",
        finished.describe()
    );
}

/// Whether a formatted log line comes from one of tollgate's crates: its target
/// (`tollgate::proxy::...`, `tollgate_policy::...`) follows the level.
fn from_tollgate(line: &str) -> bool {
    line.split_whitespace()
        .skip_while(|word| !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(word))
        .nth(1)
        .is_some_and(|target| target.starts_with("tollgate"))
}

#[test]
fn tollgate_log_debug_shows_tollgates_lines_and_not_the_libraries() {
    let _lock = SuiteLock::shared();
    let up = UpstreamHost::start();
    let scratch = Scratch::new("log-filter");
    let policy = policy(&scratch, &up);
    let finished = run(Sandbox::new()
        .policy(&policy)
        .supervisor_env("TOLLGATE_LOG", "debug"));
    let lines = foreign_lines(&finished.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("DEBUG") && from_tollgate(l)),
        "tollgate's own debug lines are shown: {}",
        finished.describe()
    );
    let noise: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            ["hyper", "rustls", "h2", "rustables", "netlink", "aya"]
                .iter()
                .any(|library| l.contains(&format!(" {library}")))
                || !from_tollgate(l)
        })
        .collect();
    assert!(
        noise.is_empty(),
        "no library lines at debug ({} of {}): {noise:#?}",
        noise.len(),
        lines.len()
    );
    // Naming a library still shows its lines: the operator asked. (rustables, which builds
    // the nftables table of every run, logs each netlink attribute at debug.)
    let asked = run(Sandbox::new()
        .policy(&policy)
        .supervisor_env("TOLLGATE_LOG", "debug,rustables=debug"));
    assert!(
        asked.stderr.lines().any(|l| l.contains(" rustables")),
        "TOLLGATE_LOG=debug,rustables=debug shows rustables's lines: {}",
        asked.describe()
    );
}
