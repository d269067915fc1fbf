//! The kit's error type.

use std::path::PathBuf;

/// A fixture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a folder or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a synthetic image or label image failed.
    #[error("{}: {source}", path.display())]
    Data {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sam_data::DataError,
    },
    /// The config could not be rendered as YAML.
    #[error("config YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// Building the tiny model failed.
    #[cfg(feature = "model")]
    #[error("tiny model: {0}")]
    Model(#[source] sam_model::ModelError),
    /// Writing the tiny checkpoint failed.
    #[cfg(feature = "model")]
    #[error("{}: {source}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The cause (boxed: the checkpoint error is large).
        #[source]
        source: Box<sam_model::CheckpointError>,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
