//! A 2D row-major buffer: the one container the post-processing works on.

use crate::error::InferError;

/// A 2D row-major array of `height × width` values (`data[y * width + x]`).
///
/// The post-processing steps (smoothing, watershed, AMG merging) work on planes so that they
/// run without libtorch; model outputs are copied into planes once.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane<T> {
    height: usize,
    width: usize,
    data: Vec<T>,
}

impl<T: Clone> Plane<T> {
    /// A plane filled with `value`.
    pub fn filled(height: usize, width: usize, value: T) -> Self {
        Self {
            height,
            width,
            data: vec![value; height * width],
        }
    }
}

impl<T: Clone + Default> Plane<T> {
    /// A plane filled with `T::default()` (zeros).
    pub fn zeros(height: usize, width: usize) -> Self {
        Self::filled(height, width, T::default())
    }

    /// Copy of the window `[y0, y0 + h) × [x0, x0 + w)`; the window must lie inside the plane.
    pub fn crop(&self, y0: usize, x0: usize, h: usize, w: usize) -> Plane<T> {
        let mut data = Vec::with_capacity(h * w);
        for y in y0..y0 + h {
            let row = y * self.width;
            data.extend_from_slice(&self.data[row + x0..row + x0 + w]);
        }
        Plane {
            height: h,
            width: w,
            data,
        }
    }

    /// Write `src` into this plane with its top-left corner at `(y0, x0)`.
    pub fn paste(&mut self, src: &Plane<T>, y0: usize, x0: usize) {
        for y in 0..src.height {
            let dst = (y0 + y) * self.width + x0;
            self.data[dst..dst + src.width].clone_from_slice(src.row(y));
        }
    }
}

impl<T> Plane<T> {
    /// Wrap a row-major buffer; fails when `data.len() != height * width`.
    pub fn from_vec(height: usize, width: usize, data: Vec<T>) -> Result<Self, InferError> {
        if data.len() != height * width {
            return Err(InferError::Shape {
                what: "plane buffer".into(),
                expected: format!("{height}×{width} = {} values", height * width),
                found: format!("{} values", data.len()),
            });
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `(height, width)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The row-major values, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The buffer, consuming the plane.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// Row `y`.
    pub fn row(&self, y: usize) -> &[T] {
        &self.data[y * self.width..(y + 1) * self.width]
    }

    /// The value at row `y`, column `x`.
    pub fn get(&self, y: usize, x: usize) -> &T {
        &self.data[y * self.width + x]
    }

    /// Set the value at row `y`, column `x`.
    pub fn set(&mut self, y: usize, x: usize, value: T) {
        self.data[y * self.width + x] = value;
    }

    /// A plane of the same shape with `f` applied to every value.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Plane<U> {
        Plane {
            height: self.height,
            width: self.width,
            data: self.data.iter().map(f).collect(),
        }
    }

    /// Fails unless `other` has this plane's shape; `what` names the two planes in the error.
    pub fn check_same_shape<U>(&self, other: &Plane<U>, what: &str) -> Result<(), InferError> {
        if self.shape() != other.shape() {
            return Err(InferError::Shape {
                what: what.into(),
                expected: format!("{}×{}", self.height, self.width),
                found: format!("{}×{}", other.height, other.width),
            });
        }
        Ok(())
    }
}
