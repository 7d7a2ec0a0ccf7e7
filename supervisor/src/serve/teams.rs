//! Team policies from a directory (`/etc/tollgate/teams/<team>.yaml`), each kept at its last
//! good version.
//!
//! Why a last good version: the directory is edited while the service runs (by an operator,
//! or by Kubernetes swapping a ConfigMap), and an edit can be broken. A broken edit must
//! neither take the team's sandboxes down nor widen what they may do, so the version in force
//! is replaced only by one that validates; the failure is reported ([`Reload::Failed`], which
//! the service logs and counts) and launches go on with the previous text.
//!
//! What is kept is the policy's TEXT and its digest, not a compiled `Policy`: each execution's
//! worker process loads the text itself (its team Rego in its own rules workers), so the
//! service holds no policy state but strings, and a module that crashes its evaluator crashes
//! it in one execution only. The text is validated here exactly as that worker will load it
//! ([`validate`]), so a version this module accepts is one a worker accepts.
//!
//! Choices, and why:
//! - Only `<team>.yaml` is read, as `tollgate run --policy-dir` reads it; `.yml` and other
//!   names are logged once and ignored. Entries starting with `.` are skipped silently: a
//!   ConfigMap's `..data` and `..2024_…` internals, editors' temporary files.
//! - A file's `team:` must be its name, or a file could speak for another team.
//! - A deleted file removes its team ([`Reload::Removed`]): deleting is narrowing, and the
//!   operator's intent. Executions already running keep the version they started with.
//! - Changes are found by polling: the service calls [`TeamPolicies::rescan`] every
//!   `reload_interval` (inotify on the directory would miss an edit of a file that one of
//!   its links points to elsewhere). A file is re-read only when `stat` (through the links,
//!   which are the operator's) shows another size, mtime, ctime, inode or device, and
//!   revalidated only when its content's digest changed.
//! - A file that changes while it is read is left for the next scan; reads stop at 1 MiB, as
//!   policies do, and never open a FIFO or device as a file.
//! - The secrets rules (`SecretRules`: the node's secrets root, no extra variables) are part
//!   of validation, since a worker refuses a policy that names another team's secret. What a
//!   policy names on the host (secret files, `upstream_ca`) is not: those files change apart
//!   from the policy, and the worker reads them at each start.

use super::wire::PolicyText;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use tollgate_policy::secrets::{self, SecretRules};
use tollgate_policy::{Policy, PolicyError, PolicyErrors};

/// The largest policy file read, as `tollgate_policy` refuses larger texts.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The team policies of one directory, at their last good versions.
pub struct TeamPolicies {
    dir: PathBuf,
    rules: SecretRules,
    /// What launches read; written only to swap in a result, never held while validating.
    in_force: RwLock<BTreeMap<String, InForce>>,
    /// What scans compare against; held for a whole scan, so scans never overlap.
    scan: Mutex<ScanState>,
}

/// What happened to one team's policy in a load or rescan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// A new version validated and is now in force.
    Loaded { team: String },
    /// The file changed and does not validate (or cannot be read): `message` is its first
    /// problem; the last good version, if any, stays in force.
    Failed { team: String, message: String },
    /// The file is gone: the team has no policy on this node any more.
    Removed { team: String },
}

/// A team as launches see it.
struct InForce {
    good: Option<Good>,
    /// The latest version's problem, when it failed (for `get` when there is no good one).
    failure: Option<String>,
}

/// A version that validated.
struct Good {
    text: PolicyText,
    digest: String,
}

#[derive(Default)]
struct ScanState {
    files: BTreeMap<String, Seen>,
    /// Entries already logged as ignored (logged again only after they disappear).
    ignored: BTreeSet<OsString>,
    /// The directory's own problem last logged, to log each once.
    dir_problem: Option<String>,
}

/// What the last scan saw of one team's file.
#[derive(Default)]
struct Seen {
    /// `None` when `stat` failed (`failure` says how).
    stamp: Option<Stamp>,
    /// Digest of the last content read, good or not.
    digest: Option<String>,
    failure: Option<String>,
}

