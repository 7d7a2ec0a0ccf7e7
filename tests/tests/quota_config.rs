//! Where a node counts team quotas (#13), as the operator configures it: `tollgate run`'s
//! `--redis-url` and its companions (and `TOLLGATE_REDIS_URL`), node.yaml's `quotas:` for
//! the node service, `tollgate serve`'s check of the store at start, `tollgate doctor`'s
//! line, and the quota metrics of the service.
//!
//! Every Redis is a real `redis-server` of the test's own on a loopback port
//! (`tollgate_tests::redis`), and no message may show a password: each test's password is
//! a word that appears nowhere else, looked for in every output. Needs root (the service,
//! the doctor's whole sandbox). No packet goes anywhere but loopback and the upstream's
//! veth pair.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use tollgate_tests::{
    leaks::SuiteLock,
    redis::RedisServer,
    sandbox::{output, read_json, read_json_lines, Finished, HANG_LIMIT},
    serve::{curl, upstream_policy, Caller, Node, Service, TestGroup, TestUser},
    tollgate,
    upstream::UpstreamHost,
    Scratch,
};

/// A password that only the configuration holds: never in any output.
const SECRET: &str = "quota-config-s3cret";

/// `tollgate ARGS` without any quota store in its environment but what the test gives.
fn tollgate_clean() -> Command {
    let mut command = tollgate();
    command.env_remove("TOLLGATE_REDIS_URL");
    command
}

fn run(command: &mut Command) -> Finished {
    let finished = output(command, None, HANG_LIMIT);
    for text in [&finished.stdout, &finished.stderr] {
        assert!(
            !text.contains(SECRET),
            "the password was shown:\n{}",
            finished.describe()
        );
    }
    finished
}

/// One line `tollgate: ...` containing `what`, and exit status `code`.
fn assert_one_line(finished: &Finished, code: i32, what: &str) {
    assert_eq!(finished.code(), code, "{}", finished.describe());
    let lines = finished.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with("tollgate: ") && lines[0].contains(what),
        "expected one line `tollgate: ...` naming {what:?}\n{}",
        finished.describe()
    );
}

/// A file as an operator writes a secret: root's, mode 0600.
fn secret_file(scratch: &Scratch, name: &str, text: &str) -> PathBuf {
    let path = scratch.file(name, text);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn run_refuses_a_bad_quota_store_in_one_line_without_the_password() {
    let scratch = Scratch::new("quota-flags");
    let shared = scratch.file("shared-password", SECRET);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    let bad_url = format!("http://:{SECRET}@127.0.0.1:6379");
    for (args, env, what) in [
        (vec!["--redis-url", bad_url.as_str()], None, "redis://"),
        // From the environment, the same check and the same silence.
        (vec![], Some(format!("redis://:{SECRET}@")), "is not a URL"),
        (vec!["--quota-store-failure", "local"], None, "--redis-url"),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-password-file",
                shared.to_str().unwrap(),
            ],
            None,
            "chmod go-w",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-ca",
                "/etc/ca.pem",
            ],
            None,
            "rediss://",
        ),
    ] {
        let mut command = tollgate_clean();
        command.arg("run").args(&args);
        if let Some(url) = &env {
            command.env("TOLLGATE_REDIS_URL", url);
        }
        let finished = run(command.args(["--", "/bin/true"]));
        assert_one_line(&finished, 125, what);
    }
    // A value clap refuses is a usage error of `run`: 125, as every other.
    for args in [
        ["--quota-nodes", "0"],
        ["--quota-store-failure", "allow"],
        ["--redis-connect-timeout", "0s"],
    ] {
        let finished = run(tollgate_clean()
            .arg("run")
            .args(args)
            .args(["--", "/bin/true"]));
        assert_eq!(finished.code(), 125, "{args:?}: {}", finished.describe());
        assert!(finished.stderr.contains(args[0]), "{}", finished.describe());
    }
    // --help names the variable but never prints its value.
    let help = run(tollgate_clean().args(["run", "--help"]).env(
        "TOLLGATE_REDIS_URL",
        format!("redis://:{SECRET}@127.0.0.1:6379"),
    ));
    assert_eq!(help.code(), 0, "{}", help.describe());
    for flag in [
        "--redis-url",
        "TOLLGATE_REDIS_URL",
        "--redis-password-file",
        "--redis-ca",
        "--redis-connect-timeout",
        "--quota-store-failure",
        "--quota-nodes",
    ] {
        assert!(help.stdout.contains(flag), "{flag}: {}", help.describe());
    }
}

