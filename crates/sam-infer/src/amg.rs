//! Automatic mask generation (AMG) post-processing: point-prompt masks → instance labels.
//!
//! Follows segment_anything's `SamAutomaticMaskGenerator` as micro_sam's `AutomaticMaskGenerator`
//! / `TiledAutomaticMaskGenerator` runs it: per crop (tile) filter by predicted IoU and stability
//! score, drop masks touching a crop edge that is not an image edge, box NMS; across crops box NMS
//! preferring smaller crops; optional removal of small holes and islands (with a second NMS that
//! prefers unchanged masks); then `mask_data_to_segmentation`: masks painted largest first (smaller
//! ones overwrite), connected components, the largest segment dropped as background, ids made
//! consecutive.

use sam_data::{connected_components, label_sizes, Connectivity, Plane};
use serde::{Deserialize, Serialize};

use crate::error::InferError;

/// AMG settings; `Default` gives micro_sam's / segment_anything's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmgParams {
    /// Points per image side of the prompt grid. Default 32.
    pub points_per_side: usize,
    /// Point prompts run through the mask decoder at once. Default 64.
    pub points_per_batch: usize,
    /// Keep masks whose predicted IoU is above this (0 disables). Default 0.88.
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this (0 disables). Default 0.95.
    pub stability_score_thresh: f32,
    /// Logit offset for the stability score. Default 1.0.
    pub stability_score_offset: f32,
    /// Box IoU above which a lower-scored mask of the same crop is dropped. Default 0.7.
    pub box_nms_thresh: f32,
    /// Box IoU above which a mask from a larger crop (tile) is dropped. Default 0.7.
    pub crop_nms_thresh: f32,
    /// Holes and islands smaller than this many pixels are removed (0 disables). Default 0.
    pub min_mask_region_area: u64,
    /// Drop the largest segment, which usually covers the background. Default true.
    pub with_background: bool,
}

impl Default for AmgParams {
    fn default() -> Self {
        // micro_sam/instance_segmentation.py AutomaticMaskGenerator.__init__ and .generate.
        Self {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_nms_thresh: 0.7,
            min_mask_region_area: 0,
            with_background: true,
        }
    }
}

impl AmgParams {
    /// Check ranges.
    pub fn validate(&self) -> Result<(), InferError> {
        if self.points_per_side == 0 {
            return Err(InferError::param("points_per_side", "≥ 1", 0));
        }
        if self.points_per_batch == 0 {
            return Err(InferError::param("points_per_batch", "≥ 1", 0));
        }
        for (name, v) in [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("stability_score_thresh", self.stability_score_thresh),
            ("box_nms_thresh", self.box_nms_thresh),
            ("crop_nms_thresh", self.crop_nms_thresh),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(InferError::param(name, "a value in [0, 1]", v));
            }
        }
        if !self.stability_score_offset.is_finite() {
            return Err(InferError::param(
                "stability_score_offset",
                "a finite number",
                0,
            ));
        }
        Ok(())
    }
}

/// segment_anything `build_point_grid`: `n × n` points `(x, y)` in `[0, 1]²`, centred in their
/// cells, row-major (x fastest).
pub fn build_point_grid(n_per_side: usize) -> Vec<[f32; 2]> {
    let offset = 1.0 / (2.0 * n_per_side as f64);
    let step = if n_per_side > 1 {
        (1.0 - 2.0 * offset) / (n_per_side as f64 - 1.0)
    } else {
        0.0
    };
    let side: Vec<f32> = (0..n_per_side)
        .map(|i| (offset + step * i as f64) as f32)
        .collect();
    side.iter()
        .flat_map(|&y| side.iter().map(move |&x| [x, y]))
        .collect()
}

