//! Everything decided before anything is built: the policy and what it adds to the command
//! line, the team's secrets, the user, the sandbox's root and view, the command as the sandbox
//! will see it, the shared directories and the output files (opened now, before the child
//! exists), the working directory. A refusal here costs nothing to undo.
//!
//! Launched by the node service, the outputs are the caller's own files, checked the same
//! way (`outputs::adopt_audit`), and the audit log also goes to the service (its tee).

use super::service::ServiceLink;
use super::{env, outputs, Refusal, RunOptions};
use crate::audit::AuditLog;
use crate::proxy::Credentials;
use crate::sandbox::command::{self, CommandProblem};
use crate::sandbox::landlock::{self, LandlockPlan};
use crate::sandbox::layers::Layers;
use crate::sandbox::mounts::{self, OpenShare, Share};
use crate::sandbox::users::UserLease;
use std::path::PathBuf;
use tollgate_policy::Policy;

/// What [`prepare`] settled.
pub(super) struct Prepared {
    pub(super) options: RunOptions,
    pub(super) policy: Option<Policy>,
    /// Whether the policy turns the network (and so the proxy) on: decided once, here.
    pub(super) network: bool,
    /// Transparent egress: the network is on, neither `--no-transparent` nor the policy turns
    /// it off, and the sandbox has a namespace of its own to redirect in.
    pub(super) transparent: bool,
    pub(super) credentials: Option<Credentials>,
    /// Held until the run returns, after every process of the execution is dead.
    pub(super) _lease: Option<UserLease>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) layers: Layers,
    pub(super) root: mounts::Root,
    pub(super) landlock: Option<LandlockPlan>,
    pub(super) landlock_abi: Option<u32>,
    /// The command, as a path the sandbox sees.
    pub(super) program: PathBuf,
    pub(super) shares: Vec<OpenShare>,
    pub(super) audit: AuditLog,
    pub(super) summary: Option<outputs::SummaryTarget>,
    pub(super) cwd: PathBuf,
}

impl Prepared {
    pub(super) fn team(&self) -> Option<String> {
        self.policy.as_ref().map(|policy| policy.team.clone())
    }
}

pub(super) fn prepare(
    mut options: RunOptions,
    service: Option<&mut ServiceLink>,
) -> Result<Prepared, Refusal> {
    if let Some(user) = options.user {
        check_user(user, options.allow_root)?;
    }
    let policy = options.policy.as_ref().map(load_policy).transpose()?;
    if let (Some(expected), Some(policy)) = (&options.team, &policy) {
        if &policy.team != expected {
            return Err(Refusal::tollgate(format!(
                "--team {expected} loaded {}, whose `team:` is `{}`; a team's file must name \
                 that team",
                options
                    .policy
                    .as_ref()
                    .map(super::PolicySource::name)
                    .unwrap_or_default(),
                policy.team
            )));
        }
    }
    if let Some(policy) = &policy {
        apply_filesystem_section(&mut options, &policy.filesystem)?;
    }
    let network = policy.as_ref().is_some_and(Policy::network_enabled);
    // Secrets are read once, here, before anything is built: a missing one stops the run.
    let credentials = match &policy {
        Some(policy) if network => {
            Some(Credentials::load(policy, &options.secrets).map_err(|e| {
                Refusal::tollgate(format!("cannot load the team's credentials: {e}"))
            })?)
        }
        _ => None,
    };
    let program = options
        .command
        .first()
        .ok_or_else(|| Refusal::tollgate("no command given: write it after `--`"))?
        .clone();
    // Before a uid is leased: processes a killed supervisor left behind die here, so they
    // can never share a uid with this execution.
    crate::sandbox::gc::before_run();
    let (lease, (uid, gid)) = match options.user {
        Some(user) => (None, user),
        None => {
            let lease = UserLease::claim()?;
            let id = lease.uid();
            (Some(lease), (id, id))
        }
    };
    let layers = Layers::for_this_build();
    let root = match (&options.rootfs, layers.root) {
        (_, false) => mounts::Root::Host,
        (Some(dir), true) => mounts::Root::Image(dir.clone()),
        (None, true) => mounts::Root::System,
    };
    let view = mounts::View {
        root: &root,
        shares: &options.shares,
    };
    // A policy that requires Landlock on a host without it stops the run here.
    let landlock = LandlockPlan::prepare(
        &landlock::view_of(&root, &options.shares),
        policy
            .as_ref()
            .map(|policy| policy.filesystem.landlock)
            .unwrap_or_default(),
        landlock::usable_abi(layers),
    )
    .map_err(Refusal::tollgate)?;
    let landlock_abi = landlock.as_ref().map(LandlockPlan::abi);
    let resolved = match &root {
        mounts::Root::Image(dir) => command::resolve_in_image(&program, env::SANDBOX_PATH, dir),
        _ => command::resolve(&program, env::SANDBOX_PATH, uid, gid),
    };
    let program = resolved.map_err(|problem| Refusal {
        status: problem.exit_status(),
        message: match &problem {
            CommandProblem::NotFound(m) | CommandProblem::NotExecutable(m) => m.clone(),
        },
    })?;
    check_visible(&program, &options, &view)?;
    // Opened once, with no link followed; what is checked below and bound later is these
    // directories, whatever their paths name by then.
    let shares = mounts::open_shares(&options.shares).map_err(Refusal::tollgate)?;
    // Through the node service, only what the caller can reach itself.
    if let Some(link) = service.as_deref() {
        link.check_shares(&shares).map_err(Refusal::tollgate)?;
    }
    let share_ids: Vec<_> = shares.iter().map(|share| share.id).collect();
    let output_view = outputs::SandboxView {
        root: &root,
        uid,
        gid,
        shares: &options.shares,
        share_ids: &share_ids,
    };
    // Every output is opened before the child exists (see `outputs`).
    let (audit, summary) = match service {
        None => local_outputs(&options, &output_view)?,
        Some(link) => served_outputs(&options, &output_view, link)?,
    };
    let cwd = options.cwd.clone().unwrap_or_else(|| PathBuf::from("/tmp"));
    if !cwd.is_dir() {
        return Err(Refusal::tollgate(format!(
            "--cwd {} is not a directory",
            cwd.display()
        )));
    }
    if let Some(why) = view.invisible_because(&cwd) {
        return Err(Refusal::tollgate(format!(
            "the sandbox cannot see --cwd: {why}"
        )));
    }
    let transparent = network
        && options.transparent
        && layers.netns
        && policy
            .as_ref()
            .and_then(|p| p.network.as_ref())
            .is_some_and(|n| n.transparent);
    Ok(Prepared {
        options,
        policy,
        network,
        transparent,
        credentials,
        _lease: lease,
        uid,
        gid,
        layers,
        root,
        landlock,
        landlock_abi,
        program,
        shares,
        audit,
        summary,
        cwd,
    })
}

