#!/usr/bin/env bash
# Memory of training against the size of the dataset: peak RSS of the same short training run
# (tiny SAM with the UNETR decoder, 512x512 patches, 2 loader workers, CPU) on SMALL and on LARGE
# synthetic 2048x2048 16-bit images (deflate TIFFs as sam-augment writes them). The data is
# streamed, so the two peaks should differ by little (target: at most 256 MiB for 12 vs 240).
# Run by hand on an idle machine:
#
#   scripts/bench/memory_bench.sh [SMALL] [LARGE] [ITERATIONS]     # defaults 12 240 10
#
# The images are written once to target/bench-memory/ (about 2 GB for 240) and reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
SMALL=${1:-12}
LARGE=${2:-240}
ITERS=${3:-10}
BIN=target/release
cargo build --release -q -p sam-train-cli -p sam-augment-cli
DATA=target/bench-memory
if [ "$(ls "$DATA/all/images" 2>/dev/null | wc -l)" -lt "$LARGE" ]; then
    rm -rf "$DATA/all"
    echo "writing $LARGE synthetic 2048x2048 images to $DATA/all"
    $BIN/sam-augment synth --out "$DATA/all" --count "$LARGE" --size 2048 --seed 11 --bits 16 >/dev/null
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" runs/bench_memory_* final_models/bench_memory_*.pt' EXIT

subset() { # N: the first N images of the set, as links
    mkdir -p "$WORK/$1/images" "$WORK/$1/labels"
    for kind in images labels; do
        ls "$DATA/all/$kind" | sort | head -n "$1" | while read -r f; do
            ln -s "$(realpath "$DATA/all/$kind/$f")" "$WORK/$1/$kind/$f"
        done
    done
}

config() { # NAME N
    cat <<YAML
experiment_name: $1
output_base_dir: runs
checkpoint_name: $1
export_path: final_models/$1.pt
seed: 0
data:
  train_images_dir: $WORK/$2/images
  train_labels_dir: $WORK/$2/labels
  validation: {fraction: 0.1}
  image_shape: [2048, 2048]
  patch_shape: [512, 512]
  samples_per_epoch: $ITERS
  num_workers: 2
  prefetch_batches: 2
model:
  backbone: vit_b
  checkpoint: null
  with_segmentation_decoder: true
  architecture:
    image_size: 256
    patch_size: 16
    encoder_embed_dim: 64
    encoder_depth: 2
    encoder_num_heads: 2
    encoder_global_attn_indexes: [1]
    window_size: 8
    prompt_embed_dim: 64
training:
  batch_size: 1
  n_objects_per_batch: 8
  n_sub_iteration: 2
  iterations: $ITERS
  lr: 1.0e-4
  early_stopping_patience: null
  precision: fp32
  log_every_iterations: 1
  checkpoint_every_iterations: 100000
  device: cpu
hardware: {accelerator: cpu}
YAML
}

echo "$(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
declare -A RSS
for n in "$SMALL" "$LARGE"; do
    subset "$n"
    name=bench_memory_$n
    config "$name" "$n" > "$WORK/$name.yaml"
    rm -rf "runs/$name"
    start=$(date +%s.%N)
    if ! /usr/bin/time -f "%M" -o "$WORK/rss" $BIN/sam-train train "$WORK/$name.yaml" \
        --no-progress > "$WORK/$name.log" 2>&1; then
        cat "$WORK/$name.log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    RSS[$n]=$(( $(cat "$WORK/rss") / 1024 ))
    checked=$(grep -o 'checked [0-9]* images.* in [0-9.]* s' "$WORK/$name.log" || true)
    printf '%4d images: peak RSS %5d MiB, wall %.1f s (%s)\n' "$n" "${RSS[$n]}" \
        "$(echo "$end - $start" | bc)" "$checked"
done
echo "difference: $(( RSS[$LARGE] - RSS[$SMALL] )) MiB (target <= 256)"
