//! Who may launch what: a launch's team and run options checked against the caller rules of
//! the node configuration, before the service does anything for it.
//!
//! Each `callers` rule is a complete grant: a launch is allowed when ONE rule that matches
//! the caller allows its team and every option it uses. Rules are not pooled: with one rule
//! giving a group team `ml` and another giving it `/srv/data` for team `data-eng`, a member
//! of the group may not share `/srv/data` with a sandbox of team `ml`, whose policy may let
//! it send the data somewhere `data-eng`'s may not. Root (uid 0) may launch anything a local
//! root `tollgate run` may.
//!
//! A refusal is one sentence the caller sees (exit 125): the flag, the value, and what this
//! node allows this caller for this team — from the rules that match it only, so a caller
//! never learns another's rules. `--share` roots are compared lexically, component by
//! component, on absolute paths without `..` (a root `/srv/work` allows `/srv/work/a`, never
//! `/srv/workshop`); the run opens each share with no link followed in any component, so
//! the path compared is the directory shared.

use super::node_config::{CallerRule, NodeConfig, Teams};
use super::wire::CallerIdentity;
use crate::run::{PolicySource, RunOptions};
use crate::sandbox::mounts::Share;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tollgate_policy::secrets::SecretRules;
use tollgate_policy::units::Span;

#[cfg(test)]
mod tests;

/// Whether `caller` may launch `options` on this node; the error is the one sentence the
/// caller sees (exit 125). `options` are as the caller asked, before the service adds its own
/// (the team's policy text, the node's secrets root).
///
/// A rule with `max_timeout` refuses a launch without `--timeout`; [`admit`] gives such a
/// launch the longest timeout it may have first.
pub fn authorize(
    config: &NodeConfig,
    caller: &CallerIdentity,
    options: &RunOptions,
) -> Result<(), String> {
    let team = requested_team(config, options)?;
    if caller.uid == 0 {
        return Ok(());
    }
    let who = format!("uid {}", caller.uid);
    let candidates = candidates(config, caller, team, &who)?;
    let ask = Ask::of(options);
    let pooled = pooled(&candidates);
    if let Some(refusal) = ask.refusal(&pooled) {
        return Err(refusal.message(&who, team, &pooled));
    }
    if candidates.iter().any(|rule| ask.refusal(rule).is_none()) {
        return Ok(());
    }
    Err(format!(
        "{who} may use each of these options for team `{team}`, but no one caller rule of this \
         node allows them all together: launch with fewer of them, or ask the node's operator \
         for a rule that covers them"
    ))
}

/// [`authorize`], after giving a launch without `--timeout` the longest timeout one of the
/// caller's rules allows it (none when such a rule has no `max_timeout`).
pub fn admit(
    config: &NodeConfig,
    caller: &CallerIdentity,
    options: &mut RunOptions,
) -> Result<(), String> {
    if options.timeout.is_none() && caller.uid != 0 {
        options.timeout = default_timeout(config, caller, options);
    }
    authorize(config, caller, options)
}

/// The longest `max_timeout` among the rules that would allow this launch but for its
/// timeout; `None` when one of them has no limit, or none would allow it anyway.
fn default_timeout(
    config: &NodeConfig,
    caller: &CallerIdentity,
    options: &RunOptions,
) -> Option<Duration> {
    let team = options.team.as_deref()?;
    let ask = Ask {
        timeout: None,
        ..Ask::of(options)
    };
    let fitting: Vec<&CallerRule> = config
        .callers
        .iter()
        .filter(|rule| rule.matches(caller) && rule.allows_team(team))
        .filter(|rule| {
            matches!(
                ask.refusal(rule),
                None | Some(Refusal::TimeoutMissing { .. })
            )
        })
        .collect();
    pooled(&fitting).max_timeout
}

/// The team, when the launch may go through the service at all: a team is named, and no
/// flag that only a local run may use is given. The secrets rules may be the default ones
/// (as the caller's flags left them) or the node's (once the service applied its own).
fn requested_team<'a>(config: &NodeConfig, options: &'a RunOptions) -> Result<&'a str, String> {
    if matches!(options.policy, Some(PolicySource::File(_))) {
        return Err(
            "--policy and --policy-dir cannot be used through the node service: it runs the \
             policy of the team named with --team from its own teams directory"
                .into(),
        );
    }
    let nodes = SecretRules::new(&config.secrets_dir, Vec::new());
    if options.secrets != SecretRules::default() && Ok(&options.secrets) != nodes.as_ref() {
        return Err(
            "--secrets-dir and --allow-secret-env cannot be used through the node service: a \
             team's secrets are the node's own"
                .into(),
        );
    }
    let team = options.team.as_deref().ok_or(
        "give --team NAME: the node service runs a team's policy, and its configuration says \
         who may launch for which team",
    )?;
    crate::cli::run::check_team_name(team)?;
    Ok(team)
}