#[test]
fn serve_checks_the_quotas_section_and_prints_it_in_the_schema() {
    let scratch = Scratch::new("quota-node-yaml");
    let url = secret_file(
        &scratch,
        "redis-url",
        &format!("redis://:{SECRET}@127.0.0.1:6379\n"),
    );
    let good = scratch.file(
        "good.yaml",
        &format!(
            "quotas:\n  redis_url_file: {}\n  store_failure: local\n  expected_nodes: 3\n",
            url.display()
        ),
    );
    let checked = run(tollgate_clean()
        .args(["serve", "--check-config", "--config"])
        .arg(&good));
    assert_eq!(checked.code(), 0, "{}", checked.describe());
    let bad = scratch.file(
        "bad.yaml",
        &format!("version: 1\nquotas:\n  redis_url: http://:{SECRET}@127.0.0.1\n"),
    );
    let checked = run(tollgate_clean()
        .args(["serve", "--check-config", "--config"])
        .arg(&bad));
    assert_one_line(&checked, 2, "bad.yaml:3:14: ");
    let schema = run(tollgate_clean().args(["serve", "--print-schema"]));
    let schema: serde_json::Value = serde_json::from_str(&schema.stdout).expect("JSON");
    let quotas = &schema["$defs"]["QuotasSection"]["properties"];
    for key in [
        "redis_url",
        "redis_url_file",
        "redis_password_file",
        "redis_ca",
        "connect_timeout",
        "store_failure",
        "expected_nodes",
    ] {
        assert!(quotas.get(key).is_some(), "{key}: {schema}");
    }
}

#[test]
fn serve_refuses_to_start_when_redis_refuses_its_password() {
    let _lock = SuiteLock::shared();
    let redis = RedisServer::with_password("the-right-one");
    let scratch = Scratch::new("quota-serve-auth");
    let wrong_url = secret_file(
        &scratch,
        "redis-url",
        &format!("{}\n", redis.url_with_password(SECRET)),
    );
    let wrong_password = secret_file(&scratch, "redis-password", SECRET);
    for quotas in [
        format!("  redis_url_file: {}\n", wrong_url.display()),
        format!(
            "  redis_url: redis://127.0.0.1:{}\n  redis_password_file: {}\n",
            redis.port(),
            wrong_password.display()
        ),
    ] {
        // Paths of the scratch directory's own: were the check missing, the service would
        // start here (and the test fail at the hang limit).
        let config = scratch.file(
            "node.yaml",
            &format!(
                "socket: {{path: {dir}/tollgate.sock}}\nteams_dir: {dir}\nquotas:\n{quotas}",
                dir = scratch.dir.display()
            ),
        );
        let finished = run(tollgate_clean().args(["serve", "--config"]).arg(&config));
        assert_eq!(finished.code(), 2, "{}", finished.describe());
        let refusal: Vec<&str> = finished
            .stderr_lines()
            .into_iter()
            .filter(|line| line.starts_with("tollgate: "))
            .collect();
        assert!(
            refusal.len() == 1
                && refusal[0].contains("refused the password")
                && refusal[0].contains(&format!("127.0.0.1:{}", redis.port()))
                && refusal[0].contains("refusing to serve"),
            "{}",
            finished.describe()
        );
        assert!(!scratch.dir.join("tollgate.sock").exists());
    }
}

/// A team policy reaching the upstream as `up.test`, with `quotas` appended.
fn quota_policy(team: &str, up: &UpstreamHost, quotas: &str) -> String {
    format!("{}{quotas}", upstream_policy(team, up))
}

/// One request a minute for the team, a thousand a day to up.test.
const QUOTAS: &str = "quotas:
  requests_per_minute: 1
  destinations:
    - host: up.test
      requests_per_day: 1000
";

