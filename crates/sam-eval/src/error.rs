//! Error types.

use std::path::PathBuf;

/// Errors of the metric functions.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// The two label images have a different number of pixels.
    #[error("label images differ in size: ground truth has {gt} pixels, prediction has {pred}")]
    LengthMismatch {
        /// Pixels of the ground truth.
        gt: usize,
        /// Pixels of the prediction.
        pred: usize,
    },
    /// An aggregate was asked for over no images.
    #[error("no images to aggregate")]
    NoImages,
}

/// Errors of the evaluation runs (reading label folders, writing reports).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A folder given on the command line does not exist or is not a folder.
    #[error("{what} folder {path} does not exist or is not a folder")]
    NotADir {
        /// Which folder (e.g. "ground-truth").
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The ground-truth folder holds no label image.
    #[error("no label images (.tif, .tiff, .png) in ground-truth folder {0}")]
    NoLabels(PathBuf),
    /// Two files in one folder share a stem, so pairing by stem is ambiguous.
    #[error("{first} and {second} have the same stem; keep one of them")]
    DuplicateStem {
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// A ground-truth image has no prediction with the same stem.
    #[error(
        "no prediction for {gt}: expected {stem}.tif, {stem}.tiff or {stem}.png in {pred_dir} \
         (pass --missing-as-empty to score it as an empty prediction)"
    )]
    MissingPrediction {
        /// The ground-truth file.
        gt: PathBuf,
        /// Its stem.
        stem: String,
        /// The prediction folder searched.
        pred_dir: PathBuf,
    },
    /// A ground-truth image has no brightfield image with the same stem (for overlays).
    #[error("no brightfield image for {gt}: expected {stem}.tif, {stem}.tiff or {stem}.png in {image_dir}")]
    MissingImage {
        /// The ground-truth file.
        gt: PathBuf,
        /// Its stem.
        stem: String,
        /// The image folder searched.
        image_dir: PathBuf,
    },
    /// Two images that must have the same size do not.
    #[error("size mismatch: {a} is {a_shape:?} (rows, cols) but {b} is {b_shape:?}")]
    SizeMismatch {
        /// The reference file (ground truth).
        a: PathBuf,
        /// Its shape (rows, cols).
        a_shape: (usize, usize),
        /// The other file.
        b: PathBuf,
        /// Its shape (rows, cols).
        b_shape: (usize, usize),
    },
    /// Reading a label or brightfield image or writing an overlay failed (the message names
    /// the file and says what was expected and found).
    #[error(transparent)]
    Data(#[from] sam_data::DataError),
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot write", …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing an output file failed for a reason other than I/O.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A metric computation failed.
    #[error(transparent)]
    Metric(#[from] MetricError),
    /// The output folder already holds an evaluation and overwriting was not asked for.
    #[error(
        "{dir} already holds an evaluation ({}); pass --overwrite to replace it",
        .files.join(", ")
    )]
    OutputExists {
        /// The output folder.
        dir: PathBuf,
        /// The evaluation files found there.
        files: Vec<String>,
    },
    /// The folders given cannot be used together (predictions that are the ground truth,
    /// reports inside the raw data, an output that is a file).
    #[error("{0}")]
    Folders(String),
    /// An evaluation setting is unusable (an empty grid, no prompt start, ...).
    #[error("invalid setting `{name}`: {message}")]
    Setting {
        /// The setting, as spelled in the config.
        name: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Running the model failed (loading, segmentation or writing its output).
    #[cfg(feature = "model")]
    #[error(transparent)]
    Infer(#[from] sam_infer::InferError),
}

impl EvalError {
    /// Whether the error is a usage problem (a wrong folder on the command line) rather than
    /// a failure while reading data; command-line tools map it to exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EvalError::NotADir { .. }
                | EvalError::NoLabels(_)
                | EvalError::OutputExists { .. }
                | EvalError::Folders(_)
                | EvalError::Setting { .. }
        )
    }
}
