"""Reference for `tests/optim_parity`: torch.optim.AdamW(fused=True) after
torch.nn.utils.clip_grad_norm_(foreach=True), on parameters shaped like vit_b SAM's.

Usage: optim_parity.py make OUT_DIR (sam_testkit::script_fixtures): writes
OUT_DIR/optim_parity.safetensors.

The parameters are a subset of segment_anything's vit_b state_dict (shapes read from the model
built on the meta device, so nothing is allocated): the positional embedding, a global-attention
block (layer norms, qkv, relative positions), convolutions of the neck, the prompt encoder and
the mask decoder, and biases down to 4 values (shorter than one SIMD vector). One of them,
`image_encoder.blocks.2.attn.rel_pos_h`, is float64, so that the optimiser and the clipping see
two dtype groups, as PyTorch forms them.

Three steps, lr 1e-4, weight decay 0.01, clipping at max_norm 1.0 before each. The gradient of
step k is derived from one stored gradient `g` by exact float operations (the Rust test derives
it the same way), to keep the file small:
  step 1: g            (global norm 4: clipped)
  step 2: -0.5 * flip(g) over all dims, and no gradient at all for SKIP (set to None)
  step 3: 0.125 * g    (norm 0.5: the clip coefficient is clamped to 1)

Writes one safetensors file: `param.<name>` (initial) and `grad.<name>` (g), then after step 3
`expect.param.<name>`, `expect.exp_avg.<name>`, `expect.exp_avg_sq.<name>`, `expect.step.<name>`
(float32, PyTorch's own), and `expect.norm` (the three norms clip_grad_norm_ returned, float64).
"""

import os
import sys

import torch
from safetensors.torch import save_file
from segment_anything import sam_model_registry

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sam-testkit", "python"))
from sam_fixtures import make_command  # noqa: E402

NAMES = [
    "image_encoder.pos_embed",
    "image_encoder.patch_embed.proj.bias",
    "image_encoder.blocks.2.norm1.weight",
    "image_encoder.blocks.2.norm1.bias",
    "image_encoder.blocks.2.attn.qkv.weight",
    "image_encoder.blocks.2.attn.qkv.bias",
    "image_encoder.blocks.2.attn.rel_pos_h",
    "image_encoder.blocks.2.attn.rel_pos_w",
    "image_encoder.neck.0.weight",
    "image_encoder.neck.1.weight",
    "image_encoder.neck.1.bias",
    "prompt_encoder.point_embeddings.0.weight",
    "prompt_encoder.mask_downscaling.0.weight",
    "prompt_encoder.mask_downscaling.0.bias",
    "mask_decoder.output_upscaling.0.weight",
    "mask_decoder.iou_prediction_head.layers.2.weight",
    "mask_decoder.iou_prediction_head.layers.2.bias",
]
FLOAT64 = "image_encoder.blocks.2.attn.rel_pos_h"
SKIP = "image_encoder.neck.1.weight"
STEPS = 3


def grad_at(step, g):
    if step == 0:
        return g.clone()
    if step == 1:
        return g.flip(list(range(g.dim()))) * -0.5
    return g * 0.125


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "optim_parity.safetensors")
    torch.manual_seed(0)
    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
    shapes = {k: v.shape for k, v in sam.named_parameters()}
    names = sorted(NAMES)  # the order in which the Rust optimiser keeps its parameters

    params, grads = {}, {}
    for name in names:
        dtype = torch.float64 if name == FLOAT64 else torch.float32
        noise = torch.randn(shapes[name], dtype=dtype)
        norm_like = "norm" in name or name.startswith("image_encoder.neck.1")
        params[name] = 1.0 + 0.1 * noise if norm_like else 0.05 * noise
        grads[name] = torch.randn(shapes[name], dtype=dtype)
    total = sum(g.double().square().sum() for g in grads.values()).sqrt()
    for name in names:
        grads[name] = (grads[name].double() * (4.0 / total)).to(grads[name].dtype)

    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    ordered = [leaves[n] for n in names]
    opt = torch.optim.AdamW(ordered, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01, fused=True)
    norms = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        for name in names:
            if not (step == 1 and name == SKIP):
                leaves[name].grad = grad_at(step, grads[name])
        norm = torch.nn.utils.clip_grad_norm_(ordered, 1.0, foreach=True)
        norms.append(float(norm))
        opt.step()

    tensors = {}
    for name in names:
        state = opt.state[leaves[name]]
        tensors[f"param.{name}"] = params[name].contiguous()
        tensors[f"grad.{name}"] = grads[name].contiguous()
        tensors[f"expect.param.{name}"] = leaves[name].detach().contiguous()
        tensors[f"expect.exp_avg.{name}"] = state["exp_avg"].contiguous()
        tensors[f"expect.exp_avg_sq.{name}"] = state["exp_avg_sq"].contiguous()
        tensors[f"expect.step.{name}"] = state["step"].reshape(1).contiguous()
    tensors["expect.norm"] = torch.tensor(norms, dtype=torch.float64)
    tmp = f"{out}.tmp-{os.getpid()}"
    save_file(tensors, tmp)
    os.replace(tmp, out)


if __name__ == "__main__":
    make_command(main, __doc__)
