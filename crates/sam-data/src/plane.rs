//! The one 2-D buffer of the workspace: `rows × cols` values, row-major, indexed `(row, col)`.

use crate::error::{DataError, Result};

/// A 2-D row-major array of `rows × cols` values, indexed `(row, col)` as numpy and torch index
/// an `[H, W]` array: the value at `(row, col)` is `as_slice()[row * cols + col]`.
///
/// Every position and size is given row first: `get(row, col)`, `crop(top, left, height,
/// width)`, `shape() == (rows, cols)`. Images ([`crate::GreyImage`]), label images
/// ([`crate::LabelImage`]), masks (`Plane<bool>`) and model output maps (`Plane<f32>`) are all
/// planes, so that data loading, evaluation and inference share one index order.
///
/// ```
/// use sam_data::Plane;
///
/// let mut p = Plane::zeros(2, 5); // 2 rows, 5 columns
/// p.set(1, 3, 7u32);
/// assert_eq!(p.get(1, 3), 7);
/// assert_eq!(p.as_slice()[5 + 3], 7); // numpy: a[1, 3] of a (2, 5) array
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plane<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T: Clone> Plane<T> {
    /// A plane of `rows × cols` values all equal to `value`.
    pub fn filled(rows: usize, cols: usize, value: T) -> Self {
        Plane {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    /// Copy of the window of `height` rows and `width` columns whose top-left corner is at
    /// (`top`, `left`); the window must lie inside the plane (panics otherwise, like slice
    /// indexing). numpy: `a[top:top + height, left:left + width]`.
    pub fn crop(&self, top: usize, left: usize, height: usize, width: usize) -> Plane<T> {
        let mut data = Vec::with_capacity(height * width);
        for r in top..top + height {
            let start = r * self.cols + left;
            data.extend_from_slice(&self.data[start..start + width]);
        }
        Plane {
            rows: height,
            cols: width,
            data,
        }
    }

    /// Writes `src` into this plane with its top-left corner at (`top`, `left`); `src` must fit
    /// (panics otherwise). numpy: `a[top:top + h, left:left + w] = src`.
    pub fn paste(&mut self, src: &Plane<T>, top: usize, left: usize) {
        for r in 0..src.rows {
            let start = (top + r) * self.cols + left;
            self.data[start..start + src.cols].clone_from_slice(src.row(r));
        }
    }
}

impl<T: Clone + Default> Plane<T> {
    /// A plane of `rows × cols` values equal to `T::default()` (zeros, `false`).
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::filled(rows, cols, T::default())
    }
}

impl<T: Copy> Plane<T> {
    /// The value at (`row`, `col`) (panics when out of bounds, like slice indexing).
    pub fn get(&self, row: usize, col: usize) -> T {
        self.data[row * self.cols + col]
    }
}

impl<T> Plane<T> {
    /// Wraps a row-major buffer of `rows * cols` values; fails when the length differs.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(DataError::Shape {
                what: "plane",
                rows,
                cols,
                expected: rows.saturating_mul(cols),
                found: data.len(),
            });
        }
        Ok(Plane { rows, cols, data })
    }

    /// Wraps a buffer the caller built with exactly `rows * cols` values (checked in debug
    /// builds only): for the crate's own passes, whose output sizes follow from their loops.
    pub(crate) fn from_parts(rows: usize, cols: usize, data: Vec<T>) -> Self {
        debug_assert_eq!(rows * cols, data.len());
        Plane { rows, cols, data }
    }

    /// Number of rows (the image height).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (the image width).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`, as numpy's `shape` of an `[H, W]` array.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Number of values, `rows * cols`.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the plane has no values (zero rows or zero columns).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The values, row-major, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The row-major buffer, consuming the plane.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// Row `row` (panics when out of bounds).
    pub fn row(&self, row: usize) -> &[T] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }

    /// Row `row`, mutable (panics when out of bounds).
    pub fn row_mut(&mut self, row: usize) -> &mut [T] {
        &mut self.data[row * self.cols..(row + 1) * self.cols]
    }

    /// Sets the value at (`row`, `col`) (panics when out of bounds).
    pub fn set(&mut self, row: usize, col: usize, value: T) {
        self.data[row * self.cols + col] = value;
    }

    /// A plane of the same shape with `f` applied to every value.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Plane<U> {
        Plane {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(f).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn row_col_is_numpy_order_on_a_non_square_plane() {
        // numpy: a = np.zeros((2, 5)); a[1, 3] = 7 puts 7 at flat index 1 * 5 + 3 = 8
        let mut p: Plane<u32> = Plane::zeros(2, 5);
        assert_eq!((p.rows(), p.cols(), p.shape()), (2, 5, (2, 5)));
        p.set(1, 3, 7);
        assert_eq!(p.as_slice(), &[0, 0, 0, 0, 0, 0, 0, 0, 7, 0]);
        assert_eq!(p.get(1, 3), 7);
        assert_eq!(p.row(1), &[0, 0, 0, 7, 0]);
        // a[1:2, 2:5] is one row of three columns
        let c = p.crop(1, 2, 1, 3);
        assert_eq!((c.shape(), c.as_slice()), ((1, 3), &[0, 7, 0][..]));
    }

    #[test]
    fn from_vec_checks_the_length() {
        assert!(Plane::from_vec(3, 2, vec![0u8; 6]).is_ok());
        let err = Plane::from_vec(3, 2, vec![0u8; 5]).unwrap_err().to_string();
        assert!(err.contains("expected 6 values"), "{err}");
        assert!(err.contains("3 rows x 2 cols"), "{err}");
    }

    #[test]
    fn crop_and_paste_take_top_left_height_width() {
        // 3 rows x 4 cols: 0..12
        let p = Plane::from_vec(3, 4, (0..12).collect::<Vec<u32>>()).unwrap();
        // rows 1..3, cols 1..2
        let c = p.crop(1, 1, 2, 1);
        assert_eq!((c.shape(), c.as_slice()), ((2, 1), &[5, 9][..]));
        let mut q = Plane::zeros(3, 4);
        q.paste(&c, 0, 3);
        assert_eq!(q.as_slice(), &[0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0, 0]);
        assert_eq!(
            q.map(|&v| v > 0).as_slice().iter().filter(|&&b| b).count(),
            2
        );
    }
}
