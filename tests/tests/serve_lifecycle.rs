//! How executions launched through the node service end: a signal to the caller reaches the
//! sandbox as it would in a local run, a caller that dies takes its execution with it, a
//! service that dies takes every execution with it, and a service asked to stop lets running
//! executions finish within its grace, then ends the rest. Nothing is left behind in any
//! case.
//!
//! Needs root. The sandboxes here have no network (their team policies have none).

use std::time::Instant;

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, signal, Running, Sandbox, HANG_LIMIT, OFFLINE_POLICY},
    serve::{Caller, Node, Service, TestGroup, TestUser, SETTLE_LIMIT},
    Scratch,
};

/// The sandbox says it runs, then sleeps long enough to be ended only by the test.
const READY_THEN_SLEEP: [&str; 3] = ["/bin/sh", "-c", "echo ready; exec /bin/sleep 60"];

/// The team every caller here launches for: no network.
const TEAM: &str = "a";

fn team_policy() -> String {
    format!("version: 1\nteam: {TEAM}\n")
}

fn node(group: &TestGroup, users: &[&TestUser]) -> Node {
    Node::new(
        group,
        users.iter().map(|u| Caller::new(u.uid, &[TEAM])).collect(),
    )
    .team(TEAM, &team_policy())
}

/// `user`'s launch of [`READY_THEN_SLEEP`] once its sandbox runs, the only one: the client
/// and the execution's id.
fn sleeping(service: &Service, user: &TestUser) -> (Running, String) {
    let mut running = service.client(user).team(TEAM).spawn(READY_THEN_SLEEP);
    running.wait_line("ready", HANG_LIMIT);
    let worker = service.wait_workers(1)[0];
    (running, execution_of(service, worker))
}

/// The single execution id the service is running now (its worker is `worker`).
fn execution_of(service: &Service, worker: u32) -> String {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let prefix = format!("{worker}-");
        if let Some(id) = service
            .execution_ids()
            .into_iter()
            .find(|id| id.starts_with(&prefix))
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "worker {worker} has no execution cgroup\n{}",
            service.describe()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sigterm_to_the_caller_ends_the_sandbox_as_in_a_local_run() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let service = Service::start(node(&group, &[&user]));

    let (running, execution) = sleeping(&service, &user);
    signal(running.pid(), libc::SIGTERM);
    let finished = running.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 143, "{}", finished.describe());
    // Gone when the caller's `tollgate run` returned, as for a local run.
    assert_execution_gone(&execution);
    service.assert_clean(&[&user]);
}

#[test]
fn a_second_signal_kills_what_ignored_the_first_with_a_local_runs_status() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let service = Service::start(node(&group, &[&user]));
    // The command hears the first SIGTERM (it was passed on, not just a kill) and goes on.
    let stubborn = [
        "/bin/sh",
        "-c",
        "trap 'echo got-term' TERM; echo ready; while :; do /bin/sleep 1; done",
    ];
    let twice = |mut running: Running| {
        running.wait_line("ready", HANG_LIMIT);
        signal(running.pid(), libc::SIGTERM);
        running.wait_line("got-term", HANG_LIMIT);
        signal(running.pid(), libc::SIGTERM);
        running.finish(HANG_LIMIT)
    };

    let scratch = Scratch::new("serve-local");
    let policy = scratch.file("policy.yaml", OFFLINE_POLICY);
    let local = twice(Running::spawn(
        &mut Sandbox::new().policy(&policy).command(stubborn),
    ));
    let served = twice(service.client(&user).team(TEAM).spawn(stubborn));
    assert_eq!(
        served.code(),
        local.code(),
        "through the service:\n{}\nlocally:\n{}",
        served.describe(),
        local.describe()
    );
    service.assert_clean(&[&user]);
}

#[test]
fn a_caller_killed_with_sigkill_takes_its_execution_with_it() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let service = Service::start(node(&group, &[&user]));

    let (mut running, execution) = sleeping(&service, &user);
    signal(running.pid(), libc::SIGKILL);
    let status = running.wait_exit(HANG_LIMIT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // Nobody waits for this execution any more: the service must notice on its own.
    service.assert_clean(&[&user]);
    assert_execution_gone(&execution);
    let finished = service.scrape_until("the execution ended", |scrape| {
        scrape.sum("tollgate_executions_active", &[("team", TEAM)]) == 0.0
            && scrape.sum("tollgate_executions_finished_total", &[("team", TEAM)]) == 1.0
    });
    assert_eq!(
        finished.sum("tollgate_executions_started_total", &[("team", TEAM)]),
        1.0,
        "{}",
        finished.text
    );

    // The service still serves.
    let after = service.client(&user).team(TEAM).run(["/bin/echo", "still"]);
    assert_eq!(
        (after.code(), after.stdout.as_str()),
        (0, "still\n"),
        "{}",
        after.describe()
    );
}

