//! Separable Gaussian smoothing with the kernel and border rules of micro_sam's post-processing.
//!
//! micro_sam smooths the decoder outputs with `bioimage_cpp.filters.gaussian_smoothing` (before
//! that `vigra.filters.gaussianSmoothing`). It samples a Gaussian of standard deviation `sigma` on
//! `[-r, r]` with `r = ceil(3 * sigma)` (at least 1; measured on bioimage_cpp 0.9: σ 0.7 → 3,
//! 1.0 → 3, 1.6 → 5, 2.05 → 7), normalises it to sum 1, and mirrors the image at its border
//! without repeating the edge pixel (`x[-1] = x[1]`, scipy's `"mirror"`).
//! This is narrower than scipy's `gaussian_filter` (truncate 4.0) and differs from skimage's
//! `gaussian` (border `"nearest"`); we follow micro_sam.

use rayon::prelude::*;

use crate::plane::Plane;

/// The normalised 1-D kernel of [`gaussian_smoothing`]: `2r + 1` taps, `r = ceil(3σ)`, `r ≥ 1`.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = ((3.0 * f64::from(sigma)).ceil() as usize).max(1);
    let s2 = 2.0 * f64::from(sigma) * f64::from(sigma);
    let taps: Vec<f64> = (0..=2 * radius)
        .map(|i| (-((i as f64 - radius as f64).powi(2)) / s2).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter().map(|t| (t / sum) as f32).collect()
}

/// Mirror index `i` (may be negative or ≥ n) into `[0, n)` without repeating the edge.
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut j = i.rem_euclid(period);
    if j >= n as isize {
        j = period - j;
    }
    j as usize
}

/// Gaussian smoothing of `image` with standard deviation `sigma` (pixels) along both axes.
///
/// `sigma <= 0` returns a copy. Rows are processed in parallel with rayon.
pub fn gaussian_smoothing(image: &Plane<f32>, sigma: f32) -> Plane<f32> {
    if sigma <= 0.0 || image.as_slice().is_empty() {
        return image.clone();
    }
    let kernel = gaussian_kernel(sigma);
    let r = (kernel.len() / 2) as isize;
    let (h, w) = image.shape();
    let src = image.as_slice();

    // Along x: pad each row by mirroring, then a straight dot product per pixel.
    let mut tmp = vec![0f32; h * w];
    tmp.par_chunks_mut(w).zip(src.par_chunks(w)).for_each_init(
        || Vec::with_capacity(w + 2 * r as usize),
        |padded: &mut Vec<f32>, (out, row)| {
            padded.clear();
            padded.extend((-r..w as isize + r).map(|i| row[mirror(i, w)]));
            // tap by tap over the whole row: the inner loop vectorises
            out.fill(0.0);
            for (j, k) in kernel.iter().enumerate() {
                for (o, p) in out.iter_mut().zip(&padded[j..j + w]) {
                    *o += k * p;
                }
            }
        },
    );

    // Along y: accumulate whole rows, which vectorises over x.
    let mut out = vec![0f32; h * w];
    out.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        for (j, k) in kernel.iter().enumerate() {
            let sy = mirror(y as isize + j as isize - r, h);
            let srow = &tmp[sy * w..(sy + 1) * w];
            for (a, b) in o.iter_mut().zip(srow) {
                *a += k * b;
            }
        }
    });
    // Shape is unchanged, so this cannot fail.
    Plane::from_vec(h, w, out).unwrap_or_else(|_| image.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_radius_follows_bioimage_cpp() {
        // r = ceil(3σ): σ=1 → 3, 1.6 → 5, 0.5 → 2, 0.7 → 3, 1.1 → 4, 2.05 → 7, 0.1 → 1.
        for (sigma, taps) in [
            (1.0, 7),
            (1.6, 11),
            (0.5, 5),
            (0.7, 7),
            (1.1, 9),
            (2.05, 15),
            (0.1, 3),
        ] {
            assert_eq!(gaussian_kernel(sigma).len(), taps, "sigma {sigma}");
        }
        let k = gaussian_kernel(1.0);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // Hand-computed: exp(0) / (1 + 2e^-0.5 + 2e^-2 + 2e^-4.5) = 0.399050...
        assert!((k[3] - 0.399_050_3).abs() < 1e-6, "{}", k[3]);
        assert!((k[2] - 0.242_036_2).abs() < 1e-6, "{}", k[2]);
    }

    #[test]
    fn mirror_does_not_repeat_the_edge() {
        assert_eq!(mirror(-1, 5), 1);
        assert_eq!(mirror(-2, 5), 2);
        assert_eq!(mirror(5, 5), 3);
        assert_eq!(mirror(6, 5), 2);
        assert_eq!(mirror(-9, 5), 1); // period 8
        assert_eq!(mirror(3, 1), 0);
    }

    #[test]
    fn impulse_at_the_border_gets_only_the_centre_tap() {
        // With mirror borders an impulse at x = 0 is not doubled (scipy "reflect" would add k[1]).
        let mut img = Plane::zeros(9, 9);
        for y in 0..9 {
            img.set(y, 0, 1.0);
        }
        let out = gaussian_smoothing(&img, 1.0);
        let k = gaussian_kernel(1.0);
        assert!((out.get(4, 0) - k[3]).abs() < 1e-6);
        assert!((out.get(4, 1) - k[2]).abs() < 1e-6);
        // An impulse at x = 1 contributes to x = 0 twice (from x = 1 and its mirror at x = -1).
        let mut img = Plane::zeros(9, 9);
        for y in 0..9 {
            img.set(y, 1, 1.0);
        }
        let out = gaussian_smoothing(&img, 1.0);
        assert!((out.get(4, 0) - 2.0 * k[2]).abs() < 1e-6);
    }

    #[test]
    fn constant_image_is_unchanged_and_mass_is_local() {
        let img = Plane::filled(6, 11, 0.25f32);
        let out = gaussian_smoothing(&img, 1.6);
        assert!(out.as_slice().iter().all(|v| (v - 0.25).abs() < 1e-6));
        let mut img = Plane::zeros(21, 21);
        img.set(10, 10, 1.0);
        let out = gaussian_smoothing(&img, 1.0);
        let k = gaussian_kernel(1.0);
        assert!((out.get(10, 10) - k[3] * k[3]).abs() < 1e-7);
        assert!((out.get(9, 12) - k[2] * k[1]).abs() < 1e-7);
        assert_eq!(*out.get(10, 14), 0.0); // outside the radius
    }

    #[test]
    fn zero_sigma_is_identity() {
        let img = Plane::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(gaussian_smoothing(&img, 0.0), img);
    }
}
