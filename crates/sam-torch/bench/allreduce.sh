#!/usr/bin/env bash
# All-reduce of a vit_b-sized fp32 gradient bucket over Gloo on loopback, 2 processes:
# ours (examples/allreduce_bench.rs through the c10d bridge) vs torch.distributed from the
# repo's .venv, alternating in one run. Build first:
#   cargo build --release -p sam-torch --example allreduce_bench
#   crates/sam-torch/bench/allreduce.sh [numel (90000000)] [iters (5)] [rounds (3)]
set -euo pipefail
cd "$(dirname "$0")/../../.."
NUMEL=${1:-90000000}
ITERS=${2:-5}
ROUNDS=${3:-3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/examples/allreduce_bench}
PY=.venv/bin/python
[ -x "$BIN" ] || { echo "missing $BIN: cargo build --release -p sam-torch --example allreduce_bench" >&2; exit 1; }
[ -x "$PY" ] || { echo "missing $PY: run scripts/setup.sh" >&2; exit 1; }
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} OMP_NUM_THREADS=1 MASTER_ADDR=127.0.0.1 WORLD_SIZE=2

two_ranks() { # port, command...
    local port=$1; shift
    MASTER_PORT=$port RANK=1 LOCAL_RANK=1 "$@" > /dev/null &
    local peer=$!
    MASTER_PORT=$port RANK=0 LOCAL_RANK=0 "$@"
    wait "$peer"
}

port=$((29700 + RANDOM % 200))
for ((r = 1; r <= ROUNDS; r++)); do
    two_ranks $((port + 2 * r)) "$BIN" --numel "$NUMEL" --iters "$ITERS"
    two_ranks $((port + 2 * r + 1)) "$PY" crates/sam-torch/bench/allreduce_torch.py "$NUMEL" "$ITERS"
done
