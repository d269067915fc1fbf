//! Preprocessing: percentile normalisation and clipping, the one step shared by training,
//! evaluation and inference.

use crate::error::{DataError, Result};
use crate::image::GreyImage;

/// Percentile normalisation: the `lower_percentile`-th percentile maps to 0, the
/// `upper_percentile`-th to 1, values outside are clipped to [0, 1].
///
/// Percentiles follow numpy's default (linear interpolation between order statistics), so
/// `np.clip((x - np.percentile(x, lo)) / (np.percentile(x, hi) - np.percentile(x, lo)), 0, 1)`
/// gives the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Lower percentile in [0, 100) (default 1.0).
    pub lower_percentile: f64,
    /// Upper percentile in (lower, 100] (default 99.8).
    pub upper_percentile: f64,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            lower_percentile: 1.0,
            upper_percentile: 99.8,
        }
    }
}

impl Normalization {
    /// Checks 0 <= lower < upper <= 100.
    pub fn validate(&self) -> Result<()> {
        let (lo, hi) = (self.lower_percentile, self.upper_percentile);
        if !(0.0..100.0).contains(&lo) || hi <= lo || hi > 100.0 || hi.is_nan() {
            return Err(DataError::InvalidParameter {
                name: "normalization".into(),
                reason: format!(
                    "expected 0 <= lower_percentile < upper_percentile <= 100, found lower {lo}, upper {hi}"
                ),
            });
        }
        Ok(())
    }
}

/// numpy-style percentiles (linear interpolation) of `values` for each `q` in [0, 100].
///
/// `values` is reordered. Returns 0 for an empty slice.
pub fn percentiles(values: &mut [f32], qs: &[f64]) -> Vec<f32> {
    let n = values.len();
    if n == 0 {
        return vec![0.0; qs.len()];
    }
    qs.iter()
        .map(|&q| {
            let pos = (q.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let k = pos.floor() as usize;
            let frac = pos - k as f64;
            let (_, &mut a, rest) = values.select_nth_unstable_by(k, f32::total_cmp);
            if frac > 0.0 && k + 1 < n {
                let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
                (f64::from(a) + frac * (f64::from(b) - f64::from(a))) as f32
            } else {
                a
            }
        })
        .collect()
}

/// The preprocessing applied to every image before the model sees it, identical in training,
/// evaluation and inference: percentile normalisation and clipping to [0, 1].
///
/// Returns `width * height` values in [0, 1], row-major. A constant image maps to all zeros.
///
/// # Extension point
/// This function is the only place where model inputs are prepared. Any further step
/// (denoising, flat-field correction, ...) must be added here, behind an explicit option of
/// [`Normalization`]'s caller, so that training, evaluation and inference stay identical.
// TODO: later preprocessing steps (e.g. flat-field correction) go here, each behind an explicit,
// documented option; none exist yet.
pub fn preprocess(image: &GreyImage, norm: &Normalization) -> Result<Vec<f32>> {
    let (lo, hi) = normalization_bounds(image, norm)?;
    Ok(normalize_with_bounds(image.as_slice(), lo, hi))
}

/// The intensities that [`preprocess`] maps to 0 and 1 for this image. Patches of an image are
/// normalised with the bounds of the whole image, as inference normalises whole images.
pub fn normalization_bounds(image: &GreyImage, norm: &Normalization) -> Result<(f32, f32)> {
    norm.validate()?;
    let mut scratch = image.as_slice().to_vec();
    let p = percentiles(
        &mut scratch,
        &[norm.lower_percentile, norm.upper_percentile],
    );
    Ok((p[0], p[1]))
}

/// `(v - lo) / (hi - lo)` clipped to [0, 1] (all zeros when `hi <= lo`).
pub fn normalize_with_bounds(values: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    values
        .iter()
        .map(|&v| ((v - lo) * scale).clamp(0.0, 1.0))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::BitDepth;

    #[test]
    fn percentiles_match_numpy_linear() {
        // np.percentile([1, 2, 3, 4, 10], [0, 25, 50, 90, 100]) = [1, 2, 3, 7.6, 10]
        let mut v = vec![10.0, 3.0, 1.0, 4.0, 2.0];
        let p = percentiles(&mut v, &[0.0, 25.0, 50.0, 90.0, 100.0]);
        let want = [1.0, 2.0, 3.0, 7.6, 10.0];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{p:?}");
        }
    }

    #[test]
    fn normalises_and_clips() {
        // 0..=100: 1st percentile = 1.0, 99th = 99.0
        let img = GreyImage::from_vec(1, 101, BitDepth::U8, (0..=100).map(|v| v as f32).collect())
            .unwrap();
        let out = preprocess(
            &img,
            &Normalization {
                lower_percentile: 1.0,
                upper_percentile: 99.0,
            },
        )
        .unwrap();
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], 0.0);
        assert!((out[50] - 49.0 / 98.0).abs() < 1e-6);
        assert_eq!(out[99], 1.0);
        assert_eq!(out[100], 1.0);
    }

    #[test]
    fn constant_image_gives_zeros_and_bad_percentiles_are_rejected() {
        let img = GreyImage::filled(4, 4, BitDepth::U16, 500.0);
        assert!(preprocess(&img, &Normalization::default())
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));
        let err = preprocess(
            &img,
            &Normalization {
                lower_percentile: 50.0,
                upper_percentile: 10.0,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("lower_percentile"), "{err}");
    }
}
