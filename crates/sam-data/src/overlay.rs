//! Overlay pictures: instance outlines drawn on the brightfield image.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::image::{GreyImage, LabelImage};
use crate::io::write_atomic;
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
    for (l, _) in layers {
        if l.cols() != w || l.rows() != h {
            return Err(DataError::InvalidParameter {
                name: "overlay layers".into(),
                reason: format!(
                    "{}: image is {w}x{h} but a label layer is {}x{}",
                    path.display(),
                    l.cols(),
                    l.rows()
                ),
            });
        }
    }
    let norm = preprocess(grey, &Normalization::default())?;
    let mut rgb: Vec<u8> = norm
        .iter()
        .flat_map(|&v| [(v * 255.0).round() as u8; 3])
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
}