#[test]
fn killing_the_service_ends_every_execution_and_leaves_nothing() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let users = [
        TestUser::create(&[&group]),
        TestUser::create(&[&group]),
        TestUser::create(&[&group]),
    ];
    let callers: Vec<&TestUser> = users.iter().collect();
    let mut service = Service::start(node(&group, &callers));

    let mut clients: Vec<Running> = users
        .iter()
        .map(|user| service.client(user).team(TEAM).spawn(READY_THEN_SLEEP))
        .collect();
    for client in &mut clients {
        client.wait_line("ready", HANG_LIMIT);
    }
    let workers = service.wait_workers(3);
    let executions: Vec<String> = workers.iter().map(|&w| execution_of(&service, w)).collect();

    service.kill();
    for client in &mut clients {
        client.wait_exit(HANG_LIMIT);
    }
    // Before reading the clients' output to its end: a sandbox that lived on would hold
    // its caller's stdout until its `sleep` ended on its own.
    service.assert_clean(&callers);
    for client in clients {
        let finished = client.finish(HANG_LIMIT);
        assert_eq!(finished.code(), 125, "{}", finished.describe());
        assert_eq!(
            finished.stderr_lines(),
            ["tollgate: the node service closed the connection before the command finished"],
            "{}",
            finished.describe()
        );
    }
    service.assert_clean(&callers);
    for execution in &executions {
        assert_execution_gone(execution);
    }

    // A new service starts on the same socket path (the dead one's socket file is stale).
    service.restart();
    let again = service
        .client(&users[0])
        .team(TEAM)
        .run(["/bin/echo", "again"]);
    assert_eq!(
        (again.code(), again.stdout.as_str()),
        (0, "again\n"),
        "{}",
        again.describe()
    );
    service.assert_clean(&callers);
}

#[test]
fn sigterm_to_the_service_lets_executions_finish_within_the_grace_then_ends_the_rest() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let mut service = Service::start(node(&group, &[&user]).shutdown_grace("10s"));

    // One execution that ends when the test closes its stdin, one that would outlast the
    // grace.
    let mut finishing = service.client(&user).team(TEAM).spawn([
        "/bin/sh",
        "-c",
        "echo ready; read line; echo done; exit 3",
    ]);
    let mut outlasting = service.client(&user).team(TEAM).spawn(READY_THEN_SLEEP);
    finishing.wait_line("ready", HANG_LIMIT);
    outlasting.wait_line("ready", HANG_LIMIT);
    let workers = service.wait_workers(2);
    let executions: Vec<String> = workers.iter().map(|&w| execution_of(&service, w)).collect();

    service.signal(libc::SIGTERM);
    // Launches stop: once one is refused, every later one is (a launch that got in before
    // the service took the signal runs, and is one the grace covers).
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let late = service.client(&user).team(TEAM).run(["/bin/echo", "late"]);
        if late.code() == 125 {
            assert!(late.stderr.starts_with("tollgate: "), "{}", late.describe());
            break;
        }
        assert_eq!(
            (late.code(), late.stdout.as_str()),
            (0, "late\n"),
            "{}",
            late.describe()
        );
        assert!(
            Instant::now() < deadline,
            "the service kept accepting launches"
        );
    }

    // Within the grace, an execution still runs to its own end, with its own status.
    finishing.close_stdin();
    let finished = finishing.finish(HANG_LIMIT);
    assert_eq!(finished.code(), 3, "{}", finished.describe());
    assert!(finished.stdout.contains("done"), "{}", finished.describe());
    assert!(
        service.alive(),
        "the service exited before its grace was over\n{}",
        service.describe()
    );

    // The one that outlasts the grace is ended after it, and the service exits.
    let ended = outlasting.finish(HANG_LIMIT + SETTLE_LIMIT);
    assert_eq!(ended.code(), 125, "{}", ended.describe());
    assert!(ended.stderr.contains("tollgate: "), "{}", ended.describe());
    let status = service.wait_exit();
    service.assert_shut_down(status, &[&user]);
    for execution in &executions {
        assert_execution_gone(execution);
    }
}
