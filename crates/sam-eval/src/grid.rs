//! Grid search of the automatic-segmentation parameters on validation images, as micro_sam's
//! `run_instance_segmentation_grid_search`: every combination of the given values is scored by
//! the mean over images of the per-image mSA, and the best one (the first of equals, in grid
//! order) is kept.
//!
//! The expensive model work is done once per image ([`DecoderMaps`] for AIS, the point-grid
//! masks for AMG); only the post-processing runs per combination. For AIS the distance maps are
//! smoothed once per `distance_smoothing` value and the watershed runs once per
//! (smoothing, centre, boundary) triple; `min_size` is a size filter on its result. Each step is
//! the one `sam_infer::ais_segment` runs, so the labels equal what a full run with those
//! parameters gives (tests check this). For APG the prompts and SAM's masks depend on the
//! (centre, boundary) thresholds only: they are computed once per pair, and `min_size`,
//! `nms_threshold` and `intersection_over_min` re-run the NMS and merge (`sam_infer::apg_segment`).

use rayon::prelude::*;
use sam_data::size_filter;
use sam_infer::{
    ais_segment, amg_segment, apg_segment, gaussian_smoothing, AisParams, AmgParams, ApgParams,
    CropMasks, DecoderMaps, MaskRecord,
};
use serde::Serialize;

use crate::error::EvalError;
use crate::metrics::{numpy_mean, score_image};

/// The values tried by the grid search (micro_sam's `default_grid_search_values_*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridValues {
    /// AIS and APG `center_distance_threshold`.
    pub center_distance_threshold: Vec<f32>,
    /// AIS and APG `boundary_distance_threshold`.
    pub boundary_distance_threshold: Vec<f32>,
    /// AIS `distance_smoothing`.
    pub distance_smoothing: Vec<f32>,
    /// AIS and APG `min_size`.
    pub min_size: Vec<u64>,
    /// APG `nms_threshold`.
    pub nms_threshold: Vec<f32>,
    /// APG `intersection_over_min`.
    pub intersection_over_min: Vec<bool>,
    /// AMG `pred_iou_thresh`.
    pub pred_iou_thresh: Vec<f32>,
    /// AMG `stability_score_thresh`.
    pub stability_score_thresh: Vec<f32>,
}

/// One AIS combination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AisGridParams {
    /// Seeds where the centre distance is below this.
    pub center_distance_threshold: f32,
    /// Seeds where the boundary distance is below this.
    pub boundary_distance_threshold: f32,
    /// Gaussian σ of the distance maps.
    pub distance_smoothing: f32,
    /// Objects smaller than this are removed.
    pub min_size: u64,
}

impl AisGridParams {
    /// `base` with these four values.
    pub fn apply(&self, base: &AisParams) -> AisParams {
        AisParams {
            center_distance_threshold: self.center_distance_threshold,
            boundary_distance_threshold: self.boundary_distance_threshold,
            distance_smoothing: self.distance_smoothing,
            min_size: self.min_size,
            ..*base
        }
    }
}

/// One AMG combination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AmgGridParams {
    /// Keep masks whose predicted IoU exceeds this.
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this.
    pub stability_score_thresh: f32,
}

impl AmgGridParams {
    /// `base` with these two values.
    pub fn apply(&self, base: &AmgParams) -> AmgParams {
        AmgParams {
            pred_iou_thresh: self.pred_iou_thresh,
            stability_score_thresh: self.stability_score_thresh,
            ..*base
        }
    }
}

/// One APG combination (micro_sam's `default_grid_search_values_apg`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ApgGridParams {
    /// Prompts where the centre distance is below this.
    pub center_distance_threshold: f32,
    /// Prompts where the boundary distance is below this.
    pub boundary_distance_threshold: f32,
    /// Masks and objects smaller than this are removed.
    pub min_size: u64,
    /// NMS overlap threshold.
    pub nms_threshold: f32,
    /// NMS overlap as intersection over the smaller mask.
    pub intersection_over_min: bool,
}

impl ApgGridParams {
    /// `base` with these five values.
    pub fn apply(&self, base: &ApgParams) -> ApgParams {
        ApgParams {
            center_distance_threshold: self.center_distance_threshold,
            boundary_distance_threshold: self.boundary_distance_threshold,
            min_size: self.min_size,
            nms_threshold: self.nms_threshold,
            intersection_over_min: self.intersection_over_min,
            ..*base
        }
    }
}

