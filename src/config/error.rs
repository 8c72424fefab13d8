//! Config errors: every one names the file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Arc<str>,
    /// 1-based; 0 when the problem has no position (a missing file).
    pub line: usize,
    pub col: usize,
    /// Dotted key, e.g. `routes[get-user].backend`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one source text, turning byte spans into line:col.
pub(crate) struct Diagnostics {
    file: Arc<str>,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl Diagnostics {
    pub(crate) fn new(file: Arc<str>, text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            line_starts,
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, span: Option<Range<usize>>, key: String, message: String) {
        let (line, col) = match span {
            Some(span) => self.position(span.start),
            None => (0, 0),
        };
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            col,
            key,
            message,
        });
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        (line.max(1), offset - start + 1)
    }

    pub(crate) fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors
    }
}