/// segment_anything `calculate_stability_score`: IoU of the masks thresholded at
/// `mask_threshold ± offset` (the high one lies inside the low one). NaN for two empty masks.
pub fn stability_score(logits: &[f32], mask_threshold: f32, offset: f32) -> f32 {
    let hi = mask_threshold + offset;
    let lo = mask_threshold - offset;
    let (mut inter, mut union) = (0u64, 0u64);
    for &v in logits {
        inter += u64::from(v > hi);
        union += u64::from(v > lo);
    }
    inter as f32 / union as f32
}

/// A binary mask stored within its bounding box, placed in the image frame.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskRecord {
    /// Row of the box's top-left pixel in the image.
    pub y0: usize,
    /// Column of the box's top-left pixel in the image.
    pub x0: usize,
    /// The mask within its bounding box (at least one pixel set).
    pub mask: Plane<bool>,
    /// Set pixels.
    pub area: u64,
    /// The mask decoder's IoU prediction.
    pub predicted_iou: f32,
    /// [`stability_score`] of the logits.
    pub stability_score: f32,
}

impl MaskRecord {
    /// Threshold `logits` (a crop of the image whose top-left is `(crop_y0, crop_x0)`) at
    /// `mask_threshold`; `None` when no pixel is above it.
    pub fn from_logits(
        logits: &Plane<f32>,
        crop_y0: usize,
        crop_x0: usize,
        predicted_iou: f32,
        mask_threshold: f32,
        stability_offset: f32,
    ) -> Option<Self> {
        let stability = stability_score(logits.as_slice(), mask_threshold, stability_offset);
        let binary = logits.map(|&v| v > mask_threshold);
        Self::from_mask(&binary, crop_y0, crop_x0, predicted_iou, stability)
    }

    /// Wrap a crop-sized binary `mask` at `(crop_y0, crop_x0)`; `None` when it is empty.
    pub fn from_mask(
        mask: &Plane<bool>,
        crop_y0: usize,
        crop_x0: usize,
        predicted_iou: f32,
        stability_score: f32,
    ) -> Option<Self> {
        let [bx0, by0, bx1, by1] = mask_box(mask)?;
        let inner = mask.crop(by0, bx0, by1 - by0 + 1, bx1 - bx0 + 1);
        let area = inner.as_slice().iter().filter(|&&b| b).count() as u64;
        Some(Self {
            y0: crop_y0 + by0,
            x0: crop_x0 + bx0,
            mask: inner,
            area,
            predicted_iou,
            stability_score,
        })
    }

    /// The box `[x0, y0, x1, y1]` with inclusive max corner (segment_anything's
    /// `batched_mask_to_box`), in image coordinates.
    pub fn bbox(&self) -> [f32; 4] {
        [
            self.x0 as f32,
            self.y0 as f32,
            (self.x0 + self.mask.cols() - 1) as f32,
            (self.y0 + self.mask.rows() - 1) as f32,
        ]
    }
}

/// Box `[x0, y0, x1, y1]` (inclusive) of the set pixels, `None` for an empty mask.
pub fn mask_box(mask: &Plane<bool>) -> Option<[usize; 4]> {
    let h = mask.rows();
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        let row = mask.row(y);
        if let (Some(first), Some(last)) =
            (row.iter().position(|&b| b), row.iter().rposition(|&b| b))
        {
            y0 = y0.min(y);
            y1 = y;
            x0 = x0.min(first);
            x1 = x1.max(last);
        }
    }
    (y0 != usize::MAX).then_some([x0, y0, x1, y1])
}

/// torchvision `box_iou` for `[x0, y0, x1, y1]` boxes (area `(x1 - x0) * (y1 - y0)`); 0 when the
/// union is empty.
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression (torchvision `nms`): visit boxes by descending score (ties by
/// index) and drop every later box whose IoU with a kept box exceeds `iou_threshold`. Returns the
/// kept indices in visiting order.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    greedy_nms(boxes.len(), scores, |i, j| {
        box_iou(&boxes[i], &boxes[j]) > iou_threshold
    })
}