#[test]
fn the_service_gives_every_worker_its_store_and_callers_cannot_choose_another() {
    let _lock = SuiteLock::shared();
    let redis = RedisServer::start();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", &quota_policy("a", &up, QUOTAS))
            .quota_store(&format!("redis_url: {}", redis.url()))
            // The service's own environment is not a caller's flag, nor its store: were it
            // read as `--redis-url`, every launch would be refused.
            .env("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1"),
    );
    let client = || service.client(&user).team("a");
    let own = user.own_dir(&service.paths.dir, "out");
    let summary = own.join("summary.json");
    let audit = own.join("audit.jsonl");

    // Two requests in one execution: the minute's one is granted, the second refused.
    let both = client()
        .arg("--summary")
        .arg(&summary)
        .arg("--audit")
        .arg(&audit)
        .run([
            "/bin/sh",
            "-c",
            "/usr/bin/curl -sS -o /dev/null -w '%{http_code} ' http://up.test:8080/one; \
             /usr/bin/curl -sS -o /dev/null -w '%{http_code}' http://up.test:8080/two",
        ]);
    assert_eq!(
        both.code(),
        0,
        "{}\n{}",
        both.describe(),
        service.describe()
    );
    assert_eq!(
        both.stdout,
        "200 429",
        "{}\n{}",
        both.describe(),
        service.describe()
    );
    let report = &read_json(&summary)["quotas"];
    assert_eq!(
        report["store"],
        format!("redis://127.0.0.1:{}", redis.port()),
        "{report}"
    );
    assert_eq!(report["fleet_wide"], true, "{report}");
    // The counters are in the node's Redis, under the team's hash tag.
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:{a}:*"]);
    assert!(keys.contains("tollgate:{a}:rpm:team"), "{keys}");

    for args in [
        &["--redis-url", "redis://127.0.0.1:1"][..],
        &["--redis-password-file", "/etc/shadow"][..],
        &["--quota-store-failure", "local"][..],
        &["--quota-nodes", "2"][..],
    ] {
        let mut refused = client();
        for arg in args {
            refused = refused.arg(arg);
        }
        let finished = refused.run(["/bin/true"]);
        assert_one_line(&finished, 125, &format!("{} cannot be used", args[0]));
    }

    // The caller's own TOLLGATE_REDIS_URL is not sent, and so not refused: the node's
    // store applies whatever the caller's environment says.
    let with_env = client()
        .env("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1")
        .run(["/bin/true"]);
    assert_eq!(with_env.code(), 0, "{}", with_env.describe());

    let finished = "tollgate_executions_finished_total";
    let after = service.scrape_until("the quota executions finished", |scrape| {
        scrape.sum(finished, &[("team", "a")]) >= 2.0
    });
    let admitted = |quota, scope| {
        after.sum(
            "tollgate_quota_admitted_total",
            &[("team", "a"), ("quota", quota), ("scope", scope)],
        )
    };
    assert_eq!(admitted("requests_per_minute", "team"), 1.0);
    assert_eq!(admitted("requests_per_day", "up.test"), 1.0);
    let refused = after.sum(
        "tollgate_quota_refused_total",
        &[
            ("team", "a"),
            ("quota", "requests_per_minute"),
            ("scope", "team"),
            ("error", "team_rate_limited"),
        ],
    );
    assert_eq!(refused, 1.0);
    let team = [("team", "a")];
    assert!(after.sum("tollgate_quota_store_round_trips_total", &team) >= 2.0);
    assert_eq!(after.sum("tollgate_quota_store_errors_total", &team), 0.0);
    assert!(after.sum("tollgate_quota_store_latency_seconds_total", &team) > 0.0);
    assert_eq!(after.sum("tollgate_quota_local_fallback_total", &team), 0.0);
    service.assert_clean(&[&user]);
}

