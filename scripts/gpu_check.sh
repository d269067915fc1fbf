#!/usr/bin/env bash
# The GPU paths, checked and measured in one run on one GPU (at most 9.6 minutes), with one
# report: OUT/report.md and OUT/report.json, the log of every step in OUT/logs/.
#
#   scripts/gpu_check.sh OUT [--bin DIR] [--rehearse] [--only STEPS]
#
#   --bin DIR    folder with sam-train, sam-augment, sam-infer and the examples gpu_check and
#                device_check (default: target/release, examples from target/release/examples;
#                docs/gpu.md says how to build and copy them for a machine without Rust)
#   --rehearse   every step on the CPU with tiny sizes (the test suite runs this, so that the
#                script cannot rot before a GPU is there); the numbers mean nothing then
#   --only STEPS the steps named (comma-separated), the others reported as skipped: a rerun of
#                the ones that failed. A step that needs another's output says so when it fails
#                (ais needs train_a100's model); data runs whenever a training step does
#
# Each step has its own time limit, so a hang or a failure costs that step, not the run:
#   preflight    GPU, driver and the CUDA of the wheel; ldd of every executable
#   cuda_nccl    CUDA devices, bf16 autocast, TF32 switches, allocator statistics, NCCL at
#                world size 1 (rehearsal: Gloo, CPU autocast)
#   parity       seeded vit_b on CPU vs GPU: fp32 with TF32 off <= 1e-4 relative, bf16 <= 2e-2;
#                which SDPA kernel the attention with its bias mask gets
#   encoder      vit_b encoder images/s and peak memory at batch 1 and 4 in fp32, TF32, bf16
#   data         synthetic 2048² brightfield images with labels
#   train_tiny   the same seeded tiny training on CPU and on the GPU: losses must agree
#   train_a100   vit_b at the A100 preset (batch 4, 25 objects, 8 rounds, decoder, bf16):
#                s/iteration, data-wait share, peak GPU memory
#   train_a40    the same at the A40 preset (batch 2)
#   memory       the memory options at the A40 preset, one `sam-train fit` try each (peak GPU
#                memory of two steps): vit_b full, activation checkpointing `all`, LoRA rank 4
#                on the last 2 blocks, encoder_input native; vit_l and vit_h with `all`
#   ais          automatic instance segmentation of 2048² images with the model of train_a100
#   resume       two processes on one GPU over Gloo: SIGUSR1 -> checkpoint + exit 42 ->
#                --resume to the end (a checkpoint round trip)
# Exit status: 0 when every step passed, 1 otherwise, 2 for a usage error.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

OUT=""
BIN=""
REHEARSE=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) [ $# -ge 2 ] || die "--bin needs a folder"; BIN=$2; shift ;;
        --rehearse) REHEARSE=1 ;;
        --only) [ $# -ge 2 ] || die "--only needs a list of steps"; ONLY=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (scripts/gpu_check.sh --help)" ;;
        *) [ -z "$OUT" ] || die "one output folder only (got '$OUT' and '$1')"; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || die "missing the output folder (scripts/gpu_check.sh --help)"
ALL_STEPS="preflight cuda_nccl parity encoder data train_tiny train_a100 train_a40 memory ais resume"
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        case " $ALL_STEPS " in *" $s "*) ;; *) die "unknown step '$s' in --only (the steps: $ALL_STEPS)" ;; esac
    done
    case ",$ONLY," in *,train_*|*,memory,*|*,ais,*|*,resume,*) ONLY="$ONLY,data" ;; esac
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    die "$OUT exists and is not empty: give a new folder, the report never overwrites one"
fi

find_exe() {  # find_exe NAME: the executable in --bin, or in target/release(/examples)
    local name=$1 dir
    for dir in ${BIN:+"$BIN"} ${BIN:+"$BIN/examples"} "$REPO/target/release" "$REPO/target/release/examples"; do
        [ -x "$dir/$name" ] && { (cd "$dir" && printf '%s/%s' "$PWD" "$name"); return 0; }
        [ -n "$BIN" ] && [ "$dir" = "$BIN/examples" ] && break
    done
    return 1
}
for exe in sam-train sam-augment sam-infer gpu_check device_check; do
    path=$(find_exe "$exe") ||
        die "no executable '$exe' in ${BIN:-target/release} (build: cargo build --release && cargo build --release --example gpu_check -p sam-torch --example device_check -p sam-model)"
    printf -v "EXE_${exe//-/_}" '%s' "$path"
