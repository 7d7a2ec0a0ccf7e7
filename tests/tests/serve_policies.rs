//! Team policies from the service's directory, reloaded while it runs: an edit changes the
//! next execution's decisions without a restart; a broken edit keeps the last good policy in
//! force (the next execution is decided by it, not by nothing and not by the broken text)
//! and shows in `/metrics`; fixing it counts a reload.
//!
//! Needs root. No packet goes anywhere but loopback and the veth pair of the upstream host
//! made here.

use tollgate_tests::{
    leaks::SuiteLock,
    serve::{curl, upstream_policy, Caller, Exposition, Node, Service, TestGroup, TestUser},
    upstream::UpstreamHost,
};

const TEAM: &str = "a";

fn reloads(scrape: &Exposition, result: &str) -> f64 {
    scrape.sum(
        "tollgate_policy_reloads_total",
        &[("team", TEAM), ("result", result)],
    )
}

fn failing(scrape: &Exposition) -> f64 {
    scrape.sum("tollgate_policy_reload_failing", &[("team", TEAM)])
}

#[test]
fn an_edited_team_policy_decides_the_next_execution_and_a_broken_one_keeps_the_last_good() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let allowing = upstream_policy(TEAM, &up);
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &[TEAM])]).team(TEAM, &allowing),
    );
    let fetch = |path: &str| {
        let finished = service
            .client(&user)
            .team(TEAM)
            .run(curl(&format!("http://up.test:8080{path}")));
        assert_eq!(finished.code(), 0, "{}", finished.describe());
        finished.stdout
    };
    assert_eq!(fetch("/first"), "200");
    let start = service.scrape();
    assert_eq!(failing(&start), 0.0, "{}", start.text);

    // A broken edit: the last good policy (allowing) stays in force, and /metrics says so.
    service.write_team(
        TEAM,
        "version: 1\nteam: a\nnetwork: {allow: [{host: [unclosed\n",
    );
    let broken = service.scrape_until("a failed reload of team a", |scrape| {
        reloads(scrape, "failed") > reloads(&start, "failed")
    });
    assert_eq!(failing(&broken), 1.0, "{}", broken.text);
    assert_eq!(fetch("/while-broken"), "200");
    assert_eq!(up.requests_to("/while-broken").len(), 1);

    // A policy that validates but names another team is broken too: it must not be
    // installed for team a (whose secrets and scope it would get).
    service.write_team(TEAM, &allowing.replace("team: a", "team: b"));
    let misnamed = service.scrape_until("a second failed reload of team a", |scrape| {
        reloads(scrape, "failed") > reloads(&broken, "failed")
    });
    assert_eq!(failing(&misnamed), 1.0, "{}", misnamed.text);
    assert_eq!(fetch("/while-misnamed"), "200");

    // A good edit that denies the upstream: the next execution is refused, no restart.
    let denying = format!("version: 1\nteam: {TEAM}\nnetwork:\n  allow:\n    - host: other.test\n");
    service.write_team(TEAM, &denying);
    let fixed = service.scrape_until("a successful reload of team a", |scrape| {
        reloads(scrape, "ok") > reloads(&misnamed, "ok")
    });
    assert_eq!(failing(&fixed), 0.0, "{}", fixed.text);
    assert_eq!(fetch("/after-the-edit"), "403");
    assert!(
        up.requests_to("/after-the-edit").is_empty(),
        "the denied request reached the upstream"
    );

    // And back: allowed again.
    service.write_team(TEAM, &allowing);
    service.scrape_until("another successful reload of team a", |scrape| {
        reloads(scrape, "ok") > reloads(&fixed, "ok")
    });
    assert_eq!(fetch("/allowed-again"), "200");
    service.assert_clean(&[&user]);
}

#[test]
fn an_execution_keeps_the_policy_it_was_launched_with() {
    let _lock = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let up = UpstreamHost::start();
    let service = Service::start(
        Node::new(&group, vec![Caller::new(user.uid, &[TEAM])])
            .team(TEAM, &upstream_policy(TEAM, &up)),
    );
    let start = service.scrape();
    // Asks once, waits for stdin to close, asks again.
    let script = "/usr/bin/curl -sS -o /dev/null -w 'before=%{http_code}\\n' \
                  http://up.test:8080/before; read line; \
                  /usr/bin/curl -sS -o /dev/null -w 'after=%{http_code}\\n' \
                  http://up.test:8080/after";
    let mut running = service
        .client(&user)
        .team(TEAM)
        .spawn(["/bin/sh", "-c", script]);
    let before = running.wait_line("before=", tollgate_tests::sandbox::HANG_LIMIT);
    assert_eq!(before, "before=200");
    service.write_team(TEAM, &format!("version: 1\nteam: {TEAM}\n"));
    service.scrape_until("a reload of team a", |scrape| {
        reloads(scrape, "ok") > reloads(&start, "ok")
    });
    running.close_stdin();
    let finished = running.finish(tollgate_tests::sandbox::HANG_LIMIT);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    assert!(
        finished.stdout.contains("after=200"),
        "a reload changed a running execution's policy\n{}",
        finished.describe()
    );
    // The next one runs under the new policy, which has no network.
    let next = service
        .client(&user)
        .team(TEAM)
        .run(curl("http://up.test:8080/next"));
    assert_ne!(next.stdout, "200", "{}", next.describe());
    assert!(up.requests_to("/next").is_empty());
    service.assert_clean(&[&user]);
}
