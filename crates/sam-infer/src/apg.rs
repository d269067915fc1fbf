//! Automatic prompt generation (APG): point prompts from the decoder maps → SAM masks → instance
//! labels.
//!
//! Follows micro_sam's `AutomaticPromptGenerator.generate` (and `TiledAutomaticPromptGenerator`):
//!
//! 1. seeds = foreground ≥ `foreground_threshold` & centre distance < `center_distance_threshold`
//!    & boundary distance < `boundary_distance_threshold` (no smoothing, unlike AIS), labelled by
//!    4-connected components ([`apg_point_prompts`]);
//! 2. one positive point per seed: the seed pixel farthest from the seeds' outer boundaries
//!    (skimage `find_boundaries(mode="outer")`) and from the image border;
//! 3. each point through SAM's prompt encoder and mask decoder on the image (or tile) embedding,
//!    `batch_size` prompts at a time; logits thresholded at `mask_threshold`, stability score at
//!    `mask_threshold ± 1` (`InferenceModel::apg_masks`); optionally a second round with the
//!    masks' boxes (grown by 1 %) as prompts;
//! 4. masks not larger than `min_size` dropped, mask NMS (IoU or intersection over the smaller
//!    mask > `nms_threshold`, score = predicted IoU × stability), the rest painted largest first
//!    into the free pixels, split into 4-connected pieces, pieces smaller than `min_size`
//!    removed ([`apg_segment`], micro_sam's `util.apply_nms`).

use sam_data::{connected_components, distance_transform, Connectivity, Plane};
use serde::{Deserialize, Serialize};

use crate::ais::{check_seed_thresholds, DecoderMaps};
use crate::amg::{greedy_nms, masks_to_segmentation, AmgOutput, MaskRecord};
use crate::error::InferError;

/// APG settings; `Default` gives micro_sam's `AutomaticPromptGenerator.generate` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgParams {
    /// Masks with at most this many pixels, and final pieces with fewer, are removed. micro_sam: 25.
    pub min_size: u64,
    /// Seeds where the centre distance is below this. micro_sam: 0.5.
    pub center_distance_threshold: f32,
    /// Seeds where the boundary distance is below this. micro_sam: 0.5.
    pub boundary_distance_threshold: f32,
    /// Seeds only where the foreground probability is at least this. micro_sam: 0.5.
    pub foreground_threshold: f32,
    /// Predict three masks per prompt and keep the one with the best predicted IoU. micro_sam: false.
    pub multimasking: bool,
    /// Prompts per mask-decoder call. micro_sam: 32.
    pub batch_size: usize,
    /// Overlap above which the lower-scored of two masks is dropped. micro_sam: 0.9.
    pub nms_threshold: f32,
    /// Measure the overlap as intersection over the smaller mask instead of IoU. micro_sam: false.
    pub intersection_over_min: bool,
    /// Logit threshold of the masks (micro_sam's `mask_threshold=None`: the model's 0.0; its
    /// `"auto"` local-Otsu threshold is not offered).
    pub mask_threshold: f32,
    /// Run the mask decoder a second time with the boxes of the first masks (grown by 1 % per
    /// side) as prompts. micro_sam: false.
    pub refine_with_box_prompts: bool,
}

impl Default for ApgParams {
    fn default() -> Self {
        // micro_sam/instance_segmentation.py, AutomaticPromptGenerator.generate.
        Self {
            min_size: 25,
            center_distance_threshold: 0.5,
            boundary_distance_threshold: 0.5,
            foreground_threshold: 0.5,
            multimasking: false,
            batch_size: 32,
            nms_threshold: 0.9,
            intersection_over_min: false,
            mask_threshold: 0.0,
            refine_with_box_prompts: false,
        }
    }
}

impl ApgParams {
    /// Check ranges: thresholds finite, `batch_size` ≥ 1, `nms_threshold` in [0, 1].
    pub fn validate(&self) -> Result<(), InferError> {
        check_seed_thresholds(
            self.center_distance_threshold,
            self.boundary_distance_threshold,
            self.foreground_threshold,
        )?;
        if !self.mask_threshold.is_finite() {
            return Err(InferError::param(
                "mask_threshold",
                "a finite number",
                self.mask_threshold,
            ));
        }
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            return Err(InferError::param(
                "nms_threshold",
                "a value in [0, 1]",
                self.nms_threshold,
            ));
        }
        if self.batch_size == 0 {
            return Err(InferError::param("batch_size", "≥ 1", 0));
        }
        Ok(())
    }
}