done

mkdir -p "$OUT/logs" "$OUT/work" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work

if [ $REHEARSE = 1 ]; then
    DEVICE=cpu; MODEL=tiny; SIDE=128; PATCH=128; COUNT=4; ITERS=2; TRAIN_ITERS=2; RESUME_ITERS=8
    ENCODER_ITERS=1
    # Generous: the test suite runs the rehearsal beside other tests on a small machine.
    LIMITS=(60 120 120 120 60 120 120 120 240 120 120)
else
    DEVICE=cuda; MODEL=vit-b; SIDE=2048; PATCH=512; COUNT=12; ITERS=20; TRAIN_ITERS=10
    RESUME_ITERS=40
    ENCODER_ITERS=5
    # Seconds per step, in step order: 575 in all, so a run ends within 9.6 minutes whatever
    # hangs; a rerun of the failed steps (--only) fits in what a 15-minute GPU slot leaves.
    LIMITS=(30 60 60 50 30 60 70 45 100 35 35)
fi
export RUST_LOG=${RUST_LOG:-info}

# --- Report helpers -------------------------------------------------------------------------
STEPS=()
FAILED=0
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"; }

# step NAME LIMIT_S COMMAND...: runs the command with a time limit, its output in logs/NAME.log.
# The command may write a one-line result into $OUT/logs/NAME.result.
step() {
    local name=$1 limit=$2; shift 2
    local log="$OUT/logs/$name.log" start end rc status result
    printf '[gpu_check] %-11s ' "$name"
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        printf '%-7s\n' skipped
        STEPS+=("$name|skipped|0|$limit|0|not in --only")
        return
    fi
    start=$(date +%s.%N)
    # timeout signals the whole process group, so training processes a step started go too.
    timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; FAILED=1 ;;
        *) status=FAIL; FAILED=1 ;;
    esac
    result=$(cat "$OUT/logs/$name.result" 2>/dev/null || true)
    [ -n "$result" ] || result=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)
    local seconds
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    printf '%-7s %6ss  %s\n' "$status" "$seconds" "$result"
    STEPS+=("$name|$status|$seconds|$limit|$rc|$result")
}

# --- Configs --------------------------------------------------------------------------------
# write_config FILE NAME DEVICE BATCH OBJECTS ROUNDS PRECISION ITERATIONS ARCH WORKERS CKPT_EVERY
# ARCH: vit_b, vit_l, vit_h or tiny. MODEL_EXTRA and TRAINING_EXTRA (YAML lines, indented by
# two) are added to the model and training sections.
write_config() {
    local file=$1 name=$2 device=$3 batch=$4 objects=$5 rounds=$6 precision=$7
    local iterations=$8 arch=$9 workers=${10} every=${11} side=$SIDE patch=$PATCH
    local architecture=""
    if [ "$arch" = tiny ]; then
        side=128; patch=128
        architecture="  architecture:
    image_size: 128
    patch_size: 8
    encoder_embed_dim: 64
    encoder_depth: 2
    encoder_num_heads: 2
    encoder_global_attn_indexes: [1]
    window_size: 4
    prompt_embed_dim: 64
    decoder_features: 8"
    fi
    local data=dat/train_$side val=dat/val_$side
    cat >"$file" <<EOF
experiment_name: $name
output_base_dir: runs
checkpoint_name: $name
export_path: final_models/$name.pt
seed: 7
data:
  train_images_dir: $data/images
  train_labels_dir: $data/labels
  validation:
    images_dir: $val/images
    labels_dir: $val/labels
    fraction: null
  image_shape: [$side, $side]
  patch_shape: [$patch, $patch]
  min_object_size: 10
  min_objects_per_patch: 1
  samples_per_epoch: $((batch * iterations))
  num_workers: $workers
  prefetch_batches: 2
model:
  backbone: $([ "$arch" = tiny ] && echo vit_b || echo "$arch")
  checkpoint: null
  with_segmentation_decoder: true
$architecture
${MODEL_EXTRA:-}
training:
  batch_size: $batch
  n_objects_per_batch: $objects
  n_sub_iteration: $rounds
  iterations: $iterations
  lr: 1.0e-4
  early_stopping_patience: null
  precision: $precision
  log_every_iterations: 1
  checkpoint_every_iterations: $every
  device: $device
${TRAINING_EXTRA:-}
distributed:
  backend: gloo
  nodes: 1
  gpus_per_node: 1
hardware:
  accelerator: $([ "$device" = cuda ] && echo a100 || echo cpu)
slurm:
  time_limit: "01:00:00"
  cpus_per_task: 2
EOF
}

