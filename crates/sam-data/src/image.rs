//! Plain image buffers: a grey brightfield image and an instance label image, both planes.

use crate::error::Result;
use crate::plane::Plane;

/// How the intensities of a [`GreyImage`] were (and will be) stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitDepth {
    /// 8-bit, values 0..=255.
    U8,
    /// 16-bit, values 0..=65535.
    U16,
}

impl BitDepth {
    /// The largest value this depth can hold (255 or 65535).
    pub fn max_value(self) -> f32 {
        match self {
            BitDepth::U8 => 255.0,
            BitDepth::U16 => 65535.0,
        }
    }
}

/// A grey brightfield image in its on-disk intensity scale (0..=255 or 0..=65535): a
/// [`Plane<f32>`] of `rows × cols` intensities, indexed `(row, col)`, and its storage depth.
///
/// Values are `f32` so that augmentation can interpolate; writers round and clip to the depth.
/// The plane's accessors (`rows()`, `cols()`, `get(row, col)`, `as_slice()`, …) are available
/// on the image itself.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    /// The intensities.
    pub pixels: Plane<f32>,
    /// Storage depth.
    pub depth: BitDepth,
}

impl GreyImage {
    /// Wraps a row-major buffer of `rows * cols` intensities, checking its length.
    pub fn from_vec(rows: usize, cols: usize, depth: BitDepth, data: Vec<f32>) -> Result<Self> {
        Ok(GreyImage {
            pixels: Plane::from_vec(rows, cols, data)?,
            depth,
        })
    }

    /// A constant image of `rows × cols` pixels.
    pub fn filled(rows: usize, cols: usize, depth: BitDepth, value: f32) -> Self {
        GreyImage {
            pixels: Plane::filled(rows, cols, value),
            depth,
        }
    }

    /// A copy of the window of `height` rows and `width` columns whose top-left corner is at
    /// (`top`, `left`), with the same depth (must lie inside; see [`Plane::crop`]).
    pub fn crop(&self, top: usize, left: usize, height: usize, width: usize) -> GreyImage {
        GreyImage {
            pixels: self.pixels.crop(top, left, height, width),
            depth: self.depth,
        }
    }
}

/// A grey image reads as its plane of intensities.
impl std::ops::Deref for GreyImage {
    type Target = Plane<f32>;

    fn deref(&self) -> &Plane<f32> {
        &self.pixels
    }
}

impl std::ops::DerefMut for GreyImage {
    fn deref_mut(&mut self) -> &mut Plane<f32> {
        &mut self.pixels
    }
}

/// An instance label image, `rows × cols` ids indexed `(row, col)`: 0 is background, 1..N are
/// objects. The label toolkit (connected components, relabelling, sizes, boundaries) works on it.
pub type LabelImage = Plane<u32>;

impl Plane<u32> {
    /// The largest id (0 for an empty image).
    pub fn max_id(&self) -> u32 {
        self.as_slice().iter().copied().max().unwrap_or(0)
    }

    /// The sorted distinct non-zero ids.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|&v| v != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        // 2 rows of 3 columns
        assert!(GreyImage::from_vec(2, 3, BitDepth::U8, vec![0.0; 6]).is_ok());
        let err = LabelImage::from_vec(2, 3, vec![0; 5]).unwrap_err();
        assert!(err.to_string().contains("expected 6 values"), "{err}");
    }

    #[test]
    fn crop_takes_the_right_pixels() {
        // 3 rows of 4 columns; rows 1..3, columns 1..3
        let l = LabelImage::from_vec(3, 4, (0..12).collect()).unwrap();
        let c = l.crop(1, 1, 2, 2);
        assert_eq!(c.as_slice(), &[5, 6, 9, 10]);
        assert_eq!(l.ids(), (1..12).collect::<Vec<_>>());
        assert_eq!(l.max_id(), 11);
    }
}
