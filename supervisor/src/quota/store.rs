//! The quota store: one atomic check-and-take per attempt, in Redis (fleet-wide) or in a
//! file per team on this node, and the failover between them that the node configured.
//!
//! With Redis, a round trip that fails (refused, timed out, nonsense) marks the server as
//! down: the check is refused (`on_failure: deny`) or answered by this node alone at its
//! share, every limit divided by `expected_nodes` (`on_failure: local`, in a file of its own
//! so the share never mixes with a node-only count). While it is down, Redis is asked again
//! only after a backoff (100 ms, doubling to 1 s), by one check at a time, never by every
//! request; the first answer brings the fleet-wide count back. Each change of state is
//! logged once.

use super::config::{QuotaStoreConfig, StoreFailure};
use super::gcra;
use super::node_store::{Namespace, NodeStore};
use super::redis_store::{Failure, Mode, RedisStore, Reply};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One quota as the store counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Unique within the team and stable across executions and nodes, e.g. `rpm:team`,
    /// `rpd:team`, `bpd:d:api.openai.com`: the store prefixes `tollgate:{team}:` (and a day
    /// for daily buckets).
    pub name: String,
    pub rule: BucketRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRule {
    /// GCRA: `limit` a `period`, evenly spaced, `burst` at once.
    Rate {
        limit: u64,
        period: Duration,
        burst: u64,
    },
    /// A counter per UTC day up to `limit`. A take adds `cost`, and is refused when the
    /// counter is already at the limit or would pass it (a cost of 0 only checks that
    /// something is left).
    Daily { limit: u64, cost: u64 },
    /// Bytes that already flowed, added to the day counter of the same name before a take
    /// decides, whatever it decides (and by any mode but `peek`). An execution carries the
    /// bytes of its finished exchanges into its next take, so they cost no round trip of
    /// their own. Never refuses; its remaining is the day counter's.
    Carry { limit: u64, bytes: u64 },
}

/// The answer to one [`QuotaStore::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    /// Every bucket had room and was charged; what remains in each, in the order given
    /// (a rate bucket's remaining is the attempts it would admit at once right now).
    Granted { remaining: Vec<u64> },
    /// Bucket `index` had no room, and nothing was charged; it will have some after
    /// `retry_after` (for a day budget: the next UTC day). When several have none, `index`
    /// is the one with the longest wait (the first of equals), so retrying after
    /// `retry_after` is not refused by another of them.
    Refused { index: usize, retry_after: Duration },
}

/// Which store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answered {
    /// Redis: fleet-wide.
    Redis,
    /// This node alone: no Redis configured.
    Node,
    /// This node alone at its share (`on_failure: local`), because Redis did not answer.
    LocalFallback,
}

