//! Gaussian smoothing of decoder maps with the kernel and border rules of micro_sam's
//! post-processing (`bioimage_cpp.filters.gaussian_smoothing`): the blur of
//! [`sam_data::gaussian_blur`], which documents them.

use sam_data::Plane;

/// The normalised 1-D kernel of [`gaussian_smoothing`]: `2r + 1` taps, `r = ceil(3σ)`, `r ≥ 1`.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    sam_data::gaussian_kernel(f64::from(sigma))
}

/// Gaussian smoothing of `image` with standard deviation `sigma` (pixels) along both axes.
///
/// `sigma <= 0` returns a copy. Rows are processed in parallel with rayon.
pub fn gaussian_smoothing(image: &Plane<f32>, sigma: f32) -> Plane<f32> {
    let mut out = image.clone();
    sam_data::gaussian_blur(&mut out, f64::from(sigma));
    out
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
        assert_eq!(out.get(10, 14), 0.0); // outside the radius
    }

    #[test]
    fn zero_sigma_is_identity() {
        let img = Plane::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(gaussian_smoothing(&img, 0.0), img);
    }
}
