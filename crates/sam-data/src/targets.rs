//! Targets of the automatic instance segmentation (UNETR) decoder, defined exactly as
//! torch_em's `PerObjectDistanceTransform(distances=True, boundary_distances=True,
//! directed_distances=False, foreground=True, instances=False, min_size=...)`.

use rayon::prelude::*;

use crate::image::LabelImage;
use crate::labels::{inner_boundaries, object_stats, prepare_instances};
use crate::plane::Plane;

/// The three target channels, channel-first: `data[c * height * width + y * width + x]`.
///
/// - channel 0: foreground (1 inside objects, 0 outside);
/// - channel 1: distance to the object centre, divided by the object's largest such distance
///   (0 at the centre, ~1 at the far edge); 1 on background;
/// - channel 2: distance to the object boundary, flipped and normalised the same way
///   (0 at the most central point, ~1 on the outline); 1 on background.
#[derive(Debug, Clone, PartialEq)]
pub struct AisTargets {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `3 * height * width` values.
    pub data: Vec<f32>,
}

/// One object's id, bounding box and its two distance channels over the box.
type ObjectTargets = (usize, [usize; 4], Vec<f32>, Vec<f32>);

/// torch_em's normalisation epsilon.
const EPS: f32 = 1e-7;

/// Computes the AIS targets of a label image, as torch_em does:
///
/// 1. connected components (8-connected) of the labels, objects below `min_size` pixels
///    removed (micro_sam trains with `min_size = 25`);
/// 2. per object, within its bounding box: the centre is the rounded centroid, or, when that
///    lies outside the object, the point farthest from the boundary; the centre distance is
///    the Euclidean distance to it; the boundary distance is the exact Euclidean distance to
///    the nearest inner-boundary pixel (skimage `find_boundaries(mode="inner")`), subtracted
///    from its maximum; both are divided by their maximum + 1e-7.
///
/// Objects are processed in parallel (each one only touches its bounding box).
pub fn ais_targets(labels: &LabelImage, min_size: usize) -> AisTargets {
    let (w, h) = (labels.cols(), labels.rows());
    let inst = prepare_instances(labels, min_size);
    let boundaries = inner_boundaries(&inst);
    let stats = object_stats(&inst);
    let n = w * h;
    let mut data = vec![0f32; 3 * n];
    for (fg, &l) in data[..n].iter_mut().zip(inst.as_slice()) {
        *fg = if l != 0 { 1.0 } else { 0.0 };
    }
    data[n..].fill(1.0);
    let per_object: Vec<ObjectTargets> = stats
        .par_iter()
        .map(|s| {
            let [x0, y0, x1, y1] = s.bbox;
            let (bw, bh) = (x1 - x0, y1 - y0);
            let mask: Vec<bool> = (y0..y1)
                .flat_map(|y| {
                    inst.as_slice()[y * w + x0..y * w + x1]
                        .iter()
                        .map(move |&v| v == s.id)
                })
                .collect();
            let feature: Vec<bool> = (y0..y1)
                .flat_map(|y| boundaries.row(y)[x0..x1].iter().copied())
                .collect();
            let mut bd = edt(&feature, bw, bh);
            for (d, &m) in bd.iter_mut().zip(&mask) {
                if !m {
                    *d = 0.0;
                }
            }
            // first maximum in row-major order, as np.argmax
            let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
            for (i, &d) in bd.iter().enumerate() {
                if d > best_v {
                    best_v = d;
                    best = i;
                }
            }
            // np.round: half to even
            let cy = s.centroid.1.round_ties_even() as usize - y0;
            let cx = s.centroid.0.round_ties_even() as usize - x0;
            let (cx, cy) = if mask[cy * bw + cx] {
                (cx, cy)
            } else {
                (best % bw, best / bw)
            };
            let mut cd = vec![0f32; bw * bh];
            for y in 0..bh {
                for x in 0..bw {
                    let i = y * bw + x;
                    if mask[i] {
                        let (dx, dy) = (x as f32 - cx as f32, y as f32 - cy as f32);
                        cd[i] = (dx * dx + dy * dy).sqrt();
                    }
                }
            }
            let mut bdist = vec![0f32; bw * bh];
            for i in 0..bw * bh {
                if mask[i] {
                    bdist[i] = best_v - bd[i];
                }
            }
            for ch in [&mut cd, &mut bdist] {
                let m = ch.iter().fold(0f32, |a, &v| a.max(v.abs())) + EPS;
                for v in ch.iter_mut() {
                    *v /= m;
                }
            }
            // keep only mask pixels for the scatter
            (s.id as usize, s.bbox, cd, bdist)
        })
        .collect();
    let (c1, c2) = data[n..].split_at_mut(n);
    for (id, [x0, y0, x1, _], cd, bdist) in per_object {
        let bw = x1 - x0;
        for (i, (a, b)) in cd.iter().zip(&bdist).enumerate() {
            let p = (y0 + i / bw) * w + x0 + i % bw;
            if inst.as_slice()[p] as usize == id {
                c1[p] = *a;
                c2[p] = *b;
            }
        }
    }
    AisTargets {
        width: w,
        height: h,
        data,
    }
}

