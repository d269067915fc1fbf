#!/usr/bin/env bash
# Time a training step waits on the gradient all-reduce after its backward, 2 ranks over Gloo on
# loopback: the averaging of before (after the backward, bucket by bucket) vs GradReducer
# (buckets sent during the backward), alternating in one run, on a vit_b-sized parameter set
# (examples/overlap_bench.rs). Run on an idle machine (load average < 0.5). Build first:
#   cargo build --release -p sam-torch --example overlap_bench
#   crates/sam-torch/bench/overlap.sh [iters (5)] [wire fp32|bf16 (fp32)] [extra flags...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
ITERS=${1:-5}
WIRE=${2:-fp32}
shift $(( $# > 2 ? 2 : $# ))
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/examples/overlap_bench}
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release -p sam-torch --example overlap_bench" >&2; exit 1; }
load=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$load" 'BEGIN { exit !(l >= 0.5) }' &&
    echo "warning: load average $load >= 0.5: the numbers will be skewed" >&2
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} OMP_NUM_THREADS=1 MASTER_ADDR=127.0.0.1 WORLD_SIZE=2
port=$((29900 + RANDOM % 90))
MASTER_PORT=$port RANK=1 LOCAL_RANK=1 "$BIN" --iters "$ITERS" --wire "$WIRE" "$@" > /dev/null &
peer=$!
MASTER_PORT=$port RANK=0 LOCAL_RANK=0 "$BIN" --iters "$ITERS" --wire "$WIRE" "$@"
wait "$peer"
