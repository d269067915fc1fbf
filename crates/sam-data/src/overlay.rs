//! Overlay pictures: instance outlines drawn on the brightfield image.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::image::{GreyImage, LabelImage};
use crate::io::write_atomic;
use crate::plane::Plane;
use crate::preprocess::{preprocess, Normalization};

/// Draws the outlines of every object of each label layer, in that layer's colour, on the grey
/// image and writes an RGB PNG (atomically).
///
/// The image is shown as is (normalised 1st–99.8th percentile), so objects stay darker than
/// the background; outline pixels are the object pixels with a 4-neighbour of another id.
/// Later layers are drawn over earlier ones (e.g. ground truth first, prediction second).
pub fn write_overlay_png(
    path: impl AsRef<Path>,
    grey: &GreyImage,
    layers: &[(&LabelImage, [u8; 3])],
) -> Result<()> {
    let path = path.as_ref();
    let (w, h) = (grey.cols(), grey.rows());
    if let Some((l, _)) = layers.iter().find(|(l, _)| l.shape() != grey.shape()) {
        return Err(layer_mismatch(&path.display().to_string(), (h, w), l));
    }
    let norm = preprocess(grey, &Normalization::default())?;
    let norm = Plane::from_vec(h, w, norm)?;
    let rgb = outline_overlay(&norm, layers)?;
    let buf = image::RgbImage::from_raw(w as u32, h as u32, rgb).ok_or(DataError::Shape {
        what: "overlay",
        rows: h,
        cols: w,
        expected: w * h * 3,
        found: 0,
    })?;
    write_atomic(path, |out| {
        buf.write_to(out, image::ImageFormat::Png)
            .map_err(|e| DataError::Encode {
                path: path.to_path_buf(),
                format: "PNG",
                reason: e.to_string(),
            })
    })
}

/// Draws the outlines of every object of each label layer, in that layer's colour, on an image
/// already normalised to [0, 1] (a training patch, for instance), and returns the RGB pixels,
/// row-major, 3 bytes per pixel.
///
/// The grey value `v` is shown as `round(255 v)` (clipped to [0, 1] first), so objects stay
/// darker than the background; outline pixels are the object pixels with a 4-neighbour of
/// another id (or on the image border). Later layers are drawn over earlier ones.
pub fn outline_overlay(
    normalised: &Plane<f32>,
    layers: &[(&LabelImage, [u8; 3])],
) -> Result<Vec<u8>> {
    let (h, w) = normalised.shape();
    if let Some((l, _)) = layers.iter().find(|(l, _)| l.shape() != (h, w)) {
        return Err(layer_mismatch("outline overlay", (h, w), l));
    }
    let mut rgb: Vec<u8> = normalised
        .as_slice()
        .iter()
        .flat_map(|&v| [(v.clamp(0.0, 1.0) * 255.0).round() as u8; 3])
        .collect();
    for (labels, colour) in layers {
        let d = labels.as_slice();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let v = d[i];
                if v == 0 {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || d[i - 1] != v
                    || d[i + 1] != v
                    || d[i - w] != v
                    || d[i + w] != v;
                if edge {
                    rgb[3 * i..3 * i + 3].copy_from_slice(colour);
                }
            }
        }
    }
    Ok(rgb)
}

/// The error for a label layer whose size differs from the image's (`rows`, `cols`).
fn layer_mismatch(what: &str, (rows, cols): (usize, usize), layer: &LabelImage) -> DataError {
    DataError::InvalidParameter {
        name: "overlay layers".into(),
        reason: format!(
            "{what}: image is {cols}x{rows} but a label layer is {}x{}",
            layer.cols(),
            layer.rows()
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::BitDepth;

    #[test]
    fn outlines_are_drawn_in_colour_on_the_grey_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GreyImage::filled(10, 10, BitDepth::U16, 50000.0);
        let mut l = LabelImage::zeros(10, 10);
        for y in 2..7 {
            for x in 2..7 {
                l.as_mut_slice()[y * 10 + x] = 1;
                g.as_mut_slice()[y * 10 + x] = 10000.0;
            }
        }
        let p = dir.path().join("o.png");
        write_overlay_png(&p, &g, &[(&l, [255, 0, 0])]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(6, 4).0, [255, 0, 0]);
        // interior stays dark grey, background bright grey
        assert_eq!(img.get_pixel(4, 4).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        let bad = LabelImage::zeros(3, 3);
        assert!(write_overlay_png(&p, &g, &[(&bad, [0, 255, 0])]).is_err());
    }

    #[test]
    fn outline_overlay_draws_on_a_normalised_patch_in_layer_order() {
        // A 6x8 patch: background 1.0 (white), a dark 3x3 object at rows 1..4, cols 2..5.
        let mut norm = Plane::filled(6, 8, 1.0f32);
        let mut a = LabelImage::zeros(6, 8);
        for y in 1..4 {
            for x in 2..5 {
                norm.set(y, x, 0.2);
                a.set(y, x, 7);
            }
        }
        norm.set(5, 7, 1.7); // clipped to white
        let mut b = LabelImage::zeros(6, 8);
        b.set(1, 2, 1);
        let rgb = outline_overlay(&norm, &[(&a, [255, 0, 0]), (&b, [0, 0, 255])]).unwrap();
        let px = |y: usize, x: usize| &rgb[3 * (y * 8 + x)..3 * (y * 8 + x) + 3];
        assert_eq!(rgb.len(), 6 * 8 * 3);
        assert_eq!(
            px(1, 2),
            [0, 0, 255],
            "the later layer is drawn over the earlier"
        );
        assert_eq!(px(1, 3), [255, 0, 0]);
        assert_eq!(px(3, 4), [255, 0, 0]);
        assert_eq!(px(2, 3), [51, 51, 51], "interior keeps the grey value");
        assert_eq!(px(0, 0), [255, 255, 255]);
        assert_eq!(px(5, 7), [255, 255, 255]);
        let bad = LabelImage::zeros(3, 3);
        let err = outline_overlay(&norm, &[(&bad, [0, 255, 0])]).unwrap_err();
        assert!(err.to_string().contains("8x6"), "{err}");
    }
}
