//! The error type of checkpoint reading, writing and architecture inference.

use std::path::PathBuf;

/// Why a checkpoint could not be read, written or understood.
///
/// Every variant names the file; those about one entry name its key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not in a format this crate reads.
    #[error("{path} is not a readable checkpoint: {reason}")]
    Format {
        /// The checkpoint file.
        path: PathBuf,
        /// What was found instead, and how to fix it.
        reason: String,
    },
    /// The zip container of a `torch.save` file is damaged or truncated.
    #[error("{path}: damaged or truncated torch.save archive: {message}")]
    Zip {
        /// The checkpoint file.
        path: PathBuf,
        /// The zip reader's message.
        message: String,
    },
    /// The pickle inside a `torch.save` file is damaged, truncated or unsupported.
    #[error("{path}: cannot interpret {entry} at byte {offset}: {message}")]
    Pickle {
        /// The checkpoint file.
        path: PathBuf,
        /// The archive entry holding the pickle (`<archive>/data.pkl`).
        entry: String,
        /// Byte offset inside the pickle.
        offset: u64,
        /// What went wrong.
        message: String,
    },
    /// The pickle references a Python global that a state_dict never needs. Nothing from the
    /// file is ever executed; the file is refused instead.
    #[error(
        "{path}: refusing to load: `{location}` references the Python global `{global}`, which \
         a state_dict never contains (only tensors, storages, OrderedDict/dict and plain values \
         are accepted; nothing in a checkpoint is ever executed)"
    )]
    ForbiddenGlobal {
        /// The checkpoint file.
        path: PathBuf,
        /// `module.name` of the global.
        global: String,
        /// Where in the checkpoint it was found (a key path such as `model_state/x.weight`).
        location: String,
    },
    /// An entry has the wrong form (a non-tensor value in a state_dict, a tensor whose
    /// strides leave its storage, an unsupported storage type, ...).
    #[error("{path}: entry `{key}`: {message}")]
    Entry {
        /// The checkpoint file.
        path: PathBuf,
        /// The state_dict key (or key path) of the entry.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A weight holds NaN or infinite values (a diverged training run, a broken export). Such
    /// a model runs and finds nothing; it is refused on load instead.
    #[error(
        "{path}: entry `{key}` holds {count} non-finite value(s) (NaN or infinity) among its \
         {total}: the weights are broken (a training run that diverged?); use an earlier \
         checkpoint, e.g. `best` instead of `latest`"
    )]
    NonFinite {
        /// The checkpoint file.
        path: PathBuf,
        /// The state_dict key (`decoder_state/...` for the instance decoder).
        key: String,
        /// Non-finite values in the tensor.
        count: i64,
        /// Values in the tensor.
        total: i64,
    },
    /// libtorch failed on a tensor operation.
    #[error("{path}: entry `{key}`: {source}")]
    Torch {
        /// The checkpoint file.
        path: PathBuf,
        /// The state_dict key being processed.
        key: String,
        /// The libtorch error.
        #[source]
        source: tch::TchError,
    },
    /// The weights do not describe a SAM model this crate can build.
    #[error("cannot infer the model architecture from the weights: {reason}")]
    Architecture {
        /// What is missing or inconsistent.
        reason: String,
    },
    /// The weights hold a different backbone than the configuration asks for.
    #[error(
        "the checkpoint holds a {found} image encoder, but the configuration asks for \
         {configured}; set the backbone to {found_name} or choose a {configured} checkpoint"
    )]
    BackboneMismatch {
        /// The backbone the configuration names (e.g. `vit_b`).
        configured: String,
        /// A description of the backbone in the weights (e.g. `vit_l (embed_dim 1024, depth 24)`).
        found: String,
        /// The backbone name of the weights (e.g. `vit_l`).
        found_name: String,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn entry(path: &std::path::Path, key: &str, message: impl Into<String>) -> Self {
        Self::Entry {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn format(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
