//! One caller's connection: who it is, what it asks for, whether this node lets it; then its
//! execution ([`super::worker_process`]) or one refusal.
//!
//! Everything the caller sends is hostile until checked: the launch frame must arrive
//! within [`HANDSHAKE`] with exactly the descriptors it announces, its arguments go through
//! the same clap parser as a local `tollgate run` (with the parsers that would open host
//! paths replaced by textual checks: nothing is opened as root for a caller before it is
//! authorised), and what only the node decides (`--policy`, `--policy-dir`, `--secrets-dir`,
//! `--allow-secret-env`, the quota store's `--redis-url` and its companions) is refused. Every refusal is one sentence to the caller (exit
//! 125), a count in the metrics by reason, a `launch` audit record and a log line.

use super::authorize;
use super::wire::{self, CallerIdentity, ClientMessage, FrameError, LaunchRequest, ServiceMessage};
use super::worker_process::{self, Admitted, Descriptors};
use super::{fds, Node, Stage};
use crate::cli::run::RunArgs;
use crate::run::RunOptions;
use crate::sandbox::mounts::MAX_SHARES;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use tollgate_policy::secrets::{SecretRules, DEFAULT_SECRETS_ROOT};

/// How long a caller may take to send its launch frame after connecting.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// How many connections may be in their handshake at once; one more is refused at once.
/// A handshake takes milliseconds, so this is far above what callers need; it bounds what
/// connections that say nothing (each for up to [`HANDSHAKE`]) can hold of the service's
/// descriptors, which the running executions need (a few each).
pub const MAX_HANDSHAKES: usize = 1024;

/// Connections one uid may have in their handshake at once: a caller that opens many and
/// says nothing holds only its own share of [`MAX_HANDSHAKES`], never every caller's (a
/// quarter of them, so a well-behaved program of the same uid with a few hundred
/// connections in flight is still served).
pub const MAX_HANDSHAKES_PER_UID: usize = 256;

/// How many connections each uid has in its handshake.
#[derive(Default)]
pub struct HandshakesByUid(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection's place among its uid's handshakes, given back on drop.
pub struct UidHandshake<'a> {
    table: &'a HandshakesByUid,
    uid: u32,
}

impl HandshakesByUid {
    /// A place for one more handshake of `uid`, unless it has its most already.
    pub fn enter(&self, uid: u32) -> Option<UidHandshake<'_>> {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = table.entry(uid).or_default();
        if *count >= MAX_HANDSHAKES_PER_UID {
            return None;
        }
        *count += 1;
        Some(UidHandshake { table: self, uid })
    }
}

impl Drop for UidHandshake<'_> {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = table.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                table.remove(&self.uid);
            }
        }
    }
}

/// stdin, stdout, stderr, the `--audit` file, the `--log` file, one per shared directory.
const MAX_DESCRIPTORS: usize = 5 + MAX_SHARES;

/// How long the service waits for a caller to take a refusal (a caller that does not read
/// must not hold a session open).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a launch was refused: the label of `tollgate_launches_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    NotAllowed,
    NoPolicy,
    Busy,
    ShuttingDown,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::NotAllowed => "not_allowed",
            Reason::NoPolicy => "no_policy",
            Reason::Busy => "busy",
            Reason::ShuttingDown => "shutting_down",
        }
    }
}

/// A refused launch: the reason and the one sentence the caller sees.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
    /// The team asked for, once known (for the audit record).
    pub team: Option<String>,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            team: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::BadRequest, message)
    }

    fn for_team(mut self, team: &str) -> Refusal {
        self.team = Some(team.to_owned());
        self
    }
}

