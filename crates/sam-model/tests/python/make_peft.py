"""Reference fixtures for the PEFT (LoRA, FacT, SSF) tests of sam-model.

`make OUT_DIR`: for each method, a tiny segment_anything SAM (3 encoder blocks) with perturbed
weights, wrapped by micro_sam's `PEFT_Sam` (rank 2, blocks 1 and 2) with random adapter
weights (LoRA's B factors start at zero, so they are drawn too), written as

  <out>/peft_<method>.safetensors     micro_sam's PEFT state_dict (what get_sam_model loads)
  <out>/peft_<method>_io.safetensors  an input image and the encoder's output (eval mode)

`check METHOD IO MERGED PEFT`: loads MERGED (a plain SAM state_dict written by our export)
strictly into segment_anything's Sam and PEFT (micro_sam's PEFT layout) strictly into
PEFT_Sam(...).sam, and prints the max abs difference of their image embeddings to the
reference embeddings of IO.
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sam-testkit", "python"))
from sam_fixtures import tiny_sam  # noqa: E402

torch.set_num_threads(2)

METHODS = {"lora": "LoRASurgery", "fact": "FacTSurgery", "ssf": "SSFSurgery"}
BLOCKS = [1, 2]
RANK = 2
DEPTH = 3  # encoder blocks


def peft_sam(method):
    from micro_sam.models import peft_sam as P
    sam = tiny_sam(depth=DEPTH)
    module = getattr(P, METHODS[method])
    return P.PEFT_Sam(sam, rank=RANK, peft_module=module, attention_layers_to_update=BLOCKS).sam


@torch.no_grad()
def make(out):
    os.makedirs(out, exist_ok=True)
    for method in METHODS:
        torch.manual_seed(0)
        sam = peft_sam(method).eval()
        gen = torch.Generator().manual_seed(1234)
        for name, t in sam.state_dict().items():
            if name.endswith(".scale"):
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            elif any(s in name for s in ("w_a_linear", "w_b_linear", "FacT", "shift")):
                t.copy_(0.2 * torch.randn(t.shape, generator=gen))
            elif t.is_floating_point():
                t.add_(0.02 * torch.randn(t.shape, generator=gen))
        g = torch.Generator().manual_seed(3)
        image = torch.randn((2, 3, 256, 256), generator=g)
        io = {"image": image, "embeddings": sam.image_encoder(image)}
        state = {k: v.contiguous().clone() for k, v in sam.state_dict().items()}
        save_file(state, os.path.join(out, f"peft_{method}.safetensors"))
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, f"peft_{method}_io.safetensors"))


@torch.no_grad()
def check(method, io_path, merged_path, peft_path):
    io = load_file(io_path)
    plain = tiny_sam(depth=DEPTH).eval()
    plain.load_state_dict(torch.load(merged_path, map_location="cpu", weights_only=True), strict=True)
    peft = peft_sam(method).eval()
    peft.load_state_dict(torch.load(peft_path, map_location="cpu", weights_only=True), strict=True)
    for name, model in (("merged", plain), ("peft", peft)):
        d = (model.image_encoder(io["image"]) - io["embeddings"]).abs().max().item()
        print(f"{name} {d:.3e}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(*sys.argv[2:6])