/// A local run's outputs: the audit log and the summary's place, opened here, and the log,
/// to which tollgate's lines (and those held so far) go from here on.
fn local_outputs(
    options: &RunOptions,
    view: &outputs::SandboxView<'_>,
) -> Result<(AuditLog, Option<outputs::SummaryTarget>), Refusal> {
    let audit = match &options.audit {
        Some(path) => {
            outputs::open_audit(path, view, options.audit_format).map_err(Refusal::tollgate)?
        }
        None => AuditLog::disabled(),
    };
    let summary = options
        .summary
        .as_deref()
        .map(|path| outputs::SummaryTarget::open(path, view))
        .transpose()
        .map_err(Refusal::tollgate)?;
    if let Some(path) = &options.log {
        let others = [
            ("--audit", options.audit.as_deref()),
            ("--summary", options.summary.as_deref()),
        ];
        let file = outputs::open_log(path, view, &others).map_err(Refusal::tollgate)?;
        crate::logging::write_to(file);
    }
    Ok((audit, summary))
}

/// A served run's outputs: the caller's own `--audit` and `--log` files, adopted once
/// checked, and an audit log that always tees to the service. No summary place: the caller
/// writes its summary itself.
fn served_outputs(
    options: &RunOptions,
    view: &outputs::SandboxView<'_>,
    link: &mut ServiceLink,
) -> Result<(AuditLog, Option<outputs::SummaryTarget>), Refusal> {
    // The worker's working directory is not the caller's.
    for (flag, path) in [("--audit", &options.audit), ("--log", &options.log)] {
        if let Some(path) = path.as_deref().filter(|path| !path.is_absolute()) {
            return Err(Refusal::tollgate(format!(
                "{flag} {}: through the node service, give an absolute path",
                path.display()
            )));
        }
    }
    let file = match &options.audit {
        Some(path) => Some(
            link.take_audit_file()
                .and_then(|passed| outputs::adopt_audit(path, view, passed))
                .map_err(Refusal::tollgate)?,
        ),
        None => None,
    };
    let audit = AuditLog::teed(file, options.audit_format, link.tee());
    if let Some(path) = &options.log {
        let others = [("--audit", options.audit.as_deref())];
        let file = link
            .take_log_file()
            .and_then(|passed| outputs::adopt_log(path, view, &others, passed))
            .map_err(Refusal::tollgate)?;
        crate::logging::write_to(file);
    }
    Ok((audit, None))
}

