//! The child's environment: clean by default, never holding a secret; the Python helper on
//! `PYTHONPATH` in every sandbox, and `TOLLGATE_HTTP` saying whether it may send; with the
//! network on, the proxy settings (and `NODE_USE_ENV_PROXY=1`), the trust bundle for the
//! execution's CA in every CA variable, and the placeholders.
//!
//! The runtime directory (`/run/tollgate/<execution-id>/`, root-owned, world-readable, no
//! secret in it) holds `tollgate_http.py` in every sandbox (so code written against the
//! helper imports it whatever the policy, and gets `HttpNotEnabled` when the network is off)
//! and, with the network only, the CA bundle (which `sandbox::mounts` also binds over the
//! system trust stores) and the `resolv.conf` naming the execution's stub resolver (bound
//! over the sandbox's `/etc/resolv.conf` in transparent mode). Its guard removes it on every
//! exit path;
//! `sandbox::gc` removes those of supervisors that were killed (a runtime directory whose
//! execution cgroup is gone).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tollgate_policy::schema::SecretRef;
use tollgate_policy::Policy;

/// The PATH a sandboxed command gets: system directories only (root's PATH points into
/// /root, which the sandbox user cannot enter).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Where executions' runtime directories live.
pub use crate::sandbox::gc::RUNTIME_ROOT;

// The variables themselves are listed once, in `tollgate_policy::sandbox_env`, which the
// validator reads too (a placeholder may not take one of them).
use tollgate_policy::sandbox_env::{
    self, CA_VARIABLES, HELPER_SWITCH, LOADER_INJECTION, NODE_USE_ENV_PROXY, PROXY_VARIABLES,
};

/// Why `name` may not be given with `--env` or `--pass-env` (`flag`), if it may not.
fn refused_variable(flag: &str, name: &str) -> Option<String> {
    if name == HELPER_SWITCH {
        return Some(format!(
            "{flag} {name}: tollgate sets {name} itself (it tells the Python helper whether \
             this execution has a network); leave it out"
        ));
    }
    if sandbox_env::is_way_out(name) {
        return Some(format!(
            "{flag} {name}: tollgate sets {name} itself (the proxy and the execution's CA are \
             the sandbox's only way out); leave it out"
        ));
    }
    if LOADER_INJECTION.contains(&name) {
        return Some(format!(
            "{flag} {name}: refused, since it loads code into every program of the sandbox; \
             set it inside the command if the job needs it"
        ));
    }
    if name.starts_with("TOLLGATE_SECRET_") {
        return Some(format!(
            "{flag} {name}: variables named TOLLGATE_SECRET_* hold teams' secrets, which never \
             enter a sandbox; reference the secret through an auth provider"
        ));
    }
    None
}

/// The seed's Python API (`from tollgate_http import http`), shipped inside the binary.
const PYTHON_HELPER: &str = include_str!("../../../clients/python/tollgate_http.py");

/// What the child gets when its network is on.
#[derive(Debug, Clone)]
pub struct NetworkEnv {
    /// The proxy listener, inside the sandbox's namespace.
    pub proxy: SocketAddr,
    /// The CA bundle the sandbox trusts.
    pub ca_bundle: PathBuf,
    /// `(variable, placeholder)` pairs.
    pub placeholders: Vec<(String, String)>,
}

