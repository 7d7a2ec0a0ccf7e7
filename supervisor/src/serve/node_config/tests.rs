//! The node configuration: the example and the schema in docs/, defaults, every refusal with
//! its `FILE:LINE:COL`, hostile YAML, and what `load` refuses to read.

use super::*;
use crate::quota::{QuotaStoreConfig, StoreFailure};
use std::os::unix::fs::PermissionsExt as _;
use tollgate_tests::Scratch;

/// The accounts the tests name, so no test depends on the machine's /etc/passwd.
struct Table;

impl Accounts for Table {
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        Ok(match name {
            "root" => Some((0, 0)),
            "ci-runner" => Some((1200, 1200)),
            "alice" => Some((1001, 100)),
            _ => None,
        })
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(match name {
            "root" => Some(0),
            "users" => Some(100),
            "tollgate" => Some(990),
            "data-eng" => Some(2000),
            _ => None,
        })
    }
}

fn load(text: &str) -> Result<NodeConfig, String> {
    NodeConfig::from_yaml_with("node.yaml", text, &Table)
}

fn refused(text: &str) -> String {
    load(text).expect_err("refused")
}

fn docs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

#[test]
fn the_example_in_docs_loads_with_every_key_resolved() {
    let text = std::fs::read_to_string(docs("node.example.yaml")).expect("docs/node.example.yaml");
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.socket.path, Path::new("/run/tollgate/tollgate.sock"));
    assert_eq!(
        (config.socket.uid, config.socket.gid, config.socket.mode),
        (Some(0), Some(990), 0o660)
    );
    assert_eq!(config.teams_dir, Path::new("/etc/tollgate/teams"));
    assert_eq!(config.secrets_dir, Path::new("/etc/tollgate/secrets"));
    assert_eq!(
        config.metrics,
        Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap()))
    );
    assert_eq!(
        config.audit.as_deref(),
        Some(Path::new("/var/log/tollgate/launches.jsonl"))
    );
    assert_eq!(config.reload_interval, Duration::from_secs(1));
    assert_eq!(config.gc_interval, Duration::from_secs(600));
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.max_executions, 256);
    let store = &config.quota_store;
    assert_eq!(
        store.redis.as_ref().map(|redis| redis.url.as_str()),
        Some("redis://redis.internal:6379")
    );
    assert_eq!(
        (
            store.on_failure,
            store.expected_nodes,
            store.connect_timeout
        ),
        (StoreFailure::Deny, 4, Duration::from_secs(2))
    );
    assert_eq!(config.callers.len(), 3);
    let ci = &config.callers[0];
    assert_eq!(
        (ci.uid, ci.gid, &ci.teams),
        (Some(1200), None, &Teams::Every)
    );
    assert_eq!(ci.shares, [PathBuf::from("/srv/ci/work")]);
    assert_eq!(ci.shares_ro, [PathBuf::from("/srv/ci/cache")]);
    assert_eq!(ci.max_timeout, Some(Duration::from_secs(3600)));
    let data = &config.callers[1];
    assert_eq!((data.uid, data.gid), (None, Some(2000)));
    assert_eq!(
        data.teams,
        Teams::Named(BTreeSet::from(["data-eng".to_owned()]))
    );
    let agents = &config.callers[2];
    assert_eq!((agents.uid, agents.gid), (Some(1500), Some(990)));
    assert_eq!(agents.users, [(1500, 1500)]);
    assert_eq!(agents.rootfs, [PathBuf::from("/srv/roots/python")]);
    assert!(agents.allow_unenforced_limits && !agents.allow_root);
}

#[test]
fn the_schema_in_docs_is_the_schema_of_the_file() {
    let text = std::fs::read_to_string(docs("node.schema.json")).expect("docs/node.schema.json");
    let committed: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
    assert!(
        committed == NodeConfig::schema(),
        "docs/node.schema.json is out of date: regenerate it with `tollgate serve \
         --print-schema > docs/node.schema.json`"
    );
}

