//! Every way a launch is refused, what root may do, rules that are not pooled, messages that
//! reveal no other caller's rules, and the share-root prefix check against hostile paths.

use super::*;
use crate::serve::node_config::NodeConfig;
use proptest::prelude::*;
use std::ffi::OsString;

/// uid 1001 (in group 3000 too) and the rules of others it must never hear about.
const NODE: &str = "
callers:
  - uid: 1001
    teams: [data-eng, web]
    shares: [/srv/work]
    shares_ro: [/srv/datasets]
    users: [\"1001:1001\", \"1001:2001\"]
    rootfs: [/srv/roots/python]
    max_timeout: 1h
  - gid: 3000
    teams: [ml]
    shares: [/srv/ml]
  - uid: 1002
    teams: [\"*\"]
    allow_root: true
    users: [0]
    allow_unenforced_limits: true
  - uid: 1003
    teams: [web]
  - uid: 1003
    teams: [web]
    shares: [/srv/web]
    max_timeout: 10m
  - uid: 1003
    teams: [web]
    users: [1003]
    max_timeout: 20m
  - uid: 2000
    teams: [secret-team]
    shares: [/srv/secret-share]
    users: [\"4242:4242\"]
    rootfs: [/srv/secret-root]
";

/// What uid 1001 must never read in a message: the rules of uid 2000.
const OTHERS: [&str; 4] = [
    "secret-team",
    "/srv/secret-share",
    "4242",
    "/srv/secret-root",
];

fn config() -> NodeConfig {
    NodeConfig::from_yaml("node.yaml", NODE).unwrap_or_else(|e| panic!("{e}"))
}

fn caller(uid: u32) -> CallerIdentity {
    CallerIdentity {
        uid,
        gid: uid,
        pid: 77,
        groups: Vec::new(),
    }
}

fn in_group(uid: u32, group: u32) -> CallerIdentity {
    CallerIdentity {
        groups: vec![group],
        ..caller(uid)
    }
}

fn launch(team: &str) -> RunOptions {
    let mut options = RunOptions::new(vec![OsString::from("/bin/true")]);
    options.team = Some(team.to_owned());
    options.timeout = Some(Duration::from_secs(60));
    options
}

fn share(path: &str) -> Share {
    Share {
        path: PathBuf::from(path),
        read_only: false,
    }
}

fn share_ro(path: &str) -> Share {
    Share {
        path: PathBuf::from(path),
        read_only: true,
    }
}

fn refused(who: &CallerIdentity, options: &RunOptions) -> String {
    let message = authorize(&config(), who, options).expect_err("refused");
    // What the node allows is said after the first `: `; before it, the caller's own ask.
    if let (1001, Some((_, allows))) = (who.uid, message.split_once(": ")) {
        for other in OTHERS {
            assert!(!allows.contains(other), "{message} reveals {other}");
        }
    }
    message
}

fn allowed(who: &CallerIdentity, options: &RunOptions) {
    if let Err(message) = authorize(&config(), who, options) {
        panic!("refused: {message}");
    }
}

#[test]
fn a_launch_within_a_rule_is_allowed() {
    let mut options = launch("data-eng");
    options.shares = vec![
        share("/srv/work"),
        share("/srv/work/a/b"),
        share_ro("/srv/datasets/x"),
    ];
    options.user = Some((1001, 2001));
    options.rootfs = Some(PathBuf::from("/srv/roots/python"));
    options.timeout = Some(Duration::from_secs(3600));
    allowed(&caller(1001), &options);
    allowed(&in_group(1001, 3000), &launch("ml"));
    allowed(&in_group(5555, 3000), &launch("ml"));
}

#[test]
fn root_may_launch_anything_a_local_root_run_may() {
    let mut options = launch("any-team");
    options.shares = vec![share("/home"), share_ro("/var/lib")];
    options.user = Some((0, 0));
    options.allow_root = true;
    options.rootfs = Some(PathBuf::from("/srv/elsewhere"));
    options.limits.allow_unenforced = true;
    options.timeout = None;
    assert_eq!(authorize(&config(), &caller(0), &options), Ok(()));
    assert_eq!(
        authorize(&NodeConfig::default(), &caller(0), &options),
        Ok(())
    );
}

#[test]
fn nobody_but_root_may_launch_on_a_node_without_rules() {
    let message = authorize(&NodeConfig::default(), &caller(1001), &launch("web")).unwrap_err();
    assert_eq!(
        message,
        "uid 1001 may not launch executions on this node: no caller rule of its node \
         configuration names this uid or one of its groups"
    );
    let message = refused(&in_group(4000, 4000), &launch("web"));
    assert!(
        message.starts_with("uid 4000 may not launch executions on this node"),
        "{message}"
    );
}

#[test]
fn a_team_must_be_named_and_be_one_of_the_callers() {
    let mut options = launch("web");
    options.team = None;
    for who in [caller(0), caller(1001)] {
        let message = authorize(&config(), &who, &options).unwrap_err();
        assert!(message.starts_with("give --team NAME"), "{message}");
    }
    let message = refused(&caller(1001), &launch("../etc"));
    assert!(message.contains("is not a team name"), "{message}");
    assert_eq!(
        refused(&caller(1001), &launch("ml")),
        "uid 1001 may not launch for team `ml`: this node lets it launch for data-eng, web"
    );
    // The group rule lists ml once the caller is in the group.
    assert_eq!(
        refused(&in_group(1001, 3000), &launch("ops")),
        "uid 1001 may not launch for team `ops`: this node lets it launch for data-eng, ml, web"
    );
}

#[test]
fn local_only_flags_are_refused_even_for_root() {
    let mut with_policy = launch("web");
    with_policy.policy = Some(PolicySource::File("/tmp/mine.yaml".into()));
    let mut with_secrets = launch("web");
    with_secrets.secrets =
        tollgate_policy::secrets::SecretRules::new("/home/me/secrets", Vec::<String>::new())
            .unwrap();
    let mut with_secret_env = launch("web");
    with_secret_env.secrets = tollgate_policy::secrets::SecretRules::new(
        tollgate_policy::secrets::DEFAULT_SECRETS_ROOT,
        vec!["AWS_SECRET_ACCESS_KEY".to_owned()],
    )
    .unwrap();
    for who in [caller(0), caller(1001)] {
        let message = authorize(&config(), &who, &with_policy).unwrap_err();
        assert!(
            message
                .starts_with("--policy and --policy-dir cannot be used through the node service"),
            "{message}"
        );
        for options in [&with_secrets, &with_secret_env] {
            let message = authorize(&config(), &who, options).unwrap_err();
            assert!(
                message.starts_with("--secrets-dir and --allow-secret-env cannot be used"),
                "{message}"
            );
        }
    }
    // The node's own secrets root, once the service applied it, is no caller's flag.
    let node = "secrets_dir: /srv/node-secrets\ncallers:\n  - {uid: 1001, teams: [web]}\n";
    let config = NodeConfig::from_yaml("node.yaml", node).unwrap();
    let mut with_nodes = launch("web");
    with_nodes.secrets =
        tollgate_policy::secrets::SecretRules::new("/srv/node-secrets", Vec::<String>::new())
            .unwrap();
    assert_eq!(authorize(&config, &caller(1001), &with_nodes), Ok(()));
    assert_eq!(authorize(&config, &caller(1001), &launch("web")), Ok(()));
    assert!(authorize(&config, &caller(1001), &with_secrets).is_err());
    // The policy text the service itself supplies is no caller's flag.
    let mut with_text = launch("web");
    with_text.policy = Some(PolicySource::Text(crate::serve::wire::PolicyText {
        name: "/etc/tollgate/teams/web.yaml".into(),
        text: "version: 1\nteam: web\n".into(),
    }));
    allowed(&caller(1001), &with_text);
}

#[test]
fn shares_must_lie_at_or_under_a_root_of_the_rule() {
    let who = caller(1001);
    for path in [
        "/srv/workshop",
        "/srv/wor",
        "/srv",
        "/srv/work/../secret-share",
        "srv/work",
        "/srv/datasets",
    ] {
        let mut options = launch("data-eng");
        options.shares = vec![share("/srv/work/ok"), share(path)];
        let message = refused(&who, &options);
        assert!(
            message.starts_with(&format!(
                "uid 1001 may not use --share {path} for team `data-eng`: "
            )),
            "{path}: {message}"
        );
        assert!(
            message.ends_with("this node lets it share directories at or under /srv/work"),
            "{path}: {message}"
        );
    }
    let mut options = launch("data-eng");
    options.shares = vec![share_ro("/srv/elsewhere")];
    assert_eq!(
        refused(&who, &options),
        "uid 1001 may not use --share-ro /srv/elsewhere for team `data-eng`: this node lets it \
         share directories at or under /srv/datasets, /srv/work"
    );
    // Read-only roots allow read-only shares only.
    let mut options = launch("data-eng");
    options.shares = vec![share_ro("/srv/datasets/2026"), share_ro("/srv/work/w")];
    allowed(&who, &options);
    // A rule with read-only roots only says so.
    let node = "callers:\n  - {uid: 1001, teams: [web], shares_ro: [/srv/datasets]}\n";
    let config = NodeConfig::from_yaml("node.yaml", node).unwrap();
    let mut options = launch("web");
    options.shares = vec![share("/srv/datasets/2026")];
    assert_eq!(
        authorize(&config, &who, &options).unwrap_err(),
        "uid 1001 may not use --share /srv/datasets/2026 for team `web`: this node lets it \
         share directories read-only only (--share-ro), at or under /srv/datasets"
    );
    let mut options = launch("ml");
    options.shares = vec![share("/srv/work")];
    assert_eq!(
        refused(&in_group(1003, 3000), &options),
        "uid 1003 may not use --share /srv/work for team `ml`: this node lets it share \
         directories at or under /srv/ml"
    );
    let node = "callers:\n  - {uid: 1001, teams: [web]}\n";
    let config = NodeConfig::from_yaml("node.yaml", node).unwrap();
    assert_eq!(
        authorize(
            &config,
            &who,
            &options_with_share("web", share_ro("/srv/x"))
        )
        .unwrap_err(),
        "uid 1001 may not use --share-ro /srv/x for team `web`: this node lets it share no \
         directory for this team"
    );
}

fn options_with_share(team: &str, share: Share) -> RunOptions {
    let mut options = launch(team);
    options.shares = vec![share];
    options
}

#[test]
fn a_user_must_be_one_of_the_listed_pairs() {
    let mut options = launch("data-eng");
    options.user = Some((1001, 0));
    assert_eq!(
        refused(&caller(1001), &options),
        "uid 1001 may not use --user 1001:0 for team `data-eng`: this node lets it use --user \
         1001:1001, 1001:2001"
    );
    let mut options = launch("ml");
    options.user = Some((1003, 1003));
    assert_eq!(
        refused(&in_group(1003, 3000), &options),
        "uid 1003 may not use --user 1003:1003 for team `ml`: this node lets it use no --user \
         for this team (the command runs as a user of the execution's own)"
    );
}

#[test]
fn allow_root_and_unenforced_limits_need_the_rule_to_say_so() {
    let mut options = launch("data-eng");
    options.user = Some((1001, 1001));
    options.allow_root = true;
    assert_eq!(
        refused(&caller(1001), &options),
        "uid 1001 may not use --allow-root for team `data-eng` on this node"
    );
    let mut options = launch("data-eng");
    options.limits.allow_unenforced = true;
    assert_eq!(
        refused(&caller(1001), &options),
        "uid 1001 may not use --allow-unenforced-limits for team `data-eng` on this node"
    );
    let mut options = launch("anything");
    options.user = Some((0, 0));
    options.allow_root = true;
    options.limits.allow_unenforced = true;
    allowed(&caller(1002), &options);
    // --user 0 without --allow-root is the run's own refusal, not the node's.
    options.allow_root = false;
    allowed(&caller(1002), &options);
}

#[test]
fn a_rootfs_must_be_a_listed_directory_exactly() {
    for dir in [
        "/srv/roots/python/lib",
        "/srv/roots",
        "/srv/roots/python/../../secret-root",
        "/srv/roots/python3",
    ] {
        let mut options = launch("web");
        options.rootfs = Some(PathBuf::from(dir));
        assert_eq!(
            refused(&caller(1001), &options),
            format!(
                "uid 1001 may not use --rootfs {dir} for team `web`: this node lets it use \
                 --rootfs /srv/roots/python"
            )
        );
    }
    let mut options = launch("web");
    options.rootfs = Some(PathBuf::from("/srv/roots//python/"));
    allowed(&caller(1001), &options);
    let mut options = launch("ml");
    options.rootfs = Some(PathBuf::from("/srv/roots/python"));
    assert_eq!(
        refused(&in_group(1003, 3000), &options),
        "uid 1003 may not use --rootfs /srv/roots/python for team `ml`: this node lets it use \
         no --rootfs for this team"
    );
}

#[test]
fn a_timeout_is_refused_past_the_rules_limit_and_admit_fills_a_missing_one() {
    let who = caller(1001);
    let mut options = launch("web");
    options.timeout = Some(Duration::from_secs(7200));
    assert_eq!(
        refused(&who, &options),
        "uid 1001 may not use --timeout 120m for team `web`: this node allows it at most 60m"
    );
    options.timeout = Some(Duration::from_secs(3600));
    allowed(&who, &options);
    options.timeout = None;
    assert_eq!(
        refused(&who, &options),
        "uid 1001 must give --timeout for team `web`: this node allows it at most 60m"
    );
    assert_eq!(admit(&config(), &who, &mut options), Ok(()));
    assert_eq!(options.timeout, Some(Duration::from_secs(3600)));
    // A given timeout is kept as it is.
    let mut options = launch("web");
    options.timeout = Some(Duration::from_secs(5));
    assert_eq!(admit(&config(), &who, &mut options), Ok(()));
    assert_eq!(options.timeout, Some(Duration::from_secs(5)));
    // No limit, no timeout added; root gets none either.
    let mut options = launch("ml");
    options.timeout = None;
    assert_eq!(
        admit(&config(), &in_group(1001, 3000), &mut options),
        Ok(())
    );
    assert_eq!(options.timeout, None);
    let mut options = launch("web");
    options.timeout = None;
    assert_eq!(admit(&config(), &caller(0), &mut options), Ok(()));
    assert_eq!(options.timeout, None);
}

#[test]
fn admit_gives_the_longest_timeout_of_the_rules_that_fit_the_rest() {
    // uid 1003 has three rules for web: no limit, 10m with /srv/web, 20m with --user 1003.
    let who = caller(1003);
    let mut plain = launch("web");
    plain.timeout = None;
    assert_eq!(admit(&config(), &who, &mut plain), Ok(()));
    assert_eq!(plain.timeout, None, "the rule without a limit fits");
    let mut sharing = options_with_share("web", share("/srv/web/site"));
    sharing.timeout = None;
    assert_eq!(admit(&config(), &who, &mut sharing), Ok(()));
    assert_eq!(sharing.timeout, Some(Duration::from_secs(600)));
    let mut as_user = launch("web");
    as_user.user = Some((1003, 1003));
    as_user.timeout = None;
    assert_eq!(admit(&config(), &who, &mut as_user), Ok(()));
    assert_eq!(as_user.timeout, Some(Duration::from_secs(1200)));
}

#[test]
fn rules_are_not_pooled_one_rule_must_allow_the_whole_launch() {
    // uid 1003 may share /srv/web (one rule) and use --user 1003 (another), not both at once.
    let who = caller(1003);
    let mut options = options_with_share("web", share("/srv/web"));
    options.user = Some((1003, 1003));
    assert_eq!(
        refused(&who, &options),
        "uid 1003 may use each of these options for team `web`, but no one caller rule of this \
         node allows them all together: launch with fewer of them, or ask the node's operator \
         for a rule that covers them"
    );
    options.user = None;
    allowed(&who, &options);
    // A team of one rule never gets the shares of another rule's team.
    let options = options_with_share("ml", share("/srv/work"));
    let message = refused(&in_group(1001, 3000), &options);
    assert!(message.ends_with("at or under /srv/ml"), "{message}");
}

#[test]
fn every_refusal_of_a_caller_is_about_its_own_rules() {
    // refused() checks uid 1001 never reads uid 2000's rules; these launch for every kind of
    // refusal, aimed at what uid 2000 may do.
    let who = caller(1001);
    let mut cases = vec![
        launch("secret-team"),
        options_with_share("web", share("/srv/secret-share")),
    ];
    let mut user = launch("web");
    user.user = Some((4242, 4242));
    cases.push(user);
    let mut rootfs = launch("web");
    rootfs.rootfs = Some(PathBuf::from("/srv/secret-root"));
    cases.push(rootfs);
    for options in &cases {
        refused(&who, options);
    }
}

#[test]
fn hostile_share_paths_never_pass_the_prefix_check() {
    let root = Path::new("/srv/work");
    for path in [
        "/srv/workshop",
        "/srv/work-other",
        "/srv/work/../etc",
        "/srv/work/a/../../../etc",
        "/srv/work/..",
        "srv/work",
        "srv/work/a",
        "./srv/work",
        "../srv/work",
        "/srv",
        "/",
        "",
        "/SRV/work",
        "/srv/wor",
        "/srv/work\u{0}/a",
        "/srv/work /a",
        "/srv/./workshop",
    ] {
        assert!(!is_at_or_under(Path::new(path), root), "{path:?}");
    }
    for path in [
        "/srv/work",
        "/srv/work/",
        "/srv//work",
        "/srv/./work/a",
        "/srv/work/a/b/c",
        "/srv/work/...",
    ] {
        assert!(is_at_or_under(Path::new(path), root), "{path:?}");
    }
    assert!(!is_at_or_under(
        Path::new("/srv/work/a"),
        Path::new("srv/work")
    ));
}

/// An independent reading of "at or under": split on `/`, drop empty and `.` components;
/// any `..` refuses; then the root's components must begin the path's.
fn oracle(path: &str, root: &str) -> bool {
    fn parts(text: &str) -> Vec<&str> {
        text.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect()
    }
    if !path.starts_with('/') || !root.starts_with('/') {
        return false;
    }
    let (path, root) = (parts(path), parts(root));
    !path.contains(&"..") && path.len() >= root.len() && path[..root.len()] == root[..]
}

fn hostile_path() -> impl Strategy<Value = String> {
    let component = prop::sample::select(vec![
        "srv", "work", "workshop", "work.", "wor", "w", "..", ".", "", "...", "a b", "work\\", "é",
    ]);
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(component, 0..7),
        prop::bool::ANY,
    )
        .prop_map(|(absolute, parts, trailing)| {
            let mut text = if absolute {
                "/".to_owned()
            } else {
                String::new()
            };
            text.push_str(&parts.join("/"));
            if trailing {
                text.push('/');
            }
            text
        })
}

fn root_path() -> impl Strategy<Value = String> {
    let component = prop::sample::select(vec!["srv", "work", "workshop", "w"]);
    prop::collection::vec(component, 0..4).prop_map(|parts| format!("/{}", parts.join("/")))
}

proptest! {
    #[test]
    fn the_prefix_check_agrees_with_a_component_reading(path in hostile_path(), root in root_path()) {
        prop_assert_eq!(
            is_at_or_under(Path::new(&path), Path::new(&root)),
            oracle(&path, &root),
            "path {:?} root {:?}", path, root
        );
    }

    #[test]
    fn anything_below_a_root_is_under_it_and_a_longer_name_beside_it_never(
        root in root_path(),
        below in prop::collection::vec("[a-z.]{1,6}", 0..4),
        suffix in "[a-z-]{1,4}",
    ) {
        let below: Vec<String> = below.into_iter().filter(|c| c != "." && c != "..").collect();
        let path = format!("{root}/{}", below.join("/"));
        prop_assert!(is_at_or_under(Path::new(&path), Path::new(&root)), "{} under {}", path, root);
        if root != "/" {
            let beside = format!("{root}{suffix}");
            prop_assert!(!is_at_or_under(Path::new(&beside), Path::new(&root)), "{} beside {}", beside, root);
            let climbing = format!("{path}/../../x");
            prop_assert!(!is_at_or_under(Path::new(&climbing), Path::new(&root)), "{}", climbing);
        }
    }
}