/// Serves one connection to its end.
pub async fn run(node: Arc<Node>, stream: UnixStream) {
    let caller = match fds::peer_identity(&stream) {
        Ok(caller) => caller,
        Err(error) => {
            tracing::warn!("dropped a connection whose caller cannot be identified: {error}");
            return;
        }
    };
    let Some(own_handshake) = node.handshakes_by_uid.enter(caller.uid) else {
        let refusal = Refusal::new(
            Reason::Busy,
            format!(
                "uid {} already has {MAX_HANDSHAKES_PER_UID} connections waiting to send their \
                 launch: send each launch as soon as you connect",
                caller.uid
            ),
        );
        return refuse(&node, stream, &caller, refusal).await;
    };
    let Ok(handshake) = node.handshakes.clone().try_acquire_owned() else {
        let refusal = Refusal::new(
            Reason::Busy,
            "too many launches are being made on this node at once: try again shortly",
        );
        return refuse(&node, stream, &caller, refusal).await;
    };
    let received = tokio::time::timeout(
        HANDSHAKE,
        fds::recv_frame_with_fds(&stream, MAX_DESCRIPTORS),
    )
    .await;
    let admitted = match received {
        Err(_) => Err(Refusal::bad_request(format!(
            "no launch request arrived within {} seconds of connecting",
            HANDSHAKE.as_secs()
        ))),
        // Connected and left without a word (a probe): nothing to answer or count.
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(error)) => Err(Refusal::bad_request(format!(
            "the launch request could not be read: {error}"
        ))),
        Ok(Ok((body, descriptors))) => admit(&node, &caller, &body, descriptors),
    };
    drop(handshake);
    drop(own_handshake);
    match admitted {
        Ok(admitted) => worker_process::run(node, stream, caller, admitted).await,
        Err(refusal) => refuse(&node, stream, &caller, refusal).await,
    }
}

/// Reports a refusal everywhere it belongs and answers the caller.
async fn refuse(node: &Node, mut stream: UnixStream, caller: &CallerIdentity, refusal: Refusal) {
    node.metrics.launch_refused(refusal.reason.label());
    node.launches
        .refused(refusal.team.as_deref(), caller, &refusal.message);
    tracing::info!(
        "refused a launch by uid {} (pid {}{}): {} ({})",
        caller.uid,
        caller.pid,
        refusal
            .team
            .as_deref()
            .map(|team| format!(", team {team}"))
            .unwrap_or_default(),
        refusal.message,
        refusal.reason.label()
    );
    let answer = ServiceMessage::Refused {
        status: crate::run::status::TOLLGATE_ERROR,
        message: refusal.message,
    };
    let _ = tokio::time::timeout(
        ANSWER_TIMEOUT,
        wire::write_frame_async(&mut stream, &answer),
    )
    .await;
}

/// Everything between the frame and the worker: decode, check, parse, authorise, find the
/// policy, take a slot.
fn admit(
    node: &Node,
    caller: &CallerIdentity,
    body: &[u8],
    descriptors: Vec<OwnedFd>,
) -> Result<Admitted, Refusal> {
    if *node.stage.borrow() != Stage::Serving {
        return Err(Refusal::new(
            Reason::ShuttingDown,
            "the node service is shutting down: launch again once it is back",
        ));
    }
    let (request, mut descriptors) = read_request(body, descriptors)?;
    let mut wanted = wanted_run(&request, &node.config.secrets_dir)?;
    // The node's quota store, as its secrets: callers cannot name one (see refuse_node_flags).
    wanted.options.quota_store = node.config.quota_store.clone();
    descriptors.shares =
        in_mount_order(std::mem::take(&mut descriptors.shares), &wanted.share_order);
    let team = wanted.team.as_str();
    // `admit` also gives a launch without --timeout the caller's longest allowed one.
    authorize::admit(&node.config, caller, &mut wanted.options)
        .map_err(|message| Refusal::new(Reason::NotAllowed, message).for_team(team))?;
    let policy = node
        .teams
        .get(team)
        .map_err(|message| Refusal::new(Reason::NoPolicy, message).for_team(team))?;
    let slot = node.slots.clone().try_acquire_owned().map_err(|_| {
        Refusal::new(
            Reason::Busy,
            format!(
                "this node is running its most executions at once ({}): try again shortly",
                node.config.max_executions
            ),
        )
        .for_team(team)
    })?;
    Ok(Admitted {
        options: wanted.options,
        team: wanted.team,
        terminal: request.terminal,
        policy,
        wants_summary: wanted.wants_summary,
        descriptors,
        slot,
    })
}

