//! The node configuration as it is written: the serde and JSON Schema shape of node.yaml.
//!
//! These types describe syntax only; names, paths and ranges are checked when the file is
//! resolved into a [`super::NodeConfig`]. Unknown keys are errors everywhere, so a misspelt
//! restriction (`allow_rot: false`) can never be silently ignored.

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use tollgate_policy::units::Span;

/// tollgate's node configuration (`/etc/tollgate/node.yaml`): where `tollgate serve` listens,
/// where team policies and secrets live, and which local callers may launch executions for
/// which teams, with which run options. Omitted keys take the defaults in docs/node-config.md.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tollgate node configuration")]
pub struct NodeFile {
    /// Format version; this tollgate reads version 1 (the default).
    #[serde(default)]
    pub version: Option<u32>,
    /// The launch socket that `tollgate run --connect` connects to.
    #[serde(default)]
    pub socket: SocketSection,
    /// Team policies, one `<team>.yaml` per team. Default /etc/tollgate/teams.
    #[serde(default)]
    pub teams_dir: Option<PathBuf>,
    /// Team secrets, one `<team>/` directory per team. Default /etc/tollgate/secrets.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`): `HOST:PORT` or `unix:/PATH`. Omitted:
    /// no metrics.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The service's own audit log of launches (JSON Lines, appended). Omitted: none.
    #[serde(default)]
    pub audit: Option<PathBuf>,
    /// How often team policy files are looked at for changes. Default 1s.
    #[serde(default)]
    pub reload_interval: Option<Span>,
    /// How often leftovers of dead executions are collected (`tollgate gc`). Default 10m.
    #[serde(default)]
    pub gc_interval: Option<Span>,
    /// On SIGTERM, how long running executions may go on before they are ended. Default 30s.
    #[serde(default)]
    pub shutdown_grace: Option<Span>,
    /// Most executions running at once; a launch beyond it is refused. Default 256.
    #[serde(default)]
    pub max_executions: Option<u32>,
    /// Who may launch what. Root (uid 0) may always launch for any team; nobody else may
    /// launch unless a rule here matches it.
    #[serde(default)]
    pub callers: Vec<CallerSection>,
    /// Where the team quotas of the policies are counted. Omitted: on this node alone (not
    /// fleet-wide).
    #[serde(default)]
    pub quotas: QuotasSection,
}

/// The quota store: a Redis shared by the fleet, and what a check does when it does not
/// answer. Without `redis_url` (or `redis_url_file`) each node enforces the quotas alone.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotasSection {
    /// `redis://HOST[:PORT][/DB]`, or `rediss://` for TLS. A URL with a password is refused
    /// here (this file may be read by anyone): give `redis_url_file`, or the password in
    /// `redis_password_file`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// A file (one line, root's, writable by no one else) holding the URL, instead of
    /// `redis_url`: the URL's password stays out of this file.
    #[serde(default)]
    pub redis_url_file: Option<PathBuf>,
    /// A file (one line, root's, writable by no one else) holding the Redis password, for a
    /// URL without one.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// CA certificates (PEM) a `rediss://` server is verified against, instead of the
    /// system's roots.
    #[serde(default)]
    pub redis_ca: Option<PathBuf>,
    /// How long connecting to Redis, and each quota check, may take. Default 2s, at most 1m.
    #[serde(default)]
    pub connect_timeout: Option<Span>,
    /// When Redis does not answer: `deny` (the default) refuses the request with 503
    /// `quota_unavailable`; `local` has each node enforce its share of each quota
    /// (limit / `expected_nodes`) alone until Redis answers again.
    #[serde(default)]
    pub store_failure: Option<StoreFailureName>,
    /// How many nodes share the quotas, for `store_failure: local`. Default 1.
    #[serde(default)]
    pub expected_nodes: Option<u32>,
}

/// `deny` or `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailureName {
    /// A quota that cannot be checked is not granted.
    Deny,
    /// Each node enforces its share alone.
    Local,
}

