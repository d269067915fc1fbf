"""Pieces the reference fixture scripts of several crates share (crates/*/tests/python).

A script imports it by path relative to its own file:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "..", "..", "sam-testkit", "python"))
    import sam_fixtures

`sam_testkit::script_fixtures` counts this file in the stamp of every script's fixtures, so
that they are written again when it changes.
"""

import json
import os
import sys
from functools import partial

import numpy as np
import torch
from scipy import ndimage as ndi


def tiny_sam(depth=2):
    """A segment_anything SAM of the sizes of `SamConfig::tiny()` in Rust (256 px input, 16 px
    patches, 64-d encoder of `depth` blocks, block 1 global), randomly initialised from torch's
    global generator: seed it first."""
    from segment_anything.modeling import (
        ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
    )
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=256, patch_size=16, in_chans=3, embed_dim=64, depth=depth, num_heads=2,
            mlp_ratio=4, out_chans=32, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=6, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
    )


def perturb(model, scale=0.02):
    """Adds noise to every float entry; batch-norm statistics get plausible random values."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.add_(scale * torch.randn(t.shape, generator=gen))


def random_ellipses(rng, shape, n, margin, radii):
    """Labels 1..n of `n` axis-aligned ellipses drawn from `rng` (centres at least `margin`
    pixels inside the image, half-axes uniform in `radii`); later ones cover earlier ones."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
        ry, rx = rng.uniform(*radii), rng.uniform(*radii)
        gt[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = i
    return gt


def distance_targets(gt):
    """torch_em's per-object distance targets of the labels `gt`: the distance to the object's
    centre and 1 - the distance to its boundary, each scaled to [0, 1] within the object; 1 on
    the background. Returns (center, boundary), float32."""
    yy, xx = np.mgrid[:gt.shape[0], :gt.shape[1]]
    center = np.ones(gt.shape, np.float32)
    boundary = np.ones(gt.shape, np.float32)
    for i in np.unique(gt)[1:]:
        m = gt == i
        d = ndi.distance_transform_edt(m)
        ys, xs = np.nonzero(m)
        cd = np.sqrt((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2)
        center[m] = np.clip(cd[m] / (cd[m].max() + 1e-6), 0, 1)
        boundary[m] = 1.0 - d[m] / (d[m].max() + 1e-6)
    return center, boundary


def write_json(out, name, value):
    """Writes `value` as OUT/NAME in JSON, indented by one space."""
    with open(os.path.join(out, name), "w") as f:
        json.dump(value, f, indent=1)


def make_command(make, usage):
    """The command line of a fixture script: `SCRIPT make OUT_DIR` (as
    `sam_testkit::script_fixtures` runs it) calls `make(OUT_DIR)`; anything else exits with
    `usage`."""
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        raise SystemExit(usage)
    make(sys.argv[2])
