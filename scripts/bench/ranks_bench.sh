#!/usr/bin/env bash
# Threads per rank: seconds per training iteration of the demo config (configs/demo_cpu.yaml: the
# tiny SAM with its UNETR, 128 px, batch 2 per process) as 1 process and as 2 processes
# (torchrun-style variables, Gloo on 127.0.0.1) on the same cores. Each process sizes libtorch's
# intra-op pool and its loader workers to its share of the cores (the "threads (rank N)" log
# line); before that, 2 ranks on 2 cores each ran 2 intra-op threads and 2 loader workers.
# Run by hand on an idle machine (load average < 0.5):
#
#   scripts/bench/ranks_bench.sh [ITERATIONS]      # default 30 measured, after 3 warm-up ones
#   NO_BUILD=1 scripts/bench/ranks_bench.sh         # use target/release as it is
#   CASES="1:1 2:2" scripts/bench/ranks_bench.sh     # some cases (WORLD_SIZE:LOCAL_WORLD_SIZE)
#
# The case 2:1 reproduces the oversubscription of before: each of the 2 ranks is told it is alone
# on the node and takes every core.
#
# Data: synthetic demo images (as scripts/demo.sh makes them) in a temp folder. Runs go to
# runs/bench_ranks_*/ and are removed at the end. Results go to standard output;
# docs/benchmarks.md ("Threads per rank") records them.
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS=${1:-30}
WARMUP=3
BIN=target/release
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p sam-train-cli -p sam-augment-cli
load=$(cut -d' ' -f1 /proc/loadavg)
awk -v l="$load" 'BEGIN { exit !(l >= 0.5) }' &&
    echo "warning: load average $load >= 0.5: the numbers will be skewed" >&2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK" runs/bench_ranks_* final_models/bench_ranks_*.pt' EXIT
$BIN/sam-augment synth --out "$WORK/train" --count 24 --size 128 --seed 1 --cells-per-512 160 >/dev/null
$BIN/sam-augment synth --out "$WORK/val" --count 2 --size 128 --seed 2 --cells-per-512 160 >/dev/null

config() { # NAME WORLD_SIZE: the demo config, one epoch of WARMUP + ITERS iterations
    local batch=2
    sed -e "s/^experiment_name: .*/experiment_name: $1/" \
        -e "s/^checkpoint_name: .*/checkpoint_name: $1/" \
        -e "s|^export_path: .*|export_path: final_models/$1.pt|" \
        -e "s|dat/demo/augmented|$WORK/train|; s|dat/demo/val|$WORK/val|" \
        -e "s/^  samples_per_epoch: .*/  samples_per_epoch: $(((WARMUP + ITERS) * batch * $2))/" \
        -e "s/^  batch_size: .*/  batch_size: $batch/" \
        -e 's/^  epochs: .*/  epochs: 1/' \
        -e 's/^  log_every_iterations: .*/  log_every_iterations: 1/' \
        -e 's/^  checkpoint_every_iterations: .*/  checkpoint_every_iterations: 100000/' \
        -e "s/^  gpus_per_node: .*/  gpus_per_node: $2/" \
        configs/demo_cpu.yaml
}

# Seconds per iteration from rank 0's per-iteration log timestamps, after the warm-up.
per_iteration() {
    python3 - "$1" "$WARMUP" <<'PY'
import re, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1]):
    m = re.match(r'(\S+)Z\s+INFO iteration (\d+)/', line)
    if m:
        t[int(m.group(2))] = datetime.fromisoformat(m.group(1)).timestamp()
w = int(sys.argv[2])
last = max(t)
print(f"{(t[last] - t[w]) / (last - w):.3f} s/iteration over {last - w} iterations")
PY
}

clean_env() { env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE -u MASTER_ADDR \
    -u MASTER_PORT -u SLURM_PROCID -u SLURM_STEP_ID -u SLURM_CPUS_PER_TASK "$@"; }

echo "cores available: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
# Cases: WORLD_SIZE:LOCAL_WORLD_SIZE. "2:1" tells each of the 2 ranks that it is alone on the
# node, so each takes every core: the oversubscription of the code before the thread budget.
for case in ${CASES:-1:1 2:2 2:1}; do
    world=${case%%:*} local_world=${case##*:}
    name=bench_ranks_${world}_$local_world
    config "$name" "$world" > "$WORK/$name.yaml"
    rm -rf "runs/$name"
    port=$((20000 + RANDOM % 10000))
    pids=()
    for ((rank = 0; rank < world; rank++)); do
        if [ "$world" = 1 ]; then
            clean_env $BIN/sam-train train "$WORK/$name.yaml" --no-progress > "$WORK/$name.$rank.log" 2>&1 &
        else
            clean_env RANK=$rank WORLD_SIZE=$world LOCAL_RANK=$rank LOCAL_WORLD_SIZE=$local_world \
                MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
                $BIN/sam-train train "$WORK/$name.yaml" --no-progress > "$WORK/$name.$rank.log" 2>&1 &
        fi
        pids+=($!)
    done
    for ((rank = 0; rank < world; rank++)); do
        if ! wait "${pids[$rank]}"; then
            echo "rank $rank of $world failed:" >&2; cat "$WORK/$name.$rank.log" >&2; exit 1
        fi
    done
    threads=$(grep -ho 'threads (rank 0): .*' "$WORK/$name.0.log" | head -1 | sed 's/^threads (rank 0): //')
    label="$world rank(s)"
    [ "$world" != "$local_world" ] && label="$world ranks, each told LOCAL_WORLD_SIZE=$local_world"
    echo "$label, batch 2 each: $(per_iteration "$WORK/$name.0.log"); threads: $threads"
done
