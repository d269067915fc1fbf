//! The config's `inference` section and `data.normalization` as sam-infer's options.

use std::path::{Path, PathBuf};

use sam_config::{InferenceConfig, InferenceMode, NormalizationConfig};
use sam_infer::{AisParams, AmgParams, ApgParams, AutoMode, AutoOptions, Downscale, TileSpec};

use sam_cli::{check_rules, CliError};

/// The automatic-segmentation options of a config's `inference` section (mode, tiling, batch,
/// AIS, AMG and APG settings, which outputs to write) and its `data.normalization`, after the
/// config's rules: every broken rule of `inference` as [`CliError::Config`], then those of
/// `normalization`. Existing outputs are kept (`overwrite` false), no embedding cache.
pub fn auto_options(
    inference: &InferenceConfig,
    normalization: &NormalizationConfig,
) -> Result<AutoOptions, CliError> {
    check_rules(inference.validate())?;
    let normalization = self::normalization(normalization)?;
    let a = &inference.ais;
    let m = &inference.amg;
    let p = &inference.apg;
    Ok(AutoOptions {
        mode: auto_mode(inference.mode),
        tiles: TileSpec {
            tile_shape: inference.tile_shape.map(|[h, w]| (h as usize, w as usize)),
            halo: (inference.halo[0] as usize, inference.halo[1] as usize),
        },
        batch_size: inference.batch_size as usize,
        ais: AisParams {
            center_distance_threshold: a.center_distance_threshold as f32,
            boundary_distance_threshold: a.boundary_distance_threshold as f32,
            foreground_threshold: a.foreground_threshold as f32,
            foreground_smoothing: a.foreground_smoothing as f32,
            distance_smoothing: a.distance_smoothing as f32,
            min_size: u64::from(a.min_size),
        },
        amg: AmgParams {
            points_per_side: m.points_per_side as usize,
            points_per_batch: m.points_per_batch as usize,
            pred_iou_thresh: m.pred_iou_thresh as f32,
            stability_score_thresh: m.stability_score_thresh as f32,
            stability_score_offset: m.stability_score_offset as f32,
            box_nms_thresh: m.box_nms_thresh as f32,
            crop_nms_thresh: m.crop_nms_thresh as f32,
            min_mask_region_area: u64::from(m.min_mask_region_area),
            with_background: true,
        },
        apg: ApgParams {
            min_size: u64::from(p.min_size),
            center_distance_threshold: p.center_distance_threshold as f32,
            boundary_distance_threshold: p.boundary_distance_threshold as f32,
            foreground_threshold: p.foreground_threshold as f32,
            multimasking: p.multimasking,
            batch_size: p.batch_size as usize,
            nms_threshold: p.nms_threshold as f32,
            intersection_over_min: p.intersection_over_min,
            mask_threshold: p.mask_threshold as f32,
            refine_with_box_prompts: p.refine_with_box_prompts,
        },
        normalization,
        overwrite: false,
        write_overlay: inference.write_overlay,
        write_csv: inference.write_csv,
        embedding_cache: None,
    })
}

/// sam-infer's mode for the config's `inference.mode`.
pub fn auto_mode(mode: InferenceMode) -> AutoMode {
    match mode {
        InferenceMode::Auto => AutoMode::Auto,
        InferenceMode::Ais => AutoMode::Ais,
        InferenceMode::Amg => AutoMode::Amg,
        InferenceMode::Apg => AutoMode::Apg,
    }
}

/// The preprocessing of `data.normalization` (the training one), after the config's rules.
pub fn normalization(cfg: &NormalizationConfig) -> Result<sam_data::Normalization, CliError> {
    check_rules(cfg.validate())?;
    Ok(sam_data::Normalization {
        lower_percentile: cfg.lower_percentile,
        upper_percentile: cfg.upper_percentile,
    })
}

/// An image that the model would see shrunk with the chosen tiling.
#[derive(Debug, Clone, PartialEq)]
pub struct ShrunkImage {
    /// The first image of its size.
    pub path: PathBuf,
    /// Its width in pixels.
    pub width: usize,
    /// Its height in pixels.
    pub height: usize,
    /// How much it is shrunk, and the tiling that would fit the model.
    pub downscale: Downscale,
}

/// The tiling to run a model with: `tiles` as given, except for a model trained on patches fed
/// at their own size (`model.encoder_input: native`, recorded in its checkpoint), whose tiles
/// are made to fit its input ([`TileSpec::fitting_native_input`]) so that it sees pixels at the
/// scale it was trained at. Returns the tiling and, when it changed, a note for the console.
pub fn tiles_for_model(
    tiles: TileSpec,
    native_input: bool,
    input_size: usize,
) -> (TileSpec, Option<String>) {
    if !native_input {
        return (tiles, None);
    }
    let fitted = tiles.fitting_native_input(input_size);
    if fitted == tiles {
        return (tiles, None);
    }
    let (t, h) = (
        fitted.tile_shape.map_or(input_size, |(t, _)| t),
        fitted.halo.0,
    );
    let note = format!(
        "the model was trained on patches fed at their own size ({input_size} px input): \
         images larger than that are cut into {t}×{t} tiles with a halo of {h} so that it sees \
         them at the same scale"
    );
    (fitted, Some(note))
}

