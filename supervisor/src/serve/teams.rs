//! STUB (owner D): team policies from a directory, kept at their last good version.
use super::wire::PolicyText;
use std::path::Path;

pub struct TeamPolicies {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Loaded { team: String },
    Failed { team: String, message: String },
    Removed { team: String },
}

impl TeamPolicies {
    pub fn load(dir: &Path) -> (TeamPolicies, Vec<Reload>) {
        let _ = dir;
        (TeamPolicies {}, Vec::new())
    }
    pub fn get(&self, team: &str) -> Result<PolicyText, String> {
        Err(format!("team {team}: being built"))
    }
    pub fn rescan(&self) -> Vec<Reload> {
        Vec::new()
    }
}
