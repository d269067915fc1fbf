#!/usr/bin/env bash
# End-to-end proof of scripts/submit_training_a100.sh under a real SLURM (scripts/slurm/cluster.sh):
# the CPU demo model is trained by 2 tasks over Gloo; once it runs, the time-limit warning
# (USR1, what --signal=USR1@lead sends) is delivered; the trainer checkpoints and exits 42, SLURM
# requeues the job, the rerun resumes from the checkpoint and finishes; the model is exported.
#
#   cargo build --release
#   scripts/slurm/test_submit_training.sh [--keep]
#
# Data: the demo's synthetic images (written here into dat/slurm_check/ when missing). The run
# goes to runs/slurm_check/ and final_models/slurm_check.pt (both replaced on every call).
set -euo pipefail
cd "$(dirname "$0")/../.."
KEEP=0
for a in "$@"; do
    case "$a" in
        --keep) KEEP=1 ;;
        *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
    esac
done
BIN=target/release
for b in sam-train sam-augment; do
    [ -x $BIN/$b ] || { echo "missing $BIN/$b: cargo build --release" >&2; exit 1; }
done

DATA=dat/slurm_check
if [ ! -d $DATA/train/images ]; then
    $BIN/sam-augment synth --out $DATA/train --count 6 --size 256 --seed 1 --cells-per-512 40
    $BIN/sam-augment synth --out $DATA/val --count 2 --size 256 --seed 2 --cells-per-512 40
fi
STATE=${SAM_SLURM_STATE:-/tmp/sam_trainer-slurm}
mkdir -p "$STATE"
CONFIG=$STATE/slurm_check.yaml
# The demo config with this check's names and data, 2 processes of batch 1, 40 iterations.
sed -e 's/^experiment_name: .*/experiment_name: slurm_check/' \
    -e 's/^checkpoint_name: .*/checkpoint_name: slurm_check/' \
    -e 's|^export_path: .*|export_path: final_models/slurm_check.pt|' \
    -e "s|dat/demo/augmented|$DATA/train|; s|dat/demo/val|$DATA/val|" \
    -e 's/^  samples_per_epoch: .*/  samples_per_epoch: 8/' \
    -e 's/^  batch_size: .*/  batch_size: 1/' \
    -e 's/^  epochs: .*/  epochs: 10/' \
    -e 's/^  log_every_iterations: .*/  log_every_iterations: 1/' \
    -e 's/^  checkpoint_every_iterations: .*/  checkpoint_every_iterations: 1/' \
    -e 's/^  gpus_per_node: .*/  gpus_per_node: 2/' \
    configs/demo_cpu.yaml > "$CONFIG"
rm -rf runs/slurm_check final_models/slurm_check.pt

export SAM_SLURM_REQUEUE_EXIT=42
eval "$(scripts/slurm/cluster.sh start)"
cleanup() { [ $KEEP = 1 ] || scripts/slurm/cluster.sh stop; }
trap cleanup EXIT

out=$(scripts/submit_training_a100.sh --config "$CONFIG" --cpu --nodes 1 --gpus-per-node 2 \
    --cpus-per-task 1 --mem 4G --time 00:30:00 --signal-lead 60)
echo "$out"
job=$(echo "$out" | awk '/Submitted batch job/ { print $4 }')
[ -n "$job" ] || { echo "FAIL: no job id from the submit script"; exit 1; }
log=runs/slurm_check/logs/train.log
start=$SECONDS
until grep -q "iteration 3/" $log 2>/dev/null; do
    [ $((SECONDS - start)) -lt 300 ] || { echo "FAIL: training did not start"; exit 1; }
    sleep 1
done
echo "== sending USR1 to the job's tasks (the time-limit warning)"
scancel --signal=USR1 "$job"
start=$SECONDS
while squeue -h -j "$job" 2>/dev/null | grep -q .; do
    [ $((SECONDS - start)) -lt 900 ] || { echo "FAIL: job $job still queued after 900 s"; exit 1; }
    sleep 2
done
slurm_out=runs/slurm_check/logs/slurm-$job.out
echo "== $slurm_out"; cat "$slurm_out"
echo "== $log (excerpt)"; grep -E "training slurm_check|stop requested|resumed from|epoch|done:|exported" $log || true
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
check "2 processes over Gloo" "grep -q '2 process(es)' $log"
check "USR1 -> checkpoint -> exit 42" "grep -q 'sam-train exited with 42' $slurm_out && grep -q 'stop requested' $log"
check "requeued and resumed" "grep -q 'restart 1' $slurm_out && grep -q 'resumed from' $log"
check "finished and exported" "grep -q 'sam-train exited with 0' $slurm_out && [ -s final_models/slurm_check.pt ]"
exit $fail