/// What `stat` shows of a file, through its links: any change means "read it again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &Metadata) -> Stamp {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl TeamPolicies {
    /// Loads every `<team>.yaml` of `dir`, with the default secrets rules; see
    /// [`TeamPolicies::load_with_secret_rules`].
    pub fn load(dir: &Path) -> (TeamPolicies, Vec<Reload>) {
        TeamPolicies::load_with_secret_rules(dir, SecretRules::default())
    }

    /// Loads every `<team>.yaml` of `dir`, each checked against `rules` (the node's secrets
    /// root): the first scan's reports (`Loaded` or `Failed` per file). A missing or
    /// unreadable directory is logged and gives no teams; it is looked at again on each
    /// [`TeamPolicies::rescan`].
    pub fn load_with_secret_rules(dir: &Path, rules: SecretRules) -> (TeamPolicies, Vec<Reload>) {
        let teams = TeamPolicies {
            dir: dir.to_owned(),
            rules,
            in_force: RwLock::new(BTreeMap::new()),
            scan: Mutex::new(ScanState::default()),
        };
        let reloads = teams.rescan();
        (teams, reloads)
    }

    /// The version of `team`'s policy in force, or the sentence a refused caller reads.
    pub fn get(&self, team: &str) -> Result<PolicyText, String> {
        let in_force = self.in_force.read().unwrap_or_else(PoisonError::into_inner);
        match in_force.get(team) {
            Some(InForce {
                good: Some(good), ..
            }) => Ok(good.text.clone()),
            Some(InForce {
                failure: Some(failure),
                ..
            }) => Err(format!(
                "team `{team}`'s policy on this node is invalid: {failure}"
            )),
            _ => Err(format!("this node has no policy for team `{team}`")),
        }
    }

    /// The SHA-256 (hex) of the version of `team`'s policy in force.
    pub fn digest(&self, team: &str) -> Option<String> {
        let in_force = self.in_force.read().unwrap_or_else(PoisonError::into_inner);
        in_force
            .get(team)
            .and_then(|team| team.good.as_ref())
            .map(|good| good.digest.clone())
    }

    /// Looks at the directory again: re-reads the files whose `stat` changed, revalidates
    /// those whose content changed, and reports what changed (the caller logs and counts
    /// it). Blocking: files are read and policies compiled (team Rego in worker processes).
    pub fn rescan(&self) -> Vec<Reload> {
        let mut scan = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        let listing = match list_dir(&self.dir) {
            Ok(listing) => {
                scan.dir_problem = None;
                listing
            }
            // A directory that is gone holds no policies: its teams are removed.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.note_dir_problem(&mut scan, &format!("it does not exist ({error})"));
                Vec::new()
            }
            // Anything else says nothing about the files: everything stays as it is.
            Err(error) => {
                self.note_dir_problem(&mut scan, &format!("it cannot be read ({error})"));
                return Vec::new();
            }
        };
        let mut reloads = Vec::new();
        let mut present = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (name, path) in listing {
            match classify(&name) {
                Entry::Team(team) => {
                    if let Some(reload) = self.examine(&mut scan, &team, &path) {
                        reloads.push(reload);
                    }
                    present.insert(team);
                }
                Entry::Misnamed(why) => {
                    if scan.ignored.insert(name.clone()) {
                        tracing::warn!("team policies: {} ignored: {why}", path.display());
                    }
                }
                Entry::Other => {
                    if scan.ignored.insert(name.clone()) {
                        tracing::info!(
                            "team policies: {} ignored: not a <team>.yaml file",
                            path.display()
                        );
                    }
                }
                Entry::Hidden => {}
            }
            names.insert(name);
        }
        scan.ignored.retain(|name| names.contains(name));
        let gone: Vec<String> = scan
            .files
            .keys()
            .filter(|team| !present.contains(*team))
            .cloned()
            .collect();
        for team in gone {
            scan.files.remove(&team);
            let removed = self
                .in_force
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&team);
            if removed.is_some() {
                reloads.push(Reload::Removed { team });
            }
        }
        reloads
    }

    fn note_dir_problem(&self, scan: &mut ScanState, problem: &str) {
        if scan.dir_problem.as_deref() != Some(problem) {
            tracing::warn!(
                "team policies: {}: {problem}; no team can be launched from it until it can be \
                 read",
                self.dir.display()
            );
            scan.dir_problem = Some(problem.to_owned());
        }
    }

    /// Looks at one team's file; what changed, if anything.
    fn examine(&self, scan: &mut ScanState, team: &str, path: &Path) -> Option<Reload> {
        let seen = scan.files.entry(team.to_owned()).or_default();
        let name = path.display().to_string();
        let stamp = match std::fs::metadata(path) {
            Ok(metadata) => Stamp::of(&metadata),
            Err(error) => {
                // A dangling link, a loop, a file deleted since the listing: a problem of the
                // file (the listing still names it), reported once.
                let message = format!("{name}: {}", cannot_read(&error));
                if seen.stamp.is_none() && seen.failure.as_deref() == Some(message.as_str()) {
                    return None;
                }
                *seen = Seen {
                    stamp: None,
                    digest: None,
                    failure: Some(message.clone()),
                };
                return Some(self.fail(team, message));
            }
        };
        if seen.stamp == Some(stamp) {
            return None;
        }
        let (text, stamp) = match read_stable(path) {
            Ok(read) => read,
            // Being written: the next scan reads what the writer finishes with.
            Err(Unread::Changed) => return None,
            Err(Unread::Failed(problem)) => {
                let message = format!("{name}: {problem}");
                *seen = Seen {
                    stamp: Some(stamp),
                    digest: None,
                    failure: Some(message.clone()),
                };
                return Some(self.fail(team, message));
            }
        };
        seen.stamp = Some(stamp);
        let digest = digest_of(&text);
        // The same content behind a new stat (a `touch`, a ConfigMap swap that changed
        // another key): nothing to revalidate.
        if seen.digest.as_deref() == Some(digest.as_str()) {
            return None;
        }
        seen.digest = Some(digest.clone());
        match validate(team, &name, &text, &self.rules) {
            Ok(policy) => {
                // Only the text is kept; the compiled policy (and its rules workers) ends here.
                drop(policy);
                seen.failure = None;
                let good = Good {
                    text: PolicyText { name, text },
                    digest,
                };
                self.in_force
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        team.to_owned(),
                        InForce {
                            good: Some(good),
                            failure: None,
                        },
                    );
                Some(Reload::Loaded {
                    team: team.to_owned(),
                })
            }
            Err(errors) => {
                let message = first_problem(&errors);
                seen.failure = Some(message.clone());
                Some(self.fail(team, message))
            }
        }
    }

    /// Records that `team`'s latest version failed; its last good version stays.
    fn fail(&self, team: &str, message: String) -> Reload {
        let mut in_force = self
            .in_force
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        in_force
            .entry(team.to_owned())
            .or_insert(InForce {
                good: None,
                failure: None,
            })
            .failure = Some(message.clone());
        Reload::Failed {
            team: team.to_owned(),
            message,
        }
    }
}

