#!/usr/bin/env bash
# Memory-saving training options on a full-size vit_b (issue 19): seconds per iteration and peak
# RSS of sam-train for full fine-tuning, activation checkpointing `all`, LoRA rank 4 on all
# blocks, LoRA rank 4 on the last 2 blocks (the rest frozen) and `encoder_input: native`,
# beside micro_sam's SamTrainer for full fine-tuning and the same two LoRA settings. 512x512
# patches, 5 objects per image, 8 prompting rounds, batch 1, random weights (timing and memory do
# not depend on them), CPU with 2 threads, fp32 and bf16. Run by hand on an idle machine (needs
# `scripts/setup.sh --bench`); each case takes a few minutes:
#
#   scripts/bench/fit_bench.sh [ITERATIONS]                # default 3 (after 1 warm-up one)
#   CASES="full:fp32 lora_last2:bf16" scripts/bench/fit_bench.sh
#   SKIP_PEER=1 scripts/bench/fit_bench.sh                 # our side only
#
# Results go to standard output; docs/benchmarks/train.md records them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS=${1:-3}
WARMUP=1
BIN=target/release
cargo build --release -q -p sam-train-cli -p sam-augment-cli
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" runs/bench_fit_* final_models/bench_fit_*.pt' EXIT
$BIN/sam-augment synth --out "$WORK/data" --count 8 --size 512 --seed 5 --bits 8 >/dev/null
$BIN/sam-augment synth --out "$WORK/val" --count 1 --size 512 --seed 6 --bits 8 >/dev/null

# The model section's extra lines and the training section's extra lines of each case.
model_extra() {
    case $1 in
        lora_all) printf '  peft: {method: lora, rank: 4, blocks: all}\n' ;;
        lora_last2) printf '  peft: {method: lora, rank: 4, blocks: {last: 2}}\n' ;;
        native) printf '  encoder_input: native\n' ;;
    esac
}
training_extra() {
    case $1 in
        checkpointing) printf '  activation_checkpointing: all\n' ;;
    esac
}

config() { # NAME CASE PRECISION
    cat <<YAML
experiment_name: $1
output_base_dir: runs
checkpoint_name: $1
export_path: final_models/$1.pt
seed: 0
data:
  train_images_dir: $WORK/data/images
  train_labels_dir: $WORK/data/labels
  validation: {images_dir: $WORK/val/images, labels_dir: $WORK/val/labels, fraction: null}
  image_shape: [512, 512]
  patch_shape: [512, 512]
  samples_per_epoch: $((ITERS + WARMUP))
  num_workers: 1
  prefetch_batches: 2
model:
  backbone: vit_b
  checkpoint: null
  with_segmentation_decoder: false
$(model_extra "$2")
training:
  batch_size: 1
  n_objects_per_batch: 5
  n_sub_iteration: 8
  epochs: 1
  lr: 1.0e-5
  precision: $3
  log_every_iterations: 1
  checkpoint_every_iterations: 100000
  device: cpu
$(training_extra "$2")
hardware: {accelerator: cpu}
inference: {mode: amg}
YAML
}

peer_args() {
    case $1 in
        full) echo "" ;;
        lora_all) echo "--lora-rank 4 --lora-blocks all" ;;
        lora_last2) echo "--lora-rank 4 --lora-blocks last:2" ;;
        *) echo "none" ;;
    esac
}

ALL="full:fp32 checkpointing:fp32 lora_all:fp32 lora_last2:fp32 native:fp32"
ALL="$ALL full:bf16 checkpointing:bf16 lora_all:bf16 lora_last2:bf16 native:bf16"
for c in ${CASES:-$ALL}; do
    kind=${c%%:*} precision=${c##*:}
    name=bench_fit_${kind}_$precision
    config "$name" "$kind" "$precision" > "$WORK/$name.yaml"
    rm -rf "runs/$name"
    if ! /usr/bin/time -f "%M" -o "$WORK/rss" $BIN/sam-train train "$WORK/$name.yaml" \
        --no-progress > "$WORK/$name.log" 2>&1; then
        cat "$WORK/$name.log" >&2
        exit 1
    fi
    per_iter=$(python3 - "$WORK/$name.log" "$WARMUP" <<'PY'
import re, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1]):
    m = re.match(r'(\S+)Z\s+INFO iteration (\d+)/', line)
    if m:
        t[int(m.group(2))] = datetime.fromisoformat(m.group(1)).timestamp()
w, last = int(sys.argv[2]), max(t)
print(f"{(t[last] - t[w]) / (last - w):.2f} s/iteration over {last - w} iterations")
PY
)
    echo "sam-train vit_b $kind $precision: $per_iter, peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB"
    [ "${SKIP_PEER:-0}" = 1 ] && continue
    args=$(peer_args "$kind")
    [ "$args" = none ] && continue
    # shellcheck disable=SC2086
    if ! .venv/bin/python scripts/bench/micro_sam_vit_b_train.py "$WORK/data" "$precision" \
        "$ITERS" $args > "$WORK/$name.py.log" 2>&1; then
        cat "$WORK/$name.py.log" >&2
        exit 1
    fi
    grep '^micro_sam' "$WORK/$name.py.log"
done
