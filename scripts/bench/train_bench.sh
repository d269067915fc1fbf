#!/usr/bin/env bash
# Training benchmark: seconds per training iteration, share of it waiting for data and peak
# memory, sam-train vs micro_sam's SamTrainer / JointSamTrainer, on the same tiny SAM (ViT depth 2,
# width 64, 256 px input, SAM's 256-wide prompt encoder, mask decoder and UNETR), 5 objects per
# image, 8 prompting rounds, batch 1, on CPU with 2 torch threads, fp32 and bf16, with and without
# the instance decoder. Run by hand on an idle machine (needs `scripts/setup.sh --bench`):
#
#   scripts/bench/train_bench.sh [ITERATIONS] [BF16_ITERATIONS]   # defaults 20 and 4
#   CASES="false:fp32 true:fp32" scripts/bench/train_bench.sh      # some cases (decoder:precision)
#   SKIP_PEER=1 scripts/bench/train_bench.sh                         # our side only (no micro_sam)
#   ACTIVATION_CHECKPOINTING=all SKIP_PEER=1 scripts/bench/train_bench.sh  # our side, blocks
#                                   # recomputed in the backward (none | global | all; default none)
#
# (measured iterations per case, after 3 warm-up ones; bf16 gets fewer: on CPUs without native
# bf16 arithmetic each iteration takes over 10 s on both sides). The images are 8-bit: micro_sam's
# UNETR refuses inputs outside 0..255.
# Results go to standard output; docs/benchmarks/train.md records them.
set -euo pipefail
cd "$(dirname "$0")/../.."
FP32_ITERS=${1:-20}
BF16_ITERS=${2:-4}
BIN=target/release
cargo build --release -q -p sam-train-cli -p sam-augment-cli
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" runs/bench_train_* final_models/bench_train_*.pt' EXIT
$BIN/sam-augment synth --out "$WORK/data" --count 16 --size 256 --seed 5 --bits 8 >/dev/null
$BIN/sam-augment synth --out "$WORK/val" --count 1 --size 256 --seed 6 --bits 8 >/dev/null

config() { # NAME DECODER PRECISION ITERATIONS
    cat <<EOF
experiment_name: $1
output_base_dir: runs
checkpoint_name: $1
export_path: final_models/$1.pt
seed: 0
data:
  train_images_dir: $WORK/data/images
  train_labels_dir: $WORK/data/labels
  validation: {images_dir: $WORK/val/images, labels_dir: $WORK/val/labels, fraction: null}
  image_shape: [256, 256]
  patch_shape: [256, 256]
  samples_per_epoch: $(($4 + 3))
  num_workers: 1
  prefetch_batches: 2
model:
  backbone: vit_b
  checkpoint: null
  with_segmentation_decoder: $2
  architecture:
    image_size: 256
    patch_size: 16
    encoder_embed_dim: 64
    encoder_depth: 2
    encoder_num_heads: 2
    encoder_global_attn_indexes: [1]
    window_size: 8
    prompt_embed_dim: 256
training:
  batch_size: 1
  n_objects_per_batch: 5
  n_sub_iteration: 8
  epochs: 1
  lr: 1.0e-5
  precision: $3
  activation_checkpointing: ${ACTIVATION_CHECKPOINTING:-none}
  log_every_iterations: 1
  checkpoint_every_iterations: 100000
  device: cpu
hardware: {accelerator: cpu}
inference: {mode: $([ "$2" = true ] && echo ais || echo amg)}
EOF
}

# CASES="false:fp32 true:fp32" picks cases (decoder:precision); default all four.
for case in ${CASES:-false:fp32 false:bf16 true:fp32 true:bf16}; do
    decoder=${case%%:*} precision=${case##*:}
    {
        name=bench_train_${decoder}_$precision
        iters=$([ "$precision" = bf16 ] && echo "$BF16_ITERS" || echo "$FP32_ITERS")
        config "$name" "$decoder" "$precision" "$iters" > "$WORK/$name.yaml"
        rm -rf "runs/$name"
        if ! /usr/bin/time -f "%M" -o "$WORK/rss" $BIN/sam-train train "$WORK/$name.yaml" \
            --no-progress > "$WORK/$name.log" 2>&1; then
            cat "$WORK/$name.log" >&2
            exit 1
        fi
        # Seconds per iteration from the log's per-iteration timestamps, after the same 3
        # warm-up iterations the Python side skips; the data-wait share from the run's summary.
        per_iter=$(python3 - "$WORK/$name.log" <<'PY'
import re, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1]):
    m = re.match(r'(\S+)Z\s+INFO iteration (\d+)/', line)
    if m:
        t[int(m.group(2))] = datetime.fromisoformat(m.group(1)).timestamp()
last = max(t)
print(f"{(t[last] - t[3]) / (last - 3):.3f} s/iteration over {last - 3} iterations")
PY
)
        wait=$(grep -o '[0-9.]* % of it waiting for data' "$WORK/$name.log" | cut -d' ' -f1)
        echo "sam-train decoder=$decoder $precision checkpointing=${ACTIVATION_CHECKPOINTING:-none}: $per_iter, data wait $wait %, peak RSS $(( $(cat "$WORK/rss") / 1024 )) MiB"
        [ "${SKIP_PEER:-0}" = 1 ] && continue
        mode=$([ "$decoder" = true ] && echo joint || echo sam)
        if ! .venv/bin/python scripts/bench/micro_sam_train.py "$WORK/data" "$mode" "$precision" \
            "$iters" > "$WORK/$name.py.log" 2>&1; then
            cat "$WORK/$name.py.log" >&2
            exit 1
        fi
        grep '^micro_sam' "$WORK/$name.py.log"
    }
done
