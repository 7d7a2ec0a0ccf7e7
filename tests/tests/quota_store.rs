//! The quota store against a real `redis-server` on loopback: the Lua script's atomicity and
//! arithmetic, its keys, the script cache, and the failover the node configures when Redis
//! is killed, restarted, or refuses the password.
//!
//! The store is driven in-process (`tollgate::quota::QuotaStore`), as the proxy drives it;
//! the end-to-end suites (quota_e2e.rs, quota_failures.rs) drive it through `tollgate run`.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tollgate::quota::store::{Answered, Bucket, BucketRule, TakeOutcome};
use tollgate::quota::{QuotaStore, QuotaStoreConfig, RedisConfig, StoreError, StoreFailure};
use tollgate_tests::redis::RedisServer;
use tollgate_tests::Scratch;

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

/// A node's store configuration for `url`, with its node directory in `scratch`.
fn config(scratch: &Scratch, url: Option<String>) -> QuotaStoreConfig {
    QuotaStoreConfig {
        redis: url.map(|url| RedisConfig {
            url,
            password: None,
            ca_file: None,
        }),
        node_dir: node_dir(scratch),
        ..QuotaStoreConfig::default()
    }
}

fn node_dir(scratch: &Scratch) -> PathBuf {
    scratch.output("quotas")
}

async fn open(config: &QuotaStoreConfig, team: &str) -> QuotaStore {
    QuotaStore::open(config, team)
        .await
        .expect("open the store")
}

fn granted(outcome: &TakeOutcome) -> bool {
    matches!(outcome, TakeOutcome::Granted { .. })
}