/// The first image of each size among `images` that `tiles` would shrink on a model of
/// `input_size` (see [`TileSpec::downscale`]), for a warning before the run. Unreadable images
/// are left out: the run reports them.
pub fn shrunk_images<'a>(
    images: impl IntoIterator<Item = &'a Path>,
    tiles: &TileSpec,
    input_size: usize,
) -> Vec<ShrunkImage> {
    let mut seen = std::collections::BTreeSet::new();
    let mut shrunk = Vec::new();
    for path in images {
        let Ok((height, width)) = sam_data::image_dimensions(path) else {
            continue;
        };
        if !seen.insert((height, width)) {
            continue;
        }
        if let Some(downscale) = tiles.downscale((height, width), input_size) {
            shrunk.push(ShrunkImage {
                path: path.to_path_buf(),
                width,
                height,
                downscale,
            });
        }
    }
    shrunk
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_sections_map_onto_the_options() {
        let mut inf = InferenceConfig {
            mode: InferenceMode::Ais,
            tile_shape: Some([512, 640]),
            halo: [64, 32],
            ..InferenceConfig::default()
        };
        inf.ais.min_size = 25;
        inf.ais.foreground_threshold = 0.6;
        inf.amg.points_per_batch = 16;
        let o = auto_options(&inf, &NormalizationConfig::default()).unwrap();
        assert_eq!(o.mode, AutoMode::Ais);
        assert_eq!(
            o.tiles,
            TileSpec {
                tile_shape: Some((512, 640)),
                halo: (64, 32)
            }
        );
        assert_eq!(o.ais.min_size, 25);
        assert_eq!(o.ais.foreground_threshold, 0.6);
        assert_eq!(o.ais.distance_smoothing, 1.6); // micro_sam's default
        assert_eq!(o.amg.pred_iou_thresh, 0.88);
        assert_eq!(o.amg.points_per_batch, 16);
        assert_eq!(o.normalization.upper_percentile, 99.8);
        assert!(!o.overwrite && o.embedding_cache.is_none());
        assert!(o.ais.validate().is_ok() && o.amg.validate().is_ok());
        assert_eq!(o.apg, ApgParams::default()); // micro_sam's defaults on both sides
    }

    #[test]
    fn the_apg_section_maps_onto_the_options() {
        let mut inf = InferenceConfig {
            mode: InferenceMode::Apg,
            ..InferenceConfig::default()
        };
        inf.apg.min_size = 40;
        inf.apg.nms_threshold = 0.7;
        inf.apg.intersection_over_min = true;
        inf.apg.multimasking = true;
        let o = auto_options(&inf, &NormalizationConfig::default()).unwrap();
        assert_eq!(o.mode, AutoMode::Apg);
        assert_eq!((o.apg.min_size, o.apg.nms_threshold), (40, 0.7));
        assert!(o.apg.intersection_over_min && o.apg.multimasking);
        inf.apg.nms_threshold = 1.5;
        let msg = auto_options(&inf, &NormalizationConfig::default())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("inference.apg.nms_threshold"), "{msg}");
    }

    #[test]
    fn the_inference_rules_come_before_the_normalization_rules() {
        let mut inf = InferenceConfig::default();
        inf.amg.pred_iou_thresh = 1.5;
        let norm = NormalizationConfig {
            lower_percentile: 50.0,
            upper_percentile: 40.0,
            ..NormalizationConfig::default()
        };
        let msg = auto_options(&inf, &norm).unwrap_err().to_string();
        assert!(msg.starts_with("inference.amg.pred_iou_thresh"), "{msg}");
        assert!(!msg.contains("upper_percentile"), "{msg}");
        let msg = auto_options(&InferenceConfig::default(), &norm)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "data.normalization.upper_percentile: must be greater than lower_percentile"
            ),
            "{msg}"
        );
    }

    #[test]
    fn issue_17_crop_layers_are_refused_by_the_config_rules() {
        // AMG has no image crops (large images are tiled): the config's validator refuses
        // them, and the options follow it.
        let mut inf = InferenceConfig::default();
        inf.amg.crop_n_layers = 1;
        let err = auto_options(&inf, &NormalizationConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("inference.amg.crop_n_layers: must be 0"),
            "{err}"
        );
    }

    #[test]
    fn shrunk_images_are_reported_once_per_size() {
        let t = tempfile::tempdir().unwrap();
        let img = sam_data::GreyImage::filled(400, 400, sam_data::BitDepth::U8, 9.0);
        let (a, b) = (t.path().join("a.tif"), t.path().join("b.tif"));
        sam_data::write_image(&a, &img).unwrap();
        sam_data::write_image(&b, &img).unwrap();
        let missing = t.path().join("missing.tif");
        let no_tiling = TileSpec {
            tile_shape: None,
            halo: (0, 0),
        };
        let paths = [missing.as_path(), a.as_path(), b.as_path()];
        let shrunk = shrunk_images(paths, &no_tiling, 256);
        assert_eq!(shrunk.len(), 1);
        assert_eq!((shrunk[0].path.clone(), shrunk[0].width), (a.clone(), 400));
        assert_eq!(
            (shrunk[0].downscale.tile, shrunk[0].downscale.halo),
            (192, 32)
        );
        assert!(shrunk_images(paths, &no_tiling, 1024).is_empty());
    }
}
