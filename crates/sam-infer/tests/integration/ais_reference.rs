//! AIS post-processing against micro_sam's Python functions (torch_em / bioimage_cpp / skimage).
//!
//! `tests/python/make_ais_reference.py` (seeded) writes synthetic decoder maps and the reference
//! results into `target/test-fixtures/sam-infer-ais/`. Compared:
//! - Gaussian smoothing vs `bioimage_cpp.filters.gaussian_smoothing`: max abs error < 1e-5;
//! - connected components vs `bioimage_cpp.segmentation.label`: identical;
//! - seeded watershed vs `skimage.segmentation.watershed` on the same smoothed map and
//!   markers: identical (skimage works in float64 without quantisation; our order is its order);
//! - the whole AIS post-processing vs micro_sam (`watershed_from_center_and_boundary_distances`):
//!   bioimage_cpp quantises heights to 65536 levels and leaves the order inside a level
//!   unspecified, so pixels where two floods meet at nearly equal heights may differ. We
//!   require ≥ 99.5 % identical pixels and the same object count.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sam_data::{connected_components, Connectivity, Plane};
use sam_infer::{ais_segment, gaussian_smoothing, seeded_watershed, AisParams, DecoderMaps};

/// The fixtures, written again when the script changes.
fn fixtures() -> PathBuf {
    let script =
        sam_testkit::workspace_root().join("crates/sam-infer/tests/python/make_ais_reference.py");
    sam_testkit::script_fixtures("sam-infer-ais", &script, |_| Vec::new())
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_u32(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Case {
    name: String,
    h: usize,
    w: usize,
    params: AisParams,
    n_objects: u32,
}

fn cases(dir: &Path) -> Vec<Case> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    meta.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            h: c["height"].as_u64().unwrap() as usize,
            w: c["width"].as_u64().unwrap() as usize,
            params: serde_json::from_value(c["params"].clone()).unwrap(),
            n_objects: c["n_objects"].as_u64().unwrap() as u32,
        })
        .collect()
}

fn plane<T>(h: usize, w: usize, v: Vec<T>) -> Plane<T> {
    Plane::from_vec(h, w, v).unwrap()
}

#[test]
fn ais_postprocessing_matches_micro_sam() {
    let dir = fixtures();
    let all = cases(&dir);
    assert_eq!(all.len(), 4);
    for c in all {
        let (h, w, n) = (c.h, c.w, c.h * c.w);
        let maps = read_f32(&dir.join(format!("{}.maps.f32", c.name)));
        let smoothed = read_f32(&dir.join(format!("{}.smoothed.f32", c.name)));
        let markers = plane(h, w, read_u32(&dir.join(format!("{}.markers.u32", c.name))));
        let mask: Vec<bool> = std::fs::read(dir.join(format!("{}.mask.u8", c.name)))
            .unwrap()
            .iter()
            .map(|&b| b != 0)
            .collect();
        let mask = plane(h, w, mask);
        let fg = plane(h, w, maps[..n].to_vec());

        // 1. Gaussian smoothing (foreground, sigma = foreground_smoothing).
        let ours = gaussian_smoothing(&fg, c.params.foreground_smoothing);
        let err = ours
            .as_slice()
            .iter()
            .zip(&smoothed[..n])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "{}: smoothing max abs error {err}", c.name);

        // 2. Connected components of the seeds (8-connected, first-occurrence order).
        let (labels, _) =
            connected_components(&markers.map(|&m| m > 0), false, Connectivity::Eight);
        assert_eq!(labels, markers, "{}: seed labelling differs", c.name);

        // 3. Seeded watershed on the same inputs vs skimage: identical.
        let hmap = plane(h, w, smoothed[n..].to_vec());
        let ws = seeded_watershed(&hmap, &markers, Some(&mask)).unwrap();
        let sk = read_u32(&dir.join(format!("{}.skimage_ws.u32", c.name)));
        let diff = ws
            .as_slice()
            .iter()
            .zip(&sk)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff, 0,
            "{}: watershed differs from skimage in {diff} pixels",
            c.name
        );

        // 4. Whole AIS post-processing vs micro_sam.
        let dm = DecoderMaps {
            foreground: fg,
            center_distances: plane(h, w, maps[n..2 * n].to_vec()),
            boundary_distances: plane(h, w, maps[2 * n..].to_vec()),
        };
        let seg = ais_segment(&dm, &c.params).unwrap();
        let reference = read_u32(&dir.join(format!("{}.micro_sam.u32", c.name)));
        let same = seg
            .as_slice()
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a == b)
            .count();
        let frac = same as f64 / n as f64;
        let ours_n = seg.as_slice().iter().copied().max().unwrap_or(0);
        assert_eq!(ours_n, c.n_objects, "{}: object count", c.name);
        assert!(
            frac >= 0.995,
            "{}: only {:.4} of pixels agree with micro_sam",
            c.name,
            frac
        );
        assert!(
            c.n_objects >= 5,
            "{}: fixture too easy ({} objects)",
            c.name,
            c.n_objects
        );
    }
}
