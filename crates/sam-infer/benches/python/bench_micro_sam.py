"""The Python peer of the AIS benchmark: micro_sam's tiled automatic instance segmentation.

  bench_micro_sam.py make  DIR            write DIR/vit_b_ais_random.pt ({model_state, decoder_state},
                                          seeded random vit_b + UNETR decoder) and DIR/image_2048.tif
  bench_micro_sam.py run   DIR TILE HALO  time micro_sam on DIR/image_2048.tif; writes
                                          DIR/micro_sam_maps.f32 (foreground, centre, boundary) and
                                          DIR/micro_sam_times.json

The timed parts mirror `automatic_instance_segmentation(..., tile_shape, halo)`: tiled image
embeddings, the tiled UNETR decoder (`TiledInstanceSegmentationWithDecoder.initialize`) and the
post-processing (`generate` with the same tile shape and halo, as micro_sam passes them).
"""

import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "scripts", "bench"))
from micro_sam_bench import load_and_decode, make_inputs  # noqa: E402


def make(out):
    make_inputs(out, "vit_b_ais_random.pt", 2048)


def run(out, tile, halo):
    import tifffile

    tile_shape, halo_shape = (tile, tile), (halo, halo)
    image = tifffile.imread(os.path.join(out, "image_2048.tif"))
    t = {"threads": torch.get_num_threads()}
    segmenter = load_and_decode(image, os.path.join(out, "vit_b_ais_random.pt"), "ais", tile, halo, t)

    start = time.perf_counter()
    seg = segmenter.generate(tile_shape=tile_shape, halo=halo_shape)
    t["postprocess_s"] = time.perf_counter() - start
    t["total_s"] = t["embed_s"] + t["decode_s"] + t["postprocess_s"]
    t["objects"] = int(len(np.unique(seg)) - 1)

    state = segmenter.get_state()
    np.stack([state["foreground"], state["center_distances"], state["boundary_distances"]]).astype("<f4").tofile(
        os.path.join(out, "micro_sam_maps.f32"))
    # The untiled post-processing on the same maps (what our single watershed computes).
    start = time.perf_counter()
    seg1 = segmenter.generate()
    t["postprocess_untiled_s"] = time.perf_counter() - start
    t["objects_untiled"] = int(len(np.unique(seg1)) - 1)
    seg1.astype("<u4").tofile(os.path.join(out, "micro_sam_untiled_labels.u32"))
    with open(os.path.join(out, "micro_sam_times.json"), "w") as f:
        json.dump(t, f, indent=1)
    print(json.dumps(t))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
