//! Where a node keeps its team quotas, and what happens when that store fails: the node's
//! choice (`--redis-url`, `TOLLGATE_REDIS_URL`, or `quotas:` in the node configuration),
//! never a team's.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How long connecting to Redis (and each round trip) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The quota store of this node. The default, no Redis, enforces every quota on this node
/// alone (not fleet-wide).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuotaStoreConfig {
    /// Shared state for the fleet; `None`: per node.
    pub redis: Option<RedisConfig>,
    /// What a quota check does when Redis cannot answer.
    pub on_failure: StoreFailure,
    /// With `on_failure: local`, each node enforces `limit / expected_nodes` alone
    /// (at least 1).
    pub expected_nodes: u32,
    /// Connect (and round-trip) timeout.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// Where the per-node state lives (`/run/tollgate/quotas`).
    pub node_dir: PathBuf,
}

impl Default for QuotaStoreConfig {
    fn default() -> Self {
        QuotaStoreConfig {
            redis: None,
            on_failure: StoreFailure::Deny,
            expected_nodes: 1,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            node_dir: PathBuf::from("/run/tollgate/quotas"),
        }
    }
}

/// `quota_store_failure`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// A quota that cannot be checked is not granted: `503 quota_unavailable`.
    #[default]
    Deny,
    /// Each node enforces its share alone until Redis answers again.
    Local,
}

/// A Redis server: `redis://` or `rediss://` (TLS), with any user and password in the URL.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisConfig {
    /// The URL as given; it may hold a password, so it is never printed ([`RedisConfig::display_url`]).
    pub url: String,
    /// A password read from a file (`redis_password_file`), used when the URL has none.
    pub password: Option<String>,
    /// CA certificates (PEM) that `rediss://` servers are verified against instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// The URL with any password replaced by `***`: what messages, logs and the summary show.
    pub fn display_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    // Cannot fail: a URL with a password has a host.
                    let _ = parsed.set_password(Some("***"));
                }
                parsed.to_string()
            }
            // Not a URL, but it may still hold a password: hide whatever precedes the host.
            Err(_) => match (self.url.find("://"), self.url.rfind('@')) {
                (Some(scheme_end), Some(at)) if at > scheme_end => {
                    format!("{}://***@{}", &self.url[..scheme_end], &self.url[at + 1..])
                }
                (None, Some(at)) => format!("***@{}", &self.url[at + 1..]),
                _ => self.url.clone(),
            },
        }
    }

    /// Checks the URL: scheme `redis` or `rediss`, a host, an optional port and database.
    /// The error says what to fix and never contains the password.
    pub fn validate(&self) -> Result<(), String> {
        let shown = self.display_url();
        let parsed = url::Url::parse(&self.url).map_err(|error| {
            format!(
                "Redis URL `{shown}` is not a URL ({error}): give redis://[user:password@]HOST[:PORT][/DB] \
                 or rediss://… for TLS"
            )
        })?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(format!(
                "Redis URL `{shown}`: the scheme must be redis:// or rediss:// (TLS), not {}://",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "Redis URL `{shown}` has no host: give redis://HOST[:PORT][/DB]"
            ));
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(format!(
                "Redis URL `{shown}`: the path is the database number (e.g. /0), not `/{db}`"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!(
                "Redis URL `{shown}`: remove the `?…`/`#…` part (tollgate takes the connect \
                 timeout from --redis-connect-timeout, the CA from --redis-ca)"
            ));
        }
        if self.ca_file.is_some() && parsed.scheme() != "rediss" {
            return Err(format!(
                "a Redis CA file is given but `{shown}` is not TLS: use rediss://"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.display_url())
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
