//! The quota store flags (`--redis-url` and its companions): the command-line way a node
//! says where team quotas are counted, and the files they name, read as root.
//!
//! `tollgate run` takes all of them ([`QuotaStoreArgs`]); `tollgate doctor` takes the ones
//! that say how to reach Redis ([`RedisArgs`]), so that it checks the store a run would use.
//! The node service has its own say in node.yaml (`quotas:`, see `serve::node_config`) and
//! refuses these flags from its callers. A URL may carry a password, so no message here ever
//! shows one: clap is told never to print the environment's value, the URL is checked by
//! [`RedisConfig::validate`] (whose messages leave the password out), and a file's contents
//! are never quoted.

use crate::quota::config::DEFAULT_CONNECT_TIMEOUT;
use crate::quota::store::{Bucket, BucketRule};
use crate::quota::{QuotaStore, QuotaStoreConfig, RedisConfig, StoreError, StoreFailure};
use clap::Args;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable `--redis-url` falls back to.
pub const REDIS_URL_ENV: &str = "TOLLGATE_REDIS_URL";

/// A round trip that may take longer than this is no quota check a request can wait for.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A password or URL file is a line; anything this large is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// How to reach the Redis that holds the fleet's quota counters.
#[derive(Debug, Clone, Default, Args)]
pub struct RedisArgs {
    /// Count team quotas in this Redis, shared by every node that uses it:
    /// redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS. Without it (and without
    /// TOLLGATE_REDIS_URL) each node enforces the quotas alone. Through --connect the node
    /// service's own store (node.yaml `quotas:`) applies and these flags are refused.
    // `hide_env_values`: the variable may hold a password, and clap would print it in --help.
    #[arg(long, value_name = "URL", env = REDIS_URL_ENV, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Read the Redis password from FILE (one line; a regular file owned by root that no one
    /// else may write), for a URL without one: the URL then holds no secret.
    #[arg(long, value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// Verify a rediss:// server against the CA certificates (PEM) in FILE instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// How long connecting to Redis, and each quota check, may take (e.g. 500ms; default
    /// 2s, at most 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_connect_timeout)]
    pub redis_connect_timeout: Option<Duration>,
}

/// Every quota store flag of `tollgate run`.
#[derive(Debug, Clone, Default, Args)]
pub struct QuotaStoreArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// When Redis does not answer a quota check: `deny` refuses the request (503
    /// quota_unavailable; the default), `local` has this node enforce its share of each
    /// quota alone (see --quota-nodes) until Redis answers again.
    #[arg(long, value_name = "deny|local", value_parser = parse_store_failure)]
    pub quota_store_failure: Option<StoreFailure>,
    /// How many nodes share the team quotas: with --quota-store-failure local, each enforces
    /// limit / N alone while Redis is away (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub quota_nodes: Option<u32>,
}

impl QuotaStoreArgs {
    /// The flags that were given, by name (what the node service refuses from a caller).
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = self.redis.given();
        if self.quota_store_failure.is_some() {
            given.push("--quota-store-failure");
        }
        if self.quota_nodes.is_some() {
            given.push("--quota-nodes");
        }
        given
    }

    /// The store these flags describe, with the password file read; or the one thing wrong.
    pub fn config(&self) -> Result<QuotaStoreConfig, String> {
        let redis = self.redis.redis()?;
        if redis.is_none() {
            if let Some(flag) = self.given().first() {
                return Err(format!(
                    "{flag} is about the Redis that holds the team quotas: give --redis-url \
                     (or {REDIS_URL_ENV}) too, or leave it out"
                ));
            }
        }
        let defaults = QuotaStoreConfig::default();
        Ok(QuotaStoreConfig {
            redis,
            on_failure: self.quota_store_failure.unwrap_or(defaults.on_failure),
            expected_nodes: self.quota_nodes.unwrap_or(defaults.expected_nodes),
            connect_timeout: self.redis.connect_timeout(),
            node_dir: defaults.node_dir,
        })
    }
}

impl RedisArgs {
    /// The flags that were given on the command line or through the environment.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.redis_url.is_some(), "--redis-url"),
            (self.redis_password_file.is_some(), "--redis-password-file"),
            (self.redis_ca.is_some(), "--redis-ca"),
            (
                self.redis_connect_timeout.is_some(),
                "--redis-connect-timeout",
            ),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }

    pub fn connect_timeout(&self) -> Duration {
        self.redis_connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The Redis these flags name (`None` without a URL), its password file read and its
    /// URL checked.
    pub fn redis(&self) -> Result<Option<RedisConfig>, String> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        if url.trim().is_empty() {
            return Err(format!(
                "--redis-url is empty: give a redis:// or rediss:// URL (or unset {REDIS_URL_ENV})"
            ));
        }
        let password = self
            .redis_password_file
            .as_deref()
            .map(|path| read_secret_file(path, "--redis-password-file"))
            .transpose()?;
        redis_config(url.trim(), password, self.redis_ca.clone()).map(Some)
    }
}

