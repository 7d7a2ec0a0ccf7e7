//! `tollgate run`: the command-line face of [`crate::run`].

use crate::audit;
use crate::run::{self, RunOptions};
use crate::sandbox::mounts;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: the command's own; 128+N if it was killed by signal N; 124 when \
                  --timeout expired; 125 when tollgate failed; 126 when the command cannot be \
                  executed; 127 when it was not found."
)]
pub struct RunArgs {
    /// Team policy file. Without a policy (or without its `network` section) the sandbox has
    /// loopback only and no proxy.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["team", "policy_dir"])]
    pub policy: Option<PathBuf>,
    /// Team name: reads DIR/NAME.yaml from --policy-dir (with --connect, the node service
    /// holds the team policies).
    #[arg(long, value_name = "NAME")]
    pub team: Option<String>,
    /// Directory of team policies, for --team.
    #[arg(long, value_name = "DIR", requires = "team")]
    pub policy_dir: Option<PathBuf>,
    /// Launch through the node service listening on SOCKET (`tollgate serve`) instead of
    /// here: no root needed; the node's configuration decides which teams and options this
    /// user may use.
    #[arg(long, value_name = "SOCKET")]
    pub connect: Option<PathBuf>,
    /// Kill the whole sandbox after this long (e.g. 30s, 5m); exit status 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Most processes and threads the sandbox may run at once: lowers the policy's
    /// `limits.processes` (default 1024), never raises it. Enforced by the execution's cgroup
    /// and by RLIMIT_NPROC of its user (with a shared --user, every process of that user on
    /// the host counts).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub max_processes: Option<u64>,
    /// Memory of the whole sandbox (e.g. 512MiB; anonymous memory, tmpfs files and page cache
    /// count): lowers the policy's `limits.memory` (default 1GiB), never raises it. Past it
    /// the command is killed (exit status 137).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// CPU time of the whole sandbox, in cores (e.g. 0.5, 2): lowers the policy's
    /// `limits.cpu` (default unlimited), never raises it.
    #[arg(long, value_name = "N", value_parser = tollgate_policy::units::Cores::parse)]
    pub cpus: Option<tollgate_policy::units::Cores>,
    /// Run even where this host cannot enforce a limit (no cgroup memory or cpu controller),
    /// with a warning; without it such a run fails (exit status 125).
    #[arg(long)]
    pub allow_unenforced_limits: bool,
    /// User (and group) the command runs as: a number or a name. Default: a uid of the
    /// execution's own (leased from 1879048192 up), so executions cannot touch each other;
    /// executions given the same --user can signal and trace each other's processes.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Allow --user 0. Root could leave its cgroup; use only for trusted commands.
    #[arg(long)]
    pub allow_root: bool,
    /// Working directory of the command (default /tmp, the sandbox's own).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Share a host directory with the sandbox, read-write, at the same path (repeatable; not
    /// under /proc, /sys, /dev or /run). The sandbox sees only the host's system directories
    /// (/usr, /bin, /sbin, /lib*, /etc), its own empty /tmp and /var/tmp, and what is shared.
    #[arg(long, value_name = "DIR", value_parser = parse_share)]
    pub share: Vec<PathBuf>,
    /// Like --share, read-only.
    #[arg(long, value_name = "DIR", value_parser = parse_share)]
    pub share_ro: Vec<PathBuf>,
    /// Size of the sandbox's own /tmp, and of its /var/tmp (memory: tmpfs), at least 1MiB;
    /// e.g. 512MiB. Default 1GiB each.
    #[arg(long, value_name = "SIZE", default_value_t = run::DEFAULT_TMP_SIZE,
          value_parser = parse_tmp_size, hide_default_value = true)]
    pub tmp_size: u64,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Copy a variable from tollgate's environment into the sandbox (repeatable).
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    #[command(flatten)]
    pub secrets: super::policy::SecretArgs,
    /// Write the audit log (JSON Lines) here.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// How --audit is written: `json`, tollgate's records (docs/audit.md), or `ocsf`, the
    /// same events as OCSF 1.3.0 objects for SIEM pipelines.
    #[arg(long, value_name = "FORMAT", default_value = "json", requires = "audit",
          value_parser = parse_audit_format())]
    pub audit_format: audit::Format,
    /// Write a JSON summary of the execution here when it ends.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write tollgate's own log lines (the proxy's line per request, warnings, and what
    /// TOLLGATE_LOG asks for) here, appended, instead of to stderr, which is then the
    /// command's alone but for tollgate's errors about the run itself. Opened like --audit.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Run on this prepared root filesystem (bound read-only as `/`, with the sandbox's
    /// private mounts on top) instead of the host's system directories; see images/sandbox/.
    #[arg(long, value_name = "DIR", value_parser = parse_rootfs)]
    pub rootfs: Option<PathBuf>,
    /// Give the command a terminal of its own (a pseudo-terminal relayed to this one, like
    /// `docker run -t`), for interactive programs. Without it the command has no controlling
    /// terminal: it cannot push input into the caller's.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Turn transparent egress off for this run: clients that ignore the proxy settings then
    /// cannot resolve or reach anything (see docs/clients.md). Also `network.transparent:
    /// false` in the policy.
    #[arg(long)]
    pub no_transparent: bool,
    // Where the team quotas are counted: a node's choice, refused through --connect.
    #[command(flatten)]
    pub quota_store: super::quota_store::QuotaStoreArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--audit-format`'s names, listed in `--help` and in the message for any other word.
fn parse_audit_format() -> impl clap::builder::TypedValueParser<Value = audit::Format> {
    use clap::builder::TypedValueParser;
    let names = audit::Format::ALL.map(|(name, _)| name);
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| audit::Format::from_name(&name).unwrap_or_default())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let span = tollgate_policy::units::Span::parse(text)?;
    if span.as_duration().is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(span.as_duration())
}

fn parse_tmp_size(text: &str) -> Result<u64, String> {
    let size = tollgate_policy::units::ByteSize::parse(text)?.0;
    if size < mounts::MIN_TMP_SIZE {
        return Err("the scratch size must be at least 1MiB".into());
    }
    // tmpfs pages are memory: a scratch directory larger than the host's memory and swap
    // could never be filled, and one that large is no bound at all.
    let most = mounts::max_tmp_size().map_err(|e| {
        format!("cannot read the host's memory size to check the scratch size: {e}")
    })?;
    if size > most {
        return Err(format!(
            "{text} is more than this host's memory and swap ({most} bytes, {} MiB): give a \
             smaller size",
            most >> 20
        ));
    }
    Ok(size)
}

fn parse_memory(text: &str) -> Result<u64, String> {
    let size = tollgate_policy::units::ByteSize::parse(text)?;
    if size.0 < tollgate_policy::validate::MIN_MEMORY {
        return Err(format!(
            "the memory limit must be at least {}",
            tollgate_policy::units::ByteSize(tollgate_policy::validate::MIN_MEMORY)
        ));
    }
    Ok(size.0)
}

fn parse_share(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    mounts::check_share(&path)?;
    Ok(path)
}

fn parse_rootfs(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!("--rootfs {text}: give an absolute path"));
    }
    crate::sandbox::host_path::open_dir(&path)
        .map(drop)
        .map_err(|e| {
            format!(
                "--rootfs: {}",
                crate::sandbox::host_path::describe_error(&path, &e)
            )
        })?;
    if path == std::path::Path::new("/") {
        return Err("--rootfs /: give a prepared root filesystem, not the host's".into());
    }
    Ok(path)
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not K=V"))?;
    if name.is_empty() || name.contains('\0') || value.contains('\0') {
        return Err(format!("`{text}` is not a valid environment assignment"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => match nix::unistd::User::from_name(user) {
            Ok(Some(found)) => (found.uid.as_raw(), Some(found.gid.as_raw())),
            _ => {
                return Err(format!(
                    "no user named `{user}`: give a name from /etc/passwd or a number"
                ))
            }
        },
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match nix::unistd::Group::from_name(g) {
                Ok(Some(found)) => found.gid.as_raw(),
                _ => {
                    return Err(format!(
                        "no group named `{g}`: give a name from /etc/group or a number"
                    ))
                }
            },
        },
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// Runs `tollgate run` here, or through the node service with `--connect`.
pub fn run(args: RunArgs) -> i32 {
    if let Some(socket) = args.connect.clone() {
        return super::connect::run(&socket, args);
    }
    // Here, not in clap: through the service `--team` alone is the whole request.
    if let (Some(team), None) = (&args.team, &args.policy_dir) {
        eprintln!(
            "tollgate: --team {team} needs --policy-dir DIR, the directory of team policies \
             (or --connect SOCKET, to launch through the node service, which holds them)"
        );
        return run::status::TOLLGATE_ERROR;
    }
    match args.into_options() {
        Ok(options) => run::run(options),
        Err(message) => {
            eprintln!("tollgate: {message}");
            run::status::TOLLGATE_ERROR
        }
    }
}

impl RunArgs {
    /// What these arguments ask for, or the one thing wrong with them.
    pub fn into_options(self) -> Result<RunOptions, String> {
        let args = self;
        let policy = match (&args.policy, &args.team, &args.policy_dir) {
            (Some(file), _, _) => Some(run::PolicySource::File(file.clone())),
            (None, Some(team), Some(dir)) => {
                check_team_name(team)?;
                Some(run::PolicySource::File(dir.join(format!("{team}.yaml"))))
            }
            (None, Some(team), None) => {
                // Through the node service, which supplies the team's policy.
                check_team_name(team)?;
                None
            }
            _ => None,
        };
        let shares = mounts::arrange_shares(&args.share, &args.share_ro)?;
        Ok(RunOptions {
            policy,
            team: args.team.clone(),
            timeout: args.timeout,
            user: args.user,
            limits: crate::sandbox::limits::LimitFlags {
                memory: args.memory,
                cpus: args.cpus,
                max_processes: args.max_processes,
                allow_unenforced: args.allow_unenforced_limits,
            },
            tmp_size: args.tmp_size,
            shares,
            allow_root: args.allow_root,
            cwd: args.cwd,
            env: args.env,
            pass_env: args.pass_env,
            secrets: args.secrets.rules()?,
            audit: args.audit,
            audit_format: args.audit_format,
            summary: args.summary,
            log: args.log,
            tty: args.tty,
            transparent: !args.no_transparent,
            rootfs: args.rootfs,
            quota_store: args.quota_store.config()?,
            command: args.command,
        })
    }
}

/// A team name is a file name in the policy directory: `[a-z0-9-]`, nothing that could
/// climb out of it.
pub fn check_team_name(team: &str) -> Result<(), String> {
    if team.is_empty()
        || !team
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("`{team}` is not a team name ([a-z0-9-])"));
    }
    Ok(())
}
