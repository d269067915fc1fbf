"""The Python peer of scripts/bench/apg_bench.sh: micro_sam's tiled automatic prompt generation.

  micro_sam_apg.py make DIR                  write DIR/vit_b_apg_random.pt ({model_state,
                                             decoder_state}: seeded random vit_b + UNETR decoder)
                                             and DIR/image_2048.tif (dark cells, bright background)
  micro_sam_apg.py run DIR CKPT TILE HALO FG CD BD
                                             time micro_sam's APG on DIR/image_2048.tif with CKPT and
                                             the seed thresholds FG, CD, BD (foreground, centre and
                                             boundary distance); writes DIR/micro_sam_apg_labels.u32,
                                             DIR/micro_sam_apg.json
  micro_sam_apg.py compare DIR OURS.tif      objects of micro_sam vs ours matched at IoU >= 0.5

The timed parts mirror `automatic_instance_segmentation(..., segmentation_mode="apg", tile_shape,
halo)`: tiled image embeddings, the tiled UNETR decoder (`TiledAutomaticPromptGenerator.initialize`)
and `generate()` (prompt derivation, batched tiled mask decoding, NMS and merge). A checkpoint with
random weights gives random decoder maps, so the number of prompts (printed) depends on the seed
thresholds: apg_bench.sh raises them above micro_sam's 0.5 defaults for the random checkpoint.
"""

import json
import os
import sys
import time

import numpy as np
import torch

from micro_sam_bench import load_and_decode, make_inputs  # this script's folder


def make(out):
    make_inputs(out, "vit_b_apg_random.pt", int(os.environ.get("APG_BENCH_SIZE", "2048")))


def run(out, ckpt, tile, halo, fg, cd, bd):
    import tifffile
    from micro_sam.instance_segmentation import _derive_point_prompts

    image = tifffile.imread(os.path.join(out, "image_2048.tif"))
    t = {"threads": torch.get_num_threads(), "thresholds": [fg, cd, bd]}
    segmenter = load_and_decode(image, ckpt, "apg", tile, halo, t)
    start = time.perf_counter()
    seg = segmenter.generate(foreground_threshold=fg, center_distance_threshold=cd,
                             boundary_distance_threshold=bd)
    t["apg_generate_s"] = time.perf_counter() - start
    prompts = _derive_point_prompts(segmenter._foreground, segmenter._center_distances,
                                    segmenter._boundary_distances, fg, cd, bd)
    t["prompts"] = 0 if prompts is None else int(len(prompts["points"]))
    t["total_s"] = t["embed_s"] + t["decode_s"] + t["apg_generate_s"]
    t["objects"] = int(len(np.unique(seg)) - 1)
    seg.astype("<u4").tofile(os.path.join(out, "micro_sam_apg_labels.u32"))
    with open(os.path.join(out, "micro_sam_apg.json"), "w") as f:
        json.dump(t, f, indent=1)
    print(json.dumps(t))


def compare(out, ours_path):
    import tifffile

    ours = tifffile.imread(ours_path).astype(np.int64)
    theirs = np.fromfile(os.path.join(out, "micro_sam_apg_labels.u32"), dtype="<u4").reshape(ours.shape)

    def matched(a, b):
        """How many of a's objects have a partner in b at IoU >= 0.5 (unique at that IoU), and
        how many objects a has: one contingency table, not a pass over the image per object."""
        ids_a, inv_a = np.unique(a, return_inverse=True)
        ids_b, inv_b = np.unique(b, return_inverse=True)
        size_a = np.bincount(inv_a.ravel())
        size_b = np.bincount(inv_b.ravel())
        pairs, inter = np.unique(inv_a.ravel() * len(ids_b) + inv_b.ravel(), return_counts=True)
        ia, ib = pairs // len(ids_b), pairs % len(ids_b)
        keep = (ids_a[ia] != 0) & (ids_b[ib] != 0)
        iou = inter[keep] / (size_a[ia[keep]] + size_b[ib[keep]] - inter[keep])
        return len(np.unique(ia[keep][iou >= 0.5])), int((ids_a != 0).sum())

    mt, nt = matched(theirs, ours)
    mo, no = matched(ours, theirs)
    print(f"objects: micro_sam {nt}, ours {no}; matched at IoU >= 0.5: {mt}/{nt} of micro_sam's, "
          f"{mo}/{no} of ours (embeddings differ: micro_sam and sam-infer normalise the image "
          f"differently)")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
            float(sys.argv[7]), float(sys.argv[8]))
    else:
        compare(sys.argv[2], sys.argv[3])