/// What a directory entry is to the service, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `<team>.yaml`: the policy of that team.
    Team(String),
    /// Looks like a policy but is not read as one: why.
    Misnamed(String),
    /// Anything else (a README): not a policy.
    Other,
    /// Starts with `.`: a ConfigMap's internals, an editor's temporary file.
    Hidden,
}

/// Classifies a directory entry by its name.
pub fn classify(name: &std::ffi::OsStr) -> Entry {
    let name = name.to_string_lossy();
    if name.starts_with('.') {
        return Entry::Hidden;
    }
    if let Some(stem) = name.strip_suffix(".yaml") {
        return match crate::cli::run::check_team_name(stem) {
            Ok(()) => Entry::Team(stem.to_owned()),
            Err(why) => Entry::Misnamed(format!(
                "{why}, so the file is not read as a team's policy (name it <team>.yaml)"
            )),
        };
    }
    if let Some(stem) = name.strip_suffix(".yml") {
        return Entry::Misnamed(format!(
            "team policies are read from <team>.yaml files only: rename it to {stem}.yaml"
        ));
    }
    Entry::Other
}

/// The entries of `dir`, sorted by name, with their paths (links not followed).
pub fn list_dir(dir: &Path) -> std::io::Result<Vec<(OsString, PathBuf)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        entries.push((entry.file_name(), entry.path()));
    }
    entries.sort();
    Ok(entries)
}

