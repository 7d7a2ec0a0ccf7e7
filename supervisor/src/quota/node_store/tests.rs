use super::*;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::Duration;

const SECOND: u64 = 1_000_000;
/// 2026-12-01 12:00 UTC.
const NOON: u64 = 20_788 * gcra::DAY_US + gcra::DAY_US / 2;

/// A scratch quota directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tollgate-node-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    fn quotas(&self) -> PathBuf {
        self.0.join("run/quotas")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rate(name: &str, limit: u64, burst: u64) -> Bucket {
    Bucket {
        name: name.to_string(),
        rule: BucketRule::Rate {
            limit,
            period: Duration::from_secs(60),
            burst,
        },
    }
}

fn daily(name: &str, limit: u64, cost: u64) -> Bucket {
    Bucket {
        name: name.to_string(),
        rule: BucketRule::Daily { limit, cost },
    }
}

#[test]
fn a_take_is_all_or_nothing_and_reports_the_longest_wait() {
    let mut state = State::default();
    let buckets = [rate("rpm:team", 60, 2), daily("rpd:team", 3, 1)];
    assert_eq!(
        apply(&mut state, Mode::Take, &buckets, NOON),
        Reply::Remaining(vec![1, 2])
    );
    assert_eq!(
        apply(&mut state, Mode::Take, &buckets, NOON),
        Reply::Remaining(vec![0, 1])
    );
    // The rate bucket is empty: refused, and the day budget is not charged.
    assert_eq!(
        apply(&mut state, Mode::Take, &buckets, NOON),
        Reply::Refused {
            index: 0,
            retry_after_us: SECOND
        }
    );
    assert_eq!(
        apply(&mut state, Mode::Peek, &buckets, NOON),
        Reply::Remaining(vec![0, 1])
    );
    assert_eq!(
        apply(&mut state, Mode::Take, &buckets, NOON + 5 * SECOND),
        Reply::Remaining(vec![1, 0])
    );
    // Both refuse now: the day budget's wait (to midnight) is the longer, so it is named.
    let both = [rate("rpm:team", 60, 1), daily("rpd:team", 3, 1)];
    apply(
        &mut state,
        Mode::Take,
        &[rate("rpm:team", 60, 1)],
        NOON + 10 * SECOND,
    );
    assert_eq!(
        apply(&mut state, Mode::Take, &both, NOON + 10 * SECOND),
        Reply::Refused {
            index: 1,
            retry_after_us: gcra::DAY_US / 2 - 10 * SECOND
        }
    );
}

#[test]
fn charges_add_past_the_limit_and_a_new_day_starts_afresh() {
    let mut state = State::default();
    let bytes = [daily("bpd:team", 1000, 0)];
    assert_eq!(
        apply(&mut state, Mode::Take, &bytes, NOON),
        Reply::Remaining(vec![1000])
    );
    let charged = [daily("bpd:team", 1000, 1500)];
    assert_eq!(
        apply(&mut state, Mode::Charge, &charged, NOON),
        Reply::Remaining(vec![0])
    );
    assert_eq!(state.daily.get("bpd:team:20261201"), Some(&1500));
    assert!(matches!(
        apply(&mut state, Mode::Take, &bytes, NOON),
        Reply::Refused { index: 0, .. }
    ));
    // A charge never touches a rate bucket.
    apply(&mut state, Mode::Charge, &[rate("rpm:team", 60, 1)], NOON);
    assert!(state.rate.is_empty());
    let tomorrow = NOON + gcra::DAY_US;
    assert_eq!(
        apply(&mut state, Mode::Take, &bytes, tomorrow),
        Reply::Remaining(vec![1000])
    );
    assert!(state.daily.is_empty(), "yesterday's count is forgotten");
}

