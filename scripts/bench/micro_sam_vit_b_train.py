# The Python peer of scripts/bench/fit_bench.sh: micro_sam's SamTrainer on a full-size vit_b
# (random weights: the timing and memory do not depend on them), 512x512 patches, 5 objects per
# image, 8 prompting rounds, batch 1, on CPU with 2 torch threads; optionally micro_sam's LoRA
# (micro_sam.models.peft_sam.PEFT_Sam with LoRASurgery, as get_trainable_sam_model applies it).
# Prints seconds per training iteration (after the warm-up, validation excluded) and the peak
# resident memory of the process.
#
#   .venv/bin/python scripts/bench/micro_sam_vit_b_train.py DATA_DIR {fp32,bf16} ITERATIONS \
#       [--lora-rank R] [--lora-blocks all|last:K]
import argparse
import glob
import os
import resource
import tempfile
import time

import torch
from micro_sam.models.peft_sam import LoRASurgery, PEFT_Sam
from micro_sam.training import default_sam_loader
from micro_sam.training.sam_trainer import SamTrainer
from micro_sam.training.trainable_sam import TrainableSAM
from micro_sam.training.util import ConvertToSamInputs
from segment_anything import sam_model_registry

PATCH, OBJECTS, ROUNDS, BATCH, WARMUP = 512, 5, 8, 1, 1


class TimedLoader:
    """Wraps a DataLoader and records when each batch was asked for."""

    def __init__(self, loader):
        self.loader, self.asked = loader, []
        self.dataset, self.sampler = loader.dataset, loader.sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.asked.append(time.perf_counter())
            yield batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("precision", choices=["fp32", "bf16"])
    ap.add_argument("iterations", type=int)
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--lora-blocks", default="all")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    images = sorted(glob.glob(os.path.join(a.data, "images", "*.tif")))
    labels = [p.replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep) for p in images]
    common = dict(
        raw_paths=images, raw_key=None, label_paths=labels, label_key=None,
        patch_shape=(PATCH, PATCH), with_segmentation_decoder=False, batch_size=BATCH,
        num_workers=0, shuffle=True,
    )
    # One iteration more than measured: the last one ends with fit()'s validation.
    total = WARMUP + a.iterations + 1
    train_loader = TimedLoader(default_sam_loader(n_samples=total * BATCH, **common))
    val_loader = default_sam_loader(n_samples=BATCH, **common)

    sam = sam_model_registry["vit_b"](checkpoint=None)
    if a.lora_rank:
        depth = len(sam.image_encoder.blocks)
        blocks = None
        if a.lora_blocks.startswith("last:"):
            k = int(a.lora_blocks.split(":")[1])
            blocks = list(range(depth - k, depth))
        sam = PEFT_Sam(sam, rank=a.lora_rank, peft_module=LoRASurgery, attention_layers_to_update=blocks).sam
    model = TrainableSAM(sam)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.9, patience=3)
    with tempfile.TemporaryDirectory() as save_root:
        trainer = SamTrainer(
            name="bench", save_root=save_root, train_loader=train_loader, val_loader=val_loader,
            model=model, optimizer=optimizer, device="cpu", lr_scheduler=scheduler, logger=None,
            log_image_interval=10**9, mixed_precision=a.precision == "bf16",
            convert_inputs=ConvertToSamInputs(transform=model.transform, box_distortion_factor=0.025),
            n_objects_per_batch=OBJECTS, n_sub_iteration=ROUNDS, compile_model=False, mask_prob=0.5,
        )
        trainer.fit(iterations=total)
    asked = train_loader.asked
    spans = [b - a_ for a_, b in zip(asked[WARMUP:-1], asked[WARMUP + 1:])]
    per_iter = sum(spans) / max(len(spans), 1)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lora = f"lora r{a.lora_rank} {a.lora_blocks}" if a.lora_rank else "full"
    print(f"micro_sam vit_b {lora} {a.precision}: {per_iter:.2f} s/iteration over {len(spans)} "
          f"iterations, peak RSS {peak_mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
