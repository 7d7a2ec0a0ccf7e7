//! Policy load errors: every problem in a file, each with the place to fix it.

use std::fmt;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The YAML path of the offending node, e.g. `network.allow[2].host` (empty for syntax errors).
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Every problem found in one policy file, printed as `FILE:LINE:COL: message` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    pub file: String,
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (error.line, error.column) {
                (Some(line), Some(column)) => {
                    write!(f, "{}:{line}:{column}: {}", self.file, error.message)?
                }
                (Some(line), None) => write!(f, "{}:{line}: {}", self.file, error.message)?,
                _ => write!(f, "{}: {}", self.file, error.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}