/// A [`RedisConfig`] from its parts, checked: the URL's scheme and host, the CA file a
/// regular file (read by the store when it connects). Messages never contain the password.
pub fn redis_config(
    url: &str,
    password: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<RedisConfig, String> {
    let config = RedisConfig {
        url: url.to_owned(),
        password,
        ca_file,
    };
    // The URL, and that a CA file goes with rediss:// only.
    config.validate()?;
    if let Some(ca) = &config.ca_file {
        match std::fs::metadata(ca) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(format!(
                    "the Redis CA file {} is not a regular file",
                    ca.display()
                ))
            }
            Err(error) => {
                return Err(format!(
                    "cannot read the Redis CA file {}: {}",
                    ca.display(),
                    describe(&error)
                ))
            }
        }
    }
    Ok(config)
}

/// The one line of a small secret file (a password, a URL with one), as root reads a node
/// file: a regular file (never a FIFO that would hang the open), owned by root or by this
/// process's user, that no one else may write (whoever could would choose the Redis that
/// grants the quotas), of at most 64 KiB of UTF-8. A link is followed, as a Kubernetes
/// Secret's keys are links into its `..data`; the file it reaches is what is checked. One
/// trailing newline is dropped; the contents are never quoted in a message.
pub fn read_secret_file(path: &Path, what: &str) -> Result<String, String> {
    use std::io::Read as _;
    let shown = path.display();
    let cannot = |e: std::io::Error| format!("{what} {shown}: {}", describe(&e));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{what} {shown}: not a regular file"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} {shown}: owned by uid {}; it must be owned by root",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} {shown}: writable by its group or others (mode {:04o}); chmod go-w it",
            meta.mode() & 0o7777
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{what} {shown}: larger than 64 KiB; it should hold one line"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{what} {shown}: not UTF-8 text"))?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if line.is_empty() {
        return Err(format!("{what} {shown}: empty"));
    }
    if line.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "{what} {shown}: more than one line; it should hold one line"
        ));
    }
    Ok(line.to_owned())
}

/// Whether a node's quota store answers, as `doctor` and `serve` ask before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// No Redis configured: each node counts alone.
    PerNode,
    /// Redis answered a read of a counter.
    Reachable,
    /// Redis did not answer (the sentence names it and why).
    Unreachable(String),
    /// Redis refused the password (the sentence names it, without the password).
    PasswordRefused(String),
}

/// The team the probe opens the store for. It only reads (`peek`), so whatever team has
/// the name loses nothing.
const PROBE_TEAM: &str = "tollgate-probe";

/// Connects to the store's Redis as an execution would (AUTH, script load), then reads one
/// counter: the one round trip that tells a reachable server from one that is not. Blocks
/// for at most about the connect timeout (twice: connect, then the read).
pub fn reach(config: &QuotaStoreConfig) -> Reach {
    if config.redis.is_none() {
        return Reach::PerNode;
    }
    // Deny: a probe never falls back to (nor creates) the node's own counters.
    let probe = QuotaStoreConfig {
        on_failure: StoreFailure::Deny,
        ..config.clone()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return Reach::Unreachable(format!("cannot start a runtime: {error}")),
    };
    let read = Bucket {
        name: "probe".into(),
        rule: BucketRule::Daily { limit: 1, cost: 0 },
    };
    // The store logs its own failing/recovered lines, written for a store that serves
    // executions with this node's `on_failure`; this one serves no one, and its caller
    // says what it found in one line of its own.
    let asked = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
        runtime.block_on(async {
            let store = QuotaStore::open(&probe, PROBE_TEAM).await?;
            store.peek(std::slice::from_ref(&read)).await.map(drop)
        })
    });
    match asked {
        Ok(()) => Reach::Reachable,
        Err(StoreError::Unavailable(cause)) => Reach::Unreachable(cause),
        Err(StoreError::Auth(message)) => Reach::PasswordRefused(message),
    }
}

/// `fleet-wide through redis://HOST:PORT` or `per node`: where quotas are counted, for
/// `doctor`, `serve` and `policy check` (never with a password).
pub fn describe_store(config: &QuotaStoreConfig) -> String {
    match &config.redis {
        Some(redis) => format!("fleet-wide through {}", redis.display_url()),
        None => "per node".into(),
    }
}

fn parse_connect_timeout(text: &str) -> Result<Duration, String> {
    let timeout = tollgate_policy::units::Span::parse(text)?.as_duration();
    check_connect_timeout(timeout)?;
    Ok(timeout)
}

/// A connect timeout is longer than zero and at most [`MAX_CONNECT_TIMEOUT`].
pub fn check_connect_timeout(timeout: Duration) -> Result<(), String> {
    if timeout.is_zero() {
        return Err("the Redis connect timeout must be longer than zero".into());
    }
    if timeout > MAX_CONNECT_TIMEOUT {
        return Err(format!(
            "a Redis connect timeout of {} would hold each request that long: give at most 1m",
            tollgate_policy::units::Span(timeout)
        ));
    }
    Ok(())
}

/// `deny` or `local`.
pub fn parse_store_failure(text: &str) -> Result<StoreFailure, String> {
    match text {
        "deny" => Ok(StoreFailure::Deny),
        "local" => Ok(StoreFailure::Local),
        _ => Err(format!(
            "`{text}`: give deny (refuse what cannot be checked) or local (each node enforces \
             its share alone)"
        )),
    }
}

/// An I/O error in words, without Rust's `(os error N)`.
fn describe(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests;
