//! The node service end to end, as a platform's unprivileged worker uses it: `tollgate serve`
//! started as root, a test user (created here) running `tollgate run --connect SOCKET` for a
//! team, and what it gets back: its own stdout, the command's exit status, a proxied request
//! to an upstream the team's policy allows, its own `--audit` and `--summary` files, and
//! refusals for what it may not ask for. `/metrics` is parsed and compared with what the
//! tests did.
//!
//! The other service suites: `serve_lifecycle` (signals, a dying caller or service,
//! shutdown), `serve_policies` (team policy reloads), `serve_hostile` (callers that do not
//! follow the protocol, the socket's permissions).
//!
//! Needs root (accounts, namespaces, the service). No packet goes anywhere but loopback and
//! the veth pair of the upstream host made here.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
};

use serde_json::Value;
use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, read_json, read_json_lines, HANG_LIMIT},
    serve::{curl, upstream_policy, Caller, Node, Service, ShareTree, TestGroup, TestUser},
    upstream::UpstreamHost,
};

/// The one line a refused launch prints, checked to be `tollgate: <sentence>` naming `what`.
fn assert_refused(finished: &tollgate_tests::sandbox::Finished, what: &str) {
    assert_eq!(finished.code(), 125, "{}", finished.describe());
    let lines = finished.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with("tollgate: ") && lines[0].contains(what),
        "expected one line `tollgate: ...` naming {what:?}\n{}",
        finished.describe()
    );
    assert!(finished.stdout.is_empty(), "{}", finished.describe());
}

/// Executions the service started, by team.
fn started(service: &Service, team: &str) -> f64 {
    service
        .scrape()
        .sum("tollgate_executions_started_total", &[("team", team)])
}

