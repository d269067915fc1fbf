//! The dataset check: everything that can be known about image/label folders before training,
//! as one report ([`check_folders`] → [`DataCheck`]).
//!
//! Each pair is read once, whole, on a rayon thread, and every problem of every file is
//! collected: nothing stops at the first one. What training would refuse (files without a
//! partner, unreadable or multi-page files, size mismatches, images smaller than a patch) is an
//! [`Severity::Error`]; what training would silently live with but probably should not
//! (objects brighter than their surroundings, empty label images, objects in several pieces,
//! objects below the minimum size, images no patch of which holds enough objects) is a
//! [`Severity::Warning`]; the rest is a [`Severity::Note`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::folder::Progress;
use crate::image::{BitDepth, GreyImage, LabelImage};
use crate::io::{file_info, list_folder, read_image, read_labels};
use crate::labels::{connected_components, object_stats, Connectivity};
use crate::preprocess::{normalization_bounds, Normalization};
use crate::samples::{PatchConfig, PatchPositions, PatchSampler};

/// Objects whose mean normalised intensity is more than this above their ring's are
/// "brighter"; within this margin either way the contrast is "low".
pub const CONTRAST_MARGIN: f64 = 0.02;
/// Share of pixels at the bit depth's maximum from which an image is called saturated.
pub const SATURATION_SHARE: f64 = 0.01;
/// An image whose percentile range (relative to its bit depth) is below the median image's
/// divided by this is a normalisation outlier.
pub const RANGE_OUTLIER_FACTOR: f64 = 4.0;
/// Below this chance of finding a valid patch in its tries, the sampler skips an image more
/// often than it uses it: a warning.
pub const RARE_PATCH_MISS_PROBABILITY: f64 = 0.5;

/// What the check compares the data with: the training settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckOptions {
    /// The patch sampler's requirements (the config's `data.patch_shape`,
    /// `data.min_objects_per_patch`, `data.min_object_size`). `min_object_size` is also the
    /// size below which objects are counted as small (training drops them).
    pub patch: PatchConfig,
    /// The normalisation (the config's `data.normalization`).
    pub normalization: Normalization,
    /// Width in pixels of the ring of background around the objects whose intensity is
    /// compared with theirs (default 3).
    pub ring_width: usize,
    /// The size every image should have, `(rows, cols)` (the config's `data.image_shape`);
    /// `None` checks no size.
    pub expected_shape: Option<(usize, usize)>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            patch: PatchConfig::default(),
            normalization: Normalization::default(),
            ring_width: 3,
            expected_shape: None,
        }
    }
}

/// How bad a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Note,
    /// Training runs, but probably not as meant.
    Warning,
    /// Training would refuse the data or fail on it.
    Error,
}

/// What a finding is about; its JSON name is the snake-case variant name
/// (`unpaired_image`, `bright_objects`, ...).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A folder holds no image files (error).
    EmptyFolder,
    /// An image without a label image of its stem (error).
    UnpairedImage,
    /// A label image without an image of its stem (error).
    UnpairedLabels,
    /// Two files of one folder share a stem (error).
    DuplicateStem,
    /// A file cannot be opened or decoded: corrupt, truncated, empty, or another format
    /// than its extension says (error).
    Unreadable,
    /// A multi-page TIFF (a stack or time series) (error).
    MultiPage,
    /// Pixels of a type that is not read: float or colour labels, 32-bit images (error).
    UnsupportedPixels,
    /// Image and label image differ in size (error).
    SizeMismatch,
    /// The image is smaller than a training patch (error).
    SmallerThanPatch,
    /// No image of the folder gives a patch with enough objects: training cannot start (error).
    NoUsableImage,
    /// Objects brighter than their surroundings: inverted or fluorescence images (warning).
    BrightObjects,
    /// Objects about as bright as their surroundings (warning).
    LowContrast,
    /// Most images have bright objects (warning, once for the folder).
    MostlyBrightObjects,
    /// A label image without objects: training skips the image (warning).
    EmptyLabels,
    /// No patch position holds enough objects: training skips the image (warning).
    NoValidPatch,
    /// So few patch positions hold enough objects that the sampler mostly skips the image
    /// (warning).
    RareValidPatch,
    /// Objects below the minimum size, which training drops (warning).
    SmallObjects,
    /// Ids made of several separate pieces, which training splits into separate objects
    /// (warning).
    MultiPieceObjects,
    /// Label ids at the top of the label file's type: more objects may have wrapped around
    /// (warning).
    LabelTypeFull,
    /// A constant image: it normalises to all zeros (warning).
    ConstantImage,
    /// Many pixels at the bit depth's maximum (warning).
    Saturated,
    /// An image whose intensity range is far narrower than the others' (warning).
    NormalizationOutlier,
    /// The image does not have the configured size (warning).
    ShapeDiffers,
    /// Objects touching the image border (note, once for the folder).
    BorderObjects,
    /// Files that are not read (other extensions) (note).
    IgnoredFiles,
    /// Images of different bit depths (note).
    MixedBitDepths,
}

/// One finding: what, how bad, where, and a sentence that says so.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What about.
    pub kind: FindingKind,
    /// The file (or folder) concerned, when there is one.
    pub file: Option<PathBuf>,
    /// What was found and, where there is one, the fix.
    pub message: String,
}

impl Finding {
    fn new(
        severity: Severity,
        kind: FindingKind,
        file: Option<&Path>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            kind,
            file: file.map(Path::to_path_buf),
            message: message.into(),
        }
    }
}

