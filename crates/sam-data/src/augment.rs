//! Offline augmentation of one image/label pair: geometric operations resample the image
//! (bilinear) and the labels (nearest neighbour) through one combined mapping; intensity
//! operations touch the image only.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::blur::gaussian_blur;
use crate::error::{DataError, Result};
use crate::image::{BitDepth, GreyImage, LabelImage};
use crate::labels::split_fragments;
use crate::plane::Plane;
use crate::preprocess::percentiles;
use crate::rng::{derive_seed, rng_for};

/// A probability and a range: the value is drawn uniformly from `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeOp {
    /// Probability that the operation is applied.
    pub p: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Scale, shear and translation about the image centre.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffineOp {
    /// Probability.
    pub p: f64,
    /// Scale factor range `[min, max]` (default 0.8..1.2).
    pub scale: [f64; 2],
    /// Largest shear angle in degrees, drawn from `[-shear, shear]` (default 10).
    pub shear_degrees: f64,
    /// Largest shift as a fraction of the image size, per axis (default 0.05).
    pub translate: f64,
}

/// Elastic deformation: a smooth random displacement field.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticOp {
    /// Probability.
    pub p: f64,
    /// Standard deviation of the displacement in pixels, per axis (default 4).
    pub magnitude: f64,
    /// Smoothness: sigma of the Gaussian that smooths white noise into the field, in pixels
    /// (default 50, as albumentations).
    pub sigma: f64,
}

/// Probabilities and ranges of every augmentation operation, and the label clean-up.
///
/// Intensities are in units of the image's full range (1.0 = 255 or 65535), so the same
/// configuration fits 8- and 16-bit data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of a left-right flip.
    pub hflip: f64,
    /// Probability of an up-down flip.
    pub vflip: f64,
    /// Probability of a rotation by 90, 180 or 270 degrees (counter-clockwise, uniform).
    pub rot90: f64,
    /// Rotation about the centre by an angle in degrees drawn from `[min, max]`
    /// (counter-clockwise as displayed).
    pub rotate: RangeOp,
    /// Scale, shear and shift.
    pub affine: AffineOp,
    /// Elastic deformation.
    pub elastic: ElasticOp,
    /// Brightness shift `x + b`, `b` in `[min, max]` (fraction of full range).
    pub brightness: RangeOp,
    /// Contrast factor `c` in `[min, max]`: `mean + c * (x - mean)`.
    pub contrast: RangeOp,
    /// Gamma `x^g` on the normalised intensity, `g` in `[min, max]`.
    pub gamma: RangeOp,
    /// Additive Gaussian noise, standard deviation in `[min, max]` (fraction of full range).
    pub noise: RangeOp,
    /// Gaussian blur, sigma in pixels in `[min, max]`.
    pub blur: RangeOp,
    /// Linear illumination gradient in a random direction: the image is multiplied by
    /// `1 + s * t`, `t` running from -1 to 1 across the image, `s` in `[min, max]`.
    pub illumination: RangeOp,
    /// Objects (and pieces of objects cut by the border or a deformation) smaller than this
    /// many pixels are removed from the labels after geometric operations.
    pub min_object_size: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.5,
            vflip: 0.5,
            rot90: 0.5,
            rotate: RangeOp {
                p: 0.5,
                min: -45.0,
                max: 45.0,
            },
            affine: AffineOp {
                p: 0.5,
                scale: [0.8, 1.2],
                shear_degrees: 10.0,
                translate: 0.05,
            },
            elastic: ElasticOp {
                p: 0.5,
                magnitude: 4.0,
                sigma: 50.0,
            },
            brightness: RangeOp {
                p: 0.5,
                min: -0.1,
                max: 0.1,
            },
            contrast: RangeOp {
                p: 0.5,
                min: 0.8,
                max: 1.25,
            },
            gamma: RangeOp {
                p: 0.5,
                min: 0.8,
                max: 1.2,
            },
            noise: RangeOp {
                p: 0.5,
                min: 0.005,
                max: 0.02,
            },
            blur: RangeOp {
                p: 0.5,
                min: 0.5,
                max: 1.5,
            },
            illumination: RangeOp {
                p: 0.5,
                min: 0.05,
                max: 0.2,
            },
            min_object_size: 25,
        }
    }
}

impl AugmentConfig {
    /// Checks every probability and range; reports all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let prob = |name: &str, p: f64| {
            (!(0.0..=1.0).contains(&p)).then(|| format!("{name}.p must be in [0, 1], found {p}"))
        };
        problems.extend(prob("hflip", self.hflip));
        problems.extend(prob("vflip", self.vflip));
        problems.extend(prob("rot90", self.rot90));
        problems.extend(prob("rotate", self.rotate.p));
        problems.extend(prob("affine", self.affine.p));
        problems.extend(prob("elastic", self.elastic.p));
        problems.extend(prob("brightness", self.brightness.p));
        problems.extend(prob("contrast", self.contrast.p));
        problems.extend(prob("gamma", self.gamma.p));
        problems.extend(prob("noise", self.noise.p));
        problems.extend(prob("blur", self.blur.p));
        problems.extend(prob("illumination", self.illumination.p));
        let range = |name: &str, lo: f64, hi: f64, floor: f64| {
            (!(lo <= hi && lo >= floor && hi.is_finite()))
                .then(|| format!("{name} must satisfy {floor} <= min <= max, found [{lo}, {hi}]"))
        };
        problems.extend(range(
            "affine.scale",
            self.affine.scale[0],
            self.affine.scale[1],
            1e-3,
        ));
        problems.extend(range("gamma", self.gamma.min, self.gamma.max, 1e-3));
        problems.extend(range("noise", self.noise.min, self.noise.max, 0.0));
        problems.extend(range("blur", self.blur.min, self.blur.max, 0.0));
        problems.extend(range(
            "illumination",
            self.illumination.min,
            self.illumination.max,
            0.0,
        ));
        if self.illumination.max >= 1.0 {
            problems.push(format!(
                "illumination.max must be < 1 (the image would turn negative), found {}",
                self.illumination.max
            ));
        }
        problems.extend(range("contrast", self.contrast.min, self.contrast.max, 0.0));
        problems.extend(range(
            "rotate",
            self.rotate.min,
            self.rotate.max,
            f64::NEG_INFINITY,
        ));
        problems.extend(range(
            "brightness",
            self.brightness.min,
            self.brightness.max,
            -1.0,
        ));
        for (name, v) in [
            ("affine.shear_degrees", self.affine.shear_degrees),
            ("affine.translate", self.affine.translate),
            ("elastic.magnitude", self.elastic.magnitude),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                problems.push(format!("{name} must be a finite number >= 0, found {v}"));
            }
        }
        if !(self.elastic.sigma > 0.0 && self.elastic.sigma.is_finite()) {
            problems.push(format!(
                "elastic.sigma must be > 0, found {}",
                self.elastic.sigma
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DataError::InvalidParameter {
                name: "augmentation".into(),
                reason: problems.join("; "),
            })
        }
    }

    /// A configuration with every probability set to zero (the identity).
    pub fn none() -> Self {
        let mut c = AugmentConfig::default();
        for p in [
            &mut c.hflip,
            &mut c.vflip,
            &mut c.rot90,
            &mut c.rotate.p,
            &mut c.affine.p,
            &mut c.elastic.p,
            &mut c.brightness.p,
            &mut c.contrast.p,
            &mut c.gamma.p,
            &mut c.noise.p,
            &mut c.blur.p,
            &mut c.illumination.p,
        ] {
            *p = 0.0;
        }
        c
    }
}