train() {  # train CONFIG: one training run in WORK, its log lines on stdout
    "$EXE_sam_train" train "$1" --root "$WORK" --no-progress
}

# Last training loss of a run (metrics.csv's train_loss of the last epoch).
last_loss() {
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "train_loss") c = i }
             NR > 1 { v = $c } END { print v }' "$WORK/runs/$1/logs/metrics.csv"
}

# --- Steps ----------------------------------------------------------------------------------
preflight() {
    local result="" bad=0 exe
    if [ $REHEARSE = 1 ]; then
        result="rehearsal (no GPU checked)"
    elif command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || bad=1
        result="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
    else
        echo "nvidia-smi not found"; bad=1
    fi
    for exe in "$EXE_sam_train" "$EXE_sam_augment" "$EXE_sam_infer" "$EXE_gpu_check" "$EXE_device_check"; do
        echo "== ldd $exe"
        ldd "$exe" || bad=1
        if ldd "$exe" | grep -q 'not found'; then
            echo "MISSING libraries for $exe (set LD_LIBRARY_PATH to the torch wheel's lib folder)"
            bad=1
        fi
    done
    "$EXE_sam_train" --version || bad=1
    echo "$result; executables link" >"$OUT/logs/preflight.result"
    return $bad
}

cuda_nccl() {
    if [ $REHEARSE = 1 ]; then "$EXE_gpu_check" --rehearse --port 29651; else "$EXE_gpu_check" --port 29651; fi
    local rc=$?
    grep -c ': ok' "$OUT/logs/cuda_nccl.log" | sed 's/$/ checks ok/' >"$OUT/logs/cuda_nccl.result"
    return $rc
}

parity() {
    "$EXE_device_check" parity --device $DEVICE --model $MODEL --json "$OUT/parity.json" || return 1
    grep -E 'embeddings|sdpa global' "$OUT/logs/parity.log" | tr -s ' ' | paste -sd';' >"$OUT/logs/parity.result"
}

encoder() {
    "$EXE_device_check" encoder --device $DEVICE --model $MODEL --batches 1,4 \
        --iters $ENCODER_ITERS --json "$OUT/encoder.json" || return 1
    awk 'NR > 1 { printf "%s b%s %s img/s; ", $1, $2, $3 }' "$OUT/logs/encoder.log" >"$OUT/logs/encoder.result"
}

data() {
    local side
    for side in $SIDE 128; do
        "$EXE_sam_augment" synth --out "$WORK/dat/train_$side" --count $COUNT --size $side --seed 1 || return 1
        "$EXE_sam_augment" synth --out "$WORK/dat/val_$side" --count 2 --size $side --seed 2 || return 1
        "$EXE_sam_augment" synth --out "$WORK/dat/test_$side" --count 2 --size $side --seed 3 || return 1
        [ "$side" = 128 ] && break
    done
    echo "$COUNT training images of $(printf '%s\n' $SIDE 128 | sort -u | sed 's/$/²/' | paste -sd' ' | sed 's/ / and /')" \
        >"$OUT/logs/data.result"
}

train_tiny() {
    local objects=8 rounds=2
    [ $REHEARSE = 1 ] && { objects=2; rounds=1; }
    write_config "$WORK/tiny_cpu.yaml" tiny_cpu cpu 2 $objects $rounds fp32 $TRAIN_ITERS tiny 1 1000
    write_config "$WORK/tiny_dev.yaml" tiny_dev $DEVICE 2 $objects $rounds fp32 $TRAIN_ITERS tiny 1 1000
    train "$WORK/tiny_cpu.yaml" || return 1
    train "$WORK/tiny_dev.yaml" || return 1
    local a b
    a=$(last_loss tiny_cpu); b=$(last_loss tiny_dev)
    echo "train loss cpu $a, $DEVICE $b" >"$OUT/logs/train_tiny.result"
    # The same seed and data: CPU and GPU kernels may differ in the last digits only.
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 0.02 * (a < 0 ? -a : a) + 1e-6) }'
}

