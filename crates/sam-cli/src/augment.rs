//! The config's `augmentation` section as sam-data's offline augmentation job.

use std::path::Path;

use sam_config::{AugmentationConfig, AugmentationOps, ExperimentConfig};
use sam_data::{AffineOp, AugmentConfig, AugmentJob, ElasticOp, RangeOp};

/// sam-data's operations from the config's `augmentation.operations`; objects below
/// `min_object_size` pixels (the config's `data.min_object_size`) are dropped from the labels.
pub fn augment_config(ops: &AugmentationOps, min_object_size: usize) -> AugmentConfig {
    let r = |o: &sam_config::RangeOp| RangeOp {
        p: o.probability,
        min: o.range[0],
        max: o.range[1],
    };
    AugmentConfig {
        hflip: ops.flip_horizontal.probability,
        vflip: ops.flip_vertical.probability,
        rot90: ops.rotate90.probability,
        rotate: r(&ops.rotation),
        affine: AffineOp {
            p: ops.scale.probability,
            scale: ops.scale.range,
            shear_degrees: 0.0,
            translate: 0.0,
        },
        elastic: ElasticOp {
            p: ops.elastic.probability,
            magnitude: ops.elastic.alpha,
            sigma: ops.elastic.sigma,
        },
        brightness: r(&ops.brightness),
        contrast: r(&ops.contrast),
        gamma: r(&ops.gamma),
        noise: r(&ops.gaussian_noise),
        blur: r(&ops.gaussian_blur),
        illumination: RangeOp {
            p: 0.0,
            min: 0.0,
            max: 0.0,
        },
        min_object_size,
    }
}

/// The augmentation job of `section` (the config's `augmentation`, possibly changed by flags)
/// in an experiment `cfg` whose relative paths lie under `root`: its folders, copies and
/// operations, the experiment's seed, `data.min_object_size`, and `manifest.json` beside the
/// output image folder. The destination is not replaced (`overwrite` false).
pub fn augment_job(
    cfg: &ExperimentConfig,
    section: &AugmentationConfig,
    root: &Path,
) -> AugmentJob {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let output_images = abs(&section.output_images_dir);
    let manifest = output_images
        .parent()
        .map(|p| p.join("manifest.json"))
        .unwrap_or_else(|| root.join("manifest.json"));
    AugmentJob {
        source_images: abs(&section.source_images_dir),
        source_labels: abs(&section.source_labels_dir),
        output_images,
        output_labels: abs(&section.output_labels_dir),
        manifest,
        copies: section.copies_per_image as usize,
        seed: cfg.seed,
        keep_originals: section.include_original,
        overwrite: false,
        config: augment_config(&section.operations, cfg.data.min_object_size as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn config_operations_map_onto_the_library() {
        let ops = AugmentationOps::default();
        let c = augment_config(&ops, 25);
        assert_eq!(c.hflip, ops.flip_horizontal.probability);
        assert_eq!(
            (c.rotate.p, c.rotate.min, c.rotate.max),
            (
                ops.rotation.probability,
                ops.rotation.range[0],
                ops.rotation.range[1]
            )
        );
        assert_eq!(c.affine.scale, ops.scale.range);
        assert_eq!(c.elastic.magnitude, ops.elastic.alpha);
        assert_eq!(c.noise.max, ops.gaussian_noise.range[1]);
        assert_eq!(c.min_object_size, 25);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_job_lies_under_the_root_with_the_experiment_seed() {
        let mut cfg = crate::tests::minimal_config();
        cfg.seed = 7;
        let mut section = cfg.augmentation.clone();
        section.copies_per_image = 3;
        section.source_labels_dir = PathBuf::from("/abs/labels");
        let job = augment_job(&cfg, &section, Path::new("/repo"));
        assert_eq!(
            job.source_images,
            PathBuf::from("/repo/dat/training_data/images")
        );
        assert_eq!(job.source_labels, PathBuf::from("/abs/labels"));
        assert_eq!(
            job.manifest,
            PathBuf::from("/repo/dat/augmented_training_data/manifest.json")
        );
        assert_eq!((job.copies, job.seed, job.overwrite), (3, 7, false));
        assert!(job.keep_originals);
    }
}
