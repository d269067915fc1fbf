//! The error type of sam-infer.

use std::path::PathBuf;

/// Everything that can go wrong in sam-infer. Each variant names the file, the field, what was
/// expected and what was found, so that a bin can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Two arrays that must agree in shape do not.
    #[error("shape mismatch in {what}: expected {expected}, found {found}")]
    Shape {
        /// Which arrays.
        what: String,
        /// The shape that was expected.
        expected: String,
        /// The shape that was found.
        found: String,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter `{name}`: expected {expected}, found {found}")]
    Param {
        /// The parameter name (as spelled in the config / CLI).
        name: String,
        /// What is allowed.
        expected: String,
        /// The given value.
        found: String,
    },
    /// A prompt file is malformed or does not fit the image.
    #[error("{}: {message}", location(path, *line))]
    Prompt {
        /// The prompt file.
        path: PathBuf,
        /// 1-based line (CSV) or object index (JSON) where the problem is, when known.
        line: Option<usize>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The output folder cannot be used as asked (a file, the input folder, outputs of
    /// another model); the message says how to fix it.
    #[error("{}: {message}", path.display())]
    Output {
        /// The output folder.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The model could not be loaded or run.
    #[error("model: {0}")]
    Model(String),
    /// A buffer or label image could not be built (sam-data's error).
    #[error(transparent)]
    Data(#[from] sam_data::DataError),
    /// An image or label file could not be read or written.
    #[error("{}: {message}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Fails unless `b` has `a`'s shape; `what` names the two planes in the error.
pub(crate) fn check_same_shape<A, B>(
    a: &sam_data::Plane<A>,
    b: &sam_data::Plane<B>,
    what: &str,
) -> Result<(), InferError> {
    if a.shape() != b.shape() {
        return Err(InferError::Shape {
            what: what.into(),
            expected: format!("{}×{}", a.rows(), a.cols()),
            found: format!("{}×{}", b.rows(), b.cols()),
        });
    }
    Ok(())
}

fn location(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

impl InferError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn param(name: &str, expected: &str, found: impl std::fmt::Display) -> Self {
        Self::Param {
            name: name.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }
}
