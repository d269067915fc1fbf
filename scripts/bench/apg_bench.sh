#!/usr/bin/env bash
# APG (automatic prompt generation) on a 2048² image with vit_b + UNETR decoder on the CPU:
# `sam-infer auto --mode apg` beside micro_sam's TiledAutomaticPromptGenerator, same checkpoint,
# same tiling, same thread count, one after the other in one run. Run it by hand on an idle
# machine (not part of the test suite).
#
#   scripts/bench/apg_bench.sh [WORK_DIR] [CHECKPOINT] [TILE] [HALO]
#
# Defaults: target/bench-apg, a seeded random vit_b + decoder written into WORK_DIR, 1024, 128.
# A random decoder's maps hover around 0.5, so micro_sam's default thresholds (0.5/0.5/0.5) turn
# their noise into ~1000 prompts per 1024² tile. The seed thresholds are therefore set, on both
# sides alike, by APG_FOREGROUND (default 0.55), APG_CENTER and APG_BOUNDARY (default 0.48 each):
# with the random checkpoint that gives ~100 prompts per 1024² tile, about one per cell of the
# synthetic image, as a trained model would. With a trained checkpoint (e.g. micro_sam's
# vit_b_lm) set all three to 0.5. THREADS sets the
# thread count (default: all cores); APG_BENCH_SIZE the image side (default 2048; smaller for a
# quick check of the script, with SAM_INFER pointing at an existing sam-infer build to skip the
# release build). Needs micro-sam in .venv (scripts/setup.sh installs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work=${1:-$root/target/bench-apg}
tile=${3:-1024}
halo=${4:-128}
threads=${THREADS:-$(nproc)}
py=$root/.venv/bin/python
bench_py=$root/scripts/bench/micro_sam_apg.py
mkdir -p "$work"
work="$(cd "$work" && pwd)"
ckpt=${2:-$work/vit_b_apg_random.pt}
cd "$root"
export OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
fg=${APG_FOREGROUND:-0.55} cd=${APG_CENTER:-0.48} bd=${APG_BOUNDARY:-0.48}
[[ -f "$work/image_2048.tif" && -f "$work/vit_b_apg_random.pt" ]] || "$py" "$bench_py" make "$work"
if [[ -n "${SAM_INFER:-}" ]]; then
    exe=$SAM_INFER # an existing build, e.g. a debug one for checking the script
else
    cargo build --release -p sam-infer-cli --bin sam-infer
    exe=${CARGO_TARGET_DIR:-$root/target}/release/sam-infer
fi
echo "== micro_sam APG (threads $threads, tile $tile, halo $halo, thresholds fg $fg cd $cd bd $bd)"
"$py" "$bench_py" run "$work" "$ckpt" "$tile" "$halo" "$fg" "$cd" "$bd"
echo "== sam-infer --mode apg (threads $threads, tile $tile, halo $halo, thresholds fg $fg cd $cd bd $bd)"
rm -rf "$work/ours"
start=$(date +%s%N)
"$exe" auto --checkpoint "$ckpt" --input "$work/image_2048.tif" --output "$work/ours" \
    --mode apg --tile-shape "$tile" "$tile" --halo "$halo" "$halo" --device cpu --overwrite \
    --foreground-threshold "$fg" --center-distance-threshold "$cd" --boundary-distance-threshold "$bd"
end=$(date +%s%N)
echo "sam-infer wall time (model load included): $(( (end - start) / 1000000 )) ms"
"$py" "$bench_py" compare "$work" "$work/ours/labels/image_2048.tif"
