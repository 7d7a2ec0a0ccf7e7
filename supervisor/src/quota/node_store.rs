//! The per-node quota store: one small JSON file per team under the node's quota directory,
//! counted with the same formulas as the Redis script ([`super::gcra`]).
//!
//! It answers when no Redis is configured (the node alone enforces each quota), and, under
//! its own file name, when Redis does not answer and the node was told to fall back to its
//! share (`on_failure: local`). Every execution of the team on this node shares the file:
//! each check opens it, takes an exclusive `flock`, reads, decides, writes and closes, so
//! concurrent executions count as one.
//!
//! The directory and files are root's and opened as design invariant 7 asks: no symbolic
//! link followed in any component, the file checked through its descriptor (a regular file
//! of ours with one link), never trusted to hold sense: content that is not a state file is
//! logged and counted afresh.

use super::gcra::{self, Gcra};
use super::redis_store::{Mode, Reply};
use super::store::{Bucket, BucketRule};
use crate::sandbox::host_path;
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which of the team's files: the node's own count, or the fallback share's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Namespace {
    /// No Redis configured: `<team>.json`.
    Node,
    /// Redis did not answer: `<team>.local-fallback.json`, kept apart so the fallback's
    /// smaller limits never mix with a node-only count.
    LocalFallback,
}

/// One team's file on this node.
#[derive(Clone)]
pub(super) struct NodeStore {
    dir: Arc<OwnedFd>,
    name: OsString,
    /// For messages: `/run/tollgate/quotas/acme.json`.
    shown: PathBuf,
}

/// What a file holds: each rate bucket's TAT and each day bucket's count, by key name
/// (a day bucket's name ends in `:YYYYMMDD`, as in Redis).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct State {
    rate: BTreeMap<String, u64>,
    daily: BTreeMap<String, u64>,
}

impl NodeStore {
    /// The store of `team` in `dir` (created 0700 if missing, every component opened without
    /// following links).
    pub(super) fn open(dir: &Path, team: &str, namespace: Namespace) -> Result<NodeStore, String> {
        if team.is_empty() || !team.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!(
                "`{team}` is not a team name the quota store can keep"
            ));
        }
        let dir = host_path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let fd = open_or_create_dir(&dir).map_err(|error| {
            format!(
                "quota directory {}",
                host_path::describe_error(&dir, &error)
            )
        })?;
        let suffix = match namespace {
            Namespace::Node => "json",
            Namespace::LocalFallback => "local-fallback.json",
        };
        let name = OsString::from(format!("{team}.{suffix}"));
        Ok(NodeStore {
            dir: Arc::new(fd),
            shown: dir.join(&name),
            name,
        })
    }

    /// Runs `mode` over `buckets` now, off the async threads (the lock may wait for another
    /// execution's check).
    pub(super) async fn call(&self, mode: Mode, buckets: &[Bucket]) -> Result<Reply, String> {
        let store = self.clone();
        let buckets = buckets.to_vec();
        tokio::task::spawn_blocking(move || store.call_at(mode, &buckets, now_us()))
            .await
            .map_err(|error| {
                format!(
                    "{}: the quota check stopped: {error}",
                    store_name(&self.shown)
                )
            })?
    }

    /// Runs `mode` over `buckets` at `now` (microseconds since the epoch).
    pub(super) fn call_at(
        &self,
        mode: Mode,
        buckets: &[Bucket],
        now: u64,
    ) -> Result<Reply, String> {
        let fail = |error: io::Error| format!("{}: {error}", store_name(&self.shown));
        let mut file = self.open_file().map_err(|error| {
            format!(
                "quota state {}",
                host_path::describe_error(&self.shown, &error)
            )
        })?;
        file.lock().map_err(fail)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(fail)?;
        let mut state = if text.is_empty() {
            State::default()
        } else {
            match serde_json::from_slice::<State>(&text) {
                Ok(state) => state,
                Err(error) => {
                    tracing::warn!(
                        "{}: not a quota state file ({error}); counting afresh",
                        self.shown.display()
                    );
                    State::default()
                }
            }
        };
        let reply = apply(&mut state, mode, buckets, now);
        let after = serde_json::to_vec(&state).map_err(|error| fail(io::Error::other(error)))?;
        if after != text {
            // Written over in place, then cut to length: never truncated to zero first,
            // which makes ext4 (auto_da_alloc) flush the file to disk at every close.
            let length = u64::try_from(after.len()).unwrap_or(u64::MAX);
            file.write_all_at(&after, 0)
                .and_then(|()| file.set_len(length))
                .map_err(fail)?;
        }
        // Closing the file releases the lock.
        Ok(reply)
    }

    /// Opens (creating) the file, and checks through the descriptor that it is a regular
    /// file of ours with no other name.
    fn open_file(&self) -> io::Result<std::fs::File> {
        let fd = host_path::open_in(
            self.dir.as_fd(),
            &self.name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW,
            0o600,
        )?;
        let stat = host_path::stat(fd.as_fd())?;
        let refuse = |why: &str| Err(io::Error::other(why.to_string()));
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return refuse("not a regular file; remove it");
        }
        if stat.st_uid != nix::unistd::geteuid().as_raw() {
            return refuse("not owned by root; remove it");
        }
        if stat.st_nlink != 1 {
            return refuse("it has another name (a hard link); remove it");
        }
        Ok(std::fs::File::from(fd))
    }
}

