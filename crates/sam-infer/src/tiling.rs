//! Tiling geometry for images larger than the model input, with micro_sam's conventions.
//!
//! The image is cut into a row-major grid of `tile`-sized inner blocks (the last row / column
//! clipped at the border); each block grows by `halo` on every side (clipped at the image) into the
//! outer block that the model sees. Only the inner block of each tile's output is kept, so the
//! stitched maps have no seams from the tile borders: objects that cross them are segmented once,
//! by the single watershed over the whole image.

use sam_data::Plane;

use crate::error::InferError;

/// A half-open rectangle `[y0, y1) × [x0, x1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First row.
    pub y0: usize,
    /// First column.
    pub x0: usize,
    /// One past the last row.
    pub y1: usize,
    /// One past the last column.
    pub x1: usize,
}

impl Rect {
    /// Rows.
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
    /// Columns.
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
}

/// One tile: its inner block, its outer (halo) block and the inner block relative to the outer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// Row-major index of the tile in the grid.
    pub index: usize,
    /// The part of the image this tile is responsible for.
    pub inner: Rect,
    /// The part of the image the model sees: inner plus halo, clipped to the image.
    pub outer: Rect,
    /// `inner` in the coordinates of `outer`.
    pub inner_local: Rect,
}

/// The tiles covering an image (micro_sam / bioimage_cpp `Blocking` + `get_block_with_halo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiling {
    shape: (usize, usize),
    tile: (usize, usize),
    halo: (usize, usize),
}

impl Tiling {
    /// Tiles of `tile = (h, w)` with `halo = (h, w)` over an image of `shape = (h, w)`.
    pub fn new(
        shape: (usize, usize),
        tile: (usize, usize),
        halo: (usize, usize),
    ) -> Result<Self, InferError> {
        if tile.0 == 0 || tile.1 == 0 {
            return Err(InferError::param(
                "tile_shape",
                "both sides ≥ 1",
                format!("{tile:?}"),
            ));
        }
        if shape.0 == 0 || shape.1 == 0 {
            return Err(InferError::param(
                "image shape",
                "both sides ≥ 1",
                format!("{shape:?}"),
            ));
        }
        Ok(Self { shape, tile, halo })
    }

    /// One tile covering the whole image, no halo.
    pub fn single(shape: (usize, usize)) -> Result<Self, InferError> {
        Self::new(shape, shape, (0, 0))
    }

    /// The image shape.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// Tiles per column and per row.
    pub fn grid(&self) -> (usize, usize) {
        (
            self.shape.0.div_ceil(self.tile.0),
            self.shape.1.div_ceil(self.tile.1),
        )
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        let (a, b) = self.grid();
        a * b
    }

    /// Whether there are no tiles (never, for a valid tiling).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tile `index` (row-major).
    pub fn tile(&self, index: usize) -> Tile {
        let (_, cols) = self.grid();
        let (ty, tx) = (index / cols, index % cols);
        let (h, w) = self.shape;
        let inner = Rect {
            y0: ty * self.tile.0,
            x0: tx * self.tile.1,
            y1: ((ty + 1) * self.tile.0).min(h),
            x1: ((tx + 1) * self.tile.1).min(w),
        };
        let outer = Rect {
            y0: inner.y0.saturating_sub(self.halo.0),
            x0: inner.x0.saturating_sub(self.halo.1),
            y1: (inner.y1 + self.halo.0).min(h),
            x1: (inner.x1 + self.halo.1).min(w),
        };
        let inner_local = Rect {
            y0: inner.y0 - outer.y0,
            x0: inner.x0 - outer.x0,
            y1: inner.y1 - outer.y0,
            x1: inner.x1 - outer.x0,
        };
        Tile {
            index,
            inner,
            outer,
            inner_local,
        }
    }

    /// The index of the tile whose inner block holds pixel `(y, x)` (bioimage_cpp
    /// `Blocking.coordinates_to_block_id`); coordinates past the image go to the last tile of
    /// their row / column.
    pub fn tile_at(&self, y: usize, x: usize) -> usize {
        let (rows, cols) = self.grid();
        let ty = (y / self.tile.0).min(rows - 1);
        let tx = (x / self.tile.1).min(cols - 1);
        ty * cols + tx
    }

    /// All tiles, row-major.
    pub fn tiles(&self) -> Vec<Tile> {
        (0..self.len()).map(|i| self.tile(i)).collect()
    }
}

/// Crop the outer block of `tile` out of `image`.
pub fn crop_outer<T: Clone + Default>(image: &Plane<T>, tile: &Tile) -> Plane<T> {
    let o = tile.outer;
    image.crop(o.y0, o.x0, o.height(), o.width())
}