/// The launch request in `body` and the descriptors that came with it, checked: a launch
/// frame, of this protocol version, with the descriptors it announces.
fn read_request(
    body: &[u8],
    descriptors: Vec<OwnedFd>,
) -> Result<(LaunchRequest, Descriptors), Refusal> {
    let request = match wire::decode::<ClientMessage>(body) {
        Ok(ClientMessage::Launch(request)) => request,
        Ok(ClientMessage::Signal { .. }) => {
            return Err(Refusal::bad_request(
                "the first message must be the launch request",
            ))
        }
        // A caller of another version may send fields this one does not know: say so.
        Err(error) => {
            return Err(match other_version(body) {
                Some(theirs) => version_refusal(theirs),
                None => {
                    Refusal::bad_request(format!("the launch request could not be read: {error}"))
                }
            })
        }
    };
    if request.version != wire::VERSION {
        return Err(version_refusal(request.version.into()));
    }
    let descriptors = split_descriptors(&request, descriptors)?;
    Ok((request, descriptors))
}

/// The `version` of a launch frame that is not this protocol's.
fn other_version(body: &[u8]) -> Option<u64> {
    let frame: serde_json::Value = serde_json::from_slice(body).ok()?;
    let version = frame.get("version")?.as_u64()?;
    (version != u64::from(wire::VERSION)).then_some(version)
}

fn version_refusal(theirs: u64) -> Refusal {
    Refusal::bad_request(format!(
        "this node service speaks launch protocol version {}, the caller version {theirs}: \
         use the tollgate binary the node runs",
        wire::VERSION
    ))
}

/// The descriptors in the order the request announces them, or a refusal (every
/// descriptor is closed) when their number is not the announced one.
fn split_descriptors(
    request: &LaunchRequest,
    descriptors: Vec<OwnedFd>,
) -> Result<Descriptors, Refusal> {
    let shares = request.shares as usize;
    if shares > MAX_SHARES {
        return Err(Refusal::bad_request(format!(
            "the launch request announces {shares} shared directories: at most {MAX_SHARES} can be"
        )));
    }
    let expected = 3 + usize::from(request.audit) + usize::from(request.log) + shares;
    if descriptors.len() != expected {
        return Err(Refusal::bad_request(format!(
            "the launch request brought {} descriptors where it announced {expected} \
             (stdin, stdout, stderr{}{}{})",
            descriptors.len(),
            if request.audit { ", --audit" } else { "" },
            if request.log { ", --log" } else { "" },
            if shares > 0 {
                format!(", {shares} shared directories")
            } else {
                String::new()
            },
        )));
    }
    let mut descriptors = descriptors.into_iter();
    let mut next = || descriptors.next().expect("counted above");
    Ok(Descriptors {
        stdio: [next(), next(), next()],
        audit: request.audit.then(&mut next),
        log: request.log.then(&mut next),
        shares: descriptors.collect(),
    })
}

/// The shared directories' descriptors, from the wire's order (`--share` flags, then
/// `--share-ro` flags) to the order of `RunOptions.shares`, which the worker reads them in
/// (see `wire::FIRST_SHARE_FD`): `order[i]` is the wire position of the `i`-th share.
fn in_mount_order(sent: Vec<OwnedFd>, order: &[usize]) -> Vec<OwnedFd> {
    let mut sent: Vec<Option<OwnedFd>> = sent.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&at| sent[at].take().expect("each share has one descriptor"))
        .collect()
}

/// A run as the caller asked for it, with the node's choices applied.
#[derive(Debug)]
pub struct Wanted {
    pub options: RunOptions,
    pub team: String,
    /// The caller asked for `--summary`: it writes the file itself from `Exited`.
    pub wants_summary: bool,
    /// For each of `options.shares`, the position of its descriptor in the launch frame
    /// (see [`in_mount_order`]).
    pub share_order: Vec<usize>,
}