#[test]
fn the_example_in_docs_is_valid_against_the_schema() {
    let schema = NodeConfig::schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let text = std::fs::read_to_string(docs("node.example.yaml")).expect("docs/node.example.yaml");
    let example: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
    let errors: Vec<String> = validator
        .iter_errors(&example)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // And the schema says no to what the loader says no to.
    for bad in [
        serde_json::json!({"socket": {"mode": 660}}),
        serde_json::json!({"socket": {"mode": "0o1777"}}),
        serde_json::json!({"callers": [{"uid": 1, "teams": ["a"], "allow_rot": true}]}),
        serde_json::json!({"callers": [{"uid": 1}]}),
        serde_json::json!({"reload_interval": 5}),
        serde_json::json!({"quotas": {"store_failure": "allow"}}),
        serde_json::json!({"quotas": {"redis": "redis://10.0.0.7"}}),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
    }
}

#[test]
fn no_file_and_an_empty_file_are_the_defaults_with_no_callers() {
    for text in ["", "\n", "# nothing yet\n\n  # still nothing\n", "{}"] {
        let config = load(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let defaults = NodeConfig::default();
        assert!(config.callers.is_empty(), "{text:?}");
        assert_eq!(config.socket.path, defaults.socket.path);
        assert_eq!(config.socket.mode, 0o660);
        assert_eq!((config.socket.uid, config.socket.gid), (None, None));
        assert_eq!(config.teams_dir, defaults.teams_dir);
        assert_eq!(config.secrets_dir, defaults.secrets_dir);
        assert_eq!((config.metrics, config.audit), (None, None));
        assert_eq!(config.max_executions, DEFAULT_MAX_EXECUTIONS);
    }
}

#[test]
fn an_unknown_key_is_named_at_its_line_and_column() {
    let message = refused("socket:\n  path: /run/t.sock\ncallers:\n  - uid: 1000\n    teams: [a]\n    allow_rot: true\n");
    assert!(
        message.starts_with("node.yaml:6:5: ") && message.contains("unknown field `allow_rot`"),
        "{message}"
    );
    let message = refused("sockets: {}\n");
    assert!(
        message.starts_with("node.yaml:1:1: ") && message.contains("`sockets`"),
        "{message}"
    );
}

#[test]
fn the_mode_is_an_octal_string_and_never_a_number_of_doubtful_base() {
    let mode = |text: &str| load(&format!("socket: {{mode: {text}}}\n")).map(|c| c.socket.mode);
    assert_eq!(mode("\"0660\""), Ok(0o660));
    // Unquoted, a leading zero makes a string in YAML 1.2: read as written.
    assert_eq!(mode("0660"), Ok(0o660));
    assert_eq!(mode("\"600\""), Ok(0o600));
    assert_eq!(mode("\"0o640\""), Ok(0o640));
    assert_eq!(mode("\"0777\""), Ok(0o777));
    for (bad, says) in [
        ("660", "YAML number"),
        ("0o660", "YAML number"),
        ("-1", "not a mode"),
        ("\"1777\"", "more than permission bits"),
        ("\"0o4755\"", "more than permission bits"),
        ("\"0668\"", "not an octal mode"),
        ("\"rw-rw----\"", "not an octal mode"),
        ("\"\"", "not an octal mode"),
        ("\"00660\"", "not an octal mode"),
    ] {
        let message = mode(bad).expect_err(bad);
        assert!(
            message.starts_with("node.yaml:1:") && message.contains(says),
            "{bad}: {message}"
        );
    }
}

#[test]
fn names_resolve_to_ids_and_a_name_that_does_not_is_an_error_where_it_stands() {
    let config = load(
        "socket: {owner: alice, group: tollgate}\ncallers:\n  - {user: alice, group: users, teams: [a], users: [1000, \"1000:100\", alice, \"alice:tollgate\", \"ci-runner:0\"]}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (config.socket.uid, config.socket.gid),
        (Some(1001), Some(990))
    );
    let rule = &config.callers[0];
    assert_eq!((rule.uid, rule.gid), (Some(1001), Some(100)));
    // As `--user` reads them: a number's group is the same number, a name's is its primary.
    assert_eq!(
        rule.users,
        [
            (1000, 1000),
            (1000, 100),
            (1001, 100),
            (1001, 990),
            (1200, 0)
        ]
    );
    let message = refused("socket:\n  owner: nobody-here\n");
    assert_eq!(
        message,
        "node.yaml:2:10: no user named `nobody-here` on this node: give a name from /etc/passwd or a uid"
    );
    let message = refused("callers:\n  - group: ghosts\n    teams: [a]\n");
    assert!(
        message.starts_with("node.yaml:2:12: no group named `ghosts`"),
        "{message}"
    );
    let message = refused("callers:\n  - uid: 1\n    teams: [a]\n    users: [\"alice:ghosts\"]\n");
    assert!(
        message.starts_with("node.yaml:4:13: no group named `ghosts`"),
        "{message}"
    );
}

#[test]
fn a_rule_names_whom_it_is_for_once_each_way() {
    let message = refused("callers:\n  - teams: [a]\n    shares: [/srv/a]\n");
    assert!(
        message.starts_with("node.yaml:2:")
            && message.contains(": a caller rule names whom it is for"),
        "{message}"
    );
    let message = refused("callers:\n  - {uid: 1000, user: alice, teams: [a]}\n");
    assert!(message.contains("give uid or user, not both"), "{message}");
    let message = refused("callers:\n  - {gid: 100, group: users, teams: [a]}\n");
    assert!(message.contains("give gid or group, not both"), "{message}");
    let message = refused("callers:\n  - {uid: -1, teams: [a]}\n");
    assert!(message.starts_with("node.yaml:2:"), "{message}");
}

#[test]
fn teams_are_listed_and_each_is_a_team_name() {
    let message = refused("callers:\n  - {uid: 1000, teams: []}\n");
    assert!(
        message.contains("list the teams this rule may launch for"),
        "{message}"
    );
    let message = refused("callers:\n  - uid: 1000\n");
    assert!(message.contains("missing field `teams`"), "{message}");
    let message = refused("callers:\n  - uid: 1000\n    teams: [ok, ../etc, Caps]\n");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message}");
    assert!(
        lines[0].starts_with("node.yaml:3:17: `../etc` is not a team name"),
        "{message}"
    );
    assert!(
        lines[1].starts_with("node.yaml:3:25: `Caps` is not a team name"),
        "{message}"
    );
    let every = load("callers:\n  - {uid: 1000, teams: [\"*\"]}\n").unwrap();
    assert_eq!(every.callers[0].teams, Teams::Every);
}

