//! sam-eval: instance-segmentation metrics with micro_sam's numbers, and label-folder evaluation.
//!
//! The metrics compare a ground-truth and a predicted instance label image (0 = background,
//! any other value an object id; the two images may use unrelated ids):
//!
//! - [`Contingency`] counts, in one pass over the pixels, the overlap of every overlapping
//!   ground-truth/prediction pair (a sparse table; never objects × objects × pixels) and their IoU;
//! - [`Contingency::match_at`] matches objects one to one at an IoU threshold (maximum number
//!   of pairs, then maximum total IoU — the same true-positive counts as elf's Hungarian matching);
//! - [`ImageScores`] holds SA(t) = TP / (TP + FP + FN) at t = 0.50, 0.55, …, 0.95
//!   ([`SA_THRESHOLDS`], bit-identical to `numpy.arange(0.5, 1.0, 0.05)`), mSA, SA50, SA75,
//!   precision, recall and F1 at 0.5, the mean IoU of matched pairs and foreground Dice;
//! - [`Summary`] aggregates images as micro_sam does (mean of per-image scores) and pooled
//!   (scores of the summed counts).
//!
//! Scores follow elf's `mean_segmentation_accuracy` and `matching` (which micro_sam uses):
//! when TP = 0 every count-based score is 0, also when both images are empty. Foreground
//! Dice of two empty images is 1.
//!
//! [`evaluate_label_dirs`] scores a folder of predictions against a folder of ground truth
//! (paired by file stem) and writes `per_image.csv`, `summary.csv` (micro_sam's columns
//! [`SUMMARY_COLUMNS`]), `summary_pooled.csv`, `report.json`, overlay pictures and
//! `report.html` ([`write_html_report`]: the page a person reads). Files are
//! read and drawn with sam-data (`read_labels`, `read_image`, `write_overlay_png`).
//!
//! With the `model` feature, [`evaluate_model`] scores a SAM checkpoint (through sam-infer):
//! automatic instance segmentation of test images (AIS or AMG), optionally with its
//! thresholds chosen by a grid search on validation images ([`GridValues`]), and iterative
//! prompting ([`IterativeOptions`]) with one row of scores per round; behind
//! `sam-eval model`. [`compare_to_baseline`] scores a model and its [`Baseline`] (the model
//! fine-tuning started from) on the same images with the same parameters and writes the
//! summaries side by side and the per-image changes, the images that got worse first. Without that feature this crate does not link libtorch.
//!
//! # Example
//! ```
//! use sam_eval::{score_image, Summary};
//!
//! // 1×6 images. Ground truth: object 1 (3 px), object 2 (2 px).
//! // Prediction: object 8 covers object 1 exactly; object 9 covers one pixel of object 2.
//! let gt = [1, 1, 1, 0, 2, 2];
//! let pred = [8, 8, 8, 0, 9, 0];
//! let s = score_image(&gt, &pred).unwrap();
//! // IoU 1 and 1/2: at t = 0.5 both match; above 0.5 only the first.
//! assert_eq!(s.sa50, 1.0);
//! assert_eq!(s.sa75, 1.0 / 3.0);
//! assert!((s.msa - (1.0 + 9.0 / 3.0) / 10.0).abs() < 1e-12);
//! assert_eq!(s.precision, 1.0);
//! let summary = Summary::from_images(&[s]).unwrap();
//! assert_eq!(summary.mean_per_image.sa50, 1.0);
//! ```
#![deny(missing_docs)]

pub use crate::contingency::{Contingency, OverlapPair};
pub use crate::error::{EvalError, MetricError};
pub use crate::html::{write_html_report, ComparedModel, Comparison, HtmlContext, ImageDelta};
pub use crate::labels::{
    evaluate_label_dirs, label_extensions, ImageRecord, LabelEvalOptions, LabelReport, Progress,
    GT_COLOUR, PRED_COLOUR, SUMMARY_COLUMNS,
};
pub use crate::matching::MatchedPair;
pub use crate::metrics::{
    score_image, CountMetric, Counts, ImageScores, Precision, Recall, SegmentationAccuracy, F1,
    INDEX_SA50, INDEX_SA75, SA_THRESHOLDS,
};
pub use crate::summary::{Summary, SummaryScores};

#[cfg(feature = "model")]
pub use crate::comparison::{
    check_comparison, compare_to_baseline, existing_comparison, image_deltas, remove_comparison,
    Baseline, ComparisonReport, IterativeDelta, MetricDelta, PerImageDelta, BASELINE_DIR,
    COMPARISON_FILES, COMPARISON_OVERLAY_DIR,
};
#[cfg(feature = "model")]
pub use crate::grid::{
    choose, score_ais_grid, score_amg_grid, score_apg_grid, AisGridParams, AmgGridParams,
    ApgGridParams, GridParams, GridPoint, GridSearchReport, GridValues,
};
#[cfg(feature = "model")]
pub use crate::iterative::{iterative_prompting_image, IterativeOptions, PromptStart};
#[cfg(feature = "model")]
pub use crate::model_eval::{
    evaluate_model, existing_evaluation, GridSearchOptions, ImageSource, IterativeReport,
    ModelEvalOptions, ModelProgress, ModelReport, MODEL_EVAL_FILES,
};

mod contingency;
mod error;
mod html;
mod hungarian;
mod io;
mod labels;
mod matching;
mod metrics;
mod summary;

#[cfg(feature = "model")]
mod comparison;
#[cfg(feature = "model")]
mod grid;
#[cfg(feature = "model")]
mod iterative;
#[cfg(feature = "model")]
mod model_eval;
