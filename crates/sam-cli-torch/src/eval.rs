//! The config's `evaluation` section (and the flags of `sam-eval model`) as sam-eval's options.

use std::path::PathBuf;

use sam_config::{ExperimentConfig, RunPaths, ValidationSource};
use sam_eval::{
    GridSearchOptions, GridValues, ImageSource, IterativeOptions, ModelEvalOptions, PromptStart,
};

use crate::{auto_options, resolve_checkpoint};
use sam_cli::CliError;

/// Objects per mask-decoder call in iterative prompting.
pub const OBJECTS_PER_BATCH: usize = 16;

/// What the flags of `sam-eval model` add to the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelEvalFlags {
    /// Choose the automatic-segmentation thresholds on the validation images first.
    pub grid_search: bool,
    /// Also evaluate iterative prompting.
    pub iterative_prompting: bool,
    /// Replace an existing evaluation.
    pub overwrite: bool,
    /// Overlay pictures of this many lowest-mSA images [default: 10, 0 when
    /// `evaluation.write_overlays` is false].
    pub worst: Option<usize>,
}

/// The model that `sam-eval model` scores: `--checkpoint` by the one rule of
/// [`resolve_checkpoint`] in the run's repository root, else the config's `export_path`.
pub fn eval_checkpoint(spec: Option<&str>, paths: &RunPaths) -> Result<PathBuf, CliError> {
    match spec {
        Some(spec) => resolve_checkpoint(spec, Some(&paths.root), None),
        None if paths.export_path.is_file() => Ok(paths.export_path.clone()),
        None => Err(CliError::NoExport(paths.export_path.clone())),
    }
}

/// The evaluation of `checkpoint` that `cfg` and `flags` describe: test images, output folder,
/// automatic segmentation ([`auto_options`] of `inference` and `data.normalization`), grid
/// search and iterative prompting.
pub fn model_eval_options(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    checkpoint: PathBuf,
    flags: ModelEvalFlags,
) -> Result<ModelEvalOptions, CliError> {
    let e = &cfg.evaluation;
    let grid_search = if flags.grid_search {
        Some(GridSearchOptions {
            validation: validation_images(cfg, paths)?,
            values: grid_values(cfg),
        })
    } else {
        None
    };
    let iterative = flags.iterative_prompting.then(|| iterative_options(cfg));
    let mut segmentation = auto_options(&cfg.inference, &cfg.data.normalization)?;
    // Predictions are always recomputed and written as label images only.
    segmentation.overwrite = true;
    segmentation.write_overlay = false;
    segmentation.write_csv = false;
    Ok(ModelEvalOptions {
        checkpoint,
        test_images: paths.resolve(&e.test_images_dir),
        test_labels: paths.resolve(&e.test_labels_dir),
        out_dir: paths.evaluation_dir.clone(),
        overwrite: flags.overwrite,
        segmentation,
        grid_search,
        iterative,
        overlays: flags.worst.unwrap_or(if e.write_overlays { 10 } else { 0 }),
    })
}

/// The grid of `evaluation.grid_search`.
pub fn grid_values(cfg: &ExperimentConfig) -> GridValues {
    let g = &cfg.evaluation.grid_search;
    let f = |r: &sam_config::GridRange| r.values().into_iter().map(|v| v as f32).collect();
    GridValues {
        center_distance_threshold: f(&g.center_distance_threshold),
        boundary_distance_threshold: f(&g.boundary_distance_threshold),
        distance_smoothing: f(&g.distance_smoothing),
        min_size: g.min_size.iter().map(|&m| u64::from(m)).collect(),
        nms_threshold: f(&g.nms_threshold),
        intersection_over_min: g.intersection_over_min.clone(),
        pred_iou_thresh: f(&g.pred_iou_thresh),
        stability_score_thresh: f(&g.stability_score_thresh),
    }
}

/// Iterative prompting as `evaluation.iterative_prompting` and the experiment seed set it.
pub fn iterative_options(cfg: &ExperimentConfig) -> IterativeOptions {
    let it = &cfg.evaluation.iterative_prompting;
    IterativeOptions {
        starts: match it.start_with {
            sam_config::PromptStart::Point => vec![PromptStart::Point],
            sam_config::PromptStart::Box => vec![PromptStart::Box],
            sam_config::PromptStart::Both => vec![PromptStart::Box, PromptStart::Point],
        },
        n_iterations: it.n_iterations as usize,
        use_masks: it.use_masks,
        seed: cfg.seed,
        objects_per_batch: OBJECTS_PER_BATCH,
    }
}

