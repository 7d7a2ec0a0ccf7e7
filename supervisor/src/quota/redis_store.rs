//! The fleet-wide quota store: one Redis round trip per check, running `quota.lua`, which
//! does the GCRA and the day counters of every bucket atomically.
//!
//! The script is sent as `EVALSHA` (the `redis` crate's `Script` loads it on `NOSCRIPT`, so
//! a `SCRIPT FLUSH` or a restarted server costs one extra round trip), over a
//! `ConnectionManager` that reconnects by itself. Every call is bounded by the node's
//! connect timeout; what a failure means (deny, or count locally) is decided by the caller
//! ([`super::store`]), which also keeps this store from being asked on every request while
//! Redis is down.

use super::config::RedisConfig;
use super::store::{Bucket, BucketRule};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use std::sync::Mutex;
use std::time::Duration;

/// The script, compiled into the binary.
const SCRIPT: &str = include_str!("quota.lua");

/// What the script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Take,
    Charge,
    Peek,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Take => "take",
            Mode::Charge => "charge",
            Mode::Peek => "peek",
        }
    }
}

/// Why a round trip gave no answer. Each message names the server (without its password)
/// and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The server refused the credentials.
    Auth(String),
    /// No answer: refused, timed out, dropped, or an answer that made no sense.
    Down(String),
}

/// The script's answer, as `quota.lua` documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Remaining(Vec<u64>),
    Refused { index: usize, retry_after_us: u64 },
}

pub(super) struct RedisStore {
    client: redis::Client,
    /// Replaced by a fresh one when a call times out or fails in a way the manager does not
    /// reconnect from by itself (an authentication failure while reconnecting).
    manager: Mutex<ConnectionManager>,
    script: Script,
    /// `tollgate:{team}:`: every key of the team, hash-tagged to one cluster slot.
    prefix: String,
    timeout: Duration,
    shown: String,
    /// Scrubbed from every message, whatever the crate puts in its errors.
    password: Option<String>,
}

impl RedisStore {
    /// A store for `team` at `config`, not connected yet. The error is a configuration error
    /// (bad URL, unreadable CA file).
    pub(super) fn new(
        config: &RedisConfig,
        team: &str,
        timeout: Duration,
    ) -> Result<RedisStore, String> {
        config.validate()?;
        let shown = config.display_url();
        let client = client(config).map_err(|error| format!("Redis at {shown}: {error}"))?;
        let password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .map(str::to_string);
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
                .map_err(|error| format!("Redis at {shown}: {error}"))?;
        let store = RedisStore {
            client,
            manager: Mutex::new(manager),
            script: Script::new(SCRIPT),
            prefix: format!("tollgate:{{{team}}}:"),
            timeout,
            shown,
            password,
        };
        Ok(store)
    }

    /// `redis://host:port` without the password.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects (authenticating), checks the server answers, and loads the script.
    pub(super) async fn connect(&self) -> Result<(), Failure> {
        let mut connection = self.connection();
        let ready = async {
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await?;
            self.script
                .prepare_invoke()
                .load_async(&mut connection)
                .await?;
            Ok::<(), RedisError>(())
        };
        self.bounded(ready).await
    }

