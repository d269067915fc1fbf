"""Reference AIS targets from torch_em's PerObjectDistanceTransform, as micro_sam trains with it.

Writes into OUT_DIR:
  labels.tif   u32 instance labels (128x128): touching Voronoi-like cells, a C-shaped object whose
               centroid lies outside it, objects cut by the image border, an id split into two
               pieces, and objects below min_size
  targets.bin  float32 little-endian, shape (3, 128, 128): foreground, centre distance,
               boundary distance

Usage: python make_ais_targets.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import tifffile
from torch_em.transform.label import PerObjectDistanceTransform


def make_labels(rng, size=128):
    yy, xx = np.mgrid[:size, :size]
    seeds = rng.uniform(0, size, size=(28, 2))
    d = np.stack([np.hypot(yy - y, xx - x) for y, x in seeds])
    nearest = d.argmin(0)
    radius = rng.uniform(9, 15, size=len(seeds))
    labels = np.where(d.min(0) < radius[nearest], nearest + 1, 0).astype(np.uint32)
    # a C shape: its centroid falls in the gap
    c = (np.hypot(yy - 64, xx - 64) < 14) & (np.hypot(yy - 64, xx - 64) > 7) & ~((xx > 64) & (abs(yy - 64) < 5))
    labels[c] = 100
    # one id in two separate pieces
    labels[2:8, 2:8] = 200
    labels[2:8, 120:126] = 200
    # tiny objects below min_size
    labels[120:123, 60:63] = 300
    labels[60:62, 0:3] = 301
    return labels


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    labels = make_labels(np.random.default_rng(4))
    transform = PerObjectDistanceTransform(
        distances=True,
        boundary_distances=True,
        directed_distances=False,
        foreground=True,
        instances=False,
        min_size=25,
    )
    targets = transform(labels).astype("<f4")
    assert targets.shape == (3,) + labels.shape, targets.shape
    tifffile.imwrite(out / "labels.tif", labels)
    targets.tofile(out / "targets.bin")


if __name__ == "__main__":
    main()