/// One operation as it was applied, with the drawn parameters (recorded in the manifest).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AppliedOp {
    /// Left-right flip.
    Hflip,
    /// Up-down flip.
    Vflip,
    /// Counter-clockwise rotation by `k` * 90 degrees.
    Rot90 {
        /// 1, 2 or 3.
        k: u8,
    },
    /// Rotation about the centre, counter-clockwise in the displayed image.
    Rotate {
        /// Angle in degrees.
        degrees: f64,
    },
    /// Scale, shear and shift about the centre.
    Affine {
        /// Scale factor.
        scale: f64,
        /// Shear angle in degrees (x sheared by y).
        shear_degrees: f64,
        /// Shift in pixels along x.
        translate_x: f64,
        /// Shift in pixels along y.
        translate_y: f64,
    },
    /// Elastic deformation.
    Elastic {
        /// Displacement standard deviation in pixels.
        magnitude: f64,
        /// Smoothness in pixels.
        sigma: f64,
        /// Seed of the displacement field.
        field_seed: u64,
    },
    /// Brightness shift (fraction of full range).
    Brightness {
        /// Added value.
        shift: f64,
    },
    /// Contrast factor about the mean intensity.
    Contrast {
        /// Factor.
        factor: f64,
    },
    /// Gamma.
    Gamma {
        /// Exponent.
        gamma: f64,
    },
    /// Gaussian blur.
    Blur {
        /// Sigma in pixels.
        sigma: f64,
    },
    /// Linear illumination gradient.
    Illumination {
        /// Strength.
        strength: f64,
        /// Direction of increasing brightness, degrees counter-clockwise from +x.
        angle_degrees: f64,
    },
    /// Additive Gaussian noise.
    Noise {
        /// Standard deviation (fraction of full range).
        std: f64,
        /// Seed of the noise.
        noise_seed: u64,
    },
}

/// The augmented pair and what was done to it.
#[derive(Debug, Clone)]
pub struct Augmented {
    /// The augmented image (same depth as the input).
    pub image: GreyImage,
    /// The augmented labels.
    pub labels: LabelImage,
    /// The operations in the order they were applied.
    pub ops: Vec<AppliedOp>,
}

/// Draws the operations for one output from `rng` (same stream, same plan).
pub fn plan_ops(cfg: &AugmentConfig, rng: &mut ChaCha8Rng) -> Vec<AppliedOp> {
    let mut ops = Vec::new();
    let hit = |rng: &mut ChaCha8Rng, p: f64| rng.gen::<f64>() < p;
    // intensity changes of the source first (exact per grey value, via a lookup table)
    if hit(rng, cfg.brightness.p) {
        ops.push(AppliedOp::Brightness {
            shift: uni(rng, cfg.brightness.min, cfg.brightness.max),
        });
    }
    if hit(rng, cfg.contrast.p) {
        ops.push(AppliedOp::Contrast {
            factor: uni(rng, cfg.contrast.min, cfg.contrast.max),
        });
    }
    if hit(rng, cfg.gamma.p) {
        ops.push(AppliedOp::Gamma {
            gamma: uni(rng, cfg.gamma.min, cfg.gamma.max),
        });
    }
    if hit(rng, cfg.hflip) {
        ops.push(AppliedOp::Hflip);
    }
    if hit(rng, cfg.vflip) {
        ops.push(AppliedOp::Vflip);
    }
    if hit(rng, cfg.rot90) {
        ops.push(AppliedOp::Rot90 {
            k: rng.gen_range(1..=3),
        });
    }
    if hit(rng, cfg.rotate.p) {
        ops.push(AppliedOp::Rotate {
            degrees: uni(rng, cfg.rotate.min, cfg.rotate.max),
        });
    }
    if hit(rng, cfg.affine.p) {
        let a = &cfg.affine;
        ops.push(AppliedOp::Affine {
            scale: uni(rng, a.scale[0], a.scale[1]),
            shear_degrees: uni(rng, -a.shear_degrees, a.shear_degrees),
            // fractions here, turned into pixels by `augment_pair` once the size is known
            translate_x: uni(rng, -a.translate, a.translate),
            translate_y: uni(rng, -a.translate, a.translate),
        });
    }
    if hit(rng, cfg.elastic.p) {
        ops.push(AppliedOp::Elastic {
            magnitude: cfg.elastic.magnitude,
            sigma: cfg.elastic.sigma,
            field_seed: rng.gen(),
        });
    }
    if hit(rng, cfg.blur.p) {
        ops.push(AppliedOp::Blur {
            sigma: uni(rng, cfg.blur.min, cfg.blur.max),
        });
    }
    if hit(rng, cfg.illumination.p) {
        ops.push(AppliedOp::Illumination {
            strength: uni(rng, cfg.illumination.min, cfg.illumination.max),
            angle_degrees: uni(rng, 0.0, 360.0),
        });
    }
    if hit(rng, cfg.noise.p) {
        ops.push(AppliedOp::Noise {
            std: uni(rng, cfg.noise.min, cfg.noise.max),
            noise_seed: rng.gen(),
        });
    }
    ops
}

fn uni(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.gen_range(lo..=hi)
    } else {
        lo
    }
}

/// Augments one pair with the operations drawn from `seed`. Same inputs and seed, same
/// output bytes, on any number of threads.
pub fn augment_pair(
    image: &GreyImage,
    labels: &LabelImage,
    cfg: &AugmentConfig,
    seed: u64,
) -> Result<Augmented> {
    cfg.validate()?;
    if image.cols() != labels.cols() || image.rows() != labels.rows() {
        return Err(DataError::InvalidParameter {
            name: "labels".into(),
            reason: format!(
                "image is {}x{} but labels are {}x{}",
                image.cols(),
                image.rows(),
                labels.cols(),
                labels.rows()
            ),
        });
    }
    let mut rng = rng_for(seed);
    let mut ops = plan_ops(cfg, &mut rng);
    // translations were drawn as fractions of the size; record pixels
    for op in &mut ops {
        if let AppliedOp::Affine {
            translate_x,
            translate_y,
            ..
        } = op
        {
            *translate_x *= image.cols() as f64;
            *translate_y *= image.rows() as f64;
        }
    }
    apply_ops(image, labels, &ops, cfg.min_object_size).map(|(image, labels)| Augmented {
        image,
        labels,
        ops,
    })
}

