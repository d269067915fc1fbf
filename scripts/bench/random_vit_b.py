"""The inputs the vit_b benchmarks against micro_sam share (scripts/bench/micro_sam_apg.py,
crates/sam-infer/benches/python/bench_micro_sam.py): a seeded random vit_b SAM with micro_sam's
UNETR decoder, and a synthetic 16-bit brightfield-like image. A script imports it by a path
relative to its own file.
"""

import os

import numpy as np
import torch


def make(out, checkpoint_name, size=2048):
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
