"""Reference scores from elf (python-elf 0.9.2), the library micro_sam evaluates with.

Writes seeded random label-image pairs as raw little-endian uint32 files plus `reference.json`
with elf's `mean_segmentation_accuracy(pred, gt, return_accuracies=True)` and
`matching(pred, gt)` (threshold 0.5) for each pair — exactly the two calls micro_sam's
`run_evaluation` makes. Usage: make_elf_reference.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
from elf.evaluation import matching, mean_segmentation_accuracy


def ellipse(shape, cy, cx, ry, rx, angle):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    y, x = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * x + s * y) / max(rx, 0.5), (-s * x + c * y) / max(ry, 0.5)
    return u * u + v * v <= 1.0


def random_ids(rng, n):
    # Sparse, large, unrelated ids (the prediction never shares the ground truth's numbering).
    ids = np.unique(rng.integers(1, 2**31, size=4 * n + 8))
    return rng.permutation(ids)[:n].astype(np.uint32)


def blob_pair(rng, shape, n_objects, radius):
    """Ellipses (later ones overwrite earlier ones, so some objects are partly hidden) and a
    prediction made of shifted, resized, split, merged, missing and spurious objects."""
    gt = np.zeros(shape, np.uint32)
    pred = np.zeros(shape, np.uint32)
    gt_ids = random_ids(rng, n_objects)
    pred_ids = random_ids(rng, 2 * n_objects + 10)
    next_pred = 0
    merged_into = None
    for i in range(n_objects):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(0.5, 1.5) * radius, rng.uniform(0.5, 1.5) * radius
        angle = rng.uniform(0, np.pi)
        gt[ellipse(shape, cy, cx, ry, rx, angle)] = gt_ids[i]
        fate = rng.uniform()
        if fate < 0.1:
            continue  # missed object
        dy, dx = rng.integers(-2, 3, size=2)
        scale = rng.uniform(0.85, 1.15)
        mask = ellipse(shape, cy + dy, cx + dx, ry * scale, rx * scale, angle + rng.uniform(-0.3, 0.3))
        if fate < 0.2:
            # split along a line through the centre
            yy, xx = np.mgrid[: shape[0], : shape[1]]
            side = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle) > 0
            pred[mask & side] = pred_ids[next_pred]
            pred[mask & ~side] = pred_ids[next_pred + 1]
            next_pred += 2
        elif fate < 0.3 and merged_into is not None:
            pred[mask] = merged_into  # merged with the previous object
        else:
            pred[mask] = pred_ids[next_pred]
            merged_into = pred_ids[next_pred]
            next_pred += 1
    for _ in range(rng.integers(0, 4)):  # spurious objects
        m = ellipse(shape, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), radius * 0.6, radius * 0.6, 0.0)
        pred[m] = pred_ids[next_pred]
        next_pred += 1
    return gt, pred


def tiny_pair(rng, shape):
    """Objects of 1–6 pixels, so IoUs land exactly on 1/2, 2/3, 3/4, 4/5 … and on the thresholds."""
    gt = np.zeros(shape, np.uint32)
    pred = np.zeros(shape, np.uint32)
    k = 1
    for y in range(1, shape[0] - 3, 4):
        for x in range(1, shape[1] - 8, 9):
            w = int(rng.integers(1, 7))
            gt[y, x : x + w] = k
            kind = rng.integers(0, 4)
            if kind == 0:  # shifted copy
                s = int(rng.integers(0, 3))
                pred[y, x + s : x + s + w] = 1000 + k
            elif kind == 1:  # shorter
                pred[y, x : x + max(1, w - int(rng.integers(0, 3)))] = 1000 + k
            elif kind == 2:  # split in two
                h = max(1, w // 2)
                pred[y, x : x + h] = 1000 + k
                pred[y, x + h : x + w] = 5000 + k
            else:  # longer
                pred[y, x : x + w + int(rng.integers(0, 3))] = 1000 + k
            k += 1
    return gt, pred


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20261127)
    cases = []
    for i in range(12):
        shape = (int(rng.integers(64, 161)), int(rng.integers(64, 161)))
        cases.append((f"blobs_{i}", *blob_pair(rng, shape, int(rng.integers(3, 40)), float(rng.uniform(4, 14)))))
    for i in range(4):
        cases.append((f"tiny_{i}", *tiny_pair(rng, (40, 80))))
    g, p = blob_pair(rng, (80, 90), 15, 8.0)
    old_ids = np.unique(g[g > 0])
    new_ids = random_ids(rng, len(old_ids))
    relabelled = np.zeros_like(g)
    for a, b in zip(old_ids, new_ids):
        relabelled[g == a] = b
    cases.append(("identical_relabelled", g, relabelled))
    cases.append(("gt_empty", np.zeros_like(p), p))
    cases.append(("pred_empty", g, np.zeros_like(g)))
    cases.append(("both_empty", np.zeros((20, 30), np.uint32), np.zeros((20, 30), np.uint32)))

    reference = []
    for name, gt, pred in cases:
        gt.astype("<u4").tofile(os.path.join(out, f"{name}_gt.bin"))
        pred.astype("<u4").tofile(os.path.join(out, f"{name}_pred.bin"))
        msa, accuracies = mean_segmentation_accuracy(pred, gt, return_accuracies=True)
        stats = matching(pred, gt)
        reference.append(
            {
                "name": name,
                "height": int(gt.shape[0]),
                "width": int(gt.shape[1]),
                "msa": float(msa),
                "accuracies": [float(a) for a in accuracies],
                "precision": float(stats["precision"]),
                "recall": float(stats["recall"]),
                "f1": float(stats["f1"]),
                "sa50": float(stats["segmentation_accuracy"]),
            }
        )
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)


if __name__ == "__main__":
    main()
