//! Evaluation of a folder of predicted label images against a folder of ground-truth labels.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::EvalError;
use sam_data::{
    connected_components, read_image, read_labels, write_overlay_png, Connectivity, LabelImage,
};

use crate::io::{find_by_stem, is_label_file, LABEL_EXTENSIONS};
use crate::metrics::{score_image, ImageScores, SA_THRESHOLDS};
use crate::summary::{Summary, SummaryScores};

/// micro_sam's summary columns, in its order (`run_evaluation` in `micro_sam.evaluation`).
pub const SUMMARY_COLUMNS: [&str; 6] = ["mSA", "SA50", "SA75", "Precision", "Recall", "F1 Score"];

/// Colour of ground-truth outlines in overlay pictures.
pub const GT_COLOUR: [u8; 3] = [0, 255, 0];
/// Colour of predicted outlines in overlay pictures (drawn over the ground truth).
pub const PRED_COLOUR: [u8; 3] = [255, 0, 255];

/// What [`evaluate_label_dirs`] reads and writes.
#[derive(Debug, Clone)]
pub struct LabelEvalOptions {
    /// Ground-truth label images (`.tif`, `.tiff`, `.png`).
    pub gt_dir: PathBuf,
    /// Predicted label images, paired with the ground truth by file stem.
    pub pred_dir: PathBuf,
    /// Where `per_image.csv`, `summary.csv`, `summary_pooled.csv`, `report.json` and
    /// `overlays/` are written (created if missing).
    pub out_dir: PathBuf,
    /// Brightfield images (paired by stem) for the overlay pictures; no overlays when `None`.
    pub image_dir: Option<PathBuf>,
    /// Score a ground-truth image without prediction as an empty prediction instead of failing.
    pub missing_as_empty: bool,
    /// Relabel the ground truth into connected components (equal-valued, 8-connected) before
    /// scoring, as micro_sam's `run_evaluation` does (`label(gt)`); an id painted in several
    /// separate pieces then counts as several objects. Off: every id is one object.
    pub relabel_gt: bool,
    /// Number of lowest-mSA images that get an overlay picture.
    pub worst: usize,
}

/// Progress of [`evaluate_label_dirs`], reported to the caller's callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Scoring starts; `total` image pairs.
    Scoring {
        /// Number of image pairs.
        total: usize,
    },
    /// One image pair was scored.
    Scored,
    /// Overlay drawing starts; `total` pictures.
    Drawing {
        /// Number of overlays.
        total: usize,
    },
    /// One overlay was written.
    Drawn,
}

/// The scores of one image pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRecord {
    /// The file stem shared by ground truth and prediction.
    pub name: String,
    /// Ground-truth file.
    pub gt: PathBuf,
    /// Prediction file; `None` when it was missing and scored as empty.
    pub pred: Option<PathBuf>,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Every score of the pair.
    pub scores: ImageScores,
}

/// Everything an evaluation found; also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelReport {
    /// The ground-truth folder.
    pub gt_dir: PathBuf,
    /// The prediction folder.
    pub pred_dir: PathBuf,
    /// The IoU thresholds of the SA columns.
    pub thresholds: Vec<f64>,
    /// Whether missing predictions were scored as empty.
    pub missing_as_empty: bool,
    /// Whether the ground truth was relabelled into connected components.
    pub relabel_gt: bool,
    /// Stems of ground-truth images that had no prediction (only with `missing_as_empty`).
    pub missing_predictions: Vec<String>,
    /// Prediction files without a ground truth of the same stem (ignored).
    pub unpaired_predictions: Vec<PathBuf>,
    /// Aggregates over all images.
    pub summary: Summary,
    /// Stems of the lowest-mSA images, worst first.
    pub worst: Vec<String>,
    /// Overlay pictures written.
    pub overlays: Vec<PathBuf>,
    /// Per-image scores, sorted by name.
    pub images: Vec<ImageRecord>,
}

