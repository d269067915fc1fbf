"""Reference checkpoints for crates/sam-model/tests/integration/checkpoint.rs, made with segment_anything.

    python checkpoint_fixtures.py make <out_dir> <marker_file>
        Builds a tiny randomly initialised segment_anything Sam (seeded) and torch.save's it as
        a plain state_dict, as micro_sam / torch_em training checkpoints (`sam.` and
        `module.sam.` prefixes, decoder_state, optimiser/scheduler state, numpy scalars, ...),
        a file of assorted dtypes and strided views, a big-endian archive, and files carrying a
        pickled `os.system` call (which a loader must refuse without running it).

    python checkpoint_fixtures.py verify <out_dir>
        Checks the files the Rust test exported into <out_dir>: torch.load(weights_only=True),
        load_state_dict(strict=True) into the same tiny Sam, every tensor equal to the original;
        re-saves the loaded model as resaved.pth for the Rust side to read back.
"""

import collections
import io
import os
import sys
import zipfile
from functools import partial

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def tiny_sam():
    """A 64 px, 2-block, 48-d SAM: block 1 global, block 0 windowed (window 2 on a 4x4 grid)."""
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=48,
            img_size=64,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=4,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=2,
            out_chans=32,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32,
            image_embedding_size=(4, 4),
            input_image_size=(64, 64),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def random_sam():
    torch.manual_seed(0)
    sam = tiny_sam()
    with torch.no_grad():
        # Every tensor random (the default init leaves rel_pos and pos_embed at zero).
        for t in sam.state_dict().values():
            t.copy_(torch.randn_like(t))
    return sam


def decoder_state():
    """A stand-in for micro_sam's UNETR decoder_state: its key style, assorted shapes."""
    g = torch.Generator().manual_seed(1)
    return collections.OrderedDict(
        [
            ("decoder.blocks.0.block.0.weight", torch.randn(16, 32, 3, 3, generator=g)),
            ("decoder.blocks.0.block.0.bias", torch.randn(16, generator=g)),
            ("decoder.samplers.0.conv.weight", torch.randn(8, 16, 1, 1, generator=g)),
            ("base.block.1.num_batches_tracked", torch.tensor(7, dtype=torch.int64)),
            ("out_conv.weight", torch.randn(3, 8, 1, 1, generator=g)),
            ("out_conv.bias", torch.randn(3, generator=g)),
        ]
    )


class Evil:
    """Pickles as a call of os.system: running the pickle would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def big_endian_copy(src, dst):
    """Rewrites a one-float32-storage torch.save archive as if written on a big-endian machine."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, dtype="<f4").astype(">f4").tobytes()
            zout.writestr(info, data)


