//! One failure type for every executable, with its exit code.

use std::fmt;
use std::process::ExitCode;

/// Exit status of a failure while running (an unreadable image, a model that does not load).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage or config error (a bad flag, an invalid config, a missing folder):
/// clap's status for flags it rejects.
pub const EXIT_USAGE: u8 = 2;

/// Why an executable stops: an error with its cause chain and the exit status it maps to
/// (0 ok, [`EXIT_FAILURE`], [`EXIT_USAGE`], or a status of the executable's own).
pub struct Failure {
    code: u8,
    error: Option<anyhow::Error>,
}

impl Failure {
    /// A usage or config error (exit status 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self::with_code(EXIT_USAGE, error)
    }

    /// A usage or config error given as a message (exit status 2).
    pub fn usage_msg(message: impl fmt::Display) -> Self {
        Self::message(EXIT_USAGE, message)
    }

    /// A failure while running (exit status 1).
    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        Self::with_code(EXIT_FAILURE, error)
    }

    /// A failure while running given as a message (exit status 1).
    pub fn failed_msg(message: impl fmt::Display) -> Self {
        Self::message(EXIT_FAILURE, message)
    }

    /// An error with an exit status of its own.
    pub fn with_code(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: Some(error.into()),
        }
    }

    /// A message with an exit status of its own.
    pub fn message(code: u8, message: impl fmt::Display) -> Self {
        Self::with_code(code, anyhow::anyhow!("{message}"))
    }

    /// A failure the executable has already told the user about (a list of config problems,
    /// a logged error): only its exit status is left.
    pub fn reported(code: u8) -> Self {
        Self { code, error: None }
    }

    /// The exit status.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// The error, unless it was [reported](Self::reported) already.
    pub fn error(&self) -> Option<&anyhow::Error> {
        self.error.as_ref()
    }

    /// The lines printed for it: `{prefix}error: {error}` and one `  caused by: {cause}` per
    /// source, innermost last; nothing for a failure [reported](Self::reported) already.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        let Some(error) = &self.error else {
            return Vec::new();
        };
        std::iter::once(format!("{prefix}error: {error}"))
            .chain(error.chain().skip(1).map(|c| format!("  caused by: {c}")))
            .collect()
    }

    /// Prints [`lines`](Self::lines) to standard error and returns the exit status.
    pub fn report(&self, prefix: &str) -> ExitCode {
        for line in self.lines(prefix) {
            eprintln!("{line}");
        }
        ExitCode::from(self.code)
    }
}

/// The error's own message (without its causes); empty for a failure
/// [reported](Failure::reported) already.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{e}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("code", &self.code)
            .field("error", &self.error)
            .finish()
    }
}

/// Every error of this crate is a usage or config error.
impl From<crate::CliError> for Failure {
    fn from(e: crate::CliError) -> Self {
        Self::usage(e)
    }
}

/// The exit status of a command's result: 0 for `Ok`, else the failure's, printed with
/// `error: ` (the prefix of every executable but sam-augment, see [`exit_with_prefix`]).
pub fn exit(result: Result<(), Failure>) -> ExitCode {
    exit_with_prefix("", result)
}

/// [`exit`] with `prefix` before `error: ` (`sam-augment: `).
pub fn exit_with_prefix(prefix: &str, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read a.tif")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn codes_and_the_printed_chain() {
        let f = Failure::failed(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(f.code(), 1);
        assert_eq!(
            f.lines("sam-augment: "),
            vec![
                "sam-augment: error: cannot read a.tif",
                "  caused by: disk on fire"
            ]
        );
        let f = Failure::usage_msg("--size must be at least 16, found 3");
        assert_eq!(f.code(), 2);
        assert_eq!(
            f.lines(""),
            vec!["error: --size must be at least 16, found 3"]
        );
        assert_eq!(Failure::failed_msg("x").code(), EXIT_FAILURE);
        assert_eq!(f.to_string(), "--size must be at least 16, found 3");
        let f = Failure::reported(2);
        assert!(f.lines("").is_empty() && f.error().is_none() && f.to_string().is_empty());
        assert_eq!(Failure::with_code(42, anyhow::anyhow!("stop")).code(), 42);
        assert_eq!(Failure::message(3, "three").lines(""), vec!["error: three"]);
    }

    #[test]
    fn crate_errors_are_usage_errors() {
        let f = Failure::from(crate::CliError::Flags("--halo: bad".into()));
        assert_eq!(f.code(), EXIT_USAGE);
        assert_eq!(f.lines(""), vec!["error: --halo: bad"]);
    }
}