/// Parses and checks the request's arguments, and makes them the run the worker gets: the
/// caller's `--pass-env` values as `--env` (the worker's own environment is the service's,
/// never the caller's), no summary path (the summary comes back in `Exited`), the node's
/// secrets root.
pub fn wanted_run(request: &LaunchRequest, secrets_dir: &Path) -> Result<Wanted, Refusal> {
    let args = parse_run_args(&request.args)?;
    let team = refuse_node_flags(&args)?;
    // The order the caller sent its directories' descriptors in.
    let sent_shares: Vec<PathBuf> = args.share.iter().chain(&args.share_ro).cloned().collect();
    let mut options = args
        .into_options()
        .map_err(|message| Refusal::bad_request(message).for_team(&team))?;
    if request.shares as usize != sent_shares.len() {
        return Err(Refusal::bad_request(format!(
            "the launch request brings {} shared directories' descriptors for {} --share and \
             --share-ro arguments; send one per directory, opened by the caller",
            request.shares,
            sent_shares.len()
        ))
        .for_team(&team));
    }
    // `into_options` refuses a path shared twice, so each path has one position.
    let share_order = options
        .shares
        .iter()
        .map(|share| {
            sent_shares
                .iter()
                .position(|path| *path == share.path)
                .expect("every share comes from a flag")
        })
        .collect();
    if request.audit != options.audit.is_some() || request.log != options.log.is_some() {
        return Err(Refusal::bad_request(
            "the launch request's descriptors do not match its --audit and --log arguments",
        )
        .for_team(&team));
    }
    let mut env = passed_values(&options.pass_env, request)
        .map_err(|message| Refusal::bad_request(message).for_team(&team))?;
    // After the passed variables, as a local run applies --env over --pass-env.
    env.append(&mut options.env);
    options.env = env;
    options.pass_env.clear();
    let wants_summary = options.summary.take().is_some();
    options.secrets = SecretRules::new(secrets_dir, []).map_err(|message| {
        Refusal::bad_request(format!(
            "the node's secrets directory is unusable ({message}): tell the node's operator"
        ))
        .for_team(&team)
    })?;
    Ok(Wanted {
        options,
        team,
        wants_summary,
        share_order,
    })
}

/// The request's arguments through `tollgate run`'s own parser.
fn parse_run_args(args: &[String]) -> Result<RunArgs, Refusal> {
    #[derive(Debug, Parser)]
    #[command(name = "tollgate run", no_binary_name = true)]
    struct Launch {
        #[command(flatten)]
        run: RunArgs,
    }
    // A local run opens --share and --rootfs directories while parsing; here that would be
    // root opening any path a caller names before it is authorised, so only their text is
    // checked (the worker opens them, as a local run does, once they are allowed).
    let command = Launch::command()
        .color(clap::ColorChoice::Never)
        .mut_arg("share", |arg| arg.value_parser(textual_share))
        .mut_arg("share_ro", |arg| arg.value_parser(textual_share))
        .mut_arg("rootfs", |arg| arg.value_parser(textual_rootfs))
        // The service's own environment is not the caller's: its TOLLGATE_REDIS_URL (if it
        // has one) must not read as the caller's --redis-url.
        .mut_arg("redis_url", |arg| arg.env(None));
    command
        .try_get_matches_from(args)
        .and_then(|matches| Launch::from_arg_matches(&matches))
        .map(|launch| launch.run)
        .map_err(|error| Refusal::bad_request(clap_sentence(&error)))
}

/// The first line of a clap error, without its `error: ` (the caller prints `tollgate: `).
fn clap_sentence(error: &clap::Error) -> String {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return "the node service prints no help or version: run `tollgate run --help` here".into();
    }
    let rendered = error.render().to_string();
    let line = rendered
        .lines()
        .next()
        .unwrap_or("the arguments cannot be parsed");
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn textual_share(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "--share {text}: give an absolute path without `.` or `..`"
        ));
    }
    Ok(path)
}

fn textual_rootfs(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!("--rootfs {text}: give an absolute path"));
    }
    if path == Path::new("/") {
        return Err("--rootfs /: give a prepared root filesystem, not the host's".into());
    }
    Ok(path)
}