/// Copy the inner block of a tile's output (which covers the tile's outer block) into `dst`.
pub fn paste_inner<T: Clone + Default>(
    dst: &mut Plane<T>,
    tile_output: &Plane<T>,
    tile: &Tile,
) -> Result<(), InferError> {
    let o = tile.outer;
    if tile_output.shape() != (o.height(), o.width()) {
        return Err(InferError::Shape {
            what: format!("output of tile {}", tile.index),
            expected: format!("{}×{} (the outer block)", o.height(), o.width()),
            found: format!("{}×{}", tile_output.rows(), tile_output.cols()),
        });
    }
    let l = tile.inner_local;
    let inner = tile_output.crop(l.y0, l.x0, l.height(), l.width());
    dst.paste(&inner, tile.inner.y0, tile.inner.x0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_at_finds_the_inner_block_holding_a_pixel() {
        // 300 × 500 in tiles of 128: a 3 × 4 grid, the last row and column clipped.
        let t = Tiling::new((300, 500), (128, 128), (16, 16)).unwrap();
        assert_eq!(t.tile_at(0, 0), 0);
        assert_eq!(t.tile_at(127, 128), 1);
        assert_eq!(t.tile_at(128, 0), 4);
        assert_eq!(t.tile_at(299, 499), 11);
        for (y, x) in [(5, 300), (200, 130), (299, 0)] {
            let inner = t.tile(t.tile_at(y, x)).inner;
            assert!((inner.y0..inner.y1).contains(&y) && (inner.x0..inner.x1).contains(&x));
        }
    }

    #[test]
    fn blocks_and_halos_match_micro_sam_for_2048() {
        // 2048² with tile 1024 and halo 128: 4 tiles, outer blocks 1152² clipped at the image.
        let t = Tiling::new((2048, 2048), (1024, 1024), (128, 128)).unwrap();
        assert_eq!(t.len(), 4);
        let t0 = t.tile(0);
        assert_eq!(
            t0.inner,
            Rect {
                y0: 0,
                x0: 0,
                y1: 1024,
                x1: 1024
            }
        );
        assert_eq!(
            t0.outer,
            Rect {
                y0: 0,
                x0: 0,
                y1: 1152,
                x1: 1152
            }
        );
        assert_eq!(
            t0.inner_local,
            Rect {
                y0: 0,
                x0: 0,
                y1: 1024,
                x1: 1024
            }
        );
        let t3 = t.tile(3);
        assert_eq!(
            t3.outer,
            Rect {
                y0: 896,
                x0: 896,
                y1: 2048,
                x1: 2048
            }
        );
        assert_eq!(
            t3.inner_local,
            Rect {
                y0: 128,
                x0: 128,
                y1: 1152,
                x1: 1152
            }
        );
    }

    #[test]
    fn ragged_last_tiles_and_row_major_order() {
        let t = Tiling::new((10, 7), (4, 3), (1, 2)).unwrap();
        assert_eq!(t.grid(), (3, 3));
        let t5 = t.tile(5); // row 1, column 2
        assert_eq!(
            t5.inner,
            Rect {
                y0: 4,
                x0: 6,
                y1: 8,
                x1: 7
            }
        );
        assert_eq!(
            t5.outer,
            Rect {
                y0: 3,
                x0: 4,
                y1: 9,
                x1: 7
            }
        );
        assert_eq!(
            t5.inner_local,
            Rect {
                y0: 1,
                x0: 2,
                y1: 5,
                x1: 3
            }
        );
        // Inner blocks partition the image.
        let mut count = Plane::<u32>::zeros(10, 7);
        for tile in t.tiles() {
            for y in tile.inner.y0..tile.inner.y1 {
                for x in tile.inner.x0..tile.inner.x1 {
                    count.set(y, x, count.get(y, x) + 1);
                }
            }
        }
        assert!(count.as_slice().iter().all(|&c| c == 1));
    }

    #[test]
    fn crop_and_paste_reassemble_the_image() {
        let img = Plane::from_vec(9, 11, (0..99).map(|v| v as f32).collect()).unwrap();
        let t = Tiling::new((9, 11), (4, 4), (2, 2)).unwrap();
        let mut out = Plane::<f32>::zeros(9, 11);
        for tile in t.tiles() {
            let outer = crop_outer(&img, &tile);
            paste_inner(&mut out, &outer, &tile).unwrap();
        }
        assert_eq!(out, img);
        let err = paste_inner(&mut out, &Plane::zeros(1, 1), &t.tile(0)).unwrap_err();
        assert!(err.to_string().contains("outer block"), "{err}");
    }

    #[test]
    fn zero_tile_is_rejected() {
        assert!(Tiling::new((5, 5), (0, 4), (0, 0)).is_err());
        assert_eq!(Tiling::single((5, 6)).unwrap().len(), 1);
    }
}
