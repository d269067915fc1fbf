"""Python peer of the sam-eval metrics benchmark (run by benches/metrics.rs; not a test).

  elf_peer.py generate DIR        seeded 2048x2048 ground-truth/prediction pair with about
                                  1000 objects each -> DIR/gt/pair.tif, DIR/pred/pair.tif
                                  (u32, deflate, as sam-infer writes them)
  elf_peer.py time DIR REPEATS    times what micro_sam's run_evaluation does per image:
                                  mean_segmentation_accuracy(pred, gt, return_accuracies=True)
                                  plus matching(pred, gt); prints JSON with the timings and scores
"""

import json
import os
import sys
import time

import numpy as np
import tifffile

SIZE = 2048
N_OBJECTS = 1000


def paint_ellipse(img, label, cy, cx, ry, rx, angle):
    r = int(np.ceil(max(ry, rx))) + 1
    y0, y1 = max(0, int(cy) - r), min(img.shape[0], int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(img.shape[1], int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    y, x = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * x + s * y) / rx, (-s * x + c * y) / ry
    mask = u * u + v * v <= 1.0
    img[y0:y1, x0:x1][mask] = label


def generate(out):
    rng = np.random.default_rng(2048)
    gt = np.zeros((SIZE, SIZE), np.uint32)
    pred = np.zeros((SIZE, SIZE), np.uint32)
    pred_id = 1
    for i in range(N_OBJECTS):
        cy, cx = rng.uniform(0, SIZE, size=2)
        ry, rx = rng.uniform(12, 30, size=2)
        angle = rng.uniform(0, np.pi)
        paint_ellipse(gt, i + 1, cy, cx, ry, rx, angle)
        if rng.uniform() < 0.05:
            continue  # missed
        dy, dx = rng.normal(0, 2.0, size=2)
        scale = rng.uniform(0.85, 1.15)
        paint_ellipse(pred, 7 * pred_id + 3, cy + dy, cx + dx, ry * scale, rx * scale, angle)
        pred_id += 1
    for _ in range(40):  # spurious objects
        cy, cx = rng.uniform(0, SIZE, size=2)
        paint_ellipse(pred, 7 * pred_id + 3, cy, cx, 10.0, 14.0, 0.0)
        pred_id += 1
    for d, img in (("gt", gt), ("pred", pred)):
        os.makedirs(os.path.join(out, d), exist_ok=True)
        tifffile.imwrite(os.path.join(out, d, "pair.tif"), img, compression="zlib")


def time_elf(out, repeats):
    from elf.evaluation import matching, mean_segmentation_accuracy

    t0 = time.perf_counter()
    gt = tifffile.imread(os.path.join(out, "gt", "pair.tif"))
    pred = tifffile.imread(os.path.join(out, "pred", "pair.tif"))
    read_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        msa, accuracies = mean_segmentation_accuracy(pred, gt, return_accuracies=True)
        stats = matching(pred, gt)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "read_s": read_s,
                "times_s": times,
                "n_true": int(len(np.unique(gt)) - (gt == 0).any()),
                "n_pred": int(len(np.unique(pred)) - (pred == 0).any()),
                # Scores as repr strings: shortest round-trip text, parsed exactly by Rust's
                # f64::from_str (serde_json's float parser may be one ulp off).
                "msa": repr(float(msa)),
                "accuracies": [repr(float(a)) for a in accuracies],
                "precision": repr(float(stats["precision"])),
                "recall": repr(float(stats["recall"])),
                "f1": repr(float(stats["f1"])),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "generate":
        generate(sys.argv[2])
    else:
        time_elf(sys.argv[2], int(sys.argv[3]))