/// Reads `team`'s file at `path` and validates it as the service does: the one check behind
/// both the service's loads and `tollgate policy check DIR`. The policy is returned for
/// checks of the host the caller may add; the service drops it.
pub fn check_file(team: &str, path: &Path, rules: &SecretRules) -> Result<Policy, PolicyErrors> {
    let name = path.display().to_string();
    let text = match read_stable(path) {
        Ok((text, _)) => text,
        Err(Unread::Changed) => {
            return Err(single(
                &name,
                "the file changed while it was read: check it again",
            ))
        }
        Err(Unread::Failed(problem)) => return Err(single(&name, problem)),
    };
    validate(team, &name, &text, rules)
}

/// Validates `text`, the policy of `team` reported as `name`, exactly as an execution's
/// worker will load it (`team_rules::load_text`), and checks that its `team:` is `team` and
/// that it names only secrets `rules` give that team.
fn validate(
    team: &str,
    name: &str,
    text: &str,
    rules: &SecretRules,
) -> Result<Policy, PolicyErrors> {
    let policy = crate::team_rules::load_text(name, text)?;
    let mut problems = Vec::new();
    if policy.team != team {
        problems.push((
            "team".to_owned(),
            format!(
                "this is the file of team `{team}` but it says `team: {}`; a team's file must \
                 name that team (fix `team:` or rename the file {}.yaml)",
                policy.team, policy.team
            ),
        ));
    }
    problems.extend(rules.check(&policy));
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(secrets::locate(name, Some(text), problems))
    }
}

/// Why a file was not read.
enum Unread {
    /// It changed between the first `stat` and the end of the read.
    Changed,
    /// What is wrong with it, as a sentence.
    Failed(String),
}