/// The validation images of the experiment: `data.validation`'s folders, or the training
/// images that training held out (the same fraction and seed, so the same images: see
/// `sam_data::hold_out`).
pub fn validation_images(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
) -> Result<ImageSource, CliError> {
    match cfg.data.validation.source() {
        Some(ValidationSource::Dirs { images, labels }) => Ok(ImageSource::Dirs {
            images: paths.resolve(&images),
            labels: paths.resolve(&labels),
        }),
        Some(ValidationSource::Fraction(fraction)) => Ok(ImageSource::HeldOut {
            images: paths.resolve(&cfg.data.train_images_dir),
            labels: paths.resolve(&cfg.data.train_labels_dir),
            fraction,
            seed: cfg.seed,
        }),
        None => Err(CliError::NoValidationImages),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tests::minimal_config;

    #[test]
    fn config_sections_map_onto_the_options() {
        let mut cfg = minimal_config();
        cfg.evaluation.iterative_prompting.start_with = sam_config::PromptStart::Both;
        cfg.inference.ais.min_size = 30;
        cfg.inference.tile_shape = None;
        let paths = RunPaths::new("/repo", &cfg);
        let flags = ModelEvalFlags {
            grid_search: true,
            iterative_prompting: true,
            ..ModelEvalFlags::default()
        };
        let o = model_eval_options(&cfg, &paths, PathBuf::from("m.pt"), flags).unwrap();
        assert_eq!(o.out_dir, PathBuf::from("/repo/runs/exp/evaluation"));
        assert_eq!(o.test_images, PathBuf::from("/repo/dat/test_data/images"));
        assert_eq!(o.segmentation.ais.min_size, 30);
        assert_eq!(o.segmentation.tiles.tile_shape, None);
        assert!(o.segmentation.overwrite && !o.segmentation.write_overlay);
        let it = o.iterative.unwrap();
        assert_eq!(it.starts, vec![PromptStart::Box, PromptStart::Point]);
        assert_eq!(it.n_iterations, 8);
        assert_eq!(it.objects_per_batch, OBJECTS_PER_BATCH);
        let g = o.grid_search.unwrap();
        assert_eq!(
            g.values.center_distance_threshold,
            vec![0.3, 0.4, 0.5, 0.6, 0.7]
        );
        assert_eq!(g.values.min_size, vec![50, 100, 200]);
        // Default validation: 10 % of the training images, held out as training does.
        assert!(matches!(
            g.validation,
            ImageSource::HeldOut { fraction, seed: 42, .. } if fraction == 0.1
        ));
        assert_eq!(o.overlays, 10);
        let o = model_eval_options(
            &cfg,
            &paths,
            PathBuf::from("m.pt"),
            ModelEvalFlags::default(),
        )
        .unwrap();
        assert!(o.grid_search.is_none() && o.iterative.is_none());
    }

    #[test]
    fn issue_17_the_grid_search_validates_on_the_images_training_held_out() {
        let t = tempfile::tempdir().unwrap();
        let (images, labels) = (t.path().join("dat/ti"), t.path().join("dat/tl"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        for i in 0..7u64 {
            let s = sam_data::synthesize(
                &sam_data::SynthConfig {
                    size: 32,
                    ..sam_data::SynthConfig::default()
                },
                i,
            );
            sam_data::write_image(images.join(format!("i{i}.tif")), &s.image).unwrap();
            sam_data::write_labels(labels.join(format!("i{i}.tif")), &s.labels).unwrap();
        }
        let mut cfg = minimal_config();
        cfg.seed = 5;
        cfg.data.train_images_dir = PathBuf::from("dat/ti");
        cfg.data.train_labels_dir = PathBuf::from("dat/tl");
        cfg.data.validation.fraction = Some(0.3);
        let paths = RunPaths::new(t.path(), &cfg);
        let source = validation_images(&cfg, &paths).unwrap();
        let got = source.pairs(("images", "labels")).unwrap();
        // What sam-train validates on: the same function, fraction and seed.
        let pairs = sam_data::pair_by_stem(&images, &labels).unwrap();
        let (_, held_out) = sam_data::hold_out(&pairs, 0.3, 5).unwrap();
        assert_eq!(got, held_out);
        assert_eq!(got.len(), 2);
        cfg.data.validation.fraction = None;
        assert!(matches!(
            validation_images(&cfg, &paths),
            Err(CliError::NoValidationImages)
        ));
    }

    #[test]
    fn without_a_checkpoint_the_export_path_is_scored() {
        let t = tempfile::tempdir().unwrap();
        let cfg = minimal_config();
        let paths = RunPaths::new(t.path(), &cfg);
        let err = eval_checkpoint(None, &paths).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "no checkpoint at {} (the config's export_path",
                paths.export_path.display()
            )),
            "{err}"
        );
        std::fs::create_dir_all(t.path().join("final_models")).unwrap();
        std::fs::write(&paths.export_path, b"x").unwrap();
        assert_eq!(eval_checkpoint(None, &paths).unwrap(), paths.export_path);
        assert_eq!(
            eval_checkpoint(Some("exp"), &paths).unwrap(),
            paths.export_path
        );
    }
}
