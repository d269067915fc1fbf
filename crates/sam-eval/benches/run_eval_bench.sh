#!/usr/bin/env bash
# The sam-eval benchmark, by hand: metrics ours vs elf (same run, one thread each), then the whole
# `sam-eval labels` process on the same pair. Results go into docs/benchmarks/eval.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p sam-eval-cli
cargo bench -p sam-eval --bench metrics -- "${1:-10}"
D=target/bench-data/sam-eval
RAYON_NUM_THREADS=1 hyperfine --warmup 1 --runs 10 -N \
  "$CARGO_TARGET_DIR/release/sam-eval labels --gt $D/gt --pred $D/pred --out $D/out --quiet"
