"""FLOP counts of the Python reference modules, for the tests of `sam_model::flops`.

Builds segment_anything's Sam (and torch_em's UNETR as micro_sam's get_unetr configures it)
with the architecture numbers given as JSON, runs one forward of each part under
torch.utils.flop_counter.FlopCounterMode (matrix products and convolutions, 2 FLOPs per
multiply-add), and prints the counts as JSON. With "meta": true the modules live on the meta
device: shapes only, no arithmetic, so a full-size model is counted in a moment.

Usage: flop_counts.py JSON
  JSON: a list of cases, each {"encoder": {img_size, patch_size, embed_dim, depth, num_heads, out_chans, window_size,
          global_attn_indexes}, "prompt": {embed_dim, image_embedding_size, mask_in_chans},
          "decoder": {transformer_dim, depth, num_heads, mlp_dim, iou_head_hidden_dim},
          "unetr": {initial_features} or null, "objects": N, "points": P, "meta": bool};
  prints a list of {"encoder", "points", "box_and_mask", "unetr"} counts, one per case.
"""

import importlib.util
import json
import os
import sys
import types
from functools import lru_cache, partial

import torch
from torch.utils.flop_counter import FlopCounterMode

torch.set_num_threads(2)


def count(fn):
    # Parameters do not require gradients (see main): FlopCounterMode's module tracker hooks
    # every output that does, and a no_grad block leaves some of them without a graph.
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return mode.get_total_flops()


@lru_cache(maxsize=None)
def import_torch_em_unetr():
    """torch_em's UNETR without the torch_em package's __init__ (data-loading imports)."""
    spec = importlib.util.find_spec("torch_em")
    if spec is None:
        raise SystemExit("torch_em is not installed: run scripts/setup.sh")
    root = spec.submodule_search_locations[0]
    for name, path in [("torch_em", root), ("torch_em.model", os.path.join(root, "model"))]:
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [path]
            sys.modules[name] = m
    from torch_em.model.unetr import UNETR
    return UNETR


def counts(cfg):
    from segment_anything.modeling import (
        ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer,
    )

    device = "meta" if cfg.get("meta") else "cpu"
    if device == "meta":
        # The prompt encoder's boolean masking (labels == -1) needs nonzero(), whose size a
        # meta tensor cannot know; the masked writes change no shape, so any answer does.
        import torch.fx.experimental._config as fx_config
        fx_config.meta_nonzero_assume_all_nonzero = True
    e, p, d = cfg["encoder"], cfg["prompt"], cfg["decoder"]
    encoder = ImageEncoderViT(
        img_size=e["img_size"], patch_size=e["patch_size"], in_chans=3,
        embed_dim=e["embed_dim"], depth=e["depth"], num_heads=e["num_heads"], mlp_ratio=4,
        out_chans=e["out_chans"], qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=e["window_size"], global_attn_indexes=tuple(e["global_attn_indexes"]),
    ).to(device).eval()
    g = p["image_embedding_size"]
    s = e["img_size"]
    prompt_encoder = PromptEncoder(
        embed_dim=p["embed_dim"], image_embedding_size=(g, g), input_image_size=(s, s),
        mask_in_chans=p["mask_in_chans"],
    ).to(device).eval()
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=d["depth"], embedding_dim=d["transformer_dim"], mlp_dim=d["mlp_dim"],
            num_heads=d["num_heads"],
        ),
        transformer_dim=d["transformer_dim"], iou_head_depth=3,
        iou_head_hidden_dim=d["iou_head_hidden_dim"],
    ).to(device).eval()

    for m in (encoder, prompt_encoder, mask_decoder):
        m.requires_grad_(False)
    out = {}
    image = torch.zeros((1, 3, s, s), device=device)
    out["encoder"] = count(lambda: encoder(image))
    emb = torch.zeros((1, e["out_chans"], g, g), device=device)
    n, k = cfg["objects"], cfg["points"]

    def prompt_round(points, boxes, masks):
        def run():
            sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
            mask_decoder(emb, prompt_encoder.get_dense_pe(), sparse, dense, True)
        return count(run)

    coords = torch.zeros((n, k, 2), device=device)
    labels = torch.ones((n, k), dtype=torch.int64, device=device)
    box = torch.zeros((n, 4), device=device)
    mask = torch.zeros((n, 1, 4 * g, 4 * g), device=device)
    out["points"] = prompt_round((coords, labels), None, None)
    out["box_and_mask"] = prompt_round(None, box, mask)
    if cfg.get("unetr"):
        UNETR = import_torch_em_unetr()
        model = UNETR(
            backbone="sam", encoder=encoder, out_channels=3, use_sam_stats=True,
            final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
            use_conv_transpose=False, initial_features=cfg["unetr"]["initial_features"],
        ).to(device).eval().requires_grad_(False)
        z12 = torch.zeros((1, e["out_chans"], g, g), device=device)
        # decode() ends with an interpolation back to the input size: not a counted op.
        out["unetr"] = count(lambda: model.decode((z12, None, None), (s, s), (s, s)))
    return out


if __name__ == "__main__":
    print(json.dumps([counts(case) for case in json.loads(sys.argv[1])]))
