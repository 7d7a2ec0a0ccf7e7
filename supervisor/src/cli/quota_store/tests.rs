//! The quota store flags: what they make of a store, and every refusal of a bad value or a
//! bad file, none of which quotes a secret.

use super::*;
use clap::Parser;
use std::os::unix::fs::PermissionsExt as _;
use tollgate_tests::Scratch;

const SECRET: &str = "pa55-w0rd-never-shown";

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Flags {
    #[command(flatten)]
    store: QuotaStoreArgs,
}

/// The flags as clap reads them, without the environment (a test must not depend on
/// whether TOLLGATE_REDIS_URL is set where it runs).
fn flags(args: &[&str]) -> Result<QuotaStoreArgs, clap::Error> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Flags::command()
        .mut_arg("redis_url", |arg| arg.env(None))
        .try_get_matches_from(args)?;
    Flags::from_arg_matches(&matches).map(|flags| flags.store)
}

fn config(args: &[&str]) -> Result<QuotaStoreConfig, String> {
    flags(args).map_err(|e| e.to_string())?.config()
}

fn secret_file(scratch: &Scratch, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = scratch.file(name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn no_flags_is_the_node_store_and_the_defaults() {
    assert_eq!(config(&[]).unwrap(), QuotaStoreConfig::default());
}

#[test]
fn the_flags_make_the_store_with_the_password_from_its_file() {
    let scratch = Scratch::new("quota-flags");
    let password = secret_file(&scratch, "password", &format!("{SECRET}\n"), 0o600);
    let ca = secret_file(&scratch, "ca.pem", "-----BEGIN CERTIFICATE-----\n", 0o644);
    let config = config(&[
        "--redis-url",
        "rediss://redis.internal:6380/2",
        "--redis-password-file",
        password.to_str().unwrap(),
        "--redis-ca",
        ca.to_str().unwrap(),
        "--redis-connect-timeout",
        "500ms",
        "--quota-store-failure",
        "local",
        "--quota-nodes",
        "3",
    ])
    .unwrap();
    let redis = config.redis.as_ref().expect("a Redis");
    assert_eq!(redis.url, "rediss://redis.internal:6380/2");
    assert_eq!(
        redis.password.as_deref(),
        Some(SECRET),
        "one newline dropped"
    );
    assert_eq!(redis.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(config.on_failure, StoreFailure::Local);
    assert_eq!(config.expected_nodes, 3);
    assert_eq!(config.connect_timeout, Duration::from_millis(500));
    assert!(!format!("{config:?}").contains(SECRET));
}

#[test]
fn bad_values_are_refused_by_the_parser_naming_the_fix() {
    for (args, expected) in [
        (&["--quota-store-failure", "allow"][..], "give deny"),
        (&["--quota-nodes", "0"][..], "--quota-nodes"),
        (&["--redis-connect-timeout", "0s"][..], "longer than zero"),
        (&["--redis-connect-timeout", "5m"][..], "at most 1m"),
        (&["--redis-connect-timeout", "soon"][..], "soon"),
    ] {
        let error = flags(args).expect_err("refused").to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

#[test]
fn a_companion_flag_without_a_url_is_refused() {
    for (args, flag) in [
        (
            &["--quota-store-failure", "local"][..],
            "--quota-store-failure",
        ),
        (&["--quota-nodes", "2"][..], "--quota-nodes"),
        (&["--redis-ca", "/etc/ssl/ca.pem"][..], "--redis-ca"),
        (
            &["--redis-password-file", "/p"][..],
            "--redis-password-file",
        ),
        (
            &["--redis-connect-timeout", "1s"][..],
            "--redis-connect-timeout",
        ),
    ] {
        let error = config(args).expect_err("refused");
        assert!(
            error.starts_with(flag) && error.contains("--redis-url"),
            "{args:?}: {error}"
        );
    }
    let error = config(&["--redis-url", " "]).expect_err("refused");
    assert!(error.contains("empty"), "{error}");
}

#[test]
fn a_bad_url_is_refused_without_its_password() {
    for url in [
        format!("http://:{SECRET}@127.0.0.1:6379"),
        format!("redis://:{SECRET}@"),
        "not a url".to_owned(),
    ] {
        let error = config(&["--redis-url", &url]).expect_err(&url);
        assert!(!error.contains(SECRET), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
}

#[test]
fn a_ca_file_is_for_tls_and_must_be_a_file() {
    let scratch = Scratch::new("quota-ca");
    let ca = secret_file(&scratch, "ca.pem", "pem", 0o644);
    let error = config(&[
        "--redis-url",
        &format!("redis://:{SECRET}@127.0.0.1:6379"),
        "--redis-ca",
        ca.to_str().unwrap(),
    ])
    .expect_err("plain URL");
    assert!(
        error.contains("rediss://") && !error.contains(SECRET),
        "{error}"
    );
    for missing in [scratch.dir.join("absent.pem"), scratch.dir.clone()] {
        let error = config(&[
            "--redis-url",
            "rediss://127.0.0.1:6380",
            "--redis-ca",
            missing.to_str().unwrap(),
        ])
        .expect_err("not a file");
        assert!(error.contains("CA file"), "{error}");
    }
}

#[test]
fn a_secret_file_is_one_line_of_a_root_file_no_one_else_may_write() {
    let scratch = Scratch::new("quota-secret");
    let read = |path: &Path| read_secret_file(path, "--redis-password-file");
    let good = secret_file(&scratch, "good", &format!("{SECRET}\r\n"), 0o640);
    assert_eq!(read(&good).unwrap(), SECRET);
    // A Kubernetes Secret's key is a link into `..data`: followed, the file is what counts.
    std::fs::create_dir(scratch.dir.join("..data")).unwrap();
    secret_file(&scratch, "..data/password", SECRET, 0o644);
    std::os::unix::fs::symlink("..data/password", scratch.dir.join("linked")).unwrap();
    assert_eq!(read(&scratch.dir.join("linked")).unwrap(), SECRET);

    let writable = secret_file(&scratch, "writable", SECRET, 0o666);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o622)).unwrap();
    let someone_elses = secret_file(&scratch, "theirs", SECRET, 0o600);
    std::os::unix::fs::chown(&someone_elses, Some(4242), None).unwrap();
    let refusals = [
        (writable, "chmod go-w"),
        (someone_elses, "owned by uid 4242"),
        (secret_file(&scratch, "empty", "\n", 0o600), "empty"),
        (
            secret_file(&scratch, "two", &format!("{SECRET}\nmore\n"), 0o600),
            "more than one line",
        ),
        (
            secret_file(&scratch, "big", &"x".repeat(70 * 1024), 0o600),
            "larger than 64 KiB",
        ),
        (scratch.dir.join("absent"), "no such file"),
        (scratch.dir.clone(), "not a regular file"),
    ];
    for (path, expected) in refusals {
        let error = read(&path).expect_err("refused");
        assert!(
            error.starts_with("--redis-password-file ") && error.contains(expected),
            "{}: {error}",
            path.display()
        );
        assert!(!error.contains(SECRET), "{error}");
    }
    let not_utf8 = scratch.dir.join("binary");
    std::fs::write(&not_utf8, [0xff, 0xfe]).unwrap();
    assert!(read(&not_utf8).unwrap_err().contains("not UTF-8"));
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let scratch = Scratch::new("quota-fifo");
    let fifo = scratch.dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let error = read_secret_file(&fifo, "--redis-password-file").expect_err("a FIFO");
    assert!(error.contains("not a regular file"), "{error}");
}

#[test]
fn the_probe_tells_a_closed_port_by_its_cause_alone() {
    // Port 1 on loopback: nothing listens there.
    let store = config(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--quota-store-failure",
        "local",
    ])
    .unwrap();
    match reach(&store) {
        Reach::Unreachable(why) => {
            assert!(why.contains("redis://127.0.0.1:1"), "{why}");
            // The node here falls back to local: nothing may say it denies.
            assert!(
                !why.contains("deny") && !why.contains("not granted"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reach(&QuotaStoreConfig::default()), Reach::PerNode);
}