/// Builds the child's environment from the clean defaults, `--pass-env`, `--env`, the
/// helper's directory (`python_path`, first on `PYTHONPATH`) and switch, and, when the
/// network is enabled, the proxy and CA settings and the placeholders. Refuses to pass a
/// variable that holds a provider's secret or that a placeholder takes.
pub fn child_environment(
    policy: Option<&Policy>,
    pass: &[String],
    set: &[(String, String)],
    python_path: Option<&Path>,
    network: Option<&NetworkEnv>,
    home: &str,
) -> Result<BTreeMap<String, String>, String> {
    let secret_vars = secret_variables(policy);
    let placeholder_vars: Vec<&str> = policy
        .map(|p| p.placeholders.iter().map(|ph| ph.env.as_str()).collect())
        .unwrap_or_default();
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), SANDBOX_PATH.to_owned());
    env.insert("HOME".to_owned(), home.to_owned());
    env.insert(
        "LANG".to_owned(),
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned()),
    );
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".to_owned(), term);
    }
    for name in pass {
        if let Some(why) = refused_variable("--pass-env", name) {
            return Err(why);
        }
        if secret_vars.contains(name) {
            return Err(format!(
                "--pass-env {name} would hand the sandbox a secret of team {}'s auth providers; \
                 reference it through the provider instead",
                policy.map(|p| p.team.as_str()).unwrap_or("?")
            ));
        }
        if placeholder_vars.contains(&name.as_str()) {
            return Err(format!(
                "--pass-env {name} names a variable that holds a credential placeholder; \
                 tollgate sets it itself"
            ));
        }
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), value);
        }
    }
    for (name, value) in set {
        if let Some(why) = refused_variable("--env", name) {
            return Err(why);
        }
        if secret_vars.contains(name) {
            return Err(format!(
                "--env {name} names a provider secret variable; choose another name"
            ));
        }
        if placeholder_vars.contains(&name.as_str()) {
            return Err(format!(
                "--env {name} names a variable that holds a credential placeholder; \
                 tollgate sets it itself"
            ));
        }
        env.insert(name.clone(), value.clone());
    }
    if let Some(network) = network {
        let url = format!("http://{}", network.proxy);
        for name in PROXY_VARIABLES {
            let value = if name.eq_ignore_ascii_case("no_proxy") {
                "localhost,127.0.0.1,::1"
            } else {
                &url
            };
            env.insert(name.to_owned(), value.to_owned());
        }
        env.insert(NODE_USE_ENV_PROXY.to_owned(), "1".to_owned());
        let bundle = network.ca_bundle.display().to_string();
        for name in CA_VARIABLES {
            env.insert(name.to_owned(), bundle.clone());
        }
        for (name, value) in &network.placeholders {
            env.insert(name.clone(), value.clone());
        }
    }
    if let Some(helper) = python_path {
        let helper = helper.display().to_string();
        let python_path = match env.get("PYTHONPATH") {
            Some(theirs) if !theirs.is_empty() => format!("{helper}:{theirs}"),
            _ => helper,
        };
        env.insert("PYTHONPATH".to_owned(), python_path);
        let switch = if network.is_some() {
            "enabled"
        } else {
            "disabled"
        };
        env.insert(HELPER_SWITCH.to_owned(), switch.to_owned());
    }
    Ok(env)
}

/// Every environment variable a provider of the policy reads its secret from.
fn secret_variables(policy: Option<&Policy>) -> Vec<String> {
    let Some(policy) = policy else { return vec![] };
    let mut names = vec![];
    let mut push = |secret: &SecretRef| {
        if let SecretRef::Env(name) = secret {
            names.push(name.clone());
        }
    };
    for provider in &policy.providers {
        provider.secret.iter().for_each(&mut push);
        provider.headers.iter().for_each(|(_, s)| push(s));
    }
    if let Some(bot) = &policy.bot_auth {
        push(&bot.key);
    }
    names
}

/// The sandbox's `/etc/resolv.conf` in transparent mode: the stub resolver the supervisor
/// serves inside the execution's network namespace.
pub const RESOLV_CONF: &str =
    "# tollgate: names are answered by the execution's stub resolver\nnameserver 127.0.0.1\n";

/// `/run/tollgate/<execution-id>/`: files the sandbox reads, removed when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    /// Whether it holds the CA bundle (and `resolv.conf`): the network is on.
    network: bool,
}

impl RuntimeDir {
    /// Creates the directory (0755, root's) with the Python helper
    /// (`python/tollgate_http.py`, 0644) and, when the network is on, the CA bundle
    /// (`ca-bundle.pem`) and [`RESOLV_CONF`] (`resolv.conf`), 0644.
    pub fn create(execution: &str, ca_bundle: Option<&[u8]>) -> Result<RuntimeDir, String> {
        RuntimeDir::create_under(Path::new(RUNTIME_ROOT), execution, ca_bundle)
    }

