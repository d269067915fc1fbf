"""Peer of `sam_data::ais_targets` for docs/benchmarks/data.md: torch_em's PerObjectDistanceTransform
with micro_sam's settings on the same 512x512 label patch.

Usage: python torch_em_ais.py LABELS_TIF [RUNS]
"""
import sys
import time

import numpy as np
import tifffile
from torch_em.transform.label import PerObjectDistanceTransform


def main():
    labels = tifffile.imread(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    t = PerObjectDistanceTransform(distances=True, boundary_distances=True, directed_distances=False,
                                   foreground=True, instances=False, min_size=25)
    t(labels)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        t(labels)
        times.append(time.perf_counter() - start)
    print(f"torch_em PerObjectDistanceTransform {labels.shape}, {len(np.unique(labels)) - 1} ids: "
          f"median {np.median(times) * 1e3:.2f} ms, min {np.min(times) * 1e3:.2f} ms ({runs} runs)")


if __name__ == "__main__":
    main()
