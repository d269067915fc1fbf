//! Overlay pictures: ground-truth and predicted object outlines on the brightfield image.
//!
//! TODO(sam-data): use sam-data's image reader, percentile normalisation and
//! `write_overlay_png` once they land; this is the minimum label evaluation needs until then.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::EvalError;
use crate::io::Labels;

/// Colour of ground-truth outlines.
pub(crate) const GT_COLOUR: [u8; 3] = [0, 255, 0];
/// Colour of predicted outlines.
pub(crate) const PRED_COLOUR: [u8; 3] = [255, 0, 255];
/// Colour where both outlines coincide.
pub(crate) const BOTH_COLOUR: [u8; 3] = [255, 255, 255];

/// Low and high percentiles of the display normalisation (the project's preprocessing range).
const PERCENTILES: (f64, f64) = (1.0, 99.8);

/// Reads a brightfield image as grey values (RGB is averaged by the decoder's luma conversion).
pub(crate) fn read_grey(path: &Path) -> Result<(u32, u32, Vec<f32>), EvalError> {
    let img = image::ImageReader::open(path)
        .map_err(|source| EvalError::Io {
            action: "cannot open",
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| EvalError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| EvalError::BadImage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let grey = img.to_luma32f();
    Ok((grey.width(), grey.height(), grey.into_raw()))
}

/// Maps grey values to 0..=255 by percentile clipping; dark objects stay dark.
fn to_display(values: &[f32]) -> Vec<u8> {
    if values.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_unstable_by(f32::total_cmp);
    let at = |p: f64| {
        let idx = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
        sorted.get(idx).copied().unwrap_or(0.0)
    };
    let (lo, hi) = (at(PERCENTILES.0), at(PERCENTILES.1));
    let span = if hi > lo { hi - lo } else { 1.0 };
    values
        .iter()
        .map(|&v| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// Whether pixel `i` lies on the outline of its (non-zero) object: a 4-neighbour has another
/// label or lies outside the image.
fn on_outline(labels: &Labels, i: usize) -> bool {
    let (w, h) = (labels.width as usize, labels.height as usize);
    let l = labels.data[i];
    if l == 0 {
        return false;
    }
    let (x, y) = (i % w, i / w);
    x == 0
        || y == 0
        || x + 1 == w
        || y + 1 == h
        || labels.data[i - 1] != l
        || labels.data[i + 1] != l
        || labels.data[i - w] != l
        || labels.data[i + w] != l
}

/// Draws both outlines on the display-normalised grey image.
pub(crate) fn render(grey: &[f32], gt: &Labels, pred: &Labels) -> RgbImage {
    let base = to_display(grey);
    let mut out = RgbImage::new(gt.width, gt.height);
    for (i, px) in out.pixels_mut().enumerate() {
        let g = base.get(i).copied().unwrap_or(0);
        *px = match (on_outline(gt, i), on_outline(pred, i)) {
            (true, true) => Rgb(BOTH_COLOUR),
            (true, false) => Rgb(GT_COLOUR),
            (false, true) => Rgb(PRED_COLOUR),
            (false, false) => Rgb([g, g, g]),
        };
    }
    out
}

/// Writes the overlay as PNG.
pub(crate) fn write_overlay(
    path: &Path,
    grey: &[f32],
    gt: &Labels,
    pred: &Labels,
) -> Result<(), EvalError> {
    render(grey, gt, pred)
        .save(path)
        .map_err(|e| EvalError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_and_colours() {
        // 5×5: gt square 1..=3, prediction square 2..=4; background grey ramp.
        let mut gt = Labels::empty(5, 5);
        let mut pred = Labels::empty(5, 5);
        for y in 0..5 {
            for x in 0..5 {
                if (1..=3).contains(&x) && (1..=3).contains(&y) {
                    gt.data[y * 5 + x] = 1;
                }
                if (2..=4).contains(&x) && (2..=4).contains(&y) {
                    pred.data[y * 5 + x] = 7;
                }
            }
        }
        let grey: Vec<f32> = (0..25).map(|i| i as f32).collect();
        let img = render(&grey, &gt, &pred);
        // (1,1): gt outline only. (2,2) is interior to gt but on pred's outline.
        assert_eq!(img.get_pixel(1, 1).0, GT_COLOUR);
        assert_eq!(img.get_pixel(2, 2).0, PRED_COLOUR);
        // (3,2): gt's right edge and pred's top edge.
        assert_eq!(img.get_pixel(3, 2).0, BOTH_COLOUR);
        // (3,3): gt's corner, interior of pred.
        assert_eq!(img.get_pixel(3, 3).0, GT_COLOUR);
        // (0,0): background, darkest value of the ramp → black.
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        // (4,0): background, grey in between.
        let v = img.get_pixel(4, 0).0[0];
        assert!(v > 0 && v < 255, "{v}");
    }
}
