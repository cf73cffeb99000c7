//! A problem found in a config file, located by file, line and field, so that an operator
//! can go straight to it: `cellet.yaml:14: cloud.capabilities[1]: unknown capability ...`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, as the operator named it.
    pub file: PathBuf,
    /// 1-based line the problem is attributed to.
    pub line: usize,
    /// Dotted path of the field (`cloud.capabilities[1]`), or the slot key for problems of
    /// a whole slot.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(
        file: &Path,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            file: file.to_path_buf(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Sort by line so the report reads top to bottom, whatever order the checks ran in
    /// (stable: problems of one line keep the order they were found in).
    pub fn sorted(mut self) -> Self {
        self.0.sort_by_key(|p| p.line);
        self
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