train_preset() {  # train_preset NAME BATCH: vit_b (tiny in the rehearsal) at a preset
    local name=$1 batch=$2 arch=vit_b objects=25 rounds=8 precision=bf16
    [ $REHEARSE = 1 ] && { arch=tiny; objects=2; rounds=1; batch=1; }
    write_config "$WORK/$name.yaml" "$name" $DEVICE "$batch" $objects $rounds $precision $ITERS $arch 8 1000
    train "$WORK/$name.yaml" || return 1
    local log="$OUT/logs/$name.log" steps memory
    steps=$(grep -o 'training steps: .*' "$log" | tail -n 1)
    memory=$(grep -o 'peak device memory: .*' "$log" | tail -n 1)
    echo "batch $batch: ${steps#training steps: }${memory:+; $memory}" >"$OUT/logs/$name.result"
    [ -n "$steps" ]
}

# One `sam-train fit` try of a config at the A40 preset: the setting's own peak memory.
fit_once() {  # fit_once NAME ARCH: prints "NAME PEAK_GIB VERDICT", fit's own output on stderr
    local name=$1 arch=$2 batch=2 objects=25 rounds=8 precision=bf16 budget=44
    [ $REHEARSE = 1 ] && { arch=tiny; batch=1; objects=2; rounds=1; budget=8; }
    write_config "$WORK/$name.yaml" "$name" $DEVICE $batch $objects $rounds $precision 2 $arch 0 1000
    "$EXE_sam_train" fit "$WORK/$name.yaml" --root "$WORK" --budget-gib $budget --max-tries 1 \
        --json "$OUT/memory_$name.json" >"$WORK/$name.fit.txt"
    local rc=$?
    cat "$WORK/$name.fit.txt" >&2
    # The table's row of try 1: try, batch_size, objects, peak GiB, verdict, seconds. Exit 1
    # (the setting does not fit) still has its row.
    awk -v n="$name" '$1 == "1" && NF == 6 { print n, $4, "GiB", $5 }' "$WORK/$name.fit.txt" | grep . || return 1
    [ $rc -le 1 ]
}

memory() {
    local lines=() line
    run_fit() { line=$(fit_once "$@") && [ -n "$line" ] && lines+=("$line"); }
    MODEL_EXTRA="" TRAINING_EXTRA="" run_fit vit_b_full vit_b || return 1
    TRAINING_EXTRA="  activation_checkpointing: all" run_fit vit_b_ac_all vit_b || return 1
    MODEL_EXTRA="  peft: {method: lora, rank: 4, blocks: {last: 2}}" run_fit vit_b_lora_last2 vit_b || return 1
    MODEL_EXTRA="  encoder_input: native" run_fit vit_b_native vit_b || return 1
    TRAINING_EXTRA="  activation_checkpointing: all" run_fit vit_l_ac_all vit_l || return 1
    TRAINING_EXTRA="  activation_checkpointing: all" run_fit vit_h_ac_all vit_h || return 1
    printf '%s\n' "${lines[@]}"
    printf '%s; ' "${lines[@]}" | sed 's/; $//' >"$OUT/logs/memory.result"
}

ais() {
    local model=$WORK/final_models/train_a100.pt side=$SIDE
    [ $REHEARSE = 1 ] && side=128
    [ -f "$model" ] || { echo "no model: train_a100 did not export $model"; return 1; }
    local t0 t1
    t0=$(date +%s.%N)
    "$EXE_sam_infer" auto --checkpoint "$model" --device $DEVICE --root "$WORK" \
        --input "$WORK/dat/test_$side/images" --output "$WORK/ais" || return 1
    t1=$(date +%s.%N)
    local n
    n=$(find "$WORK/ais" -name '*.tif' | wc -l)
    [ "$n" -ge 1 ] || { echo "no label images written"; return 1; }
    awk -v a="$t0" -v b="$t1" -v n="$n" -v s="$side" \
        'BEGIN { printf "%d images of %d²: %.1f s each (process wall time, model load included)\n", n, s, (b - a) / n }' \
        >"$OUT/logs/ais.result"
}

