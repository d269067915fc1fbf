//! Automatic instance segmentation (AIS) post-processing: decoder maps → instance labels.
//!
//! Follows micro_sam's `InstanceSegmentationWithDecoder.generate` and
//! `torch_em.util.segmentation.watershed_from_center_and_boundary_distances`:
//!
//! 1. smooth the foreground with σ = `foreground_smoothing` (if > 0);
//! 2. smooth both distance maps with σ = `distance_smoothing` (if > 0);
//! 3. foreground mask = foreground > `foreground_threshold`;
//! 4. seeds = (centre < `center_distance_threshold`) & (boundary < `boundary_distance_threshold`)
//!    & foreground mask, labelled by 8-connected components;
//! 5. seeded watershed on the smoothed boundary distances, restricted to the foreground mask;
//! 6. objects smaller than `min_size` removed, ids made consecutive.

use sam_data::{connected_components, size_filter, Connectivity, Plane};
use serde::{Deserialize, Serialize};

use crate::error::{check_same_shape, InferError};
use crate::filters::gaussian_smoothing;
use crate::watershed::seeded_watershed;

/// Thresholds of the AIS post-processing; `Default` gives micro_sam's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AisParams {
    /// Seeds where the (smoothed) centre distance is below this. micro_sam: 0.5.
    pub center_distance_threshold: f32,
    /// Seeds where the (smoothed) boundary distance is below this. micro_sam: 0.5.
    pub boundary_distance_threshold: f32,
    /// Foreground where the (smoothed) foreground probability is above this. micro_sam: 0.5.
    pub foreground_threshold: f32,
    /// Gaussian σ for the foreground map, 0 = none. micro_sam: 1.0.
    pub foreground_smoothing: f32,
    /// Gaussian σ for both distance maps, 0 = none. micro_sam: 1.6.
    pub distance_smoothing: f32,
    /// Objects with fewer pixels are removed. micro_sam: 0.
    pub min_size: u64,
}

impl Default for AisParams {
    fn default() -> Self {
        // micro_sam/instance_segmentation.py, InstanceSegmentationWithDecoder.generate.
        Self {
            center_distance_threshold: 0.5,
            boundary_distance_threshold: 0.5,
            foreground_threshold: 0.5,
            foreground_smoothing: 1.0,
            distance_smoothing: 1.6,
            min_size: 0,
        }
    }
}

impl AisParams {
    /// Check ranges: thresholds finite, smoothing σ ≥ 0 and finite.
    pub fn validate(&self) -> Result<(), InferError> {
        check_seed_thresholds(
            self.center_distance_threshold,
            self.boundary_distance_threshold,
            self.foreground_threshold,
        )?;
        for (name, v) in [
            ("foreground_smoothing", self.foreground_smoothing),
            ("distance_smoothing", self.distance_smoothing),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(InferError::param(name, "a sigma ≥ 0", v));
            }
        }
        Ok(())
    }
}

/// Fails unless the seed thresholds that AIS and APG share are finite, naming the first that is
/// not.
pub(crate) fn check_seed_thresholds(
    center_distance_threshold: f32,
    boundary_distance_threshold: f32,
    foreground_threshold: f32,
) -> Result<(), InferError> {
    for (name, v) in [
        ("center_distance_threshold", center_distance_threshold),
        ("boundary_distance_threshold", boundary_distance_threshold),
        ("foreground_threshold", foreground_threshold),
    ] {
        if !v.is_finite() {
            return Err(InferError::param(name, "a finite number", v));
        }
    }
    Ok(())
}

/// The three decoder outputs for one image (after sigmoid), each `height × width`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderMaps {
    /// Foreground probability.
    pub foreground: Plane<f32>,
    /// Normalised distance to the object centre (low at centres).
    pub center_distances: Plane<f32>,
    /// Normalised inverted distance to the object boundary (low inside, high at boundaries).
    pub boundary_distances: Plane<f32>,
}

impl DecoderMaps {
    /// `(height, width)` of the maps.
    pub fn shape(&self) -> (usize, usize) {
        self.foreground.shape()
    }

    /// Fails unless the three maps have one shape.
    pub fn check(&self) -> Result<(), InferError> {
        check_same_shape(
            &self.foreground,
            &self.center_distances,
            "foreground vs centre distances",
        )?;
        check_same_shape(
            &self.foreground,
            &self.boundary_distances,
            "foreground vs boundary distances",
        )
    }
}

/// Intermediate results of [`ais_segment_debug`], for inspection and tests.
#[derive(Debug, Clone)]
pub struct AisDebug {
    /// Foreground mask (after smoothing and threshold).
    pub foreground_mask: Plane<bool>,
    /// Smoothed boundary distances: the watershed height map.
    pub boundary_distances: Plane<f32>,
    /// Labelled seeds.
    pub markers: Plane<u32>,
}

/// Instance labels (0 = background, 1..=n consecutive) from the decoder maps.
pub fn ais_segment(maps: &DecoderMaps, params: &AisParams) -> Result<Plane<u32>, InferError> {
    Ok(ais_segment_debug(maps, params)?.0)
}

