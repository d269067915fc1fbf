//! Training samples: patch sampling, the validation split, and loaded datasets.

use std::sync::OnceLock;

use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::image::{GreyImage, LabelImage};
use crate::io::{read_pair, ImagePair};
use crate::labels::prepare_instances;
use crate::preprocess::{normalization_bounds, normalize_with_bounds, Normalization};
use crate::rng::rng_for;
use crate::targets::{ais_targets, AisTargets};

/// What a training patch must look like.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatchConfig {
    /// Patch height in pixels (default 512).
    pub height: usize,
    /// Patch width in pixels (default 512).
    pub width: usize,
    /// At least this many objects of `min_object_size` pixels must lie in the patch (default 1).
    pub min_objects: usize,
    /// Pixels an object needs inside the patch to count (default 25).
    pub min_object_size: usize,
    /// Random positions tried before giving up (default 100).
    pub max_attempts: usize,
}

impl Default for PatchConfig {
    fn default() -> Self {
        PatchConfig {
            height: 512,
            width: 512,
            min_objects: 1,
            min_object_size: 25,
            max_attempts: 100,
        }
    }
}

/// A patch cut from an image and its labels.
#[derive(Debug, Clone)]
pub struct Patch {
    /// Column of the patch's top-left corner in the image.
    pub x: usize,
    /// Row of the patch's top-left corner in the image.
    pub y: usize,
    /// The image patch.
    pub image: GreyImage,
    /// The label patch (ids as in the full image).
    pub labels: LabelImage,
}

/// Draws random patches that contain enough objects.
#[derive(Debug, Clone, Default)]
pub struct PatchSampler {
    /// The requirements.
    pub config: PatchConfig,
}

impl PatchSampler {
    /// A sampler with these requirements.
    pub fn new(config: PatchConfig) -> Self {
        PatchSampler { config }
    }

    /// Tries up to `max_attempts` uniformly random positions and returns the first patch with
    /// at least `min_objects` objects of at least `min_object_size` pixels inside it.
    /// `name` (usually the file name) is used in errors.
    pub fn sample(
        &self,
        name: &str,
        image: &GreyImage,
        labels: &LabelImage,
        rng: &mut impl Rng,
    ) -> Result<Patch> {
        let c = &self.config;
        if image.width < c.width || image.height < c.height || c.width == 0 || c.height == 0 {
            return Err(DataError::InvalidParameter {
                name: "patch_shape".into(),
                reason: format!(
                    "{name}: patch {}x{} (h x w) does not fit into the {}x{} image",
                    c.height, c.width, image.height, image.width
                ),
            });
        }
        let max_id = labels.max_id() as usize;
        let mut counts = vec![0u32; if max_id <= 1 << 22 { max_id + 1 } else { 0 }];
        for _ in 0..c.max_attempts.max(1) {
            let x = rng.gen_range(0..=image.width - c.width);
            let y = rng.gen_range(0..=image.height - c.height);
            if count_objects(labels, x, y, c, &mut counts) >= c.min_objects {
                return Ok(Patch {
                    x,
                    y,
                    image: image.crop(x, y, c.width, c.height),
                    labels: labels.crop(x, y, c.width, c.height),
                });
            }
        }
        Err(DataError::NoValidPatch {
            image: name.to_string(),
            patch_height: c.height,
            patch_width: c.width,
            min_objects: c.min_objects,
            min_size: c.min_object_size,
            attempts: c.max_attempts.max(1),
        })
    }
}

fn count_objects(
    labels: &LabelImage,
    x: usize,
    y: usize,
    c: &PatchConfig,
    counts: &mut [u32],
) -> usize {
    let rows = (y..y + c.height)
        .map(|r| &labels.data[r * labels.width + x..r * labels.width + x + c.width]);
    let min = c.min_object_size.max(1) as u32;
    if counts.is_empty() {
        let mut m = std::collections::HashMap::<u32, u32>::new();
        for row in rows {
            for &v in row {
                if v != 0 {
                    *m.entry(v).or_default() += 1;
                }
            }
        }
        return m.values().filter(|&&n| n >= min).count();
    }
    let mut found = 0;
    let mut touched = Vec::new();
    for row in rows {
        for &v in row {
            if v != 0 {
                let n = &mut counts[v as usize];
                if *n == 0 {
                    touched.push(v);
                }
                *n += 1;
                if *n == min {
                    found += 1;
                }
            }
        }
    }
    for v in touched {
        counts[v as usize] = 0;
    }
    found
}

