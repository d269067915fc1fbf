# The Python peer of the training benchmark: micro_sam's SamTrainer (or JointSamTrainer with its
# UNETR) on the tiny SAM of configs/bench/train_tiny*.yaml, the same synthetic images, objects per
# batch and prompting rounds. Prints seconds per training iteration (validation excluded), the
# share of it spent waiting for the data loader, and the peak resident memory of the process.
#
#   .venv/bin/python scripts/bench/micro_sam_train.py DATA_DIR {sam,joint} {fp32,bf16} ITERATIONS
#
# DATA_DIR holds images/ and labels/ (TIFF); scripts/bench/train_bench.sh runs it beside
# `sam-train train`. torch runs with 2 threads, as sam-train does on this machine.
import glob
import os
import resource
import sys
import tempfile
import time
from functools import partial

import torch
import torch_em
from micro_sam.instance_segmentation import get_unetr
from micro_sam.training import default_sam_loader
from micro_sam.training.joint_sam_trainer import JointSamTrainer
from micro_sam.training.sam_trainer import SamTrainer
from micro_sam.training.trainable_sam import TrainableSAM
from micro_sam.training.util import ConvertToSamInputs
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

# The benchmark configuration (configs/bench/train_tiny.yaml says the same).
IMG, PATCH, WIDTH, DEPTH, HEADS, WINDOW, NECK = 256, 16, 64, 2, 2, 8, 256
OBJECTS, ROUNDS, BATCH, WARMUP = 5, 8, 1, 3


def tiny_sam() -> Sam:
    grid = IMG // PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=IMG, patch_size=PATCH, in_chans=3, embed_dim=WIDTH, depth=DEPTH,
            num_heads=HEADS, mlp_ratio=4, out_chans=NECK,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=WINDOW, global_attn_indexes=(DEPTH - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=NECK, image_embedding_size=(grid, grid), input_image_size=(IMG, IMG),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=NECK, mlp_dim=2048, num_heads=8),
            transformer_dim=NECK, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    )


class TimedLoader:
    """Wraps a DataLoader: records when each batch was asked for and how long it took."""

    def __init__(self, loader):
        self.loader, self.asked, self.waits = loader, [], []
        self.dataset, self.sampler = loader.dataset, loader.sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.asked.append(t0)
            self.waits.append(time.perf_counter() - t0)
            yield batch


def main():
    data, mode, precision, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    joint = mode == "joint"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    images = sorted(glob.glob(os.path.join(data, "images", "*.tif")))
    labels = [p.replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep) for p in images]
    common = dict(
        raw_paths=images, raw_key=None, label_paths=labels, label_key=None,
        patch_shape=(IMG, IMG), with_segmentation_decoder=joint, batch_size=BATCH,
        num_workers=0, shuffle=True,
    )
    train_loader = TimedLoader(default_sam_loader(n_samples=(WARMUP + iterations) * BATCH, **common))
    val_loader = default_sam_loader(n_samples=BATCH, **common)

    model = TrainableSAM(tiny_sam())
    params = list(model.parameters())
    extra = {}
    trainer_class = SamTrainer
    if joint:
        unetr = get_unetr(image_encoder=model.sam.image_encoder, device="cpu")
        params += [p for n, p in unetr.named_parameters() if not n.startswith("encoder")]
        extra = dict(unetr=unetr, instance_loss=torch_em.loss.DiceBasedDistanceLoss(mask_distances_in_bg=True),
                     instance_metric=torch_em.loss.DiceBasedDistanceLoss(mask_distances_in_bg=True))
        trainer_class = JointSamTrainer
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.9, patience=3)
    with tempfile.TemporaryDirectory() as save_root:
        trainer = trainer_class(
            name="bench", save_root=save_root, train_loader=train_loader, val_loader=val_loader,
            model=model, optimizer=optimizer, device="cpu", lr_scheduler=scheduler, logger=None,
            log_image_interval=10**9, mixed_precision=precision == "bf16",
            convert_inputs=ConvertToSamInputs(transform=model.transform, box_distortion_factor=0.025),
            n_objects_per_batch=OBJECTS, n_sub_iteration=ROUNDS, compile_model=False, mask_prob=0.5,
            **extra,
        )
        trainer.fit(iterations=WARMUP + iterations)
    asked = train_loader.asked
    # Iteration k spans asked[k] .. asked[k + 1]; the last one ends when fit() validated, so it
    # is left out together with the warm-up.
    spans = [b - a for a, b in zip(asked[WARMUP:-1], asked[WARMUP + 1:])]
    waits = train_loader.waits[WARMUP:WARMUP + len(spans)]
    per_iter = sum(spans) / len(spans)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"micro_sam {mode} {precision}: {per_iter:.3f} s/iteration over {len(spans)} iterations, "
          f"data wait {100 * sum(waits) / sum(spans):.1f} %, peak RSS {peak_mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
