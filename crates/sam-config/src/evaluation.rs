//! The evaluation and inference sections.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How instances are segmented without prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InferenceMode {
    /// AIS when the model has a segmentation decoder, else AMG.
    Auto,
    /// Automatic instance segmentation: UNETR decoder + seeded watershed.
    Ais,
    /// Automatic mask generation: point grid, IoU/stability filtering, NMS.
    Amg,
    /// Automatic prompt generation: point prompts from the UNETR decoder's maps, SAM masks,
    /// mask NMS.
    Apg,
}

/// micro_sam's `InstanceSegmentationWithDecoder.generate` parameters (defaults are its).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AisConfig {
    /// Seeds are where the centre-distance prediction is below this (0–1).
    pub center_distance_threshold: f64,
    /// Seeds are where the boundary-distance prediction is below this (0–1).
    pub boundary_distance_threshold: f64,
    /// Pixels with foreground probability above this (0–1) are foreground.
    pub foreground_threshold: f64,
    /// Gaussian sigma in pixels applied to the foreground prediction (0 = none).
    pub foreground_smoothing: f64,
    /// Gaussian sigma in pixels applied to the distance predictions (0 = none).
    pub distance_smoothing: f64,
    /// Objects smaller than this many pixels are removed.
    pub min_size: u32,
}

impl Default for AisConfig {
    fn default() -> Self {
        Self {
            center_distance_threshold: 0.5,
            boundary_distance_threshold: 0.5,
            foreground_threshold: 0.5,
            foreground_smoothing: 1.0,
            distance_smoothing: 1.6,
            min_size: 0,
        }
    }
}

/// Automatic mask generation parameters (segment_anything / micro_sam defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AmgConfig {
    /// Points sampled along one side of the image grid (32 × 32 points).
    pub points_per_side: u32,
    /// Points run through the mask decoder at once.
    pub points_per_batch: u32,
    /// Keep masks whose predicted IoU exceeds this (0–1).
    pub pred_iou_thresh: f64,
    /// Keep masks whose stability score exceeds this (0–1).
    pub stability_score_thresh: f64,
    /// Offset of the mask threshold when computing the stability score.
    pub stability_score_offset: f64,
    /// IoU above which overlapping boxes are suppressed (0–1).
    pub box_nms_thresh: f64,
    /// Extra layers of image crops (0 = whole image only). Only 0 is accepted: large images
    /// are tiled instead (`tile_shape`).
    pub crop_n_layers: u32,
    /// IoU above which masks from different crops are suppressed (0–1).
    pub crop_nms_thresh: f64,
    /// Masks with fewer pixels are removed (0 = keep all).
    pub min_mask_region_area: u32,
}

impl Default for AmgConfig {
    fn default() -> Self {
        Self {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            min_mask_region_area: 0,
        }
    }
}

/// micro_sam's `AutomaticPromptGenerator.generate` parameters (defaults are its).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApgConfig {
    /// Masks with at most this many pixels, and final objects with fewer, are removed.
    pub min_size: u32,
    /// Prompts come from where the centre-distance prediction is below this (0–1).
    pub center_distance_threshold: f64,
    /// Prompts come from where the boundary-distance prediction is below this (0–1).
    pub boundary_distance_threshold: f64,
    /// Prompts come only from where the foreground probability is at least this (0–1).
    pub foreground_threshold: f64,
    /// Predict three masks per prompt and keep the one with the best predicted IoU.
    pub multimasking: bool,
    /// Prompts run through the mask decoder at once.
    pub batch_size: u32,
    /// Overlap (IoU, or intersection over the smaller mask) above which the lower-scored of
    /// two masks is suppressed (0–1).
    pub nms_threshold: f64,
    /// Measure overlaps in NMS as intersection over the smaller mask instead of IoU.
    pub intersection_over_min: bool,
    /// Logit threshold of the masks (micro_sam's default `null` is the model's 0.0; its `auto`
    /// local-Otsu threshold is not offered).
    pub mask_threshold: f64,
    /// Predict again with the boxes of the first masks (grown by 1 %) as prompts.
    pub refine_with_box_prompts: bool,
}

impl Default for ApgConfig {
    fn default() -> Self {
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

/// Inference on new images (`sam-infer`). Preprocessing is `data.normalization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Segmentation mode.
    pub mode: InferenceMode,
    /// Inner block of each tile, `[height, width]` in pixels; `null` runs the whole image at
    /// once (resized to the model input).
    pub tile_shape: Option<[u32; 2]>,
    /// Overlap added on each side of a tile, `[height, width]` in pixels; only the inner
    /// block of every tile is kept.
    pub halo: [u32; 2],
    /// Images per forward pass of the image encoder.
    pub batch_size: u32,
    /// AIS parameters.
    pub ais: AisConfig,
    /// AMG parameters.
    pub amg: AmgConfig,
    /// APG parameters.
    pub apg: ApgConfig,
    /// Write an overlay PNG with object outlines on the image.
    pub write_overlay: bool,
    /// Write a per-object CSV (id, area, centroid, bbox, score).
    pub write_csv: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            mode: InferenceMode::Auto,
            tile_shape: Some([768, 768]),
            halo: [128, 128],
            batch_size: 1,
            ais: AisConfig::default(),
            amg: AmgConfig::default(),
            apg: ApgConfig::default(),
            write_overlay: true,
            write_csv: true,
        }
    }
}