/// The greedy loop of torchvision's `nms` over `n` items: visit them by descending score (ties
/// by index), keep each one not yet removed and remove every later one that `suppresses(kept,
/// later)` says it covers. Returns the kept indices in visiting order.
pub(crate) fn greedy_nms(
    n: usize,
    scores: &[f32],
    mut suppresses: impl FnMut(usize, usize) -> bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut removed = vec![false; n];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if removed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[k + 1..] {
            if !removed[j] && suppresses(i, j) {
                removed[j] = true;
            }
        }
    }
    keep
}

/// segment_anything `is_box_near_crop_edge` (atol 20 px): the box touches an edge of `crop_box`
/// that is not an edge of the image. Boxes and crop in `[x0, y0, x1, y1]`, image `(h, w)`.
pub fn is_box_near_crop_edge(
    bbox: &[f32; 4],
    crop_box: &[usize; 4],
    image: (usize, usize),
) -> bool {
    const ATOL: f32 = 20.0;
    let orig = [0.0, 0.0, image.1 as f32, image.0 as f32];
    (0..4).any(|k| {
        let near_crop = (bbox[k] - crop_box[k] as f32).abs() <= ATOL;
        let near_image = (bbox[k] - orig[k]).abs() <= ATOL;
        near_crop && !near_image
    })
}

/// Which small regions [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold.
    Holes,
    /// Remove foreground components smaller than the threshold (keeping the largest if all are).
    Islands,
}

/// segment_anything `remove_small_regions` (8-connected, like its OpenCV call). Returns the mask
/// and whether it changed.
pub fn remove_small_regions(
    mask: &Plane<bool>,
    area_thresh: u64,
    mode: RegionMode,
) -> (Plane<bool>, bool) {
    let holes = mode == RegionMode::Holes;
    // Components of the pixels that are `!mask` for holes, `mask` for islands.
    let working = mask.map(|&b| b != holes);
    let (regions, n) = connected_components(&working, false, Connectivity::Eight);
    let sizes = label_sizes(&regions);
    let small: Vec<bool> = (0..=n as usize)
        .map(|i| i > 0 && sizes[i] < area_thresh)
        .collect();
    if !small.iter().any(|&s| s) {
        return (mask.clone(), false);
    }
    let fill: Vec<bool> = if holes {
        // Foreground = background label 0 of `working` plus the small holes.
        (0..=n as usize).map(|i| i == 0 || small[i]).collect()
    } else {
        let mut keep: Vec<bool> = (0..=n as usize).map(|i| i > 0 && !small[i]).collect();
        if !keep.iter().any(|&k| k) {
            // Every island is small: keep the largest (first on ties, as np.argmax).
            let mut best = 1;
            for i in 2..=n as usize {
                if sizes[i] > sizes[best] {
                    best = i;
                }
            }
            keep[best] = true;
        }
        keep
    };
    (regions.map(|&r| fill[r as usize]), true)
}

/// The masks predicted from the point grid of one crop (tile).
#[derive(Debug, Clone)]
pub struct CropMasks {
    /// The crop in the image, `[x0, y0, x1, y1]` with exclusive max corner.
    pub crop_box: [usize; 4],
    /// Non-empty masks in image coordinates.
    pub masks: Vec<MaskRecord>,
}

/// The result of [`amg_segment`].
#[derive(Debug, Clone)]
pub struct AmgOutput {
    /// Instance labels, 0 = background, 1..=n consecutive.
    pub labels: Plane<u32>,
    /// Predicted IoU of the mask each object came from; index = id - 1.
    pub scores: Vec<f32>,
}