#[test]
fn paths_are_absolute_without_dotdot_and_a_share_root_is_never_slash() {
    for (text, at, says) in [
        ("teams_dir: etc/teams\n", "1:12", "not an absolute path"),
        ("secrets_dir: /etc/../secrets\n", "1:14", "contains `..`"),
        ("audit: launches.jsonl\n", "1:8", "not an absolute path"),
        (
            "socket: {path: \"/run/t\\n.sock\"}\n",
            "1:16",
            "control characters",
        ),
        (
            "callers:\n  - {uid: 1, teams: [a], shares: [/srv/a/../../etc]}\n",
            "2:35",
            "contains `..`",
        ),
        (
            "callers:\n  - {uid: 1, teams: [a], shares_ro: [srv]}\n",
            "2:38",
            "not an absolute path",
        ),
        (
            "callers:\n  - {uid: 1, teams: [a], shares: [/]}\n",
            "2:35",
            "/ would grant every host directory",
        ),
        (
            "callers:\n  - {uid: 1, teams: [a], rootfs: [/]}\n",
            "2:35",
            "/ would grant every host directory",
        ),
    ] {
        let message = refused(text);
        assert!(
            message.starts_with(&format!("node.yaml:{at}: ")) && message.contains(says),
            "{text:?}: {message}"
        );
    }
    let config = load(
        "callers:\n  - {uid: 1, teams: [a], shares: [/srv//work/], rootfs: [/srv/roots/py/.]}\n",
    )
    .unwrap();
    assert_eq!(config.callers[0].shares, [PathBuf::from("/srv/work")]);
    assert_eq!(config.callers[0].rootfs, [PathBuf::from("/srv/roots/py")]);
}