#[test]
fn serve_warns_once_of_an_unreachable_redis_and_serves() {
    let _lock = SuiteLock::shared();
    let mut redis = RedisServer::start();
    redis.stop();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", &quota_policy("a", &up, QUOTAS))
            .quota_store(&format!("redis_url: {}", redis.url())),
    );
    let log = service.log();
    let warnings = log.matches("is unreachable").count();
    assert_eq!(warnings, 1, "{}", service.describe());
    // Deny, the default: a quota that cannot be checked is not granted.
    let audit = user.own_dir(&service.paths.dir, "out").join("audit.jsonl");
    let refused = service
        .client(&user)
        .team("a")
        .arg("--audit")
        .arg(&audit)
        .run(curl("http://up.test:8080/"));
    assert_eq!(
        (refused.code(), refused.stdout.as_str()),
        (0, "503"),
        "{}\n{}",
        refused.describe(),
        service.describe()
    );
    // Each attempt refused (the policy's retry tries 503 again), as its records say.
    let attempts = read_json_lines(&audit)
        .iter()
        .filter(|record| record["error"] == "quota_unavailable")
        .map(|record| record["count"].as_u64().unwrap_or(1))
        .sum::<u64>();
    assert!(attempts >= 1, "{}", service.describe());
    let after = service.scrape_until("the refused execution finished", |scrape| {
        scrape.sum("tollgate_executions_finished_total", &[("team", "a")]) >= 1.0
    });
    let unavailable = after.sum(
        "tollgate_quota_refused_total",
        &[
            ("team", "a"),
            ("quota", ""),
            ("scope", ""),
            ("error", "quota_unavailable"),
        ],
    );
    assert_eq!(unavailable, attempts as f64, "{}", service.describe());
    service.assert_clean(&[&user]);
}

/// `tollgate doctor`'s line about the quota store, and its exit status.
fn doctor(configure: impl FnOnce(&mut Command)) -> (i32, String) {
    let mut command = tollgate_clean();
    command.arg("doctor");
    configure(&mut command);
    let finished = run(&mut command);
    let line = finished
        .stdout
        .lines()
        .find(|line| line.contains("quotas: "))
        .unwrap_or_else(|| panic!("no quotas line\n{}", finished.describe()))
        .to_owned();
    (finished.code(), line)
}

#[test]
fn doctor_says_where_quotas_are_counted_and_whether_redis_answers() {
    let _lock = SuiteLock::shared();
    let (code, line) = doctor(|_| {});
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        "note  quotas: per node (no Redis configured: set --redis-url or TOLLGATE_REDIS_URL); \
         team quotas are not fleet-wide"
    );

    let mut redis = RedisServer::start();
    let shown = format!("redis://127.0.0.1:{}", redis.port());
    let (code, line) = doctor(|command| {
        command.env("TOLLGATE_REDIS_URL", redis.url());
    });
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        format!("ok    quotas: fleet-wide through {shown} (reachable)")
    );

    redis.stop();
    let (code, line) = doctor(|command| {
        command.args(["--redis-url", &redis.url(), "--redis-connect-timeout", "1s"]);
    });
    assert_eq!(code, 0, "an unreachable store is a warning: {line}");
    assert!(
        line.starts_with(&format!(
            "warn  quotas: fleet-wide through {shown} (unreachable: "
        )),
        "{line}"
    );

    // TLS, verified against the CA given; without it, against the system's roots, which
    // do not know the test CA.
    let tls = RedisServer::with_tls();
    let ca = tls.ca_file().expect("a TLS server's CA");
    let (code, line) = doctor(|command| {
        command
            .args(["--redis-url", &tls.url()])
            .arg("--redis-ca")
            .arg(&ca);
    });
    assert_eq!(code, 0, "{line}");
    assert!(line.ends_with("(reachable)"), "{line}");
    let (_, line) = doctor(|command| {
        command.args(["--redis-url", &tls.url()]);
    });
    assert!(
        line.starts_with("warn  ") && line.contains("unreachable"),
        "{line}"
    );

    let locked = RedisServer::with_password("the-right-one");
    let scratch = Scratch::new("quota-doctor");
    let password = secret_file(&scratch, "password", "the-right-one\n");
    let plain = format!("redis://127.0.0.1:{}", locked.port());
    let (code, line) = doctor(|command| {
        command
            .args(["--redis-url", &plain, "--redis-password-file"])
            .arg(&password);
    });
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        format!("ok    quotas: fleet-wide through {plain} (reachable)")
    );
    let (code, line) = doctor(|command| {
        command.args(["--redis-url", &locked.url_with_password(SECRET)]);
    });
    assert_eq!(code, 1, "a refused password fails: {line}");
    assert!(
        line.starts_with("FAIL  quotas: fleet-wide through redis://")
            && line.contains("refused the password"),
        "{line}"
    );
}