    /// Runs the script over `buckets` (one round trip, two when the script must be loaded
    /// again).
    pub(super) async fn call(&self, mode: Mode, buckets: &[Bucket]) -> Result<Reply, Failure> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(mode.as_str());
        for bucket in buckets {
            invocation.key(format!("{}{}", self.prefix, bucket.name));
            match bucket.rule {
                BucketRule::Rate {
                    limit,
                    period,
                    burst,
                } => {
                    let gcra = super::gcra::Gcra::new(limit, period, burst);
                    invocation
                        .arg("rate")
                        .arg(exact(gcra.interval_us))
                        .arg(exact(gcra.tolerance_us));
                }
                BucketRule::Daily { limit, cost } => {
                    invocation.arg("daily").arg(exact(limit)).arg(exact(cost));
                }
                BucketRule::Carry { limit, bytes } => {
                    invocation.arg("carry").arg(exact(limit)).arg(exact(bytes));
                }
            }
        }
        let mut connection = self.connection();
        let call = async {
            match invocation.invoke_async(&mut connection).await {
                // The manager replaces a connection on an I/O error, but only once the
                // error is seen: a connection that broke while the server was away would
                // fail this check though the server is back. Ask once more on the new one.
                Err(error) if error.is_io_error() => invocation.invoke_async(&mut connection).await,
                answered => answered,
            }
        };
        let answer: Vec<i64> = self.bounded(call).await?;
        self.reply(answer, buckets.len())
    }

    fn reply(&self, answer: Vec<i64>, buckets: usize) -> Result<Reply, Failure> {
        let unexpected = || {
            Failure::Down(format!(
                "Redis at {} gave the quota script an unexpected answer {answer:?}",
                self.shown
            ))
        };
        let count = |value: &i64| u64::try_from(*value).map_err(|_| unexpected());
        match answer.split_first() {
            Some((1, remaining)) if remaining.len() == buckets => Ok(Reply::Remaining(
                remaining.iter().map(count).collect::<Result<_, _>>()?,
            )),
            Some((0, [index, retry_after_us])) => {
                let index = usize::try_from(*index).map_err(|_| unexpected())?;
                if index >= buckets {
                    return Err(unexpected());
                }
                Ok(Reply::Refused {
                    index,
                    retry_after_us: count(retry_after_us)?,
                })
            }
            _ => Err(unexpected()),
        }
    }

    fn connection(&self) -> ConnectionManager {
        self.manager
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `call` within the timeout (a connect and a response each get one), and turns
    /// its error into a [`Failure`].
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout * 2, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let failure = self.classify(&error);
                if is_auth(&error) || !(error.is_io_error() || is_server_reply(&error)) {
                    self.renew();
                }
                Err(failure)
            }
            Err(_) => {
                self.renew();
                Err(Failure::Down(format!(
                    "Redis at {} did not answer within {}",
                    self.shown,
                    humantime::format_duration(self.timeout * 2)
                )))
            }
        }
    }

    /// A fresh connection manager, for the next call to connect anew.
    fn renew(&self) {
        if let Ok(fresh) = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            manager_config(self.timeout),
        ) {
            *self
                .manager
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        }
    }

    fn classify(&self, error: &RedisError) -> Failure {
        let mut cause = error.to_string();
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
            cause = cause.replace(password, "***");
        }
        if is_auth(error) {
            Failure::Auth(format!(
                "Redis at {} refused the password: {cause} (check --redis-url / \
                 --redis-password-file, or the node configuration's quotas section)",
                self.shown
            ))
        } else {
            Failure::Down(format!("Redis at {} did not answer: {cause}", self.shown))
        }
    }
}

/// The client for `config`: the URL's password, else the configured one; TLS verified
/// against `ca_file` when given, else the system's roots.
fn client(config: &RedisConfig) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo as _;
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|error| error.to_string())?;
    if let Some(password) = &config.password {
        if info.redis_settings().password().is_none() {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
    }
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        // The crate builds its rustls configuration on the process's provider: make it ring,
        // the proxy's (a no-op when one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &config.ca_file {
        Some(ca_file) => {
            let pem = std::fs::read(ca_file).map_err(|error| {
                format!("cannot read the CA file {}: {error}", ca_file.display())
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|error| format!("the CA file {}: {error}", ca_file.display()))
        }
        None => redis::Client::open(info).map_err(|error| error.to_string()),
    }
}

/// The largest integer the script's Lua numbers (doubles) hold exactly: 2^53 − 1. Larger
/// numbers (a budget of more than 8 PiB a day, a period of centuries) are held to it, which
/// changes no decision a real quota makes.
const LUA_EXACT: u64 = (1 << 53) - 1;

fn exact(n: u64) -> u64 {
    n.min(LUA_EXACT)
}

/// One connection attempt per call (the caller backs off between failures), each step
/// bounded by the node's timeout.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0)
}

fn is_auth(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        || (error.code() == Some("ERR")
            && error.detail().is_some_and(|detail| detail.contains("AUTH")))
}

/// An error the server answered (the connection itself is fine).
fn is_server_reply(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(kind) if kind != ServerErrorKind::BusyLoading)
}
