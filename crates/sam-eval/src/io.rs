//! Finding label files by stem. Reading and writing go through sam-data.

use std::path::{Path, PathBuf};

/// Label and image file extensions, in the order they are looked for.
pub(crate) const LABEL_EXTENSIONS: [&str; 3] = ["tif", "tiff", "png"];

/// Whether `path` has one of the label extensions (case-insensitive).
pub(crate) fn is_label_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| LABEL_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The file in `dir` with stem `stem` and one of the extensions (either case), if any.
pub(crate) fn find_by_stem(dir: &Path, stem: &str) -> Option<PathBuf> {
    LABEL_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}
