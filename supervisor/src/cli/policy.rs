//! `tollgate policy check | eval | schema`: the policy author's tools.

use crate::proxy::secrets::TeamSecrets;
use crate::proxy::{evaluate, Evaluation, Gate, Settings};
use crate::resolve::EvalResolver;
use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tollgate_policy::secrets::{self, SecretRules, DEFAULT_SECRETS_ROOT};
use tollgate_policy::url::NormalizedUrl;
use tollgate_policy::{Policy, PolicyErrors};

/// Where team policies may take their secrets from: the operator's side of the secrets
/// rules (`tollgate_policy::secrets`), shared by `run`, `policy check` and `bot-auth jwks`.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Secrets root: one directory per team below it. A team's `{file: PATH}` secrets must lie
    /// in DIR/<team>/ (PATH relative to it, or absolute inside it), reached with no symlink.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SECRETS_ROOT)]
    pub secrets_dir: PathBuf,
    /// Let the team's policy read this variable of tollgate's environment as an `{env: NAME}`
    /// secret, besides its own TOLLGATE_SECRET_<TEAM>_<NAME> variables (repeatable).
    #[arg(long = "allow-secret-env", value_name = "NAME")]
    pub allow_secret_env: Vec<String>,
}

impl SecretArgs {
    /// The rules these flags give, or what is wrong with them.
    pub fn rules(&self) -> Result<SecretRules, String> {
        SecretRules::new(&self.secrets_dir, self.allow_secret_env.iter().cloned())
            .map_err(|e| format!("--secrets-dir / --allow-secret-env: {e}"))
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files, or directories of team policies: prints `FILE: ok` or each
    /// error as `FILE:LINE:COL: message`. A directory is checked as the node service reads
    /// it: every `<team>.yaml` in it, whose `team:` must be its name (a `.yml` file or a
    /// `.yaml` not named after a team is an error; other files and names starting with `.`
    /// are skipped); a directory with no `<team>.yaml` is an error. Secret references are
    /// checked against the secrets rules the flags give, as `tollgate run` with the same
    /// flags applies them; on a host that has the secrets root, each file secret is also
    /// looked at as `run` will find it (never read). When a policy has `quotas`, one note on
    /// stderr says they are fleet-wide only on nodes with a Redis URL. Exits 0 when every
    /// file is valid, 2 otherwise.
    Check {
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        secrets: SecretArgs,
    },
    /// Decide one request as the proxy would and print the decision as JSON (docs/policy.md).
    /// Exits 0 when allowed, 1 when refused, 2 on a usage or policy error or a request the
    /// proxy answers with 400 (a method not in upper case, an invalid URL).
    Eval(EvalArgs),
    /// Print the JSON Schema of the policy file (for editor validation and completion).
    Schema,
    /// Internal: a team-rules worker (see `team_rules`), started by tollgate itself.
    #[command(name = "__team-rules-worker", hide = true)]
    TeamRulesWorker,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(value_name = "FILE")]
    pub policy: PathBuf,
    /// HTTP method, e.g. GET, or CONNECT to decide a tunnel to URL's host and port.
    #[arg(value_name = "METHOD")]
    pub method: String,
    #[arg(value_name = "URL")]
    pub url: String,
    /// Answer for HOST with IP instead of DNS (repeatable). The policy's `hosts` pins are
    /// still used first, as the proxy uses them.
    #[arg(long = "resolve", value_name = "HOST=IP", value_parser = parse_resolve)]
    pub resolve: Vec<(String, IpAddr)>,
    /// A request header, `Name: value` (repeatable), checked as the proxy checks it:
    /// `Tollgate-Auth` names a provider, which must exist and whose scope must hold URL.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not HOST=IP (e.g. api.example.com=203.0.113.7)"))?;
    let ip: IpAddr = ip
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    Ok((host.trim_end_matches('.').to_ascii_lowercase(), ip))
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not a header: write 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} has a character a header cannot carry"))?;
    Ok((name, value))
}

pub fn run(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check { files, secrets } => match secrets.rules() {
            Ok(rules) => check(&files, &rules),
            Err(message) => {
                eprintln!("tollgate: {message}");
                super::EXIT_USAGE
            }
        },
        PolicyCommand::Eval(args) => eval(&args),
        PolicyCommand::Schema => schema(),
        PolicyCommand::TeamRulesWorker => crate::team_rules::worker::serve(),
    }
}

