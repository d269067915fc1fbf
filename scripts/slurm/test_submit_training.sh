#!/usr/bin/env bash
# End-to-end proof of scripts/submit_training_a100.sh under a real SLURM (scripts/slurm/cluster.sh)
# whose slurm.conf has NO RequeueExit, as on most clusters: two slurmd "nodes" on this machine,
# 2 tasks each, the CPU demo model trained by 4 ranks over Gloo. Every resource comes from the
# config (no resource flags). Once training runs, the time-limit warning (USR1, what
# --signal=USR1@lead sends) is delivered to the tasks; the trainer checkpoints, rank 0 leaves
# the stop marker, every task exits 0, the batch script requeues the job itself (scontrol
# requeue), the rerun resumes from the checkpoint, finishes and exports the model.
#
#   cargo build --release -p sam-train-cli -p sam-augment-cli
#   scripts/slurm/test_submit_training.sh [--keep]      # as root; prints PASS/FAIL lines
#
# Data: the demo's synthetic images (written here into dat/slurm_check/ when missing). The run
# goes to runs/slurm_check/ and final_models/slurm_check.pt (both replaced on every call).
# Exits 0 when every check passes, 1 otherwise. /etc/hosts gets the node names while the
# cluster runs and is restored (checked) at the end; --keep leaves the cluster running.
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
    [ -x $BIN/$b ] || { echo "FAIL: missing $BIN/$b: cargo build --release" >&2; exit 1; }
done

DATA=dat/slurm_check
if [ ! -d $DATA/train/images ]; then
    $BIN/sam-augment synth --out $DATA/train --count 6 --size 256 --seed 1 --cells-per-512 40
    $BIN/sam-augment synth --out $DATA/val --count 2 --size 256 --seed 2 --cells-per-512 40
fi
STATE=${SAM_SLURM_STATE:-/tmp/sam_trainer-slurm}
mkdir -p "$STATE"
CONFIG=$STATE/slurm_check.yaml
# The demo config with this check's names and data; the job: 2 nodes x 2 tasks of batch 1
# (global batch 4, 2 iterations per epoch, 20 iterations), 1 CPU per task, 4G per node, 30 min.
sed -e 's/^experiment_name: .*/experiment_name: slurm_check/' \
    -e 's/^checkpoint_name: .*/checkpoint_name: slurm_check/' \
    -e 's|^export_path: .*|export_path: final_models/slurm_check.pt|' \
    -e "s|dat/demo/augmented|$DATA/train|; s|dat/demo/val|$DATA/val|" \
    -e 's/^  samples_per_epoch: .*/  samples_per_epoch: 8/' \
    -e 's/^  num_workers: .*/  num_workers: 1/' \
    -e 's/^  batch_size: .*/  batch_size: 1/' \
    -e 's/^  epochs: .*/  epochs: 10/' \
    -e 's/^  log_every_iterations: .*/  log_every_iterations: 1/' \
    -e 's/^  checkpoint_every_iterations: .*/  checkpoint_every_iterations: 1/' \
    -e 's/^  nodes: .*/  nodes: 2/' \
    -e 's/^  gpus_per_node: .*/  gpus_per_node: 2/' \
    -e 's/^  time_limit: .*/  time_limit: "00:30:00"/' \
    -e 's/^  cpus_per_task: .*/  cpus_per_task: 1\n  memory: 4G\n  signal_lead_seconds: 60\n  requeue: true/' \
    configs/demo_cpu.yaml > "$CONFIG"
rm -rf runs/slurm_check final_models/slurm_check.pt

hosts_before=$(md5sum < /etc/hosts)
export SAM_SLURM_NODES=2 SAM_SLURM_REQUEUE_EXIT=none
eval "$(scripts/slurm/cluster.sh start)"
stopped=0
cleanup() { [ $KEEP = 1 ] || [ $stopped = 1 ] || scripts/slurm/cluster.sh stop; }
trap cleanup EXIT

fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
check "slurm.conf has no RequeueExit (two nodes)" \
    "! grep -q '^RequeueExit' \"\$SLURM_CONF\" && [ \$(sinfo -h -N -o '%N' | sort -u | wc -l) = 2 ]"

