//! The data of a run: the image pairs opened (headers only), the validation split by file,
//! every image read once up front for its normalisation bounds (each rank its share), and the
//! sample settings from the config.

use std::path::Path;

use sam_config::ExperimentConfig;
use sam_data::{hold_out, pair_by_stem, Dataset, Normalization, PatchConfig, SampleConfig};

use crate::distributed::Collective;
use crate::TrainError;

pub(crate) fn sample_config(cfg: &ExperimentConfig) -> SampleConfig {
    let d = &cfg.data;
    SampleConfig {
        // The mapping `sam-augment check` counts patches with.
        patch: PatchConfig::training(d.patch_shape, d.min_objects_per_patch, d.min_object_size),
        normalization: Normalization {
            lower_percentile: d.normalization.lower_percentile,
            upper_percentile: d.normalization.upper_percentile,
        },
        min_object_size: d.min_object_size as usize,
        with_targets: cfg.model.with_segmentation_decoder,
    }
}

/// Opens the training and validation images (headers only: nothing is loaded). Without a
/// validation folder the split is by file, from the sorted file list and the seed.
pub(crate) fn open_data(
    cfg: &ExperimentConfig,
    root: &Path,
) -> Result<(Dataset, Dataset), TrainError> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let d = &cfg.data;
    let pairs = pair_by_stem(resolve(&d.train_images_dir), resolve(&d.train_labels_dir))?;
    match (&d.validation.images_dir, &d.validation.labels_dir) {
        (Some(vi), Some(vl)) => {
            let vpairs = pair_by_stem(resolve(vi), resolve(vl))?;
            Ok((Dataset::open(&pairs)?, Dataset::open(&vpairs)?))
        }
        _ => {
            let fraction = d.validation.fraction.unwrap_or(0.1);
            // The rule sam-eval's grid search uses too.
            let (train, val) = hold_out(&pairs, fraction, cfg.seed)?;
            Ok((Dataset::open(&train)?, Dataset::open(&val)?))
        }
    }
}

/// Reads every image once, before training, to check that it decodes and to cache its
/// normalisation bounds. Each rank reads its share (image `i` on rank `i % world`) and the
/// bounds are then shared, so a job of 8 ranks reads the dataset once, not 8 times.
pub(crate) fn prepare_bounds(
    data: &Dataset,
    norm: &Normalization,
    collective: Option<&Collective>,
) -> Result<(), TrainError> {
    let (rank, world) = collective.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let mine = data.compute_bounds(norm, |i| i % world == rank);
    let Some(c) = collective else {
        return Ok(mine?);
    };
    // Every rank takes part in the exchange even when its share failed, so that the others
    // get the failure instead of waiting; the error is then reported by every rank.
    if c.any(mine.is_err())? {
        return Err(match mine {
            Err(e) => TrainError::Data(e),
            Ok(()) => TrainError::Samples(
                "another rank could not read its share of the images (see its log)".into(),
            ),
        });
    }
    // f32 bounds are exact in f64, and adding zeros changes nothing: the sum is rank i%world's
    // value, bit for bit.
    let mut mine = vec![0f64; 2 * data.len()];
    for i in (0..data.len()).filter(|i| i % world == rank) {
        let (lo, hi) = data
            .cached_bounds(i, norm)
            .ok_or_else(|| TrainError::Samples(format!("no bounds for image {i}")))?;
        mine[2 * i] = f64::from(lo);
        mine[2 * i + 1] = f64::from(hi);
    }
    let all = c.sum_f64(&mine)?;
    for i in 0..data.len() {
        data.set_bounds(i, norm, (all[2 * i] as f32, all[2 * i + 1] as f32));
    }
    Ok(())
}

/// Number of validation patches: two per validation image, between 4 and 32.
pub(crate) fn n_validation_patches(n_images: usize) -> usize {
    (2 * n_images).clamp(4, 32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::error::Error as _;

    use super::open_data;
    use crate::TrainError;

    /// A data error keeps its cause: the chain goes from the training error to sam-data's
    /// error and on to the operating system's.
    #[test]
    fn a_data_error_keeps_its_source_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = (dir.path().join("images"), dir.path().join("labels"));
        for d in [&images, &labels] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("a.tif"), b"").unwrap();
        }
        let yaml = format!(
            "experiment_name: t\noutput_base_dir: runs\ncheckpoint_name: ck\n\
             export_path: final_models/t.pt\ndata:\n  train_images_dir: {}\n  \
             train_labels_dir: {}\n",
            images.display(),
            labels.display()
        );
        let cfg = sam_config::parse_config(&yaml, None, &Default::default())
            .unwrap()
            .config;
        // The folders go away after the config was checked (a disk unmounted, a folder moved).
        std::fs::remove_dir_all(&images).unwrap();
        let err = open_data(&cfg, dir.path()).err().unwrap();
        assert!(matches!(err, TrainError::Data(_)), "{err:?}");
        assert!(err.to_string().starts_with("data: "), "{err}");
        let data = err
            .source()
            .and_then(|s| s.downcast_ref::<sam_data::DataError>())
            .unwrap();
        assert!(
            err.to_string().ends_with(&data.to_string()),
            "{err} / {data}"
        );
        let io = data
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod issue_17_validation_split {
    use super::*;

    /// Training validates on the images that `sam_data::hold_out` holds out, the function
    /// sam-eval's grid search calls for the same config (see sam-cli-torch's
    /// `validation_images`).
    #[test]
    fn training_holds_out_what_hold_out_holds_out() {
        let t = tempfile::tempdir().unwrap();
        for dir in ["dat/train/images", "dat/train/labels"] {
            std::fs::create_dir_all(t.path().join(dir)).unwrap();
        }
        for i in 0..7u64 {
            let s = sam_data::synthesize(
                &sam_data::SynthConfig {
                    size: 32,
                    ..sam_data::SynthConfig::default()
                },
                i,
            );
            let name = format!("img{i}.tif");
            sam_data::write_image(t.path().join("dat/train/images").join(&name), &s.image).unwrap();
            sam_data::write_labels(t.path().join("dat/train/labels").join(&name), &s.labels)
                .unwrap();
        }
        let cfg = sam_config::parse_config(
            "experiment_name: e\noutput_base_dir: runs\ncheckpoint_name: c\n\
             export_path: final_models/e.pt\nseed: 5\ndata:\n  \
             train_images_dir: dat/train/images\n  train_labels_dir: dat/train/labels\n  \
             validation:\n    fraction: 0.3\n",
            None,
            &sam_config::ValidateOptions::without_path_checks(),
        )
        .unwrap()
        .config;
        let (train, val) = open_data(&cfg, t.path()).unwrap();
        let pairs = pair_by_stem(
            t.path().join("dat/train/images"),
            t.path().join("dat/train/labels"),
        )
        .unwrap();
        let (want_train, want_val) = hold_out(&pairs, 0.3, 5).unwrap();
        assert_eq!(val.pairs(), &want_val[..]);
        assert_eq!(train.pairs(), &want_train[..]);
        assert_eq!(val.len(), 2);
    }
}
