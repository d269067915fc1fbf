//! The error type of training.
//!
//! Each variant's message is complete on its own (the executable prints only the message), and
//! a variant with an underlying error also returns it from [`std::error::Error::source`], so a
//! caller can walk the chain down to the `io::Error`, `DataError` or `ModelError` that started
//! it, or match on its type.

use std::path::PathBuf;

/// An underlying error of one of several types (a tensor file's, a JSON or CSV codec's, the
/// plotting library's, a collective's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or folder could not be read, written, listed or removed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content could not be encoded or decoded: tensors (safetensors), the checkpoint
    /// state (JSON), the metrics (CSV), the curves (PNG).
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// A signal handler could not be installed.
    #[error("cannot install handler for signal {signal}: {source}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The resolved config could not be written out.
    #[error("{0}")]
    Config(#[from] sam_config::ConfigError),
    /// A checkpoint that was asked for does not exist.
    #[error("{0}")]
    MissingCheckpoint(String),
    /// Saved state does not fit the model or optimiser.
    #[error("{0}")]
    State(String),
    /// The run folder exists and neither resume nor overwrite was asked for.
    #[error("run folder {0} already exists: pass --resume to continue it or --overwrite to start over (nothing was changed)")]
    RunExists(PathBuf),
    /// The run folder exists without a checkpoint (stopped before its first one) and neither
    /// resume nor overwrite was asked for.
    #[error("run folder {0} already exists but holds no checkpoint yet (its run stopped before the first one): pass --resume to start it again from the beginning in this folder, or --overwrite to clear it first (nothing was changed)")]
    RunWithoutCheckpoint(PathBuf),
    /// The run folder path holds something that this tool did not create as a run.
    #[error("{} is not a run folder of sam-train ({reason}): sam-train neither writes into it nor deletes it, --overwrite included. Set another output_base_dir or experiment_name in the config, or move the folder away (nothing was changed)", dir.display())]
    NotARunFolder {
        /// The folder.
        dir: PathBuf,
        /// Why it is not a run.
        reason: String,
    },
    /// Contradictory options.
    #[error("{0}")]
    Usage(String),
    /// Building or loading the model failed (the message says how).
    #[error("model: {0}")]
    Model(String),
    /// The model failed (building it, a forward pass).
    #[error("model: {0}")]
    Sam(#[from] sam_model::ModelError),
    /// A model checkpoint file could not be read or written.
    #[error("model: {0}")]
    Checkpoint(#[from] sam_model::CheckpointError),
    /// An operation of the libtorch bridge failed (autocast, TF32).
    #[error("model: {0}")]
    Torch(#[from] sam_torch::Error),
    /// An optimiser kernel failed (the AdamW update, gradient clipping or scaling).
    #[error("optimiser: {0}")]
    Optimizer(#[source] sam_torch::Error),
    /// A tensor could not be converted (tch).
    #[error("model: {0}")]
    Tensor(#[from] tch::TchError),
    /// A parameter's gradient could not be cleared.
    #[error("model: clearing the gradient of {parameter}: {source}")]
    ClearGradient {
        /// The parameter's state_dict key.
        parameter: String,
        /// The bridge's error.
        #[source]
        source: sam_torch::Error,
    },
    /// Reading or sampling the data failed.
    #[error("data: {0}")]
    Data(#[from] sam_data::DataError),
    /// The data does not fit the run (no images after the split, a batch of patches of
    /// different sizes, a patch without objects, samples without the decoder's targets); the
    /// message says how.
    #[error("data: {0}")]
    Samples(String),
    /// A validation patch could not be scored.
    #[error("data: validation scoring of {image}: {source}")]
    Scoring {
        /// The image the patch was taken from.
        image: String,
        /// The metric's error.
        #[source]
        source: sam_eval::MetricError,
    },
    /// The loss or the gradients stopped being numbers for too many steps in a row.
    #[error(
        "the loss or gradients were not finite for {steps} consecutive steps (from iteration \
         {}, on at least one rank; this rank's last loss {value}); every rank stopped and the \
         last good checkpoint is kept in {} (lower training.lr, enable \
         training.grad_clip_norm, or use fp32)",
        first_iteration + 1,
        checkpoint.display()
    )]
    NonFinite {
        /// Completed steps before the first skipped one (0-based index of that step).
        first_iteration: u64,
        /// Consecutive skipped steps.
        steps: u32,
        /// This rank's last loss value.
        value: f64,
        /// The last good checkpoint.
        checkpoint: PathBuf,
    },
    /// A collective operation failed (a peer died or timed out).
    #[error("distributed: {operation}: {source}")]
    Collective {
        /// The operation (`rendezvous`, `gradient all-reduce`, `barrier`, ...).
        operation: String,
        /// The process group's error.
        #[source]
        source: BoxError,
    },
    /// The ranks of a distributed run disagree, or their answers do not fit.
    #[error("distributed: {0}")]
    Distributed(String),
}

impl TrainError {
    /// Whether the error is the user's request or config, not a failure of the run (the
    /// executable exits 2 for these): contradictory flags, a run folder that exists or is not a
    /// run, an export that would overwrite its input or an existing file.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TrainError::Usage(_)
                | TrainError::RunExists(_)
                | TrainError::RunWithoutCheckpoint(_)
                | TrainError::NotARunFolder { .. }
        )
    }

    /// [`TrainError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// [`TrainError::Format`] for `path`.
    pub(crate) fn format(path: impl Into<PathBuf>, source: impl Into<BoxError>) -> Self {
        TrainError::Format {
            path: path.into(),
            source: source.into(),
        }
    }

    /// [`TrainError::Collective`] for `operation`.
    pub(crate) fn collective(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        TrainError::Collective {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::error::Error as _;

    use super::TrainError;

    #[test]
    fn io_errors_name_the_path_and_keep_the_cause() {
        let source = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = TrainError::io("runs/t/config.yaml", source);
        assert_eq!(err.to_string(), "runs/t/config.yaml: denied");
        let cause = err.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::PermissionDenied)
        );
    }

    #[test]
    fn collective_errors_keep_the_prefix_the_executable_prints() {
        let err = TrainError::collective("barrier", "peer gone");
        assert_eq!(err.to_string(), "distributed: barrier: peer gone");
        assert_eq!(err.source().unwrap().to_string(), "peer gone");
        assert!(!err.is_usage());
    }
}