/// Refuses what the node decides, not the caller; returns the `--team` asked for.
fn refuse_node_flags(args: &RunArgs) -> Result<String, Refusal> {
    let refused = |flag: &str, why: &str| {
        Err(Refusal::bad_request(format!(
            "{flag} cannot be used through the node service: {why}"
        )))
    };
    if args.connect.is_some() {
        return refused("--connect", "the launch already goes through one");
    }
    if args.policy.is_some() {
        return refused(
            "--policy",
            "the node runs each team under its own policy; name the team with --team",
        );
    }
    if args.policy_dir.is_some() {
        return refused(
            "--policy-dir",
            "the team policies are the node's; name the team with --team",
        );
    }
    if args.secrets.secrets_dir != Path::new(DEFAULT_SECRETS_ROOT) {
        return refused("--secrets-dir", "the teams' secrets are the node's");
    }
    if !args.secrets.allow_secret_env.is_empty() {
        return refused("--allow-secret-env", "the teams' secrets are the node's");
    }
    if let Some(flag) = args.quota_store.given().first() {
        return refused(
            flag,
            "where the team quotas are counted is the node's choice (its node configuration's \
             `quotas:`)",
        );
    }
    let Some(team) = &args.team else {
        return Err(Refusal::bad_request(
            "--team NAME is required through the node service: it names the team policy the \
             command runs under",
        ));
    };
    crate::cli::run::check_team_name(team).map_err(Refusal::bad_request)?;
    Ok(team.clone())
}