/// The text at `path`, with the stamp it had throughout the read. Refused without reading
/// it: anything but a regular file (through the links), a file over [`MAX_POLICY_BYTES`];
/// after reading it: text that is not UTF-8. Never reads more than the limit and one byte,
/// never waits on a FIFO (opened non-blocking, refused by its `fstat`).
fn read_stable(path: &Path) -> Result<(String, Stamp), Unread> {
    let failed = |error: std::io::Error| Unread::Failed(cannot_read(&error));
    let before = std::fs::metadata(path).map_err(failed)?;
    check_regular(&before)?;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(failed)?;
    let opened = file.metadata().map_err(failed)?;
    let stamp = Stamp::of(&before);
    if Stamp::of(&opened) != stamp {
        return Err(Unread::Changed);
    }
    check_regular(&opened)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    match std::fs::metadata(path) {
        Ok(after) if Stamp::of(&after) == stamp => {}
        _ => return Err(Unread::Changed),
    }
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(Unread::Failed(too_large()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Unread::Failed("the policy file is not UTF-8 text".into()))?;
    Ok((text, stamp))
}

fn check_regular(metadata: &Metadata) -> Result<(), Unread> {
    if !metadata.is_file() {
        return Err(Unread::Failed(
            "the policy path is not a regular file".into(),
        ));
    }
    if metadata.len() > MAX_POLICY_BYTES {
        return Err(Unread::Failed(too_large()));
    }
    Ok(())
}

fn too_large() -> String {
    "the policy file is larger than 1 MiB".into()
}

fn cannot_read(error: &std::io::Error) -> String {
    format!("cannot read the policy file: {error}")
}

fn digest_of(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// The first problem of `errors` as one line, with how many more there are.
fn first_problem(errors: &PolicyErrors) -> String {
    let first = errors
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    match errors.errors.len() {
        0 | 1 => first,
        n => format!("{first} (and {} more)", n - 1),
    }
}

fn single(name: &str, message: impl Into<String>) -> PolicyErrors {
    PolicyErrors {
        file: name.to_owned(),
        errors: vec![PolicyError {
            path: String::new(),
            line: None,
            column: None,
            message: message.into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory below /tmp, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "tollgate-unit-teams-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Writes `name` as a new file (a new inode, as editors and `kubectl` do).
        fn write(&self, name: &str, text: &str) {
            let temporary = self.join(&format!(".{name}.tmp"));
            std::fs::write(&temporary, text).unwrap();
            std::fs::rename(&temporary, self.join(name)).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn policy(team: &str, host: &str) -> String {
        format!("version: 1\nteam: {team}\nnetwork:\n  allow:\n    - https://{host}\n")
    }

    fn loaded(team: &str) -> Reload {
        Reload::Loaded { team: team.into() }
    }

    fn failed(reloads: &[Reload], team: &str) -> String {
        match reloads {
            [Reload::Failed { team: t, message }] if t == team => message.clone(),
            other => panic!("expected one failure of {team}, got {other:?}"),
        }
    }

    #[test]
    fn team_policies_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<TeamPolicies>();
    }

    #[test]
    fn edits_replace_the_version_in_force_only_when_they_validate() {
        let dir = Dir::new("edits");
        dir.write("web.yaml", &policy("web", "one.example"));
        let (teams, reloads) = TeamPolicies::load(&dir.0);
        assert_eq!(reloads, vec![loaded("web")]);
        let first = teams.get("web").unwrap();
        assert_eq!(first.name, dir.join("web.yaml").display().to_string());
        assert_eq!(first.text, policy("web", "one.example"));
        let first_digest = teams.digest("web").unwrap();
        assert_eq!(teams.rescan(), vec![], "nothing changed");

        dir.write("web.yaml", &policy("web", "two.example"));
        assert_eq!(teams.rescan(), vec![loaded("web")]);
        assert_eq!(teams.get("web").unwrap().text, policy("web", "two.example"));
        assert_ne!(teams.digest("web").unwrap(), first_digest);

        // A broken edit: reported with its place, and the previous version stays in force.
        dir.write(
            "web.yaml",
            "version: 1\nteam: web\nnetwork:\n  allow:\n    - host: \"*\"\n",
        );
        let message = failed(&teams.rescan(), "web");
        assert!(
            message.starts_with(&format!("{}:5:", dir.join("web.yaml").display())),
            "{message}"
        );
        assert_eq!(teams.get("web").unwrap().text, policy("web", "two.example"));
        assert_eq!(teams.rescan(), vec![], "a failure is reported once");

        dir.write("web.yaml", &policy("web", "three.example"));
        assert_eq!(teams.rescan(), vec![loaded("web")]);
        assert_eq!(
            teams.get("web").unwrap().text,
            policy("web", "three.example")
        );

        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert_eq!(teams.rescan(), vec![Reload::Removed { team: "web".into() }]);
        assert_eq!(
            teams.get("web").unwrap_err(),
            "this node has no policy for team `web`"
        );
        assert_eq!(teams.digest("web"), None);
        assert_eq!(teams.rescan(), vec![]);
    }

    #[test]
    fn an_edit_in_place_is_seen() {
        let dir = Dir::new("in-place");
        std::fs::write(dir.join("web.yaml"), policy("web", "one.example")).unwrap();
        let (teams, _) = TeamPolicies::load(&dir.0);
        // Same inode; another size, mtime and ctime.
        std::fs::write(dir.join("web.yaml"), policy("web", "longer.example")).unwrap();
        assert_eq!(teams.rescan(), vec![loaded("web")]);
        assert_eq!(
            teams.get("web").unwrap().text,
            policy("web", "longer.example")
        );
    }

    #[test]
    fn the_same_content_behind_a_new_stat_is_not_reloaded() {
        let dir = Dir::new("touch");
        dir.write("web.yaml", &policy("web", "one.example"));
        let (teams, _) = TeamPolicies::load(&dir.0);
        dir.write("web.yaml", &policy("web", "one.example"));
        assert_eq!(teams.rescan(), vec![]);
        assert_eq!(teams.get("web").unwrap().text, policy("web", "one.example"));
    }

    #[test]
    fn a_policy_that_never_validated_gives_its_problem_to_the_caller() {
        let dir = Dir::new("never");
        dir.write("ops.yaml", "version: 2\nteam: ops\n");
        let (teams, reloads) = TeamPolicies::load(&dir.0);
        let message = failed(&reloads, "ops");
        let refused = teams.get("ops").unwrap_err();
        assert_eq!(
            refused,
            format!("team `ops`'s policy on this node is invalid: {message}")
        );
        assert_eq!(
            teams.get("nobody").unwrap_err(),
            "this node has no policy for team `nobody`"
        );
    }

    #[test]
    fn a_file_may_not_speak_for_another_team() {
        let dir = Dir::new("mismatch");
        dir.write("alpha.yaml", &policy("beta", "a.example"));
        let (teams, reloads) = TeamPolicies::load(&dir.0);
        let message = failed(&reloads, "alpha");
        assert!(
            message.starts_with(&format!("{}:2:", dir.join("alpha.yaml").display()))
                && message.contains("`alpha`")
                && message.contains("team: beta"),
            "{message}"
        );
        assert!(teams.get("alpha").is_err());
        assert!(teams.get("beta").is_err());
        // Nor can a good team's file be replaced by another team's policy.
        dir.write("alpha.yaml", &policy("alpha", "a.example"));
        assert_eq!(teams.rescan(), vec![loaded("alpha")]);
        dir.write("alpha.yaml", &policy("beta", "b.example"));
        failed(&teams.rescan(), "alpha");
        assert_eq!(
            teams.get("alpha").unwrap().text,
            policy("alpha", "a.example")
        );
    }

    #[test]
    fn a_secret_of_another_team_is_a_failed_edit() {
        let dir = Dir::new("secrets");
        let with_secret = |variable: &str| {
            format!(
                "{}auth_providers:\n  - name: Tok\n    type: bearer\n    secret: {{env: {variable}}}\n    scope: [https://api.test]\n",
                policy("a", "api.test")
            )
        };
        dir.write("a.yaml", &with_secret("TOLLGATE_SECRET_A_TOK"));
        let (teams, reloads) = TeamPolicies::load(&dir.0);
        assert_eq!(reloads, vec![loaded("a")]);
        dir.write("a.yaml", &with_secret("TOLLGATE_SECRET_B_TOK"));
        let message = failed(&teams.rescan(), "a");
        assert!(message.contains("TOLLGATE_SECRET_A_"), "{message}");
        assert_eq!(
            teams.get("a").unwrap().text,
            with_secret("TOLLGATE_SECRET_A_TOK")
        );
    }

    #[test]
    fn a_configmap_swap_of_its_data_link_is_seen() {
        // Kubernetes: `web.yaml -> ..data/web.yaml`, `..data -> ..<timestamp>`; an update
        // writes a new timestamped directory and renames a new `..data` link over the old.
        let dir = Dir::new("configmap");
        let version = |n: u32, web: &str, ops: &str| {
            let stamp = format!("..2024_01_01_00_00_0{n}.000000001");
            std::fs::create_dir(dir.join(&stamp)).unwrap();
            std::fs::write(dir.join(&stamp).join("web.yaml"), web).unwrap();
            std::fs::write(dir.join(&stamp).join("ops.yaml"), ops).unwrap();
            symlink(&stamp, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            stamp
        };
        let old = version(
            1,
            &policy("web", "one.example"),
            &policy("ops", "ops.example"),
        );
        for key in ["web.yaml", "ops.yaml"] {
            symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        let (teams, reloads) = TeamPolicies::load(&dir.0);
        assert_eq!(reloads, vec![loaded("ops"), loaded("web")], "in name order");

        // Only web's key changed: ops's file is another inode with the same content.
        version(
            2,
            &policy("web", "two.example"),
            &policy("ops", "ops.example"),
        );
        std::fs::remove_dir_all(dir.join(&old)).unwrap();
        assert_eq!(teams.rescan(), vec![loaded("web")]);
        assert_eq!(teams.get("web").unwrap().text, policy("web", "two.example"));
        assert_eq!(
            teams.get("web").unwrap().name,
            dir.join("web.yaml").display().to_string(),
            "reported under the operator's path, not the timestamped one"
        );
        assert_eq!(teams.rescan(), vec![]);
    }

    #[test]
    fn hostile_entries_fail_without_being_read_or_waited_on() {
        let dir = Dir::new("hostile");
        dir.write("fine.yaml", &policy("fine", "fine.example"));
        nix::unistd::mkfifo(
            &dir.join("fifo.yaml"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::create_dir(dir.join("dir.yaml")).unwrap();
        symlink(dir.join("nowhere"), dir.join("gone.yaml")).unwrap();
        symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        symlink(dir.join("loop.yaml"), dir.join("loop.yaml")).unwrap();
        // 1 GiB, sparse: refused by its size.
        File::create(dir.join("huge.yaml"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        std::fs::write(dir.join("binary.yaml"), b"version: 1\nteam: \xff\n").unwrap();
        // Ignored: not `<team>.yaml`.
        dir.write("Bad_Name.yaml", &policy("bad-name", "x.example"));
        dir.write("ops.yml", &policy("ops", "x.example"));
        dir.write("README.md", "notes\n");
        std::fs::create_dir(dir.join("..data")).unwrap();

        let (teams, reloads) = TeamPolicies::load(&dir.0);
        let mut failures: BTreeMap<String, String> = BTreeMap::new();
        for reload in &reloads {
            match reload {
                Reload::Failed { team, message } => {
                    failures.insert(team.clone(), message.clone());
                }
                Reload::Loaded { team } => assert_eq!(team, "fine"),
                Reload::Removed { .. } => panic!("{reload:?}"),
            }
        }
        for (team, why) in [
            ("fifo", "not a regular file"),
            ("dir", "not a regular file"),
            ("gone", "cannot read"),
            ("zero", "not a regular file"),
            ("loop", "cannot read"),
            ("huge", "larger than 1 MiB"),
            ("binary", "not UTF-8"),
        ] {
            let message = failures.remove(team).unwrap_or_else(|| panic!("{team}"));
            assert!(message.contains(why), "{team}: {message}");
            assert!(teams.get(team).is_err());
        }
        assert!(failures.is_empty(), "{failures:?}");
        assert!(teams.get("fine").is_ok());
        for ignored in ["bad-name", "Bad_Name", "ops"] {
            assert_eq!(
                teams.get(ignored).unwrap_err(),
                format!("this node has no policy for team `{ignored}`")
            );
        }
        assert_eq!(teams.rescan(), vec![], "each problem is reported once");
    }

    #[test]
    fn a_good_version_survives_its_file_turning_into_a_dangling_link() {
        let dir = Dir::new("dangling");
        dir.write("web.yaml", &policy("web", "one.example"));
        let (teams, _) = TeamPolicies::load(&dir.0);
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        symlink(dir.join("nowhere.yaml"), dir.join("web.yaml")).unwrap();
        failed(&teams.rescan(), "web");
        assert_eq!(teams.get("web").unwrap().text, policy("web", "one.example"));
    }

    #[test]
    fn a_missing_directory_has_no_teams_until_it_appears_and_none_once_it_is_gone() {
        let parent = Dir::new("missing");
        let dir = parent.join("teams");
        let (teams, reloads) = TeamPolicies::load(&dir);
        assert_eq!(reloads, vec![]);
        assert!(teams.get("web").is_err());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), policy("web", "one.example")).unwrap();
        assert_eq!(teams.rescan(), vec![loaded("web")]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(teams.rescan(), vec![Reload::Removed { team: "web".into() }]);
    }

    #[test]
    fn names_are_classified_as_the_service_reads_them() {
        use std::ffi::OsStr;
        assert_eq!(
            classify(OsStr::new("data-eng.yaml")),
            Entry::Team("data-eng".into())
        );
        assert!(matches!(
            classify(OsStr::new("Data.yaml")),
            Entry::Misnamed(_)
        ));
        assert!(matches!(
            classify(OsStr::new("a b.yaml")),
            Entry::Misnamed(_)
        ));
        assert!(matches!(
            classify(OsStr::new("data.yml")),
            Entry::Misnamed(why) if why.contains("data.yaml")
        ));
        assert_eq!(classify(OsStr::new("..data")), Entry::Hidden);
        assert_eq!(classify(OsStr::new(".web.yaml.swp")), Entry::Hidden);
        assert_eq!(classify(OsStr::new("README.md")), Entry::Other);
        assert_eq!(classify(OsStr::new("web.yaml~")), Entry::Other);
    }
}