#[test]
fn an_unprivileged_caller_gets_its_output_its_status_and_its_proxied_requests() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let mut service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", &upstream_policy("a", &up)),
    );
    let client = || service.client(&user).team("a");

    let echo = client().run(["/bin/echo", "hi"]);
    assert_eq!(echo.code(), 0, "{}", echo.describe());
    assert_eq!(echo.stdout, "hi\n", "{}", echo.describe());
    assert!(echo.stderr.is_empty(), "{}", echo.describe());

    let seven = client().run(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(seven.code(), 7, "{}", seven.describe());
    assert_eq!(
        (seven.stdout.as_str(), seven.stderr.as_str()),
        ("out\n", "err\n")
    );

    let missing = client().run(["/nonexistent"]);
    assert_eq!(missing.code(), 127, "{}", missing.describe());

    // Its own audit file, opened by the client as the caller, in a directory only it can
    // write: the service could not open it there for the caller by mistake.
    let own = user.own_dir(&service.paths.dir, "out");
    let audit = own.join("audit.jsonl");
    let fetched = client()
        .arg("--audit")
        .arg(&audit)
        .run(curl("http://up.test:8080/through-the-service"));
    assert_eq!(fetched.code(), 0, "{}", fetched.describe());
    assert_eq!(
        fetched.stdout,
        "200",
        "{}\n{}",
        fetched.describe(),
        service.describe()
    );
    assert_eq!(
        up.requests_to("/through-the-service").len(),
        1,
        "the upstream did not see the request once: {:?}",
        up.requests()
    );
    assert_eq!(
        fs::metadata(&audit).expect("the audit file").uid(),
        user.uid
    );
    let records = read_json_lines(&audit);
    let request = records
        .iter()
        .find(|r| r["type"] == "http" && r["path"] == "/through-the-service")
        .unwrap_or_else(|| panic!("no http record of the request: {records:#?}"));
    assert_eq!(request["decision"], "allow", "{request}");
    assert_eq!(request["team"], "a", "{request}");
    let sandbox = records
        .iter()
        .find(|r| r["type"] == "sandbox")
        .unwrap_or_else(|| panic!("no sandbox record: {records:#?}"));
    assert_eq!(sandbox["caller"]["uid"], user.uid, "{sandbox}");
    // Gone when the caller's `tollgate run` returned, as for a local run.
    assert_execution_gone(request["execution"].as_str().expect("an execution id"));

    // Every launch is in the service's own audit with the caller's identity. The service
    // queues a launch's `finished` record before it answers the caller, and its writer
    // thread writes it shortly after: read until the four are there (or 10 s have passed).
    let finished_of_user = |launches: &[Value]| -> (Vec<Value>, Vec<i64>) {
        let of_user: Vec<Value> = launches
            .iter()
            .filter(|r| r["type"] == "launch" && r["caller"]["uid"] == user.uid)
            .cloned()
            .collect();
        let statuses = of_user
            .iter()
            .filter(|r| r["event"] == "finished")
            .filter_map(|r| r["status"].as_i64())
            .collect();
        (of_user, statuses)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (of_user, statuses) = loop {
        let (of_user, statuses) = finished_of_user(&service.launch_records());
        if statuses.len() >= 4 || std::time::Instant::now() > deadline {
            break (of_user, statuses);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        statuses,
        [0, 7, 127, 0],
        "one finish per launch: {of_user:#?}"
    );
    // Every execution that ran has its start recorded, under the id of its audit records.
    let started: Vec<&str> = of_user
        .iter()
        .filter(|r| r["event"] == "started")
        .filter_map(|r| r["execution"].as_str())
        .collect();
    assert!(started.len() >= 3, "{of_user:#?}");
    assert!(
        started.contains(&request["execution"].as_str().unwrap()),
        "{of_user:#?}"
    );

    service.assert_clean(&[&user]);
    let status = service.stop();
    service.assert_shut_down(status, &[&user]);
}

#[test]
fn a_team_the_caller_may_not_use_is_refused_before_any_worker_starts() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let policy = |team: &str| format!("version: 1\nteam: {team}\n");
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", &policy("a"))
            .team("b", &policy("b")),
    );
    let before = service.scrape();

    let refused = service.client(&user).team("b").run(["/bin/echo", "never"]);
    assert_refused(&refused, "b");
    let no_team = service.client(&user).run(["/bin/echo", "never"]);
    assert_refused(&no_team, "--team");
    let unknown = service
        .client(&user)
        .team("nope")
        .run(["/bin/echo", "never"]);
    assert_refused(&unknown, "nope");

    let after = service.scrape_until("the refusals counted", |scrape| {
        scrape.sum("tollgate_launches_refused_total", &[])
            >= before.sum("tollgate_launches_refused_total", &[]) + 3.0
    });
    let refused_for = |scrape: &tollgate_tests::serve::Exposition, reason| {
        scrape.sum("tollgate_launches_refused_total", &[("reason", reason)])
    };
    assert_eq!(
        refused_for(&after, "not_allowed") - refused_for(&before, "not_allowed"),
        // team b, and a team nobody may use is not one the caller may use either (nothing
        // tells the caller which teams exist).
        2.0,
        "{}",
        after.text
    );
    assert_eq!(
        after.sum("tollgate_executions_started_total", &[]),
        0.0,
        "{}",
        after.text
    );
    assert!(service.workers().is_empty());

    let launches = service.launch_records();
    let refusals: Vec<&Value> = launches
        .iter()
        .filter(|r| r["caller"]["uid"] == user.uid && r["event"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 3, "{launches:#?}");
    assert!(
        refusals
            .iter()
            .all(|r| r["execution"].is_null() && r["message"].is_string()),
        "{refusals:#?}"
    );
    assert!(
        launches.iter().all(|r| r["event"] != "started"),
        "{launches:#?}"
    );

    // The team it may use still works for it.
    let allowed = service.client(&user).team("a").run(["/bin/echo", "yes"]);
    assert_eq!(
        (allowed.code(), allowed.stdout.as_str()),
        (0, "yes\n"),
        "{}",
        allowed.describe()
    );
    service.assert_clean(&[&user]);
}

#[test]
fn options_the_caller_may_not_use_are_refused() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let tree = ShareTree::new();
    let (work, workshop) = (tree.work(), tree.workshop());
    let image = tree.dir.join("image");
    fs::create_dir(&image).unwrap();
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"]).shares(&[&work])])
            .team("a", "version: 1\nteam: a\n"),
    );
    let policy_file = service.paths.teams.join("a.yaml");
    let work_text = work.to_str().unwrap();
    let policy = policy_file.display().to_string();
    let policy_eq = format!("--policy={policy}");
    let workshop_text = workshop.display().to_string();
    let climbing = format!("{work_text}/../workshop");
    let escape = format!("{work_text}/escape");
    let image_text = image.display().to_string();
    // Each launch's options (before `--`) and what its refusal must name. The client's own
    // parser refuses --policy beside --team, so those two go without it: the service must
    // refuse them too, since a team's policy comes only from the node.
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--policy", &policy], "--policy"),
        (vec![&policy_eq], "--policy"),
        (vec!["--team", "a", "--policy-dir", "/etc"], "--policy-dir"),
        (
            vec!["--team", "a", "--secrets-dir", "/etc"],
            "--secrets-dir",
        ),
        (vec!["--team", "a", "--secrets-dir=/tmp"], "--secrets-dir"),
        (
            vec!["--team", "a", "--allow-secret-env", "HOME"],
            "--allow-secret-env",
        ),
        (vec!["--team", "a", "--share", "/etc"], "/etc"),
        (vec!["--team", "a", "--share", &workshop_text], "workshop"),
        (
            vec!["--team", "a", "--share-ro", &workshop_text],
            "workshop",
        ),
        (vec!["--team", "a", "--share", &climbing], ".."),
        (vec!["--team", "a", "--share", &escape], "escape"),
        (vec!["--team", "a", "--user", "0"], "--user"),
        (
            vec!["--team", "a", "--user", "0:0", "--allow-root"],
            "--user 0:0",
        ),
        (vec!["--team", "a", "--rootfs", &image_text], "--rootfs"),
    ];
    let before = started(&service, "a");
    let mut wrong = Vec::new();
    for (args, what) in &refused {
        let mut client = service.client(&user);
        for arg in args {
            client = client.arg(arg);
        }
        let finished = client.run(["/bin/cat", "/etc/hostname"]);
        // The service's refusal is one line; the client's own parser (the same as a local
        // run's) may refuse first, with clap's usage message.
        let lines = finished.stderr_lines();
        let by_service = lines.len() == 1 && lines[0].starts_with("tollgate: ");
        let by_client = lines.first().is_some_and(|l| l.starts_with("error: "));
        let names = lines.first().is_some_and(|l| l.contains(what));
        if finished.code() != 125 || !(by_service || by_client) || !names {
            wrong.push(format!(
                "{args:?}: expected status 125 and `tollgate: ...` naming {what:?}\n{}",
                finished.describe()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as they should be:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        started(&service, "a"),
        before,
        "a refused launch started an execution"
    );

    // What the node does allow it: a share at its allowed root, read inside.
    let shared = service
        .client(&user)
        .team("a")
        .arg("--share-ro")
        .arg(&work)
        .run(["/bin/cat", &format!("{work_text}/data.txt")]);
    assert_eq!(
        (shared.code(), shared.stdout.as_str()),
        (0, "shared\n"),
        "{}",
        shared.describe()
    );

    // A directory under the allowed root that the caller cannot read: shared or refused,
    // its contents stay out of the sandbox (root does not read it on the caller's behalf).
    let private = work.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(private.join("secret.txt"), "the node's secret\n").unwrap();
    let peeked = service
        .client(&user)
        .team("a")
        .arg("--share-ro")
        .arg(&private)
        .run(["/bin/cat", &format!("{}/secret.txt", private.display())]);
    assert!(
        !peeked.stdout.contains("secret") && peeked.code() != 0,
        "{}",
        peeked.describe()
    );
    service.assert_clean(&[&user]);
}

#[test]
fn summary_and_pass_env_are_the_callers_and_nothing_else_of_its_environment_is_used() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", "version: 1\nteam: a\n")
            .env("FROM_CALLER", "the service's value"),
    );
    let own = user.own_dir(&service.paths.dir, "out");
    let summary = own.join("summary.json");
    let mut running = service
        .client(&user)
        .team("a")
        .arg("--pass-env")
        .arg("FROM_CALLER")
        .arg("--summary")
        .arg(&summary)
        .env("FROM_CALLER", "the caller's value")
        .env("LD_PRELOAD", "/nonexistent/preload.so")
        .spawn([
            "/bin/sh",
            "-c",
            "echo \"value=$FROM_CALLER\"; echo \"preload=$LD_PRELOAD\"; read line; exit 3",
        ]);
    let value = running.wait_line("value=", HANG_LIMIT);
    assert_eq!(value, "value=the caller's value");
    let preload = running.wait_line("preload=", HANG_LIMIT);
    assert_eq!(
        preload, "preload=",
        "the caller's LD_PRELOAD reached the sandbox"
    );

    // The worker (root) runs with the service's clean environment, never the caller's.
    let workers = service.wait_workers(1);
    let environ = fs::read(format!("/proc/{}/environ", workers[0])).expect("read environ");
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        environ.iter().all(|v| v.starts_with("PATH=")),
        "the worker's environment holds more than PATH: {environ:?}"
    );

    running.close_stdin();
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 3, "{}", finished.describe());
    let meta = fs::metadata(&summary).expect("the summary was written");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "the summary is the caller's"
    );
    let summary = read_json(&summary);
    assert_eq!(summary["exit_status"], 3, "{summary}");
    assert_eq!(summary["team"], "a", "{summary}");
    assert_execution_gone(summary["execution"].as_str().expect("summary.execution"));
    service.assert_clean(&[&user]);
}

