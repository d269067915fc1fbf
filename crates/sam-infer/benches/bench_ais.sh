#!/usr/bin/env bash
# AIS on a 2048² image with vit_b on CPU: sam-infer vs micro_sam's tiled automatic segmentation,
# same random weights ({model_state, decoder_state}), same tiling, same thread count, one run.
#
#   crates/sam-infer/benches/bench_ais.sh [WORK_DIR] [TILE] [HALO] [BATCH]
#
# Defaults: target/bench-infer, 1024, 128, 1. Needs micro-sam in .venv
# (`pip install micro-sam==1.8.14 --no-deps`; its other imports are in requirements-test/bench).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
work=${1:-$root/target/bench-infer}
tile=${2:-1024}
halo=${3:-128}
batch=${4:-1}
threads=${THREADS:-$(nproc)}
py=$root/.venv/bin/python
mkdir -p "$work"
cd "$root"
export OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
[[ -f "$work/vit_b_ais_random.pt" ]] || "$py" crates/sam-infer/benches/python/bench_micro_sam.py make "$work"
cargo build --release -p sam-infer --example bench_ais
echo "== micro_sam (threads $threads)"
"$py" crates/sam-infer/benches/python/bench_micro_sam.py run "$work" "$tile" "$halo"
echo "== sam-infer (threads $threads)"
"$root/target/release/examples/bench_ais" "$work" "$tile" "$halo" "$batch"