/// What an image file holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageStats {
    /// Height in pixels.
    pub rows: usize,
    /// Width in pixels.
    pub cols: usize,
    /// The file's pixel type (`u8`, `u16`, `RGB u8`, ...).
    pub pixel_type: String,
    /// The storage depth the image is read at.
    pub bit_depth: BitDepth,
    /// Smallest intensity.
    pub min: f32,
    /// Largest intensity.
    pub max: f32,
    /// Share of pixels at the bit depth's maximum (255 or 65535).
    pub saturated_share: f64,
    /// The intensity the normalisation maps to 0 (the lower percentile).
    pub lower_bound: f32,
    /// The intensity the normalisation maps to 1 (the upper percentile).
    pub upper_bound: f32,
}

/// What a label image holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelStats {
    /// Height in pixels.
    pub rows: usize,
    /// Width in pixels.
    pub cols: usize,
    /// The file's pixel type (`u8`, `u16`, `u32`, ...).
    pub pixel_type: String,
    /// Distinct non-zero ids (gaps between ids are fine).
    pub objects: usize,
    /// The largest id.
    pub max_id: u32,
    /// Object sizes in pixels.
    pub sizes: Option<Distribution>,
    /// Objects below the minimum object size.
    pub small_objects: usize,
    /// Ids made of several 8-connected pieces.
    pub multi_piece_objects: usize,
    /// Objects touching the image border.
    pub border_objects: usize,
}

/// Objects against their surroundings, in normalised intensity (0 = the lower percentile,
/// 1 = the upper one). Brightfield objects are darker: `difference` > 0.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Contrast {
    /// Mean over the object pixels.
    pub object_mean: f64,
    /// Mean over the ring: background pixels within `ring_width` pixels (chessboard distance)
    /// of an object.
    pub ring_mean: f64,
    /// `ring_mean - object_mean`: positive when the objects are darker.
    pub difference: f64,
    /// Object pixels.
    pub object_pixels: u64,
    /// Ring pixels.
    pub ring_pixels: u64,
}

/// A summary of a set of numbers (quartiles as numpy's linear percentiles).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    /// How many numbers.
    pub count: usize,
    /// The smallest.
    pub min: f64,
    /// The 25th percentile.
    pub q1: f64,
    /// The median.
    pub median: f64,
    /// The 75th percentile.
    pub q3: f64,
    /// The largest.
    pub max: f64,
}

impl Distribution {
    /// The summary of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Distribution> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let k = pos.floor() as usize;
            let frac = pos - k as f64;
            if k + 1 < v.len() {
                v[k] + frac * (v[k + 1] - v[k])
            } else {
                v[k]
            }
        };
        Some(Distribution {
            count: v.len(),
            min: v[0],
            q1: q(0.25),
            median: q(0.5),
            q3: q(0.75),
            max: v[v.len() - 1],
        })
    }
}

/// Everything the check learnt about one stem: its files and what they hold. Parts that could
/// not be read (or need both files when one is missing) are `None`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageCheck {
    /// The file stem shared by image and label image.
    pub stem: String,
    /// The image file.
    pub image: Option<PathBuf>,
    /// The label file.
    pub labels: Option<PathBuf>,
    /// The image's content.
    pub image_stats: Option<ImageStats>,
    /// The label image's content.
    pub label_stats: Option<LabelStats>,
    /// Objects against their surroundings.
    pub contrast: Option<Contrast>,
    /// Patch positions the sampler accepts.
    pub patches: Option<PatchPositions>,
}

/// The dataset's numbers in one place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckSummary {
    /// Stems with both an image and a label image.
    pub pairs: usize,
    /// Image files.
    pub images: usize,
    /// Label files.
    pub labels: usize,
    /// Findings by severity.
    pub errors: usize,
    /// See `errors`.
    pub warnings: usize,
    /// See `errors`.
    pub notes: usize,
    /// Images per bit depth (`u8`, `u16`).
    pub bit_depths: BTreeMap<String, usize>,
    /// Images per size (`ROWSxCOLS`).
    pub shapes: BTreeMap<String, usize>,
    /// Objects in all label images.
    pub objects: usize,
    /// Sizes of all objects, in pixels.
    pub object_sizes: Option<Distribution>,
    /// Objects per label image.
    pub objects_per_image: Option<Distribution>,
    /// Objects below the minimum size.
    pub small_objects: usize,
    /// Ids in several pieces.
    pub multi_piece_objects: usize,
    /// Objects touching the border.
    pub border_objects: usize,
    /// Label images without objects.
    pub empty_label_images: usize,
    /// Images whose objects are brighter than their surroundings.
    pub bright_object_images: usize,
    /// Their share among the images whose contrast could be measured.
    pub bright_object_share: Option<f64>,
    /// `ring_mean - object_mean` over the images (positive: dark objects).
    pub contrast: Option<Distribution>,
    /// Images no patch of which holds enough objects.
    pub images_without_valid_patch: usize,
    /// Share of valid patch positions over the images.
    pub valid_patch_share: Option<Distribution>,
    /// The intensities the normalisation maps to 0, over the images.
    pub lower_bounds: Option<Distribution>,
    /// The intensities the normalisation maps to 1, over the images.
    pub upper_bounds: Option<Distribution>,
    /// `(upper - lower) / depth maximum` over the images: the share of its bit depth's scale
    /// an image's normalisation range spans.
    pub relative_ranges: Option<Distribution>,
}

/// The result of [`check_folders`]: per-stem records, findings, and a summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataCheck {
    /// The image folder.
    pub images_dir: PathBuf,
    /// The label folder.
    pub labels_dir: PathBuf,
    /// What the data was checked against.
    pub options: CheckOptions,
    /// The numbers.
    pub summary: CheckSummary,
    /// Every finding, errors first, then warnings, then notes; within a severity by kind and
    /// file.
    pub findings: Vec<Finding>,
    /// One record per stem, sorted by stem.
    pub images: Vec<ImageCheck>,
}

