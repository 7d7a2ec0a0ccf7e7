//! The environment variables tollgate sets in every sandbox, in one list.
//!
//! The supervisor sets them in the child (`run::env`), and the validator refuses a placeholder
//! that would take one of them (a placeholder's value would be overwritten, or would
//! overwrite the proxy or the CA bundle). Both read the constants here, so a variable added
//! to what the child gets is reserved for placeholders by the same change.

/// The variables that name the execution's CA bundle, one per client family: OpenSSL
/// (Python's `ssl`, curl, git, Ruby…), requests, curl, pip, git, Node (added to its own
/// roots), the AWS SDKs and CLI, Deno, Cargo.
pub const CA_VARIABLES: [&str; 9] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
    "DENO_CERT",
    "CARGO_HTTP_CAINFO",
];

/// The proxy variables, in both spellings clients read.
pub const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Makes Node (22.21 and 24.5 on) send `fetch` and `http` through the proxy variables; set to
/// `1` with the network on.
pub const NODE_USE_ENV_PROXY: &str = "NODE_USE_ENV_PROXY";

/// Tells the Python helper whether this execution has a network: `enabled` or `disabled`
/// (every call then raises `HttpNotEnabled`).
pub const HELPER_SWITCH: &str = "TOLLGATE_HTTP";

/// What every sandbox gets, network or not: the system `PATH`, a `HOME`, `LANG`, the
/// caller's `TERM`, and `PYTHONPATH` with the helper's directory first.
pub const BASICS: [&str; 5] = ["PATH", "HOME", "LANG", "TERM", "PYTHONPATH"];

/// OpenSSL's directory of hashed roots. tollgate does not set it, but a placeholder there
/// would make OpenSSL look for roots in a directory named by a credential.
pub const SSL_CERT_DIR: &str = "SSL_CERT_DIR";

/// The prefix of the dynamic loader's variables (`LD_PRELOAD`, `LD_LIBRARY_PATH`…): a
/// placeholder there would be read as a path by every program of the sandbox.
pub const LOADER_PREFIX: &str = "LD_";

/// The loader variables that run code of the caller's choosing in every program of the
/// sandbox, tollgate's helpers included: the command line may not hand them in (the sandbox
/// may set them for itself).
pub const LOADER_INJECTION: [&str; 3] = ["LD_PRELOAD", "LD_AUDIT", "LD_DEBUG_OUTPUT"];

/// The single names tollgate sets or guards, group by group (the loader's are a prefix, see
/// [`is_reserved`]).
pub const RESERVED: [&[&str]; 5] = [
    &BASICS,
    &PROXY_VARIABLES,
    &CA_VARIABLES,
    &[NODE_USE_ENV_PROXY, HELPER_SWITCH],
    &[SSL_CERT_DIR],
];

/// Whether `name` is a variable tollgate sets (or guards) in the sandbox, so that a
/// placeholder may not take it.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(LOADER_PREFIX) || RESERVED.iter().any(|group| group.contains(&name))
}

/// Whether `name` is one of the variables that lead the sandbox's clients out (the proxy, the
/// CA bundle, Node's proxy switch) or the helper's switch: tollgate sets these itself, and
/// `--env` / `--pass-env` may not.
pub fn is_way_out(name: &str) -> bool {
    PROXY_VARIABLES.contains(&name) || CA_VARIABLES.contains(&name) || name == NODE_USE_ENV_PROXY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_tollgate_sets_and_the_loader_are_reserved() {
        for name in CA_VARIABLES
            .iter()
            .chain(&PROXY_VARIABLES)
            .chain(&BASICS)
            .chain(&LOADER_INJECTION)
            .chain(&[
                NODE_USE_ENV_PROXY,
                HELPER_SWITCH,
                SSL_CERT_DIR,
                "LD_LIBRARY_PATH",
                "AWS_CA_BUNDLE",
            ])
        {
            assert!(is_reserved(name), "{name}");
        }
        for free in [
            "API_KEY",
            "OPENAI_API_KEY",
            "MY_PATH",
            "LDAP_TOKEN",
            "HOME_DIR",
        ] {
            assert!(!is_reserved(free), "{free}");
        }
    }

    #[test]
    fn the_way_out_is_the_proxy_the_bundle_and_nodes_switch() {
        assert!(is_way_out("https_proxy") && is_way_out("AWS_CA_BUNDLE"));
        assert!(is_way_out(NODE_USE_ENV_PROXY));
        assert!(!is_way_out("PATH") && !is_way_out(HELPER_SWITCH) && !is_way_out("LD_PRELOAD"));
    }

    #[test]
    fn a_placeholder_may_take_no_variable_tollgate_sets() {
        let base = "version: 1\nteam: acme\nnetwork:\n  allow: [https://api.example.com]\n\
                    auth_providers:\n  - name: K\n    type: bearer\n    secret: {env: K}\n    \
                    scope: [https://api.example.com]\n";
        for name in [
            "AWS_CA_BUNDLE",
            NODE_USE_ENV_PROXY,
            HELPER_SWITCH,
            "LD_AUDIT",
            "SSL_CERT_FILE",
            "PATH",
        ] {
            let yaml = format!("{base}placeholders:\n  - {{env: {name}, provider: K}}\n");
            let error = crate::Policy::from_yaml("team.yaml", &yaml)
                .expect_err(name)
                .to_string();
            assert!(error.contains("set by tollgate itself"), "{name}: {error}");
        }
        let fine = format!("{base}placeholders:\n  - {{env: API_KEY, provider: K}}\n");
        assert!(crate::Policy::from_yaml("team.yaml", &fine).is_ok());
    }
}
