"""What the vit_b benchmarks against micro_sam share (scripts/bench/micro_sam_apg.py,
crates/sam-infer/benches/python/bench_micro_sam.py): their inputs (a seeded random vit_b SAM with
micro_sam's UNETR decoder, a synthetic 16-bit brightfield-like image) and the timed steps of
micro_sam's tiled pipeline up to the decoder's maps. A script imports it by a path relative to
its own file.
"""

import os
import time

import numpy as np
import torch


def make_inputs(out, checkpoint_name, size=2048):
    """Writes OUT/CHECKPOINT_NAME ({model_state, decoder_state}: vit_b and the UNETR decoder of
    `get_unetr`, random weights from torch seed 0) and OUT/image_2048.tif: a size² uint16 image
    of dark round cells (about 400 per 2048²) on a bright, noisy background (numpy seed 0). The
    file keeps its name at other sizes."""
    from segment_anything import sam_model_registry
    from micro_sam.instance_segmentation import get_unetr
    import tifffile

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    unetr = get_unetr(sam.image_encoder, decoder_state=None, device="cpu")
    decoder_state = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder_state},
               os.path.join(out, checkpoint_name))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 40000.0)
    for _ in range(int(400 * (size / 2048) ** 2)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 30)
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, size))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, size))
        sub = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 < r * r
        img[y0:y1, x0:x1][sub] = 25000.0
    img += rng.normal(0, 1500, img.shape)
    tifffile.imwrite(os.path.join(out, "image_2048.tif"), np.clip(img, 0, 65535).astype(np.uint16))


def load_and_decode(image, checkpoint, mode, tile, halo, times):
    """micro_sam's tiled pipeline up to the decoder, as `automatic_instance_segmentation(...,
    tile_shape, halo)` runs it: loads the vit_b predictor and the `mode` ("ais", "apg") segmenter
    from `checkpoint` on the CPU, embeds `image` in tiles of tile² pixels with a halo of `halo`
    and runs the tiled UNETR decoder (`segmenter.initialize`). Records the seconds of each step
    in `times` (`load_s`, `embed_s`, `decode_s`) and returns the initialised segmenter."""
    from micro_sam import util
    from micro_sam.automatic_segmentation import get_predictor_and_segmenter

    tile_shape, halo_shape = (tile, tile), (halo, halo)
    start = time.perf_counter()
    predictor, segmenter = get_predictor_and_segmenter(
        model_type="vit_b", checkpoint=checkpoint, device="cpu", segmentation_mode=mode, is_tiled=True,
    )
    times["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    embeddings = util.precompute_image_embeddings(
        predictor, image, tile_shape=tile_shape, halo=halo_shape, ndim=2, verbose=False, batch_size=1,
    )
    times["embed_s"] = time.perf_counter() - start
    start = time.perf_counter()
    segmenter.initialize(image, image_embeddings=embeddings, tile_shape=tile_shape, halo=halo_shape,
                         verbose=False, batch_size=1)
    times["decode_s"] = time.perf_counter() - start
    return segmenter