/// An inclusive range of grid-search values: `start, start + step, …, stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GridRange {
    /// First value.
    pub start: f64,
    /// Last value (included when reached by whole steps).
    pub stop: f64,
    /// Positive step.
    pub step: f64,
}

impl GridRange {
    const fn new(start: f64, stop: f64, step: f64) -> Self {
        Self { start, stop, step }
    }

    /// The values, rounded to 3 decimals as micro_sam does (empty when the step is not
    /// positive or `stop < start`).
    pub fn values(&self) -> Vec<f64> {
        if self.step.is_nan() || self.step <= 0.0 || self.stop.is_nan() || self.stop < self.start {
            return Vec::new();
        }
        // A tolerance of half a thousandth keeps `stop` despite float accumulation.
        let n = ((self.stop - self.start) / self.step + 5e-4).floor() as usize;
        (0..=n)
            .map(|i| ((self.start + i as f64 * self.step) * 1000.0).round() / 1000.0)
            .collect()
    }
}

/// Grid-search values for choosing the automatic-segmentation parameters on validation images
/// (micro_sam's `default_grid_search_values_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GridSearchConfig {
    /// AIS and APG `center_distance_threshold` values.
    pub center_distance_threshold: GridRange,
    /// AIS and APG `boundary_distance_threshold` values.
    pub boundary_distance_threshold: GridRange,
    /// AIS `distance_smoothing` values.
    pub distance_smoothing: GridRange,
    /// AIS and APG `min_size` values.
    pub min_size: Vec<u32>,
    /// APG `nms_threshold` values.
    pub nms_threshold: GridRange,
    /// APG `intersection_over_min` values.
    pub intersection_over_min: Vec<bool>,
    /// AMG `pred_iou_thresh` values.
    pub pred_iou_thresh: GridRange,
    /// AMG `stability_score_thresh` values.
    pub stability_score_thresh: GridRange,
}

impl Default for GridSearchConfig {
    fn default() -> Self {
        Self {
            center_distance_threshold: GridRange::new(0.3, 0.7, 0.1),
            boundary_distance_threshold: GridRange::new(0.3, 0.7, 0.1),
            distance_smoothing: GridRange::new(1.0, 2.0, 0.2),
            min_size: vec![50, 100, 200],
            nms_threshold: GridRange::new(0.5, 0.9, 0.1),
            intersection_over_min: vec![true, false],
            pred_iou_thresh: GridRange::new(0.6, 0.9, 0.025),
            stability_score_thresh: GridRange::new(0.6, 0.95, 0.025),
        }
    }
}

/// The first prompt of iterative-prompting evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptStart {
    /// One positive point per object.
    Point,
    /// The object's bounding box.
    Box,
    /// Both, reported separately.
    Both,
}

/// Iterative-prompting evaluation: start with a point or box, then add a corrective point
/// per round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IterativePromptingConfig {
    /// Prompting rounds, one report row each (micro_sam: 8).
    pub n_iterations: u32,
    /// The first prompt.
    pub start_with: PromptStart,
    /// Give the previous round's logits as mask input.
    pub use_masks: bool,
}

impl Default for IterativePromptingConfig {
    fn default() -> Self {
        Self {
            n_iterations: 8,
            start_with: PromptStart::Both,
            use_masks: false,
        }
    }
}

/// Evaluation on held-out test images (`sam-eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Folder of test images.
    pub test_images_dir: PathBuf,
    /// Folder of test labels, matched to the images by file stem.
    pub test_labels_dir: PathBuf,
    /// Grid search for the automatic-segmentation parameters.
    pub grid_search: GridSearchConfig,
    /// Iterative-prompting evaluation.
    pub iterative_prompting: IterativePromptingConfig,
    /// Write overlay pictures of predictions against labels.
    pub write_overlays: bool,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            test_images_dir: PathBuf::from("dat/test_data/images"),
            test_labels_dir: PathBuf::from("dat/test_data/labels"),
            grid_search: GridSearchConfig::default(),
            iterative_prompting: IterativePromptingConfig::default(),
            write_overlays: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_ranges_match_micro_sam_values() {
        assert_eq!(
            GridRange::new(0.3, 0.7, 0.1).values(),
            vec![0.3, 0.4, 0.5, 0.6, 0.7]
        );
        assert_eq!(
            GridRange::new(1.0, 2.0, 0.2).values(),
            vec![1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
        );
        let iou = GridRange::new(0.6, 0.9, 0.025).values();
        assert_eq!(iou.len(), 13);
        assert_eq!(iou[1], 0.625);
        assert_eq!(iou[12], 0.9);
        assert!(GridRange::new(0.5, 0.4, 0.1).values().is_empty());
        assert!(GridRange::new(0.5, 0.6, 0.0).values().is_empty());
    }
}