/// Filter, deduplicate and merge the masks of all crops into instance labels.
pub fn amg_segment(
    crops: &[CropMasks],
    image: (usize, usize),
    params: &AmgParams,
) -> Result<AmgOutput, InferError> {
    params.validate()?;
    // Per crop: IoU / stability filters, crop-edge filter, NMS by predicted IoU.
    let mut kept: Vec<(MaskRecord, [usize; 4])> = Vec::new();
    for crop in crops {
        let candidates: Vec<&MaskRecord> = crop
            .masks
            .iter()
            .filter(|m| params.pred_iou_thresh <= 0.0 || m.predicted_iou > params.pred_iou_thresh)
            .filter(|m| {
                params.stability_score_thresh <= 0.0
                    || m.stability_score >= params.stability_score_thresh
            })
            .filter(|m| !is_box_near_crop_edge(&m.bbox(), &crop.crop_box, image))
            .collect();
        let boxes: Vec<[f32; 4]> = candidates.iter().map(|m| m.bbox()).collect();
        let scores: Vec<f32> = candidates.iter().map(|m| m.predicted_iou).collect();
        let mut keep = nms(&boxes, &scores, params.box_nms_thresh);
        keep.sort_unstable(); // MaskData.filter keeps the original order
        kept.extend(
            keep.into_iter()
                .map(|i| (candidates[i].clone(), crop.crop_box)),
        );
    }
    if crops.len() > 1 && !kept.is_empty() {
        // Prefer masks from smaller crops.
        let boxes: Vec<[f32; 4]> = kept.iter().map(|(m, _)| m.bbox()).collect();
        let scores: Vec<f32> = kept
            .iter()
            .map(|(_, c)| 1.0 / ((c[2] - c[0]) as f32 * (c[3] - c[1]) as f32))
            .collect();
        let mut keep = nms(&boxes, &scores, params.crop_nms_thresh);
        keep.sort_unstable();
        kept = keep.into_iter().map(|i| kept[i].clone()).collect();
    }
    let mut masks: Vec<MaskRecord> = kept.into_iter().map(|(m, _)| m).collect();
    if params.min_mask_region_area > 0 && !masks.is_empty() {
        masks = postprocess_small_regions(masks, params)?;
    }
    merge_masks(&masks, image, params.with_background)
}

fn postprocess_small_regions(
    masks: Vec<MaskRecord>,
    params: &AmgParams,
) -> Result<Vec<MaskRecord>, InferError> {
    let mut updated = Vec::with_capacity(masks.len());
    let mut scores = Vec::with_capacity(masks.len());
    for m in &masks {
        let (a, c1) = remove_small_regions(&m.mask, params.min_mask_region_area, RegionMode::Holes);
        let (b, c2) = remove_small_regions(&a, params.min_mask_region_area, RegionMode::Islands);
        // Score 1 for unchanged masks so that NMS prefers them.
        scores.push(if c1 || c2 { 0.0 } else { 1.0 });
        // Filling holes never grows the box; the new box lies inside the old one.
        updated.push(MaskRecord::from_mask(
            &b,
            m.y0,
            m.x0,
            m.predicted_iou,
            m.stability_score,
        ));
    }
    let boxes: Vec<[f32; 4]> = updated
        .iter()
        .map(|m| m.as_ref().map_or([0.0; 4], MaskRecord::bbox))
        .collect();
    let mut keep = nms(
        &boxes,
        &scores,
        params.box_nms_thresh.max(params.crop_nms_thresh),
    );
    keep.sort_unstable();
    Ok(keep.into_iter().filter_map(|i| updated[i].take()).collect())
}

/// Paint `masks` in the given order into an `image`-sized label plane: pixel value = 1-based
/// position in `masks`. Later masks overwrite earlier ones, or with `exclusive` only fill the
/// pixels still 0 (micro_sam's `merge_exclusively`).
fn paint_masks(
    masks: &[&MaskRecord],
    image: (usize, usize),
    exclusive: bool,
) -> Result<Plane<u32>, InferError> {
    let (h, w) = image;
    let mut painted = Plane::<u32>::zeros(h, w);
    for (i, m) in masks.iter().enumerate() {
        if m.y0 + m.mask.rows() > h || m.x0 + m.mask.cols() > w {
            return Err(InferError::Shape {
                what: "mask placement".into(),
                expected: format!("pixels inside the {h}×{w} image"),
                found: format!(
                    "a {}×{} mask at ({}, {})",
                    m.mask.rows(),
                    m.mask.cols(),
                    m.y0,
                    m.x0
                ),
            });
        }
        for y in 0..m.mask.rows() {
            let dst = &mut painted.row_mut(m.y0 + y)[m.x0..m.x0 + m.mask.cols()];
            for (d, &b) in dst.iter_mut().zip(m.mask.row(y)) {
                if b && (!exclusive || *d == 0) {
                    *d = i as u32 + 1;
                }
            }
        }
    }
    Ok(painted)
}