/// The launch socket: its path, owner, group and mode.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    /// Default /run/tollgate/tollgate.sock.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// User owning the socket: a name or a uid. Default: the service's (root).
    #[serde(default)]
    pub owner: Option<IdOrName>,
    /// Group owning the socket: a name or a gid. Default: the service's (root).
    #[serde(default)]
    pub group: Option<IdOrName>,
    /// Permissions of the socket, as a quoted octal string. Default "0660": its owner and
    /// group may connect.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// One rule of who may launch what. A rule matches a caller by user (`uid` or `user`), by
/// group (`gid` or `group`: the caller's primary or a supplementary group), or by both (then
/// both must match). A launch is allowed when one matching rule allows all of it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallerSection {
    /// The caller's uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The caller's user name (instead of `uid`).
    #[serde(default)]
    pub user: Option<String>,
    /// A gid the caller has (primary or supplementary).
    #[serde(default)]
    pub gid: Option<u32>,
    /// A group name the caller has (instead of `gid`).
    #[serde(default)]
    pub group: Option<String>,
    /// Teams it may launch for (`--team`); `"*"` is every team.
    pub teams: Vec<String>,
    /// Host directories it may `--share` or `--share-ro`: each a root, shared at it or under it.
    #[serde(default)]
    pub shares: Vec<PathBuf>,
    /// Host directories it may `--share-ro` only (at them or under them).
    #[serde(default)]
    pub shares_ro: Vec<PathBuf>,
    /// Users it may run the command as (`--user`): `UID`, `UID:GID`, `NAME` or `NAME:GROUP`,
    /// each read as `--user` reads it. Empty (the default): executions run as a user of
    /// their own.
    #[serde(default)]
    pub users: Vec<IdOrName>,
    /// Prepared root filesystems it may use (`--rootfs`), exactly these directories.
    #[serde(default)]
    pub rootfs: Vec<PathBuf>,
    /// May use `--allow-root` (with `--user 0` among its `users`). Default false.
    #[serde(default)]
    pub allow_root: bool,
    /// May use `--allow-unenforced-limits`. Default false.
    #[serde(default)]
    pub allow_unenforced_limits: bool,
    /// Longest `--timeout` it may ask for; a launch without `--timeout` gets this one.
    /// Omitted: no limit.
    #[serde(default)]
    pub max_timeout: Option<Span>,
}

/// A user or group as a name or a number (`root`, `0`, `"1000:1000"`), kept as text until it
/// is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdOrName(pub String);

impl<'de> Deserialize<'de> for IdOrName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = IdOrName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdOrName, E> {
                Ok(IdOrName(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdOrName, E> {
                Err(E::custom(format!("{v} is not a user or group id")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdOrName, E> {
                if v.is_empty() {
                    return Err(E::custom("an empty name: give a name or a number"));
                }
                Ok(IdOrName(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for IdOrName {
    fn schema_name() -> Cow<'static, str> {
        "IdOrName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A name or a number (user: NAME, UID, NAME:GROUP or UID:GID where a user is meant)",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                {"type": "string", "minLength": 1}
            ]
        })
    }
}

/// Permission bits written as an octal string: `"0660"`, `"660"` or `"0o660"`.
///
/// A YAML number is refused: `660` is read as decimal (0o1224) and `0o660` as 432, and
/// nothing tells which the writer meant. (Unquoted `0660` is a string in YAML 1.2, so it
/// works as written.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        let well_formed =
            (1..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let bits = if well_formed {
            u32::from_str_radix(digits, 8).ok()
        } else {
            None
        };
        match bits {
            Some(bits) if bits <= 0o777 => Ok(Mode(bits)),
            Some(_) => Err(format!(
                "mode \"{text}\" sets more than permission bits: give at most \"0777\", e.g. \"0660\""
            )),
            None => Err(format!(
                "mode \"{text}\" is not an octal mode: write it like \"0660\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal mode as a quoted string, e.g. \"0660\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {v} is a YAML number, which may be decimal or octal: write the mode \
                     as a quoted octal string, e.g. \"0660\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {v} is not a mode: write it as a quoted octal string, e.g. \"0660\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                Mode::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Permission bits as a quoted octal string: \"0660\", \"660\" or \"0o660\" (at most 0777)",
            "type": "string",
            "pattern": "^(0|0o)?[0-7]{1,3}$"
        })
    }
}
