//! Separable Gaussian blur with the kernel and border rules of micro_sam's post-processing,
//! shared by the augmentation and by the AIS post-processing of sam-infer.
//!
//! micro_sam smooths the decoder outputs with `bioimage_cpp.filters.gaussian_smoothing` (before
//! that `vigra.filters.gaussianSmoothing`). It samples a Gaussian of standard deviation `sigma` on
//! `[-r, r]` with `r = ceil(3 * sigma)` (at least 1; measured on bioimage_cpp 0.9: σ 0.7 → 3,
//! 1.0 → 3, 1.6 → 5, 2.05 → 7), normalises it to sum 1, and mirrors the image at its border
//! without repeating the edge pixel (`x[-1] = x[1]`, scipy's `"mirror"`, OpenCV's default
//! reflect-101). This is narrower than scipy's `gaussian_filter` (truncate 4.0) and differs from
//! skimage's `gaussian` (border `"nearest"`).

use rayon::prelude::*;

use crate::plane::Plane;

/// The normalised 1-D kernel of [`gaussian_blur`]: `2r + 1` taps, `r = ceil(3σ)`, `r ≥ 1`.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter().map(|v| (v / s) as f32).collect()
}

/// Mirror index `i` (may be negative or ≥ n) into `[0, n)` without repeating the edge.
#[inline]
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

/// Gaussian blur, in place, of `image` with standard deviation `sigma` (pixels) along both
/// axes. `sigma <= 0` leaves it unchanged. Rows are processed in parallel; the result does not
/// depend on the thread count.
pub fn gaussian_blur(image: &mut Plane<f32>, sigma: f64) {
    if sigma <= 0.0 || image.is_empty() {
        return;
    }
    let (h, w) = image.shape();
    let data = image.as_mut_slice();
    let kernel = gaussian_kernel(sigma);
    let r = (kernel.len() / 2) as isize;
    // along x, into tmp: each row padded by mirroring, then tap by tap over the whole row so
    // that the inner loop vectorises
    let mut tmp = vec![0f32; w * h];
    tmp.par_chunks_mut(w).zip(data.par_chunks(w)).for_each_init(
        || Vec::with_capacity(w + 2 * r as usize),
        |padded: &mut Vec<f32>, (out, row)| {
            padded.clear();
            padded.extend((-r..w as isize + r).map(|i| row[mirror(i, w)]));
            out.fill(0.0);
            for (j, k) in kernel.iter().enumerate() {
                for (o, p) in out.iter_mut().zip(&padded[j..j + w]) {
                    *o += k * p;
                }
            }
        },
    );
    // along y, back into data: each output row is a weighted sum of whole input rows
    data.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        row.fill(0.0);
        for (j, k) in kernel.iter().enumerate() {
            let sy = mirror(y as isize + j as isize - r, h);
            for (o, s) in row.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                *o += k * s;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_does_not_repeat_the_edge() {
        assert_eq!(mirror(-1, 5), 1);
        assert_eq!(mirror(-2, 5), 2);
        assert_eq!(mirror(5, 5), 3);
        assert_eq!(mirror(6, 5), 2);
        assert_eq!(mirror(-9, 5), 1); // period 8
        assert_eq!(mirror(3, 1), 0);
    }
}
