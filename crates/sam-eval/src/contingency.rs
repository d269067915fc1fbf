//! Sparse overlap (contingency) table between a ground-truth and a predicted label image.

use std::collections::HashMap;

use crate::error::MetricError;

/// One overlapping ground-truth/prediction pair (both non-background).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlapPair {
    /// Index of the ground-truth object in [`Contingency::gt_ids`].
    pub gt: usize,
    /// Index of the predicted object in [`Contingency::pred_ids`].
    pub pred: usize,
    /// Number of pixels the two objects share.
    pub intersection: u64,
    /// `intersection / (area_gt + area_pred - intersection)`.
    pub iou: f64,
}

/// The sparse overlap table of two label images: object ids, areas, and every overlapping pair.
///
/// Built in one pass over the pixels. Consecutive pixels with the same (gt, pred) pair are
/// counted as one run, so the hash map sees one update per run, not per pixel; memory is
/// proportional to the number of overlapping pairs, never objects × objects × pixels.
/// Label 0 is background in both images; every other value is an object id.
#[derive(Debug, Clone)]
pub struct Contingency {
    gt_ids: Vec<u32>,
    pred_ids: Vec<u32>,
    gt_areas: Vec<u64>,
    pred_areas: Vec<u64>,
    pairs: Vec<OverlapPair>,
    pixels: u64,
    fg_gt: u64,
    fg_pred: u64,
    fg_both: u64,
}

impl Contingency {
    /// Counts the overlaps of `gt` and `pred`, two label images of the same size, row-major.
    ///
    /// # Errors
    /// [`MetricError::LengthMismatch`] when the two slices differ in length.
    pub fn new(gt: &[u32], pred: &[u32]) -> Result<Self, MetricError> {
        if gt.len() != pred.len() {
            return Err(MetricError::LengthMismatch {
                gt: gt.len(),
                pred: pred.len(),
            });
        }
        // Run-length count of (gt << 32 | pred) keys.
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut current = u64::MAX; // no valid key equals this: ids are u32 each
        let mut run = 0u64;
        for (&g, &p) in gt.iter().zip(pred) {
            let key = (u64::from(g) << 32) | u64::from(p);
            if key == current {
                run += 1;
            } else {
                if run > 0 {
                    *counts.entry(current).or_insert(0) += run;
                }
                current = key;
                run = 1;
            }
        }
        if run > 0 {
            *counts.entry(current).or_insert(0) += run;
        }

        let mut entries: Vec<(u32, u32, u64)> = counts
            .into_iter()
            .map(|(k, c)| ((k >> 32) as u32, (k & 0xffff_ffff) as u32, c))
            .collect();
        entries.sort_unstable();

        let mut gt_ids: Vec<u32> = entries.iter().map(|e| e.0).filter(|&g| g != 0).collect();
        gt_ids.dedup(); // sorted by gt first
        let mut pred_ids: Vec<u32> = entries.iter().map(|e| e.1).filter(|&p| p != 0).collect();
        pred_ids.sort_unstable();
        pred_ids.dedup();

        let mut gt_areas = vec![0u64; gt_ids.len()];
        let mut pred_areas = vec![0u64; pred_ids.len()];
        let (mut fg_gt, mut fg_pred, mut fg_both) = (0u64, 0u64, 0u64);
        let mut raw_pairs = Vec::new();
        for &(g, p, c) in &entries {
            let gi = (g != 0).then(|| index_of(&gt_ids, g));
            let pi = (p != 0).then(|| index_of(&pred_ids, p));
            if let Some(gi) = gi {
                gt_areas[gi] += c;
                fg_gt += c;
            }
            if let Some(pi) = pi {
                pred_areas[pi] += c;
                fg_pred += c;
            }
            if let (Some(gi), Some(pi)) = (gi, pi) {
                fg_both += c;
                raw_pairs.push((gi, pi, c));
            }
        }
        let pairs = raw_pairs
            .into_iter()
            .map(|(gt, pred, intersection)| OverlapPair {
                gt,
                pred,
                intersection,
                iou: iou(intersection, gt_areas[gt], pred_areas[pred]),
            })
            .collect();

        Ok(Self {
            gt_ids,
            pred_ids,
            gt_areas,
            pred_areas,
            pairs,
            pixels: gt.len() as u64,
            fg_gt,
            fg_pred,
            fg_both,
        })
    }