impl DataCheck {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.summary.errors > 0
    }

    /// The findings of one kind.
    pub fn findings_of(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }
}

/// Checks the image/label pairs of two folders (paired by file stem, as training pairs them)
/// against the training settings `options`, reading every file once; `progress` counts stems.
///
/// Problems of the data are findings in the report, all of them. Errors are only what stops
/// the check itself: a folder that cannot be listed ([`DataError::Io`]) and invalid options
/// ([`DataError::InvalidParameter`]).
///
/// ```
/// use sam_data::{check_folders, synthesize, write_image, write_labels, CheckOptions, FindingKind, SynthConfig};
///
/// let dir = tempfile::tempdir()?;
/// let (images, labels) = (dir.path().join("images"), dir.path().join("labels"));
/// std::fs::create_dir_all(&images)?;
/// std::fs::create_dir_all(&labels)?;
/// let s = synthesize(&SynthConfig { size: 96, ..SynthConfig::default() }, 1);
/// write_image(images.join("a.tif"), &s.image)?;
/// write_labels(labels.join("a.tif"), &s.labels)?;
/// write_image(images.join("b.tif"), &s.image)?; // no labels
///
/// let mut options = CheckOptions::default();
/// options.patch.height = 64;
/// options.patch.width = 64;
/// let report = check_folders(&images, &labels, &options, &())?;
/// assert!(report.has_errors());
/// assert_eq!(report.findings_of(FindingKind::UnpairedImage).count(), 1);
/// assert!(report.images[0].contrast.as_ref().unwrap().difference > 0.0); // dark cells
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_folders(
    images_dir: impl AsRef<Path>,
    labels_dir: impl AsRef<Path>,
    options: &CheckOptions,
    progress: &dyn Progress,
) -> Result<DataCheck> {
    let (images_dir, labels_dir) = (images_dir.as_ref(), labels_dir.as_ref());
    options.normalization.validate()?;
    if options.patch.height == 0 || options.patch.width == 0 {
        return Err(DataError::InvalidParameter {
            name: "patch_shape".into(),
            reason: format!(
                "expected a patch of at least 1x1 pixels, found {}x{}",
                options.patch.height, options.patch.width
            ),
        });
    }
    let images = list_folder(images_dir)?;
    let labels = list_folder(labels_dir)?;
    let mut findings = Vec::new();
    for (listing, dir, what) in [
        (&images, images_dir, "image"),
        (&labels, labels_dir, "label"),
    ] {
        if listing.files.is_empty() {
            findings.push(Finding::new(
                Severity::Error,
                FindingKind::EmptyFolder,
                Some(dir),
                format!(
                    "{}: no {what} files (expected *.tif, *.tiff or *.png)",
                    dir.display()
                ),
            ));
        }
        for (stem, kept, other) in &listing.duplicates {
            findings.push(Finding::new(
                Severity::Error,
                FindingKind::DuplicateStem,
                Some(other),
                format!(
                    "{} and {} share the stem {stem:?}: training refuses the folder; keep one \
                     file per stem",
                    kept.display(),
                    other.display()
                ),
            ));
        }
        if !listing.ignored.is_empty() {
            let names: Vec<String> = listing
                .ignored
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            findings.push(Finding::new(
                Severity::Note,
                FindingKind::IgnoredFiles,
                Some(dir),
                format!(
                    "{}: {} file(s) not read (only *.tif, *.tiff and *.png are): {}",
                    dir.display(),
                    names.len(),
                    abbreviate(&names, 8)
                ),
            ));
        }
    }
    let mut stems: Vec<&String> = images.files.keys().chain(labels.files.keys()).collect();
    stems.sort();
    stems.dedup();
    progress.start(stems.len() as u64);
    let checked: Vec<(ImageCheck, Vec<Finding>, Vec<f64>)> = stems
        .par_iter()
        .map(|stem| {
            let out = check_stem(
                stem,
                images.files.get(*stem).map(PathBuf::as_path),
                labels.files.get(*stem).map(PathBuf::as_path),
                options,
            );
            progress.advance();
            out
        })
        .collect();
    let mut records = Vec::with_capacity(checked.len());
    let mut sizes = Vec::new();
    for (record, f, s) in checked {
        records.push(record);
        findings.extend(f);
        sizes.extend(s);
    }
    findings.extend(dataset_findings(&records, options));
    findings.sort_by(|a, b| (b.severity, a.kind, &a.file).cmp(&(a.severity, b.kind, &b.file)));
    let summary = summarise(&records, &findings, &sizes, &images, &labels);
    Ok(DataCheck {
        images_dir: images_dir.to_path_buf(),
        labels_dir: labels_dir.to_path_buf(),
        options: options.clone(),
        summary,
        findings,
        images: records,
    })
}

/// `names` joined by commas, at most `n` of them, then how many more.
fn abbreviate(names: &[String], n: usize) -> String {
    let mut s = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > n {
        s.push_str(&format!(" and {} more", names.len() - n));
    }
    s
}

/// The finding for a file that cannot be read.
fn read_failure(path: &Path, e: &DataError) -> Finding {
    let kind = match e {
        DataError::Stack { .. } => FindingKind::MultiPage,
        DataError::UnsupportedPixelType { .. }
        | DataError::FloatLabels { .. }
        | DataError::NegativeLabel { .. }
        | DataError::LabelOverflow { .. } => FindingKind::UnsupportedPixels,
        _ => FindingKind::Unreadable,
    };
    Finding::new(Severity::Error, kind, Some(path), e.to_string())
}

