//! The child's environment: clean by default, never holding a secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use tollgate_policy::schema::SecretRef;
use tollgate_policy::Policy;

/// The PATH a sandboxed command gets: system directories only (root's PATH points into
/// /root, which the sandbox user cannot enter).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Builds the child's environment from the clean defaults, `--pass-env`, `--env` and, when
/// the network is enabled, the proxy settings. Refuses to pass a variable that holds a
/// provider's secret.
pub fn child_environment(
    policy: Option<&Policy>,
    pass: &[String],
    set: &[(String, String)],
    proxy: Option<SocketAddr>,
    home: &str,
) -> Result<BTreeMap<String, String>, String> {
    let secret_vars = secret_variables(policy);
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
        if secret_vars.contains(name) {
            return Err(format!(
                "--pass-env {name} would hand the sandbox a secret of team {}'s auth providers; \
                 reference it through the provider instead",
                policy.map(|p| p.team.as_str()).unwrap_or("?")
            ));
        }
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), value);
        }
    }
    for (name, value) in set {
        if secret_vars.contains(name) {
            return Err(format!(
                "--env {name} names a provider secret variable; choose another name"
            ));
        }
        env.insert(name.clone(), value.clone());
    }
    if let Some(address) = proxy {
        let url = format!("http://{address}");
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            env.insert(name.to_owned(), url.clone());
        }
        for name in ["NO_PROXY", "no_proxy"] {
            env.insert(name.to_owned(), "localhost,127.0.0.1,::1".to_owned());
        }
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