fn store_name(path: &Path) -> String {
    format!("quota state {}", path.display())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `quota.lua` over a file's state: the same decisions, the same answers.
fn apply(state: &mut State, mode: Mode, buckets: &[Bucket], now: u64) -> Reply {
    let today = gcra::day_label(gcra::day_number(now));
    // What has expired is forgotten, as Redis forgets expired keys.
    state.rate.retain(|_, tat| *tat > now);
    state.daily.retain(|key, _| key.ends_with(&today));
    let day_key = |name: &str| format!("{name}:{today}");

    // Carried bytes first, as the script does: the day buckets below count them.
    if mode != Mode::Peek {
        for bucket in buckets {
            if let BucketRule::Carry { bytes, .. } = bucket.rule {
                let count = state.daily.entry(day_key(&bucket.name)).or_insert(0);
                *count = count.saturating_add(bytes);
            }
        }
    }

    if mode == Mode::Take {
        let mut refused: Option<(usize, u64)> = None;
        for (index, bucket) in buckets.iter().enumerate() {
            let wait = match bucket.rule {
                BucketRule::Rate {
                    limit,
                    period,
                    burst,
                } => Gcra::new(limit, period, burst)
                    .take(state.rate.get(&bucket.name).copied(), now)
                    .err(),
                BucketRule::Daily { limit, cost } => {
                    let count = state
                        .daily
                        .get(&day_key(&bucket.name))
                        .copied()
                        .unwrap_or(0);
                    gcra::daily_take(count, limit, cost)
                        .err()
                        .map(|()| gcra::until_next_day(now))
                }
                BucketRule::Carry { .. } => None,
            };
            if let Some(wait) = wait {
                if refused.is_none_or(|(_, longest)| wait > longest) {
                    refused = Some((index, wait));
                }
            }
        }
        if let Some((index, retry_after_us)) = refused {
            return Reply::Refused {
                index,
                retry_after_us,
            };
        }
    }
    for bucket in buckets {
        match bucket.rule {
            BucketRule::Rate {
                limit,
                period,
                burst,
            } if mode == Mode::Take => {
                let tat = state.rate.get(&bucket.name).copied();
                if let Ok(next) = Gcra::new(limit, period, burst).take(tat, now) {
                    state.rate.insert(bucket.name.clone(), next);
                }
            }
            BucketRule::Daily { cost, .. } if mode != Mode::Peek && cost > 0 => {
                let count = state.daily.entry(day_key(&bucket.name)).or_insert(0);
                *count = count.saturating_add(cost);
            }
            _ => {}
        }
    }
    Reply::Remaining(
        buckets
            .iter()
            .map(|bucket| match bucket.rule {
                BucketRule::Rate {
                    limit,
                    period,
                    burst,
                } => Gcra::new(limit, period, burst)
                    .remaining(state.rate.get(&bucket.name).copied(), now),
                BucketRule::Daily { limit, .. } | BucketRule::Carry { limit, .. } => {
                    gcra::daily_remaining(
                        state
                            .daily
                            .get(&day_key(&bucket.name))
                            .copied()
                            .unwrap_or(0),
                        limit,
                    )
                }
            })
            .collect(),
    )
}

/// Opens `dir` (absolute, normal), creating each missing component 0700, following no link;
/// refuses a directory others could write into (they could swap the state files).
fn open_or_create_dir(dir: &Path) -> io::Result<OwnedFd> {
    let mut fd = host_path::open_dir(Path::new("/"))?;
    for component in dir.components().skip(1) {
        let name: &OsStr = component.as_os_str();
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        fd = match host_path::open_in(fd.as_fd(), name, flags, 0) {
            Ok(next) => next,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                match nix::sys::stat::mkdirat(fd.as_fd(), name, nix::sys::stat::Mode::S_IRWXU) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(errno) => return Err(errno.into()),
                }
                host_path::open_in(fd.as_fd(), name, flags, 0)?
            }
            Err(error) => return Err(error),
        };
    }
    let stat = host_path::stat(fd.as_fd())?;
    if stat.st_uid != nix::unistd::geteuid().as_raw() || stat.st_mode & 0o022 != 0 {
        return Err(io::Error::other(
            "must be root's and writable by root alone (chmod 0700)",
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests;