/// Why a check could not be made at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer (and `on_failure: deny`), or the node's state could not be
    /// read: the attempt is refused with `quota_unavailable`. The sentence names the store
    /// (URL without password) and the cause.
    #[error("{0}")]
    Unavailable(String),
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`): a configuration error,
    /// fatal when the execution starts.
    #[error("{0}")]
    Auth(String),
}

/// Counters of one execution's store, for the summary and the node's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Round trips to Redis, answered or not.
    pub round_trips: u64,
    /// Round trips that failed (connection, timeout, protocol).
    pub errors: u64,
    /// Sum of the answered round trips' latency, in microseconds.
    pub latency_us_total: u64,
    /// Checks this node answered alone because Redis did not.
    pub local_fallback_checks: u64,
}

/// One execution's connection to the quota store of its team. Cloning shares it.
#[derive(Clone)]
pub struct QuotaStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    stats: Mutex<StoreStats>,
}

enum Backend {
    Node(NodeStore),
    Redis(Box<Fleet>),
}

/// Redis, and what to do when it does not answer.
struct Fleet {
    redis: RedisStore,
    on_failure: StoreFailure,
    expected_nodes: u64,
    /// The share's file (`on_failure: local` only).
    fallback: Option<NodeStore>,
    health: Mutex<Health>,
}

/// Whether Redis answered last, and when to ask it again if not.
struct Health {
    /// The last failure's sentence, while Redis is down.
    down: Option<String>,
    next_try: Instant,
    backoff: Duration,
}

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest a recovered Redis waits before it is asked again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl QuotaStore {
    /// Opens the store for `team` (a validated team name) inside the current tokio
    /// runtime. With Redis configured: connects, authenticates and loads the script within
    /// `connect_timeout`. A refused password is `Err(StoreError::Auth)`; an unreachable
    /// server is not an error here (checks fail or fall back as configured, and recover
    /// when it answers). The node's directory (for the node store, or the fallback's) that
    /// cannot be opened is `Err(StoreError::Unavailable)`: a node configuration error.
    pub async fn open(config: &QuotaStoreConfig, team: &str) -> Result<QuotaStore, StoreError> {
        let node = |namespace| {
            NodeStore::open(&config.node_dir, team, namespace).map_err(StoreError::Unavailable)
        };
        let backend = match &config.redis {
            None => Backend::Node(node(Namespace::Node)?),
            Some(redis) => {
                let redis = RedisStore::new(redis, team, config.connect_timeout)
                    .map_err(StoreError::Unavailable)?;
                let fallback = match config.on_failure {
                    StoreFailure::Local => Some(node(Namespace::LocalFallback)?),
                    StoreFailure::Deny => None,
                };
                let fleet = Fleet {
                    redis,
                    on_failure: config.on_failure,
                    expected_nodes: u64::from(config.expected_nodes.max(1)),
                    fallback,
                    health: Mutex::new(Health {
                        down: None,
                        next_try: Instant::now(),
                        backoff: MIN_BACKOFF,
                    }),
                };
                match fleet.redis.connect().await {
                    Ok(()) => {}
                    Err(Failure::Auth(message)) => return Err(StoreError::Auth(message)),
                    Err(Failure::Down(message)) => fleet.failed(message),
                }
                Backend::Redis(Box::new(fleet))
            }
        };
        Ok(QuotaStore {
            inner: Arc::new(Inner {
                backend,
                stats: Mutex::new(StoreStats::default()),
            }),
        })
    }

    /// Takes from every bucket at once, or from none: one round trip to Redis.
    pub async fn take(&self, buckets: &[Bucket]) -> Result<(TakeOutcome, Answered), StoreError> {
        let (reply, answered) = self.call(Mode::Take, buckets).await?;
        let outcome = match reply {
            Reply::Remaining(remaining) => TakeOutcome::Granted { remaining },
            Reply::Refused {
                index,
                retry_after_us,
            } => TakeOutcome::Refused {
                index,
                retry_after: gcra::micros(retry_after_us),
            },
        };
        Ok((outcome, answered))
    }

    /// Adds `bytes` to each daily bucket (bytes flowed after the take); returns what
    /// remains in each (0 once passed). Never refuses.
    pub async fn charge(&self, buckets: &[Bucket], bytes: u64) -> Result<Vec<u64>, StoreError> {
        let charged: Vec<Bucket> = buckets
            .iter()
            .map(|bucket| Bucket {
                name: bucket.name.clone(),
                rule: match bucket.rule {
                    BucketRule::Daily { limit, .. } | BucketRule::Carry { limit, .. } => {
                        BucketRule::Daily { limit, cost: bytes }
                    }
                    rate => rate,
                },
            })
            .collect();
        self.remaining(Mode::Charge, &charged).await
    }

    /// What remains in each bucket, taking nothing (the Rego input before the first take).
    pub async fn peek(&self, buckets: &[Bucket]) -> Result<Vec<u64>, StoreError> {
        self.remaining(Mode::Peek, buckets).await
    }

    /// Whether the quotas are shared by the fleet (Redis configured).
    pub fn fleet_wide(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// `redis://host:6379` (no password) or `node`.
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Node(_) => "node".to_string(),
            Backend::Redis(fleet) => fleet.redis.shown().to_string(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.stats_lock().clone()
    }

    fn stats_lock(&self) -> std::sync::MutexGuard<'_, StoreStats> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn remaining(&self, mode: Mode, buckets: &[Bucket]) -> Result<Vec<u64>, StoreError> {
        match self.call(mode, buckets).await? {
            (Reply::Remaining(remaining), _) => Ok(remaining),
            // The script refuses only takes.
            (Reply::Refused { .. }, _) => Err(StoreError::Unavailable(format!(
                "the quota store refused a {mode:?} it never refuses"
            ))),
        }
    }

    /// Asks the store that answers now: Redis, or what its failure calls for.
    async fn call(&self, mode: Mode, buckets: &[Bucket]) -> Result<(Reply, Answered), StoreError> {
        if buckets.is_empty() {
            let answered = match self.inner.backend {
                Backend::Node(_) => Answered::Node,
                Backend::Redis(_) => Answered::Redis,
            };
            return Ok((Reply::Remaining(Vec::new()), answered));
        }
        let fleet = match &self.inner.backend {
            Backend::Node(node) => {
                let reply = node
                    .call(mode, buckets)
                    .await
                    .map_err(StoreError::Unavailable)?;
                return Ok((reply, Answered::Node));
            }
            Backend::Redis(fleet) => fleet,
        };
        let failure = if fleet.may_ask() {
            let started = Instant::now();
            let answer = fleet.redis.call(mode, buckets).await;
            let mut stats = self.stats_lock();
            stats.round_trips += 1;
            match answer {
                Ok(reply) => {
                    stats.latency_us_total +=
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    drop(stats);
                    fleet.answered();
                    return Ok((reply, Answered::Redis));
                }
                Err(Failure::Auth(message) | Failure::Down(message)) => {
                    stats.errors += 1;
                    drop(stats);
                    fleet.failed(message.clone());
                    message
                }
            }
        } else {
            fleet.down_message()
        };
        let Some(fallback) = &fleet.fallback else {
            // The cause alone: what a refused check means is the enforcer's to say.
            return Err(StoreError::Unavailable(failure));
        };
        let share = fleet.share(buckets);
        let reply = fallback
            .call(mode, &share)
            .await
            .map_err(StoreError::Unavailable)?;
        self.stats_lock().local_fallback_checks += 1;
        Ok((reply, Answered::LocalFallback))
    }
}

