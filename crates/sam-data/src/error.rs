//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong between files on disk and training samples.
///
/// Every variant that concerns a file names it; the messages say what was expected and what
/// was found.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading, writing, renaming or listing a path failed.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done ("read", "write", "rename", "list", ...).
        action: &'static str,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be decoded (corrupt, truncated or not an image).
    #[error("{path}: cannot decode {format} file (corrupt or truncated?): {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// "TIFF" or "PNG".
        format: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The file's content is of another format than its extension says (a PNG renamed to
    /// `.tif`, a JPEG saved as `.png`, ...).
    #[error("{path}: the file is {found}, but its name ends in .{extension}: {fix}")]
    FormatMismatch {
        /// The file.
        path: PathBuf,
        /// The extension of the name (lower case, without the dot).
        extension: String,
        /// What the first bytes say it is (`a PNG image`, `a JPEG image`, ...).
        found: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// A multi-page TIFF (a 3-D stack, a time series): only 2-D images are read.
    #[error("{path}: a multi-page TIFF with {pages} pages (a 3-D stack or time series), but only single 2-D images are read; save each page as its own file (Fiji: Image > Stacks > Stack to Images) or a projection")]
    Stack {
        /// The file.
        path: PathBuf,
        /// Full-resolution pages in the file (reduced-resolution thumbnails not counted).
        pages: usize,
    },
    /// A file could not be encoded.
    #[error("{path}: cannot encode {format} file: {reason}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// "TIFF" or "PNG".
        format: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// The file extension is not one we read or write.
    #[error("{path}: unsupported file type (expected one of {expected})")]
    UnsupportedExtension {
        /// The file.
        path: PathBuf,
        /// The accepted extensions.
        expected: &'static str,
    },
    /// The pixel type of an image file is not one we accept.
    #[error("{path}: unsupported pixel type: expected {expected}, found {found}")]
    UnsupportedPixelType {
        /// The file.
        path: PathBuf,
        /// What is accepted.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A label image holds floating-point values.
    #[error("{path}: labels must be integer instance ids (u8/u16/u32), found floating-point pixels ({found}); export the label image as an integer type")]
    FloatLabels {
        /// The file.
        path: PathBuf,
        /// The pixel type found.
        found: String,
    },
    /// A label image holds negative values.
    #[error(
        "{path}: labels must be non-negative instance ids, found {value} at pixel (x={x}, y={y})"
    )]
    NegativeLabel {
        /// The file.
        path: PathBuf,
        /// The offending value.
        value: i64,
        /// Column.
        x: usize,
        /// Row.
        y: usize,
    },
    /// A label value does not fit into u32.
    #[error("{path}: label id {value} does not fit into u32")]
    LabelOverflow {
        /// The file.
        path: PathBuf,
        /// The offending value.
        value: u64,
    },
    /// Image and label image differ in size.
    #[error("{labels}: label image is {label_width}x{label_height} but its image {image} is {image_width}x{image_height}; they must have the same size")]
    SizeMismatch {
        /// The image file.
        image: PathBuf,
        /// The label file.
        labels: PathBuf,
        /// Image width.
        image_width: usize,
        /// Image height.
        image_height: usize,
        /// Label width.
        label_width: usize,
        /// Label height.
        label_height: usize,
    },
    /// A folder holds no image files.
    #[error("{path}: no image files found (expected *.tif, *.tiff or *.png)")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// Images without labels or labels without images (paired by file stem).
    #[error("{images_dir} and {labels_dir}: files are paired by stem, but these have no partner: {}", .unpaired.join(", "))]
    Unpaired {
        /// The image folder.
        images_dir: PathBuf,
        /// The label folder.
        labels_dir: PathBuf,
        /// Every unpaired file, as `images/x.tif (no labels)` or `labels/y.tif (no image)`.
        unpaired: Vec<String>,
    },
    /// Two files in one folder share a stem (e.g. `a.tif` and `a.png`).
    #[error("{first} and {second} share the stem {stem:?}; keep one file per stem")]
    DuplicateStem {
        /// The stem.
        stem: String,
        /// One file.
        first: PathBuf,
        /// The other file.
        second: PathBuf,
    },
    /// A buffer does not match the shape it claims.
    #[error("{what}: expected {expected} values for {rows} rows x {cols} cols, found {found}")]
    Shape {
        /// What was being built.
        what: &'static str,
        /// Rows (height).
        rows: usize,
        /// Columns (width).
        cols: usize,
        /// rows*cols.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// The parameter (dotted path).
        name: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// No patch with enough objects was found.
    #[error("{image}: no {patch_height}x{patch_width} patch with at least {min_objects} objects of >= {min_size} pixels found in {attempts} attempts; lower data.min_objects_per_patch / data.min_object_size, use a larger patch, or check the labels")]
    NoValidPatch {
        /// The image's name.
        image: String,
        /// Patch height.
        patch_height: usize,
        /// Patch width.
        patch_width: usize,
        /// Required number of objects.
        min_objects: usize,
        /// Minimum object size in pixels.
        min_size: usize,
        /// Attempts made.
        attempts: usize,
    },
    /// The destination folder is not usable.
    #[error("{path}: {reason}")]
    Destination {
        /// The folder.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A worker thread of the prefetching pipeline panicked or vanished.
    #[error("data pipeline worker {worker} stopped unexpectedly")]
    WorkerStopped {
        /// Worker index.
        worker: usize,
    },
}

/// Short alias used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        DataError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
