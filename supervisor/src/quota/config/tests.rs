use super::*;

fn redis(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_string(),
        password: None,
        ca_file: None,
    }
}

#[test]
fn the_displayed_url_never_holds_the_password() {
    let cases = [
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        (
            "redis://:s3cret@127.0.0.1:6380/2",
            "redis://:***@127.0.0.1:6380/2",
        ),
        (
            "rediss://app:s3cret@cache.internal",
            "rediss://app:***@cache.internal",
        ),
        ("redis://app@127.0.0.1", "redis://app@127.0.0.1"),
        // Not URLs at all: whatever precedes the host is hidden.
        ("redis://:s3cret@[::1", "redis://***@[::1"),
        ("s3cret@host", "***@host"),
    ];
    for (url, shown) in cases {
        assert_eq!(redis(url).display_url(), shown, "{url}");
    }
    let debug = format!("{:?}", redis("redis://:s3cret@127.0.0.1"));
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn good_urls_pass() {
    for url in [
        "redis://127.0.0.1",
        "redis://127.0.0.1:6379/0",
        "redis://:pw@localhost:1/15",
        "rediss://cache.internal:6380",
    ] {
        assert_eq!(redis(url).validate(), Ok(()), "{url}");
    }
}

#[test]
fn bad_urls_say_what_to_fix_without_the_password() {
    let cases = [
        ("http://:s3cret@127.0.0.1", "scheme must be redis://"),
        ("redis://:s3cret@", "host"),
        ("redis://:s3cret@127.0.0.1/cache", "database number"),
        ("redis://:s3cret@127.0.0.1:99999", "not a URL"),
        ("redis://:s3cret@127.0.0.1/0?timeout=1", "remove the"),
        ("127.0.0.1:6379", "redis://"),
    ];
    for (url, expected) in cases {
        let error = redis(url).validate().unwrap_err();
        assert!(error.contains(expected), "{url}: {error}");
        assert!(!error.contains("s3cret"), "{url}: {error}");
    }
    let mut plain_with_ca = redis("redis://127.0.0.1");
    plain_with_ca.ca_file = Some(PathBuf::from("/etc/ca.pem"));
    assert!(plain_with_ca.validate().unwrap_err().contains("rediss://"));
}
