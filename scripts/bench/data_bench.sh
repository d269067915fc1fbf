#!/usr/bin/env bash
# sam-data benchmarks side by side with their Python peers, in one run (docs/benchmarks/data.md).
#   scripts/bench/data_bench.sh [OUT_DIR] [N_WITH_ELASTIC] [N_WITHOUT_ELASTIC]
# Needs the bench peers: scripts/setup.sh --bench (albumentations, torch-em in .venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/bench-data}
N_EL=${2:-16}
N_PLAIN=${3:-48}
echo "date: $(date -u +%FT%TZ)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), load: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -p sam-data --example bench_data
target/release/examples/bench_data "$OUT" "$N_EL" "$N_PLAIN"
.venv/bin/python scripts/bench/albumentations_augment.py "$OUT/source" "$N_EL" "$N_PLAIN"
.venv/bin/python scripts/bench/torch_em_ais.py "$OUT/ais_patch_labels.tif" 30