/// `p` with symlinks resolved in its longest existing ancestor (the rest kept as written).
fn real_path(p: &Path) -> PathBuf {
    let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut tail = Vec::new();
    let mut head = absolute.as_path();
    loop {
        if let Ok(real) = fs::canonicalize(head) {
            return tail.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses folders that cannot be meant: predictions that are the ground truth (every image
/// would score 1.0), reports written into the ground truth or the brightfield images (raw
/// data is never written to), an output that is a file.
fn check_folders(opts: &LabelEvalOptions) -> Result<(), EvalError> {
    let (gt, pred, out) = (
        real_path(&opts.gt_dir),
        real_path(&opts.pred_dir),
        real_path(&opts.out_dir),
    );
    if gt == pred {
        return Err(EvalError::Folders(format!(
            "the ground truth ({}) and the predictions ({}) are the same folder: every image \
             would be scored against itself (mSA 1.0); give the folder of the predicted labels",
            opts.gt_dir.display(),
            opts.pred_dir.display()
        )));
    }
    if opts.out_dir.exists() && !opts.out_dir.is_dir() {
        return Err(EvalError::Folders(format!(
            "the output {} is a file; give a folder (created when missing)",
            opts.out_dir.display()
        )));
    }
    let raw = [
        Some(("ground-truth", &opts.gt_dir)),
        opts.image_dir.as_ref().map(|d| ("image", d)),
    ];
    for (what, dir) in raw.into_iter().flatten() {
        let real = real_path(dir);
        if out.starts_with(&real) {
            let relation = if out == real { "is" } else { "lies inside" };
            return Err(EvalError::Folders(format!(
                "the output {} {relation} the {what} folder {}: reports are never written \
                 into the data; choose a folder outside it",
                opts.out_dir.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Scores every ground-truth label image in `opts.gt_dir` against the prediction with the same
/// stem in `opts.pred_dir` and writes the reports into `opts.out_dir`:
///
/// - `per_image.csv`: one row per image (counts, SA at every threshold, precision, recall, F1,
///   TP/FP/FN at 0.5, mean matched IoU, foreground Dice);
/// - `summary.csv`: micro_sam's columns [`SUMMARY_COLUMNS`], mean of the per-image scores;
/// - `summary_pooled.csv`: the same columns from counts pooled over all images;
/// - `report.json`: the whole [`LabelReport`];
/// - `overlays/<stem>.png` for the `opts.worst` lowest-mSA images when `opts.image_dir` is set;
/// - `report.html`: summary, SA curve, sortable per-image table and the overlays on one page
///   ([`crate::write_html_report`]).
///
/// Images are read and scored in parallel (rayon); `progress` is called from worker threads.
///
/// # Errors
/// A folder that does not exist, an empty ground-truth folder, two files with one stem, a
/// missing prediction (unless `missing_as_empty`), a size mismatch, a label image that is not
/// single-channel with non-negative integer ids, or an output that cannot be written; every
/// error names the file.
pub fn evaluate_label_dirs(
    opts: &LabelEvalOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<LabelReport, EvalError> {
    check_dir("ground-truth", &opts.gt_dir)?;
    check_dir("prediction", &opts.pred_dir)?;
    if let Some(dir) = &opts.image_dir {
        check_dir("image", dir)?;
    }
    check_folders(opts)?;
    let gts = label_files_by_stem(&opts.gt_dir)?;
    if gts.is_empty() {
        return Err(EvalError::NoLabels(opts.gt_dir.clone()));
    }
    let preds = label_files_by_stem(&opts.pred_dir)?;

    let mut pairs = Vec::with_capacity(gts.len());
    let mut missing_predictions = Vec::new();
    for (stem, gt) in &gts {
        match preds.get(stem) {
            Some(pred) => pairs.push((stem.clone(), gt.clone(), Some(pred.clone()))),
            None if opts.missing_as_empty => {
                missing_predictions.push(stem.clone());
                pairs.push((stem.clone(), gt.clone(), None));
            }
            None => {
                return Err(EvalError::MissingPrediction {
                    gt: gt.clone(),
                    stem: stem.clone(),
                    pred_dir: opts.pred_dir.clone(),
                })
            }
        }
    }
    let unpaired_predictions = preds
        .iter()
        .filter(|(stem, _)| !gts.contains_key(*stem))
        .map(|(_, p)| p.clone())
        .collect();

    progress(Progress::Scoring { total: pairs.len() });
    let images: Vec<ImageRecord> = pairs
        .par_iter()
        .map(|(name, gt_path, pred_path)| {
            let (gt, pred) = read_pair(gt_path, pred_path.as_deref(), opts.relabel_gt)?;
            let scores = score_image(gt.as_slice(), pred.as_slice())?;
            progress(Progress::Scored);
            Ok(ImageRecord {
                name: name.clone(),
                gt: gt_path.clone(),
                pred: pred_path.clone(),
                width: gt.cols(),
                height: gt.rows(),
                scores,
            })
        })
        .collect::<Result<_, EvalError>>()?;

    let summary =
        Summary::from_images(&images.iter().map(|r| r.scores.clone()).collect::<Vec<_>>())?;
    let worst = worst_images(&images, opts.worst);

    fs::create_dir_all(&opts.out_dir).map_err(|source| EvalError::Io {
        action: "cannot create output folder",
        path: opts.out_dir.clone(),
        source,
    })?;
    let overlays = match &opts.image_dir {
        Some(image_dir) if !worst.is_empty() => {
            draw_overlays(&images, &worst, image_dir, opts, progress)?
        }
        _ => Vec::new(),
    };

    let report = LabelReport {
        gt_dir: opts.gt_dir.clone(),
        pred_dir: opts.pred_dir.clone(),
        thresholds: SA_THRESHOLDS.to_vec(),
        missing_as_empty: opts.missing_as_empty,
        relabel_gt: opts.relabel_gt,
        missing_predictions,
        unpaired_predictions,
        summary,
        worst: worst.iter().map(|&i| images[i].name.clone()).collect(),
        overlays,
        images,
    };
    write_per_image_csv(&opts.out_dir.join("per_image.csv"), &report.images)?;
    write_summary_csv(
        &opts.out_dir.join("summary.csv"),
        &report.summary.mean_per_image,
    )?;
    write_summary_csv(
        &opts.out_dir.join("summary_pooled.csv"),
        &report.summary.pooled,
    )?;
    let json_path = opts.out_dir.join("report.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| EvalError::Write {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&json_path, json).map_err(|source| EvalError::Io {
        action: "cannot write",
        path: json_path.clone(),
        source,
    })?;
    let context = crate::html::HtmlContext {
        title: format!("Evaluation of {}", opts.pred_dir.display()),
        ..Default::default()
    };
    crate::html::write_html_report(&opts.out_dir.join("report.html"), &report, &context)?;
    Ok(report)
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), EvalError> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(EvalError::NotADir {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Label files of `dir` keyed by stem (sorted); two files with one stem are an error.
fn label_files_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>, EvalError> {
    let entries = fs::read_dir(dir).map_err(|source| EvalError::Io {
        action: "cannot list",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| EvalError::Io {
            action: "cannot list",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_file() && is_label_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in files {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(first) = by_stem.get(&stem) {
            return Err(EvalError::DuplicateStem {
                first: first.clone(),
                second: path,
            });
        }
        by_stem.insert(stem, path);
    }
    Ok(by_stem)
}

/// Reads a ground truth and its prediction (all background when `pred` is `None`).
fn read_pair(
    gt_path: &Path,
    pred_path: Option<&Path>,
    relabel_gt: bool,
) -> Result<(LabelImage, LabelImage), EvalError> {
    let mut gt = read_labels(gt_path)?;
    if relabel_gt {
        gt = connected_components(&gt, 0, Connectivity::Eight).0;
    }
    let pred = match pred_path {
        Some(p) => {
            let pred = read_labels(p)?;
            if pred.shape() != gt.shape() {
                return Err(EvalError::SizeMismatch {
                    a: gt_path.to_path_buf(),
                    a_shape: gt.shape(),
                    b: p.to_path_buf(),
                    b_shape: pred.shape(),
                });
            }
            pred
        }
        None => LabelImage::zeros(gt.rows(), gt.cols()),
    };
    Ok((gt, pred))
}

/// Indices of the `n` lowest-mSA images, worst first (ties by name).
fn worst_images(images: &[ImageRecord], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by(|&a, &b| {
        images[a]
            .scores
            .msa
            .total_cmp(&images[b].scores.msa)
            .then_with(|| images[a].name.cmp(&images[b].name))
    });
    order.truncate(n);
    order
}

fn draw_overlays(
    images: &[ImageRecord],
    worst: &[usize],
    image_dir: &Path,
    opts: &LabelEvalOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<PathBuf>, EvalError> {
    let relabel_gt = opts.relabel_gt;
    let overlay_dir = opts.out_dir.join("overlays");
    fs::create_dir_all(&overlay_dir).map_err(|source| EvalError::Io {
        action: "cannot create output folder",
        path: overlay_dir.clone(),
        source,
    })?;
    progress(Progress::Drawing { total: worst.len() });
    worst
        .par_iter()
        .map(|&i| {
            let record = &images[i];
            let image_path =
                find_by_stem(image_dir, &record.name).ok_or_else(|| EvalError::MissingImage {
                    gt: record.gt.clone(),
                    stem: record.name.clone(),
                    image_dir: image_dir.to_path_buf(),
                })?;
            let (gt, pred) = read_pair(&record.gt, record.pred.as_deref(), relabel_gt)?;
            let grey = read_image(&image_path)?;
            if grey.shape() != gt.shape() {
                return Err(EvalError::SizeMismatch {
                    a: record.gt.clone(),
                    a_shape: gt.shape(),
                    b: image_path,
                    b_shape: grey.shape(),
                });
            }
            let out = overlay_dir.join(format!("{}.png", record.name));
            write_overlay_png(&out, &grey, &[(&gt, GT_COLOUR), (&pred, PRED_COLOUR)])?;
            progress(Progress::Drawn);
            Ok(out)
        })
        .collect()
}

fn csv_error(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Header of `per_image.csv`.
fn per_image_header() -> Vec<String> {
    let mut h: Vec<String> = [
        "image",
        "gt_file",
        "pred_file",
        "width",
        "height",
        "n_true",
        "n_pred",
        "mSA",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    h.extend(
        SA_THRESHOLDS
            .iter()
            .map(|t| format!("SA{}", (t * 100.0).round() as u32)),
    );
    h.extend(
        [
            "Precision",
            "Recall",
            "F1 Score",
            "TP50",
            "FP50",
            "FN50",
            "mean_matched_IoU",
            "foreground_Dice",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    h
}

fn write_per_image_csv(path: &Path, images: &[ImageRecord]) -> Result<(), EvalError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| csv_error(path, e))?;
    w.write_record(per_image_header())
        .map_err(|e| csv_error(path, e))?;
    for r in images {
        let s = &r.scores;
        let mut row = vec![
            r.name.clone(),
            r.gt.display().to_string(),
            r.pred
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            r.width.to_string(),
            r.height.to_string(),
            s.n_true.to_string(),
            s.n_pred.to_string(),
            s.msa.to_string(),
        ];
        row.extend(s.sa.iter().map(f64::to_string));
        let c = s.counts[crate::metrics::INDEX_SA50];
        row.extend([
            s.precision.to_string(),
            s.recall.to_string(),
            s.f1.to_string(),
            c.tp.to_string(),
            c.fp.to_string(),
            c.fn_.to_string(),
            s.mean_matched_iou
                .map(|v| v.to_string())
                .unwrap_or_default(),
            s.foreground_dice.to_string(),
        ]);
        w.write_record(&row).map_err(|e| csv_error(path, e))?;
    }
    w.flush().map_err(|e| csv_error(path, e))
}

fn write_summary_csv(path: &Path, s: &SummaryScores) -> Result<(), EvalError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| csv_error(path, e))?;
    w.write_record(SUMMARY_COLUMNS)
        .map_err(|e| csv_error(path, e))?;
    w.write_record([s.msa, s.sa50, s.sa75, s.precision, s.recall, s.f1].map(|v| v.to_string()))
        .map_err(|e| csv_error(path, e))?;
    w.flush().map_err(|e| csv_error(path, e))
}

/// The extensions a label or image file may have (for help texts).
pub fn label_extensions() -> &'static [&'static str] {
    &LABEL_EXTENSIONS
}