    pub fn create_under(
        root: &Path,
        execution: &str,
        ca_bundle: Option<&[u8]>,
    ) -> Result<RuntimeDir, String> {
        let failed = |what: &Path, e: std::io::Error| {
            format!(
                "cannot create the execution's runtime directory ({}): {e}",
                what.display()
            )
        };
        let mut dirs = std::fs::DirBuilder::new();
        dirs.mode(0o755).recursive(true);
        dirs.create(root).map_err(|e| failed(root, e))?;
        let path = root.join(execution);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(|e| failed(&path, e))?;
        // From here on the guard removes whatever was made.
        let dir = RuntimeDir {
            path,
            network: ca_bundle.is_some(),
        };
        let python = dir.path.join("python");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&python)
            .map_err(|e| failed(&python, e))?;
        if let Some(ca_bundle) = ca_bundle {
            write_public(&dir.ca_bundle(), ca_bundle).map_err(|e| failed(&dir.ca_bundle(), e))?;
            write_public(&dir.resolv_conf(), RESOLV_CONF.as_bytes())
                .map_err(|e| failed(&dir.resolv_conf(), e))?;
        }
        let helper = python.join("tollgate_http.py");
        write_public(&helper, PYTHON_HELPER.as_bytes()).map_err(|e| failed(&helper, e))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ca_bundle(&self) -> PathBuf {
        self.path.join(crate::sandbox::mounts::CA_BUNDLE_NAME)
    }

    /// Whether the directory holds the CA bundle and `resolv.conf` (the network is on).
    pub fn holds_ca_bundle(&self) -> bool {
        self.network
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.path.join(crate::sandbox::mounts::RESOLV_CONF_NAME)
    }

    pub fn python_path(&self) -> PathBuf {
        self.path.join("python")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "tollgate: cannot remove the runtime directory {}: {error}",
                    self.path.display()
                );
            }
        }
    }
}

