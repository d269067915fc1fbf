//! Problems found in a config, with their place in the file, and the error type.

use std::fmt;
use std::path::PathBuf;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// The config can be used, but something is probably not what was meant.
    Warning,
}

/// One problem found by [`crate::ExperimentConfig::validate`], named by its dotted key
/// (`training.lr`, `model.freeze[1]`; empty for the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key of the offending value.
    pub key: String,
    /// What is wrong: expected and found.
    pub message: String,
    /// A likely intended value or key, shown as "did you mean ...".
    pub suggestion: Option<String>,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            suggestion: None,
        }
    }

    pub(crate) fn suggest(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// A [`Problem`] placed in a file: `file:line:column: key: message (did you mean ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file (`None` for a config given as text).
    pub file: Option<PathBuf>,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column of the offending key or value.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// The problem.
    pub problem: Problem,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_ref()
            .map_or_else(|| "<config>".into(), |p| p.display().to_string());
        write!(f, "{file}:{}:{}: ", self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid config; every problem found is listed.
    #[error("{}", render_invalid(errors, file.as_ref()))]
    Invalid {
        /// The file (`None` for a config given as text).
        file: Option<PathBuf>,
        /// Every error, in file order.
        errors: Vec<Diagnostic>,
        /// Warnings found alongside the errors.
        warnings: Vec<Diagnostic>,
    },
    /// No repository root was found.
    #[error(
        "no repository root above {}: no ancestor holds both `configs/` and `dat/`; \
         run from inside the repository or set SAM_TRAINER_ROOT",
        start.display()
    )]
    NoRoot {
        /// Where the search started.
        start: PathBuf,
    },
    /// The config could not be written as YAML.
    #[error("cannot serialise the config as YAML: {0}")]
    Serialize(String),
}

fn render_invalid(errors: &[Diagnostic], file: Option<&PathBuf>) -> String {
    let mut out = String::new();
    for e in errors {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    let name = file.map_or_else(|| "the config".into(), |p| p.display().to_string());
    let n = errors.len();
    out.push_str(&format!(
        "{n} error{} in {name}",
        if n == 1 { "" } else { "s" }
    ));
    out
}

impl ConfigError {
    /// The errors of an invalid config (empty for other failures).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }

    /// The warnings found next to the errors of an invalid config.
    pub fn warnings(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { warnings, .. } => warnings,
            _ => &[],
        }
    }
}

/// The closest candidate to `word` by edit distance, when it is close enough to be a likely
/// typo (normalised Damerau–Levenshtein similarity of at least 0.6, or one is a prefix of the
/// other).
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let mut score = strsim::normalized_damerau_levenshtein(word, c);
        if word.len() >= 3 && (c.starts_with(word) || word.starts_with(c)) {
            score = score.max(0.7);
        }
        if score >= 0.6 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos_only() {
        let keys = ["batch_size", "n_sub_iteration", "lr", "weight_decay"];
        assert_eq!(did_you_mean("batch_sise", keys), Some("batch_size".into()));
        assert_eq!(
            did_you_mean("n_sub_iterations", keys),
            Some("n_sub_iteration".into())
        );
        assert_eq!(
            did_you_mean("weightdecay", keys),
            Some("weight_decay".into())
        );
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn diagnostic_display_names_file_line_key_and_hint() {
        let d = Diagnostic {
            file: Some("configs/x.yaml".into()),
            line: 7,
            column: 3,
            severity: Severity::Error,
            problem: Problem::new("training.batch_sise", "unknown key")
                .suggest(Some("batch_size".into())),
        };
        assert_eq!(
            d.to_string(),
            "configs/x.yaml:7:3: training.batch_sise: unknown key (did you mean `batch_size`?)"
        );
    }
}