#[test]
fn the_file_is_shared_and_created_private() {
    let scratch = Scratch::new("shared");
    let one = NodeStore::open(&scratch.quotas(), "acme", Namespace::Node).unwrap();
    let two = NodeStore::open(&scratch.quotas(), "acme", Namespace::Node).unwrap();
    let fallback = NodeStore::open(&scratch.quotas(), "acme", Namespace::LocalFallback).unwrap();
    let bucket = [rate("rpm:team", 60, 2)];
    assert_eq!(
        one.call_at(Mode::Take, &bucket, NOON),
        Ok(Reply::Remaining(vec![1]))
    );
    assert_eq!(
        two.call_at(Mode::Take, &bucket, NOON),
        Ok(Reply::Remaining(vec![0]))
    );
    assert_eq!(
        fallback.call_at(Mode::Take, &bucket, NOON),
        Ok(Reply::Remaining(vec![1])),
        "the fallback share is counted apart"
    );
    let dir = std::fs::metadata(scratch.quotas()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    let file = std::fs::metadata(scratch.quotas().join("acme.json")).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    assert_eq!(file.uid(), nix::unistd::geteuid().as_raw());
    assert!(scratch.quotas().join("acme.local-fallback.json").exists());
}

#[test]
fn concurrent_checks_on_one_file_count_as_one() {
    let scratch = Scratch::new("concurrent");
    let quotas = scratch.quotas();
    let bucket = [daily("rpd:team", 1_000_000, 1)];
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = NodeStore::open(&quotas, "acme", Namespace::Node).unwrap();
            let bucket = bucket.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    store.call_at(Mode::Take, &bucket, NOON).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let store = NodeStore::open(&quotas, "acme", Namespace::Node).unwrap();
    assert_eq!(
        store.call_at(Mode::Peek, &bucket, NOON),
        Ok(Reply::Remaining(vec![1_000_000 - 200]))
    );
}

#[test]
fn garbage_in_the_file_is_counted_afresh_and_rewritten() {
    let scratch = Scratch::new("garbage");
    let store = NodeStore::open(&scratch.quotas(), "acme", Namespace::Node).unwrap();
    let path = scratch.quotas().join("acme.json");
    let bucket = [daily("rpd:team", 10, 1)];
    for garbage in [
        &b"\x00\xffnot json"[..],
        b"{\"rate\": 5}",
        b"[1,2,3]",
        b"{\"rate\":{},\"daily\":{},\"x\":1}",
    ] {
        std::fs::write(&path, garbage).unwrap();
        assert_eq!(
            store.call_at(Mode::Take, &bucket, NOON),
            Ok(Reply::Remaining(vec![9]))
        );
        let rewritten: State = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(rewritten.daily.get("rpd:team:20261201"), Some(&1));
    }
}

#[test]
fn planted_links_and_foreign_files_are_refused() {
    let scratch = Scratch::new("hostile");
    let quotas = scratch.quotas();
    let store = NodeStore::open(&quotas, "acme", Namespace::Node).unwrap();
    let bucket = [daily("rpd:team", 10, 1)];
    let path = quotas.join("acme.json");
    let target = scratch.0.join("target");
    std::fs::write(&target, b"precious").unwrap();

    std::os::unix::fs::symlink(&target, &path).unwrap();
    let error = store.call_at(Mode::Take, &bucket, NOON).unwrap_err();
    assert!(error.contains("symbolic link"), "{error}");
    std::fs::remove_file(&path).unwrap();

    std::fs::hard_link(&target, &path).unwrap();
    let error = store.call_at(Mode::Take, &bucket, NOON).unwrap_err();
    assert!(error.contains("hard link"), "{error}");
    std::fs::remove_file(&path).unwrap();

    std::fs::write(&path, b"{}").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let error = store.call_at(Mode::Take, &bucket, NOON).unwrap_err();
    assert!(error.contains("not owned by root"), "{error}");
    std::fs::remove_file(&path).unwrap();

    std::fs::create_dir(&path).unwrap();
    assert!(store.call_at(Mode::Take, &bucket, NOON).is_err());
    std::fs::remove_dir(&path).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");

    // A link in the directory's own path, and a directory others may write, are refused.
    std::os::unix::fs::symlink(scratch.0.join("run"), scratch.0.join("via")).unwrap();
    let error = NodeStore::open(&scratch.0.join("via/quotas"), "acme", Namespace::Node)
        .err()
        .unwrap();
    assert!(error.contains("symbolic link"), "{error}");
    std::fs::set_permissions(&quotas, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = NodeStore::open(&quotas, "acme", Namespace::Node)
        .err()
        .unwrap();
    assert!(error.contains("chmod 0700"), "{error}");
    let error = NodeStore::open(&quotas, "../etc", Namespace::Node)
        .err()
        .unwrap();
    assert!(error.contains("not a team name"), "{error}");
}

#[test]
fn carried_bytes_count_first_and_whatever_the_take_decides() {
    let mut state = State::default();
    let carry = |bytes| Bucket {
        name: "bpd:team".to_string(),
        rule: BucketRule::Carry {
            limit: 1_000,
            bytes,
        },
    };
    assert_eq!(
        apply(
            &mut state,
            Mode::Take,
            &[daily("bpd:team", 1_000, 300), carry(600)],
            NOON
        ),
        Reply::Remaining(vec![100, 100])
    );
    // Refused (nothing left for 1 more), and the carried bytes are counted all the same.
    assert!(matches!(
        apply(
            &mut state,
            Mode::Take,
            &[daily("bpd:team", 1_000, 1), carry(150)],
            NOON
        ),
        Reply::Refused { index: 0, .. }
    ));
    assert_eq!(
        state.daily.get(&format!(
            "bpd:team:{}",
            gcra::day_label(gcra::day_number(NOON))
        )),
        Some(&1_050)
    );
    // A peek carries nothing.
    apply(&mut state, Mode::Peek, &[carry(7)], NOON);
    assert_eq!(state.daily.values().sum::<u64>(), 1_050);
}
