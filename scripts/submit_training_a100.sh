#!/usr/bin/env bash
# Submit sam-train to SLURM: one task per GPU, ranks from SLURM's variables, NCCL on GPUs.
# The job's resources come from the config's `slurm:` and `distributed:` sections, read and
# validated by `sam-train job-resources` before anything is submitted; flags override them.
#
#   scripts/submit_training_a100.sh --config configs/full_sam_vit_b_a100.yaml
#   scripts/submit_training_a100.sh --config configs/full_sam_vit_b_a40.yaml
#   scripts/submit_training_a100.sh --config C --nodes 1 --gpus-per-node 2 --time 12:00:00
#   scripts/submit_training_a100.sh --config C --dry-run     # show sbatch and the batch script
#
# Flags (default: the config key in brackets):
#   --config FILE           experiment config (required); validated BEFORE sbatch
#   --partition NAME        partition [slurm.partition; null: the accelerator's, a100 or a40]
#   --a40                   same as --partition a40 (the config must be an A40 one)
#   --nodes N               nodes, 1-2 [distributed.nodes]
#   --gpus-per-node N       GPUs (= tasks) per node, 1-4 [distributed.gpus_per_node]
#   --cpus-per-task N       cores per task [slurm.cpus_per_task]
#   --mem SIZE              memory per node, at most 600G [slurm.memory]
#   --time TIME             wall-time limit, at most 56:00:00 [slurm.time_limit]
#   --signal-lead S         seconds before the limit SLURM sends USR1 [slurm.signal_lead_seconds]
#   --requeue, --no-requeue requeue after a stop before the limit [slurm.requeue]
#   --cpu                   request no GPUs (tasks over Gloo) [when hardware.accelerator or
#                           training.device is cpu]
#   --resume                resume the run (a requeued job resumes by itself)
#   --no-path-checks        validate without looking at data folders and checkpoint files
#   --dry-run               print the sbatch command and the batch script, submit nothing
#   --wait                  wait for the job to end and return its exit status
#   -- ARGS                 extra sbatch arguments
# Environment: SAM_TRAIN_BIN, the sam-train executable [target/release/sam-train].
#
# How the job survives the 56 h limit on any cluster (slurm.conf's RequeueExit is not used):
# SLURM sends USR1 to every task --signal-lead seconds before the limit (--signal=USR1@lead);
# the trainer finishes its step, writes `latest`, rank 0 leaves the file
# runs/<experiment>/stopped_for_requeue, and every task exits 0 (--stop-exit-code 0, so that
# srun --kill-on-bad-exit cannot take the clean stop for a failure). The batch script then finds
# the marker, removes it, notes the stop in logs/slurm-requeues.log and runs
# `scontrol requeue $SLURM_JOB_ID`; the rerun (SLURM_RESTART_COUNT > 0, or its job id in that
# log) passes --resume. Without requeue (slurm.requeue: false) the job ends with status 1 and a
# message to resubmit with --resume. Logs: runs/<experiment>/logs/slurm-<jobid>.out, appended
# across requeues.
#
# Deviations from the default resources are written in each config's slurm: section (e.g. the
# A40 configs halve the batch size: 48 GB instead of the A100's 80 GB).
set -euo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CONFIG=""; RESUME=0; CPU=0; DRY=0; WAIT=0; PATH_CHECKS=1; EXTRA=(); OVERRIDES=()
need_value() { [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --config) need_value "$@"; CONFIG=$2; shift 2 ;;
        --a40) OVERRIDES+=(--partition a40); shift ;;
        --partition|--nodes|--gpus-per-node|--cpus-per-task|--mem|--time|--signal-lead)
            need_value "$@"; OVERRIDES+=("$1" "$2"); shift 2 ;;
        --requeue|--no-requeue) OVERRIDES+=("$1"); shift ;;
        --resume) RESUME=1; shift ;;
        --cpu) CPU=1; shift ;;
        --no-path-checks) PATH_CHECKS=0; shift ;;
        --dry-run) DRY=1; shift ;;
        --wait) WAIT=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "error: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$CONFIG" ] || { echo "error: --config FILE is required (see --help)" >&2; exit 2; }