/// The rules that match `caller` and allow `team`; when there are none, the refusal.
fn candidates<'a>(
    config: &'a NodeConfig,
    caller: &CallerIdentity,
    team: &str,
    who: &str,
) -> Result<Vec<&'a CallerRule>, String> {
    let matching: Vec<&CallerRule> = config
        .callers
        .iter()
        .filter(|rule| rule.matches(caller))
        .collect();
    if matching.is_empty() {
        return Err(format!(
            "{who} may not launch executions on this node: no caller rule of its node \
             configuration names this uid or one of its groups"
        ));
    }
    let candidates: Vec<&CallerRule> = matching
        .iter()
        .copied()
        .filter(|rule| rule.allows_team(team))
        .collect();
    if candidates.is_empty() {
        let mut teams: Vec<&str> = matching
            .iter()
            .flat_map(|rule| match &rule.teams {
                Teams::Every => Vec::new(),
                Teams::Named(names) => names.iter().map(String::as_str).collect(),
            })
            .collect();
        teams.sort_unstable();
        teams.dedup();
        let allowed = if teams.is_empty() {
            "no team".to_owned()
        } else {
            teams.join(", ")
        };
        return Err(format!(
            "{who} may not launch for team `{team}`: this node lets it launch for {allowed}"
        ));
    }
    Ok(candidates)
}

/// Everything the `rules` allow between them: what the messages list, and the test an option
/// must pass before the rules are tried one by one.
fn pooled(rules: &[&CallerRule]) -> CallerRule {
    let mut pooled = CallerRule {
        uid: None,
        gid: None,
        teams: Teams::Every,
        shares: Vec::new(),
        shares_ro: Vec::new(),
        users: Vec::new(),
        rootfs: Vec::new(),
        allow_root: false,
        allow_unenforced_limits: false,
        max_timeout: None,
    };
    for rule in rules {
        pooled.shares.extend(rule.shares.iter().cloned());
        pooled.shares_ro.extend(rule.shares_ro.iter().cloned());
        pooled.users.extend(rule.users.iter().copied());
        pooled.rootfs.extend(rule.rootfs.iter().cloned());
        pooled.allow_root |= rule.allow_root;
        pooled.allow_unenforced_limits |= rule.allow_unenforced_limits;
    }
    let limits: Option<Vec<Duration>> = rules.iter().map(|rule| rule.max_timeout).collect();
    pooled.max_timeout = limits.and_then(|limits| limits.into_iter().max());
    pooled.users.sort_unstable();
    pooled.users.dedup();
    pooled
}

/// Whether `path` is `root` or lies under it, compared component by component: `path` must
/// be absolute and hold no `..` (which could climb back out), `root` is absolute.
pub fn is_at_or_under(path: &Path, root: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|c| c == Component::ParentDir)
        && root.is_absolute()
        && path.starts_with(root)
}

/// What a launch asks of a rule, beyond its team.
#[derive(Clone, Copy)]
struct Ask<'a> {
    shares: &'a [Share],
    user: Option<(u32, u32)>,
    allow_root: bool,
    rootfs: Option<&'a Path>,
    allow_unenforced_limits: bool,
    timeout: Option<Duration>,
}