/// A new file, 0644 whatever the umask, never following a planted symlink.
fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(data)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_dir_is_public_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let root =
            std::env::temp_dir().join(format!("tollgate-runtime-test-{}", std::process::id()));
        let dir = RuntimeDir::create_under(&root, "exec-1", Some(b"PEM")).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o755);
        assert_eq!(mode(&dir.ca_bundle()), 0o644);
        assert_eq!(std::fs::read(dir.ca_bundle()).expect("read"), b"PEM");
        assert!(dir.holds_ca_bundle());
        assert_eq!(mode(&dir.resolv_conf()), 0o644);
        let resolv = std::fs::read_to_string(dir.resolv_conf()).expect("resolv.conf");
        assert!(resolv.starts_with("# tollgate"), "{resolv}");
        assert!(
            resolv.lines().any(|l| l == "nameserver 127.0.0.1"),
            "{resolv}"
        );
        let helper = dir.python_path().join("tollgate_http.py");
        assert!(std::fs::read_to_string(helper)
            .expect("helper")
            .contains("class HttpError"));
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
        // Without the network: the helper, and no bundle.
        let offline = RuntimeDir::create_under(&root, "exec-2", None).expect("create");
        assert!(offline.python_path().join("tollgate_http.py").exists());
        assert!(!offline.ca_bundle().exists());
        assert!(!offline.resolv_conf().exists());
        assert!(!offline.holds_ca_bundle());
        drop(offline);
        let _ = std::fs::remove_dir_all(root);
    }

    /// A policy with one placeholder (`API_KEY`), and the network environment it gets.
    fn policy_with_placeholder() -> (Policy, NetworkEnv) {
        let policy = Policy::from_yaml(
            "t.yaml",
            "version: 1\nteam: acme\nnetwork:\n  allow: [https://api.example.com]\nauth_providers:\n  - name: K\n    type: bearer\n    secret: {env: K_SECRET}\n    scope: [https://api.example.com]\nplaceholders:\n  - {env: API_KEY, provider: K}\n",
        )
        .expect("policy");
        let network = NetworkEnv {
            proxy: "127.0.0.1:3128".parse().expect("addr"),
            ca_bundle: "/run/tollgate/x/ca-bundle.pem".into(),
            placeholders: vec![("API_KEY".into(), "tollgate_ph_0123".into())],
        };
        (policy, network)
    }

    #[test]
    fn placeholders_and_ca_variables_are_set_and_not_overridable() {
        let (policy, network) = policy_with_placeholder();
        let helper = Path::new("/run/tollgate/x/python");
        let env = child_environment(
            Some(&policy),
            &[],
            &[("PYTHONPATH".into(), "/mine".into())],
            Some(helper),
            Some(&network),
            "/tmp",
        )
        .expect("env");
        for name in CA_VARIABLES {
            assert_eq!(env[name], "/run/tollgate/x/ca-bundle.pem");
        }
        assert_eq!(env["AWS_CA_BUNDLE"], "/run/tollgate/x/ca-bundle.pem");
        assert_eq!(env[NODE_USE_ENV_PROXY], "1");
        assert_eq!(env["PYTHONPATH"], "/run/tollgate/x/python:/mine");
        assert_eq!(env[HELPER_SWITCH], "enabled");
        assert_eq!(env["API_KEY"], "tollgate_ph_0123");
        let refused = child_environment(
            Some(&policy),
            &[],
            &[("API_KEY".into(), "x".into())],
            Some(helper),
            Some(&network),
            "/tmp",
        );
        assert!(refused.is_err());
    }

    #[test]
    fn without_network_the_helper_is_on_the_path_and_switched_off() {
        let helper = Path::new("/run/tollgate/x/python");
        let env = child_environment(None, &[], &[], Some(helper), None, "/tmp").expect("env");
        assert_eq!(env["PYTHONPATH"], "/run/tollgate/x/python");
        assert_eq!(env[HELPER_SWITCH], "disabled");
        for name in CA_VARIABLES
            .iter()
            .chain(&PROXY_VARIABLES)
            .chain(&[NODE_USE_ENV_PROXY])
        {
            assert!(!env.contains_key(*name), "no network, no {name}");
        }
    }

    #[test]
    fn every_variable_tollgate_sets_is_reserved_for_placeholders() {
        // The one list (`tollgate_policy::sandbox_env`) must cover everything set here, or a
        // placeholder could take a variable tollgate overwrites (or that overwrites the proxy).
        let (policy, network) = policy_with_placeholder();
        let helper = Path::new("/run/tollgate/x/python");
        for network in [Some(&network), None] {
            let env = child_environment(Some(&policy), &[], &[], Some(helper), network, "/tmp")
                .expect("env");
            for name in env.keys() {
                if network.is_some_and(|n| n.placeholders.iter().any(|(p, _)| p == name)) {
                    continue;
                }
                assert!(
                    sandbox_env::is_reserved(name),
                    "tollgate sets {name}, which a placeholder could take"
                );
            }
        }
    }

    #[test]
    fn variables_tollgate_sets_or_that_inject_code_cannot_be_handed_in() {
        for name in [
            "HTTP_PROXY",
            "https_proxy",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "AWS_CA_BUNDLE",
            NODE_USE_ENV_PROXY,
            "LD_PRELOAD",
            "LD_AUDIT",
            "TOLLGATE_SECRET_ACME_KEY",
            HELPER_SWITCH,
        ] {
            let set =
                child_environment(None, &[], &[(name.into(), "x".into())], None, None, "/tmp");
            assert!(set.unwrap_err().contains(name), "--env {name}");
            let passed = child_environment(None, &[name.into()], &[], None, None, "/tmp");
            assert!(
                passed.unwrap_err().contains("--pass-env"),
                "--pass-env {name}"
            );
        }
        let fine = child_environment(
            None,
            &[],
            &[("LD_LIBRARY_PATH".into(), "/x".into())],
            None,
            None,
            "/tmp",
        );
        assert_eq!(fine.expect("allowed")["LD_LIBRARY_PATH"], "/x");
    }
}
