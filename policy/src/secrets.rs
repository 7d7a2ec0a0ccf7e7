//! Where a team's secrets may come from: files in the team's own directory under the
//! operator's secrets root, and environment variables that carry the team's prefix.
//!
//! Policies are written per team, but `tollgate run` reads their secrets as root. Without
//! these rules one team's policy could name another team's key file, or a variable of the
//! node's own environment, and have tollgate deliver it to the team's upstream. The
//! operator decides the rules ([`SecretRules`], from `--secrets-dir` and
//! `--allow-secret-env`); a policy can only stay inside them:
//!
//! - `{file: PATH}`: PATH is relative to `<root>/<team>/` (an absolute path is accepted only
//!   if it lies inside that directory); `..` is refused. The supervisor opens it without
//!   following a symlink in any component (`tollgate::proxy::secrets`).
//! - `{env: NAME}`: NAME is `TOLLGATE_SECRET_<TEAM>_<SUFFIX>` (the team upper-cased, `-` as
//!   `_`) with a suffix of letters and digits only, or a name the operator allowed. The suffix
//!   has no `_` so that the namespaces of two teams never overlap: with one allowed,
//!   `TOLLGATE_SECRET_A_B_TOKEN` would be both team `a`'s `B_TOKEN` and team `a-b`'s `TOKEN`.
//!
//! These checks are static (they need no file to exist): `policy check` reports them with
//! their `FILE:LINE:COL`, and the supervisor repeats them before it reads anything.

use crate::schema::SecretRef;
use crate::Policy;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// The secrets root when the operator names none: one directory per team below it.
pub const DEFAULT_SECRETS_ROOT: &str = "/etc/tollgate/secrets";

/// Every team's environment variables start with this, then the team, then `_`.
pub const ENV_PREFIX: &str = "TOLLGATE_SECRET_";

/// The operator's rules for the secrets a policy may reference (serialisable: the node
/// service hands them to the execution's worker process).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRules {
    root: PathBuf,
    allowed_env: BTreeSet<String>,
}

impl Default for SecretRules {
    fn default() -> Self {
        SecretRules {
            root: PathBuf::from(DEFAULT_SECRETS_ROOT),
            allowed_env: BTreeSet::new(),
        }
    }
}

/// Where one secret is read from, once the rules admitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A variable of the supervisor's environment.
    Env(String),
    /// A file, by its path relative to the team's directory (normal components only).
    File(PathBuf),
}

/// One secret reference of a policy, with the rule that holds it.
#[derive(Debug, Clone)]
pub struct SecretSite<'a> {
    /// The YAML path of the reference's value, e.g. `auth_providers[2].secret.file`.
    pub rule: String,
    /// What uses it, for messages: `auth provider 'GitHub'`.
    pub user: String,
    pub reference: &'a SecretRef,
}

impl SecretRules {
    /// Rules with `root` as the secrets root (one directory per team below it) and the extra
    /// variable names the operator allows every checked policy to read.
    pub fn new(
        root: impl Into<PathBuf>,
        allowed_env: impl IntoIterator<Item = String>,
    ) -> Result<SecretRules, String> {
        let root = root.into();
        check_root(&root)?;
        let allowed_env: BTreeSet<String> = allowed_env.into_iter().collect();
        if let Some(bad) = allowed_env.iter().find(|name| !is_env_name(name)) {
            return Err(format!(
                "`{bad}` is not an environment variable name: use A-Z, a-z, 0-9 and _, not starting with a digit"
            ));
        }
        Ok(SecretRules { root, allowed_env })
    }

    /// The secrets root: one directory per team below it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory `team`'s `{file:}` secrets live in.
    pub fn team_dir(&self, team: &str) -> PathBuf {
        self.root.join(team)
    }