/// [`ais_segment`] that also returns the intermediate maps.
pub fn ais_segment_debug(
    maps: &DecoderMaps,
    params: &AisParams,
) -> Result<(Plane<u32>, AisDebug), InferError> {
    maps.check()?;
    params.validate()?;
    let (foreground, (center, boundary)) = rayon::join(
        || gaussian_smoothing(&maps.foreground, params.foreground_smoothing),
        || {
            rayon::join(
                || gaussian_smoothing(&maps.center_distances, params.distance_smoothing),
                || gaussian_smoothing(&maps.boundary_distances, params.distance_smoothing),
            )
        },
    );
    let fg_mask = foreground.map(|&v| v > params.foreground_threshold);
    let (h, w) = maps.shape();
    let seeds: Vec<bool> = (0..h * w)
        .map(|i| {
            fg_mask.as_slice()[i]
                && center.as_slice()[i] < params.center_distance_threshold
                && boundary.as_slice()[i] < params.boundary_distance_threshold
        })
        .collect();
    let seeds = Plane::from_vec(h, w, seeds)?;
    // skimage.measure.label / bioimage_cpp.segmentation.label default: full (8-) connectivity.
    let (markers, _) = connected_components(&seeds, false, Connectivity::Eight);
    let mut seg = seeded_watershed(&boundary, &markers, Some(&fg_mask))?;
    size_filter(&mut seg, params.min_size);
    Ok((
        seg,
        AisDebug {
            foreground_mask: fg_mask,
            boundary_distances: boundary,
            markers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps_from(fg: Vec<f32>, c: Vec<f32>, b: Vec<f32>, h: usize, w: usize) -> DecoderMaps {
        DecoderMaps {
            foreground: Plane::from_vec(h, w, fg).unwrap(),
            center_distances: Plane::from_vec(h, w, c).unwrap(),
            boundary_distances: Plane::from_vec(h, w, b).unwrap(),
        }
    }

    fn no_smoothing() -> AisParams {
        AisParams {
            foreground_smoothing: 0.0,
            distance_smoothing: 0.0,
            ..AisParams::default()
        }
    }

    #[test]
    fn defaults_are_micro_sams() {
        let p = AisParams::default();
        assert_eq!(
            (
                p.center_distance_threshold,
                p.boundary_distance_threshold,
                p.foreground_threshold
            ),
            (0.5, 0.5, 0.5)
        );
        assert_eq!(
            (p.foreground_smoothing, p.distance_smoothing, p.min_size),
            (1.0, 1.6, 0)
        );
    }

    #[test]
    fn two_touching_objects_are_split_at_the_boundary_ridge() {
        // One row of 9 pixels, all foreground except the ends. Two seeds (x=2, x=6: both
        // distances < 0.5), boundary-distance ridge at x=4. Hand-computed result: pixels 1..=3 → 1,
        // x=4 is reached first from the left (x=3 and x=5 have equal height; x=3 was pushed first),
        // 5..=7 → 2; ends are background.
        let fg = vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let c = vec![1.0, 0.8, 0.2, 0.8, 1.0, 0.8, 0.2, 0.8, 1.0];
        let b = vec![1.0, 0.6, 0.1, 0.6, 0.9, 0.6, 0.1, 0.6, 1.0];
        let seg = ais_segment(&maps_from(fg, c, b, 1, 9), &no_smoothing()).unwrap();
        assert_eq!(seg.as_slice(), &[0, 1, 1, 1, 1, 2, 2, 2, 0]);
    }

    #[test]
    fn seeds_need_both_distances_and_foreground() {
        // x=1: centre low, boundary high → no seed; x=3: both low but background → no seed;
        // x=5: seed. Everything in the foreground is then flooded from the one seed.
        let fg = vec![1.0, 1.0, 1.0, 0.2, 1.0, 1.0];
        let c = vec![0.9, 0.1, 0.9, 0.1, 0.9, 0.1];
        let b = vec![0.9, 0.9, 0.9, 0.1, 0.9, 0.1];
        let seg = ais_segment(&maps_from(fg, c, b, 1, 6), &no_smoothing()).unwrap();
        // The background pixel x=3 cuts the row: x=0..=2 cannot be reached from x=5.
        assert_eq!(seg.as_slice(), &[0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn min_size_removes_small_objects_and_relabels() {
        let fg = vec![1.0, 1.0, 1.0, 0.0, 1.0];
        let c = vec![0.1, 0.9, 0.9, 0.9, 0.1];
        let b = vec![0.1, 0.9, 0.9, 0.9, 0.1];
        let p = AisParams {
            min_size: 2,
            ..no_smoothing()
        };
        let seg = ais_segment(&maps_from(fg, c, b, 1, 5), &p).unwrap();
        assert_eq!(seg.as_slice(), &[1, 1, 1, 0, 0]);
    }

    #[test]
    fn diagonal_seed_pixels_form_one_seed() {
        // Seeds at (0,0) and (1,1) touch diagonally: 8-connected → one object.
        let fg = vec![1.0; 4];
        let c = vec![0.1, 0.9, 0.9, 0.1];
        let b = vec![0.1, 0.9, 0.9, 0.1];
        let seg = ais_segment(&maps_from(fg, c, b, 2, 2), &no_smoothing()).unwrap();
        assert_eq!(seg.as_slice(), &[1, 1, 1, 1]);
    }

    #[test]
    fn invalid_params_and_shapes_are_reported() {
        let m = maps_from(vec![0.0; 4], vec![0.0; 4], vec![0.0; 4], 2, 2);
        let p = AisParams {
            distance_smoothing: -1.0,
            ..AisParams::default()
        };
        let e = ais_segment(&m, &p).unwrap_err().to_string();
        assert!(e.contains("distance_smoothing") && e.contains("-1"), "{e}");
        let mut bad = m.clone();
        bad.center_distances = Plane::zeros(1, 4);
        let e = ais_segment(&bad, &AisParams::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("centre"), "{e}");
    }
}