/// micro_sam `mask_data_to_segmentation(merge_exclusively=False, label_masks=True)`: paint the
/// masks largest first (stable on ties), split the painted ids into 4-connected components, drop
/// the largest segment (counting the unpainted background, as `np.argmax` over all ids does) when
/// `with_background`, and number the rest consecutively in order of first appearance.
pub fn merge_masks(
    masks: &[MaskRecord],
    image: (usize, usize),
    with_background: bool,
) -> Result<AmgOutput, InferError> {
    let masks: Vec<&MaskRecord> = masks.iter().collect();
    masks_to_segmentation(&masks, image, false, 0, with_background)
}

/// micro_sam `mask_data_to_segmentation`: `masks` painted largest first (stable on ties, so
/// equal areas keep the given order) into an `image`-sized plane, later masks overwriting
/// earlier ones or with `exclusive` only filling the pixels still free ([`paint_masks`]); the
/// painted ids split into 4-connected pieces; pieces with fewer than `min_size` pixels removed
/// and with `with_background` the largest segment too (counting the unpainted background, as
/// `np.argmax` over all ids does); the rest numbered consecutively in order of first
/// appearance, each scored with the predicted IoU of the mask it came from.
pub(crate) fn masks_to_segmentation(
    masks: &[&MaskRecord],
    image: (usize, usize),
    exclusive: bool,
    min_size: u64,
    with_background: bool,
) -> Result<AmgOutput, InferError> {
    let mut sorted = masks.to_vec();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.area)); // stable: ties keep the given order
    let painted = paint_masks(&sorted, image, exclusive)?;
    let (mut labels, n) = connected_components(&painted, 0, Connectivity::Four);
    // Source mask of each component: its painted value, a 1-based position in `sorted`.
    let mut source = vec![0u32; n as usize + 1];
    for (l, p) in labels.as_slice().iter().zip(painted.as_slice()) {
        source[*l as usize] = *p;
    }
    let sizes = label_sizes(&labels);
    let mut drop = vec![false; sizes.len()];
    if with_background && !sizes.is_empty() {
        let mut best = 0;
        for (i, &s) in sizes.iter().enumerate() {
            if s > sizes[best] {
                best = i;
            }
        }
        drop[best] = true;
    }
    let mut map = vec![0u32; sizes.len()];
    let mut scores = Vec::new();
    for id in 1..sizes.len() {
        if !drop[id] && sizes[id] > 0 && sizes[id] >= min_size {
            scores.push(sorted[source[id] as usize - 1].predicted_iou);
            map[id] = scores.len() as u32;
        }
    }
    for l in labels.as_mut_slice() {
        *l = map[*l as usize];
    }
    Ok(AmgOutput { labels, scores })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect_mask(h: usize, w: usize, y0: usize, x0: usize, y1: usize, x1: usize) -> Plane<bool> {
        let mut m = Plane::filled(h, w, false);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(y, x, true);
            }
        }
        m
    }

    fn record(h: usize, w: usize, r: [usize; 4], iou: f32) -> MaskRecord {
        MaskRecord::from_mask(&rect_mask(h, w, r[0], r[1], r[2], r[3]), 0, 0, iou, 1.0).unwrap()
    }

    #[test]
    fn point_grid_matches_segment_anything() {
        // n = 2: offset 1/4, points (0.25, 0.75) per side, x fastest.
        assert_eq!(
            build_point_grid(2),
            vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
        );
        let g = build_point_grid(32);
        assert_eq!(g.len(), 1024);
        assert!((g[0][0] - 1.0 / 64.0).abs() < 1e-7);
        assert!((g[1023][1] - 63.0 / 64.0).abs() < 1e-7);
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
    }

    #[test]
    fn stability_is_iou_of_shifted_thresholds() {
        // > 1: 2 pixels; > -1: 4 pixels → 0.5.
        assert_eq!(stability_score(&[3.0, 1.5, 0.0, -0.5, -2.0], 0.0, 1.0), 0.5);
        assert!(stability_score(&[-5.0, -5.0], 0.0, 1.0).is_nan());
    }

    #[test]
    fn mask_box_is_inclusive() {
        let m = rect_mask(6, 8, 1, 2, 4, 7);
        assert_eq!(mask_box(&m), Some([2, 1, 6, 3]));
        assert_eq!(mask_box(&Plane::filled(3, 3, false)), None);
        let r = MaskRecord::from_mask(&m, 10, 20, 0.9, 1.0).unwrap();
        assert_eq!((r.y0, r.x0, r.area, r.mask.shape()), (11, 22, 15, (3, 5)));
        assert_eq!(r.bbox(), [22.0, 11.0, 26.0, 13.0]);
    }

    #[test]
    fn iou_and_nms_follow_torchvision() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 15.0, 10.0];
        // inter 50, union 150.
        assert!((box_iou(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(box_iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
        let boxes = [a, b, [0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0]];
        // Box 2 has IoU 0.9 with box 0 and the higher score → box 0 is dropped.
        let keep = nms(&boxes, &[0.8, 0.7, 0.9, 0.1], 0.7);
        assert_eq!(keep, vec![2, 1, 3]);
        // With threshold 0.3 box 1 (IoU with box 2 = 45/145 = 0.31) goes too.
        assert_eq!(nms(&boxes, &[0.8, 0.7, 0.9, 0.1], 0.3), vec![2, 3]);
    }

    #[test]
    fn crop_edge_filter_ignores_image_edges() {
        let crop = [0, 0, 100, 100];
        // Touches the crop's right edge (x1 = 95 ≈ 100) inside a 200-wide image → near.
        assert!(is_box_near_crop_edge(
            &[40.0, 40.0, 95.0, 60.0],
            &crop,
            (200, 200)
        ));
        // Touches only the left edge, which is the image edge → not near.
        assert!(!is_box_near_crop_edge(
            &[2.0, 40.0, 50.0, 60.0],
            &crop,
            (200, 200)
        ));
        // When the crop is the image, nothing is near a crop edge.
        assert!(!is_box_near_crop_edge(
            &[40.0, 40.0, 99.0, 99.0],
            &crop,
            (100, 100)
        ));
    }

    #[test]
    fn small_holes_and_islands() {
        // 5×5 square with a 1-pixel hole and a separate 1-pixel island.
        let mut m = rect_mask(7, 9, 0, 0, 5, 5);
        m.set(2, 2, false);
        m.set(6, 8, true);
        let (filled, changed) = remove_small_regions(&m, 2, RegionMode::Holes);
        assert!(changed && filled.get(2, 2));
        let (clean, changed) = remove_small_regions(&filled, 2, RegionMode::Islands);
        assert!(changed && !clean.get(6, 8) && clean.get(0, 0));
        assert_eq!(clean.as_slice().iter().filter(|&&b| b).count(), 25);
        // Nothing small → unchanged.
        let (_, changed) = remove_small_regions(&clean, 2, RegionMode::Islands);
        assert!(!changed);
        // All islands small → the largest stays.
        let mut tiny = Plane::filled(3, 5, false);
        tiny.set(0, 0, true);
        tiny.set(2, 3, true);
        tiny.set(2, 4, true);
        let (out, _) = remove_small_regions(&tiny, 10, RegionMode::Islands);
        assert_eq!(out.as_slice().iter().filter(|&&b| b).count(), 2);
        assert!(out.get(2, 3));
    }

    #[test]
    fn merge_paints_largest_first_and_drops_background() {
        // 10×10 image: a big 8×8 "background" mask, a 3×3 object inside it and a 2×2 one.
        let masks = vec![
            record(10, 10, [1, 1, 4, 4], 0.91),   // 9 px
            record(10, 10, [0, 0, 8, 8], 0.95),   // 64 px, painted first
            record(10, 10, [8, 8, 10, 10], 0.93), // 4 px
        ];
        let out = merge_masks(&masks, (10, 10), true).unwrap();
        // The 64-px mask minus the 9-px one leaves 55 px: larger than the 32 unpainted px, so it
        // is dropped as background. Remaining objects in first-appearance order: 3×3 then 2×2.
        assert_eq!(out.scores, vec![0.91, 0.93]);
        assert_eq!(out.labels.get(2, 2), 1);
        assert_eq!(out.labels.get(9, 9), 2);
        assert_eq!(out.labels.get(0, 0), 0);
        let kept = merge_masks(&masks, (10, 10), false).unwrap();
        assert_eq!(kept.scores, vec![0.95, 0.91, 0.93]);
    }

    #[test]
    fn merge_splits_disconnected_leftovers() {
        // A 1×5 bar cut in two by a smaller mask painted over its middle → 3 objects.
        let masks = vec![
            record(3, 5, [1, 0, 2, 5], 0.9),
            record(3, 5, [1, 2, 2, 3], 0.8),
        ];
        let out = merge_masks(&masks, (3, 5), false).unwrap();
        assert_eq!(out.labels.row(1), &[1, 1, 2, 3, 3]);
        assert_eq!(out.scores, vec![0.9, 0.8, 0.9]);
    }

    #[test]
    fn amg_filters_dedups_and_merges() {
        let (h, w) = (20, 20);
        let crop = CropMasks {
            crop_box: [0, 0, w, h],
            masks: vec![
                record(h, w, [2, 2, 6, 6], 0.95),    // kept
                record(h, w, [2, 2, 6, 7], 0.90), // box IoU with the first 9/12 > 0.7: NMS drops it
                record(h, w, [10, 10, 14, 14], 0.5), // predicted IoU too low
                MaskRecord {
                    stability_score: 0.5,
                    ..record(h, w, [15, 0, 18, 3], 0.99)
                },
                record(h, w, [12, 2, 16, 6], 0.89), // kept
            ],
        };
        let p = AmgParams {
            with_background: false,
            ..AmgParams::default()
        };
        let out = amg_segment(&[crop], (h, w), &p).unwrap();
        assert_eq!(out.scores, vec![0.95, 0.89]);
        assert_eq!(
            out.labels.as_slice().iter().filter(|&&l| l == 1).count(),
            16
        );
        assert_eq!(
            out.labels.as_slice().iter().filter(|&&l| l == 2).count(),
            16
        );
    }

    #[test]
    fn amg_across_tiles_prefers_the_smaller_crop() {
        let (h, w) = (100, 100);
        let m = record(h, w, [40, 40, 60, 60], 0.95);
        let big = CropMasks {
            crop_box: [0, 0, 100, 100],
            masks: vec![m.clone()],
        };
        let small = CropMasks {
            crop_box: [0, 0, 100, 80],
            masks: vec![m],
        };
        let p = AmgParams {
            with_background: false,
            ..AmgParams::default()
        };
        let out = amg_segment(&[big, small], (h, w), &p).unwrap();
        assert_eq!(out.scores.len(), 1);
        // A mask touching the inner edge of a crop (y1 = 59 near crop y1 = 60) is dropped.
        let edge = CropMasks {
            crop_box: [0, 0, 100, 60],
            masks: vec![record(h, w, [40, 40, 60, 60], 0.95)],
        };
        assert!(amg_segment(&[edge], (h, w), &p).unwrap().scores.is_empty());
    }

    #[test]
    fn params_are_validated() {
        let p = AmgParams {
            pred_iou_thresh: 1.5,
            ..AmgParams::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pred_iou_thresh"));
    }
}