out=$(scripts/submit_training_a100.sh --config "$CONFIG")
echo "$out"
job=$(echo "$out" | awk '/Submitted batch job/ { print $4 }')
[ -n "$job" ] || { echo "FAIL no job id from the submit script"; exit 1; }
show=$(scontrol show job "$job")
has() { echo "$show" | grep -Eq "$1"; }
check "resources from the config: 2 nodes x 2 tasks, 1 CPU per task, 4G, 30 min, requeue" \
    "has 'NumNodes=2(-2)? ' && has 'NumTasks=4 ' && has 'CPUs/Task=1 ' && has 'TimeLimit=00:30:00' \
     && has 'Requeue=1' && has 'MinMemoryNode=4G'"
[ $fail = 0 ] || echo "$show"

log=runs/slurm_check/logs/train.log
start=$SECONDS
until grep -q "iteration 3/" $log 2>/dev/null; do
    [ $((SECONDS - start)) -lt 300 ] || { echo "FAIL training did not start"; exit 1; }
    sleep 1
done
echo "== sending USR1 to the job's tasks (the time-limit warning)"
scancel --signal=USR1 "$job"
signalled=$SECONDS
start=$SECONDS
restarted_after=""
while squeue -h -j "$job" 2>/dev/null | grep -q .; do
    [ $((SECONDS - start)) -lt 900 ] || { echo "FAIL job $job still queued after 900 s"; exit 1; }
    if [ -z "$restarted_after" ] && grep -q "restart 1" "runs/slurm_check/logs/slurm-$job.out" 2>/dev/null; then
        restarted_after=$((SECONDS - signalled))
    fi
    sleep 2
done
slurm_out=runs/slurm_check/logs/slurm-$job.out
echo "== $slurm_out"; cat "$slurm_out"
echo "== $log (excerpt)"
grep -E "threads \(rank|training slurm_check|stop requested|stop marker|resumed from|done:|exported" $log || true
echo "== runs/slurm_check/logs/slurm-requeues.log"; cat runs/slurm_check/logs/slurm-requeues.log 2>/dev/null || true
final=$(scontrol show job "$job" 2>/dev/null || true)

check "4 processes over Gloo on samnode[1-2]" \
    "grep -q '4 process(es)' $log && grep -q 'on samnode\[1-2\]' $slurm_out"
check "1 thread per rank (SLURM_CPUS_PER_TASK=1)" \
    "grep -q 'threads (rank 0): 1 core for this process (SLURM_CPUS_PER_TASK=1): 1 intra-op, 1 loader worker' $log"
check "USR1 -> checkpoint -> every task exits 0 -> stop marker" \
    "grep -q 'stop requested: checkpointed' $log && grep -q 'stop marker: ' $log \
     && [ \"\$(grep -m1 'sam-train exited with' $slurm_out)\" = 'sam-train exited with 0' ]"
check "the batch script requeued the job itself (no RequeueExit)" \
    "grep -q \"requeueing job $job\" $slurm_out && grep -q '^job $job restart 0: stopped with a checkpoint' runs/slurm_check/logs/slurm-requeues.log"
check "marker removed" "[ ! -e runs/slurm_check/stopped_for_requeue ]"
check "rerun (restart 1) resumed from the checkpoint" \
    "grep -q 'restart 1' $slurm_out && grep -q 'resumed from' $log"
check "finished and exported (job COMPLETED, exit 0)" \
    "[ \$(grep -c 'sam-train exited with 0' $slurm_out) = 2 ] && [ -s final_models/slurm_check.pt ] \
     && echo \"\$final\" | grep -q 'JobState=COMPLETED' && echo \"\$final\" | grep -q 'ExitCode=0:0'"
[ -n "$restarted_after" ] && echo "   (rerun started about ${restarted_after} s after USR1)"

if [ $KEEP = 0 ]; then
    scripts/slurm/cluster.sh stop
    stopped=1
    check "/etc/hosts restored" "[ \"\$(md5sum < /etc/hosts)\" = \"\$hosts_before\" ]"
fi
[ $fail = 0 ] && echo "ALL PASS" || echo "SOME CHECKS FAILED"
exit $fail