/// The first thing a rule does not allow.
#[derive(Debug, PartialEq, Eq)]
enum Refusal<'a> {
    Share(&'a Share),
    User((u32, u32)),
    AllowRoot,
    Rootfs(&'a Path),
    AllowUnenforcedLimits,
    TimeoutMissing { most: Duration },
    TimeoutTooLong { asked: Duration, most: Duration },
}

impl<'a> Ask<'a> {
    fn of(options: &'a RunOptions) -> Ask<'a> {
        Ask {
            shares: &options.shares,
            user: options.user,
            allow_root: options.allow_root,
            rootfs: options.rootfs.as_deref(),
            allow_unenforced_limits: options.limits.allow_unenforced,
            timeout: options.timeout,
        }
    }

    fn refusal(&self, rule: &CallerRule) -> Option<Refusal<'a>> {
        if let Some(share) = self.shares.iter().find(|share| !share_allowed(rule, share)) {
            return Some(Refusal::Share(share));
        }
        if let Some(user) = self.user.filter(|user| !rule.users.contains(user)) {
            return Some(Refusal::User(user));
        }
        if self.allow_root && !rule.allow_root {
            return Some(Refusal::AllowRoot);
        }
        if let Some(rootfs) = self.rootfs.filter(|dir| !rootfs_allowed(rule, dir)) {
            return Some(Refusal::Rootfs(rootfs));
        }
        if self.allow_unenforced_limits && !rule.allow_unenforced_limits {
            return Some(Refusal::AllowUnenforcedLimits);
        }
        match (rule.max_timeout, self.timeout) {
            (Some(most), None) => Some(Refusal::TimeoutMissing { most }),
            (Some(most), Some(asked)) if asked > most => {
                Some(Refusal::TimeoutTooLong { asked, most })
            }
            _ => None,
        }
    }
}

fn share_allowed(rule: &CallerRule, share: &Share) -> bool {
    let read_write = rule.shares.iter();
    let read_only = rule.shares_ro.iter().filter(|_| share.read_only);
    read_write
        .chain(read_only)
        .any(|root| is_at_or_under(&share.path, root))
}

/// A `--rootfs` is one of the listed directories exactly (each absolute and normalised, so
/// comparing components compares the directories).
fn rootfs_allowed(rule: &CallerRule, dir: &Path) -> bool {
    dir.is_absolute()
        && !dir.components().any(|c| c == Component::ParentDir)
        && rule
            .rootfs
            .iter()
            .any(|allowed| dir.components().eq(allowed.components()))
}

impl Refusal<'_> {
    /// The sentence the caller sees; `pooled` is what its rules for `team` allow.
    fn message(&self, who: &str, team: &str, pooled: &CallerRule) -> String {
        match self {
            Refusal::Share(share) => {
                let flag = if share.read_only {
                    "--share-ro"
                } else {
                    "--share"
                };
                format!(
                    "{who} may not use {flag} {} for team `{team}`: {}",
                    share.path.display(),
                    allowed_shares(pooled, share.read_only)
                )
            }
            Refusal::User((uid, gid)) => {
                let allowed = if pooled.users.is_empty() {
                    "this node lets it use no --user for this team (the command runs as a user \
                     of the execution's own)"
                        .to_owned()
                } else {
                    let users: Vec<String> = pooled
                        .users
                        .iter()
                        .map(|(uid, gid)| format!("{uid}:{gid}"))
                        .collect();
                    format!("this node lets it use --user {}", users.join(", "))
                };
                format!("{who} may not use --user {uid}:{gid} for team `{team}`: {allowed}")
            }
            Refusal::AllowRoot => {
                format!("{who} may not use --allow-root for team `{team}` on this node")
            }
            Refusal::Rootfs(dir) => {
                let allowed = if pooled.rootfs.is_empty() {
                    "this node lets it use no --rootfs for this team".to_owned()
                } else {
                    format!("this node lets it use --rootfs {}", listed(&pooled.rootfs))
                };
                format!(
                    "{who} may not use --rootfs {} for team `{team}`: {allowed}",
                    dir.display()
                )
            }
            Refusal::AllowUnenforcedLimits => format!(
                "{who} may not use --allow-unenforced-limits for team `{team}` on this node"
            ),
            Refusal::TimeoutMissing { most } => format!(
                "{who} must give --timeout for team `{team}`: this node allows it at most {}",
                Span(*most)
            ),
            Refusal::TimeoutTooLong { asked, most } => format!(
                "{who} may not use --timeout {} for team `{team}`: this node allows it at most {}",
                Span(*asked),
                Span(*most)
            ),
        }
    }
}

/// What `pooled` lets a caller share, for a refused `--share` (`read_only` false) or
/// `--share-ro`.
fn allowed_shares(pooled: &CallerRule, read_only: bool) -> String {
    let any: Vec<PathBuf> = pooled
        .shares
        .iter()
        .chain(pooled.shares_ro.iter().filter(|_| read_only))
        .cloned()
        .collect();
    if !any.is_empty() {
        return format!(
            "this node lets it share directories at or under {}",
            listed(&any)
        );
    }
    if !read_only && !pooled.shares_ro.is_empty() {
        return format!(
            "this node lets it share directories read-only only (--share-ro), at or under {}",
            listed(&pooled.shares_ro)
        );
    }
    "this node lets it share no directory for this team".into()
}

fn listed(paths: &[PathBuf]) -> String {
    let mut shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.sort_unstable();
    shown.dedup();
    shown.join(", ")
}