/// Applies a list of already drawn operations (as recorded in a manifest).
///
/// Passes over the image: one geometric pass (exact index permutation for flips and 90°
/// rotations alone, otherwise one resampling through the combined map and displacement field)
/// with the intensity table applied on the fly; a blur pass if drawn; one pass for
/// illumination and noise if drawn.
pub fn apply_ops(
    image: &GreyImage,
    labels: &LabelImage,
    ops: &[AppliedOp],
    min_object_size: usize,
) -> Result<(GreyImage, LabelImage)> {
    // intensity lookup table: brightness, contrast, gamma
    let (mut shift, mut gain, mut gamma) = (0.0f64, 1.0f64, 1.0f64);
    for op in ops {
        match op {
            AppliedOp::Brightness { shift: s } => shift += s,
            AppliedOp::Contrast { factor } => gain *= factor,
            AppliedOp::Gamma { gamma: g } => gamma *= g,
            _ => {}
        }
    }
    let lut = (shift != 0.0 || gain != 1.0 || gamma != 1.0).then(|| {
        let mean = if gain != 1.0 { mean_level(image) } else { 0.0 };
        Lut::new(image.depth.max_value(), |x| {
            (mean + gain * (x - mean) + shift)
                .clamp(0.0, 1.0)
                .powf(gamma)
        })
    });

    // geometry: exact permutations alone, or one combined resampling
    let mut flips = (false, false);
    let mut k90 = 0u8;
    let mut affine: Option<Mat> = None;
    let mut elastic: Option<(f64, f64, u64)> = None;
    for op in ops {
        match *op {
            AppliedOp::Hflip => flips.0 = !flips.0,
            AppliedOp::Vflip => flips.1 = !flips.1,
            AppliedOp::Rot90 { k } => k90 = (k90 + k) % 4,
            AppliedOp::Rotate { degrees } => {
                affine = Some(Mat::rotation(degrees).then_after(affine))
            }
            AppliedOp::Affine {
                scale,
                shear_degrees,
                translate_x,
                translate_y,
            } => {
                let a = Mat::affine(scale, shear_degrees, translate_x, translate_y);
                affine = Some(a.then_after(affine));
            }
            AppliedOp::Elastic {
                magnitude,
                sigma,
                field_seed,
            } => elastic = Some((magnitude, sigma, field_seed)),
            _ => {}
        }
    }
    let (out_w, out_h) = if k90 % 2 == 1 {
        (image.rows(), image.cols())
    } else {
        (image.cols(), image.rows())
    };
    let src = discrete_inverse(image.cols(), image.rows(), flips, k90);
    let (mut img, lab) = if affine.is_none() && elastic.is_none() {
        permute(image, labels, &src, out_w, out_h, lut.as_ref())
    } else {
        let cont = affine
            .map(|a| a.inverse_about_centre(out_w, out_h))
            .unwrap_or_else(Mat::identity);
        let map = src.compose(&cont);
        let field = elastic.map(|(m, s, seed)| Field::new(out_w, out_h, m, s, seed));
        let mut fill = background_level(image);
        if let Some(l) = &lut {
            fill = l.apply(fill);
        }
        let (i2, l2) = resample(
            image,
            labels,
            out_w,
            out_h,
            &map,
            field.as_ref(),
            fill,
            lut.as_ref(),
        );
        (i2, split_fragments(&l2, min_object_size))
    };

    // blur, illumination and noise on the output
    for op in ops {
        if let AppliedOp::Blur { sigma } = *op {
            gaussian_blur(&mut img.pixels, sigma);
        }
    }
    let illum = ops.iter().find_map(|op| match *op {
        AppliedOp::Illumination {
            strength,
            angle_degrees,
        } => Some((strength, angle_degrees)),
        _ => None,
    });
    let noise = ops.iter().find_map(|op| match *op {
        AppliedOp::Noise { std, noise_seed } => Some((std, noise_seed)),
        _ => None,
    });
    if illum.is_some() || noise.is_some() {
        illuminate_and_noise(&mut img, illum, noise);
    }
    Ok((img, lab))
}

/// An intensity transfer function tabulated over at most 4096 segments of the depth's range
/// (one per grey value for 8-bit images), interpolated linearly between entries; small enough
/// to stay in the L1 cache.
struct Lut {
    /// Entries `0..=n + 1` are used (the last repeats the end point); fixed size, so lookups
    /// need no bounds test.
    table: Box<[f32; LUT_LEN]>,
    max: f32,
    /// Table index per intensity unit.
    scale: f32,
}

const LUT_SEGMENTS: usize = 4096;
const LUT_LEN: usize = LUT_SEGMENTS + 2;

impl Lut {
    /// `f` maps normalised intensity [0, 1] to normalised intensity.
    fn new(max: f32, f: impl Fn(f64) -> f64) -> Self {
        let n = (max as usize).clamp(1, LUT_SEGMENTS);
        let mut table = Box::new([0f32; LUT_LEN]);
        for (i, t) in table.iter_mut().enumerate() {
            *t = (f(i.min(n) as f64 / n as f64) * f64::from(max)) as f32;
        }
        Lut {
            table,
            max,
            scale: n as f32 / max,
        }
    }

    #[inline(always)]
    fn apply(&self, v: f32) -> f32 {
        let x = v.clamp(0.0, self.max) * self.scale;
        // x is in 0..=n (n <= LUT_SEGMENTS): truncation is floor, `min` only proves the bound
        let i = (x as u32 as usize).min(LUT_SEGMENTS);
        let t = x - i as f32;
        let (a, b) = (self.table[i], self.table[i + 1]);
        a + (b - a) * t
    }
}

/// Mean intensity as a fraction of full range (from every 7th pixel).
fn mean_level(img: &GreyImage) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for &v in img.as_slice().iter().step_by(7) {
        sum += f64::from(v);
        n += 1;
    }
    sum / (n.max(1) as f64) / f64::from(img.depth.max_value())
}

/// The fill value for areas that a geometric operation brings in from outside the image:
/// the median intensity, i.e. the (bright) background, so no dark fake object appears.
fn background_level(img: &GreyImage) -> f32 {
    let mut sample: Vec<f32> = img.as_slice().iter().step_by(61).copied().collect();
    percentiles(&mut sample, &[50.0])[0]
}

/// Rows per parallel band and columns per tile of the geometric passes (tiles keep the
/// column-wise source reads of 90° rotations in cache).
const BAND: usize = 32;

/// Flips and 90-degree rotations as exact index permutations (`map` has integer
/// coefficients), with the intensity table applied on the way.
fn permute(
    img: &GreyImage,
    labels: &LabelImage,
    map: &Mat,
    ow: usize,
    oh: usize,
    lut: Option<&Lut>,
) -> (GreyImage, LabelImage) {
    let w = img.cols() as isize;
    let m = map.0;
    // source index = base + x * step_x + y * step_y
    let step_x = (m[3] as isize) * w + m[0] as isize;
    let step_y = (m[4] as isize) * w + m[1] as isize;
    let base = (m[5] as isize) * w + m[2] as isize;
    let mut oi = vec![0f32; ow * oh];
    let mut ol = vec![0u32; ow * oh];
    if step_x.abs() == 1 {
        // identity and flips: every output row is a source row, forwards or backwards
        oi.par_chunks_mut(ow)
            .zip(ol.par_chunks_mut(ow))
            .enumerate()
            .for_each(|(y, (ri, rl))| {
                let s = base + y as isize * step_y;
                let first = if step_x == 1 {
                    s
                } else {
                    s - (ow as isize - 1)
                } as usize;
                ri.copy_from_slice(&img.as_slice()[first..first + ow]);
                rl.copy_from_slice(&labels.as_slice()[first..first + ow]);
                if step_x == -1 {
                    ri.reverse();
                    rl.reverse();
                }
                if let Some(l) = lut {
                    for v in ri.iter_mut() {
                        *v = l.apply(*v);
                    }
                }
            });
    } else {
        oi.par_chunks_mut(ow * BAND)
            .zip(ol.par_chunks_mut(ow * BAND))
            .enumerate()
            .for_each(|(band, (bi, bl))| {
                let y0 = band * BAND;
                let rows = bi.len() / ow;
                for x0 in (0..ow).step_by(BAND) {
                    let x1 = (x0 + BAND).min(ow);
                    for r in 0..rows {
                        let mut s = base + (y0 + r) as isize * step_y + x0 as isize * step_x;
                        let (ri, rl) =
                            (&mut bi[r * ow..(r + 1) * ow], &mut bl[r * ow..(r + 1) * ow]);
                        for x in x0..x1 {
                            let su = s as usize;
                            let v = img.as_slice()[su];
                            ri[x] = match lut {
                                Some(l) => l.apply(v),
                                None => v,
                            };
                            rl[x] = labels.as_slice()[su];
                            s += step_x;
                        }
                    }
                }
            });
    }
    output_pair(img.depth, ow, oh, oi, ol)
}

