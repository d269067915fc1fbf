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


def make(out):
    from segment_anything import sam_model_registry
    from micro_sam.instance_segmentation import get_unetr
    import tifffile

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    unetr = get_unetr(sam.image_encoder, decoder_state=None, device="cpu")
    decoder_state = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder_state},
               os.path.join(out, "vit_b_ais_random.pt"))
    # A 2048² 16-bit brightfield-like image: dark round cells on a bright, noisy background.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:2048, :2048]
    img = np.full((2048, 2048), 40000.0)
    for _ in range(400):
        cy, cx, r = rng.uniform(0, 2048), rng.uniform(0, 2048), rng.uniform(10, 30)
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, 2048))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, 2048))
        sub = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 < r * r
        img[y0:y1, x0:x1][sub] = 25000.0
    img += rng.normal(0, 1500, img.shape)
    tifffile.imwrite(os.path.join(out, "image_2048.tif"), np.clip(img, 0, 65535).astype(np.uint16))


def run(out, tile, halo):
    import tifffile
    from micro_sam import util
    from micro_sam.automatic_segmentation import get_predictor_and_segmenter

    tile_shape, halo_shape = (tile, tile), (halo, halo)
    image = tifffile.imread(os.path.join(out, "image_2048.tif"))
    t = {"threads": torch.get_num_threads()}
    start = time.perf_counter()
    predictor, segmenter = get_predictor_and_segmenter(
        model_type="vit_b", checkpoint=os.path.join(out, "vit_b_ais_random.pt"), device="cpu",
        segmentation_mode="ais", is_tiled=True,
    )
    t["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    embeddings = util.precompute_image_embeddings(
        predictor, image, tile_shape=tile_shape, halo=halo_shape, ndim=2, verbose=False, batch_size=1,
    )
    t["embed_s"] = time.perf_counter() - start

    start = time.perf_counter()
    segmenter.initialize(image, image_embeddings=embeddings, tile_shape=tile_shape, halo=halo_shape,
                         verbose=False, batch_size=1)
    t["decode_s"] = time.perf_counter() - start

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