#[test]
fn intervals_counts_addresses_and_the_version_are_checked() {
    for (text, says) in [
        (
            "reload_interval: 0s\n",
            "reload_interval 0s is too short: give at least 100ms",
        ),
        ("reload_interval: 10ms\n", "too short"),
        (
            "gc_interval: 500ms\n",
            "gc_interval 500ms is too short: give at least 1s",
        ),
        ("reload_interval: 5\n", "has no unit"),
        ("shutdown_grace: soon\n", "is not a duration"),
        ("max_executions: 0\n", "give a number from 1 to 65536"),
        ("max_executions: 100000\n", "give a number from 1 to 65536"),
        ("max_executions: -3\n", "expected u32"),
        ("metrics: localhost\n", "give HOST:PORT"),
        ("metrics: unix:relative.sock\n", "unix:/ABSOLUTE/PATH"),
        ("version: 2\n", "version 2: this tollgate reads version 1"),
        (
            "callers:\n  - {uid: 1, teams: [a], max_timeout: 0s}\n",
            "longer than zero",
        ),
    ] {
        let message = refused(text);
        assert!(
            message.starts_with("node.yaml:") && message.contains(says),
            "{text:?}: {message}"
        );
    }
    let config =
        load("shutdown_grace: 0s\nmetrics: unix:/run/tollgate/metrics.sock\nversion: 1\n").unwrap();
    assert_eq!(config.shutdown_grace, Duration::ZERO);
    assert_eq!(
        config.metrics,
        Some(MetricsListen::Unix("/run/tollgate/metrics.sock".into()))
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let message = refused(
        "teams_dir: teams\ncallers:\n  - {user: ghost, teams: [a]}\n  - {uid: 2, teams: [B]}\n",
    );
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    assert!(lines[0].starts_with("node.yaml:1:12: "), "{message}");
    assert!(lines[1].starts_with("node.yaml:3:12: "), "{message}");
    assert!(lines[2].starts_with("node.yaml:4:22: "), "{message}");
}

#[test]
fn hostile_yaml_is_refused_before_it_is_parsed_in_full() {
    // Billion laughs: nine levels of ten aliases each.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        bomb.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    let message = refused(&bomb);
    assert!(
        message.starts_with("node.yaml:6:") && message.contains("aliases expanded"),
        "{message}"
    );
    let deep = format!("callers: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let message = refused(&deep);
    assert!(
        message.starts_with("node.yaml:1:") && message.contains("nests deeper than 64"),
        "{message}"
    );
    let huge = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
    assert_eq!(
        refused(&huge),
        "node.yaml: the node configuration is larger than 1 MiB"
    );
}

#[test]
fn load_reads_a_root_owned_file_that_only_its_owner_may_write() {
    let scratch = Scratch::new("node-config");
    let path = scratch.file("node.yaml", "callers:\n  - {uid: 1000, teams: [a]}\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.callers.len(), 1);
    let shown = path.display().to_string();

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let message = NodeConfig::load(&path).expect_err("group-writable");
    assert!(
        message.starts_with(&format!(
            "{shown}: the node configuration is writable by its group or others (mode 0664)"
        )),
        "{message}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
    assert!(NodeConfig::load(&path).is_err());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
    let message = NodeConfig::load(&path).expect_err("owned by another user");
    assert!(message.contains("owned by uid 1000"), "{message}");
}

#[test]
fn load_refuses_what_is_not_a_small_text_file_without_reading_it_all() {
    let scratch = Scratch::new("node-config-kinds");
    let dir = scratch.dir.join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let message = NodeConfig::load(&dir).expect_err("a directory");
    assert!(
        message.ends_with("the node configuration is not a regular file"),
        "{message}"
    );

    let fifo = scratch.dir.join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let message = NodeConfig::load(&fifo).expect_err("a FIFO, without waiting for a writer");
    assert!(message.ends_with("not a regular file"), "{message}");

    let message = NodeConfig::load(Path::new("/dev/zero")).expect_err("a device");
    assert!(message.ends_with("not a regular file"), "{message}");

    let big = scratch.file("big.yaml", &"#".repeat(MAX_FILE_BYTES + 1));
    let message = NodeConfig::load(&big).expect_err("too large");
    assert!(message.ends_with("larger than 1 MiB"), "{message}");

    let binary = scratch.dir.join("binary.yaml");
    std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
    let message = NodeConfig::load(&binary).expect_err("not UTF-8");
    assert!(message.ends_with("not UTF-8 text"), "{message}");

    let message = NodeConfig::load(&scratch.dir.join("absent.yaml")).expect_err("absent");
    assert!(
        message.contains("cannot read the node configuration"),
        "{message}"
    );
}

#[test]
fn a_rule_matches_by_uid_by_any_group_of_the_caller_or_by_both() {
    let rule = |uid: Option<u32>, gid: Option<u32>| CallerRule {
        uid,
        gid,
        teams: Teams::Every,
        shares: Vec::new(),
        shares_ro: Vec::new(),
        users: Vec::new(),
        rootfs: Vec::new(),
        allow_root: false,
        allow_unenforced_limits: false,
        max_timeout: None,
    };
    let caller = CallerIdentity {
        uid: 1000,
        gid: 100,
        pid: 4242,
        groups: vec![100, 990],
    };
    assert!(rule(Some(1000), None).matches(&caller));
    assert!(!rule(Some(1001), None).matches(&caller));
    assert!(rule(None, Some(100)).matches(&caller), "primary group");
    assert!(
        rule(None, Some(990)).matches(&caller),
        "supplementary group"
    );
    assert!(!rule(None, Some(0)).matches(&caller));
    assert!(rule(Some(1000), Some(990)).matches(&caller));
    assert!(
        !rule(Some(1000), Some(0)).matches(&caller),
        "both must match"
    );
    assert!(
        !rule(Some(1001), Some(990)).matches(&caller),
        "both must match"
    );
}

#[test]
fn the_system_accounts_know_root() {
    assert_eq!(SystemAccounts.user("root"), Ok(Some((0, 0))));
    assert_eq!(SystemAccounts.group("root"), Ok(Some(0)));
    assert_eq!(SystemAccounts.user("no-such-user-tollgate"), Ok(None));
}

/// A file as an operator (root) writes a secret: one line, mode 0600.
fn secret_file(scratch: &Scratch, name: &str, text: &str) -> PathBuf {
    let path = scratch.file(name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

const PASSWORD: &str = "n0de-pa55word";

#[test]
fn without_a_quotas_section_quotas_are_per_node() {
    for text in ["", "quotas: {}\n"] {
        assert_eq!(load(text).unwrap().quota_store, QuotaStoreConfig::default());
    }
}

#[test]
fn the_quotas_section_names_the_store_with_its_secrets_in_files() {
    let scratch = Scratch::new("node-quotas");
    let url = secret_file(
        &scratch,
        "url",
        &format!("rediss://:{PASSWORD}@redis.internal:6380/1\n"),
    );
    let ca = secret_file(&scratch, "ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let text = format!(
        "quotas:\n  redis_url_file: {}\n  redis_ca: {}\n  connect_timeout: 750ms\n  \
         store_failure: local\n  expected_nodes: 4\n",
        url.display(),
        ca.display()
    );
    let store = load(&text).unwrap_or_else(|e| panic!("{e}")).quota_store;
    let redis = store.redis.as_ref().expect("a Redis");
    assert_eq!(
        redis.url,
        format!("rediss://:{PASSWORD}@redis.internal:6380/1")
    );
    assert_eq!(redis.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(store.on_failure, StoreFailure::Local);
    assert_eq!(store.expected_nodes, 4);
    assert_eq!(store.connect_timeout, Duration::from_millis(750));

    let password = secret_file(&scratch, "password", &format!("{PASSWORD}\n"));
    let text = format!(
        "quotas:\n  redis_url: redis://10.0.0.7:6379\n  redis_password_file: {}\n",
        password.display()
    );
    let store = load(&text).unwrap().quota_store;
    let redis = store.redis.expect("a Redis");
    assert_eq!(redis.url, "redis://10.0.0.7:6379");
    assert_eq!(redis.password.as_deref(), Some(PASSWORD));
    assert_eq!(store.on_failure, StoreFailure::Deny, "the default");
    assert_eq!(store.expected_nodes, 1);
}

#[test]
fn a_bad_quotas_section_is_refused_where_it_stands_without_a_secret() {
    let scratch = Scratch::new("node-quotas-bad");
    let url = secret_file(&scratch, "url", "redis://10.0.0.7:6379\n");
    let shared = scratch.file("shared-url", &format!("redis://:{PASSWORD}@10.0.0.7\n"));
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bad_url = secret_file(
        &scratch,
        "bad-url",
        &format!("http://:{PASSWORD}@10.0.0.7\n"),
    );
    for (text, says) in [
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  redis_ur: x\n".to_owned(),
            "node.yaml:3:3: unknown field `redis_ur`".to_owned(),
        ),
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  store_failure: allow\n".to_owned(),
            "node.yaml:3:18: unknown variant `allow`".to_owned(),
        ),
        (
            format!(
                "quotas:\n  redis_url: redis://10.0.0.7\n  redis_url_file: {}\n",
                url.display()
            ),
            "node.yaml:3:19: give redis_url or redis_url_file, not both".to_owned(),
        ),
        (
            "quotas:\n  redis_url_file: url\n".to_owned(),
            "node.yaml:2:19: url is not an absolute path".to_owned(),
        ),
        (
            format!("quotas:\n  redis_url_file: {}\n", shared.display()),
            "node.yaml:2:19: quotas.redis_url_file".to_owned(),
        ),
        (
            format!("quotas:\n  redis_url_file: {}\n", bad_url.display()),
            "node.yaml:2:19: ".to_owned(),
        ),
        (
            format!(
                "quotas:\n  redis_url: redis://10.0.0.7\n  redis_password_file: {}\n",
                scratch.dir.join("absent").display()
            ),
            "node.yaml:3:24: quotas.redis_password_file".to_owned(),
        ),
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  connect_timeout: 0s\n".to_owned(),
            "node.yaml:3:20: the Redis connect timeout must be longer than zero".to_owned(),
        ),
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  connect_timeout: 2m\n".to_owned(),
            "give at most 1m".to_owned(),
        ),
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  expected_nodes: 0\n".to_owned(),
            "node.yaml:3:19: expected_nodes must be at least 1".to_owned(),
        ),
        (
            "quotas:\n  store_failure: local\n".to_owned(),
            "node.yaml:2:18: store_failure is about the Redis".to_owned(),
        ),
        (
            "quotas:\n  redis_url: redis://10.0.0.7\n  redis_ca: /etc/ca.pem\n".to_owned(),
            "rediss://".to_owned(),
        ),
    ] {
        let message = refused(&text);
        // `FILE:LINE:COL: ` then the message (serde's own name the section first).
        let (at, says) = says.split_once(": ").unwrap_or(("", &says));
        assert!(
            message.starts_with(at) && message.contains(says),
            "{text:?}: {message}"
        );
        assert!(!message.contains(PASSWORD), "{message}");
    }
    // node.yaml is commonly world-readable (a ConfigMap is 0644): no password in it.
    let message = refused(&format!(
        "quotas:\n  redis_url: redis://:{PASSWORD}@10.0.0.7\n"
    ));
    assert!(
        message.starts_with("node.yaml:2:14: ")
            && message.contains("redis_url_file")
            && !message.contains(PASSWORD),
        "{message}"
    );
    let message = refused(&format!(
        "quotas:\n  redis_url: http://:{PASSWORD}@10.0.0.7\n"
    ));
    assert!(
        message.starts_with("node.yaml:2:14: ") && !message.contains(PASSWORD),
        "{message}"
    );
}