/// Box growth of the refinement round (micro_sam hard-codes `box_extension = 0.01`).
const BOX_EXTENSION: f64 = 0.01;

/// The point prompts micro_sam's `_derive_point_prompts` derives from the decoder maps: `(x, y)`
/// pixel coordinates, one per 4-connected seed component, in component order (first pixel in
/// row-major order).
///
/// Within a component the point is its first pixel (row-major) with the largest Euclidean
/// distance to the outer boundaries of all components and to the image border. A component
/// lying wholly on such boundaries gets the top-left corner of its bounding box, as `np.argmax`
/// over the zeroed box gives.
pub fn apg_point_prompts(
    maps: &DecoderMaps,
    params: &ApgParams,
) -> Result<Vec<[f32; 2]>, InferError> {
    maps.check()?;
    params.validate()?;
    let (h, w) = maps.shape();
    let seeds: Vec<bool> = (0..h * w)
        .map(|i| {
            // `hmap[foreground < threshold] = 0`: a NaN foreground does not clear a seed.
            maps.foreground.as_slice()[i].partial_cmp(&params.foreground_threshold)
                != Some(std::cmp::Ordering::Less)
                && maps.center_distances.as_slice()[i] < params.center_distance_threshold
                && maps.boundary_distances.as_slice()[i] < params.boundary_distance_threshold
        })
        .collect();
    let seeds = Plane::from_vec(h, w, seeds)?;
    // elf.parallel.label: connectivity 1.
    let (cc, n) = connected_components(&seeds, false, Connectivity::Four);
    if n == 0 {
        return Ok(Vec::new());
    }
    let distances = distance_transform(&center_features(&cc));
    // Per component: bounding-box corner, best distance and its pixel.
    let n = n as usize;
    let mut corner = vec![(usize::MAX, usize::MAX); n + 1];
    let mut best = vec![(-1.0f32, 0usize, 0usize); n + 1];
    for y in 0..h {
        for (x, (&l, &d)) in cc.row(y).iter().zip(distances.row(y)).enumerate() {
            if l == 0 {
                continue;
            }
            let l = l as usize;
            corner[l] = (corner[l].0.min(y), corner[l].1.min(x));
            if d > best[l].0 {
                best[l] = (d, y, x);
            }
        }
    }
    Ok((1..=n)
        .map(|l| {
            let (d, y, x) = best[l];
            let (y, x) = if d > 0.0 { (y, x) } else { corner[l] };
            [x as f32, y as f32]
        })
        .collect())
}

/// The pixels the prompt centres keep away from (distance 0): skimage
/// `find_boundaries(labels, mode="outer")` and the image border (micro_sam's `_get_centers`).
///
/// A background pixel is an outer boundary when a 4-neighbour belongs to a component; a
/// component pixel when a 4-neighbour differs from it and another component lies in its 3 × 3
/// neighbourhood (components touching diagonally).
fn center_features(labels: &Plane<u32>) -> Plane<bool> {
    let (h, w) = labels.shape();
    let mut out = Plane::filled(h, w, true);
    if h < 3 || w < 3 {
        return out; // every pixel is on the image border
    }
    let at = |y: usize, x: usize| labels.as_slice()[y * w + x];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let l = at(y, x);
            let four = [at(y - 1, x), at(y + 1, x), at(y, x - 1), at(y, x + 1)];
            let mut boundary = four.iter().any(|&v| v != l);
            if boundary && l != 0 {
                boundary = (y - 1..=y + 1).any(|yy| {
                    (x - 1..=x + 1).any(|xx| matches!(at(yy, xx), v if v != 0 && v != l))
                });
            }
            out.set(y, x, boundary);
        }
    }
    out
}

/// micro_sam `_derive_box_prompts`: the masks' boxes `[x0, y0, x1, y1]` grown by 1 % of their
/// width / height per side and clipped to the image `(h, w)`.
///
/// micro_sam measures the width as `x1 − x0` of the inclusive box and clips x with the image
/// height and y with its width (equal for square images); here x is clipped with the width.
pub fn apg_box_prompts(masks: &[MaskRecord], image: (usize, usize)) -> Vec<[f32; 4]> {
    let (h, w) = (image.0 as f64, image.1 as f64);
    masks
        .iter()
        .map(|m| {
            let [x0, y0, x1, y1] = m.bbox().map(f64::from);
            let (bw, bh) = (x1 - x0, y1 - y0);
            // float64 as numpy computes it.
            [
                (x0 - bw * BOX_EXTENSION).max(0.0) as f32,
                (y0 - bh * BOX_EXTENSION).max(0.0) as f32,
                (x0 + (1.0 + BOX_EXTENSION) * bw).min(w) as f32,
                (y0 + (1.0 + BOX_EXTENSION) * bh).min(h) as f32,
            ]
        })
        .collect()
}