/// Checks one stem: its image and label files, whichever exist. Returns the record, its
/// findings, and its object sizes.
fn check_stem(
    stem: &str,
    image_path: Option<&Path>,
    labels_path: Option<&Path>,
    options: &CheckOptions,
) -> (ImageCheck, Vec<Finding>, Vec<f64>) {
    let mut findings = Vec::new();
    let mut record = ImageCheck {
        stem: stem.to_string(),
        image: image_path.map(Path::to_path_buf),
        labels: labels_path.map(Path::to_path_buf),
        image_stats: None,
        label_stats: None,
        contrast: None,
        patches: None,
    };
    match (image_path, labels_path) {
        (Some(i), None) => findings.push(Finding::new(
            Severity::Error,
            FindingKind::UnpairedImage,
            Some(i),
            format!(
                "{}: no label image of stem {stem:?} (files are paired by stem); add its \
                 labels or move the image out of the folder",
                i.display()
            ),
        )),
        (None, Some(l)) => findings.push(Finding::new(
            Severity::Error,
            FindingKind::UnpairedLabels,
            Some(l),
            format!(
                "{}: no image of stem {stem:?} (files are paired by stem); add the image or \
                 move the labels out of the folder",
                l.display()
            ),
        )),
        _ => {}
    }
    let image = image_path.and_then(|p| match read_image(p) {
        Ok(img) => Some((p, img)),
        Err(e) => {
            findings.push(read_failure(p, &e));
            None
        }
    });
    let labels = labels_path.and_then(|p| match read_labels(p) {
        Ok(l) => Some((p, l)),
        Err(e) => {
            findings.push(read_failure(p, &e));
            None
        }
    });
    let bounds = image.as_ref().map(|(path, img)| {
        let (stats, f) = image_stats(path, img, options);
        findings.extend(f);
        let b = (stats.lower_bound, stats.upper_bound);
        record.image_stats = Some(stats);
        b
    });
    let mut sizes = Vec::new();
    if let Some((path, l)) = &labels {
        let (stats, s, f) = label_stats(path, l, options);
        findings.extend(f);
        record.label_stats = Some(stats);
        sizes = s;
    }
    let same_size = match (&image, &labels) {
        (Some((ip, img)), Some((lp, l))) if img.shape() != l.shape() => {
            findings.push(Finding::new(
                Severity::Error,
                FindingKind::SizeMismatch,
                Some(lp),
                format!(
                    "{}: label image is {}x{} (rows x cols) but its image {} is {}x{}; they \
                     must have the same size",
                    lp.display(),
                    l.rows(),
                    l.cols(),
                    ip.display(),
                    img.rows(),
                    img.cols()
                ),
            ));
            false
        }
        _ => true,
    };
    if let (Some((_, l)), true) = (&labels, same_size) {
        let sampler = PatchSampler::new(options.patch.clone());
        let file = image_path.or(labels_path);
        match sampler.valid_positions(stem, l) {
            Ok(p) => {
                findings.extend(patch_findings(file, &p, &options.patch));
                record.patches = Some(p);
            }
            Err(_) => findings.push(Finding::new(
                Severity::Error,
                FindingKind::SmallerThanPatch,
                file,
                format!(
                    "{}: the image is {}x{} (rows x cols), smaller than the {}x{} training \
                     patch (`data.patch_shape`): training fails on it; use a smaller patch or \
                     remove the image",
                    file.map(|f| f.display().to_string()).unwrap_or_default(),
                    l.rows(),
                    l.cols(),
                    options.patch.height,
                    options.patch.width
                ),
            )),
        }
    }
    if let (Some((path, img)), Some((_, l)), true, Some((lo, hi))) =
        (&image, &labels, same_size, bounds)
    {
        if hi > lo {
            let c = contrast(img, l, lo, hi, options.ring_width);
            if let Some(c) = &c {
                findings.extend(contrast_findings(path, c));
            }
            record.contrast = c;
        }
    }
    (record, findings, sizes)
}

/// The numbers of an image, and its findings.
fn image_stats(path: &Path, img: &GreyImage, options: &CheckOptions) -> (ImageStats, Vec<Finding>) {
    let mut findings = Vec::new();
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    let top = img.depth.max_value();
    let mut at_top = 0u64;
    for &v in img.as_slice() {
        min = min.min(v);
        max = max.max(v);
        at_top += u64::from(v >= top);
    }
    let n = img.len().max(1) as f64;
    let (lower_bound, upper_bound) =
        normalization_bounds(img, &options.normalization).unwrap_or((0.0, 0.0));
    let pixel_type = file_info(path)
        .map(|i| i.pixel_type())
        .unwrap_or_else(|_| depth_name(img.depth).to_string());
    let stats = ImageStats {
        rows: img.rows(),
        cols: img.cols(),
        pixel_type,
        bit_depth: img.depth,
        min: if img.is_empty() { 0.0 } else { min },
        max: if img.is_empty() { 0.0 } else { max },
        saturated_share: at_top as f64 / n,
        lower_bound,
        upper_bound,
    };
    if upper_bound <= lower_bound {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::ConstantImage,
            Some(path),
            format!(
                "{}: the {}th and {}th percentiles are equal ({lower_bound}): the image \
                 normalises to all zeros; check the file",
                path.display(),
                options.normalization.lower_percentile,
                options.normalization.upper_percentile
            ),
        ));
    }
    if stats.saturated_share >= SATURATION_SHARE {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::Saturated,
            Some(path),
            format!(
                "{}: {:.1}% of the pixels are at the {}-bit maximum ({top}): overexposed; \
                 detail there is lost",
                path.display(),
                100.0 * stats.saturated_share,
                if img.depth == BitDepth::U8 { 8 } else { 16 }
            ),
        ));
    }
    if let Some((rows, cols)) = options.expected_shape {
        if img.shape() != (rows, cols) {
            findings.push(Finding::new(
                Severity::Warning,
                FindingKind::ShapeDiffers,
                Some(path),
                format!(
                    "{}: the image is {}x{} (rows x cols), not the configured {rows}x{cols} \
                     (`data.image_shape`)",
                    path.display(),
                    img.rows(),
                    img.cols()
                ),
            ));
        }
    }
    (stats, findings)
}

