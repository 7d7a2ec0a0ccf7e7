//! Loading a policy: YAML text → schema → validated model → compiled Rego, or every error
//! with its `FILE:LINE:COL`.

use crate::error::{PolicyError, PolicyErrors};
use crate::locate::LocationIndex;
use crate::model::*;
use crate::rego::{CompiledRules, TeamRego};
use crate::schema::PolicyFile;
use crate::validate;
use crate::yaml_limits;
use regorus::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Policy files are small; anything larger is a mistake or an attack on the parser.
const MAX_POLICY_BYTES: usize = 1024 * 1024;
const TOO_LARGE: &str = "the policy file is larger than 1 MiB";
/// A file can hold hundreds of thousands of mistakes; listing them all helps nobody and costs
/// seconds. The first ones are listed, then how many more there are.
const MAX_REPORTED_ERRORS: usize = 100;

/// A team policy, validated and compiled: ready to decide requests.
#[derive(Clone)]
pub struct Policy {
    pub team: String,
    /// `None`: the network is disabled.
    pub network: Option<Network>,
    pub limits: Limits,
    /// Host directories bound in, the root filesystem, whether Landlock is required.
    pub filesystem: crate::filesystem::Filesystem,
    pub retry: Retry,
    pub providers: Vec<AuthProvider>,
    pub credentials: Vec<UrlCredential>,
    pub placeholders: Vec<Placeholder>,
    pub bot_auth: Option<BotAuth>,
    /// The team's `quotas` (empty: none).
    pub quotas: crate::quotas::Quotas,
    pub(crate) rules: CompiledRules,
    /// `network.entries` by host, for matching ([`crate::matcher`]).
    pub(crate) entry_index: crate::matcher::EntryIndex,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("team", &self.team)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Whether the policy has a team Rego module: only then does a decision read the
    /// request's header names (`Request::header_names`), so callers can skip collecting them.
    pub fn has_team_rules(&self) -> bool {
        self.rules.has_team_rules()
    }

    /// Reads and loads the policy file at `path`: a regular file of at most 1 MiB (read no
    /// further than that, so neither a huge file nor `/dev/zero` is read into memory).
    ///
    /// The team module is compiled and evaluated in this process ([`TeamRego::InProcess`]):
    /// use [`Policy::load_with`] for a file whose Rego is not trusted.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        Policy::load_with(path, TeamRego::InProcess)
    }

    /// [`Policy::load`], with the team module compiled and evaluated where `team` says.
    pub fn load_with(path: &Path, team: TeamRego) -> Result<Policy, PolicyErrors> {
        let name = path.display().to_string();
        let text = read_bounded(path).map_err(|message| single(&name, message))?;
        Policy::from_yaml_with(&name, &text, team)
    }

    /// Loads a policy from YAML text; `name` is used in error messages. The text is refused
    /// above 1 MiB, and above the shape limits of [`crate::yaml_limits`] (nesting, aliases)
    /// before it is parsed in full. The team module runs in this process (see
    /// [`Policy::load`]).
    pub fn from_yaml(name: &str, text: &str) -> Result<Policy, PolicyErrors> {
        Policy::from_yaml_with(name, text, TeamRego::InProcess)
    }

    /// [`Policy::from_yaml`], with the team module compiled and evaluated where `team` says.
    pub fn from_yaml_with(name: &str, text: &str, team: TeamRego) -> Result<Policy, PolicyErrors> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(single(name, TOO_LARGE));
        }
        yaml_limits::check(text).map_err(|exceeded| PolicyErrors {
            file: name.to_owned(),
            errors: vec![PolicyError {
                path: String::new(),
                line: Some(exceeded.line),
                column: Some(exceeded.column),
                message: exceeded.message,
            }],
        })?;
        let file: PolicyFile = serde_yaml::from_str(text).map_err(|e| syntax_error(name, &e))?;
        let validated = validate::validate(&file).map_err(|problems| {
            let total = problems.0.len();
            let shown = problems.0.into_iter().take(MAX_REPORTED_ERRORS).collect();
            let mut errors = crate::locate::locate(name, Some(text), shown);
            if total > MAX_REPORTED_ERRORS {
                errors.errors.push(PolicyError {
                    path: String::new(),
                    line: None,
                    column: None,
                    message: format!(
                        "and {} more problems (fix the ones above first)",
                        total - MAX_REPORTED_ERRORS
                    ),
                });
            }
            errors
        })?;
        let data = data_document(&validated);
        let rules = CompiledRules::compile(data, file.rego.as_deref(), team).map_err(|e| {
            // Point into the YAML: the module's line 1 is the line after `rego: |`.
            let index = LocationIndex::build(text);
            let start = index.find("rego").map(|l| l.line).unwrap_or(0);
            let block = text
                .lines()
                .nth(start.saturating_sub(1))
                .is_some_and(|l| l.trim_end().ends_with(['|', '>', '-', '+']));
            let offset = if block {
                start
            } else {
                start.saturating_sub(1)
            };
            PolicyErrors {
                file: name.to_owned(),
                errors: vec![PolicyError {
                    path: "rego".into(),
                    line: e.line.map(|l| l + offset),
                    column: e.column,
                    message: e.message,
                }],
            }
        })?;
        let entry_index = crate::matcher::EntryIndex::build(
            validated
                .network
                .as_ref()
                .map_or(&[][..], |network| &network.entries),
        );
        Ok(Policy {
            entry_index,
            team: validated.team,
            network: validated.network,
            limits: validated.limits,
            filesystem: validated.filesystem,
            retry: validated.retry,
            providers: validated.providers,
            credentials: validated.credentials,
            placeholders: validated.placeholders,
            bot_auth: validated.bot_auth,
            quotas: validated.quotas,
            rules,
        })
    }

    pub fn network_enabled(&self) -> bool {
        self.network.is_some()
    }

    /// The static pin for a host (`network.hosts`), looked up before DNS.
    pub fn pinned_address(&self, host: &crate::url::UrlHost) -> Option<std::net::IpAddr> {
        self.network.as_ref().and_then(|n| pinned_address(n, host))
    }

    /// The allow entry at `index` (from [`crate::Decision::entry`]).
    pub fn entry(&self, index: usize) -> Option<&AllowEntry> {
        self.network.as_ref().and_then(|n| n.entries.get(index))
    }

    /// A provider of this team by exact name.
    pub fn provider(&self, name: &str) -> Option<&AuthProvider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The provider sandboxed code named in `Tollgate-Auth`: surrounding whitespace ignored,
    /// letter case ignored (names are unique regardless of case, so this never picks
    /// between two).
    pub fn provider_named(&self, name: &str) -> Option<&AuthProvider> {
        let name = name.trim();
        self.provider(name).or_else(|| {
            self.providers
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
        })
    }

    /// The URL credentials whose pattern matches `url`, in list order.
    pub fn credentials_for<'a>(
        &'a self,
        url: &'a crate::url::NormalizedUrl,
    ) -> impl Iterator<Item = &'a UrlCredential> + 'a {
        self.credentials
            .iter()
            .filter(move |credential| credential.pattern.matches(url))
    }
}

