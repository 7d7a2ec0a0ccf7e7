//! STUB (owner C): who may launch what.
use super::node_config::NodeConfig;
use super::wire::CallerIdentity;
use crate::run::RunOptions;

/// Whether `caller` may launch `options` (whose `team` is set) on this node; the error is
/// the one sentence the caller sees (exit 125).
pub fn authorize(
    config: &NodeConfig,
    caller: &CallerIdentity,
    options: &RunOptions,
) -> Result<(), String> {
    let _ = (config, caller, options);
    Err("authorization is being built".into())
}