    /// `TOLLGATE_SECRET_<TEAM>_`: the prefix of `team`'s variables.
    pub fn env_prefix(team: &str) -> String {
        format!(
            "{ENV_PREFIX}{}_",
            team.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Where `reference` is read from for `team`, or why the policy may not name it.
    pub fn source(&self, team: &str, reference: &SecretRef) -> Result<SecretSource, String> {
        match reference {
            SecretRef::Env(name) => self
                .check_env(team, name)
                .map(|()| SecretSource::Env(name.clone())),
            SecretRef::File(path) => self.file_in_team_dir(team, path).map(SecretSource::File),
        }
    }

    /// Whether `team` may read the variable `name`.
    pub fn check_env(&self, team: &str, name: &str) -> Result<(), String> {
        if self.allowed_env.contains(name) {
            return Ok(());
        }
        let prefix = Self::env_prefix(team);
        let how = format!(
            "name it {prefix}<NAME> with a NAME of letters and digits (e.g. {prefix}APIKEY), or have the operator allow it with --allow-secret-env"
        );
        let Some(suffix) = name.strip_prefix(&prefix) else {
            // The name is not echoed: a token pasted here by mistake would land in the log.
            return Err(format!(
                "team {team} may read only environment variables that start with {prefix}: {how}"
            ));
        };
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "`{name}`: after {prefix} only letters and digits may follow (an `_` there would put the variable in another team's namespace too, e.g. `{prefix}B_KEY` is also team {team}-b's `KEY`): {how}"
            ));
        }
        Ok(())
    }

    /// The path of a `{file:}` secret relative to `team`'s directory, or why it is refused.
    pub fn file_in_team_dir(&self, team: &str, path: &str) -> Result<PathBuf, String> {
        let dir = self.team_dir(team);
        let shown = dir.display();
        let example = format!("e.g. `api-key` for {}", dir.join("api-key").display());
        let relative_to = format!("a path relative to team {team}'s secrets directory {shown}");
        if path.is_empty() {
            return Err(format!("the path is empty: write {relative_to}, {example}"));
        }
        if path.chars().any(char::is_control) {
            return Err(format!(
                "the path contains control characters: write {relative_to}, {example}"
            ));
        }
        let given = Path::new(path);
        if given.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "`{path}` contains `..`, which could leave team {team}'s secrets directory {shown}: write a path relative to that directory without `..`, {example}"
            ));
        }
        let inside = if given.is_absolute() {
            given.strip_prefix(&dir).map_err(|_| {
                format!(
                    "`{path}` is outside team {team}'s secrets directory {shown}: write a path relative to that directory, {example}"
                )
            })?
        } else {
            given
        };
        let relative: PathBuf = inside
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect();
        if relative.as_os_str().is_empty() {
            return Err(format!(
                "`{path}` names team {team}'s secrets directory {shown} itself, not a file in it: write {relative_to}, {example}"
            ));
        }
        Ok(relative)
    }

    /// Every reference of `policy` these rules refuse: `(rule, message)`, the message
    /// starting with the rule.
    pub fn check(&self, policy: &Policy) -> Vec<(String, String)> {
        sites(policy)
            .into_iter()
            .filter_map(|site| {
                self.source(&policy.team, site.reference)
                    .err()
                    .map(|why| (site.rule.clone(), format!("{}: {why}", site.rule)))
            })
            .collect()
    }
}

pub use crate::locate::locate;

/// Every secret reference of `policy`, in file order: provider secrets, the secrets of
/// `headers` providers, the bot-auth key.
pub fn sites(policy: &Policy) -> Vec<SecretSite<'_>> {
    let mut out = Vec::new();
    for provider in &policy.providers {
        let user = format!("auth provider '{}'", provider.name);
        if let Some(reference) = &provider.secret {
            out.push(SecretSite {
                rule: rule_path(&format!("{}.secret", provider.rule), reference),
                user: user.clone(),
                reference,
            });
        }
        for (i, (header, reference)) in provider.headers.iter().enumerate() {
            out.push(SecretSite {
                rule: rule_path(&format!("{}.headers[{i}].secret", provider.rule), reference),
                user: format!("{user} header {header}"),
                reference,
            });
        }
    }
    if let Some(bot) = &policy.bot_auth {
        out.push(SecretSite {
            rule: rule_path("bot_auth.key", &bot.key),
            user: "the Web Bot Auth key".into(),
            reference: &bot.key,
        });
    }
    out
}

/// `base.env` or `base.file`: the YAML path of the value of the reference at `base`.
pub fn rule_path(base: &str, reference: &SecretRef) -> String {
    match reference {
        SecretRef::Env(_) => format!("{base}.env"),
        SecretRef::File(_) => format!("{base}.file"),
    }
}

