"""Reference fixtures for sam-infer's AIS post-processing.

Builds seeded synthetic decoder maps (foreground, centre distance, boundary distance) for a few
images of touching round objects, and runs on them:

- torch_em's `watershed_from_center_and_boundary_distances` after micro_sam's foreground
  smoothing (bioimage_cpp Gaussian): exactly what micro_sam's `InstanceSegmentationWithDecoder.generate`
  computes for an untiled image;
- bioimage_cpp's `gaussian_smoothing` alone (to check the filter);
- skimage's `watershed` on the smoothed boundary map with the same markers (float64, no
  quantisation, documented tie-breaking: the exact reference for our watershed).

Usage: make_ais_reference.py make OUT_DIR (sam_testkit::script_fixtures). Writes raw little-endian
arrays and meta.json.
"""

import os
import sys

import numpy as np
import bioimage_cpp as bic
from skimage.segmentation import watershed
from torch_em.util.segmentation import watershed_from_center_and_boundary_distances

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sam-testkit", "python"))
from sam_fixtures import distance_targets, make_command, random_ellipses, write_json  # noqa: E402

CASES = [
    # name, seed, shape, n_objects, params
    ("default_a", 0, (96, 128), 14, {}),
    ("default_b", 1, (128, 96), 20, {}),
    ("min_size", 2, (96, 96), 16, {"min_size": 40}),
    ("thresholds", 3, (80, 112), 12, {"center_distance_threshold": 0.4,
                                      "boundary_distance_threshold": 0.6,
                                      "foreground_threshold": 0.4,
                                      "foreground_smoothing": 0.7,
                                      "distance_smoothing": 1.2}),
]
DEFAULTS = {"center_distance_threshold": 0.5, "boundary_distance_threshold": 0.5,
            "foreground_threshold": 0.5, "foreground_smoothing": 1.0,
            "distance_smoothing": 1.6, "min_size": 0}


def synthetic_maps(rng, shape, n):
    gt = random_ellipses(rng, shape, n, margin=0, radii=(6, 14))
    fg = (gt > 0).astype(np.float32)
    center, boundary = distance_targets(gt)
    noise = lambda s: rng.normal(0, s, shape).astype(np.float32)
    fg = np.clip(0.05 + 0.9 * fg + noise(0.15), 0, 1).astype(np.float32)
    center = np.clip(center + noise(0.08), 0, 1).astype(np.float32)
    boundary = np.clip(boundary + noise(0.08), 0, 1).astype(np.float32)
    return fg, center, boundary


def main(out):
    os.makedirs(out, exist_ok=True)
    meta = []
    for name, seed, shape, n, over in CASES:
        rng = np.random.default_rng(seed)
        fg, center, boundary = synthetic_maps(rng, shape, n)
        p = dict(DEFAULTS, **over)
        # micro_sam InstanceSegmentationWithDecoder.generate (tile_shape=None).
        fg_s = bic.filters.gaussian_smoothing(fg, p["foreground_smoothing"]) if p["foreground_smoothing"] > 0 else fg
        seg = watershed_from_center_and_boundary_distances(
            center, boundary, fg_s,
            center_distance_threshold=p["center_distance_threshold"],
            boundary_distance_threshold=p["boundary_distance_threshold"],
            foreground_threshold=p["foreground_threshold"],
            distance_smoothing=p["distance_smoothing"],
            min_size=p["min_size"],
        )
        # The skimage reference for the watershed alone, on the same smoothed inputs.
        c_s = bic.filters.gaussian_smoothing(center, p["distance_smoothing"])
        b_s = bic.filters.gaussian_smoothing(boundary, p["distance_smoothing"])
        fg_mask = fg_s > p["foreground_threshold"]
        seeds = (c_s < p["center_distance_threshold"]) & (b_s < p["boundary_distance_threshold"]) & fg_mask
        markers = bic.segmentation.label(seeds).astype(np.uint32)
        ws = watershed(b_s.astype(np.float64), markers=markers, mask=fg_mask).astype(np.uint32)

        np.stack([fg, center, boundary]).astype("<f4").tofile(os.path.join(out, f"{name}.maps.f32"))
        np.stack([fg_s, b_s]).astype("<f4").tofile(os.path.join(out, f"{name}.smoothed.f32"))
        markers.astype("<u4").tofile(os.path.join(out, f"{name}.markers.u32"))
        fg_mask.astype(np.uint8).tofile(os.path.join(out, f"{name}.mask.u8"))
        ws.astype("<u4").tofile(os.path.join(out, f"{name}.skimage_ws.u32"))
        seg.astype("<u4").tofile(os.path.join(out, f"{name}.micro_sam.u32"))
        meta.append({"name": name, "height": shape[0], "width": shape[1], "params": p,
                     "n_objects": int(seg.max())})
    write_json(out, "meta.json", meta)


if __name__ == "__main__":
    make_command(main, __doc__)