/// Whether the inclusive boxes of two masks overlap with a positive area (micro_sam's
/// `_overlap_matrix`: masks whose boxes share only a row or column are never compared).
fn boxes_overlap(a: &MaskRecord, b: &MaskRecord) -> bool {
    let (ba, bb) = (a.bbox(), b.bbox());
    let iw = (ba[2].min(bb[2]) - ba[0].max(bb[0])).max(0.0);
    let ih = (ba[3].min(bb[3]) - ba[1].max(bb[1])).max(0.0);
    iw * ih > 0.0
}

/// A mask's rows as bits, word-aligned to image columns: bit `x % 64` of word `x / 64 - word0`
/// of a row is image column `x`. Two masks then intersect by AND and popcount over the words
/// both rows hold, 64 pixels at a time; bits outside a mask's box are 0.
struct PackedMask {
    y0: usize,
    rows: usize,
    word0: usize,
    words: usize,
    bits: Vec<u64>,
}

impl PackedMask {
    fn new(m: &MaskRecord) -> Self {
        let (rows, cols) = (m.mask.rows(), m.mask.cols());
        let word0 = m.x0 / 64;
        let words = (m.x0 + cols).div_ceil(64) - word0;
        let mut bits = vec![0u64; rows * words];
        for y in 0..rows {
            let row = &mut bits[y * words..(y + 1) * words];
            for (dx, _) in m.mask.row(y).iter().enumerate().filter(|(_, &b)| b) {
                let x = m.x0 + dx - word0 * 64;
                row[x / 64] |= 1 << (x % 64);
            }
        }
        Self {
            y0: m.y0,
            rows,
            word0,
            words,
            bits,
        }
    }

    fn row(&self, y: usize, word0: usize, word1: usize) -> &[u64] {
        let start = (y - self.y0) * self.words;
        &self.bits[start + word0 - self.word0..start + word1 - self.word0]
    }