/// The root is compared with absolute policy paths component by component, so it must be
/// absolute and plain.
fn check_root(root: &Path) -> Result<(), String> {
    if !root.is_absolute() {
        return Err(format!(
            "the secrets directory {} is not an absolute path",
            root.display()
        ));
    }
    if root.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "the secrets directory {} contains `..`: give the directory itself",
            root.display()
        ));
    }
    if root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(u8::is_ascii_control)
    {
        return Err("the secrets directory contains control characters".into());
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell can export.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SecretRules {
        SecretRules::default()
    }

    #[test]
    fn the_prefix_is_the_team_upper_cased_with_dashes_as_underscores() {
        assert_eq!(SecretRules::env_prefix("acme"), "TOLLGATE_SECRET_ACME_");
        assert_eq!(
            SecretRules::env_prefix("team-42"),
            "TOLLGATE_SECRET_TEAM_42_"
        );
    }

    #[test]
    fn env_names_need_the_team_prefix_and_a_plain_suffix() {
        let r = rules();
        assert!(r.check_env("acme", "TOLLGATE_SECRET_ACME_TOKEN").is_ok());
        assert!(r.check_env("acme", "TOLLGATE_SECRET_ACME_GitHub2").is_ok());
        assert!(r.check_env("a-b", "TOLLGATE_SECRET_A_B_TOKEN").is_ok());
        for name in [
            "NODE_CREDENTIAL",
            "TOLLGATE_SECRET_OTHER_TOKEN",
            "TOLLGATE_SECRET_ACME_",
            "TOLLGATE_SECRET_ACMETOKEN",
            "tollgate_secret_acme_token",
            "TOLLGATE_SECRET_ACME_B_TOKEN",
            "TOLLGATE_SECRET_ACME_TOKEN-1",
        ] {
            let error = r.check_env("acme", name).expect_err(name);
            assert!(error.contains("TOLLGATE_SECRET_ACME_"), "{name}: {error}");
        }
        // Team `a` can never name team `a-b`'s variables.
        assert!(r.check_env("a", "TOLLGATE_SECRET_A_B_TOKEN").is_err());
    }

    #[test]
    fn unprefixed_names_are_not_echoed() {
        let error = rules()
            .check_env("acme", "ghp_SomethingThatLooksLikeAToken")
            .expect_err("no prefix");
        assert!(!error.contains("ghp_"), "{error}");
    }

    #[test]
    fn the_operator_can_allow_more_names() {
        let r = SecretRules::new("/etc/tollgate/secrets", ["NODE_CREDENTIAL".to_owned()])
            .expect("rules");
        assert!(r.check_env("acme", "NODE_CREDENTIAL").is_ok());
        assert!(r.check_env("acme", "NODE_CREDENTIAL2").is_err());
        assert!(SecretRules::new("/s", ["A-B".to_owned()]).is_err());
        assert!(SecretRules::new("/s", ["1A".to_owned()]).is_err());
    }

    #[test]
    fn files_are_relative_to_the_team_directory() {
        let r = rules();
        assert_eq!(
            r.file_in_team_dir("a", "key").expect("relative"),
            PathBuf::from("key")
        );
        assert_eq!(
            r.file_in_team_dir("a", "./sub//key").expect("relative"),
            PathBuf::from("sub/key")
        );
        assert_eq!(
            r.file_in_team_dir("a", "/etc/tollgate/secrets/a/key")
                .expect("absolute inside"),
            PathBuf::from("key")
        );
        for (path, needle) in [
            ("/etc/tollgate/secrets/b/key", "outside"),
            ("/etc/tollgate/secrets/ab/key", "outside"),
            ("/etc/shadow", "outside"),
            ("../b/key", "`..`"),
            ("sub/../../b/key", "`..`"),
            ("/etc/tollgate/secrets/a/../b/key", "`..`"),
            ("", "empty"),
            (".", "itself"),
            ("/etc/tollgate/secrets/a", "itself"),
            ("/etc/tollgate/secrets/a/", "itself"),
            ("key\n", "control"),
            ("key\0", "control"),
        ] {
            let error = r.file_in_team_dir("a", path).expect_err(path);
            assert!(error.contains(needle), "{path:?}: {error}");
            assert!(
                error.contains("/etc/tollgate/secrets/a"),
                "{path:?}: {error}"
            );
        }
    }

    #[test]
    fn the_root_follows_the_operator() {
        let r = SecretRules::new("/srv/secrets", []).expect("rules");
        assert_eq!(r.team_dir("a"), PathBuf::from("/srv/secrets/a"));
        assert!(r.file_in_team_dir("a", "/srv/secrets/a/k").is_ok());
        assert!(r
            .file_in_team_dir("a", "/etc/tollgate/secrets/a/k")
            .is_err());
        assert!(SecretRules::new("relative/dir", []).is_err());
        assert!(SecretRules::new("/srv/../etc", []).is_err());
    }
}
