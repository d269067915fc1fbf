//! Training samples: patch sampling, the validation split, and loaded datasets.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::image::{GreyImage, LabelImage};
use crate::io::{
    check_pair_size, image_dimensions, read_image, read_image_region, read_labels, read_pair,
    ImagePair,
};
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

impl PatchConfig {
    /// The requirements training sets from an experiment config's `data` section: patches of
    /// `patch_shape` (`[height, width]`), at least `min_objects` objects (at least 1: a patch
    /// without objects gives no prompt) of `min_object_size` pixels, the default tries. The one
    /// mapping of sam-train's sampler and of the dataset check, so that the check counts the
    /// patches training can draw.
    pub fn training(patch_shape: [u32; 2], min_objects: u32, min_object_size: u32) -> Self {
        PatchConfig {
            height: patch_shape[0] as usize,
            width: patch_shape[1] as usize,
            min_objects: min_objects.max(1) as usize,
            min_object_size: min_object_size as usize,
            ..PatchConfig::default()
        }
    }
}

/// A patch cut from an image and its labels.
#[derive(Debug, Clone)]
pub struct Patch {
    /// Row of the patch's top-left corner in the image.
    pub top: usize,
    /// Column of the patch's top-left corner in the image.
    pub left: usize,
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
        let (top, left) = self.position(name, image.shape(), labels, rng)?;
        let c = &self.config;
        Ok(Patch {
            top,
            left,
            image: image.crop(top, left, c.height, c.width),
            labels: labels.crop(top, left, c.height, c.width),
        })
    }

    /// The top-left corner `(top, left)` (row, column) [`PatchSampler::sample`] would choose,
    /// from the labels alone: the image itself is not needed to choose, only its shape
    /// `(rows, cols)`.
    pub fn position(
        &self,
        name: &str,
        shape: (usize, usize),
        labels: &LabelImage,
        rng: &mut impl Rng,
    ) -> Result<(usize, usize)> {
        let (height, width) = shape;
        let c = &self.config;
        if width < c.width || height < c.height || c.width == 0 || c.height == 0 {
            return Err(DataError::InvalidParameter {
                name: "patch_shape".into(),
                reason: format!(
                    "{name}: patch {}x{} (h x w) does not fit into the {}x{} image",
                    c.height, c.width, height, width
                ),
            });
        }
        let max_id = labels.max_id() as usize;
        let mut counts = vec![0u32; if max_id <= 1 << 22 { max_id + 1 } else { 0 }];
        for _ in 0..c.max_attempts.max(1) {
            // column first: the draw order fixes which patches a seed gives
            let x = rng.gen_range(0..=width - c.width);
            let y = rng.gen_range(0..=height - c.height);
            if count_objects(labels, x, y, c, &mut counts) >= c.min_objects {
                return Ok((y, x));
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

/// The sampler's rule: the number of ids with at least `min_object_size` pixels in the patch
/// at column `x`, row `y` (`counts` is an all-zero scratch table of `max_id + 1` entries, or
/// empty for hashing).
pub(crate) fn count_objects(
    labels: &LabelImage,
    x: usize,
    y: usize,
    c: &PatchConfig,
    counts: &mut [u32],
) -> usize {
    let rows = (y..y + c.height)
        .map(|r| &labels.as_slice()[r * labels.cols() + x..r * labels.cols() + x + c.width]);
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

/// How many patch positions of an image meet a [`PatchSampler`]'s requirement
/// ([`PatchSampler::valid_positions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatchPositions {
    /// Top-left corners the sampler draws from: `(rows - height + 1) * (cols - width + 1)`.
    pub total: u64,
    /// Those whose patch holds at least `min_objects` objects of `min_object_size` pixels.
    pub valid: u64,
}

impl PatchPositions {
    /// The share of valid positions: the chance that one uniform draw of the sampler succeeds.
    pub fn share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.valid as f64 / self.total as f64
        }
    }

    /// The chance that `attempts` uniform draws all miss, `(1 - share)^attempts`: how often
    /// [`PatchSampler::position`] gives up on the image.
    pub fn miss_probability(&self, attempts: usize) -> f64 {
        (1.0 - self.share()).powi(attempts.clamp(1, i32::MAX as usize) as i32)
    }
}

/// An object's pixels in its bounding box, as a summed-area table.
struct ObjectTable {
    /// Top row and left column of the box in the image.
    top: usize,
    left: usize,
    /// Box height and width.
    rows: usize,
    cols: usize,
    /// `(rows + 1) x (cols + 1)` prefix sums of the object's indicator.
    sums: Vec<u32>,
}

impl ObjectTable {
    fn new(labels: &LabelImage, id: u32, bbox: [usize; 4]) -> ObjectTable {
        let [x0, y0, x1, y1] = bbox;
        let (rows, cols) = (y1 - y0, x1 - x0);
        let w = cols + 1;
        let mut sums = vec![0u32; (rows + 1) * w];
        for r in 0..rows {
            let line = &labels.row(y0 + r)[x0..x1];
            let mut run = 0u32;
            for (c, &v) in line.iter().enumerate() {
                run += u32::from(v == id);
                sums[(r + 1) * w + c + 1] = sums[r * w + c + 1] + run;
            }
        }
        ObjectTable {
            top: y0,
            left: x0,
            rows,
            cols,
            sums,
        }
    }

    /// Object pixels in box rows `r0..r1` and columns `c0..c1`.
    fn sum(&self, r0: usize, r1: usize, c0: usize, c1: usize) -> u64 {
        let w = self.cols + 1;
        let s = |r: usize, c: usize| u64::from(self.sums[r * w + c]);
        (s(r1, c1) + s(r0, c0)) - (s(r0, c1) + s(r1, c0))
    }
}

impl PatchSampler {
    /// Counts the patch positions of an image (its labels) that the sampler accepts: every
    /// top-left corner [`PatchSampler::position`] may draw, and among them those whose patch
    /// holds at least `min_objects` ids with at least `min_object_size` pixels inside it, the
    /// rule [`PatchSampler::position`] applies to each draw. Exact, without visiting each
    /// position: per object, the positions where enough of it lies inside the patch form one
    /// interval per row of positions when the patch is at least as wide as the object (a
    /// binary search on the object's summed-area table), else a scan of the row.
    ///
    /// Errors as [`PatchSampler::position`] when the patch does not fit into the image.
    pub fn valid_positions(&self, name: &str, labels: &LabelImage) -> Result<PatchPositions> {
        let (rows, cols) = labels.shape();
        let c = &self.config;
        if cols < c.width || rows < c.height || c.width == 0 || c.height == 0 {
            return Err(DataError::InvalidParameter {
                name: "patch_shape".into(),
                reason: format!(
                    "{name}: patch {}x{} (h x w) does not fit into the {}x{} image",
                    c.height, c.width, rows, cols
                ),
            });
        }
        let (py, px) = (rows - c.height + 1, cols - c.width + 1);
        let total = (py * px) as u64;
        if c.min_objects == 0 {
            return Ok(PatchPositions {
                total,
                valid: total,
            });
        }
        let min = c.min_object_size.max(1) as u64;
        let (h, w) = (c.height, c.width);
        // Per row of positions, +1 where an object's run of valid positions starts and -1
        // after it ends.
        let stride = px + 1;
        let mut diff = vec![0i32; py * stride];
        for object in crate::labels::object_stats(labels) {
            if (object.area as u64) < min {
                continue;
            }
            let t = ObjectTable::new(labels, object.id, object.bbox);
            let (y0, y1) = (t.top, t.top + t.rows);
            let (x0, x1) = (t.left, t.left + t.cols);
            // Rows of positions whose patch meets the object's rows.
            let first_y = (y0 + 1).saturating_sub(h);
            let last_y = (y1 - 1).min(py - 1);
            let (first_x, last_x) = ((x0 + 1).saturating_sub(w), (x1 - 1).min(px - 1));
            for y in first_y..=last_y {
                let (ra, rb) = (y.max(y0) - y0, (y + h).min(y1) - y0);
                if t.sum(ra, rb, 0, t.cols) < min {
                    continue;
                }
                let line = &mut diff[y * stride..(y + 1) * stride];
                if w >= t.cols {
                    // Moving right, the patch first takes in more of the object (its left
                    // edge still left of the object), then covers it whole, then loses
                    // columns: the valid positions are one interval [xl, xr].
                    // Smallest j with the object's columns 0..=j holding enough pixels.
                    let (mut lo, mut hi) = (0, t.cols - 1);
                    while lo < hi {
                        let mid = (lo + hi) / 2;
                        if t.sum(ra, rb, 0, mid + 1) >= min {
                            hi = mid;
                        } else {
                            lo = mid + 1;
                        }
                    }
                    let xl = (x0 + lo + 1).saturating_sub(w).max(first_x);
                    // Largest j with the object's columns j.. holding enough pixels.
                    let (mut lo, mut hi) = (0, t.cols - 1);
                    while lo < hi {
                        let mid = (lo + hi).div_ceil(2);
                        if t.sum(ra, rb, mid, t.cols) >= min {
                            lo = mid;
                        } else {
                            hi = mid - 1;
                        }
                    }
                    let xr = (x0 + lo).min(last_x);
                    if xl <= xr {
                        line[xl] += 1;
                        line[xr + 1] -= 1;
                    }
                } else {
                    let mut run_start = None;
                    for x in first_x..=last_x {
                        let (ca, cb) = (x.max(x0) - x0, (x + w).min(x1) - x0);
                        let ok = t.sum(ra, rb, ca, cb) >= min;
                        match (ok, run_start) {
                            (true, None) => run_start = Some(x),
                            (false, Some(s)) => {
                                line[s] += 1;
                                line[x] -= 1;
                                run_start = None;
                            }
                            _ => {}
                        }
                    }
                    if let Some(s) = run_start {
                        line[s] += 1;
                        line[last_x + 1] -= 1;
                    }
                }
            }
        }
        let need = c.min_objects as i32;
        let mut valid = 0u64;
        for line in diff.chunks_exact(stride) {
            let mut count = 0i32;
            for &d in &line[..px] {
                count += d;
                valid += u64::from(count >= need);
            }
        }
        Ok(PatchPositions { total, valid })
    }
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

/// The training and the validation pairs of a run that holds out `val_fraction` of its
/// training images (`pairs`, as [`pair_by_stem`](crate::pair_by_stem) lists them) with the
/// experiment `seed`: [`split_by_image`] over the pairs. The one rule of sam-train (what it
/// validates on) and of sam-eval (its grid search on the held-out images), so that both see
/// the same images.
pub fn hold_out(
    pairs: &[ImagePair],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<ImagePair>, Vec<ImagePair>)> {
    let (train, val) = split_by_image(pairs.len(), val_fraction, seed)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| pairs[i].clone()).collect();
    Ok((pick(&train), pick(&val)))
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
    /// Patch position in the source image: its top-left corner `(top, left)` (row, column).
    pub origin: (usize, usize),
    /// Patch normalised with its whole image's bounds, `height * width` values in [0, 1].
    pub image: Vec<f32>,
    /// Patch labels: connected components, small objects removed, ids 1..N.
    pub labels: LabelImage,
    /// AIS targets when asked for.
    pub targets: Option<AisTargets>,
}

/// Image/label pairs on disk, sampled on demand: the dataset of a training run.
///
/// Nothing of an image is kept in memory between samples except its normalisation bounds
/// (two numbers). [`Dataset::sample`] reads the label image to choose a patch, then only the
/// patch of the image (only the strips it crosses, for a strip TIFF), at its stored bit depth.
/// A rank therefore holds what its loader workers are building, never the dataset. Each
/// image's normalisation bounds (percentiles of the whole image, as inference uses) are
/// computed once, when first needed or by [`Dataset::compute_bounds`], and reused.
#[derive(Debug, Default)]
pub struct Dataset {
    pairs: Vec<ImagePair>,
    /// Per pair: the shape (rows, cols) from the file headers.
    shapes: Vec<(usize, usize)>,
    /// Per pair: the normalisation used and its bounds.
    bounds: Vec<OnceLock<(Normalization, (f32, f32))>>,
    /// Images [`Dataset::sample`] passed over because no patch of them held enough objects,
    /// by stem, with the reason. For the record only: sampling never reads it, so that the
    /// samples stay a function of the random stream alone.
    skipped: Mutex<BTreeMap<String, String>>,
}

impl Clone for Dataset {
    fn clone(&self) -> Self {
        self.subset(&(0..self.len()).collect::<Vec<_>>())
    }
}

impl Dataset {
    /// A dataset over these pairs. Reads only the file headers: every image must have the size
    /// of its label image (checked here, so that a mismatch is found before training starts).
    pub fn open(pairs: &[ImagePair]) -> Result<Dataset> {
        let shapes = pairs
            .par_iter()
            .map(|p| {
                let image = image_dimensions(&p.image)?;
                check_pair_size(p, image, image_dimensions(&p.labels)?)?;
                Ok(image)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            pairs: pairs.to_vec(),
            bounds: pairs.iter().map(|_| OnceLock::new()).collect(),
            shapes,
            skipped: Mutex::default(),
        })
    }

    /// The pairs, in the order given to [`Dataset::open`].
    pub fn pairs(&self) -> &[ImagePair] {
        &self.pairs
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs with these indices (e.g. one side of [`split_by_image`]); bounds already
    /// computed come along.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let keep: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len())
            .collect();
        Dataset {
            pairs: keep.iter().map(|&i| self.pairs[i].clone()).collect(),
            shapes: keep.iter().map(|&i| self.shapes[i]).collect(),
            bounds: keep
                .iter()
                .map(|&i| {
                    let cell = OnceLock::new();
                    if let Some(b) = self.bounds[i].get() {
                        let _ = cell.set(*b);
                    }
                    cell
                })
                .collect(),
            skipped: Mutex::default(),
        }
    }

    /// The images sampling passed over so far because none of their patches held enough
    /// objects (`stem: reason`), sorted by stem.
    pub fn skipped_images(&self) -> Vec<String> {
        self.skipped
            .lock()
            .map(|m| m.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            .unwrap_or_default()
    }

    /// Records a skipped image and warns the first time it is skipped, with the running count.
    fn note_skipped(&self, index: usize, reason: &DataError) {
        let Ok(mut map) = self.skipped.lock() else {
            return;
        };
        let stem = &self.pairs[index].stem;
        if map.contains_key(stem) {
            return;
        }
        let reason = reason.to_string();
        map.insert(stem.clone(), reason.clone());
        tracing::warn!(
            "skipping training image {} ({} of {} images skipped so far): {reason}",
            self.pairs[index].image.display(),
            map.len(),
            self.len()
        );
    }

    /// The cached bounds of image `i` under `norm`, if computed.
    pub fn cached_bounds(&self, i: usize, norm: &Normalization) -> Option<(f32, f32)> {
        self.bounds
            .get(i)?
            .get()
            .and_then(|(n, b)| (n == norm).then_some(*b))
    }

    /// Records bounds computed elsewhere (another rank) for image `i`. The first value stays.
    pub fn set_bounds(&self, i: usize, norm: &Normalization, bounds: (f32, f32)) {
        if let Some(cell) = self.bounds.get(i) {
            let _ = cell.set((*norm, bounds));
        }
    }

    /// Reads the images `select` picks (in parallel, one whole image per thread at a time),
    /// checks that image and labels decode and agree in size, and caches the normalisation
    /// bounds of each. Run once before training, this finds every unreadable file up front.
    pub fn compute_bounds(
        &self,
        norm: &Normalization,
        select: impl Fn(usize) -> bool + Sync,
    ) -> Result<()> {
        norm.validate()?;
        (0..self.len())
            .into_par_iter()
            .filter(|&i| select(i))
            .try_for_each(|i| {
                let (image, _labels) = read_pair(&self.pairs[i])?;
                let b = normalization_bounds(&image, norm)?;
                self.set_bounds(i, norm, b);
                Ok(())
            })
    }

    /// Draws a sample: a uniformly chosen image, a valid patch of it, normalised with the whole
    /// image's bounds, with labels prepared and targets computed. Reads the chosen label image
    /// whole (to find a patch with enough objects) and only the patch of the image once its
    /// bounds are known.
    pub fn sample(&self, cfg: &SampleConfig, rng: &mut impl Rng) -> Result<TrainingSample> {
        if self.pairs.is_empty() {
            return Err(DataError::InvalidParameter {
                name: "dataset".into(),
                reason: "no images to sample from".into(),
            });
        }
        // An image without a usable patch (no objects at all, or too few or too small) is
        // passed over: the next image comes from a random order of the others, so each usable
        // image stays equally likely, and which image is chosen depends on `rng` alone.
        let first = rng.gen_range(0..self.pairs.len());
        let mut error = match self.sample_image(first, cfg, rng) {
            Err(e @ DataError::NoValidPatch { .. }) => e,
            other => return other,
        };
        if self.len() == 1 {
            return Err(error);
        }
        self.note_skipped(first, &error);
        let mut others: Vec<usize> = (0..self.len()).filter(|&i| i != first).collect();
        others.shuffle(rng);
        for index in others {
            match self.sample_image(index, cfg, rng) {
                Err(e @ DataError::NoValidPatch { .. }) => {
                    self.note_skipped(index, &e);
                    error = e;
                }
                other => return other,
            }
        }
        match error {
            DataError::NoValidPatch {
                patch_height,
                patch_width,
                min_objects,
                min_size,
                attempts,
                ..
            } => Err(DataError::NoValidPatch {
                image: format!("all {} images", self.len()),
                patch_height,
                patch_width,
                min_objects,
                min_size,
                attempts,
            }),
            other => Err(other),
        }
    }

    /// [`Dataset::sample`] from image `index`.
    fn sample_image(
        &self,
        index: usize,
        cfg: &SampleConfig,
        rng: &mut impl Rng,
    ) -> Result<TrainingSample> {
        let pair = &self.pairs[index];
        let labels = read_labels(&pair.labels)?;
        let shape = self.shapes[index];
        check_pair_size(pair, shape, labels.shape())?;
        let sampler = PatchSampler::new(cfg.patch.clone());
        let (top, left) = sampler.position(&pair.stem, shape, &labels, rng)?;
        let (h, w) = (cfg.patch.height, cfg.patch.width);
        let norm = &cfg.normalization;
        let (patch, (lo, hi)) = match self.cached_bounds(index, norm) {
            Some(b) => (read_image_region(&pair.image, top, left, h, w)?, b),
            None => {
                let image = read_image(&pair.image)?;
                let b = normalization_bounds(&image, norm)?;
                self.set_bounds(index, norm, b);
                (image.crop(top, left, h, w), b)
            }
        };
        let image = normalize_with_bounds(patch.as_slice(), lo, hi);
        let labels = prepare_instances(&labels.crop(top, left, h, w), cfg.min_object_size);
        let targets = cfg
            .with_targets
            .then(|| ais_targets(&labels, cfg.min_object_size));
        Ok(TrainingSample {
            image_name: pair.stem.clone(),
            origin: (top, left),
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
                    l.as_mut_slice()[y * 100 + x] = i as u32 + 1;
                }
            }
        }
        (GreyImage::filled(100, 100, BitDepth::U8, 100.0), l)
    }

    #[test]
    fn patches_hold_enough_objects_and_match_the_image() {
        let (img, lab) = blobs();
        let mut img = img;
        for (i, v) in img.as_mut_slice().iter_mut().enumerate() {
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
            assert!(ids.len() >= 3, "{ids:?} at {},{}", p.top, p.left);
            assert_eq!(p.image.as_slice()[0], img.get(p.top, p.left));
            assert_eq!(p.labels.get(39, 39), lab.get(p.top + 39, p.left + 39));
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

    /// The exact count of valid positions equals the sampler's own rule applied at every
    /// position, for objects narrower and wider than the patch, ids in several pieces and
    /// objects at the edges.
    #[test]
    fn valid_positions_agree_with_the_rule_at_every_position() {
        use rand::Rng;
        let mut rng = rng_for(11);
        for case in 0..100 {
            let (rows, cols) = (rng.gen_range(12..40), rng.gen_range(12..40));
            let mut l = LabelImage::zeros(rows, cols);
            let n = rng.gen_range(0..12);
            for _ in 0..n {
                let id = rng.gen_range(1..8u32);
                let (hh, ww) = (rng.gen_range(1..16), rng.gen_range(1..16));
                let (r0, c0) = (rng.gen_range(0..rows), rng.gen_range(0..cols));
                for r in r0..(r0 + hh).min(rows) {
                    for c in c0..(c0 + ww).min(cols) {
                        if rng.gen_bool(0.8) {
                            l.set(r, c, id);
                        }
                    }
                }
            }
            let config = PatchConfig {
                height: rng.gen_range(1..=rows),
                width: rng.gen_range(1..=cols),
                min_objects: rng.gen_range(0..4),
                min_object_size: rng.gen_range(0..30),
                max_attempts: 1,
            };
            let mut counts = vec![0u32; l.max_id() as usize + 1];
            let mut want = 0;
            for y in 0..=rows - config.height {
                for x in 0..=cols - config.width {
                    if count_objects(&l, x, y, &config, &mut counts) >= config.min_objects {
                        want += 1;
                    }
                }
            }
            let got = PatchSampler::new(config.clone())
                .valid_positions("t", &l)
                .unwrap();
            let total = ((rows - config.height + 1) * (cols - config.width + 1)) as u64;
            assert_eq!(
                (got.total, got.valid),
                (total, want),
                "case {case}: {rows}x{cols}, {config:?}"
            );
        }
        // The blobs: 4 squares of 36 px, a 40x40 patch needs 3 of them whole.
        let (_, lab) = blobs();
        let got = PatchSampler::new(PatchConfig {
            height: 40,
            width: 40,
            min_objects: 3,
            min_object_size: 36,
            max_attempts: 100,
        })
        .valid_positions("blobs", &lab)
        .unwrap();
        // Corners (top, left) with rows 2..8 or 20..26 and columns likewise inside: the
        // patch must hold squares 1, 2, 3 or 2, 3, 4 ... at least three whole squares, i.e.
        // all four (3 squares span the same 24x24 box): top, left in 0..=2.
        assert_eq!((got.total, got.valid), (61 * 61, 9));
        assert!((got.miss_probability(100) - (1.0 - 9.0 / 3721.0f64).powi(100)).abs() < 1e-12);
        assert!(PatchSampler::new(PatchConfig {
            height: 101,
            ..PatchConfig::default()
        })
        .valid_positions("blobs", &lab)
        .unwrap_err()
        .to_string()
        .contains("does not fit"));
    }

    #[test]
    fn training_requirements_ask_for_at_least_one_object() {
        let c = PatchConfig::training([256, 384], 0, 12);
        assert_eq!(
            (c.height, c.width, c.min_objects, c.min_object_size),
            (256, 384, 1, 12)
        );
        assert_eq!(c.max_attempts, PatchConfig::default().max_attempts);
        assert_eq!(PatchConfig::training([8, 8], 3, 0).min_objects, 3);
    }

    #[test]
    fn hold_out_picks_the_pairs_of_split_by_image() {
        let pairs: Vec<ImagePair> = (0..10)
            .map(|i| ImagePair {
                stem: format!("s{i}"),
                image: format!("i/s{i}.tif").into(),
                labels: format!("l/s{i}.tif").into(),
            })
            .collect();
        let (train, val) = hold_out(&pairs, 0.2, 3).unwrap();
        let (ti, vi) = split_by_image(10, 0.2, 3).unwrap();
        assert_eq!(
            val,
            vi.iter().map(|&i| pairs[i].clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            train,
            ti.iter().map(|&i| pairs[i].clone()).collect::<Vec<_>>()
        );
        assert!(hold_out(&pairs[..1], 0.5, 0).is_err());
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

    /// A dataset of `n` synthetic images written to `dir` as deflate TIFFs.
    fn dataset_on_disk(dir: &std::path::Path, n: usize, size: usize) -> Vec<ImagePair> {
        let (images, labels) = (dir.join("images"), dir.join("labels"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        for i in 0..n {
            let s = crate::synth::synthesize(
                &crate::synth::SynthConfig {
                    size,
                    ..Default::default()
                },
                5 + i as u64,
            );
            crate::io::write_image(images.join(format!("s{i}.tif")), &s.image).unwrap();
            crate::io::write_labels(labels.join(format!("s{i}.tif")), &s.labels).unwrap();
        }
        crate::io::pair_by_stem(&images, &labels).unwrap()
    }

    fn sample_config(size: usize) -> SampleConfig {
        SampleConfig {
            patch: PatchConfig {
                height: size,
                width: size,
                min_objects: 2,
                ..PatchConfig::default()
            },
            ..SampleConfig::default()
        }
    }

    #[test]
    fn dataset_sample_prepares_labels_and_targets() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dataset_on_disk(dir.path(), 1, 128);
        let (image, _) = read_pair(&pairs[0]).unwrap();
        let whole = crate::preprocess::preprocess(&image, &Normalization::default()).unwrap();
        let ds = Dataset::open(&pairs).unwrap();
        let cfg = sample_config(64);
        let t = ds.sample(&cfg, &mut rng_for(2)).unwrap();
        assert_eq!(t.image.len(), 64 * 64);
        // normalised with the whole image's bounds, as inference does
        let (oy, ox) = t.origin;
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
        for (f, l) in tg.data[..64 * 64].iter().zip(t.labels.as_slice()) {
            assert_eq!(*f, if *l != 0 { 1.0 } else { 0.0 });
        }
    }

    /// The samples of the streaming dataset are those of the images held in memory (the
    /// previous design): same patch positions, same values, whether or not bounds were
    /// computed ahead.
    #[test]
    fn streamed_samples_equal_samples_of_images_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dataset_on_disk(dir.path(), 3, 128);
        let cfg = sample_config(48);
        let lazy = Dataset::open(&pairs).unwrap();
        let ahead = Dataset::open(&pairs).unwrap();
        ahead.compute_bounds(&cfg.normalization, |_| true).unwrap();
        let loaded: Vec<_> = pairs.iter().map(|p| read_pair(p).unwrap()).collect();
        for seed in 0..12 {
            // The in-memory reference: the same draws on the decoded images.
            let mut rng = rng_for(seed);
            let index = rng.gen_range(0..loaded.len());
            let (image, labels) = &loaded[index];
            let patch = PatchSampler::new(cfg.patch.clone())
                .sample("ref", image, labels, &mut rng)
                .unwrap();
            let (lo, hi) = normalization_bounds(image, &cfg.normalization).unwrap();
            let want = normalize_with_bounds(patch.image.as_slice(), lo, hi);
            for ds in [&lazy, &ahead] {
                let got = ds.sample(&cfg, &mut rng_for(seed)).unwrap();
                assert_eq!(got.image_name, pairs[index].stem);
                assert_eq!(got.origin, (patch.top, patch.left));
                assert_eq!(got.image, want, "seed {seed}");
                assert_eq!(
                    got.labels,
                    prepare_instances(&patch.labels, cfg.min_object_size)
                );
            }
        }
        for (i, (image, _)) in loaded.iter().enumerate() {
            let want = normalization_bounds(image, &cfg.normalization).unwrap();
            assert_eq!(ahead.cached_bounds(i, &cfg.normalization), Some(want));
            // Sampling cached the bounds of every image it drew (12 draws over 3 images).
            assert_eq!(lazy.cached_bounds(i, &cfg.normalization), Some(want));
        }
    }

    #[test]
    fn open_reads_headers_and_refuses_mismatched_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dataset_on_disk(dir.path(), 2, 64);
        let small = crate::image::LabelImage::zeros(64, 32);
        crate::io::write_labels(&pairs[1].labels, &small).unwrap();
        let err = Dataset::open(&pairs).unwrap_err();
        assert!(matches!(err, DataError::SizeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("s1.tif"), "{err}");
        // A subset keeps names, sizes and computed bounds.
        let ok = Dataset::open(&pairs[..1]).unwrap();
        let norm = Normalization::default();
        ok.compute_bounds(&norm, |_| true).unwrap();
        let sub = ok.subset(&[0]);
        assert_eq!(sub.pairs(), &pairs[..1]);
        assert_eq!(sub.cached_bounds(0, &norm), ok.cached_bounds(0, &norm));
        assert!(sub.cached_bounds(0, &norm).is_some());
    }

    #[test]
    fn compute_bounds_names_an_unreadable_image() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dataset_on_disk(dir.path(), 2, 64);
        // Keep the header and the directory (at the end), spoil the pixels: opening works,
        // decoding does not.
        let mut bytes = std::fs::read(&pairs[1].image).unwrap();
        let n = bytes.len();
        bytes[8..n / 2].iter_mut().for_each(|b| *b = 0xA5);
        std::fs::write(&pairs[1].image, &bytes).unwrap();
        let ds = Dataset::open(&pairs).unwrap();
        let norm = Normalization::default();
        ds.compute_bounds(&norm, |i| i == 0).unwrap();
        let err = ds.compute_bounds(&norm, |_| true).unwrap_err();
        assert!(err.to_string().contains("s1.tif"), "{err}");
    }
    #[test]
    fn issue_16_an_image_without_objects_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = dataset_on_disk(dir.path(), 3, 64);
        // s1 has no objects at all.
        crate::io::write_labels(&pairs[1].labels, &LabelImage::zeros(64, 64)).unwrap();
        let ds = Dataset::open(&pairs).unwrap();
        let cfg = sample_config(32);
        let draw = |seed: u64| -> Vec<String> {
            let mut rng = rng_for(seed);
            (0..24)
                .map(|_| ds.sample(&cfg, &mut rng).unwrap().image_name)
                .collect()
        };
        let names = draw(7);
        assert!(!names.iter().any(|n| n == "s1"), "{names:?}");
        assert!(names.iter().any(|n| n == "s0") && names.iter().any(|n| n == "s2"));
        // Which image comes is a function of the random stream alone.
        assert_eq!(draw(7), names);
        let skipped = ds.skipped_images();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].starts_with("s1: s1: no 32x32 patch with at least 2 objects"),
            "{skipped:?}"
        );
        // With no usable image at all, the error says so.
        for p in &pairs {
            crate::io::write_labels(&p.labels, &LabelImage::zeros(64, 64)).unwrap();
        }
        let err = ds.sample(&cfg, &mut rng_for(1)).unwrap_err().to_string();
        assert!(
            err.starts_with("all 3 images: no 32x32 patch with at least 2 objects")
                && err.contains("lower data.min_objects_per_patch"),
            "{err}"
        );
    }
}