/// The text of a policy file: refused if it is not a regular file, larger than 1 MiB, or not
/// UTF-8. Never reads more than 1 MiB and one byte.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let not_regular = "the policy path is not a regular file";
    // Checked before opening too: opening a FIFO would wait for a writer.
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read the policy file: {e}"))?;
    if !metadata.is_file() {
        return Err(not_regular.into());
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the policy file: {e}"))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot read the policy file: {e}"))?;
    if !opened.is_file() {
        return Err(not_regular.into());
    }
    if opened.len() > MAX_POLICY_BYTES as u64 {
        return Err(TOO_LARGE.into());
    }
    let mut text = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the policy file: {e}"))?;
    if text.len() > MAX_POLICY_BYTES {
        return Err(TOO_LARGE.into());
    }
    String::from_utf8(text).map_err(|_| "the policy file is not UTF-8 text".into())
}

fn single(file: &str, message: impl Into<String>) -> PolicyErrors {
    PolicyErrors {
        file: file.to_owned(),
        errors: vec![PolicyError {
            path: String::new(),
            line: None,
            column: None,
            message: message.into(),
        }],
    }
}

fn syntax_error(file: &str, error: &serde_yaml::Error) -> PolicyErrors {
    let location = error.location();
    // serde_yaml appends " at line L column C"; the location is printed in front instead.
    let mut message = error.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    PolicyErrors {
        file: file.to_owned(),
        errors: vec![PolicyError {
            path: String::new(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }],
    }
}

/// The policy as Rego data (`data.policy`): what the built-in module needs about each entry,
/// and what team rules may want to read. Secrets are references only, never values.
fn data_document(policy: &validate::Validated) -> Value {
    let mut doc = BTreeMap::new();
    let mut put = |key: &str, value: Value| {
        doc.insert(Value::from(key), value);
    };
    put("team", Value::from(policy.team.as_str()));
    put("network", Value::from(policy.network.is_some()));
    let network = policy.network.as_ref();
    put(
        "allow_all",
        Value::from(network.is_some_and(|n| n.allow_all)),
    );
    put(
        "block_private_ips",
        Value::from(network.is_none_or(|n| n.block_private_ips)),
    );
    let entries = network
        .map(|n| n.entries.iter().map(entry_document).collect::<Vec<_>>())
        .unwrap_or_default();
    put("entries", Value::from(entries));
    put(
        "providers",
        Value::from(
            policy
                .providers
                .iter()
                .map(|p| Value::from(p.name.as_str()))
                .collect::<Vec<_>>(),
        ),
    );
    let mut root = BTreeMap::new();
    root.insert(Value::from("policy"), Value::from(doc));
    Value::from(root)
}

fn entry_document(entry: &AllowEntry) -> Value {
    let mut doc = BTreeMap::new();
    doc.insert(Value::from("rule"), Value::from(entry.rule.as_str()));
    doc.insert(Value::from("host"), Value::from(entry.host_display()));
    doc.insert(Value::from("access"), Value::from(entry.access.as_str()));
    doc.insert(Value::from("tls"), Value::from(entry.tls.as_str()));
    doc.insert(
        Value::from("has_rules"),
        Value::from(!entry.rules.is_empty()),
    );
    doc.insert(
        Value::from("ports"),
        Value::from(
            entry
                .ports()
                .into_iter()
                .map(|p| Value::from(u32::from(p)))
                .collect::<Vec<_>>(),
        ),
    );
    Value::from(doc)
}
