//! Plain image buffers: a grey brightfield image and an instance label image.

use crate::error::{DataError, Result};

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

/// A grey brightfield image, row-major, in its on-disk intensity scale (0..=255 or 0..=65535).
///
/// Values are `f32` so that augmentation can interpolate; writers round and clip to the depth.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Storage depth.
    pub depth: BitDepth,
    /// `width * height` intensities, row-major.
    pub data: Vec<f32>,
}

impl GreyImage {
    /// Wraps a buffer, checking its length.
    pub fn new(width: usize, height: usize, depth: BitDepth, data: Vec<f32>) -> Result<Self> {
        check_len("GreyImage", width, height, data.len())?;
        Ok(GreyImage {
            width,
            height,
            depth,
            data,
        })
    }

    /// A constant image.
    pub fn filled(width: usize, height: usize, depth: BitDepth, value: f32) -> Self {
        GreyImage {
            width,
            height,
            depth,
            data: vec![value; width * height],
        }
    }

    /// The value at column `x`, row `y` (panics when out of bounds, like slice indexing).
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// A copy of the rectangle starting at (`x`, `y`) of size `w`x`h` (must lie inside).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> GreyImage {
        GreyImage {
            width: w,
            height: h,
            depth: self.depth,
            data: crop_rows(&self.data, self.width, x, y, w, h),
        }
    }
}

/// An instance label image, row-major: 0 is background, 1..N are objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` ids, row-major.
    pub data: Vec<u32>,
}

impl LabelImage {
    /// Wraps a buffer, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u32>) -> Result<Self> {
        check_len("LabelImage", width, height, data.len())?;
        Ok(LabelImage {
            width,
            height,
            data,
        })
    }

    /// An all-background image.
    pub fn zeros(width: usize, height: usize) -> Self {
        LabelImage {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    /// The id at column `x`, row `y` (panics when out of bounds, like slice indexing).
    pub fn get(&self, x: usize, y: usize) -> u32 {
        self.data[y * self.width + x]
    }

    /// The largest id (0 for an empty image).
    pub fn max_id(&self) -> u32 {
        self.data.iter().copied().max().unwrap_or(0)
    }

    /// A copy of the rectangle starting at (`x`, `y`) of size `w`x`h` (must lie inside).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> LabelImage {
        LabelImage {
            width: w,
            height: h,
            data: crop_rows(&self.data, self.width, x, y, w, h),
        }
    }

    /// The sorted distinct non-zero ids.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.data.iter().copied().filter(|&v| v != 0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn check_len(what: &'static str, width: usize, height: usize, found: usize) -> Result<()> {
    if width.checked_mul(height) != Some(found) {
        return Err(DataError::Shape {
            what,
            width,
            height,
            expected: width.saturating_mul(height),
            found,
        });
    }
    Ok(())
}

pub(crate) fn crop_rows<T: Copy>(
    data: &[T],
    stride: usize,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(w * h);
    for r in y..y + h {
        out.extend_from_slice(&data[r * stride + x..r * stride + x + w]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(GreyImage::new(3, 2, BitDepth::U8, vec![0.0; 6]).is_ok());
        let err = LabelImage::new(3, 2, vec![0; 5]).unwrap_err();
        assert!(err.to_string().contains("expected 6 values"), "{err}");
    }

    #[test]
    fn crop_takes_the_right_pixels() {
        let l = LabelImage::new(4, 3, (0..12).collect()).unwrap();
        let c = l.crop(1, 1, 2, 2);
        assert_eq!(c.data, vec![5, 6, 9, 10]);
        assert_eq!(l.ids(), (1..12).collect::<Vec<_>>());
        assert_eq!(l.max_id(), 11);
    }
}