/// Loads the team's policy; a policy that does not load stops the run with its first problem.
fn load_policy(source: &super::PolicySource) -> Result<Policy, Refusal> {
    let loaded = match source {
        super::PolicySource::File(path) => crate::team_rules::load(path),
        super::PolicySource::Text(text) => crate::team_rules::load_text(&text.name, &text.text),
    };
    loaded.map_err(|errors| {
        // One line: the first problem, and where to see all of them.
        let first = errors
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let more = errors.errors.len().saturating_sub(1);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        Refusal::tollgate(format!(
            "invalid policy: {first}{more}; `tollgate policy check {}` lists every problem",
            source.name()
        ))
    })
}

/// Adds what the team's policy always shares (`filesystem.read_only`, `read_write`) to the
/// shares of the command line, which win for a path both name, and takes the policy's
/// `filesystem.rootfs` unless `--rootfs` chose one.
fn apply_filesystem_section(
    options: &mut RunOptions,
    filesystem: &tollgate_policy::filesystem::Filesystem,
) -> Result<(), Refusal> {
    let named = |path: &PathBuf| options.shares.iter().any(|share| &share.path == path);
    let from_policy = |dirs: &[PathBuf], read_only: bool| {
        dirs.iter()
            .filter(|dir| !named(dir))
            .map(|dir| Share {
                path: dir.clone(),
                read_only,
            })
            .collect::<Vec<_>>()
    };
    let mut added = from_policy(&filesystem.read_only, true);
    added.extend(from_policy(&filesystem.read_write, false));
    for share in &added {
        mounts::check_share(&share.path)
            .map_err(|why| Refusal::tollgate(format!("the policy's filesystem section: {why}")))?;
    }
    let (read_write, read_only): (Vec<_>, Vec<_>) = options
        .shares
        .iter()
        .chain(&added)
        .partition(|share| !share.read_only);
    let paths = |shares: Vec<&Share>| {
        shares
            .into_iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    };
    options.shares = mounts::arrange_shares(&paths(read_write), &paths(read_only))
        .map_err(|why| Refusal::tollgate(format!("with the policy's filesystem section: {why}")))?;
    if options.rootfs.is_none() {
        options.rootfs = filesystem.rootfs.clone();
    }
    Ok(())
}

/// Refuses a `--user` the sandbox must not run as: `u32::MAX` (which `setresuid` and
/// `setresgid` read as "leave unchanged", so the command would keep root's ids), root's ids
/// without `--allow-root`, and the uids of the lease pool, which belong to other executions.
fn check_user((uid, gid): (u32, u32), allow_root: bool) -> Result<(), Refusal> {
    if uid == u32::MAX || gid == u32::MAX {
        return Err(Refusal::tollgate(format!(
            "--user {uid}:{gid}: {} is not a usable id ((uid_t)-1 means \"unchanged\" to the \
             kernel); give a real uid and gid",
            u32::MAX
        )));
    }
    if (uid == 0 || gid == 0) && !allow_root {
        return Err(Refusal::tollgate(format!(
            "refusing to run the command with root's {} (--user {uid}:{gid}): a root process \
             could leave its cgroup and its walls, and group 0 owns host files; use an \
             unprivileged user and group, or pass --allow-root if you must",
            if uid == 0 { "uid" } else { "gid" }
        )));
    }
    if UserLease::pool_holds(uid) || UserLease::pool_holds(gid) {
        return Err(Refusal::tollgate(format!(
            "--user {uid}:{gid}: ids {} are leased to executions of their own; give an id \
             outside that range, or leave --user out to get one",
            UserLease::pool_description()
        )));
    }
    Ok(())
}

/// Refuses a command the sandbox would not see (under a hidden directory, or an unshared
/// part of its own `/tmp`), and warns about absolute path arguments it would not see — the
/// usual way to trip over the private `/tmp` is a script path.
fn check_visible(
    program: &std::path::Path,
    options: &RunOptions,
    view: &mounts::View<'_>,
) -> Result<(), Refusal> {
    if let Some(why) = view.invisible_because(program) {
        return Err(Refusal {
            status: super::status::NOT_FOUND,
            message: format!("the sandbox cannot see the command: {why}"),
        });
    }
    for argument in options.command.iter().skip(1).map(std::path::Path::new) {
        if argument.is_absolute() && argument.exists() {
            if let Some(why) = view.invisible_because(argument) {
                eprintln!("tollgate: warning: the sandbox will not see an argument: {why}");
            }
        }
    }
    Ok(())
}