/// The image and labels of a geometric pass.
fn output_pair(
    depth: BitDepth,
    width: usize,
    height: usize,
    image: Vec<f32>,
    labels: Vec<u32>,
) -> (GreyImage, LabelImage) {
    (
        GreyImage {
            pixels: Plane::from_parts(height, width, image),
            depth,
        },
        Plane::from_parts(height, width, labels),
    )
}

/// A 2x3 affine map `(x, y) -> (a x + b y + c, d x + e y + f)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mat([f64; 6]);

impl Mat {
    fn identity() -> Self {
        Mat([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    }

    /// Rotation counter-clockwise as displayed (y points down), about the origin.
    fn rotation(degrees: f64) -> Self {
        let (s, c) = degrees.to_radians().sin_cos();
        Mat([c, s, 0.0, -s, c, 0.0])
    }

    /// Forward scale, shear (x += tan(shear) * y) and translation about the origin.
    fn affine(scale: f64, shear_degrees: f64, tx: f64, ty: f64) -> Self {
        let sh = shear_degrees.to_radians().tan();
        Mat([scale, scale * sh, tx, 0.0, scale, ty])
    }

    /// `self ∘ other`: apply `other` first.
    fn compose(&self, other: &Mat) -> Mat {
        let (a, b) = (&self.0, &other.0);
        Mat([
            a[0] * b[0] + a[1] * b[3],
            a[0] * b[1] + a[1] * b[4],
            a[0] * b[2] + a[1] * b[5] + a[2],
            a[3] * b[0] + a[4] * b[3],
            a[3] * b[1] + a[4] * b[4],
            a[3] * b[2] + a[4] * b[5] + a[5],
        ])
    }

    /// `self` applied after `before` (if any).
    fn then_after(&self, before: Option<Mat>) -> Mat {
        match before {
            Some(b) => self.compose(&b),
            None => *self,
        }
    }

    fn inverse(&self) -> Mat {
        let m = &self.0;
        let det = m[0] * m[4] - m[1] * m[3];
        let (a, b, d, e) = (m[4] / det, -m[1] / det, -m[3] / det, m[0] / det);
        Mat([a, b, -(a * m[2] + b * m[5]), d, e, -(d * m[2] + e * m[5])])
    }

    /// The inverse of this forward map taken about the centre of a `w`x`h` image.
    fn inverse_about_centre(&self, w: usize, h: usize) -> Mat {
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let to = Mat([1.0, 0.0, cx, 0.0, 1.0, cy]);
        let from = Mat([1.0, 0.0, -cx, 0.0, 1.0, -cy]);
        to.compose(&self.compose(&from)).inverse()
    }
}

/// Maps output pixel coordinates of the flipped-then-rotated image back to the source.
fn discrete_inverse(w: usize, h: usize, flips: (bool, bool), k90: u8) -> Mat {
    let (wm, hm) = (w as f64 - 1.0, h as f64 - 1.0);
    // rot90 inverse (np.rot90 convention, counter-clockwise), output -> flipped source
    let rot = match k90 % 4 {
        1 => Mat([0.0, -1.0, wm, 1.0, 0.0, 0.0]), // sx = w-1-y, sy = x
        2 => Mat([-1.0, 0.0, wm, 0.0, -1.0, hm]),
        3 => Mat([0.0, 1.0, 0.0, -1.0, 0.0, hm]), // sx = y, sy = h-1-x
        _ => Mat::identity(),
    };
    let flip = Mat([
        if flips.0 { -1.0 } else { 1.0 },
        0.0,
        if flips.0 { wm } else { 0.0 },
        0.0,
        if flips.1 { -1.0 } else { 1.0 },
        if flips.1 { hm } else { 0.0 },
    ]);
    flip.compose(&rot)
}

/// A smooth displacement field on a coarse grid, bilinearly interpolated.
///
/// White Gaussian noise smoothed by a Gaussian of `sigma` pixels is band-limited to about
/// 1/sigma, so it is computed on a grid with spacing sigma/4 and interpolated; the result is
/// scaled to the requested standard deviation.
struct Field {
    step: f64,
    gw: usize,
    dx: Vec<f32>,
    dy: Vec<f32>,
}

impl Field {
    fn new(w: usize, h: usize, magnitude: f64, sigma: f64, seed: u64) -> Self {
        let step = (sigma / 4.0).max(1.0);
        let gw = (w as f64 / step).ceil() as usize + 2;
        let gh = (h as f64 / step).ceil() as usize + 2;
        let s = sigma / step;
        let mut rng = rng_for(derive_seed(seed, &[0xE1]));
        let make = |rng: &mut ChaCha8Rng| {
            let noise: Vec<f32> = (0..gw * gh)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect();
            let mut g = Plane::from_parts(gh, gw, noise);
            gaussian_blur(&mut g, s);
            let mut g = g.into_vec();
            let n = g.len() as f64;
            let mean = g.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = g
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let k = if var > 0.0 {
                (magnitude / var.sqrt()) as f32
            } else {
                0.0
            };
            for v in &mut g {
                *v = (*v - mean as f32) * k;
            }
            g
        };
        let dx = make(&mut rng);
        let dy = make(&mut rng);
        Field { step, gw, dx, dy }
    }

    /// Displacements of output row `y`, for every x in `0..w`.
    /// Displacements of output row `y`, for every x in `0..w`.
    fn row(&self, y: usize, w: usize, out_dx: &mut [f32], out_dy: &mut [f32], tmp: &mut Vec<f32>) {
        let fy = y as f64 / self.step;
        let iy = fy as usize;
        let ty = (fy - iy as f64) as f32;
        let (r0, r1) = (iy * self.gw, (iy + 1) * self.gw);
        // the two coarse rows blended once, then interpolated along x
        tmp.clear();
        for g in [&self.dx, &self.dy] {
            for j in 0..self.gw {
                tmp.push(g[r0 + j] + (g[r1 + j] - g[r0 + j]) * ty);
            }
        }
        let (cx, cy) = tmp.split_at(self.gw);
        let inv = (1.0 / self.step) as f32;
        for x in 0..w {
            let fx = x as f32 * inv;
            let ix = fx as usize;
            let tx = fx - ix as f32;
            out_dx[x] = cx[ix] + (cx[ix + 1] - cx[ix]) * tx;
            out_dy[x] = cy[ix] + (cy[ix + 1] - cy[ix]) * tx;
        }
    }
}

/// One pass over the output: source position through `map` (after the elastic
/// displacement), bilinear image sample with `fill` outside (then the intensity table),
/// nearest label with 0 outside.
#[allow(clippy::too_many_arguments)]
fn resample(
    img: &GreyImage,
    labels: &LabelImage,
    ow: usize,
    oh: usize,
    map: &Mat,
    field: Option<&Field>,
    fill: f32,
    lut: Option<&Lut>,
) -> (GreyImage, LabelImage) {
    let (w, h) = (img.cols() as i32, img.rows() as i32);
    let (wf, hf) = ((w - 1) as f32, (h - 1) as f32);
    let mut oi = vec![0f32; ow * oh];
    let mut ol = vec![0u32; ow * oh];
    let m: [f32; 6] = map.0.map(|v| v as f32);
    let (src, lab) = (img.as_slice(), labels.as_slice());
    let wu = img.cols();
    // Without a displacement field the source position is linear along each row: the stretch
    // where every bilinear sample lies inside the source runs through the fixed-point loop
    // (second pass, in tiles), the rest through the general per-pixel code (first pass).
    let runs: Vec<Option<AffineRun>> = match field {
        None => (0..oh)
            .map(|y| affine_interior(&map.0, y, ow, img.cols(), img.rows()))
            .collect(),
        Some(_) => Vec::new(),
    };
    oi.par_chunks_mut(ow)
        .zip(ol.par_chunks_mut(ow))
        .enumerate()
        .for_each(|(y, (ri, rl))| {
            let mut dx = vec![0f32; ow];
            let mut dy = vec![0f32; ow];
            let mut tmp = Vec::new();
            if let Some(f) = field {
                f.row(y, ow, &mut dx, &mut dy, &mut tmp);
            }
            let yf = y as f32;
            let (bx, by) = (m[1] * yf + m[2], m[4] * yf + m[5]);
            let interior = runs.get(y).and_then(Option::as_ref);
            let mut x = 0;
            while x < ow {
                if let Some(run) = interior.filter(|r| r.x_start == x) {
                    // sampled below, tile by tile
                    x = run.x_end;
                    continue;
                }
                let px = x as f32 + dx[x];
                let py = dy[x];
                let sx = m[0] * px + m[1] * py + bx;
                let sy = m[3] * px + m[4] * py + by;
                // labels: nearest neighbour (truncation is floor here: negatives are outside anyway)
                let (fx, fy) = (sx + 0.5, sy + 0.5);
                rl[x] = if fx >= 0.0 && fy >= 0.0 && (fx as i32) < w && (fy as i32) < h {
                    lab[fy as usize * wu + fx as usize]
                } else {
                    0
                };
                // image: bilinear, `fill` outside
                let v = if sx >= 0.0 && sy >= 0.0 && sx < wf && sy < hf {
                    let (x0, y0) = (sx as usize, sy as usize);
                    let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
                    let i = y0 * wu + x0;
                    let (a, b, c, d) = (src[i], src[i + 1], src[i + wu], src[i + wu + 1]);
                    let top = a + (b - a) * tx;
                    let bot = c + (d - c) * tx;
                    top + (bot - top) * ty
                } else {
                    let (x0, y0) = (sx.floor() as i32, sy.floor() as i32);
                    let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
                    let at = |xx: i32, yy: i32| {
                        if xx >= 0 && yy >= 0 && xx < w && yy < h {
                            src[yy as usize * wu + xx as usize]
                        } else {
                            fill
                        }
                    };
                    let (a, b, c, d) = (
                        at(x0, y0),
                        at(x0 + 1, y0),
                        at(x0, y0 + 1),
                        at(x0 + 1, y0 + 1),
                    );
                    let top = a + (b - a) * tx;
                    let bot = c + (d - c) * tx;
                    top + (bot - top) * ty
                };
                ri[x] = match lut {
                    Some(l) => l.apply(v),
                    None => v,
                };
                x += 1;
            }
        });
    if !runs.is_empty() {
        // The interior runs, in tiles of BAND rows × TILE columns: a rotated map reads the
        // source along slanted lines, and a tile keeps that footprint in cache.
        const TILE: usize = 128;
        oi.par_chunks_mut(ow * BAND)
            .zip(ol.par_chunks_mut(ow * BAND))
            .zip(runs.par_chunks(BAND))
            .for_each(|((bi, bl), band_runs)| {
                for t0 in (0..ow).step_by(TILE) {
                    let t1 = (t0 + TILE).min(ow);
                    for (r, run) in band_runs.iter().enumerate() {
                        let Some(run) = run.as_ref().and_then(|run| run.clip(t0, t1)) else {
                            continue;
                        };
                        let (ri, rl) =
                            (&mut bi[r * ow..(r + 1) * ow], &mut bl[r * ow..(r + 1) * ow]);
                        match lut {
                            Some(l) => run.sample(src, lab, wu, ri, rl, |v| l.apply(v)),
                            None => run.sample(src, lab, wu, ri, rl, |v| v),
                        }
                    }
                }
            });
    }
    output_pair(img.depth, ow, oh, oi, ol)
}

/// The part of one output row of an affine map whose bilinear samples all lie inside the
/// source, with the source position in 32.32 fixed point: exact integer steps along the row, no
/// per-pixel bounds tests or float-to-integer conversions.
struct AffineRun {
    x_start: usize,
    x_end: usize,
    /// Source position of `x_start` and its step per output pixel, in units of 2^-32 px.
    sx: i64,
    sy: i64,
    step_x: i64,
    step_y: i64,
}

const FIXED_ONE: f64 = 4_294_967_296.0; // 2^32

/// The [`AffineRun`] of output row `y` for `map` (output → source), if any pixel is inside.
fn affine_interior(map: &[f64; 6], y: usize, ow: usize, w: usize, h: usize) -> Option<AffineRun> {
    if w < 2 || h < 2 || ow == 0 {
        return None;
    }
    let fixed = |v: f64| (v * FIXED_ONE).round() as i64;
    let (sx0, sy0) = (
        fixed(map[1] * y as f64 + map[2]),
        fixed(map[4] * y as f64 + map[5]),
    );
    let (step_x, step_y) = (fixed(map[0]), fixed(map[3]));
    // inside: 0 <= s < (n - 1) on both axes, evaluated exactly in fixed point
    let (max_x, max_y) = (((w - 1) as i64) << 32, ((h - 1) as i64) << 32);
    let inside = |k: i64| {
        let (sx, sy) = (sx0 + k * step_x, sy0 + k * step_y);
        (0..max_x).contains(&sx) && (0..max_y).contains(&sy)
    };
    // the inside set of a linear map along the row is one interval: estimate its ends in
    // floating point, then settle them on the exact test
    let bound = |s0: i64, step: i64, max: i64| -> (f64, f64) {
        if step == 0 {
            return if (0..max).contains(&s0) {
                (f64::NEG_INFINITY, f64::INFINITY)
            } else {
                (f64::INFINITY, f64::NEG_INFINITY)
            };
        }
        let (a, b) = (-(s0 as f64) / step as f64, (max - s0) as f64 / step as f64);
        (a.min(b), a.max(b))
    };
    let (ax, bx) = bound(sx0, step_x, max_x);
    let (ay, by) = bound(sy0, step_y, max_y);
    let lo = ax.max(ay).max(0.0).ceil();
    let hi = bx.min(by).min(ow as f64 - 1.0).floor();
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return None;
    }
    let (mut a, mut b) = (lo as i64, hi as i64);
    while a <= b && !inside(a) {
        a += 1;
    }
    while b >= a && !inside(b) {
        b -= 1;
    }
    (a <= b).then(|| AffineRun {
        x_start: a as usize,
        x_end: b as usize + 1,
        sx: sx0 + a * step_x,
        sy: sy0 + a * step_y,
        step_x,
        step_y,
    })
}

impl AffineRun {
    /// The part of the run inside columns `x0..x1`, if any.
    fn clip(&self, x0: usize, x1: usize) -> Option<AffineRun> {
        let (a, b) = (self.x_start.max(x0), self.x_end.min(x1));
        let skip = a.saturating_sub(self.x_start) as i64;
        (a < b).then(|| AffineRun {
            x_start: a,
            x_end: b,
            sx: self.sx + skip * self.step_x,
            sy: self.sy + skip * self.step_y,
            step_x: self.step_x,
            step_y: self.step_y,
        })
    }