/// Splits `n` images into training and validation indices (by image, never by patch):
/// a seeded shuffle, `round(n * val_fraction)` images (at least 1, at most n - 1) for
/// validation. Both lists are sorted.
pub fn split_by_image(n: usize, val_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::InvalidParameter {
            name: "val_fraction".into(),
            reason: format!("expected a value in [0, 1), found {val_fraction}"),
        });
    }
    if val_fraction == 0.0 {
        return Ok(((0..n).collect(), Vec::new()));
    }
    if n < 2 {
        return Err(DataError::InvalidParameter {
            name: "val_fraction".into(),
            reason: format!("a validation split needs at least 2 images, found {n}"),
        });
    }
    let n_val = ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng_for(seed));
    let mut val = idx[..n_val].to_vec();
    let mut train = idx[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// One image of a [`Dataset`].
#[derive(Debug, Clone)]
pub struct DatasetItem {
    /// A name for messages (the file stem).
    pub name: String,
    /// The image.
    pub image: GreyImage,
    /// Its labels.
    pub labels: LabelImage,
}

/// What one training sample holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleConfig {
    /// Patch requirements.
    pub patch: PatchConfig,
    /// Normalisation of the image patch.
    pub normalization: Normalization,
    /// Objects below this size are dropped from the sample's labels and targets (default 25,
    /// as micro_sam).
    pub min_object_size: usize,
    /// Whether to compute the AIS decoder targets.
    pub with_targets: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            patch: PatchConfig::default(),
            normalization: Normalization::default(),
            min_object_size: 25,
            with_targets: true,
        }
    }
}

/// A training sample: a normalised image patch, its instance labels and AIS targets.
#[derive(Debug, Clone)]
pub struct TrainingSample {
    /// The source image's name.
    pub image_name: String,
    /// Patch position in the source image (x, y).
    pub origin: (usize, usize),
    /// Patch normalised with its whole image's bounds, `height * width` values in [0, 1].
    pub image: Vec<f32>,
    /// Patch labels: connected components, small objects removed, ids 1..N.
    pub labels: LabelImage,
    /// AIS targets when asked for.
    pub targets: Option<AisTargets>,
}

/// Images and labels held in memory, ready for sampling.
///
/// Each image's normalisation bounds are computed once (whole image, as inference does) and
/// reused for every patch cut from it.
#[derive(Debug, Default)]
pub struct Dataset {
    items: Vec<DatasetItem>,
    /// Per item: the normalisation used and its bounds.
    bounds: Vec<OnceLock<(Normalization, (f32, f32))>>,
}

impl Clone for Dataset {
    fn clone(&self) -> Self {
        Dataset::new(self.items.clone())
    }
}

impl Dataset {
    /// A dataset over these images.
    pub fn new(items: Vec<DatasetItem>) -> Self {
        let bounds = items.iter().map(|_| OnceLock::new()).collect();
        Dataset { items, bounds }
    }

