//! Aggregation of per-image scores over a set of images.

use serde::Serialize;

use crate::error::MetricError;
use crate::metrics::{
    dice, numpy_mean, CountMetric, Counts, ImageScores, Precision, Recall, SegmentationAccuracy,
    F1, INDEX_SA50, INDEX_SA75, SA_THRESHOLDS,
};

/// One set of aggregate scores (see [`Summary`] for the two ways they are aggregated).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryScores {
    /// Mean segmentation accuracy over the thresholds.
    pub msa: f64,
    /// SA at IoU 0.5.
    pub sa50: f64,
    /// SA at IoU 0.75.
    pub sa75: f64,
    /// SA at each of [`SA_THRESHOLDS`].
    pub sa: Vec<f64>,
    /// Precision at IoU 0.5.
    pub precision: f64,
    /// Recall at IoU 0.5.
    pub recall: f64,
    /// F1 at IoU 0.5.
    pub f1: f64,
    /// Mean IoU of matched pairs at 0.5; `None` when no image has a match.
    pub mean_matched_iou: Option<f64>,
    /// Foreground Dice.
    pub foreground_dice: f64,
}

/// Scores aggregated over images, two ways.
///
/// - `mean_per_image` — micro_sam's convention (`run_evaluation`): every score is computed per
///   image and then averaged, so each image weighs the same. This is what `summary.csv` holds.
///   Mean matched IoU is averaged over the images that have at least one match.
/// - `pooled` — the counts (TP, FP, FN per threshold, foreground pixels, matched IoUs) are
///   summed over all images first and the scores computed once, so each object weighs the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of images.
    pub images: usize,
    /// Mean of the per-image scores (micro_sam).
    pub mean_per_image: SummaryScores,
    /// Scores of the pooled counts.
    pub pooled: SummaryScores,
}

impl Summary {
    /// Aggregates the scores of a set of images.
    ///
    /// # Errors
    /// [`MetricError::NoImages`] when `images` is empty.
    pub fn from_images(images: &[ImageScores]) -> Result<Self, MetricError> {
        if images.is_empty() {
            return Err(MetricError::NoImages);
        }
        let mean =
            |f: &dyn Fn(&ImageScores) -> f64| numpy_mean(&images.iter().map(f).collect::<Vec<_>>());
        let matched: Vec<f64> = images.iter().filter_map(|s| s.mean_matched_iou).collect();
        let mean_per_image = SummaryScores {
            msa: mean(&|s| s.msa),
            sa50: mean(&|s| s.sa50),
            sa75: mean(&|s| s.sa75),
            sa: (0..SA_THRESHOLDS.len())
                .map(|t| mean(&|s| s.sa[t]))
                .collect(),
            precision: mean(&|s| s.precision),
            recall: mean(&|s| s.recall),
            f1: mean(&|s| s.f1),
            mean_matched_iou: (!matched.is_empty()).then(|| numpy_mean(&matched)),
            foreground_dice: mean(&|s| s.foreground_dice),
        };

        let counts: Vec<Counts> = (0..SA_THRESHOLDS.len())
            .map(|t| {
                images
                    .iter()
                    .fold(Counts::default(), |acc, s| acc + s.counts[t])
            })
            .collect();
        let sa: Vec<f64> = counts
            .iter()
            .map(|&c| SegmentationAccuracy::score(c))
            .collect();
        let at50 = counts[INDEX_SA50];
        let iou_sum: f64 = images.iter().map(|s| s.matched_iou_sum).sum();
        let sum = |f: &dyn Fn(&ImageScores) -> u64| images.iter().map(f).sum::<u64>();
        let pooled = SummaryScores {
            msa: numpy_mean(&sa),
            sa50: sa[INDEX_SA50],
            sa75: sa[INDEX_SA75],
            precision: Precision::score(at50),
            recall: Recall::score(at50),
            f1: F1::score(at50),
            mean_matched_iou: (at50.tp > 0).then(|| iou_sum / at50.tp as f64),
            foreground_dice: dice(
                sum(&|s| s.fg_both),
                sum(&|s| s.fg_true),
                sum(&|s| s.fg_pred),
            ),
            sa,
        };
        Ok(Self {
            images: images.len(),
            mean_per_image,
            pooled,
        })
    }
}