# The config as the caller named it, else relative to the repository root.
case "$CONFIG" in
    /*) ;;
    *) if [ -f "$CALLER_DIR/$CONFIG" ]; then CONFIG=$CALLER_DIR/$CONFIG; else CONFIG=$ROOT/$CONFIG; fi ;;
esac
[ -f "$CONFIG" ] || { echo "error: config $CONFIG does not exist" >&2; exit 2; }

BIN=${SAM_TRAIN_BIN:-$ROOT/target/release/sam-train}
[ -x "$BIN" ] || { echo "error: $BIN missing: run cargo build --release first" >&2; exit 2; }

# Validate the config and the overrides before spending any cluster time; read the resources.
JR=("$BIN" job-resources --root "$ROOT" "$CONFIG")
[ $PATH_CHECKS = 1 ] || JR+=(--no-path-checks)
set +e
RESOURCES=$("${JR[@]}" "${OVERRIDES[@]}")
status=$?
set -e
if [ $status -ne 0 ]; then
    echo "error: $CONFIG cannot be submitted (problems above); nothing submitted" >&2
    [ $status -eq 2 ] && exit 2
    exit 1
fi
eval "$RESOURCES"
[ $CPU = 1 ] && SAM_JOB_GPUS_PER_NODE=0

SBATCH=(sbatch --job-name="$SAM_JOB_NAME")
[ -n "$SAM_JOB_PARTITION" ] && SBATCH+=(--partition="$SAM_JOB_PARTITION")
[ -n "$SAM_JOB_ACCOUNT" ] && SBATCH+=(--account="$SAM_JOB_ACCOUNT")
[ -n "$SAM_JOB_QOS" ] && SBATCH+=(--qos="$SAM_JOB_QOS")
SBATCH+=(--nodes="$SAM_JOB_NODES" --ntasks-per-node="$SAM_JOB_TASKS_PER_NODE")
[ "$SAM_JOB_GPUS_PER_NODE" -gt 0 ] && SBATCH+=(--gpus-per-node="$SAM_JOB_GPUS_PER_NODE")
SBATCH+=(--cpus-per-task="$SAM_JOB_CPUS_PER_TASK" --mem="$SAM_JOB_MEM" --time="$SAM_JOB_TIME"
    --signal=USR1@"$SAM_JOB_SIGNAL_LEAD")
if [ "$SAM_JOB_REQUEUE" = 1 ]; then SBATCH+=(--requeue); else SBATCH+=(--no-requeue); fi
SBATCH+=(--open-mode=append --output="$SAM_JOB_LOGS_DIR/slurm-%j.out" --chdir="$ROOT")
[ $WAIT = 1 ] && SBATCH+=(--wait)
SBATCH+=("${EXTRA[@]}")

q() { printf '%q' "$1"; }
SCRIPT=$(cat <<BATCH
#!/bin/bash
# Generated by scripts/submit_training_a100.sh for experiment $(q "$SAM_JOB_EXPERIMENT").
set -uo pipefail
export SAM_TRAINER_ROOT=$(q "$ROOT")
BIN=$(q "$BIN")
CONFIG=$(q "$CONFIG")
MARKER=$(q "$SAM_JOB_STOP_MARKER")
HISTORY=$(q "$SAM_JOB_LOGS_DIR/slurm-requeues.log")
restart=\${SLURM_RESTART_COUNT:-0}
RESUME=()
if [ $RESUME = 1 ] || [ "\$restart" -gt 0 ] || grep -qs "^job \$SLURM_JOB_ID " "\$HISTORY"; then
    RESUME=(--resume)
fi
rm -f "\$MARKER"  # left by an earlier run: only this run's stop counts
echo "job \$SLURM_JOB_ID (restart \$restart): \${SLURM_NTASKS:-?} tasks on \$SLURM_JOB_NODELIST\${RESUME[*]:+, resuming}"
srun --kill-on-bad-exit=1 "\$BIN" train "\$CONFIG" --no-progress --stop-exit-code 0 "\${RESUME[@]}"
status=\$?
echo "sam-train exited with \$status"
# Finished (0 without marker) or failed: the job ends with that status.
if [ "\$status" -ne 0 ] || [ ! -f "\$MARKER" ]; then exit "\$status"; fi
# Stopped by USR1/TERM after writing the checkpoint.
rm -f "\$MARKER"
echo "job \$SLURM_JOB_ID restart \$restart: stopped with a checkpoint at \$(date -Is)" >> "\$HISTORY"
if [ $SAM_JOB_REQUEUE = 1 ]; then
    echo "stopped with a checkpoint before the time limit: requeueing job \$SLURM_JOB_ID"
    scontrol requeue "\$SLURM_JOB_ID" && exit 0
    echo "error: scontrol requeue \$SLURM_JOB_ID failed: resubmit with --resume" >&2
    exit 1
fi
echo "stopped with a checkpoint; requeue is off (slurm.requeue): resubmit with --resume" >&2
exit 1
BATCH
)
if [ $DRY = 1 ]; then
    printf '%q ' "${SBATCH[@]}"; echo
    echo "$SCRIPT"
    exit 0
fi
mkdir -p "$SAM_JOB_LOGS_DIR"
echo "$SCRIPT" | "${SBATCH[@]}"
