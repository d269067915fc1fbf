"""Runs the TorchScript modules of `sam-train export --format torchscript` with torch.jit.load
on the inputs of a fixture file and prints, as JSON, the largest absolute difference of each
output from the reference outputs in that file (computed by the Rust model).

usage: check_torchscript.py EXPORT_DIR FIXTURES.safetensors
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(export_dir: str, fixtures: str) -> None:
    d = Path(export_dir)
    f = load_file(fixtures)
    manifest = json.loads((d / "model.json").read_text())
    load = lambda name: torch.jit.load(str(d / manifest["modules"][name]["file"]))
    diff = lambda a, b: (a - b).abs().max().item()
    side = 4 * f["embeddings"].shape[-1]

    def unpack(out):
        # per mask token: flattened mask logits, then the predicted IoU
        return out[..., :-1].unflatten(-1, (side, side)), out[..., -1]

    out = {}
    with torch.no_grad():
        emb = load("image_encoder")(f["image"])
        out["image_embeddings"] = diff(emb, f["embeddings"])
        # The prompt modules on the reference embeddings, so that each module is checked alone.
        masks, iou = unpack(load("prompt_points")(f["embeddings"], f["coords"], f["labels"]))
        out["points_masks_single"] = diff(masks[:, :1], f["points_masks_single"])
        out["points_iou_single"] = diff(iou[:, :1], f["points_iou_single"])
        out["points_masks_multi"] = diff(masks[:, 1:], f["points_masks_multi"])
        out["points_iou_multi"] = diff(iou[:, 1:], f["points_iou_multi"])
        masks, iou = unpack(load("prompt_box")(f["embeddings"], f["box"]))
        out["box_masks_multi"] = diff(masks[:, 1:], f["box_masks_multi"])
        out["box_iou_multi"] = diff(iou[:, 1:], f["box_iou_multi"])
        if "unetr_decoder" in manifest["modules"]:
            out["unetr"] = diff(load("unetr_decoder")(f["embeddings"]), f["unetr"])
            out["ais"] = diff(load("ais")(f["grey"]), f["ais"])
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