    /// Ground-truth object ids present in the image, ascending (0 excluded).
    pub fn gt_ids(&self) -> &[u32] {
        &self.gt_ids
    }

    /// Predicted object ids present in the image, ascending (0 excluded).
    pub fn pred_ids(&self) -> &[u32] {
        &self.pred_ids
    }

    /// Pixel count of each ground-truth object, aligned with [`Self::gt_ids`].
    pub fn gt_areas(&self) -> &[u64] {
        &self.gt_areas
    }

    /// Pixel count of each predicted object, aligned with [`Self::pred_ids`].
    pub fn pred_areas(&self) -> &[u64] {
        &self.pred_areas
    }

    /// Every overlapping object pair, sorted by (gt index, pred index).
    pub fn pairs(&self) -> &[OverlapPair] {
        &self.pairs
    }

    /// Number of pixels of the image.
    pub fn pixels(&self) -> u64 {
        self.pixels
    }

    /// Foreground pixels (label ≠ 0) of the ground truth, of the prediction, and of both.
    pub fn foreground(&self) -> (u64, u64, u64) {
        (self.fg_gt, self.fg_pred, self.fg_both)
    }
}

/// Index of `id` in the sorted, deduplicated `ids`; the id is known to be present.
fn index_of(ids: &[u32], id: u32) -> usize {
    ids.partition_point(|&x| x < id)
}

/// IoU of two objects from their intersection and areas.
///
/// Computed as one f64 division of exact integer counts, which is what elf does
/// (`overlap / (n_pred + n_true - overlap)` in float64), so both give the same bits.
fn iou(intersection: u64, area_a: u64, area_b: u64) -> f64 {
    let union = area_a + area_b - intersection;
    intersection as f64 / union as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn counts_areas_pairs_and_foreground() {
        // gt:   1 1 0 2      pred: 7 0 0 9
        //       1 1 0 2            7 7 9 9
        let gt = [1, 1, 0, 2, 1, 1, 0, 2];
        let pred = [7, 0, 0, 9, 7, 7, 9, 9];
        let c = Contingency::new(&gt, &pred).unwrap();
        assert_eq!(c.gt_ids(), &[1, 2]);
        assert_eq!(c.pred_ids(), &[7, 9]);
        assert_eq!(c.gt_areas(), &[4, 2]);
        assert_eq!(c.pred_areas(), &[3, 3]);
        assert_eq!(c.pairs().len(), 2);
        // gt 1 & pred 7: 3 shared of union 4; gt 2 & pred 9: 2 shared of union 3.
        assert_eq!((c.pairs()[0].gt, c.pairs()[0].pred), (0, 0));
        assert_eq!(c.pairs()[0].intersection, 3);
        assert_eq!(c.pairs()[0].iou, 3.0 / 4.0);
        assert_eq!((c.pairs()[1].gt, c.pairs()[1].pred), (1, 1));
        assert_eq!(c.pairs()[1].iou, 2.0 / 3.0);
        assert_eq!(c.foreground(), (6, 6, 5));
        assert_eq!(c.pixels(), 8);
    }

    #[test]
    fn large_and_sparse_ids_are_kept() {
        let gt = [u32::MAX, u32::MAX, 0];
        let pred = [0, 5, 5];
        let c = Contingency::new(&gt, &pred).unwrap();
        assert_eq!(c.gt_ids(), &[u32::MAX]);
        assert_eq!(c.pred_ids(), &[5]);
        assert_eq!(c.pairs()[0].iou, 1.0 / 3.0);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let err = Contingency::new(&[0, 1], &[0]).unwrap_err();
        assert!(matches!(
            err,
            MetricError::LengthMismatch { gt: 2, pred: 1 }
        ));
    }
}
