//! Per-image instance-segmentation scores: SA at ten IoU thresholds, mSA, precision, recall,
//! F1, mean matched IoU and foreground Dice.

use serde::Serialize;

use crate::contingency::Contingency;
use crate::error::MetricError;

/// The IoU thresholds 0.50, 0.55, …, 0.95, bit for bit as `numpy.arange(0.5, 1.0, 0.05)`
/// produces them, which is what elf and micro_sam use.
///
/// numpy computes `0.5 + i * (0.55 - 0.5)`, so from 0.6 on the thresholds lie a few ulps
/// above the decimal value: an IoU of exactly 0.75 does **not** reach the "0.75" threshold
/// (0.7500000000000002). We keep these values so that our numbers equal micro_sam's.
#[allow(clippy::excessive_precision)]
pub const SA_THRESHOLDS: [f64; 10] = [
    0.5,
    0.55,
    0.6000000000000001,
    0.6500000000000001,
    0.7000000000000002,
    0.7500000000000002,
    0.8000000000000003,
    0.8500000000000003,
    0.9000000000000004,
    0.9500000000000004,
];

/// Index of the 0.5 threshold in [`SA_THRESHOLDS`] (SA50, precision, recall, F1).
pub const INDEX_SA50: usize = 0;
/// Index of the 0.75 threshold in [`SA_THRESHOLDS`] (SA75).
pub const INDEX_SA75: usize = 5;

/// Match counts at one IoU threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Matched pairs (true positives).
    pub tp: u64,
    /// Predicted objects left unmatched (false positives).
    pub fp: u64,
    /// Ground-truth objects left unmatched (false negatives).
    pub fn_: u64,
}

/// Sums two count sets (for pooling over images).
impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, other: Counts) -> Counts {
        Counts {
            tp: self.tp + other.tp,
            fp: self.fp + other.fp,
            fn_: self.fn_ + other.fn_,
        }
    }
}

/// A score computed from the match counts at one IoU threshold.
///
/// Every implementation follows elf's convention: when TP = 0 the score is 0, even when
/// the denominator is 0 too (an image where both ground truth and prediction are empty
/// scores 0, exactly as in micro_sam).
pub trait CountMetric {
    /// The column name micro_sam uses.
    const NAME: &'static str;
    /// The score of `counts`.
    fn score(counts: Counts) -> f64;
}

/// Segmentation accuracy, SA = TP / (TP + FP + FN); 0 when TP = 0.
#[derive(Debug, Clone, Copy)]
pub struct SegmentationAccuracy;

/// Precision = TP / (TP + FP); 0 when TP = 0.
#[derive(Debug, Clone, Copy)]
pub struct Precision;

/// Recall = TP / (TP + FN); 0 when TP = 0.
#[derive(Debug, Clone, Copy)]
pub struct Recall;

/// F1 = 2 TP / (2 TP + FP + FN); 0 when TP = 0.
#[derive(Debug, Clone, Copy)]
pub struct F1;

impl CountMetric for SegmentationAccuracy {
    const NAME: &'static str = "SA";
    fn score(c: Counts) -> f64 {
        ratio(c.tp, c.tp, c.tp + c.fp + c.fn_)
    }
}

impl CountMetric for Precision {
    const NAME: &'static str = "Precision";
    fn score(c: Counts) -> f64 {
        ratio(c.tp, c.tp, c.tp + c.fp)
    }
}

impl CountMetric for Recall {
    const NAME: &'static str = "Recall";
    fn score(c: Counts) -> f64 {
        ratio(c.tp, c.tp, c.tp + c.fn_)
    }
}

impl CountMetric for F1 {
    const NAME: &'static str = "F1 Score";
    fn score(c: Counts) -> f64 {
        ratio(c.tp, 2 * c.tp, 2 * c.tp + c.fp + c.fn_)
    }
}