def make(out, marker):
    os.makedirs(out, exist_ok=True)
    sam = random_sam()
    sd = sam.state_dict()  # an OrderedDict with torch's `_metadata` attribute
    torch.save(sd, os.path.join(out, "plain.pth"))
    # A copy: the optimiser step below changes the model, the checkpoints must hold these values.
    sd = collections.OrderedDict((k, v.clone()) for k, v in sd.items())

    dec = decoder_state()
    opt = torch.optim.AdamW(sam.parameters(), lr=1e-5)
    # One optimiser step, so that the optimiser state holds tensors like a real checkpoint.
    sum((p * p).sum() for p in sam.parameters()).backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.9, patience=3)
    for prefix, name in [("sam.", "micro_sam.pt"), ("module.sam.", "micro_sam_ddp.pt")]:
        torch.save(
            {
                "iteration": 120,
                "epoch": 3,
                "best_epoch": 2,
                "best_metric": np.float64(0.25),
                "current_metric": 0.3,
                "model_state": collections.OrderedDict((prefix + k, v) for k, v in sd.items()),
                "optimizer_state": opt.state_dict(),
                "scheduler_state": sched.state_dict(),
                "init": {"model_class": "micro_sam.training.trainable_sam.TrainableSAM", "model_kwargs": {}},
                "train_time": 12.5,
                "timestamp": "27-11-2026 (15:00:00)",
                "decoder_state": dec,
                "notes": {"comment": "an entry no loader knows"},
            },
            os.path.join(out, name),
        )
    torch.save(dec, os.path.join(out, "decoder_only.pt"))

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save(
        collections.OrderedDict(
            [
                ("f32", torch.randn(3, 5)),
                ("f16", torch.randn(2, 3).half()),
                ("bf16", torch.randn(4).bfloat16()),
                ("i64", torch.arange(-3, 5, dtype=torch.int64).reshape(2, 4)),
                ("transposed", base.t()),  # strides (1, 6)
                ("offset_view", base[1:3, 2:]),  # storage offset 8, strides (6, 1)
                ("every_other", base[:, ::2]),  # strides (6, 2)
                ("shares_storage", base),
                ("scalar", torch.tensor(3.5)),
                ("empty", torch.zeros(0, 3)),
                ("param", torch.nn.Parameter(torch.randn(2, 2))),
            ]
        ),
        os.path.join(out, "dtypes.pth"),
    )
    torch.save(collections.OrderedDict(w=torch.randn(3, 4)), os.path.join(out, "little.pth"))
    big_endian_copy(os.path.join(out, "little.pth"), os.path.join(out, "big.pth"))

    evil_sd = collections.OrderedDict(sd)
    evil_sd["image_encoder.pos_embed"] = Evil(marker)
    torch.save(evil_sd, os.path.join(out, "evil_entry.pth"))
    torch.save(Evil(marker), os.path.join(out, "evil_root.pth"))
    torch.save({"model_state": evil_sd, "epoch": 1}, os.path.join(out, "evil_micro_sam.pt"))
    torch.save({"model_state": sd, "payload": Evil(marker)}, os.path.join(out, "evil_extra_entry.pt"))


def equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def verify(out):
    original = torch.load(os.path.join(out, "plain.pth"), weights_only=True)
    original_dec = decoder_state()
    problems = []

    exported = torch.load(os.path.join(out, "exported.pth"), weights_only=True)
    sam = tiny_sam()
    sam.load_state_dict(exported, strict=True)
    for k, v in sam.state_dict().items():
        if not equal(v, original[k]):
            problems.append(f"exported.pth: {k} differs after load_state_dict")
    if list(exported.keys()) and set(exported.keys()) != set(original.keys()):
        problems.append("exported.pth: key sets differ")
    torch.save(sam.state_dict(), os.path.join(out, "resaved.pth"))

    micro = torch.load(os.path.join(out, "exported_micro_sam.pt"), weights_only=True)
    if set(micro.keys()) != {"model_state", "decoder_state"}:
        problems.append(f"exported_micro_sam.pt: top-level keys {sorted(micro.keys())}")
    sam2 = tiny_sam()
    sam2.load_state_dict(micro["model_state"], strict=True)
    for k, v in sam2.state_dict().items():
        if not equal(v, original[k]):
            problems.append(f"exported_micro_sam.pt: model_state {k} differs")
    if list(micro["decoder_state"].keys()) != list(original_dec.keys()):
        problems.append(f"exported_micro_sam.pt: decoder keys {list(micro['decoder_state'].keys())}")
    for k, v in original_dec.items():
        if not equal(micro["decoder_state"].get(k, torch.empty(0)), v):
            problems.append(f"exported_micro_sam.pt: decoder_state {k} differs")

    dtypes = torch.load(os.path.join(out, "exported_dtypes.pth"), weights_only=True)
    reference = torch.load(os.path.join(out, "dtypes.pth"), weights_only=True)
    for k, v in reference.items():
        if not equal(dtypes.get(k, torch.empty(0)), v.detach()):
            problems.append(f"exported_dtypes.pth: {k} differs")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"ok: {len(exported)} SAM tensors, {len(original_dec)} decoder tensors, {len(dtypes)} dtype tensors")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "verify":
        verify(sys.argv[2])
    else:
        sys.exit(__doc__)