#[test]
fn metrics_count_the_executions_and_requests_the_service_saw() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &["a"])])
            .team("a", &upstream_policy("a", &up)),
    );
    let before = service.scrape();
    let client = || service.client(&user).team("a");

    // Two allowed requests in one execution, one denied in another, and three statuses.
    let two = client().run([
        "/bin/sh",
        "-c",
        "/usr/bin/curl -sS -o /dev/null http://up.test:8080/one && \
         /usr/bin/curl -sS -o /dev/null http://up.test:8080/two",
    ]);
    assert_eq!(two.code(), 0, "{}", two.describe());
    let denied = client().run(curl("http://elsewhere.test:8080/"));
    assert_eq!(
        (denied.code(), denied.stdout.as_str()),
        (0, "403"),
        "{}",
        denied.describe()
    );
    let failed = client().run(["/bin/sh", "-c", "exit 7"]);
    assert_eq!(failed.code(), 7, "{}", failed.describe());
    let missing = client().run(["/nonexistent"]);
    assert_eq!(missing.code(), 127, "{}", missing.describe());

    let delta = |after: &tollgate_tests::serve::Exposition, name: &str, labels: &[(&str, &str)]| {
        after.sum(name, labels) - before.sum(name, labels)
    };
    let finished = "tollgate_executions_finished_total";
    let after = service.scrape_until("four executions finished", |scrape| {
        scrape.sum(finished, &[("team", "a")]) - before.sum(finished, &[("team", "a")]) >= 4.0
    });
    let team = ("team", "a");
    assert_eq!(
        delta(&after, "tollgate_executions_started_total", &[team]),
        4.0,
        "{}",
        after.text
    );
    for (class, count) in [("ok", 2.0), ("failed", 1.0), ("not_found", 1.0)] {
        assert_eq!(
            delta(&after, finished, &[team, ("exit_class", class)]),
            count,
            "exit class {class}\n{}",
            after.text
        );
    }
    assert_eq!(delta(&after, finished, &[team]), 4.0, "{}", after.text);
    assert_eq!(
        after.sum("tollgate_executions_active", &[team]),
        0.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(&after, "tollgate_execution_duration_seconds_count", &[team]),
        4.0,
        "{}",
        after.text
    );
    let requests = "tollgate_requests_total";
    let http = ("type", "http");
    assert_eq!(
        delta(&after, requests, &[team, http, ("decision", "allow")]),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(
            &after,
            requests,
            &[
                team,
                http,
                ("decision", "deny"),
                ("reason", "host_not_allowed")
            ]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(delta(&after, requests, &[]), 3.0, "{}", after.text);
    assert_eq!(
        up.requests_to("/one").len() + up.requests_to("/two").len(),
        2
    );
    service.assert_clean(&[&user]);
}
