"""Reference fixtures for the sam-model parity tests.

Builds seeded, randomly initialised reference models with the Python packages
(`segment-anything` 1.0, MobileSAM's TinyViT from `mobilesam-mirror`, torch_em's UNETR as
micro_sam's `get_unetr` configures it), perturbs every weight so that zero-initialised tables
(relative positions, biases, layer norms) are exercised, and writes for each case:

  <out>/<case>.safetensors     the state_dict (the names our VarStore must have)
  <out>/<case>_io.safetensors  fixed inputs and the reference outputs

Usage: make_parity.py {tiny_sam,vit_b,tiny_vit,unetr,unetr_transpose,unetr_patch8} OUT_DIR
"""

import copy
import importlib.util
import os
import sys
import types
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sam-testkit", "python"))
from sam_fixtures import perturb, tiny_sam as build_tiny_sam  # noqa: E402

torch.set_num_threads(2)


def save(out, case, model_state, io):
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model_state.items()}
    save_file(state, os.path.join(out, f"{case}.safetensors"))
    io = {k: v.detach().contiguous().clone() for k, v in io.items()}
    save_file(io, os.path.join(out, f"{case}_io.safetensors"))


def prompt_outputs(sam, emb, io, tag, multimask_values=(True, False)):
    """Runs the prompt encoder and mask decoder on point, box, point+box and mask prompts."""
    s = sam.prompt_encoder.input_image_size[0]
    m = sam.prompt_encoder.mask_input_size[0]
    g = torch.Generator().manual_seed(7)
    n = 3
    io["point_coords"] = torch.rand((n, 2, 2), generator=g) * (s - 1)
    io["point_labels"] = torch.tensor([[1, 0], [1, 1], [0, -1]], dtype=torch.int64)
    x0 = torch.rand((n, 2), generator=g) * s / 2
    io["boxes"] = torch.cat([x0, x0 + torch.rand((n, 2), generator=g) * s / 2], dim=1)
    io["mask_input"] = torch.randn((n, 1, m, m), generator=g) * 4
    cases = {
        "point": dict(points=(io["point_coords"], io["point_labels"]), boxes=None, masks=None),
        "box": dict(points=None, boxes=io["boxes"], masks=None),
        "point_box": dict(points=(io["point_coords"][:, :1], io["point_labels"][:, :1]), boxes=io["boxes"], masks=None),
        "point_mask": dict(points=(io["point_coords"], io["point_labels"]), boxes=None, masks=io["mask_input"]),
    }
    for name, kw in cases.items():
        sparse, dense = sam.prompt_encoder(**kw)
        for mm in multimask_values:
            low, iou = sam.mask_decoder(
                image_embeddings=emb,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=mm,
            )
            key = f"{tag}{name}_{'multi' if mm else 'single'}"
            io[f"{key}_low_res"] = low
            io[f"{key}_iou"] = iou


