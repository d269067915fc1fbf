//! Tiled AIS: objects crossing tile borders stay whole (issue 8), tiled and untiled agree.
#![allow(clippy::unwrap_used)]

use sam_data::Plane;
use sam_infer::{ais_segment, crop_outer, paste_inner, AisParams, DecoderMaps, TileSpec, Tiling};

/// Perfect decoder maps of one long horizontal capsule and a small round object.
fn capsule_maps(h: usize, w: usize) -> DecoderMaps {
    let mut fg = Plane::filled(h, w, 0.02f32);
    let mut center = Plane::filled(h, w, 1.0f32);
    let mut boundary = Plane::filled(h, w, 1.0f32);
    // Capsule: rows 20..=30, columns 10..=53 (crosses the tile border at x = 32).
    let (cy, x0, x1, r) = (25.0f32, 10.0f32, 53.0f32, 5.5f32);
    // Disc at (50, 50), radius 5 (inside one tile).
    let (dy, dx, dr) = (50.0f32, 50.0f32, 5.0f32);
    for y in 0..h {
        for x in 0..w {
            let (yf, xf) = (y as f32, x as f32);
            let px = xf.clamp(x0, x1);
            let d_axis = ((yf - cy).powi(2) + (xf - px).powi(2)).sqrt();
            if d_axis <= r {
                fg.set(y, x, 0.98);
                // Low centre distance along the whole axis, boundary distance rising outwards.
                center.set(y, x, d_axis / r * 0.9);
                boundary.set(y, x, d_axis / r);
            }
            let d = ((yf - dy).powi(2) + (xf - dx).powi(2)).sqrt();
            if d <= dr {
                fg.set(y, x, 0.98);
                center.set(y, x, d / dr * 0.9);
                boundary.set(y, x, d / dr);
            }
        }
    }
    DecoderMaps {
        foreground: fg,
        center_distances: center,
        boundary_distances: boundary,
    }
}

/// What a tiled model hands back: per tile, maps over the outer block that are right in the
/// inner block and garbage in the halo (to prove the halo is discarded).
fn stitched(maps: &DecoderMaps, tiling: &Tiling) -> DecoderMaps {
    let (h, w) = tiling.shape();
    let mut out = DecoderMaps {
        foreground: Plane::zeros(h, w),
        center_distances: Plane::zeros(h, w),
        boundary_distances: Plane::zeros(h, w),
    };
    for tile in tiling.tiles() {
        for (src, dst) in [
            (&maps.foreground, &mut out.foreground),
            (&maps.center_distances, &mut out.center_distances),
            (&maps.boundary_distances, &mut out.boundary_distances),
        ] {
            let mut outer = crop_outer(src, &tile);
            let l = tile.inner_local;
            for y in 0..outer.rows() {
                for x in 0..outer.cols() {
                    if y < l.y0 || y >= l.y1 || x < l.x0 || x >= l.x1 {
                        outer.set(y, x, 0.5); // halo: meaningless
                    }
                }
            }
            paste_inner(dst, &outer, &tile).unwrap();
        }
    }
    out
}

fn ids_at(labels: &Plane<u32>, points: &[(usize, usize)]) -> Vec<u32> {
    points.iter().map(|&(y, x)| labels.get(y, x)).collect()
}

#[test]
fn issue_8_object_across_a_tile_border_is_one_object() {
    let (h, w) = (64, 64);
    let maps = capsule_maps(h, w);
    let tiling = Tiling::new((h, w), (32, 32), (8, 8)).unwrap();
    assert_eq!(tiling.len(), 4);
    let seg = ais_segment(&stitched(&maps, &tiling), &AisParams::default()).unwrap();
    // Both ends of the capsule (left of and right of the border x = 32) carry one id.
    let ids = ids_at(&seg, &[(25, 12), (25, 31), (25, 32), (25, 51)]);
    assert!(
        ids[0] != 0 && ids.iter().all(|&i| i == ids[0]),
        "capsule split: {ids:?}"
    );
    let disc = seg.get(50, 50);
    assert!(disc != 0 && disc != ids[0]);
    assert_eq!(
        seg.as_slice().iter().copied().max(),
        Some(2),
        "exactly two objects"
    );
    // The same as running on the unstitched maps: stitching loses nothing.
    assert_eq!(seg, ais_segment(&maps, &AisParams::default()).unwrap());

    // Control: segmenting each tile's inner block on its own (the approach we avoid) cuts the
    // capsule at the border, so this test would catch a per-tile watershed.
    let mut per_tile_ids = Vec::new();
    for tile in tiling.tiles() {
        let i = tile.inner;
        let crop = |p: &Plane<f32>| p.crop(i.y0, i.x0, i.height(), i.width());
        let local = DecoderMaps {
            foreground: crop(&maps.foreground),
            center_distances: crop(&maps.center_distances),
            boundary_distances: crop(&maps.boundary_distances),
        };
        let s = ais_segment(&local, &AisParams::default()).unwrap();
        if i.y0 == 0 {
            per_tile_ids.push(s.as_slice().iter().copied().max().unwrap_or(0));
        }
    }
    assert_eq!(
        per_tile_ids,
        vec![1, 1],
        "each top tile holds one piece of the capsule"
    );
}

#[test]
fn tiled_and_untiled_agree_on_an_image_that_fits_one_tile() {
    let (h, w) = (60, 60);
    let maps = capsule_maps(h, w);
    // A tile shape covering the image gives one tile whose outer block is the image.
    let tiling = Tiling::new((h, w), (64, 64), (16, 16)).unwrap();
    assert_eq!(tiling.len(), 1);
    let tiled = ais_segment(&stitched(&maps, &tiling), &AisParams::default()).unwrap();
    let untiled = ais_segment(&maps, &AisParams::default()).unwrap();
    assert_eq!(tiled, untiled);
    // And TileSpec does not tile an image that fits the model input.
    let spec = TileSpec {
        tile_shape: Some((32, 32)),
        halo: (8, 8),
    };
    assert_eq!(spec.tiling_for((60, 60), 64).unwrap().len(), 1);
    assert_eq!(spec.tiling_for((60, 70), 64).unwrap().len(), 6);
}