/// Exact Euclidean distance of every pixel to the nearest `true` pixel of `feature` (0 on the
/// feature pixels; scipy's `distance_transform_edt` of `!feature`). Without any feature pixel,
/// distances are measured to a virtual feature row above the image, as scipy does.
pub fn distance_transform(feature: &Plane<bool>) -> Plane<f32> {
    let (h, w) = feature.shape();
    let d = edt(feature.as_slice(), w, h);
    Plane::from_vec(h, w, d).unwrap_or_else(|_| Plane::zeros(h, w))
}

/// Exact Euclidean distance of every pixel to the nearest `feature` pixel (Felzenszwalb &
/// Huttenlocher's separable lower-envelope algorithm). Without any feature pixel, distances
/// are measured to a virtual feature row above the image, as scipy does.
pub(crate) fn edt(feature: &[bool], w: usize, h: usize) -> Vec<f32> {
    const INF: f64 = 1e20;
    if !feature.iter().any(|&f| f) {
        return (0..w * h).map(|i| (i / w + 1) as f32).collect();
    }
    let mut g = vec![0f64; w * h];
    let n = w.max(h);
    let mut f = vec![0f64; n];
    let mut d = vec![0f64; n];
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    // columns
    for x in 0..w {
        for y in 0..h {
            f[y] = if feature[y * w + x] { 0.0 } else { INF };
        }
        envelope(&f[..h], &mut d[..h], &mut v, &mut z);
        for y in 0..h {
            g[y * w + x] = d[y];
        }
    }
    // rows
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        f[..w].copy_from_slice(&g[y * w..(y + 1) * w]);
        envelope(&f[..w], &mut d[..w], &mut v, &mut z);
        for x in 0..w {
            out[y * w + x] = d[x].sqrt() as f32;
        }
    }
    out
}

/// 1D squared distance transform of sampled function `f` into `d`.
fn envelope(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let mut k = 0usize;
    // start the envelope at the first finite sample
    let Some(first) = f.iter().position(|&x| x < 1e19) else {
        d.fill(1e20);
        return;
    };
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if f[q] >= 1e19 {
            continue;
        }
        let qf = q as f64;
        loop {
            let p = v[k] as f64;
            let s = ((f[q] + qf * qf) - (f[v[k]] + p * p)) / (2.0 * qf - 2.0 * p);
            if s <= z[k] && k > 0 {
                k -= 1;
            } else {
                k += 1;
                v[k] = q;
                z[k] = s;
                z[k + 1] = f64::INFINITY;
                break;
            }
        }
    }
    let mut k = 0;
    for (q, out) in d.iter_mut().enumerate() {
        let qf = q as f64;
        while z[k + 1] < qf {
            k += 1;
        }
        let p = v[k] as f64;
        *out = (qf - p) * (qf - p) + f[v[k]];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn edt_matches_brute_force() {
        let (w, h) = (13, 9);
        let feature: Vec<bool> = (0..w * h).map(|i| (i * 7919) % 11 == 0).collect();
        let d = edt(&feature, w, h);
        for y in 0..h {
            for x in 0..w {
                let mut best = f64::INFINITY;
                for yy in 0..h {
                    for xx in 0..w {
                        if feature[yy * w + xx] {
                            let dd = ((x as f64 - xx as f64).powi(2)
                                + (y as f64 - yy as f64).powi(2))
                            .sqrt();
                            best = best.min(dd);
                        }
                    }
                }
                assert!((f64::from(d[y * w + x]) - best).abs() < 1e-5, "({x},{y})");
            }
        }
        // no feature: distance to a virtual row above
        assert_eq!(edt(&[false; 6], 3, 2), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn square_object_by_hand() {
        // a 5x5 square at (2..7, 1..6) in a 9x8 image
        let mut l = LabelImage::zeros(8, 9);
        for y in 1..6 {
            for x in 2..7 {
                l.as_mut_slice()[y * 9 + x] = 4;
            }
        }
        let t = ais_targets(&l, 0);
        let n = 72;
        let at = |c: usize, x: usize, y: usize| t.data[c * n + y * 9 + x];
        assert_eq!(at(0, 4, 3), 1.0);
        assert_eq!(at(0, 0, 0), 0.0);
        assert_eq!(at(1, 0, 0), 1.0);
        assert_eq!(at(2, 0, 0), 1.0);
        // centre (4,3): distance 0; corner (2,1): sqrt(8) is the maximum -> 1
        assert!(at(1, 4, 3).abs() < 1e-6);
        assert!((at(1, 2, 1) - 1.0).abs() < 1e-6);
        assert!((at(1, 3, 3) - 1.0 / 8f32.sqrt()).abs() < 1e-6);
        // boundary distance: the ring is 0 from the boundary, the centre 2 -> channel = (2 - d)/2
        assert!(at(2, 4, 3).abs() < 1e-6);
        assert!((at(2, 2, 3) - 1.0).abs() < 1e-6);
        assert!((at(2, 3, 3) - 0.5).abs() < 1e-6);
    }
}