    /// Pixels set in both masks.
    fn intersection(&self, other: &Self) -> u64 {
        let y0 = self.y0.max(other.y0);
        let y1 = (self.y0 + self.rows).min(other.y0 + other.rows);
        let w0 = self.word0.max(other.word0);
        let w1 = (self.word0 + self.words).min(other.word0 + other.words);
        if y1 <= y0 || w1 <= w0 {
            return 0;
        }
        (y0..y1)
            .map(|y| {
                let (a, b) = (self.row(y, w0, w1), other.row(y, w0, w1));
                a.iter()
                    .zip(b)
                    .map(|(p, q)| u64::from((p & q).count_ones()))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// micro_sam `_batched_mask_nms`: visit masks by descending score (ties by index) and drop every
/// later mask whose overlap with the visited one exceeds `threshold`. The overlap is the mask
/// IoU, or with `intersection_over_min` the intersection over the smaller area; it is 0 for
/// masks whose boxes do not overlap. Returns the kept indices in visiting order.
pub fn mask_nms(
    masks: &[MaskRecord],
    scores: &[f32],
    threshold: f32,
    intersection_over_min: bool,
) -> Vec<usize> {
    let refs: Vec<&MaskRecord> = masks.iter().collect();
    nms_on(&refs, scores, threshold, intersection_over_min)
}

fn nms_on(
    masks: &[&MaskRecord],
    scores: &[f32],
    threshold: f32,
    intersection_over_min: bool,
) -> Vec<usize> {
    let packed: Vec<PackedMask> = masks.iter().map(|m| PackedMask::new(m)).collect();
    greedy_nms(masks.len(), scores, |i, j| {
        if !boxes_overlap(masks[i], masks[j]) {
            return false;
        }
        let inter = packed[i].intersection(&packed[j]);
        let (ai, aj) = (masks[i].area, masks[j].area);
        // float32 as torch computes it.
        let overlap = if intersection_over_min {
            inter as f32 / (ai.min(aj) as f32 + 1e-6)
        } else {
            inter as f32 / (ai + aj - inter) as f32
        };
        overlap > threshold
    })
}

/// The result of [`apg_segment`]: labels and the predicted IoU of each object's mask.
pub type ApgOutput = AmgOutput;

/// micro_sam `util.apply_nms(min_size, nms_thresh, intersection_over_min)`: masks of at most
/// `min_size` pixels dropped, [`mask_nms`] with score = predicted IoU × stability, then
/// `mask_data_to_segmentation(merge_exclusively=True, min_object_size=min_size)`: the kept
/// masks painted largest first (ties in NMS order) into the pixels still free, split into
/// 4-connected pieces, pieces smaller than `min_size` removed, ids consecutive in order of first
/// appearance. `masks` are in image coordinates (tiles already placed).
pub fn apg_segment(
    masks: &[MaskRecord],
    image: (usize, usize),
    params: &ApgParams,
) -> Result<ApgOutput, InferError> {
    params.validate()?;
    let candidates: Vec<&MaskRecord> = masks
        .iter()
        .filter(|m| m.area > params.min_size && m.area > 0)
        .collect();
    let scores: Vec<f32> = candidates
        .iter()
        .map(|m| m.predicted_iou * m.stability_score)
        .collect();
    let keep = nms_on(
        &candidates,
        &scores,
        params.nms_threshold,
        params.intersection_over_min,
    );
    let kept: Vec<&MaskRecord> = keep.iter().map(|&i| candidates[i]).collect();
    masks_to_segmentation(&kept, image, true, params.min_size, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(h: usize, w: usize, r: [usize; 4], iou: f32, stability: f32) -> MaskRecord {
        let mut m = Plane::filled(h, w, false);
        for y in r[0]..r[2] {
            for x in r[1]..r[3] {
                m.set(y, x, true);
            }
        }
        MaskRecord::from_mask(&m, 0, 0, iou, stability).unwrap()
    }

    fn maps(fg: Vec<f32>, c: Vec<f32>, b: Vec<f32>, h: usize, w: usize) -> DecoderMaps {
        DecoderMaps {
            foreground: Plane::from_vec(h, w, fg).unwrap(),
            center_distances: Plane::from_vec(h, w, c).unwrap(),
            boundary_distances: Plane::from_vec(h, w, b).unwrap(),
        }
    }

    #[test]
    fn defaults_are_micro_sams() {
        let p = ApgParams::default();
        assert_eq!((p.min_size, p.batch_size), (25, 32));
        assert_eq!(
            (
                p.center_distance_threshold,
                p.boundary_distance_threshold,
                p.foreground_threshold,
                p.nms_threshold,
                p.mask_threshold
            ),
            (0.5, 0.5, 0.5, 0.9, 0.0)
        );
        assert!(!p.multimasking && !p.intersection_over_min && !p.refine_with_box_prompts);
    }

    #[test]
    fn one_point_per_seed_at_its_distance_maximum() {
        // 7×9: seed A is a 3×3 square at rows 1..=3, cols 1..=3 → centre (2, 2). Seed B a 1×3 bar
        // at row 5, cols 5..=7: every pixel 1 px from the outer boundary → its first pixel.
        let (h, w) = (7, 9);
        let mut c = vec![1.0f32; h * w];
        for (y, x) in (1..=3).flat_map(|y| (1..=3).map(move |x| (y, x))) {
            c[y * w + x] = 0.1;
        }
        for x in 5..=7 {
            c[5 * w + x] = 0.1;
        }
        let m = maps(vec![1.0; h * w], c.clone(), c, h, w);
        let pts = apg_point_prompts(&m, &ApgParams::default()).unwrap();
        assert_eq!(pts, vec![[2.0, 2.0], [5.0, 5.0]]);
    }

    #[test]
    fn seeds_need_foreground_and_diagonal_seeds_stay_apart() {
        // Two single-pixel seeds touching diagonally are two components (4-connectivity); each
        // lies on the other's outer boundary, so each gets its own pixel (the box corner).
        let (h, w) = (5, 5);
        let mut c = vec![1.0f32; h * w];
        c[w + 1] = 0.0;
        c[2 * w + 2] = 0.0;
        c[3 * w + 3] = 0.0; // background below: no seed
        let mut fg = vec![1.0f32; h * w];
        fg[3 * w + 3] = 0.4;
        let m = maps(fg, c.clone(), c, h, w);
        let pts = apg_point_prompts(&m, &ApgParams::default()).unwrap();
        assert_eq!(pts, vec![[1.0, 1.0], [2.0, 2.0]]);
        // foreground == threshold still seeds (micro_sam clears `foreground < threshold`).
        let mut fg = vec![1.0f32; h * w];
        fg[3 * w + 3] = 0.5;
        let c2 = {
            let mut v = vec![1.0f32; h * w];
            v[3 * w + 3] = 0.0;
            v
        };
        let pts = apg_point_prompts(&maps(fg, c2.clone(), c2, h, w), &ApgParams::default());
        assert_eq!(pts.unwrap(), vec![[3.0, 3.0]]);
    }

    #[test]
    fn packed_intersection_counts_the_pixels_set_in_both_masks() {
        // Masks of irregular patterns at offsets and widths that start, end and straddle
        // 64-column words differently, against a pixel-by-pixel count in image coordinates.
        let pattern = |seed: usize, rows: usize, cols: usize| {
            let v = (0..rows * cols)
                .map(|i| (i * 2_654_435_761 + seed * 97) % 7 < 3)
                .collect();
            Plane::from_vec(rows, cols, v).unwrap()
        };
        let masks: Vec<MaskRecord> = [
            (0, 0, 5, 70),
            (2, 63, 9, 2),
            (1, 60, 6, 140),
            (3, 128, 4, 64),
            (0, 127, 8, 1),
            (4, 10, 3, 200),
        ]
        .iter()
        .enumerate()
        .filter_map(|(k, &(y0, x0, rows, cols))| {
            MaskRecord::from_mask(&pattern(k, rows, cols), y0, x0, 1.0, 1.0)
        })
        .collect();
        let pixel = |m: &MaskRecord, y: usize, x: usize| {
            (y >= m.y0 && y < m.y0 + m.mask.rows() && x >= m.x0 && x < m.x0 + m.mask.cols())
                && m.mask.get(y - m.y0, x - m.x0)
        };
        for a in &masks {
            for b in &masks {
                let want = (0..20)
                    .flat_map(|y| (0..300).map(move |x| (y, x)))
                    .filter(|&(y, x)| pixel(a, y, x) && pixel(b, y, x))
                    .count() as u64;
                let got = PackedMask::new(a).intersection(&PackedMask::new(b));
                assert_eq!(
                    got, want,
                    "masks at ({}, {}) and ({}, {})",
                    a.y0, a.x0, b.y0, b.x0
                );
            }
            assert_eq!(PackedMask::new(a).intersection(&PackedMask::new(a)), a.area);
        }
    }

    #[test]
    fn nms_drops_overlapping_lower_scores_only_when_boxes_overlap() {
        let (h, w) = (20, 20);
        let masks = vec![
            rect(h, w, [0, 0, 10, 10], 0.9, 1.0),
            rect(h, w, [0, 0, 10, 9], 0.95, 1.0), // IoU 0.9 with the first: kept (not > 0.9)
            rect(h, w, [0, 0, 10, 8], 0.8, 1.0),  // IoU 0.8 with #1 (score 0.95) → kept
            rect(h, w, [12, 12, 20, 20], 0.5, 1.0),
        ];
        let scores: Vec<f32> = masks.iter().map(|m| m.predicted_iou).collect();
        assert_eq!(mask_nms(&masks, &scores, 0.9, false), vec![1, 0, 2, 3]);
        assert_eq!(mask_nms(&masks, &scores, 0.895, false), vec![1, 2, 3]);
        // Intersection over the smaller mask: #2 lies inside #1 → 1.0 > 0.9.
        assert_eq!(mask_nms(&masks, &scores, 0.9, true), vec![1, 3]);
    }

    #[test]
    fn segment_paints_exclusively_and_filters_sizes() {
        let (h, w) = (20, 20);
        let masks = vec![
            rect(h, w, [0, 0, 10, 10], 0.9, 1.0),    // 100 px
            rect(h, w, [4, 4, 14, 14], 0.8, 1.0),    // 100 px, overlaps: gets only free pixels
            rect(h, w, [16, 16, 20, 20], 0.99, 1.0), // 16 px: not > min_size
        ];
        let p = ApgParams {
            min_size: 16,
            ..ApgParams::default()
        };
        let out = apg_segment(&masks, (h, w), &p).unwrap();
        // Both 100-px masks tie in area: NMS order (score 0.9 first) paints first.
        assert_eq!(out.scores, vec![0.9, 0.8]);
        assert_eq!(out.labels.get(5, 5), 1);
        assert_eq!(out.labels.get(12, 12), 2);
        assert_eq!(out.labels.get(18, 18), 0);
        let count = |id| out.labels.as_slice().iter().filter(|&&l| l == id).count();
        assert_eq!((count(1), count(2)), (100, 64));
    }

    #[test]
    fn box_prompts_grow_by_one_percent() {
        let m = rect(300, 300, [100, 50, 201, 251], 0.9, 1.0); // x 50..=250, y 100..=200
        let b = apg_box_prompts(&[m], (300, 300));
        assert_eq!(b, vec![[48.0, 99.0, 252.0, 201.0]]);
    }
}