/// A combination of any mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum GridParams {
    /// AIS thresholds.
    Ais(AisGridParams),
    /// AMG thresholds.
    Amg(AmgGridParams),
    /// APG thresholds.
    Apg(ApgGridParams),
}

/// One tried combination with its validation scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridPoint {
    /// The combination.
    pub params: GridParams,
    /// Mean over the validation images of the per-image mSA (what is maximised).
    pub msa: f64,
    /// Mean over the validation images of SA50.
    pub sa50: f64,
}

/// The outcome of a grid search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridSearchReport {
    /// The validation images (file stems).
    pub validation_images: Vec<String>,
    /// The values the grid was built from.
    pub values: GridValues,
    /// Every combination, in grid order, with its scores.
    pub tried: Vec<GridPoint>,
    /// Index into `tried` of the chosen combination: highest mSA, the first of equals.
    pub best: usize,
}

impl GridSearchReport {
    /// The chosen combination.
    pub fn chosen(&self) -> &GridPoint {
        &self.tried[self.best]
    }
}

fn non_empty<T>(name: &str, v: &[T]) -> Result<(), EvalError> {
    if v.is_empty() {
        Err(EvalError::Setting {
            name: format!("evaluation.grid_search.{name}"),
            message: "has no values; give at least one (a range with start <= stop and a \
                      positive step, or a non-empty list)"
                .into(),
        })
    } else {
        Ok(())
    }
}