fn depth_name(d: BitDepth) -> &'static str {
    match d {
        BitDepth::U8 => "u8",
        BitDepth::U16 => "u16",
    }
}

/// The numbers of a label image, its object sizes, and its findings.
fn label_stats(
    path: &Path,
    l: &LabelImage,
    options: &CheckOptions,
) -> (LabelStats, Vec<f64>, Vec<Finding>) {
    let mut findings = Vec::new();
    let objects = object_stats(l);
    let min_size = options.patch.min_object_size;
    let (rows, cols) = l.shape();
    let sizes: Vec<f64> = objects.iter().map(|o| o.area as f64).collect();
    let small = objects.iter().filter(|o| o.area < min_size).count();
    let border = objects
        .iter()
        .filter(|o| {
            let [x0, y0, x1, y1] = o.bbox;
            x0 == 0 || y0 == 0 || x1 == cols || y1 == rows
        })
        .count();
    // Pieces per id: the 8-connected components training's label preparation splits ids into.
    let (pieces, n) = connected_components(l, 0u32, Connectivity::Eight);
    let mut owner = vec![0u32; n as usize + 1];
    let mut per_id: BTreeMap<u32, u32> = BTreeMap::new();
    for (&c, &id) in pieces.as_slice().iter().zip(l.as_slice()) {
        if c != 0 && owner[c as usize] == 0 {
            owner[c as usize] = id;
            *per_id.entry(id).or_default() += 1;
        }
    }
    let multi: Vec<u32> = per_id
        .iter()
        .filter(|&(_, &p)| p > 1)
        .map(|(&id, _)| id)
        .collect();
    let pixel_type = file_info(path).map(|i| i.pixel_type()).unwrap_or_default();
    let max_id = objects.last().map_or(0, |o| o.id);
    let stats = LabelStats {
        rows,
        cols,
        pixel_type: pixel_type.clone(),
        objects: objects.len(),
        max_id,
        sizes: Distribution::of(&sizes),
        small_objects: small,
        multi_piece_objects: multi.len(),
        border_objects: border,
    };
    let at = |f: &str| format!("{}: {f}", path.display());
    if objects.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::EmptyLabels,
            Some(path),
            at(
                "no objects (all pixels 0): training skips the image; annotate it or remove \
                the pair",
            ),
        ));
    }
    if small > 0 {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::SmallObjects,
            Some(path),
            at(&format!(
                "{small} of {} objects are smaller than {min_size} pixels \
                 (`data.min_object_size`) and are dropped in training (smallest: {} px)",
                objects.len(),
                sizes.iter().copied().fold(f64::INFINITY, f64::min)
            )),
        ));
    }
    if !multi.is_empty() {
        let ids: Vec<String> = multi.iter().map(u32::to_string).collect();
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::MultiPieceObjects,
            Some(path),
            at(&format!(
                "{} id(s) consist of several separate pieces (ids {}): training splits them \
                 into separate objects; give each piece its own id or join them",
                multi.len(),
                abbreviate(&ids, 10)
            )),
        ));
    }
    let full = match pixel_type.as_str() {
        "u8" => max_id == u32::from(u8::MAX),
        "u16" => max_id == u32::from(u16::MAX),
        _ => false,
    };
    if full {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::LabelTypeFull,
            Some(path),
            at(&format!(
                "the largest id {max_id} is the top of the file's {pixel_type} type: ids \
                 beyond it may have wrapped around; export the labels as u16 or u32"
            )),
        ));
    }
    (stats, sizes, findings)
}

/// Findings from an image's patch positions.
fn patch_findings(file: Option<&Path>, p: &PatchPositions, c: &PatchConfig) -> Vec<Finding> {
    let name = file.map(|f| f.display().to_string()).unwrap_or_default();
    let need = format!(
        "{} object(s) of at least {} pixels (`data.min_objects_per_patch`, \
         `data.min_object_size`)",
        c.min_objects,
        c.min_object_size.max(1)
    );
    if p.valid == 0 {
        return vec![Finding::new(
            Severity::Warning,
            FindingKind::NoValidPatch,
            file,
            format!(
                "{name}: no {}x{} patch holds {need}: training skips the image",
                c.height, c.width
            ),
        )];
    }
    let miss = p.miss_probability(c.max_attempts);
    if miss > RARE_PATCH_MISS_PROBABILITY {
        return vec![Finding::new(
            Severity::Warning,
            FindingKind::RareValidPatch,
            file,
            format!(
                "{name}: only {:.3}% of the {}x{} patch positions hold {need}: the sampler's \
                 {} random tries miss them with probability {:.2}, so training mostly skips \
                 the image",
                100.0 * p.share(),
                c.height,
                c.width,
                c.max_attempts.max(1),
                miss
            ),
        )];
    }
    Vec::new()
}

