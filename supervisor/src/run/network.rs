//! The execution's way out, when its policy turns the network on: the execution's CA and the
//! runtime directory the sandbox reads it from, the proxy on the listener inside the sandbox's
//! namespace (with the team's quotas, when its policy has any), the child's environment that
//! points every client at them, and — transparent egress — the stub resolver and the proxy's
//! transparent listener for the clients that ignore that environment.

use super::prepare::Prepared;
use super::violation::Violations;
use super::{env, Refusal};
use crate::dns::{StubResolver, SyntheticNames};
use crate::proxy::transparent::{NameOf, TransparentListener};
use crate::proxy::{Credentials, Interception, Proxy, ProxyHandle};
use crate::quota::{QuotaEnforcer, QuotaStore, QuotaStoreConfig};
use crate::sandbox::netns::TransparentSockets;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the execution's CA is valid when the run has no `--timeout` (with one, the CA
/// lives as long as the timeout, plus a margin).
const CA_LIFETIME_WITHOUT_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// What [`start`] set up; the runtime directory is removed when this drops.
pub(super) struct Network {
    pub(super) runtime_dir: Option<env::RuntimeDir>,
    pub(super) proxy: Option<ProxyHandle>,
    /// The stub resolver, with transparent egress.
    pub(super) resolver: Option<StubResolver>,
    /// The child's whole environment (also without the network).
    pub(super) environment: BTreeMap<String, String>,
}

/// Starts the proxy on `listener` (bound inside the sandbox's namespace) when the network is
/// on, and builds the runtime directory (the Python helper, and the CA bundle with the
/// network only) and the child's environment either way.
pub(super) fn start(
    prepared: &mut Prepared,
    execution: &str,
    listener: Option<std::net::TcpListener>,
    transparent: Option<TransparentSockets>,
    runtime: &tokio::runtime::Runtime,
    violations: &Violations,
) -> Result<Network, Refusal> {
    let on = match (&prepared.policy, listener) {
        (Some(policy), Some(listener)) if prepared.network => Some((policy, listener)),
        _ => None,
    };
    let Some((policy, listener)) = on else {
        // The helper is there without the network too, switched off (see `env`).
        let runtime_dir = env::RuntimeDir::create(execution, None).map_err(Refusal::tollgate)?;
        let environment = env::child_environment(
            prepared.policy.as_ref(),
            &prepared.options.pass_env,
            &prepared.options.env,
            Some(&runtime_dir.python_path()),
            None,
            "/tmp",
        )
        .map_err(Refusal::tollgate)?;
        return Ok(Network {
            runtime_dir: Some(runtime_dir),
            proxy: None,
            resolver: None,
            environment,
        });
    };
    let proxy_address = listener
        .local_addr()
        .map_err(|e| Refusal::tollgate(format!("cannot read the proxy's address: {e}")))?;
    // The execution's CA and the files the sandbox reads.
    let lifetime = prepared
        .options
        .timeout
        .unwrap_or(CA_LIFETIME_WITHOUT_TIMEOUT);
    let interception = Arc::new(
        Interception::for_policy(policy, execution, lifetime)
            .map_err(|e| Refusal::tollgate(format!("cannot set up TLS interception: {e}")))?,
    );
    let runtime_dir = env::RuntimeDir::create(execution, Some(&interception.sandbox_bundle()))
        .map_err(Refusal::tollgate)?;
    let credentials = prepared.credentials.take().unwrap_or_default();
    let network_env = env::NetworkEnv {
        proxy: proxy_address,
        ca_bundle: runtime_dir.ca_bundle(),
        placeholders: Credentials::placeholder_environment(&credentials),
    };
    let environment = env::child_environment(
        Some(policy),
        &prepared.options.pass_env,
        &prepared.options.env,
        Some(&runtime_dir.python_path()),
        Some(&network_env),
        "/tmp",
    )
    .map_err(Refusal::tollgate)?;
    let quotas = open_quotas(policy, &prepared.options.quota_store, runtime)?;
    let mut builder = Proxy::builder(Arc::new(policy.clone()))
        .execution_id(execution.to_owned())
        .credentials(credentials)
        .interception(interception)
        .violation_alarm({
            let violations = violations.clone();
            move |sentence| violations.ring(sentence)
        });
    if prepared.audit.is_enabled() {
        builder = builder.audit_log(prepared.audit.clone());
    }
    if let Some(quotas) = quotas {
        builder = builder.quotas(quotas);
    }
    let proxy = builder.build();
    let (proxy, resolver) = match transparent {
        None => (proxy.start(runtime.handle(), listener), None),
        Some(sockets) => {
            let (resolver, transparent) = start_transparent(policy, sockets, runtime)?;
            let proxy = proxy.start_transparent(runtime.handle(), listener, transparent);
            (proxy, Some(resolver))
        }
    };
    let proxy = proxy.map_err(|e| Refusal::tollgate(format!("cannot start the proxy: {e}")))?;
    Ok(Network {
        runtime_dir: Some(runtime_dir),
        proxy: Some(proxy),
        resolver,
        environment,
    })
}

/// The team's quotas, when its policy has any: the node's store opened (a refused Redis
/// password stops the run, exit 125; an unreachable server does not) and read once for the
/// Rego input.
fn open_quotas(
    policy: &tollgate_policy::Policy,
    config: &QuotaStoreConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<Option<Arc<QuotaEnforcer>>, Refusal> {
    if policy.quotas.is_empty() {
        return Ok(None);
    }
    runtime.block_on(async {
        let store = QuotaStore::open(config, &policy.team)
            .await
            .map_err(|e| Refusal::tollgate(e.to_string()))?;
        let quotas = QuotaEnforcer::new(&policy.team, &policy.quotas, store, config.on_failure);
        quotas.refresh().await;
        Ok(Some(quotas))
    })
}

/// Starts the stub resolver on its sockets, with a fresh table of synthetic names that the
/// proxy's transparent listener maps addresses back through.
fn start_transparent(
    policy: &tollgate_policy::Policy,
    sockets: TransparentSockets,
    runtime: &tokio::runtime::Runtime,
) -> Result<(StubResolver, TransparentListener), Refusal> {
    let names = Arc::new(SyntheticNames::new());
    let resolver = StubResolver::start(
        runtime.handle(),
        sockets.dns_udp,
        sockets.dns_tcp,
        names.clone(),
        Arc::new(policy.clone()),
    )
    .map_err(|e| Refusal::tollgate(format!("cannot start the stub resolver: {e}")))?;
    let name_of: NameOf = Arc::new(move |address| names.name_of(address));
    Ok((
        resolver,
        TransparentListener {
            listener: sockets.listener,
            names: name_of,
        },
    ))
}