fn check(paths: &[PathBuf], rules: &SecretRules) -> i32 {
    // On a host that has the secrets root, each file secret is looked at as `run` would find
    // it; elsewhere (a CI runner, an author's laptop) only the rules are checked.
    let on_this_host = rules.root().symlink_metadata().is_ok();
    let mut all_valid = true;
    let mut has_quotas = false;
    for path in paths {
        all_valid &= if path.is_dir() {
            check_dir(path, rules, on_this_host, &mut has_quotas)
        } else {
            let loaded = crate::team_rules::load(path);
            report_check(path, loaded, rules, on_this_host, &mut has_quotas)
        };
    }
    if has_quotas {
        eprintln!("{QUOTAS_NOTE}");
    }
    if all_valid {
        0
    } else {
        super::EXIT_USAGE
    }
}

/// Said once by `policy check` when a policy it loaded has quotas: whether they are shared
/// is the node's configuration, which a policy cannot see.
const QUOTAS_NOTE: &str =
    "tollgate: note: team quotas are fleet-wide only on nodes with a Redis URL \
     (--redis-url, TOLLGATE_REDIS_URL or quotas.redis_url of the node configuration); \
     a node without one enforces each quota alone, so every such node admits all of it";

/// A team policy directory, checked as the node service reads it (`serve::teams`): whether
/// every team file in it is valid, and there is at least one.
fn check_dir(dir: &Path, rules: &SecretRules, on_this_host: bool, has_quotas: &mut bool) -> bool {
    use crate::serve::teams::{self, Entry};
    let listing = match teams::list_dir(dir) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!(
                "tollgate: cannot read the directory {}: {error}",
                dir.display()
            );
            return false;
        }
    };
    let mut all_valid = true;
    let mut policies = 0;
    for (name, path) in listing {
        match teams::classify(&name) {
            Entry::Team(team) => {
                policies += 1;
                let checked = teams::check_file(&team, &path, rules);
                all_valid &= report_check(&path, checked, rules, on_this_host, has_quotas);
            }
            Entry::Misnamed(why) => {
                super::print(&format!("{}: {why}", path.display()));
                all_valid = false;
            }
            Entry::Other | Entry::Hidden => {}
        }
    }
    if policies == 0 {
        eprintln!(
            "tollgate: {} holds no team policy: the node service reads <team>.yaml files",
            dir.display()
        );
        return false;
    }
    all_valid
}

/// Finishes checking the policy at `file` (its secrets and what it names on this host) and
/// prints `FILE: ok` or its problems; whether it is valid. Sets `has_quotas` when it loaded
/// with a `quotas` section.
fn report_check(
    file: &Path,
    loaded: Result<Policy, PolicyErrors>,
    rules: &SecretRules,
    on_this_host: bool,
    has_quotas: &mut bool,
) -> bool {
    if loaded
        .as_ref()
        .is_ok_and(|policy| !policy.quotas.is_empty())
    {
        *has_quotas = true;
    }
    match loaded.and_then(|policy| check_secrets(file, &policy, rules, on_this_host)) {
        Ok(()) => {
            super::print(&format!("{}: ok", file.display()));
            true
        }
        Err(errors) => {
            super::print(&errors.to_string());
            false
        }
    }
}

/// Every secret reference the rules refuse, and with `on_disk` every file secret `run` could
/// not read; each as `FILE:LINE:COL: rule: problem`. No value is read.
fn check_secrets(
    file: &Path,
    policy: &Policy,
    rules: &SecretRules,
    on_disk: bool,
) -> Result<(), PolicyErrors> {
    let mut problems = rules.check(policy);
    if problems.is_empty() && on_disk {
        let mut team = TeamSecrets::new(&policy.team, rules);
        for site in secrets::sites(policy) {
            if let Err(error) = team.inspect(&site.rule, &site.user, site.reference) {
                problems.push((site.rule, format!("{}: {}", error.rule, error.problem)));
            }
        }
    }
    // `network.upstream_ca`, when the file is on this host, is read the way `run` reads it.
    problems.extend(crate::proxy::upstream_ca::check_on_this_host(policy));
    if problems.is_empty() {
        return Ok(());
    }
    // The text is read again only to point at the problems.
    let text = std::fs::read_to_string(file).ok();
    Err(secrets::locate(
        &file.display().to_string(),
        text.as_deref(),
        problems,
    ))
}