/// Objects against a ring of background around them, in normalised intensity; `None` when
/// there are no objects or no background near them.
fn contrast(img: &GreyImage, l: &LabelImage, lo: f32, hi: f32, ring: usize) -> Option<Contrast> {
    let (rows, cols) = l.shape();
    let scale = 1.0 / f64::from(hi - lo);
    let norm = |v: f32| (f64::from(v - lo) * scale).clamp(0.0, 1.0);
    // The objects dilated by `ring` pixels (a square), separably: along each row with prefix
    // counts, then down the columns with a sliding window of row counts.
    let mut across = vec![false; rows * cols];
    let mut prefix = vec![0u32; cols + 1];
    for r in 0..rows {
        let line = l.row(r);
        for c in 0..cols {
            prefix[c + 1] = prefix[c] + u32::from(line[c] != 0);
        }
        for c in 0..cols {
            let (a, b) = (c.saturating_sub(ring), (c + ring + 1).min(cols));
            across[r * cols + c] = prefix[b] > prefix[a];
        }
    }
    let mut window = vec![0u32; cols];
    let add = |window: &mut [u32], r: usize, sign: bool| {
        for (w, &a) in window.iter_mut().zip(&across[r * cols..(r + 1) * cols]) {
            if a {
                if sign {
                    *w += 1;
                } else {
                    *w -= 1;
                }
            }
        }
    };
    for r in 0..ring.min(rows) {
        add(&mut window, r, true);
    }
    let (mut in_sum, mut in_n, mut ring_sum, mut ring_n) = (0.0f64, 0u64, 0.0f64, 0u64);
    for r in 0..rows {
        if r + ring < rows {
            add(&mut window, r + ring, true);
        }
        if r > ring {
            add(&mut window, r - ring - 1, false);
        }
        let (line, pixels) = (l.row(r), img.row(r));
        for c in 0..cols {
            if line[c] != 0 {
                in_sum += norm(pixels[c]);
                in_n += 1;
            } else if window[c] > 0 {
                ring_sum += norm(pixels[c]);
                ring_n += 1;
            }
        }
    }
    if in_n == 0 || ring_n == 0 {
        return None;
    }
    let (object_mean, ring_mean) = (in_sum / in_n as f64, ring_sum / ring_n as f64);
    Some(Contrast {
        object_mean,
        ring_mean,
        difference: ring_mean - object_mean,
        object_pixels: in_n,
        ring_pixels: ring_n,
    })
}

fn contrast_findings(path: &Path, c: &Contrast) -> Option<Finding> {
    let numbers = format!(
        "objects {:.3} vs their surroundings {:.3} (normalised intensity)",
        c.object_mean, c.ring_mean
    );
    if c.difference < -CONTRAST_MARGIN {
        Some(Finding::new(
            Severity::Warning,
            FindingKind::BrightObjects,
            Some(path),
            format!(
                "{}: objects are brighter than their surroundings ({numbers}): brightfield \
                 objects are darker; an inverted image (invert it) or a fluorescence image?",
                path.display()
            ),
        ))
    } else if c.difference <= CONTRAST_MARGIN {
        Some(Finding::new(
            Severity::Warning,
            FindingKind::LowContrast,
            Some(path),
            format!(
                "{}: objects are about as bright as their surroundings ({numbers}): do the \
                 labels belong to this image?",
                path.display()
            ),
        ))
    } else {
        None
    }
}