/// `num / den`, or 0 when `tp` is 0 (elf's guard).
fn ratio(tp: u64, num: u64, den: u64) -> f64 {
    if tp == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Every score of one ground-truth/prediction pair of label images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageScores {
    /// Ground-truth objects (distinct non-zero ids).
    pub n_true: u64,
    /// Predicted objects (distinct non-zero ids).
    pub n_pred: u64,
    /// Match counts at each of [`SA_THRESHOLDS`].
    pub counts: Vec<Counts>,
    /// SA at each of [`SA_THRESHOLDS`].
    pub sa: Vec<f64>,
    /// Mean SA over the thresholds.
    pub msa: f64,
    /// SA at IoU 0.5.
    pub sa50: f64,
    /// SA at IoU 0.75.
    pub sa75: f64,
    /// Precision at IoU 0.5.
    pub precision: f64,
    /// Recall at IoU 0.5.
    pub recall: f64,
    /// F1 at IoU 0.5.
    pub f1: f64,
    /// Sum of the IoUs of the pairs matched at 0.5 (for pooling).
    pub matched_iou_sum: f64,
    /// Mean IoU of the pairs matched at 0.5; `None` when nothing matched.
    pub mean_matched_iou: Option<f64>,
    /// Foreground pixels of the ground truth (label ≠ 0).
    pub fg_true: u64,
    /// Foreground pixels of the prediction.
    pub fg_pred: u64,
    /// Pixels in the foreground of both.
    pub fg_both: u64,
    /// Foreground Dice = 2 |G ∩ P| / (|G| + |P|) of the binarised label images; 1 when both
    /// foregrounds are empty (perfect agreement on "nothing here").
    pub foreground_dice: f64,
}

impl ImageScores {
    /// Scores the overlap table of one image.
    pub fn from_contingency(c: &Contingency) -> Self {
        let n_true = c.gt_ids().len() as u64;
        let n_pred = c.pred_ids().len() as u64;
        let counts: Vec<Counts> = SA_THRESHOLDS
            .iter()
            .map(|&t| {
                let tp = c.true_positives(t) as u64;
                Counts {
                    tp,
                    fp: n_pred - tp,
                    fn_: n_true - tp,
                }
            })
            .collect();
        let sa: Vec<f64> = counts
            .iter()
            .map(|&k| SegmentationAccuracy::score(k))
            .collect();
        let at50 = counts[INDEX_SA50];
        let matched = c.match_at(SA_THRESHOLDS[INDEX_SA50]);
        let matched_iou_sum = numpy_sum(&matched.iter().map(|m| m.iou).collect::<Vec<_>>());
        let (fg_true, fg_pred, fg_both) = c.foreground();
        Self {
            n_true,
            n_pred,
            msa: numpy_mean(&sa),
            sa50: sa[INDEX_SA50],
            sa75: sa[INDEX_SA75],
            precision: Precision::score(at50),
            recall: Recall::score(at50),
            f1: F1::score(at50),
            mean_matched_iou: (!matched.is_empty()).then(|| matched_iou_sum / matched.len() as f64),
            matched_iou_sum,
            counts,
            sa,
            fg_true,
            fg_pred,
            fg_both,
            foreground_dice: dice(fg_both, fg_true, fg_pred),
        }
    }
}

/// Scores a ground-truth and a predicted label image (row-major, same size, 0 = background).
///
/// # Errors
/// [`MetricError::LengthMismatch`] when the two slices differ in length.
pub fn score_image(gt: &[u32], pred: &[u32]) -> Result<ImageScores, MetricError> {
    Ok(ImageScores::from_contingency(&Contingency::new(gt, pred)?))
}

/// Dice 2·both / (a + b); 1 when both are empty.
pub(crate) fn dice(both: u64, a: u64, b: u64) -> f64 {
    if a + b == 0 {
        1.0
    } else {
        (2 * both) as f64 / (a + b) as f64
    }
}

/// Sum in numpy's pairwise order (`np.add.reduce` on a contiguous float64 array), so that
/// means of the same values agree with micro_sam's `np.mean` to the last bit.
pub(crate) fn numpy_sum(values: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&values[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, slot) in r.iter_mut().enumerate() {
                *slot += values[i + j];
            }
            i += 8;
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &values[i..] {
            sum += v;
        }
        sum
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_sum(&values[..half]) + numpy_sum(&values[half..])
    }
}

/// `np.mean` of `values`; NaN for an empty slice, as numpy.
pub(crate) fn numpy_mean(values: &[f64]) -> f64 {
    numpy_sum(values) / values.len() as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn thresholds_equal_numpy_arange() {
        // numpy.arange(0.5, 1.0, 0.05) fills start + i * ((start + step) - start).
        let delta = (0.5f64 + 0.05) - 0.5;
        for (i, &t) in SA_THRESHOLDS.iter().enumerate() {
            assert_eq!(t, 0.5 + i as f64 * delta, "threshold {i}");
        }
        const { assert!(SA_THRESHOLDS[INDEX_SA75] > 0.75) };
        assert_eq!(SA_THRESHOLDS[INDEX_SA50], 0.5);
    }

    #[test]
    fn count_metrics_follow_their_formulas() {
        let c = Counts {
            tp: 3,
            fp: 1,
            fn_: 2,
        };
        assert_eq!(SegmentationAccuracy::score(c), 3.0 / 6.0);
        assert_eq!(Precision::score(c), 3.0 / 4.0);
        assert_eq!(Recall::score(c), 3.0 / 5.0);
        assert_eq!(F1::score(c), 6.0 / 9.0);
        let none = Counts::default();
        for s in [
            SegmentationAccuracy::score(none),
            Precision::score(none),
            Recall::score(none),
            F1::score(none),
        ] {
            assert_eq!(s, 0.0);
        }
        assert_eq!(F1::NAME, "F1 Score");
    }

    #[test]
    fn numpy_sum_order() {
        // Small: sequential. 10 values: 8 accumulators then the rest.
        let v: Vec<f64> = (0..10).map(|i| 0.1 * f64::from(i)).collect();
        let r: Vec<f64> = v[..8].to_vec();
        let expected =
            ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])) + v[8] + v[9];
        assert_eq!(numpy_sum(&v), expected);
        assert_eq!(numpy_sum(&[1.0, 2.0]), 3.0);
        assert!(numpy_mean(&[]).is_nan());
        let many: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(numpy_sum(&many), 499_500.0);
    }

    #[test]
    fn dice_cases() {
        assert_eq!(dice(0, 0, 0), 1.0);
        assert_eq!(dice(0, 4, 0), 0.0);
        assert_eq!(dice(3, 4, 5), 6.0 / 9.0);
    }
}