impl GridValues {
    /// Every AIS combination, in micro_sam's order (centre, boundary, smoothing, min size; the
    /// last varies fastest).
    pub fn ais_grid(&self) -> Result<Vec<AisGridParams>, EvalError> {
        non_empty("center_distance_threshold", &self.center_distance_threshold)?;
        non_empty(
            "boundary_distance_threshold",
            &self.boundary_distance_threshold,
        )?;
        non_empty("distance_smoothing", &self.distance_smoothing)?;
        non_empty("min_size", &self.min_size)?;
        let mut out = Vec::new();
        for &c in &self.center_distance_threshold {
            for &b in &self.boundary_distance_threshold {
                for &s in &self.distance_smoothing {
                    for &m in &self.min_size {
                        out.push(AisGridParams {
                            center_distance_threshold: c,
                            boundary_distance_threshold: b,
                            distance_smoothing: s,
                            min_size: m,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every APG combination, in micro_sam's order (centre, boundary, min size, NMS threshold,
    /// intersection over min; the last varies fastest).
    pub fn apg_grid(&self) -> Result<Vec<ApgGridParams>, EvalError> {
        non_empty("center_distance_threshold", &self.center_distance_threshold)?;
        non_empty(
            "boundary_distance_threshold",
            &self.boundary_distance_threshold,
        )?;
        non_empty("min_size", &self.min_size)?;
        non_empty("nms_threshold", &self.nms_threshold)?;
        non_empty("intersection_over_min", &self.intersection_over_min)?;
        let mut out = Vec::new();
        for &c in &self.center_distance_threshold {
            for &b in &self.boundary_distance_threshold {
                for &m in &self.min_size {
                    for &n in &self.nms_threshold {
                        for &i in &self.intersection_over_min {
                            out.push(ApgGridParams {
                                center_distance_threshold: c,
                                boundary_distance_threshold: b,
                                min_size: m,
                                nms_threshold: n,
                                intersection_over_min: i,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every AMG combination (IoU threshold, then stability threshold varying fastest).
    pub fn amg_grid(&self) -> Result<Vec<AmgGridParams>, EvalError> {
        non_empty("pred_iou_thresh", &self.pred_iou_thresh)?;
        non_empty("stability_score_thresh", &self.stability_score_thresh)?;
        Ok(self
            .pred_iou_thresh
            .iter()
            .flat_map(|&p| {
                self.stability_score_thresh
                    .iter()
                    .map(move |&s| AmgGridParams {
                        pred_iou_thresh: p,
                        stability_score_thresh: s,
                    })
            })
            .collect())
    }
}

/// `(mSA, SA50)` of one image for every AIS combination of `grid` (same order), from the
/// decoder maps of the image and its ground truth (row-major, 0 = background). The
/// foreground smoothing and threshold come from `base`.
///
/// # Errors
/// Maps of unequal shapes, a ground truth of another size, or invalid parameters.
pub fn score_ais_grid(
    maps: &DecoderMaps,
    gt: &[u32],
    base: &AisParams,
    grid: &[AisGridParams],
) -> Result<Vec<(f64, f64)>, EvalError> {
    maps.check()?;
    if gt.len() != maps.foreground.as_slice().len() {
        return Err(crate::MetricError::LengthMismatch {
            gt: gt.len(),
            pred: maps.foreground.as_slice().len(),
        }
        .into());
    }
    let foreground = gaussian_smoothing(&maps.foreground, base.foreground_smoothing);
    // The watershed depends on (smoothing, centre, boundary); min_size only filters its result.
    // Grid positions grouped by that triple, triples grouped by smoothing; one smoothing's
    // segmentations are alive at a time (each is a full-size label image).
    let key = |p: &AisGridParams| {
        (
            p.distance_smoothing.to_bits(),
            p.center_distance_threshold.to_bits(),
            p.boundary_distance_threshold.to_bits(),
        )
    };
    let mut groups: Vec<((u32, u32, u32), Vec<usize>)> = Vec::new();
    for (k, p) in grid.iter().enumerate() {
        match groups.iter_mut().find(|(t, _)| *t == key(p)) {
            Some((_, members)) => members.push(k),
            None => groups.push((key(p), vec![k])),
        }
    }
    let mut smoothings: Vec<u32> = Vec::new();
    for ((s, _, _), _) in &groups {
        if !smoothings.contains(s) {
            smoothings.push(*s);
        }
    }
    let mut scores = vec![(0.0, 0.0); grid.len()];
    for s_bits in smoothings {
        let sigma = f32::from_bits(s_bits);
        let smoothed = DecoderMaps {
            foreground: foreground.clone(),
            center_distances: gaussian_smoothing(&maps.center_distances, sigma),
            boundary_distances: gaussian_smoothing(&maps.boundary_distances, sigma),
        };
        let scored = groups
            .par_iter()
            .filter(|((s, _, _), _)| *s == s_bits)
            .map(|&((_, c, b), ref members)| {
                // Already smoothed: the σ = 0 steps of ais_segment leave the maps as they are.
                let p = AisParams {
                    center_distance_threshold: f32::from_bits(c),
                    boundary_distance_threshold: f32::from_bits(b),
                    foreground_smoothing: 0.0,
                    distance_smoothing: 0.0,
                    min_size: 0,
                    ..*base
                };
                let seg = ais_segment(&smoothed, &p)?;
                members
                    .iter()
                    .map(|&k| {
                        let mut filtered = seg.clone();
                        size_filter(&mut filtered, grid[k].min_size);
                        let s = score_image(gt, filtered.as_slice())?;
                        Ok((k, (s.msa, s.sa50)))
                    })
                    .collect::<Result<Vec<_>, EvalError>>()
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        for (k, v) in scored.into_iter().flatten() {
            scores[k] = v;
        }
    }
    Ok(scores)
}

/// `(mSA, SA50)` of one image for every AMG combination of `grid`, from the point-grid masks
/// of its tiles (`crops`) and its ground truth; the other AMG settings come from `base`.
///
/// # Errors
/// A ground truth of another size or invalid parameters.
pub fn score_amg_grid(
    crops: &[CropMasks],
    shape: (usize, usize),
    gt: &[u32],
    base: &AmgParams,
    grid: &[AmgGridParams],
) -> Result<Vec<(f64, f64)>, EvalError> {
    grid.par_iter()
        .map(|p| {
            let out = amg_segment(crops, shape, &p.apply(base))?;
            let s = score_image(gt, out.labels.as_slice())?;
            Ok((s.msa, s.sa50))
        })
        .collect()
}

/// `(mSA, SA50)` of one image for every APG combination of `grid` (same order). `masks_for`
/// gives SAM's masks for the prompts of the given parameters (their centre and boundary
/// thresholds; see `sam_infer::InferenceModel::apg_masks`): it runs once per (centre, boundary)
/// pair, and the NMS and merge run per combination. The other APG settings come from `base`.
///
/// # Errors
/// A ground truth of another size, invalid parameters, or what `masks_for` returns.
pub fn score_apg_grid(
    masks_for: &mut dyn FnMut(&ApgParams) -> Result<Vec<MaskRecord>, EvalError>,
    shape: (usize, usize),
    gt: &[u32],
    base: &ApgParams,
    grid: &[ApgGridParams],
) -> Result<Vec<(f64, f64)>, EvalError> {
    if gt.len() != shape.0 * shape.1 {
        return Err(crate::MetricError::LengthMismatch {
            gt: gt.len(),
            pred: shape.0 * shape.1,
        }
        .into());
    }
    let key = |p: &ApgGridParams| {
        (
            p.center_distance_threshold.to_bits(),
            p.boundary_distance_threshold.to_bits(),
        )
    };
    let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
    for (k, p) in grid.iter().enumerate() {
        match groups.iter_mut().find(|(t, _)| *t == key(p)) {
            Some((_, members)) => members.push(k),
            None => groups.push((key(p), vec![k])),
        }
    }
    let mut scores = vec![(0.0, 0.0); grid.len()];
    for (_, members) in &groups {
        let masks = masks_for(&grid[members[0]].apply(base))?;
        let scored = members
            .par_iter()
            .map(|&k| {
                let out = apg_segment(&masks, shape, &grid[k].apply(base))?;
                let s = score_image(gt, out.labels.as_slice())?;
                Ok((k, (s.msa, s.sa50)))
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        for (k, v) in scored {
            scores[k] = v;
        }
    }
    Ok(scores)
}

/// Averages per-image grid scores (`per_image[i][k]` = image `i`, combination `k`) and picks
/// the combination with the highest mean mSA (the first of equals, as pandas' `idxmax`).
///
/// # Errors
/// [`crate::MetricError::NoImages`] without images; a setting error for an empty grid.
pub fn choose(
    grid: Vec<GridParams>,
    per_image: &[Vec<(f64, f64)>],
    validation_images: Vec<String>,
    values: GridValues,
) -> Result<GridSearchReport, EvalError> {
    if per_image.is_empty() {
        return Err(crate::MetricError::NoImages.into());
    }
    if grid.is_empty() {
        return Err(EvalError::Setting {
            name: "evaluation.grid_search".into(),
            message: "no combinations to try".into(),
        });
    }
    let tried: Vec<GridPoint> = grid
        .into_iter()
        .enumerate()
        .map(|(k, params)| {
            let msa: Vec<f64> = per_image.iter().map(|s| s[k].0).collect();
            let sa50: Vec<f64> = per_image.iter().map(|s| s[k].1).collect();
            GridPoint {
                params,
                msa: numpy_mean(&msa),
                sa50: numpy_mean(&sa50),
            }
        })
        .collect();
    let mut best = 0;
    for (k, p) in tried.iter().enumerate() {
        if p.msa > tried[best].msa {
            best = k;
        }
    }
    Ok(GridSearchReport {
        validation_images,
        values,
        tried,
        best,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sam_data::Plane;

    /// Decoder maps that a perfect decoder would give: the training targets of the labels.
    fn perfect_maps(labels: &sam_data::LabelImage) -> DecoderMaps {
        let t = sam_data::ais_targets(labels, 0);
        let (h, w) = labels.shape();
        let n = h * w;
        let plane = |c: usize| Plane::from_vec(h, w, t.data[c * n..(c + 1) * n].to_vec()).unwrap();
        DecoderMaps {
            foreground: plane(0),
            center_distances: plane(1),
            boundary_distances: plane(2),
        }
    }

    fn values() -> GridValues {
        GridValues {
            center_distance_threshold: vec![0.1, 0.5],
            boundary_distance_threshold: vec![0.3, 0.6],
            distance_smoothing: vec![0.0, 1.6],
            min_size: vec![0, 10_000],
            nms_threshold: vec![0.5, 0.9],
            intersection_over_min: vec![true, false],
            pred_iou_thresh: vec![0.5],
            stability_score_thresh: vec![0.5],
        }
    }

    #[test]
    fn grid_order_is_micro_sams_and_empty_lists_are_refused() {
        let g = values().ais_grid().unwrap();
        assert_eq!(g.len(), 16);
        assert_eq!(g[0].min_size, 0);
        assert_eq!(g[1].min_size, 10_000);
        assert_eq!(g[2].distance_smoothing, 1.6);
        assert_eq!(g[15].center_distance_threshold, 0.5);
        let mut v = values();
        v.min_size.clear();
        let e = v.ais_grid().unwrap_err();
        assert!(e.is_usage());
        assert!(
            e.to_string().contains("evaluation.grid_search.min_size"),
            "{e}"
        );
        assert_eq!(values().amg_grid().unwrap().len(), 1);
        let a = values().apg_grid().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a[0].intersection_over_min && !a[1].intersection_over_min);
        assert_eq!((a[2].nms_threshold, a[4].min_size), (0.9, 10_000));
        assert_eq!(a[31].center_distance_threshold, 0.5);
        let mut v = values();
        v.intersection_over_min.clear();
        let e = v.apg_grid().unwrap_err();
        assert!(e.to_string().contains("intersection_over_min"), "{e}");
    }

    #[test]
    fn apg_grid_scores_equal_full_runs_with_masks_once_per_threshold_pair() {
        // Masks of the objects of a synthetic image, plus a copy of each grown by one pixel
        // row (IoU just below 1 with its original) and a tiny one: the NMS and size settings
        // must change the outcome, and each combination must score what apg_segment gives.
        let s = sam_data::synthesize(
            &sam_data::SynthConfig {
                size: 96,
                ..Default::default()
            },
            5,
        );
        let (h, w) = s.labels.shape();
        let n = s.labels.max_id();
        let mut masks = Vec::new();
        for id in 1..=n {
            let m = s.labels.map(|&l| l == id);
            if let Some(r) = MaskRecord::from_mask(&m, 0, 0, 0.9, 0.95) {
                masks.push(r);
            }
            let mut grown = m.clone();
            for y in 1..h {
                for x in 0..w {
                    if m.get(y, x) && !m.get(y - 1, x) {
                        grown.set(y - 1, x, true);
                    }
                }
            }
            if let Some(r) = MaskRecord::from_mask(&grown, 0, 0, 0.8, 0.9) {
                masks.push(r);
            }
        }
        let base = ApgParams::default();
        let grid = values().apg_grid().unwrap();
        let mut calls = Vec::new();
        let scores = score_apg_grid(
            &mut |p| {
                calls.push((p.center_distance_threshold, p.boundary_distance_threshold));
                Ok(masks.clone())
            },
            (h, w),
            s.labels.as_slice(),
            &base,
            &grid,
        )
        .unwrap();
        assert_eq!(calls, vec![(0.1, 0.3), (0.1, 0.6), (0.5, 0.3), (0.5, 0.6)]);
        for (p, &(msa, sa50)) in grid.iter().zip(&scores) {
            let seg = apg_segment(&masks, (h, w), &p.apply(&base)).unwrap();
            let full = score_image(s.labels.as_slice(), seg.labels.as_slice()).unwrap();
            assert_eq!((full.msa, full.sa50), (msa, sa50), "{p:?}");
        }
        // min_size 10 000 removes everything; the originals kept by NMS score well.
        assert!(scores.iter().any(|s| s.0 == 0.0));
        let best = scores.iter().map(|s| s.0).fold(0.0, f64::max);
        assert!(best > 0.5, "best mSA {best}");
    }

    #[test]
    fn grid_scores_equal_full_ais_runs_and_the_best_is_chosen() {
        let s = sam_data::synthesize(
            &sam_data::SynthConfig {
                size: 96,
                ..Default::default()
            },
            3,
        );
        let maps = perfect_maps(&s.labels);
        let base = AisParams::default();
        let grid = values().ais_grid().unwrap();
        let scores = score_ais_grid(&maps, s.labels.as_slice(), &base, &grid).unwrap();
        for (p, &(msa, sa50)) in grid.iter().zip(&scores) {
            let seg = ais_segment(&maps, &p.apply(&base)).unwrap();
            let full = score_image(s.labels.as_slice(), seg.as_slice()).unwrap();
            assert_eq!((full.msa, full.sa50), (msa, sa50), "{p:?}");
        }
        // A perfect decoder segments well with some thresholds, and a min_size above every
        // object removes everything: the search must see the difference.
        let best = scores.iter().map(|s| s.0).fold(0.0, f64::max);
        assert!(best > 0.5, "best mSA {best}");
        assert!(scores.iter().any(|s| s.0 == 0.0));
        let per_image = vec![scores.clone(), scores.clone()];
        let params: Vec<GridParams> = grid.iter().copied().map(GridParams::Ais).collect();
        let r = choose(params, &per_image, vec!["a".into(), "b".into()], values()).unwrap();
        assert_eq!(r.chosen().msa, best);
        let first = scores.iter().position(|s| s.0 == best).unwrap();
        assert_eq!(r.best, first, "first of equals");
        assert!(r.tried.iter().all(|p| p.msa <= r.chosen().msa));
    }
}