/// Findings about the dataset as a whole.
fn dataset_findings(records: &[ImageCheck], options: &CheckOptions) -> Vec<Finding> {
    let mut findings = Vec::new();
    let with_patches: Vec<&PatchPositions> =
        records.iter().filter_map(|r| r.patches.as_ref()).collect();
    if !with_patches.is_empty() && with_patches.iter().all(|p| p.valid == 0) {
        let c = &options.patch;
        findings.push(Finding::new(
            Severity::Error,
            FindingKind::NoUsableImage,
            None,
            format!(
                "none of the {} images has a {}x{} patch with {} object(s) of at least {} \
                 pixels: training cannot draw a sample; lower `data.min_objects_per_patch` or \
                 `data.min_object_size`, or use a larger patch",
                with_patches.len(),
                c.height,
                c.width,
                c.min_objects,
                c.min_object_size.max(1)
            ),
        ));
    }
    let measured: Vec<&Contrast> = records.iter().filter_map(|r| r.contrast.as_ref()).collect();
    let bright = measured
        .iter()
        .filter(|c| c.difference < -CONTRAST_MARGIN)
        .count();
    if measured.len() >= 2 && 2 * bright > measured.len() {
        findings.push(Finding::new(
            Severity::Warning,
            FindingKind::MostlyBrightObjects,
            None,
            format!(
                "{bright} of {} images have objects brighter than their surroundings: \
                 sam_trainer expects brightfield images with dark objects; invert inverted \
                 images, and do not train on fluorescence images with this setup",
                measured.len()
            ),
        ));
    }
    let labels: Vec<&LabelStats> = records
        .iter()
        .filter_map(|r| r.label_stats.as_ref())
        .collect();
    let border: usize = labels.iter().map(|s| s.border_objects).sum();
    if border > 0 {
        findings.push(Finding::new(
            Severity::Note,
            FindingKind::BorderObjects,
            None,
            format!(
                "{border} of {} objects, in {} of {} label images, touch the image border \
                 (cut-off cells; per image in `label_stats.border_objects`)",
                labels.iter().map(|s| s.objects).sum::<usize>(),
                labels.iter().filter(|s| s.border_objects > 0).count(),
                labels.len()
            ),
        ));
    }
    let stats: Vec<(&ImageCheck, &ImageStats)> = records
        .iter()
        .filter_map(|r| r.image_stats.as_ref().map(|s| (r, s)))
        .collect();
    let depths: std::collections::BTreeSet<&str> =
        stats.iter().map(|(_, s)| depth_name(s.bit_depth)).collect();
    if depths.len() > 1 {
        findings.push(Finding::new(
            Severity::Note,
            FindingKind::MixedBitDepths,
            None,
            format!(
                "images of several bit depths ({}): the percentile normalisation evens them \
                 out",
                depths.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let ranges: Vec<f64> = stats
        .iter()
        .map(|(_, s)| relative_range(s))
        .filter(|r| *r > 0.0)
        .collect();
    if ranges.len() >= 3 {
        let median = Distribution::of(&ranges).map_or(0.0, |d| d.median);
        for (r, s) in &stats {
            let rel = relative_range(s);
            if rel > 0.0 && rel * RANGE_OUTLIER_FACTOR < median {
                let file = r.image.as_deref();
                findings.push(Finding::new(
                    Severity::Warning,
                    FindingKind::NormalizationOutlier,
                    file,
                    format!(
                        "{}: its normalisation range {}..{} spans {:.2}% of the {} scale, the \
                         median image's {:.2}%: an underexposed or low-contrast image, whose \
                         noise the normalisation amplifies",
                        file.map(|f| f.display().to_string()).unwrap_or_default(),
                        s.lower_bound,
                        s.upper_bound,
                        100.0 * rel,
                        depth_name(s.bit_depth),
                        100.0 * median
                    ),
                ));
            }
        }
    }
    findings
}

fn relative_range(s: &ImageStats) -> f64 {
    f64::from(s.upper_bound - s.lower_bound) / f64::from(s.bit_depth.max_value())
}

fn summarise(
    records: &[ImageCheck],
    findings: &[Finding],
    sizes: &[f64],
    images: &crate::io::Listing,
    labels: &crate::io::Listing,
) -> CheckSummary {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let image_stats: Vec<&ImageStats> = records
        .iter()
        .filter_map(|r| r.image_stats.as_ref())
        .collect();
    let label_stats: Vec<&LabelStats> = records
        .iter()
        .filter_map(|r| r.label_stats.as_ref())
        .collect();
    let mut bit_depths = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for s in &image_stats {
        *bit_depths
            .entry(depth_name(s.bit_depth).to_string())
            .or_default() += 1;
        *shapes.entry(format!("{}x{}", s.rows, s.cols)).or_default() += 1;
    }
    let contrasts: Vec<f64> = records
        .iter()
        .filter_map(|r| r.contrast.as_ref().map(|c| c.difference))
        .collect();
    let bright = contrasts.iter().filter(|&&d| d < -CONTRAST_MARGIN).count();
    let patches: Vec<&PatchPositions> = records.iter().filter_map(|r| r.patches.as_ref()).collect();
    let of = |v: Vec<f64>| Distribution::of(&v);
    CheckSummary {
        pairs: images
            .files
            .keys()
            .filter(|k| labels.files.contains_key(*k))
            .count(),
        images: images.files.len(),
        labels: labels.files.len(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        notes: count(Severity::Note),
        bit_depths,
        shapes,
        objects: label_stats.iter().map(|s| s.objects).sum(),
        object_sizes: Distribution::of(sizes),
        objects_per_image: of(label_stats.iter().map(|s| s.objects as f64).collect()),
        small_objects: label_stats.iter().map(|s| s.small_objects).sum(),
        multi_piece_objects: label_stats.iter().map(|s| s.multi_piece_objects).sum(),
        border_objects: label_stats.iter().map(|s| s.border_objects).sum(),
        empty_label_images: label_stats.iter().filter(|s| s.objects == 0).count(),
        bright_object_images: bright,
        bright_object_share: (!contrasts.is_empty())
            .then(|| bright as f64 / contrasts.len() as f64),
        contrast: Distribution::of(&contrasts),
        images_without_valid_patch: patches.iter().filter(|p| p.valid == 0).count(),
        valid_patch_share: of(patches.iter().map(|p| p.share()).collect()),
        lower_bounds: of(image_stats
            .iter()
            .map(|s| f64::from(s.lower_bound))
            .collect()),
        upper_bounds: of(image_stats
            .iter()
            .map(|s| f64::from(s.upper_bound))
            .collect()),
        relative_ranges: of(image_stats.iter().map(|s| relative_range(s)).collect()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_background_within_the_ring_width() {
        // 10x10: a 2x2 object at rows/cols 4..6, a 1x1 object in the corner (0, 0).
        let mut l = LabelImage::zeros(10, 10);
        for (r, c) in [(4, 4), (4, 5), (5, 4), (5, 5)] {
            l.set(r, c, 3);
        }
        l.set(0, 0, 9);
        let mut img = GreyImage::filled(10, 10, BitDepth::U8, 100.0);
        for r in 0..10usize {
            for c in 0..10usize {
                let v = if l.get(r, c) != 0 {
                    20.0
                } else if (3..7).contains(&r) && (3..7).contains(&c) {
                    80.0 // the middle object's ring
                } else if r <= 1 && c <= 1 {
                    40.0 // the corner object's ring (clipped by the border)
                } else {
                    100.0
                };
                img.pixels.set(r, c, v);
            }
        }
        // width 1: 12 ring pixels around the middle object, 3 around the corner one
        let c = contrast(&img, &l, 0.0, 100.0, 1).unwrap();
        assert_eq!((c.object_pixels, c.ring_pixels), (5, 15));
        assert!((c.object_mean - 0.2).abs() < 1e-12, "{c:?}");
        let ring = (12.0 * 0.8 + 3.0 * 0.4) / 15.0;
        assert!((c.ring_mean - ring).abs() < 1e-12, "{c:?}");
        assert!((c.difference - (ring - 0.2)).abs() < 1e-12);
        // width 2: 6x6 - 4 around the middle, 3x3 - 1 in the corner, (2, 2) in both
        let c = contrast(&img, &l, 0.0, 100.0, 2).unwrap();
        assert_eq!(c.ring_pixels, 32 + 8 - 1);
        // values clip to [0, 1] with the bounds
        let c = contrast(&img, &l, 30.0, 50.0, 1).unwrap();
        assert_eq!(c.object_mean, 0.0);
        // no objects: nothing to compare
        assert!(contrast(&img, &LabelImage::zeros(10, 10), 0.0, 100.0, 1).is_none());
    }

    #[test]
    fn distributions_use_numpy_percentiles() {
        // np.percentile([1, 2, 3, 4, 10], [25, 50, 75]) = [2, 3, 4]
        let d = Distribution::of(&[10.0, 3.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!(
            (d.count, d.min, d.q1, d.median, d.q3, d.max),
            (5, 1.0, 2.0, 3.0, 4.0, 10.0)
        );
        // np.percentile([1, 2], 25) = 1.25
        assert_eq!(Distribution::of(&[2.0, 1.0]).unwrap().q1, 1.25);
        assert!(Distribution::of(&[]).is_none());
    }

    /// A temporary folder with empty `images/` and `labels/` folders in it.
    fn folders() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = (dir.path().join("images"), dir.path().join("labels"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        (dir, images, labels)
    }

    /// The default options with a 16x16 patch.
    fn small_patch_options() -> CheckOptions {
        CheckOptions {
            patch: PatchConfig {
                height: 16,
                width: 16,
                ..PatchConfig::default()
            },
            ..CheckOptions::default()
        }
    }

    /// A u8 label file whose largest id is 255, an overexposed image, and an image whose range
    /// is far below the others'.
    #[test]
    fn full_label_types_saturation_and_range_outliers_are_warned() {
        let (_dir, images, labels) = folders();
        let mut ids = vec![0u8; 32 * 32];
        for (i, v) in ids.iter_mut().enumerate() {
            if (8..20).contains(&(i / 32)) && (8..20).contains(&(i % 32)) {
                *v = if i % 32 < 14 { 255 } else { 17 };
            }
        }
        let dark = |i: usize| ids[i] != 0;
        /// A stem, the objects' intensity and the background's by pixel index.
        type Image = (&'static str, f32, fn(usize) -> f32);
        let images_of: [Image; 4] = [
            ("a", 40.0, |i| 200.0 + (i % 7) as f32),
            ("b", 45.0, |i| 190.0 + (i % 5) as f32),
            // a fifth of the background at 255
            ("c", 40.0, |i| if i % 5 == 0 { 255.0 } else { 210.0 }),
            // a narrow range: 100..110
            ("d", 100.0, |i| 108.0 + (i % 3) as f32),
        ];
        for (stem, object, background) in images_of {
            let data = (0..32 * 32)
                .map(|i| if dark(i) { object } else { background(i) })
                .collect();
            let grey = GreyImage::from_vec(32, 32, BitDepth::U8, data).unwrap();
            crate::io::write_image(images.join(format!("{stem}.tif")), &grey).unwrap();
            image::GrayImage::from_raw(32, 32, ids.clone())
                .unwrap()
                .save(labels.join(format!("{stem}.png")))
                .unwrap();
        }
        let r = check_folders(&images, &labels, &small_patch_options(), &()).unwrap();
        let of = |kind| -> Vec<String> {
            r.findings_of(kind)
                .map(|f| {
                    f.file
                        .as_ref()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into()
                })
                .collect()
        };
        assert_eq!(
            of(FindingKind::LabelTypeFull),
            ["a.png", "b.png", "c.png", "d.png"]
        );
        assert_eq!(of(FindingKind::Saturated), ["c.tif"]);
        assert_eq!(of(FindingKind::NormalizationOutlier), ["d.tif"]);
        assert_eq!(
            r.summary.errors + r.summary.warnings,
            6,
            "{:#?}",
            r.findings
        );
        let a = r.images[0].label_stats.as_ref().unwrap();
        assert_eq!((a.pixel_type.as_str(), a.max_id, a.objects), ("u8", 255, 2));
        let at_top = (0..32 * 32).filter(|&i| !dark(i) && i % 5 == 0).count();
        assert_eq!(
            r.images[2].image_stats.as_ref().unwrap().saturated_share,
            at_top as f64 / 1024.0
        );
    }

    #[test]
    fn findings_sort_errors_first() {
        let (dir, images, labels) = folders();
        let l = LabelImage::zeros(40, 40);
        crate::io::write_image(
            images.join("a.tif"),
            &GreyImage::filled(40, 40, BitDepth::U8, 9.0),
        )
        .unwrap();
        crate::io::write_labels(labels.join("a.tif"), &l).unwrap();
        crate::io::write_labels(labels.join("b.tif"), &l).unwrap();
        let options = small_patch_options();
        let r = check_folders(&images, &labels, &options, &()).unwrap();
        let order: Vec<(Severity, FindingKind)> =
            r.findings.iter().map(|f| (f.severity, f.kind)).collect();
        assert_eq!(
            order,
            [
                (Severity::Error, FindingKind::UnpairedLabels),
                (Severity::Error, FindingKind::NoUsableImage),
                (Severity::Warning, FindingKind::EmptyLabels),
                (Severity::Warning, FindingKind::EmptyLabels),
                (Severity::Warning, FindingKind::NoValidPatch),
                (Severity::Warning, FindingKind::NoValidPatch),
                (Severity::Warning, FindingKind::ConstantImage),
            ]
        );
        assert_eq!(
            (r.summary.errors, r.summary.warnings, r.summary.notes),
            (2, 5, 0)
        );
        // a missing folder stops the check
        let err = check_folders(dir.path().join("x"), &labels, &options, &()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }
}
