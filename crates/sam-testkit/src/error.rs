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
}

impl Error {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