impl Fleet {
    /// Whether this check may ask Redis: always while it answers; while it is down, one
    /// check once the backoff has passed (which claims the next try for itself).
    fn may_ask(&self) -> bool {
        let mut health = self.health();
        if health.down.is_none() {
            return true;
        }
        let now = Instant::now();
        if now < health.next_try {
            return false;
        }
        health.next_try = now + health.backoff;
        true
    }

    fn answered(&self) {
        let mut health = self.health();
        if health.down.take().is_some() {
            tracing::warn!(
                "quota store {} answers again: team quotas are fleet-wide again",
                self.redis.shown()
            );
        }
        health.backoff = MIN_BACKOFF;
    }

    fn failed(&self, message: String) {
        let mut health = self.health();
        if health.down.is_none() {
            let meanwhile = match self.on_failure {
                StoreFailure::Deny => {
                    "attempts under a quota are refused (quota_unavailable)".to_string()
                }
                StoreFailure::Local => format!(
                    "this node enforces each quota alone at 1/{} of its limit",
                    self.expected_nodes
                ),
            };
            tracing::warn!("quota store failing: {message}; until it answers, {meanwhile}");
            health.backoff = MIN_BACKOFF;
        } else {
            health.backoff = (health.backoff * 2).min(MAX_BACKOFF);
        }
        health.next_try = Instant::now() + health.backoff;
        health.down = Some(message);
    }

    fn down_message(&self) -> String {
        self.health()
            .down
            .clone()
            .unwrap_or_else(|| format!("Redis at {} did not answer", self.redis.shown()))
    }

    /// `buckets` at this node's share: every limit (and burst) divided by the expected
    /// number of nodes, at least 1.
    fn share(&self, buckets: &[Bucket]) -> Vec<Bucket> {
        let part = |n: u64| (n / self.expected_nodes).max(1);
        buckets
            .iter()
            .map(|bucket| Bucket {
                name: bucket.name.clone(),
                rule: match bucket.rule {
                    BucketRule::Rate {
                        limit,
                        period,
                        burst,
                    } => BucketRule::Rate {
                        limit: part(limit),
                        period,
                        burst: part(burst),
                    },
                    BucketRule::Daily { limit, cost } => BucketRule::Daily {
                        limit: part(limit),
                        cost,
                    },
                    BucketRule::Carry { limit, bytes } => BucketRule::Carry {
                        limit: part(limit),
                        bytes,
                    },
                },
            })
            .collect()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