    /// The images.
    pub fn items(&self) -> &[DatasetItem] {
        &self.items
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn bounds(&self, i: usize, norm: &Normalization) -> Result<(f32, f32)> {
        if let Some((n, b)) = self.bounds[i].get() {
            if n == norm {
                return Ok(*b);
            }
            return normalization_bounds(&self.items[i].image, norm);
        }
        let b = normalization_bounds(&self.items[i].image, norm)?;
        let _ = self.bounds[i].set((*norm, b));
        Ok(b)
    }

    /// Reads every pair (in parallel), checking sizes.
    pub fn load(pairs: &[ImagePair]) -> Result<Dataset> {
        let items = pairs
            .par_iter()
            .map(|p| {
                read_pair(p).map(|(image, labels)| DatasetItem {
                    name: p.stem.clone(),
                    image,
                    labels,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset::new(items))
    }

    /// The images with these indices (e.g. one side of [`split_by_image`]).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset::new(
            indices
                .iter()
                .filter_map(|&i| self.items.get(i).cloned())
                .collect(),
        )
    }

    /// Draws a sample: a uniformly chosen image, a valid patch of it, normalised, with labels
    /// prepared and targets computed.
    pub fn sample(&self, cfg: &SampleConfig, rng: &mut impl Rng) -> Result<TrainingSample> {
        if self.items.is_empty() {
            return Err(DataError::InvalidParameter {
                name: "dataset".into(),
                reason: "no images to sample from".into(),
            });
        }
        let index = rng.gen_range(0..self.items.len());
        let item = &self.items[index];
        let patch = PatchSampler::new(cfg.patch.clone()).sample(
            &item.name,
            &item.image,
            &item.labels,
            rng,
        )?;
        let (lo, hi) = self.bounds(index, &cfg.normalization)?;
        let image = normalize_with_bounds(&patch.image.data, lo, hi);
        let labels = prepare_instances(&patch.labels, cfg.min_object_size);
        let targets = cfg
            .with_targets
            .then(|| ais_targets(&labels, cfg.min_object_size));
        Ok(TrainingSample {
            image_name: item.name.clone(),
            origin: (patch.x, patch.y),
            image,
            labels,
            targets,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::BitDepth;

    fn blobs() -> (GreyImage, LabelImage) {
        // 4 squares of 6x6 in the top-left 40x40 corner of a 100x100 image
        let mut l = LabelImage::zeros(100, 100);
        for (i, (x0, y0)) in [(2, 2), (20, 2), (2, 20), (20, 20)].iter().enumerate() {
            for y in *y0..y0 + 6 {
                for x in *x0..x0 + 6 {
                    l.data[y * 100 + x] = i as u32 + 1;
                }
            }
        }
        (GreyImage::filled(100, 100, BitDepth::U8, 100.0), l)
    }

    #[test]
    fn patches_hold_enough_objects_and_match_the_image() {
        let (img, lab) = blobs();
        let mut img = img;
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i % 256) as f32;
        }
        let s = PatchSampler::new(PatchConfig {
            height: 40,
            width: 40,
            min_objects: 3,
            min_object_size: 36,
            max_attempts: 10_000,
        });
        let mut rng = rng_for(1);
        for _ in 0..20 {
            let p = s.sample("blobs", &img, &lab, &mut rng).unwrap();
            let ids = p.labels.ids();
            assert!(ids.len() >= 3, "{ids:?} at {},{}", p.x, p.y);
            assert_eq!(p.image.data[0], img.get(p.x, p.y));
            assert_eq!(p.labels.get(39, 39), lab.get(p.x + 39, p.y + 39));
        }
    }

    #[test]
    fn impossible_patch_names_the_image() {
        let (img, lab) = blobs();
        let s = PatchSampler::new(PatchConfig {
            height: 20,
            width: 20,
            min_objects: 5,
            min_object_size: 10,
            max_attempts: 30,
        });
        let err = s
            .sample("plate_07", &img, &lab, &mut rng_for(0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::NoValidPatch { attempts: 30, .. }));
        assert!(
            msg.contains("plate_07") && msg.contains("at least 5 objects"),
            "{msg}"
        );
        let big = PatchSampler::new(PatchConfig {
            height: 200,
            width: 20,
            ..PatchConfig::default()
        });
        assert!(big
            .sample("plate_07", &img, &lab, &mut rng_for(0))
            .unwrap_err()
            .to_string()
            .contains("plate_07"));
    }

    #[test]
    fn split_is_by_image_disjoint_and_seeded() {
        let (t, v) = split_by_image(10, 0.2, 3).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(t.len(), 8);
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(split_by_image(10, 0.2, 3).unwrap(), (t, v.clone()));
        let others: Vec<_> = (4..12)
            .map(|s| split_by_image(10, 0.2, s).unwrap().1)
            .collect();
        assert!(others.iter().any(|o| *o != v));
        assert_eq!(split_by_image(3, 0.01, 0).unwrap().1.len(), 1);
        assert!(split_by_image(1, 0.5, 0).is_err());
        assert!(split_by_image(5, 1.0, 0).is_err());
    }

    #[test]
    fn dataset_sample_prepares_labels_and_targets() {
        let s = crate::synth::synthesize(
            &crate::synth::SynthConfig {
                size: 128,
                ..Default::default()
            },
            5,
        );
        let whole = crate::preprocess::preprocess(&s.image, &Normalization::default()).unwrap();
        let ds = Dataset::new(vec![DatasetItem {
            name: "s".into(),
            image: s.image,
            labels: s.labels,
        }]);
        let cfg = SampleConfig {
            patch: PatchConfig {
                height: 64,
                width: 64,
                min_objects: 2,
                ..PatchConfig::default()
            },
            ..SampleConfig::default()
        };
        let t = ds.sample(&cfg, &mut rng_for(2)).unwrap();
        assert_eq!(t.image.len(), 64 * 64);
        // normalised with the whole image's bounds, as inference does
        let (ox, oy) = t.origin;
        for y in 0..64 {
            for x in 0..64 {
                assert_eq!(t.image[y * 64 + x], whole[(oy + y) * 128 + ox + x]);
            }
        }
        assert!(t.image.iter().all(|v| (0.0..=1.0).contains(v)));
        let ids = t.labels.ids();
        assert_eq!(ids, (1..=ids.len() as u32).collect::<Vec<_>>());
        let tg = t.targets.unwrap();
        assert_eq!(tg.data.len(), 3 * 64 * 64);
        for (f, l) in tg.data[..64 * 64].iter().zip(&t.labels.data) {
            assert_eq!(*f, if *l != 0 { 1.0 } else { 0.0 });
        }
    }
}