/// `YYYYMMDD` of the Redis server's clock (`TIME`), as the script names day keys.
fn server_day(redis: &RedisServer) -> String {
    let time = redis.cli(&["TIME"]);
    let seconds: i64 = time.lines().next().unwrap().trim().parse().unwrap();
    let out = std::process::Command::new("/usr/bin/date")
        .args(["-u", "-d", &format!("@{seconds}"), "+%Y%m%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Asks until the store answers with `wanted` (it backs off ≤ 1 s between tries of a
/// server that failed); panics after many tries.
async fn take_until(store: &QuotaStore, buckets: &[Bucket], wanted: Answered) -> TakeOutcome {
    for _ in 0..200 {
        if let Ok((outcome, answered)) = store.take(buckets).await {
            if answered == wanted {
                return outcome;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the store never answered from {wanted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_is_all_or_nothing_across_buckets() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-atomic");
    let store = open(&config(&scratch, Some(redis.url())), "acme").await;
    assert!(store.fleet_wide());
    assert_eq!(store.describe(), redis.url());
    let buckets = [rate("rpm:team", 1, 2), daily("rpd:team", 100, 1)];
    let (first, answered) = store.take(&buckets).await.unwrap();
    assert_eq!(answered, Answered::Redis);
    assert_eq!(
        first,
        TakeOutcome::Granted {
            remaining: vec![1, 99]
        }
    );
    let (second, _) = store.take(&buckets).await.unwrap();
    assert_eq!(
        second,
        TakeOutcome::Granted {
            remaining: vec![0, 98]
        }
    );
    // The rate bucket is empty (one a minute): refused, with its wait, and the day budget
    // is not charged for the refused attempt.
    let (third, _) = store.take(&buckets).await.unwrap();
    let TakeOutcome::Refused { index, retry_after } = third else {
        panic!("a third attempt within the burst of 2: {third:?}");
    };
    assert_eq!(index, 0);
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    let day_key = format!("tollgate:{{acme}}:rpd:team:{}", server_day(&redis));
    assert_eq!(redis.cli(&["GET", &day_key]), "2");
    assert_eq!(store.peek(&buckets).await.unwrap(), vec![0, 98]);
    assert_eq!(store.stats().round_trips, 4);
    assert_eq!(store.stats().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_from_two_nodes_stay_within_the_gcra_bound() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-gcra");
    let config = config(&scratch, Some(redis.url()));
    // Two stores, as two nodes; eight tasks each sending as fast as they can.
    let nodes = [open(&config, "acme").await, open(&config, "acme").await];
    let buckets = vec![rate("rpm:team", 60, 10)];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..8 {
            let store = node.clone();
            let buckets = buckets.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted_here = 0u64;
                for _ in 0..25 {
                    let (outcome, answered) = store.take(&buckets).await.unwrap();
                    assert_eq!(answered, Answered::Redis);
                    if granted(&outcome) {
                        granted_here += 1;
                    } else {
                        let TakeOutcome::Refused { retry_after, .. } = outcome else {
                            unreachable!()
                        };
                        assert!(retry_after > Duration::ZERO);
                        assert!(retry_after <= Duration::from_secs(1));
                    }
                }
                granted_here
            }));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let window = started.elapsed();
    // GCRA admits at most burst + W / T in a window W (T = 1 s here); the burst is
    // admitted at once from idle.
    let bound = 10 + window.as_secs() + 1;
    assert!(total >= 10, "the idle burst of 10 is admitted: {total}");
    assert!(
        total <= bound,
        "{total} admitted in {window:?} (bound {bound})"
    );
    let round_trips: u64 = nodes.iter().map(|store| store.stats().round_trips).sum();
    assert_eq!(round_trips, 2 * 8 * 25, "one round trip per take");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_budgets_charges_and_peeks() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-daily");
    let store = open(&config(&scratch, Some(redis.url())), "acme").await;
    let requests = [daily("rpd:team", 3, 1)];
    for left in [2, 1, 0] {
        let (outcome, _) = store.take(&requests).await.unwrap();
        assert_eq!(
            outcome,
            TakeOutcome::Granted {
                remaining: vec![left]
            }
        );
    }
    let (spent, _) = store.take(&requests).await.unwrap();
    let TakeOutcome::Refused {
        index: 0,
        retry_after,
    } = spent
    else {
        panic!("a fourth request of three a day: {spent:?}");
    };
    // The wait is until the next UTC midnight of the server's clock.
    let time = redis.cli(&["TIME"]);
    let seconds: u64 = time.lines().next().unwrap().trim().parse().unwrap();
    let to_midnight = 86_400 - seconds % 86_400;
    assert!(
        retry_after.as_secs().abs_diff(to_midnight) <= 1,
        "{retry_after:?} vs {to_midnight}s to midnight"
    );

    // Bytes: the request body at the take, the response through charges, which never
    // refuse and may pass the limit; then a take (even of 0 bytes) is refused.
    let bytes = [daily("bpd:team", 1000, 100)];
    let (taken, _) = store.take(&bytes).await.unwrap();
    assert_eq!(
        taken,
        TakeOutcome::Granted {
            remaining: vec![900]
        }
    );
    assert_eq!(store.charge(&bytes, 500).await.unwrap(), vec![400]);
    assert_eq!(store.charge(&bytes, 5000).await.unwrap(), vec![0]);
    let key = format!("tollgate:{{acme}}:bpd:team:{}", server_day(&redis));
    assert_eq!(redis.cli(&["GET", &key]), "5600");
    let (empty, _) = store.take(&[daily("bpd:team", 1000, 0)]).await.unwrap();
    assert!(
        matches!(empty, TakeOutcome::Refused { index: 0, .. }),
        "{empty:?}"
    );
    // A charge leaves rate buckets alone, and a peek takes nothing.
    let mixed = [rate("rpm:team", 60, 5), daily("bpd:team", 1000, 0)];
    assert_eq!(store.charge(&mixed, 10).await.unwrap(), vec![5, 0]);
    assert_eq!(store.peek(&mixed).await.unwrap(), vec![5, 0]);
    assert_eq!(store.peek(&mixed).await.unwrap(), vec![5, 0]);
    assert_eq!(redis.cli(&["EXISTS", "tollgate:{acme}:rpm:team"]), "0");
    // Limits past what Lua's numbers hold exactly are held to 2^53 - 1, not wrapped.
    let (huge, _) = store.take(&[daily("bpd:huge", u64::MAX, 1)]).await.unwrap();
    assert_eq!(
        huge,
        TakeOutcome::Granted {
            remaining: vec![(1 << 53) - 2]
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_team_hash_tag_and_expire_on_their_own() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-keys");
    let acme = open(&config(&scratch, Some(redis.url())), "acme").await;
    let other = open(&config(&scratch, Some(redis.url())), "team-42").await;
    let buckets = [
        rate("rpm:d:api.example.com", 60, 10),
        daily("rpd:team", 100, 1),
    ];
    acme.take(&buckets).await.unwrap();
    other.take(&buckets).await.unwrap();
    let day = server_day(&redis);
    let mut keys: Vec<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("tollgate:{{acme}}:rpd:team:{day}"),
            "tollgate:{acme}:rpm:d:api.example.com".to_string(),
            format!("tollgate:{{team-42}}:rpd:team:{day}"),
            "tollgate:{team-42}:rpm:d:api.example.com".to_string(),
        ]
    );
    // A rate key lives until its TAT (one interval after one take from idle), a day key
    // until the end of the following day.
    let pttl: i64 = redis
        .cli(&["PTTL", "tollgate:{acme}:rpm:d:api.example.com"])
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 1000, "{pttl}");
    let ttl: i64 = redis
        .cli(&["TTL", &format!("tollgate:{{acme}}:rpd:team:{day}")])
        .parse()
        .unwrap();
    assert!(ttl > 86_400 && ttl <= 2 * 86_400, "{ttl}");
    // One team's exhaustion is not another's.
    let tight = [daily("rpd:tight", 1, 1)];
    assert!(granted(&acme.take(&tight).await.unwrap().0));
    assert!(!granted(&acme.take(&tight).await.unwrap().0));
    assert!(granted(&other.take(&tight).await.unwrap().0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded_transparently() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-noscript");
    let store = open(&config(&scratch, Some(redis.url())), "acme").await;
    let buckets = [daily("rpd:team", 100, 1)];
    assert!(granted(&store.take(&buckets).await.unwrap().0));
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let (outcome, answered) = store.take(&buckets).await.unwrap();
    assert_eq!(answered, Answered::Redis);
    assert_eq!(
        outcome,
        TakeOutcome::Granted {
            remaining: vec![98]
        }
    );
    assert_eq!(store.stats().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_denies_then_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-deny");
    let store = open(&config(&scratch, Some(redis.url())), "acme").await;
    let buckets = [daily("rpd:team", 100, 1)];
    assert!(granted(&store.take(&buckets).await.unwrap().0));

    redis.stop();
    let error = store.take(&buckets).await.unwrap_err();
    let StoreError::Unavailable(message) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains(&redis.url()), "{message}");
    let after_failure = store.stats();
    assert_eq!(after_failure.errors, 1);
    // Within the backoff, checks are refused without asking the dead server again.
    for _ in 0..20 {
        assert!(store.take(&buckets).await.is_err());
    }
    assert!(store.stats().round_trips <= after_failure.round_trips + 1);

    redis.restart();
    // An empty server: the count starts again, fleet-wide.
    let outcome = take_until(&store, &buckets, Answered::Redis).await;
    assert_eq!(
        outcome,
        TakeOutcome::Granted {
            remaining: vec![99]
        }
    );
    assert_eq!(store.stats().local_fallback_checks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_falls_back_to_the_nodes_share_then_recovers() {
    let mut redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-local");
    let mut config = config(&scratch, Some(redis.url()));
    config.on_failure = StoreFailure::Local;
    config.expected_nodes = 2;
    let store = open(&config, "acme").await;
    let buckets = [rate("rpm:team", 60, 10), daily("rpd:team", 7, 1)];
    assert_eq!(
        store.take(&buckets).await.unwrap(),
        (
            TakeOutcome::Granted {
                remaining: vec![9, 6]
            },
            Answered::Redis
        )
    );

    redis.stop();
    // This node alone, at half of every limit: a burst of 5 and 3 requests for the day.
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let (outcome, answered) = store.take(&buckets).await.unwrap();
        assert_eq!(answered, Answered::LocalFallback);
        remaining.push(outcome);
    }
    assert_eq!(
        remaining[..3],
        [
            TakeOutcome::Granted {
                remaining: vec![4, 2]
            },
            TakeOutcome::Granted {
                remaining: vec![3, 1]
            },
            TakeOutcome::Granted {
                remaining: vec![2, 0]
            },
        ]
    );
    assert!(
        matches!(remaining[3], TakeOutcome::Refused { index: 1, .. }),
        "{:?}",
        remaining[3]
    );
    assert_eq!(store.stats().local_fallback_checks, 4);
    assert!(node_dir(&scratch).join("acme.local-fallback.json").exists());

    redis.restart();
    let outcome = take_until(&store, &buckets, Answered::Redis).await;
    assert_eq!(
        outcome,
        TakeOutcome::Granted {
            remaining: vec![9, 6]
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_open_is_not_an_error() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let scratch = Scratch::new("quota-store-unreachable");
    let store = open(&config(&scratch, Some(url.clone())), "acme").await;
    let buckets = [daily("rpd:team", 100, 1)];
    let error = store.take(&buckets).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains(&url)),
        "{error:?}"
    );
    redis.restart();
    take_until(&store, &buckets, Answered::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_at_open_and_never_shown() {
    let redis = RedisServer::with_password("Right0Horse");
    let scratch = Scratch::new("quota-store-auth");
    let buckets = [daily("rpd:team", 100, 1)];

    let right = open(&config(&scratch, Some(redis.url())), "acme").await;
    assert!(granted(&right.take(&buckets).await.unwrap().0));
    assert!(
        !right.describe().contains("Right0Horse"),
        "{}",
        right.describe()
    );

    // The password from a file (RedisConfig.password), the URL without one.
    let bare = redis.url().replace(":Right0Horse@", "");
    let mut from_file = config(&scratch, Some(bare.clone()));
    from_file.redis.as_mut().unwrap().password = Some("Right0Horse".to_string());
    let store = open(&from_file, "acme").await;
    assert!(granted(&store.take(&buckets).await.unwrap().0));

    let wrong = config(&scratch, Some(redis.url_with_password("Wrong0Battery")));
    let error = QuotaStore::open(&wrong, "acme")
        .await
        .err()
        .expect("refused");
    let StoreError::Auth(message) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("refused the password"), "{message}");
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(
        !message.contains("Wrong0Battery") && !message.contains("Right0Horse"),
        "{message}"
    );

    let none = config(&scratch, Some(bare));
    let error = QuotaStore::open(&none, "acme")
        .await
        .err()
        .expect("refused");
    assert!(matches!(error, StoreError::Auth(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_given_ca() {
    let redis = RedisServer::with_tls();
    assert!(redis.url().starts_with("rediss://"));
    let scratch = Scratch::new("quota-store-tls");
    let buckets = [daily("rpd:team", 100, 1)];
    let mut verified = config(&scratch, Some(redis.url()));
    verified.redis.as_mut().unwrap().ca_file = redis.ca_file();
    let store = open(&verified, "acme").await;
    let (outcome, answered) = store.take(&buckets).await.unwrap();
    assert_eq!(
        (outcome, answered),
        (
            TakeOutcome::Granted {
                remaining: vec![99]
            },
            Answered::Redis
        )
    );

    // The system's roots do not know the test CA: no answer (not an authentication error).
    let unverified = open(&config(&scratch, Some(redis.url())), "acme").await;
    assert!(matches!(
        unverified.take(&buckets).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_store_counts_as_redis_does() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-same");
    let fleet = open(&config(&scratch, Some(redis.url())), "acme").await;
    let node = open(&config(&scratch, None), "acme").await;
    assert!(!node.fleet_wide());
    assert_eq!(node.describe(), "node");
    // One a minute, a burst of 4; a day budget of 6 and bytes: the same sequence through
    // both stores gives the same answers (no interval passes within it).
    let buckets = [
        rate("rpm:team", 1, 4),
        daily("rpd:team", 6, 1),
        daily("bpd:team", 10_000, 700),
    ];
    let mut answers = [Vec::new(), Vec::new()];
    for (store, answers) in [&fleet, &node].into_iter().zip(answers.iter_mut()) {
        for _ in 0..6 {
            let (outcome, _) = store.take(&buckets).await.unwrap();
            answers.push(match outcome {
                TakeOutcome::Granted { remaining } => format!("{remaining:?}"),
                TakeOutcome::Refused { index, .. } => format!("refused {index}"),
            });
        }
        answers.push(format!(
            "{:?}",
            store.charge(&buckets, 9_000).await.unwrap()
        ));
        answers.push(format!("{:?}", store.peek(&buckets).await.unwrap()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][4], "refused 0");
    assert_eq!(node.take(&buckets).await.unwrap().1, Answered::Node);
}

/// Bytes of finished exchanges carried into a take are counted before it decides, whatever
/// it decides, the same way in both stores: one round trip charges them and takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_bytes_count_before_the_take_decides_in_both_stores() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-carry");
    let fleet = open(&config(&scratch, Some(redis.url())), "acme").await;
    let node = open(&config(&scratch, None), "acme").await;
    let carry = |bytes| Bucket {
        name: "bpd:team".to_string(),
        rule: BucketRule::Carry {
            limit: 1_000,
            bytes,
        },
    };
    let mut answers = [Vec::new(), Vec::new()];
    for (store, answers) in [&fleet, &node].into_iter().zip(answers.iter_mut()) {
        let mut say = |outcome: TakeOutcome| {
            answers.push(match outcome {
                TakeOutcome::Granted { remaining } => format!("{remaining:?}"),
                TakeOutcome::Refused { index, .. } => format!("refused {index}"),
            })
        };
        // 600 carried: the take of 300 sees 400 left, and leaves 100 (both buckets name
        // the same counter).
        say(store
            .take(&[daily("bpd:team", 1_000, 300), carry(600)])
            .await
            .unwrap()
            .0);
        // 150 carried: nothing is left for the next 1, so it is refused, and the carried
        // bytes are counted all the same (the day counter passes the limit: 0 left).
        say(store
            .take(&[daily("bpd:team", 1_000, 1), carry(150)])
            .await
            .unwrap()
            .0);
        say(TakeOutcome::Granted {
            remaining: store.peek(&[daily("bpd:team", 1_000, 0)]).await.unwrap(),
        });
        // A take of carried bytes alone is a charge that never refuses.
        say(store.take(&[carry(5)]).await.unwrap().0);
    }
    assert_eq!(answers[0], answers[1], "Redis and the node store disagree");
    assert_eq!(answers[0], ["[100, 100]", "refused 0", "[0]", "[0]"]);
    let key = format!("tollgate:{{acme}}:bpd:team:{}", server_day(&redis));
    assert_eq!(redis.cli(&["GET", &key]), "1055", "600 + 300 + 150 + 5");
}

/// One `take` round trip on loopback, as the summary's counters measure it. Printed, not
/// asserted (no timing thresholds): run with `--nocapture` to read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_take_is_one_loopback_round_trip() {
    let redis = RedisServer::start();
    let scratch = Scratch::new("quota-store-latency");
    let store = open(&config(&scratch, Some(redis.url())), "acme").await;
    let buckets = [
        rate("rpm:team", 1_000_000, 1_000_000),
        daily("rpd:team", 1_000_000, 1),
        daily("bpd:team", 5 << 30, 100),
    ];
    let rounds = 2000;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let (outcome, _) = store.take(&buckets).await.unwrap();
        samples.push(started.elapsed());
        assert!(granted(&outcome));
    }
    samples.sort();
    let stats = store.stats();
    assert_eq!(stats.round_trips, rounds as u64);
    eprintln!(
        "quota take, 3 buckets, loopback: p50 {:?}, p99 {:?}, mean {} µs",
        samples[rounds / 2],
        samples[rounds * 99 / 100],
        stats.latency_us_total / stats.round_trips
    );
}