/// `policy eval`: the proxy's own decision ([`crate::proxy::evaluate`]) on one request.
/// Input errors (a method not in upper case, an invalid URL, a header the proxy answers
/// with `400`) are one line on stderr and exit 2; a refusal prints the decision, exit 1.
fn eval(args: &EvalArgs) -> i32 {
    let policy = match crate::team_rules::load(&args.policy) {
        Ok(policy) => policy,
        Err(errors) => {
            eprintln!("{errors}");
            return super::EXIT_USAGE;
        }
    };
    if let Err(error) = tollgate_policy::check_method(&args.method) {
        eprintln!("tollgate: {error}");
        return super::EXIT_USAGE;
    }
    let connect = args.method == "CONNECT";
    let parsed = if connect && !args.url.contains("://") {
        NormalizedUrl::from_parts("https", &args.url, "/")
    } else {
        NormalizedUrl::parse(&args.url)
    };
    let url = match parsed {
        Ok(url) => url,
        Err(error) => {
            eprintln!("tollgate: the URL is not one tollgate can send: {error}");
            return super::EXIT_USAGE;
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    // Decided as the proxy on this node would: its own addresses are never dialed.
    let node = match crate::host_addresses::read() {
        Ok(node) => node,
        Err(error) => {
            eprintln!("tollgate: cannot read this node's own addresses: {error}");
            return 125;
        }
    };
    let resolver = EvalResolver::new(args.resolve.clone());
    let gate = Gate {
        policy: &policy,
        resolver: &resolver,
        resolve_timeout: Settings::default().resolve_timeout,
        node: &node,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate: cannot start the resolver's runtime: {error}");
            return 125;
        }
    };
    let evaluation = runtime.block_on(evaluate(&gate, &args.method, &url, connect, &headers));
    // A lookup that timed out may still hold a blocking thread: do not wait for it.
    runtime.shutdown_background();
    report(&url, &evaluation)
}

/// Prints `evaluation` and returns the exit status.
fn report(url: &NormalizedUrl, evaluation: &Evaluation) -> i32 {
    let (decision, refusal) = match evaluation {
        Evaluation::Refused(refusal) => (None, Some(refusal)),
        Evaluation::Decided { decision, refusal } => (Some(&**decision), refusal.as_ref()),
    };
    // What the proxy answers with 400 is an input error here.
    if let Some(refusal) = refusal.filter(|r| r.code.status() == http::StatusCode::BAD_REQUEST) {
        eprintln!("tollgate: {}", refusal.message);
        return super::EXIT_USAGE;
    }
    let allow = refusal.is_none() && decision.is_some_and(|d| d.allow);
    let reason = match (refusal, decision) {
        (Some(refusal), _) => refusal.reason.as_str(),
        (None, Some(decision)) => decision.reason.as_str(),
        (None, None) => "",
    };
    let output = json!({
        "allow": allow,
        "reason": reason,
        "error": refusal.map(|r| r.code.as_str()),
        "message": refusal.map(|r| &r.message).or(decision.map(|d| &d.message)),
        "rule": refusal.map(|r| &r.rule).or(decision.map(|d| &d.rule)),
        "url": url.redacted(),
        "addresses": decision.map(|d| d.addresses.as_slice()).unwrap_or_default(),
        "class": decision.and_then(|d| d.worst_class()),
        "classes": decision.map(|d| d.classes.as_slice()).unwrap_or_default(),
    });
    super::print(&output.to_string());
    if allow {
        0
    } else {
        1
    }
}

fn schema() -> i32 {
    let schema = schemars::schema_for!(tollgate_policy::schema::PolicyFile);
    match serde_json::to_string_pretty(&schema) {
        Ok(text) => {
            super::print(&text);
            0
        }
        Err(error) => {
            eprintln!("tollgate: cannot render the schema: {error}");
            125
        }
    }
}