@torch.no_grad()
def tiny_sam(out):
    from segment_anything.utils.transforms import ResizeLongestSide

    torch.manual_seed(0)
    sam = build_tiny_sam().eval()
    perturb(sam)
    io = {}
    g = torch.Generator().manual_seed(3)
    io["image"] = torch.randn((2, 3, 256, 256), generator=g)
    emb = sam.image_encoder(io["image"])
    io["image_embeddings"] = emb
    prompt_outputs(sam, emb[:1], io, "")

    # Several images in one decoder call: one embedding per prompt.
    sparse, dense = sam.prompt_encoder(points=(io["point_coords"][:2], io["point_labels"][:2]), boxes=None, masks=None)
    # Python takes one image per call: the reference is one call per image.
    outs = [
        sam.mask_decoder(emb[i:i + 1], sam.prompt_encoder.get_dense_pe(), sparse[i:i + 1], dense[i:i + 1], True)
        for i in range(2)
    ]
    io["per_image_point_multi_low_res"] = torch.cat([o[0] for o in outs])
    io["per_image_point_multi_iou"] = torch.cat([o[1] for o in outs])

    # Mask postprocessing.
    io["postprocessed"] = sam.postprocess_masks(io["point_multi_low_res"], (256, 192), (300, 225))

    # The predictor path: grey [0, 1] image -> 0..255 RGB -> resize long side -> embed -> prompt.
    grey = torch.rand((150, 200), generator=g)
    io["grey"] = grey
    x = (grey * 255)[None, None].repeat(1, 3, 1, 1)
    target = ResizeLongestSide.get_preprocess_shape(150, 200, 256)
    x = F.interpolate(x, target, mode="bilinear", align_corners=False, antialias=True)
    io["grey_resized"] = x
    feats = sam.image_encoder(sam.preprocess(x))
    io["grey_embeddings"] = feats
    coords = np.array([[[40.0, 30.0]], [[150.5, 99.0]]])
    labels = np.array([[1], [1]])
    io["grey_point_coords"] = torch.as_tensor(coords, dtype=torch.float)
    io["grey_point_labels"] = torch.as_tensor(labels, dtype=torch.int64)
    t = ResizeLongestSide(256)
    c = torch.as_tensor(t.apply_coords(coords, (150, 200)), dtype=torch.float)
    sparse, dense = sam.prompt_encoder(points=(c, torch.as_tensor(labels)), boxes=None, masks=None)
    low, iou = sam.mask_decoder(feats, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    io["grey_low_res"] = low
    io["grey_iou"] = iou
    io["grey_masks"] = sam.postprocess_masks(low, tuple(x.shape[-2:]), (150, 200))

    # The model fed at a native 128 px input instead of its built 256 px (model.encoder_input:
    # native): segment_anything with the absolute position embedding resized bicubically to the
    # 8x8 grid (its get_rel_pos interpolates the relative tables itself) and the prompt encoder
    # at that grid and input side.
    native = copy.deepcopy(sam)
    enc = native.image_encoder
    enc.img_size = 128
    enc.pos_embed = torch.nn.Parameter(
        F.interpolate(enc.pos_embed.permute(0, 3, 1, 2), size=(8, 8), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
    )
    pe = native.prompt_encoder
    pe.image_embedding_size = (8, 8)
    pe.input_image_size = (128, 128)
    x = io["image"][:1, :, :128, :128].contiguous()
    io["native_image"] = x
    emb = enc(x)
    io["native_embeddings"] = emb
    coords = torch.tensor([[[30.0, 70.0], [100.0, 12.0]], [[64.0, 64.0], [5.0, 120.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    io["native_point_coords"] = coords
    io["native_point_labels"] = labels
    sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
    low, iou = native.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
    io["native_low_res"] = low
    io["native_iou"] = iou
    io["native_masks"] = native.postprocess_masks(low, (120, 128), (240, 256))
    save(out, "tiny_sam", sam.state_dict(), io)


@torch.no_grad()
def vit_b(out):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    perturb(sam)
    io = {}
    g = torch.Generator().manual_seed(3)
    io["image"] = torch.randn((1, 3, 1024, 1024), generator=g)
    emb = sam.image_encoder(io["image"])
    io["image_embeddings"] = emb
    prompt_outputs(sam, emb, io, "", multimask_values=(True,))
    save(out, "vit_b", sam.state_dict(), io)


@torch.no_grad()
def tiny_vit(out):
    from mobile_sam.modeling.tiny_vit_sam import TinyViT

    torch.manual_seed(0)
    # The same sizes as TinyViTConfig::tiny() in Rust. MobileSAM's forward assumes a 64x64
    # output grid, hence the 1024 px input.
    model = TinyViT(
        img_size=1024, in_chans=3, num_classes=10, embed_dims=[8, 16, 24, 320], depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    perturb(model)
    # eval() caches the attention biases: after perturbing them.
    model.eval()
    io = {}
    g = torch.Generator().manual_seed(3)
    io["image"] = torch.randn((1, 3, 1024, 1024), generator=g)
    io["image_embeddings"] = model(io["image"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # One training-mode forward: batch statistics, running statistics updated.
    model.train()
    io["train_image"] = torch.randn((2, 3, 1024, 1024), generator=g)
    io["train_embeddings"] = model(io["train_image"])
    io["train_running_mean"] = model.patch_embed.seq[0].bn.running_mean
    save(out, "tiny_vit", state, io)

    # The full MobileSAM model (vit_t preset): names and shapes only.
    from mobile_sam import sam_model_registry

    full = sam_model_registry["vit_t"]()
    with open(os.path.join(out, "vit_t_keys.txt"), "w") as f:
        for k, v in full.state_dict().items():
            f.write(f"{k} {list(v.shape)}\n")


def import_torch_em_unetr():
    """torch_em's UNETR without importing the torch_em package (its __init__ pulls in data
    loading dependencies the model code does not need)."""
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


@torch.no_grad()
def unetr(out, conv_transpose, patch_size=16):
    """The decoder of a tiny encoder. With 16 px patches the decoder's output is the encoder's
    input side (256); with 8 px patches (img_size 128, as the demo) it is twice that, and the
    postprocessing resizes it down to the encoder's img_size first."""
    from segment_anything.modeling import ImageEncoderViT

    UNETR = import_torch_em_unetr()
    torch.manual_seed(0)
    img_size = 16 * patch_size
    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=patch_size, embed_dim=64, depth=2, num_heads=2,
        out_chans=32, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=6, global_attn_indexes=(1,),
    )
    # As micro_sam's get_unetr, with 8 initial features (UnetrConfig::tiny()).
    model = UNETR(
        backbone="sam", encoder=encoder, out_channels=3, use_sam_stats=True,
        final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
        use_conv_transpose=conv_transpose, initial_features=8,
    )
    perturb(model, scale=0.05)
    model.eval()
    io = {}
    g = torch.Generator().manual_seed(3)
    z12 = torch.randn((2, 32, 16, 16), generator=g)
    io["image_embeddings"] = z12
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder")}
    if patch_size != 16:
        # The output (2x the input side) resized to the input, then cropped and resized.
        io["at_input"] = model.decode((z12, None, None), (img_size, img_size), (img_size, img_size))
        io["postprocessed"] = model.decode((z12, None, None), (128, 96), (150, 113))
        save(out, f"unetr_patch{patch_size}", state, io)
        return
    io["output"] = model.decode((z12, None, None), (256, 256), (256, 256))
    io["postprocessed"] = model.decode((z12, None, None), (256, 192), (300, 225))
    model.train()
    io["train_output"] = model.decode((z12, None, None), (256, 256), (256, 256))
    io["train_running_mean"] = model.deconv1.block[2].running_mean
    case = "unetr_transpose" if conv_transpose else "unetr"
    save(out, case, state, io)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    cases = {
        "tiny_sam": tiny_sam,
        "vit_b": vit_b,
        "tiny_vit": tiny_vit,
        "unetr": lambda out: unetr(out, conv_transpose=False),
        "unetr_transpose": lambda out: unetr(out, conv_transpose=True),
        "unetr_patch8": lambda out: unetr(out, conv_transpose=False, patch_size=8),
    }
    cases[sys.argv[1]](sys.argv[2])
