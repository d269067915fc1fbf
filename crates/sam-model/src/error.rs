//! Errors of the model code: inputs whose shape or content does not fit the model.

/// What went wrong when building or running a model.
///
/// Every variant names the argument, what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value that cannot build a model.
    #[error("invalid model config: {field}: expected {expected}, found {found}")]
    Config {
        /// Dotted name of the config field.
        field: String,
        /// What a valid value looks like.
        expected: String,
        /// The value that was given.
        found: String,
    },
    /// A tensor argument with the wrong shape.
    #[error("{argument}: expected shape {expected}, found {found:?}")]
    Shape {
        /// Name of the argument, as in the Python signature.
        argument: &'static str,
        /// The expected shape, in words (e.g. `[n, p, 2]`).
        expected: String,
        /// The shape that was given.
        found: Vec<i64>,
    },
    /// An argument that is missing or contradicts another one.
    #[error("{argument}: {message}")]
    Argument {
        /// Name of the argument.
        argument: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub(crate) fn shape_error(
    argument: &'static str,
    expected: &str,
    found: &tch::Tensor,
) -> ModelError {
    ModelError::Shape {
        argument,
        expected: expected.to_string(),
        found: found.size(),
    }
}