    /// Bilinear image samples (through `tone`) and nearest labels for `x_start..x_end`.
    #[inline(always)]
    fn sample(
        &self,
        src: &[f32],
        lab: &[u32],
        w: usize,
        ri: &mut [f32],
        rl: &mut [u32],
        tone: impl Fn(f32) -> f32,
    ) {
        const HALF: i64 = 1 << 31;
        const INV: f32 = 1.0 / 4_294_967_296.0;
        let (mut sx, mut sy) = (self.sx, self.sy);
        let out = ri[self.x_start..self.x_end]
            .iter_mut()
            .zip(&mut rl[self.x_start..self.x_end]);
        for (v, l) in out {
            let (x0, y0) = ((sx >> 32) as usize, (sy >> 32) as usize);
            let (tx, ty) = ((sx as u32) as f32 * INV, (sy as u32) as f32 * INV);
            let i = y0 * w + x0;
            let (a, b) = (src[i], src[i + 1]);
            let (c, d) = (src[i + w], src[i + w + 1]);
            let top = a + (b - a) * tx;
            let bot = c + (d - c) * tx;
            *v = tone(top + (bot - top) * ty);
            // nearest neighbour: floor(s + 0.5)
            let (nx, ny) = (((sx + HALF) >> 32) as usize, ((sy + HALF) >> 32) as usize);
            *l = lab[ny * w + nx];
            sx += self.step_x;
            sy += self.step_y;
        }
    }
}

/// SplitMix64 as a random stream for per-row camera noise: tiny state, fast, and enough
/// statistical quality for additive noise.
struct SplitMix(u64);

impl rand::RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        crate::rng::mix64(self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::RngCore::try_fill_bytes(self, dest).unwrap_or_default();
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand::Error> {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// Multiplies by a linear illumination ramp, adds Gaussian noise and clips to the depth's
/// range, in one pass. Noise rows have their own seeds, so the result does not depend on the
/// thread count.
fn illuminate_and_noise(img: &mut GreyImage, illum: Option<(f64, f64)>, noise: Option<(f64, u64)>) {
    let (w, h) = (img.cols(), img.rows());
    let max = img.depth.max_value();
    let (gx, gy) = match illum {
        Some((s, deg)) => {
            let (sn, cs) = deg.to_radians().sin_cos();
            // t runs from -1 to 1 across the image along the direction (y points down)
            let half = 0.5 * ((w as f64 - 1.0) * cs.abs() + (h as f64 - 1.0) * sn.abs()).max(1.0);
            ((s * cs / half) as f32, (-s * sn / half) as f32)
        }
        None => (0.0, 0.0),
    };
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    img.as_mut_slice()
        .par_chunks_mut(w)
        .enumerate()
        .for_each(|(y, row)| {
            let base = 1.0 + gy * (y as f32 - cy);
            match noise {
                Some((std, seed)) => {
                    let mut rng = SplitMix(derive_seed(seed, &[y as u64]));
                    let s = std as f32 * max;
                    for (x, v) in row.iter_mut().enumerate() {
                        let n: f32 = rng.sample(StandardNormal);
                        *v = (*v * (base + gx * (x as f32 - cx)) + s * n).clamp(0.0, max);
                    }
                }
                None => {
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = (*v * (base + gx * (x as f32 - cx))).clamp(0.0, max);
                    }
                }
            }
        });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::BitDepth;
    use crate::labels::object_stats;

    /// A 64x48 test pair: background 200, three dark rectangles of distinct grey levels with
    /// ids 1..3, so every label pixel can be checked against its image pixel.
    /// The fixed-point interior loop of `resample` against a direct f64 evaluation of the same
    /// output → source map: bilinear values and nearest labels at every pixel.
    #[test]
    fn affine_resampling_matches_a_direct_evaluation() {
        let (w, h) = (67, 45);
        let mut img = GreyImage::filled(h, w, BitDepth::U16, 0.0);
        let mut lab = LabelImage::zeros(h, w);
        for y in 0..h {
            for x in 0..w {
                img.as_mut_slice()[y * w + x] = ((x * 7919 + y * 104_729) % 65_536) as f32;
                lab.as_mut_slice()[y * w + x] = (x * 31 + y * 17) as u32 % 11;
            }
        }
        let fill = 1234.0;
        let maps = [
            Mat::rotation(33.0).inverse_about_centre(w, h),
            Mat::affine(1.17, -8.0, 3.3, -2.1).inverse_about_centre(w, h),
            Mat::affine(0.83, 4.0, -5.0, 7.5)
                .compose(&Mat::rotation(-71.0))
                .inverse_about_centre(w, h),
            Mat::identity(),
        ];
        for map in maps {
            let (oi, ol) = resample(&img, &lab, w, h, &map, None, fill, None);
            let mut checked = 0;
            for y in 0..h {
                for x in 0..w {
                    let m = map.0;
                    let sx = m[0] * x as f64 + m[1] * y as f64 + m[2];
                    let sy = m[3] * x as f64 + m[4] * y as f64 + m[5];
                    // away from the border and from rounding ties only
                    let tie = |v: f64| ((v + 0.5).fract() - 0.5).abs() > 0.5 - 1e-3;
                    if sx < 0.01
                        || sy < 0.01
                        || sx > (w - 1) as f64 - 0.01
                        || sy > (h - 1) as f64 - 0.01
                    {
                        continue;
                    }
                    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                    let (tx, ty) = (sx - x0 as f64, sy - y0 as f64);
                    let p = |xx: usize, yy: usize| f64::from(img.as_slice()[yy * w + xx]);
                    let top = p(x0, y0) + (p(x0 + 1, y0) - p(x0, y0)) * tx;
                    let bot = p(x0, y0 + 1) + (p(x0 + 1, y0 + 1) - p(x0, y0 + 1)) * tx;
                    let want = top + (bot - top) * ty;
                    let got = f64::from(oi.as_slice()[y * w + x]);
                    assert!((got - want).abs() < 0.05, "({x}, {y}): {got} vs {want}");
                    if !tie(sx) && !tie(sy) {
                        let (nx, ny) = ((sx + 0.5).floor() as usize, (sy + 0.5).floor() as usize);
                        assert_eq!(
                            ol.as_slice()[y * w + x],
                            lab.as_slice()[ny * w + nx],
                            "({x}, {y})"
                        );
                    }
                    checked += 1;
                }
            }
            assert!(checked > w * h / 3, "{checked}");
        }
    }

    fn pair() -> (GreyImage, LabelImage) {
        let (w, h) = (64, 48);
        let mut img = GreyImage::filled(h, w, BitDepth::U8, 200.0);
        let mut lab = LabelImage::zeros(h, w);
        for (id, (x0, y0, x1, y1), v) in [
            (1, (5, 4, 20, 14), 40.0),
            (2, (30, 10, 40, 40), 80.0),
            (3, (45, 30, 60, 44), 120.0),
        ] {
            for y in y0..y1 {
                for x in x0..x1 {
                    img.as_mut_slice()[y * w + x] = v;
                    lab.as_mut_slice()[y * w + x] = id;
                }
            }
        }
        (img, lab)
    }

    fn only(op: AppliedOp) -> Vec<AppliedOp> {
        vec![op]
    }

    /// Object pixels of the output carry their object's grey level (exact ops) ...
    fn assert_aligned_exact(img: &GreyImage, lab: &LabelImage) {
        for (v, l) in img.as_slice().iter().zip(lab.as_slice()) {
            let want = match l {
                0 => 200.0,
                1 => 40.0,
                2 => 80.0,
                _ => 120.0,
            };
            assert_eq!(*v, want);
        }
    }

    /// ... or, for interpolating ops, object pixels away from the outline do.
    fn assert_aligned_interior(img: &GreyImage, lab: &LabelImage) {
        let w = lab.cols();
        let mut checked = 0;
        for y in 1..lab.rows() - 1 {
            for x in 1..w - 1 {
                let i = y * w + x;
                let l = lab.as_slice()[i];
                let nb = [
                    i - 1,
                    i + 1,
                    i - w,
                    i + w,
                    i - w - 1,
                    i - w + 1,
                    i + w - 1,
                    i + w + 1,
                ];
                if l == 0 || nb.iter().any(|&j| lab.as_slice()[j] != l) {
                    continue;
                }
                let want = [0.0, 40.0, 80.0, 120.0][l as usize];
                assert!(
                    (img.as_slice()[i] - want).abs() < 1.0,
                    "({x},{y}) label {l} grey {}",
                    img.as_slice()[i]
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} interior pixels");
    }

    #[test]
    fn hflip_vflip_rot90_are_exact_permutations() {
        let (img, lab) = pair();
        let (w, h) = (img.cols(), img.rows());
        let (i, l) = apply_ops(&img, &lab, &only(AppliedOp::Hflip), 1).unwrap();
        assert_aligned_exact(&i, &l);
        assert_eq!(l.get(4, w - 1 - 5), 1);
        assert_eq!(l.get(4, w - 1 - 4), 0);
        let (i, l) = apply_ops(&img, &lab, &only(AppliedOp::Vflip), 1).unwrap();
        assert_aligned_exact(&i, &l);
        assert_eq!(l.get(h - 1 - 4, 5), 1);
        // np.rot90(a, 1): out[y][x] = a[x][w-1-y]
        let (i, l) = apply_ops(&img, &lab, &only(AppliedOp::Rot90 { k: 1 }), 1).unwrap();
        assert_eq!((l.cols(), l.rows()), (h, w));
        assert_aligned_exact(&i, &l);
        for y in 0..l.rows() {
            for x in 0..l.cols() {
                assert_eq!(l.get(y, x), lab.get(x, w - 1 - y));
            }
        }
        let (_, l2) = apply_ops(&img, &lab, &only(AppliedOp::Rot90 { k: 2 }), 1).unwrap();
        for y in 0..h {
            for x in 0..w {
                assert_eq!(l2.get(y, x), lab.get(h - 1 - y, w - 1 - x));
            }
        }
        let (_, l3) = apply_ops(&img, &lab, &only(AppliedOp::Rot90 { k: 3 }), 1).unwrap();
        for y in 0..l3.rows() {
            for x in 0..l3.cols() {
                assert_eq!(l3.get(y, x), lab.get(h - 1 - x, y));
            }
        }
    }

    #[test]
    fn rotation_moves_labels_with_the_image() {
        let (img, lab) = pair();
        let (i, l) = apply_ops(&img, &lab, &only(AppliedOp::Rotate { degrees: 30.0 }), 1).unwrap();
        assert_aligned_interior(&i, &l);
        // the centroid of object 2 rotates about the image centre by 30 degrees (counter-clockwise
        // on screen, y down): x' = c + (x-c) cos + (y-c) sin, y' = c - (x-c) sin + (y-c) cos
        let s0 = &object_stats(&lab)[1];
        let s1 = object_stats(&l).into_iter().find(|s| s.id == 2).unwrap();
        let (cx, cy) = (31.5, 23.5);
        let (sn, cs) = 30f64.to_radians().sin_cos();
        let (dx, dy) = (s0.centroid.0 - cx, s0.centroid.1 - cy);
        let want = (cx + dx * cs + dy * sn, cy - dx * sn + dy * cs);
        assert!(
            (s1.centroid.0 - want.0).abs() < 0.6 && (s1.centroid.1 - want.1).abs() < 0.6,
            "{:?} vs {want:?}",
            s1.centroid
        );
        // 90 degrees by interpolation equals rot90 (k=1) exactly on a square image
        let sq = GreyImage::from_vec(
            32,
            32,
            BitDepth::U8,
            (0..1024).map(|v| (v % 251) as f32).collect(),
        )
        .unwrap();
        let sl = LabelImage::from_vec(32, 32, (0..1024).map(|v| v / 100).collect()).unwrap();
        let (a, al) = apply_ops(&sq, &sl, &only(AppliedOp::Rotate { degrees: 90.0 }), 0).unwrap();
        let (b, bl) = apply_ops(&sq, &sl, &only(AppliedOp::Rot90 { k: 1 }), 0).unwrap();
        assert!(a
            .as_slice()
            .iter()
            .zip(b.as_slice())
            .all(|(p, q)| (p - q).abs() < 1e-3));
        assert_eq!(al, bl);
    }

    #[test]
    fn affine_scale_and_shift() {
        let (img, lab) = pair();
        let op = AppliedOp::Affine {
            scale: 1.5,
            shear_degrees: 0.0,
            translate_x: 3.0,
            translate_y: -2.0,
        };
        let (i, l) = apply_ops(&img, &lab, &only(op), 1).unwrap();
        assert_aligned_interior(&i, &l);
        // object 2 stays inside the image: its area grows by 1.5^2
        let a0 = object_stats(&lab)[1].area as f64;
        let s1 = object_stats(&l).into_iter().find(|s| s.id == 2).unwrap();
        assert!(
            (s1.area as f64 / a0 - 2.25).abs() < 0.1,
            "area ratio {}",
            s1.area as f64 / a0
        );
        // object 2 centroid: c + 1.5 (x - c) + t
        let s0 = &object_stats(&lab)[1];
        let s2 = object_stats(&l).into_iter().find(|s| s.id == 2).unwrap();
        let want = (
            31.5 + 1.5 * (s0.centroid.0 - 31.5) + 3.0,
            23.5 + 1.5 * (s0.centroid.1 - 23.5) - 2.0,
        );
        assert!((s2.centroid.0 - want.0).abs() < 0.6 && (s2.centroid.1 - want.1).abs() < 0.6);
        // shear keeps alignment too
        let op = AppliedOp::Affine {
            scale: 1.0,
            shear_degrees: 15.0,
            translate_x: 0.0,
            translate_y: 0.0,
        };
        let (i, l) = apply_ops(&img, &lab, &only(op), 1).unwrap();
        assert_aligned_interior(&i, &l);
    }

    #[test]
    fn elastic_keeps_alignment_and_moves_pixels() {
        let (img, lab) = pair();
        let op = AppliedOp::Elastic {
            magnitude: 3.0,
            sigma: 8.0,
            field_seed: 5,
        };
        let (i, l) = apply_ops(&img, &lab, &only(op.clone()), 1).unwrap();
        assert_aligned_interior(&i, &l);
        assert_ne!(l, lab);
        let (i2, l2) = apply_ops(&img, &lab, &only(op), 1).unwrap();
        assert_eq!((i, l), (i2, l2));
    }

    #[test]
    fn border_cut_fragments_below_min_size_are_removed_and_outside_is_background() {
        let (img, lab) = pair();
        // shift object 1 (x 5..20) mostly out of the image: 3 columns x 10 rows stay
        let op = AppliedOp::Affine {
            scale: 1.0,
            shear_degrees: 0.0,
            translate_x: -17.0,
            translate_y: 0.0,
        };
        let (i, l) = apply_ops(&img, &lab, &only(op.clone()), 31).unwrap();
        assert!(
            !l.as_slice().contains(&1),
            "a 30-pixel fragment survived min size 31"
        );
        // uncovered area on the right is filled with the background level, not dark
        assert!(i.as_slice()[10 * 64 + 63] > 190.0);
        assert_eq!(l.get(10, 63), 0);
        let (_, l) = apply_ops(&img, &lab, &only(op), 30).unwrap();
        assert_eq!(l.as_slice().iter().filter(|&&v| v == 1).count(), 30);
    }

    #[test]
    fn intensity_ops_follow_their_formulas_and_keep_objects_dark() {
        let (img, lab) = pair();
        let m = 255.0f64;
        let sub: Vec<f64> = img
            .as_slice()
            .iter()
            .step_by(7)
            .map(|&v| f64::from(v))
            .collect();
        let mean = sub.iter().sum::<f64>() / sub.len() as f64;
        type Formula = Box<dyn Fn(f64) -> f64>;
        let cases: Vec<(AppliedOp, Formula)> = vec![
            (
                AppliedOp::Brightness { shift: 0.1 },
                Box::new(move |x| x + 0.1 * m),
            ),
            (
                AppliedOp::Contrast { factor: 0.8 },
                Box::new(move |x| mean + 0.8 * (x - mean)),
            ),
            (
                AppliedOp::Gamma { gamma: 1.3 },
                Box::new(move |x| (x / m).powf(1.3) * m),
            ),
        ];
        for (op, f) in cases {
            let (i, l) = apply_ops(&img, &lab, &only(op.clone()), 1).unwrap();
            assert_eq!(l, lab);
            for (a, b) in i.as_slice().iter().zip(img.as_slice()) {
                assert!(
                    (f64::from(*a) - f(f64::from(*b))).abs() < 1e-3,
                    "{op:?}: {b} -> {a}"
                );
            }
        }
    }

    #[test]
    fn blur_noise_and_illumination() {
        let (img, lab) = pair();
        // blur: mass preserved in the interior, edges softened, labels untouched
        let (i, l) = apply_ops(&img, &lab, &only(AppliedOp::Blur { sigma: 1.0 }), 1).unwrap();
        assert_eq!(l, lab);
        assert!((i.get(9, 12) - 40.0).abs() < 1e-3);
        let edge = i.get(9, 5);
        assert!(edge > 45.0 && edge < 195.0, "{edge}");
        // noise: mean ~0, std as asked, different rows different noise
        let flat = GreyImage::filled(256, 256, BitDepth::U16, 30000.0);
        let fl = LabelImage::zeros(256, 256);
        let (i, _) = apply_ops(
            &flat,
            &fl,
            &only(AppliedOp::Noise {
                std: 0.01,
                noise_seed: 9,
            }),
            1,
        )
        .unwrap();
        let n = i.as_slice().len() as f64;
        let mean = i.as_slice().iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let sd = (i
            .as_slice()
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert!((mean - 30000.0).abs() < 5.0, "{mean}");
        assert!((sd / 655.35 - 1.0).abs() < 0.02, "{sd}");
        // illumination at 0 degrees: brighter to the right, factor 1 -/+ s at the edges
        let (i, _) = apply_ops(
            &flat,
            &fl,
            &only(AppliedOp::Illumination {
                strength: 0.1,
                angle_degrees: 0.0,
            }),
            1,
        )
        .unwrap();
        assert!((i.get(100, 0) - 27000.0).abs() < 1.0, "{}", i.get(100, 0));
        assert!((i.get(100, 255) - 33000.0).abs() < 1.0);
        // 90 degrees: brighter towards the top (y down)
        let (i, _) = apply_ops(
            &flat,
            &fl,
            &only(AppliedOp::Illumination {
                strength: 0.1,
                angle_degrees: 90.0,
            }),
            1,
        )
        .unwrap();
        assert!(i.get(0, 10) > i.get(255, 10));
    }

    #[test]
    fn same_seed_same_bytes_on_any_thread_count_and_all_ops_keep_alignment() {
        let s = crate::synth::synthesize(
            &crate::synth::SynthConfig {
                size: 128,
                ..Default::default()
            },
            1,
        );
        let cfg = AugmentConfig::default();
        let a = augment_pair(&s.image, &s.labels, &cfg, 42).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| augment_pair(&s.image, &s.labels, &cfg, 42).unwrap());
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.ops, b.ops);
        let c = augment_pair(&s.image, &s.labels, &cfg, 43).unwrap();
        assert_ne!(a.ops, c.ops);
        // replaying the recorded ops reproduces the output
        let (ri, rl) = apply_ops(&s.image, &s.labels, &a.ops, cfg.min_object_size).unwrap();
        assert_eq!((ri, rl), (a.image, a.labels));
    }

    #[test]
    fn dark_objects_stay_darker_than_background_under_random_augmentation() {
        let s = crate::synth::synthesize(
            &crate::synth::SynthConfig {
                size: 128,
                ..Default::default()
            },
            2,
        );
        let cfg = AugmentConfig::default();
        for seed in 0..12 {
            let a = augment_pair(&s.image, &s.labels, &cfg, seed).unwrap();
            let (mut f, mut nf, mut b, mut nb) = (0f64, 0, 0f64, 0);
            for (v, l) in a.image.as_slice().iter().zip(a.labels.as_slice()) {
                if *l != 0 {
                    f += f64::from(*v);
                    nf += 1;
                } else {
                    b += f64::from(*v);
                    nb += 1;
                }
            }
            assert!(
                nf > 0 && (f / nf as f64) < 0.85 * b / nb as f64,
                "seed {seed}: {:?}",
                a.ops
            );
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = AugmentConfig {
            hflip: 1.5,
            ..AugmentConfig::default()
        };
        c.gamma = RangeOp {
            p: 0.5,
            min: 1.2,
            max: 0.8,
        };
        c.elastic.sigma = 0.0;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("hflip.p") && msg.contains("gamma") && msg.contains("elastic.sigma"),
            "{msg}"
        );
    }
}