resume() {
    local cfg=$WORK/resume.yaml run=$WORK/runs/resume
    write_config "$cfg" resume $DEVICE 1 2 1 fp32 $RESUME_ITERS tiny 0 2
    local pids=() rank rcs=()
    launch() {
        pids=()
        for rank in 0 1; do
            RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 \
                MASTER_PORT=29652 "$EXE_sam_train" train "$cfg" --root "$WORK" --no-progress "$@" \
                >"$OUT/logs/resume.rank$rank.log" 2>&1 &
            pids+=($!)
        done
    }
    launch
    local waited=0
    until [ -d "$run/checkpoints/resume/latest" ] || [ $waited -ge 600 ]; do
        sleep 0.2; waited=$((waited + 1))
        kill -0 "${pids[0]}" 2>/dev/null || break
    done
    kill -USR1 "${pids[@]}" 2>/dev/null
    for p in "${pids[@]}"; do wait "$p"; rcs+=($?); done
    echo "stop: exit ${rcs[*]}"
    [ "${rcs[*]}" = "42 42" ] || { echo "expected exit 42 from both ranks"; return 1; }
    [ -f "$run/stopped_for_requeue" ] || { echo "no stop marker"; return 1; }
    launch --resume
    rcs=()
    for p in "${pids[@]}"; do wait "$p"; rcs+=($?); done
    echo "resume: exit ${rcs[*]}"
    cat "$OUT/logs/resume.rank0.log"
    [ "${rcs[*]}" = "0 0" ] || return 1
    echo "USR1 -> exit 42 on both ranks -> --resume -> exit 0; $(grep -o 'done: [0-9]* epochs, [0-9]* iterations' "$OUT/logs/resume.rank0.log")" \
        >"$OUT/logs/resume.result"
}

# The steps run in a child bash under `timeout`: they see these functions and variables.
export REPO OUT WORK BIN REHEARSE ONLY DEVICE MODEL SIDE PATCH COUNT ITERS TRAIN_ITERS RESUME_ITERS
export ENCODER_ITERS
export EXE_sam_train EXE_sam_augment EXE_sam_infer EXE_gpu_check EXE_device_check
export -f write_config train last_loss preflight cuda_nccl parity encoder data train_tiny \
    train_preset fit_once memory ais resume

echo "[gpu_check] report in $OUT ($([ $REHEARSE = 1 ] && echo "rehearsal on CPU" || echo "device $DEVICE"))"
step preflight "${LIMITS[0]}" preflight
step cuda_nccl "${LIMITS[1]}" cuda_nccl
step parity "${LIMITS[2]}" parity
step encoder "${LIMITS[3]}" encoder
step data "${LIMITS[4]}" data
step train_tiny "${LIMITS[5]}" train_tiny
step train_a100 "${LIMITS[6]}" train_preset train_a100 4
step train_a40 "${LIMITS[7]}" train_preset train_a40 2
step memory "${LIMITS[8]}" memory
step ais "${LIMITS[9]}" ais
step resume "${LIMITS[10]}" resume

# --- Report ---------------------------------------------------------------------------------
{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "Mode: $([ $REHEARSE = 1 ] && echo "rehearsal on CPU (tiny sizes; the numbers mean nothing)" || echo "GPU")."
    echo "Host: $(hostname); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')."
    echo "Executables: $(dirname "$EXE_sam_train")."
    echo
    echo "| step | status | seconds (limit) | result |"
    echo "|---|---|---|---|"
    for s in "${STEPS[@]}"; do
        IFS='|' read -r name status seconds limit rc result <<<"$s"
        echo "| $name | $status | $seconds ($limit) | ${result//|//} |"
    done
} >"$OUT/report.md"
{
    printf '{\n  "rehearsal": %s,\n  "device": %s,\n  "ok": %s,\n  "steps": [\n' \
        "$([ $REHEARSE = 1 ] && echo true || echo false)" "$(json_str $DEVICE)" \
        "$([ $FAILED = 0 ] && echo true || echo false)"
    n=${#STEPS[@]}; i=0
    for s in "${STEPS[@]}"; do
        i=$((i + 1))
        IFS='|' read -r name status seconds limit rc result <<<"$s"
        printf '    {"name": %s, "status": %s, "seconds": %s, "limit_seconds": %s, "exit_code": %s, "result": %s}%s\n' \
            "$(json_str "$name")" "$(json_str "$status")" "$seconds" "$limit" "$rc" "$(json_str "$result")" \
            "$([ $i -lt $n ] && echo ,)"
    done
    printf '  ]\n}\n'
} >"$OUT/report.json"
echo "[gpu_check] $([ $FAILED = 0 ] && echo "every step passed" || echo "FAILED steps above"): $OUT/report.md"
exit $FAILED