/// `(name, the caller's value)` of each `--pass-env` name the caller has (a name it does not
/// have is left out, as in a local run). Names the request carries without `--pass-env`
/// are ignored.
fn passed_values(
    names: &[String],
    request: &LaunchRequest,
) -> Result<Vec<(String, String)>, String> {
    let mut passed = Vec::new();
    for name in names {
        let Some(value) = request.pass_env.get(name) else {
            continue;
        };
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!(
                "--pass-env {}: the variable cannot be passed (its name or value is not a valid \
                 environment entry)",
                name.escape_debug()
            ));
        }
        passed.push((name.clone(), value.clone()));
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_holds_at_most_its_share_of_the_handshakes_and_gets_it_back() {
        let table = HandshakesByUid::default();
        let held: Vec<_> = (0..MAX_HANDSHAKES_PER_UID)
            .map(|_| table.enter(1000).expect("within the uid's share"))
            .collect();
        assert!(table.enter(1000).is_none(), "past the uid's share");
        assert!(table.enter(1001).is_some(), "another uid is not held up");
        drop(held);
        assert!(table.enter(1000).is_some(), "places are given back");
    }
    use std::collections::BTreeMap;

    fn request(args: &[&str]) -> LaunchRequest {
        LaunchRequest {
            version: wire::VERSION,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            pass_env: BTreeMap::new(),
            terminal: BTreeMap::new(),
            audit: false,
            log: false,
            shares: 0,
        }
    }

    fn refusal(args: &[&str]) -> Refusal {
        wanted_run(&request(args), Path::new("/etc/tollgate/secrets")).unwrap_err()
    }

    #[test]
    fn what_only_the_node_decides_is_refused_naming_the_flag() {
        for (args, flag) in [
            (
                &["--team", "a", "--policy-dir", "/etc", "--", "true"][..],
                "--policy-dir",
            ),
            (&["--policy", "/etc/p.yaml", "--", "true"][..], "--policy"),
            (
                &["--team", "a", "--secrets-dir", "/root", "--", "true"][..],
                "--secrets-dir",
            ),
            (
                &["--team", "a", "--allow-secret-env", "HOME", "--", "true"][..],
                "--allow-secret-env",
            ),
            (
                &["--team", "a", "--connect", "/s", "--", "true"][..],
                "--connect",
            ),
            (
                &[
                    "--team",
                    "a",
                    "--redis-url",
                    "redis://10.0.0.9",
                    "--",
                    "true",
                ][..],
                "--redis-url",
            ),
            (
                &[
                    "--team",
                    "a",
                    "--redis-password-file",
                    "/etc/shadow",
                    "--",
                    "true",
                ][..],
                "--redis-password-file",
            ),
            (
                &["--team", "a", "--redis-ca", "/etc/ca.pem", "--", "true"][..],
                "--redis-ca",
            ),
            (
                &["--team", "a", "--redis-connect-timeout", "1s", "--", "true"][..],
                "--redis-connect-timeout",
            ),
            (
                &[
                    "--team",
                    "a",
                    "--quota-store-failure",
                    "local",
                    "--",
                    "true",
                ][..],
                "--quota-store-failure",
            ),
            (
                &["--team", "a", "--quota-nodes", "9", "--", "true"][..],
                "--quota-nodes",
            ),
            (&["--", "true"][..], "--team"),
        ] {
            let refused = refusal(args);
            assert_eq!(refused.reason, Reason::BadRequest, "{args:?}");
            assert!(
                refused.message.starts_with(flag),
                "{args:?}: {}",
                refused.message
            );
            assert!(!refused.message.contains('\n'), "{}", refused.message);
        }
    }

    #[test]
    fn the_default_secrets_dir_given_explicitly_is_no_refusal() {
        let wanted = wanted_run(
            &request(&[
                "--team",
                "a",
                "--secrets-dir",
                DEFAULT_SECRETS_ROOT,
                "--",
                "true",
            ]),
            Path::new("/srv/node-secrets"),
        )
        .unwrap();
        assert_eq!(
            wanted.options.secrets.root(),
            Path::new("/srv/node-secrets")
        );
    }

    #[test]
    fn a_clap_error_is_one_line_without_colour() {
        let refused = refusal(&["--team", "a", "--no-such-flag", "--", "true"]);
        assert_eq!(refused.reason, Reason::BadRequest);
        assert!(
            refused.message.contains("--no-such-flag"),
            "{}",
            refused.message
        );
        assert!(!refused.message.contains('\n') && !refused.message.contains('\x1b'));
        assert!(
            !refused.message.starts_with("error:"),
            "{}",
            refused.message
        );
        let refused = refusal(&["--help"]);
        assert!(refused.message.contains("no help"), "{}", refused.message);
        let refused = refusal(&["--team", "A/../b", "--", "true"]);
        assert!(
            refused.message.contains("not a team name"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn share_and_rootfs_are_checked_by_text_only() {
        // A local run would open these as root; the service must not before authorising.
        let mut asked = request(&[
            "--team",
            "a",
            "--share",
            "/no/such/dir",
            "--rootfs",
            "/no/such/root",
            "--",
            "true",
        ]);
        asked.shares = 1;
        let wanted = wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).unwrap();
        assert_eq!(wanted.options.shares[0].path, Path::new("/no/such/dir"));
        assert_eq!(
            wanted.options.rootfs.as_deref(),
            Some(Path::new("/no/such/root"))
        );
        for bad in [
            &["--team", "a", "--share", "rel", "--", "true"][..],
            &["--team", "a", "--share-ro", "/srv/../etc", "--", "true"][..],
            &["--team", "a", "--rootfs", "/", "--", "true"][..],
        ] {
            assert_eq!(refusal(bad).reason, Reason::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn each_share_needs_its_descriptor_and_they_reach_the_worker_in_mount_order() {
        let args = [
            "--team",
            "a",
            "--share",
            "/srv/a/b",
            "--share-ro",
            "/srv/a",
            "--share",
            "/srv/c/d/e",
            "--",
            "true",
        ];
        let mut asked = request(&args);
        for announced in [0, 2, 4] {
            asked.shares = announced;
            let refused = wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).unwrap_err();
            assert_eq!(refused.reason, Reason::BadRequest);
            assert!(
                refused.message.contains("opened by the caller"),
                "{}",
                refused.message
            );
        }
        asked.shares = 3;
        let wanted = wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).unwrap();
        let paths: Vec<_> = wanted.options.shares.iter().map(|s| &s.path).collect();
        assert_eq!(paths, ["/srv/a", "/srv/a/b", "/srv/c/d/e"]);
        // Sent as: --share /srv/a/b, --share /srv/c/d/e, then --share-ro /srv/a.
        assert_eq!(wanted.share_order, [2, 0, 1]);

        // Descriptors travel in that order: tell them apart by what they are.
        let sent: Vec<OwnedFd> = ["/srv-b", "/srv-e", "/srv-a"]
            .iter()
            .map(|tag| {
                let (read, write) = nix::unistd::pipe().unwrap();
                nix::unistd::write(&write, tag.as_bytes()).unwrap();
                drop(write);
                read
            })
            .collect();
        let placed = in_mount_order(sent, &wanted.share_order);
        let tags: Vec<String> = placed
            .into_iter()
            .map(|fd| {
                let mut tag = String::new();
                std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut tag).unwrap();
                tag
            })
            .collect();
        assert_eq!(tags, ["/srv-a", "/srv-b", "/srv-e"]);

        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        asked.shares = (MAX_SHARES + 1) as u32;
        let many = (0..3 + MAX_SHARES + 1).map(|_| null()).collect();
        let refused = split_descriptors(&asked, many).unwrap_err();
        assert!(refused.message.contains("at most"), "{}", refused.message);
    }

    #[test]
    fn passed_variables_are_the_callers_and_env_wins_over_them() {
        let mut asked = request(&[
            "--team",
            "a",
            "--pass-env",
            "HOME",
            "--pass-env",
            "ABSENT",
            "--pass-env",
            "BOTH",
            "--env",
            "BOTH=from-env",
            "--summary",
            "/tmp/s.json",
            "--",
            "true",
        ]);
        asked.pass_env.insert("HOME".into(), "/home/caller".into());
        asked.pass_env.insert("BOTH".into(), "from-pass".into());
        asked.pass_env.insert("UNASKED".into(), "x".into());
        let wanted = wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).unwrap();
        assert_eq!(
            wanted.options.env,
            vec![
                ("HOME".to_owned(), "/home/caller".to_owned()),
                ("BOTH".to_owned(), "from-pass".to_owned()),
                ("BOTH".to_owned(), "from-env".to_owned()),
            ]
        );
        assert!(
            wanted.options.pass_env.is_empty(),
            "the worker reads no variable of its own"
        );
        assert!(wanted.wants_summary && wanted.options.summary.is_none());
        assert_eq!(wanted.team, "a");

        let mut hostile = request(&["--team", "a", "--pass-env", "X", "--", "true"]);
        hostile.pass_env.insert("X".into(), "a\0b".into());
        let refused = wanted_run(&hostile, Path::new(DEFAULT_SECRETS_ROOT)).unwrap_err();
        assert_eq!(refused.reason, Reason::BadRequest);
    }

    #[test]
    fn only_a_launch_of_this_protocol_version_is_read() {
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let stdio = || vec![null(), null(), null()];
        let mut asked = request(&["--team", "a", "--", "true"]);
        let body = |asked: &LaunchRequest| {
            serde_json::to_vec(&ClientMessage::Launch(asked.clone())).unwrap()
        };
        assert!(read_request(&body(&asked), stdio()).is_ok());
        asked.version = wire::VERSION + 1;
        let refused = read_request(&body(&asked), stdio()).unwrap_err();
        assert!(
            refused.message.contains("protocol version"),
            "{}",
            refused.message
        );
        let newer = br#"{"type": "launch", "version": 2, "args": [], "tty_size": [80, 24]}"#;
        let refused = read_request(newer, stdio()).unwrap_err();
        assert!(
            refused.message.contains("caller version 2"),
            "{}",
            refused.message
        );
        let signal = serde_json::to_vec(&ClientMessage::Signal { signal: 9 }).unwrap();
        let refused = read_request(&signal, stdio()).unwrap_err();
        assert!(
            refused.message.contains("first message"),
            "{}",
            refused.message
        );
        let refused = read_request(b"{\"type\": \"launch\"}", stdio()).unwrap_err();
        assert_eq!(refused.reason, Reason::BadRequest);
    }

    #[test]
    fn descriptors_must_match_the_announced_outputs() {
        let mut asked = request(&["--team", "a", "--audit", "/tmp/a.jsonl", "--", "true"]);
        let refused = wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).unwrap_err();
        assert!(refused.message.contains("--audit"), "{}", refused.message);
        asked.audit = true;
        assert!(wanted_run(&asked, Path::new(DEFAULT_SECRETS_ROOT)).is_ok());

        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let refused = split_descriptors(&asked, vec![null(), null(), null()]).unwrap_err();
        assert!(
            refused
                .message
                .contains("3 descriptors where it announced 4"),
            "{}",
            refused.message
        );
        let split = split_descriptors(&asked, vec![null(), null(), null(), null()]).unwrap();
        assert!(split.audit.is_some() && split.log.is_none());
    }
}
